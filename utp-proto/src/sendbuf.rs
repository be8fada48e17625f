//! The bytes an application wrote that are not packetized yet.
//!
//! One growing `BytesMut` would do, except that packets split off its front
//! keep sharing its allocation until they are acknowledged: every `reserve`
//! for a new write then reallocates and copies all the bytes still queued
//! (up to the whole send buffer, for every write). Here writes fill chunks of
//! bounded size instead, and a packet is split off a chunk without copying;
//! only a packet that spans two chunks is assembled by a copy.

use std::collections::VecDeque;

use bytes::{Bytes, BytesMut};

/// Largest chunk: big enough that chunk boundaries (and the copy they cost)
/// are rare even with 64 KiB packets. A chunk grows with the queue, so a
/// connection only gets large chunks while it has that much queued.
const MAX_CHUNK: usize = 1024 * 1024;
/// Smallest chunk: small writes (request/response traffic) share one.
const MIN_CHUNK: usize = 4 * 1024;

/// A FIFO of bytes in chunks.
#[derive(Debug, Default)]
pub(crate) struct SendQueue {
    chunks: VecDeque<BytesMut>,
    len: usize,
}

impl SendQueue {
    pub(crate) fn new() -> Self {
        Self::default()
    }

    /// Bytes queued.
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Drops everything queued (and the memory holding it).
    pub(crate) fn clear(&mut self) {
        self.chunks = VecDeque::new();
        self.len = 0;
    }

    /// Appends `data`, filling the last chunk's spare room first; never
    /// moves bytes already queued.
    pub(crate) fn extend_from_slice(&mut self, mut data: &[u8]) {
        self.len += data.len();
        while !data.is_empty() {
            let room = self.chunks.back().map_or(0, |c| c.capacity() - c.len());
            if room == 0 {
                let cap = data.len().max(self.len).clamp(MIN_CHUNK, MAX_CHUNK);
                self.chunks.push_back(BytesMut::with_capacity(cap));
                continue;
            }
            let n = room.min(data.len());
            let last = self.chunks.back_mut().expect("room > 0 means a chunk");
            last.extend_from_slice(&data[..n]);
            data = &data[n..];
        }
    }

    /// Takes the first `n` bytes (at most [`SendQueue::len`]).
    pub(crate) fn split_to(&mut self, n: usize) -> Bytes {
        let n = n.min(self.len);
        self.len -= n;
        let Some(front) = self.chunks.front_mut() else {
            return Bytes::new();
        };
        if front.len() > n {
            return front.split_to(n).freeze();
        }
        if front.len() == n {
            let out = self.chunks.pop_front().expect("front exists").freeze();
            return out;
        }
        // Spans chunks: assemble a copy.
        let mut out = BytesMut::with_capacity(n);
        while out.len() < n {
            let Some(front) = self.chunks.front_mut() else {
                break;
            };
            let take = (n - out.len()).min(front.len());
            out.extend_from_slice(&front[..take]);
            if take == front.len() {
                self.chunks.pop_front();
            } else {
                let _ = front.split_to(take);
            }
        }
        out.freeze()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_come_out_in_order_whatever_the_write_and_packet_sizes() {
        let data: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        for (write, packet) in [
            (1, 7),
            (100, 1400),
            (4096, 1400),
            (256 * 1024, 1400),
            (70_000, 65_000),
        ] {
            let mut q = SendQueue::new();
            let mut out = Vec::new();
            let mut written = 0;
            while out.len() < data.len() {
                if written < data.len() {
                    let n = write.min(data.len() - written);
                    q.extend_from_slice(&data[written..written + n]);
                    written += n;
                }
                assert_eq!(q.len(), written - out.len());
                while q.len() >= packet || (written == data.len() && !q.is_empty()) {
                    let p = q.split_to(packet);
                    assert!(!p.is_empty() && p.len() <= packet);
                    out.extend_from_slice(&p);
                }
            }
            assert_eq!(out, data, "write {write}, packet {packet}");
            assert!(q.is_empty());
            assert!(q.chunks.is_empty(), "drained chunks are freed");
        }
    }

    #[test]
    fn small_writes_share_a_chunk() {
        let mut q = SendQueue::new();
        for _ in 0..50 {
            q.extend_from_slice(&[1; 64]);
        }
        assert_eq!(q.chunks.len(), 1);
        assert_eq!(q.len(), 3200);
        q.clear();
        assert!(q.is_empty());
        assert_eq!(q.split_to(10), Bytes::new());
    }
}
