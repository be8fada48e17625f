//! `UtpSocket`: one UDP socket, its driver task, and the state they share.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, TryLockError};
use std::task::{Context, Poll, Waker};
use std::time::Instant;

use tokio::net::ToSocketAddrs;
use tokio::time::Sleep;
use utp_proto::{Config, ConnHandle, Endpoint, EndpointStats};

use crate::listener::UtpListener;
use crate::stream::UtpStream;
use crate::transport::Transport;
use crate::udp;

/// Wakers of the tasks waiting on one connection.
#[derive(Default)]
pub(crate) struct ConnWakers {
    pub(crate) read: Option<Waker>,
    pub(crate) write: Option<Waker>,
}

impl ConnWakers {
    /// Moves the wakers of the tasks `c` can now serve to `out`, to be
    /// woken once the lock is released. Every waiter on the write side
    /// (write, shutdown, connect, close) can go on once `c` is writable, and
    /// every waiter on the read side (read, peer's FIN) once it is readable;
    /// a task woken for nothing would only poll and wait again, and an ack
    /// arriving for a request/response stream would cost a task switch and
    /// an ack of its own for every message.
    fn take_ready_into(&mut self, c: Option<&utp_proto::Connection>, out: &mut Vec<Waker>) {
        if c.is_none_or(|c| c.is_readable()) {
            out.extend(self.read.take());
        }
        if c.is_none_or(|c| c.is_writable()) {
            out.extend(self.write.take());
        }
    }

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
    pub(crate) wakers: rustc_hash::FxHashMap<ConnHandle, ConnWakers>,
    driver_waker: Option<Waker>,
    /// Tasks waiting in `UtpListener::accept`.
    pub(crate) accept_waiters: WaitList,
    pub(crate) listening: bool,
    /// Set when the driver stopped; handles fail instead of waiting forever.
    pub(crate) driver_gone: Option<io::ErrorKind>,
    /// The driver was dropped unfinished (see `Drop for Driver`): waits
    /// fail, but the socket still works, so a dropped stream's FIN or
    /// RESET still goes out from the task that drops it (at a runtime's
    /// shutdown the driver's task may go before a task holding a stream).
    driver_dropped: bool,
    /// The driver's timer. It lives here, not in the driver, so that a task
    /// arming an earlier connection timer (the first message after a pause
    /// arms a tail-loss probe) moves it under the lock it holds instead of
    /// waking the driver task: that wake went through tokio's queue for
    /// tasks woken from outside a worker and roused a second worker, which
    /// left the first two or three round trips after every pause of
    /// request/response traffic on two CPUs (50-60 us against 16 on this
    /// machine). Made by the driver's first locked step.
    driver_sleep: Option<Pin<Box<Sleep>>>,
    /// The driver polled `driver_sleep` at its last locked step and it is
    /// pending, so it holds the driver's waker: moving it is enough. (If it
    /// fired since, the driver was woken and re-arms it itself.)
    driver_sleep_armed: bool,
    /// Datagrams that are not uTP, for the application (shared-port use).
    pub(crate) other: OtherQueue,
    /// Buffer for [`Shared::send_direct`], allocated on first use.
    direct_buf: Vec<u8>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        udp::give_buffer(std::mem::take(&mut self.direct_buf));
    }
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
    waiters: WaitList,
}

/// Tasks waiting for the same thing (an incoming connection, a datagram
/// that is not uTP). Any number may wait at once, as on tokio's own
/// sockets (`&self` methods, so several tasks can share a listener): all
/// are woken, and those that find nothing register again. A single slot
/// kept only the last task's waker, and the others waited forever.
#[derive(Default)]
pub(crate) struct WaitList(Vec<Waker>);

impl WaitList {
    /// Adds `w` unless its task is already waiting.
    pub(crate) fn register(&mut self, w: &Waker) {
        if !self.0.iter().any(|x| x.will_wake(w)) {
            self.0.push(w.clone());
        }
    }

    /// Takes every waiting task's waker.
    pub(crate) fn take(&mut self) -> impl Iterator<Item = Waker> + '_ {
        self.0.drain(..)
    }

    /// Wakes every waiting task.
    pub(crate) fn wake_all(&mut self) {
        self.take().for_each(Waker::wake);
    }
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
        self.waiters.wake_all();
    }
}

impl Inner {
    /// Asks the driver to run (after the application queued work).
    pub(crate) fn wake_driver(&mut self) {
        if let Some(w) = &self.driver_waker {
            w.wake_by_ref();
        }
    }

    /// Wakes the driver if the endpoint has datagrams to send. A timer an
    /// application call armed (a tail-loss probe, a persist probe, a linger
    /// deadline after release) that is earlier than the driver's moves the
    /// driver's timer instead; the driver is woken for it only while its
    /// timer is not armed. Only timers that came up since the driver last
    /// looked can be earlier (see `Driver::step`).
    pub(crate) fn wake_driver_if_needed(&mut self) {
        let mut wake = self.endpoint.has_transmit();
        if let Some(t) = self.endpoint.take_new_timer() {
            let t = tokio::time::Instant::from_std(t);
            match self
                .driver_sleep
                .as_mut()
                .filter(|_| self.driver_sleep_armed)
            {
                // The driver's waker stays with the timer; it fires earlier.
                Some(sleep) if t < sleep.deadline() => sleep.as_mut().reset(t),
                Some(_) => {}
                None => wake = true,
            }
        }
        if wake {
            self.wake_driver();
        }
    }
}

pub(crate) struct Shared {
    inner: SocketLock<Inner>,
    pub(crate) net: Net,
    pub(crate) local_addr: SocketAddr,
    /// Set (under the lock) while the driver holds datagrams it collected
    /// but has not handed to the socket yet. Meanwhile `send_direct` leaves
    /// sending to the driver: a datagram sent directly would overtake them,
    /// e.g. our first DATA its SYN-ACK, which libtorrent then acks without
    /// ever delivering the data.
    driver_tx: AtomicBool,
    /// Set by a task that found `driver_tx` set with datagrams of its own
    /// to send: the driver takes one more locked step after its send
    /// instead of being woken. A wake while it runs makes tokio queue it
    /// again and rouse an idle worker, a thread wakeup per hand-off (one per
    /// connect in a connect loop). Paired with `driver_tx` in the Dekker
    /// fashion (both sides store, then load, `SeqCst`), so at least one side
    /// sees the other: the driver takes the step, or the task finds it done
    /// sending and sends itself.
    handoff: AtomicBool,
}

/// How long a route's MTU is taken from the cache. A lost path MTU probe
/// asks the OS afresh (`route_max_datagram_fresh`), so a route change is
/// seen at once where it matters.
const ROUTE_CACHE_TTL: std::time::Duration = std::time::Duration::from_secs(10);
/// Most cached routes; the cache is cleared when full (rebuilt cheaply).
const ROUTE_CACHE_MAX: usize = 4096;

/// Recent answers of the OS route query by peer address, for every socket
/// of the process: a program with a socket per connection
/// (`UtpStream::connect`) asks once per peer, not once per socket. The
/// route is the host's whichever socket asks (the query's own throwaway
/// socket never was the asking socket's).
static ROUTE_CACHE: Mutex<Option<RouteCache>> = Mutex::new(None);

/// A route's largest datagram (`None`: unknown) and when the OS said so.
type RouteCache = HashMap<IpAddr, (Option<usize>, Instant)>;

/// What moves the datagrams: the UDP socket (batched), or a user transport.
pub(crate) enum Net {
    Udp(udp::UdpIo),
    Custom(Box<dyn Transport>),
}

/// Datagrams per receive or send step over a user transport.
const CUSTOM_BATCH: usize = 64;

/// How long [`SocketLock::lock`] spins on a held lock before sleeping on
/// it: a holder preempted mid-step (the longest waits) costs at most this.
const LOCK_SPIN: std::time::Duration = std::time::Duration::from_micros(100);

/// Spin-loop hints between two attempts at the lock (about a microsecond),
/// so the spinning thread does not keep taking the lock's cache line away
/// from the holder.
const LOCK_SPIN_BURST: usize = 32;

/// Whether spinning on a held lock can end before the holder's time slice
/// does: only where another CPU can run the holder meanwhile.
pub(crate) fn spin_pays() -> bool {
    static MULTI_CPU: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *MULTI_CPU.get_or_init(|| std::thread::available_parallelism().is_ok_and(|n| n.get() > 1))
}

/// The socket's lock, which knows the CPU its latest holder took it on.
///
/// It is held by the driver or a stream on another thread for a few
/// microseconds at a time (0.1-8 us on average per call site; at most a
/// small write's direct send makes a system call under it). Sleeping on
/// it costs a futex wait, a wakeup and an idle CPU in between, and on a
/// virtual machine that was more than the wait: 100 connections on 2 CPUs
/// found it held 400-700 times a run (100 MiB) and slept on it some 80
/// times. So a waiter spins a while (see [`LOCK_SPIN`]), unless the holder
/// took it on the waiter's own CPU: then the holder is not running (the
/// waiter is), most likely preempted by the waiter itself (a socket wakeup
/// puts the woken thread on the waker's CPU), and spinning would only burn
/// the time the holder needs; in ping-pong that was a 100 us stall a few
/// times every thousand round trips. Such a waiter sleeps on the lock at
/// once, which hands the CPU to the holder.
///
/// (It used to yield the CPU instead, after 5 us of spinning. With nothing
/// else to run a yield returns at once, but with anything else runnable,
/// even a busy loop at the lowest priority, the yield handed that the CPU
/// for a whole time slice: 100 connections on 2 CPUs beside two such loops
/// ran at 0.61x TCP's rate, against 0.83x now; medians of 30 paired runs.)
///
/// A panic while holding it leaves consistent-enough state for the
/// remaining handles to fail cleanly, so a poisoned lock is used as is.
pub(crate) struct SocketLock<T> {
    m: Mutex<T>,
    holder_cpu: AtomicI32,
}

impl<T> SocketLock<T> {
    pub(crate) fn new(value: T) -> Self {
        Self {
            m: Mutex::new(value),
            holder_cpu: AtomicI32::new(-1),
        }
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, T> {
        let cpu = udp::current_cpu();
        let g = self.acquire(cpu);
        // Relaxed: a stale value only makes a waiter spin or sleep when
        // the other would have paid off.
        self.holder_cpu.store(cpu, Ordering::Relaxed);
        g
    }

    /// Whether a waiter on `cpu` that has spun for `spun` should sleep on
    /// the lock now.
    fn waiter_sleeps(&self, cpu: i32, spun: std::time::Duration) -> bool {
        let holder_here = cpu >= 0 && self.holder_cpu.load(Ordering::Relaxed) == cpu;
        !spin_pays() || holder_here || spun > LOCK_SPIN
    }

    fn acquire(&self, cpu: i32) -> MutexGuard<'_, T> {
        let m = &self.m;
        // Read only once the lock was found held: the uncontended path reads
        // no clock.
        let mut spinning_since = None;
        loop {
            match m.try_lock() {
                Ok(g) => return g,
                Err(TryLockError::Poisoned(e)) => return e.into_inner(),
                Err(TryLockError::WouldBlock) => {}
            }
            let spun = spinning_since.get_or_insert_with(Instant::now).elapsed();
            if self.waiter_sleeps(cpu, spun) {
                return m.lock().unwrap_or_else(PoisonError::into_inner);
            }
            for _ in 0..LOCK_SPIN_BURST {
                std::hint::spin_loop();
            }
        }
    }
}

/// Most datagrams [`Shared::send_direct`] sends itself.
const DIRECT_DATAGRAMS: usize = 4;

impl Shared {
    /// The largest datagram toward `peer` the OS route (or the transport)
    /// allows, if known. Asking the OS costs four system calls (a socket
    /// connected to the peer), which every connect and accept would pay, so
    /// answers are cached for a while per peer address ([`ROUTE_CACHE`]).
    pub(crate) fn route_max_datagram(&self, peer: SocketAddr) -> Option<usize> {
        if matches!(self.net, Net::Udp(_)) {
            let cache = ROUTE_CACHE.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(&(max, at)) = cache.as_ref().and_then(|c| c.get(&peer.ip())) {
                if at.elapsed() < ROUTE_CACHE_TTL {
                    return max;
                }
            }
        }
        self.route_max_datagram_fresh(peer)
    }

    /// Like [`Shared::route_max_datagram`], always asking the OS.
    pub(crate) fn route_max_datagram_fresh(&self, peer: SocketAddr) -> Option<usize> {
        match &self.net {
            Net::Udp(_) => {
                let max = udp::route_max_datagram(peer);
                let mut cache = ROUTE_CACHE.lock().unwrap_or_else(|e| e.into_inner());
                let cache = cache.get_or_insert_with(HashMap::new);
                if cache.len() >= ROUTE_CACHE_MAX {
                    cache.clear();
                }
                cache.insert(peer.ip(), (max, Instant::now()));
                max
            }
            Net::Custom(t) => t.max_datagram(peer),
        }
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock()
    }

    /// Sends the endpoint's next few datagrams from the calling task, then
    /// wakes the driver if anything is left. For small writes
    /// (request/response traffic) this saves a task hop to the driver and
    /// back on every message, which is most of a loopback round trip. A
    /// socket too full to take a datagram loses it, as a full network queue
    /// would; the protocol's retransmission covers that rare case.
    pub(crate) fn send_direct(&self, inner: &mut Inner) {
        // A user transport is only driven by the driver; so is everything
        // while the driver has collected datagrams still to send.
        let mut driver_sending = self.driver_tx.load(Ordering::Acquire);
        if driver_sending && inner.driver_gone.is_none() && inner.endpoint.has_transmit() {
            self.handoff.store(true, Ordering::SeqCst);
            // The driver clears `driver_tx` only outside the lock we hold,
            // and sets it only under it: false now stays false.
            driver_sending = self.driver_tx.load(Ordering::SeqCst);
            if driver_sending {
                // Its extra step also decides its timer anew.
                return;
            }
        }
        let may_send = inner.driver_gone.is_none() || inner.driver_dropped;
        if let (true, Net::Udp(udp_socket), false) = (may_send, &self.net, driver_sending) {
            let now = Instant::now();
            let Inner {
                endpoint,
                direct_buf,
                ..
            } = inner;
            if direct_buf.is_empty() {
                *direct_buf = udp::take_buffer();
            }
            for _ in 0..DIRECT_DATAGRAMS {
                let Some(t) = endpoint.poll_transmit(now, direct_buf) else {
                    break;
                };
                // The system call itself, not tokio's `try_send_to`: that
                // one fails at once while tokio has no writable event cached
                // for the socket (a fresh socket, before the reactor's first
                // turn), which lost every first SYN to a 1 s retransmission.
                let sock = socket2::SockRef::from(udp_socket.socket());
                let to = t.destination.into();
                let send =
                    || udp::send_again_after_peer_error(|| sock.send_to(&direct_buf[..t.len], &to));
                let r = if t.fragmentable {
                    udp::with_fragmentation(udp_socket.socket(), self.local_addr.is_ipv6(), send)
                } else {
                    send()
                };
                match r {
                    Ok(_) => {}
                    Err(e) if udp::is_too_big(&e) => {
                        let max = self
                            .route_max_datagram_fresh(t.destination)
                            .filter(|&m| m < t.len)
                            .unwrap_or(t.len.saturating_sub(1));
                        endpoint.on_datagram_too_big(now, t.destination, max);
                    }
                    Err(e) if udp::is_unreachable_from_here(&e) => {
                        tracing::debug!(to = %t.destination, error = %e, "datagram not sent");
                        // Our SYN among them: the connect fails now.
                        endpoint.handle_syn_not_sent(now, t.destination, &direct_buf[..t.len]);
                    }
                    Err(e) => {
                        tracing::debug!(to = %t.destination, error = %e, "datagram not sent");
                    }
                }
            }
        }
        inner.wake_driver_if_needed();
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
            let weak = Arc::downgrade(&shared);
            let waker = shared.lock().driver_waker.clone();
            drop(shared);
            // Woken only when just the driver's own references are left
            // (it may have to finish): while other handles live, a wake
            // would cost a worker wakeup per dropped stream. Counted after
            // our drop, so of handles dropped at once the last sees it.
            if weak.strong_count() <= DRIVER_REFS {
                if let Some(w) = waker {
                    w.wake();
                }
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

/// Refuses peers no uTP connection can have: port 0, and multicast or
/// broadcast addresses. A SYN there waited out the whole connect timeout
/// (the OS drops a datagram to port 0 and refuses a broadcast), or went to
/// every host of a group at once.
fn check_peer(target: SocketAddr) -> io::Result<()> {
    let ip = target.ip().to_canonical();
    let broadcast = matches!(ip, IpAddr::V4(v4) if v4.is_broadcast());
    if target.port() == 0 || ip.is_multicast() || broadcast {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("no uTP peer can be at {target}"),
        ));
    }
    Ok(())
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
        let (udp, rcvbuf) = udp::bind(addr, config.socket_buffer)?;
        Self::from_udp(udp, config, rcvbuf)
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
        let ipv6 = socket.local_addr()?.is_ipv6();
        udp::set_dont_fragment(&socket, ipv6);
        udp::enable_recv_errors(&socket, ipv6);
        let rcvbuf = udp::receive_buffer(&socket);
        Self::from_udp(socket, config, rcvbuf)
    }

    /// A socket over a transport of your own instead of UDP (an in-memory
    /// [`MemoryNetwork`](crate::MemoryNetwork), a SOCKS5 relay, a socket
    /// wrapper), with its driver spawned. Must be called inside a tokio
    /// runtime. DSCP marking is the transport's business there.
    pub fn with_transport(transport: impl Transport, config: Config) -> io::Result<Self> {
        let (socket, driver) = Self::with_transport_and_driver(transport, config)?;
        tokio::spawn(driver);
        Ok(socket)
    }

    /// Like [`UtpSocket::with_transport`], returning the driver instead of
    /// spawning it.
    pub fn with_transport_and_driver(
        transport: impl Transport,
        config: Config,
    ) -> io::Result<(Self, Driver)> {
        let local_addr = transport.local_addr()?;
        Self::from_net(Net::Custom(Box::new(transport)), local_addr, config, None)
    }

    /// `rcvbuf`: the receive buffer the OS granted `udp`.
    fn from_udp(
        udp: std::net::UdpSocket,
        config: Config,
        rcvbuf: Option<usize>,
    ) -> io::Result<(Self, Driver)> {
        let local_addr = udp.local_addr()?;
        Self::from_net(Net::Udp(udp::UdpIo::new(udp)?), local_addr, config, rcvbuf)
    }

    fn from_net(
        net: Net,
        local_addr: SocketAddr,
        config: Config,
        rcvbuf: Option<usize>,
    ) -> io::Result<(Self, Driver)> {
        let mut endpoint = Endpoint::new(Arc::new(config), Instant::now());
        if let Some(bytes) = rcvbuf {
            endpoint.set_socket_receive_buffer(bytes);
        }
        let shared = Arc::new(Shared {
            inner: SocketLock::new(Inner {
                endpoint,
                wakers: rustc_hash::FxHashMap::default(),
                driver_waker: None,
                accept_waiters: WaitList::default(),
                listening: false,
                driver_gone: None,
                driver_dropped: false,
                driver_sleep: None,
                driver_sleep_armed: false,
                other: OtherQueue::default(),
                direct_buf: Vec::new(),
            }),
            net,
            local_addr,
            driver_tx: AtomicBool::new(false),
            handoff: AtomicBool::new(false),
        });
        let driver = Driver::new(shared.clone())?;
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
    /// handshake. Fails with `TimedOut` after [`Config::connect_timeout`],
    /// `ConnectionRefused` when the peer answers with a RESET (or its host
    /// reports the port closed), `HostUnreachable` when the OS will not
    /// send to it at all, and `InvalidInput` for port 0, multicast and
    /// broadcast addresses.
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
        check_peer(target)?;
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
            inner.wakers.insert(h, ConnWakers::default());
            // The SYN leaves from here: one task hop less per connect.
            self.shared.send_direct(&mut inner);
            h
        };
        // The route's MTU caps the connection's path MTU search; asked while
        // the SYN is on its way (the search starts after the handshake).
        if let Some(max) = self.shared.route_max_datagram(target) {
            self.shared
                .lock()
                .endpoint
                .set_max_datagram(h, Instant::now(), max);
        }
        let stream = UtpStream::new(SharedRef::clone(&self.shared), h);
        // A peer on this host answers sooner than a sleep and wakeup take.
        let spin = crate::stream::on_this_host(target) && spin_pays();
        stream.wait_connected(spin).await?;
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
        udp::set_traffic_class(self.udp()?, tos)
    }

    /// The marking in use (read back from the socket).
    pub fn traffic_class(&self) -> io::Result<u8> {
        udp::traffic_class(self.udp()?)
    }

    fn udp(&self) -> io::Result<&std::net::UdpSocket> {
        match &self.shared.net {
            Net::Udp(udp) => Ok(udp.socket()),
            Net::Custom(_) => Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "not a UDP socket: the transport handles marking",
            )),
        }
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
        inner.other.waiters.register(cx.waker());
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
        match &self.shared.net {
            Net::Udp(udp) => udp.send_to(buf, target).await,
            Net::Custom(t) => std::future::poll_fn(|cx| t.poll_send(cx, buf, target)).await,
        }
    }
}

/// What a driver step left to do.
enum Step {
    /// Nothing until the socket or a timer wakes the driver.
    Idle,
    /// Probably more to receive or send right away.
    More,
}

/// Driver steps (one receive call, its processing, one send batch) per poll
/// before yielding to other tasks.
const STEPS: usize = 64;

/// References the driver itself holds on the shared state: its own, and
/// the clone a poll works with (its other clones are gone by the time it
/// checks). As many or fewer: every user handle is gone.
const DRIVER_REFS: usize = 2;

/// The future that runs a socket: reads datagrams, feeds the protocol core,
/// sends what it produces and keeps its timers. It completes when every
/// handle is gone and every connection has finished closing.
///
/// System calls happen outside the shared lock, so streams on other threads
/// can read and write while the driver waits on the kernel.
#[must_use = "the driver does nothing unless polled or spawned"]
pub struct Driver {
    shared: Arc<Shared>,
    /// Batched UDP I/O; `None` over a user transport.
    io: Option<udp::BatchIo>,
    /// Over a user transport: datagrams received and to send.
    custom_rx: Vec<(SocketAddr, Vec<u8>)>,
    custom_tx: VecDeque<(SocketAddr, Vec<u8>)>,
    rx: udp::RxBuffers,
    tx: udp::TxBatch,
    /// The driver's timer fired when polled: poll again.
    timer_fired: bool,
    /// Reused list of connections whose tasks need waking.
    touched: Vec<ConnHandle>,
    /// Wakers collected under the lock, called after it is released (a woken
    /// task on another thread would only contend for it).
    wake: Vec<Waker>,
    /// `wake` holds a reader whose peer has finished (see `step`).
    fin_woken: bool,
    /// The next step collects even if nothing came in: the last one filled
    /// its send batch and sent it (the endpoint has more to send), or a
    /// task left its datagrams to this driver while it was sending (see
    /// `Shared::handoff`).
    collect_next: bool,
    /// When the endpoint's next timer is due, as of the last locked step.
    next_timer: Option<Instant>,
    /// The waker last registered as `Inner::driver_waker`.
    waker: Option<Waker>,
    /// Its buffers went back to the process's spares (see `poll`).
    released: bool,
    /// The wait that wakes the driver on an error-queue report (ICMP), made
    /// and polled (armed) only while a connect is pending; `None` otherwise
    /// and after each read of the queue (which may have used its wakeup).
    errors: Option<udp::ErrorWatch>,
    /// A connect waits for its SYN-ACK, as of the last locked step.
    connecting: bool,
    /// The last read of the error queue stopped before finding it empty.
    errors_left: bool,
    /// ICMP error reports read from it, for the next locked step.
    reports: Vec<udp::ErrorReport>,
}

impl std::fmt::Debug for Driver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Driver")
            .field("local_addr", &self.shared.local_addr)
            .finish()
    }
}

impl Driver {
    fn new(shared: Arc<Shared>) -> io::Result<Self> {
        let (io, tx) = match &shared.net {
            Net::Udp(udp) => {
                let io = udp::BatchIo::new(udp, shared.local_addr.is_ipv6())?;
                let tx = udp::TxBatch::new(&io);
                (Some(io), tx)
            }
            Net::Custom(_) => (None, udp::TxBatch::unbatched()),
        };
        Ok(Self {
            shared,
            io,
            custom_rx: Vec::new(),
            custom_tx: VecDeque::new(),
            rx: udp::RxBuffers::new(),
            tx,
            timer_fired: false,
            touched: Vec::new(),
            wake: Vec::new(),
            fin_woken: false,
            collect_next: false,
            next_timer: None,
            waker: None,
            released: false,
            errors: None,
            connecting: false,
            errors_left: false,
            reports: Vec::new(),
        })
    }

    /// Reads the socket's error queue if the OS flagged reports there (see
    /// `udp::enable_recv_errors`), for this poll's first step to handle.
    /// A flag check, no system call, on every poll.
    fn read_errors(&mut self, cx: &mut Context<'_>) {
        let Net::Udp(udp) = &self.shared.net else {
            return;
        };
        let drained = if self.errors_left {
            Some(udp::read_error_reports(udp.socket(), &mut self.reports))
        } else {
            udp.read_reported(&mut self.reports)
        };
        if let Some(drained) = drained {
            self.errors_read(drained);
            if !drained {
                // A flood: the rest at the next poll, after other work.
                cx.waker().wake_by_ref();
            }
        }
    }

    /// After a read of the error queue: the wait may have been woken by
    /// what was read, so a new one is armed if still needed.
    fn errors_read(&mut self, drained: bool) {
        self.errors = None;
        self.errors_left = !drained;
    }

    /// Arms the wait that wakes the driver on a report, while a connect
    /// waits for its SYN-ACK (an idle driver must end it at once when
    /// refused). Otherwise reports are read whenever the driver runs anyway
    /// (they come from our own sends; a "too big" from a transfer's). A
    /// wait kept armed, polled on every driver poll and looked at by the
    /// reactor on every readiness event of the socket, cost 1.2% of a
    /// ping-pong message's instructions (12,702 -> 12,850).
    fn arm_errors(&mut self, cx: &mut Context<'_>, waker_changed: bool) {
        let Net::Udp(udp) = &self.shared.net else {
            return;
        };
        if !self.connecting {
            self.errors = None;
            return;
        }
        if self.errors.is_some() && !waker_changed {
            return;
        }
        let watch = self.errors.get_or_insert_with(|| udp.error_watch());
        match watch.as_mut().poll(cx) {
            Poll::Pending => {}
            Poll::Ready(Ok(())) => {
                // Flagged since this poll's start (the wait cleared the
                // flag): read now, handled at the next poll.
                let drained = udp::read_error_reports(udp.socket(), &mut self.reports);
                self.errors_read(drained);
                cx.waker().wake_by_ref();
            }
            Poll::Ready(Err(e)) => {
                // The runtime is shutting down; the next poll tries again.
                tracing::debug!(error = %e, "cannot wait for error reports");
                self.errors = None;
            }
        }
    }

    /// Receives one batch, without the lock. Returns whether datagrams (or a
    /// per-peer error) came in; `false` means the socket is drained and the
    /// task will be woken when more arrives.
    fn receive(&mut self, cx: &mut Context<'_>) -> io::Result<bool> {
        let shared = self.shared.clone();
        let (io, udp_socket) = match (&mut self.io, &shared.net) {
            (Some(io), Net::Udp(udp_socket)) => (io, udp_socket),
            (_, Net::Custom(t)) => return self.receive_custom(cx, t.as_ref()),
            (None, Net::Udp(_)) => unreachable!("a UDP driver has batched I/O"),
        };
        match io.poll_recv(cx, udp_socket, &mut self.rx) {
            Poll::Ready(Ok(())) => Ok(true),
            // ICMP errors surface here on some systems (Linux reports "port
            // unreachable" as refused); they concern one peer, not the socket.
            Poll::Ready(Err(e)) if udp::is_transient(&e) || udp::is_peer_error(&e) => {
                tracing::debug!(error = %e, "transient receive error");
                Ok(true)
            }
            Poll::Ready(Err(e)) => Err(e),
            Poll::Pending => Ok(false),
        }
    }

    /// Receives up to a batch from a user transport, without the lock.
    fn receive_custom(&mut self, cx: &mut Context<'_>, t: &dyn Transport) -> io::Result<bool> {
        let mut buf = [0u8; udp::MAX_DATAGRAM];
        while self.custom_rx.len() < CUSTOM_BATCH {
            match t.poll_recv(cx, &mut buf) {
                Poll::Ready(Ok((n, from))) => {
                    // A transport claiming more than the buffer is not trusted.
                    let n = n.min(buf.len());
                    self.custom_rx.push((from, buf[..n].to_vec()));
                }
                Poll::Ready(Err(e)) if udp::is_transient(&e) || udp::is_peer_error(&e) => {}
                Poll::Ready(Err(e)) => return Err(e),
                Poll::Pending => break,
            }
        }
        Ok(!self.custom_rx.is_empty())
    }

    /// Under the lock: feeds what `receive` got to the endpoint, runs timers
    /// and collects the wakers to call.
    fn process(&mut self, inner: &mut Inner, now: Instant) {
        let custom = self
            .custom_rx
            .iter()
            .map(|(a, d)| (*a, udp::Datagram::Borrowed(d)));
        for (from, datagram) in self.rx.datagrams().chain(custom) {
            let (r, data) = match &datagram {
                udp::Datagram::Borrowed(d) => (inner.endpoint.handle_datagram(now, from, d), *d),
                udp::Datagram::Shared(b) => {
                    (inner.endpoint.handle_datagram_shared(now, from, b), &b[..])
                }
            };
            if let Err(e) = r {
                // Not uTP: maybe DHT or a tracker sharing the port.
                tracing::trace!(%from, error = %e, "non-uTP datagram");
                inner.other.push(from, data);
            }
        }
        self.rx.processed();
        self.custom_rx.clear();
        for r in self.reports.drain(..) {
            match r.problem {
                udp::Problem::Unreachable => {
                    if inner.endpoint.handle_unreachable(now, r.peer, r.quoted()) {
                        tracing::debug!(peer = %r.peer, "connect refused: port unreachable");
                    }
                }
                udp::Problem::TooBig(max) => {
                    inner.endpoint.handle_too_big(now, r.peer, r.quoted(), max);
                }
            }
        }
        inner.endpoint.handle_timeout(now);

        // Sends refused as larger than the route allows (its MTU shrank, or
        // the interface's is below the search's ceiling): the connections
        // to that peer lower their size; the packets are resent by the
        // protocol like any loss.
        for (to, head) in self.tx.not_sent.drain(..) {
            inner.endpoint.handle_syn_not_sent(now, to, &head);
        }
        for (to, len) in self.tx.too_big.drain(..) {
            let max = self
                .shared
                .route_max_datagram_fresh(to)
                .filter(|&m| m < len)
                .unwrap_or(len.saturating_sub(1));
            inner.endpoint.on_datagram_too_big(now, to, max);
        }
        // Connections that lost a path MTU probe: the route's MTU may have
        // been lowered by ICMP meanwhile (cheap: no packet is sent).
        while let Some((h, to)) = inner.endpoint.poll_path_query() {
            if let Some(max) = self.shared.route_max_datagram_fresh(to) {
                inner.endpoint.set_max_datagram(h, now, max);
            }
        }

        self.touched.extend(inner.endpoint.drain_touched());
        for h in self.touched.drain(..) {
            if let Some(w) = inner.wakers.get_mut(&h) {
                let c = inner.endpoint.get(h);
                if w.read.is_some() && c.is_some_and(|c| c.is_peer_finished()) {
                    self.fin_woken = true;
                }
                w.take_ready_into(c, &mut self.wake);
            }
        }
        if inner.endpoint.accept_queue_len() > 0 {
            self.wake.extend(inner.accept_waiters.take());
        }
    }

    /// Under the lock: collects the endpoint's datagrams into the send
    /// batch. Returns whether the batch filled up (the endpoint has more).
    fn collect(&mut self, inner: &mut Inner, now: Instant) -> bool {
        if self.io.is_none() {
            return self.collect_custom(inner, now);
        }
        if !self.tx.is_empty() {
            return false;
        }
        let endpoint = &mut inner.endpoint;
        let full = self.tx.fill(|buf| {
            // Large payloads go beside their header, gathered by the kernel
            // (one copy fewer per byte), where the OS has gather sends.
            let (t, payload) = if cfg!(target_os = "linux") {
                endpoint.poll_transmit_split(now, buf)?
            } else {
                (endpoint.poll_transmit(now, buf)?, None)
            };
            Some(udp::Outgoing {
                destination: t.destination,
                len: t.len,
                fragmentable: t.fragmentable,
                payload,
            })
        });
        if !self.tx.is_empty() {
            // Still under the lock, so no direct send runs in between.
            self.shared.driver_tx.store(true, Ordering::Release);
        }
        full
    }

    /// Sends the batch, without the lock. `Ok(false)`: the socket is full and
    /// the task will be woken when it drains.
    fn collect_custom(&mut self, inner: &mut Inner, now: Instant) -> bool {
        if !self.custom_tx.is_empty() {
            return false;
        }
        let mut buf = [0u8; udp::MAX_DATAGRAM];
        while self.custom_tx.len() < CUSTOM_BATCH {
            let Some(t) = inner.endpoint.poll_transmit(now, &mut buf) else {
                return false;
            };
            self.custom_tx
                .push_back((t.destination, buf[..t.len].to_vec()));
        }
        true
    }

    fn flush(&mut self, cx: &mut Context<'_>) -> io::Result<bool> {
        let shared = self.shared.clone();
        let (io, udp_socket) = match (&mut self.io, &shared.net) {
            (Some(io), Net::Udp(udp_socket)) => (io, udp_socket),
            (_, Net::Custom(t)) => {
                while let Some((to, data)) = self.custom_tx.front() {
                    match t.poll_send(cx, data, *to) {
                        Poll::Ready(Ok(_)) => {}
                        Poll::Ready(Err(e)) if udp::is_transient(&e) || udp::is_peer_error(&e) => {
                            tracing::debug!(%to, error = %e, "datagram not sent");
                        }
                        Poll::Ready(Err(e)) => return Err(e),
                        Poll::Pending => return Ok(false),
                    }
                    self.custom_tx.pop_front();
                }
                return Ok(true);
            }
            (None, Net::Udp(_)) => unreachable!("a UDP driver has batched I/O"),
        };
        if self.tx.is_empty() {
            return Ok(true);
        }
        match io.poll_flush(cx, udp_socket, &mut self.tx) {
            Poll::Ready(Ok(())) => {
                self.shared.driver_tx.store(false, Ordering::SeqCst);
                if self.shared.handoff.swap(false, Ordering::SeqCst) {
                    self.collect_next = true;
                }
                Ok(true)
            }
            Poll::Ready(Err(e)) => Err(e),
            Poll::Pending => Ok(false),
        }
    }

    /// One step: receive, process, send. After the first step of a poll, a
    /// step that received nothing and has nothing left to collect ends the
    /// poll without taking the lock: the first step ran the timers and
    /// collected what the tasks queued, and a task queuing more since then
    /// wakes the driver again. (Request/response traffic otherwise paid a
    /// second lock, timer run and collection for every message.)
    fn step(&mut self, cx: &mut Context<'_>, first: bool) -> io::Result<Step> {
        let received = self.receive(cx)?;
        let collect = std::mem::take(&mut self.collect_next);
        if !received && !first && !collect {
            return Ok(Step::Idle);
        }
        let shared = self.shared.clone();
        let mut inner = shared.lock();
        // One clock reading per step: processing and collecting take
        // microseconds, far below any timer's resolution.
        let now = Instant::now();
        self.process(&mut inner, now);
        // Everything due goes out now. An ack that may wait for a reply (a
        // lone small packet, see `Config::ack_delay`) is not due yet: the
        // woken reader's answer carries it, or the connection's timer sends
        // it alone. (Letting the woken tasks run first instead, by yielding,
        // made tokio wake a second worker to steal the driver on every
        // message: a thread wakeup and lock contention per round trip.)
        let full = self.collect(&mut inner, now);
        // The timer is armed under this lock: the poll ends without taking
        // it again. A task that arms an earlier one later compares with
        // the timer's deadline and moves it (see `Inner::driver_sleep`).
        inner.endpoint.take_new_timer();
        self.connecting = inner.endpoint.is_connecting();
        self.next_timer = inner.endpoint.poll_timeout();
        self.arm_timer(&mut inner, cx);
        drop(inner);
        // The woken tasks run while the batch goes out, except when one
        // learns of its peer's FIN: that reader may exit the program at once,
        // and the ack of the FIN must be out by then (while the driver holds
        // collected datagrams, tasks leave sending to it, to keep the order).
        let flushed = if std::mem::take(&mut self.fin_woken) {
            let flushed = self.flush(cx);
            self.wake_all();
            flushed
        } else {
            self.wake_all();
            self.flush(cx)
        };
        let sent_all = flushed?;
        self.collect_next |= full && sent_all;
        Ok(if received || self.collect_next {
            Step::More
        } else {
            Step::Idle
        })
    }

    /// Arms the driver's timer for `next_timer`, under the lock.
    fn arm_timer(&mut self, inner: &mut Inner, cx: &mut Context<'_>) {
        inner.driver_sleep_armed = false;
        let Some(t) = self.next_timer else {
            // Left as it is: should it fire, one poll finds nothing due.
            return;
        };
        let t = tokio::time::Instant::from_std(t);
        let sleep = inner
            .driver_sleep
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(t)));
        if sleep.deadline() != t {
            sleep.as_mut().reset(t);
        }
        if sleep.as_mut().poll(cx).is_ready() {
            self.timer_fired = true;
        } else {
            inner.driver_sleep_armed = true;
        }
    }

    fn wake_all(&mut self) {
        for w in self.wake.drain(..) {
            w.wake();
        }
    }

    fn fail_all(&mut self, inner: &mut Inner, kind: io::ErrorKind) {
        inner.driver_gone = Some(kind);
        for w in inner.wakers.values_mut() {
            w.wake();
        }
        inner.accept_waiters.wake_all();
        inner.other.waiters.wake_all();
    }
}

/// A driver dropped before it finished (its task aborted, its runtime shut
/// down, or never spawned after `UtpStream::connect`) moves nothing any
/// more: every handle fails from then on instead of waiting forever.
impl Drop for Driver {
    fn drop(&mut self) {
        let shared = self.shared.clone();
        let mut inner = shared.lock();
        if inner.driver_gone.is_none() {
            self.fail_all(&mut inner, io::ErrorKind::ConnectionAborted);
            inner.driver_dropped = true;
            // Its collected datagrams are gone with it: tasks send again.
            shared.driver_tx.store(false, Ordering::SeqCst);
        }
    }
}

/// Schedules the driver to run again after the tasks that are ready now.
/// A plain self-wake would not do: tokio runs a task that wakes itself
/// next, ahead of the tasks it just woke.
fn yield_to_others(cx: &mut Context<'_>) {
    let yield_now = std::pin::pin!(tokio::task::yield_now());
    if yield_now.poll(cx).is_ready() {
        // Not expected on a first poll; never lose the wakeup.
        cx.waker().wake_by_ref();
    }
}

impl Future for Driver {
    type Output = io::Result<()>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = &mut *self;
        let shared = this.shared.clone();
        // The waker hardly ever changes; the lock is only taken when it does.
        let waker_changed = !this.waker.as_ref().is_some_and(|w| w.will_wake(cx.waker()));
        if waker_changed {
            this.waker = Some(cx.waker().clone());
            shared.lock().driver_waker = Some(cx.waker().clone());
        }
        this.read_errors(cx);
        let mut steps = 0;
        let result = loop {
            // Leftovers from a send the socket wasn't ready for go first.
            match this.flush(cx).and_then(|_| this.step(cx, steps == 0)) {
                Ok(Step::More) if steps + 1 < STEPS => steps += 1,
                Ok(Step::More) => {
                    // Let streams on this runtime run, then go on.
                    yield_to_others(cx);
                    return Poll::Pending;
                }
                Ok(Step::Idle) => break Ok(()),
                Err(e) => break Err(e),
            }
        };
        if let Err(e) = result {
            tracing::error!(error = %e, "uTP socket failed");
            this.fail_all(&mut shared.lock(), e.kind());
            return Poll::Ready(Err(e));
        }

        // Nobody holds a handle and every connection has wound down.
        if Arc::strong_count(&this.shared) <= DRIVER_REFS {
            let mut inner = shared.lock();
            // Datagrams still in the batch (the socket was full) go first:
            // an aborted connection's RESET may be among them.
            if inner.endpoint.is_idle() && this.tx.is_empty() && this.custom_tx.is_empty() {
                this.fail_all(&mut inner, io::ErrorKind::NotConnected);
                return Poll::Ready(Ok(()));
            }
            // Only TIME_WAIT is left (10 s by default): a socket per
            // connection would otherwise hold its buffers all that time.
            // Checked once; a late datagram takes what it needs again.
            if !this.released && this.tx.is_empty() && inner.endpoint.is_winding_down() {
                this.released = true;
                this.rx.release();
                this.tx.release();
                udp::give_buffer(std::mem::take(&mut inner.direct_buf));
            }
        }

        this.arm_errors(cx, waker_changed);
        // Armed by this poll's locked steps; one that found it due already
        // has the timers run by the next poll.
        if std::mem::take(&mut this.timer_fired) {
            cx.waker().wake_by_ref();
        }
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_lock_held_past_the_spin_is_still_taken_and_exclusive() {
        let m = Arc::new(SocketLock::new(0u64));
        let held = Arc::new(std::sync::Barrier::new(2));
        let holder = {
            let (m, held) = (m.clone(), held.clone());
            std::thread::spawn(move || {
                let mut g = m.lock();
                held.wait();
                // Far past LOCK_SPIN: the waiter spins, then sleeps on it.
                std::thread::sleep(Duration::from_millis(20));
                *g += 1;
            })
        };
        held.wait();
        let t = Instant::now();
        let mut g = m.lock();
        assert!(t.elapsed() >= Duration::from_millis(10), "taken while held");
        assert_eq!(*g, 1, "the holder's change is seen");
        *g += 1;
        drop(g);
        holder.join().expect("holder");
        assert_eq!(*m.lock(), 2);
    }

    #[test]
    fn a_lock_released_during_the_spin_is_taken_and_contention_keeps_counts() {
        let m = Arc::new(SocketLock::new(0u64));
        let workers: Vec<_> = (0..4)
            .map(|_| {
                let m = m.clone();
                std::thread::spawn(move || {
                    for _ in 0..20_000 {
                        *m.lock() += 1;
                    }
                })
            })
            .collect();
        for w in workers {
            w.join().expect("worker");
        }
        assert_eq!(*m.lock(), 80_000);
    }

    /// A holder that took the lock on the waiter's CPU is not running while
    /// the waiter is: the waiter sleeps on the lock at once instead of
    /// spinning (for up to `LOCK_SPIN`) on the CPU the holder needs. A
    /// waiter elsewhere spins first, where another CPU can run the holder.
    #[cfg(target_os = "linux")]
    #[test]
    fn a_waiter_on_the_holders_cpu_sleeps_at_once_others_spin_first() {
        let m = Arc::new(SocketLock::new(0u64));
        std::thread::scope(|s| {
            s.spawn(|| {
                udp::pin_to_cpu(0).expect("pinned");
                *m.lock() += 1;
            });
        });
        assert_eq!(m.holder_cpu.load(Ordering::Relaxed), 0, "the holder's CPU");
        let zero = Duration::ZERO;
        assert!(m.waiter_sleeps(0, zero), "a waiter on the holder's CPU");
        assert!(m.waiter_sleeps(1, LOCK_SPIN * 2), "a waiter past the spin");
        assert_eq!(
            m.waiter_sleeps(1, zero),
            !spin_pays(),
            "a waiter on another CPU"
        );
        assert_eq!(*m.lock(), 1);
    }

    #[test]
    fn a_poisoned_lock_is_used_as_is() {
        let m = Arc::new(SocketLock::new(7u64));
        let m2 = m.clone();
        let _ = std::thread::spawn(move || {
            let _g = m2.lock();
            panic!("a panic while holding the lock");
        })
        .join();
        assert!(m.m.is_poisoned());
        assert_eq!(*m.lock(), 7);
    }

    /// A socket per connection: once only TIME_WAIT is left (10 s), the
    /// driver gives its receive and send buffers back, not before.
    #[tokio::test]
    async fn a_driver_left_with_time_wait_only_gives_its_buffers_back() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = UtpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (socket, mut driver) = UtpSocket::bind_with_driver("127.0.0.1:0", Config::default())
            .await
            .unwrap();
        let (held_tx, held_rx) = tokio::sync::oneshot::channel();
        let mut held_tx = Some(held_tx);
        // Runs the driver; reports its buffers while in use, then returns
        // once it released them (or ended: a failure).
        let watcher = tokio::spawn(std::future::poll_fn(move |cx| {
            let r = Pin::new(&mut driver).poll(cx);
            if driver.rx.active > 0 && !driver.tx.is_empty_buffer() {
                if let Some(t) = held_tx.take() {
                    let _ = t.send(driver.released);
                }
            }
            if driver.released {
                return Poll::Ready(Some((driver.rx.active, driver.tx.is_empty_buffer())));
            }
            r.map(|_| None)
        }));
        let server = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut buf = Vec::new();
            s.read_to_end(&mut buf).await.unwrap();
            s.write_all(&buf).await.unwrap();
            s.close().await.unwrap();
            drop(listener);
        });
        let mut stream = socket.connect(addr).await.unwrap();
        drop(socket);
        stream.write_all(&[7u8; 200_000]).await.unwrap();
        stream.shutdown().await.unwrap();
        let mut back = Vec::new();
        stream.read_to_end(&mut back).await.unwrap();
        assert_eq!(back, vec![7u8; 200_000]);
        let held = tokio::time::timeout(Duration::from_secs(5), held_rx).await;
        assert_eq!(held, Ok(Ok(false)), "in use: buffers held");
        drop(stream);
        server.await.unwrap();
        let released = tokio::time::timeout(Duration::from_secs(5), watcher)
            .await
            .expect("released within the TIME_WAIT")
            .unwrap();
        assert_eq!(released, Some((0, true)), "no slot, no send buffer");
    }
}
