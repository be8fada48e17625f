//! Hostile input: arbitrary datagrams never panic the endpoint and never
//! grow its state without bound.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use proptest::prelude::*;
use utp_proto::packet::{self, Header, PacketType};
use utp_proto::{Config, Endpoint};

fn addr(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

fn header(ty: PacketType, conn_id: u16, seq_nr: u16, ack_nr: u16, wnd: u32) -> Header {
    Header {
        ty,
        conn_id,
        timestamp: 0,
        timestamp_diff: 0,
        wnd_size: wnd,
        seq_nr,
        ack_nr,
    }
}

/// A listening endpoint with one established inbound connection from port 1000
/// (SYN conn id 100, seq 500), returned with the responder's first seq.
fn endpoint_with_connection(now: Instant) -> (Endpoint, u16) {
    // Capped at 1400 so `drain` can bound every reply; path MTU probes
    // (padded up to the cap) stay within it.
    let cfg = Config::default().accept_backlog(8).max_payload(1400);
    let mut ep = Endpoint::with_seed(Arc::new(cfg), now, 1);
    ep.set_listening(true);
    let mut buf = vec![0u8; 2048];
    let n = packet::encode(
        &header(PacketType::Syn, 100, 500, 0, 1 << 20),
        &[],
        &[],
        &mut buf,
    );
    ep.handle_datagram(now, addr(1000), &buf[..n]).unwrap();
    let t = ep.poll_transmit(now, &mut buf).expect("SYN-ACK");
    let synack = utp_proto::Packet::parse(&buf[..t.len]).unwrap().header;
    assert_eq!(synack.ty, PacketType::State);
    (ep, synack.seq_nr)
}

fn drain(ep: &mut Endpoint, now: Instant) -> usize {
    let mut buf = vec![0u8; 70_000];
    let mut n = 0;
    while let Some(t) = ep.poll_transmit(now, &mut buf) {
        // Replies are never larger than a full data packet.
        assert!(t.len <= 20 + 2 + packet::MAX_SACK_BYTES + 1400);
        n += 1;
        assert!(n < 100_000, "endless transmit loop");
    }
    n
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn arbitrary_bytes_never_panic(datagrams in proptest::collection::vec(
        proptest::collection::vec(any::<u8>(), 0..200), 1..50)) {
        let now = Instant::now();
        let (mut ep, _) = endpoint_with_connection(now);
        for (i, d) in datagrams.iter().enumerate() {
            let _ = ep.handle_datagram(now, addr(1000 + (i % 3) as u16), d);
        }
        drain(&mut ep, now);
        prop_assert!(ep.connection_count() <= 1 + 8);
    }

    #[test]
    fn arbitrary_packets_for_a_live_connection_never_panic(
        pkts in proptest::collection::vec(
            (0u8..5, any::<u16>(), any::<u16>(), any::<u32>(),
             proptest::option::of(proptest::collection::vec(any::<u8>(), 1..40)),
             0usize..3000, 0u64..2000),
            1..60)
    ) {
        let start = Instant::now();
        let (mut ep, y) = endpoint_with_connection(start);
        let h = ep.accept().expect("accepted");
        ep.with_conn(h, start, |c| c.write(&[7u8; 50_000]).unwrap());
        let mut now = start;
        let mut buf = vec![0u8; 8192];
        for (ty, dseq, dack, wnd, sack, len, dt) in pkts {
            now += Duration::from_millis(dt);
            let ty = [PacketType::Data, PacketType::Fin, PacketType::State,
                      PacketType::Reset, PacketType::Syn][ty as usize];
            // Sequence numbers near and far from the live window.
            let seq_nr = 501u16.wrapping_add(dseq % 64).wrapping_add(if dseq > 60000 { dseq } else { 0 });
            let ack_nr = y.wrapping_add(dack % 64).wrapping_sub(1);
            let hdr = header(ty, 101, seq_nr, ack_nr, wnd);
            let payload = vec![1u8; len];
            let n = packet::encode(&hdr, sack.as_deref().unwrap_or(&[]), &payload, &mut buf);
            let _ = ep.handle_datagram(now, addr(1000), &buf[..n]);
            ep.handle_timeout(now);
            drain(&mut ep, now);
            if ep.connection_count() == 0 {
                break;
            }
            let c = ep.conn(h);
            let st = c.stats();
            // Memory stays within the configured receive buffer.
            prop_assert!(c.readable_bytes() <= 1 << 20);
            prop_assert!(st.bytes_in_flight <= 50_000);
        }
        // Time moves on: every timer eventually settles, nothing spins.
        for _ in 0..200 {
            match ep.poll_timeout() {
                Some(t) => { now = now.max(t); ep.handle_timeout(now); drain(&mut ep, now); }
                None => break,
            }
        }
    }
}

#[test]
fn syn_flood_is_bounded_by_the_backlog() {
    let now = Instant::now();
    let cfg = Config::default().accept_backlog(16);
    let mut ep = Endpoint::with_seed(Arc::new(cfg), now, 2);
    ep.set_listening(true);
    let mut buf = vec![0u8; 64];
    for i in 0..100_000u32 {
        let n = packet::encode(
            &header(PacketType::Syn, i as u16, i as u16, 0, 0),
            &[],
            &[],
            &mut buf,
        );
        let from = SocketAddr::from(([127, 0, (i >> 16) as u8 + 1, (i >> 8) as u8], i as u16));
        ep.handle_datagram(now, from, &buf[..n]).unwrap();
    }
    assert_eq!(ep.connection_count(), 16);
    assert_eq!(ep.stats().syn_backlog_full, 100_000 - 16);
}

#[test]
fn reset_replies_are_rate_limited_and_never_larger_than_the_probe() {
    let now = Instant::now();
    let cfg = Config::default().reset_rate(10);
    let mut ep = Endpoint::with_seed(Arc::new(cfg), now, 3);
    let mut buf = vec![0u8; 64];
    for i in 0..1000u16 {
        let n = packet::encode(&header(PacketType::Data, i, i, 0, 0), &[], &[], &mut buf);
        ep.handle_datagram(now, addr(2000), &buf[..n]).unwrap();
    }
    let mut out = vec![0u8; 2048];
    let mut resets = 0;
    while let Some(t) = ep.poll_transmit(now, &mut out) {
        assert_eq!(t.len, packet::HEADER_LEN);
        let p = utp_proto::Packet::parse(&out[..t.len]).unwrap();
        assert_eq!(p.header.ty, PacketType::Reset);
        resets += 1;
    }
    assert_eq!(resets, 10);
    assert_eq!(ep.stats().resets_suppressed, 990);
}

/// The SYN `ep` sends for its one connect, and datagrams that look like it
/// but are not it: another connection id, an older sequence number, cut
/// short, not a SYN.
fn syn_and_lookalikes(ep: &mut Endpoint, now: Instant) -> (Vec<u8>, Vec<(&'static str, Vec<u8>)>) {
    let mut buf = vec![0u8; 2048];
    let t = ep.poll_transmit(now, &mut buf).expect("SYN");
    let syn_bytes = buf[..t.len].to_vec();
    let syn = Header::parse_fixed(&syn_bytes).unwrap();
    assert_eq!(syn.ty, PacketType::Syn);
    let mut other = syn_bytes.clone();
    other[2..4].copy_from_slice(&syn.conn_id.wrapping_add(9).to_be_bytes());
    let mut stale = syn_bytes.clone();
    stale[16..18].copy_from_slice(&syn.seq_nr.wrapping_sub(1).to_be_bytes());
    let mut state = syn_bytes.clone();
    state[0] = (PacketType::State as u8) << 4 | 1;
    let short = syn_bytes[..12].to_vec();
    let lookalikes = vec![
        ("another connection id", other),
        ("another sequence number", stale),
        ("cut short", short),
        ("not a SYN", state),
    ];
    (syn_bytes, lookalikes)
}

/// An ICMP port unreachable quoting our SYN ends that connect at once, as
/// refused; a report that does not quote the very SYN (another id, another
/// sequence number, cut short, not a SYN) or comes for an established
/// connection changes nothing.
#[test]
fn a_port_unreachable_quoting_our_syn_refuses_only_that_connect() {
    let now = Instant::now();
    let mut ep = Endpoint::with_seed(Arc::new(Config::default()), now, 7);
    let peer = addr(2000);
    assert!(!ep.is_connecting());
    let h = ep.connect(now, peer).unwrap();
    assert!(ep.is_connecting());
    let (quoted, lookalikes) = syn_and_lookalikes(&mut ep, now);
    for (what, q) in &lookalikes {
        assert!(!ep.handle_unreachable(now, peer, q), "{what}");
        assert!(ep.conn(h).error().is_none(), "{what}");
    }
    assert!(
        !ep.handle_unreachable(now, addr(2001), &quoted),
        "another peer"
    );
    assert!(ep.conn(h).error().is_none());

    assert!(ep.handle_unreachable(now, peer, &quoted));
    assert_eq!(
        ep.conn(h).error(),
        Some(utp_proto::ConnectionError::Refused)
    );
    assert!(!ep.is_connecting());
    assert_eq!(ep.stats().connections_refused, 1);
    assert_eq!(ep.stats().unreachable_reports, 6);
    // Once failed, the same report again does nothing more.
    assert!(!ep.handle_unreachable(now, peer, &quoted));
}

/// A SYN the OS would not send at all (no route, an unreachable address)
/// fails its connect at once with `Unreachable`; what is not that pending
/// SYN (another connection's id, an older SYN, a data packet) is left to
/// retransmission.
#[test]
fn a_syn_the_os_would_not_send_fails_its_connect_at_once() {
    let now = Instant::now();
    let mut ep = Endpoint::with_seed(Arc::new(Config::default()), now, 8);
    let peer = addr(2000);
    let h = ep.connect(now, peer).unwrap();
    let (syn_bytes, lookalikes) = syn_and_lookalikes(&mut ep, now);
    for (what, d) in &lookalikes {
        assert!(!ep.handle_syn_not_sent(now, peer, d), "{what}");
        assert!(ep.conn(h).error().is_none(), "{what}");
    }
    assert!(!ep.handle_syn_not_sent(now, addr(2001), &syn_bytes));
    assert!(ep.handle_syn_not_sent(now, peer, &syn_bytes));
    assert_eq!(
        ep.conn(h).error(),
        Some(utp_proto::ConnectionError::Unreachable)
    );
    assert!(!ep.is_connecting());
    assert_eq!(ep.stats().connections_unreachable, 1);
    assert_eq!(ep.stats().connections_refused, 0);
}

/// An established connection ignores port unreachable reports, even ones
/// quoting the SYN that opened it.
#[test]
fn an_established_connection_ignores_port_unreachable() {
    let now = Instant::now();
    let mut ep = Endpoint::with_seed(Arc::new(Config::default()), now, 8);
    let peer = addr(2000);
    let h = ep.connect(now, peer).unwrap();
    let mut buf = vec![0u8; 2048];
    let t = ep.poll_transmit(now, &mut buf).expect("SYN");
    let quoted = buf[..t.len].to_vec();
    let syn = Header::parse_fixed(&quoted).unwrap();
    let n = packet::encode(
        &header(PacketType::State, syn.conn_id, 9000, syn.seq_nr, 1 << 20),
        &[],
        &[],
        &mut buf,
    );
    assert!(ep.is_connecting());
    ep.handle_datagram(now, peer, &buf[..n]).unwrap();
    assert!(ep.conn(h).is_established());
    assert!(!ep.is_connecting());
    assert!(!ep.handle_unreachable(now, peer, &quoted));
    assert!(ep.conn(h).is_established());
    assert_eq!(ep.stats().connections_refused, 0);
}

/// A connect that times out, or is let go of before its SYN-ACK, no longer
/// counts as waiting for one.
#[test]
fn connects_stop_counting_as_pending_when_they_end() {
    let now = Instant::now();
    let mut ep = Endpoint::with_seed(Arc::new(Config::default()), now, 9);
    let timed_out = ep.connect(now, addr(3000)).unwrap();
    let closed = ep.connect(now, addr(3001)).unwrap();
    drain(&mut ep, now);
    assert!(ep.is_connecting());
    ep.release(closed, now);
    assert!(ep.is_connecting(), "the other still waits");
    let late = now + Config::default().connect_timeout + Duration::from_secs(1);
    ep.handle_timeout(late);
    assert_eq!(
        ep.conn(timed_out).error(),
        Some(utp_proto::ConnectionError::TimedOut)
    );
    assert!(!ep.is_connecting());
}
