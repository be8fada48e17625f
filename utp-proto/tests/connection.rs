//! Packet-level state machine tests (smoltcp style): an [`Endpoint`] is driven
//! with hand-made datagrams from a fake peer, in fake time, and every datagram
//! it emits is parsed back and checked field by field.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{datagram, drain, hdr, me, peer, sack_of, Out};
use utp_proto::packet::{Header, PacketType};
use utp_proto::{
    AimdFactory, Config, ConnHandle, Connection, ConnectionError, ConnectionStats, Endpoint, State,
    WriteError, SPLIT_MIN, SYN_RECV_HOLD,
};

const MSS: usize = 1400;
const MIB: u32 = 1 << 20;

/// These tests pin packet-by-packet rules with fixed 1400-byte payloads,
/// every data packet acked at once; path MTU discovery (probes, size
/// changes) and delayed acks have their own tests.
fn cfg0() -> Config {
    Config::default()
        .pmtud(false)
        .base_payload(MSS)
        .ack_delay(None)
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

/// One connection inside an endpoint, plus a fake peer speaking to it.
struct Harness {
    ep: Endpoint,
    h: ConnHandle,
    t0: Instant,
    now: Instant,
    /// Connection id the peer writes on packets to us (our receive id).
    to_us: u16,
    /// Connection id we write on packets to the peer.
    to_peer: u16,
    /// Our first data sequence number.
    first_seq: u16,
    /// The peer's first data sequence number.
    peer_first: u16,
    /// Timestamp the fake peer stamps on its packets.
    peer_ts: u32,
}

impl Harness {
    fn conn(&self) -> &Connection {
        self.ep.conn(self.h)
    }

    fn out(&mut self) -> Vec<Out> {
        drain(&mut self.ep, self.now)
    }

    fn at(&mut self, d: Duration) {
        self.now = self.t0 + d;
    }

    fn advance(&mut self, d: Duration) {
        self.now += d;
    }

    /// Runs the timers due within `d` (the pacer's, probes, the RTO), then
    /// moves to its end; returns the DATA packets they sent.
    fn data_sent_within(&mut self, d: Duration) -> Vec<u16> {
        let end = self.now + d;
        let mut sent = Vec::new();
        while self.ep.poll_timeout().is_some_and(|t| t < end) {
            sent.extend(data_seqs(&self.fire()));
        }
        self.now = end;
        sent
    }

    /// The peer sends a packet; returns what we send in reply at once.
    fn feed_full(&mut self, mut h: Header, sack: &[u8], payload: &[u8]) -> Vec<Out> {
        if h.ty != PacketType::Syn {
            h.conn_id = self.to_us;
        }
        if h.timestamp == 0 {
            h.timestamp = self.peer_ts;
        }
        let d = datagram(&h, sack, payload);
        self.ep.handle_datagram(self.now, peer(), &d).unwrap();
        self.out()
    }

    fn feed(&mut self, ty: PacketType, seq: u16, ack: u16, wnd: u32, payload: &[u8]) -> Vec<Out> {
        let mut h = hdr(ty, 0, seq, ack);
        h.wnd_size = wnd;
        self.feed_full(h, &[], payload)
    }

    /// A plain ack from the peer (window 1 MiB).
    fn ack(&mut self, ack: u16) -> Vec<Out> {
        let peer_next = self.peer_first;
        self.feed(PacketType::State, peer_next, ack, MIB, &[])
    }

    fn sack(&mut self, ack: u16, sacked: &[u16]) -> Vec<Out> {
        let h = hdr(PacketType::State, 0, self.peer_first, ack);
        self.feed_full(h, &sack_of(ack, sacked), &[])
    }

    fn write(&mut self, data: &[u8]) -> usize {
        let now = self.now;
        self.ep
            .with_conn(self.h, now, |c| c.write(data))
            .expect("write")
    }

    fn close(&mut self) {
        let now = self.now;
        self.ep.with_conn(self.h, now, |c| c.close());
    }

    fn read_all(&mut self) -> Vec<u8> {
        let now = self.now;
        let mut all = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            let n = self
                .ep
                .with_conn(self.h, now, |c| c.read(&mut buf))
                .expect("read");
            if n == 0 {
                return all;
            }
            all.extend_from_slice(&buf[..n]);
        }
    }

    /// Jumps to the endpoint's next timer, runs it, and returns what was sent.
    fn fire(&mut self) -> Vec<Out> {
        let t = self.ep.poll_timeout().expect("a timer is armed");
        // A timer may already be due (we only run timers when asked to).
        self.now = self.now.max(t);
        self.ep.handle_timeout(self.now);
        self.out()
    }

    /// Runs every endpoint timer due within `horizon` and asserts none of
    /// them sends anything; the connection itself must have no timer left.
    /// (The endpoint may wake early for a timer the connection since
    /// cancelled, and an idle connection lets go of spare send memory a
    /// moment later; such wakes must be no-ops.)
    fn assert_quiet(&mut self, horizon: Duration) {
        let end = self.now + horizon;
        while let Some(t) = self.ep.poll_timeout() {
            assert!(t <= end, "endpoint timer far in the future: {t:?}");
            let out = self.fire();
            assert!(out.is_empty(), "a quiet timer sent {out:?}");
        }
        assert_eq!(self.conn().poll_timeout(), None, "connection timer armed");
    }

    /// The peer's sequence number `k` packets after its first data packet.
    fn py(&self, k: u16) -> u16 {
        self.peer_first.wrapping_add(k)
    }

    /// Our sequence number `k` packets after our first data packet.
    fn sy(&self, k: u16) -> u16 {
        self.first_seq.wrapping_add(k)
    }
}

/// An endpoint for exact packet-by-packet tests: keep-alives are off so an
/// idle connection has no timer (they have their own tests), and the window
/// follows the AIMD rules (10 packets to start, halving on loss), unpaced, so
/// the tests can count packets; LEDBAT and pacing are tested in their modules
/// and in the simulator.
fn endpoint(cfg: Config, seed: u64) -> (Endpoint, Instant) {
    let t0 = Instant::now();
    let cfg = cfg
        .keepalive_interval(None)
        .pacing(false)
        .controller(Arc::new(AimdFactory::default()));
    (Endpoint::with_seed(Arc::new(cfg), t0, seed), t0)
}

fn only(out: Vec<Out>) -> Out {
    assert_eq!(out.len(), 1, "expected exactly one datagram, got {out:#?}");
    out.into_iter().next().unwrap()
}

/// After our FIN (seq `fin`) every ack goes out twice: seq `fin + 1` for
/// libutp, seq `fin` for libtorrent. Checks both and returns the first.
fn ack_pair_after_fin(out: Vec<Out>, fin: u16) -> Out {
    assert_eq!(out.len(), 2, "expected the ack and its echo, got {out:#?}");
    let (a, b) = (&out[0], &out[1]);
    assert_eq!(a.h.ty, PacketType::State);
    assert_eq!(b.h.ty, PacketType::State);
    assert_eq!(a.h.seq_nr, fin.wrapping_add(1));
    assert_eq!(b.h.seq_nr, fin);
    assert_eq!(a.h.ack_nr, b.h.ack_nr);
    out.into_iter().next().unwrap()
}

/// Runs every endpoint timer due by `until`, in order, from `now`, until
/// `stop` holds; returns each send with its time, and the time reached.
fn run_timers(
    ep: &mut Endpoint,
    mut now: Instant,
    until: Instant,
    stop: impl Fn(&Endpoint) -> bool,
) -> (Vec<(Instant, Vec<Out>)>, Instant) {
    let mut sent = Vec::new();
    while let Some(t) = ep.poll_timeout().filter(|&t| t <= until) {
        now = now.max(t);
        ep.handle_timeout(now);
        let out = drain(ep, now);
        if !out.is_empty() {
            sent.push((now, out));
        }
        if stop(ep) {
            break;
        }
    }
    (sent, now)
}

fn data_seqs(out: &[Out]) -> Vec<u16> {
    out.iter()
        .filter(|o| o.h.ty == PacketType::Data)
        .map(|o| o.h.seq_nr)
        .collect()
}

/// Our side connects; the peer answers with a SYN-ACK (seq `y`) 10 ms later.
fn initiator_with(cfg: Config, y: u16, synack_wnd: u32) -> (Harness, Out) {
    let delayed = cfg.ack_delay.is_some();
    let (mut ep, t0) = endpoint(cfg, 1);
    let h = ep.connect(t0, peer()).unwrap();
    let syn = only(drain(&mut ep, t0));
    let r = syn.h.conn_id;
    let mut hs = Harness {
        ep,
        h,
        t0,
        now: t0,
        to_us: r,
        to_peer: r.wrapping_add(1),
        first_seq: syn.h.seq_nr.wrapping_add(1),
        peer_first: y,
        peer_ts: 5_000_000,
    };
    hs.at(ms(10));
    let mut synack = hdr(PacketType::State, r, y, syn.h.seq_nr);
    synack.wnd_size = synack_wnd;
    let mut out = hs.feed_full(synack, &[], &[]);
    if delayed {
        // The ack waits for data of ours to carry it, for the ack delay.
        assert!(out.is_empty(), "{out:?}");
        out = hs.fire();
    }
    // One ack (of Y - 1, as before any data), so a responder that holds its
    // first DATA until it hears from us (libutp, and us) can start.
    let ack = only(out);
    assert_eq!(ack.h.ty, PacketType::State, "the SYN-ACK is acked");
    assert_eq!(ack.h.ack_nr, y.wrapping_sub(1));
    assert_eq!(ack.h.seq_nr, hs.first_seq);
    assert_eq!(hs.conn().state(), State::Connected);
    (hs, syn)
}

fn initiator() -> Harness {
    initiator_with(cfg0(), 30_000, MIB).0
}

/// The peer connects with id `r` and ISN `s`; our SYN-ACK is returned.
fn responder_with(cfg: Config, r: u16, s: u16, syn_wnd: u32) -> (Harness, Out) {
    let (mut ep, t0) = endpoint(cfg, 2);
    ep.set_listening(true);
    let mut syn = hdr(PacketType::Syn, r, s, 0);
    syn.wnd_size = syn_wnd;
    syn.timestamp = 77;
    ep.handle_datagram(t0, peer(), &datagram(&syn, &[], &[]))
        .unwrap();
    let synack = only(drain(&mut ep, t0));
    let h = ep.accept().expect("connection accepted");
    let hs = Harness {
        ep,
        h,
        t0,
        now: t0,
        to_us: r.wrapping_add(1),
        to_peer: r,
        first_seq: synack.h.seq_nr,
        peer_first: s.wrapping_add(1),
        peer_ts: 1_000,
    };
    (hs, synack)
}

/// A responder whose initiator acked the SYN-ACK (so it may send data).
fn responder() -> Harness {
    let (mut hs, _) = responder_with(cfg0(), 4000, 60_000, MIB);
    let y = hs.sy(0);
    assert!(hs
        .feed(PacketType::State, 60_001, y.wrapping_sub(1), MIB, &[])
        .is_empty());
    hs
}

/// A responder whose initiator has spoken once (an ack of Y - 1, at t0):
/// established, with no RTT sample.
fn established_responder(cfg: Config) -> Harness {
    let (mut hs, _) = responder_with(cfg, 1, 2, MIB);
    let y = hs.sy(0);
    assert!(hs
        .feed(PacketType::State, 3, y.wrapping_sub(1), MIB, &[])
        .is_empty());
    assert_eq!(hs.conn().state(), State::Connected);
    assert_eq!(hs.conn().stats().rtt, None);
    hs
}

// ----------------------------------------------------------------- handshake

#[test]
fn initiator_syn_carries_recv_id_isn_zero_ack_and_zero_ts_diff() {
    let (mut ep, t0) = endpoint(cfg0(), 11);
    let h = ep.connect(t0, peer()).unwrap();
    let syn = only(drain(&mut ep, t0));
    let c = ep.conn(h);
    assert_eq!(syn.to, peer());
    assert_eq!(syn.h.ty, PacketType::Syn);
    assert_eq!(syn.h.conn_id, c.recv_id());
    assert_eq!(c.send_id(), c.recv_id().wrapping_add(1));
    assert_eq!(syn.h.ack_nr, 0);
    assert_eq!(syn.h.timestamp_diff, 0);
    assert_eq!(syn.h.wnd_size, MIB, "advertises the receive buffer");
    assert_eq!(syn.raw.len(), 20, "bare header");
    assert_eq!(c.state(), State::SynSent);
    assert!(!c.is_established());
    // Ids and ISNs come from the endpoint's random source.
    let mut ids = std::collections::HashSet::new();
    for seed in 0..8 {
        let (mut ep, t0) = endpoint(cfg0(), seed);
        ep.connect(t0, peer()).unwrap();
        let s = only(drain(&mut ep, t0));
        ids.insert((s.h.conn_id, s.h.seq_nr));
    }
    assert!(ids.len() >= 7, "ids/ISNs vary with the seed: {ids:?}");
}

#[test]
fn initiator_first_data_is_isn_plus_one_on_send_id_acking_y_minus_one() {
    let y = 1070;
    let (mut hs, syn) = initiator_with(cfg0(), y, MIB);
    let s = syn.h.seq_nr;
    let r = syn.h.conn_id;
    assert_eq!(hs.write(b"hello"), 5);
    let d = only(hs.out());
    assert_eq!(d.h.ty, PacketType::Data);
    assert_eq!(d.h.seq_nr, s.wrapping_add(1));
    assert_eq!(d.h.conn_id, r.wrapping_add(1));
    assert_eq!(d.h.ack_nr, y - 1, "the SYN-ACK consumed no sequence number");
    assert_eq!(d.payload, b"hello");
    // The responder's first data carries Y itself.
    let a = only(hs.feed(PacketType::Data, y, s.wrapping_add(1), MIB, b"hi"));
    assert_eq!(a.h.ty, PacketType::State);
    assert_eq!(a.h.ack_nr, y);
    assert_eq!(a.h.conn_id, r.wrapping_add(1));
    assert_eq!(hs.read_all(), b"hi");
}

#[test]
fn initiator_ack_nr_wraps_when_synack_seq_is_zero() {
    let (mut hs, syn) = initiator_with(cfg0(), 0, MIB);
    hs.write(b"x");
    let d = only(hs.out());
    assert_eq!(d.h.ack_nr, 65535);
    let a = only(hs.feed(PacketType::Data, 0, syn.h.seq_nr.wrapping_add(1), MIB, b"y"));
    assert_eq!(a.h.ack_nr, 0);
    assert_eq!(hs.read_all(), b"y");
}

#[test]
fn synack_with_zero_window_does_not_block_initiator_data() {
    // libtorrent may advertise little in the SYN-ACK: the window is only
    // known from the first real ack on.
    let (mut hs, syn) = initiator_with(cfg0(), 500, 0);
    hs.write(&[7u8; 3000]);
    let out = hs.out();
    assert_eq!(
        data_seqs(&out),
        vec![
            syn.h.seq_nr.wrapping_add(1),
            syn.h.seq_nr.wrapping_add(2),
            syn.h.seq_nr.wrapping_add(3)
        ]
    );
}

#[test]
fn responder_synack_is_state_acking_syn_with_fresh_seq() {
    let (hs, synack) = responder_with(cfg0(), 17767, 9158, MIB);
    assert_eq!(synack.to, peer());
    assert_eq!(synack.h.ty, PacketType::State);
    assert_eq!(synack.h.conn_id, 17767, "responder sends with R");
    assert_eq!(synack.h.ack_nr, 9158, "acks the SYN's seq");
    assert!(synack.sack.is_none());
    assert!(synack.payload.is_empty());
    assert_eq!(hs.conn().recv_id(), 17768);
    assert_eq!(hs.conn().send_id(), 17767);
    assert_eq!(hs.conn().state(), State::SynRecv);
    // The seq is random: different endpoint seeds give different values.
    let mut seqs = std::collections::HashSet::new();
    for seed in 0..8 {
        let (mut ep, t0) = endpoint(cfg0(), 100 + seed);
        ep.set_listening(true);
        let syn = hdr(PacketType::Syn, 17767, 9158, 0);
        ep.handle_datagram(t0, peer(), &datagram(&syn, &[], &[]))
            .unwrap();
        seqs.insert(only(drain(&mut ep, t0)).h.seq_nr);
    }
    assert!(seqs.len() >= 7, "SYN-ACK seqs vary: {seqs:?}");
}

#[test]
fn responder_first_data_carries_the_synack_seq() {
    let (mut hs, synack) = responder_with(cfg0(), 17767, 9158, MIB);
    let y = synack.h.seq_nr;
    hs.write(b"abc");
    // Held until the initiator shows it has the SYN-ACK (its ack of Y - 1).
    assert!(hs.out().is_empty(), "no DATA before the initiator speaks");
    let d = only(hs.feed(PacketType::State, 9159, y.wrapping_sub(1), MIB, &[]));
    assert_eq!(d.h.ty, PacketType::Data);
    assert_eq!(d.h.seq_nr, y, "SYN-ACK does not consume a seq");
    assert_eq!(d.h.conn_id, 17767);
    assert_eq!(d.h.ack_nr, 9158);
    // The initiator acked Y-1 before our data, Y after it; neither is invalid.
    assert!(hs.feed(PacketType::State, 9159, y, MIB, &[]).is_empty());
    let st = hs.conn().stats();
    assert_eq!(st.invalid_acks, 0);
    assert_eq!(st.bytes_in_flight, 0);
    assert_eq!(hs.conn().state(), State::Connected);
}

#[test]
fn duplicate_syn_is_answered_again_without_second_connection() {
    let (mut hs, synack) = responder_with(cfg0(), 4000, 60_000, MIB);
    hs.advance(secs(1));
    let again = only(hs.feed_full(hdr(PacketType::Syn, 4000, 60_000, 0), &[], &[]));
    assert_eq!(again.h.ty, PacketType::State);
    assert_eq!(again.h.conn_id, 4000);
    assert_eq!(again.h.ack_nr, 60_000);
    assert_eq!(again.h.seq_nr, synack.h.seq_nr);
    assert_eq!(hs.ep.connection_count(), 1);
    assert!(hs.ep.accept().is_none(), "no second connection");
    assert_eq!(hs.ep.stats().connections_accepted, 1);
    assert_eq!(hs.conn().error(), None);
}

#[test]
fn syn_with_zero_window_does_not_block_responder_data() {
    // libtorrent's SYN advertises window 0. An initiator that stays silent
    // gets our data once the hold ends, the SYN's window notwithstanding.
    let (mut hs, synack) = responder_with(cfg0(), 21037, 38499, 0);
    hs.write(&[1u8; 2000]);
    assert!(hs.out().is_empty(), "held for the initiator's first packet");
    assert_eq!(hs.ep.poll_timeout(), Some(hs.t0 + SYN_RECV_HOLD));
    let out = hs.fire();
    assert_eq!(hs.now - hs.t0, SYN_RECV_HOLD);
    // A copy of the SYN-ACK leads, in case the first was lost.
    assert_eq!(out[0].h.ty, PacketType::State);
    assert_eq!((out[0].h.seq_nr, out[0].h.ack_nr), (synack.h.seq_nr, 38499));
    assert_eq!(
        data_seqs(&out),
        vec![synack.h.seq_nr, synack.h.seq_nr.wrapping_add(1)]
    );
}

/// libtorrent completes its handshake on whichever packet acks its SYN
/// first: a DATA that overtakes the SYN-ACK is acked and its payload
/// dropped. So the responder's first DATA (and a FIN) wait for any packet
/// from the initiator, which proves the SYN-ACK arrived.
#[test]
fn responder_holds_data_and_fin_until_the_initiator_speaks() {
    let (mut hs, synack) = responder_with(cfg0(), 5000, 100, MIB);
    let y = synack.h.seq_nr;
    hs.write(b"hello");
    hs.ep.with_conn(hs.h, hs.now, |c| c.close());
    hs.advance(ms(500));
    assert!(hs.out().is_empty(), "nothing before the initiator speaks");
    // Its first DATA (a BitTorrent handshake) releases ours at once.
    let out = hs.feed(PacketType::Data, 101, y.wrapping_sub(1), MIB, b"hi");
    let types: Vec<PacketType> = out.iter().map(|o| o.h.ty).collect();
    assert_eq!(types, vec![PacketType::Data, PacketType::Fin], "{out:?}");
    assert_eq!(out[0].h.seq_nr, y);
    assert_eq!(out[0].h.ack_nr, 101, "the DATA carries the ack");
}

// ---------------------------------------------------------------- acks

#[test]
fn acks_for_never_sent_data_are_ignored() {
    let mut hs = initiator();
    hs.write(&[1u8; 2 * MSS]);
    assert_eq!(data_seqs(&hs.out()), vec![hs.sy(0), hs.sy(1)]);
    let before = hs.conn().stats();
    // Acks for sy(2) (never sent) and far in the future.
    for bogus in [hs.sy(2), hs.sy(100), hs.sy(30_000)] {
        assert!(hs.ack(bogus).is_empty());
    }
    let st = hs.conn().stats();
    assert_eq!(st.invalid_acks, 3);
    assert_eq!(st.bytes_in_flight, before.bytes_in_flight);
    assert_eq!(st.bytes_in_flight, 2 * MSS);
    // The data carried by such a packet is not trusted either.
    let out = hs.feed(PacketType::Data, hs.py(0), hs.sy(5), MIB, b"evil");
    assert!(out.is_empty(), "{out:?}");
    assert!(hs.read_all().is_empty());
    // A real ack still works.
    hs.ack(hs.sy(1));
    assert_eq!(hs.conn().stats().bytes_in_flight, 0);
}

#[test]
fn cumulative_ack_shrinks_bytes_in_flight() {
    let mut hs = initiator();
    hs.write(&[2u8; 3 * MSS + 100]);
    assert_eq!(data_seqs(&hs.out()).len(), 4);
    assert_eq!(hs.conn().stats().bytes_in_flight, 3 * MSS + 100);
    hs.ack(hs.sy(0));
    assert_eq!(hs.conn().stats().bytes_in_flight, 2 * MSS + 100);
    hs.ack(hs.sy(2));
    assert_eq!(hs.conn().stats().bytes_in_flight, 100);
    // An old ack changes nothing.
    hs.ack(hs.sy(0));
    assert_eq!(hs.conn().stats().bytes_in_flight, 100);
    hs.ack(hs.sy(3));
    let st = hs.conn().stats();
    assert_eq!(st.bytes_in_flight, 0);
    assert_eq!(st.bytes_sent, (3 * MSS + 100) as u64);
    hs.assert_quiet(secs(60));
}

#[test]
fn state_packets_carry_next_unused_seq_and_consume_nothing() {
    let mut hs = initiator();
    hs.write(&[0u8; 2 * MSS]);
    hs.out();
    let a = only(hs.feed(PacketType::Data, hs.py(0), hs.sy(1), MIB, b"d"));
    assert_eq!(a.h.ty, PacketType::State);
    assert_eq!(a.h.seq_nr, hs.sy(2));
    let a2 = only(hs.feed(PacketType::Data, hs.py(1), hs.sy(1), MIB, b"e"));
    assert_eq!(a2.h.seq_nr, hs.sy(2));
    hs.write(b"next");
    let d = only(hs.out());
    assert_eq!(d.h.seq_nr, hs.sy(2));
    assert_eq!(d.h.ack_nr, hs.py(1));
}

#[test]
fn timestamp_difference_is_measured_at_arrival() {
    let mut hs = initiator();
    // The peer's clock is far ahead of ours: the difference wraps ("negative").
    hs.peer_ts = 3_000_000_000;
    hs.at(secs(1));
    let a = only(hs.feed(
        PacketType::Data,
        hs.py(0),
        hs.sy(0).wrapping_sub(1),
        MIB,
        b"z",
    ));
    let arrival_us = 1_000_000u32;
    let want = arrival_us.wrapping_sub(3_000_000_000);
    assert_eq!(a.h.timestamp_diff, want);
    assert_eq!(a.h.timestamp, arrival_us);
    // A packet sent later still reports the delay measured at arrival.
    hs.at(secs(1) + ms(250));
    hs.write(b"later");
    let d = only(hs.out());
    assert_eq!(d.h.timestamp, 1_250_000);
    assert_eq!(d.h.timestamp_diff, want);
}

// ---------------------------------------------------------------- receive

#[test]
fn out_of_order_data_is_sacked_lsb_first_in_4_byte_multiples() {
    let mut hs = initiator();
    let ack0 = hs.py(0).wrapping_sub(1);
    // Hole at py(0); py(1) arrives: bit 0 = ack + 2 = py(1).
    let a = only(hs.feed(
        PacketType::Data,
        hs.py(1),
        hs.sy(0).wrapping_sub(1),
        MIB,
        b"1",
    ));
    assert_eq!(a.h.ty, PacketType::State);
    assert_eq!(a.h.ack_nr, ack0);
    assert_eq!(a.sack.as_deref(), Some(&[0b0000_0001, 0, 0, 0][..]));
    for k in [3u16, 10, 40] {
        hs.feed(
            PacketType::Data,
            hs.py(k),
            hs.sy(0).wrapping_sub(1),
            MIB,
            b"k",
        );
    }
    let a = only(hs.feed(
        PacketType::Data,
        hs.py(1),
        hs.sy(0).wrapping_sub(1),
        MIB,
        b"1",
    ));
    assert_eq!(a.h.ack_nr, ack0);
    // Bits 0 (py1), 2 (py3), 9 (py10), 39 (py40): 40 bits -> 5 bytes -> 8.
    assert_eq!(
        a.sack.as_deref(),
        Some(&[0b0000_0101, 0b0000_0010, 0, 0, 0b1000_0000, 0, 0, 0][..])
    );
    assert_eq!(
        a.sacked_seqs(),
        vec![hs.py(1), hs.py(3), hs.py(10), hs.py(40)]
    );
    // Fill the hole: ack moves to py(1); bits now start at py(3).
    let a = only(hs.feed(
        PacketType::Data,
        hs.py(0),
        hs.sy(0).wrapping_sub(1),
        MIB,
        b"0",
    ));
    assert_eq!(a.h.ack_nr, hs.py(1));
    assert_eq!(a.sacked_seqs(), vec![hs.py(3), hs.py(10), hs.py(40)]);
    assert_eq!(a.sack.as_ref().unwrap().len(), 8);
    assert_eq!(hs.read_all(), b"01");
}

#[test]
fn sack_bits_wrap_around_sequence_zero() {
    let (mut hs, syn) = initiator_with(cfg0(), 65534, MIB);
    let ack = syn.h.seq_nr.wrapping_add(1).wrapping_sub(1);
    // Expect 65534, 65535, 0, 1: deliver 0 and 1 first.
    let a = only(hs.feed(PacketType::Data, 1, ack, MIB, b"d"));
    assert_eq!(a.h.ack_nr, 65533);
    assert_eq!(a.sacked_seqs(), vec![1]);
    let a = only(hs.feed(PacketType::Data, 0, ack, MIB, b"c"));
    assert_eq!(a.sacked_seqs(), vec![0, 1]);
    // ack 65533: bit 0 = 65535, bit 1 = 0, bit 2 = 1.
    assert_eq!(a.sack.as_deref(), Some(&[0b0000_0110, 0, 0, 0][..]));
    hs.feed(PacketType::Data, 65535, ack, MIB, b"b");
    let a = only(hs.feed(PacketType::Data, 65534, ack, MIB, b"a"));
    assert_eq!(a.h.ack_nr, 1);
    assert!(a.sack.is_none());
    assert_eq!(hs.read_all(), b"abcd");
}

#[test]
fn duplicate_data_is_delivered_once_and_acked_again() {
    let mut hs = initiator();
    let ack = hs.sy(0).wrapping_sub(1);
    let mut acks = Vec::new();
    for (k, p) in [
        (0u16, b"a"),
        (0, b"a"),
        (2, b"c"),
        (2, b"c"),
        (1, b"b"),
        (1, b"b"),
        (0, b"a"),
    ] {
        let out = hs.feed(PacketType::Data, hs.py(k), ack, MIB, p);
        acks.push(only(out).h.ack_nr);
    }
    assert_eq!(
        acks,
        vec![
            hs.py(0),
            hs.py(0),
            hs.py(0),
            hs.py(0),
            hs.py(2),
            hs.py(2),
            hs.py(2)
        ],
        "every data packet, duplicates too, is acked"
    );
    assert_eq!(hs.read_all(), b"abc");
    assert_eq!(hs.conn().stats().duplicates_received, 4);
    assert_eq!(hs.conn().stats().bytes_received, 3);
}

#[test]
fn advertised_window_shrinks_with_unread_data_and_grows_after_read() {
    let mut hs = initiator();
    let ack = hs.sy(0).wrapping_sub(1);
    let a = only(hs.feed(PacketType::Data, hs.py(0), ack, MIB, &[1; 1000]));
    assert_eq!(a.h.wnd_size, MIB - 1000);
    let a = only(hs.feed(PacketType::Data, hs.py(1), ack, MIB, &[1; 1000]));
    assert_eq!(a.h.wnd_size, MIB - 2000);
    // Out-of-order bytes count too.
    let a = only(hs.feed(PacketType::Data, hs.py(3), ack, MIB, &[1; 500]));
    assert_eq!(a.h.wnd_size, MIB - 2500);
    assert_eq!(hs.read_all().len(), 2000);
    hs.write(b"x");
    let d = only(hs.out());
    assert_eq!(d.h.wnd_size, MIB - 500);
}

#[test]
fn full_receive_buffer_takes_one_probe_then_drops_and_reading_sends_window_update() {
    let cfg = cfg0().recv_buffer(10_000);
    let (mut hs, _) = initiator_with(cfg, 100, MIB);
    let ack = hs.sy(0).wrapping_sub(1);
    let mut last = None;
    for k in 0..10 {
        last = Some(only(hs.feed(
            PacketType::Data,
            hs.py(k),
            ack,
            MIB,
            &[k as u8; 1000],
        )));
    }
    let last = last.unwrap();
    assert_eq!(last.h.wnd_size, 0);
    assert_eq!(last.h.ack_nr, hs.py(9));
    // The next in-order packet is still taken, one packet over the buffer
    // (a zero-window probe), and acked with a zero window...
    let a = only(hs.feed(PacketType::Data, hs.py(10), ack, MIB, &[10; 1000]));
    assert_eq!(a.h.ack_nr, hs.py(10));
    assert_eq!(a.h.wnd_size, 0);
    // ...but nothing more: dropped, and acked with the ack unchanged.
    let a = only(hs.feed(PacketType::Data, hs.py(11), ack, MIB, &[11; 1000]));
    assert_eq!(a.h.ack_nr, hs.py(10));
    assert_eq!(a.h.wnd_size, 0);
    assert_eq!(hs.conn().stats().dropped_out_of_window, 1);
    // Reading makes room, and the stalled sender is told so unprompted.
    let got = hs.read_all();
    assert_eq!(got.len(), 11_000);
    assert!(got
        .chunks(1000)
        .enumerate()
        .all(|(i, c)| c.iter().all(|&b| b == i as u8)));
    let upd = only(hs.out());
    assert_eq!(upd.h.ty, PacketType::State);
    assert_eq!(upd.h.wnd_size, 10_000);
    assert_eq!(upd.h.ack_nr, hs.py(10));
    // The retransmitted packet is accepted now.
    let a = only(hs.feed(PacketType::Data, hs.py(11), ack, MIB, &[11; 1000]));
    assert_eq!(a.h.ack_nr, hs.py(11));
    assert_eq!(a.h.wnd_size, 9_000);
}

// ---------------------------------------------------------------- loss

#[test]
fn three_duplicate_acks_fast_retransmit_the_oldest_unacked_packet() {
    let mut hs = initiator();
    hs.write(&[3u8; 5 * MSS]);
    let first = hs.out();
    assert_eq!(
        data_seqs(&first),
        (0..5).map(|k| hs.sy(k)).collect::<Vec<_>>()
    );
    assert!(hs.ack(hs.sy(0)).is_empty(), "progress, no retransmission");
    assert!(hs.ack(hs.sy(0)).is_empty(), "dup 1");
    assert!(hs.ack(hs.sy(0)).is_empty(), "dup 2");
    let out = hs.ack(hs.sy(0));
    let r = only(out);
    assert_eq!(r.h.ty, PacketType::Data);
    assert_eq!(r.h.seq_nr, hs.sy(1), "oldest unacked packet");
    assert_eq!(r.payload, first[1].payload);
    let st = hs.conn().stats();
    assert_eq!(st.fast_retransmits, 1);
    assert_eq!(st.packets_retransmitted, 1);
    assert_eq!(st.timeouts, 0);
}

#[test]
fn window_updates_and_zero_windows_are_not_duplicate_acks() {
    let mut hs = initiator();
    hs.write(&[3u8; 5 * MSS]);
    hs.out();
    let (peer, ack) = (hs.peer_first, hs.sy(0));
    assert!(hs.ack(ack).is_empty());
    // Same ack, but each with a new window: window updates (RFC 5681), and
    // a receiver with no room is flow control. None of them is a loss.
    for wnd in [MIB - 1000, MIB - 2000, 0, 0, 0, MIB - 3000] {
        hs.feed(PacketType::State, peer, ack, wnd, &[]);
    }
    let st = hs.conn().stats();
    assert_eq!(
        (st.fast_retransmits, st.packets_retransmitted),
        (0, 0),
        "{st:?}"
    );
    // Three true duplicates (same ack, same window) still are.
    for _ in 0..3 {
        hs.feed(PacketType::State, peer, ack, MIB - 3000, &[]);
    }
    assert_eq!(hs.conn().stats().fast_retransmits, 1);
}

#[test]
fn sack_of_three_later_packets_retransmits_the_hole_but_two_do_not() {
    let mut hs = initiator();
    hs.write(&[4u8; 5 * MSS]);
    let first = hs.out();
    assert_eq!(first.len(), 5);
    let ack = hs.sy(0).wrapping_sub(1);
    assert!(
        hs.sack(ack, &[hs.sy(1), hs.sy(2)]).is_empty(),
        "two are not enough"
    );
    let out = hs.sack(ack, &[hs.sy(1), hs.sy(2), hs.sy(3)]);
    let r = only(out);
    assert_eq!(r.h.seq_nr, hs.sy(0));
    assert_eq!(r.payload, first[0].payload);
    let st = hs.conn().stats();
    assert_eq!(st.fast_retransmits, 1);
    assert_eq!(st.timeouts, 0);
    // sy(4) was not yet covered by three later packets: not resent.
    assert_eq!(st.packets_retransmitted, 1);
    // In flight: sy(0) resent + sy(4); the three sacked ones are not.
    assert_eq!(st.bytes_in_flight, 2 * MSS);
}

#[test]
fn losses_in_one_window_halve_cwnd_once() {
    let mut hs = initiator();
    hs.write(&[5u8; 10 * MSS]);
    assert_eq!(data_seqs(&hs.out()).len(), 10);
    let cwnd0 = hs.conn().stats().cwnd;
    assert_eq!(cwnd0, 10 * MSS);
    let ack = hs.sy(0).wrapping_sub(1);
    let out = hs.sack(ack, &[hs.sy(2), hs.sy(3), hs.sy(4), hs.sy(5)]);
    let seqs = data_seqs(&out);
    assert_eq!(seqs.first(), Some(&hs.sy(0)), "oldest hole first: {seqs:?}");
    assert!(
        seqs.iter().all(|s| [hs.sy(0), hs.sy(1)].contains(s)),
        "{seqs:?}"
    );
    // The window is halved (the implementation first credits the SACKed
    // bytes to slow start, so "half" is of a slightly larger window).
    let cwnd1 = hs.conn().stats().cwnd;
    assert!(
        cwnd1 < cwnd0 && cwnd1 >= cwnd0 / 2,
        "cwnd {cwnd0} -> {cwnd1}"
    );
    // A further loss from the same window (sy(6)) does not halve again.
    let later: Vec<u16> = [2u16, 3, 4, 5, 7, 8, 9].iter().map(|&k| hs.sy(k)).collect();
    hs.sack(ack, &later);
    assert_eq!(hs.conn().stats().fast_retransmits, 2, "sy(6) declared lost");
    assert!(
        hs.conn().stats().cwnd >= cwnd1,
        "second loss in the window halved again"
    );
}

/// Runs timers and collects the intervals between successive retransmission
/// timeouts (starting from now, the original send); each must resend `seq`.
/// Other timers (a tail loss probe) may fire in between and resend at most
/// one packet.
fn rto_intervals(hs: &mut Harness, seq: u16, n: usize) -> Vec<Duration> {
    let mut last = hs.now;
    let mut v = Vec::new();
    for _ in 0..4 * n + 8 {
        if v.len() == n {
            return v;
        }
        let before = hs.conn().stats().timeouts;
        let out = hs.fire();
        let after = hs.conn().stats().timeouts;
        if after > before {
            assert_eq!(after, before + 1);
            assert_eq!(
                data_seqs(&out),
                vec![seq],
                "an RTO resends the oldest packet"
            );
            v.push(hs.now - last);
            last = hs.now;
        } else {
            assert!(data_seqs(&out).len() <= 1, "{out:?}");
        }
    }
    panic!("only {} RTOs in {v:?}", v.len());
}

#[test]
fn rto_starts_at_one_second_and_doubles_without_rtt_sample() {
    let mut hs = established_responder(cfg0());
    hs.write(b"x");
    assert_eq!(data_seqs(&hs.out()), vec![hs.sy(0)]);
    assert_eq!(hs.ep.poll_timeout(), Some(hs.t0 + secs(1)));
    let v = {
        let s0 = hs.sy(0);
        rto_intervals(&mut hs, s0, 4)
    };
    assert_eq!(v, vec![secs(1), secs(2), secs(4), secs(8)]);
    assert_eq!(hs.conn().stats().timeouts, 4);
    assert_eq!(
        hs.conn().stats().cwnd,
        MSS,
        "timeout collapses cwnd to one packet"
    );
}

#[test]
fn rto_after_rtt_sample_has_500ms_floor_and_doubles() {
    let mut hs = initiator(); // SYN-ACK after 10 ms: srtt 10 ms
    assert_eq!(hs.conn().stats().rtt, Some(ms(10)));
    hs.write(b"x");
    assert_eq!(data_seqs(&hs.out()), vec![hs.sy(0)]);
    let v = {
        let s0 = hs.sy(0);
        rto_intervals(&mut hs, s0, 3)
    };
    assert_eq!(v, vec![ms(500), secs(1), secs(2)]);
}

#[test]
fn rto_is_capped_at_max_rto() {
    let cfg = cfg0().max_rto(secs(5)).max_timeouts(100);
    let mut hs = established_responder(cfg);
    hs.write(b"x");
    hs.out();
    let v = {
        let s0 = hs.sy(0);
        rto_intervals(&mut hs, s0, 5)
    };
    assert_eq!(v, vec![secs(1), secs(2), secs(4), secs(5), secs(5)]);
}

#[test]
fn ack_of_a_retransmitted_packet_gives_no_rtt_sample() {
    let mut hs = responder();
    hs.write(b"x");
    hs.out();
    assert_eq!(data_seqs(&hs.fire()), vec![hs.sy(0)]);
    hs.advance(ms(30));
    hs.ack(hs.sy(0));
    assert_eq!(
        hs.conn().stats().rtt,
        None,
        "Karn: ambiguous sample skipped"
    );
    assert_eq!(hs.conn().stats().bytes_in_flight, 0);
    // A packet sent once gives a sample.
    hs.write(b"y");
    hs.out();
    hs.advance(ms(40));
    hs.ack(hs.sy(1));
    assert_eq!(hs.conn().stats().rtt, Some(ms(40)));
}

#[test]
fn data_gives_up_with_timed_out_after_max_timeouts_rtos() {
    let cfg = cfg0().max_timeouts(4);
    let mut hs = established_responder(cfg);
    hs.write(b"x");
    hs.out();
    let mut resent = 0;
    let mut fired = 0;
    while hs.conn().error().is_none() {
        let out = hs.fire();
        fired += 1;
        resent += data_seqs(&out).len();
        assert!(fired <= 10, "never gave up");
    }
    assert_eq!(hs.conn().error(), Some(ConnectionError::TimedOut));
    assert_eq!(
        hs.conn().stats().timeouts,
        4,
        "the 4th consecutive RTO is fatal"
    );
    assert_eq!(resent, 3, "three retransmissions before giving up");
    assert_eq!(hs.now - hs.t0, secs(1 + 2 + 4 + 8));
    assert_eq!(
        hs.ep.poll_timeout(),
        None,
        "nothing retransmitted after giving up"
    );
    let now = hs.now;
    assert_eq!(
        hs.ep.with_conn(hs.h, now, |c| c.write(b"z")),
        Err(WriteError::Failed(ConnectionError::TimedOut))
    );
}

#[test]
fn consecutive_timeout_count_restarts_when_the_peer_speaks() {
    let cfg = cfg0().max_timeouts(3);
    let mut hs = established_responder(cfg);
    hs.write(b"x");
    hs.out();
    hs.fire();
    hs.fire();
    // The peer is alive (a packet acking nothing new).
    hs.ack(hs.sy(0).wrapping_sub(1));
    hs.fire();
    hs.fire();
    assert_eq!(
        hs.conn().error(),
        None,
        "only two timeouts since the peer spoke"
    );
    hs.fire();
    assert_eq!(hs.conn().error(), Some(ConnectionError::TimedOut));
}

#[test]
fn responder_gives_up_when_the_initiator_never_speaks() {
    let (mut hs, _) = responder_with(cfg0(), 1, 2, MIB);
    assert_eq!(hs.conn().state(), State::SynRecv);
    let mut guard = 0;
    while hs.conn().error().is_none() {
        hs.fire();
        guard += 1;
        assert!(guard < 20 && hs.now - hs.t0 <= secs(10), "never gave up");
    }
    assert_eq!(hs.conn().error(), Some(ConnectionError::TimedOut));
    let now = hs.now;
    hs.ep.release(hs.h, now);
    assert_eq!(hs.ep.connection_count(), 0);
}

#[test]
fn syn_is_retransmitted_with_backoff_and_connect_times_out() {
    let (mut ep, t0) = endpoint(cfg0(), 5);
    let h = ep.connect(t0, peer()).unwrap();
    let syn = only(drain(&mut ep, t0));
    let mut times = vec![Duration::ZERO];
    loop {
        let t = ep.poll_timeout().expect("timer armed while connecting");
        ep.handle_timeout(t);
        let out = drain(&mut ep, t);
        if ep.conn(h).error().is_some() {
            assert!(out.is_empty());
            assert_eq!(t - t0, secs(10), "connect_timeout");
            break;
        }
        let s = only(out);
        assert_eq!(
            s.h,
            Header {
                timestamp: s.h.timestamp,
                ..syn.h
            },
            "same SYN again"
        );
        times.push(t - t0);
        assert!(times.len() < 10);
    }
    assert_eq!(times, vec![secs(0), secs(1), secs(3), secs(7)]);
    assert_eq!(ep.conn(h).error(), Some(ConnectionError::TimedOut));
    assert_eq!(ep.poll_timeout(), None);
    ep.release(h, t0 + secs(10));
    assert_eq!(ep.connection_count(), 0);
}

#[test]
fn reset_in_reply_to_syn_is_connection_refused() {
    let (mut ep, t0) = endpoint(cfg0(), 6);
    let h = ep.connect(t0, peer()).unwrap();
    let syn = only(drain(&mut ep, t0));
    // libutp echoes the SYN's connection id and acks its seq.
    let rst = hdr(PacketType::Reset, syn.h.conn_id, 1234, syn.h.seq_nr);
    ep.handle_datagram(t0 + ms(5), peer(), &datagram(&rst, &[], &[]))
        .unwrap();
    assert_eq!(ep.conn(h).error(), Some(ConnectionError::Refused));
    assert!(
        drain(&mut ep, t0 + ms(5)).is_empty(),
        "RESET is not answered"
    );
    assert_eq!(ep.conn(h).poll_timeout(), None, "no more SYNs");
    while let Some(t) = ep.poll_timeout() {
        assert!(t <= t0 + secs(60));
        ep.handle_timeout(t);
        assert!(drain(&mut ep, t).is_empty(), "no SYN after a refusal");
    }
    assert_eq!(
        ep.conn(h).error(),
        Some(ConnectionError::Refused),
        "the connect timer must not turn a refusal into a timeout"
    );
}

#[test]
fn syn_to_a_non_listening_endpoint_is_refused_end_to_end() {
    let (mut a, t0) = endpoint(cfg0(), 7);
    let mut b = Endpoint::with_seed(Arc::new(cfg0()), t0, 8);
    let h = a.connect(t0, peer()).unwrap();
    let syn = only(drain(&mut a, t0));
    b.handle_datagram(t0, me(), &syn.raw).unwrap();
    let rst = only(drain(&mut b, t0));
    assert_eq!(rst.to, me());
    assert_eq!(rst.h.ty, PacketType::Reset);
    assert_eq!(rst.h.conn_id, syn.h.conn_id);
    assert_eq!(rst.h.ack_nr, syn.h.seq_nr);
    assert_eq!(b.stats().syn_refused, 1);
    assert_eq!(b.connection_count(), 0);
    a.handle_datagram(t0, peer(), &rst.raw).unwrap();
    assert_eq!(a.conn(h).error(), Some(ConnectionError::Refused));
    let now = t0;
    let e = a.with_conn(h, now, |c| c.write(b"x"));
    assert_eq!(e, Err(WriteError::Failed(ConnectionError::Refused)));
}

#[test]
fn reset_on_established_connection_is_connection_reset() {
    let mut hs = initiator();
    hs.write(&[1u8; 3000]);
    hs.out();
    let out = hs.feed(PacketType::Reset, 999, hs.sy(0), 0, &[]);
    assert!(out.is_empty());
    assert_eq!(hs.conn().error(), Some(ConnectionError::Reset));
    assert_eq!(hs.conn().state(), State::Failed(ConnectionError::Reset));
    let stats = hs.ep.stats();
    assert_eq!(
        (stats.connections_reset, stats.connections_timed_out),
        (1, 0)
    );
    hs.assert_quiet(secs(60));
    let now = hs.now;
    let mut buf = [0u8; 8];
    assert_eq!(
        hs.ep.with_conn(hs.h, now, |c| c.read(&mut buf)),
        Err(ConnectionError::Reset)
    );
    assert_eq!(
        hs.ep.with_conn(hs.h, now, |c| c.write(b"x")),
        Err(WriteError::Failed(ConnectionError::Reset))
    );
}

#[test]
fn responder_accepts_reset_on_either_connection_id() {
    for use_send_id in [false, true] {
        let (mut hs, _) = responder_with(cfg0(), 500, 9, MIB);
        hs.ack(hs.sy(0).wrapping_sub(1));
        let id = if use_send_id { hs.to_peer } else { hs.to_us };
        let rst = hdr(PacketType::Reset, id, 10, hs.sy(0).wrapping_sub(1));
        hs.ep
            .handle_datagram(hs.now, peer(), &datagram(&rst, &[], &[]))
            .unwrap();
        assert_eq!(hs.conn().error(), Some(ConnectionError::Reset), "id {id}");
    }
}

#[test]
fn reset_from_another_address_is_not_applied() {
    let mut hs = initiator();
    let rst = hdr(PacketType::Reset, hs.to_us, 1, 0);
    let other: std::net::SocketAddr = "10.9.9.9:6882".parse().unwrap();
    hs.ep
        .handle_datagram(hs.now, other, &datagram(&rst, &[], &[]))
        .unwrap();
    assert_eq!(hs.conn().error(), None);
    assert!(hs.out().is_empty(), "RESET never answered");
}

// ---------------------------------------------------------------- closing

#[test]
fn fin_before_gap_waits_for_data_then_eof() {
    let mut hs = initiator();
    let ack = hs.sy(0).wrapping_sub(1);
    hs.feed(PacketType::Data, hs.py(0), ack, MIB, b"a");
    let a = only(hs.feed(PacketType::Fin, hs.py(2), ack, MIB, &[]));
    assert_eq!(a.h.ack_nr, hs.py(0));
    assert_eq!(a.sacked_seqs(), vec![hs.py(2)], "the FIN is sacked");
    assert_eq!(hs.read_all(), b"a");
    assert!(!hs.conn().is_eof(), "data before the FIN is missing");
    let a = only(hs.feed(PacketType::Data, hs.py(1), ack, MIB, b"b"));
    assert_eq!(a.h.ack_nr, hs.py(2), "FIN acked once the gap is filled");
    assert!(!hs.conn().is_eof(), "EOF only after the data is read");
    assert_eq!(hs.read_all(), b"b");
    assert!(hs.conn().is_eof());
    // Data claiming to be past the FIN is ignored.
    hs.feed(PacketType::Data, hs.py(3), ack, MIB, b"junk");
    assert!(hs.read_all().is_empty());
    assert!(hs.conn().is_eof());
}

#[test]
fn duplicate_fin_is_acked_again_and_idempotent() {
    let mut hs = initiator();
    let ack = hs.sy(0).wrapping_sub(1);
    let a1 = only(hs.feed(PacketType::Fin, hs.py(0), ack, MIB, &[]));
    assert_eq!(a1.h.ack_nr, hs.py(0));
    assert!(hs.conn().is_eof());
    hs.advance(secs(1));
    let a2 = only(hs.feed(PacketType::Fin, hs.py(0), ack, MIB, &[]));
    assert_eq!(a2.h.ack_nr, hs.py(0));
    assert!(hs.conn().is_eof());
    assert_eq!(hs.conn().stats().duplicates_received, 1);
    assert_eq!(
        hs.conn().state(),
        State::Connected,
        "our side is still open"
    );
    // We can still send after the peer finished its direction.
    hs.write(b"still here");
    assert_eq!(only(hs.out()).payload, b"still here");
}

#[test]
fn fin_is_retransmitted_until_acked() {
    let mut hs = initiator();
    hs.write(b"last words");
    hs.close();
    let out = hs.out();
    assert_eq!(out.len(), 2);
    assert_eq!(out[0].h.ty, PacketType::Data);
    assert_eq!(out[1].h.ty, PacketType::Fin);
    assert_eq!(out[1].h.seq_nr, hs.sy(1));
    assert!(out[1].payload.is_empty());
    hs.ack(hs.sy(0));
    assert!(!hs.conn().is_fin_acked());
    let mut resends = 0;
    for _ in 0..3 {
        let r = only(hs.fire());
        assert_eq!(r.h.ty, PacketType::Fin);
        assert_eq!(r.h.seq_nr, hs.sy(1));
        resends += 1;
    }
    assert_eq!(resends, 3);
    hs.ack(hs.sy(1));
    assert!(hs.conn().is_fin_acked());
    hs.assert_quiet(secs(60));
    let now = hs.now;
    assert_eq!(
        hs.ep.with_conn(hs.h, now, |c| c.write(b"more")),
        Err(WriteError::Closed)
    );
}

#[test]
fn after_our_fin_peer_data_is_still_received() {
    let mut hs = initiator();
    hs.close();
    let fin = only(hs.out());
    assert_eq!(fin.h.ty, PacketType::Fin);
    assert_eq!(fin.h.seq_nr, hs.sy(0));
    // The peer keeps sending before acking our FIN (libutp does this).
    let fin_seq = hs.sy(0);
    let a = ack_pair_after_fin(
        hs.feed(
            PacketType::Data,
            hs.py(0),
            fin_seq.wrapping_sub(1),
            MIB,
            b"more",
        ),
        fin_seq,
    );
    assert_eq!(a.h.ty, PacketType::State);
    assert_eq!(a.h.ack_nr, hs.py(0));
    assert_eq!(a.h.seq_nr, hs.sy(1));
    assert_eq!(hs.read_all(), b"more");
    hs.feed(PacketType::Data, hs.py(1), fin_seq, MIB, b" data");
    assert!(hs.conn().is_fin_acked());
    assert_eq!(hs.read_all(), b" data");
    assert_eq!(hs.conn().state(), State::Connected);
    let a = ack_pair_after_fin(
        hs.feed(PacketType::Fin, hs.py(2), fin_seq, MIB, &[]),
        fin_seq,
    );
    assert_eq!(a.h.ack_nr, hs.py(2));
    assert!(hs.conn().is_eof());
    assert_eq!(hs.conn().state(), State::TimeWait);
}

/// After the peer acked our FIN, while its FIN is still to come, keep-alives
/// go out after 1, 2, 4 ... s up to the interval: the original libutp
/// (Transmission 3) never sends its FIN after ours, drops the connection
/// when its application closes and answers the next packet with a RESET,
/// which the reader then gets in about a second instead of 29.
#[test]
fn half_closed_by_us_the_peer_is_probed_soon_and_its_reset_ends_the_wait() {
    let t0 = Instant::now();
    let cfg = cfg0().keepalive_interval(Some(secs(29)));
    let mut ep = Endpoint::with_seed(Arc::new(cfg), t0, 1);
    let h = ep.connect(t0, peer()).unwrap();
    let syn = only(drain(&mut ep, t0));
    let id = syn.h.conn_id;
    let mut synack = hdr(PacketType::State, id, 30_000, syn.h.seq_nr);
    synack.wnd_size = MIB;
    ep.handle_datagram(t0, peer(), &datagram(&synack, &[], &[]))
        .unwrap();
    only(drain(&mut ep, t0));
    ep.with_conn(h, t0, |c| c.close());
    let fin = only(drain(&mut ep, t0));
    assert_eq!(fin.h.ty, PacketType::Fin);
    let t1 = t0 + ms(10);
    let mut ack = hdr(PacketType::State, id, 30_000, fin.h.seq_nr);
    ack.wnd_size = MIB;
    ep.handle_datagram(t1, peer(), &datagram(&ack, &[], &[]))
        .unwrap();
    assert!(ep.conn(h).is_fin_acked());
    let (sent, now) = run_timers(&mut ep, t1, t1 + secs(120), |_| false);
    let mut probes = Vec::new();
    for (t, out) in sent {
        // The ack and its echo (see ack_pair_after_fin).
        ack_pair_after_fin(out, fin.h.seq_nr);
        probes.push((t - t0).as_millis());
    }
    assert_eq!(
        probes,
        // Our FIN went out at 0 and was acked at 10 ms: 1 s after the FIN,
        // then each gap as long as the time since the ack, up to 29 s.
        vec![1_000, 2_000, 3_990, 7_970, 15_930, 31_850, 60_850, 89_850, 118_850],
    );
    assert_eq!(ep.conn(h).state(), State::Connected, "still waiting");
    // The answer of a peer that forgot the connection.
    let reset = hdr(PacketType::Reset, id, 0, 0);
    ep.handle_datagram(now, peer(), &datagram(&reset, &[], &[]))
        .unwrap();
    assert_eq!(ep.conn(h).error(), Some(utp_proto::ConnectionError::Reset));

    // Once the peer's FIN came, the usual 29 s apply (in TIME_WAIT, none).
    let (mut hs, _) = initiator_with(cfg0(), 30_000, MIB);
    hs.close();
    let fin = only(hs.out());
    let a = ack_pair_after_fin(
        hs.feed(PacketType::Fin, hs.py(0), fin.h.seq_nr, MIB, &[]),
        fin.h.seq_nr,
    );
    assert_eq!(a.h.ack_nr, hs.py(0));
    assert_eq!(hs.conn().state(), State::TimeWait);
}

#[test]
fn time_wait_answers_late_fin_restarts_and_then_frees_released_connection() {
    let mut hs = initiator();
    assert!(!hs.ep.is_winding_down(), "established");
    hs.close();
    hs.out();
    assert!(!hs.ep.is_winding_down(), "our FIN is not acknowledged yet");
    hs.feed(PacketType::Fin, hs.py(0), hs.sy(0), MIB, &[]);
    assert_eq!(hs.conn().state(), State::TimeWait);
    assert!(hs.ep.is_winding_down());
    let now = hs.now;
    hs.ep.release(hs.h, now);
    assert_eq!(hs.ep.connection_count(), 1, "id stays reserved");
    // Kept as a compact record from here on (the handle is gone).
    assert!(hs.ep.get(hs.h).is_none());
    assert_eq!(hs.ep.stats().time_wait, 1);
    assert_eq!(hs.ep.poll_timeout(), Some(now + secs(10)));
    // libtorrent re-sends its FIN about a second later: ack it again.
    hs.advance(secs(1));
    let fin_seq = hs.sy(0);
    let a = ack_pair_after_fin(
        hs.feed(PacketType::Fin, hs.py(0), fin_seq, MIB, &[]),
        fin_seq,
    );
    assert_eq!(a.h.ty, PacketType::State);
    assert_eq!(a.h.ack_nr, hs.py(0));
    assert_eq!(hs.ep.stats().resets_sent, 0);
    // TIME_WAIT restarts on the re-sent FIN (RFC 793): the id stays
    // reserved for a full period after the last FIN we answered.
    assert_eq!(hs.ep.poll_timeout(), Some(now + secs(11)));
    while hs.ep.connection_count() > 0 {
        assert!(hs.fire().is_empty());
        assert!(hs.now <= now + secs(11), "freed when TIME_WAIT ends");
    }
    assert_eq!(hs.now, now + secs(11));
    assert!(hs.ep.is_idle());
    assert_eq!(hs.ep.poll_timeout(), None);
}

// ---------------------------------------------------------------- abort

#[test]
fn abort_sends_one_reset_frees_the_connection_and_answers_later_packets_as_unknown() {
    let mut hs = initiator();
    hs.write(&[1u8; 3000]);
    let sent = hs.out();
    assert_eq!(data_seqs(&sent), vec![hs.sy(0), hs.sy(1), hs.sy(2)]);
    // The peer acks our first packet and sends data we never read.
    hs.ack(hs.sy(0));
    hs.feed(PacketType::Data, hs.py(0), hs.sy(0), MIB, b"unread");
    hs.feed(PacketType::Data, hs.py(1), hs.sy(0), MIB, b"unread too");
    hs.out();
    let now = hs.now;
    hs.ep.abort(hs.h, now);
    let rst = only(hs.out());
    assert_eq!(rst.to, peer());
    assert_eq!(rst.raw.len(), 20, "a bare header");
    assert_eq!(rst.h.ty, PacketType::Reset);
    assert_eq!(rst.h.conn_id, hs.to_peer, "the id the peer receives on");
    // Our next sequence number, and an ack of the peer's last packet:
    // libtorrent ignores a RESET acking a packet it never sent.
    assert_eq!(rst.h.seq_nr, hs.sy(3));
    assert_eq!(rst.h.ack_nr, hs.py(1));
    assert_eq!(hs.ep.connection_count(), 0, "freed at once");
    assert!(hs.ep.get(hs.h).is_none());
    assert!(hs.ep.is_idle());
    let st = hs.ep.stats();
    assert_eq!(
        (st.connections_aborted, st.connections_reset, st.resets_sent),
        (1, 0, 1)
    );
    // What the peer had in flight finds no connection, and no RESET for
    // each packet: one per connection and second (libutp wedges a socket
    // it is closing on a second RESET).
    assert!(hs.ack(hs.sy(1)).is_empty());
    assert!(hs
        .feed(PacketType::Data, hs.py(2), hs.sy(0), MIB, b"late")
        .is_empty());
    let st = hs.ep.stats();
    assert_eq!((st.unknown_connection, st.resets_repeated), (2, 2));
    // Nothing is retransmitted, no FIN follows: any timer left fires empty.
    while hs.ep.poll_timeout().is_some() {
        assert!(hs.fire().is_empty());
    }
    // A peer still sending a second later missed the RESET: its next
    // packet gets a RESET like any unknown connection's.
    hs.now = hs.now.max(now + utp_proto::endpoint::RESET_QUIET);
    let r = only(hs.ack(hs.sy(1)));
    assert_eq!(r.h.ty, PacketType::Reset);
    assert_eq!(hs.ep.stats().unknown_connection, 3);
    // And then not again at once.
    assert!(hs.ack(hs.sy(1)).is_empty());
}

#[test]
fn abort_before_the_syn_went_out_sends_nothing() {
    let (mut ep, t0) = endpoint(cfg0(), 21);
    let h = ep.connect(t0, peer()).unwrap();
    ep.abort(h, t0);
    assert!(drain(&mut ep, t0).is_empty(), "neither SYN nor RESET");
    assert_eq!(ep.connection_count(), 0);
    assert_eq!(ep.poll_timeout(), None);
    // Once the SYN is out, the peer may hold the connection: it gets a RESET
    // on the id it would receive on.
    let h = ep.connect(t0, peer()).unwrap();
    let syn = only(drain(&mut ep, t0));
    ep.abort(h, t0);
    let rst = only(drain(&mut ep, t0));
    assert_eq!(rst.h.ty, PacketType::Reset);
    assert_eq!(rst.h.conn_id, syn.h.conn_id.wrapping_add(1));
    assert_eq!(ep.stats().connections_aborted, 2);
    assert_eq!(ep.poll_timeout(), None, "no SYN retransmission");
}

#[test]
fn abort_of_an_accepted_connection_resets_on_the_initiators_id() {
    // Accepted, the initiator not heard from since its SYN (SYN_RECV).
    let (mut hs, synack) = responder_with(cfg0(), 500, 9, MIB);
    let now = hs.now;
    hs.ep.abort(hs.h, now);
    let rst = only(hs.out());
    assert_eq!(rst.h.ty, PacketType::Reset);
    assert_eq!(rst.h.conn_id, 500, "the id the initiator receives on");
    assert_eq!(
        rst.h.seq_nr, synack.h.seq_nr,
        "the SYN-ACK's seq: nothing sent since"
    );
    assert_eq!(rst.h.ack_nr, 9, "acks the SYN");
    assert_eq!(hs.ep.connection_count(), 0);
    assert_eq!(hs.ep.stats().half_open, 0, "no longer counted as half-open");
}

#[test]
fn abort_in_time_wait_only_releases() {
    let mut hs = initiator();
    hs.close();
    hs.out();
    hs.feed(PacketType::Fin, hs.py(0), hs.sy(0), MIB, &[]);
    assert_eq!(hs.conn().state(), State::TimeWait);
    let now = hs.now;
    hs.ep.abort(hs.h, now);
    assert!(
        hs.out().is_empty(),
        "both directions were finished: no RESET"
    );
    assert_eq!(hs.ep.stats().time_wait, 1, "the record keeps the id");
    assert_eq!(hs.ep.stats().connections_aborted, 0);
}

#[test]
fn abort_after_the_peer_reset_only_frees() {
    let mut hs = initiator();
    let out = hs.feed(PacketType::Reset, 999, hs.sy(0), 0, &[]);
    assert!(out.is_empty());
    let now = hs.now;
    hs.ep.abort(hs.h, now);
    assert!(hs.out().is_empty(), "no RESET in answer to a RESET");
    assert_eq!(hs.ep.connection_count(), 0);
    let st = hs.ep.stats();
    assert_eq!((st.connections_reset, st.connections_aborted), (1, 0));
}

// ---------------------------------------------------------------- unknown / reset

#[test]
fn unknown_connection_gets_20_byte_reset_echoing_id_and_acking_seq() {
    let (mut ep, t0) = endpoint(cfg0(), 9);
    ep.set_listening(true);
    for (ty, id, seq) in [
        (PacketType::Data, 4660u16, 100u16),
        (PacketType::State, 17185, 200),
        (PacketType::Fin, 21845, 300),
    ] {
        let probe = hdr(ty, id, seq, 7);
        ep.handle_datagram(t0, peer(), &datagram(&probe, &[], b"xyz"))
            .unwrap();
        let r = only(drain(&mut ep, t0));
        assert_eq!(r.to, peer());
        assert_eq!(r.raw.len(), 20);
        assert_eq!(r.h.ty, PacketType::Reset);
        assert_eq!(r.h.conn_id, id);
        assert_eq!(r.h.ack_nr, seq);
        assert_eq!(r.h.wnd_size, 0);
        assert_eq!(r.h.timestamp_diff, 0);
    }
    assert_eq!(ep.connection_count(), 0);
    assert_eq!(ep.stats().unknown_connection, 3);
    assert_eq!(ep.stats().resets_sent, 3);
}

#[test]
fn reset_for_unknown_connection_is_never_answered() {
    let (mut ep, t0) = endpoint(cfg0(), 10);
    ep.set_listening(true);
    for i in 0..10u16 {
        let rst = hdr(PacketType::Reset, 26214 + i, 400, 10);
        ep.handle_datagram(t0, peer(), &datagram(&rst, &[], &[]))
            .unwrap();
    }
    assert!(drain(&mut ep, t0).is_empty());
    assert_eq!(ep.stats().resets_sent, 0);
    assert_eq!(ep.stats().unknown_connection, 10);
}

/// Packets for one unknown connection get one RESET per second, however
/// many arrive (a peer's whole flight after we forgot the connection);
/// another connection gets its own.
#[test]
fn an_unknown_connection_gets_one_reset_per_second() {
    let (mut ep, t0) = endpoint(cfg0(), 12);
    let probe = |ep: &mut Endpoint, now: Instant, id: u16, seq: u16| -> usize {
        let p = hdr(PacketType::Data, id, seq, 0);
        ep.handle_datagram(now, peer(), &datagram(&p, &[], b"x"))
            .unwrap();
        drain(ep, now).len()
    };
    let burst: usize = (0..20)
        .map(|i| probe(&mut ep, t0 + ms(i), 7, i as u16))
        .sum();
    assert_eq!(burst, 1);
    assert_eq!(probe(&mut ep, t0 + ms(30), 8, 0), 1, "another connection");
    assert_eq!(ep.stats().resets_repeated, 19);
    assert_eq!(probe(&mut ep, t0 + ms(999), 7, 50), 0);
    assert_eq!(probe(&mut ep, t0 + ms(1000), 7, 51), 1, "a second later");
}

/// What the endpoint remembers of the RESETs it sent is bounded: past
/// 1,024 connections the oldest are forgotten (and would get another).
#[test]
fn remembered_resets_are_bounded() {
    let (mut ep, t0) = endpoint(cfg0().reset_rate(1_000_000), 13);
    let probe = |ep: &mut Endpoint, id: u16| -> usize {
        let p = hdr(PacketType::Data, id, 1, 0);
        ep.handle_datagram(t0, peer(), &datagram(&p, &[], b"x"))
            .unwrap();
        drain(ep, t0).len()
    };
    let first: usize = (0..3000).map(|id| probe(&mut ep, id)).sum();
    assert_eq!(first, 3000);
    assert_eq!(probe(&mut ep, 2999), 0, "remembered");
    assert_eq!(probe(&mut ep, 0), 1, "forgotten: past the bound");
}

#[test]
fn reset_replies_are_rate_limited() {
    let (mut ep, t0) = endpoint(cfg0().reset_rate(10), 11);
    let probe = |ep: &mut Endpoint, now: Instant, n: u16| -> usize {
        let mut sent = 0;
        for i in 0..n {
            let p = hdr(PacketType::Data, i, i, 0);
            ep.handle_datagram(now, peer(), &datagram(&p, &[], &[]))
                .unwrap();
            sent += drain(ep, now).len();
        }
        sent
    };
    assert_eq!(probe(&mut ep, t0, 30), 10, "burst limited to the rate");
    assert_eq!(ep.stats().resets_suppressed, 20);
    assert_eq!(
        probe(&mut ep, t0 + ms(500), 30),
        5,
        "refills at 10 per second"
    );
    assert_eq!(
        probe(&mut ep, t0 + secs(60), 30),
        10,
        "bucket capped at one second"
    );
    assert_eq!(ep.stats().resets_sent, 25);
    // Never more RESET bytes than probe bytes: each reply is 20 bytes.
    assert_eq!(ep.connection_count(), 0);
}

#[test]
fn garbage_and_dht_datagrams_are_dropped_silently() {
    let (mut ep, t0) = endpoint(cfg0(), 12);
    ep.set_listening(true);
    let dht = b"d1:ad2:id20:abcdefghij0123456789e1:q4:ping1:t2:aa1:y1:qe";
    assert!(ep.handle_datagram(t0, peer(), dht).is_err());
    assert!(ep.handle_datagram(t0, peer(), &[0x41; 5]).is_err());
    let mut bad_type = datagram(&hdr(PacketType::Data, 1, 1, 1), &[], &[]);
    bad_type[0] = 0x51;
    assert!(ep.handle_datagram(t0, peer(), &bad_type).is_err());
    assert!(drain(&mut ep, t0).is_empty());
    assert_eq!(ep.stats().invalid_datagrams, 3);
    assert_eq!(ep.connection_count(), 0);
}

// ---------------------------------------------------------------- windows

#[test]
fn sender_never_exceeds_min_of_cwnd_and_peer_window() {
    let mut hs = initiator();
    hs.write(&[9u8; 200_000]);
    let out = hs.out();
    let st = hs.conn().stats();
    assert_eq!(data_seqs(&out).len(), 10, "initial window of 10 packets");
    assert_eq!(st.bytes_in_flight, 10 * MSS);
    assert!(st.bytes_in_flight <= st.cwnd);
    // The peer acks two packets but shrinks its window to 5000: no new data
    // while more than that is in flight.
    let mut next = 10u16;
    let out = hs.feed(PacketType::State, hs.py(0), hs.sy(1), 5000, &[]);
    assert!(data_seqs(&out).is_empty(), "{out:?}");
    for wnd in [5000u32, 3000, 20_000, 1400, 64_000, 700, 0, 100_000] {
        // The application keeps the queue full (it takes about two windows).
        hs.write(&[9u8; 200_000]);
        let out = hs.feed(PacketType::State, hs.py(0), hs.sy(next - 1), wnd, &[]);
        let seqs = data_seqs(&out);
        let bytes: usize = out.iter().map(|o| o.payload.len()).sum();
        let st = hs.conn().stats();
        assert_eq!(st.peer_window, wnd);
        assert_eq!(st.bytes_in_flight, bytes);
        let limit = st.cwnd.min(wnd as usize);
        assert!(
            bytes <= limit,
            "wnd {wnd}: {bytes} bytes in flight > min(cwnd {}, wnd)",
            st.cwnd
        );
        if wnd > 0 {
            assert!(!seqs.is_empty(), "wnd {wnd}: an open window is used");
            assert!(
                limit - bytes < MSS,
                "wnd {wnd}: window filled ({bytes}/{limit})"
            );
        }
        for (i, s) in seqs.iter().enumerate() {
            assert_eq!(*s, hs.sy(next + i as u16));
        }
        next += seqs.len() as u16;
    }
}

#[test]
fn zero_window_sender_probes_and_recovers_when_window_opens() {
    let mut hs = initiator();
    let total = 20 * MSS;
    hs.write(&vec![6u8; total]);
    assert_eq!(data_seqs(&hs.out()).len(), 10);
    // Everything acked, but the peer's buffer is full.
    let out = hs.feed(PacketType::State, hs.py(0), hs.sy(9), 0, &[]);
    assert!(data_seqs(&out).is_empty());
    // Its window update gets lost. The sender must not stall forever: it
    // probes, and the probe's ack reveals the open window.
    let mut probes = 0;
    let mut sent_after: Vec<u16> = Vec::new();
    let deadline = hs.now + secs(120);
    let mut peer_open = false;
    while sent_after.len() < 10 {
        let Some(t) = hs.ep.poll_timeout() else {
            panic!("zero-window sender stalled with no timer armed");
        };
        assert!(t <= deadline, "no recovery within 120 s");
        hs.now = t;
        hs.ep.handle_timeout(t);
        let out = hs.out();
        for o in out.iter().filter(|o| o.h.ty == PacketType::Data) {
            if !sent_after.contains(&o.h.seq_nr) {
                sent_after.push(o.h.seq_nr);
            }
        }
        if !out.is_empty() {
            probes += 1;
            // The first probe meets a closed window and is dropped (ack
            // unchanged); later the peer has read and acks with room.
            let highest = *sent_after
                .iter()
                .max_by_key(|s| s.wrapping_sub(hs.sy(0)))
                .unwrap();
            let (ack, wnd) = if peer_open {
                (highest, MIB)
            } else {
                (hs.sy(9), 0)
            };
            let out = hs.feed(PacketType::State, hs.py(0), ack, wnd, &[]);
            peer_open = true;
            for o in out.iter().filter(|o| o.h.ty == PacketType::Data) {
                if !sent_after.contains(&o.h.seq_nr) {
                    sent_after.push(o.h.seq_nr);
                }
            }
        }
    }
    assert!(probes >= 2);
    sent_after.sort_by_key(|s| s.wrapping_sub(hs.sy(0)));
    assert_eq!(sent_after, (10..20).map(|k| hs.sy(k)).collect::<Vec<_>>());
}

/// Data sent into an empty flight gets a whole retransmission timeout of its
/// own, even when the persist timer (armed while a closed window held
/// everything back) was already running: that deadline fired a few hundred
/// milliseconds after the send and cut the window for a packet not yet due.
#[test]
fn data_after_a_closed_window_gets_its_own_retransmission_timeout() {
    let mut hs = initiator();
    hs.write(&vec![6u8; 20 * MSS]);
    assert_eq!(data_seqs(&hs.out()).len(), 10);
    // Everything acked, but the peer's buffer is full: the persist timer
    // starts now.
    assert!(data_seqs(&hs.feed(PacketType::State, hs.py(0), hs.sy(9), 0, &[])).is_empty());
    // 400 ms later (before the persist timer's 500 ms) the window opens.
    hs.advance(ms(400));
    let sent_at = hs.now;
    let out = hs.feed(PacketType::State, hs.py(0), hs.sy(9), MIB, &[]);
    assert!(!data_seqs(&out).is_empty(), "the open window is used");
    // No ack comes: tail loss probes may go, the timeout not before the
    // minimum RTO after the send.
    let rto = hs.conn().stats().timeouts;
    while hs.conn().stats().timeouts == rto {
        hs.fire();
        assert!(hs.now < sent_at + secs(5), "no timeout at all");
    }
    assert!(
        hs.now >= sent_at + ms(500),
        "timed out {:?} after the send",
        hs.now - sent_at
    );
}

/// The most bytes in flight in each phase of a path whose round trip is
/// `rtt` for `rounds` round trips, phase after phase, while the window
/// keeps growing (the peer offers far more than it can fill).
fn peak_flights(phases: &[(Duration, usize)]) -> Vec<usize> {
    let mut hs = initiator_with(cfg0().recv_buffer(16 << 20), 30_000, MIB).0;
    let data = vec![1u8; 4 << 20];
    hs.write(&data);
    let mut sent = data_seqs(&hs.out());
    let mut peaks = Vec::new();
    for &(rtt, rounds) in phases {
        let mut peak = 0;
        for _ in 0..rounds {
            // The application keeps the send buffer full.
            hs.write(&data);
            sent.extend(data_seqs(&hs.out()));
            // What the pacer lets go within this round trip.
            sent.extend(hs.data_sent_within(rtt));
            peak = peak.max(hs.conn().stats().bytes_in_flight);
            let Some(&last) = sent.last() else { break };
            sent = data_seqs(&hs.feed(PacketType::State, hs.py(0), last, 16 << 20, &[]));
        }
        peaks.push(peak);
    }
    peaks
}

/// A path whose round trip is under a millisecond (this host, a LAN) has
/// at most 512 KiB in flight, however large the congestion window grows;
/// a longer one gets what the window allows.
#[test]
fn flight_on_a_sub_millisecond_path_stays_within_512_kib() {
    let local = peak_flights(&[(Duration::from_micros(200), 200)])[0];
    assert!(local <= 512 * 1024, "{local} bytes in flight");
    assert!(local > 400 * 1024, "the cap is reached: {local}");
    let far = peak_flights(&[(ms(20), 200)])[0];
    assert!(far > 1000 * 1024, "{far} bytes in flight at 20 ms");
}

/// A connection whose path gets slower for good under the same addresses
/// (a route change) loses the sub-millisecond cap once its recent round
/// trips are all longer, rather than keeping 512 KiB per 20 ms round trip
/// for the rest of its life.
#[test]
fn the_flight_cap_ends_when_the_path_stops_being_local() {
    let rounds = 20 * 60; // 24 s at 20 ms
    let peaks = peak_flights(&[(Duration::from_micros(200), 200), (ms(20), rounds)]);
    assert!(peaks[0] <= 512 * 1024, "{} bytes in flight", peaks[0]);
    assert!(
        peaks[1] > 1000 * 1024,
        "{} bytes in flight at 20 ms",
        peaks[1]
    );
}

/// Request/response traffic (one packet per round trip): 20 messages on
/// a 1 ms path, then `jumped` round trips of `rtt` and `settled` more;
/// the connection's stats after the jump and at the end.
fn request_response_jump(rtt: Duration, jumped: usize, settled: usize) -> [ConnectionStats; 2] {
    let mut hs = initiator();
    let round = |hs: &mut Harness, rtt: Duration| {
        hs.write(&[7u8; 100]);
        let mut sent = data_seqs(&hs.out());
        sent.extend(hs.data_sent_within(rtt));
        let last = *sent.last().expect("the message went out");
        hs.ack(last);
    };
    for _ in 0..20 {
        round(&mut hs, ms(1));
    }
    assert!(hs.conn().stats().rtt.unwrap() < ms(2));
    for _ in 0..jumped {
        round(&mut hs, rtt);
    }
    let before = hs.conn().stats();
    for _ in 0..settled {
        round(&mut hs, rtt);
    }
    [before, hs.conn().stats()]
}

/// A round trip that jumps past the probe timeout (1 -> 40 ms): each
/// message is probed before its ack comes, so every ack is for a
/// retransmitted packet (Karn: no sample). The smoothed RTT must still
/// follow the path, and the probes stop once it has.
#[test]
fn request_response_follows_a_round_trip_that_jumps_past_the_probe_timeout() {
    let [before, after] = request_response_jump(ms(40), 100, 20);
    let srtt = after.rtt.unwrap();
    assert!(srtt > ms(30), "smoothed RTT {srtt:?} on a 40 ms path");
    assert_eq!(
        after.tail_loss_probes, before.tail_loss_probes,
        "probes still sent for every message"
    );
    assert_eq!(after.timeouts, 0);
}

/// A round trip that jumps past the retransmission timeout (1 ms -> 2 s,
/// a bloated uplink): the first message times out, and its backoff (kept
/// until a packet sent once is acked) keeps the next ones from doing so.
/// Before, every message timed out and cut the window to one packet.
#[test]
fn request_response_follows_a_round_trip_that_jumps_past_the_rto() {
    let [before, after] = request_response_jump(secs(2), 40, 20);
    let srtt = after.rtt.unwrap();
    assert!(srtt > ms(1500), "smoothed RTT {srtt:?} on a 2 s path");
    assert!(after.timeouts <= 2, "{} timeouts", after.timeouts);
    assert_eq!(after.timeouts, before.timeouts);
    assert_eq!(after.tail_loss_probes, before.tail_loss_probes);
    assert_eq!(after.packets_retransmitted, before.packets_retransmitted);
}

// ---------------------------------------------------------------- misc

#[test]
fn release_before_handshake_forgets_the_connection() {
    let (mut ep, t0) = endpoint(cfg0(), 13);
    let h = ep.connect(t0, peer()).unwrap();
    drain(&mut ep, t0);
    ep.release(h, t0);
    assert_eq!(ep.connection_count(), 0);
    assert!(drain(&mut ep, t0).is_empty());
    assert_eq!(ep.poll_timeout(), None);
}

#[test]
fn accept_backlog_full_drops_syns_silently() {
    let (mut ep, t0) = endpoint(cfg0().accept_backlog(2), 14);
    ep.set_listening(true);
    for id in [10u16, 20, 30] {
        let syn = hdr(PacketType::Syn, id, 1, 0);
        ep.handle_datagram(t0, peer(), &datagram(&syn, &[], &[]))
            .unwrap();
    }
    let out = drain(&mut ep, t0);
    assert_eq!(out.len(), 2, "only backlog-many SYN-ACKs");
    assert!(out.iter().all(|o| o.h.ty == PacketType::State));
    assert_eq!(ep.accept_queue_len(), 2);
    assert_eq!(ep.stats().syn_backlog_full, 1);
}

// ------------------------------------------------- lost or overtaken SYN-ACK

#[test]
fn duplicate_syn_after_responder_data_is_answered_with_the_synack_seq() {
    // The initiator lost our SYN-ACK (and maybe our data): its ack_nr will be
    // the re-answer's seq - 1, so the re-answer must carry Y, not Y + sent.
    let (mut hs, synack) = responder_with(cfg0(), 4000, 60_000, MIB);
    let y = synack.h.seq_nr;
    hs.write(&[1u8; 2 * MSS]);
    // The initiator stays silent: the data goes when the hold ends.
    assert_eq!(data_seqs(&hs.fire()), vec![y, y.wrapping_add(1)]);
    hs.advance(secs(1));
    let out = hs.feed_full(hdr(PacketType::Syn, 4000, 60_000, 0), &[], &[]);
    let st: Vec<&Out> = out.iter().filter(|o| o.h.ty == PacketType::State).collect();
    assert_eq!(st.len(), 1, "{out:?}");
    assert_eq!(st[0].h.seq_nr, y, "re-sent SYN-ACK keeps seq Y");
    assert_eq!(st[0].h.ack_nr, 60_000);
    assert_eq!(hs.ep.connection_count(), 1);
}

#[test]
fn data_overtaking_the_synack_is_buffered_and_delivered() {
    let (mut ep, t0) = endpoint(cfg0(), 21);
    let h = ep.connect(t0, peer()).unwrap();
    let syn = only(drain(&mut ep, t0));
    let (r, s, y) = (syn.h.conn_id, syn.h.seq_nr, 700u16);
    // libutp sends data right behind the SYN-ACK; here it arrives first.
    let d = hdr(PacketType::Data, r, y, s);
    ep.handle_datagram(t0 + ms(5), peer(), &datagram(&d, &[], b"early"))
        .unwrap();
    let synack = hdr(PacketType::State, r, y, s);
    ep.handle_datagram(t0 + ms(6), peer(), &datagram(&synack, &[], &[]))
        .unwrap();
    let out = drain(&mut ep, t0 + ms(6));
    let a = out.last().expect("the buffered data is acked");
    assert_eq!(a.h.ack_nr, y);
    let mut buf = [0u8; 16];
    let n = ep.with_conn(h, t0 + ms(6), |c| c.read(&mut buf)).unwrap();
    assert_eq!(&buf[..n], b"early");
}

#[test]
fn lost_synack_reanswered_with_next_seq_keeps_buffered_data() {
    // libutp answers a re-sent SYN with its next unused seq (Y + 1 here);
    // the data Y that did arrive must not be skipped.
    let (mut ep, t0) = endpoint(cfg0(), 22);
    let h = ep.connect(t0, peer()).unwrap();
    let syn = only(drain(&mut ep, t0));
    let (r, s, y) = (syn.h.conn_id, syn.h.seq_nr, 65535u16);
    let d = hdr(PacketType::Data, r, y, s);
    ep.handle_datagram(t0 + ms(5), peer(), &datagram(&d, &[], b"first"))
        .unwrap();
    // Data acking our SYN proves the SYN-ACK was lost: the SYN is re-sent
    // at once rather than after the 1 s timer.
    let again = only(drain(&mut ep, t0 + ms(5)));
    assert_eq!(
        again.h,
        Header {
            timestamp: again.h.timestamp,
            ..syn.h
        }
    );
    let re = hdr(PacketType::State, r, y.wrapping_add(1), s);
    ep.handle_datagram(t0 + ms(10), peer(), &datagram(&re, &[], &[]))
        .unwrap();
    let now = t0 + ms(10);
    let out = drain(&mut ep, now);
    assert_eq!(out.last().map(|o| o.h.ack_nr), Some(y), "{out:?}");
    let mut buf = [0u8; 16];
    let n = ep.with_conn(h, now, |c| c.read(&mut buf)).unwrap();
    assert_eq!(&buf[..n], b"first");
    let d2 = hdr(PacketType::Data, r, y.wrapping_add(1), s);
    ep.handle_datagram(now, peer(), &datagram(&d2, &[], b" second"))
        .unwrap();
    let n = ep.with_conn(h, now, |c| c.read(&mut buf)).unwrap();
    assert_eq!(&buf[..n], b" second");
}

#[test]
fn lost_synack_loses_nothing_end_to_end() {
    let (mut a, t0) = endpoint(cfg0(), 23);
    let mut b = Endpoint::with_seed(Arc::new(cfg0()), t0, 24);
    b.set_listening(true);
    let ha = a.connect(t0, peer()).unwrap();
    let syn = only(drain(&mut a, t0));
    b.handle_datagram(t0, me(), &syn.raw).unwrap();
    let hb = b.accept().unwrap();
    b.with_conn(hb, t0, |c| c.write(b"greeting from the responder"))
        .unwrap();
    let lost = drain(&mut b, t0);
    // The data waits for the initiator (SYN_RECV_HOLD); the SYN-ACK is lost.
    assert_eq!(lost.len(), 1, "only the SYN-ACK: {lost:?}");
    assert_eq!(lost[0].h.ty, PacketType::State);
    // The initiator re-sends its SYN; everything is delivered from now on.
    let mut now = t0;
    let mut got = Vec::new();
    for _ in 0..100 {
        let next = [a.poll_timeout(), b.poll_timeout()]
            .into_iter()
            .flatten()
            .min()
            .expect("timers armed");
        now = now.max(next);
        a.handle_timeout(now);
        b.handle_timeout(now);
        for _ in 0..10 {
            for o in drain(&mut a, now) {
                b.handle_datagram(now, me(), &o.raw).unwrap();
            }
            for o in drain(&mut b, now) {
                a.handle_datagram(now, peer(), &o.raw).unwrap();
            }
        }
        let mut buf = [0u8; 64];
        let n = a.with_conn(ha, now, |c| c.read(&mut buf)).unwrap();
        got.extend_from_slice(&buf[..n]);
        if got.len() >= 27 {
            break;
        }
    }
    assert_eq!(got, b"greeting from the responder");
    assert!(now - t0 <= secs(5), "recovered in {:?}", now - t0);
}

#[test]
fn reordered_older_ack_does_not_restore_a_stale_window() {
    let mut hs = initiator();
    hs.write(&[1u8; 4 * MSS]);
    hs.out();
    let mut newer = hdr(PacketType::State, 0, hs.py(0), hs.sy(1));
    newer.timestamp = 2_000;
    newer.wnd_size = 3_000;
    let mut older = newer;
    older.timestamp = 1_000;
    older.wnd_size = MIB;
    hs.feed_full(newer, &[], &[]);
    assert_eq!(hs.conn().stats().peer_window, 3_000);
    // The older packet (sent before the reader's buffer filled) arrives late.
    hs.feed_full(older, &[], &[]);
    assert_eq!(hs.conn().stats().peer_window, 3_000, "stale window ignored");
    let mut old_ack = older;
    old_ack.ack_nr = hs.sy(0);
    old_ack.timestamp = 3_000;
    hs.feed_full(old_ack, &[], &[]);
    assert_eq!(hs.conn().stats().peer_window, 3_000, "older ack ignored");
    // A newer packet (same ack, later clock) and a newer ack both count.
    let mut upd = newer;
    upd.timestamp = 4_000;
    upd.wnd_size = 50_000;
    hs.feed_full(upd, &[], &[]);
    assert_eq!(hs.conn().stats().peer_window, 50_000);
    let mut adv = upd;
    adv.ack_nr = hs.sy(3);
    adv.timestamp = 1; // the peer's clock may wrap; a newer ack wins anyway
    adv.wnd_size = 60_000;
    hs.feed_full(adv, &[], &[]);
    assert_eq!(hs.conn().stats().peer_window, 60_000);
}

#[test]
fn write_into_an_already_closed_window_still_probes() {
    let mut hs = initiator();
    hs.write(&[1u8; MSS]);
    assert_eq!(data_seqs(&hs.out()), vec![hs.sy(0)]);
    // Everything acked, window closed, nothing pending: no timer needed
    // (beyond letting go of spare send memory, which sends nothing).
    hs.feed(PacketType::State, hs.py(0), hs.sy(0), 0, &[]);
    hs.assert_quiet(secs(1));
    // Now the application writes; the window update that would open the
    // window is lost, so only a probe can find out.
    hs.advance(secs(1));
    hs.write(&[2u8; 3 * MSS]);
    assert!(hs.out().is_empty(), "closed window: nothing sent at once");
    let mut probe = None;
    for _ in 0..10 {
        let out = hs.fire();
        if let Some(d) = out.iter().find(|o| o.h.ty == PacketType::Data) {
            probe = Some(d.clone());
            break;
        }
    }
    let probe = probe.expect("a zero-window probe");
    assert_eq!(probe.h.seq_nr, hs.sy(1));
    assert!(hs.now - hs.t0 <= secs(1) + secs(30), "probed in time");
    // The probe's ack opens the window: the rest follows at once.
    let out = hs.feed(PacketType::State, hs.py(0), hs.sy(1), MIB, &[]);
    assert_eq!(data_seqs(&out), vec![hs.sy(2), hs.sy(3)]);
}

#[test]
fn packets_sent_well_before_a_delivered_one_are_lost_even_beyond_the_sack() {
    // RACK's time threshold: libutp's SACK covers only 32 packets, so a
    // burst loss must be inferred from send times, not from SACK bits.
    let mut hs = initiator();
    hs.write(&[6u8; 3 * MSS]);
    assert_eq!(data_seqs(&hs.out()), vec![hs.sy(0), hs.sy(1), hs.sy(2)]);
    hs.advance(Duration::from_millis(5));
    hs.write(&[7u8; 3 * MSS]);
    assert_eq!(data_seqs(&hs.out()), vec![hs.sy(3), hs.sy(4), hs.sy(5)]);
    hs.advance(Duration::from_millis(5));
    // Only sy(3) arrived: by packet count just sy(0) would be lost, but
    // sy(1) and sy(2) were sent 5 ms before a delivered packet too.
    let ack = hs.sy(0).wrapping_sub(1);
    let seqs = data_seqs(&hs.sack(ack, &[hs.sy(3)]));
    assert_eq!(seqs, vec![hs.sy(0), hs.sy(1), hs.sy(2)]);
    let st = hs.conn().stats();
    assert_eq!(st.timeouts, 0);
    // sy(4) and sy(5) left together with sy(3): not presumed lost.
    assert_eq!(st.packets_retransmitted, 3);
}

/// The peer's FIN arrived; we close and our FIN goes out.
fn closed_after_peers_fin() -> Harness {
    let mut hs = initiator();
    let ack = hs.sy(0).wrapping_sub(1);
    let a = only(hs.feed(PacketType::Fin, hs.py(0), ack, MIB, &[]));
    assert_eq!(a.h.ack_nr, hs.py(0));
    assert!(hs.conn().is_eof());
    hs.close();
    let fin = only(hs.out());
    assert_eq!(fin.h.ty, PacketType::Fin);
    hs
}

/// Fires timers until the connection leaves `Connected`; returns when each
/// FIN went out.
fn fins_until_closed(hs: &mut Harness) -> Vec<Instant> {
    let mut fins = Vec::new();
    while hs.conn().state() == State::Connected {
        let out = hs.fire();
        if out.iter().any(|o| o.h.ty == PacketType::Fin) {
            fins.push(hs.now);
        }
        assert!(fins.len() < 20, "the FIN is resent without end");
    }
    fins
}

#[test]
fn unanswered_fin_after_peers_fin_completes_the_close_without_error() {
    // libtorrent forgets a connection once its FIN is acked, so a FIN we send
    // afterwards is never acked; with everything else delivered that is a
    // clean close, not a timeout.
    let mut hs = closed_after_peers_fin();
    let min_rto = Config::default().min_rto;
    // Resent a probe timeout (two RTTs) apart; once three copies went
    // unanswered the close is complete for the application, successfully,
    // well before a retransmission timeout (libtorrent's and librqbit-utp's
    // closes took 1.5 s so).
    let mut fins = Vec::new();
    while !hs.conn().is_fin_acked() {
        let out = hs.fire();
        if out.iter().any(|o| o.h.ty == PacketType::Fin) {
            fins.push(hs.now);
        }
        assert!(fins.len() < 10);
    }
    assert_eq!(fins.len(), 2, "two more copies: {fins:?}");
    assert!(hs.now - hs.t0 < min_rto, "{:?}", hs.now - hs.t0);
    assert_eq!(hs.conn().stats().timeouts, 0);
    assert_eq!(hs.conn().state(), State::Connected);
    assert_eq!(hs.conn().error(), None);
    assert!(hs.conn().stats().fin_unacknowledged);
    // But the FIN is still resent (a peer that is still there may have
    // lost every copy, and would wait for its EOF forever), from the
    // second timeout at a steady interval, until max_timeouts; then the
    // connection goes quietly.
    let presumed = fins.len();
    fins.extend(fins_until_closed(&mut hs));
    assert_eq!(hs.conn().state(), State::TimeWait);
    assert_eq!(hs.conn().error(), None);
    let max = Config::default().max_timeouts;
    assert_eq!(
        (fins.len() - presumed) as u32,
        max - 1,
        "one more FIN for each timeout before the last: {fins:?}"
    );
    let gaps: Vec<Duration> = fins[presumed + 1..]
        .windows(2)
        .map(|w| w[1] - w[0])
        .collect();
    assert!(
        gaps.windows(2).all(|g| g[0] == g[1]),
        "no more backoff: {gaps:?}"
    );
    assert!(fins[fins.len() - 1] - hs.t0 < secs(10), "{fins:?}");
    let st = hs.conn().stats();
    assert!(st.fin_unacknowledged);
    assert_eq!(st.timeouts, u64::from(max));
}

#[test]
fn a_fin_acked_after_the_close_was_presumed_ends_it_normally() {
    let mut hs = closed_after_peers_fin();
    while !hs.conn().is_fin_acked() {
        hs.fire();
    }
    assert!(hs.conn().stats().fin_unacknowledged);
    // The third copy arrives and the peer acks it.
    let fin = hs.sy(0);
    hs.feed(PacketType::State, hs.py(1), fin, MIB, &[]);
    assert_eq!(hs.conn().state(), State::TimeWait);
    assert!(hs.conn().is_fin_acked());
    assert!(!hs.conn().stats().fin_unacknowledged);
    assert_eq!(hs.conn().error(), None);
}

#[test]
fn unanswered_fin_with_unacked_data_still_times_out() {
    let mut hs = initiator();
    let ack = hs.sy(0).wrapping_sub(1);
    only(hs.feed(PacketType::Fin, hs.py(0), ack, MIB, &[]));
    hs.write(b"never acked");
    hs.close();
    hs.out();
    while hs.conn().error().is_none() {
        hs.fire();
    }
    assert_eq!(
        hs.conn().error(),
        Some(utp_proto::ConnectionError::TimedOut)
    );
    assert!(!hs.conn().stats().fin_unacknowledged);
}

#[test]
fn idle_connection_sends_keepalives_and_detects_a_silent_peer() {
    let t0 = Instant::now();
    let cfg = cfg0()
        .keepalive_interval(Some(secs(29)))
        .idle_timeout(Some(secs(100)));
    let mut ep = Endpoint::with_seed(Arc::new(cfg), t0, 1);
    let h = ep.connect(t0, peer()).unwrap();
    let syn = only(drain(&mut ep, t0));
    let mut synack = hdr(PacketType::State, syn.h.conn_id, 30_000, syn.h.seq_nr);
    synack.wnd_size = MIB;
    ep.handle_datagram(t0, peer(), &datagram(&synack, &[], &[]))
        .unwrap();
    let ack = only(drain(&mut ep, t0));
    assert_eq!((ack.h.ty, ack.h.ack_nr), (PacketType::State, 29_999));
    // Run every timer for two minutes of silence from the peer.
    let (sent, now) = run_timers(&mut ep, t0, t0 + secs(120), |ep| {
        ep.conn(h).error().is_some()
    });
    let mut keepalives = Vec::new();
    for (t, out) in sent {
        for o in out {
            assert_eq!(o.h.ty, PacketType::State, "{o:?}");
            assert_eq!(o.h.ack_nr, 29_999);
            keepalives.push(t - t0);
        }
    }
    assert_eq!(keepalives, vec![secs(29), secs(58), secs(87)]);
    assert_eq!(
        ep.conn(h).error(),
        Some(utp_proto::ConnectionError::TimedOut)
    );
    assert_eq!(
        now - t0,
        secs(100),
        "the idle timeout counts from the last packet"
    );
}

// ------------------------------------------------------------- gather sends

/// `poll_transmit_split` hands out the same datagrams as `poll_transmit`,
/// with payloads of `SPLIT_MIN` bytes or more beside the header instead of
/// copied behind it.
#[test]
fn a_split_transmit_is_the_same_datagram_with_the_payload_beside_it() {
    let cfg = || cfg0().base_payload(16_000);
    let mut whole = established_responder(cfg());
    let mut split = established_responder(cfg());
    let (mut buf_a, mut buf_b) = (vec![0u8; 70_000], vec![0u8; 70_000]);
    let mut sizes = Vec::new();
    for data in [
        vec![7u8; 100],
        (0..40_000u32).map(|i| (i % 251) as u8).collect(),
    ] {
        for hs in [&mut whole, &mut split] {
            let n = hs.ep.with_conn(hs.h, hs.now, |c| c.write(&data)).unwrap();
            assert_eq!(n, data.len());
        }
        loop {
            let a = whole
                .ep
                .poll_transmit(whole.now, &mut buf_a)
                .map(|t| buf_a[..t.len].to_vec());
            let b = split.ep.poll_transmit_split(split.now, &mut buf_b);
            let Some((t, payload)) = b else {
                assert_eq!(a, None);
                break;
            };
            let mut d = buf_b[..t.len].to_vec();
            if let Some(p) = &payload {
                assert!(p.len() >= SPLIT_MIN, "short payloads stay inline");
                assert_eq!(t.len, 20, "a data packet's header");
                d.extend_from_slice(p);
            }
            assert_eq!(Some(d), a, "same datagram");
            sizes.push((t.len, payload.map_or(0, |p| p.len())));
        }
    }
    assert_eq!(
        sizes,
        vec![(120, 0), (4016, 0), (20, 16_000), (20, 16_000), (4024, 0)],
        "100 bytes inline; the rest of their 4 KiB chunk ends the next \
         packet early; 32,000 in two gathered packets, the last 4,004 \
         inline"
    );
}

// ---------------------------------------------------------------- delayed ack

fn delayed_acks() -> Harness {
    initiator_with(cfg0().ack_delay(Some(ms(1))), 30_000, MIB).0
}

#[test]
fn a_lone_small_packet_is_acked_by_our_reply() {
    let mut hs = delayed_acks();
    let p0 = hs.py(0);
    assert!(
        hs.feed(
            PacketType::Data,
            p0,
            hs.sy(0).wrapping_sub(1),
            MIB,
            &[1; 64]
        )
        .is_empty(),
        "the ack waits for a reply"
    );
    hs.advance(Duration::from_micros(300));
    assert!(hs.out().is_empty());
    assert_eq!(hs.read_all(), vec![1; 64]);
    assert_eq!(hs.write(&[2; 64]), 64);
    let reply = only(hs.out());
    assert_eq!(reply.h.ty, PacketType::Data);
    assert_eq!(reply.h.ack_nr, p0, "the reply carries the ack");
    // Nothing is left to send alone.
    hs.advance(ms(5));
    hs.ep.handle_timeout(hs.now);
    assert!(hs.out().is_empty());
}

#[test]
fn an_unanswered_small_packet_is_acked_after_the_delay() {
    let mut hs = delayed_acks();
    let p0 = hs.py(0);
    let t = hs.now;
    assert!(hs
        .feed(
            PacketType::Data,
            p0,
            hs.sy(0).wrapping_sub(1),
            MIB,
            &[1; 100]
        )
        .is_empty());
    assert_eq!(
        hs.ep.poll_timeout(),
        Some(t + ms(1)),
        "the delay is the next timer"
    );
    let ack = only(hs.fire());
    assert_eq!((ack.h.ty, ack.h.ack_nr), (PacketType::State, p0));
    assert_eq!(hs.now, t + ms(1));
}

#[test]
fn a_second_packet_a_large_one_or_a_fin_is_acked_at_once() {
    let mut hs = delayed_acks();
    let ack_of_ours = hs.sy(0).wrapping_sub(1);
    let (p0, p1, p2, p3) = (hs.py(0), hs.py(1), hs.py(2), hs.py(3));
    assert!(hs
        .feed(PacketType::Data, p0, ack_of_ours, MIB, &[1; 10])
        .is_empty());
    // Two packets unacked: both are acked now.
    let ack = only(hs.feed(PacketType::Data, p1, ack_of_ours, MIB, &[1; 10]));
    assert_eq!((ack.h.ty, ack.h.ack_nr), (PacketType::State, p1));
    // A full-size packet is bulk data: acked at once.
    let ack = only(hs.feed(PacketType::Data, p2, ack_of_ours, MIB, &[1; MSS]));
    assert_eq!(ack.h.ack_nr, p2);
    // So is a FIN.
    let ack = only(hs.feed(PacketType::Fin, p3, ack_of_ours, MIB, &[]));
    assert_eq!(ack.h.ack_nr, p3);
}

#[test]
fn a_packet_out_of_order_is_acked_at_once_with_its_sack() {
    let mut hs = delayed_acks();
    let p1 = hs.py(1);
    let ack = only(hs.feed(
        PacketType::Data,
        p1,
        hs.sy(0).wrapping_sub(1),
        MIB,
        &[1; 10],
    ));
    assert_eq!(ack.h.ty, PacketType::State);
    assert_eq!(ack.h.ack_nr, hs.py(0).wrapping_sub(1));
    assert!(ack.sack.is_some(), "the SACK tells of the packet held");
}

#[test]
fn the_ack_of_the_synack_rides_on_our_first_data_when_it_comes_at_once() {
    let (mut ep, t0) = endpoint(cfg0().ack_delay(Some(ms(1))), 1);
    let h = ep.connect(t0, peer()).unwrap();
    let syn = only(drain(&mut ep, t0));
    let y = 500;
    let mut synack = hdr(PacketType::State, syn.h.conn_id, y, syn.h.seq_nr);
    synack.timestamp = 1;
    let t = t0 + ms(10);
    ep.handle_datagram(t, peer(), &datagram(&synack, &[], &[]))
        .unwrap();
    assert!(drain(&mut ep, t).is_empty(), "held for the ack delay");
    assert_eq!(ep.with_conn(h, t, |c| c.write(b"hello")), Ok(5));
    let data = only(drain(&mut ep, t));
    assert_eq!(data.h.ty, PacketType::Data);
    assert_eq!(
        data.h.ack_nr,
        y.wrapping_sub(1),
        "our data acks the SYN-ACK"
    );
    assert_eq!(data.payload, b"hello");
}

/// The send buffer holds whole packets: 64 KiB of 65,487-byte packets
/// (loopback's largest) would leave 49 bytes to be sent as a packet of
/// their own after every full one.
#[test]
fn the_send_buffer_holds_whole_packets() {
    for payload in [1400usize, 9000, 65_487] {
        let mut hs = established_responder(cfg0().base_payload(payload));
        assert_eq!(hs.conn().stats().payload_size, payload);
        let n = hs.write(&vec![5u8; 4 << 20]);
        assert!(n >= 64 * 1024 - payload, "payload {payload}: {n} queued");
        assert_eq!(n % payload, 0, "payload {payload}: {n} queued");
    }
}

/// RFC 6298 (5.7): a handshake that needed a retransmitted SYN gives no RTT
/// sample, and its backoff must not carry into the data phase (found with
/// `utp soak --loss 0.3`: a first data timeout of 8 s, the next ones past
/// the peer's idle timeout); the timeout starts again at 3 s.
#[test]
fn data_after_a_retransmitted_syn_times_out_after_3s_not_the_syns_backoff() {
    let (mut ep, t0) = endpoint(cfg0(), 1);
    let h = ep.connect(t0, peer()).unwrap();
    let syn = only(drain(&mut ep, t0));
    let mut hs = Harness {
        ep,
        h,
        t0,
        now: t0,
        to_us: syn.h.conn_id,
        to_peer: syn.h.conn_id.wrapping_add(1),
        first_seq: syn.h.seq_nr.wrapping_add(1),
        peer_first: 30_000,
        peer_ts: 5_000_000,
    };
    // Two SYNs lost: resent after 1 s and 2 s more.
    for _ in 0..2 {
        let again = only(hs.fire());
        assert_eq!(again.h.ty, PacketType::Syn);
    }
    assert_eq!(hs.now - t0, secs(3));
    hs.advance(ms(10));
    let synack = hdr(PacketType::State, syn.h.conn_id, 30_000, syn.h.seq_nr);
    hs.feed_full(synack, &[], &[]);
    assert_eq!(hs.conn().state(), State::Connected);
    hs.write(b"request");
    let sent_at = hs.now;
    assert_eq!(only(hs.out()).h.ty, PacketType::Data);
    // No ack: the data is resent 3 s later (with the SYN's backoff, 4 s).
    loop {
        let out = hs.fire();
        if out.iter().any(|o| o.h.ty == PacketType::Data) {
            break;
        }
        assert!(hs.now - sent_at < secs(10), "never resent");
    }
    assert_eq!(hs.now - sent_at, secs(3));
    assert_eq!(hs.conn().stats().timeouts, 1);
}
