//! Upload and download rate limits, shared by an endpoint's connections or
//! per connection, in virtual time: the limit holds within 5% over 10 s,
//! nothing is dropped to enforce it, and LEDBAT does not read the held-back
//! data as queueing delay.

mod common;

use std::time::Duration;

use common::{LinkParams, SimNet};
use utp_proto::{Config, ConnHandle};

const LIMIT: u64 = 2_000_000;

/// A clean 100 Mbit/s path: the limits, not the link, are the bottleneck.
fn fast_path() -> LinkParams {
    LinkParams {
        rate: Some(12_500_000),
        queue_limit: Duration::from_millis(200),
        ..LinkParams::clean()
    }
}

struct Run {
    /// Bytes the receiving application read between 2 s and 12 s.
    measured: u64,
    net: SimNet,
    senders: Vec<ConnHandle>,
}

/// `conns` bulk connections from endpoint 0 to endpoint 1 for 12 virtual
/// seconds, after `setup` configured the endpoints.
fn run(conns: usize, cfg: Config, setup: impl FnOnce(&mut SimNet)) -> Run {
    let mut net = SimNet::new(cfg, fast_path(), 7);
    setup(&mut net);
    let start = net.now;
    let senders: Vec<ConnHandle> = (0..conns)
        .map(|_| net.eps[0].connect(start, common::peer()).expect("free id"))
        .collect();
    let mut receivers = Vec::new();
    let chunk = vec![0xa5u8; 64 * 1024];
    let mut buf = vec![0u8; 64 * 1024];
    let (mut read, mut at_2s, mut at_12s) = (0u64, None, None);
    net.run(Duration::from_secs(13), 50_000_000, |net| {
        let now = net.now;
        while let Some(h) = net.eps[1].accept() {
            receivers.push(h);
        }
        for &h in &senders {
            net.eps[0].with_conn(h, now, |c| {
                if c.is_established() {
                    while let Ok(1..) = c.write(&chunk) {}
                }
            });
        }
        for &h in &receivers {
            read += net.eps[1].with_conn(h, now, |c| {
                let mut n = 0u64;
                while let Ok(k @ 1..) = c.read(&mut buf) {
                    n += k as u64;
                }
                n
            });
        }
        let t = net.elapsed();
        if t >= Duration::from_secs(2) && at_2s.is_none() {
            at_2s = Some(read);
        }
        if t >= Duration::from_secs(12) && at_12s.is_none() {
            at_12s = Some(read);
        }
        // Run the applications at least every millisecond.
        net.app_wake = Some(now + Duration::from_millis(1));
        at_12s.is_some()
    });
    let measured = at_12s.unwrap_or(0) - at_2s.unwrap_or(0);
    Run {
        measured,
        net,
        senders,
    }
}

fn assert_within(what: &str, measured: u64, expect: u64) {
    let err = (measured as f64 - expect as f64).abs() / expect as f64;
    println!(
        "{what}: {measured} bytes in 10 s, expected {expect} ({:.2}% off)",
        err * 100.0
    );
    assert!(
        err <= 0.05,
        "{what}: {measured} bytes, {:.1}% off {expect}",
        err * 100.0
    );
}

fn assert_no_loss_and_no_false_queue(r: &Run) {
    println!("network: {:?}", r.net.stats);
    println!("receiver: {:?}", r.net.eps[1].stats());
    for &h in &r.senders {
        let s = r.net.eps[0].conn(h).stats();
        // Nothing lost, no congestion response: at most zero-window probes
        // a full receiver turned away are sent again.
        assert_eq!(s.timeouts, 0, "limits must not look like loss: {s:?}");
        assert_eq!(
            s.fast_retransmits, 0,
            "limits must not look like loss: {s:?}"
        );
        // Lost path MTU probes are resent as normal packets; not congestion.
        assert!(
            s.packets_retransmitted <= s.zero_window_probes + s.pmtud_probes_lost,
            "{s:?}"
        );
        let q = s.delay.expect("LEDBAT has delay samples").queuing_delay;
        // The link carries 2 MB/s of its 12.5: any queue is a few packets.
        assert!(
            q <= Duration::from_millis(5),
            "held-back data read as queueing delay: {q:?}"
        );
    }
    assert_eq!(r.net.stats.queue_drops, 0);
    // The limit is shared fairly: every connection within 25% of the mean.
    let sent: Vec<u64> = r
        .senders
        .iter()
        .map(|&h| r.net.eps[0].conn(h).stats().bytes_sent)
        .collect();
    let mean = sent.iter().sum::<u64>() as f64 / sent.len() as f64;
    println!("bytes per connection: {sent:?}");
    for &b in &sent {
        assert!(
            (b as f64 - mean).abs() <= 0.25 * mean,
            "unfair shares: {sent:?}"
        );
    }
}

#[test]
fn shared_upload_limit_holds_for_ten_connections() {
    let r = run(10, Config::default(), |net| {
        net.eps[0].set_upload_limit(Some(LIMIT));
    });
    assert_within(
        "shared upload limit, 10 connections",
        r.measured,
        LIMIT * 10,
    );
    assert_no_loss_and_no_false_queue(&r);
    assert_eq!(r.net.eps[0].rate_limits(), (Some(LIMIT), None));
}

#[test]
fn shared_download_limit_holds_for_ten_connections() {
    let r = run(10, Config::default(), |net| {
        net.eps[1].set_download_limit(Some(LIMIT));
    });
    assert_within(
        "shared download limit, 10 connections",
        r.measured,
        LIMIT * 10,
    );
    assert_no_loss_and_no_false_queue(&r);
}

#[test]
fn per_connection_limit_from_the_config() {
    let r = run(1, Config::default().upload_limit(Some(500_000)), |_| {});
    assert_within("per-connection upload limit", r.measured, 5_000_000);
    assert_eq!(
        r.net.eps[0].conn(r.senders[0]).rate_limits(),
        (Some(500_000), None)
    );
}

#[test]
fn without_limits_the_same_setup_goes_much_faster() {
    // The control: the limits above are what held the rate.
    let r = run(10, Config::default(), |_| {});
    println!("unlimited: {} bytes in 10 s", r.measured);
    assert!(r.measured > LIMIT * 10 * 3, "{}", r.measured);
}
