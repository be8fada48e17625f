//! Faults and floods over real loopback sockets: a peer that crashes
//! mid-transfer (no FIN, no RESET, nothing) and a SYN flood against a socket
//! that is busy with a transfer.

use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::timeout;
use tokio_utp::{Config, UtpListener, UtpStream};

/// Short retransmission limits so that giving up takes ~2-3 s.
fn quick_config() -> Config {
    Config::default()
        .initial_rto(Duration::from_millis(200))
        .min_rto(Duration::from_millis(200))
        .max_rto(Duration::from_millis(800))
        .max_timeouts(4)
        .idle_timeout(Some(Duration::from_secs(2)))
}

/// Upper bound on giving up with `quick_config`: four RTOs of at most
/// 800 ms, or the 2 s idle timeout, plus scheduling slack.
const GIVE_UP: Duration = Duration::from_secs(6);

/// A peer connects, exchanges data both ways, then its driver task is
/// aborted and its stream abandoned: nothing is sent, as if the process had
/// been killed. Returns our accepted stream and the listener.
async fn crashed_peer(peer_sends: bool, cfg: Config) -> (UtpStream, UtpListener) {
    let listener = UtpListener::bind_with_config("127.0.0.1:0", cfg)
        .await
        .unwrap();
    let addr = listener.local_addr().unwrap();
    let (mut peer, driver) = UtpStream::connect_with_config(addr, Config::default())
        .await
        .unwrap();
    let driver = tokio::spawn(driver);
    let (mut ours, _) = listener.accept().await.unwrap();
    // Data flows (both ways if asked), so the crash is mid-transfer.
    peer.write_all(&[1u8; 100_000]).await.unwrap();
    let mut buf = vec![0u8; 100_000];
    ours.read_exact(&mut buf).await.unwrap();
    if peer_sends {
        // The peer keeps sending: we are the receiver when it dies.
        peer.write_all(&[2u8; 50_000]).await.unwrap();
    }
    driver.abort();
    assert!(driver.await.unwrap_err().is_cancelled());
    // Not dropped: dropping a stream sends its FIN from the dropping task,
    // and a crashed process sends nothing.
    std::mem::forget(peer);
    (ours, listener)
}

async fn wait_for_no_connections(listener: &UtpListener, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        let st = listener.socket().stats();
        if st.connections_open == 0 {
            return;
        }
        assert!(Instant::now() < deadline, "connection not freed: {st:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peer_crash_while_we_send_fails_within_the_retransmission_limit() {
    // No idle timeout: the retransmission limit must do it alone.
    let (mut ours, listener) = crashed_peer(false, quick_config().idle_timeout(None)).await;
    let t0 = Instant::now();
    // We keep sending into the void until retransmissions give up.
    let err = timeout(GIVE_UP * 2, async {
        let chunk = vec![3u8; 64 << 10];
        loop {
            if let Err(e) = ours.write_all(&chunk).await {
                return e;
            }
        }
    })
    .await
    .expect("writer hung past the timeouts");
    let took = t0.elapsed();
    eprintln!("send side gave up after {took:?}: {err}");
    assert_eq!(err.kind(), std::io::ErrorKind::TimedOut);
    assert!(took < GIVE_UP, "{took:?}");
    drop(ours);
    wait_for_no_connections(&listener, Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peer_crash_while_we_receive_fails_within_the_idle_timeout() {
    let (mut ours, listener) = crashed_peer(true, quick_config()).await;
    let t0 = Instant::now();
    let mut got = 0usize;
    let mut buf = vec![0u8; 1 << 16];
    let err = timeout(GIVE_UP * 2, async {
        loop {
            match ours.read(&mut buf).await {
                Ok(0) => panic!("clean EOF from a crashed peer"),
                Ok(n) => got += n,
                Err(e) => return e,
            }
        }
    })
    .await
    .expect("reader hung past the idle timeout");
    let took = t0.elapsed();
    eprintln!("receive side gave up after {took:?} ({got} bytes read first): {err}");
    assert_eq!(err.kind(), std::io::ErrorKind::TimedOut);
    assert!(got <= 50_000);
    assert!(took < GIVE_UP, "{took:?}");
    drop(ours);
    wait_for_no_connections(&listener, Duration::from_secs(1)).await;
}

// ------------------------------------------------------------------ SYN flood

fn rss_kib() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = s.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// 100,000 SYNs from 100 source ports, sent as fast as loopback takes them.
fn flood(target: SocketAddr) -> u64 {
    let mut sent = 0;
    let mut syn = [0u8; 20];
    syn[0] = 0x41; // ST_SYN, version 1
    for port in 0..100u32 {
        let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
        for i in 0..1000u32 {
            let id = (port * 1000 + i) as u16;
            syn[2..4].copy_from_slice(&id.to_be_bytes());
            syn[16..18].copy_from_slice(&1u16.to_be_bytes());
            if sock.send_to(&syn, target).is_ok() {
                sent += 1;
            }
            if i.is_multiple_of(100) {
                // Let the receiver keep up a little (the kernel drops what
                // doesn't fit its buffer anyway).
                std::thread::yield_now();
            }
        }
    }
    sent
}

const TRANSFER: usize = 32 << 20;

/// Sends `TRANSFER` bytes to `addr` over a fresh connection; the time it took.
async fn transfer(
    listener: &Arc<UtpListener>,
) -> (Duration, tokio::task::JoinHandle<std::io::Result<()>>) {
    let addr = listener.local_addr().unwrap();
    let t0 = Instant::now();
    let (mut client, driver) = UtpStream::connect(addr).await.unwrap();
    let client_port = client.local_addr().unwrap().port();
    let driver = tokio::spawn(driver);
    let writer = tokio::spawn(async move {
        let chunk: Vec<u8> = (0..1 << 20).map(|i| (i % 251) as u8).collect();
        for _ in 0..TRANSFER >> 20 {
            client.write_all(&chunk).await.unwrap();
        }
        client.close().await.unwrap();
    });
    // Flood connections accepted meanwhile are dropped at once.
    let mut server = loop {
        let (s, peer) = listener.accept().await.unwrap();
        if peer.port() == client_port {
            break s;
        }
    };
    // From now on accept everything and drop it at once: the worst case
    // for the half-open bound (an application that accepts eagerly).
    let acceptor = {
        let listener = listener.clone();
        tokio::spawn(async move {
            loop {
                let _ = listener.accept().await;
            }
        })
    };
    let mut buf = vec![0u8; 1 << 16];
    let mut got = 0usize;
    loop {
        let n = server.read(&mut buf).await.unwrap();
        if n == 0 {
            break;
        }
        for (k, &b) in buf[..n].iter().enumerate() {
            assert_eq!(b, ((got + k) % (1 << 20) % 251) as u8, "corrupt");
        }
        got += n;
    }
    assert_eq!(got, TRANSFER);
    acceptor.abort();
    writer.await.unwrap();
    (t0.elapsed(), driver)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn syn_flood_during_a_transfer_is_bounded_and_does_not_starve_it() {
    // Default limits; shorter timers only to keep the test short.
    let cfg = Config::default()
        .connect_timeout(Duration::from_secs(3))
        .time_wait(Duration::from_secs(1));
    let max_half_open = cfg.max_half_open;
    let listener = Arc::new(
        UtpListener::bind_with_config("127.0.0.1:0", cfg)
            .await
            .unwrap(),
    );
    let addr = listener.local_addr().unwrap();

    let (baseline, _d) = timeout(Duration::from_secs(120), transfer(&listener))
        .await
        .expect("baseline transfer");
    let rss_before = rss_kib();

    // The transfer and the flood at once. The listener task accepts the
    // transfer's connection first (it connects before the flood starts),
    // then every flood connection it is handed, dropping each at once.
    let flood_thread = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(200));
        flood(addr)
    });
    let sampler = {
        let sock = listener.socket().clone();
        tokio::spawn(async move {
            let mut max_conns = 0;
            let mut max_rss = 0;
            for _ in 0..300 {
                let st = sock.stats();
                max_conns = max_conns.max(st.connections_open);
                max_rss = max_rss.max(rss_kib().unwrap_or(0));
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            (max_conns, max_rss)
        })
    };
    let (flooded, _d2) = timeout(Duration::from_secs(120), transfer(&listener))
        .await
        .expect("transfer starved by the flood");
    let sent = flood_thread.join().unwrap();
    // Keep accepting (and dropping) what the flood left in the backlog.
    let drain = async {
        loop {
            let _ = listener.accept().await;
        }
    };
    let _ = timeout(Duration::from_secs(2), drain).await;
    let st = listener.socket().stats();
    let (max_conns, max_rss) = sampler.await.unwrap();
    let rss_after = rss_kib();
    eprintln!(
        "SYN flood (tokio): {sent} SYNs sent; transfer of {} MiB took {flooded:?} \
         (without flood {baseline:?}); max connections {max_conns}; RSS before {:?} KiB, \
         max {max_rss} KiB, after {:?} KiB; {st:?}",
        TRANSFER >> 20,
        rss_before,
        rss_after
    );
    assert_eq!(sent, 100_000);
    // Bounded: the transfer's connection, at most max_half_open flooders
    // (+ the baseline's in TIME_WAIT).
    assert!(max_conns <= 2 + max_half_open as u64, "{max_conns}");
    // Counted: the SYNs that reached the endpoint were taken or dropped for
    // a reason; most were dropped.
    let syns = st.connections_accepted + st.syn_half_open_full + st.syn_backlog_full;
    assert!(syns <= 100_000 + 2, "{st:?}");
    assert!(st.syn_half_open_full + st.syn_backlog_full > 0, "{st:?}");
    assert!(
        st.connections_accepted <= 2 + max_half_open as u64,
        "{st:?}"
    );
    // Memory: no per-SYN state (100,000 connections would be >100 MiB).
    if let (Some(before), Some(_)) = (rss_before, rss_after) {
        assert!(
            max_rss < before + 64 * 1024,
            "RSS grew from {before} to {max_rss} KiB"
        );
    }
    // Freed once the flood's half-open connections time out.
    wait_for_no_connections(&listener, Duration::from_secs(15)).await;
}

/// While a SYN flood holds every half-open slot (its initiators never speak
/// again, and live long), a real connect still gets in at once: its SYN is
/// answered with a SYN cookie, and its first data makes the connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_connect_gets_in_while_a_syn_flood_holds_every_half_open_slot() {
    let cfg = Config::default()
        .max_half_open(16)
        .connect_timeout(Duration::from_secs(60));
    let listener = UtpListener::bind_with_config("127.0.0.1:0", cfg)
        .await
        .unwrap();
    let addr = listener.local_addr().unwrap();
    let flooder = UdpSocket::bind("127.0.0.1:0").unwrap();
    let mut syn = [0u8; 20];
    syn[0] = 0x41; // ST_SYN, version 1
    for id in 0..200u16 {
        syn[2..4].copy_from_slice(&(id * 2).to_be_bytes());
        flooder.send_to(&syn, addr).unwrap();
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while listener.socket().stats().syn_half_open_full < 100 {
        assert!(Instant::now() < deadline, "{:?}", listener.socket().stats());
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(listener.socket().stats().half_open, 16);

    let t0 = Instant::now();
    let (mut client, driver) = timeout(Duration::from_secs(5), UtpStream::connect(addr))
        .await
        .expect("connect stalled by the flood")
        .unwrap();
    tokio::spawn(driver);
    client.write_all(b"hello").await.unwrap();
    let port = client.local_addr().unwrap().port();
    // The flood's connections were handed out first; ours follows.
    let mut server = timeout(Duration::from_secs(5), async {
        loop {
            let (s, from) = listener.accept().await.unwrap();
            if from.port() == port {
                break s;
            }
        }
    })
    .await
    .expect("the connection never came");
    let mut buf = [0u8; 5];
    server.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"hello");
    server.write_all(b"world").await.unwrap();
    timeout(Duration::from_secs(5), client.read_exact(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&buf, b"world");
    let st = listener.socket().stats();
    eprintln!("in {:?} during the flood; {st:?}", t0.elapsed());
    assert!(
        t0.elapsed() < Duration::from_secs(1),
        "a SYN retry was needed"
    );
    assert_eq!(st.syn_cookies_accepted, 1);
    assert!(st.connections_open <= 17 + 1, "{st:?}");
}
