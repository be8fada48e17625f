//! A flood of 100,000 SYNs from many source ports at an endpoint that is in
//! the middle of a transfer: the flood's state stays bounded (half-open
//! limit, accept backlog), the excess is dropped and counted, the transfer
//! is not slowed down and everything is freed afterwards.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::{datagram, hdr, pattern, LinkParams, SimNet};
use utp_proto::packet::PacketType;
use utp_proto::{Config, ConnHandle, EndpointStats};

#[global_allocator]
static GLOBAL: common::alloc::Counting = common::alloc::Counting;
use common::alloc::live;

const SYNS: u32 = 100_000;
const PER_BATCH: u32 = 1_000;
const BATCH_EVERY: Duration = Duration::from_millis(40);
const SIZE: usize = 16 << 20;

struct Report {
    transfer_time: Duration,
    stats: EndpointStats,
    max_conns: usize,
    heap_before: isize,
    heap_peak: isize,
    heap_after: isize,
}

fn flooder(i: u32) -> SocketAddr {
    SocketAddr::from(([10, 9, (i / 50_000) as u8, 1], (i % 50_000) as u16 + 1024))
}

/// 16 MiB from endpoint 0 to endpoint 1 over a 4 MB/s path; with `flood`,
/// endpoint 1 gets 100,000 SYNs during the transfer, and its application
/// accepts every connection it can (the worst case for the half-open
/// bound), dropping each once it failed.
fn run(cfg: Config, flood: bool) -> Report {
    let params = LinkParams {
        rate: Some(4_000_000),
        ..LinkParams::clean()
    };
    let mut net = SimNet::new(cfg.clone(), params, 42);
    net.allow_strangers = true;
    let data = pattern(SIZE, 9);
    let client = net.eps[0].connect(net.now, net.addrs[1]).unwrap();
    let mut server: Option<ConnHandle> = None;
    let mut flood_conns: Vec<ConnHandle> = Vec::new();
    let (mut written, mut got) = (0usize, 0usize);
    let (mut client_done, mut server_done) = (false, false);
    let mut finished_at = None;
    let mut injected = 0u32;
    let flood_start = net.start + Duration::from_millis(300);
    let mut next_batch = flood_start;
    let (mut heap_before, mut heap_peak, mut max_conns) = (0isize, 0isize, 0usize);
    let mut buf = vec![0u8; 1 << 16];
    net.run(Duration::from_secs(120), 5_000_000, |net| {
        let now = net.now;
        if flood && injected < SYNS && now >= next_batch {
            if injected == 0 {
                heap_before = live();
            }
            for i in injected..injected + PER_BATCH {
                let syn = hdr(PacketType::Syn, i as u16, i as u16, 0);
                net.eps[1]
                    .handle_datagram(now, flooder(i), &datagram(&syn, &[], &[]))
                    .unwrap();
            }
            injected += PER_BATCH;
            next_batch += BATCH_EVERY;
            net.app_wake = Some(next_batch);
        }
        while let Some(h) = net.eps[1].accept() {
            if net.eps[1].peer_addr(h) == net.addrs[0] {
                assert!(server.is_none());
                server = Some(h);
            } else {
                flood_conns.push(h);
            }
        }
        // Flood connections never complete; let go of those that failed.
        flood_conns.retain(|&h| {
            if net.eps[1].conn(h).error().is_some() {
                net.eps[1].release(h, now);
                false
            } else {
                true
            }
        });
        if !client_done {
            let ep = &mut net.eps[0];
            assert!(ep.conn(client).error().is_none(), "client failed");
            while written < SIZE {
                let n = ep
                    .with_conn(client, now, |c| c.write(&data[written..]))
                    .unwrap();
                if n == 0 {
                    break;
                }
                written += n;
            }
            if written == SIZE {
                ep.with_conn(client, now, |c| c.close());
                if ep.conn(client).is_fin_acked() && ep.conn(client).is_eof() {
                    ep.release(client, now);
                    client_done = true;
                }
            }
        }
        if let (Some(h), false) = (server, server_done) {
            let ep = &mut net.eps[1];
            assert!(ep.conn(h).error().is_none(), "server failed");
            loop {
                let n = ep.with_conn(h, now, |c| c.read(&mut buf)).unwrap();
                if n == 0 {
                    break;
                }
                assert!(buf[..n] == data[got..got + n], "corrupted at {got}");
                got += n;
            }
            if ep.conn(h).is_eof() {
                assert_eq!(got, SIZE);
                finished_at.get_or_insert(now);
                ep.with_conn(h, now, |c| c.close());
                if ep.conn(h).is_fin_acked() {
                    ep.release(h, now);
                    server_done = true;
                }
            }
        }
        max_conns = max_conns.max(net.eps[1].connection_count());
        if injected > 0 {
            heap_peak = heap_peak.max(live());
        }
        client_done
            && server_done
            && injected >= if flood { SYNS } else { 0 }
            && net.eps.iter().all(|e| e.connection_count() == 0)
    });
    Report {
        transfer_time: finished_at.unwrap() - net.start,
        stats: net.eps[1].stats(),
        max_conns,
        heap_before,
        heap_peak,
        heap_after: live(),
    }
}

#[test]
fn syn_flood_during_a_transfer_is_bounded_counted_and_does_not_starve_it() {
    let cfg = Config::default();
    let base = run(cfg.clone(), false);
    let r = run(cfg.clone(), true);
    let s = &r.stats;
    eprintln!(
        "SYN flood: transfer {:?} (without flood {:?}); max connections {}; \
         heap before {} KiB, peak {} KiB (+{} KiB), after {} KiB; {:?}",
        r.transfer_time,
        base.transfer_time,
        r.max_conns,
        r.heap_before / 1024,
        r.heap_peak / 1024,
        (r.heap_peak - r.heap_before) / 1024,
        r.heap_after / 1024,
        s
    );
    // Bounded: the legit connection plus at most max_half_open flooders.
    assert!(r.max_conns <= 1 + cfg.max_half_open, "{}", r.max_conns);
    // Counted: every SYN was either taken in or dropped for a reason.
    assert_eq!(
        s.connections_accepted + s.syn_half_open_full + s.syn_backlog_full,
        u64::from(SYNS) + 1
    );
    assert!(s.syn_half_open_full > 90_000, "{s:?}");
    // Freed: nothing left once the flood's connections timed out.
    assert_eq!((s.connections_open, s.half_open), (0, 0));
    // Memory: a few KiB per half-open connection, not per SYN.
    let grown = r.heap_peak - r.heap_before;
    assert!(
        grown < (cfg.max_half_open as isize) * 8 * 1024,
        "{grown} bytes for {} half-open connections",
        cfg.max_half_open
    );
    // Not starved: the transfer takes about as long as without the flood.
    assert!(
        r.transfer_time <= base.transfer_time * 11 / 10 + Duration::from_millis(200),
        "{:?} vs {:?}",
        r.transfer_time,
        base.transfer_time
    );
}

#[test]
fn syn_flood_without_accepting_is_bounded_by_the_backlog() {
    // An application that doesn't accept during the flood: the backlog
    // bounds it; dead half-open connections are purged so it recovers.
    let cfg = Config::default().accept_backlog(64);
    let mut ep = utp_proto::Endpoint::with_seed(
        std::sync::Arc::new(cfg.clone()),
        std::time::Instant::now(),
        3,
    );
    ep.set_listening(true);
    let t0 = std::time::Instant::now();
    let base = live();
    let mut peak = 0;
    for i in 0..SYNS {
        let now = t0 + Duration::from_millis(u64::from(i) / 2); // 50 s
        ep.handle_timeout(now);
        let syn = hdr(PacketType::Syn, i as u16, i as u16, 0);
        ep.handle_datagram(now, flooder(i), &datagram(&syn, &[], &[]))
            .unwrap();
        assert!(ep.connection_count() <= 64);
        peak = peak.max(live() - base);
        let mut b = [0u8; 2048];
        while ep.poll_transmit(now, &mut b).is_some() {}
    }
    let s = ep.stats();
    eprintln!("backlog-bound flood: heap peak +{} KiB, {s:?}", peak / 1024);
    // Every ~10 s (connect_timeout) the dead ones are purged and 64 more get in.
    assert!(s.connections_accepted >= 64 * 5, "{s:?}");
    assert_eq!(
        s.connections_accepted + s.syn_backlog_full + s.syn_half_open_full,
        u64::from(SYNS)
    );
    assert!(peak < 64 * 8 * 1024, "{peak}");
}
