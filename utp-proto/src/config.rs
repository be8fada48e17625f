//! Configuration with documented defaults.

use std::sync::Arc;
use std::time::Duration;

use crate::congestion::{LedbatFactory, SharedControllerFactory};

/// Settings for connections and the endpoint that owns them.
///
/// Every field has a documented default (see [`Config::default`]); the
/// builder-style setters return `self` so a configuration reads as one
/// expression.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Config {
    /// Largest payload per packet, in bytes: the cap of path MTU discovery
    /// (the route's MTU as the OS reports it caps it too). Default 65,487,
    /// the largest UDP payload (65,507) minus the 20-byte uTP header, i.e.
    /// no cap: loopback ends up with 64 KiB packets. Set it (e.g. 1400) for
    /// peers or middleboxes that dislike large datagrams.
    pub max_payload: usize,
    /// Path MTU discovery (datagram PLPMTUD, RFC 8899): start at
    /// `base_payload` and probe upward to the path's limit. Default on.
    /// When off, every packet carries `base_payload` bytes (capped by
    /// `max_payload`).
    pub pmtud: bool,
    /// Payload of the starting size, assumed to pass every path, and the
    /// fixed size without discovery. Default 1212: a 1280-byte IP packet
    /// (the IPv6 minimum MTU) minus IPv6 (40), UDP (8) and uTP (20)
    /// headers; over IPv4 that is a 1260-byte packet. IPv4 allows paths
    /// down to 576 bytes, but QUIC's 1200-byte minimum shows that paths
    /// below 1280 are too rare to start every connection at 528 bytes;
    /// a black hole at this size falls back to 528 (576-byte IPv4).
    pub base_payload: usize,
    /// How long a completed search rests before searching again for a
    /// grown path MTU. Default 10 minutes (RFC 8899's PMTU_RAISE_TIMER).
    pub pmtud_interval: Duration,
    /// Bytes the application may queue for sending before `write` blocks
    /// (unsent plus unacknowledged). Default 1 MiB. A connection queues at
    /// most about twice its congestion window (at least 64 KiB) of this,
    /// and when several connections to one peer are sending, twice its
    /// share of `max_peer_flight`: bytes queued far ahead of sending only
    /// hold memory, which many connections fault in afresh.
    pub send_buffer: usize,
    /// Receive buffer: bounds the advertised window and the bytes held for a
    /// slow reader (in-order plus out-of-order). Default 1 MiB.
    pub recv_buffer: usize,
    /// Most bytes in flight (sent, not yet acknowledged) on all connections
    /// to one peer address together. The peer receives them all on one
    /// socket, whose buffer is finite: many connections each within their
    /// own windows can together overflow it, and every datagram dropped
    /// there costs a retransmission (a hundred connections to one peer on
    /// loopback lost one datagram in seven before this limit). It also
    /// bounds each sending connection's send buffer to twice its share
    /// (see `send_buffer`). Default 2 MiB: twice the window a peer with
    /// our default `recv_buffer` advertises, and half a typical Linux
    /// socket buffer's maximum (4 MiB). A peer that advertises larger
    /// windows (a long fat path) needs a larger limit to use them. To a
    /// peer on the same host (a loopback address) the limit is also half
    /// the receive buffer the OS granted our socket (see
    /// [`crate::Endpoint::set_socket_receive_buffer`]).
    pub max_peer_flight: usize,
    /// Most out-of-order bytes (received past a gap, waiting for it) that
    /// all connections of one socket hold together; more out-of-order data
    /// is dropped and counted (`DropStats::reorder_memory_full`) and comes
    /// again with the sender's retransmissions. Each connection alone is
    /// bounded by `recv_buffer`, but a peer that opens many connections and
    /// never fills their gaps would otherwise hold `recv_buffer` on each
    /// (10,000 connections: 10 GiB). In-order data is never refused for it.
    /// Default 128 MiB.
    pub reorder_memory: usize,
    /// The send and receive buffer, in bytes, that tokio-utp asks the OS
    /// for on a socket it binds. Default 4 MiB: a window's burst of 64 KiB
    /// datagrams overflows the usual 208 KiB. The OS caps the request at
    /// `net.core.rmem_max` / `wmem_max` unless the process may override
    /// that (`CAP_NET_ADMIN`), and tokio-utp warns once when it is capped.
    /// Sockets passed in by the application keep their own buffers.
    pub socket_buffer: usize,
    /// How long `connect` may take before failing with a timeout. Default 10 s.
    pub connect_timeout: Duration,
    /// RTO before the first RTT sample. Default 1 s.
    pub initial_rto: Duration,
    /// Lower bound of the RTO. Default 500 ms.
    pub min_rto: Duration,
    /// Upper bound of the RTO after backoff (at least `min_rto`). Default 30 s.
    pub max_rto: Duration,
    /// Consecutive retransmission timeouts, with no packet from the peer in
    /// between, after which the connection fails with a timeout. Default 6
    /// (about 30 s with the 500 ms floor).
    pub max_timeouts: u32,
    /// How long a fully closed connection's id stays reserved, so late
    /// packets (a re-sent FIN) are answered instead of mistaken. Default 10 s.
    pub time_wait: Duration,
    /// Most connections one endpoint keeps in TIME_WAIT after the
    /// application let go of them (dropped its stream); beyond it the
    /// oldest ends early (counted in `EndpointStats::time_wait_ended_early`),
    /// as Linux does past `tcp_max_tw_buckets`. Each is kept as a compact
    /// record (its ids and sequence numbers, some 270 bytes of heap), but a
    /// peer closing connections as fast as it opens them would otherwise
    /// make memory grow with its rate times [`Config::time_wait`]. Default
    /// 16,384 (about 4.5 MB), more than a burst of 10,000 closes.
    pub max_time_wait: usize,
    /// After the application dropped a connection and our FIN is acked, how
    /// long to wait for the peer's FIN while the peer is silent. Default 10 s.
    pub linger: Duration,
    /// Highest number of out-of-order packets held past a hole (0 holds
    /// none; packets in order are always taken). Default 1024.
    pub max_reorder_packets: usize,
    /// Connections accepted by the endpoint but not yet taken by the
    /// application (at least 1, as with `listen(2)`); SYNs beyond it are
    /// dropped (and retried by the peer a second later). Default 1024, as
    /// tokio's `TcpListener`: a burst of connects completes its handshakes
    /// before the accepting task runs, and 128 lost SYNs to bursts of 64
    /// parallel connects.
    pub accept_backlog: usize,
    /// Receive buffer of a connection waiting in the accept queue (its
    /// window is no larger); it gets [`Config::recv_buffer`] once the
    /// application accepts it. A peer that fills the backlog with
    /// connections and sends on every one holds at most `accept_backlog`
    /// times this, not times `recv_buffer` (1,024 x 1 MiB). Default 64 KiB:
    /// a BitTorrent handshake and more.
    pub backlog_recv_buffer: usize,
    /// Incoming connections whose initiator has not spoken since its SYN
    /// (half-open, whether or not the application accepted them yet). SYNs
    /// beyond it get a SYN cookie and no state: the connection is made
    /// when the initiator's next packet returns the cookie. So a SYN flood
    /// from forged addresses holds at most this many connections (each
    /// freed after [`Config::connect_timeout`]) and real initiators still
    /// get in. Default 1024.
    pub max_half_open: usize,
    /// RESET replies to packets of unknown connections, per second. Default 100.
    pub reset_rate: u32,
    /// Send a keep-alive (an ack) after this long without sending anything
    /// on an established connection; `None` disables. Default 29 s, like
    /// libutp, so NAT mappings outlive quiet periods. While the peer has
    /// acked our FIN and not sent its own, they come sooner (1, 2, 4 ... s
    /// after the ack, up to this interval): the original libutp drops such
    /// a connection without a FIN and answers the next packet with a RESET.
    pub keepalive_interval: Option<Duration>,
    /// Fail an established connection with a timeout when the peer sent
    /// nothing for this long; `None` (the default) waits forever, like TCP
    /// without keep-alive. libutp peers send keep-alives every 29 s, so a
    /// few minutes is a safe setting to detect dead peers.
    pub idle_timeout: Option<Duration>,
    /// Upload limit of each connection, in payload bytes per second (`None`,
    /// the default: unlimited). The endpoint-wide limit is
    /// [`crate::Endpoint::set_upload_limit`].
    pub upload_limit: Option<u64>,
    /// Download limit of each connection, in payload bytes per second
    /// (`None`, the default: unlimited).
    pub download_limit: Option<u64>,
    /// Pace new data over the RTT instead of sending a window at once.
    /// Default true.
    pub pacing: bool,
    /// How long the ack of a lone small data packet (under 1 KiB, in order,
    /// with no other packet unacknowledged) may wait for data of ours to
    /// carry it: request/response traffic then sends one datagram per
    /// message instead of two (TCP's delayed ack). The initiator's ack of
    /// the SYN-ACK waits the same way for its first data or FIN; anything
    /// else is acked at once. `None` acks every packet at once. Default
    /// 1 ms.
    pub ack_delay: Option<Duration>,
    /// Congestion controller factory. Default [`LedbatFactory`] (LEDBAT with
    /// a 100 ms target); [`crate::AimdFactory`] competes like TCP instead.
    pub controller: SharedControllerFactory,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            max_payload: MAX_PAYLOAD,
            pmtud: true,
            base_payload: 1212,
            pmtud_interval: Duration::from_secs(600),
            send_buffer: 1 << 20,
            recv_buffer: 1 << 20,
            max_peer_flight: 2 << 20,
            reorder_memory: 128 << 20,
            socket_buffer: 4 << 20,
            connect_timeout: Duration::from_secs(10),
            initial_rto: Duration::from_secs(1),
            min_rto: Duration::from_millis(500),
            max_rto: Duration::from_secs(30),
            max_timeouts: 6,
            time_wait: Duration::from_secs(10),
            max_time_wait: 16_384,
            linger: Duration::from_secs(10),
            max_reorder_packets: 1024,
            accept_backlog: 1024,
            backlog_recv_buffer: 64 << 10,
            max_half_open: 1024,
            reset_rate: 100,
            keepalive_interval: Some(Duration::from_secs(29)),
            idle_timeout: None,
            upload_limit: None,
            download_limit: None,
            pacing: true,
            ack_delay: Some(Duration::from_millis(1)),
            controller: Arc::new(LedbatFactory::default()),
        }
    }
}

macro_rules! setters {
    ($($(#[$doc:meta])* $name:ident: $ty:ty;)*) => {
        impl Config {
            $(
                $(#[$doc])*
                pub fn $name(mut self, v: $ty) -> Self {
                    self.$name = v;
                    self
                }
            )*
        }
    };
}

setters! {
    /// Sets [`Config::max_payload`] (clamped to 64..=65_487 when used).
    max_payload: usize;
    /// Sets [`Config::pmtud`].
    pmtud: bool;
    /// Sets [`Config::base_payload`] (clamped to 64..=`max_payload`).
    base_payload: usize;
    /// Sets [`Config::pmtud_interval`].
    pmtud_interval: Duration;
    /// Sets [`Config::send_buffer`].
    send_buffer: usize;
    /// Sets [`Config::recv_buffer`].
    recv_buffer: usize;
    /// Sets [`Config::max_peer_flight`].
    max_peer_flight: usize;
    /// Sets [`Config::reorder_memory`].
    reorder_memory: usize;
    /// Sets [`Config::socket_buffer`].
    socket_buffer: usize;
    /// Sets [`Config::connect_timeout`].
    connect_timeout: Duration;
    /// Sets [`Config::initial_rto`].
    initial_rto: Duration;
    /// Sets [`Config::min_rto`].
    min_rto: Duration;
    /// Sets [`Config::max_rto`].
    max_rto: Duration;
    /// Sets [`Config::max_timeouts`].
    max_timeouts: u32;
    /// Sets [`Config::time_wait`].
    time_wait: Duration;
    /// Sets [`Config::max_time_wait`].
    max_time_wait: usize;
    /// Sets [`Config::linger`].
    linger: Duration;
    /// Sets [`Config::max_reorder_packets`].
    max_reorder_packets: usize;
    /// Sets [`Config::accept_backlog`].
    accept_backlog: usize;
    /// Sets [`Config::backlog_recv_buffer`].
    backlog_recv_buffer: usize;
    /// Sets [`Config::max_half_open`].
    max_half_open: usize;
    /// Sets [`Config::reset_rate`].
    reset_rate: u32;
    /// Sets [`Config::keepalive_interval`].
    keepalive_interval: Option<Duration>;
    /// Sets [`Config::idle_timeout`].
    idle_timeout: Option<Duration>;
    /// Sets [`Config::upload_limit`].
    upload_limit: Option<u64>;
    /// Sets [`Config::download_limit`].
    download_limit: Option<u64>;
    /// Sets [`Config::pacing`].
    pacing: bool;
    /// Sets [`Config::ack_delay`].
    ack_delay: Option<Duration>;
    /// Sets [`Config::controller`].
    controller: SharedControllerFactory;
}

/// Largest uTP payload: the largest UDP payload (65,507) minus the header.
pub const MAX_PAYLOAD: usize = crate::pmtud::MAX_UDP_PAYLOAD - crate::packet::HEADER_LEN;

/// Payload of the fallback size when even the base is black-holed: a
/// 576-byte IPv4 packet (libtorrent's starting size, 528).
pub const MIN_PAYLOAD: usize = 528;

impl Config {
    /// The largest payload ever sent: `max_payload` within sane bounds.
    pub fn payload_size(&self) -> usize {
        self.max_payload.clamp(64, MAX_PAYLOAD)
    }

    /// `max_reorder_packets` as used: the next packet in order is always
    /// taken, even with no room for packets out of order (0 held every
    /// packet back for good).
    pub fn reorder_limit(&self) -> usize {
        self.max_reorder_packets.max(1)
    }

    /// `accept_backlog` as used: at least 1, as with `listen(2)` (0 refused
    /// every SYN).
    pub fn backlog_limit(&self) -> usize {
        self.accept_backlog.max(1)
    }

    /// The starting (and, without discovery, fixed) payload size.
    pub fn base_payload_size(&self) -> usize {
        self.base_payload.clamp(64, self.payload_size())
    }

    /// The path MTU search settings, in datagram sizes.
    pub fn pmtud_config(&self) -> crate::pmtud::PmtudConfig {
        let h = crate::packet::HEADER_LEN;
        let base = self.base_payload_size();
        crate::pmtud::PmtudConfig {
            enabled: self.pmtud,
            base: base + h,
            min: MIN_PAYLOAD.min(base) + h,
            max: self.payload_size() + h,
            raise_interval: self.pmtud_interval,
        }
    }
}
