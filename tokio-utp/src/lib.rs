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
// Only `udp` (raw socket options) has unsafe code.
#![deny(unsafe_code)]
#![warn(missing_docs)]

mod listener;
mod socket;
mod stream;
mod udp;

pub use listener::{Incoming, UtpListener};
pub use socket::{Driver, UtpSocket};
pub use stream::{OwnedReadHalf, OwnedWriteHalf, UtpStream, CLOSE_GRACE};
pub use utp_proto::{Config, ConnectionStats, EndpointStats};
