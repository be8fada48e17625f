//! `utp listen` / `utp connect`: netcat over uTP.
//!
//! Both directions run at once: the connection's bytes go to stdout and
//! stdin goes to the connection. At stdin EOF we send FIN (and wait for its
//! ack) but keep reading; at the peer's EOF our stdout is closed; we are
//! done once the peer's EOF was read and our FIN was acknowledged. SIGINT
//! or SIGTERM during the transfer aborts the connection (the peer gets a
//! RESET) and exits 1.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio_utp::{ConnectionStats, OwnedReadHalf, OwnedWriteHalf, UtpListener, UtpStream};

use crate::progress::{StatusLine, REFRESH};
use crate::stats::StatsReport;
use crate::ConnOpts;

/// Size of each read from stdin and from the connection.
const BUF: usize = 256 * 1024;

/// How long to wait for the ack of our FIN once the peer finished and all
/// our data was acknowledged (at least; 8 RTTs when that is longer).
const FIN_GRACE: Duration = Duration::from_secs(3);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Listen,
    Connect,
}

pub async fn run(mode: Mode, addr: &str, opts: &ConnOpts) -> Result<()> {
    let config = opts.config();
    let status = StatusLine::new(opts.quiet);
    let (stream, role) = match mode {
        Mode::Listen => {
            let listener = UtpListener::bind_with_config(addr, config)
                .await
                .with_context(|| format!("cannot listen on {addr}"))?;
            let local = listener.local_addr()?;
            tracing::info!(%local, "listening");
            status.message(format!("listening on {local}"));
            let (stream, peer) = listener.accept().await.context("accept failed")?;
            tracing::info!(%peer, "accepted");
            // One connection only: later SYNs are refused.
            drop(listener);
            (stream, "listen")
        }
        Mode::Connect => {
            status.message(format!("connecting to {addr}"));
            let (stream, driver) = UtpStream::connect_with_config(addr, config)
                .await
                .with_context(|| format!("cannot connect to {addr}"))?;
            tokio::spawn(driver);
            tracing::info!(peer = %stream.peer_addr()?, "connected");
            (stream, "connect")
        }
    };
    let peer = stream.peer_addr()?;
    status.message(format!("connected to {peer}"));

    let start = Instant::now();
    let (mut rd, mut wr) = stream.into_split();
    let peer_eof = AtomicBool::new(false);
    let (result, signal) = {
        let transfer = async {
            tokio::try_join!(
                stdin_to_conn(&mut wr, &status, &peer_eof, opts.quiet),
                conn_to_stdout(&mut rd, &status, &peer_eof),
            )
            .map(|_| ())
        };
        // From the transfer's start (the first poll registers the
        // handlers) SIGINT and SIGTERM no longer kill the process outright:
        // they reset the connection first.
        tokio::select! {
            r = transfer => (r, None),
            signal = interrupted() => (Ok(()), Some(signal)),
        }
    };
    // Stats before the halves go away.
    let stats = rd.stats();
    let elapsed = start.elapsed();
    let result = match signal {
        None => result,
        Some(signal) => {
            // Killed mid-transfer, there is no kernel to tell the peer: a
            // RESET does, at once, where it would otherwise wait for its
            // timeout (a FIN would claim that everything was sent).
            if let Ok(stream) = rd.reunite(wr) {
                stream.abort();
            }
            // The RESET leaves from the abort itself unless the driver was
            // sending at that moment; give it a turn before the process ends.
            tokio::time::sleep(Duration::from_millis(20)).await;
            Err(anyhow::anyhow!("interrupted by {signal}: connection reset"))
        }
    };
    let written = match &opts.stats_json {
        Some(path) => StatsReport::new(role, peer.to_string(), &stats, elapsed).write(path),
        None => Ok(()),
    };
    match result {
        Ok(_) => {
            status.finish(&stats, elapsed);
            written
        }
        Err(e) => {
            status.abandon();
            // The connection's error matters more than the stats file's.
            Err(e)
        }
    }
}

/// Resolves with the signal's name on SIGINT (Ctrl-C) or, on Unix, SIGTERM;
/// never if the handlers cannot be installed (the default actions stay).
async fn interrupted() -> &'static str {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match (
            signal(SignalKind::interrupt()),
            signal(SignalKind::terminate()),
        ) {
            (Ok(mut int), Ok(mut term)) => tokio::select! {
                _ = int.recv() => "SIGINT",
                _ = term.recv() => "SIGTERM",
            },
            _ => std::future::pending().await,
        }
    }
    #[cfg(not(unix))]
    {
        match tokio::signal::ctrl_c().await {
            Ok(()) => "Ctrl-C",
            Err(_) => std::future::pending().await,
        }
    }
}

/// stdin -> connection, then FIN (waiting for its ack).
async fn stdin_to_conn(
    wr: &mut OwnedWriteHalf,
    status: &StatusLine,
    peer_eof: &AtomicBool,
    quiet: bool,
) -> Result<()> {
    let mut stdin = tokio::io::stdin();
    let mut buf = vec![0u8; BUF];
    let written = copy_ticking(&mut stdin, wr, &mut buf, status, |_, w| w.stats())
        .await
        .map_err(|e| match e {
            CopyError::Read(e) => anyhow::Error::new(e).context("reading stdin"),
            CopyError::Write(e) => anyhow::Error::new(e).context("sending"),
        })?;
    tracing::info!(written, "stdin finished, sending FIN");
    wait_fin_acked(wr, status, peer_eof, written, quiet).await
}

/// Sends our FIN and waits for its acknowledgement.
///
/// One exception to waiting: when the peer has already finished (we read its
/// EOF) and every byte we sent was acknowledged, a missing FIN ack most
/// likely means the peer exited right after its last packet (there is no
/// kernel TIME-WAIT to answer for it) or the final ack was lost. After a
/// grace period we then stop waiting and succeed with a warning instead of
/// retransmitting into the void until the timeout.
async fn wait_fin_acked(
    wr: &mut OwnedWriteHalf,
    status: &StatusLine,
    peer_eof: &AtomicBool,
    written: u64,
    quiet: bool,
) -> Result<()> {
    let mut tick = tokio::time::interval(REFRESH);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut grace_since: Option<Instant> = None;
    loop {
        tokio::select! {
            r = wr.shutdown() => {
                r.context("closing our direction (FIN)")?;
                tracing::info!("our FIN was acknowledged");
                return Ok(());
            }
            _ = tick.tick() => {
                status.update(|| wr.stats());
                if !peer_eof.load(Ordering::Acquire) {
                    continue;
                }
                let s = wr.stats();
                let all_acked = s.bytes_sent == written && s.bytes_unacked == 0;
                if !all_acked {
                    grace_since = None;
                    continue;
                }
                let since = *grace_since.get_or_insert_with(Instant::now);
                let grace = FIN_GRACE.max(s.rtt.unwrap_or_default() * 8);
                if since.elapsed() >= grace {
                    if !quiet {
                        eprintln!(
                            "utp: warning: the peer finished but did not acknowledge our FIN \
                             within {:.1} s (all our data was acknowledged); exiting",
                            grace.as_secs_f64()
                        );
                    }
                    return Ok(());
                }
            }
        }
    }
}

/// connection -> stdout, until the peer's FIN.
async fn conn_to_stdout(
    rd: &mut OwnedReadHalf,
    status: &StatusLine,
    peer_eof: &AtomicBool,
) -> Result<()> {
    let mut stdout = tokio::io::stdout();
    let mut buf = vec![0u8; BUF];
    let res = copy_ticking(rd, &mut stdout, &mut buf, status, |r, _| r.stats()).await;
    // Whatever arrived goes out, even when the connection failed.
    let flushed = stdout.flush().await;
    res.map_err(|e| match e {
        CopyError::Read(e) => anyhow::Error::new(e).context("receiving"),
        CopyError::Write(e) => anyhow::Error::new(e).context("writing stdout"),
    })?;
    flushed.context("writing stdout")?;
    drop(stdout);
    end_stdout();
    peer_eof.store(true, Ordering::Release);
    tracing::info!("peer finished sending");
    Ok(())
}

/// Closes our stdout once the peer's stream ended, so that a program
/// reading it sees EOF then, not only when we exit (which waits for our
/// stdin to end as well), as `socat` does; a script speaking a protocol
/// through us learns that way that the peer closed. Descriptor 1 is pointed
/// at /dev/null rather than closed, so no file opened later takes its
/// number.
fn end_stdout() {
    #[cfg(unix)]
    if let Ok(null) = std::fs::OpenOptions::new().write(true).open("/dev/null") {
        use std::os::fd::AsRawFd;
        // SAFETY: both descriptors are open; dup2 replaces descriptor 1
        // atomically, and nothing writes to stdout any more (the copy
        // above flushed it and its handle is gone).
        unsafe { libc::dup2(null.as_raw_fd(), libc::STDOUT_FILENO) };
    }
}

enum CopyError {
    Read(std::io::Error),
    Write(std::io::Error),
}

/// Copies `src` to `dst` until EOF, refreshing the status line from `stats`
/// of whichever side is the connection, also while waiting. Reads and single writes are cancel-safe, so racing them
/// with a timer loses nothing.
async fn copy_ticking<R, W>(
    src: &mut R,
    dst: &mut W,
    buf: &mut [u8],
    status: &StatusLine,
    stats: impl Fn(&R, &W) -> ConnectionStats,
) -> Result<u64, CopyError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut tick = tokio::time::interval(REFRESH);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let live = !status.is_hidden();
    let mut total = 0u64;
    loop {
        let n = if live {
            tokio::select! {
                r = src.read(buf) => r.map_err(CopyError::Read)?,
                _ = tick.tick() => {
                    status.update(|| stats(src, dst));
                    continue;
                }
            }
        } else {
            src.read(buf).await.map_err(CopyError::Read)?
        };
        if n == 0 {
            return Ok(total);
        }
        let mut data = &buf[..n];
        while !data.is_empty() {
            let w = if live {
                tokio::select! {
                    r = dst.write(data) => r.map_err(CopyError::Write)?,
                    _ = tick.tick() => {
                        status.update(|| stats(src, dst));
                        continue;
                    }
                }
            } else {
                dst.write(data).await.map_err(CopyError::Write)?
            };
            if w == 0 {
                return Err(CopyError::Write(std::io::ErrorKind::WriteZero.into()));
            }
            data = &data[w..];
        }
        // Interactive peers (request/response) need every chunk delivered
        // now: std's stdout is line-buffered and binary data has no lines.
        dst.flush().await.map_err(CopyError::Write)?;
        total += n as u64;
        status.update(|| stats(src, dst));
    }
}
