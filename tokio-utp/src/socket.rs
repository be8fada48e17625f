//! `UtpSocket`: one UDP socket, its driver task, and the state they share.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};
use std::time::Instant;

use tokio::io::ReadBuf;
use tokio::net::ToSocketAddrs;
use tokio::time::Sleep;
use utp_proto::{Config, ConnHandle, Endpoint, EndpointStats};

use crate::listener::UtpListener;
use crate::stream::UtpStream;
use crate::udp;

/// Wakers of the tasks waiting on one connection.
#[derive(Default)]
pub(crate) struct ConnWakers {
    pub(crate) read: Option<Waker>,
    pub(crate) write: Option<Waker>,
}

impl ConnWakers {
    fn wake(&mut self) {
        if let Some(w) = self.read.take() {
            w.wake();
        }
        if let Some(w) = self.write.take() {
            w.wake();
        }
    }
}

/// State shared by the driver and every handle, behind one lock. The lock is
/// only held for short, non-blocking steps.
pub(crate) struct Inner {
    pub(crate) endpoint: Endpoint,
    pub(crate) wakers: HashMap<ConnHandle, ConnWakers>,
    driver_waker: Option<Waker>,
    pub(crate) accept_waker: Option<Waker>,
    pub(crate) listening: bool,
    /// Set when the driver stopped; handles fail instead of waiting forever.
    pub(crate) driver_gone: Option<io::ErrorKind>,
    /// When the driver's timer fires next (None: no timer).
    driver_timer: Option<Instant>,
    /// Datagrams that are not uTP, for the application (shared-port use).
    pub(crate) other: OtherQueue,
}

/// Most non-uTP datagrams, and bytes, held for [`UtpSocket::recv_other`].
const OTHER_MAX_DATAGRAMS: usize = 256;
const OTHER_MAX_BYTES: usize = 1 << 20;

/// Non-uTP datagrams (DHT, UDP trackers) waiting for the application. Only
/// kept once the application asked for them, and bounded; what does not fit
/// is dropped and counted, like a full socket buffer would.
#[derive(Default)]
pub(crate) struct OtherQueue {
    queue: VecDeque<(SocketAddr, Vec<u8>)>,
    bytes: usize,
    enabled: bool,
    dropped: u64,
    waker: Option<Waker>,
}

impl OtherQueue {
    fn push(&mut self, from: SocketAddr, data: &[u8]) {
        if !self.enabled
            || self.queue.len() >= OTHER_MAX_DATAGRAMS
            || self.bytes + data.len() > OTHER_MAX_BYTES
        {
            self.dropped += 1;
            return;
        }
        self.bytes += data.len();
        self.queue.push_back((from, data.to_vec()));
        if let Some(w) = self.waker.take() {
            w.wake();
        }
    }
}

impl Inner {
    /// Asks the driver to run (after the application queued work).
    pub(crate) fn wake_driver(&mut self) {
        if let Some(w) = &self.driver_waker {
            w.wake_by_ref();
        }
    }

    /// Wakes the driver if the endpoint has datagrams to send or an
    /// application call armed a timer earlier than the driver's (a persist
    /// probe, a linger deadline after release).
    pub(crate) fn wake_driver_if_needed(&mut self) {
        let earlier_timer = match (self.endpoint.poll_timeout(), self.driver_timer) {
            (Some(t), Some(d)) => t < d,
            (Some(_), None) => true,
            (None, _) => false,
        };
        if earlier_timer || self.endpoint.has_transmit() {
            self.wake_driver();
        }
    }
}

pub(crate) struct Shared {
    inner: Mutex<Inner>,
    pub(crate) udp: tokio::net::UdpSocket,
    pub(crate) local_addr: SocketAddr,
}

impl Shared {
    pub(crate) fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves consistent-enough state for
        // the remaining handles to fail cleanly; don't cascade the poison.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A user handle on the shared state. Dropping it wakes the driver *after*
/// the reference is gone, so the driver sees the new count when it checks
/// whether everybody left (waking it before would race with that check).
pub(crate) struct SharedRef(Option<Arc<Shared>>);

impl SharedRef {
    pub(crate) fn new(shared: Arc<Shared>) -> Self {
        Self(Some(shared))
    }
}

impl Clone for SharedRef {
    fn clone(&self) -> Self {
        Self(self.0.clone())
    }
}

impl std::ops::Deref for SharedRef {
    type Target = Arc<Shared>;

    fn deref(&self) -> &Arc<Shared> {
        self.0.as_ref().expect("only taken in drop")
    }
}

impl Drop for SharedRef {
    fn drop(&mut self) {
        if let Some(shared) = self.0.take() {
            let waker = shared.lock().driver_waker.clone();
            drop(shared);
            if let Some(w) = waker {
                w.wake();
            }
        }
    }
}

/// A uTP socket: one UDP socket carrying any number of inbound and outbound
/// connections.
///
/// [`UtpSocket::bind`] spawns the socket's driver on the current tokio
/// runtime; [`UtpSocket::bind_with_driver`] hands it to you instead. Clones
/// share the same socket.
#[derive(Clone)]
pub struct UtpSocket {
    pub(crate) shared: SharedRef,
}

impl std::fmt::Debug for UtpSocket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UtpSocket")
            .field("local_addr", &self.shared.local_addr)
            .finish()
    }
}

async fn resolve(addr: impl ToSocketAddrs) -> io::Result<SocketAddr> {
    tokio::net::lookup_host(addr)
        .await?
        .next()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "address resolved to nothing"))
}

impl UtpSocket {
    /// Binds a UDP socket with the default [`Config`] and spawns its driver.
    /// Must be called inside a tokio runtime.
    pub async fn bind(addr: impl ToSocketAddrs) -> io::Result<Self> {
        Self::bind_with_config(addr, Config::default()).await
    }

    /// Binds with a custom configuration and spawns the driver.
    pub async fn bind_with_config(addr: impl ToSocketAddrs, config: Config) -> io::Result<Self> {
        let (socket, driver) = Self::bind_with_driver(addr, config).await?;
        tokio::spawn(driver);
        Ok(socket)
    }

    /// Binds and returns the driver future without spawning it. Nothing moves
    /// until the driver is polled (spawn it, or run it alongside your work).
    pub async fn bind_with_driver(
        addr: impl ToSocketAddrs,
        config: Config,
    ) -> io::Result<(Self, Driver)> {
        let addr = resolve(addr).await?;
        Self::from_udp(udp::bind(addr)?, config)
    }

    /// Wraps an already bound UDP socket (e.g. one your DHT also uses) and
    /// spawns the driver. Non-uTP datagrams arriving on it are available from
    /// [`UtpSocket::recv_other`]. Must be called inside a tokio runtime.
    pub fn from_std(socket: std::net::UdpSocket, config: Config) -> io::Result<Self> {
        let (socket, driver) = Self::from_std_with_driver(socket, config)?;
        tokio::spawn(driver);
        Ok(socket)
    }

    /// Like [`UtpSocket::from_std`], returning the driver instead of spawning it.
    pub fn from_std_with_driver(
        socket: std::net::UdpSocket,
        config: Config,
    ) -> io::Result<(Self, Driver)> {
        socket.set_nonblocking(true)?;
        udp::set_dont_fragment(&socket, socket.local_addr()?.is_ipv6());
        Self::from_udp(tokio::net::UdpSocket::from_std(socket)?, config)
    }

    fn from_udp(udp: tokio::net::UdpSocket, config: Config) -> io::Result<(Self, Driver)> {
        let local_addr = udp.local_addr()?;
        let endpoint = Endpoint::new(Arc::new(config), Instant::now());
        let shared = Arc::new(Shared {
            inner: Mutex::new(Inner {
                endpoint,
                wakers: HashMap::new(),
                driver_waker: None,
                accept_waker: None,
                listening: false,
                driver_gone: None,
                driver_timer: None,
                other: OtherQueue::default(),
            }),
            udp,
            local_addr,
        });
        let driver = Driver::new(shared.clone());
        Ok((
            Self {
                shared: SharedRef::new(shared),
            },
            driver,
        ))
    }

    /// The local address the UDP socket is bound to.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        Ok(self.shared.local_addr)
    }

    /// Opens a connection to `addr` over this socket and completes the
    /// handshake. Fails with `TimedOut` after [`Config::connect_timeout`] and
    /// `ConnectionRefused` when the peer answers with a RESET.
    pub async fn connect(&self, addr: impl ToSocketAddrs) -> io::Result<UtpStream> {
        self.connect_inner(addr, None).await
    }

    /// Like [`UtpSocket::connect`], with settings for this connection only
    /// (timeouts, buffers, payload size, congestion controller, pacing, rate
    /// limits). Socket-wide settings (accept backlog, half-open bound, RESET
    /// rate) stay the socket's.
    pub async fn connect_with_config(
        &self,
        addr: impl ToSocketAddrs,
        config: Config,
    ) -> io::Result<UtpStream> {
        self.connect_inner(addr, Some(Arc::new(config))).await
    }

    async fn connect_inner(
        &self,
        addr: impl ToSocketAddrs,
        config: Option<Arc<Config>>,
    ) -> io::Result<UtpStream> {
        let target = udp::map_target(self.shared.local_addr, resolve(addr).await?)?;
        // The route's MTU caps the connection's path MTU search.
        let max_datagram = udp::route_max_datagram(target);
        let h = {
            let mut inner = self.shared.lock();
            if let Some(kind) = inner.driver_gone {
                return Err(io::Error::new(kind, "uTP socket driver stopped"));
            }
            let now = Instant::now();
            let h = match config {
                Some(cfg) => inner.endpoint.connect_with_config(now, target, cfg),
                None => inner.endpoint.connect(now, target),
            }
            .map_err(|e| io::Error::new(io::ErrorKind::AddrInUse, e))?;
            if let Some(max) = max_datagram {
                inner.endpoint.set_max_datagram(h, now, max);
            }
            inner.wakers.insert(h, ConnWakers::default());
            inner.wake_driver();
            h
        };
        let stream = UtpStream::new(SharedRef::clone(&self.shared), h);
        stream.wait_connected().await?;
        Ok(stream)
    }

    /// Starts accepting incoming connections on this socket. Only one listener
    /// may exist at a time; without one, incoming SYNs are refused.
    pub fn listen(&self) -> io::Result<UtpListener> {
        let mut inner = self.shared.lock();
        if inner.listening {
            return Err(io::Error::new(
                io::ErrorKind::AddrInUse,
                "this uTP socket already has a listener",
            ));
        }
        inner.listening = true;
        inner.endpoint.set_listening(true);
        Ok(UtpListener::new(self.clone()))
    }

    /// Socket-wide counters (datagrams, drops by reason, connections).
    pub fn stats(&self) -> EndpointStats {
        self.shared.lock().endpoint.stats()
    }

    /// Caps the upload of all this socket's connections together, in payload
    /// bytes per second (`None`: unlimited). Sends are paced to the limit;
    /// nothing is dropped. Per-connection limits:
    /// [`UtpStream::set_upload_limit`], [`Config::upload_limit`].
    pub fn set_upload_limit(&self, bytes_per_sec: Option<u64>) {
        let mut inner = self.shared.lock();
        inner.endpoint.set_upload_limit(bytes_per_sec);
        inner.wake_driver();
    }

    /// Caps the download of all this socket's connections together, in
    /// payload bytes per second (`None`: unlimited). Reads are metered, so
    /// receive buffers fill and the windows advertised to the peers shrink
    /// until they send no faster; nothing is dropped.
    pub fn set_download_limit(&self, bytes_per_sec: Option<u64>) {
        self.shared
            .lock()
            .endpoint
            .set_download_limit(bytes_per_sec);
    }

    /// The socket-wide (upload, download) limits in bytes per second.
    pub fn rate_limits(&self) -> (Option<u64>, Option<u64>) {
        self.shared.lock().endpoint.rate_limits()
    }

    /// Marks every packet this socket sends with `tos`: the IPv4 TOS byte
    /// and the IPv6 traffic class, DSCP in the upper six bits. LEDBAT
    /// traffic is commonly marked "lower effort": [`UtpSocket::DSCP_LE`]
    /// (RFC 8622) or the older [`UtpSocket::DSCP_CS1`]. The application's
    /// own datagrams on a shared port ([`UtpSocket::send_to`]) are marked
    /// too.
    pub fn set_traffic_class(&self, tos: u8) -> io::Result<()> {
        udp::set_traffic_class(&self.shared.udp, tos)
    }

    /// The marking in use (read back from the socket).
    pub fn traffic_class(&self) -> io::Result<u8> {
        udp::traffic_class(&self.shared.udp)
    }

    /// TOS byte for DSCP LE, "lower effort" (RFC 8622): DSCP 1.
    pub const DSCP_LE: u8 = 1 << 2;
    /// TOS byte for DSCP CS1, the older "scavenger" class: DSCP 8.
    pub const DSCP_CS1: u8 = 8 << 2;

    /// Receives the next datagram that is not uTP (version nibble other than
    /// 1, or not parseable as uTP), such as DHT or UDP-tracker traffic
    /// sharing this socket's port. Returns its length and sender; a datagram
    /// longer than `buf` is truncated, as with UDP.
    ///
    /// Such datagrams are kept only from the first call of this method (or
    /// [`UtpSocket::poll_recv_other`]) on, up to 256 datagrams / 1 MiB;
    /// others are dropped and counted in [`UtpSocket::other_dropped`].
    pub async fn recv_other(&self, buf: &mut [u8]) -> io::Result<(usize, SocketAddr)> {
        std::future::poll_fn(|cx| self.poll_recv_other(cx, buf)).await
    }

    /// Polls for the next non-uTP datagram (see [`UtpSocket::recv_other`]).
    pub fn poll_recv_other(
        &self,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<(usize, SocketAddr)>> {
        let mut inner = self.shared.lock();
        let q = &mut inner.other;
        q.enabled = true;
        if let Some((from, data)) = q.queue.pop_front() {
            q.bytes -= data.len();
            let n = data.len().min(buf.len());
            buf[..n].copy_from_slice(&data[..n]);
            return Poll::Ready(Ok((n, from)));
        }
        if let Some(kind) = inner.driver_gone {
            return Poll::Ready(Err(io::Error::new(kind, "uTP socket driver stopped")));
        }
        inner.other.waker = Some(cx.waker().clone());
        Poll::Pending
    }

    /// Non-uTP datagrams dropped: nobody asked for them yet, or the queue
    /// for [`UtpSocket::recv_other`] was full.
    pub fn other_dropped(&self) -> u64 {
        self.shared.lock().other.dropped
    }

    /// Sends a datagram of the application's own (DHT, tracker) from this
    /// socket's port.
    pub async fn send_to(&self, buf: &[u8], target: SocketAddr) -> io::Result<usize> {
        let target = udp::map_target(self.shared.local_addr, target)?;
        self.shared.udp.send_to(buf, target).await
    }
}

/// Most datagrams read, and sent, per driver step before yielding.
const BATCH: usize = 128;
/// Driver steps per poll before yielding to other tasks.
const STEPS: usize = 8;
/// Receive buffer: the largest UDP payload.
const MAX_DATAGRAM: usize = 65_536;

/// The future that runs a socket: reads datagrams, feeds the protocol core,
/// sends what it produces and keeps its timers. It completes when every
/// handle is gone and every connection has finished closing.
#[must_use = "the driver does nothing unless polled or spawned"]
pub struct Driver {
    shared: Arc<Shared>,
    timer: Pin<Box<Sleep>>,
    timer_at: Option<Instant>,
    recv_buf: Vec<u8>,
    send_buf: Vec<u8>,
    /// A datagram the socket wasn't ready for, waiting in `send_buf`
    /// (destination, length, send without DF).
    pending_tx: Option<(SocketAddr, usize, bool)>,
    /// Reused list of connections whose tasks need waking.
    touched: Vec<ConnHandle>,
}

impl std::fmt::Debug for Driver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Driver")
            .field("local_addr", &self.shared.local_addr)
            .finish()
    }
}

impl Driver {
    fn new(shared: Arc<Shared>) -> Self {
        Self {
            shared,
            timer: Box::pin(tokio::time::sleep(std::time::Duration::from_secs(3600))),
            timer_at: None,
            recv_buf: vec![0; MAX_DATAGRAM],
            send_buf: vec![0; MAX_DATAGRAM],
            pending_tx: None,
            touched: Vec::new(),
        }
    }

    /// One step: receive, run timers, transmit, wake tasks. Returns whether
    /// more work is probably waiting.
    fn step(&mut self, cx: &mut Context<'_>, inner: &mut Inner) -> io::Result<bool> {
        let udp = &self.shared.udp;
        let mut more = false;
        let mut received = 0;
        while received < BATCH {
            let mut rb = ReadBuf::new(&mut self.recv_buf);
            match udp.poll_recv_from(cx, &mut rb) {
                Poll::Ready(Ok(from)) => {
                    received += 1;
                    if let Err(e) =
                        inner
                            .endpoint
                            .handle_datagram(Instant::now(), from, rb.filled())
                    {
                        // Not uTP: maybe DHT or a tracker sharing the port.
                        tracing::trace!(%from, error = %e, "non-uTP datagram");
                        inner.other.push(from, rb.filled());
                    }
                }
                // ICMP errors surface here on some systems (Windows reports
                // "port unreachable" as a reset); they concern one peer, not
                // the socket.
                Poll::Ready(Err(e)) if is_transient(&e) || is_peer_error(&e) => {
                    tracing::debug!(error = %e, "transient receive error");
                    received += 1;
                }
                Poll::Ready(Err(e)) => return Err(e),
                Poll::Pending => break,
            }
        }
        more |= received == BATCH;

        let now = Instant::now();
        inner.endpoint.handle_timeout(now);

        let mut sent = 0;
        loop {
            if let Some((to, len, fragmentable)) = self.pending_tx {
                let buf = &self.send_buf[..len];
                let r = if fragmentable {
                    let v6 = self.shared.local_addr.is_ipv6();
                    udp::with_fragmentation(udp, v6, || udp.poll_send_to(cx, buf, to))
                } else {
                    udp.poll_send_to(cx, buf, to)
                };
                match r {
                    Poll::Ready(Ok(_)) => {}
                    // Larger than the route allows (its MTU shrank, or the
                    // interface's is smaller than the search's ceiling): the
                    // connections to `to` lower their size; the packet is
                    // resent by the protocol like any loss.
                    Poll::Ready(Err(e)) if udp::is_too_big(&e) => {
                        let max = udp::route_max_datagram(to)
                            .filter(|&m| m < len)
                            .unwrap_or(len.saturating_sub(1));
                        tracing::debug!(%to, len, max, "datagram too big");
                        inner.endpoint.on_datagram_too_big(now, to, max);
                    }
                    Poll::Ready(Err(e)) if is_transient(&e) || is_peer_error(&e) => {
                        tracing::debug!(%to, error = %e, "datagram not sent");
                    }
                    Poll::Ready(Err(e)) => return Err(e),
                    Poll::Pending => break,
                }
                self.pending_tx = None;
                sent += 1;
            }
            if sent >= BATCH {
                more |= inner.endpoint.has_transmit();
                break;
            }
            match inner.endpoint.poll_transmit(now, &mut self.send_buf) {
                Some(t) => self.pending_tx = Some((t.destination, t.len, t.fragmentable)),
                None => break,
            }
        }

        // Connections that lost a path MTU probe: the route's MTU may have
        // been lowered by ICMP meanwhile (cheap: no packet is sent).
        while let Some((h, to)) = inner.endpoint.poll_path_query() {
            if let Some(max) = udp::route_max_datagram(to) {
                inner.endpoint.set_max_datagram(h, now, max);
            }
        }

        self.touched.extend(inner.endpoint.drain_touched());
        for h in self.touched.drain(..) {
            if let Some(w) = inner.wakers.get_mut(&h) {
                w.wake();
            }
        }
        if inner.endpoint.accept_queue_len() > 0 {
            if let Some(w) = inner.accept_waker.take() {
                w.wake();
            }
        }
        Ok(more)
    }

    fn fail_all(&mut self, inner: &mut Inner, kind: io::ErrorKind) {
        inner.driver_gone = Some(kind);
        for w in inner.wakers.values_mut() {
            w.wake();
        }
        if let Some(w) = inner.accept_waker.take() {
            w.wake();
        }
        if let Some(w) = inner.other.waker.take() {
            w.wake();
        }
    }
}

fn is_transient(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::Interrupted | io::ErrorKind::WouldBlock | io::ErrorKind::OutOfMemory
    ) || e.raw_os_error() == Some(105) // ENOBUFS: the kernel dropped it, like the network would
}

/// Errors about one destination (unreachable, refused, too big): drop the
/// datagram, the protocol's retransmission and timeouts handle the rest.
fn is_peer_error(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::HostUnreachable
            | io::ErrorKind::NetworkUnreachable
            | io::ErrorKind::AddrNotAvailable
            | io::ErrorKind::PermissionDenied
            | io::ErrorKind::InvalidInput
    ) || e.raw_os_error() == Some(90) // EMSGSIZE
}

impl Future for Driver {
    type Output = io::Result<()>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = &mut *self;
        let shared = this.shared.clone();
        let mut inner = shared.lock();
        if !inner
            .driver_waker
            .as_ref()
            .is_some_and(|w| w.will_wake(cx.waker()))
        {
            inner.driver_waker = Some(cx.waker().clone());
        }
        let mut steps = 0;
        loop {
            match this.step(cx, &mut inner) {
                Ok(true) if steps + 1 < STEPS => steps += 1,
                Ok(true) => {
                    // Yield so streams on this runtime get to run, then go on.
                    cx.waker().wake_by_ref();
                    return Poll::Pending;
                }
                Ok(false) => break,
                Err(e) => {
                    tracing::error!(error = %e, "uTP socket failed");
                    this.fail_all(&mut inner, e.kind());
                    return Poll::Ready(Err(e));
                }
            }
        }

        // Nobody holds a handle and every connection has wound down.
        if Arc::strong_count(&this.shared) <= 2 && inner.endpoint.is_idle() {
            this.fail_all(&mut inner, io::ErrorKind::NotConnected);
            return Poll::Ready(Ok(()));
        }

        let next = inner.endpoint.poll_timeout();
        inner.driver_timer = next;
        match next {
            Some(t) => {
                if this.timer_at != Some(t) {
                    this.timer_at = Some(t);
                    this.timer.as_mut().reset(tokio::time::Instant::from_std(t));
                }
                if this.timer.as_mut().poll(cx).is_ready() {
                    this.timer_at = None;
                    cx.waker().wake_by_ref();
                }
            }
            None => this.timer_at = None,
        }
        Poll::Pending
    }
}
