//! Interop with librqbit-utp 0.7, the uTP stack of the rqbit torrent client:
//! a real peer written apart from tokio-utp (and from libutp), in both
//! roles, on a clean path and through a relay that loses datagrams of
//! every kind. Both ends send and read at once, as peers of a BitTorrent
//! swarm do; every byte is compared, tokio-utp must see librqbit-utp's FIN
//! as EOF, and its `close` must return `Ok`.
//!
//! librqbit-utp has no half-close, so both ends first read all they expect
//! (the way length-framed protocols such as BitTorrent's read) and only then
//! close: a FIN it receives ends its sending too (data not yet packetized is
//! dropped without an error to its writer), and after its own FIN it takes
//! the next ack (a STATE whose seq_nr is one past the data it has, as every
//! libutp-style ack is) for the peer's FIN and forgets the connection.
//!
//! This crate is the only one that depends on librqbit-utp, so the test
//! lives here rather than in `interop/` (libutp, libtorrent, Transmission).

#[path = "../src/relay.rs"]
mod relay;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, ensure, Context, Result};
use rand::{RngCore, SeedableRng};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio_utp::{Config, ConnectionStats, UtpListener, UtpSocket, UtpStream};

/// A whole case, handshake to close, must finish in this time.
const DEADLINE: Duration = Duration::from_secs(90);

fn data(len: usize, seed: u64) -> Vec<u8> {
    let mut v = vec![0u8; len];
    rand::rngs::SmallRng::seed_from_u64(seed).fill_bytes(&mut v);
    v
}

async fn rqbit_socket() -> Result<Arc<librqbit_utp::UtpSocketUdp>> {
    librqbit_utp::UtpSocketUdp::new_udp(relay::loopback())
        .await
        .map_err(|e| anyhow!("librqbit-utp bind: {e:?}"))
}

/// Writes `out` while reading `len` bytes; returns them and the stream.
async fn exchange<S>(stream: S, out: Vec<u8>, len: usize, who: &str) -> Result<(Vec<u8>, S)>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let (mut rd, mut wr) = tokio::io::split(stream);
    let mut got = vec![0u8; len];
    let (r, w) = tokio::join!(rd.read_exact(&mut got), wr.write_all(&out));
    r.with_context(|| format!("{who} reading"))?;
    w.with_context(|| format!("{who} writing"))?;
    Ok((got, rd.unsplit(wr)))
}

/// Both ends exchange `len` bytes each way at once, then librqbit-utp
/// shuts down and tokio-utp reads EOF and closes. Checks every byte;
/// returns tokio-utp's statistics.
async fn both_ways<R>(ours: UtpStream, theirs: R, len: usize) -> Result<ConnectionStats>
where
    R: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let (to_them, to_us) = (data(len, 1), data(len, 2));
    let (a, b) = (to_them.clone(), to_us.clone());
    let them = tokio::spawn(async move {
        let (got, mut s) = exchange(theirs, b, len, "librqbit-utp").await?;
        s.shutdown().await.context("librqbit-utp shutdown")?;
        anyhow::Ok(got)
    });
    let (got, mut ours) = exchange(ours, a, len, "tokio-utp").await?;
    ensure!(got == to_us, "tokio-utp read other bytes than were sent");
    let their_got = them.await??;
    ensure!(
        their_got == to_them,
        "librqbit-utp read other bytes than were sent"
    );
    let mut rest = Vec::new();
    ours.read_to_end(&mut rest)
        .await
        .context("tokio-utp reading to EOF")?;
    ensure!(rest.is_empty(), "{} bytes after the end", rest.len());
    let stats = ours.stats();
    ours.close().await.context("tokio-utp close")?;
    Ok(stats)
}

/// Where to send for `addr`: through a relay losing `loss` of the
/// datagrams each way when given (its guard stops it), else `addr` itself.
fn via_relay(
    addr: SocketAddr,
    loss: Option<f64>,
    seed: u64,
) -> Result<(SocketAddr, Option<relay::Relay>)> {
    Ok(match loss {
        Some(p) => {
            let (a, r) = relay::relay(addr, p, seed)?;
            (a, Some(r))
        }
        None => (addr, None),
    })
}

/// tokio-utp connects (through a relay when `loss` is given) to a
/// librqbit-utp listener.
async fn we_connect(config: Config, loss: Option<f64>, len: usize) -> Result<ConnectionStats> {
    let server = rqbit_socket().await?;
    let (target, _relay) = via_relay(server.bind_addr(), loss, 11)?;
    let accept = {
        let server = server.clone();
        tokio::spawn(async move { server.accept().await })
    };
    let socket = UtpSocket::bind_with_config(relay::loopback(), config).await?;
    let ours = socket.connect(target).await.context("tokio-utp connect")?;
    let theirs = accept
        .await?
        .map_err(|e| anyhow!("librqbit-utp accept: {e:?}"))?;
    both_ways(ours, theirs, len).await
}

/// librqbit-utp connects (through a relay when `loss` is given) to a
/// tokio-utp listener.
async fn they_connect(config: Config, loss: Option<f64>, len: usize) -> Result<ConnectionStats> {
    let listener = UtpListener::bind_with_config(relay::loopback(), config).await?;
    let (target, _relay) = via_relay(listener.local_addr()?, loss, 12)?;
    let client = rqbit_socket().await?;
    let theirs = client
        .connect(target)
        .await
        .map_err(|e| anyhow!("librqbit-utp connect: {e:?}"))?;
    let (ours, _) = listener.accept().await.context("tokio-utp accept")?;
    both_ways(ours, theirs, len).await
}

/// librqbit-utp reads datagrams into 16 KiB and takes a cut one as whole:
/// the largest payload it can take intact.
const RQBIT_MAX_PAYLOAD: usize = 16_384 - 20;

async fn within_deadline(
    case: impl std::future::Future<Output = Result<ConnectionStats>>,
) -> ConnectionStats {
    // RUST_LOG=librqbit_utp=debug shows why librqbit-utp gave up.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    match tokio::time::timeout(DEADLINE, case).await {
        Ok(r) => r.unwrap(),
        Err(_) => panic!("not finished within {DEADLINE:?}"),
    }
}

/// Path MTU discovery went past the base size, and never past what
/// librqbit-utp reads whole.
fn assert_found_its_size(st: &ConnectionStats) {
    assert!(st.pmtud_probes > 0, "{st:?}");
    assert!(st.payload_size > 1212, "{st:?}");
    assert!(st.max_payload_sent <= RQBIT_MAX_PAYLOAD, "{st:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn we_connect_to_librqbit_utp() {
    let st = within_deadline(we_connect(Config::default(), None, 4 << 20)).await;
    assert_found_its_size(&st);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn librqbit_utp_connects_to_us() {
    let st = within_deadline(they_connect(Config::default(), None, 4 << 20)).await;
    assert_found_its_size(&st);
}

/// Classic Internet packet sizes: the search ends at the cap.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn librqbit_utp_at_1400_byte_payloads() {
    let config = Config::default().max_payload(1400);
    let st = within_deadline(they_connect(config, None, 2 << 20)).await;
    assert_eq!(st.payload_size, 1400, "{st:?}");
}

/// Without path MTU discovery: the base size throughout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn we_connect_to_librqbit_utp_without_path_mtu_discovery() {
    let config = Config::default().pmtud(false);
    let st = within_deadline(we_connect(config, None, 2 << 20)).await;
    assert_eq!((st.pmtud_probes, st.max_payload_sent), (0, 1212), "{st:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn we_connect_to_librqbit_utp_through_loss() {
    let st = within_deadline(we_connect(Config::default(), Some(0.02), 1 << 20)).await;
    assert!(st.packets_retransmitted > 0, "{st:?}");
    assert!(st.max_payload_sent <= RQBIT_MAX_PAYLOAD, "{st:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn librqbit_utp_connects_to_us_through_loss() {
    let st = within_deadline(they_connect(Config::default(), Some(0.02), 1 << 20)).await;
    assert!(st.packets_retransmitted > 0, "{st:?}");
    assert!(st.max_payload_sent <= RQBIT_MAX_PAYLOAD, "{st:?}");
}
