//! Many connections to one peer share `Config::max_peer_flight`: together
//! they never have more in flight than it (the peer receives them all on one
//! socket, whose buffer is finite), and all of them still finish.

mod common;

use std::time::Duration;

use common::{append_checked, pattern, read_now, LinkParams, SimNet, IP_UDP_OVERHEAD};
use utp_proto::packet::HEADER_LEN;
use utp_proto::{Config, ConnHandle};

const KIB: usize = 1024;

/// How the senders' application writes.
#[derive(Clone, Copy, PartialEq)]
enum Writer {
    /// Tries every step.
    Eager,
    /// Like an async task: after a refused write it waits until the
    /// endpoint reports the connection touched and writable (what wakes a
    /// task in the async layer), so a missed wake stalls it.
    Woken,
}

/// `n` connections from endpoint 0 each send `per_conn` bytes to endpoint 1;
/// returns the most bytes in flight on all of them together at any step.
fn many_to_one(cfg: Config, n: usize, per_conn: usize) -> usize {
    many_to_one_with(cfg, LinkParams::clean(), n, per_conn, Writer::Eager).0
}

/// [`many_to_one`] on `link`, written by `writer`; also returns how long
/// (virtual time) all transfers took.
fn many_to_one_with(
    cfg: Config,
    link: LinkParams,
    n: usize,
    per_conn: usize,
    writer: Writer,
) -> (usize, Duration) {
    run_many_to_one(SimNet::new(cfg, link, 11), n, per_conn, writer)
}

/// [`many_to_one_with`] on a network set up already.
fn run_many_to_one(
    mut net: SimNet,
    n: usize,
    per_conn: usize,
    writer: Writer,
) -> (usize, Duration) {
    let now = net.now;
    let senders: Vec<ConnHandle> = (0..n)
        .map(|_| net.eps[0].connect(now, net.addrs[1]).unwrap())
        .collect();
    let data: Vec<Vec<u8>> = (0..n).map(|i| pattern(per_conn, i as u64)).collect();
    let mut written = vec![0; n];
    let mut closed = vec![false; n];
    let mut blocked = vec![false; n];
    // Accepted connections, matched to their sender by the data (each
    // sender's pattern differs from its first byte on).
    let mut receivers: Vec<(ConnHandle, Vec<u8>, Option<usize>)> = Vec::new();
    let mut buf = vec![0u8; 64 * KIB];
    let mut most_in_flight = 0;
    net.run(Duration::from_secs(120), 5_000_000, |net| {
        let now = net.now;
        while let Some(h) = net.eps[1].accept() {
            receivers.push((h, Vec::new(), None));
        }
        for (h, got, who) in &mut receivers {
            read_now(&mut net.eps[1], *h, now, &mut buf, |d| {
                let i = *who.get_or_insert_with(|| {
                    (0..n)
                        .find(|&i| data[i][got.len()..].starts_with(&d[..d.len().min(16)]))
                        .expect("data of some sender")
                });
                append_checked(got, &data[i], d, 1);
            });
        }
        for h in net.eps[0].drain_touched().collect::<Vec<_>>() {
            if let Some(i) = senders.iter().position(|&s| s == h) {
                blocked[i] &= !net.eps[0].conn(h).is_writable();
            }
        }
        for (i, &h) in senders.iter().enumerate() {
            if written[i] < per_conn {
                if blocked[i] {
                    continue;
                }
                let k = net.eps[0]
                    .with_conn(h, now, |c| c.write(&data[i][written[i]..]))
                    .unwrap();
                written[i] += k;
                blocked[i] = k == 0 && writer == Writer::Woken;
            } else if !closed[i] {
                net.eps[0].with_conn(h, now, |c| c.close());
                closed[i] = true;
            }
        }
        let in_flight: usize = senders
            .iter()
            .map(|&h| net.eps[0].conn(h).stats().bytes_in_flight)
            .sum();
        most_in_flight = most_in_flight.max(in_flight);
        receivers.len() == n && receivers.iter().all(|(_, got, _)| got.len() == per_conn)
    });
    (most_in_flight, net.elapsed())
}

#[test]
fn connections_to_one_peer_share_its_flight_limit_and_all_finish() {
    let limit = 256 * KIB;
    let cfg = || Config::default().max_peer_flight(limit).ack_delay(None);
    let most = many_to_one(cfg(), 16, 512 * KIB);
    assert!(most <= limit, "{most} bytes in flight, limit {limit}");
    assert!(most > limit / 2, "the limit is used ({most} bytes)");
    // Without it the same transfers put far more in flight at once.
    let unlimited = many_to_one(cfg().max_peer_flight(usize::MAX), 16, 512 * KIB);
    assert!(unlimited > 2 * limit, "{unlimited} bytes unlimited");
}

/// To a peer on this host the flight also stays within half the receive
/// buffer the OS granted our socket: the peer's socket is presumably like
/// ours, and nothing spaces the datagrams out on the way. (Under the usual
/// 208 KiB cap a hundred connections filling the default 2 MiB lost one
/// datagram in seven.) What counts is what the datagrams take from the
/// buffer, not their payload: a full 1500-byte datagram takes 2,304 bytes
/// of a Linux receive buffer, a 64 KiB one 1% more than its size. To a peer
/// elsewhere the configured limit alone applies.
#[test]
fn flights_to_a_peer_on_this_host_stay_within_our_socket_buffer() {
    let rcvbuf = 300 * KIB;
    let cfg = Config::default().ack_delay(None);
    let host = |a: &str, b: &str| -> [std::net::SocketAddr; 2] {
        [a.parse().unwrap(), b.parse().unwrap()]
    };
    // (path MTU, payload bytes per buffer byte of a full packet)
    let full_1500 = (1500 - IP_UDP_OVERHEAD - HEADER_LEN) as f64;
    for (mtu, payload_share) in [(Some(1500), full_1500 / 2304.0), (None, 1.0)] {
        for (addrs, same_host) in [
            (host("127.0.0.1:6881", "127.0.0.1:6882"), true),
            (host("[::1]:6881", "[::1]:6882"), true),
            (
                host("[::ffff:127.0.0.1]:6881", "[::ffff:127.0.0.1]:6882"),
                true,
            ),
            (host("10.0.0.1:6881", "10.0.0.2:6882"), false),
        ] {
            let link = LinkParams {
                mtu,
                ..LinkParams::clean()
            };
            let mut net = SimNet::new(cfg.clone(), link, 11);
            net.addrs = addrs;
            net.eps[0].set_socket_receive_buffer(rcvbuf);
            let limit = net.eps[0].flight_limit(addrs[1]);
            let (most, _) = run_many_to_one(net, 32, 256 * KIB, Writer::Woken);
            let case = format!("{addrs:?}, MTU {mtu:?}");
            if same_host {
                assert_eq!(limit, rcvbuf / 2, "{case}");
                let bound = (limit as f64 * payload_share) as usize;
                assert!(most <= bound, "{case}: {most} bytes in flight");
                assert!(most > bound / 2, "{case}: the limit is used ({most} bytes)");
            } else {
                assert_eq!(limit, cfg.max_peer_flight, "{case}");
                assert!(most > 2 * rcvbuf, "{case}: {most} bytes in flight");
            }
        }
    }
}

/// Writers that only try again when woken (as async tasks do) are woken
/// when room for their data comes: they finish about as soon as writers
/// that try at every step. (Without the wake they wait for a timer: four
/// to six times as long.)
#[test]
fn writers_held_back_by_the_limit_are_woken_when_room_comes() {
    // 1500-byte packets, and 64 KiB ones (no MTU on the path) where one
    // packet is a large part of the limit.
    for mtu in [Some(1500), None] {
        for (limit, n) in [(256 * KIB, 16), (64 * KIB, 40), (2048 * KIB, 100)] {
            let cfg = Config::default().max_peer_flight(limit).ack_delay(None);
            let link = LinkParams {
                mtu,
                ..LinkParams::clean()
            };
            let run = |w| many_to_one_with(cfg.clone(), link.clone(), n, 256 * KIB, w);
            let (most, woken) = run(Writer::Woken);
            let (_, eager) = run(Writer::Eager);
            let case = format!("MTU {mtu:?}, limit {limit}, {n} connections");
            assert!(
                most <= limit.max(64 * KIB),
                "{case}: {most} bytes in flight"
            );
            assert!(
                woken <= eager * 3 / 2 + Duration::from_millis(100),
                "{case}: woken writers took {woken:?}, eager ones {eager:?}"
            );
        }
    }
}

#[test]
fn a_limit_below_one_packet_still_lets_data_through() {
    // Nothing in flight always leaves room for one packet.
    let cfg = Config::default().max_peer_flight(100).ack_delay(None);
    let most = many_to_one(cfg, 3, 64 * KIB);
    // One packet at a time: no more than the largest the 1500-byte link
    // carries.
    assert!(most <= 1500 - IP_UDP_OVERHEAD - HEADER_LEN, "{most}");
}

/// Idle connections to the peer take no share: one busy connection among
/// fifty idle ones still queues and sends by its own window (its send
/// buffer is bounded by twice its share of the limit, counted over the
/// connections that are sending).
#[test]
fn idle_connections_to_the_peer_do_not_shrink_a_busy_ones_share() {
    let mut net = SimNet::new(Config::default().ack_delay(None), LinkParams::clean(), 3);
    let now = net.now;
    let conns: Vec<ConnHandle> = (0..50)
        .map(|_| net.eps[0].connect(now, net.addrs[1]).unwrap())
        .collect();
    let data = pattern(4 << 20, 9);
    let (mut written, mut got) = (0, Vec::new());
    let mut accepted = Vec::new();
    let mut buf = vec![0u8; 64 * KIB];
    let mut most_in_flight = 0;
    net.run(Duration::from_secs(60), 5_000_000, |net| {
        let now = net.now;
        while let Some(h) = net.eps[1].accept() {
            accepted.push(h);
        }
        for &h in &accepted {
            read_now(&mut net.eps[1], h, now, &mut buf, |d| {
                append_checked(&mut got, &data, d, 1);
            });
        }
        if written < data.len() {
            written += net.eps[0]
                .with_conn(conns[0], now, |c| c.write(&data[written..]))
                .unwrap();
        }
        let st = net.eps[0].conn(conns[0]).stats();
        most_in_flight = most_in_flight.max(st.bytes_in_flight);
        got.len() == data.len()
    });
    let share = Config::default().max_peer_flight / conns.len();
    assert!(
        most_in_flight > 4 * share,
        "{most_in_flight} bytes in flight at most (a fiftieth share is {share})"
    );
}
