//! The datagram layer under a [`crate::UtpSocket`], behind a small trait.
//!
//! The default is the real UDP socket with batched I/O (GSO/GRO,
//! `recvmmsg`). [`Transport`] lets uTP run over anything that moves
//! datagrams between addresses: the in-memory [`MemoryNetwork`] (tests,
//! simulations, no sockets at all), a SOCKS5 UDP relay, or a wrapper of your
//! own around a socket.

use std::collections::{HashMap, VecDeque};
use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};

/// Moves datagrams for a [`crate::UtpSocket`] (see
/// [`crate::UtpSocket::with_transport`]).
///
/// Semantics are UDP's: a datagram may be dropped, duplicated or reordered
/// (uTP recovers), each `poll_send` is one datagram, each `poll_recv` one
/// datagram. Both take `&self`: the driver receives while application tasks
/// may send.
pub trait Transport: Send + Sync + 'static {
    /// Receives one datagram into `buf` (truncating it if it is longer),
    /// returning its length and sender; `Pending` registers `cx` to be woken
    /// when one arrives.
    fn poll_recv(
        &self,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<(usize, SocketAddr)>>;

    /// Sends one datagram to `target`; `Pending` registers `cx` to be woken
    /// when it may be retried.
    fn poll_send(
        &self,
        cx: &mut Context<'_>,
        buf: &[u8],
        target: SocketAddr,
    ) -> Poll<io::Result<usize>>;

    /// The address peers see for this transport.
    fn local_addr(&self) -> io::Result<SocketAddr>;

    /// The largest datagram that reaches `peer`, if the transport knows it
    /// (it caps path MTU discovery; `None` leaves the search to probing).
    fn max_datagram(&self, peer: SocketAddr) -> Option<usize> {
        let _ = peer;
        None
    }
}

/// Datagrams and bytes waiting for one in-memory socket, at most this much
/// (like a socket buffer: more are dropped).
const INBOX_DATAGRAMS: usize = 4096;
const INBOX_BYTES: usize = 8 << 20;

#[derive(Default)]
struct Inbox {
    queue: VecDeque<(SocketAddr, Vec<u8>)>,
    bytes: usize,
    waker: Option<Waker>,
}

/// An in-memory network: sockets bound to any addresses you choose exchange
/// datagrams through queues, with no system calls. Cheap to clone (a
/// handle).
///
/// ```
/// # async fn run() -> std::io::Result<()> {
/// use tokio::io::{AsyncReadExt, AsyncWriteExt};
/// use tokio_utp::{Config, MemoryNetwork, UtpSocket};
///
/// let net = MemoryNetwork::new();
/// let a = UtpSocket::with_transport(net.bind("10.0.0.1:6881".parse().unwrap())?, Config::default())?;
/// let b = UtpSocket::with_transport(net.bind("10.0.0.2:6881".parse().unwrap())?, Config::default())?;
/// let listener = b.listen()?;
/// let mut out = a.connect("10.0.0.2:6881").await?;
/// let (mut inc, _) = listener.accept().await?;
/// out.write_all(b"no sockets involved").await?;
/// out.close().await?;
/// let mut got = String::new();
/// inc.read_to_string(&mut got).await?;
/// assert_eq!(got, "no sockets involved");
/// # Ok(()) }
/// # tokio::runtime::Runtime::new().unwrap().block_on(run()).unwrap();
/// ```
#[derive(Clone, Default)]
pub struct MemoryNetwork {
    inboxes: Arc<Mutex<HashMap<SocketAddr, Inbox>>>,
}

impl std::fmt::Debug for MemoryNetwork {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryNetwork").finish_non_exhaustive()
    }
}

impl MemoryNetwork {
    /// An empty network.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<SocketAddr, Inbox>> {
        self.inboxes.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A socket at `addr` on this network; `AddrInUse` if one is there.
    pub fn bind(&self, addr: SocketAddr) -> io::Result<MemorySocket> {
        let mut inboxes = self.lock();
        if inboxes.contains_key(&addr) {
            return Err(io::Error::new(
                io::ErrorKind::AddrInUse,
                format!("{addr} is taken on this memory network"),
            ));
        }
        inboxes.insert(addr, Inbox::default());
        Ok(MemorySocket {
            net: self.clone(),
            addr,
        })
    }
}

/// A socket of a [`MemoryNetwork`]; its address is freed when it is dropped.
#[derive(Debug)]
pub struct MemorySocket {
    net: MemoryNetwork,
    addr: SocketAddr,
}

impl Transport for MemorySocket {
    fn poll_recv(
        &self,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<(usize, SocketAddr)>> {
        let mut inboxes = self.net.lock();
        let Some(inbox) = inboxes.get_mut(&self.addr) else {
            return Poll::Ready(Err(io::ErrorKind::NotConnected.into()));
        };
        match inbox.queue.pop_front() {
            Some((from, data)) => {
                inbox.bytes -= data.len();
                let n = data.len().min(buf.len());
                buf[..n].copy_from_slice(&data[..n]);
                Poll::Ready(Ok((n, from)))
            }
            None => {
                inbox.waker = Some(cx.waker().clone());
                Poll::Pending
            }
        }
    }

    fn poll_send(
        &self,
        _cx: &mut Context<'_>,
        buf: &[u8],
        target: SocketAddr,
    ) -> Poll<io::Result<usize>> {
        let mut inboxes = self.net.lock();
        // Nobody there, or a full queue: lost, as UDP would lose it.
        if let Some(inbox) = inboxes.get_mut(&target) {
            if inbox.queue.len() < INBOX_DATAGRAMS && inbox.bytes + buf.len() <= INBOX_BYTES {
                inbox.bytes += buf.len();
                inbox.queue.push_back((self.addr, buf.to_vec()));
                if let Some(w) = inbox.waker.take() {
                    w.wake();
                }
            }
        }
        Poll::Ready(Ok(buf.len()))
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        Ok(self.addr)
    }
}

impl Drop for MemorySocket {
    fn drop(&mut self) {
        self.net.lock().remove(&self.addr);
    }
}
