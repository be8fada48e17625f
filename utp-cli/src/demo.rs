//! `utp demo`: a loopback transfer of seeded random data, verified end to end.

use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use rand::rngs::SmallRng;
use rand::{RngCore, SeedableRng};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_utp::{Config, ConnectionStats, UtpListener, UtpSocket};

use crate::progress::stderr_is_live;
use crate::stats::StatsReport;
use crate::DemoArgs;

/// The data is generated, sent, received and checked in chunks of this size.
const CHUNK: usize = 256 * 1024;

/// The seeded byte stream both sides agree on, one `CHUNK` at a time (the
/// fixed chunk grid makes it independent of how the network splits it).
struct Generator {
    rng: SmallRng,
}

impl Generator {
    fn new(seed: u64) -> Self {
        Self {
            rng: SmallRng::seed_from_u64(seed),
        }
    }

    fn next_chunk(&mut self, buf: &mut [u8; CHUNK]) {
        self.rng.fill_bytes(buf);
    }
}

/// A fast 64-bit checksum over whole chunks (FxHash-style word mixing).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Checksum(u64);

impl Checksum {
    const K: u64 = 0x517c_c1b7_2722_0a95;

    fn new() -> Self {
        Self(0xcbf2_9ce4_8422_2325)
    }

    fn update(&mut self, data: &[u8]) {
        let mut h = self.0;
        let mut words = data.chunks_exact(8);
        for w in &mut words {
            let w = u64::from_le_bytes(w.try_into().expect("8 bytes"));
            h = (h.rotate_left(5) ^ w).wrapping_mul(Self::K);
        }
        for &b in words.remainder() {
            h = (h.rotate_left(5) ^ u64::from(b)).wrapping_mul(Self::K);
        }
        // Chunk length, so moving bytes between chunks changes the sum.
        self.0 = (h.rotate_left(5) ^ data.len() as u64).wrapping_mul(Self::K);
    }
}

struct ServerResult {
    bytes: u64,
    checksum: Checksum,
    done: Instant,
}

pub async fn run(args: &DemoArgs) -> Result<()> {
    let size = args.size;
    let seed = args.seed.unwrap_or_else(rand::random);
    let config = args.payload.apply(Config::default());

    let listener = UtpListener::bind_with_config("127.0.0.1:0", config.clone())
        .await
        .context("cannot bind the demo listener")?;
    let server_addr = listener.local_addr()?;
    let server = tokio::spawn(async move { serve(listener, seed).await });

    let socket = UtpSocket::bind_with_config("127.0.0.1:0", config)
        .await
        .context("cannot bind the demo client")?;
    let mut stream = socket
        .connect(server_addr)
        .await
        .with_context(|| format!("cannot connect to the demo listener at {server_addr}"))?;
    let start = Instant::now();

    let bar = if stderr_is_live(args.quiet) {
        let bar = ProgressBar::with_draw_target(Some(size), ProgressDrawTarget::stderr());
        bar.set_style(
            ProgressStyle::with_template(
                "{spinner} {elapsed:>3} [{wide_bar}] {bytes:>10}/{total_bytes} {binary_bytes_per_sec:>12} {msg}",
            )
            .expect("valid template")
            .progress_chars("=> "),
        );
        bar
    } else {
        ProgressBar::hidden()
    };

    let mut gen = Generator::new(seed);
    let mut sum = Checksum::new();
    let mut chunk = Box::new([0u8; CHUNK]);
    let mut remaining = size;
    let mut last_msg = Instant::now();
    while remaining > 0 {
        gen.next_chunk(&mut chunk);
        let n = remaining.min(CHUNK as u64) as usize;
        sum.update(&chunk[..n]);
        stream
            .write_all(&chunk[..n])
            .await
            .context("client: sending failed")?;
        remaining -= n as u64;
        bar.inc(n as u64);
        if !bar.is_hidden() && last_msg.elapsed() >= Duration::from_millis(250) {
            last_msg = Instant::now();
            let s = stream.stats();
            bar.set_message(format!(
                "rtt {} retx {}",
                fmt_rtt(&s),
                s.packets_retransmitted
            ));
        }
    }
    // FIN acknowledged means every byte was acknowledged too.
    stream
        .shutdown()
        .await
        .context("client: closing (FIN) failed")?;
    let client_stats = stream.stats();
    stream.close().await.context("client: close failed")?;
    bar.finish_and_clear();

    let srv = server
        .await
        .context("demo server task panicked")?
        .context("demo server failed")?;
    let elapsed = srv.done.duration_since(start);

    if srv.bytes != size {
        bail!("server received {} bytes, expected {size}", srv.bytes);
    }
    if srv.checksum != sum {
        bail!(
            "checksum mismatch: sent {:#018x}, received {:#018x}",
            sum.0,
            srv.checksum.0
        );
    }

    if let Some(path) = &args.stats_json {
        StatsReport::new(
            "demo-client",
            server_addr.to_string(),
            &client_stats,
            elapsed,
        )
        .write(path)?;
    }
    print_summary(size, elapsed, &client_stats, seed, sum);
    Ok(())
}

/// Accepts the client, reads to EOF and checks every chunk against the
/// regenerated seeded stream.
async fn serve(listener: UtpListener, seed: u64) -> Result<ServerResult> {
    let (mut stream, _) = listener.accept().await.context("server: accept failed")?;
    drop(listener);
    let mut gen = Generator::new(seed);
    let mut expected = Box::new([0u8; CHUNK]);
    let mut buf = vec![0u8; CHUNK];
    let mut sum = Checksum::new();
    let mut total = 0u64;
    let mut filled = 0;
    loop {
        let n = stream.read(&mut buf[filled..]).await.with_context(|| {
            format!(
                "server: receiving failed after {} bytes",
                total + filled as u64
            )
        })?;
        filled += n;
        if filled == CHUNK || (n == 0 && filled > 0) {
            gen.next_chunk(&mut expected);
            if buf[..filled] != expected[..filled] {
                let i = buf[..filled]
                    .iter()
                    .zip(expected.iter())
                    .position(|(a, b)| a != b)
                    .unwrap_or(0);
                bail!(
                    "checksum mismatch: received data differs from what was sent at byte offset {}",
                    total + i as u64
                );
            }
            sum.update(&buf[..filled]);
            total += filled as u64;
            filled = 0;
        }
        if n == 0 {
            break;
        }
    }
    let done = Instant::now();
    // Our own FIN; the client has released its stream by now, but its
    // endpoint still acknowledges. Don't let the demo hinge on it.
    match tokio::time::timeout(Duration::from_secs(5), stream.close()).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::warn!(error = %e, "server: close failed"),
        Err(_) => tracing::warn!("server: close timed out after 5 s"),
    }
    Ok(ServerResult {
        bytes: total,
        checksum: sum,
        done,
    })
}

fn fmt_rtt(s: &ConnectionStats) -> String {
    match s.rtt {
        Some(d) => format!("{:.3} ms", d.as_secs_f64() * 1e3),
        None => "n/a".to_string(),
    }
}

fn print_summary(size: u64, elapsed: Duration, s: &ConnectionStats, seed: u64, sum: Checksum) {
    let secs = elapsed.as_secs_f64().max(1e-9);
    let mb = size as f64 / 1e6 / secs;
    let mib = size as f64 / (1u64 << 20) as f64 / secs;
    println!("utp demo: client -> server over uTP on 127.0.0.1");
    println!(
        "  transferred     {size} bytes ({:.1} MiB) in {:.3} s",
        size as f64 / (1u64 << 20) as f64,
        elapsed.as_secs_f64()
    );
    println!("  throughput      {mb:.1} MB/s ({mib:.1} MiB/s)");
    println!(
        "  retransmitted   {} packets ({} timeouts, {} fast retransmits) of {} sent",
        s.packets_retransmitted, s.timeouts, s.fast_retransmits, s.packets_sent
    );
    println!("  rtt             {}", fmt_rtt(s));
    println!("  max cwnd        {} bytes", s.max_cwnd);
    println!(
        "  payload size    {} bytes (largest sent {}; path MTU probes {} sent, {} lost{})",
        s.payload_size,
        s.max_payload_sent,
        s.pmtud_probes,
        s.pmtud_probes_lost,
        match s.pmtud_search_time {
            Some(d) => format!("; search took {:.1} ms", d.as_secs_f64() * 1e3),
            None => String::new(),
        }
    );
    println!("  checksum OK     {:#018x} (seed {seed:#x})", sum.0);
}
