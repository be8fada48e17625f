//! One established connection (we are the responder, with data queued both
//! ways) fed well-formed packets with arbitrary fields close to its live
//! window, at arbitrary times, interleaved with application reads, writes
//! and close: no panic, no endless output, buffers stay bounded, and the
//! bytes delivered are always a prefix of what the peer consistently sent.
//! Datagrams arrive in shared buffers (`handle_datagram_shared`); with the
//! first input byte odd, payloads are large enough (33,000 bytes) to reach
//! the reader as slices of them.
#![no_main]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use utp_proto::packet::{encode, Header, Packet, PacketType};
use utp_proto::{Config, Endpoint};

const PEER_ISN: u16 = 500;

fn peer() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 1000))
}

/// The payload byte the fuzzing peer always sends at stream offset `i`, so a
/// delivered stream can be checked whatever the packet order was.
fn byte_at(i: usize) -> u8 {
    (i as u8).wrapping_mul(31).wrapping_add(7)
}

fuzz_target!(|data: &[u8]| {
    let t0 = Instant::now();
    // Stream bytes per sequence number, and the receive buffer.
    let (unit, recv) = match data.first() {
        Some(b) if b & 1 == 1 => (33_000usize, 256usize << 10),
        _ => (64, 32 << 10),
    };
    let cfg = Config::default().recv_buffer(recv).send_buffer(32 << 10);
    let mut ep = Endpoint::with_seed(Arc::new(cfg), t0, 3);
    ep.set_listening(true);
    let mut buf = vec![0u8; 70_000];
    let syn = Header {
        ty: PacketType::Syn,
        conn_id: 100,
        timestamp: 0,
        timestamp_diff: 0,
        wnd_size: 1 << 20,
        seq_nr: PEER_ISN,
        ack_nr: 0,
    };
    let n = encode(&syn, &[], &[], &mut buf);
    ep.handle_datagram(t0, peer(), &buf[..n]).unwrap();
    let h = ep.accept().expect("accepted");
    let t = ep.poll_transmit(t0, &mut buf).expect("SYN-ACK");
    let our_isn = Packet::parse(&buf[..t.len]).unwrap().header.seq_nr;

    // Each op: 8 bytes. Packet payload i carries stream offset (seq - first) * unit.
    let mut now = t0;
    let mut delivered: Vec<u8> = Vec::new();
    let mut rd = [0u8; 4096];
    for op in data.chunks_exact(8) {
        now += Duration::from_millis(u64::from(op[0] % 64) * 8);
        match op[1] % 8 {
            // Either entry the async layer uses, or the general one.
            0 => {
                let write = |c: &mut utp_proto::Connection| c.write(&[0xab; 1500]);
                let _ = if op[2] & 1 == 0 {
                    ep.with_conn(h, now, write)
                } else {
                    ep.with_conn_sending(h, now, write)
                };
            }
            1 => {
                let read = |c: &mut utp_proto::Connection| c.read(&mut rd);
                let r = if op[2] & 1 == 0 {
                    ep.with_conn(h, now, read)
                } else {
                    ep.with_conn_reading(h, now, read)
                };
                if let Ok(n) = r {
                    delivered.extend_from_slice(&rd[..n]);
                }
            }
            2 => ep.with_conn(h, now, |c| c.close()),
            _ => {
                let ty = [
                    PacketType::Data,
                    PacketType::Fin,
                    PacketType::State,
                    PacketType::Reset,
                ][usize::from(op[2] % 4)];
                // Sequence numbers near the live window, sometimes far off.
                let k = u16::from(op[3]) % 48;
                let seq_nr = if op[3] >= 250 {
                    u16::from_be_bytes([op[4], op[5]])
                } else {
                    PEER_ISN.wrapping_add(1 + k)
                };
                let ack_nr = our_isn.wrapping_add(u16::from(op[4] % 64)).wrapping_sub(1);
                let wnd = u32::from(op[6]) << 10;
                let sack = if op[7] & 0x80 != 0 {
                    vec![op[5], op[6], op[7], op[4]]
                } else {
                    Vec::new()
                };
                // Consistent content: `unit` bytes per sequence number.
                let payload: Vec<u8> = if ty == PacketType::Data {
                    let off = usize::from(seq_nr.wrapping_sub(PEER_ISN.wrapping_add(1))) * unit;
                    (off..off + unit).map(byte_at).collect()
                } else {
                    Vec::new()
                };
                let hdr = Header {
                    ty,
                    conn_id: 101,
                    timestamp: 0,
                    timestamp_diff: 0,
                    wnd_size: wnd,
                    seq_nr,
                    ack_nr,
                };
                let n = encode(&hdr, &sack, &payload, &mut buf);
                let dgram = Bytes::copy_from_slice(&buf[..n]);
                let _ = ep.handle_datagram_shared(now, peer(), &dgram);
            }
        }
        ep.handle_timeout(now);
        let mut sent = 0;
        while ep.poll_transmit(now, &mut buf).is_some() {
            sent += 1;
            assert!(sent < 10_000, "endless transmit");
        }
        let c = ep.conn(h);
        // One in-order packet past a full buffer is taken (a window probe).
        assert!(c.readable_bytes() <= recv + unit, "receive buffer bound");
        assert!(c.stats().bytes_unacked <= 32 << 10, "send buffer bound");
    }
    // Whatever was delivered is exactly the peer's stream from its start.
    for (i, b) in delivered.iter().enumerate() {
        assert_eq!(*b, byte_at(i), "wrong byte delivered at {i}");
    }
});
