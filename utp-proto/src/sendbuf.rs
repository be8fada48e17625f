//! The bytes an application wrote that are not packetized yet.
//!
//! One growing `BytesMut` would do, except that packets split off its front
//! keep sharing its allocation until they are acknowledged: every `reserve`
//! for a new write then reallocates and copies all the bytes still queued
//! (up to the whole send buffer, for every write). Here writes fill chunks of
//! bounded size instead, and a packet is split off a chunk without copying.
//! A large packet that would span two chunks ends at the first one's end
//! instead (one shorter packet per chunk); only a small one is assembled
//! by a copy. Bytes the application hands over as `Bytes`
//! ([`SendQueue::push_lent`]) are a chunk of their own, and packets are
//! split off them the same way: they are never copied.

use std::collections::VecDeque;
use std::sync::Mutex;

use bytes::{Bytes, BytesMut};

/// Largest chunk: big enough that chunk boundaries (and the copy they cost)
/// are rare even with 64 KiB packets. A chunk grows with the queue, so a
/// connection only gets large chunks while it has that much queued.
const MAX_CHUNK: usize = 1024 * 1024;
/// Most drained chunks kept for reuse.
const MAX_SPARES: usize = 8;
/// Most bytes of drained chunks kept for reuse: the chunks a bulk sender
/// cycles through (chunks still shared with packets in flight wait here
/// until those are acknowledged). A flight of the peer's default window
/// (1 MiB) and the default send buffer (1 MiB) span up to four chunks:
/// with half that kept, every other chunk was freed on its last ack and a
/// fresh one faulted in, a page fault per 4 KiB written (on loopback
/// 27,000 -> 5,700 faults per 512 MiB sent, about 7 % more throughput in
/// paired runs).
const MAX_SPARE_BYTES: usize = 4 * MAX_CHUNK;
/// Smallest chunk: small writes (request/response traffic) share one.
const MIN_CHUNK: usize = 4 * 1024;
/// Smallest spare room at a chunk's end a large write fills (see
/// [`SendQueue::reserve`]).
const MIN_TAIL: usize = 4 * 1024;
/// Largest packet assembled from two chunks by a copy; a larger one ends at
/// the chunk boundary (see [`SendQueue::take`]).
const ASSEMBLE_MAX: usize = 4 * 1024;

/// Most bytes of drained chunks the process keeps for new connections (see
/// [`ChunkPool`]).
const POOL_MAX_BYTES: usize = 16 * 1024 * 1024;
/// Smallest chunk kept there: small ones fault in little, and without them
/// the pool holds a thousand chunks at most (a search is a short scan).
const POOL_MIN_CHUNK: usize = 16 * 1024;

/// Drained send chunks of connections that finished or went idle, for any
/// connection in the process to reuse (most recently returned first). Freed
/// instead, their memory went back to the OS (the allocator trims it) and
/// the next connections' writes faulted it in afresh, a page fault per
/// 4 KiB: with 100 new connections at a time a tenth of all CPU time.
/// Bounded by [`POOL_MAX_BYTES`], which the process keeps once it had that
/// many connections sending.
/// (Empty in this crate's unit tests, which check chunk sizes exactly and
/// run in parallel: `ChunkPool` is tested on its own.)
static POOL: Mutex<ChunkPool> =
    Mutex::new(ChunkPool::new(if cfg!(test) { 0 } else { POOL_MAX_BYTES }));

/// See [`POOL`].
#[derive(Debug)]
struct ChunkPool {
    /// Chunks with the size they were allocated with; empty and unshared.
    chunks: Vec<(usize, BytesMut)>,
    bytes: usize,
    max_bytes: usize,
}

impl ChunkPool {
    const fn new(max_bytes: usize) -> Self {
        Self {
            chunks: Vec::new(),
            bytes: 0,
            max_bytes,
        }
    }

    /// Keeps the chunks no packet shares any more, while there is room.
    fn give(&mut self, chunks: impl IntoIterator<Item = (usize, BytesMut)>) {
        for (size, mut chunk) in chunks {
            chunk.clear();
            if size < POOL_MIN_CHUNK
                || self.bytes + size > self.max_bytes
                || !chunk.try_reclaim(size)
            {
                continue;
            }
            self.bytes += size;
            self.chunks.push((size, chunk));
        }
    }

    /// A chunk for a queue that wants `cap` bytes: of `lo` or more (a
    /// smaller one costs more chunk boundaries, but no fresh memory) and up
    /// to twice `cap` (a little more memory held); the most recently given
    /// first (warm).
    fn take(&mut self, lo: usize, cap: usize) -> Option<(usize, BytesMut)> {
        let hi = cap.saturating_mul(2);
        let i = self
            .chunks
            .iter()
            .rposition(|&(size, _)| (lo..=hi).contains(&size))?;
        // Usually at or near the end: keeps the rest in the order given.
        let (size, chunk) = self.chunks.remove(i);
        self.bytes -= size;
        Some((size, chunk))
    }
}

/// Bytes of drained send chunks the process keeps for new connections: at
/// most 16 MiB, held once that many were in use and let go (connections
/// finished or idle), so that later connections write into memory already
/// mapped instead of faulting in fresh pages.
pub fn pooled_send_memory() -> usize {
    pool().bytes
}

/// Locks [`POOL`] (a panic elsewhere while holding it leaves only spare
/// memory behind, so a poisoned lock is used as is).
fn pool() -> std::sync::MutexGuard<'static, ChunkPool> {
    POOL.lock().unwrap_or_else(|e| e.into_inner())
}

/// A FIFO of bytes in chunks.
#[derive(Debug, Default)]
pub(crate) struct SendQueue {
    /// Each chunk with the size it was allocated with (a `BytesMut` split
    /// down to nothing reports no capacity).
    chunks: VecDeque<(usize, Buf)>,
    len: usize,
    /// Drained chunks whose allocations in-flight packets may still share.
    /// Once they are acknowledged one is reused for the next chunk instead
    /// of allocating (and page-faulting in) a fresh one.
    spares: Vec<(usize, BytesMut)>,
    /// What `reserve` handed out, until `commit`.
    checked_out: Checkout,
}

/// A chunk's bytes: memory of the queue's own that writes are copied
/// into, or bytes the application handed over, sent from where they are.
#[derive(Debug)]
enum Buf {
    Own(BytesMut),
    /// No room for writes: its capacity is its length.
    Lent(Bytes),
}

impl Buf {
    fn len(&self) -> usize {
        match self {
            Buf::Own(b) => b.len(),
            Buf::Lent(b) => b.len(),
        }
    }

    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Its bytes plus the room for writes after them.
    fn capacity(&self) -> usize {
        match self {
            Buf::Own(b) => b.capacity(),
            Buf::Lent(b) => b.len(),
        }
    }

    #[cfg(test)]
    fn as_ptr(&self) -> *const u8 {
        match self {
            Buf::Own(b) => b.as_ptr(),
            Buf::Lent(b) => b.as_ptr(),
        }
    }

    /// The first `n` bytes, without a copy.
    fn split_to(&mut self, n: usize) -> Bytes {
        match self {
            Buf::Own(b) => b.split_to(n).freeze(),
            Buf::Lent(b) => b.split_to(n),
        }
    }

    fn clear(&mut self) {
        match self {
            Buf::Own(b) => b.clear(),
            Buf::Lent(b) => b.clear(),
        }
    }

    fn is_lent(&self) -> bool {
        matches!(self, Buf::Lent(_))
    }

    /// The memory writes are copied into, if it is the queue's own.
    fn own_mut(&mut self) -> Option<&mut BytesMut> {
        match self {
            Buf::Own(b) => Some(b),
            Buf::Lent(_) => None,
        }
    }
}

impl std::ops::Deref for Buf {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        match self {
            Buf::Own(b) => b,
            Buf::Lent(b) => b,
        }
    }
}

/// Where the region handed out by [`SendQueue::reserve`] came from.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum Checkout {
    #[default]
    None,
    /// The spare room of the chunk writes go to (split off its end).
    Tail,
    /// A chunk of this allocated size of its own.
    Chunk(usize),
}

impl SendQueue {
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
        self.spares = Vec::new();
    }

    /// Frees the spare chunks, and the chunk writes go to when nothing is
    /// queued; for when nothing is queued or in flight, so an idle
    /// connection holds no send memory.
    pub(crate) fn release_spare(&mut self) {
        self.give_to_pool(self.len == 0);
    }

    /// Gives the spare chunks, and with `all` the queue's own, to the
    /// process's pool (see [`POOL`]).
    fn give_to_pool(&mut self, all: bool) {
        let chunks = if all {
            std::mem::take(&mut self.chunks)
        } else {
            VecDeque::new()
        };
        if !chunks.is_empty() || !self.spares.is_empty() {
            let own = chunks.into_iter().filter_map(|(size, c)| match c {
                Buf::Own(c) => Some((size, c)),
                Buf::Lent(_) => None,
            });
            pool().give(own.chain(std::mem::take(&mut self.spares)));
        }
    }

    /// Whether drained chunks are kept for reuse.
    pub(crate) fn has_spare(&self) -> bool {
        !self.spares.is_empty() || (self.len == 0 && !self.chunks.is_empty())
    }

    /// A chunk for about `cap` bytes, a reused one if one fits: of at least
    /// `floor` bytes whatever `cap` allows.
    fn new_chunk(&mut self, cap: usize, floor: usize) -> (usize, BytesMut) {
        // Sizes are powers of two so that a spare fits the next chunk of its
        // class; a fresh allocation costs a page fault per 4 KiB written.
        let cap = cap.next_power_of_two();
        let smallest = (cap / 4).max(MIN_CHUNK).max(floor);
        let reusable = self
            .spares
            .iter_mut()
            .position(|(size, c)| *size >= cap && c.is_empty() && c.try_reclaim(cap))
            .or_else(|| {
                // A smaller chunk costs more chunk boundaries, a fresh one
                // a page fault per 4 KiB: take one down to a quarter size.
                self.spares
                    .iter_mut()
                    .position(|(size, c)| *size >= smallest && c.is_empty() && c.try_reclaim(*size))
            });
        match reusable {
            Some(i) => self.spares.swap_remove(i),
            None => pool()
                .take(smallest, cap)
                .unwrap_or_else(|| (cap, BytesMut::with_capacity(cap))),
        }
    }

    /// Keeps a drained chunk as a spare, a few at most (a send buffer's
    /// worth of chunks cycles through them).
    fn retire(&mut self, (size, chunk): (usize, Buf)) {
        // Lent bytes go back to the application (they are only dropped).
        let Buf::Own(mut chunk) = chunk else {
            return;
        };
        let kept: usize = self.spares.iter().map(|(s, _)| s).sum();
        if self.spares.len() < MAX_SPARES && kept + size <= MAX_SPARE_BYTES {
            chunk.clear();
            self.spares.push((size, chunk));
        }
    }

    /// Appends `data`, filling the last chunk's spare room first; never
    /// moves bytes already queued.
    pub(crate) fn push(&mut self, mut data: &[u8]) {
        self.len += data.len();
        while !data.is_empty() {
            let room = self
                .chunks
                .back()
                .map_or(0, |(_, c)| c.capacity() - c.len());
            if room == 0 {
                let cap = data.len().max(self.len).clamp(MIN_CHUNK, MAX_CHUNK);
                let (size, chunk) = self.new_chunk(cap, 0);
                self.chunks.push_back((size, Buf::Own(chunk)));
                continue;
            }
            let n = room.min(data.len());
            let last = self
                .chunks
                .back_mut()
                .and_then(|(_, c)| c.own_mut())
                .expect("room > 0 means a chunk of our own");
            last.extend_from_slice(&data[..n]);
            data = &data[n..];
        }
    }

    /// Appends `data` without copying it: packets are split off it as off
    /// the queue's own chunks, and it is dropped once they all are. Below
    /// [`MIN_CHUNK`] it is copied instead, as a write: packets spanning
    /// small chunks would be assembled by copies anyway.
    pub(crate) fn push_lent(&mut self, data: Bytes) {
        if data.len() < MIN_CHUNK {
            self.push(&data);
            return;
        }
        self.len += data.len();
        self.chunks.push_back((data.len(), Buf::Lent(data)));
    }

    /// Hands out room for at most `n` more bytes (at least one), to fill
    /// without access to the queue (outside a lock), then [`commit`]: the
    /// spare room of the chunk writes go to, or a new chunk. One at a time.
    ///
    /// [`commit`]: SendQueue::commit
    pub(crate) fn reserve(&mut self, n: usize) -> BytesMut {
        debug_assert_eq!(
            self.checked_out,
            Checkout::None,
            "one reservation at a time"
        );
        let mut carry = 0;
        if let Some((_, back)) = self.chunks.back_mut() {
            let room = back.capacity() - back.len();
            // A few bytes of room would split the write, and the packet
            // across the boundary ends there (see `take`): a large write
            // skips them.
            if let Some(own) = back
                .own_mut()
                .filter(|_| room > 0 && (room >= n || room >= MIN_TAIL))
            {
                self.checked_out = Checkout::Tail;
                let at = own.len();
                return own.split_off(at);
            }
            // A few unsent bytes at its end move to the new chunk's front
            // (a small copy), so they leave with the new bytes rather than
            // as a packet of their own.
            if back.len() <= MIN_TAIL {
                carry = back.len();
            }
        }
        let cap = (n + carry).max(self.len).clamp(MIN_CHUNK, MAX_CHUNK);
        // Room for the carried bytes and some of the write, whatever chunk
        // is reused: a region of no room made the stream's write return 0.
        let (size, mut chunk) = self.new_chunk(cap, carry + n.min(MIN_TAIL));
        if let Some((_, back)) = self.chunks.back_mut().filter(|_| carry > 0) {
            chunk.extend_from_slice(back);
            back.clear();
        }
        if self.chunks.back().is_some_and(|(_, c)| c.is_empty()) {
            // Drained, and writes go to the new chunk from now on.
            let drained = self.chunks.pop_back().expect("back exists");
            self.retire(drained);
        }
        if carry > 0 {
            let tail = chunk.split_off(carry);
            self.chunks.push_back((size, Buf::Own(chunk)));
            self.checked_out = Checkout::Tail;
            return tail;
        }
        self.checked_out = Checkout::Chunk(size);
        chunk
    }

    /// Appends what was written into the region from [`SendQueue::reserve`]
    /// (at most its capacity, so it never moved).
    pub(crate) fn commit(&mut self, data: BytesMut) {
        self.len += data.len();
        match std::mem::take(&mut self.checked_out) {
            // Back where it was split off: no copy. (Should the chunk have
            // been drained and retired meanwhile, the region is a chunk of
            // its own.)
            Checkout::Tail => match self.chunks.back_mut().and_then(|(_, c)| c.own_mut()) {
                Some(back) => back.unsplit(data),
                None => self.chunks.push_back((data.capacity(), Buf::Own(data))),
            },
            Checkout::Chunk(size) => self.chunks.push_back((size, Buf::Own(data))),
            Checkout::None => {
                debug_assert!(false, "commit without reserve");
                self.chunks.push_back((data.capacity(), Buf::Own(data)));
            }
        }
    }

    /// Gives a reservation up (the connection failed meanwhile).
    pub(crate) fn cancel(&mut self) {
        self.checked_out = Checkout::None;
    }

    /// Removes and returns the oldest `n` bytes, or fewer: fewer are queued,
    /// or `n` is over [`ASSEMBLE_MAX`] and the oldest chunk holds fewer.
    ///
    /// The chunk writes go to stays even when the queue runs empty: a
    /// sender that keeps up with its application empties it between writes,
    /// and the next write fills its remaining room instead of a fresh
    /// chunk. `release_spare` lets it go once idle.
    pub(crate) fn take(&mut self, n: usize) -> Bytes {
        let n = n.min(self.len);
        // Drained chunks left in front (a write skipped their last bytes).
        while self.chunks.len() > 1 && self.chunks.front().is_some_and(|(_, c)| c.is_empty()) {
            let drained = self.chunks.pop_front().expect("front exists");
            self.retire(drained);
        }
        self.len -= n;
        let several = self.chunks.len() > 1;
        let Some((_, front)) = self.chunks.front_mut() else {
            return Bytes::new();
        };
        if front.len() >= n {
            let out = front.split_to(n);
            if front.is_empty() && (several || front.capacity() == 0) {
                // Drained and no longer the chunk writes go to.
                let chunk = self.chunks.pop_front().expect("front exists");
                self.retire(chunk);
            }
            return out;
        }
        // The last few bytes of lent ones are the exception: the
        // application picks their sizes, and a 256 KiB chunk of 64 KiB
        // packets left a packet of 100 bytes at every chunk's end (a
        // fifth more packets, a fifth less throughput on loopback), where
        // copying one packet per chunk costs little.
        let lent_tail = several && front.is_lent() && front.len() < n / 4;
        if n > ASSEMBLE_MAX && !front.is_empty() && !lent_tail {
            // A copy into a fresh allocation costs more than the shorter
            // packet (with many connections, a page fault per 4 KiB).
            let out = front.split_to(front.len());
            self.len += n - out.len();
            if several || front.capacity() == 0 {
                let chunk = self.chunks.pop_front().expect("front exists");
                self.retire(chunk);
            }
            return out;
        }
        // Spans chunks: assemble a copy.
        let mut out = BytesMut::with_capacity(n);
        while out.len() < n {
            let Some((_, front)) = self.chunks.front_mut() else {
                break;
            };
            let take = (n - out.len()).min(front.len());
            out.extend_from_slice(&front[..take]);
            if take == front.len() {
                let chunk = self.chunks.pop_front().expect("front exists");
                self.retire(chunk);
            } else {
                let _ = front.split_to(take);
            }
        }
        out.freeze()
    }
}

impl Drop for SendQueue {
    /// Gives the chunks to the process's pool (see [`POOL`]).
    fn drop(&mut self) {
        self.give_to_pool(true);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pool_keeps_unshared_chunks_within_its_bound_and_hands_out_fitting_ones() {
        let mut pool = ChunkPool::new(256 * 1024);
        let chunk = |size: usize| {
            let mut c = BytesMut::with_capacity(size);
            c.extend_from_slice(&[7; 100]);
            (size, c)
        };
        // Still shared with a packet in flight: not kept (its memory is
        // freed with the packet).
        let (size, mut shared) = chunk(64 * 1024);
        let packet = shared.split_to(50).freeze();
        pool.give([(size, shared)]);
        assert_eq!(pool.bytes, 0);
        drop(packet);
        // Unshared ones are kept (emptied) up to the bound.
        let a = chunk(64 * 1024);
        let a_ptr = a.1.as_ptr();
        pool.give([a, chunk(128 * 1024), chunk(64 * 1024), chunk(64 * 1024)]);
        assert_eq!(pool.bytes, 256 * 1024, "the fourth is over the bound");
        assert_eq!(pool.chunks.len(), 3);
        // Too small or too large for the request: none.
        assert!(pool.take(256 * 1024, 1024 * 1024).is_none());
        assert!(pool.take(4 * 1024, 16 * 1024).is_none());
        // Small chunks are not kept at all.
        pool.give([chunk(8 * 1024)]);
        assert_eq!(pool.chunks.len(), 3);
        // The latest fitting one first, empty and with its whole capacity.
        let (size, c) = pool
            .take(16 * 1024, 64 * 1024)
            .expect("a 64 KiB chunk fits");
        assert_eq!((size, c.len(), c.capacity()), (64 * 1024, 0, 64 * 1024));
        let (size, c) = pool
            .take(16 * 1024, 64 * 1024)
            .expect("the 128 KiB one fits");
        assert_eq!(size, 128 * 1024);
        drop(c);
        let (_, c) = pool
            .take(16 * 1024, 64 * 1024)
            .expect("the first one is left");
        assert_eq!(c.as_ptr(), a_ptr, "the same allocation, not a copy");
        assert_eq!(pool.bytes, 0);
    }

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
            let mut q = SendQueue::default();
            let mut out = Vec::new();
            let mut written = 0;
            while out.len() < data.len() {
                if written < data.len() {
                    let n = write.min(data.len() - written);
                    q.push(&data[written..written + n]);
                    written += n;
                }
                assert_eq!(q.len(), written - out.len());
                while q.len() >= packet || (written == data.len() && !q.is_empty()) {
                    let p = q.take(packet);
                    assert!(!p.is_empty() && p.len() <= packet);
                    out.extend_from_slice(&p);
                }
            }
            assert_eq!(out, data, "write {write}, packet {packet}");
            assert!(q.is_empty());
            assert!(
                q.chunks.len() <= 1,
                "drained chunks but the last are let go"
            );
            assert_eq!(q.has_spare(), !q.chunks.is_empty() || !q.spares.is_empty());
            q.release_spare();
            assert!(q.spares.is_empty() && q.chunks.is_empty());
            assert!(!q.has_spare());
        }
    }

    #[test]
    fn a_chunk_is_reused_once_its_packets_are_gone() {
        let mut q = SendQueue::default();
        q.push(&[1; 8192]);
        q.push(&[2; 8192]);
        let first_ptr = q.chunks[0].1.as_ptr();
        let packets: Vec<Bytes> = (0..8).map(|_| q.take(1024)).collect();
        assert_eq!(q.spares.len(), 1, "the drained first chunk is kept");
        // Still shared with packets in flight: not reused yet.
        q.push(&[3; 8192]);
        assert_ne!(q.chunks.back().expect("a chunk").1.as_ptr(), first_ptr);
        drop(packets);
        let _ = q.take(16384);
        q.push(&[4; 8192]);
        assert_eq!(q.chunks.back().expect("a chunk").1.as_ptr(), first_ptr);
        assert_eq!(q.take(8192), Bytes::from(vec![4; 8192]));
    }

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
        for n in [1usize, 1400, 7, 9000, 1400, 65_000, 1400]
            .into_iter()
            .cycle()
        {
            if q.is_empty() {
                break;
            }
            let b = q.take(n);
            let want = n.min(expect.len() - got.len());
            assert!(!b.is_empty() && b.len() <= want);
            if n <= ASSEMBLE_MAX {
                assert_eq!(b.len(), want, "small packets are assembled");
            }
            got.extend_from_slice(&b);
        }
        assert_eq!(got, expect);
        assert_eq!(q.take(10).len(), 0);
    }

    #[test]
    fn a_large_packet_ends_at_a_chunk_boundary_without_a_copy() {
        let mut q = SendQueue::default();
        q.push(&[1; 8192]);
        q.push(&[2; 8192]);
        assert!(q.chunks.len() >= 2, "{} chunks", q.chunks.len());
        let front = q.chunks[0].1.len();
        let first = q.take(1000);
        let rest = q.take(60_000);
        assert_eq!(rest.len(), front - 1000, "the rest of the first chunk");
        assert_eq!(rest.as_ptr(), first[1000..].as_ptr(), "no copy");
        assert_eq!(q.len(), 16_384 - front);
        // A small one is assembled across the boundary.
        let mut q = SendQueue::default();
        q.push(&[1; 8192]);
        q.push(&[2; 8192]);
        let _ = q.take(front - 100);
        let small = q.take(1400);
        assert_eq!(small.len(), 1400);
        assert_eq!(&small[..100], &[1; 100][..]);
        assert_eq!(&small[100..], &[2; 1300][..]);
    }

    #[test]
    fn small_writes_are_gathered_not_kept_one_chunk_each() {
        let mut q = SendQueue::default();
        for _ in 0..100_000 {
            q.push(&[7u8; 10]);
        }
        assert_eq!(q.len(), 1_000_000);
        assert!(
            q.chunks.len() <= 1_000_000 / MIN_CHUNK + 1,
            "{} chunks",
            q.chunks.len()
        );
        q.clear();
        assert!(q.is_empty());
    }

    #[test]
    fn small_writes_share_a_chunk() {
        let mut q = SendQueue::default();
        for _ in 0..50 {
            q.push(&[1; 64]);
        }
        assert_eq!(q.chunks.len(), 1);
        assert_eq!(q.len(), 3200);
        q.clear();
        assert!(q.is_empty());
        assert_eq!(q.take(10), Bytes::new());
    }

    /// Reserves room for `n`, fills it with `fill`, commits; returns how
    /// many bytes went in.
    fn reserve_fill(q: &mut SendQueue, n: usize, fill: u8) -> usize {
        let mut r = q.reserve(n);
        let k = n.min(r.capacity() - r.len());
        let before = r.as_ptr();
        r.extend_from_slice(&vec![fill; k]);
        assert_eq!(r.as_ptr(), before, "filled in place");
        q.commit(r);
        k
    }

    /// One step of [`any_order_of_writes_reservations_and_packets`].
    #[derive(Debug, Clone)]
    enum Op {
        Push(usize),
        /// Bytes handed over whole (`push_lent`).
        Lent(usize),
        Reserve(usize),
        Take(usize),
        /// Lets the oldest packet still held go (its chunk can be reused).
        Release,
        ReleaseSpare,
    }

    fn op() -> impl proptest::strategy::Strategy<Value = Op> {
        use proptest::prelude::*;
        let size = prop_oneof![
            1..64usize,
            1000..5000usize,
            4090..4100usize,
            1..300_000usize
        ];
        prop_oneof![
            size.clone().prop_map(Op::Push),
            size.clone().prop_map(Op::Lent),
            size.clone().prop_map(Op::Reserve),
            size.prop_map(Op::Take),
            Just(Op::Release),
            Just(Op::ReleaseSpare),
        ]
    }

    proptest::proptest! {
        /// Whatever the order of writes (copied or reserved), packets taken,
        /// packets still held and idle releases: every reservation has room,
        /// and the bytes come out once each, in order.
        #[test]
        fn any_order_of_writes_reservations_and_packets(
            ops in proptest::collection::vec(op(), 1..80)
        ) {
            let mut q = SendQueue::default();
            let (mut next, mut out) = (0u32, Vec::<u8>::new());
            let mut fill = |n: usize| -> Vec<u8> {
                (0..n).map(|_| { next += 1; (next % 251) as u8 }).collect()
            };
            let mut held = VecDeque::new();
            let mut written = 0usize;
            for op in ops {
                match op {
                    Op::Push(n) => {
                        q.push(&fill(n));
                        written += n;
                    }
                    Op::Lent(n) => {
                        q.push_lent(Bytes::from(fill(n)));
                        written += n;
                    }
                    Op::Reserve(n) => {
                        let mut r = q.reserve(n);
                        let room = r.capacity() - r.len();
                        proptest::prop_assert!(room > 0, "a reservation of no room");
                        let k = n.min(room);
                        let before = r.as_ptr();
                        r.extend_from_slice(&fill(k));
                        proptest::prop_assert_eq!(r.as_ptr(), before);
                        q.commit(r);
                        written += k;
                    }
                    Op::Take(n) => {
                        let p = q.take(n);
                        out.extend_from_slice(&p);
                        held.push_back(p);
                    }
                    Op::Release => drop(held.pop_front()),
                    Op::ReleaseSpare => {
                        if q.is_empty() {
                            q.release_spare();
                        }
                    }
                }
                proptest::prop_assert_eq!(q.len(), written - out.len());
            }
            while !q.is_empty() {
                out.extend_from_slice(&q.take(65_000));
            }
            let mut want = Vec::new();
            next = 0;
            want.extend((0..written).map(|_| { next += 1; (next % 251) as u8 }));
            proptest::prop_assert!(out == want, "bytes out of order or lost");
        }
    }

    #[test]
    fn a_reservation_after_a_carried_tail_always_has_room() {
        // Found by `utp soak` ("write zero"): a full 4 KiB chunk's bytes
        // carried into a reused 4 KiB spare left a region of no room, and
        // the stream's write returned 0.
        let mut q = SendQueue::default();
        q.push(&[1; 4096]);
        // Its packet still holds the first chunk: the next write takes a
        // fresh one, and writes it full.
        let packet = q.take(4096);
        assert_eq!(q.spares.len(), 1, "the drained chunk is a spare");
        q.push(&[2; 4096]);
        drop(packet);
        assert_eq!(q.chunks.len(), 1);
        assert_eq!(q.chunks[0].1.capacity(), 4096);
        let mut r = q.reserve(8000);
        assert!(r.capacity() > r.len(), "room for at least one byte");
        let k = 8000.min(r.capacity() - r.len());
        r.extend_from_slice(&vec![3; k]);
        q.commit(r);
        let mut out = Vec::new();
        while !q.is_empty() {
            out.extend_from_slice(&q.take(1400));
        }
        let mut want = vec![2; 4096];
        want.extend(std::iter::repeat_n(3, k));
        assert_eq!(out, want);
    }

    #[test]
    fn a_reservation_fills_the_chunk_writes_go_to_then_a_new_one() {
        let mut q = SendQueue::default();
        q.push(&[1; 9000]);
        let cap = q.chunks[0].0;
        assert!(cap - 9000 >= MIN_TAIL);
        // The rest of the chunk, in place: still one chunk.
        assert_eq!(reserve_fill(&mut q, 1 << 20, 2), cap - 9000);
        assert_eq!(q.chunks.len(), 1);
        assert_eq!(q.len(), cap);
        // Full: a chunk of its own.
        assert_eq!(reserve_fill(&mut q, 5000, 3), 5000);
        assert_eq!(q.chunks.len(), 2);
        let mut out = Vec::new();
        while !q.is_empty() {
            out.extend_from_slice(&q.take(1400));
        }
        let mut want = vec![1; 9000];
        want.extend(vec![2; cap - 9000]);
        want.extend(vec![3; 5000]);
        assert_eq!(out, want);
    }

    #[test]
    fn a_large_write_skips_a_few_bytes_left_at_a_chunk_end() {
        let mut q = SendQueue::default();
        q.push(&[1; 1000]);
        let room = q.chunks[0].0 - 1000;
        assert!(room < MIN_TAIL);
        // A write that fits still fills them.
        assert_eq!(reserve_fill(&mut q, 100, 2), 100);
        assert_eq!(q.chunks.len(), 1);
        // A larger one starts a chunk, and the few bytes not yet sent move
        // to its front: one packet, not one of 1,100 bytes and another.
        assert_eq!(reserve_fill(&mut q, 60_000, 3), 60_000);
        assert_eq!(q.chunks.len(), 1);
        let p = q.take(65_000);
        assert_eq!(p.len(), 61_100);
        assert_eq!(&p[..1000], &[1; 1000][..]);
        assert_eq!(&p[1000..1100], &[2; 100][..]);
        assert!(p[1100..].iter().all(|&b| b == 3));
        assert!(q.is_empty());
        // Had they been many, they would have stayed (and the packet would
        // end at the chunk's end).
        let mut q = SendQueue::default();
        q.push(&[1; 8000]);
        assert_eq!(q.chunks[0].0 - 8000, 192);
        assert_eq!(reserve_fill(&mut q, 60_000, 3), 60_000);
        assert_eq!(q.chunks.len(), 2);
        assert_eq!(q.take(65_000).len(), 8000);
        assert_eq!(q.take(65_000).len(), 60_000);
    }

    #[test]
    fn lent_bytes_go_out_without_a_copy_between_copied_writes() {
        let mut q = SendQueue::default();
        q.push(&[1; 100]);
        let lent = Bytes::from(vec![2u8; 100_000]);
        q.push_lent(lent.clone());
        q.push(&[3; 100]);
        // A small piece is copied like a write, into the chunk before it.
        q.push_lent(Bytes::from(vec![4u8; 10]));
        assert_eq!(q.len(), 100_210);
        assert_eq!(&q.take(65_000)[..], &[1; 100][..], "ends at its chunk");
        let a = q.take(65_000);
        let b = q.take(65_000);
        assert_eq!(a.as_ptr(), lent.as_ptr(), "the lent bytes themselves");
        assert_eq!(b.as_ptr(), lent[65_000..].as_ptr());
        assert_eq!(a.len() + b.len(), 100_000);
        let rest = q.take(65_000);
        assert_eq!(&rest[..100], &[3; 100][..]);
        assert_eq!(&rest[100..], &[4; 10][..]);
        assert!(q.is_empty());
        // Nothing of the lent bytes stays with the queue once sent.
        drop((a, b));
        assert!(lent.is_unique());
    }

    #[test]
    fn a_lent_chunks_last_few_bytes_join_the_next_chunks_packet() {
        let mut q = SendQueue::default();
        let a = Bytes::from((0..262_244u32).map(|i| i as u8).collect::<Vec<u8>>());
        let b = Bytes::from(vec![9u8; 262_144]);
        q.push_lent(a.clone());
        q.push_lent(b.clone());
        let packets: Vec<Bytes> = std::iter::from_fn(|| Some(q.take(65_000)))
            .take_while(|p| !p.is_empty())
            .collect();
        let sizes: Vec<usize> = packets.iter().map(|p| p.len()).collect();
        // 2,244 bytes left of the first chunk: with the second's first
        // bytes, one full packet rather than a packet of their own.
        assert_eq!(
            sizes,
            [65_000; 8].into_iter().chain([4388]).collect::<Vec<_>>()
        );
        assert_eq!(packets[0].as_ptr(), a.as_ptr(), "no copy within a chunk");
        let joined = &packets[4];
        assert_eq!(&joined[..2244], &a[260_000..]);
        assert!(joined[2244..].iter().all(|&x| x == 9));
        assert_eq!(
            packets[5].as_ptr(),
            b[62_756..].as_ptr(),
            "the second chunk's own bytes"
        );
        // A large remainder still ends its packet, uncopied.
        let mut q = SendQueue::default();
        q.push_lent(Bytes::from(vec![1u8; 100_000]));
        q.push_lent(Bytes::from(vec![2u8; 100_000]));
        assert_eq!(q.take(65_000).len(), 65_000);
        assert_eq!(
            q.take(65_000).len(),
            35_000,
            "over a quarter packet: its own"
        );
    }

    #[test]
    fn a_reservation_survives_its_chunk_being_drained_meanwhile() {
        let mut q = SendQueue::default();
        q.push(&[1; 100]);
        let mut r = q.reserve(50);
        // The driver sends everything queued while the region is filled.
        assert_eq!(&q.take(100)[..], &[1; 100][..]);
        r.extend_from_slice(&[2; 50]);
        q.commit(r);
        assert_eq!(q.len(), 50);
        assert_eq!(&q.take(1000)[..], &[2; 50][..]);
        assert!(q.is_empty());
    }
}
