//! uTP over a user transport: the in-memory network, no sockets at all.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::timeout;
use tokio_utp::{Config, MemoryNetwork, Transport, UtpSocket};

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u32).wrapping_mul(2_654_435_761).to_le_bytes()[0] ^ seed)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transfer_both_ways_over_an_in_memory_network() {
    let net = MemoryNetwork::new();
    let a_addr = "10.1.0.1:6881".parse().unwrap();
    let b_addr = "10.1.0.2:6881".parse().unwrap();
    let a = UtpSocket::with_transport(net.bind(a_addr).unwrap(), Config::default()).unwrap();
    let b = UtpSocket::with_transport(net.bind(b_addr).unwrap(), Config::default()).unwrap();
    assert_eq!(a.local_addr().unwrap(), a_addr);
    let listener = b.listen().unwrap();
    let (up, down) = (pattern(4 << 20, 1), pattern(3 << 20, 2));
    let server = {
        let (up, down) = (up.clone(), down.clone());
        tokio::spawn(async move {
            let (s, peer) = listener.accept().await.unwrap();
            assert_eq!(peer, a_addr);
            let (mut r, mut w) = s.into_split();
            let writer = tokio::spawn(async move {
                w.write_all(&down).await.unwrap();
                w.shutdown().await.unwrap();
            });
            let mut got = Vec::new();
            r.read_to_end(&mut got).await.unwrap();
            assert!(got == up, "server got {} bytes, not the stream", got.len());
            writer.await.unwrap();
        })
    };
    let s = a.connect(b_addr).await.unwrap();
    let (mut r, mut w) = s.into_split();
    let writer = tokio::spawn(async move {
        w.write_all(&up).await.unwrap();
        w.shutdown().await.unwrap();
    });
    let mut got = Vec::new();
    timeout(Duration::from_secs(60), r.read_to_end(&mut got))
        .await
        .unwrap()
        .unwrap();
    assert!(
        got == down,
        "client got {} bytes, not the stream",
        got.len()
    );
    writer.await.unwrap();
    timeout(Duration::from_secs(60), server)
        .await
        .unwrap()
        .unwrap();
    // 4 MiB went through the transport, in 64 KiB datagrams (no MTU here).
    assert!(a.stats().datagrams_sent >= 65, "{:?}", a.stats());
    // Marking belongs to the transport there.
    assert_eq!(
        a.set_traffic_class(UtpSocket::DSCP_LE).unwrap_err().kind(),
        std::io::ErrorKind::Unsupported
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn application_datagrams_share_a_user_transport() {
    let net = MemoryNetwork::new();
    let sock = UtpSocket::with_transport(
        net.bind("10.2.0.1:1".parse().unwrap()).unwrap(),
        Config::default(),
    )
    .unwrap();
    let dht = net.bind("10.2.0.2:1".parse().unwrap()).unwrap();
    let recv = {
        let sock = sock.clone();
        tokio::spawn(async move {
            let mut buf = [0u8; 64];
            let (n, from) = sock.recv_other(&mut buf).await.unwrap();
            (buf[..n].to_vec(), from)
        })
    };
    tokio::time::sleep(Duration::from_millis(20)).await;
    let to = sock.local_addr().unwrap();
    std::future::poll_fn(|cx| dht.poll_send(cx, b"d1:q4:pinge", to))
        .await
        .unwrap();
    let (got, from) = timeout(Duration::from_secs(5), recv)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(got, b"d1:q4:pinge");
    assert_eq!(from, dht.local_addr().unwrap());
    sock.send_to(b"d1:r4:ponge", from).await.unwrap();
    let mut buf = [0u8; 64];
    let (n, src) = timeout(
        Duration::from_secs(5),
        std::future::poll_fn(|cx| dht.poll_recv(cx, &mut buf)),
    )
    .await
    .unwrap()
    .unwrap();
    assert_eq!((&buf[..n], src), (&b"d1:r4:ponge"[..], to));
}

#[test]
fn memory_addresses_are_exclusive_until_dropped() {
    let net = MemoryNetwork::new();
    let addr = "10.3.0.1:1".parse().unwrap();
    let s = net.bind(addr).unwrap();
    assert_eq!(
        net.bind(addr).unwrap_err().kind(),
        std::io::ErrorKind::AddrInUse
    );
    drop(s);
    assert!(net.bind(addr).is_ok());
}
