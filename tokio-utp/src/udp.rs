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
//!
//! Path MTU support (Linux): every datagram leaves with the Don't Fragment
//! bit in the kernel's PROBE mode (DF set, but the kernel's cached path MTU
//! does not block our probes: the protocol core does its own search), the
//! route MTU caps each connection's search, and a packet from before a
//! path MTU fall-back can be resent with fragmentation allowed. This is the
//! only module with `unsafe` (raw socket options libc has and socket2 lacks).
#![allow(unsafe_code)]

use std::io::{self, IoSliceMut};
use std::net::SocketAddr;
use std::task::{Context, Poll};

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};

use bytes::Bytes;
use quinn_udp::{RecvMeta, UdpSocketState};
use socket2::{Domain, Protocol, Socket, Type};
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;

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

/// Receive buffers a socket starts with (see `RxBuffers::active`). Two, not
/// one: a call that fills fewer than it offers shows the queue is empty, and
/// with one buffer every datagram would cost a second call to learn that.
const RX_FIRST: usize = 2;

/// The UDP socket, registered with tokio's reactor for readability only.
///
/// Linux signals a UDP socket writable on every datagram it sends (each
/// freed send buffer wakes the socket's waiters, with no "someone was
/// blocked" check as TCP has), so a socket registered for writes, as
/// `tokio::net::UdpSocket` always is, wakes the reactor thread once per
/// datagram sent: on request/response traffic that is a thread wakeup and
/// lock contention per message. Sends are tried directly instead (the
/// socket is non-blocking), and only a send that finds the buffer full
/// registers a duplicate of the descriptor for writability, until a send
/// goes through at once again.
pub(crate) struct UdpIo {
    /// Shared with the driver's wait for error-queue reports
    /// ([`UdpIo::error_watch`]), which must own what it waits on.
    read: Arc<AsyncFd<std::net::UdpSocket>>,
    /// The write registration while sends are blocked (see above).
    write: Mutex<Option<AsyncFd<std::net::UdpSocket>>>,
    write_registered: AtomicBool,
}

impl std::fmt::Debug for UdpIo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UdpIo")
            .field("socket", self.socket())
            .finish()
    }
}

impl UdpIo {
    /// Registers a non-blocking socket (must be called inside a runtime).
    pub(crate) fn new(sock: std::net::UdpSocket) -> io::Result<Self> {
        Ok(Self {
            read: Arc::new(register(sock, Interest::READABLE)?),
            write: Mutex::new(None),
            write_registered: AtomicBool::new(false),
        })
    }

    pub(crate) fn socket(&self) -> &std::net::UdpSocket {
        self.read.get_ref()
    }

    /// If the OS flagged reports in the socket's error queue (a flag check,
    /// no system call), reads them into `out` (see [`read_error_reports`])
    /// and returns whether the queue is now empty; `None` if nothing was
    /// flagged. The flag stays set while reports are left.
    pub(crate) fn read_reported(&self, out: &mut Vec<ErrorReport>) -> Option<bool> {
        let mut drained = None;
        let _ = self.read.try_io(Interest::ERROR, |sock| {
            let empty = read_error_reports(sock, out);
            drained = Some(empty);
            if empty {
                // Clears the flag, unless a report came in meanwhile.
                Err(io::ErrorKind::WouldBlock.into())
            } else {
                Ok(())
            }
        });
        drained
    }

    /// Resolves once the socket's error queue has something (see
    /// [`enable_recv_errors`]); read it with [`read_error_reports`] then, and
    /// ask for a new watch. The OS always reports errors: no registration
    /// beyond the socket's own is needed.
    pub(crate) fn error_watch(&self) -> ErrorWatch {
        let fd = Arc::clone(&self.read);
        Box::pin(async move {
            let mut guard = fd.ready(Interest::ERROR).await?;
            // Cleared before the queue is read: a report queued after the
            // read is a new event, so none is left unread.
            guard.clear_ready_matching(tokio::io::Ready::ERROR);
            Ok(())
        })
    }

    /// Runs the non-blocking `op` once the socket is readable; `Pending`
    /// until then. When `op`'s result tells that it emptied the socket
    /// (`drained`, e.g. a batch receive that filled fewer buffers than it
    /// had), the readiness is cleared, and the next
    /// call waits for the reactor instead of making a system call only to
    /// learn that nothing is left, as tokio's own streams do after a short
    /// read. A datagram arriving meanwhile is a new readiness event, which
    /// the clearing leaves alone.
    pub(crate) fn poll_recv_io<R>(
        &self,
        cx: &mut Context<'_>,
        mut op: impl FnMut(&std::net::UdpSocket) -> io::Result<R>,
        drained: impl Fn(&R) -> bool,
    ) -> Poll<io::Result<R>> {
        loop {
            let mut guard = std::task::ready!(self.read.poll_read_ready(cx))?;
            match guard.try_io(|fd| op(fd.get_ref())) {
                Ok(r) => {
                    if r.as_ref().is_ok_and(&drained) {
                        guard.clear_ready();
                    }
                    return Poll::Ready(r);
                }
                // try_io cleared the readiness: poll it again.
                Err(_would_block) => continue,
            }
        }
    }

    /// Runs the non-blocking `op` (a send) at once, and again once the
    /// socket is writable if the send buffer was full; `Pending` until then.
    pub(crate) fn poll_send_io<R>(
        &self,
        cx: &mut Context<'_>,
        mut op: impl FnMut(&std::net::UdpSocket) -> io::Result<R>,
    ) -> Poll<io::Result<R>> {
        if !self.write_registered.load(Ordering::Acquire) {
            match op(self.socket()) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                r => return Poll::Ready(r),
            }
        }
        let mut write = self.write.lock().unwrap_or_else(|e| e.into_inner());
        if write.is_none() {
            // Registering reports the socket writable at once if it drained
            // since the send above, so no wakeup is lost.
            *write = Some(register(self.socket().try_clone()?, Interest::WRITABLE)?);
            self.write_registered.store(true, Ordering::Release);
        }
        let fd = write.as_ref().expect("registered above");
        loop {
            let mut guard = std::task::ready!(fd.poll_write_ready(cx))?;
            match guard.try_io(|fd| op(fd.get_ref())) {
                Ok(r) => {
                    // Went through: back to plain sends, with no reactor
                    // wakeup per datagram.
                    *write = None;
                    self.write_registered.store(false, Ordering::Release);
                    return Poll::Ready(r);
                }
                Err(_would_block) => continue,
            }
        }
    }

    /// Sends one datagram of the application's (`UtpSocket::send_to`),
    /// waiting while the send buffer is full. The wait has a registration
    /// of its own: the driver's (`write`) wakes only the task that polled
    /// it last and is dropped when the driver's send goes through, so a
    /// task sharing it took the driver's wakeup, or was never woken once
    /// the driver dropped it.
    pub(crate) async fn send_to(&self, buf: &[u8], target: SocketAddr) -> io::Result<usize> {
        let send = |s: &std::net::UdpSocket| s.send_to(buf, target);
        match send(self.socket()) {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            r => return r,
        }
        let fd = register(self.socket().try_clone()?, Interest::WRITABLE)?;
        loop {
            let mut guard = fd.writable().await?;
            if let Ok(r) = guard.try_io(|fd| send(fd.get_ref())) {
                return r;
            }
        }
    }
}

/// Registers `sock` with the reactor for `interest` only.
fn register(
    sock: std::net::UdpSocket,
    interest: Interest,
) -> io::Result<AsyncFd<std::net::UdpSocket>> {
    // SAFETY: the AsyncFd owns the socket, so its descriptor stays open and
    // refers to the same socket for the AsyncFd's whole life.
    unsafe { AsyncFd::register_with_interest(sock, interest) }.map_err(|e| e.into())
}

/// Binds a non-blocking UDP socket with `buffer`-byte send and receive
/// buffers (see [`size_buffers`]); `[::]` is dual-stack. Also returns the
/// receive buffer the OS granted.
pub(crate) fn bind(
    addr: SocketAddr,
    buffer: usize,
) -> io::Result<(std::net::UdpSocket, Option<usize>)> {
    let domain = Domain::for_address(addr);
    // Non-blocking from the start where the OS allows: two `fcntl` calls
    // less per socket, which a socket per connection pays every connect.
    #[cfg(any(target_os = "linux", target_os = "android"))]
    let sock = Socket::new(domain, Type::DGRAM.nonblocking(), Some(Protocol::UDP))?;
    #[cfg(not(any(target_os = "linux", target_os = "android")))]
    let sock = {
        let sock = Socket::new(domain, Type::DGRAM, Some(Protocol::UDP))?;
        sock.set_nonblocking(true)?;
        sock
    };
    if addr.is_ipv6() {
        // Dual stack where the OS allows it; an error here is not fatal.
        let _ = sock.set_only_v6(false);
    }
    let rcvbuf = size_buffers(&sock, buffer);
    set_dont_fragment(&sock, addr.is_ipv6());
    enable_recv_errors(&sock, addr.is_ipv6());
    sock.bind(&addr.into())?;
    Ok((sock.into(), rcvbuf))
}

/// A wait for the socket's error queue (see [`UdpIo::error_watch`]).
pub(crate) type ErrorWatch =
    std::pin::Pin<Box<dyn std::future::Future<Output = io::Result<()>> + Send>>;

/// How much of a datagram an error report keeps: its uTP header, which
/// tells which connection it belonged to.
const QUOTED: usize = 20;

/// Most reports read per error event; a flood is read on at the next.
const MAX_REPORTS_PER_READ: usize = 64;

/// What an ICMP error said about a datagram of ours.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Problem {
    /// No socket at its destination (port unreachable).
    Unreachable,
    /// Too big for a link on the way (fragmentation needed / packet too
    /// big): at most this many bytes of UDP payload pass.
    TooBig(usize),
}

/// An ICMP error about a datagram of ours, as the OS reported it: the
/// destination, what went wrong, and the start of the datagram.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ErrorReport {
    pub(crate) peer: SocketAddr,
    pub(crate) problem: Problem,
    quoted: [u8; QUOTED],
    len: usize,
}

impl ErrorReport {
    /// The start of the datagram, as far as the report quoted it.
    pub(crate) fn quoted(&self) -> &[u8] {
        &self.quoted[..self.len]
    }
}

/// Asks the OS to queue the ICMP errors our datagrams cause (and report
/// them as error events): a connect to a port where nothing listens then
/// fails at once, as TCP's does, instead of after `connect_timeout`.
/// Reading the queue is the driver's (`read_error_reports`); unread, it
/// would take room from the receive buffer. With it, the OS also fails the
/// next send or receive once with the error, whichever peer that is for:
/// sends are retried once ([`send_again_after_peer_error`]). Failure only
/// loses the early refusal, so it is not returned.
pub(crate) fn enable_recv_errors(sock: &impl std::os::fd::AsFd, ipv6: bool) {
    #[cfg(target_os = "linux")]
    {
        let fd = sock.as_fd();
        // A dual-stack socket's IPv4 peers report through IP_RECVERR.
        let _ = setsockopt_int(fd, libc::IPPROTO_IP, libc::IP_RECVERR, 1);
        if ipv6 {
            let _ = setsockopt_int(fd, libc::IPPROTO_IPV6, libc::IPV6_RECVERR, 1);
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = (sock, ipv6);
}

/// Runs `send`, and once more if it failed with an error about a peer: with
/// error reports on ([`enable_recv_errors`]), the first failure may be an
/// earlier datagram's ICMP error, for any peer, which the failed call
/// consumed. A second failure is this datagram's own.
#[inline]
pub(crate) fn send_again_after_peer_error<T>(
    mut send: impl FnMut() -> io::Result<T>,
) -> io::Result<T> {
    match send() {
        Err(e) if is_peer_error(&e) => send(),
        r => r,
    }
}

/// Reads the socket's error queue (up to [`MAX_REPORTS_PER_READ`] reports)
/// and appends the ICMP errors we act on to `out` (see `icmp_problem`);
/// other reports (local errors, other ICMP types) are read and dropped.
/// Returns whether the queue was found empty (false: reports may be
/// left).
#[cfg(target_os = "linux")]
pub(crate) fn read_error_reports(sock: &std::net::UdpSocket, out: &mut Vec<ErrorReport>) -> bool {
    use std::os::fd::AsRawFd;
    for _ in 0..MAX_REPORTS_PER_READ {
        // SAFETY: all-zero bytes are a valid sockaddr_storage and msghdr.
        let mut name: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
        let mut quoted = [0u8; QUOTED];
        // u64s: aligned for cmsghdr.
        let mut control = [0u64; 64];
        let mut iov = libc::iovec {
            iov_base: quoted.as_mut_ptr().cast(),
            iov_len: quoted.len(),
        };
        let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
        msg.msg_name = (&mut name as *mut libc::sockaddr_storage).cast();
        msg.msg_namelen = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control.as_mut_ptr().cast();
        msg.msg_controllen = std::mem::size_of_val(&control) as _;
        // SAFETY: every pointer in msg refers to a live local of the size
        // given beside it; the call writes within those sizes.
        let n = unsafe {
            libc::recvmsg(
                sock.as_raw_fd(),
                &mut msg,
                libc::MSG_ERRQUEUE | libc::MSG_DONTWAIT,
            )
        };
        if n < 0 {
            let e = io::Error::last_os_error();
            // Empty, or (interrupted) maybe not.
            return e.kind() != io::ErrorKind::Interrupted;
        }
        let mut problem = None;
        // SAFETY: msg's control buffer was filled by the kernel, and the
        // CMSG_* walk stays within msg_controllen; the error is read only
        // from a control message long enough to hold it.
        unsafe {
            let mut c = libc::CMSG_FIRSTHDR(&msg);
            while !c.is_null() {
                let (level, ty) = ((*c).cmsg_level, (*c).cmsg_type);
                let report = (level == libc::IPPROTO_IP && ty == libc::IP_RECVERR)
                    || (level == libc::IPPROTO_IPV6 && ty == libc::IPV6_RECVERR);
                let size = std::mem::size_of::<libc::sock_extended_err>();
                if report && (*c).cmsg_len as usize >= libc::CMSG_LEN(size as u32) as usize {
                    let e: libc::sock_extended_err =
                        std::ptr::read_unaligned(libc::CMSG_DATA(c).cast());
                    problem = icmp_problem(&e);
                }
                c = libc::CMSG_NXTHDR(&msg, c);
            }
        }
        let Some(problem) = problem else {
            continue;
        };
        // SAFETY: the kernel filled `name` and set `msg_namelen` to its length.
        let peer = unsafe { socket2::SockAddr::new(name, msg.msg_namelen) }.as_socket();
        if let Some(peer) = peer {
            let len = usize::try_from(n).unwrap_or(0).min(QUOTED);
            out.push(ErrorReport {
                peer,
                problem,
                quoted,
                len,
            });
        }
    }
    false
}

/// What an error report from the queue says, if it is an ICMP error we act
/// on: port unreachable, or too big with the next hop's MTU (an IP packet
/// size, so the IP and UDP headers of the ICMP's family come off; zero is
/// an old router's "unknown" and tells nothing). Local errors (our own
/// EMSGSIZE, already returned by the send) and other ICMP types are not.
#[cfg(target_os = "linux")]
fn icmp_problem(e: &libc::sock_extended_err) -> Option<Problem> {
    let headers = match e.ee_origin {
        libc::SO_EE_ORIGIN_ICMP => 20 + 8,
        libc::SO_EE_ORIGIN_ICMP6 => 40 + 8,
        _ => return None,
    };
    if e.ee_errno == libc::ECONNREFUSED as u32 {
        return Some(Problem::Unreachable);
    }
    let mtu = usize::try_from(e.ee_info).unwrap_or(0);
    (e.ee_errno == libc::EMSGSIZE as u32 && mtu > headers).then(|| Problem::TooBig(mtu - headers))
}

/// Not supported here: nothing is queued (see [`enable_recv_errors`]).
#[cfg(not(target_os = "linux"))]
pub(crate) fn read_error_reports(_sock: &std::net::UdpSocket, _out: &mut Vec<ErrorReport>) -> bool {
    true
}

/// Set once the cap on socket buffers was reported (once per process: every
/// socket of a program meets the same cap).
static CAPPED_WARNED: AtomicBool = AtomicBool::new(false);

/// Asks for `buffer`-byte send and receive buffers. The OS caps the request
/// at `net.core.rmem_max` / `wmem_max` (208 KiB by default on most Linux
/// systems); a process allowed to (`CAP_NET_ADMIN`) overrides the cap,
/// as a server running as root expects. Failing that, a warning: bursts of
/// large datagrams overflow a small buffer, and flights to peers on this
/// host are kept within it (see `Endpoint::set_socket_receive_buffer`).
/// Returns the receive buffer granted, as the OS reports it.
fn size_buffers(sock: &Socket, buffer: usize) -> Option<usize> {
    let _ = sock.set_recv_buffer_size(buffer);
    let _ = sock.set_send_buffer_size(buffer);
    // Linux reports twice the size granted (its bookkeeping overhead
    // included): less than that means a cap.
    let full = if cfg!(target_os = "linux") {
        buffer.saturating_mul(2)
    } else {
        buffer
    };
    let capped = |got: Option<usize>| got.is_some_and(|got| got < full);
    // Read back once, and again only after a forced size: a socket per
    // connection pays every one of these calls.
    #[cfg_attr(not(target_os = "linux"), allow(unused_mut))]
    let (mut rcv, mut snd) = (sock.recv_buffer_size().ok(), sock.send_buffer_size().ok());
    #[cfg(target_os = "linux")]
    {
        use std::os::fd::AsFd;
        let value = libc::c_int::try_from(buffer).unwrap_or(libc::c_int::MAX);
        if capped(rcv) {
            let _ = setsockopt_int(sock.as_fd(), libc::SOL_SOCKET, libc::SO_RCVBUFFORCE, value);
            rcv = sock.recv_buffer_size().ok();
        }
        if capped(snd) {
            let _ = setsockopt_int(sock.as_fd(), libc::SOL_SOCKET, libc::SO_SNDBUFFORCE, value);
            snd = sock.send_buffer_size().ok();
        }
    }
    if (capped(rcv) || capped(snd)) && !CAPPED_WARNED.swap(true, Ordering::Relaxed) {
        tracing::warn!(
            asked = buffer,
            receive = rcv.unwrap_or(0),
            send = snd.unwrap_or(0),
            "UDP socket buffers capped by the OS: bursts may be dropped; \
             raise net.core.rmem_max and net.core.wmem_max"
        );
    }
    rcv
}

/// The receive buffer the OS granted `sock`, as it reports it.
pub(crate) fn receive_buffer(sock: &std::net::UdpSocket) -> Option<usize> {
    socket2::SockRef::from(sock).recv_buffer_size().ok()
}

/// Sets DF on every datagram in PROBE mode (IPv4, and IPv6 plus the
/// IPv4-mapped side of a dual-stack socket). Failure only costs path MTU
/// discovery its DF guarantee, so it is logged, not returned.
pub(crate) fn set_dont_fragment(sock: &impl std::os::fd::AsFd, ipv6: bool) {
    #[cfg(target_os = "linux")]
    {
        let fd = sock.as_fd();
        if let Err(e) = mtu_discover(fd, ipv6, Mode::Probe) {
            tracing::debug!(error = %e, "cannot set IP_MTU_DISCOVER");
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = (sock, ipv6);
}

/// The largest UDP payload.
const MAX_UDP_PAYLOAD: usize = 65_507;

/// The largest datagram (UDP payload) the OS would send towards `peer`
/// without fragmenting: the route's MTU (the interface MTU, or a smaller
/// path MTU the kernel learnt from ICMP) minus IP and UDP headers. Found by
/// connecting a throwaway UDP socket (no packet is sent) and reading
/// IP_MTU / IPV6_MTU. `None` where unsupported.
pub(crate) fn route_max_datagram(peer: SocketAddr) -> Option<usize> {
    #[cfg(target_os = "linux")]
    {
        // An IPv4-mapped peer of a dual-stack socket travels as IPv4.
        let peer = match peer {
            SocketAddr::V6(v6) => match v6.ip().to_ipv4_mapped() {
                Some(ip) => SocketAddr::new(ip.into(), v6.port()),
                None => peer,
            },
            v4 => v4,
        };
        let sock = Socket::new(Domain::for_address(peer), Type::DGRAM, Some(Protocol::UDP)).ok()?;
        sock.connect(&peer.into()).ok()?;
        let (level, name, ip_header) = if peer.is_ipv6() {
            (libc::IPPROTO_IPV6, libc::IPV6_MTU, 40)
        } else {
            (libc::IPPROTO_IP, libc::IP_MTU, 20)
        };
        let mtu = getsockopt_int(std::os::fd::AsFd::as_fd(&sock), level, name).ok()?;
        let mtu = usize::try_from(mtu).ok()?;
        Some(mtu.checked_sub(ip_header + 8)?.min(MAX_UDP_PAYLOAD))
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = peer;
        None
    }
}

/// Runs `send` with fragmentation allowed on `sock` (no DF: routers may
/// fragment an IPv4 packet larger than their link), then restores DF. For
/// packets the protocol core marks `fragmentable`: sent before the path MTU
/// shrank and larger than it now, they cannot be re-cut (their sequence
/// number fixes their bytes). Over IPv6 only the sender fragments, to its
/// own idea of the path MTU, so this helps only when ICMP got through.
pub(crate) fn with_fragmentation<T>(
    sock: &impl std::os::fd::AsFd,
    ipv6: bool,
    send: impl FnOnce() -> T,
) -> T {
    #[cfg(target_os = "linux")]
    {
        let fd = sock.as_fd();
        let _ = mtu_discover(fd, ipv6, Mode::Dont);
        let r = send();
        let _ = mtu_discover(fd, ipv6, Mode::Probe);
        r
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = (sock, ipv6);
        send()
    }
}

/// Whether a send error means "datagram larger than the route allows".
pub(crate) fn is_too_big(e: &io::Error) -> bool {
    #[cfg(unix)]
    {
        e.raw_os_error() == Some(libc::EMSGSIZE)
    }
    #[cfg(not(unix))]
    {
        let _ = e;
        false
    }
}

#[cfg(target_os = "linux")]
#[derive(Clone, Copy)]
enum Mode {
    /// DF set; the kernel's path MTU cache does not limit sends.
    Probe,
    /// No DF; the kernel and routers may fragment.
    Dont,
}

#[cfg(target_os = "linux")]
fn mtu_discover(fd: std::os::fd::BorrowedFd<'_>, ipv6: bool, mode: Mode) -> io::Result<()> {
    let (v4, v6) = match mode {
        Mode::Probe => (libc::IP_PMTUDISC_PROBE, libc::IPV6_PMTUDISC_PROBE),
        Mode::Dont => (libc::IP_PMTUDISC_DONT, libc::IPV6_PMTUDISC_DONT),
    };
    if ipv6 {
        setsockopt_int(fd, libc::IPPROTO_IPV6, libc::IPV6_MTU_DISCOVER, v6)?;
        // The IPv4-mapped side of a dual-stack socket; fails harmlessly on
        // a v6-only one.
        let _ = setsockopt_int(fd, libc::IPPROTO_IP, libc::IP_MTU_DISCOVER, v4);
        Ok(())
    } else {
        setsockopt_int(fd, libc::IPPROTO_IP, libc::IP_MTU_DISCOVER, v4)
    }
}

#[cfg(target_os = "linux")]
fn setsockopt_int(
    fd: std::os::fd::BorrowedFd<'_>,
    level: libc::c_int,
    name: libc::c_int,
    value: libc::c_int,
) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    // SAFETY: the fd is borrowed (open for the call), and the option value
    // is a live c_int whose size is passed alongside.
    let r = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            level,
            name,
            (&value as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

#[cfg(target_os = "linux")]
fn getsockopt_int(
    fd: std::os::fd::BorrowedFd<'_>,
    level: libc::c_int,
    name: libc::c_int,
) -> io::Result<libc::c_int> {
    use std::os::fd::AsRawFd;
    let mut value: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: the fd is borrowed (open for the call); value and len are
    // live locals, and len holds value's size.
    let r = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            level,
            name,
            (&mut value as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    if r == 0 {
        Ok(value)
    } else {
        Err(io::Error::last_os_error())
    }
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

/// Turns off what `quinn-udp` asks the OS to report with every datagram
/// received and tokio-utp never reads: a timestamp, the TOS byte (ECN) and
/// the destination address. Each is a control message the kernel writes
/// and `quinn-udp` parses on every receive, and a socket with
/// `SO_TIMESTAMPNS` makes the kernel timestamp every incoming packet.
/// GRO's segment size stays. Failure only leaves them on.
fn drop_unused_ancillary_data(sock: &impl std::os::fd::AsFd, ipv6: bool) {
    #[cfg(target_os = "linux")]
    {
        let fd = sock.as_fd();
        let _ = setsockopt_int(fd, libc::SOL_SOCKET, libc::SO_TIMESTAMPNS, 0);
        // A dual-stack socket's IPv4 peers report through the IPv4 options.
        let _ = setsockopt_int(fd, libc::IPPROTO_IP, libc::IP_RECVTOS, 0);
        if ipv6 {
            let _ = setsockopt_int(fd, libc::IPPROTO_IPV6, libc::IPV6_RECVPKTINFO, 0);
            let _ = setsockopt_int(fd, libc::IPPROTO_IPV6, libc::IPV6_RECVTCLASS, 0);
        } else {
            let _ = setsockopt_int(fd, libc::IPPROTO_IP, libc::IP_PKTINFO, 0);
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = (sock, ipv6);
}

/// Batched send and receive on one tokio UDP socket.
pub(crate) struct BatchIo {
    state: UdpSocketState,
    ipv6: bool,
}

impl BatchIo {
    /// Prepares `udp`, bound to an `ipv6` address or not, for batched I/O
    /// (enables GRO where available).
    pub(crate) fn new(udp: &UdpIo, ipv6: bool) -> io::Result<Self> {
        let state = UdpSocketState::new(udp.socket().into())?;
        drop_unused_ancillary_data(udp.socket(), ipv6);
        tracing::debug!(
            gso_segments = state.max_gso_segments(),
            gro_segments = state.gro_segments(),
            "datagram batching"
        );
        Ok(Self { state, ipv6 })
    }

    /// Most segments one send may carry (1 without GSO).
    fn max_segments(&self) -> usize {
        self.state.max_gso_segments()
    }

    /// Receives up to [`RX_BUFFERS`] buffers' worth of datagrams.
    pub(crate) fn poll_recv(
        &self,
        cx: &mut Context<'_>,
        udp: &UdpIo,
        rx: &mut RxBuffers,
    ) -> Poll<io::Result<()>> {
        // Refills lent slots should a batch not have been marked processed.
        rx.processed();
        if rx.active == 0 {
            rx.grow_to(RX_FIRST);
        }
        // Only the call right after a full one tells whether more were
        // queued than the slots took.
        let was_full = std::mem::take(&mut rx.was_full);
        let RxBuffers {
            slots,
            meta,
            active,
            ..
        } = rx;
        let active = *active;
        // Fewer buffers filled than one call offers (recvmmsg takes all
        // that are queued, up to that): the queue was empty. Where a call
        // takes one datagram (BATCH_SIZE 1) this never holds.
        let batch = active.min(quinn_udp::BATCH_SIZE);
        let n = std::task::ready!(udp.poll_recv_io(
            cx,
            |sock| self
                .state
                .recv(sock.into(), &mut slices(slots)[..active], meta),
            |&n| n < batch
        ))?;
        rx.received(n, was_full);
        Poll::Ready(Ok(()))
    }

    /// Sends the batch's groups in order; `Pending` leaves the rest queued.
    /// Errors about one destination drop that group (the protocol resends);
    /// other errors are returned.
    pub(crate) fn poll_flush(
        &self,
        cx: &mut Context<'_>,
        udp: &UdpIo,
        tx: &mut TxBatch,
    ) -> Poll<io::Result<()>> {
        while let Some(g) = tx.groups.get(tx.next) {
            // A run of plain sends (to many peers, or datagrams too large
            // to share a GSO send) goes out in one system call. Should one
            // fail, it is sent again alone below, which reports its error.
            #[cfg(target_os = "linux")]
            {
                let run = tx.groups[tx.next..]
                    .iter()
                    .take(MAX_MMSG)
                    .take_while(|g| !g.fragmentable)
                    .count();
                if run >= 2 {
                    let groups = &tx.groups[tx.next..tx.next + run];
                    let r = std::task::ready!(udp
                        .poll_send_io(cx, |sock| { send_many(sock, &tx.buf, &tx.parts, groups) }));
                    if let Ok(sent) = r.map(|n| n.min(run)) {
                        if sent > 0 {
                            tx.next += sent;
                            continue;
                        }
                    }
                }
            }
            let parts = &tx.parts[g.first..g.first + g.parts];
            let segment = (g.count > 1).then_some(g.segment);
            let r = std::task::ready!(udp.poll_send_io(cx, |sock| {
                let send = || {
                    send_again_after_peer_error(|| match parts {
                        [Part::Buf { start, len }] => {
                            let transmit = quinn_udp::Transmit {
                                destination: g.destination,
                                ecn: None,
                                contents: &tx.buf[*start..start + len],
                                segment_size: segment,
                                src_ip: None,
                            };
                            self.state.try_send(sock.into(), &transmit)
                        }
                        _ => send_gather(sock, g.destination, &tx.buf, parts, segment).map(|_| ()),
                    })
                };
                if g.fragmentable {
                    with_fragmentation(sock, self.ipv6, send)
                } else {
                    send()
                }
            }));
            if segment.is_some() && matches!(&r, Err(e) if e.raw_os_error() == Some(5)) {
                // EIO: the device cannot segment (GSO); one datagram per
                // send from now on. This batch's datagrams are lost, which
                // the protocol's retransmission covers.
                tx.max_segments = 1;
            }
            if let Err(e) = r {
                if is_too_big(&e) {
                    // Larger than the route allows: the driver tells the
                    // endpoint, whose connections to this peer shrink.
                    tracing::debug!(to = %g.destination, len = g.segment, "datagram too big");
                    tx.too_big.push((g.destination, g.segment));
                } else if is_unreachable_from_here(&e) {
                    tracing::debug!(to = %g.destination, error = %e, "datagrams not sent");
                    // A SYN among them fails its connect (the driver tells
                    // the endpoint); the rest is resent like any loss.
                    let head = parts.first().map_or(&[][..], |p| p.bytes(&tx.buf));
                    if let Ok(head) = head.get(..HEADER_BYTES).unwrap_or_default().try_into() {
                        tx.not_sent.push((g.destination, head));
                    }
                } else if is_transient(&e) || is_peer_error(&e) {
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

/// Errors of a send the OS refused for its destination itself, without
/// sending anything: no route to its network or host (an IPv4 peer from a
/// socket bound to `::1` is one), an address the socket cannot send to
/// (EINVAL, EADDRNOTAVAIL), a firewall's reject (EPERM). A SYN that meets
/// one fails its connect at once, as TCP's connect does. (Refused and
/// reset are not among them: they are ICMP reports about an earlier
/// datagram.)
pub(crate) fn is_unreachable_from_here(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::HostUnreachable
            | io::ErrorKind::NetworkUnreachable
            | io::ErrorKind::AddrNotAvailable
            | io::ErrorKind::PermissionDenied
            | io::ErrorKind::InvalidInput
    )
}

/// Errors about one destination (unreachable, refused, too big): drop the
/// datagram, the protocol's retransmission and timeouts handle the rest.
pub(crate) fn is_peer_error(e: &io::Error) -> bool {
    is_unreachable_from_here(e)
        || matches!(
            e.kind(),
            io::ErrorKind::ConnectionRefused | io::ErrorKind::ConnectionReset
        )
        || e.raw_os_error() == Some(90) // EMSGSIZE
}

/// The CPU the calling thread runs on (`-1` where unknown). glibc reads it
/// from the thread's rseq area: about 2 ns.
#[cfg(target_os = "linux")]
pub(crate) fn current_cpu() -> i32 {
    // SAFETY: no arguments, no memory effects.
    unsafe { libc::sched_getcpu() }
}

/// See the Linux version.
#[cfg(not(target_os = "linux"))]
pub(crate) fn current_cpu() -> i32 {
    -1
}

/// Test support: keeps the calling thread on `cpu`.
#[cfg(all(test, target_os = "linux"))]
pub(crate) fn pin_to_cpu(cpu: usize) -> io::Result<()> {
    // SAFETY: a zeroed cpu_set_t is an empty set; CPU_SET writes within it.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: `cpu` is below the set's capacity (CPU_SETSIZE, 1024) here.
    unsafe { libc::CPU_SET(cpu, &mut set) };
    // SAFETY: pid 0 is the calling thread; the set outlives the call.
    let r = unsafe { libc::sched_setaffinity(0, std::mem::size_of_val(&set), &set) };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Receive buffers and what the last call put in them.
///
/// A buffer holding large datagrams is lent out as [`Bytes`] while they are
/// processed, so their payloads reach readers without a copy (the protocol
/// core slices them, see `Endpoint::handle_datagram_shared`). The last
/// holder to let go returns it to a pool (see [`Lent`]), from which emptied
/// slots are refilled, most recently returned first: steady-state receiving
/// writes into warm memory and allocates nothing, with no bookkeeping of
/// who still holds what.
pub(crate) struct RxBuffers {
    /// The first `active` are `MAX_DATAGRAM` long each (empty while lent,
    /// until `processed`); the others are not allocated yet.
    slots: [Vec<u8>; RX_BUFFERS],
    /// Slots offered to a receive: [`RX_FIRST`] at first, doubled while the
    /// kernel has more queued than they take (see `received`). Zeroing a
    /// slot writes every page of it, so a socket with a datagram at a time
    /// (a handshake, request/response traffic) costs 128 KiB, not 512.
    pub(crate) active: usize,
    /// The last receive filled every active slot.
    was_full: bool,
    /// Slots lent for the current batch (`Some` while lent).
    frozen: [Option<Bytes>; RX_BUFFERS],
    meta: [RecvMeta; RX_BUFFERS],
    count: usize,
    /// Slots lent for the current batch (how many `frozen` are `Some`):
    /// small datagrams are never lent, and `processed` then has nothing
    /// to refill (a request/response stream receives one per message).
    lent: usize,
    pool: Arc<Mutex<Vec<Vec<u8>>>>,
}

/// `MAX_DATAGRAM`-long buffers that sockets gave back when they wound down
/// or closed, for the next socket's receive slots and send buffers. Zeroing
/// a fresh one writes (faults in) every page of it; a program that opens a
/// socket per connection (`UtpStream::connect`) spent half its connect time
/// there. Their old bytes do not matter: only what is written is ever read.
static SPARE_BUFFERS: Mutex<Vec<Vec<u8>>> = Mutex::new(Vec::new());

/// Send batch buffers that had grown past one datagram's room, kept apart
/// with up to two datagrams' capacity: any batch of two datagrams grows
/// one, and shrinking and regrowing it cost two `mremap` calls per socket,
/// while a receive slot given such a buffer would hold the extra idle.
static SPARE_SEND_BUFFERS: Mutex<Vec<Vec<u8>>> = Mutex::new(Vec::new());

/// Most buffers in [`SPARE_BUFFERS`] (4 MiB); more are freed.
const MAX_SPARE_BUFFERS: usize = 64;
/// Most buffers in [`SPARE_SEND_BUFFERS`] (2 MiB).
const MAX_SPARE_SEND_BUFFERS: usize = 16;

fn pop_spare(list: &Mutex<Vec<Vec<u8>>>) -> Option<Vec<u8>> {
    list.lock().unwrap_or_else(|e| e.into_inner()).pop()
}

/// A `MAX_DATAGRAM`-long buffer of that capacity: a spare one, or a new
/// zeroed one.
pub(crate) fn take_buffer() -> Vec<u8> {
    pop_spare(&SPARE_BUFFERS).unwrap_or_else(|| vec![0; MAX_DATAGRAM])
}

/// A `MAX_DATAGRAM`-long buffer for a send batch, with room to grow if a
/// spare one has it.
fn take_send_buffer() -> Vec<u8> {
    pop_spare(&SPARE_SEND_BUFFERS).unwrap_or_else(take_buffer)
}

/// Keeps `buf` for [`take_buffer`] or [`take_send_buffer`] (cut to
/// `MAX_DATAGRAM`), or frees it.
pub(crate) fn give_buffer(mut buf: Vec<u8>) {
    if buf.len() < MAX_DATAGRAM {
        return;
    }
    buf.truncate(MAX_DATAGRAM);
    let (list, max) = if buf.capacity() > MAX_DATAGRAM {
        buf.shrink_to(2 * MAX_DATAGRAM);
        (&SPARE_SEND_BUFFERS, MAX_SPARE_SEND_BUFFERS)
    } else {
        (&SPARE_BUFFERS, MAX_SPARE_BUFFERS)
    };
    let mut spare = list.lock().unwrap_or_else(|e| e.into_inner());
    if spare.len() < max {
        spare.push(buf);
    }
}

/// Smallest datagram lent out rather than read in place: smaller payloads
/// are copied by the protocol core anyway.
const LEND_MIN: usize = 32 * 1024;
/// Most returned buffers pooled for reuse (4 MiB); others are freed. Many
/// connections with readers a little behind cycle through this many, and a
/// fresh buffer costs a page fault per 4 KiB the kernel writes.
const MAX_POOLED: usize = 64;

/// A lent receive buffer: the owner behind the [`Bytes`] readers hold,
/// which goes back to its pool when the last of them lets go.
struct Lent {
    buf: Vec<u8>,
    pool: Weak<Mutex<Vec<Vec<u8>>>>,
}

impl AsRef<[u8]> for Lent {
    fn as_ref(&self) -> &[u8] {
        &self.buf
    }
}

impl Drop for Lent {
    fn drop(&mut self) {
        let Some(pool) = self.pool.upgrade() else {
            return;
        };
        let mut pool = pool.lock().unwrap_or_else(|e| e.into_inner());
        if pool.len() < MAX_POOLED {
            pool.push(std::mem::take(&mut self.buf));
        }
    }
}

impl Drop for RxBuffers {
    fn drop(&mut self) {
        self.release();
    }
}

/// One received datagram: in a slot, or a slice of a lent buffer.
pub(crate) enum Datagram<'a> {
    Borrowed(&'a [u8]),
    Shared(Bytes),
}

impl RxBuffers {
    pub(crate) fn new() -> Self {
        Self {
            slots: std::array::from_fn(|_| Vec::new()),
            active: 0,
            was_full: false,
            frozen: std::array::from_fn(|_| None),
            meta: [RecvMeta::default(); RX_BUFFERS],
            count: 0,
            lent: 0,
            pool: Arc::new(Mutex::new(Vec::new())),
        }
    }

    /// Allocates slots up to `n` (at most [`RX_BUFFERS`]).
    fn grow_to(&mut self, n: usize) {
        let n = n.min(RX_BUFFERS);
        for slot in &mut self.slots[self.active.min(n)..n] {
            *slot = take_buffer();
        }
        self.active = self.active.max(n);
    }

    /// Records a receive of `n` datagrams. When the call before filled
    /// every slot and this one, right after, found more, the kernel's queue
    /// outruns the slots: the next receive offers twice as many.
    fn received(&mut self, n: usize, was_full: bool) {
        self.count = n;
        let offered = self.active;
        if was_full && n > 0 {
            self.grow_to(2 * offered);
        }
        self.was_full = n >= offered;
    }

    /// Marks the last receive's datagrams as handled and refills the slots
    /// that were lent: with their own buffer when no reader kept a slice
    /// (it just went back to the pool), else with one returned earlier.
    pub(crate) fn processed(&mut self) {
        self.count = 0;
        if std::mem::take(&mut self.lent) == 0 {
            return;
        }
        for (slot, frozen) in self.slots.iter_mut().zip(&mut self.frozen) {
            if frozen.take().is_none() {
                continue;
            }
            let returned = self.pool.lock().unwrap_or_else(|e| e.into_inner()).pop();
            *slot = returned.unwrap_or_else(take_buffer);
        }
    }

    /// Gives every buffer back to [`SPARE_BUFFERS`] (slots are taken again
    /// by the next receive). Buffers that readers still hold go to this
    /// socket's pool when they let go, and from there at the next release.
    pub(crate) fn release(&mut self) {
        // As `processed`, minus refilling lent slots only to give the
        // refills back (a fresh zeroed one when no spare was left).
        self.count = 0;
        self.lent = 0;
        self.frozen.fill(None);
        for slot in &mut self.slots[..self.active] {
            give_buffer(std::mem::take(slot));
        }
        self.active = 0;
        self.was_full = false;
        let pooled = std::mem::take(&mut *self.pool.lock().unwrap_or_else(|e| e.into_inner()));
        pooled.into_iter().for_each(give_buffer);
    }

    /// The datagrams of the last receive, GRO buffers split at their stride.
    /// Buffers of large datagrams are lent out (see [`RxBuffers`]).
    pub(crate) fn datagrams(&mut self) -> impl Iterator<Item = (SocketAddr, Datagram<'_>)> {
        for i in 0..self.count {
            let m = &self.meta[i];
            let len = m.len.min(MAX_DATAGRAM);
            let segment = if m.stride == 0 {
                len
            } else {
                m.stride.min(len)
            };
            if segment >= LEND_MIN {
                let lent = Lent {
                    buf: std::mem::take(&mut self.slots[i]),
                    pool: Arc::downgrade(&self.pool),
                };
                if self.frozen[i].replace(Bytes::from_owner(lent)).is_none() {
                    self.lent += 1;
                }
            }
        }
        let (slots, frozen) = (&self.slots, &self.frozen);
        self.meta[..self.count]
            .iter()
            .enumerate()
            .flat_map(move |(i, m)| {
                let len = m.len.min(MAX_DATAGRAM);
                // A stride of 0 would never advance: treat it as one datagram.
                let stride = if m.stride == 0 { len } else { m.stride }.max(1);
                (0..len).step_by(stride).map(move |at| {
                    let end = (at + stride).min(len);
                    let d = match &frozen[i] {
                        Some(b) => Datagram::Shared(b.slice(at..end)),
                        None => Datagram::Borrowed(&slots[i][at..end]),
                    };
                    (m.addr, d)
                })
            })
    }

    /// Buffers waiting in the pool.
    #[cfg(test)]
    fn pooled(&self) -> Vec<*const u8> {
        let pool = self.pool.lock().unwrap_or_else(|e| e.into_inner());
        pool.iter().map(|b| b.as_ptr()).collect()
    }
}

fn slices(bufs: &mut [Vec<u8>; RX_BUFFERS]) -> [IoSliceMut<'_>; RX_BUFFERS] {
    let mut it = bufs.iter_mut();
    std::array::from_fn(|_| IoSliceMut::new(&mut it.next().expect("RX_BUFFERS slots")[..]))
}

impl Drop for TxBatch {
    fn drop(&mut self) {
        self.release();
    }
}

/// A piece of a send: bytes of the batch buffer, or a payload shared with
/// the connection that sent it (gathered by the kernel, not copied here).
#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Buf { start: usize, len: usize },
    Shared(Bytes),
}

impl Part {
    /// Its bytes (`buf` is the batch buffer).
    fn bytes<'a>(&'a self, buf: &'a [u8]) -> &'a [u8] {
        match self {
            Part::Buf { start, len } => &buf[*start..start + len],
            Part::Shared(b) => b,
        }
    }
}

/// One send: `count` datagrams of `segment` bytes (the last may be shorter)
/// to one destination, made of `parts` pieces from `first` on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Group {
    destination: SocketAddr,
    first: usize,
    parts: usize,
    len: usize,
    segment: usize,
    count: usize,
    /// Sent without DF (see `with_fragmentation`); always alone.
    fragmentable: bool,
}

/// A datagram the endpoint produced for a [`TxBatch`]: `len` bytes written
/// into the buffer it was given, followed by `payload` if any.
pub(crate) struct Outgoing {
    pub(crate) destination: SocketAddr,
    pub(crate) len: usize,
    pub(crate) fragmentable: bool,
    pub(crate) payload: Option<Bytes>,
}

/// Outgoing datagrams collected from the endpoint, grouped for GSO.
pub(crate) struct TxBatch {
    /// `TX_BYTES` long once used; `filled` bytes of it hold datagrams (or
    /// the headers of those whose payload is a shared part).
    buf: Vec<u8>,
    filled: usize,
    parts: Vec<Part>,
    groups: Vec<Group>,
    /// Groups before this one were sent.
    next: usize,
    datagrams: usize,
    /// Bytes of all datagrams collected, shared payloads included.
    bytes: usize,
    max_segments: usize,
    /// Sends refused as too big since the driver last looked:
    /// (destination, datagram size).
    pub(crate) too_big: Vec<(SocketAddr, usize)>,
    /// Sends the OS refused for their destination (see
    /// [`is_unreachable_from_here`]) since the driver last looked:
    /// (destination, the datagram's uTP header).
    pub(crate) not_sent: Vec<(SocketAddr, [u8; HEADER_BYTES])>,
}

/// A uTP header's size: what `TxBatch::not_sent` keeps of a datagram.
pub(crate) const HEADER_BYTES: usize = 20;

impl TxBatch {
    pub(crate) fn new(io: &BatchIo) -> Self {
        Self::with_max_segments(io.max_segments())
    }

    /// One datagram per send (for transports without batching).
    pub(crate) fn unbatched() -> Self {
        Self::with_max_segments(1)
    }

    fn with_max_segments(max_segments: usize) -> Self {
        Self {
            buf: Vec::new(),
            filled: 0,
            parts: Vec::new(),
            groups: Vec::new(),
            next: 0,
            datagrams: 0,
            bytes: 0,
            max_segments: max_segments.clamp(1, MAX_SEGMENTS),
            too_big: Vec::new(),
            not_sent: Vec::new(),
        }
    }

    /// Whether nothing waits to be sent.
    pub(crate) fn is_empty(&self) -> bool {
        self.next >= self.groups.len()
    }

    /// Whether it holds no buffer (none taken yet, or given back).
    #[cfg(test)]
    pub(crate) fn is_empty_buffer(&self) -> bool {
        self.buf.is_empty()
    }

    /// Gives the buffer back to [`SPARE_BUFFERS`] once everything was sent
    /// (the next batch takes one again).
    pub(crate) fn release(&mut self) {
        if self.is_empty() {
            self.clear();
            give_buffer(std::mem::take(&mut self.buf));
        }
    }

    fn clear(&mut self) {
        self.filled = 0;
        self.parts.clear();
        self.groups.clear();
        self.next = 0;
        self.datagrams = 0;
        self.bytes = 0;
    }

    fn has_room(&self) -> bool {
        // `bytes` >= `filled`: this also leaves a whole datagram of buffer.
        self.datagrams < TX_DATAGRAMS && self.bytes + MAX_DATAGRAM <= TX_BYTES
    }

    /// Collects datagrams from `produce` (which writes one into the buffer it
    /// is given) until it has none or the batch is full. Returns whether
    /// the batch stopped for lack of room.
    pub(crate) fn fill(&mut self, mut produce: impl FnMut(&mut [u8]) -> Option<Outgoing>) -> bool {
        while self.has_room() {
            let start = self.filled;
            if self.buf.is_empty() {
                self.buf = take_send_buffer();
            }
            if self.buf.len() < start + MAX_DATAGRAM {
                // Grown as batches need it, and kept: zeroing writes every
                // page, so a socket that sends a datagram at a time keeps
                // 64 KiB, not TX_BYTES. `has_room` keeps this in TX_BYTES.
                let len = (start + MAX_DATAGRAM).max(2 * self.buf.len());
                self.buf.resize(len.min(TX_BYTES), 0);
            }
            let Some(d) = produce(&mut self.buf[start..start + MAX_DATAGRAM]) else {
                return false;
            };
            let payload = d.payload.filter(|p| !p.is_empty());
            let len = d.len.min(MAX_DATAGRAM);
            self.filled += len;
            self.push(d.destination, start, len, payload, d.fragmentable);
        }
        true
    }

    /// Records a datagram just written at `start`, followed by `payload`.
    fn push(
        &mut self,
        to: SocketAddr,
        start: usize,
        len: usize,
        payload: Option<Bytes>,
        fragmentable: bool,
    ) {
        let total = len + payload.as_ref().map_or(0, Bytes::len);
        self.datagrams += 1;
        self.bytes += total;
        let parts_before = self.parts.len();
        let joins = self
            .groups
            .last()
            .filter(|g| !g.fragmentable && !fragmentable)
            .is_some_and(|g| {
                // Joins the group when it continues it: same peer, and the
                // group is all full segments of this size (a shorter one
                // ends a group).
                g.destination == to
                    && g.len == g.segment * g.count
                    && total <= g.segment
                    && total > 0
                    && g.count < self.max_segments
                    && g.len + total <= MAX_GSO_BYTES
            });
        // Bytes of the buffer right after the previous piece of the same
        // send extend it (one piece for the kernel instead of two).
        match self.parts.last_mut() {
            Some(Part::Buf { start: s, len: l }) if joins && *s + *l == start => *l += len,
            _ if len > 0 => self.parts.push(Part::Buf { start, len }),
            _ => {}
        }
        self.parts.extend(payload.map(Part::Shared));
        let added = self.parts.len() - parts_before;
        if joins {
            let g = self.groups.last_mut().expect("joins a group");
            g.len += total;
            g.count += 1;
            g.parts += added;
            return;
        }
        self.groups.push(Group {
            destination: to,
            first: parts_before,
            parts: added,
            len: total,
            segment: total,
            count: 1,
            fragmentable,
        });
    }
}

/// Most datagrams in one GSO send (the kernel's UDP_MAX_SEGMENTS).
const MAX_SEGMENTS: usize = 64;

/// Sends `parts` as one datagram, or as `segment`-sized datagrams (GSO),
/// gathered by the kernel from the batch buffer and the shared payloads.
#[cfg(target_os = "linux")]
fn send_gather(
    sock: &std::net::UdpSocket,
    to: SocketAddr,
    buf: &[u8],
    parts: &[Part],
    segment: Option<usize>,
) -> io::Result<usize> {
    use std::os::fd::AsRawFd;
    // A header and a payload per datagram at most.
    const MAX_IOV: usize = 2 * MAX_SEGMENTS;
    if parts.len() > MAX_IOV {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "too many pieces",
        ));
    }
    let mut iov = [io::IoSlice::new(&[]); MAX_IOV];
    for (slot, part) in iov.iter_mut().zip(parts) {
        *slot = io::IoSlice::new(part.bytes(buf));
    }
    let addr = socket2::SockAddr::from(to);
    let mut control: Control = [0; 4];
    // SAFETY: msghdr is plain data; all-zero is a valid empty header.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    // IoSlice is ABI-compatible with iovec on Unix (std guarantees it).
    let iov = iov.as_mut_ptr().cast::<libc::iovec>();
    fill_msghdr(
        &mut msg,
        &addr,
        iov,
        parts.len(),
        segment.map(|s| (&mut control, s)),
    );
    // SAFETY: every pointer in `msg` refers to live buffers of the stated
    // lengths for the duration of the call.
    let n = unsafe { libc::sendmsg(sock.as_raw_fd(), &msg, 0) };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

/// Room for one control message carrying a u16, suitably aligned.
#[cfg(target_os = "linux")]
type Control = [u64; 4];

/// Points `msg` at `addr` and at `iovlen` pieces from `iov`; with `gso`,
/// writes a UDP_SEGMENT control message (the kernel splits the send into
/// datagrams of that many bytes) into its buffer. `msg` keeps raw pointers
/// to all of them: the caller keeps them alive until the send.
#[cfg(target_os = "linux")]
fn fill_msghdr(
    msg: &mut libc::msghdr,
    addr: &socket2::SockAddr,
    iov: *mut libc::iovec,
    iovlen: usize,
    gso: Option<(&mut Control, usize)>,
) {
    msg.msg_name = addr.as_ptr() as *mut libc::c_void;
    msg.msg_namelen = addr.len();
    msg.msg_iov = iov;
    msg.msg_iovlen = iovlen as _;
    if let Some((control, segment)) = gso {
        let size = std::mem::size_of::<u16>() as u32;
        // SAFETY: `control` is large enough for CMSG_SPACE(2) (24 bytes)
        // and aligned for a cmsghdr; CMSG_FIRSTHDR points into it.
        unsafe {
            msg.msg_control = control.as_mut_ptr().cast::<libc::c_void>();
            msg.msg_controllen = libc::CMSG_SPACE(size) as _;
            let c = libc::CMSG_FIRSTHDR(msg);
            (*c).cmsg_level = libc::SOL_UDP;
            (*c).cmsg_type = libc::UDP_SEGMENT;
            (*c).cmsg_len = libc::CMSG_LEN(size) as _;
            std::ptr::write_unaligned(libc::CMSG_DATA(c).cast::<u16>(), segment as u16);
        }
    }
}

/// Most sends in one `sendmmsg`.
#[cfg(target_os = "linux")]
const MAX_MMSG: usize = 32;

/// Sends `groups` (none fragmentable) with one `sendmmsg`, as
/// [`send_gather`] would one by one; returns how many went (the first
/// failure ends the call, and its error is lost unless it was the first).
#[cfg(target_os = "linux")]
fn send_many(
    sock: &std::net::UdpSocket,
    buf: &[u8],
    parts: &[Part],
    groups: &[Group],
) -> io::Result<usize> {
    use std::os::fd::AsRawFd;
    const MAX_IOV: usize = 4 * MAX_MMSG;
    let groups = &groups[..groups.len().min(MAX_MMSG)];
    let addrs: [socket2::SockAddr; MAX_MMSG] = std::array::from_fn(|i| {
        socket2::SockAddr::from(groups.get(i).unwrap_or(&groups[0]).destination)
    });
    let mut iov = [io::IoSlice::new(&[]); MAX_IOV];
    // Where each message's pieces start in `iov`, and how many.
    let mut spans = [(0usize, 0usize); MAX_MMSG];
    let (mut n, mut used) = (0, 0);
    for g in groups {
        let ps = &parts[g.first..g.first + g.parts];
        if used + ps.len() > MAX_IOV {
            break;
        }
        for (slot, part) in iov[used..].iter_mut().zip(ps) {
            *slot = io::IoSlice::new(part.bytes(buf));
        }
        spans[n] = (used, ps.len());
        used += ps.len();
        n += 1;
    }
    let mut control: [Control; MAX_MMSG] = [[0; 4]; MAX_MMSG];
    // SAFETY: mmsghdr is plain data; all-zero is a valid empty header.
    let mut msgs: [libc::mmsghdr; MAX_MMSG] = unsafe { std::mem::zeroed() };
    // IoSlice is ABI-compatible with iovec on Unix (std guarantees it).
    let iov_base = iov.as_mut_ptr().cast::<libc::iovec>();
    for (i, (g, ((start, len), (msg, ctrl)))) in groups
        .iter()
        .zip(spans.iter().zip(msgs.iter_mut().zip(control.iter_mut())))
        .take(n)
        .enumerate()
    {
        // SAFETY: `start + len <= used <= MAX_IOV`: inside `iov`.
        let iov = unsafe { iov_base.add(*start) };
        let gso = (g.count > 1).then_some((ctrl, g.segment));
        fill_msghdr(&mut msg.msg_hdr, &addrs[i], iov, *len, gso);
    }
    // SAFETY: every pointer in `msgs[..n]` refers to live buffers (`buf`,
    // the shared parts, `iov`, `addrs`, `control`) of the stated lengths
    // for the duration of the call.
    let sent = unsafe { libc::sendmmsg(sock.as_raw_fd(), msgs.as_mut_ptr(), n as _, 0) };
    if sent < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(sent as usize)
    }
}

/// Without gather sends the driver asks for whole datagrams; should a
/// shared part still come, it is copied together here.
#[cfg(not(target_os = "linux"))]
fn send_gather(
    sock: &std::net::UdpSocket,
    to: SocketAddr,
    buf: &[u8],
    parts: &[Part],
    segment: Option<usize>,
) -> io::Result<usize> {
    let whole: Vec<u8> = parts.iter().flat_map(|p| p.bytes(buf)).copied().collect();
    match segment {
        None => sock.send_to(&whole, to),
        Some(seg) => {
            for d in whole.chunks(seg) {
                sock.send_to(d, to)?;
            }
            Ok(whole.len())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    #[tokio::test]
    async fn a_send_that_finds_the_buffer_full_waits_for_writability_then_unregisters() {
        let sock = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        sock.set_nonblocking(true).unwrap();
        let io = UdpIo::new(sock).unwrap();
        // The first attempt reports a full buffer, as a real send would.
        let mut calls = 0;
        let r = std::future::poll_fn(|cx| {
            io.poll_send_io(cx, |_| {
                calls += 1;
                if calls == 1 {
                    Err(io::Error::from(io::ErrorKind::WouldBlock))
                } else {
                    Ok(calls)
                }
            })
        })
        .await;
        assert_eq!(r.unwrap(), 2, "retried once the socket reported writable");
        assert!(!io.write_registered.load(Ordering::Acquire));
        assert!(io.write.lock().unwrap().is_none(), "write interest dropped");
        // Plain sends go straight through, with no registration.
        let peer = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let to = peer.local_addr().unwrap();
        assert_eq!(io.send_to(b"hello", to).await.unwrap(), 5);
        let mut buf = [0u8; 16];
        let (n, from) = peer.recv_from(&mut buf).unwrap();
        assert_eq!(
            (&buf[..n], from),
            (&b"hello"[..], io.socket().local_addr().unwrap())
        );
        assert!(io.write.lock().unwrap().is_none());
    }

    /// An application's datagram sent while the driver waits for the socket
    /// to drain goes out at once, and leaves the driver's wait alone: the
    /// driver is woken when the socket reports writable (here after that
    /// very send). Sharing the driver's registration, the send waited for
    /// an edge it took from the driver, and dropped the registration the
    /// driver waited on once through.
    #[tokio::test]
    async fn an_application_send_leaves_the_drivers_wait_for_writability_alone() {
        struct Count(std::sync::atomic::AtomicUsize);
        impl std::task::Wake for Count {
            fn wake(self: Arc<Self>) {
                self.0.fetch_add(1, Ordering::SeqCst);
            }
        }
        let sock = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        sock.set_nonblocking(true).unwrap();
        let io = UdpIo::new(sock).unwrap();
        let woken = Arc::new(Count(std::sync::atomic::AtomicUsize::new(0)));
        let waker = std::task::Waker::from(woken.clone());
        let mut cx = Context::from_waker(&waker);
        // The driver's send finds the buffer full every time, for now.
        let full = || Err::<(), _>(io::Error::from(io::ErrorKind::WouldBlock));
        assert!(io.poll_send_io(&mut cx, |_| full()).is_pending());
        assert!(io.poll_send_io(&mut cx, |_| full()).is_pending());
        assert!(io.write_registered.load(Ordering::Acquire));
        let before = woken.0.load(Ordering::SeqCst);

        let peer = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let to = peer.local_addr().unwrap();
        let sent = tokio::time::timeout(Duration::from_secs(5), io.send_to(b"dht", to)).await;
        assert_eq!(sent.expect("not held behind the driver's wait").unwrap(), 3);
        let mut buf = [0u8; 8];
        assert_eq!(peer.recv(&mut buf).unwrap(), 3);
        assert!(
            io.write.lock().unwrap().is_some(),
            "the driver's registration is still there"
        );
        // The send's completion made the socket report writable: the
        // driver's waker, not the application's, hears of it.
        let t = Instant::now();
        while woken.0.load(Ordering::SeqCst) == before && t.elapsed() < Duration::from_secs(5) {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        assert!(
            woken.0.load(Ordering::SeqCst) > before,
            "the driver was woken"
        );
        let r = io.poll_send_io(&mut cx, |_| Ok(7));
        assert!(
            matches!(r, Poll::Ready(Ok(7))),
            "the driver's send goes through"
        );
        assert!(!io.write_registered.load(Ordering::Acquire));
    }

    /// A batch that filled fewer buffers than offered emptied the socket: the
    /// next receive waits for the reactor (no system call to learn that
    /// nothing is left), and a datagram sent after that still wakes it.
    #[tokio::test]
    async fn a_short_batch_waits_for_the_next_datagram_without_a_system_call() {
        let sock = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        sock.set_nonblocking(true).unwrap();
        let to = sock.local_addr().unwrap();
        let io = UdpIo::new(sock).unwrap();
        let peer = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let calls = std::cell::Cell::new(0);
        let mut buf = [0u8; 64];
        let mut recv = |cx: &mut Context<'_>| {
            io.poll_recv_io(
                cx,
                |s| {
                    calls.set(calls.get() + 1);
                    s.recv(&mut buf)
                },
                |&n| n < 8,
            )
        };
        peer.send_to(b"one", to).unwrap();
        let n = std::future::poll_fn(&mut recv).await.unwrap();
        assert_eq!((n, calls.get()), (3, 1));
        // Drained: pending without calling `op`.
        let pending = std::future::poll_fn(|cx| Poll::Ready(recv(cx).is_pending())).await;
        assert!(pending, "nothing was left to receive");
        assert_eq!(calls.get(), 1, "no system call to find the socket empty");
        // The next datagram is a new readiness event.
        peer.send_to(b"three", to).unwrap();
        let n = tokio::time::timeout(
            std::time::Duration::from_secs(5),
            std::future::poll_fn(&mut recv),
        )
        .await
        .expect("woken by the next datagram")
        .unwrap();
        assert_eq!((n, calls.get()), (5, 2));
    }

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
            Some(Outgoing {
                destination: addr(port),
                len,
                fragmentable: port == 9,
                payload: None,
            })
        });
        // Every byte lands where its group says, in one piece per group.
        for g in &tx.groups {
            let [Part::Buf { start, len }] = &tx.parts[g.first..g.first + g.parts] else {
                panic!("one contiguous piece per group: {g:?}");
            };
            assert_eq!(*len, g.len);
            assert!(tx.buf[*start..start + len]
                .iter()
                .all(|&b| b == g.destination.port() as u8));
        }
        tx.groups
            .iter()
            .map(|g| (g.destination.port(), g.segment, g.count))
            .collect()
    }

    /// Pretends the kernel delivered datagrams of these (length, stride).
    fn deliver(rx: &mut RxBuffers, sizes: &[(usize, usize)]) {
        rx.grow_to(sizes.len());
        for (i, &(len, stride)) in sizes.iter().enumerate() {
            rx.slots[i][..len].fill(i as u8 + 1);
            rx.meta[i].addr = addr(1);
            rx.meta[i].len = len;
            rx.meta[i].stride = stride;
        }
        rx.count = sizes.len();
    }

    /// Takes the lent buffers of the last receive, then marks it processed.
    fn lend(rx: &mut RxBuffers, sizes: &[(usize, usize)]) -> Vec<Bytes> {
        deliver(rx, sizes);
        let b = rx
            .datagrams()
            .filter_map(|(_, d)| match d {
                Datagram::Shared(b) => Some(b),
                Datagram::Borrowed(_) => None,
            })
            .collect();
        rx.processed();
        b
    }

    #[test]
    fn large_datagrams_are_lent_and_their_buffer_comes_back_once_released() {
        let mut rx = RxBuffers::new();
        rx.grow_to(1);
        let slot0 = rx.slots[0].as_ptr();
        // One 60 KiB datagram and a GRO buffer of 1400-byte ones.
        deliver(&mut rx, &[(60_000, 60_000), (14_000, 1_400)]);
        let mut kept = Vec::new();
        let mut borrowed = 0;
        for (_, d) in rx.datagrams() {
            match d {
                Datagram::Shared(b) => kept.push(b),
                Datagram::Borrowed(d) => {
                    assert_eq!(d.len(), 1_400);
                    assert!(d.iter().all(|&b| b == 2));
                    borrowed += 1;
                }
            }
        }
        assert_eq!(borrowed, 10, "small datagrams are read in place");
        assert_eq!(kept.len(), 1);
        assert_eq!(kept[0].len(), 60_000);
        assert_eq!(kept[0].as_ptr(), slot0, "no copy");
        assert!(kept[0].iter().all(|&b| b == 1));
        // A reader still holds the payload: the slot gets another buffer.
        rx.processed();
        assert_ne!(rx.slots[0].as_ptr(), slot0);
        assert_eq!(rx.slots[0].len(), MAX_DATAGRAM);
        assert!(rx.pooled().is_empty());
        // Released: back in the pool, and the next slot lent gets it.
        drop(kept);
        assert_eq!(rx.pooled(), vec![slot0]);
        let slot0_now = rx.slots[0].as_ptr();
        let none_kept = lend(&mut rx, &[(40_000, 0)]);
        assert_eq!(none_kept.len(), 1);
        drop(none_kept);
        rx.processed();
        assert_eq!(rx.slots[0].as_ptr(), slot0, "the last returned first");
        assert_eq!(rx.slots[0].len(), MAX_DATAGRAM);
        assert_eq!(rx.pooled(), vec![slot0_now]);
    }

    #[test]
    fn a_buffer_comes_back_while_an_older_one_is_still_held() {
        let mut rx = RxBuffers::new();
        let old = lend(&mut rx, &[(50_000, 0)]);
        let newer = lend(&mut rx, &[(50_000, 0)]);
        let (old_ptr, newer_ptr) = (old[0].as_ptr(), newer[0].as_ptr());
        // Another connection's reader finishes first.
        drop(newer);
        assert_eq!(rx.pooled(), vec![newer_ptr]);
        drop(old);
        assert_eq!(rx.pooled(), vec![newer_ptr, old_ptr]);
    }

    #[test]
    fn the_pool_is_bounded_and_outlived_buffers_are_freed() {
        let mut rx = RxBuffers::new();
        let mut held = Vec::new();
        for _ in 0..3 * MAX_POOLED {
            held.extend(lend(&mut rx, &[(65_000, 0)]));
        }
        assert_eq!(held.len(), 3 * MAX_POOLED);
        let last = held.pop().expect("held");
        drop(held);
        assert_eq!(rx.pooled().len(), MAX_POOLED);
        // A reader outliving the socket frees its buffer itself.
        drop(rx);
        assert_eq!(last.len(), 65_000);
        drop(last);
    }

    #[test]
    fn same_peer_same_size_datagrams_share_one_send() {
        assert_eq!(group(64, &[(1, 1420); 10]), vec![(1, 1420, 10)]);
    }

    #[test]
    fn a_fragmentable_datagram_goes_alone() {
        // Port 9 marks fragmentable datagrams in `group`.
        let d = [(1, 1420), (9, 1420), (9, 1420), (1, 1420)];
        assert_eq!(
            group(64, &d),
            vec![(1, 1420, 1), (9, 1420, 1), (9, 1420, 1), (1, 1420, 1)]
        );
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

    /// Datagram `i` of the gather tests: a 20-byte header of `i`, then
    /// (for most) a payload of `plen` bytes counting up from `i`.
    fn gathered(i: usize, plen: usize) -> (Vec<u8>, Option<Bytes>) {
        let payload = (plen > 0).then(|| (0..plen).map(|k| (i + k) as u8).collect::<Bytes>());
        (vec![i as u8; 20], payload)
    }

    /// Fills a batch with `gathered` datagrams of these payload lengths.
    fn fill_gathered(tx: &mut TxBatch, to: SocketAddr, plens: &[usize]) {
        fill_gathered_to(tx, plens.iter().map(|&plen| (to, plen)));
    }

    /// Fills a batch with `gathered` datagrams: the i-th to its destination,
    /// with its payload length.
    fn fill_gathered_to(
        tx: &mut TxBatch,
        datagrams: impl IntoIterator<Item = (SocketAddr, usize)>,
    ) {
        let mut datagrams = datagrams.into_iter().enumerate();
        tx.fill(|buf| {
            let (i, (destination, plen)) = datagrams.next()?;
            let (hdr, payload) = gathered(i, plen);
            buf[..hdr.len()].copy_from_slice(&hdr);
            Some(Outgoing {
                destination,
                len: hdr.len(),
                fragmentable: false,
                payload,
            })
        });
    }

    #[test]
    fn shared_payloads_follow_their_headers_and_group_by_total_size() {
        let mut tx = TxBatch::with_max_segments(64);
        fill_gathered(&mut tx, addr(1), &[4000, 4000, 4000, 0, 4000]);
        let sizes: Vec<(usize, usize)> = tx.groups.iter().map(|g| (g.segment, g.count)).collect();
        // The header-only datagram is shorter: it ends the first group.
        // (Its header cannot join the previous header: a payload is between.)
        assert_eq!(sizes, vec![(4020, 4), (4020, 1)]);
        let mut expected = Vec::new();
        for (i, plen) in [4000, 4000, 4000, 0, 4000].into_iter().enumerate() {
            let (hdr, payload) = gathered(i, plen);
            expected.extend_from_slice(&hdr);
            expected.extend_from_slice(payload.as_deref().unwrap_or_default());
        }
        let got: Vec<u8> = tx
            .parts
            .iter()
            .flat_map(|p| p.bytes(&tx.buf))
            .copied()
            .collect();
        assert_eq!(got, expected);
        // A header and a payload each, the payload-less datagram one piece.
        assert_eq!(tx.parts.len(), 9);
    }

    /// A batching sender on loopback and an empty batch for it.
    fn batch_sender() -> (UdpIo, BatchIo, TxBatch) {
        let sock = bind("127.0.0.1:0".parse().unwrap(), 1 << 20).unwrap().0;
        let udp = UdpIo::new(sock).unwrap();
        let io = BatchIo::new(&udp, false).unwrap();
        let tx = TxBatch::new(&io);
        (udp, io, tx)
    }

    #[tokio::test]
    async fn batched_sockets_ask_for_no_ancillary_data_they_do_not_read() {
        for (local, ipv6) in [("127.0.0.1:0", false), ("[::1]:0", true)] {
            let Ok((sock, _)) = bind(local.parse().unwrap(), 1 << 20) else {
                continue; // no IPv6 here
            };
            let udp = UdpIo::new(sock).unwrap();
            let _io = BatchIo::new(&udp, ipv6).unwrap();
            let fd = std::os::fd::AsFd::as_fd(udp.socket());
            let get = |level, name| getsockopt_int(fd, level, name).unwrap();
            assert_eq!(get(libc::SOL_SOCKET, libc::SO_TIMESTAMPNS), 0, "{local}");
            assert_eq!(get(libc::IPPROTO_IP, libc::IP_RECVTOS), 0, "{local}");
            if ipv6 {
                assert_eq!(get(libc::IPPROTO_IPV6, libc::IPV6_RECVPKTINFO), 0);
                assert_eq!(get(libc::IPPROTO_IPV6, libc::IPV6_RECVTCLASS), 0);
            } else {
                assert_eq!(get(libc::IPPROTO_IP, libc::IP_PKTINFO), 0);
            }
            // GRO's segment size is still reported.
            assert_eq!(get(libc::SOL_UDP, libc::UDP_GRO), 1, "{local}");
        }
    }

    /// A plain receiving socket that gives up after 5 s.
    fn receiver() -> std::net::UdpSocket {
        let rx = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        rx.set_read_timeout(Some(std::time::Duration::from_secs(5)))
            .unwrap();
        rx
    }

    #[tokio::test]
    async fn a_gathered_batch_arrives_as_whole_datagrams() {
        let rx = receiver();
        let (udp, io, mut tx) = batch_sender();
        let plens = [8000, 8000, 8000, 8000, 100, 0, 30_000, 5000, 5000];
        fill_gathered(&mut tx, rx.local_addr().unwrap(), &plens);
        std::future::poll_fn(|cx| io.poll_flush(cx, &udp, &mut tx))
            .await
            .unwrap();
        assert!(tx.is_empty() && tx.parts.is_empty(), "sent and let go");
        let mut buf = vec![0u8; MAX_DATAGRAM];
        for (i, &plen) in plens.iter().enumerate() {
            let n = rx.recv(&mut buf).unwrap();
            let (hdr, payload) = gathered(i, plen);
            assert_eq!(n, hdr.len() + plen, "datagram {i}");
            assert_eq!(&buf[..20], &hdr[..], "datagram {i}");
            assert_eq!(
                &buf[20..n],
                payload.as_deref().unwrap_or_default(),
                "datagram {i}"
            );
        }
    }

    /// Sends to many peers go out together (`sendmmsg`); one refused in
    /// the middle is dropped alone and the rest still go.
    #[tokio::test]
    async fn a_batch_to_many_peers_survives_one_refused_destination() {
        let rxs: Vec<std::net::UdpSocket> = (0..3).map(|_| receiver()).collect();
        let (udp, io, mut tx) = batch_sender();
        // Port 0 cannot be sent to (EINVAL): a refused destination.
        let bad: SocketAddr = "127.0.0.1:0".parse().unwrap();
        let to: Vec<SocketAddr> = [0, 1, 3, 2, 0, 1, 2]
            .iter()
            .map(|&k| rxs.get(k).map_or(bad, |r| r.local_addr().unwrap()))
            .collect();
        fill_gathered_to(&mut tx, to.iter().map(|&dest| (dest, 6000)));
        assert_eq!(tx.groups.len(), to.len(), "a group per datagram");
        std::future::poll_fn(|cx| io.poll_flush(cx, &udp, &mut tx))
            .await
            .unwrap();
        assert!(tx.is_empty());
        let mut buf = vec![0u8; MAX_DATAGRAM];
        for (i, &dest) in to.iter().enumerate() {
            let Some(rx) = rxs.iter().find(|r| r.local_addr().unwrap() == dest) else {
                continue;
            };
            let n = rx.recv(&mut buf).unwrap();
            let (hdr, payload) = gathered(i, 6000);
            assert_eq!(n, 20 + 6000, "datagram {i}");
            assert_eq!(&buf[..20], &hdr[..], "datagram {i}: in order per peer");
            assert_eq!(&buf[20..n], &payload.unwrap()[..], "datagram {i}");
        }
    }

    #[test]
    fn the_batch_stops_when_full_and_keeps_the_largest_datagrams_whole() {
        let mut tx = TxBatch::with_max_segments(64);
        let mut produced = 0;
        let full = tx.fill(|buf| {
            assert!(buf.len() >= 65_507, "room for any UDP payload");
            produced += 1;
            Some(Outgoing {
                destination: addr(1),
                len: 65_507,
                fragmentable: false,
                payload: None,
            })
        });
        assert!(full);
        assert_eq!(produced, TX_BYTES / MAX_DATAGRAM);
        assert!(tx.groups.iter().all(|g| g.count == 1));
    }

    #[test]
    fn the_send_buffer_grows_only_as_far_as_a_batch_needs() {
        let mut tx = TxBatch::with_max_segments(64);
        let small = |_: &mut [u8]| Outgoing {
            destination: addr(1),
            len: 100,
            fragmentable: false,
            payload: None,
        };
        let mut left = 10;
        tx.fill(|buf| {
            left -= 1;
            (left >= 0).then(|| small(buf))
        });
        assert_eq!(tx.groups.iter().map(|g| g.count).sum::<usize>(), 10);
        assert!(tx.buf.len() <= 2 * MAX_DATAGRAM, "{}", tx.buf.len());
        // Full-size datagrams take it to its limit, never past it; what a
        // batch wrote before the buffer grew is still there.
        tx.clear();
        let mut i = 0u8;
        tx.fill(|buf| {
            i += 1;
            buf[..65_000].fill(i);
            Some(Outgoing {
                destination: addr(1),
                len: 65_000,
                fragmentable: false,
                payload: None,
            })
        });
        assert_eq!(tx.buf.len(), TX_BYTES);
        for (k, p) in tx.parts.iter().enumerate() {
            let bytes = p.bytes(&tx.buf);
            assert_eq!(bytes.len(), 65_000);
            assert!(bytes.iter().all(|&b| b == k as u8 + 1), "datagram {k}");
        }
    }

    #[test]
    fn receive_slots_double_only_while_the_kernel_has_more_queued() {
        let mut rx = RxBuffers::new();
        assert!(rx.slots.iter().all(Vec::is_empty), "nothing before use");
        rx.grow_to(RX_FIRST);
        // One datagram at a time (a handshake, requests): the first slots.
        for _ in 0..5 {
            let was_full = std::mem::take(&mut rx.was_full);
            rx.received(1, was_full);
        }
        // Full, but the next call finds the queue empty (would block).
        for _ in 0..5 {
            let was_full = std::mem::take(&mut rx.was_full);
            rx.received(RX_FIRST, was_full);
            rx.was_full = false;
        }
        assert_eq!(rx.active, RX_FIRST);
        // A backlog: every call full, and the next one finds more.
        let mut offered = Vec::new();
        for _ in 0..5 {
            let was_full = std::mem::take(&mut rx.was_full);
            offered.push(rx.active);
            rx.received(rx.active, was_full);
        }
        assert_eq!(offered, [2, 2, 4, 8, 8]);
        assert!(rx.slots.iter().all(|s| s.len() == MAX_DATAGRAM));
        // A call that leaves slots empty drained the queue: no growth after.
        let mut rx = RxBuffers::new();
        rx.grow_to(4);
        rx.received(3, false);
        let was_full = std::mem::take(&mut rx.was_full);
        rx.received(4, was_full);
        assert_eq!(rx.active, 4);
    }
}

#[cfg(all(test, target_os = "linux"))]
mod pmtu_tests {
    use super::*;

    #[test]
    fn loopback_route_allows_64k_datagrams() {
        // lo has an MTU of 65,536: 65,508 bytes of UDP payload, capped at
        // the largest a UDP datagram can carry.
        assert_eq!(
            route_max_datagram("127.0.0.1:9".parse().unwrap()),
            Some(MAX_UDP_PAYLOAD)
        );
    }

    /// A process allowed to override the OS's cap on socket buffers (root
    /// here and in CI; `net.core.rmem_max` is 4 MiB) gets what it asks for.
    #[cfg(target_os = "linux")]
    #[test]
    fn a_privileged_process_gets_buffers_above_the_cap() {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("skipped: not root");
            return;
        }
        let asked = 16 << 20;
        let (s, granted) = bind("127.0.0.1:0".parse().unwrap(), asked).unwrap();
        let s = Socket::from(s);
        // Linux reports twice the size it granted.
        assert_eq!(s.recv_buffer_size().unwrap(), 2 * asked);
        assert_eq!(granted, Some(2 * asked), "bind returns what the OS reports");
        assert_eq!(s.send_buffer_size().unwrap(), 2 * asked);
    }

    /// ICMP errors become problems with the largest datagram that passes
    /// (the MTU less the IP and UDP headers of the ICMP's family); local
    /// errors and an MTU the router left out (zero) are not acted on.
    #[cfg(target_os = "linux")]
    #[test]
    fn icmp_errors_say_refused_or_the_size_that_passes() {
        let report = |origin, errno: i32, info| libc::sock_extended_err {
            ee_errno: errno as u32,
            ee_origin: origin,
            ee_type: 3,
            ee_code: 4,
            ee_pad: 0,
            ee_info: info,
            ee_data: 0,
        };
        let icmp = libc::SO_EE_ORIGIN_ICMP;
        let icmp6 = libc::SO_EE_ORIGIN_ICMP6;
        let local = libc::SO_EE_ORIGIN_LOCAL;
        let cases = [
            (
                report(icmp, libc::EMSGSIZE, 1280),
                Some(Problem::TooBig(1252)),
            ),
            (
                report(icmp6, libc::EMSGSIZE, 1280),
                Some(Problem::TooBig(1232)),
            ),
            (
                report(icmp, libc::ECONNREFUSED, 0),
                Some(Problem::Unreachable),
            ),
            (
                report(icmp6, libc::ECONNREFUSED, 0),
                Some(Problem::Unreachable),
            ),
            (report(icmp, libc::EMSGSIZE, 0), None),
            (report(icmp, libc::EMSGSIZE, 20), None),
            (report(local, libc::EMSGSIZE, 1500), None),
            (report(icmp, libc::EHOSTUNREACH, 0), None),
        ];
        for (e, want) in cases {
            assert_eq!(icmp_problem(&e), want, "{e:?}");
        }
    }

    /// Non-blocking from its creation, and `bind` tells the receive buffer
    /// as the OS reports it.
    #[test]
    fn bound_sockets_do_not_block_and_tell_their_receive_buffer() {
        let (s, granted) = bind("127.0.0.1:0".parse().unwrap(), 1 << 20).unwrap();
        assert_eq!(granted, receive_buffer(&s));
        assert!(granted.is_some());
        let mut buf = [0u8; 16];
        let e = s.recv(&mut buf).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::WouldBlock);
    }

    #[test]
    fn bound_sockets_set_df_in_probe_mode() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let _g = rt.enter();
        let s = bind("127.0.0.1:0".parse().unwrap(), 1 << 20).unwrap().0;
        let v = getsockopt_int(
            std::os::fd::AsFd::as_fd(&s),
            libc::IPPROTO_IP,
            libc::IP_MTU_DISCOVER,
        )
        .unwrap();
        assert_eq!(v, libc::IP_PMTUDISC_PROBE);
        let inside = with_fragmentation(&s, false, || {
            getsockopt_int(
                std::os::fd::AsFd::as_fd(&s),
                libc::IPPROTO_IP,
                libc::IP_MTU_DISCOVER,
            )
            .unwrap()
        });
        assert_eq!(inside, libc::IP_PMTUDISC_DONT);
        let after = getsockopt_int(
            std::os::fd::AsFd::as_fd(&s),
            libc::IPPROTO_IP,
            libc::IP_MTU_DISCOVER,
        )
        .unwrap();
        assert_eq!(after, libc::IP_PMTUDISC_PROBE);
    }
}

/// Marks every datagram the socket sends with `tos`: the IPv4 TOS byte and,
/// on IPv6 sockets, the traffic class (DSCP in the upper six bits, ECN bits
/// left to the OS). A dual-stack socket gets both, for its IPv4-mapped peers.
pub(crate) fn set_traffic_class(sock: &std::net::UdpSocket, tos: u8) -> io::Result<()> {
    let s = socket2::SockRef::from(sock);
    if sock.local_addr()?.is_ipv6() {
        s.set_tclass_v6(tos.into())?;
        // IPv4-mapped traffic of a dual-stack socket uses IP_TOS; an
        // IPv6-only socket may refuse it, which is fine.
        let _ = s.set_tos(tos.into());
        Ok(())
    } else {
        s.set_tos(tos.into())
    }
}

/// The marking set by [`set_traffic_class`], read back from the socket.
pub(crate) fn traffic_class(sock: &std::net::UdpSocket) -> io::Result<u8> {
    let s = socket2::SockRef::from(sock);
    let v = if sock.local_addr()?.is_ipv6() {
        s.tclass_v6()?
    } else {
        s.tos()?
    };
    Ok((v & 0xff) as u8)
}
