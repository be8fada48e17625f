//! Datagram I/O in one place, so batching (sendmmsg/recvmmsg, GSO/GRO) can
//! later change this module alone.
//!
//! Path MTU support (Linux): every datagram leaves with the Don't Fragment
//! bit in the kernel's PROBE mode (DF set, but the kernel's cached path MTU
//! does not block our probes: the protocol core does its own search), the
//! route MTU caps each connection's search, and a packet from before a
//! path MTU fall-back can be resent with fragmentation allowed. This is the
//! only module with `unsafe` (raw socket options libc has and socket2 lacks).
#![allow(unsafe_code)]

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
    set_dont_fragment(&sock, addr.is_ipv6());
    sock.set_nonblocking(true)?;
    sock.bind(&addr.into())?;
    tokio::net::UdpSocket::from_std(sock.into())
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

#[cfg(all(test, target_os = "linux"))]
mod tests {
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

    #[test]
    fn bound_sockets_set_df_in_probe_mode() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let _g = rt.enter();
        let s = bind("127.0.0.1:0".parse().unwrap()).unwrap();
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
pub(crate) fn set_traffic_class(sock: &tokio::net::UdpSocket, tos: u8) -> io::Result<()> {
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
pub(crate) fn traffic_class(sock: &tokio::net::UdpSocket) -> io::Result<u8> {
    let s = socket2::SockRef::from(sock);
    let v = if sock.local_addr()?.is_ipv6() {
        s.tclass_v6()?
    } else {
        s.tos()?
    };
    Ok((v & 0xff) as u8)
}
