//! Loopback tests over real UDP sockets and the real tokio stack.

use std::time::{Duration, Instant};

mod common;

use common::{pattern, read_and_check, receive_indexed, serve_one, write_pattern};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::timeout;
use tokio_utp::{Config, UtpListener, UtpSocket, UtpStream};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readme_snippet_sends_and_closes() {
    let (addr, server) = serve_one("127.0.0.1:0", move |mut s| async move {
        let mut got = Vec::new();
        s.read_to_end(&mut got).await.unwrap();
        got
    })
    .await;
    let (mut stream, driver) = UtpStream::connect(addr).await.unwrap();
    let driver = tokio::spawn(driver);
    stream.write_all(b"Hi there!").await.unwrap();
    stream.close().await.unwrap();
    let got = timeout(Duration::from_secs(10), server)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(got, b"Hi there!");
    // With every handle gone and both FINs exchanged, the driver finishes.
    timeout(Duration::from_secs(30), driver)
        .await
        .expect("driver should finish after time-wait")
        .unwrap()
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bulk_256_mib_one_way_bit_exact() {
    let len = 256 << 20;
    let (addr, server) = serve_one("127.0.0.1:0", move |mut s| async move {
        read_and_check(&mut s, 7, len).await;
    })
    .await;
    let sock = UtpSocket::bind("127.0.0.1:0").await.unwrap();
    let mut c = sock.connect(addr).await.unwrap();
    let start = Instant::now();
    write_pattern(&mut c, 7, len).await;
    c.shutdown().await.unwrap();
    timeout(Duration::from_secs(120), server)
        .await
        .unwrap()
        .unwrap();
    let secs = start.elapsed().as_secs_f64();
    let st = c.stats();
    eprintln!(
        "256 MiB in {secs:.2} s = {:.1} MB/s, retransmitted {} of {} packets, max cwnd {}",
        len as f64 / secs / 1e6,
        st.packets_retransmitted,
        st.packets_sent,
        st.max_cwnd
    );
    assert_eq!(st.bytes_sent, len as u64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_directions_at_once() {
    let len = 16 << 20;
    let (addr, server) = serve_one("127.0.0.1:0", move |s| async move {
        let (mut r, mut w) = s.into_split();
        let reader = tokio::spawn(async move { read_and_check(&mut r, 1, len).await });
        write_pattern(&mut w, 2, len).await;
        w.shutdown().await.unwrap();
        reader.await.unwrap();
    })
    .await;
    let sock = UtpSocket::bind("127.0.0.1:0").await.unwrap();
    let c = sock.connect(addr).await.unwrap();
    let (mut r, mut w) = c.into_split();
    let reader = tokio::spawn(async move { read_and_check(&mut r, 2, len).await });
    write_pattern(&mut w, 1, len).await;
    w.shutdown().await.unwrap();
    timeout(Duration::from_secs(60), reader)
        .await
        .unwrap()
        .unwrap();
    timeout(Duration::from_secs(60), server)
        .await
        .unwrap()
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn borrowed_halves_read_and_write_at_once_in_one_task() {
    let len = 4 << 20;
    let (addr, server) = serve_one("127.0.0.1:0", move |mut s| async move {
        let (mut r, mut w) = s.split();
        // Both directions from one task: neither side waits for the other.
        tokio::join!(read_and_check(&mut r, 3, len), async {
            write_pattern(&mut w, 4, len).await;
            w.shutdown().await.unwrap();
        });
    })
    .await;
    let sock = UtpSocket::bind("127.0.0.1:0").await.unwrap();
    let mut c = sock.connect(addr).await.unwrap();
    let (mut r, mut w) = c.split();
    assert_eq!(r.peer_addr().unwrap(), addr);
    assert_eq!(w.peer_addr().unwrap(), addr);
    let both = async {
        tokio::join!(read_and_check(&mut r, 4, len), async {
            write_pattern(&mut w, 3, len).await;
            w.shutdown().await.unwrap();
        })
    };
    timeout(Duration::from_secs(60), both).await.unwrap();
    timeout(Duration::from_secs(60), server)
        .await
        .unwrap()
        .unwrap();
    // The stream is whole again once the borrowed halves are gone.
    assert_eq!(c.stats().bytes_sent, len as u64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn owned_halves_reunite_only_with_their_own_and_forget_keeps_the_stream_open() {
    let listener = UtpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            let (mut s, _) = listener.accept().await.unwrap();
            let tx = tx.clone();
            tokio::spawn(async move {
                let mut got = Vec::new();
                s.read_to_end(&mut got).await.unwrap();
                tx.send(got).unwrap();
            });
        }
    });
    let sock = UtpSocket::bind("127.0.0.1:0").await.unwrap();
    let (r1, w1) = sock.connect(addr).await.unwrap().into_split();
    let (r2, w2) = sock.connect(addr).await.unwrap().into_split();
    // Halves of different streams are handed back, untouched.
    let tokio_utp::ReuniteError(r1, w2) = r1.reunite(w2).unwrap_err();
    // A reunited stream writes on; its FIN goes out at its shutdown.
    let mut s1 = w1.reunite(r1).unwrap();
    s1.write_all(b"first").await.unwrap();
    s1.shutdown().await.unwrap();
    let got = timeout(Duration::from_secs(10), rx.recv()).await.unwrap();
    assert_eq!(got.unwrap(), b"first");
    // A forgotten write half sends no FIN: the peer waits for more data
    // until the read half goes too.
    let mut w2 = w2;
    w2.write_all(b"second").await.unwrap();
    w2.forget();
    let early = timeout(Duration::from_millis(300), rx.recv()).await;
    assert!(early.is_err(), "a FIN went out with a forgotten write half");
    drop(r2);
    let got = timeout(Duration::from_secs(10), rx.recv()).await.unwrap();
    assert_eq!(got.unwrap(), b"second");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousand_concurrent_connections_on_one_listener_socket() {
    let n = 1000;
    let len = 64 << 10;
    let cfg = Config::default().accept_backlog(n);
    let listener = UtpListener::bind_with_config("127.0.0.1:0", cfg)
        .await
        .unwrap();
    let addr = listener.local_addr().unwrap();
    let server = receive_indexed(listener, n, len, true);
    let sock = UtpSocket::bind("127.0.0.1:0").await.unwrap();
    let mut clients = Vec::new();
    for i in 0..n as u64 {
        let sock = sock.clone();
        clients.push(tokio::spawn(async move {
            let mut c = sock.connect(addr).await.unwrap();
            c.write_all(&(i + 100).to_be_bytes()).await.unwrap();
            write_pattern(&mut c, i + 100, len).await;
            c.shutdown().await.unwrap();
            let mut back = Vec::new();
            c.read_to_end(&mut back).await.unwrap();
            assert_eq!(back, (i + 100).to_be_bytes());
        }));
    }
    timeout(Duration::from_secs(120), async {
        for c in clients {
            c.await.unwrap();
        }
        server.await.unwrap();
    })
    .await
    .expect("1000 connections should finish");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abort_resets_the_peer_at_once_and_frees_the_connection() {
    let len = 8 << 20;
    let head = 64 << 10;
    let (aborted_tx, aborted_rx) = tokio::sync::oneshot::channel::<Instant>();
    let (addr, server) = serve_one("127.0.0.1:0", move |mut s| async move {
        let expect = pattern(5, len);
        let mut got = vec![0u8; head];
        s.read_exact(&mut got).await.unwrap();
        assert_eq!(got, expect[..head]);
        // Not reading while the client aborts: its data waits in our buffer.
        let aborted = aborted_rx.await.unwrap();
        let mut buf = vec![0u8; 1 << 16];
        let mut at = head;
        let err = loop {
            match s.read(&mut buf).await {
                Ok(0) => panic!("EOF after {at} bytes: an abort is no clean close"),
                Ok(n) => {
                    assert_eq!(buf[..n], expect[at..at + n], "data before the reset");
                    at += n;
                }
                Err(e) => break e,
            }
        };
        (
            err.kind(),
            aborted.elapsed(),
            s.write_all(b"x").await.is_err(),
        )
    })
    .await;
    let sock = UtpSocket::bind("127.0.0.1:0").await.unwrap();
    let mut c = sock.connect(addr).await.unwrap();
    // More than both windows hold: the write stalls with data still queued.
    let data = pattern(5, len);
    let stalled = timeout(Duration::from_millis(300), c.write_all(&data)).await;
    assert!(stalled.is_err(), "8 MiB fit in the windows");
    c.abort();
    aborted_tx.send(Instant::now()).unwrap();
    let st = sock.stats();
    assert_eq!((st.connections_aborted, st.connections_open), (1, 0));
    let (kind, after, write_failed) = timeout(Duration::from_secs(10), server)
        .await
        .expect("the peer learns of the abort")
        .unwrap();
    assert_eq!(kind, std::io::ErrorKind::ConnectionReset);
    // The RESET itself, not a timeout, ended the connection.
    assert!(after < Duration::from_secs(2), "reset seen after {after:?}");
    assert!(write_failed, "writes fail after the reset");
    // One RESET; any more only answer packets the peer sent before it
    // learnt of the abort (a window update), as for any unknown connection.
    let st = sock.stats();
    assert!(st.resets_sent >= 1 && st.resets_sent <= 1 + st.unknown_connection);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_aborted_stream_on_a_socket_of_its_own_resets_the_peer_and_its_driver_ends() {
    let (addr, server) = serve_one("127.0.0.1:0", move |mut s| async move {
        let mut buf = [0u8; 1024];
        loop {
            match s.read(&mut buf).await {
                Ok(0) => panic!("EOF: an abort is no clean close"),
                Ok(_) => {}
                Err(e) => break e.kind(),
            }
        }
    })
    .await;
    let (mut stream, driver) = UtpStream::connect(addr).await.unwrap();
    let driver = tokio::spawn(driver);
    stream.write_all(b"hello").await.unwrap();
    stream.abort();
    // No FIN handshake and no TIME_WAIT (10 s) to wait for: the driver
    // ends once the RESET is out.
    timeout(Duration::from_secs(2), driver)
        .await
        .expect("the driver lingered after the abort")
        .unwrap()
        .unwrap();
    let kind = timeout(Duration::from_secs(2), server)
        .await
        .expect("the peer learns of the abort")
        .unwrap();
    assert_eq!(kind, std::io::ErrorKind::ConnectionReset);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drop_without_close_gives_peer_eof_after_all_data() {
    let listener = UtpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let data = pattern(3, 3 << 20);
    let expect = data.clone();
    let sock = UtpSocket::bind("127.0.0.1:0").await.unwrap();
    let client = tokio::spawn(async move {
        let mut c = sock.connect(addr).await.unwrap();
        c.write_all(&data).await.unwrap();
        // Dropped here without close: the driver still delivers and FINs.
    });
    let (mut s, _) = listener.accept().await.unwrap();
    let mut got = Vec::new();
    timeout(Duration::from_secs(30), s.read_to_end(&mut got))
        .await
        .expect("EOF after drop")
        .unwrap();
    client.await.unwrap();
    assert!(got == expect, "data before the FIN must all arrive");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_to_closed_port_fails_in_bounded_time() {
    // A bound UDP socket nobody reads: no RESET, no ICMP, just silence.
    let silent = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let addr = silent.local_addr().unwrap();
    let cfg = Config::default().connect_timeout(Duration::from_secs(3));
    let sock = UtpSocket::bind_with_config("127.0.0.1:0", cfg)
        .await
        .unwrap();
    let start = Instant::now();
    let err = timeout(Duration::from_secs(10), sock.connect(addr))
        .await
        .expect("connect must give up by itself")
        .unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::TimedOut);
    assert!(start.elapsed() >= Duration::from_secs(3));
    assert!(start.elapsed() < Duration::from_secs(6));
    let stats = sock.stats();
    assert_eq!(
        (stats.connections_initiated, stats.connections_timed_out),
        (1, 1),
        "{stats:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_to_socket_without_listener_is_refused() {
    // A uTP socket without a listener answers SYNs with RESET.
    let other = UtpSocket::bind("127.0.0.1:0").await.unwrap();
    let addr = other.local_addr().unwrap();
    let sock = UtpSocket::bind("127.0.0.1:0").await.unwrap();
    let err = timeout(Duration::from_secs(5), sock.connect(addr))
        .await
        .unwrap()
        .unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionRefused);
    assert_eq!(sock.stats().connections_refused, 1);
    assert_eq!(other.stats().syn_refused, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_close_keeps_reading_after_own_fin() {
    let (addr, server) = serve_one("127.0.0.1:0", move |mut s| async move {
        let mut req = Vec::new();
        s.read_to_end(&mut req).await.unwrap();
        // Answer after the client's FIN.
        s.write_all(&req.repeat(3)).await.unwrap();
        s.close().await.unwrap();
    })
    .await;
    let sock = UtpSocket::bind("127.0.0.1:0").await.unwrap();
    let mut c = sock.connect(addr).await.unwrap();
    c.write_all(b"ping").await.unwrap();
    c.shutdown().await.unwrap();
    let mut resp = Vec::new();
    timeout(Duration::from_secs(10), c.read_to_end(&mut resp))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(resp, b"pingpingping");
    server.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ipv6_loopback_transfer_bit_exact() {
    let listener = match UtpListener::bind("[::1]:0").await {
        Ok(l) => l,
        // A machine without IPv6 cannot run this test; say so loudly.
        Err(e) => panic!("binding [::1] failed: {e}"),
    };
    let addr = listener.local_addr().unwrap();
    assert!(addr.is_ipv6());
    let server = tokio::spawn(async move {
        let (mut s, peer) = listener.accept().await.unwrap();
        assert!(peer.is_ipv6());
        read_and_check(&mut s, 11, 2 << 20).await;
    });
    let (mut c, driver) = UtpStream::connect(addr).await.unwrap();
    tokio::spawn(driver);
    write_pattern(&mut c, 11, 2 << 20).await;
    c.close().await.unwrap();
    timeout(Duration::from_secs(20), server)
        .await
        .unwrap()
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dual_stack_socket_accepts_ipv4_peer() {
    let listener = UtpListener::bind("[::]:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.unwrap();
        let mut got = Vec::new();
        s.read_to_end(&mut got).await.unwrap();
        got
    });
    let sock = UtpSocket::bind("127.0.0.1:0").await.unwrap();
    let mut c = sock.connect(("127.0.0.1", port)).await.unwrap();
    c.write_all(b"over v4 to a v6 socket").await.unwrap();
    c.close().await.unwrap();
    let got = timeout(Duration::from_secs(10), server)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(got, b"over v4 to a v6 socket");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn incoming_stream_yields_each_connection_and_socket_connects_out_too() {
    use std::future::poll_fn;
    use std::pin::Pin;

    let a = UtpSocket::bind("127.0.0.1:0").await.unwrap();
    let listener = a.listen().unwrap();
    assert_eq!(
        a.listen().unwrap_err().kind(),
        std::io::ErrorKind::AddrInUse,
        "one listener per socket"
    );
    let addr = listener.local_addr().unwrap();
    let b = UtpSocket::bind("127.0.0.1:0").await.unwrap();
    let b_listener = b.listen().unwrap();
    let b_addr = b.local_addr().unwrap();
    for i in 0..3u8 {
        let mut c = b.connect(addr).await.unwrap();
        c.write_all(&[i]).await.unwrap();
        c.close().await.unwrap();
    }
    let mut inc = listener.incoming();
    for i in 0..3u8 {
        let mut s = poll_fn(|cx| futures_core::Stream::poll_next(Pin::new(&mut inc), cx))
            .await
            .unwrap()
            .unwrap();
        let mut got = Vec::new();
        s.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, [i]);
    }
    // The listening socket also opens connections outward.
    let mut out = a.connect(b_addr).await.unwrap();
    out.write_all(b"back").await.unwrap();
    out.close().await.unwrap();
    let (mut s, peer) = b_listener.accept().await.unwrap();
    assert_eq!(peer, addr);
    let mut got = Vec::new();
    s.read_to_end(&mut got).await.unwrap();
    assert_eq!(got, b"back");
    assert!(a.stats().connections_accepted >= 3);
    assert!(a.stats().connections_initiated >= 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn driver_finishes_when_an_idle_socket_is_dropped() {
    let (sock, driver) = UtpSocket::bind_with_driver("127.0.0.1:0", Config::default())
        .await
        .unwrap();
    let driver = tokio::spawn(driver);
    // Let the driver park first, so only the drop can wake it.
    tokio::time::sleep(Duration::from_millis(50)).await;
    drop(sock);
    timeout(Duration::from_secs(5), driver)
        .await
        .expect("driver must notice the last handle is gone")
        .unwrap()
        .unwrap();
}

/// Sockets of their own (`UtpStream::connect`), in waves: each wave's
/// sockets take the receive and send buffers that the sockets before gave
/// back (when only TIME_WAIT was left, or when dropped), with those
/// sockets' old bytes in them. Every byte must still arrive as sent, both
/// ways.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sockets_of_their_own_reuse_each_others_buffers_bit_exact() {
    let (waves, per_wave, len) = (4u64, 25u64, 300 << 10);
    let listener = UtpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move {
        let mut tasks = Vec::new();
        for _ in 0..waves * per_wave {
            let (mut s, _) = listener.accept().await.unwrap();
            tasks.push(tokio::spawn(async move {
                let mut idx = [0u8; 8];
                s.read_exact(&mut idx).await.unwrap();
                let seed = u64::from_be_bytes(idx);
                read_and_check(&mut s, seed, len).await;
                write_pattern(&mut s, seed + 1_000, len).await;
                s.close().await.unwrap();
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
    });
    timeout(Duration::from_secs(120), async {
        for wave in 0..waves {
            let mut clients = Vec::new();
            for i in 0..per_wave {
                let seed = wave * per_wave + i;
                clients.push(tokio::spawn(async move {
                    let (mut c, driver) = UtpStream::connect(addr).await.unwrap();
                    tokio::spawn(driver);
                    c.write_all(&seed.to_be_bytes()).await.unwrap();
                    write_pattern(&mut c, seed, len).await;
                    c.shutdown().await.unwrap();
                    read_and_check(&mut c, seed + 1_000, len).await;
                    c.close().await.unwrap();
                }));
            }
            for c in clients {
                c.await.unwrap();
            }
        }
        server.await.unwrap();
    })
    .await
    .expect("every wave should finish");
}
