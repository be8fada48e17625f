//! Async uTP (the Micro Transport Protocol, BEP 29) for tokio.
//!
//! One [`UtpSocket`] owns one UDP socket and carries any number of inbound
//! and outbound connections; a [`UtpListener`] accepts them and each
//! [`UtpStream`] is a reliable, ordered byte stream implementing tokio's
//! `AsyncRead` and `AsyncWrite`. The protocol itself lives in the sans-IO
//! crate [`utp_proto`]; this crate moves its datagrams through tokio.
//!
//! ```no_run
//! use tokio::io::AsyncWriteExt;
//! use tokio_utp::UtpStream;
//!
//! # async fn run(addr: std::net::SocketAddr) -> std::io::Result<()> {
//! let (mut stream, driver) = UtpStream::connect(addr).await?;
//! tokio::spawn(driver);
//! stream.write_all(b"Hi there!").await?;
//! stream.close().await?;
//! # Ok(()) }
//! ```
//!
//! Errors are `std::io::Error`s with the kinds `ConnectionRefused` (RESET in
//! reply to our SYN), `ConnectionReset`, `TimedOut` and `BrokenPipe` (write
//! after shutdown).
//!
//! # In a BitTorrent client
//!
//! **One port for uTP, the DHT and UDP trackers.** Build the socket from
//! the application's own UDP socket (or bind it here); datagrams that are not
//! uTP (the DHT's bencoded `d...`, tracker replies) come out of
//! [`UtpSocket::recv_other`], and [`UtpSocket::send_to`] sends the
//! application's own through the same port (see `examples/shared_socket.rs`):
//!
//! ```no_run
//! # async fn run() -> std::io::Result<()> {
//! use tokio_utp::{Config, UtpSocket};
//! let sock = UtpSocket::from_std(std::net::UdpSocket::bind("0.0.0.0:6881")?, Config::default())?;
//! let mut buf = [0u8; 1500];
//! let (n, from) = sock.recv_other(&mut buf).await?; // a DHT query
//! sock.send_to(b"d1:rd2:id20:...e1:t2:aa1:y1:re", from).await?;
//! # Ok(()) }
//! ```
//!
//! **Dropping a misbehaving peer.** [`UtpStream::abort`] resets the
//! connection at once (a RESET, nothing queued or unread kept, no FIN
//! handshake or TIME_WAIT), where `close()` or a drop end it gracefully;
//! libtorrent and Transmission drop the connection on it at once.
//!
//! **IPv6 and dual stack.** Bind `[::]:port` for both families on one
//! socket; IPv4 peers appear as IPv4-mapped addresses (one peer, one
//! identity), and `connect` accepts either form.
//!
//! ```no_run
//! # async fn run() -> std::io::Result<()> {
//! let sock = tokio_utp::UtpSocket::bind("[::]:6881").await?;
//! let v4 = sock.connect("192.0.2.7:6881").await?;
//! let v6 = sock.connect("[2001:db8::7]:6881").await?;
//! # Ok(()) }
//! ```
//!
//! **Rate limits.** Upload and download caps per socket (shared by all its
//! connections) and per connection, changeable at any time. Uploads are
//! paced, downloads metered at the reader so the advertised window shrinks;
//! nothing is dropped, so LEDBAT's delay signal stays clean.
//!
//! ```no_run
//! # async fn run(sock: tokio_utp::UtpSocket, stream: tokio_utp::UtpStream) {
//! sock.set_upload_limit(Some(2_000_000)); // 2 MB/s for all connections
//! sock.set_download_limit(None);
//! stream.set_download_limit(Some(500_000)); // and this one at most 500 kB/s
//! # }
//! ```
//!
//! **Per-connection settings.** The socket's [`Config`] is the default;
//! [`UtpSocket::connect_with_config`] overrides it for one connection
//! (timeouts, buffers, payload size, congestion controller, pacing, limits):
//!
//! ```no_run
//! # async fn run(sock: tokio_utp::UtpSocket, addr: std::net::SocketAddr) -> std::io::Result<()> {
//! use std::time::Duration;
//! use tokio_utp::Config;
//! let cfg = Config::default()
//!     .connect_timeout(Duration::from_secs(3))
//!     .upload_limit(Some(100_000));
//! let stream = sock.connect_with_config(addr, cfg).await?;
//! # Ok(()) }
//! ```
//!
//! **DSCP marking.** [`UtpSocket::set_traffic_class`] marks every packet
//! (IPv4 TOS, IPv6 traffic class); LEDBAT traffic is commonly "lower
//! effort":
//!
//! ```no_run
//! # fn run(sock: tokio_utp::UtpSocket) -> std::io::Result<()> {
//! sock.set_traffic_class(tokio_utp::UtpSocket::DSCP_LE)?;
//! # Ok(()) }
//! ```
//!
//! **Pluggable transport.** The datagram layer is the [`Transport`] trait:
//! the default is the real UDP socket with batched I/O; [`MemoryNetwork`]
//! runs uTP with no sockets at all (tests, simulations), and a SOCKS5 UDP
//! relay or a socket wrapper of your own plugs in the same way through
//! [`UtpSocket::with_transport`] (see [`MemoryNetwork`] for an example).
//!
//! **Observability.** [`UtpSocket::stats`] counts datagrams in and out,
//! non-uTP datagrams, connections opened, accepted, refused, reset and timed
//! out, and every dropped packet by reason; [`UtpStream::stats`] has a
//! connection's figures (RTT, window, LEDBAT's queueing delay, losses). With
//! a `tracing` subscriber at debug level, each connection's events carry a
//! span `utp{id, peer}`.
//!
//! **Congestion control.** LEDBAT (a 100 ms queueing-delay target, with
//! LEDBAT++'s slowdowns) is the default: uTP fills idle bandwidth and steps
//! aside for TCP. `Config::controller` takes another, e.g.
//! `utp_proto::AimdFactory` to compete like TCP.
// Only `udp` (raw socket options) has unsafe code.
#![deny(unsafe_code)]
#![warn(missing_docs)]

mod listener;
mod socket;
mod stream;
mod transport;
mod udp;

pub use listener::{Incoming, UtpListener};
pub use socket::{Driver, UtpSocket};
pub use stream::{
    OwnedReadHalf, OwnedWriteHalf, ReadHalf, ReuniteError, UtpStream, WriteHalf, CLOSE_GRACE,
};
pub use transport::{MemoryNetwork, MemorySocket, Transport};
pub use utp_proto::{pooled_send_memory, Config, ConnectionStats, EndpointStats};
