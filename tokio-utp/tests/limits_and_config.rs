//! Rate limits, per-connection configuration and DSCP marking through the
//! tokio API, on
//! loopback. Limits only make things slower, so the assertions are lower
//! bounds on durations (a loaded machine can't make them fail); the limits'
//! accuracy is measured in virtual time in utp-proto/tests/rate_limits.rs.

use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::timeout;
use tokio_utp::{Config, UtpListener, UtpSocket};

const SIZE: usize = 2_000_000;
const LIMIT: u64 = 1_000_000;

/// Accepts one connection and reads it to its end.
fn receive_one(listener: UtpListener) -> tokio::task::JoinHandle<Vec<u8>> {
    tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.unwrap();
        let mut got = Vec::new();
        s.read_to_end(&mut got).await.unwrap();
        got
    })
}

/// Sends SIZE bytes from a client socket to a listener; `setup` may limit
/// either side. Returns the receiving duration and the bytes received.
async fn transfer(
    limit_socket_upload: bool,
    limit_stream_download: bool,
    client_cfg: Option<Config>,
) -> (Duration, usize, tokio_utp::ConnectionStats) {
    let listener = UtpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.unwrap();
        if limit_stream_download {
            s.set_download_limit(Some(LIMIT));
        }
        let start = Instant::now();
        let mut got = Vec::new();
        s.read_to_end(&mut got).await.unwrap();
        (start.elapsed(), got.len())
    });
    let sock = UtpSocket::bind("127.0.0.1:0").await.unwrap();
    if limit_socket_upload {
        sock.set_upload_limit(Some(LIMIT));
        assert_eq!(sock.rate_limits(), (Some(LIMIT), None));
    }
    let mut c = match client_cfg {
        Some(cfg) => sock.connect_with_config(addr, cfg).await.unwrap(),
        None => sock.connect(addr).await.unwrap(),
    };
    c.write_all(&vec![0x5a; SIZE]).await.unwrap();
    c.shutdown().await.unwrap();
    let (took, n) = timeout(Duration::from_secs(60), server)
        .await
        .unwrap()
        .unwrap();
    (took, n, c.stats())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn socket_upload_limit_paces_the_sender() {
    let (took, n, stats) = transfer(true, false, None).await;
    assert_eq!(n, SIZE);
    println!("2 MB at a 1 MB/s upload limit took {took:?}");
    // 2 MB at 1 MB/s, less the 50 ms bucket: at least 1.9 s.
    assert!(took >= Duration::from_millis(1900), "{took:?}");
    assert_eq!(stats.timeouts, 0, "{stats:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_download_limit_meters_reads() {
    let (took, n, stats) = transfer(false, true, None).await;
    assert_eq!(n, SIZE);
    println!("2 MB at a 1 MB/s download limit took {took:?}");
    assert!(took >= Duration::from_millis(1900), "{took:?}");
    assert_eq!(
        stats.timeouts, 0,
        "a metered reader is flow control: {stats:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_connection_config_overrides_the_socket() {
    let cfg = Config::default().max_payload(500);
    let (_, n, stats) = transfer(false, false, Some(cfg)).await;
    assert_eq!(n, SIZE);
    assert_eq!(stats.payload_size, 500);
    assert!(stats.max_payload_sent <= 500, "{stats:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn traffic_class_marks_ipv4_and_ipv6_sockets() {
    for bind in ["127.0.0.1:0", "[::1]:0"] {
        let sock = UtpSocket::bind(bind).await.unwrap();
        assert_eq!(
            sock.traffic_class().unwrap(),
            0,
            "{bind}: unmarked by default"
        );
        sock.set_traffic_class(UtpSocket::DSCP_LE).unwrap();
        assert_eq!(sock.traffic_class().unwrap(), 0x04, "{bind}");
        sock.set_traffic_class(UtpSocket::DSCP_CS1).unwrap();
        assert_eq!(sock.traffic_class().unwrap(), 0x20, "{bind}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn marked_socket_still_transfers() {
    // The marking must not disturb the batched send path.
    let listener = UtpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = receive_one(listener);
    let sock = UtpSocket::bind("127.0.0.1:0").await.unwrap();
    sock.set_traffic_class(UtpSocket::DSCP_CS1).unwrap();
    let mut c = sock.connect(addr).await.unwrap();
    c.write_all(&[7u8; 300_000]).await.unwrap();
    c.close().await.unwrap();
    let got = timeout(Duration::from_secs(30), server)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(got, vec![7u8; 300_000]);
}

/// A burst of connects completes its handshakes (the SYN-ACK goes out at
/// once) before the accepting task takes them: the default backlog holds
/// such a burst instead of dropping SYNs, which cost a second each (the
/// initiator's retransmission). With the old default of 128, a burst of 64
/// parallel connects in `utp-bench` lost 50-190 SYNs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_connects_waits_in_the_default_backlog() {
    let listener = UtpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let client = UtpSocket::bind("127.0.0.1:0").await.unwrap();
    let n = 500;
    let connects: Vec<_> = (0..n)
        .map(|_| {
            let c = client.clone();
            tokio::spawn(async move { timeout(Duration::from_secs(20), c.connect(addr)).await })
        })
        .collect();
    let mut streams = Vec::new();
    for c in connects {
        streams.push(c.await.unwrap().expect("connect").expect("connected"));
    }
    // Only now does the application accept.
    for _ in 0..n {
        let (_s, _) = timeout(Duration::from_secs(5), listener.accept())
            .await
            .expect("accepted")
            .unwrap();
    }
    let st = listener.socket().stats();
    assert_eq!(st.syn_backlog_full, 0, "{st:?}");
    assert_eq!(st.connections_accepted, n as u64);
}

/// A connection waiting to be accepted takes only the backlog's buffer
/// (`Config::backlog_recv_buffer`, 64 KiB) of what its peer sends; once
/// accepted, the peer learns of the whole buffer (at the accept, and at
/// the first read) and the rest follows at once, not after a persist
/// timer's probe.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_sent_before_the_accept_waits_for_it_then_flows() {
    let listener = UtpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let client = UtpSocket::bind("127.0.0.1:0").await.unwrap();
    let c = client.connect(addr).await.unwrap();
    // The read half stays here to tell what the writer sent so far.
    let (sender, mut c) = c.into_split();
    let data: Vec<u8> = (0..1_000_000u32).map(|i| (i % 251) as u8).collect();
    let sent = data.clone();
    let writer = tokio::spawn(async move {
        c.write_all(&sent).await.unwrap();
        c.shutdown().await.unwrap();
    });
    // The peer sends what the backlog's window lets it, then waits.
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Counted at the sender before the accept: the accept opens the window
    // and the rest may arrive before the accepted stream's stats are read.
    let waiting = sender.stats().bytes_sent;
    assert!(waiting <= 70_000, "{waiting} bytes sent before the accept");
    let (mut s, _) = listener.accept().await.unwrap();
    let t = std::time::Instant::now();
    let mut got = Vec::new();
    timeout(Duration::from_secs(10), s.read_to_end(&mut got))
        .await
        .expect("the rest arrives")
        .unwrap();
    assert_eq!(got, data);
    assert!(
        t.elapsed() < Duration::from_millis(500),
        "{:?} for the rest after the accept",
        t.elapsed()
    );
    writer.await.unwrap();
    drop(sender);
}

/// Settings at the edge of their range still move data: no room for
/// packets out of order (in-order packets were refused too), a backlog of
/// 0 (every SYN was dropped), and an RTO cap of 0 (below the floor: every
/// timer was due at once and connections gave up).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edge_settings_still_move_data() {
    let cases = [
        (
            "max_reorder_packets 0",
            Config::default().max_reorder_packets(0),
        ),
        ("accept_backlog 0", Config::default().accept_backlog(0)),
        ("max_rto 0", Config::default().max_rto(Duration::ZERO)),
    ];
    for (name, cfg) in cases {
        let listener = UtpListener::bind_with_config("127.0.0.1:0", cfg.clone())
            .await
            .unwrap();
        let addr = listener.local_addr().unwrap();
        let server = receive_one(listener);
        let sock = UtpSocket::bind_with_config("127.0.0.1:0", cfg)
            .await
            .unwrap();
        let data: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        let sent = data.clone();
        let client = async move {
            let mut c = sock.connect(addr).await?;
            c.write_all(&sent).await?;
            c.shutdown().await
        };
        let done = timeout(Duration::from_secs(20), async {
            client.await.unwrap();
            server.await.unwrap()
        })
        .await;
        assert!(done.expect(name) == data, "{name}: the data arrives whole");
    }
}

/// A peer no uTP connection can have is refused at once, from a shared
/// socket and from `UtpStream::connect`: port 0 (the OS drops datagrams
/// to it) and the broadcast address (the OS refuses to send there without
/// `SO_BROADCAST`). Both waited out the whole connect timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connects_to_port_zero_or_broadcast_fail_at_once() {
    let sock = UtpSocket::bind("127.0.0.1:0").await.unwrap();
    for target in ["127.0.0.1:0", "255.255.255.255:6881"] {
        let t = Instant::now();
        let e = sock.connect(target).await.map(|_| ()).unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::InvalidInput, "{target}: {e}");
        let e = tokio_utp::UtpStream::connect(target)
            .await
            .map(|_| ())
            .unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::InvalidInput, "{target}: {e}");
        assert!(t.elapsed() < Duration::from_secs(5), "{target}: at once");
    }
}

/// A SYN the OS will not send fails the connect at once, as TCP's connect
/// does, instead of being resent into the same error until the connect
/// timeout: here to an IPv4 peer from a socket bound to IPv6's loopback
/// address, which the OS refuses ("network unreachable"; nothing is
/// sent). Skipped where the host has no IPv6.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connect_the_os_cannot_send_fails_at_once() {
    let Ok(sock) = UtpSocket::bind("[::1]:0").await else {
        return;
    };
    let t = Instant::now();
    let e = sock.connect("127.0.0.1:9").await.map(|_| ()).unwrap_err();
    assert_eq!(e.kind(), std::io::ErrorKind::HostUnreachable, "{e}");
    assert!(t.elapsed() < Duration::from_secs(5), "at once");
    assert_eq!(sock.stats().connections_unreachable, 1);
}
