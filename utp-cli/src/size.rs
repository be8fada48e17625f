//! Human-friendly byte sizes: `256MiB`, `1GiB`, `10MB`, `1000000`, `1.5GiB`.

/// Parses a byte count with an optional unit. Decimal units (`k`, `KB`, `MB`,
/// `GB`, `TB`) are powers of 1000, binary ones (`KiB`, `MiB`, `GiB`, `TiB`)
/// powers of 1024; units are case-insensitive and may follow a space.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '_'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let num = num.replace('_', "");
    if num.is_empty() {
        return Err(format!("invalid size {s:?}: expected a number like 64MiB"));
    }
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" => 1_000,
        "ki" | "kib" => 1 << 10,
        "m" | "mb" => 1_000_000,
        "mi" | "mib" => 1 << 20,
        "g" | "gb" => 1_000_000_000,
        "gi" | "gib" => 1 << 30,
        "t" | "tb" => 1_000_000_000_000,
        "ti" | "tib" => 1 << 40,
        other => {
            return Err(format!(
                "invalid size {s:?}: unknown unit {other:?} (use B, KB, KiB, MB, MiB, GB, GiB, TB, TiB)"
            ))
        }
    };
    let too_big = || format!("invalid size {s:?}: too large");
    if num.contains('.') {
        let v: f64 = num
            .parse()
            .map_err(|_| format!("invalid size {s:?}: bad number {num:?}"))?;
        let bytes = (v * mult as f64).round();
        if !bytes.is_finite() || bytes < 0.0 || bytes >= u64::MAX as f64 {
            return Err(too_big());
        }
        Ok(bytes as u64)
    } else {
        let v: u64 = num.parse().map_err(|_| too_big())?;
        v.checked_mul(mult).ok_or_else(too_big)
    }
}

#[cfg(test)]
mod tests {
    use super::parse_size;

    #[test]
    fn parses_common_forms() {
        assert_eq!(parse_size("256MiB"), Ok(256 << 20));
        assert_eq!(parse_size("64MiB"), Ok(64 << 20));
        assert_eq!(parse_size("1GiB"), Ok(1 << 30));
        assert_eq!(parse_size("1000000"), Ok(1_000_000));
        assert_eq!(parse_size("10MB"), Ok(10_000_000));
        assert_eq!(parse_size("10mb"), Ok(10_000_000));
        assert_eq!(parse_size("4 KiB"), Ok(4096));
        assert_eq!(parse_size("1.5GiB"), Ok(3 << 29));
        assert_eq!(parse_size("0"), Ok(0));
        assert_eq!(parse_size("12B"), Ok(12));
        assert_eq!(parse_size("1_000k"), Ok(1_000_000));
    }

    #[test]
    fn rejects_garbage() {
        assert!(parse_size("").is_err());
        assert!(parse_size("MiB").is_err());
        assert!(parse_size("12 parsecs").is_err());
        assert!(parse_size("1.2.3MB").is_err());
        assert!(parse_size("99999999999TiB").is_err());
    }
}
