//! Helpers shared by the loopback test binaries.

// Each test binary uses its own subset.
#![allow(dead_code)]

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::task::JoinHandle;
use tokio_utp::{UtpListener, UtpStream};

/// Deterministic pseudo-random bytes (xorshift), so both ends can check data.
pub fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// Streams `len` bytes of `pattern(seed)` without holding them all at once.
pub async fn write_pattern<W: AsyncWriteExt + Unpin>(w: &mut W, seed: u64, len: usize) {
    let chunk = 1 << 20;
    let mut x = seed | 1;
    let mut left = len;
    let mut buf = vec![0u8; chunk];
    while left > 0 {
        let n = left.min(chunk);
        for b in buf[..n].iter_mut() {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            *b = (x >> 24) as u8;
        }
        w.write_all(&buf[..n]).await.unwrap();
        left -= n;
    }
}

/// Reads to EOF and checks the bytes against `pattern(seed)` incrementally.
pub async fn read_and_check<R: AsyncReadExt + Unpin>(r: &mut R, seed: u64, len: usize) {
    let mut x = seed | 1;
    let mut total = 0usize;
    let mut buf = vec![0u8; 1 << 18];
    loop {
        let n = r.read(&mut buf).await.unwrap();
        if n == 0 {
            break;
        }
        for &b in &buf[..n] {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            assert_eq!(b, (x >> 24) as u8, "byte {total} differs");
            total += 1;
        }
    }
    assert_eq!(total, len, "stream length");
}

/// Binds a listener on `bind` and runs `serve` on the first stream it
/// accepts, in a task of its own; returns the listener's address and that
/// task.
pub async fn serve_one<F, Fut>(
    bind: &str,
    serve: F,
) -> (std::net::SocketAddr, JoinHandle<Fut::Output>)
where
    F: FnOnce(UtpStream) -> Fut + Send + 'static,
    Fut: std::future::Future + Send + 'static,
    Fut::Output: Send + 'static,
{
    let listener = UtpListener::bind(bind).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        let (s, _) = listener.accept().await.unwrap();
        serve(s).await
    });
    (addr, task)
}

/// Accepts `n` connections on `listener`, each in a task of its own: every
/// client sends its 8-byte index first, then `len` bytes of
/// `pattern(index)`, which are checked. With `echo`, the index goes back and
/// the stream is closed. Completes when every connection is done.
pub fn receive_indexed(listener: UtpListener, n: usize, len: usize, echo: bool) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut tasks = Vec::new();
        for _ in 0..n {
            let (mut s, _) = listener.accept().await.unwrap();
            tasks.push(tokio::spawn(async move {
                let mut idx = [0u8; 8];
                s.read_exact(&mut idx).await.unwrap();
                read_and_check(&mut s, u64::from_be_bytes(idx), len).await;
                if echo {
                    s.write_all(&idx).await.unwrap();
                    s.close().await.unwrap();
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
    })
}
