//! Helpers shared by the loopback test binaries.

// Each test binary uses its own subset.
#![allow(dead_code)]

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::task::JoinHandle;
use tokio_utp::{UtpListener, UtpStream};

/// Deterministic pseudo-random bytes (xorshift, eight bytes per step), so
/// both ends can check data. A word per step, and checks by slice: per-byte
/// work in unoptimized test builds took so much CPU per task poll that the
/// sockets' drivers, sharing the runtime's two threads with a hundred such
/// tasks, went unpolled for hundreds of milliseconds (retransmission
/// timeouts with nothing lost).
pub struct Pattern {
    x: u64,
    word: [u8; 8],
    used: usize,
}

impl Pattern {
    /// The stream of `seed`.
    pub fn new(seed: u64) -> Pattern {
        Pattern {
            x: seed | 1,
            word: [0; 8],
            used: 8,
        }
    }

    fn step(&mut self) -> [u8; 8] {
        self.x ^= self.x << 13;
        self.x ^= self.x >> 7;
        self.x ^= self.x << 17;
        self.x.to_le_bytes()
    }

    /// Fills `buf` with the stream's next bytes.
    pub fn fill(&mut self, buf: &mut [u8]) {
        let left = (8 - self.used).min(buf.len());
        buf[..left].copy_from_slice(&self.word[self.used..self.used + left]);
        self.used += left;
        let mut words = buf[left..].chunks_exact_mut(8);
        for w in &mut words {
            w.copy_from_slice(&self.step());
        }
        let tail = words.into_remainder();
        if !tail.is_empty() {
            self.word = self.step();
            tail.copy_from_slice(&self.word[..tail.len()]);
            self.used = tail.len();
        }
    }
}

/// `len` bytes of the pattern stream of `seed` (see [`Pattern`]).
pub fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut v = vec![0u8; len];
    Pattern::new(seed).fill(&mut v);
    v
}

/// Streams `len` bytes of `pattern(seed)` without holding them all at once.
pub async fn write_pattern<W: AsyncWriteExt + Unpin>(w: &mut W, seed: u64, len: usize) {
    let chunk = 1 << 20;
    let mut gen = Pattern::new(seed);
    let mut left = len;
    let mut buf = vec![0u8; chunk];
    while left > 0 {
        let n = left.min(chunk);
        gen.fill(&mut buf[..n]);
        w.write_all(&buf[..n]).await.unwrap();
        left -= n;
    }
}

/// Reads to EOF and checks the bytes against `pattern(seed)` incrementally.
pub async fn read_and_check<R: AsyncReadExt + Unpin>(r: &mut R, seed: u64, len: usize) {
    let mut gen = Pattern::new(seed);
    let mut total = 0usize;
    let mut buf = vec![0u8; 1 << 18];
    let mut expect = vec![0u8; buf.len()];
    loop {
        let n = r.read(&mut buf).await.unwrap();
        if n == 0 {
            break;
        }
        gen.fill(&mut expect[..n]);
        if buf[..n] != expect[..n] {
            let i = (0..n).find(|&i| buf[i] != expect[i]).unwrap();
            panic!("byte {} differs", total + i);
        }
        total += n;
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

#[cfg(test)]
mod pattern_tests {
    use super::*;

    /// However the stream is cut into pieces, the bytes are the same.
    #[test]
    fn pattern_is_the_same_stream_whatever_the_pieces() {
        let whole = pattern(7, 1000);
        for cut in [1, 3, 7, 8, 9, 64, 333] {
            let mut gen = Pattern::new(7);
            let mut got = Vec::new();
            while got.len() < whole.len() {
                let mut piece = vec![0u8; cut.min(whole.len() - got.len())];
                gen.fill(&mut piece);
                got.extend_from_slice(&piece);
            }
            assert_eq!(got, whole, "pieces of {cut}");
        }
        assert_ne!(pattern(7, 64), pattern(8, 64));
    }
}
