//! Datagram I/O in one place, so batching (sendmmsg/recvmmsg, GSO/GRO) can
//! later change this module alone.

use std::io;
use std::net::SocketAddr;

use socket2::{Domain, Protocol, Socket, Type};

/// Socket buffer size we ask the kernel for: bursts of a full window must not
/// overflow the default ~200 KiB buffers (the kernel caps it at rmem_max).
const SOCKET_BUFFER: usize = 4 << 20;

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
