//! Sans-IO core of the uTP protocol (BEP 29), as libutp and libtorrent speak it.
//!
//! Nothing here opens a socket, reads a clock or spawns a thread: datagrams
//! go in through [`Endpoint::handle_datagram`], come out of
//! [`Endpoint::poll_transmit`], and time is passed in as [`std::time::Instant`].
//! The async library `tokio-utp` moves bytes between this core and a UDP
//! socket; tests drive it directly in virtual time.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod config;
pub mod congestion;
pub mod connection;
pub mod drops;
pub mod endpoint;
mod flight;
mod pacing;
pub mod packet;
pub mod pmtud;
pub mod ratelimit;
pub mod rtt;
mod sendbuf;
pub mod seq;

pub use config::Config;
pub use congestion::{
    Aimd, AimdFactory, Controller, ControllerFactory, DelayState, Ledbat, LedbatConfig,
    LedbatFactory,
};
pub use connection::{
    Connection, ConnectionError, ConnectionStats, Role, State, WriteError, SPLIT_MIN, SYN_RECV_HOLD,
};
pub use drops::DropStats;
pub use endpoint::{trimmed_capacity, ConnHandle, Endpoint, EndpointStats, NoFreeIds, Transmit};
pub use packet::{Header, Packet, PacketType, ParseError};
pub use sendbuf::pooled_send_memory;
