//! Path MTU discovery end to end in the simulator: links whose MTU drops
//! datagrams silently (ICMP filtered), a black hole opening mid-transfer, a
//! path that grows, and probe losses that must not count as congestion.

mod common;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{datagram, drain, hdr, pattern, peer, sack_of, LinkParams, SimNet, IP_UDP_OVERHEAD};
use utp_proto::congestion::{AckInfo, ControllerFactory};
use utp_proto::packet::{PacketType, HEADER_LEN};
use utp_proto::{Aimd, Config, ConnHandle, ConnectionStats, Controller, Endpoint};

const MIB: usize = 1 << 20;

/// What a one-way transfer looked like.
struct Run {
    net: SimNet,
    /// Sender's statistics just before release.
    stats: ConnectionStats,
    /// (virtual time, payload size) at every change of the sender's size.
    sizes: Vec<(Duration, usize)>,
    /// Longest time without new in-order bytes at the receiver, and when
    /// it ended.
    longest_stall: (Duration, Duration),
    /// The sender's congestion window ever went down.
    cwnd_decreased: bool,
}

/// Sends `data` from endpoint 0 to endpoint 1 and checks it arrives intact.
/// `ceiling` is the largest datagram "the OS" allows (interface MTU minus
/// 28). `hook` runs every step with the bytes received so far (to change
/// the path mid-transfer).
fn transfer(
    cfg: Config,
    params: LinkParams,
    ceiling: usize,
    data: Vec<u8>,
    max_virtual: Duration,
    mut hook: impl FnMut(&mut SimNet, usize),
) -> Run {
    let mut net = SimNet::new(cfg, params, 42);
    let now = net.now;
    let ha: ConnHandle = net.eps[0].connect(now, net.addrs[1]).unwrap();
    net.eps[0].set_max_datagram(ha, now, ceiling);
    let mut hb: Option<ConnHandle> = None;
    let mut written = 0;
    let mut closed = false;
    let mut got: Vec<u8> = Vec::with_capacity(data.len());
    let mut buf = vec![0u8; 1 << 16];
    let mut sizes = Vec::new();
    let mut last_size = 0;
    let mut last_progress = now;
    let mut longest_stall = (Duration::ZERO, Duration::ZERO);
    let mut last_cwnd = 0;
    let mut cwnd_decreased = false;
    let mut stats = None;
    net.run(max_virtual, 5_000_000, |net| {
        let now = net.now;
        hook(net, got.len());
        if hb.is_none() {
            hb = net.eps[1].accept();
            if let Some(h) = hb {
                net.eps[1].set_max_datagram(h, now, ceiling);
            }
        }
        if stats.is_none() {
            let c = net.eps[0].conn(ha);
            assert!(c.error().is_none(), "sender failed: {:?}", c.stats());
            let st = c.stats();
            if st.payload_size != last_size {
                sizes.push((net.elapsed(), st.payload_size));
                last_size = st.payload_size;
            }
            if st.cwnd < last_cwnd {
                cwnd_decreased = true;
            }
            last_cwnd = st.cwnd;
            while written < data.len() {
                let n = net.eps[0]
                    .with_conn(ha, now, |c| c.write(&data[written..]))
                    .unwrap();
                if n == 0 {
                    break;
                }
                written += n;
            }
            if written == data.len() && !closed {
                net.eps[0].with_conn(ha, now, |c| c.close());
                closed = true;
            }
            if net.eps[0].conn(ha).is_fin_acked() {
                stats = Some(net.eps[0].conn(ha).stats());
            }
        }
        if let Some(h) = hb {
            loop {
                let n = net.eps[1].with_conn(h, now, |c| c.read(&mut buf)).unwrap();
                if n == 0 {
                    break;
                }
                let at = got.len();
                assert!(buf[..n] == data[at..at + n], "corrupted stream at {at}");
                got.extend_from_slice(&buf[..n]);
                last_progress = now;
            }
            let stall = now - last_progress;
            if stall > longest_stall.0 && got.len() < data.len() {
                longest_stall = (stall, net.elapsed());
            }
        }
        got.len() == data.len() && stats.is_some()
    });
    let stats = stats.unwrap();
    eprintln!(
        "{:?} virtual; sizes {sizes:?}; longest stall {longest_stall:?}; {:?}\n  {stats:?}",
        net.elapsed(),
        net.stats
    );
    Run {
        net,
        stats,
        sizes,
        longest_stall,
        cwnd_decreased,
    }
}

/// Largest uTP payload a link of `mtu` carries.
fn fits(mtu: usize) -> usize {
    mtu - IP_UDP_OVERHEAD - HEADER_LEN
}

/// A clean path with a 20 ms round trip and the given MTU.
fn link(mtu: usize) -> LinkParams {
    LinkParams {
        mtu: Some(mtu),
        ..LinkParams::clean()
    }
}

/// When the sender's payload size took its final value.
fn converged_at(run: &Run) -> Duration {
    run.sizes.last().unwrap().0
}

#[test]
fn link_mtu_1280_is_found_within_a_few_round_trips() {
    // The first hop says 1500 (the OS ceiling), a later link carries 1280
    // and its ICMP is filtered: probes above it just vanish.
    let run = transfer(
        Config::default(),
        link(1280),
        1500 - IP_UDP_OVERHEAD,
        pattern(4 * MIB, 1),
        Duration::from_secs(60),
        |_, _| {},
    );
    let size = run.stats.payload_size;
    assert!(
        size <= fits(1280) && size + 8 >= fits(1280),
        "payload {size} does not fit 1280 tightly"
    );
    assert_eq!(run.net.stats.mtu_drops, run.stats.pmtud_probes_lost);
    // RTT 20 ms: the search (4 sizes fail twice, 2 pass) takes ~10 round trips.
    let t = converged_at(&run);
    assert!(t <= Duration::from_millis(400), "converged after {t:?}");
    assert_eq!(run.stats.timeouts, 0);
}

#[test]
fn ethernet_path_is_confirmed_with_one_probe() {
    let run = transfer(
        Config::default(),
        link(1500),
        1500 - IP_UDP_OVERHEAD,
        pattern(MIB, 2),
        Duration::from_secs(60),
        |_, _| {},
    );
    assert_eq!(run.stats.payload_size, fits(1500));
    assert_eq!(run.stats.pmtud_probes, 1);
    assert!(converged_at(&run) <= Duration::from_millis(100));
}

/// Probes are even-sized (a probe's one byte of data is its last, and a
/// receiver reading into an odd buffer one byte short of it would find an
/// intact empty packet): where the path carries an odd size, the search
/// settles one byte below it.
#[test]
fn an_odd_path_mtu_is_found_to_within_one_byte() {
    let run = transfer(
        Config::default(),
        link(1501),
        1501 - IP_UDP_OVERHEAD,
        pattern(MIB, 4),
        Duration::from_secs(60),
        |_, _| {},
    );
    assert_eq!(run.stats.payload_size, fits(1501) - 1);
}

#[test]
fn mtu_drop_from_9000_to_1280_mid_transfer_never_stalls_beyond_three_rtos() {
    let mut dropped_at = None;
    let run = transfer(
        Config::default(),
        link(9000),
        9000 - IP_UDP_OVERHEAD,
        pattern(32 * MIB, 3),
        Duration::from_secs(120),
        |net, received| {
            if received >= 8 * MIB && dropped_at.is_none() {
                // The route changes: a 1280 link, ICMP filtered.
                net.params.mtu = Some(1280);
                dropped_at = Some(net.elapsed());
            }
        },
    );
    let dropped_at = dropped_at.expect("MTU dropped mid-transfer");
    assert!(
        run.sizes
            .iter()
            .any(|&(t, s)| t < dropped_at && s == fits(9000)),
        "9000 found before the drop: {:?}",
        run.sizes
    );
    assert!(run.stats.pmtud_black_holes >= 1);
    let size = run.stats.payload_size;
    assert!(size <= fits(1280) && size + 8 >= fits(1280), "{size}");
    // The RTO is at its 500 ms floor on a 20 ms path.
    let (stall, _) = run.longest_stall;
    assert!(
        stall < 3 * Config::default().min_rto,
        "stalled for {stall:?}"
    );
    assert!(
        run.net.stats.fragmentable > 0,
        "old big packets resent without DF"
    );
}

#[test]
fn mtu_rise_is_found_at_the_next_research() {
    let interval = Duration::from_secs(1);
    let mut raised_at = None;
    let run = transfer(
        Config::default().pmtud_interval(interval),
        LinkParams {
            rate: Some(12_500_000),
            queue_limit: Duration::from_millis(50),
            ..link(1280)
        },
        9000 - IP_UDP_OVERHEAD,
        pattern(40 * MIB, 4),
        Duration::from_secs(120),
        |net, _| {
            if raised_at.is_none() && net.elapsed() >= Duration::from_millis(1500) {
                net.params.mtu = Some(9000);
                raised_at = Some(net.elapsed());
            }
        },
    );
    let raised_at = raised_at.expect("MTU raised mid-transfer");
    let before: Vec<_> = run.sizes.iter().filter(|(t, _)| *t < raised_at).collect();
    assert!(
        before.last().unwrap().1 <= fits(1280),
        "no larger size before the raise: {:?}",
        run.sizes
    );
    let (t, size) = *run.sizes.last().unwrap();
    assert_eq!(size, fits(9000), "{:?}", run.sizes);
    // The first search ended within ~0.4 s, so the re-search starts by
    // ~1.4 s; the raise at 1.5 s is found by the one after (2.4 s) at the
    // latest, within a few round trips.
    assert!(
        t <= raised_at + interval + Duration::from_millis(500),
        "found at {t:?}, raised at {raised_at:?}"
    );
}

/// Aimd that counts the congestion signals it gets.
#[derive(Debug)]
struct Counting {
    inner: Aimd,
    signals: Arc<AtomicU64>,
}

impl Controller for Counting {
    fn on_ack(&mut self, now: Instant, ack: &AckInfo) {
        self.inner.on_ack(now, ack)
    }
    fn on_loss(&mut self, now: Instant) {
        self.signals.fetch_add(1, Ordering::Relaxed);
        self.inner.on_loss(now)
    }
    fn on_timeout(&mut self, now: Instant) {
        self.signals.fetch_add(1, Ordering::Relaxed);
        self.inner.on_timeout(now)
    }
    fn window(&self) -> usize {
        self.inner.window()
    }
    fn set_mss(&mut self, mss: usize) {
        self.inner.set_mss(mss)
    }
}

#[derive(Debug)]
struct CountingFactory(Arc<AtomicU64>);

impl ControllerFactory for CountingFactory {
    fn build(&self, mss: usize) -> Box<dyn Controller> {
        Box::new(Counting {
            inner: Aimd::new(mss, 16 << 20),
            signals: self.0.clone(),
        })
    }
}

#[test]
fn probe_is_one_stream_byte_padded_behind_an_empty_sack_and_its_loss_is_no_congestion() {
    let t0 = Instant::now();
    let signals = Arc::new(AtomicU64::new(0));
    let cfg = Config::default().controller(Arc::new(CountingFactory(signals.clone())));
    let mut ep = Endpoint::with_seed(Arc::new(cfg), t0, 1);
    let h = ep.connect(t0, peer()).unwrap();
    ep.set_max_datagram(h, t0, 1472);
    let syn = drain(&mut ep, t0).pop().expect("SYN");
    let r = syn.h.conn_id;
    let t1 = t0 + Duration::from_millis(20);
    let synack = hdr(PacketType::State, r, 1000, syn.h.seq_nr);
    ep.handle_datagram(t1, peer(), &datagram(&synack, &[], &[]))
        .unwrap();
    // More than a window (the send limit takes about two).
    let stream: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    let n = ep.with_conn(h, t1, |c| c.write(&stream)).unwrap();
    assert!(n >= 2 * ep.conn(h).stats().cwnd.min(64 << 10), "{n}");
    let out = drain(&mut ep, t1);
    // The probe leads the first flight: the stream's first byte in a data
    // packet of exactly the ceiling (not empty: librqbit-utp drops a data
    // packet without payload), its first extension an all-zero SACK
    // (libutp drops a packet whose first extension type is 3 or more).
    let probe = &out[0];
    assert_eq!(probe.h.ty, PacketType::Data);
    assert_eq!(probe.payload, stream[..1]);
    assert_eq!(probe.raw.len(), 1472);
    assert_eq!(probe.raw[1], 1, "first extension is a SACK");
    assert!(probe.sack.as_deref().unwrap().iter().all(|&b| b == 0));
    let data: Vec<_> = out[1..].iter().collect();
    assert!(data.len() >= 3);
    assert!(data
        .iter()
        .all(|o| o.h.ty == PacketType::Data && o.payload.len() == 1212));
    assert_eq!(
        data[0].payload,
        stream[1..1213],
        "the stream goes on behind it"
    );
    let cwnd = ep.conn(h).stats().cwnd;

    // The peer gets every data packet but not the probe.
    let t2 = t1 + Duration::from_millis(20);
    let ps = probe.h.seq_nr;
    let seqs: Vec<u16> = data.iter().map(|o| o.h.seq_nr).collect();
    let ack = hdr(PacketType::State, r, 1000, ps.wrapping_sub(1));
    ep.handle_datagram(
        t2,
        peer(),
        &datagram(&ack, &sack_of(ack.ack_nr, &seqs), &[]),
    )
    .unwrap();
    let out = drain(&mut ep, t2);
    // Its byte goes again unpadded: a 21-byte packet.
    let resend = out
        .iter()
        .find(|o| o.h.seq_nr == ps)
        .expect("probe's sequence number resent");
    assert_eq!(resend.raw.len(), HEADER_LEN + 1);
    assert_eq!(resend.h.ty, PacketType::Data);
    assert_eq!(resend.payload, stream[..1]);
    let st = ep.conn(h).stats();
    assert_eq!(st.pmtud_probes_lost, 1);
    assert_eq!(st.fast_retransmits, 0);
    assert_eq!(
        signals.load(Ordering::Relaxed),
        0,
        "controller told of a loss"
    );
    assert!(st.cwnd >= cwnd, "window shrank: {} -> {}", cwnd, st.cwnd);
    assert_eq!(st.payload_size, 1212);
}

#[test]
fn probe_losses_do_not_shrink_the_congestion_window() {
    // Clean path, no rate limit: the only losses are probes that are too
    // big, so the controller must never hear of a loss.
    let signals = Arc::new(AtomicU64::new(0));
    let run = transfer(
        Config::default().controller(Arc::new(CountingFactory(signals.clone()))),
        link(1280),
        9000 - IP_UDP_OVERHEAD,
        pattern(8 * MIB, 5),
        Duration::from_secs(60),
        |_, _| {},
    );
    assert!(run.stats.pmtud_probes_lost >= 6, "{:?}", run.stats);
    assert_eq!(run.stats.fast_retransmits, 0);
    assert_eq!(run.stats.timeouts, 0);
    assert_eq!(
        signals.load(Ordering::Relaxed),
        0,
        "controller told of a loss"
    );
    assert!(!run.cwnd_decreased, "a lost probe shrank the window");
}

#[test]
fn discovery_off_keeps_the_base_size_and_never_probes() {
    let run = transfer(
        Config::default().pmtud(false),
        link(9000),
        9000 - IP_UDP_OVERHEAD,
        pattern(MIB, 6),
        Duration::from_secs(60),
        |_, _| {},
    );
    assert_eq!(run.stats.pmtud_probes, 0);
    assert_eq!(run.stats.payload_size, 1212);
    assert_eq!(run.stats.max_payload_sent, 1212);
}

#[test]
fn mtu_drop_under_a_window_of_700_packets_is_caught_by_the_tail_loss_probe() {
    // 0.8 ms RTT and a 1 MiB window of 1452-byte packets: far more in
    // flight than a SACK can describe, so the black-hole check must not
    // depend on SACK reach; the tail loss probe (not the 500 ms RTO)
    // starts it.
    let mut dropped_at = None;
    let run = transfer(
        Config::default(),
        LinkParams {
            delay: Duration::from_micros(400),
            ..link(1500)
        },
        1500 - IP_UDP_OVERHEAD,
        pattern(32 * MIB, 7),
        Duration::from_secs(60),
        |net, received| {
            if received >= 8 * MIB && dropped_at.is_none() {
                net.params.mtu = Some(1280);
                dropped_at = Some(net.elapsed());
            }
        },
    );
    let dropped_at = dropped_at.expect("MTU dropped mid-transfer");
    let (fell_back_at, _) = *run
        .sizes
        .iter()
        .find(|&&(t, s)| t > dropped_at && s == 1212)
        .expect("fell back to the base size");
    assert!(
        fell_back_at - dropped_at < Duration::from_millis(100),
        "fell back {:?} after the drop",
        fell_back_at - dropped_at
    );
    assert_eq!(run.stats.pmtud_black_holes, 1);
    let size = run.stats.payload_size;
    assert!(size <= fits(1280) && size + 8 >= fits(1280), "{size}");
    assert!(run.longest_stall.0 < 3 * Config::default().min_rto);
    // The checks that found it were padded to the size fallen back to
    // (1,212 bytes of payload): the contrast is that size against the
    // current one, not a 20-byte packet against a full one (which a nearly
    // full receive buffer also makes, dropping by size).
    let checks: Vec<usize> = run
        .net
        .stats
        .fragmentable_sizes
        .iter()
        .copied()
        .filter(|&n| n <= HEADER_LEN + 1212)
        .collect();
    assert!(checks.len() >= 3, "{:?}", run.net.stats.fragmentable_sizes);
    assert!(checks.iter().all(|&n| n == HEADER_LEN + 1212), "{checks:?}");
}

#[test]
fn random_loss_reordering_and_queue_drops_are_not_taken_for_a_black_hole() {
    // 5% loss, 10% of datagrams reordered by up to 30 ms, 1% duplicated,
    // a 100 Mbit/s bottleneck with a 50 ms drop-tail queue: plenty of
    // timer-declared losses of full-size packets, none of them a black hole.
    let run = transfer(
        Config::default(),
        LinkParams::lossy(),
        1500 - IP_UDP_OVERHEAD,
        pattern(8 * MIB, 8),
        Duration::from_secs(300),
        |_, _| {},
    );
    assert!(
        run.stats.tail_loss_probes + run.stats.timeouts > 0,
        "no timer fired"
    );
    assert_eq!(run.stats.pmtud_black_holes, 0);
    assert!(run.stats.payload_size > 1212, "{}", run.stats.payload_size);
}

#[test]
fn losses_at_the_base_size_are_not_taken_for_a_black_hole_either() {
    // A lossy path (15% loss) with an MTU of 1,260: nothing above the base
    // size passes, so the size stays at the base and every full-size
    // packet is a base-size one. Its timer-declared losses are no more a
    // black hole there than above it (acks of base-size packets clear the
    // evidence; once they did not, and a long transfer fell to 548 bytes).
    let run = transfer(
        Config::default(),
        LinkParams {
            mtu: Some(1260),
            loss: 0.15,
            ..LinkParams::lossy()
        },
        1500 - IP_UDP_OVERHEAD,
        pattern(4 * MIB, 9),
        Duration::from_secs(300),
        |_, _| {},
    );
    assert!(
        run.stats.tail_loss_probes + run.stats.timeouts > 10,
        "too few timers fired: {:?}",
        run.stats
    );
    assert_eq!(run.stats.pmtud_black_holes, 0);
    assert_eq!(run.stats.payload_size, 1212);
}

#[test]
fn a_path_below_the_base_size_is_found_by_its_black_hole() {
    // An IPv4 path of 1,000 bytes: even the base size (1,232-byte
    // datagrams) vanishes. The checks at the base are spaced a minimum RTO
    // apart, so the fall to 548 bytes takes seconds, not round trips; then
    // the search finds the path's size.
    let run = transfer(
        Config::default(),
        link(1000),
        1500 - IP_UDP_OVERHEAD,
        pattern(MIB, 11),
        Duration::from_secs(60),
        |_, _| {},
    );
    assert_eq!(run.stats.pmtud_black_holes, 1);
    let size = run.stats.payload_size;
    assert!(size <= fits(1000) && size + 8 >= fits(1000), "{size}");
    let fell_at = run
        .sizes
        .iter()
        .find(|&&(_, s)| s < 1212)
        .expect("fell below the base")
        .0;
    assert!(fell_at < Duration::from_secs(6), "fell back at {fell_at:?}");
}

/// The path MTU belongs to the path: a connection opened after another
/// found the size to the same peer starts with it, without probing.
#[test]
fn a_new_connection_to_the_same_peer_starts_with_the_size_found() {
    let ceiling = 9000 - IP_UDP_OVERHEAD;
    let run = transfer(
        Config::default(),
        link(9000),
        ceiling,
        pattern(MIB, 3),
        Duration::from_secs(60),
        |_, _| {},
    );
    assert_eq!(run.stats.payload_size, fits(9000));
    let mut net = run.net;
    let now = net.now;
    let h = net.eps[0].connect(now, net.addrs[1]).unwrap();
    net.eps[0].set_max_datagram(h, now, ceiling);
    let c = net.eps[0].conn(h);
    assert_eq!(c.datagram_size(), ceiling, "the size found, at once");
    assert_eq!(c.stats().payload_size, fits(9000));
}

/// Many connections to one peer search one at a time: never two probes out
/// at once (each probe is a datagram of the size tried; a thousand 64 KiB
/// probes at once overflowed the peer's socket buffer), and the size one
/// confirms reaches the others.
#[test]
fn connections_to_one_peer_probe_one_at_a_time_and_share_the_size() {
    let ceiling = 9000 - IP_UDP_OVERHEAD;
    let mut net = SimNet::new(Config::default(), link(9000), 7);
    let now = net.now;
    let hs: Vec<ConnHandle> = (0..8)
        .map(|_| {
            let h = net.eps[0].connect(now, net.addrs[1]).unwrap();
            net.eps[0].set_max_datagram(h, now, ceiling);
            h
        })
        .collect();
    let data = pattern(256 * 1024, 4);
    let mut written = vec![0; hs.len()];
    let mut accepted = Vec::new();
    let mut buf = vec![0u8; 1 << 16];
    let mut most_probing = 0;
    net.run(Duration::from_secs(30), 1_000_000, |net| {
        let now = net.now;
        while let Some(h) = net.eps[1].accept() {
            accepted.push(h);
        }
        for &h in &accepted {
            while net.eps[1].with_conn(h, now, |c| c.read(&mut buf)).unwrap() > 0 {}
        }
        for (i, &h) in hs.iter().enumerate() {
            if written[i] < data.len() {
                written[i] += net.eps[0]
                    .with_conn(h, now, |c| c.write(&data[written[i]..]))
                    .unwrap();
            }
        }
        let probing = hs
            .iter()
            .filter(|&&h| net.eps[0].conn(h).is_probing())
            .count();
        most_probing = most_probing.max(probing);
        hs.iter()
            .all(|&h| net.eps[0].conn(h).datagram_size() == ceiling)
            && written.iter().all(|&w| w == data.len())
    });
    assert_eq!(most_probing, 1, "one search at a time");
    let probes: u64 = hs
        .iter()
        .map(|&h| net.eps[0].conn(h).stats().pmtud_probes)
        .sum();
    assert!(probes <= 3, "{probes} probes for one path");
}

/// A receiver whose buffer is full (libtorrent whose disk fell behind)
/// drops every new data packet and acks each one with a closed window.
/// The timer's black-hole checks (a full-size resend, then a duplicate at
/// the fall-back size) then look like a black hole: the duplicate is acked,
/// the resend is not. The closed window explains it, so the size stays.
#[test]
fn a_full_receiver_dropping_resends_is_flow_control_not_a_black_hole() {
    let t0 = Instant::now();
    let mut ep = Endpoint::with_seed(Arc::new(Config::default()), t0, 3);
    let h = ep.connect(t0, peer()).unwrap();
    ep.set_max_datagram(h, t0, 1472);
    let syn = drain(&mut ep, t0).pop().expect("SYN");
    let r = syn.h.conn_id;
    let rtt = Duration::from_millis(10);
    let mut now = t0 + rtt;
    let synack = hdr(PacketType::State, r, 1000, syn.h.seq_nr);
    ep.handle_datagram(now, peer(), &datagram(&synack, &[], &[]))
        .unwrap();
    ep.with_conn(h, now, |c| c.write(&[7u8; 400_000])).unwrap();
    // The first flight, led by a probe of the ceiling: all delivered.
    let out = drain(&mut ep, now);
    assert_eq!(out[0].raw.len(), 1472, "the probe leads");
    let mut acked = out.last().unwrap().h.seq_nr;
    now += rtt;
    let ack = hdr(PacketType::State, r, 1000, acked);
    ep.handle_datagram(now, peer(), &datagram(&ack, &[], &[]))
        .unwrap();
    assert_eq!(ep.conn(h).stats().payload_size, 1452, "the probe confirmed");

    // One more flight is taken in order; then the buffer is full: the
    // window closes and everything new is dropped, but acked (libtorrent
    // defers an ack for every data packet it sees).
    let mut answers: Vec<(Instant, Vec<u8>)> = Vec::new();
    let mut room = 8;
    let mut full_sized_resends = 0;
    let end = now + Duration::from_secs(5);
    while now < end {
        for o in drain(&mut ep, now) {
            if o.h.ty != PacketType::Data {
                continue;
            }
            if o.h.seq_nr == acked.wrapping_add(1) && room > 0 {
                room -= 1;
                acked = o.h.seq_nr;
            } else if o.payload.len() == 1452 {
                full_sized_resends += 1;
            }
            let mut a = hdr(PacketType::State, r, 1000, acked);
            a.wnd_size = if room > 0 { 1 << 20 } else { 0 };
            answers.push((now + rtt, datagram(&a, &[], &[])));
        }
        answers.sort_by_key(|a| a.0);
        while answers.first().is_some_and(|a| a.0 <= now) {
            let (_, d) = answers.remove(0);
            ep.handle_datagram(now, peer(), &d).unwrap();
        }
        ep.handle_timeout(now);
        now += Duration::from_millis(1);
    }
    let st = ep.conn(h).stats();
    assert!(
        st.timeouts > 0 && full_sized_resends > 3,
        "no timer resent into the full buffer: {st:?}"
    );
    assert_eq!(st.pmtud_black_holes, 0, "{st:?}");
    assert_eq!(st.payload_size, 1452);
    assert!(ep.conn(h).error().is_none());
}

/// An ICMP "fragmentation needed" quoting one of our full-size packets in
/// flight: the size drops to the MTU it names at once, and everything sent
/// larger goes again (without DF), with no black hole to find by losses.
/// Reports that do not quote such a packet of that connection change
/// nothing: they are not authenticated.
#[test]
fn a_too_big_report_quoting_a_packet_in_flight_lowers_the_size_at_once() {
    let mut now = Instant::now();
    let mut ep = Endpoint::with_seed(Arc::new(Config::default()), now, 5);
    let At1472 {
        h,
        r,
        acked,
        flight,
    } = at_1472_with_flight(&mut ep, &mut now);
    let quote = |o: &common::Out| o.raw[..28].to_vec();
    let q = quote(&flight[1]);

    let mut other_id = q.clone();
    other_id[2..4].copy_from_slice(&flight[1].h.conn_id.wrapping_add(5).to_be_bytes());
    let mut future = q.clone();
    future[16..18].copy_from_slice(
        &flight
            .last()
            .unwrap()
            .h
            .seq_nr
            .wrapping_add(3)
            .to_be_bytes(),
    );
    let mut delivered = q.clone();
    delivered[16..18].copy_from_slice(&acked.to_be_bytes());
    for (what, from, q, max) in [
        ("another connection id", peer(), &other_id[..], 1252),
        ("a sequence number not sent yet", peer(), &future[..], 1252),
        (
            "a packet already acknowledged",
            peer(),
            &delivered[..],
            1252,
        ),
        ("a quote cut short", peer(), &q[..12], 1252),
        ("another peer", common::me(), &q[..], 1252),
        ("a size the packet fitted", peer(), &q[..], 1472),
    ] {
        assert!(!ep.handle_too_big(now, from, q, max), "{what}");
        assert_eq!(ep.conn(h).datagram_size(), 1472, "{what}");
    }

    assert!(ep.handle_too_big(now, peer(), &q, 1252));
    assert_eq!(ep.conn(h).datagram_size(), 1252);
    assert_eq!(ep.conn(h).stats().payload_size, 1232);
    assert_eq!(ep.stats().too_big_reports, 7);
    // Every packet of the flight goes again at once, without DF (its
    // sequence number fixes its size); new data comes at the new size.
    let mut buf = vec![0u8; common::BUF];
    let mut resent = Vec::new();
    while let Some(t) = ep.poll_transmit(now, &mut buf) {
        let o = common::Out::parse(t.destination, &buf[..t.len]);
        if flight.iter().any(|f| f.h.seq_nr == o.h.seq_nr) {
            assert!(
                t.fragmentable && t.len == 1472,
                "{} {}",
                t.len,
                t.fragmentable
            );
            resent.push(o.h.seq_nr);
        }
    }
    assert_eq!(resent.len(), flight.len(), "{resent:?}");
    now += Duration::from_millis(10);
    let ack = hdr(PacketType::State, r, 1000, flight.last().unwrap().h.seq_nr);
    ep.handle_datagram(now, peer(), &datagram(&ack, &[], &[]))
        .unwrap();
    let next = drain(&mut ep, now);
    assert!(!next.is_empty());
    assert!(
        next.iter().all(|o| o.raw.len() <= 1252),
        "new data at the new size"
    );
    let st = ep.conn(h).stats();
    assert_eq!(st.pmtud_black_holes, 0);
    assert_eq!(st.timeouts + st.fast_retransmits, 0);
}

/// A connection to `peer()` that confirmed 1472-byte datagrams (or took
/// them from one that did) and has a flight of them out.
struct At1472 {
    h: ConnHandle,
    /// Our receive id (the id of the peer's packets).
    r: u16,
    /// The last of our sequence numbers the peer acknowledged.
    acked: u16,
    /// The flight of 1472-byte datagrams out now.
    flight: Vec<common::Out>,
}

fn at_1472_with_flight(ep: &mut Endpoint, now: &mut Instant) -> At1472 {
    let h = ep.connect(*now, peer()).unwrap();
    ep.set_max_datagram(h, *now, 1472);
    let syn = drain(ep, *now).pop().expect("SYN");
    let r = syn.h.conn_id;
    *now += Duration::from_millis(10);
    let synack = hdr(PacketType::State, r, 1000, syn.h.seq_nr);
    ep.handle_datagram(*now, peer(), &datagram(&synack, &[], &[]))
        .unwrap();
    ep.with_conn(h, *now, |c| c.write(&[7u8; 400_000])).unwrap();
    let mut flight = drain(ep, *now);
    let mut acked = syn.h.seq_nr;
    if ep.conn(h).datagram_size() < 1472 {
        // The first confirms the size with a probe: ack it all.
        acked = flight.last().unwrap().h.seq_nr;
        *now += Duration::from_millis(10);
        let ack = hdr(PacketType::State, r, 1000, acked);
        ep.handle_datagram(*now, peer(), &datagram(&ack, &[], &[]))
            .unwrap();
        flight = drain(ep, *now);
    }
    assert_eq!(
        ep.conn(h).datagram_size(),
        1472,
        "confirmed by a probe, or taken from a connection that did"
    );
    // Data carries the peer's receive id: ours plus one.
    let flight: Vec<_> = flight
        .into_iter()
        .filter(|o| o.h.conn_id == r.wrapping_add(1))
        .collect();
    assert!(flight.len() >= 4 && flight.iter().all(|o| o.raw.len() == 1472));
    At1472 {
        h,
        r,
        acked,
        flight,
    }
}

/// A too-big report taken by one connection lowers every connection to the
/// same peer address: they share the path, and routers rate-limit their
/// reports, so the others might get none and find a black hole by losses.
#[test]
fn a_too_big_report_lowers_every_connection_to_that_peer() {
    let mut now = Instant::now();
    let mut ep = Endpoint::with_seed(Arc::new(Config::default()), now, 6);
    let At1472 {
        h: a,
        flight: flight_a,
        ..
    } = at_1472_with_flight(&mut ep, &mut now);
    let At1472 {
        h: b,
        flight: flight_b,
        ..
    } = at_1472_with_flight(&mut ep, &mut now);
    // One elsewhere keeps its size.
    let far: std::net::SocketAddr = "10.9.9.9:4000".parse().unwrap();
    let c = ep.connect(now, far).unwrap();
    assert_ne!(ep.conn(c).datagram_size(), 1252);

    assert!(ep.handle_too_big(now, peer(), &flight_a[1].raw[..28], 1252));
    assert_eq!(ep.conn(a).datagram_size(), 1252);
    assert_eq!(ep.conn(b).datagram_size(), 1252, "the other connection");
    // b's flight goes again (without DF), as a's does.
    let mut buf = vec![0u8; common::BUF];
    let mut resent_b = 0;
    while let Some(t) = ep.poll_transmit(now, &mut buf) {
        let o = common::Out::parse(t.destination, &buf[..t.len]);
        if flight_b
            .iter()
            .any(|f| f.h.conn_id == o.h.conn_id && f.h.seq_nr == o.h.seq_nr)
        {
            assert!(t.fragmentable);
            resent_b += 1;
        }
    }
    // As far as the peer's shared flight allows now (a's resends share it);
    // the rest is queued for resending, not left to a timeout.
    assert!(resent_b > 0);
    assert_eq!(ep.conn(b).stats().pmtud_black_holes, 0);
}
