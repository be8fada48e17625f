//! `UtpStream`: one reliable, ordered byte stream over uTP.

use std::future::{poll_fn, Future};
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::ToSocketAddrs;
use utp_proto::{Config, ConnHandle, Connection, ConnectionError, ConnectionStats, WriteError};

use crate::socket::{Driver, Inner, SharedRef, UtpSocket};

/// How long [`UtpStream::close`] waits for the peer's FIN after ours was
/// acknowledged. A peer that answers a FIN with its own does so within a
/// round trip; one that keeps sending is not waited for longer than this.
pub const CLOSE_GRACE: std::time::Duration = std::time::Duration::from_secs(2);

/// Writes up to this size are sent from the writing task itself (see
/// `Shared::send_direct`); larger ones are left to the driver, which batches.
const DIRECT_WRITE: usize = 4096;

/// Writes larger than this are copied outside the socket's lock (see
/// `StreamInner::poll_write_unlocked`); smaller copies cost less than
/// taking the lock twice. Reads larger than this copy outside it too.
const COPY_UNLOCKED: usize = 16 * 1024;

/// Most pieces of the receive buffers one unlocked read takes (64 KiB
/// datagrams on loopback: a 256 KiB read takes four or five).
const READ_PIECES: usize = 16;

/// Maps a write's error to the `std::io` error users match on.
fn write_error(e: WriteError) -> io::Error {
    match e {
        WriteError::Failed(e) => io_error(e),
        WriteError::Closed => io::Error::new(io::ErrorKind::BrokenPipe, "write after shutdown"),
    }
}

/// Maps a protocol error to the `std::io` error users match on.
pub(crate) fn io_error(e: ConnectionError) -> io::Error {
    let kind = match e {
        ConnectionError::Refused => io::ErrorKind::ConnectionRefused,
        ConnectionError::Reset => io::ErrorKind::ConnectionReset,
        ConnectionError::TimedOut => io::ErrorKind::TimedOut,
        ConnectionError::Unreachable => io::ErrorKind::HostUnreachable,
    };
    io::Error::new(kind, e)
}

/// How long a connect to a peer on this host keeps polling for the
/// SYN-ACK before its thread sleeps. Such a handshake takes some tens of
/// microseconds, less than a sleep and a wakeup cost on a virtual machine
/// (an idle CPU halts). In paired runs of 1,000 sequential connects:
/// sockets of their own ([`UtpStream::connect`]) went from 0.73-0.76x TCP's
/// rate to 0.90-0.93x (80, 100 and 120 us did as well; 40 us caught too
/// few); one shared socket, right after TCP's runs in the same runtime,
/// from 1.0-1.05x to 2.75x. Peers elsewhere answer later than any spin
/// worth its CPU, so they never get one.
const LOCAL_CONNECT_SPIN: std::time::Duration = std::time::Duration::from_micros(100);

/// Whether connects spin (see [`LOCAL_CONNECT_SPIN`]) is learnt from how
/// the last spins went, process-wide. A spin only pays while the peer's
/// side runs on another CPU meanwhile: with that CPU busy with another
/// program, the spin kept the peer off ours too, and 1,000 sequential
/// connects beside one busy loop (at normal priority, on 2 CPUs) ran at
/// 0.41x TCP's rate on one socket and 0.33x from sockets of their own,
/// against 2.0x and 0.57x without the spin. So after a spin that found no
/// SYN-ACK the next 1, 3, 7, ... up to 63 connects (by consecutive misses)
/// go without one, then one tries again.
struct ConnectSpin {
    misses: AtomicU32,
    skip: AtomicU32,
}

static CONNECT_SPIN: ConnectSpin = ConnectSpin::new();

impl ConnectSpin {
    const fn new() -> Self {
        Self {
            misses: AtomicU32::new(0),
            skip: AtomicU32::new(0),
        }
    }

    /// Whether this connect may spin; counts down the connects to skip.
    fn allowed(&self) -> bool {
        // Relaxed throughout: concurrent connects may skip one more or one
        // fewer, which costs nothing that matters.
        self.skip
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
            .is_err()
    }

    /// A spin ended: with the handshake done (`hit`) or without.
    fn ended(&self, hit: bool) {
        if hit {
            self.misses.store(0, Ordering::Relaxed);
        } else {
            let m = self.misses.fetch_add(1, Ordering::Relaxed) + 1;
            self.skip.store((1 << m.min(6)) - 1, Ordering::Relaxed);
        }
    }
}

/// Whether `addr` is on this host, so that its SYN-ACK comes back within
/// [`LOCAL_CONNECT_SPIN`].
pub(crate) fn on_this_host(addr: SocketAddr) -> bool {
    match addr.ip() {
        std::net::IpAddr::V4(ip) => ip.is_loopback(),
        std::net::IpAddr::V6(ip) => {
            ip.is_loopback() || ip.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback())
        }
    }
}

fn driver_gone(kind: io::ErrorKind) -> io::Error {
    io::Error::new(kind, "uTP socket driver stopped")
}

/// The part both halves share; dropping the last one releases the connection
/// (a FIN goes out if none was sent).
pub(crate) struct StreamInner {
    shared: SharedRef,
    handle: ConnHandle,
    peer: SocketAddr,
    /// Set by [`UtpStream::abort`]: the drop resets the connection
    /// instead of closing it.
    aborted: AtomicBool,
}

impl Drop for StreamInner {
    fn drop(&mut self) {
        let mut inner = self.shared.lock();
        inner.wakers.remove(&self.handle);
        // Room left by a burst of connections goes back.
        let w = &mut inner.wakers;
        if let Some(to) = utp_proto::trimmed_capacity(w.capacity(), w.len(), 0) {
            w.shrink_to(to);
        }
        if self.aborted.load(Ordering::Relaxed) {
            inner.endpoint.abort(self.handle, Instant::now());
        } else {
            inner.endpoint.release(self.handle, Instant::now());
        }
        // The FIN or RESET (or the ack of the peer's FIN) goes out from
        // here: a program that drops its stream and exits may not give the
        // driver a turn.
        self.shared.send_direct(&mut inner);
    }
}

impl StreamInner {
    fn poll_read(&self, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        if buf.remaining() == 0 {
            return Poll::Ready(Ok(()));
        }
        // A large read takes pieces of the receive buffers under the lock
        // and copies them after it (see `poll_write_unlocked`); a small one
        // copies at once (and makes no array of pieces to drop, which cost
        // a request/response message about 200 instructions).
        let unlocked = buf.remaining() > COPY_UNLOCKED;
        let taken = ready!(self.poll_take(cx, |c| {
            if unlocked {
                let mut pieces: [Bytes; READ_PIECES] = Default::default();
                let (n, k) = c.read_pieces(buf.remaining(), &mut pieces)?;
                Ok((n, Some((pieces, k))))
            } else {
                let n = c.read(buf.initialize_unfilled())?;
                buf.advance(n);
                Ok((n, None))
            }
        }));
        if let Some(Some((pieces, k))) = taken? {
            for p in &pieces[..k] {
                buf.put_slice(p);
            }
        }
        Poll::Ready(Ok(()))
    }

    /// The next in-order bytes, at most `max` of them, as they are in the
    /// receive buffers (no copy); `None` at end of stream.
    fn poll_read_chunk(&self, cx: &mut Context<'_>, max: usize) -> Poll<io::Result<Option<Bytes>>> {
        if max == 0 {
            return Poll::Ready(Ok(Some(Bytes::new())));
        }
        self.poll_take(cx, |c| {
            let mut piece = [Bytes::new()];
            let (n, _) = c.read_pieces(max, &mut piece)?;
            let [piece] = piece;
            Ok((n, piece))
        })
    }

    async fn write_chunk(&self, mut data: Bytes) -> io::Result<()> {
        while !data.is_empty() {
            poll_fn(|cx| self.poll_write_chunk(cx, &mut data)).await?;
        }
        Ok(())
    }

    /// What every read shares: waits until `take` has something to take
    /// (bytes, end of stream or an error), runs it under the lock and
    /// returns what it took after letting go of the lock; `None` at end of
    /// stream. `take` returns how many bytes it took with what it made of
    /// them.
    fn poll_take<T>(
        &self,
        cx: &mut Context<'_>,
        take: impl FnOnce(&mut Connection) -> Result<(usize, T), ConnectionError>,
    ) -> Poll<io::Result<Option<T>>> {
        let mut inner = self.shared.lock();
        let h = self.handle;
        // Nothing to read, no end of stream and no error: a read would change
        // nothing, and a reader usually polls once before its data arrives.
        // Skipping it spares the connection's bookkeeping after every call
        // (timers, flight accounting) on each request/response message.
        if !inner.endpoint.conn(h).is_readable() {
            if let Some(kind) = inner.driver_gone {
                return Poll::Ready(Err(driver_gone(kind)));
            }
            register(&mut inner, h, cx, true);
            return Poll::Pending;
        }
        let r = inner.endpoint.with_conn_reading(h, Instant::now(), |c| {
            let (n, taken) = take(c)?;
            Ok((n, taken, c.is_eof()))
        });
        match r {
            Ok((0, _, true)) => {
                // The ack of the peer's FIN goes out before the reader learns
                // of the EOF: a program that exits on EOF may not give the
                // driver another turn, and the peer would resend its FIN to
                // a closed port.
                self.shared.send_direct(&mut inner);
                Poll::Ready(Ok(None))
            }
            Ok((0, _, false)) => {
                if let Some(kind) = inner.driver_gone {
                    return Poll::Ready(Err(driver_gone(kind)));
                }
                register(&mut inner, h, cx, true);
                // A download limit may have armed a timer to retry the read.
                inner.wake_driver_if_needed();
                Poll::Pending
            }
            Ok((_, taken, _)) => {
                inner.wake_driver_if_needed();
                Poll::Ready(Ok(Some(taken)))
            }
            Err(e) => Poll::Ready(Err(io_error(e))),
        }
    }

    fn poll_write(&self, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        if data.is_empty() {
            return Poll::Ready(Ok(0));
        }
        let inner = self.shared.lock();
        if data.len() > COPY_UNLOCKED && inner.driver_gone.is_none() {
            return self.poll_write_unlocked(cx, inner, data);
        }
        self.poll_queue(cx, inner, |c| c.write(data))
    }

    /// Queues a prefix of `data` without copying it (split off `data`).
    fn poll_write_chunk(&self, cx: &mut Context<'_>, data: &mut Bytes) -> Poll<io::Result<usize>> {
        if data.is_empty() {
            return Poll::Ready(Ok(0));
        }
        let inner = self.shared.lock();
        self.poll_queue(cx, inner, |c| c.write_bytes(data))
    }

    /// What every write shares: queues what `write` queues, or waits for
    /// room, and gets the bytes going.
    fn poll_queue(
        &self,
        cx: &mut Context<'_>,
        mut inner: std::sync::MutexGuard<'_, Inner>,
        write: impl FnOnce(&mut Connection) -> Result<usize, WriteError>,
    ) -> Poll<io::Result<usize>> {
        let h = self.handle;
        if let Some(kind) = inner.driver_gone {
            return Poll::Ready(Err(driver_gone(kind)));
        }
        // Sent right below, or by the driver it wakes.
        match inner.endpoint.with_conn_sending(h, Instant::now(), write) {
            Ok(0) => {
                register(&mut inner, h, cx, false);
                Poll::Pending
            }
            Ok(n) if n <= DIRECT_WRITE => {
                self.shared.send_direct(&mut inner);
                Poll::Ready(Ok(n))
            }
            Ok(n) => {
                inner.wake_driver_if_needed();
                Poll::Ready(Ok(n))
            }
            Err(e) => Poll::Ready(Err(write_error(e))),
        }
    }

    /// A large write: room is reserved under the lock, the bytes are copied
    /// without it, and the copy is committed under it again. The socket's
    /// lock is shared by every connection and the driver; a copy of up to a
    /// megabyte into memory that may fault in afresh held all of them up
    /// (with 100 busy connections a worker thread often slept on the lock).
    fn poll_write_unlocked(
        &self,
        cx: &mut Context<'_>,
        mut inner: std::sync::MutexGuard<'_, Inner>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let h = self.handle;
        let reserved = inner
            .endpoint
            .with_conn(h, Instant::now(), |c| c.write_reserve(data.len()));
        let (mut buf, n) = match reserved {
            Ok(Some(r)) => r,
            Ok(None) => {
                register(&mut inner, h, cx, false);
                return Poll::Pending;
            }
            Err(e) => return Poll::Ready(Err(write_error(e))),
        };
        drop(inner);
        // Within the reserved capacity: the region never moves.
        buf.extend_from_slice(&data[..n]);
        let mut inner = self.shared.lock();
        let r = inner
            .endpoint
            .with_conn(h, Instant::now(), |c| c.write_commit(buf));
        inner.wake_driver_if_needed();
        Poll::Ready(r.map_err(write_error))
    }

    /// Sends FIN after the queued data and completes once it is acknowledged.
    fn poll_shutdown(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let mut inner = self.shared.lock();
        let h = self.handle;
        let (acked, err) = inner.endpoint.with_conn(h, Instant::now(), |c| {
            c.close();
            (c.is_fin_acked(), c.error())
        });
        if acked {
            return Poll::Ready(Ok(()));
        }
        if let Some(e) = err {
            return Poll::Ready(Err(io_error(e)));
        }
        if let Some(kind) = inner.driver_gone {
            return Poll::Ready(Err(driver_gone(kind)));
        }
        register(&mut inner, h, cx, false);
        inner.wake_driver_if_needed();
        Poll::Pending
    }

    /// Completes once the peer's FIN arrived or the connection failed.
    fn poll_peer_finished(&self, cx: &mut Context<'_>) -> Poll<()> {
        let mut inner = self.shared.lock();
        let c = inner.endpoint.conn(self.handle);
        if c.is_peer_finished() || c.error().is_some() || inner.driver_gone.is_some() {
            return Poll::Ready(());
        }
        register(&mut inner, self.handle, cx, true);
        Poll::Pending
    }

    fn stats(&self) -> ConnectionStats {
        self.shared.lock().endpoint.conn(self.handle).stats()
    }

    /// Runs `f` on the connection, then lets the driver act on the change.
    fn with_conn<R>(&self, f: impl FnOnce(&mut utp_proto::Connection) -> R) -> R {
        let mut inner = self.shared.lock();
        let r = inner.endpoint.with_conn(self.handle, Instant::now(), f);
        inner.wake_driver_if_needed();
        r
    }
}

fn register(inner: &mut Inner, h: ConnHandle, cx: &mut Context<'_>, read: bool) {
    let w = inner.wakers.entry(h).or_default();
    let slot = if read { &mut w.read } else { &mut w.write };
    if !slot.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
        *slot = Some(cx.waker().clone());
    }
}

/// A uTP connection: a reliable, ordered byte stream implementing tokio's
/// [`AsyncRead`] and [`AsyncWrite`].
///
/// `shutdown()` (or [`UtpStream::close`]) sends FIN and waits until the peer
/// acknowledged it; reading goes on after that (half-close). Dropping the
/// stream without closing still sends the queued data and a FIN from the
/// socket's driver.
pub struct UtpStream {
    inner: Arc<StreamInner>,
}

impl UtpStream {
    pub(crate) fn new(shared: SharedRef, handle: ConnHandle) -> Self {
        let peer = shared.lock().endpoint.peer_addr(handle);
        Self {
            inner: Arc::new(StreamInner {
                shared,
                handle,
                peer,
                aborted: AtomicBool::new(false),
            }),
        }
    }

    /// Connects to `addr` from a new socket on an ephemeral port and returns
    /// the stream with the socket's driver, which the caller must spawn:
    ///
    /// ```no_run
    /// # async fn f() -> std::io::Result<()> {
    /// use tokio::io::AsyncWriteExt;
    /// let (mut stream, driver) = tokio_utp::UtpStream::connect("127.0.0.1:4000").await?;
    /// tokio::spawn(driver);
    /// stream.write_all(b"Hi there!").await?;
    /// stream.close().await?;
    /// # Ok(()) }
    /// ```
    pub async fn connect(addr: impl ToSocketAddrs) -> io::Result<(UtpStream, Driver)> {
        Self::connect_with_config(addr, Config::default()).await
    }

    /// Like [`UtpStream::connect`] with a custom configuration.
    pub async fn connect_with_config(
        addr: impl ToSocketAddrs,
        config: Config,
    ) -> io::Result<(UtpStream, Driver)> {
        let target = tokio::net::lookup_host(addr)
            .await?
            .next()
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "no address"))?;
        let local: SocketAddr = if target.is_ipv4() {
            ([0, 0, 0, 0], 0).into()
        } else {
            ([0u16; 8], 0).into()
        };
        let (socket, mut driver) = UtpSocket::bind_with_driver(local, config).await?;
        let connect = socket.connect(target);
        tokio::pin!(connect);
        // Run the driver by hand until the handshake is done; the caller
        // spawns it afterwards. While `connect` spins for a peer on this
        // host (LOCAL_CONNECT_SPIN), each of its turns polls the driver too.
        let stream = poll_fn(|cx| {
            if let Poll::Ready(r) = connect.as_mut().poll(cx) {
                return Poll::Ready(r);
            }
            match Pin::new(&mut driver).poll(cx) {
                Poll::Ready(Ok(())) => Poll::Ready(Err(driver_gone(io::ErrorKind::NotConnected))),
                Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
                Poll::Pending => Poll::Pending,
            }
        })
        .await?;
        Ok((stream, driver))
    }

    /// Waits for the handshake; `spin` polls for it a while first (see
    /// [`LOCAL_CONNECT_SPIN`]).
    pub(crate) async fn wait_connected(&self, spin: bool) -> io::Result<()> {
        let mut spin_until =
            (spin && CONNECT_SPIN.allowed()).then(|| Instant::now() + LOCAL_CONNECT_SPIN);
        loop {
            let spinning = spin_until.is_some_and(|t| Instant::now() < t);
            if spin_until.is_some() && !spinning {
                CONNECT_SPIN.ended(false);
                spin_until = None;
            }
            let done = poll_fn(|cx| {
                let mut inner = self.inner.shared.lock();
                let h = self.inner.handle;
                let c = inner.endpoint.conn(h);
                if let Some(e) = c.error() {
                    return Poll::Ready(Some(Err(io_error(e))));
                }
                if c.is_established() {
                    return Poll::Ready(Some(Ok(())));
                }
                if let Some(kind) = inner.driver_gone {
                    return Poll::Ready(Some(Err(driver_gone(kind))));
                }
                if spinning {
                    return Poll::Ready(None);
                }
                register(&mut inner, h, cx, false);
                Poll::Pending
            })
            .await;
            match done {
                Some(r) => {
                    if spinning {
                        CONNECT_SPIN.ended(true);
                    }
                    return r;
                }
                // Polled again once the runtime has run its other ready
                // tasks and looked for I/O (the drivers' datagrams): a
                // plain self-wake could come round again before a
                // current-thread runtime polls its reactor.
                None => tokio::task::yield_now().await,
            }
        }
    }

    /// Sends FIN after all queued data and waits until the peer acknowledged
    /// it. Then it waits a little (at most [`CLOSE_GRACE`]) for the peer's own
    /// FIN, so that it gets acknowledged even if the program exits right
    /// after `close` returns; data the peer still sends is discarded.
    pub async fn close(self) -> io::Result<()> {
        poll_fn(|cx| self.inner.poll_shutdown(cx)).await?;
        let _ = tokio::time::timeout(CLOSE_GRACE, poll_fn(|cx| self.inner.poll_peer_finished(cx)))
            .await;
        // The ack of the peer's FIN goes out now, not at the driver's next
        // turn, which a program exiting after `close` may never give it.
        let mut inner = self.inner.shared.lock();
        self.inner.shared.send_direct(&mut inner);
        Ok(())
    }

    /// Aborts the connection, as a TCP reset does: unsent and unread data
    /// are discarded, a RESET goes to the peer at once (its reads and
    /// writes fail with `ConnectionReset`), and the connection is freed
    /// without the FIN handshake or TIME_WAIT. For a peer that misbehaves or
    /// is no longer wanted; [`UtpStream::close`] or a drop end it
    /// gracefully instead. Packets the peer still sends are answered like
    /// any for an unknown connection. A stream split with
    /// [`UtpStream::into_split`] is reunited first.
    pub fn abort(self) {
        // The one handle on the connection (halves are reunited into a
        // stream): the drop at the end of this call sends the RESET.
        self.inner.aborted.store(true, Ordering::Relaxed);
    }

    /// The peer's address.
    pub fn peer_addr(&self) -> io::Result<SocketAddr> {
        Ok(self.inner.peer)
    }

    /// The local address of the underlying UDP socket.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        Ok(self.inner.shared.local_addr)
    }

    /// Counters and current figures of this connection.
    pub fn stats(&self) -> ConnectionStats {
        self.inner.stats()
    }

    /// Caps this connection's upload, in payload bytes per second (`None`:
    /// unlimited); the socket's limit ([`crate::UtpSocket::set_upload_limit`])
    /// applies as well.
    pub fn set_upload_limit(&self, bytes_per_sec: Option<u64>) {
        self.inner.with_conn(|c| c.set_upload_limit(bytes_per_sec));
    }

    /// Caps this connection's download, in payload bytes per second (`None`:
    /// unlimited); the socket's limit applies as well.
    pub fn set_download_limit(&self, bytes_per_sec: Option<u64>) {
        self.inner
            .with_conn(|c| c.set_download_limit(bytes_per_sec));
    }

    /// Reads the next in-order bytes, at most `max` of them, without
    /// copying: they are handed over as they sit in the receive buffers
    /// (on loopback, whole 64 KiB datagrams' payloads). `None` at end of
    /// stream; a `max` of 0 returns no bytes at once. An alternative to
    /// [`AsyncRead`] that saves its copy; the two can be mixed. The bytes
    /// share the memory of the datagram they came in: a small piece kept
    /// for long keeps its whole datagram (up to 64 KiB) alive.
    pub async fn read_chunk(&mut self, max: usize) -> io::Result<Option<Bytes>> {
        poll_fn(|cx| self.inner.poll_read_chunk(cx, max)).await
    }

    /// Writes all of `data` without copying it, waiting for room in the send
    /// buffer as [`AsyncWrite`] writes do: packets are cut from `data`'s
    /// memory itself, which is held until the peer acknowledged them.
    /// (Pieces under 4 KiB are copied, as a write's bytes.) For data that is
    /// in [`Bytes`] already, such as file blocks read into them; can be
    /// mixed with [`AsyncWrite`] writes. A packet over 4 KiB (64 KiB ones
    /// on loopback) is cut from one chunk where it can be; a chunk's last
    /// bytes, if under a quarter packet, are copied into one packet with
    /// the next chunk's first. Chunks of a few packets or more gain the
    /// most; much smaller ones cost about what a write's copy does.
    ///
    /// Like `write_all`, it is not cancel-safe: if the future is dropped
    /// early, an unknown first part of `data` may have been queued.
    pub async fn write_chunk(&mut self, data: Bytes) -> io::Result<()> {
        self.inner.write_chunk(data).await
    }

    /// Splits into halves borrowed from the stream, for reading and writing
    /// at once in one task (as in `tokio::join!`). Dropping them changes
    /// nothing; `shutdown()` on the write half sends FIN.
    pub fn split(&mut self) -> (ReadHalf<'_>, WriteHalf<'_>) {
        (
            ReadHalf { inner: &self.inner },
            WriteHalf { inner: &self.inner },
        )
    }

    /// Splits into owned halves that can move to different tasks. Dropping the
    /// write half sends FIN (unless [`OwnedWriteHalf::forget`]); the
    /// connection is released when both are gone.
    /// [`OwnedReadHalf::reunite`] puts them back together.
    pub fn into_split(self) -> (OwnedReadHalf, OwnedWriteHalf) {
        (
            OwnedReadHalf {
                inner: self.inner.clone(),
            },
            OwnedWriteHalf {
                inner: self.inner,
                shutdown_on_drop: true,
            },
        )
    }
}

/// The reading half of a [`UtpStream`].
pub struct OwnedReadHalf {
    inner: Arc<StreamInner>,
}

impl OwnedReadHalf {
    /// Puts the stream back together from its two halves; fails, handing
    /// both back, when they come from different streams.
    pub fn reunite(self, other: OwnedWriteHalf) -> Result<UtpStream, ReuniteError> {
        reunite(self, other)
    }

    /// See [`UtpStream::read_chunk`].
    pub async fn read_chunk(&mut self, max: usize) -> io::Result<Option<Bytes>> {
        poll_fn(|cx| self.inner.poll_read_chunk(cx, max)).await
    }

    /// The peer's address.
    pub fn peer_addr(&self) -> io::Result<SocketAddr> {
        Ok(self.inner.peer)
    }

    /// Counters of the connection.
    pub fn stats(&self) -> ConnectionStats {
        self.inner.stats()
    }
}

/// The writing half of a [`UtpStream`]; dropping it sends FIN.
pub struct OwnedWriteHalf {
    inner: Arc<StreamInner>,
    shutdown_on_drop: bool,
}

impl OwnedWriteHalf {
    /// See [`OwnedReadHalf::reunite`].
    pub fn reunite(self, other: OwnedReadHalf) -> Result<UtpStream, ReuniteError> {
        reunite(other, self)
    }

    /// Drops the write half without sending FIN: the connection stays open
    /// for writing until the read half is dropped too (which sends the
    /// queued data and FIN, as dropping a whole stream does).
    pub fn forget(mut self) {
        self.shutdown_on_drop = false;
    }

    /// See [`UtpStream::write_chunk`].
    pub async fn write_chunk(&mut self, data: Bytes) -> io::Result<()> {
        self.inner.write_chunk(data).await
    }

    /// The peer's address.
    pub fn peer_addr(&self) -> io::Result<SocketAddr> {
        Ok(self.inner.peer)
    }

    /// Counters of the connection.
    pub fn stats(&self) -> ConnectionStats {
        self.inner.stats()
    }
}

impl Drop for OwnedWriteHalf {
    fn drop(&mut self) {
        if self.shutdown_on_drop {
            let mut inner = self.inner.shared.lock();
            inner
                .endpoint
                .with_conn(self.inner.handle, Instant::now(), |c| c.close());
            inner.wake_driver_if_needed();
        }
    }
}

fn reunite(read: OwnedReadHalf, mut write: OwnedWriteHalf) -> Result<UtpStream, ReuniteError> {
    if !Arc::ptr_eq(&read.inner, &write.inner) {
        return Err(ReuniteError(read, write));
    }
    // The stream lives on whole: no FIN.
    write.shutdown_on_drop = false;
    drop(write);
    Ok(UtpStream { inner: read.inner })
}

/// The halves given to [`OwnedReadHalf::reunite`] came from different
/// streams; both are handed back.
#[derive(Debug)]
pub struct ReuniteError(pub OwnedReadHalf, pub OwnedWriteHalf);

impl std::fmt::Display for ReuniteError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("tried to reunite halves that are not from the same stream")
    }
}

impl std::error::Error for ReuniteError {}

/// The reading half of a [`UtpStream`], borrowed from it by
/// [`UtpStream::split`].
pub struct ReadHalf<'a> {
    inner: &'a StreamInner,
}

impl ReadHalf<'_> {
    /// See [`UtpStream::read_chunk`].
    pub async fn read_chunk(&mut self, max: usize) -> io::Result<Option<Bytes>> {
        poll_fn(|cx| self.inner.poll_read_chunk(cx, max)).await
    }

    /// The peer's address.
    pub fn peer_addr(&self) -> io::Result<SocketAddr> {
        Ok(self.inner.peer)
    }
}

/// The writing half of a [`UtpStream`], borrowed from it by
/// [`UtpStream::split`]. Dropping it sends nothing; `shutdown()` sends FIN.
pub struct WriteHalf<'a> {
    inner: &'a StreamInner,
}

impl WriteHalf<'_> {
    /// See [`UtpStream::write_chunk`].
    pub async fn write_chunk(&mut self, data: Bytes) -> io::Result<()> {
        self.inner.write_chunk(data).await
    }

    /// The peer's address.
    pub fn peer_addr(&self) -> io::Result<SocketAddr> {
        Ok(self.inner.peer)
    }
}

/// `Debug` (the peer's address), `AsyncRead` and `AsyncWrite` for the
/// stream and its halves, which all go through their `StreamInner`.
macro_rules! through_inner {
    (debug $t:ty, $name:literal) => {
        impl std::fmt::Debug for $t {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.debug_struct($name)
                    .field("peer", &self.inner.peer)
                    .finish()
            }
        }
    };
    (read $t:ty) => {
        impl AsyncRead for $t {
            fn poll_read(
                self: Pin<&mut Self>,
                cx: &mut Context<'_>,
                buf: &mut ReadBuf<'_>,
            ) -> Poll<io::Result<()>> {
                self.inner.poll_read(cx, buf)
            }
        }
    };
    (write $t:ty) => {
        impl AsyncWrite for $t {
            fn poll_write(
                self: Pin<&mut Self>,
                cx: &mut Context<'_>,
                buf: &[u8],
            ) -> Poll<io::Result<usize>> {
                self.inner.poll_write(cx, buf)
            }

            fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
                // Bytes are with the driver as soon as write returns, like TCP's.
                Poll::Ready(Ok(()))
            }

            fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
                self.inner.poll_shutdown(cx)
            }
        }
    };
}

through_inner!(debug UtpStream, "UtpStream");
through_inner!(read UtpStream);
through_inner!(write UtpStream);
through_inner!(debug OwnedReadHalf, "OwnedReadHalf");
through_inner!(read OwnedReadHalf);
through_inner!(debug OwnedWriteHalf, "OwnedWriteHalf");
through_inner!(write OwnedWriteHalf);
through_inner!(debug ReadHalf<'_>, "ReadHalf");
through_inner!(read ReadHalf<'_>);
through_inner!(debug WriteHalf<'_>, "WriteHalf");
through_inner!(write WriteHalf<'_>);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connect_spins_back_off_after_misses_and_come_back_after_a_hit() {
        let s = ConnectSpin::new();
        let skipped_before_next_spin =
            |s: &ConnectSpin| (0..100).take_while(|_| !s.allowed()).count();
        assert_eq!(skipped_before_next_spin(&s), 0);
        for expected in [1, 3, 7, 15, 31, 63, 63, 63] {
            s.ended(false);
            assert_eq!(skipped_before_next_spin(&s), expected);
        }
        // A spin that found its SYN-ACK: the next miss starts over.
        s.ended(true);
        assert_eq!(skipped_before_next_spin(&s), 0);
        s.ended(false);
        assert_eq!(skipped_before_next_spin(&s), 1);
    }

    #[test]
    fn only_peers_on_this_host_get_a_connect_spin() {
        let on = |s: &str| on_this_host(s.parse().expect("address"));
        assert!(on("127.0.0.1:1"));
        assert!(on("127.3.2.1:1"));
        assert!(on("[::1]:1"));
        assert!(on("[::ffff:127.0.0.1]:1"));
        assert!(!on("10.0.0.1:1"));
        assert!(!on("192.168.1.2:1"));
        assert!(!on("[2001:db8::1]:1"));
        assert!(!on("[::ffff:10.0.0.1]:1"));
        assert!(!on("0.0.0.0:1"));
    }
}
