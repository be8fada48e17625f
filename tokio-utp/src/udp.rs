//! Datagram I/O in one place: socket setup, and batched sending and
//! receiving through `quinn-udp` (recvmmsg, GSO and GRO on Linux; one
//! datagram per call elsewhere).
//!
//! Sending: the driver fills a [`TxBatch`] with the endpoint's datagrams;
//! consecutive datagrams to the same destination with the same length become
//! one GSO send (the kernel splits them), so a bulk sender pays one system
//! call per ~64 KiB instead of one per packet.
//!
//! Receiving: [`RxBuffers`] holds several receive buffers for one recvmmsg;
//! with GRO the kernel may hand back many same-sized datagrams of one sender
//! in one buffer, which [`RxBuffers::datagrams`] splits again.

use std::io::{self, IoSliceMut};
use std::net::SocketAddr;
use std::task::{Context, Poll};

use quinn_udp::{RecvMeta, UdpSocketState};
use socket2::{Domain, Protocol, Socket, Type};
use tokio::io::Interest;

/// Socket buffer size we ask the kernel for: bursts of a full window must not
/// overflow the default ~200 KiB buffers (the kernel caps it at rmem_max).
const SOCKET_BUFFER: usize = 4 << 20;

/// The largest datagram we send or receive (a UDP payload is at most 65,507
/// bytes over IPv4; 65,536 keeps buffers a power of two).
pub(crate) const MAX_DATAGRAM: usize = 65_536;

/// Largest GSO send: the kernel refuses a super-datagram whose total exceeds
/// what one UDP datagram could carry.
const MAX_GSO_BYTES: usize = 65_000;

/// Bytes of datagrams the driver collects before it sends them.
const TX_BYTES: usize = 256 * 1024;

/// Most datagrams the driver collects before it sends them (bounds the work
/// done under the lock per step, whatever the datagram size).
const TX_DATAGRAMS: usize = 256;

/// Receive buffers per recvmmsg call. Each holds one datagram, or with GRO up
/// to 64 KiB of same-sized datagrams of one sender. The driver acks what one
/// call delivered before the next call, so this also bounds how late an ack
/// can be (at most one call's worth of packets).
const RX_BUFFERS: usize = 8;

/// Binds a non-blocking UDP socket with large buffers; `[::]` is dual-stack.
pub(crate) fn bind(addr: SocketAddr) -> io::Result<tokio::net::UdpSocket> {
    let domain = Domain::for_address(addr);
    let sock = Socket::new(domain, Type::DGRAM, Some(Protocol::UDP))?;
    if addr.is_ipv6() {
        // Dual stack where the OS allows it; an error here is not fatal.
        let _ = sock.set_only_v6(false);
    }
    let _ = sock.set_recv_buffer_size(SOCKET_BUFFER);
    let _ = sock.set_send_buffer_size(SOCKET_BUFFER);
    let rcv = sock.recv_buffer_size().unwrap_or(0);
    if rcv < SOCKET_BUFFER {
        // Linux reports twice the granted size; less than asked means the
        // administrator's cap (net.core.rmem_max) applies: bursts may drop.
        tracing::debug!(
            asked = SOCKET_BUFFER,
            got = rcv,
            "UDP receive buffer capped by the OS (raise net.core.rmem_max)"
        );
    }
    sock.set_nonblocking(true)?;
    sock.bind(&addr.into())?;
    tokio::net::UdpSocket::from_std(sock.into())
}

/// Adapts `target` to the socket's address family (IPv4 peers on an IPv6
/// socket become IPv4-mapped addresses).
pub(crate) fn map_target(local: SocketAddr, target: SocketAddr) -> io::Result<SocketAddr> {
    match (local, target) {
        (SocketAddr::V6(_), SocketAddr::V4(v4)) => {
            Ok(SocketAddr::new(v4.ip().to_ipv6_mapped().into(), v4.port()))
        }
        (SocketAddr::V4(_), SocketAddr::V6(v6)) => match v6.ip().to_ipv4_mapped() {
            Some(ip) => Ok(SocketAddr::new(ip.into(), v6.port())),
            None => Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "cannot reach an IPv6 address from an IPv4 socket",
            )),
        },
        _ => Ok(target),
    }
}

/// Batched send and receive on one tokio UDP socket.
pub(crate) struct BatchIo {
    state: UdpSocketState,
}

impl BatchIo {
    /// Prepares `udp` for batched I/O (enables GRO where available).
    pub(crate) fn new(udp: &tokio::net::UdpSocket) -> io::Result<Self> {
        let state = UdpSocketState::new(udp.into())?;
        tracing::debug!(
            gso_segments = state.max_gso_segments(),
            gro_segments = state.gro_segments(),
            "datagram batching"
        );
        Ok(Self { state })
    }

    /// Most segments one send may carry (1 without GSO).
    fn max_segments(&self) -> usize {
        self.state.max_gso_segments()
    }

    /// Receives up to [`RX_BUFFERS`] buffers' worth of datagrams.
    pub(crate) fn poll_recv(
        &self,
        cx: &mut Context<'_>,
        udp: &tokio::net::UdpSocket,
        rx: &mut RxBuffers,
    ) -> Poll<io::Result<()>> {
        rx.count = 0;
        rx.full = false;
        loop {
            std::task::ready!(udp.poll_recv_ready(cx))?;
            let mut slices = slices(&mut rx.buf);
            let meta = &mut rx.meta;
            let r = udp.try_io(Interest::READABLE, || {
                self.state.recv(udp.into(), &mut slices, meta)
            });
            match r {
                Ok(n) => {
                    rx.count = n;
                    return Poll::Ready(Ok(()));
                }
                // try_io cleared the readiness: poll it again.
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }

    /// Sends the batch's groups in order; `Pending` leaves the rest queued.
    /// Errors about one destination drop that group (the protocol resends);
    /// other errors are returned.
    pub(crate) fn poll_flush(
        &self,
        cx: &mut Context<'_>,
        udp: &tokio::net::UdpSocket,
        tx: &mut TxBatch,
    ) -> Poll<io::Result<()>> {
        while let Some(g) = tx.groups.get(tx.next) {
            let transmit = quinn_udp::Transmit {
                destination: g.destination,
                ecn: None,
                contents: &tx.buf[g.start..g.start + g.len],
                segment_size: (g.count > 1).then_some(g.segment),
                src_ip: None,
            };
            let r = loop {
                std::task::ready!(udp.poll_send_ready(cx))?;
                match udp.try_io(Interest::WRITABLE, || {
                    self.state.try_send(udp.into(), &transmit)
                }) {
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                    r => break r,
                }
            };
            if let Err(e) = r {
                if is_transient(&e) || is_peer_error(&e) {
                    tracing::debug!(to = %g.destination, error = %e, "datagrams not sent");
                } else {
                    return Poll::Ready(Err(e));
                }
            }
            tx.next += 1;
        }
        tx.clear();
        Poll::Ready(Ok(()))
    }
}

/// Errors that lose a datagram but say nothing about the socket.
pub(crate) fn is_transient(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::Interrupted | io::ErrorKind::WouldBlock | io::ErrorKind::OutOfMemory
    ) || e.raw_os_error() == Some(105) // ENOBUFS: the kernel dropped it, like the network would
        || e.raw_os_error() == Some(5) // EIO: GSO unsupported by the device; quinn-udp turns it off
}

/// Errors about one destination (unreachable, refused, too big): drop the
/// datagram, the protocol's retransmission and timeouts handle the rest.
pub(crate) fn is_peer_error(e: &io::Error) -> bool {
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

/// Receive buffers and what the last call put in them.
pub(crate) struct RxBuffers {
    buf: Vec<u8>,
    meta: [RecvMeta; RX_BUFFERS],
    count: usize,
    full: bool,
}

impl RxBuffers {
    pub(crate) fn new() -> Self {
        Self {
            // Zeroed pages cost no memory until the kernel writes into them.
            buf: vec![0; RX_BUFFERS * MAX_DATAGRAM],
            meta: [RecvMeta::default(); RX_BUFFERS],
            count: 0,
            full: false,
        }
    }

    /// Marks the last receive's datagrams as handled.
    pub(crate) fn processed(&mut self) {
        self.full = self.count == RX_BUFFERS;
        self.count = 0;
    }

    /// Whether the last receive filled every buffer (more is probably
    /// waiting in the socket).
    pub(crate) fn was_full(&self) -> bool {
        self.full
    }

    /// The datagrams of the last receive, GRO buffers split at their stride.
    pub(crate) fn datagrams(&self) -> impl Iterator<Item = (SocketAddr, &[u8])> {
        self.meta[..self.count]
            .iter()
            .zip(self.buf.chunks_exact(MAX_DATAGRAM))
            .flat_map(|(m, b)| {
                let data = &b[..m.len.min(b.len())];
                // A stride of 0 would never advance: treat it as one datagram.
                let stride = if m.stride == 0 { data.len() } else { m.stride };
                data.chunks(stride.max(1)).map(move |d| (m.addr, d))
            })
    }
}

fn slices(buf: &mut [u8]) -> [IoSliceMut<'_>; RX_BUFFERS] {
    let mut chunks = buf.chunks_exact_mut(MAX_DATAGRAM);
    std::array::from_fn(|_| IoSliceMut::new(chunks.next().expect("RX_BUFFERS chunks")))
}

/// One send: `count` datagrams of `segment` bytes (the last may be shorter)
/// to one destination, contiguous in the batch buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Group {
    destination: SocketAddr,
    start: usize,
    len: usize,
    segment: usize,
    count: usize,
}

/// Outgoing datagrams collected from the endpoint, grouped for GSO.
pub(crate) struct TxBatch {
    /// `TX_BYTES` long once used; `filled` bytes of it hold datagrams.
    buf: Vec<u8>,
    filled: usize,
    groups: Vec<Group>,
    /// Groups before this one were sent.
    next: usize,
    datagrams: usize,
    max_segments: usize,
}

impl TxBatch {
    pub(crate) fn new(io: &BatchIo) -> Self {
        Self::with_max_segments(io.max_segments())
    }

    fn with_max_segments(max_segments: usize) -> Self {
        Self {
            buf: Vec::new(),
            filled: 0,
            groups: Vec::new(),
            next: 0,
            datagrams: 0,
            max_segments: max_segments.max(1),
        }
    }

    /// Whether nothing waits to be sent.
    pub(crate) fn is_empty(&self) -> bool {
        self.next >= self.groups.len()
    }

    fn clear(&mut self) {
        self.filled = 0;
        self.groups.clear();
        self.next = 0;
        self.datagrams = 0;
    }

    fn has_room(&self) -> bool {
        self.datagrams < TX_DATAGRAMS && self.filled + MAX_DATAGRAM <= TX_BYTES
    }

    /// Collects datagrams from `produce` (which writes one into the buffer it
    /// is given and returns its destination and length) until it has none or
    /// the batch is full. Returns whether the batch stopped for lack of room.
    pub(crate) fn fill(
        &mut self,
        mut produce: impl FnMut(&mut [u8]) -> Option<(SocketAddr, usize)>,
    ) -> bool {
        if self.buf.is_empty() {
            // Allocated on first use, once: zeroed pages cost nothing until
            // written, and no per-datagram clearing is needed.
            self.buf = vec![0; TX_BYTES];
        }
        while self.has_room() {
            let start = self.filled;
            let Some((to, len)) = produce(&mut self.buf[start..start + MAX_DATAGRAM]) else {
                return false;
            };
            let len = len.min(MAX_DATAGRAM);
            self.filled += len;
            self.push(to, start, len);
        }
        true
    }

    /// Records a datagram just written at `start`.
    fn push(&mut self, to: SocketAddr, start: usize, len: usize) {
        self.datagrams += 1;
        if let Some(g) = self.groups.last_mut() {
            // Joins the group when it continues it: same peer, and the group
            // is all full segments of this size (a shorter one ends a group).
            let joins = g.destination == to
                && g.start + g.len == start
                && g.len == g.segment * g.count
                && len <= g.segment
                && len > 0
                && g.count < self.max_segments
                && g.len + len <= MAX_GSO_BYTES;
            if joins {
                g.len += len;
                g.count += 1;
                return;
            }
        }
        self.groups.push(Group {
            destination: to,
            start,
            len,
            segment: len,
            count: 1,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    /// Feeds datagrams of the given (port, length) and returns the groups.
    fn group(max_segments: usize, datagrams: &[(u16, usize)]) -> Vec<(u16, usize, usize)> {
        let mut tx = TxBatch::with_max_segments(max_segments);
        let mut it = datagrams.iter();
        tx.fill(|buf| {
            let &(port, len) = it.next()?;
            buf[..len].fill(port as u8);
            Some((addr(port), len))
        });
        // Every byte lands where its group says.
        for g in &tx.groups {
            assert!(tx.buf[g.start..g.start + g.len]
                .iter()
                .all(|&b| b == g.destination.port() as u8));
        }
        tx.groups
            .iter()
            .map(|g| (g.destination.port(), g.segment, g.count))
            .collect()
    }

    #[test]
    fn same_peer_same_size_datagrams_share_one_send() {
        assert_eq!(group(64, &[(1, 1420); 10]), vec![(1, 1420, 10)]);
    }

    #[test]
    fn a_shorter_datagram_ends_its_group() {
        let d = [(1, 1420), (1, 1420), (1, 600), (1, 1420)];
        assert_eq!(group(64, &d), vec![(1, 1420, 3), (1, 1420, 1)]);
    }

    #[test]
    fn a_longer_datagram_or_another_peer_starts_a_group() {
        let d = [(1, 20), (1, 1420), (2, 1420), (1, 1420)];
        assert_eq!(
            group(64, &d),
            vec![(1, 20, 1), (1, 1420, 1), (2, 1420, 1), (1, 1420, 1)]
        );
    }

    #[test]
    fn groups_respect_the_segment_and_byte_limits() {
        assert_eq!(
            group(4, &[(1, 100); 10]),
            vec![(1, 100, 4), (1, 100, 4), (1, 100, 2)]
        );
        // 8,000-byte datagrams: at most 8 per send (64,000 <= 65,000 bytes).
        assert_eq!(
            group(64, &[(1, 8000); 10]),
            vec![(1, 8000, 8), (1, 8000, 2)]
        );
        // Without GSO every datagram is its own send.
        assert_eq!(group(1, &[(1, 100); 3]), vec![(1, 100, 1); 3]);
    }

    #[test]
    fn the_batch_stops_when_full_and_keeps_the_largest_datagrams_whole() {
        let mut tx = TxBatch::with_max_segments(64);
        let mut produced = 0;
        let full = tx.fill(|buf| {
            assert!(buf.len() >= 65_507, "room for any UDP payload");
            produced += 1;
            Some((addr(1), 65_507))
        });
        assert!(full);
        assert_eq!(produced, TX_BYTES / MAX_DATAGRAM);
        assert!(tx.groups.iter().all(|g| g.count == 1));
    }
}
