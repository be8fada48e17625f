//! One UDP port for uTP and the application's own datagrams (DHT, trackers).

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UdpSocket;
use tokio::time::timeout;
use tokio_utp::{Config, UtpSocket};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_utp_datagrams_reach_the_application_and_utp_keeps_working() {
    let std_sock = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let sock = UtpSocket::from_std(std_sock, Config::default()).unwrap();
    let addr = sock.local_addr().unwrap();
    let listener = sock.listen().unwrap();

    // A DHT node somewhere pings us; version nibble 4 ('d'), not uTP.
    let dht = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let ping = b"d1:ad2:id20:abcdefghij0123456789e1:q4:ping1:t2:aa1:y1:qe";
    // Ask first: datagrams are kept from the first request on.
    let recv = {
        let sock = sock.clone();
        tokio::spawn(async move {
            let mut buf = [0u8; 1500];
            let (n, from) = sock.recv_other(&mut buf).await.unwrap();
            (buf[..n].to_vec(), from)
        })
    };
    tokio::time::sleep(Duration::from_millis(50)).await;
    dht.send_to(ping, addr).await.unwrap();
    let (got, from) = timeout(Duration::from_secs(5), recv)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(got, ping);
    assert_eq!(from, dht.local_addr().unwrap());

    // The answer leaves from the same port.
    sock.send_to(b"d1:rd2:id20:mnopqrstuvwxyz123456e1:t2:aa1:y1:re", from)
        .await
        .unwrap();
    let mut buf = [0u8; 1500];
    let (n, src) = timeout(Duration::from_secs(5), dht.recv_from(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(src, addr);
    assert!(buf[..n].starts_with(b"d1:rd2:id"));

    // uTP on the same port still works, and a truncated uTP-looking datagram
    // (version 1, too short) goes to the application too, not into a crash.
    dht.send_to(&[0x41, 0, 1, 2], addr).await.unwrap();
    let mut small = [0u8; 16];
    let (n, _) = timeout(Duration::from_secs(5), sock.recv_other(&mut small))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&small[..n], &[0x41, 0, 1, 2]);

    let server = tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.unwrap();
        let mut v = Vec::new();
        s.read_to_end(&mut v).await.unwrap();
        v
    });
    let client = UtpSocket::bind("127.0.0.1:0").await.unwrap();
    let mut c = client.connect(addr).await.unwrap();
    c.write_all(b"uTP alongside DHT").await.unwrap();
    c.close().await.unwrap();
    assert_eq!(
        timeout(Duration::from_secs(10), server)
            .await
            .unwrap()
            .unwrap(),
        b"uTP alongside DHT"
    );
    assert_eq!(sock.other_dropped(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_utp_datagrams_nobody_asked_for_are_dropped_and_counted() {
    let sock = UtpSocket::bind("127.0.0.1:0").await.unwrap();
    let addr = sock.local_addr().unwrap();
    let other = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    for _ in 0..3 {
        other.send_to(b"d1:q4:pinge", addr).await.unwrap();
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while sock.other_dropped() < 3 {
        assert!(tokio::time::Instant::now() < deadline, "not counted");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(sock.stats().invalid_datagrams, 3);
}

/// Several tasks waiting at once on one socket, as tokio's own sockets
/// allow (`accept` and `recv_other` take `&self`): each is woken for what
/// comes. With one waker slot the last task to wait took every wakeup and
/// the others waited forever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn several_tasks_can_wait_to_accept_and_to_receive_at_once() {
    let sock = UtpSocket::bind("127.0.0.1:0").await.unwrap();
    let addr = sock.local_addr().unwrap();
    let listener = std::sync::Arc::new(sock.listen().unwrap());
    let acceptors: Vec<_> = (0..3)
        .map(|_| {
            let listener = listener.clone();
            tokio::spawn(async move { listener.accept().await.map(|(s, _)| s) })
        })
        .collect();
    let receivers: Vec<_> = (0..3)
        .map(|_| {
            let sock = sock.clone();
            tokio::spawn(async move {
                let mut buf = [0u8; 64];
                let (n, _) = sock.recv_other(&mut buf).await.unwrap();
                buf[..n].to_vec()
            })
        })
        .collect();
    // All of them are waiting before anything arrives.
    tokio::time::sleep(Duration::from_millis(100)).await;

    let client = UtpSocket::bind("127.0.0.1:0").await.unwrap();
    let mut streams = Vec::new();
    for _ in 0..3 {
        streams.push(client.connect(addr).await.unwrap());
    }
    for a in acceptors {
        let accepted = timeout(Duration::from_secs(5), a).await;
        accepted
            .expect("every waiting task accepts")
            .unwrap()
            .unwrap();
    }

    let dht = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    for i in 0..3u8 {
        // Version nibble 4 ('d'): not uTP.
        dht.send_to(&[b'd', b'0' + i], addr).await.unwrap();
    }
    let mut got = Vec::new();
    for r in receivers {
        let received = timeout(Duration::from_secs(5), r).await;
        got.push(received.expect("every waiting task receives").unwrap());
    }
    got.sort();
    assert_eq!(got, [b"d0".to_vec(), b"d1".to_vec(), b"d2".to_vec()]);
}
