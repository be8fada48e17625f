//! An endpoint (listening, with one established connection and data to
//! send) fed arbitrary datagrams and ICMP error reports from a few
//! addresses at arbitrary times: no panic, no endless output, bounded state.
#![no_main]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use libfuzzer_sys::fuzz_target;
use utp_proto::packet::{encode, Header, PacketType};
use utp_proto::{Config, Endpoint};

fn addr(i: u8) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 1000 + u16::from(i % 4)))
}

fuzz_target!(|data: &[u8]| {
    let t0 = Instant::now();
    // Two half-open connections at most: more SYNs get SYN cookies, so
    // packets that return (or forge) them are fuzzed too. One TIME_WAIT at
    // most: a second close ends the first early.
    let cfg = Config::default()
        .accept_backlog(4)
        .max_half_open(2)
        .max_time_wait(1)
        .recv_buffer(64 << 10);
    let mut ep = Endpoint::with_seed(Arc::new(cfg), t0, 7);
    ep.set_listening(true);
    let mut buf = vec![0u8; 70_000];
    // A real connection from 127.0.0.1:1000 (SYN id 100, seq 500).
    let syn = Header {
        ty: PacketType::Syn,
        conn_id: 100,
        timestamp: 0,
        timestamp_diff: 0,
        wnd_size: 1 << 20,
        seq_nr: 500,
        ack_nr: 0,
    };
    let n = encode(&syn, &[], &[], &mut buf);
    ep.handle_datagram(t0, addr(0), &buf[..n]).unwrap();
    let h = ep.accept().expect("accepted");
    ep.with_conn(h, t0, |c| c.write(&[0x5a; 20_000]).unwrap());

    // Input: [addr byte, delay byte, len byte, datagram bytes...]*
    let mut now = t0;
    // Whether the application still holds `h`, and how many connections
    // it let go of (they close, and may end as TIME_WAIT records).
    let (mut held, mut released) = (true, 0usize);
    let mut rest = data;
    while rest.len() >= 3 {
        let (from, dt, len) = (rest[0], rest[1], rest[2] as usize);
        rest = &rest[3..];
        let take = len.min(rest.len());
        let (dgram, tail) = rest.split_at(take);
        rest = tail;
        now += Duration::from_millis(u64::from(dt) * 4);
        // High `from` bytes make the bytes an ICMP error's quote instead
        // (forged reports are as hostile as datagrams).
        match from {
            0xc0.. => {
                ep.handle_too_big(now, addr(from), dgram, 500 + usize::from(dt) * 8);
            }
            0xb0.. => {
                // The application lets go: of `h`, and of whatever waits
                // to be accepted (accepted and dropped at once), closing
                // gracefully or, on an odd delay byte, aborting.
                let mut let_go = |ep: &mut Endpoint, c| {
                    if dt & 1 == 1 {
                        ep.abort(c, now);
                    } else {
                        ep.release(c, now);
                    }
                    released += 1;
                };
                if std::mem::take(&mut held) {
                    let_go(&mut ep, h);
                }
                while let Some(a) = ep.accept() {
                    let_go(&mut ep, a);
                }
                let _ = ep.handle_datagram(now, addr(from), dgram);
            }
            0x80.. => {
                ep.handle_unreachable(now, addr(from), dgram);
            }
            _ => {
                let _ = ep.handle_datagram(now, addr(from), dgram);
            }
        }
        ep.handle_timeout(now);
        let mut sent = 0;
        while ep.poll_transmit(now, &mut buf).is_some() {
            sent += 1;
            assert!(sent < 10_000, "endless transmit");
        }
        // The backlog, the ones let go of (closing, or one TIME_WAIT record).
        assert!(ep.connection_count() <= 1 + 4 + released, "backlog bound");
        assert!(ep.stats().time_wait <= 1, "TIME_WAIT bound");
        if held && ep.connection_count() > 0 && ep.accept_queue_len() == 0 {
            let c = ep.conn(h);
            assert!(c.readable_bytes() <= 64 << 10, "receive buffer bound");
        }
    }
    // Time moves on; timers settle without spinning.
    for _ in 0..1000 {
        let Some(t) = ep.poll_timeout() else { break };
        now = now.max(t);
        ep.handle_timeout(now);
        while ep.poll_transmit(now, &mut buf).is_some() {}
    }
});
