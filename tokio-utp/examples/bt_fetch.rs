//! Download a torrent from one BitTorrent peer over uTP: the peer wire
//! protocol (BEP 3) on top of a `UtpStream`, with every piece's SHA-1 checked.
//!
//! Written to test interoperability with libtorrent
//! (`interop/libtorrent/run.py` drives it), but it works with any peer that
//! seeds a v1 torrent over uTP and needs no extensions:
//!
//! ```text
//! bt_fetch connect HOST:PORT INFO_HASH_HEX PIECE_HASHES_FILE PIECE_LEN TOTAL_LEN [OUT_FILE] [OPTIONS]
//! bt_fetch listen  HOST:PORT INFO_HASH_HEX PIECE_HASHES_FILE PIECE_LEN TOTAL_LEN [OUT_FILE] [OPTIONS]
//!
//! PIECE_HASHES_FILE  the 20-byte SHA-1 digests of all pieces, concatenated
//! --pipeline N       16 KiB requests kept outstanding (default 64)
//! --stats            print the connection's counters (packets sent/received, ...)
//! --end close        after the download we close first (default): close() must
//!                    return Ok, i.e. our FIN was acknowledged
//! --end have         announce every piece with HAVE, so that both sides are
//!                    seeds and the peer closes first; expect a clean EOF, then close
//! --end eof          wait for the peer to close (e.g. its torrent is paused by
//!                    whoever drives the test); expect a clean EOF, then close
//! --end abort        abort the connection after the download (a RESET, no FIN)
//! --timeout SECS     give up after this long (default 300)
//! ```
//!
//! `listen` accepts one connection (port 0 picks a free one) and prints
//! `listening ADDR` first. Progress goes to stdout as one line per event;
//! the exit status is 0 only if the download verified and the connection
//! closed cleanly.

use std::io::{Seek, SeekFrom, Write};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader};
use tokio_utp::{ConnectionStats, UtpListener, UtpStream};

const BLOCK: u64 = 16 * 1024;
const USAGE: &str = "usage: bt_fetch {connect|listen} HOST:PORT INFO_HASH_HEX PIECE_HASHES_FILE \
                     PIECE_LEN TOTAL_LEN [OUT_FILE] [--pipeline N] [--stats] \
                     [--end close|have|eof|abort] [--timeout SECS]";

// Peer wire message ids.
const CHOKE: u8 = 0;
const UNCHOKE: u8 = 1;
const INTERESTED: u8 = 2;
const HAVE: u8 = 4;
const REQUEST: u8 = 6;
const PIECE: u8 = 7;

#[derive(Clone, Copy, PartialEq, Eq)]
enum End {
    Close,
    Have,
    Eof,
    Abort,
}

struct Args {
    listen: bool,
    addr: String,
    info_hash: [u8; 20],
    hashes: Vec<[u8; 20]>,
    piece_len: u64,
    total_len: u64,
    out: Option<String>,
    pipeline: usize,
    stats: bool,
    end: End,
    timeout: Duration,
}

fn parse_args() -> Result<Args> {
    let mut positional = Vec::new();
    let mut pipeline = 64;
    let mut stats = false;
    let mut end = End::Close;
    let mut timeout = Duration::from_secs(300);
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        match a.as_str() {
            "--pipeline" => {
                pipeline = it.next().context("--pipeline N")?.parse()?;
                if pipeline == 0 {
                    bail!("--pipeline must be at least 1");
                }
            }
            "--stats" => stats = true,
            "--end" => {
                end = match it.next().as_deref() {
                    Some("close") => End::Close,
                    Some("have") => End::Have,
                    Some("eof") => End::Eof,
                    Some("abort") => End::Abort,
                    _ => bail!("--end close|have|eof|abort"),
                }
            }
            "--timeout" => {
                timeout = Duration::from_secs_f64(it.next().context("--timeout SECS")?.parse()?)
            }
            "-h" | "--help" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            s if s.starts_with("--") => bail!("unknown option {s}"),
            _ => positional.push(a),
        }
    }
    if !(6..=7).contains(&positional.len()) {
        bail!("wrong number of arguments");
    }
    let listen = match positional[0].as_str() {
        "connect" => false,
        "listen" => true,
        m => bail!("unknown mode {m}"),
    };
    let info_hash = parse_hex20(&positional[2]).context("INFO_HASH_HEX: 40 hex digits")?;
    let raw =
        std::fs::read(&positional[3]).with_context(|| format!("reading {}", positional[3]))?;
    if !raw.len().is_multiple_of(20) {
        bail!(
            "{}: length {} is not a multiple of 20",
            positional[3],
            raw.len()
        );
    }
    let hashes: Vec<[u8; 20]> = raw
        .chunks_exact(20)
        .map(|c| c.try_into().unwrap())
        .collect();
    let piece_len: u64 = positional[4].parse().context("PIECE_LEN")?;
    let total_len: u64 = positional[5].parse().context("TOTAL_LEN")?;
    if piece_len == 0 || !piece_len.is_multiple_of(BLOCK) {
        bail!("PIECE_LEN must be a positive multiple of {BLOCK}");
    }
    if total_len == 0 || total_len.div_ceil(piece_len) != hashes.len() as u64 {
        bail!(
            "TOTAL_LEN {total_len} / PIECE_LEN {piece_len} does not match {} piece hashes",
            hashes.len()
        );
    }
    Ok(Args {
        listen,
        addr: positional[1].clone(),
        info_hash,
        hashes,
        piece_len,
        total_len,
        out: positional.get(6).cloned(),
        pipeline,
        stats,
        end,
        timeout,
    })
}

fn parse_hex20(s: &str) -> Result<[u8; 20]> {
    if s.len() != 40 || !s.is_ascii() {
        bail!("not 40 hex digits: {s}");
    }
    let mut out = [0u8; 20];
    for (i, b) in out.iter_mut().enumerate() {
        *b = u8::from_str_radix(&s[2 * i..2 * i + 2], 16)?;
    }
    Ok(out)
}

fn say(line: impl AsRef<str>) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{}", line.as_ref());
    let _ = out.flush();
}

fn stats_line(s: &ConnectionStats) -> String {
    format!(
        "stats packets_sent={} packets_received={} bytes_sent={} bytes_received={} \
         retransmitted={} timeouts={} duplicates_received={} max_payload_sent={} \
         payload_size={} max_cwnd={} rtt_ms={} peer_close_reason={}",
        s.packets_sent,
        s.packets_received,
        s.bytes_sent,
        s.bytes_received,
        s.packets_retransmitted,
        s.timeouts,
        s.duplicates_received,
        s.max_payload_sent,
        s.payload_size,
        s.max_cwnd,
        s.rtt
            .map_or("none".into(), |d| format!("{:.3}", d.as_secs_f64() * 1e3)),
        s.peer_close_reason.map_or("none".into(), |r| r.to_string()),
    )
}

fn io_err(what: &str, e: std::io::Error) -> anyhow::Error {
    anyhow!("{what}: {:?}: {e}", e.kind())
}

/// Reads one length-prefixed message; `None` for a keep-alive.
async fn read_message(rd: &mut BufReader<UtpStream>) -> Result<Option<(u8, Vec<u8>)>> {
    let len = rd
        .read_u32()
        .await
        .map_err(|e| io_err("reading message", e))?;
    if len == 0 {
        return Ok(None);
    }
    if len > 1 << 20 {
        bail!("message of {len} bytes");
    }
    let mut body = vec![0u8; len as usize];
    rd.read_exact(&mut body)
        .await
        .map_err(|e| io_err("reading message", e))?;
    let id = body.remove(0);
    Ok(Some((id, body)))
}

struct Piece {
    data: Vec<u8>,
    got: u64,
}

async fn run(args: Args) -> Result<()> {
    let piece_size = |i: u64| args.piece_len.min(args.total_len - i * args.piece_len);

    // --- Connect or accept ------------------------------------------------
    let mut _listener = None;
    let stream = if args.listen {
        let listener = UtpListener::bind(args.addr.as_str())
            .await
            .map_err(|e| io_err("bind", e))?;
        say(format!("listening {}", listener.local_addr()?));
        let (stream, peer) = listener.accept().await.map_err(|e| io_err("accept", e))?;
        say(format!("accepted {peer}"));
        _listener = Some(listener);
        stream
    } else {
        let (stream, driver) = UtpStream::connect(args.addr.as_str())
            .await
            .map_err(|e| io_err("connect", e))?;
        tokio::spawn(driver);
        say(format!("connected {}", stream.peer_addr()?));
        stream
    };
    let mut rd = BufReader::with_capacity(256 * 1024, stream);

    // --- Handshake ----------------------------------------------------------
    let mut hs = Vec::with_capacity(68);
    hs.push(19u8);
    hs.extend_from_slice(b"BitTorrent protocol");
    hs.extend_from_slice(&[0u8; 8]);
    hs.extend_from_slice(&args.info_hash);
    hs.extend_from_slice(b"-TU0001-");
    hs.extend_from_slice(&rand::random::<[u8; 12]>());
    // Interested goes right behind the handshake.
    hs.extend_from_slice(&[0, 0, 0, 1, INTERESTED]);
    rd.get_mut()
        .write_all(&hs)
        .await
        .map_err(|e| io_err("sending handshake", e))?;
    let mut theirs = [0u8; 68];
    rd.read_exact(&mut theirs)
        .await
        .map_err(|e| io_err("reading handshake", e))?;
    if &theirs[..20] != b"\x13BitTorrent protocol" {
        bail!("not a BitTorrent handshake: {:02x?}", &theirs[..20]);
    }
    if theirs[28..48] != args.info_hash {
        bail!(
            "peer greeted with info hash {} (v2 hash of a hybrid torrent?)",
            hex(&theirs[28..48])
        );
    }
    say(format!(
        "handshake reserved={} peer_id={}",
        hex(&theirs[20..28]),
        String::from_utf8_lossy(&theirs[48..56])
    ));

    // --- Wait for unchoke ---------------------------------------------------
    loop {
        match read_message(&mut rd).await? {
            Some((UNCHOKE, _)) => break,
            Some((PIECE, _)) => bail!("piece before any request"),
            _ => {}
        }
    }
    say("unchoked");

    // --- Pipelined download ---------------------------------------------------
    let start = Instant::now();
    let num_pieces = args.hashes.len() as u64;
    let mut out = match &args.out {
        Some(p) => {
            let f = std::fs::File::create(p).with_context(|| format!("creating {p}"))?;
            f.set_len(args.total_len)?;
            Some(f)
        }
        None => None,
    };
    let mut pieces: Vec<Option<Piece>> = (0..num_pieces).map(|_| None).collect();
    // Next block to request, as (piece, offset).
    let (mut next_piece, mut next_off) = (0u64, 0u64);
    let mut outstanding = 0usize;
    let mut verified = 0u64;
    let mut bytes = 0u64;
    let refill = args.pipeline.div_ceil(8);
    while verified < num_pieces {
        if next_piece < num_pieces && outstanding + refill <= args.pipeline.max(refill) {
            let mut batch = Vec::new();
            while next_piece < num_pieces && outstanding < args.pipeline {
                let plen = piece_size(next_piece);
                let len = BLOCK.min(plen - next_off);
                batch.extend_from_slice(&13u32.to_be_bytes());
                batch.push(REQUEST);
                batch.extend_from_slice(&(next_piece as u32).to_be_bytes());
                batch.extend_from_slice(&(next_off as u32).to_be_bytes());
                batch.extend_from_slice(&(len as u32).to_be_bytes());
                outstanding += 1;
                next_off += len;
                if next_off == plen {
                    next_piece += 1;
                    next_off = 0;
                }
            }
            rd.get_mut()
                .write_all(&batch)
                .await
                .map_err(|e| io_err("sending requests", e))?;
        }
        let Some((id, body)) = read_message(&mut rd).await? else {
            continue;
        };
        match id {
            PIECE => {
                if body.len() < 8 {
                    bail!("short piece message");
                }
                let idx = u32::from_be_bytes(body[0..4].try_into().unwrap()) as u64;
                let begin = u32::from_be_bytes(body[4..8].try_into().unwrap()) as u64;
                let block = &body[8..];
                if idx >= num_pieces || begin + block.len() as u64 > piece_size(idx) {
                    bail!("piece {idx} block at {begin}+{} out of range", block.len());
                }
                outstanding = outstanding.saturating_sub(1);
                let plen = piece_size(idx);
                let p = pieces[idx as usize].get_or_insert_with(|| Piece {
                    data: vec![0; plen as usize],
                    got: 0,
                });
                p.data[begin as usize..begin as usize + block.len()].copy_from_slice(block);
                p.got += block.len() as u64;
                bytes += block.len() as u64;
                if p.got == plen {
                    let p = pieces[idx as usize].take().unwrap();
                    let digest = sha1_smol::Sha1::from(&p.data).digest().bytes();
                    if digest != args.hashes[idx as usize] {
                        bail!("piece {idx} fails its SHA-1");
                    }
                    if let Some(f) = out.as_mut() {
                        f.seek(SeekFrom::Start(idx * args.piece_len))?;
                        f.write_all(&p.data)?;
                    }
                    verified += 1;
                }
            }
            CHOKE => bail!("choked mid-transfer after {bytes} bytes"),
            _ => {}
        }
    }
    let secs = start.elapsed().as_secs_f64();
    say(format!(
        "fetched {bytes} bytes in {num_pieces} pieces, SHA-1 verified, {secs:.3} s, {:.1} MB/s",
        bytes as f64 / 1e6 / secs.max(1e-9)
    ));
    if let Some(f) = out.take() {
        f.sync_all()?;
    }

    // --- Close ----------------------------------------------------------------
    if args.end == End::Abort {
        if args.stats {
            say(stats_line(&rd.get_ref().stats()));
        }
        rd.into_inner().abort();
        say("aborted");
        // The RESET left from the abort itself; the driver gets a moment
        // for anything it held (and to answer what the peer still sends).
        tokio::time::sleep(Duration::from_millis(200)).await;
    } else if args.end == End::Close {
        if args.stats {
            say(stats_line(&rd.get_ref().stats()));
        }
        let stream = rd.into_inner();
        stream.close().await.map_err(|e| io_err("close", e))?;
        say("close ok");
    } else {
        if args.end == End::Have {
            // We are a seed now; a peer that is a seed too has no use for us.
            let mut haves = Vec::with_capacity(9 * num_pieces as usize);
            for i in 0..num_pieces {
                haves.extend_from_slice(&5u32.to_be_bytes());
                haves.push(HAVE);
                haves.extend_from_slice(&(i as u32).to_be_bytes());
            }
            rd.get_mut()
                .write_all(&haves)
                .await
                .map_err(|e| io_err("sending HAVE", e))?;
        }
        let mut sink = vec![0u8; 64 * 1024];
        loop {
            match rd.read(&mut sink).await {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) => return Err(io_err("waiting for the peer to close", e)),
            }
        }
        let s = rd.get_ref().stats();
        say(format!(
            "peer closed: eof, peer_close_reason={}",
            s.peer_close_reason.map_or("none".into(), |r| r.to_string())
        ));
        if args.stats {
            say(stats_line(&s));
        }
        rd.into_inner()
            .close()
            .await
            .map_err(|e| io_err("close after the peer's FIN", e))?;
        say("close ok");
    }
    Ok(())
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[tokio::main]
async fn main() {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("bt_fetch: {e:#}\n{USAGE}");
            std::process::exit(2);
        }
    };
    let timeout = args.timeout;
    match tokio::time::timeout(timeout, run(args)).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            say(format!("error: {e:#}"));
            std::process::exit(1);
        }
        Err(_) => {
            say(format!(
                "error: timed out after {} s",
                timeout.as_secs_f64()
            ));
            std::process::exit(3);
        }
    }
}
