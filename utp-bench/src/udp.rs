//! The raw UDP references: how fast the kernel moves 1400-byte datagrams on
//! loopback, one per system call or in GSO/GRO batches (quinn-udp), and
//! 64 KiB datagrams one per system call (the size tokio-utp uses on
//! loopback: how this machine's kernel treats such sends right now).
//!
//! Not a transport: just enough flow control that the receiver's socket
//! buffer does not overflow (the receiver reports how many datagrams it has,
//! the sender keeps at most `WINDOW_BYTES` beyond that). Datagrams carry their
//! number and the pattern's bytes at that offset; the receiver checks every
//! byte. Losses are counted and reported, never hidden.

use std::io::{self, IoSliceMut};
use std::time::{Duration, Instant};

use anyhow::{ensure, Result};
use quinn_udp::{RecvMeta, Transmit, UdpSocketState};
use tokio::io::Interest;
use tokio::net::UdpSocket;

use crate::relay::socket;
use crate::{cpu_time, Pattern, Sample};

/// Payload of the small datagrams.
pub(crate) const SMALL: usize = 1400;
/// Payload of the large ones: the largest IPv4 UDP datagram, as a tokio-utp
/// packet on loopback (65,487 bytes of payload and a 20-byte header).
pub(crate) const LARGE: usize = 65_507 - HEADER;
const HEADER: usize = 8;
/// Bytes in flight beyond the receiver's last report.
const WINDOW_BYTES: u64 = 1536 * SMALL as u64;
/// Most segments per GSO send (64 KiB at most in one send).
const GSO_SEGMENTS: usize = 44;
const RX_BUFS: usize = 8;
const RX_BUF: usize = 65_536;

fn datagram_len(seq: u64, size: u64, payload: usize) -> usize {
    let start = seq * payload as u64;
    (size - start).min(payload as u64) as usize
}

async fn send_gso(sock: &UdpSocket, state: &UdpSocketState, t: &Transmit<'_>) -> io::Result<()> {
    loop {
        sock.writable().await?;
        match sock.try_io(Interest::WRITABLE, || state.try_send(sock.into(), t)) {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            r => return r,
        }
    }
}

async fn recv_gro(
    sock: &UdpSocket,
    state: &UdpSocketState,
    buf: &mut [u8],
    meta: &mut [RecvMeta],
) -> io::Result<usize> {
    loop {
        sock.readable().await?;
        let mut chunks = buf.chunks_exact_mut(RX_BUF);
        let mut slices: [IoSliceMut<'_>; RX_BUFS] =
            std::array::from_fn(|_| IoSliceMut::new(chunks.next().expect("RX_BUFS chunks")));
        match sock.try_io(Interest::READABLE, || {
            state.recv(sock.into(), &mut slices, meta)
        }) {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            r => return r,
        }
    }
}

/// Checks one datagram of `payload` bytes at most; returns its payload
/// length.
fn check(pat: &Pattern, d: &[u8], size: u64, payload: usize) -> Result<usize> {
    ensure!(d.len() >= HEADER, "short datagram");
    let seq = u64::from_le_bytes(d[..HEADER].try_into().expect("8 bytes"));
    ensure!(
        seq.checked_mul(payload as u64).is_some_and(|at| at < size),
        "datagram number out of range"
    );
    let data = &d[HEADER..];
    ensure!(
        data.len() == datagram_len(seq, size, payload),
        "wrong datagram length"
    );
    ensure!(
        pat.matches(seq * payload as u64, data),
        "corrupt datagram {seq}"
    );
    Ok(data.len())
}

/// `size` bytes in datagrams of `payload` bytes (GSO batches of them with
/// `gso`), verified.
pub(crate) async fn bulk(gso: bool, payload: usize, pat: Pattern, size: u64) -> Result<Sample> {
    let datagram = HEADER + payload;
    let total = size.div_ceil(payload as u64);
    let window = (WINDOW_BYTES / payload as u64).max(2);
    // Reports often enough that the sender never waits on one (64 for
    // 1400-byte datagrams, every one for 64 KiB ones).
    let report_every = (window / 24).max(1);
    let rx = socket()?;
    let tx = socket()?;
    let rx_addr = rx.local_addr()?;
    let tx_addr = tx.local_addr()?;
    let rx_state = UdpSocketState::new((&rx).into())?;
    let tx_state = UdpSocketState::new((&tx).into())?;
    let segments = if gso {
        tx_state.max_gso_segments().min(GSO_SEGMENTS)
    } else {
        1
    };

    let p = pat.clone();
    let receiver = tokio::spawn(async move {
        let mut buf = vec![0u8; RX_BUFS * RX_BUF];
        let mut meta = [RecvMeta::default(); RX_BUFS];
        let (mut count, mut bytes) = (0u64, 0u64);
        let mut reported = 0u64;
        while count < total {
            // A quiet socket after losses: stop and report them.
            let r = tokio::time::timeout(Duration::from_millis(300), async {
                if gso {
                    recv_gro(&rx, &rx_state, &mut buf, &mut meta).await
                } else {
                    let (n, from) = rx.recv_from(&mut buf[..RX_BUF]).await?;
                    // RecvMeta is non-exhaustive: set the fields we read.
                    meta[0] = RecvMeta::default();
                    meta[0].addr = from;
                    meta[0].len = n;
                    meta[0].stride = n;
                    Ok(1)
                }
            })
            .await;
            let Ok(r) = r else { break };
            let n = r?;
            for (m, b) in meta[..n].iter().zip(buf.chunks_exact(RX_BUF)) {
                let data = &b[..m.len];
                for d in data.chunks(m.stride.max(1)) {
                    bytes += check(&p, d, size, payload)? as u64;
                    count += 1;
                }
            }
            if count - reported >= report_every || count == total {
                reported = count;
                rx.send_to(&count.to_le_bytes(), tx_addr).await?;
            }
        }
        anyhow::Ok((count, bytes))
    });

    let (t0, cpu0) = (Instant::now(), cpu_time());
    let mut buf = vec![0u8; segments * datagram];
    let mut credit_buf = [0u8; 1024];
    let (mut next, mut credited) = (0u64, 0u64);
    let mut stalls = 0u32;
    while next < total {
        while let Ok(n) = tx.try_recv(&mut credit_buf) {
            for c in credit_buf[..n].chunks_exact(8) {
                credited = credited.max(u64::from_le_bytes(c.try_into().expect("8 bytes")));
            }
        }
        let room = (credited + window).saturating_sub(next);
        if room == 0 {
            match tokio::time::timeout(Duration::from_millis(20), tx.readable()).await {
                Ok(r) => r?,
                Err(_) => {
                    // A report was lost (or datagrams were): go on.
                    stalls += 1;
                    credited = next.saturating_sub(window / 2);
                }
            }
            continue;
        }
        let count = (segments as u64).min(total - next).min(room) as usize;
        let mut len = 0;
        for i in 0..count {
            let seq = next + i as u64;
            let n = datagram_len(seq, size, payload);
            buf[len..len + HEADER].copy_from_slice(&seq.to_le_bytes());
            let mut off = 0;
            while off < n {
                let part = pat.at(seq * payload as u64 + off as u64, n - off);
                buf[len + HEADER + off..len + HEADER + off + part.len()].copy_from_slice(part);
                off += part.len();
            }
            len += HEADER + n;
        }
        if gso {
            let t = Transmit {
                destination: rx_addr,
                ecn: None,
                contents: &buf[..len],
                segment_size: (count > 1).then_some(datagram),
                src_ip: None,
            };
            send_gso(&tx, &tx_state, &t).await?;
        } else {
            tx.send_to(&buf[..len], rx_addr).await?;
        }
        next += count as u64;
    }
    let (count, bytes) = receiver.await??;
    let (dt, cpu) = (t0.elapsed(), cpu_time() - cpu0);
    let lost = total - count;
    Ok(Sample {
        value: bytes as f64 / dt.as_secs_f64() / 1e6,
        cpu,
        bytes,
        detail: format!(
            "{:.2} s, {lost} of {total} datagrams lost, {stalls} window stalls; received bytes verified",
            dt.as_secs_f64()
        ),
    })
}
