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
mod size;
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
    /// At stdin EOF our direction is closed (FIN) while reading goes on; the
    /// command exits once the peer has finished too.
    Listen {
        /// Local address to bind, e.g. 0.0.0.0:4000 or 127.0.0.1:4000.
        #[arg(value_name = "HOST:PORT")]
        addr: String,
        #[command(flatten)]
        opts: ConnOpts,
    },
    /// Connect to HOST:PORT; copy the connection to stdout and stdin to it.
    ///
    /// At stdin EOF our direction is closed (FIN) while reading goes on; the
    /// command exits once the peer has finished too.
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
}

impl ConnOpts {
    pub fn config(&self) -> Config {
        self.payload.apply(Config::default())
    }
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
