//! Every reason a packet is ignored has its own counter, visible per
//! connection (`ConnectionStats::drops`) and summed per endpoint
//! (`EndpointStats::connection_drops`, plus the endpoint's own reasons).

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{close_from, datagram, drain, hdr, peer, sack_of};
use utp_proto::packet::PacketType;
use utp_proto::{Config, ConnHandle, DropStats, Endpoint, State};

const PEER_ID: u16 = 100;
const PEER_ISN: u16 = 500;

/// A listening endpoint that accepted a SYN from [`peer`]: the handle and
/// our first sequence number (the SYN-ACK's).
struct Resp {
    ep: Endpoint,
    h: ConnHandle,
    now: Instant,
    y: u16,
}

impl Resp {
    fn new(cfg: Config) -> Self {
        let now = Instant::now();
        let mut ep = Endpoint::with_seed(Arc::new(cfg), now, 7);
        ep.set_listening(true);
        let syn = hdr(PacketType::Syn, PEER_ID, PEER_ISN, 0);
        ep.handle_datagram(now, peer(), &datagram(&syn, &[], &[]))
            .unwrap();
        let h = ep.accept().expect("accepted");
        let out = drain(&mut ep, now);
        assert_eq!(out.len(), 1);
        let y = out[0].h.seq_nr;
        let mut r = Resp { ep, h, now, y };
        // The peer acks the SYN-ACK, so our data is not held for it.
        r.send(PacketType::State, 1, y.wrapping_sub(1), &[], &[]);
        r
    }

    /// A packet from the peer: `k` is the peer's packet index after its SYN.
    fn send(&mut self, ty: PacketType, k: u16, ack_nr: u16, sack: &[u8], payload: &[u8]) {
        self.send_from(peer(), ty, PEER_ISN.wrapping_add(k), ack_nr, sack, payload);
    }

    fn send_from(
        &mut self,
        from: SocketAddr,
        ty: PacketType,
        seq_nr: u16,
        ack_nr: u16,
        sack: &[u8],
        payload: &[u8],
    ) {
        let h = hdr(ty, PEER_ID + 1, seq_nr, ack_nr);
        self.ep
            .handle_datagram(self.now, from, &datagram(&h, sack, payload))
            .unwrap();
        drain(&mut self.ep, self.now);
    }

    /// The peer's ack of everything before our first data packet.
    fn base_ack(&self) -> u16 {
        self.y.wrapping_sub(1)
    }

    fn drops(&self) -> DropStats {
        let d = self.ep.conn(self.h).stats().drops;
        // The endpoint's sum agrees with the only connection's counters.
        assert_eq!(self.ep.stats().connection_drops, d);
        d
    }

    fn read_all(&mut self) -> Vec<u8> {
        let mut v = vec![0u8; 1 << 16];
        let n = self
            .ep
            .with_conn(self.h, self.now, |c| c.read(&mut v))
            .unwrap();
        v.truncate(n);
        v
    }
}

fn only(d: DropStats) -> (u64, DropStats) {
    (d.total(), d)
}

#[test]
fn ack_for_data_never_sent_is_counted_and_ignored() {
    let mut r = Resp::new(Config::default());
    let ack = r.y.wrapping_add(5);
    r.send(PacketType::Data, 1, ack, &[], b"forged");
    let (total, d) = only(r.drops());
    assert_eq!(d.ack_beyond_sent, 1);
    assert_eq!(total, 1);
    // Ignored entirely: the payload was not delivered.
    assert!(r.read_all().is_empty());
}

#[test]
fn sack_bits_beyond_what_was_sent_are_counted_and_ignored() {
    let mut r = Resp::new(Config::default());
    r.ep.with_conn(r.h, r.now, |c| c.write(&[1; 100])).unwrap();
    let out = drain(&mut r.ep, r.now);
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].h.seq_nr, r.y);
    // Bit for y + 1: never sent.
    let sack = sack_of(r.base_ack(), &[r.y.wrapping_add(1)]);
    r.send(PacketType::State, 0, r.base_ack(), &sack, &[]);
    let (total, d) = only(r.drops());
    assert_eq!(d.sack_beyond_sent, 1);
    assert_eq!(total, 1);
    // The packet was not considered delivered.
    assert_eq!(r.ep.conn(r.h).stats().bytes_unacked, 100);
}

#[test]
fn data_far_ahead_of_the_window_is_counted_and_dropped() {
    let cfg = Config::default().max_reorder_packets(64);
    let mut r = Resp::new(cfg);
    r.send(PacketType::Data, 1 + 64, r.base_ack(), &[], b"far");
    r.send(PacketType::Data, 1 + 63, r.base_ack(), &[], b"near");
    let (total, d) = only(r.drops());
    assert_eq!(d.seq_out_of_window, 1);
    assert_eq!(total, 1);
    let st = r.ep.conn(r.h).stats();
    assert_eq!(st.dropped_out_of_window, 1);
}

#[test]
fn data_far_behind_the_window_is_counted_not_taken_for_a_duplicate() {
    let cfg = Config::default().max_reorder_packets(64);
    let mut r = Resp::new(cfg);
    r.send(PacketType::Data, 1, r.base_ack(), &[], b"a");
    r.send(PacketType::Data, 1, r.base_ack(), &[], b"a");
    r.send(
        PacketType::Data,
        1u16.wrapping_sub(64),
        r.base_ack(),
        &[],
        b"old",
    );
    let (total, d) = only(r.drops());
    assert_eq!(d.seq_out_of_window, 1);
    assert_eq!(total, 1);
    assert_eq!(r.ep.conn(r.h).stats().duplicates_received, 1);
    assert_eq!(r.read_all(), b"a");
}

#[test]
fn data_that_does_not_fit_the_receive_buffer_is_counted() {
    let mut r = Resp::new(Config::default().recv_buffer(1000));
    r.send(PacketType::Data, 2, r.base_ack(), &[], &[2; 800]);
    r.send(PacketType::Data, 3, r.base_ack(), &[], &[3; 800]);
    let (total, d) = only(r.drops());
    assert_eq!(d.recv_buffer_full, 1);
    assert_eq!(total, 1);
}

#[test]
fn data_past_the_fin_and_contradicting_fins_are_counted() {
    let mut r = Resp::new(Config::default());
    r.send(PacketType::Data, 1, r.base_ack(), &[], b"x");
    r.send(PacketType::Fin, 2, r.base_ack(), &[], &[]);
    r.send(PacketType::Data, 3, r.base_ack(), &[], b"after");
    r.send(PacketType::Fin, 5, r.base_ack(), &[], &[]);
    r.send(PacketType::Fin, 1, r.base_ack(), &[], &[]);
    // The same FIN again is a duplicate, not a contradiction.
    r.send(PacketType::Fin, 2, r.base_ack(), &[], &[]);
    let (total, d) = only(r.drops());
    assert_eq!(d.data_past_fin, 1);
    assert_eq!(d.fin_mismatch, 2);
    assert_eq!(total, 3);
    assert_eq!(r.read_all(), b"x");
    assert!(r.ep.conn(r.h).is_eof());
}

#[test]
fn a_syn_that_is_not_the_peers_syn_is_counted() {
    let mut r = Resp::new(Config::default());
    // Same connection id, another ISN: not a retransmission.
    let syn = hdr(PacketType::Syn, PEER_ID, PEER_ISN + 7, 0);
    r.ep.handle_datagram(r.now, peer(), &datagram(&syn, &[], &[]))
        .unwrap();
    let out = drain(&mut r.ep, r.now);
    assert!(out.is_empty(), "no SYN-ACK for a different SYN: {out:?}");
    // The real retransmission is answered and not counted.
    let syn = hdr(PacketType::Syn, PEER_ID, PEER_ISN, 0);
    r.ep.handle_datagram(r.now, peer(), &datagram(&syn, &[], &[]))
        .unwrap();
    assert_eq!(drain(&mut r.ep, r.now).len(), 1);
    let (total, d) = only(r.drops());
    assert_eq!(d.unexpected_syn, 1);
    assert_eq!(total, 1);
}

#[test]
fn packets_after_a_reset_are_counted() {
    let mut r = Resp::new(Config::default());
    r.send(PacketType::Reset, 1, r.base_ack(), &[], &[]);
    assert!(r.ep.conn(r.h).error().is_some());
    r.send(PacketType::Data, 1, r.base_ack(), &[], b"late");
    let (total, d) = only(r.drops());
    assert_eq!(d.after_close, 1);
    assert_eq!(total, 1);
}

#[test]
fn packets_before_the_synack_that_cannot_be_kept_are_counted() {
    let now = Instant::now();
    let mut ep = Endpoint::with_seed(Arc::new(Config::default()), now, 9);
    let h = ep.connect(now, peer()).unwrap();
    let syn = drain(&mut ep, now).pop().unwrap();
    let id = syn.h.conn_id;
    // A STATE that doesn't ack our SYN.
    let bad = hdr(PacketType::State, id, 900, syn.h.seq_nr.wrapping_add(3));
    ep.handle_datagram(now, peer(), &datagram(&bad, &[], &[]))
        .unwrap();
    assert_eq!(ep.conn(h).state(), State::SynSent);
    let d = ep.conn(h).stats().drops;
    assert_eq!(d.before_handshake, 1);
    assert_eq!(d.total(), 1);
    assert_eq!(ep.stats().connection_drops, d);
}

#[test]
fn a_packet_for_a_connection_from_another_address_is_counted_and_not_delivered() {
    let mut r = Resp::new(Config::default());
    let other: SocketAddr = "10.0.0.99:6882".parse().unwrap();
    r.send_from(
        other,
        PacketType::Data,
        PEER_ISN + 1,
        r.base_ack(),
        &[],
        b"spoof",
    );
    let st = r.ep.stats();
    assert_eq!(st.wrong_source_address, 1);
    assert_eq!(st.unknown_connection, 0);
    assert!(r.read_all().is_empty());
    assert_eq!(
        r.ep.conn(r.h).stats().packets_received,
        2,
        "only the SYN and the ack of the SYN-ACK"
    );
    // A truly unknown id is counted as such.
    let h = hdr(PacketType::Data, 4242, 1, 1);
    r.ep.handle_datagram(r.now, other, &datagram(&h, &[], b"?"))
        .unwrap();
    let st = r.ep.stats();
    assert_eq!((st.wrong_source_address, st.unknown_connection), (1, 1));
}

#[test]
fn malformed_datagrams_are_counted() {
    let mut r = Resp::new(Config::default());
    for d in [&b""[..], &[0x41; 10][..], &[0x01; 20][..]] {
        assert!(r.ep.handle_datagram(r.now, peer(), d).is_err());
    }
    assert_eq!(r.ep.stats().invalid_datagrams, 3);
}

#[test]
fn drop_counters_survive_the_connection() {
    let mut r = Resp::new(Config::default().time_wait(Duration::from_millis(10)));
    r.send(PacketType::State, 0, r.y.wrapping_add(9), &[], &[]);
    r.send(PacketType::Reset, 1, r.base_ack(), &[], &[]);
    r.ep.release(r.h, r.now);
    assert_eq!(r.ep.connection_count(), 0);
    assert_eq!(r.ep.stats().connection_drops.ack_beyond_sent, 1);
}

// ------------------------------------------------------------ half-open bound

fn syn_from(ep: &mut Endpoint, now: Instant, port: u16) {
    let from = SocketAddr::from(([10, 0, 9, 1], port));
    let syn = hdr(PacketType::Syn, port, 1, 0);
    ep.handle_datagram(now, from, &datagram(&syn, &[], &[]))
        .unwrap();
}

#[test]
fn half_open_connections_are_bounded_even_when_the_application_accepts_them() {
    let now = Instant::now();
    let cfg = Config::default().max_half_open(4).accept_backlog(100);
    let mut ep = Endpoint::with_seed(Arc::new(cfg), now, 11);
    ep.set_listening(true);
    let mut accepted = Vec::new();
    for port in 1..=10 {
        syn_from(&mut ep, now, port);
        accepted.extend(ep.accept());
    }
    // Four SYN-ACKs with state, six with a SYN cookie and none.
    let synacks = drain(&mut ep, now);
    assert_eq!(synacks.len(), 10);
    assert_eq!(accepted.len(), 4);
    let st = ep.stats();
    assert_eq!((st.half_open, st.syn_half_open_full), (4, 6));
    assert_eq!(ep.connection_count(), 4);

    // The first initiator speaks: its slot frees and a new SYN gets in.
    let first = accepted[0];
    assert_eq!(ep.conn(first).state(), State::SynRecv);
    let from = ep.peer_addr(first);
    let synack = synacks.iter().find(|o| o.to == from).unwrap();
    let ack = hdr(PacketType::State, 2, 2, synack.h.seq_nr.wrapping_sub(1));
    ep.handle_datagram(now, from, &datagram(&ack, &[], &[]))
        .unwrap();
    assert_eq!(ep.conn(first).state(), State::Connected);
    assert_eq!(ep.stats().half_open, 3);
    syn_from(&mut ep, now, 11);
    assert!(ep.accept().is_some());
    assert_eq!(ep.stats().half_open, 4);

    // Silent initiators time out and free their slots.
    let later = now + Config::default().connect_timeout + Duration::from_millis(1);
    ep.handle_timeout(later);
    assert_eq!(ep.stats().half_open, 0);
    syn_from(&mut ep, later, 12);
    assert_eq!(ep.stats().half_open, 1);
}

/// Accepts everything waiting; the connection from `from`, if among it.
fn accept_from(ep: &mut Endpoint, from: SocketAddr) -> Option<ConnHandle> {
    let accepted: Vec<ConnHandle> = std::iter::from_fn(|| ep.accept()).collect();
    accepted.into_iter().find(|&h| ep.peer_addr(h) == from)
}

/// A SYN flood from forged addresses fills the half-open limit, and a real
/// initiator still gets in: its SYN is answered with a SYN cookie and no
/// state, and its first packet after that makes the connection. Packets
/// that do not return the cookie make nothing.
#[test]
fn beyond_the_half_open_limit_a_syn_cookie_lets_a_real_initiator_in() {
    let now = Instant::now();
    let cfg = Config::default().max_half_open(4).accept_backlog(100);
    let mut ep = Endpoint::with_seed(Arc::new(cfg), now, 13);
    ep.set_listening(true);
    for port in 1..=4 {
        syn_from(&mut ep, now, port);
    }
    drain(&mut ep, now);
    assert_eq!(ep.stats().half_open, 4);

    let from: SocketAddr = "10.0.7.7:7000".parse().unwrap();
    let syn = hdr(PacketType::Syn, 700, 9000, 0);
    ep.handle_datagram(now, from, &datagram(&syn, &[], &[]))
        .unwrap();
    let out = drain(&mut ep, now);
    assert_eq!(out.len(), 1);
    let synack = &out[0];
    assert_eq!(synack.to, from);
    assert_eq!(synack.h.ty, PacketType::State);
    assert_eq!((synack.h.conn_id, synack.h.ack_nr), (700, 9000));
    assert_eq!(ep.connection_count(), 4, "no state kept for it");
    assert_eq!(ep.stats().syn_half_open_full, 1);
    assert_eq!(ep.stats().resets_sent, 0);
    // Its SYN again (the SYN-ACK was lost): the same cookie.
    ep.handle_datagram(now, from, &datagram(&syn, &[], &[]))
        .unwrap();
    assert_eq!(drain(&mut ep, now)[0].h.seq_nr, synack.h.seq_nr);

    // Every stack acks a SYN-ACK with its sequence number less one.
    let cookie = synack.h.seq_nr;
    let first = |seq: u16, ack: u16| hdr(PacketType::Data, 701, seq, ack);
    let other: SocketAddr = "10.0.7.8:7000".parse().unwrap();
    for (what, to, h) in [
        ("another cookie", from, first(9001, cookie)),
        (
            "another address",
            other,
            first(9001, cookie.wrapping_sub(1)),
        ),
        (
            "another sequence number",
            from,
            first(9003, cookie.wrapping_sub(1)),
        ),
        (
            "a SYN's id",
            from,
            hdr(PacketType::Data, 700, 9001, cookie.wrapping_sub(1)),
        ),
    ] {
        ep.handle_datagram(now, to, &datagram(&h, &[], b"x"))
            .unwrap();
        assert_eq!(ep.connection_count(), 4, "{what}");
    }
    assert_eq!(ep.stats().syn_cookies_accepted, 0);

    let t1 = now + Duration::from_millis(30);
    let data = datagram(&first(9001, cookie.wrapping_sub(1)), &[], b"hello");
    ep.handle_datagram(t1, from, &data).unwrap();
    assert_eq!(ep.stats().syn_cookies_accepted, 1);
    let h = accept_from(&mut ep, from).expect("the connection, made from the cookie");
    assert_eq!(ep.conn(h).state(), State::Connected);
    assert_eq!(ep.stats().half_open, 4, "it is not half-open");
    let mut buf = [0u8; 16];
    let n = ep.with_conn(h, t1, |c| c.read(&mut buf)).unwrap();
    assert_eq!(&buf[..n], b"hello");
    ep.with_conn(h, t1, |c| c.write(b"world")).unwrap();
    let reply = drain(&mut ep, t1);
    let d = reply
        .iter()
        .find(|o| o.h.ty == PacketType::Data)
        .expect("our data");
    // Our stream starts at the cookie, as the SYN-ACK said.
    assert_eq!((d.h.conn_id, d.h.seq_nr, d.h.ack_nr), (700, cookie, 9001));
    assert_eq!(d.payload, b"world");
    // The first packet again (a retransmission) makes nothing new.
    ep.handle_datagram(t1, from, &data).unwrap();
    assert_eq!(ep.stats().syn_cookies_accepted, 1);

    // Cookies are good for a minute or two, no longer.
    let late: SocketAddr = "10.0.7.9:7000".parse().unwrap();
    ep.handle_datagram(t1, late, &datagram(&syn, &[], &[]))
        .unwrap();
    let cookie = drain(&mut ep, t1)[0].h.seq_nr;
    let t2 = t1 + Duration::from_secs(200);
    ep.handle_datagram(
        t2,
        late,
        &datagram(&first(9001, cookie.wrapping_sub(1)), &[], b"x"),
    )
    .unwrap();
    assert_eq!(ep.stats().syn_cookies_accepted, 1);
}

/// An initiator that connects and closes without sending anything: its
/// FIN returns the cookie, so the connection is made, already at EOF.
#[test]
fn a_fin_returning_a_syn_cookie_makes_a_connection_at_eof() {
    let now = Instant::now();
    let cfg = Config::default().max_half_open(1);
    let mut ep = Endpoint::with_seed(Arc::new(cfg), now, 14);
    ep.set_listening(true);
    syn_from(&mut ep, now, 1);
    let from: SocketAddr = "10.0.7.7:7000".parse().unwrap();
    let syn = hdr(PacketType::Syn, 300, 40, 0);
    ep.handle_datagram(now, from, &datagram(&syn, &[], &[]))
        .unwrap();
    let cookie = drain(&mut ep, now)
        .into_iter()
        .find(|o| o.to == from)
        .expect("a cookie SYN-ACK")
        .h
        .seq_nr;
    let fin = hdr(PacketType::Fin, 301, 41, cookie.wrapping_sub(1));
    ep.handle_datagram(now, from, &datagram(&fin, &[], &[]))
        .unwrap();
    let h = accept_from(&mut ep, from).expect("made from the FIN");
    assert!(ep.conn(h).is_eof());
    let acks = drain(&mut ep, now);
    assert!(
        acks.iter().any(|o| o.to == from && o.h.ack_nr == 41),
        "its FIN acked: {acks:?}"
    );
}

#[test]
fn dead_half_open_connections_do_not_keep_the_backlog_full() {
    let now = Instant::now();
    let cfg = Config::default().accept_backlog(2);
    let mut ep = Endpoint::with_seed(Arc::new(cfg), now, 12);
    ep.set_listening(true);
    syn_from(&mut ep, now, 1);
    syn_from(&mut ep, now, 2);
    syn_from(&mut ep, now, 3);
    assert_eq!(ep.stats().syn_backlog_full, 1);
    // Nobody accepts; the flooders never speak again.
    let later = now + Config::default().connect_timeout + Duration::from_millis(1);
    ep.handle_timeout(later);
    syn_from(&mut ep, later, 4);
    assert_eq!(ep.stats().syn_backlog_full, 1, "the dead ones made room");
    assert_eq!(ep.connection_count(), 1);
    let h = ep.accept().expect("the live one");
    assert_eq!(ep.peer_addr(h).port(), 4);
    assert!(ep.accept().is_none());
}

// ------------------------------------------------------------ close and RESET

/// The peer's FIN arrived and all our data was acked; only the ack of our
/// FIN is missing when the peer (whose hold on the connection ended) answers
/// our resent FIN with a RESET: nothing was lost, so the close completes
/// instead of failing with "reset" (found by `utp soak`).
#[test]
fn reset_when_only_our_fin_is_unacked_completes_the_close() {
    let mut r = Resp::new(Config::default());
    r.ep.with_conn(r.h, r.now, |c| c.write(b"reply")).unwrap();
    let out = drain(&mut r.ep, r.now);
    assert_eq!(out.len(), 1);
    // The peer acks our data and sends its FIN.
    r.send(PacketType::Fin, 1, r.y, &[], &[]);
    assert!(r.ep.conn(r.h).is_eof());
    r.ep.with_conn(r.h, r.now, |c| c.close());
    let fin = drain(&mut r.ep, r.now);
    assert!(fin.iter().any(|o| o.h.ty == PacketType::Fin));
    // Our FIN's ack is lost; the peer forgot us and resets.
    r.send(PacketType::Reset, 2, r.y, &[], &[]);
    let c = r.ep.conn(r.h);
    assert_eq!(c.error(), None);
    assert!(c.is_fin_acked());
    assert!(c.stats().fin_unacknowledged);
    r.ep.release(r.h, r.now);
}

/// With data of ours still unacknowledged, a RESET is a reset.
#[test]
fn reset_with_data_unacked_fails_the_connection() {
    let mut r = Resp::new(Config::default());
    r.ep.with_conn(r.h, r.now, |c| c.write(b"reply")).unwrap();
    drain(&mut r.ep, r.now);
    r.send(PacketType::Fin, 1, r.base_ack(), &[], &[]);
    r.ep.with_conn(r.h, r.now, |c| c.close());
    drain(&mut r.ep, r.now);
    r.send(PacketType::Reset, 2, r.base_ack(), &[], &[]);
    assert_eq!(
        r.ep.conn(r.h).error(),
        Some(utp_proto::ConnectionError::Reset)
    );
}

/// Out-of-order data is bounded per socket, not only per connection: a
/// peer with many connections that never fills their gaps holds at most
/// `reorder_memory` in all. In-order data still gets in, and filling a gap
/// frees what it held.
#[test]
fn out_of_order_data_is_bounded_across_all_connections_of_a_socket() {
    let now = Instant::now();
    let cfg = Config::default().reorder_memory(40_000);
    let mut ep = Endpoint::with_seed(Arc::new(cfg), now, 15);
    ep.set_listening(true);
    let piece = vec![7u8; 10_000];
    // Eight connections from one peer, each sent two packets past a gap.
    let mut conns = Vec::new();
    for i in 0..8u16 {
        let from: SocketAddr = format!("10.0.8.1:{}", 9000 + i).parse().unwrap();
        let syn = hdr(PacketType::Syn, 100 + 2 * i, 1000, 0);
        ep.handle_datagram(now, from, &datagram(&syn, &[], &[]))
            .unwrap();
        let y = drain(&mut ep, now).pop().expect("SYN-ACK").h.seq_nr;
        let ack = y.wrapping_sub(1);
        for seq in [1003u16, 1004] {
            let h = hdr(PacketType::Data, 101 + 2 * i, seq, ack);
            ep.handle_datagram(now, from, &datagram(&h, &[], &piece))
                .unwrap();
        }
        conns.push((from, 101 + 2 * i, ack));
    }
    let dropped = ep.stats().connection_drops.reorder_memory_full;
    // 40,000 bytes hold four 10,000-byte pieces; the other twelve wait.
    assert_eq!(dropped, 12, "{:?}", ep.stats().connection_drops);
    let hs: Vec<ConnHandle> = std::iter::from_fn(|| ep.accept()).collect();
    assert_eq!(hs.len(), 8);

    // In-order data is never refused for it: the last connection's next
    // packet goes straight to its reader.
    let (from, id, ack) = conns[7];
    let h = hdr(PacketType::Data, id, 1001, ack);
    ep.handle_datagram(now, from, &datagram(&h, &[], &piece))
        .unwrap();
    assert_eq!(ep.conn(hs[7]).readable_bytes(), 10_000);
    assert_eq!(ep.stats().connection_drops.reorder_memory_full, 12);

    // The first connection fills its gap: its held data becomes readable
    // and the room it held goes to the others.
    let (from, id, ack) = conns[0];
    for seq in [1001u16, 1002] {
        let h = hdr(PacketType::Data, id, seq, ack);
        ep.handle_datagram(now, from, &datagram(&h, &[], &piece))
            .unwrap();
    }
    assert_eq!(ep.conn(hs[0]).readable_bytes(), 40_000);
    let (from, id, ack) = conns[6];
    for seq in [1003u16, 1004] {
        let h = hdr(PacketType::Data, id, seq, ack);
        ep.handle_datagram(now, from, &datagram(&h, &[], &piece))
            .unwrap();
    }
    assert_eq!(
        ep.stats().connection_drops.reorder_memory_full,
        12,
        "room freed for the retransmissions"
    );
}

// ------------------------------------------------------------ TIME_WAIT bound

#[test]
fn time_wait_is_bounded_and_the_oldest_ends_first() {
    let now = Instant::now();
    let cfg = Config::default().max_time_wait(3);
    let mut ep = Endpoint::with_seed(Arc::new(cfg), now, 5);
    ep.set_listening(true);
    // One the application still holds: not a record, never ended early.
    let (held, _) = close_from(&mut ep, now, 1, false);
    let handles: Vec<_> = (1..=5)
        .map(|p| (p * 10, close_from(&mut ep, now, p * 10, true)))
        .collect();
    // The released ones are compact records now.
    assert!(handles.iter().all(|&(_, (h, _))| ep.get(h).is_none()));
    assert_eq!(ep.stats().time_wait, 3, "two ended early");
    assert_eq!(ep.conn(held).state(), State::TimeWait);
    assert_eq!(ep.connection_count(), 4);
    assert_eq!(ep.stats().time_wait_ended_early, 2);
    // A re-sent FIN: the newest is answered as before, the oldest is for
    // no connection any more.
    for (i, answer) in [(4, PacketType::State), (0, PacketType::Reset)] {
        let (port, (_, ack)) = handles[i];
        let from = SocketAddr::from(([10, 0, 7, 1], port));
        let fin = hdr(PacketType::Fin, port + 1, 2, ack);
        ep.handle_datagram(now, from, &datagram(&fin, &[], &[]))
            .unwrap();
        let out = drain(&mut ep, now);
        assert!(
            !out.is_empty() && out.iter().all(|o| o.h.ty == answer),
            "{port}: {out:?}"
        );
    }
    // A RESET does not end a record early (RFC 1337), on either of its
    // ids; it is counted as a packet after the close, not as one for no
    // connection, and gets no answer.
    let (port, (_, ack)) = handles[4];
    let from = SocketAddr::from(([10, 0, 7, 1], port));
    let before = ep.stats();
    for id in [port + 1, port] {
        let reset = hdr(PacketType::Reset, id, 2, ack);
        ep.handle_datagram(now, from, &datagram(&reset, &[], &[]))
            .unwrap();
        assert!(drain(&mut ep, now).is_empty());
    }
    let after = ep.stats();
    assert_eq!(after.time_wait, 3);
    assert_eq!(after.unknown_connection, before.unknown_connection);
    assert_eq!(
        after.connection_drops.after_close,
        before.connection_drops.after_close + 2
    );
    let fin = hdr(PacketType::Fin, port + 1, 2, ack);
    ep.handle_datagram(now, from, &datagram(&fin, &[], &[]))
        .unwrap();
    assert!(drain(&mut ep, now)
        .iter()
        .all(|o| o.h.ty == PacketType::State));
    // Ended normally, they leave no bookkeeping behind: the next closes
    // end none early.
    ep.handle_timeout(now + Config::default().time_wait);
    ep.release(held, now + Config::default().time_wait);
    assert_eq!(ep.connection_count(), 0);
    for p in 6..=8 {
        close_from(&mut ep, now + Config::default().time_wait, p * 10, true);
    }
    assert_eq!(ep.connection_count(), 3);
    assert_eq!(ep.stats().time_wait_ended_early, 2);
}
