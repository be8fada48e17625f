//! The reorder buffer and both halves of selective acknowledgement, checked
//! against a model after every step.
//!
//! One established connection (we are the responder, 64-byte payloads,
//! room for 32 out-of-order packets) is fed:
//! - the peer's DATA at arbitrary offsets near the window (duplicates,
//!   holes, far-ahead ones). Model: the set of offsets held. Every ack we
//!   send must cumulatively ack exactly the in-order prefix, and its SACK
//!   must report exactly the held packets past the hole; the bytes readable
//!   must be exactly the prefix.
//! - the peer's STATE with arbitrary cumulative acks (also beyond what we
//!   sent) and SACK masks. Model: which of our packets are acked or sacked.
//!   Unacked bytes must match the model, an ack beyond what we sent must
//!   change nothing, and no packet acked or sacked may ever be sent again.
//! - application writes and reads, and time passing (retransmission
//!   timeouts, tail loss probes).
//!
//! Acks: every DATA is acked at once, except a lone in-order one with no
//! hole (the delayed ack, `Config::ack_delay`), whose ack must leave on the
//! next packet we send, on a second DATA, or once 1 ms has passed.
#![no_main]

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use libfuzzer_sys::fuzz_target;
use utp_proto::packet::{encode, sack_bit, Header, Packet, PacketType};
use utp_proto::{Config, Endpoint};

const PEER_ISN: u16 = 40_000;
const PAYLOAD: usize = 64;
const REORDER: usize = 32;

fn peer() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 1000))
}

/// The byte the peer sends at stream offset `i`.
fn byte_at(i: usize) -> u8 {
    (i as u8).wrapping_mul(13).wrapping_add(5)
}

fn header(ty: PacketType, seq_nr: u16, ack_nr: u16) -> Header {
    Header {
        ty,
        conn_id: 101,
        timestamp: 0,
        timestamp_diff: 0,
        wnd_size: 1 << 20,
        seq_nr,
        ack_nr,
    }
}

#[derive(Default)]
struct Model {
    // Receive side: offsets (packet k carries stream bytes k*64..) held.
    held: BTreeSet<u16>,
    /// First offset not yet received in order.
    next: u16,
    read: usize,
    // Send side, by distance from our first data seq.
    /// Payload length of each packet sent, until cumulatively acked.
    sent: BTreeMap<u16, usize>,
    sacked: BTreeSet<u16>,
    /// Packets sent so far (the next new one's index).
    sent_count: u16,
    written: usize,
    cum_acked_bytes: usize,
    /// Cumulative ack given by the peer, as a packet count.
    acked_count: u16,
}

fuzz_target!(|data: &[u8]| {
    let t0 = Instant::now();
    let cfg = Config::default()
        .max_payload(PAYLOAD)
        .max_reorder_packets(REORDER)
        .send_buffer(64 * PAYLOAD)
        .max_timeouts(1000);
    let mut ep = Endpoint::with_seed(Arc::new(cfg), t0, 1);
    ep.set_listening(true);
    let mut buf = vec![0u8; 4096];
    let syn = Header {
        ty: PacketType::Syn,
        conn_id: 100,
        ..header(PacketType::Syn, PEER_ISN, 0)
    };
    let n = encode(&syn, &[], &[], &mut buf);
    ep.handle_datagram(t0, peer(), &buf[..n]).unwrap();
    let h = ep.accept().expect("accepted");
    let t = ep.poll_transmit(t0, &mut buf).expect("SYN-ACK");
    let isn = Packet::parse(&buf[..t.len]).unwrap().header.seq_nr;

    let mut m = Model::default();
    let mut now = t0;
    let mut rd = vec![0u8; 8192];
    let mut ack_beyond = 0u64;
    // An ack held back by the delayed-ack rule, and since when.
    let mut owed: Option<Instant> = None;
    for op in data.chunks_exact(6) {
        let mut expect_ack = false;
        let mut bogus_ack = false;
        let unacked_before = ep.conn(h).stats().bytes_unacked;
        match op[0] % 5 {
            0 | 1 => {
                // Peer DATA at offset k: seq PEER_ISN + 1 + k.
                let k = u16::from(op[1]) % (REORDER as u16 * 3);
                let payload: Vec<u8> = (0..PAYLOAD)
                    .map(|j| byte_at(usize::from(k) * PAYLOAD + j))
                    .collect();
                let ack = isn.wrapping_sub(1).wrapping_add(m.acked_count);
                let hd = header(
                    PacketType::Data,
                    PEER_ISN.wrapping_add(1).wrapping_add(k),
                    ack,
                );
                let n = encode(&hd, &[], &payload, &mut buf);
                ep.handle_datagram(now, peer(), &buf[..n]).unwrap();
                expect_ack = true;
                if k >= m.next && usize::from(k - m.next) < REORDER {
                    m.held.insert(k);
                    while m.held.remove(&m.next) {
                        m.next += 1;
                    }
                }
            }
            2 => {
                // Peer STATE: cumulative ack `a` packets (maybe more than we
                // sent), with a SACK mask.
                let a = u16::from(op[1]) % 80;
                let ack_nr = isn.wrapping_sub(1).wrapping_add(a);
                let sack = [op[2], op[3], op[4], op[5]];
                let use_sack = op[1] & 0x80 != 0;
                let hd = header(PacketType::State, PEER_ISN.wrapping_add(1), ack_nr);
                let n = encode(&hd, if use_sack { &sack } else { &[] }, &[], &mut buf);
                ep.handle_datagram(now, peer(), &buf[..n]).unwrap();
                if a > m.sent_count {
                    bogus_ack = true;
                    ack_beyond += 1;
                } else {
                    if a > m.acked_count {
                        for i in m.acked_count..a {
                            m.cum_acked_bytes += m.sent.remove(&i).expect("sent");
                            m.sacked.remove(&i);
                        }
                        m.acked_count = a;
                    }
                    if use_sack {
                        // Bit i: packet a + 1 + i (seq ack_nr + 2 + i).
                        for i in 0..32 {
                            let p = a + 1 + i as u16;
                            if p >= m.sent_count {
                                break;
                            }
                            if sack_bit(&sack, i) && m.sent.contains_key(&p) {
                                m.sacked.insert(p);
                            }
                        }
                    }
                }
            }
            3 => {
                let want = PAYLOAD * usize::from(op[1] % 9);
                let chunk: Vec<u8> = vec![0x5a; want];
                let n = ep.with_conn(h, now, |c| c.write(&chunk)).unwrap_or(0);
                m.written += n;
            }
            _ => {
                if op[1] & 1 == 0 {
                    let n = ep.with_conn(h, now, |c| c.read(&mut rd)).unwrap_or(0);
                    for (j, b) in rd[..n].iter().enumerate() {
                        assert_eq!(*b, byte_at(m.read + j), "wrong byte at {}", m.read + j);
                    }
                    m.read += n;
                }
                now += Duration::from_millis(u64::from(op[2]) * 20);
            }
        }
        if bogus_ack {
            let after = ep.conn(h).stats().bytes_unacked;
            assert_eq!(after, unacked_before, "a bogus ack changed state");
        }
        ep.handle_timeout(now);
        let mut last_state = None;
        let mut sent = 0;
        while let Some(t) = ep.poll_transmit(now, &mut buf) {
            sent += 1;
            assert!(sent < 10_000, "endless transmit");
            let p = Packet::parse(&buf[..t.len]).unwrap();
            let hd = p.header;
            // Every packet we send acks exactly the in-order prefix.
            assert_eq!(hd.ack_nr, PEER_ISN.wrapping_add(m.next), "cumulative ack");
            match hd.ty {
                PacketType::Data => {
                    let idx = hd.seq_nr.wrapping_sub(isn);
                    if idx == m.sent_count {
                        m.sent.insert(idx, p.payload.len());
                        m.sent_count += 1;
                    } else {
                        assert!(idx < m.sent_count, "seq from the future");
                        assert!(idx >= m.acked_count, "resent a cumulatively acked packet");
                        assert!(!m.sacked.contains(&idx), "resent a SACKed packet {idx}");
                    }
                }
                PacketType::State => {
                    last_state = Some((p.sack.map(<[u8]>::to_vec), hd));
                }
                other => panic!("unexpected {other:?}"),
            }
        }
        if let Some((sack, _)) = &last_state {
            // SACK: bit i is offset next + 1 + i; exactly the held ones.
            let bits = sack.as_deref().unwrap_or(&[]);
            for i in 0..bits.len() * 8 {
                let off = m.next + 1 + i as u16;
                assert_eq!(sack_bit(bits, i), m.held.contains(&off), "SACK bit {i}");
            }
            for &o in &m.held {
                let i = usize::from(o - m.next - 1);
                assert!(i < bits.len() * 8, "held packet {o} not reported");
            }
        } else if expect_ack {
            // An ack may ride on a data packet instead, but only without
            // a hole (a data packet carries no SACK).
            assert!(m.held.is_empty(), "hole not reported by a STATE");
            if sent == 0 {
                // Held for a reply: only one packet's ack at a time.
                assert!(owed.is_none(), "a second packet left unacknowledged");
                owed = Some(now);
            }
        }
        if sent > 0 {
            // Every packet carries the cumulative ack.
            owed = None;
        }
        if let Some(since) = owed {
            assert!(
                now < since + Duration::from_millis(1),
                "an ack held past the ack delay"
            );
        }
        let c = ep.conn(h);
        if c.error().is_some() {
            // Only a handshake that never completed can time out here
            // (max_timeouts is huge); a failure drops all buffers.
            break;
        }
        let st = c.stats();
        assert_eq!(
            st.drops.ack_beyond_sent, ack_beyond,
            "acks beyond what was sent"
        );
        assert_eq!(
            st.bytes_unacked,
            m.written - m.cum_acked_bytes,
            "unacked bytes"
        );
        assert_eq!(
            m.read + c.readable_bytes(),
            usize::from(m.next) * PAYLOAD,
            "readable bytes are the in-order prefix"
        );
    }
});
