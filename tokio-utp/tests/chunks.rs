//! `write_chunk` and `read_chunk`: bytes handed over and taken without a
//! copy, mixed with plain `AsyncWrite`/`AsyncRead` calls.

use std::time::Duration;

mod common;

use bytes::Bytes;
use common::{pattern, serve_one};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::timeout;
use tokio_utp::{Config, UtpListener, UtpSocket};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunks_and_plain_io_mixed_arrive_bit_exact_in_order() {
    let data = pattern(11, 21 << 20);
    // Pieces of every kind in turn: plain writes, large chunks, and a chunk
    // small enough to be copied.
    let cuts = [
        (false, 1000),
        (true, 8 << 20),
        (true, 100),
        (false, 1 << 20),
        (true, (3 << 20) + 7),
        (false, 5),
        (true, 65_536),
    ];
    let want = data.clone();
    let (addr, server) = serve_one("127.0.0.1:0", move |s| async move {
        let (mut r, _w) = s.into_split();
        let mut got = Vec::with_capacity(want.len());
        let mut buf = vec![0u8; 100_000];
        // Chunk reads of several sizes, and plain reads, in turn.
        for i in 0.. {
            let max = [1, 1400, 200_000, usize::MAX][i % 4];
            if i % 5 == 4 {
                let n = r.read(&mut buf).await.unwrap();
                if n == 0 {
                    break;
                }
                got.extend_from_slice(&buf[..n]);
                continue;
            }
            match r.read_chunk(max).await.unwrap() {
                Some(c) => {
                    assert!(
                        !c.is_empty() && c.len() <= max,
                        "{} of at most {max}",
                        c.len()
                    );
                    got.extend_from_slice(&c);
                }
                None => break,
            }
        }
        assert!(r.read_chunk(10).await.unwrap().is_none(), "EOF stays EOF");
        assert_eq!(
            r.read_chunk(0).await.unwrap(),
            Some(Bytes::new()),
            "no room, no bytes"
        );
        assert!(got == want, "bytes differ or are out of order");
    })
    .await;
    let sock = UtpSocket::bind("127.0.0.1:0").await.unwrap();
    let mut c = sock.connect(addr).await.unwrap();
    let all = Bytes::from(data.clone());
    let mut at = 0;
    for (chunk, len) in cuts.into_iter().cycle() {
        if at == all.len() {
            break;
        }
        let piece = all.slice(at..(at + len).min(all.len()));
        at += piece.len();
        if chunk {
            c.write_chunk(piece).await.unwrap();
        } else {
            c.write_all(&piece).await.unwrap();
        }
    }
    c.shutdown().await.unwrap();
    timeout(Duration::from_secs(60), server)
        .await
        .unwrap()
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_written_chunk_is_held_not_copied_until_acknowledged() {
    // A receiver whose window is far smaller than the chunk, and which
    // reads nothing until told: most of the chunk waits at the sender.
    let cfg = Config::default().recv_buffer(16 * 1024);
    let listener = UtpListener::bind_with_config("127.0.0.1:0", cfg)
        .await
        .unwrap();
    let addr = listener.local_addr().unwrap();
    let (go_tx, go_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.unwrap();
        go_rx.await.unwrap();
        let mut got = Vec::new();
        s.read_to_end(&mut got).await.unwrap();
        got
    });
    let sock = UtpSocket::bind("127.0.0.1:0").await.unwrap();
    let mut c = sock.connect(addr).await.unwrap();
    // Within the smallest send limit: the write completes at once.
    let chunk = Bytes::from(pattern(3, 40 * 1024));
    timeout(Duration::from_secs(10), c.write_chunk(chunk.clone()))
        .await
        .unwrap()
        .unwrap();
    assert!(
        !chunk.is_unique(),
        "the stack holds the chunk itself, not a copy"
    );
    go_tx.send(()).unwrap();
    timeout(Duration::from_secs(30), c.shutdown())
        .await
        .unwrap()
        .unwrap();
    let got = timeout(Duration::from_secs(30), server)
        .await
        .unwrap()
        .unwrap();
    assert!(got == chunk, "bytes differ");
    assert!(chunk.is_unique(), "acknowledged bytes are let go");
}
