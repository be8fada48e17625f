//! `utp soak`: many concurrent connections over loopback through a
//! userspace impairment relay (loss, duplication, reordering, delay and
//! bursts of garbage datagrams), opened and closed continuously. Every byte
//! is checked in both directions (the server verifies what it receives and
//! echoes it; the client verifies the echo); RSS and connection counts are
//! sampled; any corrupted or missing byte, failed stream, panic, leaked
//! connection or growing memory is a violation and a non-zero exit.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UdpSocket;
use tokio_utp::{Config, UtpListener, UtpSocket, UtpStream};

use crate::SoakArgs;

/// Parses durations like `90s`, `10m`, `1h`, `500ms` or plain seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, unit) = s
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .map_or((s, ""), |i| s.split_at(i));
    let v: f64 = num.parse().map_err(|_| format!("bad duration {s:?}"))?;
    let secs = match unit {
        "" | "s" => v,
        "ms" => v / 1000.0,
        "m" | "min" => v * 60.0,
        "h" => v * 3600.0,
        _ => return Err(format!("bad duration unit in {s:?} (use ms, s, m, h)")),
    };
    Duration::try_from_secs_f64(secs).map_err(|e| e.to_string())
}

/// The seeded byte stream of one connection (xorshift64*), produced in order.
struct Pattern {
    x: u64,
    word: [u8; 8],
    used: usize,
}

impl Pattern {
    fn new(seed: u64) -> Self {
        Self {
            x: seed | 1,
            word: [0; 8],
            used: 8,
        }
    }

    fn fill(&mut self, out: &mut [u8]) {
        for b in out {
            if self.used == 8 {
                self.x ^= self.x >> 12;
                self.x ^= self.x << 25;
                self.x ^= self.x >> 27;
                self.word = self.x.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes();
                self.used = 0;
            }
            *b = self.word[self.used];
            self.used += 1;
        }
    }

    /// Number of bytes of `got` that differ from the next bytes of the stream.
    fn mismatches(&mut self, got: &[u8], scratch: &mut Vec<u8>) -> u64 {
        scratch.resize(got.len(), 0);
        self.fill(scratch);
        got.iter()
            .zip(scratch.iter())
            .filter(|(a, b)| a != b)
            .count() as u64
    }
}

#[derive(Default)]
struct Counters {
    bytes_verified: AtomicU64,
    corrupted: AtomicU64,
    streams_ok: AtomicU64,
    streams_failed: AtomicU64,
    panics: AtomicU64,
    relay_lost: AtomicU64,
    /// Local ports of the relay's sockets (for their overflow counts).
    relay_ports: std::sync::Mutex<Vec<u16>>,
    relay_duplicated: AtomicU64,
    relay_delayed: AtomicU64,
    garbage_sent: AtomicU64,
    /// Connections the server accepted from the garbage source (a random
    /// datagram that happened to be a SYN); they must fail cleanly.
    garbage_conns: AtomicU64,
    /// Connects that timed out (the handshake never completed; no byte was
    /// at stake): not a violation, but printed.
    connects_failed: AtomicU64,
    /// Server-side halves of those: accepted, then nothing ever arrived.
    handshakes_abandoned: AtomicU64,
}

#[derive(Clone, Copy)]
struct Impairment {
    loss: f64,
    dup: f64,
    reorder: f64,
    delay: Duration,
    reorder_max: Duration,
}

/// Sends `data` to `to` through the impairment: maybe dropped, maybe twice,
/// after the base delay plus, sometimes, a random extra (reordering).
fn impaired_send(
    sock: &Arc<UdpSocket>,
    to: SocketAddr,
    data: &[u8],
    imp: Impairment,
    rng: &mut SmallRng,
    c: &Counters,
) {
    if rng.gen_bool(imp.loss) {
        c.relay_lost.fetch_add(1, Relaxed);
        return;
    }
    let copies = if rng.gen_bool(imp.dup) {
        c.relay_duplicated.fetch_add(1, Relaxed);
        2
    } else {
        1
    };
    for _ in 0..copies {
        let mut delay = imp.delay;
        if rng.gen_bool(imp.reorder) {
            c.relay_delayed.fetch_add(1, Relaxed);
            delay += imp.reorder_max.mul_f64(rng.gen::<f64>());
        }
        if delay.is_zero() {
            let _ = sock.try_send_to(data, to);
        } else {
            let sock = sock.clone();
            let data = data.to_vec();
            tokio::spawn(async move {
                tokio::time::sleep(delay).await;
                let _ = sock.send_to(&data, to).await;
            });
        }
    }
}

/// Receive and send buffer of the relay's sockets. The default (208 KiB)
/// holds three 64 KiB datagrams: with dozens of connections the relay's
/// queue overflowed all the time and dropped large datagrams far more often
/// than the loss asked for (a lone 64 KiB retransmission could be dropped
/// a dozen times running while small ones passed, for longer than the
/// idle timeout). 4 MiB is Linux's default `rmem_max`.
const RELAY_BUFFER: usize = 4 << 20;

/// A socket of the relay, on loopback, with [`RELAY_BUFFER`] (or what the
/// OS allows) and its port noted for the final report.
fn relay_socket(c: &Counters) -> Result<UdpSocket> {
    let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::DGRAM, None)?;
    // Best effort: a smaller buffer only means more drops, which are
    // counted and reported.
    let _ = s.set_recv_buffer_size(RELAY_BUFFER);
    let _ = s.set_send_buffer_size(RELAY_BUFFER);
    s.set_nonblocking(true)?;
    s.bind(&SocketAddr::from(([127, 0, 0, 1], 0)).into())?;
    let s = UdpSocket::from_std(s.into())?;
    c.relay_ports
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .push(s.local_addr()?.port());
    Ok(s)
}

/// Datagrams the kernel dropped on the relay's sockets because their
/// receive queue was full (from `/proc/net/udp`; `None` where unreadable).
fn relay_overflows(c: &Counters) -> Option<u64> {
    let ports = c
        .relay_ports
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    let table = std::fs::read_to_string("/proc/net/udp").ok()?;
    let mut drops = 0;
    for line in table.lines().skip(1) {
        let f: Vec<&str> = line.split_whitespace().collect();
        let port = f
            .get(1)
            .and_then(|a| a.rsplit(':').next())
            .and_then(|p| u16::from_str_radix(p, 16).ok());
        if port.is_some_and(|p| ports.contains(&p)) {
            drops += f.last().and_then(|d| d.parse::<u64>().ok()).unwrap_or(0);
        }
    }
    Some(drops)
}

/// The relay: clients talk to `front`; each client address gets its own
/// upstream socket towards `server`, so the server sees one address per
/// client, as with a real path.
async fn relay(
    front: Arc<UdpSocket>,
    server: SocketAddr,
    imp: Impairment,
    seed: u64,
    c: Arc<Counters>,
) -> Result<()> {
    let mut rng = SmallRng::seed_from_u64(seed);
    let mut upstream: HashMap<SocketAddr, Arc<UdpSocket>> = HashMap::new();
    let mut buf = vec![0u8; 65_536];
    loop {
        let (n, client) = front.recv_from(&mut buf).await?;
        let up = match upstream.get(&client) {
            Some(u) => u.clone(),
            None => {
                let u = Arc::new(relay_socket(&c)?);
                upstream.insert(client, u.clone());
                let (u2, front2, c2) = (u.clone(), front.clone(), c.clone());
                let seed2 = rng.gen();
                tokio::spawn(async move {
                    let mut rng = SmallRng::seed_from_u64(seed2);
                    let mut buf = vec![0u8; 65_536];
                    while let Ok((n, _)) = u2.recv_from(&mut buf).await {
                        impaired_send(&front2, client, &buf[..n], imp, &mut rng, &c2);
                    }
                });
                u
            }
        };
        impaired_send(&up, server, &buf[..n], imp, &mut rng, &c);
    }
}

/// Bursts of garbage at both endpoints from a third address: random bytes,
/// and random uTP-looking headers (version 1, any type, any id).
async fn garbage(
    sock: UdpSocket,
    targets: [SocketAddr; 2],
    every: Duration,
    seed: u64,
    stop: Arc<AtomicBool>,
    c: Arc<Counters>,
) -> Result<()> {
    let mut rng = SmallRng::seed_from_u64(seed);
    let mut buf = [0u8; 1500];
    while !stop.load(Relaxed) {
        tokio::time::sleep(every).await;
        for _ in 0..rng.gen_range(1..50) {
            let len = rng.gen_range(0..buf.len());
            rng.fill(&mut buf[..len]);
            if len >= 20 && rng.gen_bool(0.5) {
                buf[0] = (rng.gen_range(0..6u8) << 4) | 1;
                buf[1] = 0;
            }
            let to = targets[rng.gen_range(0..2)];
            if sock.send_to(&buf[..len], to).await.is_ok() {
                c.garbage_sent.fetch_add(1, Relaxed);
            }
        }
    }
    Ok(())
}

const CHUNK: usize = 64 * 1024;

/// Server side of one stream: a 16-byte header (length, seed), then exactly
/// `length` bytes of the seeded pattern, each echoed back, then EOF.
async fn serve(stream: UtpStream, c: Arc<Counters>) -> Result<()> {
    let (mut rd, mut wr) = stream.into_split();
    let r = serve_halves(&mut rd, &mut wr, &c).await;
    r.with_context(|| describe(&rd.stats()))
}

/// The connection's state at a failure, for the report: enough to tell a
/// stall (nothing in flight, a closed window) from a path that died.
fn describe(s: &tokio_utp::ConnectionStats) -> String {
    format!(
        "[sent {} B in {} packets ({} resent, {} timeouts, {} window probes), \
         received {} B in {} packets; in flight {} B, unacked {} B, \
         peer window {} B, cwnd {} B, rtt {:?}]",
        s.bytes_sent,
        s.packets_sent,
        s.packets_retransmitted,
        s.timeouts,
        s.zero_window_probes,
        s.bytes_received,
        s.packets_received,
        s.bytes_in_flight,
        s.bytes_unacked,
        s.peer_window,
        s.cwnd,
        s.rtt,
    )
}

async fn serve_halves(
    rd: &mut tokio_utp::OwnedReadHalf,
    wr: &mut tokio_utp::OwnedWriteHalf,
    c: &Counters,
) -> Result<()> {
    let mut hdr = [0u8; 16];
    let mut have = 0;
    while have < hdr.len() {
        match rd.read(&mut hdr[have..]).await {
            Ok(0) => bail!("server: EOF inside the header"),
            Ok(n) => have += n,
            Err(e) if have == 0 && e.kind() == std::io::ErrorKind::TimedOut => {
                // The initiator's handshake never completed (its connect
                // timed out too): nothing was sent, nothing lost.
                c.handshakes_abandoned.fetch_add(1, Relaxed);
                return Ok(());
            }
            Err(e) => return Err(e).context("reading header"),
        }
    }
    let len = u64::from_le_bytes(hdr[..8].try_into().expect("8"));
    let seed = u64::from_le_bytes(hdr[8..].try_into().expect("8"));
    let mut pat = Pattern::new(seed);
    let (mut buf, mut scratch) = (vec![0u8; CHUNK], Vec::new());
    let mut got = 0u64;
    loop {
        let n = rd.read(&mut buf).await.context("server read")?;
        if n == 0 {
            break;
        }
        if got + n as u64 > len {
            bail!("server: more bytes than announced");
        }
        let bad = pat.mismatches(&buf[..n], &mut scratch);
        c.corrupted.fetch_add(bad, Relaxed);
        c.bytes_verified.fetch_add(n as u64 - bad, Relaxed);
        got += n as u64;
        wr.write_all(&buf[..n]).await.context("server echo")?;
    }
    if got != len {
        bail!("server: EOF after {got} of {len} bytes");
    }
    wr.shutdown().await.context("server shutdown")?;
    Ok(())
}

/// Client side: sends header and pattern, closes its direction, and checks
/// the echo byte for byte. `Ok(false)`: the connect timed out.
async fn client(
    socket: &UtpSocket,
    target: SocketAddr,
    len: u64,
    seed: u64,
    c: &Counters,
) -> Result<bool> {
    let stream = match socket.connect(target).await {
        Ok(s) => s,
        Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {
            c.connects_failed.fetch_add(1, Relaxed);
            return Ok(false);
        }
        Err(e) => return Err(e).context("connect"),
    };
    let (mut rd, mut wr) = stream.into_split();
    let writer = async move {
        let mut hdr = [0u8; 16];
        hdr[..8].copy_from_slice(&len.to_le_bytes());
        hdr[8..].copy_from_slice(&seed.to_le_bytes());
        wr.write_all(&hdr).await?;
        let mut pat = Pattern::new(seed);
        let mut buf = vec![0u8; CHUNK];
        let mut left = len;
        while left > 0 {
            let n = left.min(CHUNK as u64) as usize;
            pat.fill(&mut buf[..n]);
            wr.write_all(&buf[..n]).await?;
            left -= n as u64;
        }
        wr.shutdown().await?;
        std::io::Result::Ok(wr)
    };
    let reader = async {
        let mut pat = Pattern::new(seed);
        let (mut buf, mut scratch) = (vec![0u8; CHUNK], Vec::new());
        let mut got = 0u64;
        loop {
            let n = rd.read(&mut buf).await?;
            if n == 0 {
                break;
            }
            let bad = pat.mismatches(&buf[..n], &mut scratch);
            c.corrupted.fetch_add(bad, Relaxed);
            c.bytes_verified.fetch_add(n as u64 - bad, Relaxed);
            got += n as u64;
        }
        std::io::Result::Ok(got)
    };
    let transfer = async {
        let (w, got) = tokio::try_join!(writer, reader).context("client transfer")?;
        drop(w);
        if got != len {
            bail!("client: echo ended after {got} of {len} bytes");
        }
        Ok(())
    };
    transfer.await.with_context(|| describe(&rd.stats()))?;
    Ok(true)
}

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

pub async fn run(args: &SoakArgs) -> Result<()> {
    let seed = args.seed.unwrap_or_else(rand::random);
    let imp = Impairment {
        loss: args.loss,
        dup: args.dup,
        reorder: args.reorder,
        delay: Duration::from_millis(args.delay_ms),
        reorder_max: Duration::from_millis(args.reorder_ms),
    };
    for p in [imp.loss, imp.dup, imp.reorder] {
        if !(0.0..=1.0).contains(&p) {
            bail!("probabilities must be within 0..=1");
        }
    }
    // Default settings plus an idle timeout: a random garbage datagram can
    // be a SYN, and a later one can carry that connection's id and so
    // complete its handshake; nobody is behind it, and only an idle
    // timeout frees a silent established peer (keep-alives are not
    // retransmitted). Real streams here are never idle that long.
    let cfg = Config::default().idle_timeout(Some(Duration::from_secs(15)));
    let listener = UtpListener::bind_with_config("127.0.0.1:0", cfg.clone())
        .await
        .context("binding the server")?;
    let server_addr = listener.local_addr()?;
    let server_sock = listener.socket().clone();
    let client_sock = UtpSocket::bind_with_config("127.0.0.1:0", cfg)
        .await
        .context("binding the client")?;
    let c = Arc::new(Counters::default());
    let front = Arc::new(relay_socket(&c)?);
    let relay_addr = front.local_addr()?;
    let stop = Arc::new(AtomicBool::new(false));
    println!(
        "utp soak: {} connections, {:?}, sizes up to {} bytes, seed {seed:#x}",
        args.connections, args.duration, args.max_size
    );
    println!(
        "  relay: loss {} dup {} reorder {} (up to {} ms) delay {} ms; garbage bursts every {} ms",
        imp.loss, imp.dup, imp.reorder, args.reorder_ms, args.delay_ms, args.garbage_ms
    );

    let relay_task = tokio::spawn(relay(front, server_addr, imp, seed ^ 0x5eed, c.clone()));
    let garbage_sock = UdpSocket::bind("127.0.0.1:0").await?;
    let garbage_addr = garbage_sock.local_addr()?;
    let garbage_task = tokio::spawn(garbage(
        garbage_sock,
        [server_addr, client_sock.local_addr()?],
        Duration::from_millis(args.garbage_ms.max(1)),
        seed ^ 0x9a4b,
        stop.clone(),
        c.clone(),
    ));
    let server_task = {
        let c = c.clone();
        tokio::spawn(async move {
            let mut conns = tokio::task::JoinSet::new();
            loop {
                tokio::select! {
                    r = listener.accept() => {
                        let Ok((s, peer)) = r else { break };
                        let c = c.clone();
                        if peer == garbage_addr {
                            // Nobody is behind it: it must time out.
                            c.garbage_conns.fetch_add(1, Relaxed);
                            conns.spawn(async move {
                                let mut s = s;
                                let mut b = [0u8; 16];
                                if s.read(&mut b).await.is_ok() {
                                    eprintln!("utp soak: a garbage connection did not fail");
                                    c.streams_failed.fetch_add(1, Relaxed);
                                }
                            });
                            continue;
                        }
                        conns.spawn(async move {
                            if let Err(e) = serve(s, c.clone()).await {
                                eprintln!("utp soak: server stream failed: {e:#}");
                                c.streams_failed.fetch_add(1, Relaxed);
                            }
                        });
                    }
                    Some(r) = conns.join_next() => {
                        if r.is_err() { c.panics.fetch_add(1, Relaxed); }
                    }
                }
            }
        })
    };

    let start = Instant::now();
    let deadline = start + args.duration;
    let mut workers = tokio::task::JoinSet::new();
    for w in 0..args.connections {
        let (sock, c, stop) = (client_sock.clone(), c.clone(), stop.clone());
        let max = args.max_size;
        let wseed = seed
            .wrapping_add(w as u64)
            .wrapping_mul(0x9e37_79b9_7f4a_7c15);
        workers.spawn(async move {
            let mut rng = SmallRng::seed_from_u64(wseed);
            while !stop.load(Relaxed) {
                let len = rng.gen_range(0..=max);
                match client(&sock, relay_addr, len, rng.gen(), &c).await {
                    Ok(true) => {
                        c.streams_ok.fetch_add(1, Relaxed);
                    }
                    Ok(false) => {}
                    Err(e) => {
                        eprintln!("utp soak: client stream failed: {e:#}");
                        c.streams_failed.fetch_add(1, Relaxed);
                    }
                }
            }
        });
    }

    // Sample while it runs: about 20 lines whatever the duration.
    let every = (args.duration / 20).max(Duration::from_secs(1));
    let mut samples: Vec<(Duration, u64)> = Vec::new();
    let line = |t: Duration, rss: u64| {
        println!(
            "  t={:>6.1}s  rss {:>7} KiB  verified {:>12} bytes  streams {:>6}  failed {}  corrupted {}  open {} + {}",
            t.as_secs_f64(),
            rss,
            c.bytes_verified.load(Relaxed),
            c.streams_ok.load(Relaxed),
            c.streams_failed.load(Relaxed),
            c.corrupted.load(Relaxed),
            client_sock.stats().connections_open,
            server_sock.stats().connections_open,
        );
    };
    while Instant::now() < deadline {
        tokio::time::sleep(every.min(deadline.saturating_duration_since(Instant::now()))).await;
        let (t, rss) = (start.elapsed(), rss_kib());
        samples.push((t, rss));
        line(t, rss);
    }
    stop.store(true, Relaxed);
    // Let the streams in progress finish.
    let finish = tokio::time::timeout(Duration::from_secs(120), async {
        while let Some(r) = workers.join_next().await {
            if r.is_err() {
                c.panics.fetch_add(1, Relaxed);
            }
        }
    })
    .await;
    let mut violations = Vec::new();
    if finish.is_err() {
        violations.push("streams still running 120 s after the end".to_string());
    }
    let _ = garbage_task.await;
    // Every connection must be forgotten once closed (TIME_WAIT is 10 s),
    // its TIME_WAIT record included.
    let settle = Instant::now() + Duration::from_secs(40);
    let tracked = |s: &UtpSocket| {
        let st = s.stats();
        st.connections_open + st.time_wait
    };
    let server_open = || tracked(&server_sock);
    while (tracked(&client_sock) > 0 || server_open() > 0) && Instant::now() < settle {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (cs, co, so) = (client_sock.stats(), tracked(&client_sock), server_open());
    line(start.elapsed(), rss_kib());
    let overflows = relay_overflows(&c);
    relay_task.abort();
    server_task.abort();

    let verified = c.bytes_verified.load(Relaxed);
    println!("  bytes verified     {verified}");
    println!("  corrupted bytes    {}", c.corrupted.load(Relaxed));
    println!("  streams completed  {}", c.streams_ok.load(Relaxed));
    println!("  streams failed     {}", c.streams_failed.load(Relaxed));
    println!(
        "  connects timed out {} (server halves abandoned: {}; no data at stake)",
        c.connects_failed.load(Relaxed),
        c.handshakes_abandoned.load(Relaxed)
    );
    println!(
        "  relay              {} lost, {} duplicated, {} delayed; {} garbage datagrams \
         ({} of them SYNs the server accepted, each failed cleanly)",
        c.relay_lost.load(Relaxed),
        c.relay_duplicated.load(Relaxed),
        c.relay_delayed.load(Relaxed),
        c.garbage_sent.load(Relaxed),
        c.garbage_conns.load(Relaxed)
    );
    if let Some(n) = overflows {
        println!("  relay overflows    {n} datagrams dropped by full relay socket queues");
    }
    println!("  client endpoint    {cs:?}");
    println!("  server endpoint    {:?}", server_sock.stats());
    println!("  connections left   client {co} server {so} (TIME_WAIT included)");
    if c.corrupted.load(Relaxed) > 0 {
        violations.push("corrupted bytes".into());
    }
    if c.streams_failed.load(Relaxed) > 0 {
        violations.push("failed streams (lost bytes)".into());
    }
    if c.panics.load(Relaxed) > 0 {
        violations.push("panicked tasks".into());
    }
    if co > 0 || so > 0 {
        violations.push(format!("connections left open: client {co} server {so}"));
    }
    if verified == 0 {
        violations.push("nothing was transferred".into());
    }
    // Flat memory: after the first quarter (warm-up), RSS may wobble but
    // not keep growing.
    let warm: Vec<u64> = samples
        .iter()
        .filter(|(t, _)| *t >= args.duration / 4)
        .map(|s| s.1)
        .collect();
    if let (Some(&first), Some(&max)) = (warm.first(), warm.iter().max()) {
        println!("  rss after warm-up  {first} KiB, max {max} KiB");
        if max > first + first / 2 + 32 * 1024 {
            violations.push(format!("RSS grew from {first} to {max} KiB after warm-up"));
        }
    }
    if violations.is_empty() {
        println!("soak OK");
        Ok(())
    } else {
        bail!("soak violations: {}", violations.join("; "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_with_units() {
        assert_eq!(parse_duration("10m"), Ok(Duration::from_secs(600)));
        assert_eq!(parse_duration("60s"), Ok(Duration::from_secs(60)));
        assert_eq!(parse_duration("90"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert!(parse_duration("5 days").is_err());
        assert!(parse_duration("").is_err());
    }

    #[test]
    fn pattern_is_the_same_however_it_is_split() {
        let mut whole = vec![0u8; 1000];
        Pattern::new(7).fill(&mut whole);
        let mut p = Pattern::new(7);
        let mut scratch = Vec::new();
        assert_eq!(p.mismatches(&whole[..3], &mut scratch), 0);
        assert_eq!(p.mismatches(&whole[3..], &mut scratch), 0);
        let mut q = Pattern::new(7);
        let mut bad = whole.clone();
        bad[500] ^= 1;
        assert_eq!(q.mismatches(&bad, &mut scratch), 1);
    }
}
