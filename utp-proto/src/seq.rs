//! 16-bit wrapping sequence-number arithmetic, in one place.
//!
//! uTP sequence and ack numbers are u16 and wrap. Two numbers are compared
//! over a half-range window: `a` is "before" `b` when `b - a` (mod 2^16) is in
//! `1..32768`.

/// Signed distance from `from` to `to` (positive when `to` is after `from`).
#[inline]
pub fn diff(to: u16, from: u16) -> i16 {
    to.wrapping_sub(from) as i16
}

/// `a` comes strictly before `b`.
#[inline]
pub fn lt(a: u16, b: u16) -> bool {
    diff(b, a) > 0
}

/// `a` comes before or equals `b`.
#[inline]
pub fn le(a: u16, b: u16) -> bool {
    diff(b, a) >= 0
}

/// Unsigned forward distance from `from` to `to` (how many steps ahead).
#[inline]
pub fn ahead(to: u16, from: u16) -> u16 {
    to.wrapping_sub(from)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn comparisons_wrap_around_zero() {
        assert!(lt(65535, 0));
        assert!(lt(65000, 100));
        assert!(!lt(100, 65000));
        assert!(le(5, 5));
        assert!(!lt(5, 5));
        assert_eq!(diff(2, 65534), 4);
        assert_eq!(diff(65534, 2), -4);
        assert_eq!(ahead(1, 65535), 2);
    }
}
