//! `utp-bench`: tokio-utp against tokio TCP, raw UDP (one datagram per
//! system call, and GSO/GRO batches through quinn-udp) and librqbit-utp, on
//! loopback, in one run, so the ratios compare like with like on a machine
//! whose speed varies.
//!
//! Every byte is verified: the receiver compares what arrives with the
//! sender's pattern (bit-exact, cheaper than a checksum so the comparison
//! costs the stacks little). CPU time is the process's (both ends) from
//! getrusage. Each measurement runs under a watchdog; a stall is reported
//! as a stall, not waited out.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, ensure, Context, Result};
use clap::Parser;
use serde::Serialize;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

mod relay;
mod udp;

use relay::loopback;

const GIB: f64 = (1u64 << 30) as f64;

#[derive(Parser, Debug)]
#[command(
    version,
    about = "Loopback benchmark: tokio-utp and its references, side by side"
)]
struct Args {
    /// A short run (well under two minutes): smaller transfers and fewer
    /// connections.
    #[arg(long)]
    quick: bool,
    /// Print the results as JSON (to stdout) instead of a table.
    #[arg(long)]
    json: bool,
    /// Runs per throughput measurement (the median is reported). bulk,
    /// bulk1400, conc100 and connects run one more, unmeasured, first.
    #[arg(long)]
    runs: Option<usize>,
    /// Only these cases (comma-separated): bulk, bulk-chunks, bulk1400,
    /// conc100, conc10k, scaling, loss, pingpong, connects, connects-own.
    #[arg(long, value_delimiter = ',')]
    cases: Vec<String>,
    /// Only these stacks (comma-separated): utp, tcp, rqbit, udp1, udpgso.
    #[arg(long, value_delimiter = ',')]
    stacks: Vec<String>,
    /// Bytes for the single-stream cases (default 256 MiB, quick 128 MiB).
    #[arg(long)]
    size: Option<u64>,
    /// Payload cap for the default tokio-utp stack (to try sizes path MTU
    /// discovery would pick; the `bulk1400` case always caps at 1400).
    #[arg(long)]
    utp_payload: Option<usize>,
    /// Send and receive buffer per tokio-utp connection, in bytes (default:
    /// the library's default).
    #[arg(long)]
    utp_buffer: Option<usize>,
    /// UDP socket buffer tokio-utp asks the OS for, in bytes (default: the
    /// library's, 4 MiB); 212992 gives what most Linux systems cap it at.
    #[arg(long)]
    udp_buffer: Option<usize>,
    /// Most bytes tokio-utp keeps in flight to one peer, all connections
    /// together (default: the library's, 2 MiB).
    #[arg(long)]
    utp_peer_flight: Option<usize>,
    /// Watchdog per measurement, in seconds.
    #[arg(long, default_value_t = 60)]
    timeout: u64,
    /// Run everything on tokio's current-thread runtime (as under
    /// `#[tokio::main(flavor = "current_thread")]`) instead of the
    /// multi-threaded one.
    #[arg(long)]
    current_thread: bool,
    /// Keep this many busy-looping processes at the lowest priority (nice
    /// 19) running throughout, as a desktop's background work would: they
    /// take hardly any CPU time from the stacks, but no CPU is ever idle,
    /// so a thread that sleeps waits for the scheduler to hand its CPU
    /// back. Their CPU time is not counted.
    #[arg(long, default_value_t = 0)]
    background_load: usize,
    /// The niceness of `--background-load`'s loops: 0 makes them programs
    /// as busy as ours, each taking a CPU's share from the stacks.
    #[arg(long, default_value_t = 19, value_parser = clap::value_parser!(u8).range(0..=19))]
    background_nice: u8,
    /// Bytes the applications of every stack write and read per call (the
    /// write size and the read buffer), as a program's own buffer would
    /// be; `tokio::io::copy` uses 8 KiB.
    #[arg(long, default_value_t = 256 * 1024)]
    app_buffer: usize,
}

/// Busy-looping processes (at nice 19 unless `--background-nice`), killed
/// when dropped; each also ends once the benchmark is gone (interrupted,
/// say).
struct BackgroundLoad(Vec<std::process::Child>);

impl BackgroundLoad {
    fn start(n: usize, nice: u8) -> Result<Self> {
        let mut children = Vec::with_capacity(n);
        let nice = nice.to_string();
        for _ in 0..n {
            let child = std::process::Command::new("nice")
                .args([
                    "-n",
                    &nice,
                    "sh",
                    "-c",
                    "while kill -0 $PPID 2>/dev/null; do :; done",
                ])
                .spawn()
                .context("starting a background load process (nice, sh)")?;
            children.push(child);
        }
        Ok(Self(children))
    }
}

impl Drop for BackgroundLoad {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A transport under test.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stack {
    /// tokio-utp; `Some(n)` caps the payload at n bytes.
    Utp(Option<usize>),
    Tcp,
    Rqbit,
    /// Raw UDP, one 1400-byte datagram per system call.
    Udp1,
    /// Raw UDP, 1400-byte segments in GSO sends and GRO receives.
    UdpGso,
    /// Raw UDP, one 64 KiB datagram per system call: what the kernel's
    /// part of tokio-utp's loopback transfers costs on its own.
    Udp64k,
}

impl Stack {
    fn name(self) -> String {
        match self {
            Stack::Utp(None) => "tokio-utp".into(),
            Stack::Utp(Some(p)) => format!("tokio-utp payload {p}"),
            Stack::Tcp => "tokio TCP".into(),
            Stack::Rqbit => "librqbit-utp 0.7".into(),
            Stack::Udp1 => "raw UDP 1400 B/syscall".into(),
            Stack::UdpGso => "raw UDP 1400 B GSO/GRO".into(),
            Stack::Udp64k => "raw UDP 64 KiB/syscall".into(),
        }
    }

    fn key(self) -> &'static str {
        match self {
            Stack::Utp(_) => "utp",
            Stack::Tcp => "tcp",
            Stack::Rqbit => "rqbit",
            Stack::Udp1 => "udp1",
            Stack::UdpGso => "udpgso",
            Stack::Udp64k => "udp64k",
        }
    }
}

/// One line of the report.
#[derive(Debug, Clone, Serialize)]
struct Row {
    case: String,
    stack: String,
    /// "ok", "stall" (the watchdog fired) or "error: ...".
    status: String,
    /// The case's figure (see `unit`), median over runs.
    value: Option<f64>,
    unit: &'static str,
    /// Process CPU (user + system, both ends) per GiB moved, median.
    cpu_s_per_gib: Option<f64>,
    /// Case-specific details (p99, RSS, loss, ...).
    detail: String,
    runs: usize,
    /// Each run's figure, in the order measured (the spread, and which
    /// runs fell in one of this machine's slow phases).
    values: Vec<f64>,
}

/// A byte stream, whichever stack carries it.
trait Io: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> Io for T {}
type Conn = Box<dyn Io>;

enum Server {
    Utp(tokio_utp::UtpListener),
    Tcp(TcpListener),
    Rqbit(Arc<librqbit_utp::UtpSocketUdp>),
}

enum Client {
    Utp(tokio_utp::UtpSocket),
    Tcp,
    Rqbit(Arc<librqbit_utp::UtpSocketUdp>),
}

/// Settings from the command line for the default tokio-utp stack.
#[derive(Debug, Clone, Copy, Default)]
struct UtpTuning {
    payload: Option<usize>,
    buffer: Option<usize>,
    socket_buffer: Option<usize>,
    peer_flight: Option<usize>,
}

static UTP_TUNING: std::sync::OnceLock<UtpTuning> = std::sync::OnceLock::new();

/// `--app-buffer`: bytes per write and per read in the applications.
static APP_BUFFER: std::sync::OnceLock<usize> = std::sync::OnceLock::new();

fn app_buffer() -> usize {
    APP_BUFFER.get().copied().unwrap_or(256 * 1024).max(1)
}

fn utp_tuning() -> UtpTuning {
    UTP_TUNING.get().copied().unwrap_or_default()
}

/// A listening side and a connecting side, each on its own socket, for up
/// to `conns` connections at a time.
async fn endpoints(stack: Stack, conns: usize) -> Result<(Server, Client, SocketAddr)> {
    Ok(match stack {
        Stack::Utp(payload) => {
            let mut cfg = tokio_utp::Config::default();
            if let Some(p) = payload.or(utp_tuning().payload) {
                cfg = cfg.max_payload(p);
            }
            if let Some(b) = utp_tuning().buffer {
                cfg = cfg.send_buffer(b).recv_buffer(b);
            }
            if let Some(b) = utp_tuning().socket_buffer {
                cfg = cfg.socket_buffer(b);
            }
            if let Some(f) = utp_tuning().peer_flight {
                cfg = cfg.max_peer_flight(f);
            }
            // The responder counts a connection as half-open until the
            // initiator's first data; the idle-connection case holds that
            // many on purpose (the default limit, 1024, guards against SYN
            // floods).
            if conns > cfg.max_half_open {
                cfg = cfg.max_half_open(conns + 64);
            }
            let l = tokio_utp::UtpListener::bind_with_config(loopback(), cfg.clone()).await?;
            let addr = l.local_addr()?;
            let c = tokio_utp::UtpSocket::bind_with_config(loopback(), cfg).await?;
            (Server::Utp(l), Client::Utp(c), addr)
        }
        Stack::Tcp => {
            let l = TcpListener::bind(loopback()).await?;
            let addr = l.local_addr()?;
            (Server::Tcp(l), Client::Tcp, addr)
        }
        Stack::Rqbit => {
            let s = rqbit_socket(conns).await?;
            let addr = s.bind_addr();
            let c = rqbit_socket(conns).await?;
            (Server::Rqbit(s), Client::Rqbit(c), addr)
        }
        Stack::Udp1 | Stack::UdpGso | Stack::Udp64k => bail!("raw UDP has no connections"),
    })
}

/// A librqbit-utp socket with its defaults, except the limit of 128
/// connections per socket when a case needs more.
async fn rqbit_socket(conns: usize) -> Result<Arc<librqbit_utp::UtpSocketUdp>> {
    let opts = librqbit_utp::SocketOpts {
        max_live_vsocks: (conns > 100)
            .then(|| std::num::NonZeroUsize::new(conns + 28))
            .flatten(),
        ..Default::default()
    };
    librqbit_utp::UtpSocketUdp::new_udp_with_opts(loopback(), opts, Default::default())
        .await
        .map_err(|e| anyhow!("librqbit-utp bind: {e:?}"))
}

impl Server {
    async fn accept(&self) -> Result<Conn> {
        Ok(match self {
            Server::Utp(l) => Box::new(l.accept().await?.0),
            Server::Tcp(l) => {
                let (s, _) = l.accept().await?;
                s.set_nodelay(true)?;
                Box::new(s)
            }
            Server::Rqbit(s) => Box::new(
                s.accept()
                    .await
                    .map_err(|e| anyhow!("librqbit-utp accept: {e:?}"))?,
            ),
        })
    }
}

impl Client {
    async fn connect(&self, addr: SocketAddr) -> Result<Conn> {
        Ok(match self {
            Client::Utp(s) => Box::new(s.connect(addr).await?),
            Client::Tcp => {
                let s = TcpStream::connect(addr).await?;
                s.set_nodelay(true)?;
                Box::new(s)
            }
            Client::Rqbit(s) => Box::new(
                s.connect(addr)
                    .await
                    .map_err(|e| anyhow!("librqbit-utp connect: {e:?}"))?,
            ),
        })
    }
}

/// The byte stream every sender sends: a random block repeated. Its odd
/// length keeps block boundaries off packet boundaries.
#[derive(Clone)]
pub(crate) struct Pattern(bytes::Bytes);

impl Pattern {
    fn new() -> Self {
        use rand::{RngCore, SeedableRng};
        let mut v = vec![0u8; (1 << 20) + 7];
        rand::rngs::SmallRng::seed_from_u64(0x5eed).fill_bytes(&mut v);
        Self(bytes::Bytes::from(v))
    }

    /// The longest slice of the stream starting at `offset`, at most `max`.
    pub(crate) fn at(&self, offset: u64, max: usize) -> &[u8] {
        let start = (offset % self.0.len() as u64) as usize;
        let end = (start + max).min(self.0.len());
        &self.0[start..end]
    }

    /// [`Pattern::at`] as a share of the pattern's memory (no copy).
    fn chunk(&self, offset: u64, max: usize) -> bytes::Bytes {
        let start = (offset % self.0.len() as u64) as usize;
        let end = (start + max).min(self.0.len());
        self.0.slice(start..end)
    }

    /// Whether `data` is the stream's bytes at `offset`.
    pub(crate) fn matches(&self, mut offset: u64, mut data: &[u8]) -> bool {
        while !data.is_empty() {
            let want = self.at(offset, data.len());
            if data[..want.len()] != *want {
                return false;
            }
            offset += want.len() as u64;
            data = &data[want.len()..];
        }
        true
    }
}

async fn send_pattern(conn: &mut Conn, pat: &Pattern, total: u64) -> Result<()> {
    let mut sent = 0u64;
    while sent < total {
        let chunk = pat.at(sent, (total - sent).min(app_buffer() as u64) as usize);
        conn.write_all(chunk).await.context("write")?;
        sent += chunk.len() as u64;
    }
    conn.shutdown().await.context("shutdown")?;
    Ok(())
}

/// Reads to end of stream, checking every byte; fails on a mismatch or a
/// wrong length.
async fn recv_verify(conn: &mut Conn, pat: &Pattern, total: u64) -> Result<()> {
    let mut buf = vec![0u8; app_buffer()];
    let mut got = 0u64;
    loop {
        let n = conn.read(&mut buf).await.context("read")?;
        if n == 0 {
            break;
        }
        ensure!(pat.matches(got, &buf[..n]), "corrupt data at byte {got}");
        got += n as u64;
        ensure!(got <= total, "more bytes than sent");
    }
    ensure!(got == total, "stream ended after {got} of {total} bytes");
    Ok(())
}

/// Process CPU time (user + system) so far.
fn cpu_time() -> Duration {
    // SAFETY: getrusage only writes into the struct we pass.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: as above; RUSAGE_SELF is always valid.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

/// Resident memory of the process, in bytes.
fn rss_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(0);
    // SAFETY: sysconf has no memory effects.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(1) as u64;
    pages * page
}

/// Raises the open-file limit to the hard limit (10,000 TCP connections
/// need 20,000 descriptors in one process).
fn raise_fd_limit() -> u64 {
    // SAFETY: getrlimit/setrlimit read and write the struct we pass.
    unsafe {
        let mut lim: libc::rlimit = std::mem::zeroed();
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return 1024;
        }
        lim.rlim_cur = lim.rlim_max;
        libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        lim.rlim_cur
    }
}

static FD_LIMIT: std::sync::OnceLock<u64> = std::sync::OnceLock::new();

/// Connections a stack can have open in this process: TCP needs two file
/// descriptors per connection (both ends are here); uTP needs none.
fn n_for(stack: Stack, n: usize) -> usize {
    match stack {
        Stack::Tcp => {
            let fds = FD_LIMIT.get().copied().unwrap_or(1024);
            n.min((fds.saturating_sub(128) / 2) as usize)
        }
        _ => n,
    }
}

/// What one measurement produced.
struct Sample {
    value: f64,
    cpu: Duration,
    bytes: u64,
    detail: String,
}

/// Runs `fut` under the watchdog; a failure comes back as the row status
/// it gives: "error: ..." or "stall (...)".
async fn watched<T>(watchdog: Duration, fut: impl Future<Output = Result<T>>) -> Result<T, String> {
    match tokio::time::timeout(watchdog, fut).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(format!("error: {e:#}")),
        Err(_) => Err(format!("stall (no result within {} s)", watchdog.as_secs())),
    }
}

/// Runs `f` for each stack under the watchdog, `runs` rounds, and reports
/// each stack's median. Rounds interleave the stacks (A B C, B C A, ...):
/// this machine's speed drifts over seconds (TCP's loopback rate has moved
/// between 1.7 and 5.5 GB/s within minutes), and back-to-back blocks per
/// stack would turn that drift into a difference between stacks. A stack
/// that fails or stalls is not run again.
///
/// With `warmup`, one unmeasured round of every stack comes first, as
/// criterion warms up: after `settle` the CPUs are idle and the process's
/// memory partly returned to the OS, and the first runs pay for both
/// (tokio-utp's first two `--quick` `conc100` runs ran at a third to a half
/// of the later ones, TCP's first at half), which a long-running program
/// pays once. A warm-up that fails or stalls counts as the stack's result.
async fn measure<F, Fut>(
    case: &str,
    stacks: &[Stack],
    unit: &'static str,
    (runs, warmup): (usize, bool),
    watchdog: Duration,
    mut f: F,
) -> Vec<Row>
where
    F: FnMut(Stack) -> Fut,
    Fut: Future<Output = Result<Sample>>,
{
    settle().await;
    let mut samples: Vec<Vec<Sample>> = stacks.iter().map(|_| Vec::new()).collect();
    let mut status: Vec<String> = stacks.iter().map(|_| "ok".to_string()).collect();
    for round in 0..runs + usize::from(warmup) {
        // Each round starts one stack further on (A B C, B C A, C A B):
        // a stack's place in the round mattered on its own (ping-pong
        // latency after another stack's run can sit in a different CPU
        // idle state than after a pause).
        for k in 0..stacks.len() {
            let i = (round + k) % stacks.len();
            let stack = stacks[i];
            if status[i] != "ok" {
                continue;
            }
            match watched(watchdog, f(stack)).await {
                Ok(_) if warmup && round == 0 => {}
                Ok(s) => samples[i].push(s),
                Err(e) => status[i] = e,
            }
        }
    }
    stacks
        .iter()
        .zip(samples.into_iter().zip(status))
        .map(|(&stack, (samples, status))| summarize(case, stack, unit, samples, status))
        .collect()
}

/// Waits (10 s at most) until the process is quiet: connections of an
/// earlier case close in the background (20,000 FIN exchanges after the
/// 10k case), and that work must not be charged to the next case's stack.
async fn settle() {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        let cpu0 = cpu_time();
        tokio::time::sleep(Duration::from_millis(100)).await;
        if cpu_time() - cpu0 < Duration::from_millis(5) {
            return;
        }
    }
}

/// One stack's row: the medians of its samples.
fn summarize(
    case: &str,
    stack: Stack,
    unit: &'static str,
    samples: Vec<Sample>,
    status: String,
) -> Row {
    let row = |value, cpu, detail| Row {
        case: case.to_string(),
        stack: stack.name(),
        status: status.clone(),
        value,
        unit,
        cpu_s_per_gib: cpu,
        detail,
        runs: samples.len(),
        values: samples.iter().map(|s| s.value).collect(),
    };
    if samples.is_empty() || status != "ok" {
        return row(None, None, String::new());
    }
    let median = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v.get(v.len() / 2).copied()
    };
    let value = median(samples.iter().map(|s| s.value).collect());
    let cpu = median(
        samples
            .iter()
            .filter(|s| s.bytes > 0)
            .map(|s| s.cpu.as_secs_f64() / (s.bytes as f64 / GIB))
            .collect(),
    );
    let detail = samples
        .iter()
        .find(|s| Some(s.value) == value)
        .map(|s| s.detail.clone())
        .unwrap_or_default();
    row(value, cpu, detail)
}

/// One stream, `size` bytes client to server.
async fn bulk(stack: Stack, pat: Pattern, size: u64) -> Result<Sample> {
    if let Some(s) = raw_udp(stack, pat.clone(), size) {
        return s.await;
    }
    let (server, client, addr) = endpoints(stack, 1).await?;
    let p = pat.clone();
    let rx = tokio::spawn(async move {
        let mut c = server.accept().await?;
        recv_verify(&mut c, &p, size).await
    });
    let mut c = client.connect(addr).await?;
    let (t0, cpu0) = (Instant::now(), cpu_time());
    send_pattern(&mut c, &pat, size).await?;
    rx.await??;
    Ok(transfer_sample(size, t0, cpu0, ""))
}

/// A transfer's sample: `bytes` moved since `t0`, with the CPU used since
/// `cpu0`; `note` goes after the duration in the detail.
fn transfer_sample(bytes: u64, t0: Instant, cpu0: Duration, note: &str) -> Sample {
    let (dt, cpu) = (t0.elapsed(), cpu_time() - cpu0);
    Sample {
        value: bytes as f64 / dt.as_secs_f64() / 1e6,
        cpu,
        bytes,
        detail: format!("{:.2} s{note}", dt.as_secs_f64()),
    }
}

/// [`bulk`] over tokio-utp's calls that do not copy: the sender hands
/// over shares of the pattern's memory (`write_chunk`), the receiver
/// checks the receive buffers' bytes where they are (`read_chunk`). What
/// an application whose data is in `Bytes` already (file blocks, say) can
/// get; TCP, with its `&[u8]` calls only, has no such thing.
async fn bulk_chunks(pat: Pattern, size: u64) -> Result<Sample> {
    let (Server::Utp(server), Client::Utp(client), addr) = endpoints(Stack::Utp(None), 1).await?
    else {
        bail!("tokio-utp endpoints expected");
    };
    let p = pat.clone();
    let rx = tokio::spawn(async move {
        let (mut c, _) = server.accept().await?;
        let mut got = 0u64;
        while let Some(chunk) = c.read_chunk(usize::MAX).await.context("read")? {
            ensure!(p.matches(got, &chunk), "corrupt data at byte {got}");
            got += chunk.len() as u64;
            ensure!(got <= size, "more bytes than sent");
        }
        ensure!(got == size, "stream ended after {got} of {size} bytes");
        anyhow::Ok(())
    });
    let mut c = client.connect(addr).await?;
    let (t0, cpu0) = (Instant::now(), cpu_time());
    let mut sent = 0u64;
    while sent < size {
        let chunk = pat.chunk(sent, (size - sent).min(256 * 1024) as usize);
        sent += chunk.len() as u64;
        c.write_chunk(chunk).await.context("write")?;
    }
    c.shutdown().await.context("shutdown")?;
    rx.await??;
    Ok(transfer_sample(size, t0, cpu0, ", write_chunk/read_chunk"))
}

/// A raw UDP stack's transfer of `size` bytes; `None` for the others.
fn raw_udp(stack: Stack, pat: Pattern, size: u64) -> Option<impl Future<Output = Result<Sample>>> {
    let (gso, payload) = match stack {
        Stack::Udp1 => (false, udp::SMALL),
        Stack::UdpGso => (true, udp::SMALL),
        Stack::Udp64k => (false, udp::LARGE),
        _ => return None,
    };
    Some(udp::bulk(gso, payload, pat, size))
}

/// One stream through a relay that drops `loss` of the datagrams each way.
async fn lossy(stack: Stack, pat: Pattern, size: u64, loss: f64) -> Result<Sample> {
    let (server, client, addr) = endpoints(stack, 1).await?;
    let (relay_addr, _relay) = relay::relay(addr, loss, 7)?;
    let p = pat.clone();
    let rx = tokio::spawn(async move {
        let mut c = server.accept().await?;
        recv_verify(&mut c, &p, size).await
    });
    let mut c = client.connect(relay_addr).await?;
    let (t0, cpu0) = (Instant::now(), cpu_time());
    send_pattern(&mut c, &pat, size).await?;
    rx.await??;
    let (dt, cpu) = (t0.elapsed(), cpu_time() - cpu0);
    Ok(Sample {
        value: size as f64 / dt.as_secs_f64() / 1e6,
        cpu,
        bytes: size,
        detail: format!(
            "{:.2} s through a relay (one datagram per system call; its CPU counts)",
            dt.as_secs_f64()
        ),
    })
}

/// `n` connections on one socket each side, `per_conn` bytes each, all at
/// once. Connects go `parallel` at a time (bounded like a real client would
/// be, and below the listener's accept backlog).
async fn concurrent(
    stack: Stack,
    pat: Pattern,
    n: usize,
    per_conn: u64,
    parallel: usize,
    measure_idle: bool,
) -> Result<Sample> {
    let (server, client, addr) = endpoints(stack, n).await?;
    let rss0 = rss_bytes();
    let (t0, cpu0) = (Instant::now(), cpu_time());
    let server = Arc::new(server);
    let accepted = {
        let server = server.clone();
        tokio::spawn(async move {
            let mut conns = Vec::with_capacity(n);
            for _ in 0..n {
                conns.push(server.accept().await?);
            }
            anyhow::Ok(conns)
        })
    };
    let client = Arc::new(client);
    // librqbit-utp 0.7 fails concurrent connects from one socket (its
    // dispatcher dies: "DispatcherDead"); it connects one at a time.
    let parallel = if stack == Stack::Rqbit { 1 } else { parallel };
    let sem = Arc::new(tokio::sync::Semaphore::new(parallel));
    let mut connecting = Vec::with_capacity(n);
    for _ in 0..n {
        let (client, sem) = (client.clone(), sem.clone());
        connecting.push(tokio::spawn(async move {
            let _permit = sem.acquire().await?;
            client.connect(addr).await
        }));
    }
    let mut clients = Vec::with_capacity(n);
    for c in connecting {
        clients.push(c.await??);
    }
    let servers = accepted.await??;
    let established = t0.elapsed();
    let mut detail = format!(
        "{n} established in {:.2} s ({parallel} connects at a time)",
        established.as_secs_f64()
    );
    if measure_idle {
        // Let handshakes finish on both sides and buffers settle.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let per_end = rss_bytes().saturating_sub(rss0) as f64 / (2 * n) as f64;
        detail += &format!(", RSS {:.1} KiB per idle connection end", per_end / 1024.0);
    }
    let t1 = Instant::now();
    let mut tasks = Vec::with_capacity(2 * n);
    for mut c in servers {
        let p = pat.clone();
        tasks.push(tokio::spawn(async move {
            recv_verify(&mut c, &p, per_conn).await
        }));
    }
    for mut c in clients {
        let p = pat.clone();
        tasks.push(tokio::spawn(async move {
            send_pattern(&mut c, &p, per_conn).await
        }));
    }
    let mut failed = 0;
    let mut first_err = None;
    for t in tasks {
        if let Err(e) = t.await.map_err(anyhow::Error::from).and_then(|r| r) {
            failed += 1;
            first_err.get_or_insert(e);
        }
    }
    if let Some(e) = first_err {
        bail!("{failed} of {} transfers failed, first: {e:#}", 2 * n);
    }
    let dt = t1.elapsed();
    let total = per_conn * n as u64;
    detail += &format!(", all {n} bit-exact in {:.2} s", dt.as_secs_f64());
    Ok(Sample {
        value: total as f64 / dt.as_secs_f64() / 1e6,
        cpu: cpu_time() - cpu0,
        bytes: total,
        detail,
    })
}

/// One connection with a 64-byte echo server behind it, for ping-pong.
struct Pinger {
    conn: Conn,
    echo: tokio::task::JoinHandle<Result<()>>,
    /// The connecting side's socket, kept open while the connection is.
    _client: Client,
    round: u64,
}

impl Pinger {
    async fn new(stack: Stack) -> Result<Self> {
        let (server, client, addr) = endpoints(stack, 1).await?;
        let echo = tokio::spawn(async move {
            let mut c = server.accept().await?;
            let mut buf = [0u8; 64];
            loop {
                match c.read_exact(&mut buf).await {
                    Ok(_) => c.write_all(&buf).await?,
                    Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => break,
                    Err(e) => return Err(e.into()),
                }
            }
            c.shutdown().await?;
            anyhow::Ok(())
        });
        let conn = client.connect(addr).await?;
        Ok(Pinger {
            conn,
            echo,
            _client: client,
            round: 0,
        })
    }

    /// `n` exchanges, their round-trip times appended to `rtts`.
    async fn rounds(&mut self, n: usize, rtts: &mut Vec<Duration>) -> Result<()> {
        let mut msg = [0u8; 64];
        let mut back = [0u8; 64];
        for _ in 0..n {
            msg[..8].copy_from_slice(&self.round.to_le_bytes());
            let t = Instant::now();
            self.conn.write_all(&msg).await?;
            self.conn.read_exact(&mut back).await?;
            rtts.push(t.elapsed());
            ensure!(back == msg, "echo differs in round {}", self.round);
            self.round += 1;
        }
        Ok(())
    }

    async fn finish(mut self) -> Result<()> {
        self.conn.shutdown().await?;
        self.echo.await?
    }
}

/// Round trips per block in `pingpong`.
const PING_BLOCK: usize = 50;

/// Quiet time before each block in `pingpong`: longer than tokio-utp's
/// delayed ack (1 ms), so that no stack's timers fire during another's
/// turn. Without it the stacks steered each other's thread placement:
/// the idle tokio-utp connection's ack timer, firing during TCP's turn,
/// left TCP's round trips mostly fast (36% slow against our 54-64%); with
/// a 50 ms ack delay TCP's went 80-84% slow instead, and with a gap both
/// stay fast (1-4% slow). What is slow then is a block's first round
/// trip after idle CPUs (in 17-38% of blocks, either stack; tokio-utp's
/// next two as well until its first message after a pause stopped waking
/// the driver, see `Inner::driver_sleep` in tokio-utp).
const PING_GAP: Duration = Duration::from_millis(3);

/// 64-byte request/response exchanges, one connection per stack, `rounds`
/// per stack and run. The stacks take turns in blocks of [`PING_BLOCK`]
/// within each run, each after a quiet [`PING_GAP`], rather than whole
/// runs. On this machine a round trip is bimodal for every stack: about
/// 16 us when the kernel's scheduler runs the client thread and the
/// echoing worker on one CPU, about 55-60 us when it puts them on
/// different CPUs (waking the other, halted virtual CPU costs some 20 us
/// a hop). Which one it picks stays the same for stretches of a second or
/// so, so medians of whole runs per stack compared those stretches more
/// than the stacks. Each run's figure is the median round trip of that
/// run; the detail gives the share of slow round trips.
async fn pingpong(stacks: &[Stack], rounds: usize, runs: usize, watchdog: Duration) -> Vec<Row> {
    settle().await;
    let n = stacks.len();
    let mut status: Vec<String> = stacks.iter().map(|_| "ok".to_string()).collect();
    let mut pingers: Vec<Option<Pinger>> = Vec::with_capacity(n);
    let mut samples: Vec<Vec<Sample>> = stacks.iter().map(|_| Vec::new()).collect();
    for (i, &stack) in stacks.iter().enumerate() {
        // A few untimed rounds first: the first ones pay for wakeups and
        // caches.
        let setup = async {
            let mut p = Pinger::new(stack).await?;
            p.rounds(20, &mut Vec::new()).await?;
            anyhow::Ok(p)
        };
        pingers.push(match watched(watchdog, setup).await {
            Ok(p) => Some(p),
            Err(e) => {
                status[i] = e;
                None
            }
        });
    }
    for _ in 0..runs {
        let mut rtts: Vec<Vec<Duration>> = stacks.iter().map(|_| Vec::new()).collect();
        for block in 0..rounds.div_ceil(PING_BLOCK) {
            for k in 0..n {
                let i = (block + k) % n;
                let Some(p) = pingers[i].as_mut() else {
                    continue;
                };
                tokio::time::sleep(PING_GAP).await;
                if let Err(e) = watched(watchdog, p.rounds(PING_BLOCK, &mut rtts[i])).await {
                    status[i] = e;
                    pingers[i] = None;
                }
            }
        }
        for (i, mut rtts) in rtts.into_iter().enumerate() {
            if pingers[i].is_none() || rtts.is_empty() {
                continue;
            }
            rtts.sort();
            let q = |f: f64| rtts[((rtts.len() - 1) as f64 * f) as usize].as_secs_f64() * 1e6;
            // The share of round trips in the slow mode (see above): more
            // than twice the fastest tenth's.
            let slow = rtts
                .iter()
                .filter(|r| r.as_secs_f64() * 1e6 > 2.0 * q(0.1))
                .count();
            samples[i].push(Sample {
                value: q(0.5),
                cpu: Duration::ZERO,
                bytes: 0,
                detail: format!(
                    "p99 {:.0} us, max {:.0} us, {:.0}% slow",
                    q(0.99),
                    q(1.0),
                    100.0 * slow as f64 / rtts.len() as f64
                ),
            });
        }
    }
    for (i, p) in pingers.into_iter().enumerate() {
        if let Some(p) = p {
            if let Err(e) = watched(watchdog, p.finish()).await {
                status[i] = e;
            }
        }
    }
    stacks
        .iter()
        .zip(samples.into_iter().zip(status))
        .map(|(&stack, (samples, status))| {
            summarize("pingpong", stack, "us median", samples, status)
        })
        .collect()
}

/// `n` sequential connects, each closed right after.
async fn connects(stack: Stack, n: usize) -> Result<Sample> {
    let (server, client, addr) = endpoints(stack, 1).await?;
    let acceptor = tokio::spawn(async move {
        for _ in 0..n {
            drop(server.accept().await?);
        }
        anyhow::Ok(server)
    });
    let t0 = Instant::now();
    for _ in 0..n {
        drop(client.connect(addr).await?);
    }
    let dt = t0.elapsed();
    let _server = acceptor.await??;
    Ok(Sample {
        value: n as f64 / dt.as_secs_f64(),
        cpu: Duration::ZERO,
        bytes: 0,
        detail: format!("{n} in {:.2} s", dt.as_secs_f64()),
    })
}

/// `n` sequential connects from sockets of their own: tokio-utp's
/// `UtpStream::connect` (a new socket and driver each), TCP as in
/// `connects` (a socket per connection is all TCP has). Each is dropped
/// right after; tokio-utp's sockets stay open through TIME_WAIT, and the
/// detail gives the memory that costs per socket.
async fn connects_own(stack: Stack, n: usize) -> Result<Sample> {
    let Stack::Utp(_) = stack else {
        return connects(stack, n).await;
    };
    let listener = tokio_utp::UtpListener::bind(loopback()).await?;
    let addr = listener.local_addr()?;
    let acceptor = tokio::spawn(async move {
        for _ in 0..n {
            drop(listener.accept().await?);
        }
        anyhow::Ok(listener)
    });
    let rss0 = rss_bytes();
    let t0 = Instant::now();
    for _ in 0..n {
        let (stream, driver) = tokio_utp::UtpStream::connect(addr).await?;
        tokio::spawn(driver);
        drop(stream);
    }
    let dt = t0.elapsed();
    let per_socket = rss_bytes().saturating_sub(rss0) as f64 / n as f64;
    let _listener = acceptor.await??;
    Ok(Sample {
        value: n as f64 / dt.as_secs_f64(),
        cpu: Duration::ZERO,
        bytes: 0,
        detail: format!(
            "{n} in {:.2} s, RSS {:.1} KiB per socket left in TIME_WAIT",
            dt.as_secs_f64(),
            per_socket / 1024.0
        ),
    })
}

async fn run(args: Args) -> Result<Vec<Row>> {
    let quick = args.quick;
    let runs = args.runs.unwrap_or(if quick { 3 } else { 5 }).max(1);
    let size = args
        .size
        .unwrap_or(if quick { 128 << 20 } else { 256 << 20 });
    let watchdog = Duration::from_secs(args.timeout);
    let pat = Pattern::new();
    let want_case = |c: &str| args.cases.is_empty() || args.cases.iter().any(|x| x == c);
    let want = |s: Stack| args.stacks.is_empty() || args.stacks.iter().any(|x| x == s.key());
    // The connection-oriented stacks asked for (raw UDP has no connections).
    let connected: Vec<Stack> = [Stack::Utp(None), Stack::Tcp, Stack::Rqbit]
        .into_iter()
        .filter(|&s| want(s))
        .collect();
    let mut rows = Vec::new();
    let json = args.json;
    let mut record = |rs: Vec<Row>| {
        for r in rs {
            if !json {
                eprintln!(
                    "  {:<10} {:<26} {}",
                    r.case,
                    r.stack,
                    r.value
                        .map_or(r.status.clone(), |v| format!("{v:.1} {}", r.unit))
                );
            }
            rows.push(r);
        }
    };

    // First, while the heap is fresh: a reused heap would hide growth.
    if want_case("conc10k") {
        let n = if quick { 2_000 } else { 10_000 };
        // One stack at a time (no interleaving to gain from one round).
        for &s in &connected {
            let rs = measure("conc10k", &[s], "MB/s", (1, false), watchdog * 2, |s| {
                concurrent(s, pat.clone(), n_for(s, n), 4096, 64, true)
            })
            .await;
            record(rs);
        }
        // The memory of 10,000 connections has just been freed. On this
        // VM the host reclaims what the guest frees, and for a few seconds
        // after a release this large every copy across the loopback costs
        // about three times as much (raw UDP's 64 KiB stream right after:
        // 1,600 MB/s at 1.0 s/GiB; 5 s later, or alone: 4,300 MB/s at
        // 0.3 s/GiB). The next case is not measured in that.
        if !connected.is_empty() {
            tokio::time::sleep(Duration::from_secs(5)).await;
        }
    }
    if want_case("bulk") {
        let stacks = [
            Stack::Utp(None),
            Stack::Tcp,
            Stack::Rqbit,
            Stack::Udp1,
            Stack::UdpGso,
            Stack::Udp64k,
        ];
        let stacks: Vec<Stack> = stacks.into_iter().filter(|&s| want(s)).collect();
        let rs = measure("bulk", &stacks, "MB/s", (runs, true), watchdog, |s| {
            bulk(s, pat.clone(), size)
        })
        .await;
        record(rs);
    }
    if want_case("bulk-chunks") {
        let stacks: Vec<Stack> = [Stack::Utp(None), Stack::Tcp]
            .into_iter()
            .filter(|&s| want(s))
            .collect();
        let rs = measure(
            "bulk-chunks",
            &stacks,
            "MB/s",
            (runs, true),
            watchdog,
            |s| {
                let pat = pat.clone();
                async move {
                    match s {
                        Stack::Utp(_) => bulk_chunks(pat, size).await,
                        _ => bulk(s, pat, size).await,
                    }
                }
            },
        )
        .await;
        record(rs);
    }
    if want_case("bulk1400") && want(Stack::Utp(None)) {
        let rs = measure(
            "bulk1400",
            &[Stack::Utp(Some(1400))],
            "MB/s",
            (runs, true),
            watchdog,
            |s| bulk(s, pat.clone(), size),
        )
        .await;
        record(rs);
    }
    if want_case("conc100") {
        let per = if quick { 256 << 10 } else { 1 << 20 };
        // librqbit-utp's hundred connections linger after a run, and its
        // runs interleaved with the others slowed the next tokio-utp run by
        // a third (more involuntary context switches, same CPU per byte;
        // TCP, in the kernel, was not affected): it gets rounds of its own
        // after the others.
        let (mut others, rqbit): (Vec<Stack>, Vec<Stack>) =
            connected.iter().partition(|&&s| s != Stack::Rqbit);
        // The same bytes in 64 KiB datagrams, in the same rounds: on this
        // machine the cost of moving data between its two CPUs triples for
        // minutes at a time (TCP's 100 connections hardly feel it, one
        // stream does), and this row shows whether a run was in such a
        // phase.
        if want(Stack::Udp64k) && !others.is_empty() {
            others.push(Stack::Udp64k);
        }
        for group in [others, rqbit] {
            if group.is_empty() {
                continue;
            }
            let rs = measure("conc100", &group, "MB/s", (runs, true), watchdog, |s| {
                let pat = pat.clone();
                async move {
                    match raw_udp(s, pat.clone(), 100 * per) {
                        Some(one_stream) => one_stream.await,
                        None => concurrent(s, pat, 100, per, 100, false).await,
                    }
                }
            })
            .await;
            record(rs);
        }
    }
    if want_case("scaling") {
        // The same bytes spread over more and more connections on one
        // socket each side: how throughput and CPU per GiB change with the
        // connection count.
        let (counts, total): (&[usize], u64) = if quick {
            (&[1, 10, 100, 1_000], 16 << 20)
        } else {
            (&[1, 10, 100, 1_000, 10_000], 64 << 20)
        };
        let stacks: Vec<Stack> = [Stack::Utp(None), Stack::Tcp]
            .into_iter()
            .filter(|&s| want(s))
            .collect();
        for &n in counts {
            let per = (total / n as u64).max(4096);
            let case = format!("scale {n}");
            let rs = measure(
                &case,
                &stacks,
                "MB/s",
                (runs.min(3), false),
                watchdog,
                |s| concurrent(s, pat.clone(), n_for(s, n), per, n.min(64), false),
            )
            .await;
            record(rs);
        }
    }
    if want_case("loss") {
        // The relay forwards one datagram per system call, which caps the
        // rate: compare 0% with 1%, not with the loopback cases.
        let size = if quick { 16 << 20 } else { 64 << 20 };
        for s in [Stack::Utp(None), Stack::Rqbit]
            .into_iter()
            .filter(|&s| want(s))
        {
            for (case, loss) in [("relay 0%", 0.0), ("relay 1%", 0.01)] {
                let rs = measure(case, &[s], "MB/s", (runs, false), watchdog, |s| {
                    lossy(s, pat.clone(), size, loss)
                })
                .await;
                record(rs);
            }
        }
    }
    if want_case("pingpong") {
        let rounds = if quick { 1_000 } else { 5_000 };
        record(pingpong(&connected, rounds, runs, watchdog).await);
    }
    if want_case("connects") {
        let n = if quick { 300 } else { 1_000 };
        let rs = measure(
            "connects",
            &connected,
            "conn/s",
            (runs, true),
            watchdog,
            |s| connects(s, n),
        )
        .await;
        record(rs);
    }
    if want_case("connects-own") {
        let n = if quick { 300 } else { 1_000 };
        let stacks: Vec<Stack> = connected
            .iter()
            .copied()
            .filter(|&s| s != Stack::Rqbit)
            .collect();
        let rs = measure(
            "connects-own",
            &stacks,
            "conn/s",
            (runs, true),
            watchdog,
            |s| connects_own(s, n),
        )
        .await;
        record(rs);
    }
    Ok(rows)
}

fn print_table(rows: &[Row]) {
    println!(
        "{:<10} {:<26} {:>12} {:<10} {:>9} {:>11}  detail",
        "case", "stack", "value", "unit", "vs TCP", "CPU s/GiB"
    );
    for r in rows {
        let tcp = rows
            .iter()
            .find(|t| t.case == r.case && t.stack == Stack::Tcp.name())
            .and_then(|t| t.value);
        let ratio = match (r.value, tcp) {
            (Some(v), Some(t)) if t > 0.0 => format!("{:.2}x", v / t),
            _ => "-".into(),
        };
        let value = r.value.map_or("-".into(), |v| format!("{v:.1}"));
        let cpu = r.cpu_s_per_gib.map_or("-".into(), |c| format!("{c:.2}"));
        let detail = if r.status == "ok" {
            r.detail.clone()
        } else {
            r.status.to_uppercase()
        };
        println!(
            "{:<10} {:<26} {:>12} {:<10} {:>9} {:>11}  {}",
            r.case, r.stack, value, r.unit, ratio, cpu, detail
        );
    }
}

fn main() -> Result<()> {
    let args = Args::parse();
    let _ = UTP_TUNING.set(UtpTuning {
        payload: args.utp_payload,
        buffer: args.utp_buffer,
        socket_buffer: args.udp_buffer,
        peer_flight: args.utp_peer_flight,
    });
    let _ = APP_BUFFER.set(args.app_buffer);
    let _ = FD_LIMIT.set(raise_fd_limit());
    let json = args.json;
    let load = BackgroundLoad::start(args.background_load, args.background_nice)?;
    let rt = if args.current_thread {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()?
    };
    let rows = rt.block_on(run(args))?;
    // Background tasks (closing connections) are not waited for.
    rt.shutdown_background();
    drop(load);
    if json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
    } else {
        print_table(&rows);
    }
    let failed: Vec<&Row> = rows.iter().filter(|r| r.status != "ok").collect();
    eprintln!(
        "utp-bench: {} measurements, {} stalled or failed",
        rows.len(),
        failed.len()
    );
    // A reference failing is a finding; tokio-utp failing is an error.
    if failed.iter().any(|r| r.stack.starts_with("tokio-utp")) {
        bail!("tokio-utp did not complete every case");
    }
    Ok(())
}
