//! Data in flight measured two ways: payload bytes (what
//! [`Config::max_peer_flight`](crate::Config::max_peer_flight) limits) and
//! what its datagrams take from a receive buffer on this host (what a
//! same-host peer's socket buffer limits).

use crate::packet::HEADER_LEN;

/// Bytes a datagram may carry beyond its header and payload: extensions
/// (a SACK of up to 32 bytes, a close reason) with room to spare. Only
/// used to estimate buffer charges, so an over-estimate is harmless.
const EXTENSION_SLACK: usize = 48;

/// Payload bytes, and their datagrams' receive-buffer charge (see
/// [`receive_buffer_cost`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct FlightSize {
    /// Payload bytes.
    pub bytes: usize,
    /// Receive-buffer charge of the datagrams carrying them.
    pub cost: usize,
}

impl FlightSize {
    /// No limit either way.
    pub const UNLIMITED: FlightSize = FlightSize {
        bytes: usize::MAX,
        cost: usize::MAX,
    };

    /// One data packet of `payload` bytes (plus `pad` bytes of padding, for
    /// a path MTU probe).
    pub fn packet(payload: usize, pad: usize) -> FlightSize {
        FlightSize {
            bytes: payload,
            cost: receive_buffer_cost(HEADER_LEN + EXTENSION_SLACK + payload + pad),
        }
    }

    /// Nothing in flight.
    pub fn is_empty(self) -> bool {
        self.bytes == 0 && self.cost == 0
    }

    /// Whether `want` fits in this room, both ways.
    pub fn fits(self, want: FlightSize) -> bool {
        want.bytes <= self.bytes && want.cost <= self.cost
    }

    /// This room less `used` (none left below zero).
    pub fn saturating_sub(self, used: FlightSize) -> FlightSize {
        FlightSize {
            bytes: self.bytes.saturating_sub(used.bytes),
            cost: self.cost.saturating_sub(used.cost),
        }
    }

    /// Whether both ways have some room left.
    pub fn any_room(self) -> bool {
        self.bytes > 0 && self.cost > 0
    }

    /// `self + now - before`, neither way below zero.
    pub fn replace(self, before: FlightSize, now: FlightSize) -> FlightSize {
        FlightSize {
            bytes: (self.bytes + now.bytes).saturating_sub(before.bytes),
            cost: (self.cost + now.cost).saturating_sub(before.cost),
        }
    }
}

/// What a datagram of `len` bytes (UDP payload) takes from the receive
/// buffer of a socket on this host until it is read: Linux charges a queued
/// datagram's whole allocation (its `truesize`), not its length. Below
/// 16 KiB a loopback datagram sits in one power-of-two block with about
/// 380 bytes of bookkeeping, plus a 256-byte head: a 1,232-byte datagram
/// costs 2,304 bytes, a 1,670-byte one 4,352, an 8,000-byte one 16,640.
/// Larger ones cost their length plus 832. (Measured on Linux 6.18 through
/// `/proc/net/udp`'s receive queue; the estimate errs a little high.)
///
/// Counting payload bytes alone, a flight of small datagrams took twice
/// what it seemed to: a hundred connections starting up through 208 KiB
/// buffers overflowed the peer's socket while it was busy elsewhere.
pub(crate) fn receive_buffer_cost(len: usize) -> usize {
    const BOOKKEEPING: usize = 384;
    const HEAD: usize = 256;
    const BLOCK_MAX: usize = 16 << 10;
    let block = len + BOOKKEEPING;
    if block <= BLOCK_MAX {
        block.next_power_of_two().max(1024) + HEAD
    } else {
        len + 1024
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Charges measured on this machine's kernel (Linux 6.18, loopback,
    /// IPv4 and IPv6 alike): (datagram length, bytes charged).
    const MEASURED: &[(usize, usize)] = &[
        (0, 832),
        (20, 832),
        (198, 1280),
        (645, 1280),
        (646, 2304),
        (1232, 2304),
        (1472, 2304),
        (1669, 2304),
        (1670, 4352),
        (3717, 4352),
        (3718, 8448),
        (7813, 8448),
        (7814, 16640),
        (16004, 16640),
        (16005, 16837),
        (32000, 32832),
        (61824, 62656),
        (65507, 66339),
    ];

    #[test]
    fn the_estimate_never_falls_below_the_measured_charge() {
        for &(len, charged) in MEASURED {
            let est = receive_buffer_cost(len);
            assert!(
                est >= charged,
                "{len} bytes: estimated {est}, charged {charged}"
            );
            // Close enough not to waste much of a buffer of full-size packets.
            if len >= 1000 {
                assert!(
                    est <= charged * 2,
                    "{len} bytes: estimated {est}, charged {charged}"
                );
            }
            if len >= 16 << 10 {
                assert!(est <= charged + 256, "{len}: {est} against {charged}");
            }
        }
    }

    #[test]
    fn room_is_checked_and_used_both_ways() {
        let room = FlightSize {
            bytes: 10_000,
            cost: 5_000,
        };
        let p = FlightSize::packet(1200, 0);
        assert_eq!(p.bytes, 1200);
        assert!(p.cost > 2_000, "{p:?}");
        assert!(room.fits(p));
        let left = room.saturating_sub(p).saturating_sub(p);
        assert!(!left.fits(p), "{left:?}");
        assert!(left.any_room());
        assert!(FlightSize::UNLIMITED.fits(FlightSize::packet(60_000, 0)));
        let f = FlightSize::default();
        assert!(f.is_empty());
        let f = f.replace(FlightSize::default(), p);
        assert_eq!(f, p);
        assert_eq!(f.replace(p, FlightSize::default()), FlightSize::default());
    }
}
