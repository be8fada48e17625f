//! Property: two endpoints over a path with arbitrary (proptest-chosen)
//! loss, duplication, reordering, delay and outages either deliver exactly
//! the bytes written, in order, both ways, or fail with a connection error;
//! never wrong bytes, never more bytes, never an EOF before the end, and
//! never running past a virtual-time bound derived from the configured
//! timeouts (the simulator panics on a stall or on that bound). Every
//! connection is freed at the end.

mod common;

use std::time::Duration;

use common::{pattern, Fate, LinkParams, Script, SimNet};
use proptest::prelude::*;
use utp_proto::{Config, ConnHandle, ConnectionError};

#[derive(Default)]
struct Side {
    h: Option<ConnHandle>,
    send: Vec<u8>,
    written: usize,
    closed: bool,
    expect: Vec<u8>,
    got: Vec<u8>,
    eof: bool,
    released: bool,
    failed: Option<ConnectionError>,
}

impl std::fmt::Debug for Side {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Side")
            .field("h", &self.h)
            .field("written", &(self.written, self.send.len()))
            .field("got", &(self.got.len(), self.expect.len()))
            .field("closed", &self.closed)
            .field("eof", &self.eof)
            .field("released", &self.released)
            .field("failed", &self.failed)
            .finish()
    }
}

/// Short timers, so that giving up happens quickly in virtual time; the
/// idle timeout makes a receiver whose sender died give up too.
fn config() -> Config {
    Config::default()
        .max_payload(500)
        .recv_buffer(64 << 10)
        .send_buffer(64 << 10)
        .initial_rto(Duration::from_millis(300))
        .min_rto(Duration::from_millis(200))
        .max_rto(Duration::from_secs(2))
        .max_timeouts(5)
        .connect_timeout(Duration::from_secs(5))
        .keepalive_interval(Some(Duration::from_secs(2)))
        .idle_timeout(Some(Duration::from_secs(10)))
        .time_wait(Duration::from_secs(1))
        .linger(Duration::from_secs(3))
}

/// Longest any case may take in virtual time. A healthy transfer of these
/// sizes takes seconds; each blackout costs at most its length plus the
/// give-up budget (~10 s with the timers above).
const MAX_VIRTUAL: Duration = Duration::from_secs(900);

#[derive(Debug)]
struct Outcome {
    sides: [Side; 2],
    elapsed: Duration,
}

fn transfer(script: Script, delay_ms: u64, c2s: usize, s2c: usize, seed: u64) -> Outcome {
    let params = LinkParams {
        delay: Duration::from_millis(delay_ms),
        ..LinkParams::clean()
    };
    let mut net = SimNet::new(config(), params, seed);
    net.script = Some(script);
    let mut sides = [
        Side {
            send: pattern(c2s, seed),
            expect: pattern(s2c, seed ^ 1),
            ..Default::default()
        },
        Side {
            send: pattern(s2c, seed ^ 1),
            expect: pattern(c2s, seed),
            ..Default::default()
        },
    ];
    sides[0].h = Some(net.eps[0].connect(net.now, net.addrs[1]).unwrap());
    let mut buf = vec![0u8; 1 << 16];
    net.run(MAX_VIRTUAL, 2_000_000, |net| {
        let now = net.now;
        while let Some(h) = net.eps[1].accept() {
            // A SYN that arrives after the first connection was accepted
            // is a late copy; there is only one flow.
            if sides[1].h.is_none() && !sides[1].released {
                sides[1].h = Some(h);
            } else {
                net.eps[1].release(h, now);
            }
        }
        for (i, s) in sides.iter_mut().enumerate() {
            let Some(h) = s.h else { continue };
            if s.released {
                continue;
            }
            let ep = &mut net.eps[i];
            if let Some(e) = ep.conn(h).error() {
                // Drain what was delivered before the failure, then give up.
                loop {
                    match ep.with_conn(h, now, |c| c.read(&mut buf)) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => {
                            let at = s.got.len();
                            assert!(at + n <= s.expect.len(), "side {i}: more bytes than sent");
                            assert!(buf[..n] == s.expect[at..at + n], "side {i}: wrong bytes");
                            s.got.extend_from_slice(&buf[..n]);
                        }
                    }
                }
                s.failed = Some(e);
                ep.release(h, now);
                s.released = true;
                continue;
            }
            while s.written < s.send.len() {
                let rest = &s.send[s.written..];
                // Side 0 copies some stretches in and lends others as
                // `Bytes` of various sizes (`write_bytes`, the stream's
                // `write_chunk`); side 1 writes in two steps, as the async
                // layer does for large writes (room reserved, filled,
                // committed).
                let lend = (s.written / 5000) % 2 == 1;
                let n = ep
                    .with_conn(h, now, |c| {
                        if i == 0 && lend {
                            let len = rest.len().min(4000 + s.written % 9000);
                            let mut chunk = bytes::Bytes::copy_from_slice(&rest[..len]);
                            return c.write_bytes(&mut chunk);
                        }
                        if i == 0 {
                            return c.write(&rest[..rest.len().min(6000)]);
                        }
                        match c.write_reserve(rest.len())? {
                            None => Ok(0),
                            Some((mut buf, n)) => {
                                buf.extend_from_slice(&rest[..n]);
                                c.write_commit(buf)
                            }
                        }
                    })
                    .expect("write on a live connection");
                if n == 0 {
                    break;
                }
                s.written += n;
            }
            if s.written == s.send.len() && !s.closed && ep.conn(h).is_established() {
                ep.with_conn(h, now, |c| c.close());
                s.closed = true;
            }
            loop {
                let n = ep
                    .with_conn(h, now, |c| c.read(&mut buf))
                    .expect("read on a live connection");
                if n == 0 {
                    break;
                }
                common::append_checked(&mut s.got, &s.expect, &buf[..n], i);
            }
            if ep.conn(h).is_eof() && !s.eof {
                assert_eq!(s.got.len(), s.expect.len(), "side {i}: EOF before the end");
                s.eof = true;
            }
            if s.closed && s.eof && ep.conn(h).is_fin_acked() {
                ep.release(h, now);
                s.released = true;
            }
        }
        let live = sides.iter().any(|s| s.h.is_some() && !s.released);
        !live && net.eps.iter().all(|e| e.connection_count() == 0)
    });
    Outcome {
        sides,
        elapsed: net.elapsed(),
    }
}

fn fate() -> impl Strategy<Value = Fate> {
    (
        prop::bool::weighted(0.15),
        prop::bool::weighted(0.05),
        prop_oneof![3 => Just(0u64), 1 => 0u64..200],
    )
        .prop_map(|(drop, dup, extra)| Fate {
            drop,
            dup,
            extra_delay: Duration::from_millis(extra),
        })
}

fn script() -> impl Strategy<Value = Script> {
    (
        prop::collection::vec(fate(), 0..40),
        prop::collection::vec((0u64..20_000, 0u64..25_000), 0..3),
    )
        .prop_map(|(fates, outages)| Script {
            fates,
            blackouts: outages
                .into_iter()
                .map(|(s, l)| (Duration::from_millis(s), Duration::from_millis(l)))
                .collect(),
        })
}

fn check(o: &Outcome, script: &Script) -> Result<(), TestCaseError> {
    let failed = o.sides.iter().any(|s| s.failed.is_some());
    for s in &o.sides {
        prop_assert!(s.got[..] == s.expect[..s.got.len()]);
        if s.eof {
            prop_assert_eq!(s.got.len(), s.expect.len());
        }
    }
    if !failed {
        // Nobody gave up: everything arrived, both ways.
        for s in &o.sides {
            prop_assert!(s.h.is_some() && s.eof, "{:?}", s.failed);
            prop_assert_eq!(&s.got, &s.expect);
        }
    }
    // A path that loses nothing for good must not make anyone give up.
    let lossless =
        script.blackouts.iter().all(|b| b.1.is_zero()) && script.fates.iter().all(|f| !f.drop);
    if lossless {
        prop_assert!(!failed, "failed on a lossless path: {:?}", o);
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    #[test]
    fn transfers_are_exact_or_fail_cleanly(
        script in script(),
        delay_ms in 1u64..80,
        c2s in 0usize..60_000,
        s2c in 0usize..20_000,
        seed in any::<u64>(),
    ) {
        let o = transfer(script.clone(), delay_ms, c2s, s2c, seed);
        check(&o, &script)?;
        let failed = o.sides.iter().filter(|s| s.failed.is_some()).count();
        eprintln!("case: {:?} virtual, {failed} side(s) failed, {} fates, {} outages", o.elapsed, script.fates.len(), script.blackouts.len());
        prop_assert!(o.elapsed < MAX_VIRTUAL);
    }
}

/// The same harness over a path that loses every datagram after the
/// handshake must end with errors on both sides, within the bound.
#[test]
fn total_outage_mid_transfer_fails_both_sides_within_the_timeouts() {
    let script = Script {
        fates: Vec::new(),
        blackouts: vec![(Duration::from_millis(100), Duration::from_secs(3600))],
    };
    let o = transfer(script, 20, 200_000, 50_000, 5);
    for s in &o.sides {
        assert_eq!(s.failed, Some(ConnectionError::TimedOut), "{s:?}");
        assert!(s.got.len() < s.expect.len());
    }
    // Sender: ~5 backed-off RTOs (at most 2 s each); receiver: the 10 s
    // idle timeout.
    assert!(o.elapsed < Duration::from_secs(15), "{:?}", o.elapsed);
}
