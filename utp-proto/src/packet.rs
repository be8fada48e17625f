//! The uTP packet codec: the 20-byte header and the extension chain (BEP 29).
//!
//! Parsing never panics and never allocates: every malformed datagram gets a
//! typed [`ParseError`]. Serialising writes into a caller-provided buffer.

use thiserror::Error;

/// Size of the fixed uTP header in bytes.
pub const HEADER_LEN: usize = 20;

/// The only protocol version uTP has.
pub const VERSION: u8 = 1;

/// Extension type: selective acknowledgement bitmask.
pub const EXT_SACK: u8 = 1;
/// Extension type: "extension bits" sent by old libutp/Transmission SYNs.
pub const EXT_BITS: u8 = 2;
/// Extension type: libtorrent's close reason, sent with FIN.
pub const EXT_CLOSE_REASON: u8 = 3;

/// Largest SACK bitmask we emit, in bytes (256 packets past the ack).
pub const MAX_SACK_BYTES: usize = 32;

/// The packet type carried in the high nibble of the first byte.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PacketType {
    /// ST_DATA: carries payload, consumes a sequence number.
    Data = 0,
    /// ST_FIN: last packet of a direction, consumes a sequence number.
    Fin = 1,
    /// ST_STATE: a pure acknowledgement, consumes nothing.
    State = 2,
    /// ST_RESET: abort the connection.
    Reset = 3,
    /// ST_SYN: open a connection, consumes a sequence number.
    Syn = 4,
}

impl PacketType {
    fn from_nibble(v: u8) -> Option<Self> {
        Some(match v {
            0 => Self::Data,
            1 => Self::Fin,
            2 => Self::State,
            3 => Self::Reset,
            4 => Self::Syn,
            _ => return None,
        })
    }
}

/// Why a datagram is not a valid uTP packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum ParseError {
    /// Fewer than 20 bytes.
    #[error("datagram of {0} bytes is shorter than the 20-byte uTP header")]
    TooShort(usize),
    /// The version nibble is not 1 (for example a DHT message on a shared port).
    #[error("unsupported uTP version {0}")]
    BadVersion(u8),
    /// The type nibble is above 4.
    #[error("invalid uTP packet type {0}")]
    BadType(u8),
    /// An extension header or body runs past the end of the datagram.
    #[error("extension chain runs past the end of the datagram")]
    ExtensionTruncated,
}

/// The fixed 20-byte header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// Packet type.
    pub ty: PacketType,
    /// Connection id as written on the wire.
    pub conn_id: u16,
    /// Sender's clock, low 32 bits of microseconds.
    pub timestamp: u32,
    /// Sender's measured one-way delay of the last packet it received.
    pub timestamp_diff: u32,
    /// Receive window the sender advertises, in bytes.
    pub wnd_size: u32,
    /// Sequence number.
    pub seq_nr: u16,
    /// Last in-order sequence number received.
    pub ack_nr: u16,
}

/// A parsed packet borrowing from the datagram it came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Packet<'a> {
    /// The fixed header.
    pub header: Header,
    /// The selective-ack bitmask, if a SACK extension of at least one byte was present.
    pub sack: Option<&'a [u8]>,
    /// libtorrent's close reason (extension 3), if present.
    pub close_reason: Option<u16>,
    /// The payload after the extension chain.
    pub payload: &'a [u8],
}

impl Header {
    /// Parses the fixed 20-byte header at the start of `buf`, ignoring what
    /// follows (an ICMP error quotes a datagram's start, often cut short).
    pub fn parse_fixed(buf: &[u8]) -> Result<Self, ParseError> {
        if buf.len() < HEADER_LEN {
            return Err(ParseError::TooShort(buf.len()));
        }
        let version = buf[0] & 0x0f;
        if version != VERSION {
            return Err(ParseError::BadVersion(version));
        }
        let ty = PacketType::from_nibble(buf[0] >> 4).ok_or(ParseError::BadType(buf[0] >> 4))?;
        Ok(Header {
            ty,
            conn_id: u16::from_be_bytes([buf[2], buf[3]]),
            timestamp: u32::from_be_bytes([buf[4], buf[5], buf[6], buf[7]]),
            timestamp_diff: u32::from_be_bytes([buf[8], buf[9], buf[10], buf[11]]),
            wnd_size: u32::from_be_bytes([buf[12], buf[13], buf[14], buf[15]]),
            seq_nr: u16::from_be_bytes([buf[16], buf[17]]),
            ack_nr: u16::from_be_bytes([buf[18], buf[19]]),
        })
    }
}

impl<'a> Packet<'a> {
    /// Parses one datagram. Unknown extensions are skipped; only a length
    /// running past the end of the datagram is an error.
    pub fn parse(buf: &'a [u8]) -> Result<Self, ParseError> {
        let header = Header::parse_fixed(buf)?;
        let mut sack = None;
        let mut close_reason = None;
        let mut ext = buf[1];
        let mut pos = HEADER_LEN;
        // Every extension consumes at least two bytes, so this loop ends.
        while ext != 0 {
            let hdr = buf
                .get(pos..pos + 2)
                .ok_or(ParseError::ExtensionTruncated)?;
            let (next, len) = (hdr[0], hdr[1] as usize);
            let body = buf
                .get(pos + 2..pos + 2 + len)
                .ok_or(ParseError::ExtensionTruncated)?;
            match ext {
                EXT_SACK if len >= 1 => sack = Some(body),
                EXT_CLOSE_REASON if len >= 4 => {
                    close_reason = Some(u16::from_be_bytes([body[2], body[3]]))
                }
                _ => {}
            }
            pos += 2 + len;
            ext = next;
        }
        Ok(Packet {
            header,
            sack,
            close_reason,
            payload: &buf[pos..],
        })
    }
}

/// Writes a packet into `buf` and returns its length.
///
/// `sack` is written as a SACK extension when non-empty. Panics if `buf` is
/// too small; callers size buffers from [`encoded_len`].
pub fn encode(header: &Header, sack: &[u8], payload: &[u8], buf: &mut [u8]) -> usize {
    let len = encoded_len(sack.len(), payload.len());
    assert!(buf.len() >= len, "encode buffer too small");
    buf[0] = ((header.ty as u8) << 4) | VERSION;
    buf[1] = if sack.is_empty() { 0 } else { EXT_SACK };
    buf[2..4].copy_from_slice(&header.conn_id.to_be_bytes());
    buf[4..8].copy_from_slice(&header.timestamp.to_be_bytes());
    buf[8..12].copy_from_slice(&header.timestamp_diff.to_be_bytes());
    buf[12..16].copy_from_slice(&header.wnd_size.to_be_bytes());
    buf[16..18].copy_from_slice(&header.seq_nr.to_be_bytes());
    buf[18..20].copy_from_slice(&header.ack_nr.to_be_bytes());
    let mut pos = HEADER_LEN;
    if !sack.is_empty() {
        buf[pos] = 0;
        buf[pos + 1] = sack.len() as u8;
        buf[pos + 2..pos + 2 + sack.len()].copy_from_slice(sack);
        pos += 2 + sack.len();
    }
    buf[pos..pos + payload.len()].copy_from_slice(payload);
    len
}

/// Extension type used for padding path MTU probes. Unknown to every uTP
/// stack, so skipped (libutp, libtorrent and this parser walk the whole
/// chain and skip unknown types).
pub const EXT_PADDING: u8 = 0x7f;

/// Smallest padding [`encode_padded`] can write.
pub const MIN_PADDING: usize = 12;

/// Writes a packet padded by `pad` extension bytes before `payload`, and
/// returns its length (`HEADER_LEN + pad + payload.len()`). `pad` is 0 or
/// at least [`MIN_PADDING`]. Panics if `buf` is too small.
///
/// The chain starts with an empty SACK (four zero bytes: acknowledges
/// nothing) because libutp drops every packet whose *first* extension type
/// is 3 or more (its test for the pre-BEP-29 packet format); the rest is
/// extensions of type [`EXT_PADDING`], zero-filled. The padding comes before
/// the payload, so a receiver that truncates the datagram (libtorrent reads
/// into 1,500 bytes) finds the chain running past the end and drops the
/// packet instead of accepting a shortened payload.
pub fn encode_padded(header: &Header, pad: usize, payload: &[u8], buf: &mut [u8]) -> usize {
    if pad == 0 {
        return encode(header, &[], payload, buf);
    }
    assert!(pad >= MIN_PADDING, "padding below the minimum");
    // Four zero bytes of SACK, eight when four would leave one byte over
    // (an extension takes at least two).
    let sack = if pad - 6 == 1 { 8 } else { 4 };
    let n = encode(header, &[0; 8][..sack], &[], buf);
    debug_assert_eq!(n, HEADER_LEN + 2 + sack);
    let len = HEADER_LEN + pad + payload.len();
    assert!(buf.len() >= len, "encode buffer too small");
    let mut pos = n;
    let mut left = pad - 2 - sack;
    if left > 0 {
        buf[HEADER_LEN] = EXT_PADDING; // the SACK's "next extension"
    }
    while left > 0 {
        // Each extension is 2 + up to 255 bytes; never leave 1 byte over.
        let mut body = (left - 2).min(255);
        if left - 2 - body == 1 {
            body -= 1;
        }
        let rest = left - 2 - body;
        buf[pos] = if rest > 0 { EXT_PADDING } else { 0 };
        buf[pos + 1] = body as u8;
        buf[pos + 2..pos + 2 + body].fill(0);
        pos += 2 + body;
        left = rest;
    }
    buf[pos..pos + payload.len()].copy_from_slice(payload);
    len
}

/// Length of an encoded packet with a SACK of `sack_len` bytes and a payload.
pub fn encoded_len(sack_len: usize, payload_len: usize) -> usize {
    HEADER_LEN + if sack_len > 0 { 2 + sack_len } else { 0 } + payload_len
}

/// Returns whether bit `i` (packet `ack_nr + 2 + i`) is set in a SACK bitmask.
pub fn sack_bit(sack: &[u8], i: usize) -> bool {
    sack.get(i / 8).is_some_and(|b| b & (1 << (i % 8)) != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn padded_packets_parse_to_their_payload_at_every_pad_length() {
        let h = header(PacketType::Data);
        let mut buf = vec![0u8; 2000];
        for pad in (MIN_PADDING..=1100).chain([0]) {
            let n = encode_padded(&h, pad, b"xyz", &mut buf);
            assert_eq!(n, HEADER_LEN + pad + 3);
            let p = Packet::parse(&buf[..n]).unwrap();
            assert_eq!(p.header, h);
            assert_eq!(p.payload, b"xyz", "pad {pad}");
            if pad > 0 {
                // libutp's version test: the first extension must be < 3.
                assert_eq!(buf[1], EXT_SACK);
                assert!(p.sack.unwrap().iter().all(|&b| b == 0));
            }
            if pad > 0 {
                // Truncated anywhere inside the padding: rejected, never
                // a shortened payload.
                assert!(Packet::parse(&buf[..HEADER_LEN + pad - 1]).is_err());
            }
        }
    }

    fn header(ty: PacketType) -> Header {
        Header {
            ty,
            conn_id: 0xbeef,
            timestamp: 0xdead_beef,
            timestamp_diff: 7,
            wnd_size: 1 << 20,
            seq_nr: 65535,
            ack_nr: 1,
        }
    }

    #[test]
    fn round_trip_every_type_with_and_without_sack() {
        for ty in [
            PacketType::Data,
            PacketType::Fin,
            PacketType::State,
            PacketType::Reset,
            PacketType::Syn,
        ] {
            for sack in [&[][..], &[0b101, 0, 0, 0x80][..]] {
                let h = header(ty);
                let mut buf = [0u8; 64];
                let n = encode(&h, sack, b"hello", &mut buf);
                assert_eq!(n, encoded_len(sack.len(), 5));
                let p = Packet::parse(&buf[..n]).unwrap();
                assert_eq!(p.header, h);
                assert_eq!(p.payload, b"hello");
                assert_eq!(p.sack, if sack.is_empty() { None } else { Some(sack) });
            }
        }
    }

    #[test]
    fn short_datagram_is_rejected() {
        for n in 0..HEADER_LEN {
            assert_eq!(Packet::parse(&vec![0x01; n]), Err(ParseError::TooShort(n)));
        }
    }

    #[test]
    fn bad_version_is_rejected() {
        let mut buf = [0u8; 20];
        buf[0] = 0x02;
        assert_eq!(Packet::parse(&buf), Err(ParseError::BadVersion(2)));
        // A bencoded DHT message starts with 'd' (0x64): version nibble 4.
        let dht = b"d1:ad2:id20:abcdefghij0123456789e1:q4:ping1:t2:aa1:y1:qe";
        assert_eq!(Packet::parse(dht), Err(ParseError::BadVersion(4)));
    }

    #[test]
    fn type_above_four_is_rejected() {
        let mut buf = [0u8; 20];
        for t in 5..16u8 {
            buf[0] = (t << 4) | 1;
            assert_eq!(Packet::parse(&buf), Err(ParseError::BadType(t)));
        }
    }

    #[test]
    fn extension_past_end_is_rejected() {
        let mut buf = [0u8; 24];
        encode(&header(PacketType::State), &[], &[], &mut buf);
        buf[1] = EXT_SACK;
        // Extension header missing entirely.
        assert_eq!(
            Packet::parse(&buf[..21]),
            Err(ParseError::ExtensionTruncated)
        );
        // Length runs past the end.
        buf[20] = 0;
        buf[21] = 4;
        assert_eq!(
            Packet::parse(&buf[..24]),
            Err(ParseError::ExtensionTruncated)
        );
        // Chain continues past the end.
        buf[21] = 2;
        buf[20] = 9;
        assert_eq!(
            Packet::parse(&buf[..24]),
            Err(ParseError::ExtensionTruncated)
        );
    }

    #[test]
    fn unknown_extensions_are_skipped_and_odd_sack_lengths_accepted() {
        // header, ext 2 (8 bytes) -> ext 77 (1 byte) -> SACK of 3 bytes -> payload "x"
        let mut buf = vec![0u8; 20];
        encode(&header(PacketType::Data), &[], &[], &mut buf);
        buf[1] = EXT_BITS;
        buf.extend_from_slice(&[77, 8, 0, 0, 0, 0, 0, 0, 0, 0]);
        buf.extend_from_slice(&[EXT_SACK, 1, 0xff]);
        buf.extend_from_slice(&[0, 3, 1, 2, 3]);
        buf.push(b'x');
        let p = Packet::parse(&buf).unwrap();
        assert_eq!(p.sack, Some(&[1, 2, 3][..]));
        assert_eq!(p.payload, b"x");
    }

    #[test]
    fn close_reason_is_surfaced() {
        let mut buf = vec![0u8; 20];
        encode(&header(PacketType::Fin), &[], &[], &mut buf);
        buf[1] = EXT_CLOSE_REASON;
        buf.extend_from_slice(&[0, 4, 0, 0, 0, 6]);
        let p = Packet::parse(&buf).unwrap();
        assert_eq!(p.close_reason, Some(6));
        assert!(p.payload.is_empty());
    }

    #[test]
    fn sack_bits_are_lsb_first() {
        let sack = [0b0000_0101u8, 0b1000_0000];
        assert!(sack_bit(&sack, 0));
        assert!(!sack_bit(&sack, 1));
        assert!(sack_bit(&sack, 2));
        assert!(sack_bit(&sack, 15));
        assert!(!sack_bit(&sack, 16));
    }
}
