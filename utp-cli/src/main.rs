//! `utp`: netcat-style uTP `listen` / `connect`, and a loopback `demo`.
//!
//! stdout carries only the stream's bytes (or, for `demo`, the summary);
//! everything else goes to stderr.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use tokio_utp::Config;

mod demo;
mod pipe;
mod progress;
mod sim;
mod size;
mod soak;
mod stats;

#[derive(Debug, Parser)]
#[command(
    name = "utp",
    version,
    about = "uTP (BEP 29) from the command line: netcat-style listen/connect and a loopback demo",
    after_help = "Logging goes to stderr and is controlled by RUST_LOG (e.g. RUST_LOG=debug)."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Accept one connection on HOST:PORT; copy it to stdout and stdin to it.
    ///
    /// At stdin EOF our direction is closed (FIN) while reading goes on; at
    /// the peer's EOF stdout is closed; the command exits once both are done.
    /// Ctrl-C (SIGINT) or SIGTERM mid-transfer resets the connection (the
    /// peer fails at once) and exits 1.
    Listen {
        /// Local address to bind, e.g. 0.0.0.0:4000 or 127.0.0.1:4000.
        #[arg(value_name = "HOST:PORT")]
        addr: String,
        #[command(flatten)]
        opts: ConnOpts,
    },
    /// Connect to HOST:PORT; copy the connection to stdout and stdin to it.
    ///
    /// At stdin EOF our direction is closed (FIN) while reading goes on; at
    /// the peer's EOF stdout is closed; the command exits once both are done.
    /// Ctrl-C (SIGINT) or SIGTERM mid-transfer resets the connection (the
    /// peer fails at once) and exits 1.
    Connect {
        /// Address of a listening peer, e.g. 127.0.0.1:4000.
        #[arg(value_name = "HOST:PORT")]
        addr: String,
        #[command(flatten)]
        opts: ConnOpts,
    },
    /// Send seeded random data from a client to a server in this process
    /// over 127.0.0.1, verify it, and print throughput and statistics.
    Demo(DemoArgs),
    /// Run a congestion-control scenario in the deterministic network
    /// simulator (virtual time) and print its figures; `--plot` draws it.
    Sim(SimArgs),
    /// Many concurrent connections over loopback through an impairment
    /// relay (loss, duplication, reordering, delay, garbage), opened and
    /// closed continuously; every byte verified both ways. Exits non-zero
    /// on any corrupted or lost byte, failed stream, leaked connection or
    /// growing memory.
    Soak(SoakArgs),
}

/// Options shared by `listen` and `connect`.
#[derive(Debug, Args)]
pub struct ConnOpts {
    /// At exit, write connection statistics as a JSON object to FILE.
    #[arg(long, value_name = "FILE")]
    pub stats_json: Option<PathBuf>,
    #[command(flatten)]
    pub payload: PayloadOpts,
    /// No live status line on stderr.
    #[arg(short, long)]
    pub quiet: bool,
    /// Fail (exit 1) when nothing arrives from the peer for SECS seconds,
    /// e.g. because it crashed while we only receive. Our keep-alives go out
    /// every 29 s, libutp's too, so choose more than that against a live but
    /// idle peer. Default: wait for ever, like TCP without keep-alive.
    #[arg(long, value_name = "SECS", value_parser = parse_secs)]
    pub idle_timeout: Option<std::time::Duration>,
    /// Incoming connections whose initiator has not spoken since its SYN;
    /// SYNs beyond get a SYN cookie instead of state (default 1024). With 0
    /// every SYN gets one, which tries the cookies against a real peer.
    #[arg(long, value_name = "N")]
    pub max_half_open: Option<usize>,
}

impl ConnOpts {
    pub fn config(&self) -> Config {
        let mut config = self.payload.apply(Config::default());
        if let Some(t) = self.idle_timeout {
            config = config.idle_timeout(Some(t));
        }
        if let Some(n) = self.max_half_open {
            config = config.max_half_open(n);
        }
        config
    }
}

/// Seconds, fractional allowed, more than zero.
fn parse_secs(s: &str) -> Result<std::time::Duration, String> {
    let v: f64 = s.parse().map_err(|e| format!("{e}"))?;
    if !(v > 0.0 && v.is_finite()) {
        return Err("must be more than 0".into());
    }
    std::time::Duration::try_from_secs_f64(v).map_err(|e| e.to_string())
}

/// Packet size options (path MTU discovery).
#[derive(Debug, Args)]
pub struct PayloadOpts {
    /// Largest payload per packet in bytes: caps path MTU discovery
    /// (default: no cap beyond the route's MTU, up to 65487).
    #[arg(long, value_name = "N")]
    pub max_payload: Option<usize>,
    /// Turn path MTU discovery off: every packet carries the base payload.
    #[arg(long)]
    pub no_pmtud: bool,
    /// Starting payload of path MTU discovery, and the fixed payload with
    /// --no-pmtud (default 1212: a 1280-byte IP packet).
    #[arg(long, value_name = "N")]
    pub base_payload: Option<usize>,
}

impl PayloadOpts {
    pub fn apply(&self, mut config: Config) -> Config {
        if let Some(p) = self.max_payload {
            config = config.max_payload(p);
        }
        if let Some(p) = self.base_payload {
            config = config.base_payload(p);
        }
        config.pmtud(!self.no_pmtud)
    }
}

#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Bytes to transfer, e.g. 256MiB, 1GiB, 10MB, 1000000.
    #[arg(long, default_value = "256MiB", value_parser = size::parse_size)]
    pub size: u64,
    #[command(flatten)]
    pub payload: PayloadOpts,
    /// Seed of the random data (default: random).
    #[arg(long)]
    pub seed: Option<u64>,
    /// Write the client's connection statistics as JSON to FILE.
    #[arg(long, value_name = "FILE")]
    pub stats_json: Option<PathBuf>,
    /// No progress bar on stderr.
    #[arg(short, long)]
    pub quiet: bool,
}

#[derive(Debug, Args)]
pub struct SimArgs {
    /// Named scenario (see --list); without it, a custom one from the flags.
    #[arg(long)]
    pub scenario: Option<String>,
    /// List the named scenarios.
    #[arg(long)]
    pub list: bool,
    /// Seed (default: the scenario's).
    #[arg(long)]
    pub seed: Option<u64>,
    /// Override the simulated duration, in seconds.
    #[arg(long)]
    pub duration: Option<f64>,
    /// Write an SVG plot of window, queueing delay and throughput.
    #[arg(long, value_name = "FILE.svg")]
    pub plot: Option<PathBuf>,
    /// Print the figures and series as JSON.
    #[arg(long)]
    pub json: bool,
    /// Custom: bottleneck rate in Mbit/s.
    #[arg(long, default_value_t = 10.0)]
    pub rate: f64,
    /// Custom: one-way delay in ms.
    #[arg(long, default_value_t = 20.0)]
    pub delay: f64,
    /// Custom: bottleneck buffer in packets.
    #[arg(long, default_value_t = 300)]
    pub buffer: usize,
    /// Custom: random loss in percent.
    #[arg(long, default_value_t = 0.0)]
    pub loss: f64,
    /// Custom: jitter (order-keeping) in ms.
    #[arg(long, default_value_t = 0.0)]
    pub jitter: f64,
    /// Custom: number of uTP flows.
    #[arg(long, default_value_t = 1)]
    pub flows: usize,
    /// Custom: seconds between the starts of the uTP flows.
    #[arg(long, default_value_t = 0.0)]
    pub stagger: f64,
    /// Custom: number of Reno (loss-based) flows.
    #[arg(long, default_value_t = 0)]
    pub reno: usize,
    /// Custom: when the Reno flows start, in seconds.
    #[arg(long, default_value_t = 0.0)]
    pub reno_start: f64,
    /// Custom: when the Reno flows stop, in seconds.
    #[arg(long)]
    pub reno_stop: Option<f64>,
}

#[derive(Debug, Args)]
pub struct SoakArgs {
    /// How long to run, e.g. 10m, 60s, 1h.
    #[arg(long, default_value = "10m", value_parser = soak::parse_duration)]
    pub duration: std::time::Duration,
    /// Concurrent connections (each opens the next when it finishes).
    #[arg(long, default_value_t = 32)]
    pub connections: usize,
    /// Largest stream in bytes (each is uniform in 0..=N, echoed back).
    #[arg(long, default_value = "1MiB", value_parser = size::parse_size)]
    pub max_size: u64,
    /// Probability a datagram is lost.
    #[arg(long, default_value_t = 0.02)]
    pub loss: f64,
    /// Probability a datagram is duplicated.
    #[arg(long, default_value_t = 0.01)]
    pub dup: f64,
    /// Probability a datagram is delayed by up to --reorder-ms extra.
    #[arg(long, default_value_t = 0.05)]
    pub reorder: f64,
    /// Largest extra delay of a reordered datagram, in ms.
    #[arg(long, default_value_t = 20)]
    pub reorder_ms: u64,
    /// Delay of every datagram through the relay, in ms.
    #[arg(long, default_value_t = 2)]
    pub delay_ms: u64,
    /// A burst of garbage datagrams at both endpoints every N ms.
    #[arg(long, default_value_t = 500)]
    pub garbage_ms: u64,
    /// Seed of the data and the impairments (default: random).
    #[arg(long)]
    pub seed: Option<u64>,
}

fn init_logging() {
    use std::io::IsTerminal;
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    match &cli.command {
        Command::Listen { addr, opts } => pipe::run(pipe::Mode::Listen, addr, opts).await,
        Command::Connect { addr, opts } => pipe::run(pipe::Mode::Connect, addr, opts).await,
        Command::Demo(args) => demo::run(args).await,
        Command::Sim(args) => sim::run(args),
        Command::Soak(args) => soak::run(args).await,
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("utp: error: cannot start the tokio runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = rt.block_on(run(cli));
    // tokio's stdin reads on a blocking thread that cannot be cancelled;
    // don't wait for it (stdout was flushed already).
    rt.shutdown_background();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("utp: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
