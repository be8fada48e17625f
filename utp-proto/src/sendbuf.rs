//! The bytes an application wrote that are not packetized yet.
//!
//! Packets take their payload as zero-copy slices of what was written. A
//! single growing `BytesMut` can't do that cheaply: once packets hold slices
//! of it, every append that outgrows it copies everything still queued (up to
//! the whole send buffer, per write). Here big writes stay separate chunks and
//! small writes are gathered in a bounded tail, so each byte is copied once on
//! the way in, and at most a packet's worth again when a packet spans chunks.

use std::collections::VecDeque;

use bytes::{Buf, Bytes, BytesMut};

/// Writes smaller than this are gathered in the tail.
const SMALL_WRITE: usize = 4096;
/// The tail becomes a chunk of its own at this size.
const TAIL_MAX: usize = 16 * 1024;

/// A FIFO of written bytes.
#[derive(Debug, Default)]
pub(crate) struct SendQueue {
    /// Older data, in write order.
    chunks: VecDeque<Bytes>,
    /// The newest data, from small writes.
    tail: BytesMut,
    len: usize,
}

impl SendQueue {
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub(crate) fn clear(&mut self) {
        self.chunks.clear();
        self.tail = BytesMut::new();
        self.len = 0;
    }

    pub(crate) fn push(&mut self, data: &[u8]) {
        if data.is_empty() {
            return;
        }
        self.len += data.len();
        if data.len() < SMALL_WRITE {
            self.tail.extend_from_slice(data);
            if self.tail.len() >= TAIL_MAX {
                self.chunks.push_back(self.tail.split().freeze());
            }
        } else {
            if !self.tail.is_empty() {
                self.chunks.push_back(self.tail.split().freeze());
            }
            self.chunks.push_back(Bytes::copy_from_slice(data));
        }
    }

    /// Removes and returns the oldest `n` bytes (fewer if fewer are queued).
    pub(crate) fn take(&mut self, n: usize) -> Bytes {
        let out = self.take_inner(n);
        if self.len == 0 {
            // An idle connection keeps no buffer capacity around.
            self.tail = BytesMut::new();
        }
        out
    }

    fn take_inner(&mut self, n: usize) -> Bytes {
        let n = n.min(self.len);
        if n == 0 {
            return Bytes::new();
        }
        self.len -= n;
        match self.chunks.front_mut() {
            Some(front) if front.len() >= n => {
                let out = front.split_to(n);
                if front.is_empty() {
                    self.chunks.pop_front();
                }
                return out;
            }
            None => return self.tail.split_to(n).freeze(),
            Some(_) => {}
        }
        let mut out = BytesMut::with_capacity(n);
        while out.len() < n {
            let want = n - out.len();
            if let Some(front) = self.chunks.front_mut() {
                let k = want.min(front.len());
                out.extend_from_slice(&front[..k]);
                front.advance(k);
                if front.is_empty() {
                    self.chunks.pop_front();
                }
            } else {
                let k = want.min(self.tail.len());
                out.extend_from_slice(&self.tail[..k]);
                self.tail.advance(k);
            }
        }
        out.freeze()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_come_out_in_write_order_across_chunks_and_tail() {
        let mut q = SendQueue::default();
        let mut expect = Vec::new();
        for (i, len) in [10usize, 5000, 3, 20_000, 1, 4095, 17_000, 7]
            .into_iter()
            .enumerate()
        {
            let data: Vec<u8> = (0..len).map(|j| (i * 31 + j) as u8).collect();
            q.push(&data);
            expect.extend_from_slice(&data);
        }
        assert_eq!(q.len(), expect.len());
        let mut got = Vec::new();
        for n in [1usize, 1400, 7, 9000, 1400, 65_000, 1400] {
            let b = q.take(n);
            assert_eq!(b.len(), n.min(expect.len() - got.len()));
            got.extend_from_slice(&b);
        }
        assert!(q.is_empty());
        assert_eq!(got, expect);
        assert_eq!(q.take(10).len(), 0);
    }

    #[test]
    fn small_writes_are_gathered_not_kept_one_chunk_each() {
        let mut q = SendQueue::default();
        for _ in 0..100_000 {
            q.push(&[7u8; 10]);
        }
        assert_eq!(q.len(), 1_000_000);
        assert!(
            q.chunks.len() <= 1_000_000 / TAIL_MAX + 1,
            "{} chunks",
            q.chunks.len()
        );
        q.clear();
        assert!(q.is_empty());
    }
}
