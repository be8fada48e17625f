//! Many connections behind one UDP socket: demultiplexing on (peer address,
//! connection id), a bounded accept queue, rate-limited RESET replies and
//! connection-id allocation.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use slab::Slab;

use crate::config::Config;
use crate::connection::{Connection, ConnectionError, State};
use crate::drops::DropStats;
use crate::flight::FlightSize;
use crate::packet::{self, Header, Packet, PacketType, HEADER_LEN};
use crate::ratelimit::SharedLimits;

/// Identifies a connection inside an [`Endpoint`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnHandle(pub usize);

/// Every connection id towards one peer address is taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("no free connection id towards this peer")]
pub struct NoFreeIds;

/// A datagram to send, written by [`Endpoint::poll_transmit`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Transmit {
    /// Where to send it.
    pub destination: SocketAddr,
    /// Length of the datagram at the start of the caller's buffer.
    pub len: usize,
    /// Send without the Don't Fragment bit: a packet from before a path
    /// MTU fall-back, larger than the path now carries, being resent (see
    /// [`Connection::transmit_fragmentable`]). Everything else goes with DF.
    pub fragmentable: bool,
}

/// Endpoint-wide counters, including every reason a datagram was dropped.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct EndpointStats {
    /// Datagrams handed to [`Endpoint::handle_datagram`].
    pub datagrams_received: u64,
    /// Datagrams produced by [`Endpoint::poll_transmit`].
    pub datagrams_sent: u64,
    /// Datagrams that failed to parse as uTP (malformed).
    pub invalid_datagrams: u64,
    /// Packets for no known connection (RESET-answered, rate-limited).
    pub unknown_connection: u64,
    /// Packets carrying the id of a live connection but coming from another
    /// address (spoofed, or a peer whose NAT mapping changed): never handed
    /// to the connection. Not counted in `unknown_connection`.
    pub wrong_source_address: u64,
    /// RESETs sent: replies to unknown connections, and those of
    /// connections the application aborted.
    pub resets_sent: u64,
    /// RESET replies suppressed by the rate limit.
    pub resets_suppressed: u64,
    /// RESET replies not sent because the same connection (address and
    /// id) got a RESET less than [`RESET_QUIET`] before.
    pub resets_repeated: u64,
    /// SYNs dropped because the accept backlog was full.
    pub syn_backlog_full: u64,
    /// SYNs that found [`Config::max_half_open`] connections still waiting
    /// for their initiator's first packet after the SYN: answered with a
    /// SYN cookie, no state kept (see `syn_cookies_accepted`).
    pub syn_half_open_full: u64,
    /// Connections made from a packet that returned a SYN cookie: an
    /// initiator whose SYN came while the half-open limit was reached.
    pub syn_cookies_accepted: u64,
    /// TIME_WAIT connections ended early to stay within
    /// [`Config::max_time_wait`].
    pub time_wait_ended_early: u64,
    /// Connections the application let go of that are in TIME_WAIT now,
    /// kept as compact records (not in `connections_open`).
    pub time_wait: u64,
    /// Half-open incoming connections now (see [`Config::max_half_open`]).
    pub half_open: u64,
    /// SYNs refused (with RESET) because nobody listens.
    pub syn_refused: u64,
    /// Connections accepted into the backlog.
    pub connections_accepted: u64,
    /// Connections opened by us.
    pub connections_initiated: u64,
    /// Connections currently tracked.
    pub connections_open: u64,
    /// Connections that failed because the peer stopped answering (connect
    /// timeout, retransmission limit, idle timeout).
    pub connections_timed_out: u64,
    /// Connections the peer reset.
    pub connections_reset: u64,
    /// Connections the application aborted ([`Endpoint::abort`]).
    pub connections_aborted: u64,
    /// Our connection attempts the peer refused (RESET in reply to the SYN,
    /// or an ICMP port unreachable for it).
    pub connections_refused: u64,
    /// Our connection attempts whose SYN the OS could not send (see
    /// [`Endpoint::handle_syn_not_sent`]).
    pub connections_unreachable: u64,
    /// Reports that a datagram of ours found no socket at its destination
    /// (ICMP port unreachable, see [`Endpoint::handle_unreachable`]),
    /// whether or not they ended a connection attempt.
    pub unreachable_reports: u64,
    /// Reports that a datagram of ours was too big for a link on its path
    /// (ICMP "fragmentation needed" / "packet too big", see
    /// [`Endpoint::handle_too_big`]), whether or not a connection took it.
    pub too_big_reports: u64,
    /// Packets the connections ignored, by reason, summed over every
    /// connection this endpoint had (live and freed).
    pub connection_drops: DropStats,
}

struct Entry {
    conn: Connection,
    addr: SocketAddr,
    dirty: bool,
    touched: bool,
    /// The time of its latest entry in `Endpoint::timers` (older entries of
    /// it there are stale). Never later than `deadline`.
    scheduled: Option<Instant>,
    /// Its connection's own next timer, as of the last change.
    deadline: Option<Instant>,
    /// Counted in `Endpoint::half_open`.
    half_open: bool,
    /// Counted in `Endpoint::connecting`.
    connecting: bool,
    /// Its failure is counted in the stats.
    failure_counted: bool,
    /// The datagram size last shared for it (0: not yet).
    path_size: usize,
    /// Its peer address's entry in `Endpoint::flights`.
    flight_id: usize,
    /// Its data in flight as counted there.
    flight: FlightSize,
    /// In that entry's `waiting`.
    waiting: bool,
    /// Counted in that entry's `sending`.
    sending: bool,
    /// Its out-of-order bytes as counted in `Endpoint::reorder_held`.
    held: usize,
}

/// A map keyed by what peers choose (addresses, connection ids). aHash is
/// randomly keyed per map, so peers cannot aim for collisions, and costs
/// a fraction of SipHash's per lookup: 2.3% fewer instructions per
/// connect, accept and close (some 25 lookups between them), 1.3% per
/// ping-pong message.
type NetMap<K, V> = HashMap<K, V, ahash::RandomState>;

/// The sans-IO endpoint: owns every connection of one socket.
pub struct Endpoint {
    cfg: Arc<Config>,
    /// Upload and download limits shared by all connections.
    limits: SharedLimits,
    epoch: Instant,
    conns: Slab<Entry>,
    by_key: NetMap<(SocketAddr, u16), usize>,
    /// The connection of the last datagram looked up (see `lookup`).
    last_hit: Option<usize>,
    accept_queue: VecDeque<ConnHandle>,
    listening: bool,
    dirty: VecDeque<usize>,
    timers: BinaryHeap<Reverse<(Instant, usize)>>,
    /// The earliest timer added to `timers` since [`Endpoint::take_new_timer`]
    /// was last called.
    new_timer: Option<Instant>,
    touched: Vec<ConnHandle>,
    /// Connections asking for the OS's path MTU (see `poll_path_query`).
    path_queries: VecDeque<ConnHandle>,
    /// What connections learned about the path to each peer address (see
    /// `share_path`).
    paths: NetMap<IpAddr, PathShare>,
    /// Stateless replies: RESETs, and SYN-ACKs carrying a SYN cookie.
    resets: VecDeque<(SocketAddr, Header)>,
    /// Key of the SYN cookies, drawn from `rng` at the first one (a
    /// seeded endpoint's ids stay as they were until then).
    cookie_key: Option<ahash::RandomState>,
    /// Until when packets for unknown connections may carry a SYN cookie
    /// (none checked in normal operation).
    cookies_until: Option<Instant>,
    reset_tokens: f64,
    reset_refill: Instant,
    rng: StdRng,
    stats: EndpointStats,
    /// Live connections per receive id, whatever the address: tells a
    /// packet from a wrong address apart from one for no connection.
    ids: NetMap<u16, u32>,
    half_open: usize,
    /// Out-of-order bytes all connections hold (see
    /// [`Config::reorder_memory`]).
    reorder_held: usize,
    /// Our connects still waiting for their SYN-ACK.
    connecting: usize,
    /// Connections in TIME_WAIT that the application let go of, reduced
    /// to what answering a late packet takes, by (address, receive id).
    time_wait: NetMap<(SocketAddr, u16), TimeWait>,
    /// When they end, in the order that was set: (end, address, receive
    /// id). An entry whose record is gone or ends later (its TIME_WAIT
    /// started over) is stale.
    time_wait_order: VecDeque<(Instant, SocketAddr, u16)>,
    /// Connections (address, the id their packets carry) we sent a RESET
    /// to within [`RESET_QUIET`], and when; at most [`MAX_RECENT_RESETS`].
    recent_resets: NetMap<(SocketAddr, u16), Instant>,
    /// The same, oldest first (an entry whose time differs from the map's
    /// is stale).
    recent_reset_order: VecDeque<(Instant, SocketAddr, u16)>,
    /// Drop counters of connections already freed.
    retired_drops: DropStats,
    /// Data in flight per peer address (see [`Config::max_peer_flight`]),
    /// for the addresses that have connections; connections keep their
    /// entry's index, so only `insert` looks it up by address.
    flights: Slab<Flight>,
    flight_ids: NetMap<SocketAddr, usize>,
    /// The receive buffer the OS granted our socket, when known (see
    /// [`Endpoint::set_socket_receive_buffer`]).
    socket_rcvbuf: Option<usize>,
    /// When `conns` and `flights` next try to give back spare room.
    conns_trim: SlabTrim,
    flights_trim: SlabTrim,
}

/// Tables with room for fewer entries than this keep it: below it, giving
/// room back and growing again would cost more than the memory is worth.
const TRIM_MIN: usize = 256;

/// Whether a table of `cap` entries holding `len` should shrink, and to
/// what: at under a quarter full, to twice its length (so a table must
/// lose half its entries again before the next shrink: amortized O(1) per
/// removal). `floor` is room it keeps whatever its length. Tables of up
/// to 256 entries keep their room.
pub fn trimmed_capacity(cap: usize, len: usize, floor: usize) -> Option<usize> {
    (cap > TRIM_MIN.max(4 * floor) && len * 4 < cap).then(|| (2 * len).max(floor))
}

/// When a slab next tries to give back spare room. Its slots cannot move
/// (they are the connections' handles), so `Slab::shrink_to_fit` frees
/// only the vacant slots after the last taken one, and costs O(capacity)
/// even when it frees nothing: it is tried at a quarter full, then each
/// time the length halves again, until the slab grows anew.
#[derive(Debug, Default)]
struct SlabTrim {
    /// The capacity `below` was set for.
    cap: usize,
    /// Try when the length is at most this.
    below: usize,
}

impl SlabTrim {
    fn trim<T>(&mut self, slab: &mut Slab<T>) {
        if slab.capacity() != self.cap {
            self.cap = slab.capacity();
            self.below = self.cap / 4;
        }
        if self.cap <= TRIM_MIN || slab.len() > self.below {
            return;
        }
        slab.shrink_to_fit();
        self.below = slab.len() / 2;
        if slab.capacity() != self.cap {
            self.cap = slab.capacity();
            self.below = self.below.min(self.cap / 4);
        }
    }
}

/// The data in flight to one peer address, and the connections waiting
/// for some of it to be acknowledged before they send more.
#[derive(Debug)]
struct Flight {
    addr: SocketAddr,
    size: FlightSize,
    /// In the order they began to wait.
    waiting: VecDeque<usize>,
    /// Connections to the address.
    conns: usize,
    /// Those of them with data queued or in flight: the limit's share of
    /// each (idle connections take none).
    sending: usize,
    /// Most data in flight to the address (see [`flight_limit`]).
    limit: FlightSize,
}

impl Flight {
    /// What may be added to the data in flight under its limit. With
    /// nothing in flight there is always room (whatever the limit, so even
    /// one below a packet's size cannot stall a connection).
    fn room(&self) -> FlightSize {
        if self.size.is_empty() {
            FlightSize::UNLIMITED
        } else {
            self.limit.saturating_sub(self.size)
        }
    }
}

/// The most data in flight to `addr`: [`Config::max_peer_flight`] payload
/// bytes, and for a peer on this host datagrams charging no more than half
/// our socket's receive buffer (see [`Endpoint::set_socket_receive_buffer`]).
/// Half, because the kernel gives back the room of datagrams already read
/// only a quarter of the buffer at a time, and the rest leaves room for what
/// is not counted in flight: handshakes, acks, a tail loss probe's copy.
fn flight_limit(cfg: &Config, socket_rcvbuf: Option<usize>, addr: SocketAddr) -> FlightSize {
    let same_host = match addr.ip() {
        IpAddr::V4(ip) => ip.is_loopback(),
        IpAddr::V6(ip) => {
            ip.is_loopback() || ip.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback())
        }
    };
    let cost = match socket_rcvbuf {
        Some(buf) if same_host => buf / 2,
        _ => usize::MAX,
    };
    FlightSize {
        bytes: cfg.max_peer_flight.min(cost),
        cost,
    }
}

/// Most path MTU queries queued at once (see `Endpoint::poll_path_query`).
const MAX_PATH_QUERIES: usize = 1024;

/// Most peer addresses whose path size is remembered; the map is cleared
/// when full (it refills as connections learn).
const MAX_PATHS: usize = 4096;

/// The path to one peer address, as its connections found it. The path MTU
/// belongs to the path, not to a connection: a connection that confirms a
/// size tells the others, and one connection at a time searches, so that
/// many connections to one peer do not each probe with 64 KiB datagrams at
/// once (a thousand such probes overflowed the peer's socket buffer, and
/// the losses cost retransmission timeouts).
#[derive(Debug, Clone, Copy)]
struct PathShare {
    /// Largest datagram size confirmed, and when.
    size: usize,
    at: Instant,
    /// The connection whose probe is out, if any.
    searcher: Option<usize>,
    /// Connections to this address (counted from their first sharing; a
    /// size is passed on only when there are others, so connections to
    /// many different peers cost no scan).
    conns: usize,
}

/// A connection in TIME_WAIT that the application let go of, reduced to
/// what answering late packets takes: with its key and bookkeeping 272
/// bytes of heap, against 2,670 for the whole connection
/// (`tests/resource_bounds.rs`).
#[derive(Debug, Clone, Copy)]
pub(crate) struct TimeWait {
    pub(crate) send_id: u16,
    /// Our next sequence number: our FIN's plus one.
    pub(crate) seq_nr: u16,
    /// The peer's FIN.
    pub(crate) ack_nr: u16,
    pub(crate) wnd: u32,
    pub(crate) until: Instant,
}

/// Most RESET replies queued at once; more are dropped (and counted).
const MAX_QUEUED_RESETS: usize = 64;

/// One RESET per connection this long: the packets the peer had in flight
/// when it went get no RESET each. libutp leaves a socket it is closing
/// after a RESET in the "reset" state again on a second one, never frees
/// it, and never reports the close (utp-native's stream hung for good,
/// about one abort in twenty on loopback). A peer still sending after
/// this long missed the first RESET and gets another.
pub const RESET_QUIET: Duration = Duration::from_secs(1);

/// Most connections remembered for [`RESET_QUIET`]; the oldest goes first.
const MAX_RECENT_RESETS: usize = 1024;

/// Most stateless replies queued at once, SYN cookies included: a flood's
/// SYNs are answered as fast as they come, a burst beyond this dropped.
const MAX_QUEUED_REPLIES: usize = 1024;

/// Lifetime of a SYN cookie's time slot: a cookie is good in its slot and
/// the next, so for one to two of these after the SYN.
const COOKIE_SLOT_SECS: u64 = 64;

impl std::fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Endpoint")
            .field("connections", &self.conns.len())
            .field("listening", &self.listening)
            .finish_non_exhaustive()
    }
}

impl Endpoint {
    /// A new endpoint with connection ids and sequence numbers from a
    /// cryptographically secure generator seeded by the OS (predictable ids
    /// invite off-path RESET injection).
    pub fn new(cfg: Arc<Config>, now: Instant) -> Self {
        // Seeded from the thread's CSPRNG (itself seeded from the OS), not
        // from the OS directly: a system call less per socket, which a
        // socket per connection pays on every connect.
        let rng = StdRng::from_rng(rand::thread_rng()).unwrap_or_else(|_| StdRng::from_entropy());
        Self::with_rng(cfg, now, rng)
    }

    /// A new endpoint whose randomness comes from `seed` (for replayable tests).
    pub fn with_seed(cfg: Arc<Config>, now: Instant, seed: u64) -> Self {
        Self::with_rng(cfg, now, StdRng::seed_from_u64(seed))
    }

    fn with_rng(cfg: Arc<Config>, now: Instant, rng: StdRng) -> Self {
        Self {
            reset_tokens: cfg.reset_rate as f64,
            cfg,
            limits: SharedLimits::default(),
            epoch: now,
            conns: Slab::new(),
            by_key: NetMap::default(),
            last_hit: None,
            accept_queue: VecDeque::new(),
            listening: false,
            dirty: VecDeque::new(),
            timers: BinaryHeap::new(),
            new_timer: None,
            touched: Vec::new(),
            path_queries: VecDeque::new(),
            paths: NetMap::default(),
            resets: VecDeque::new(),
            cookie_key: None,
            cookies_until: None,
            reset_refill: now,
            rng,
            stats: EndpointStats::default(),
            ids: NetMap::default(),
            half_open: 0,
            reorder_held: 0,
            connecting: 0,
            time_wait: NetMap::default(),
            time_wait_order: VecDeque::new(),
            recent_resets: NetMap::default(),
            recent_reset_order: VecDeque::new(),
            retired_drops: DropStats::default(),
            flights: Slab::new(),
            flight_ids: NetMap::default(),
            socket_rcvbuf: None,
            conns_trim: SlabTrim::default(),
            flights_trim: SlabTrim::default(),
        }
    }

    /// Tells the endpoint the receive buffer the OS granted its socket (as
    /// `SO_RCVBUF` reports it: the kernel's budget for queued datagrams).
    /// Data in flight to a peer on this host (a loopback address) is then
    /// kept within [`Config::max_peer_flight`] and, counted as what its
    /// datagrams take from a receive buffer (the kernel charges a small
    /// datagram up to twice its size), within half of it: such a peer's
    /// socket is presumably like ours, and with no slower link to space
    /// them out its datagrams arrive as fast as they are sent. Under a
    /// distribution's default cap (`net.core.rmem_max`, 208 KiB) the buffer
    /// holds a few 64 KiB datagrams, and a hundred connections filling a
    /// 2 MiB flight lost one in seven, with retransmission timeouts (a
    /// fiftieth of the throughput).
    pub fn set_socket_receive_buffer(&mut self, bytes: usize) {
        self.socket_rcvbuf = Some(bytes);
        for (_, f) in self.flights.iter_mut() {
            f.limit = flight_limit(&self.cfg, self.socket_rcvbuf, f.addr);
        }
    }

    /// The most payload bytes in flight to `addr` (see
    /// [`Endpoint::set_socket_receive_buffer`]; to a peer on this host, small
    /// datagrams reach the buffer's limit with less).
    pub fn flight_limit(&self, addr: SocketAddr) -> usize {
        flight_limit(&self.cfg, self.socket_rcvbuf, addr).bytes
    }

    /// The configuration in use.
    pub fn config(&self) -> &Arc<Config> {
        &self.cfg
    }

    /// Limits the upload of all connections together, in payload bytes per
    /// second (`None`: unlimited). New data is held back, never dropped.
    pub fn set_upload_limit(&mut self, rate: Option<u64>) {
        self.limits.set_upload(rate);
    }

    /// Limits the download of all connections together, in payload bytes
    /// per second (`None`: unlimited): reads are metered, so receive buffers
    /// fill and the advertised windows shrink until peers slow down.
    pub fn set_download_limit(&mut self, rate: Option<u64>) {
        self.limits.set_download(rate);
    }

    /// The endpoint-wide limits (upload, download) in bytes per second.
    pub fn rate_limits(&self) -> (Option<u64>, Option<u64>) {
        (self.limits.upload(), self.limits.download())
    }

    /// Whether incoming SYNs are accepted (otherwise answered with RESET).
    pub fn set_listening(&mut self, on: bool) {
        self.listening = on;
    }

    /// Counters.
    pub fn stats(&self) -> EndpointStats {
        let mut s = self.stats.clone();
        s.connections_open = self.conns.len() as u64;
        s.time_wait = self.time_wait.len() as u64;
        s.half_open = self.half_open as u64;
        s.connection_drops = self.retired_drops;
        for (_, e) in &self.conns {
            s.connection_drops += e.conn.drop_stats();
        }
        s
    }

    /// Number of connections tracked (including closing ones, and those
    /// in TIME_WAIT).
    pub fn connection_count(&self) -> usize {
        self.conns.len() + self.time_wait.len()
    }

    /// Opens a connection to `addr`; the SYN goes out on the next
    /// [`Endpoint::poll_transmit`]. Fails only when every connection id
    /// towards `addr` is in use.
    pub fn connect(&mut self, now: Instant, addr: SocketAddr) -> Result<ConnHandle, NoFreeIds> {
        let cfg = self.cfg.clone();
        self.connect_with_config(now, addr, cfg)
    }

    /// Like [`Endpoint::connect`], with settings for this connection only
    /// (timeouts, buffers, controller, payload size, rate limits). The
    /// endpoint-wide settings (accept backlog, half-open bound, RESET rate)
    /// stay the endpoint's.
    pub fn connect_with_config(
        &mut self,
        now: Instant,
        addr: SocketAddr,
        cfg: Arc<Config>,
    ) -> Result<ConnHandle, NoFreeIds> {
        // Random start, then a bounded scan: never spins, even when full.
        let start: u16 = self.rng.gen();
        let recv_id = (0..=u16::MAX)
            .map(|i| start.wrapping_add(i))
            .find(|id| {
                !self.by_key.contains_key(&(addr, *id))
                    && !self.time_wait.contains_key(&(addr, *id))
            })
            .ok_or(NoFreeIds)?;
        let isn = self.rng.gen();
        let mut conn = Connection::connect(cfg, now, self.epoch, recv_id, isn);
        conn.set_shared_limits(self.limits.clone());
        tracing::debug!(peer = %addr, recv_id, "connecting");
        self.stats.connections_initiated += 1;
        Ok(self.insert(now, addr, conn))
    }

    fn insert(&mut self, now: Instant, addr: SocketAddr, conn: Connection) -> ConnHandle {
        let key = (addr, conn.recv_id());
        let half_open = conn.state() == State::SynRecv;
        self.half_open += usize::from(half_open);
        let connecting = conn.state() == State::SynSent;
        self.connecting += usize::from(connecting);
        *self.ids.entry(conn.recv_id()).or_default() += 1;
        let flight_id = match self.flight_ids.get(&addr) {
            Some(&id) => id,
            None => {
                let limit = flight_limit(&self.cfg, self.socket_rcvbuf, addr);
                let id = self.flights.insert(Flight {
                    limit,
                    addr,
                    size: FlightSize::default(),
                    waiting: VecDeque::new(),
                    conns: 0,
                    sending: 0,
                });
                self.flight_ids.insert(addr, id);
                id
            }
        };
        self.flights[flight_id].conns += 1;
        let idx = self.conns.insert(Entry {
            conn,
            addr,
            dirty: false,
            touched: false,
            scheduled: None,
            deadline: None,
            half_open,
            connecting,
            failure_counted: false,
            path_size: 0,
            flight_id,
            flight: FlightSize::default(),
            waiting: false,
            sending: false,
            held: 0,
        });
        self.by_key.insert(key, idx);
        self.after_change(idx, now);
        ConnHandle(idx)
    }

    /// Takes the next connection from the accept queue. Connections that
    /// failed while waiting (reset, or the initiator never spoke again) are
    /// freed instead of handed out.
    pub fn accept(&mut self) -> Option<ConnHandle> {
        while let Some(h) = self.accept_queue.pop_front() {
            let c = &mut self.conns[h.0].conn;
            if c.error().is_none() {
                c.set_waiting_for_accept(false);
                // Its window update goes out with the next transmit.
                self.queue_if_sending(h.0);
                return Some(h);
            }
            self.free(h.0);
        }
        None
    }

    /// Frees the failed connections waiting in the accept queue, so dead
    /// half-open connections from a SYN flood do not keep the backlog full
    /// while the application is busy.
    fn purge_accept_queue(&mut self) {
        let mut i = 0;
        while i < self.accept_queue.len() {
            let idx = self.accept_queue[i].0;
            if self.conns[idx].conn.error().is_some() {
                self.accept_queue.remove(i);
                self.free(idx);
            } else {
                i += 1;
            }
        }
    }

    /// Releases a connection nobody holds a handle to, and frees it if it is done.
    fn free(&mut self, idx: usize) {
        // A failed connection has nothing to finish; release makes it done.
        let now = self.epoch;
        self.conns[idx].conn.release(now);
        self.after_change(idx, now);
    }

    /// Connections waiting in the accept queue.
    pub fn accept_queue_len(&self) -> usize {
        self.accept_queue.len()
    }

    /// The connection behind `h`. Panics on a handle that was released and freed.
    pub fn conn(&self, h: ConnHandle) -> &Connection {
        &self.conns[h.0].conn
    }

    /// The connection behind `h`, if it still exists.
    pub fn get(&self, h: ConnHandle) -> Option<&Connection> {
        self.conns.get(h.0).map(|e| &e.conn)
    }

    /// The peer address of `h`.
    pub fn peer_addr(&self, h: ConnHandle) -> SocketAddr {
        self.conns[h.0].addr
    }

    /// Runs `f` on the connection behind `h`, then reschedules its timers and
    /// transmissions. Use this for every application-side operation.
    pub fn with_conn<R>(
        &mut self,
        h: ConnHandle,
        now: Instant,
        f: impl FnOnce(&mut Connection) -> R,
    ) -> R {
        self.run_on(h, now, f, Self::after_change)
    }

    /// Runs `f` on the connection behind `h` within its tracing span, then
    /// `after` (the bookkeeping that fits what `f` changes).
    fn run_on<R>(
        &mut self,
        h: ConnHandle,
        now: Instant,
        f: impl FnOnce(&mut Connection) -> R,
        after: impl FnOnce(&mut Self, usize, Instant),
    ) -> R {
        let e = &mut self.conns[h.0];
        let _span = conn_span(&e.conn, e.addr).entered();
        e.conn.observe(now);
        let r = f(&mut e.conn);
        after(self, h.0, now);
        r
    }

    /// [`Endpoint::with_conn`] for `f` that only reads (`Connection::read`,
    /// `read_pieces`, queries). A read changes the receive window (an update
    /// may be due) and what follows from it for the timers (the drained
    /// receive buffer's release, a download limit's retry); the rest of the
    /// bookkeeping after a change (flight, reordering, state, path) stays
    /// as it was, and is skipped: it ran four times per request/response
    /// message.
    pub fn with_conn_reading<R>(
        &mut self,
        h: ConnHandle,
        now: Instant,
        f: impl FnOnce(&mut Connection) -> R,
    ) -> R {
        let read = |c: &mut Connection| {
            #[cfg(debug_assertions)]
            let before = (c.state(), c.in_flight(), c.reorder_held());
            let r = f(c);
            #[cfg(debug_assertions)]
            debug_assert_eq!(
                before,
                (c.state(), c.in_flight(), c.reorder_held()),
                "with_conn_reading ran more than a read"
            );
            r
        };
        self.run_on(h, now, read, |ep, idx, now| {
            ep.conns[idx].conn.refresh(now);
            ep.queue_if_sending(idx);
            ep.schedule(idx);
        })
    }

    /// [`Endpoint::with_conn`] for a write that the caller has sent at once
    /// ([`Endpoint::poll_transmit`] right after, or its I/O driver soon).
    /// If the connection then has something to send, it is only queued:
    /// the bookkeeping after a change runs once the datagram is made, as it
    /// would anyway, instead of twice per message. Anything else (nothing
    /// written, nothing sendable) is handled as by `with_conn`.
    pub fn with_conn_sending<R>(
        &mut self,
        h: ConnHandle,
        now: Instant,
        f: impl FnOnce(&mut Connection) -> R,
    ) -> R {
        self.run_on(h, now, f, |ep, idx, now| {
            // What a write changes (queued bytes and the timers they arm)
            // is what `next_transmit` brings up to date before and after
            // sending.
            if !ep.queue_if_sending(idx) {
                ep.after_change(idx, now);
            }
        })
    }

    /// The application is done with `h`: the connection finishes gracefully
    /// in the background and is freed afterwards. The handle is invalid after.
    pub fn release(&mut self, h: ConnHandle, now: Instant) {
        if let Some(e) = self.conns.get_mut(h.0) {
            e.conn.release(now);
            e.touched = false;
            self.after_change(h.0, now);
        }
    }

    /// The application aborts `h`: what it had queued or not read yet is
    /// discarded, a RESET tells the peer (ahead of every other datagram),
    /// and the connection is freed at once, without the FIN handshake or
    /// TIME_WAIT. Packets the peer sends afterwards are answered as for
    /// any unknown connection. A connection in TIME_WAIT is only released
    /// (both directions are finished; its record keeps the id reserved),
    /// and so is one that already failed (the peer reset it, or it timed
    /// out): there is nothing left to abort. The handle is invalid after.
    pub fn abort(&mut self, h: ConnHandle, now: Instant) {
        let Some(e) = self.conns.get_mut(h.0) else {
            return;
        };
        if matches!(
            e.conn.state(),
            State::TimeWait | State::Failed(_) | State::Done
        ) {
            return self.release(h, now);
        }
        let _span = conn_span(&e.conn, e.addr).entered();
        tracing::debug!("aborted by the application");
        e.conn.observe(now);
        let reset = e.conn.abort(now);
        e.touched = false;
        let (addr, id) = (e.addr, e.conn.recv_id());
        if let Some(reset) = reset {
            // Not subject to the reply limits: one per connection the
            // application holds, so bounded by them.
            self.resets.push_back((addr, reset));
            self.note_reset(now, addr, id);
        }
        self.stats.connections_aborted += 1;
        self.after_change(h.0, now);
    }

    /// Whether anything is waiting for [`Endpoint::poll_transmit`].
    pub fn has_transmit(&self) -> bool {
        !self.dirty.is_empty() || !self.resets.is_empty()
    }

    /// Connections whose state changed through the network or a timer since
    /// the last call (the async layer wakes their tasks).
    pub fn drain_touched(&mut self) -> std::vec::Drain<'_, ConnHandle> {
        for h in &self.touched {
            if let Some(e) = self.conns.get_mut(h.0) {
                e.touched = false;
            }
        }
        self.touched.drain(..)
    }

    fn touch(&mut self, idx: usize) {
        let e = &mut self.conns[idx];
        if !e.touched && !e.conn.is_done() {
            e.touched = true;
            self.touched.push(ConnHandle(idx));
        }
    }

    fn after_change(&mut self, idx: usize, now: Instant) {
        self.count_flight(idx);
        let e = &mut self.conns[idx];
        let held = if e.conn.is_done() {
            0
        } else {
            e.conn.reorder_held()
        };
        debug_assert!(self.reorder_held >= e.held, "out-of-order bytes miscounted");
        self.reorder_held = self.reorder_held.saturating_sub(e.held) + held;
        e.held = held;
        if e.half_open && (e.conn.state() != State::SynRecv || e.conn.is_done()) {
            e.half_open = false;
            self.half_open -= 1;
        }
        if e.connecting && (e.conn.state() != State::SynSent || e.conn.is_done()) {
            e.connecting = false;
            self.connecting -= 1;
        }
        if !e.failure_counted {
            if let Some(err) = e.conn.error() {
                e.failure_counted = true;
                match err {
                    ConnectionError::TimedOut => self.stats.connections_timed_out += 1,
                    ConnectionError::Reset => self.stats.connections_reset += 1,
                    ConnectionError::Refused => self.stats.connections_refused += 1,
                    ConnectionError::Unreachable => self.stats.connections_unreachable += 1,
                }
            }
        }
        // A released connection in TIME_WAIT with nothing left to send (the
        // ack of the peer's FIN went out) becomes a compact record.
        // The record check first: it is a field test, while
        // `wants_transmit` costs a hundred instructions, four times a message.
        let record = e
            .conn
            .time_wait_record()
            .filter(|_| !e.conn.wants_transmit());
        if e.conn.is_done() || record.is_some() {
            let key = (e.addr, e.conn.recv_id());
            if self.by_key.get(&key) == Some(&idx) {
                self.by_key.remove(&key);
            }
            if let Some(n) = self.ids.get_mut(&key.1) {
                *n -= 1;
                if *n == 0 {
                    self.ids.remove(&key.1);
                }
            }
            self.retired_drops += e.conn.drop_stats();
            let f = &mut self.flights[e.flight_id];
            if e.waiting {
                f.waiting.retain(|&w| w != idx);
            }
            f.conns -= 1;
            f.sending -= usize::from(e.sending);
            if f.conns == 0 {
                self.flight_ids.remove(&f.addr);
                self.flights.remove(e.flight_id);
            }
            if e.path_size != 0 {
                if let Some(p) = self.paths.get_mut(&e.addr.ip()) {
                    p.conns = p.conns.saturating_sub(1);
                }
            }
            self.conns.remove(idx);
            if let Some(r) = record {
                self.add_time_wait(key, r);
            }
            self.trim_tables();
            return;
        }
        e.conn.refresh(now);
        self.update_peer_room(idx);
        self.share_path(idx, now);
        let e = &mut self.conns[idx];
        // Bounded: a caller that never asks must not grow memory.
        if e.conn.take_path_query() && self.path_queries.len() < MAX_PATH_QUERIES {
            self.path_queries.push_back(ConnHandle(idx));
        }
        self.queue_if_sending(idx);
        self.schedule(idx);
    }

    /// Queues connection `idx` for `poll_transmit` if it has something to
    /// send and is not queued yet; returns whether it is queued now.
    fn queue_if_sending(&mut self, idx: usize) -> bool {
        let e = &mut self.conns[idx];
        if !e.dirty && e.conn.wants_transmit() {
            e.dirty = true;
            self.dirty.push_back(idx);
        }
        e.dirty
    }

    /// Keeps a released connection's TIME_WAIT as a record; beyond
    /// [`Config::max_time_wait`] the oldest record ends early.
    fn add_time_wait(&mut self, key: (SocketAddr, u16), record: TimeWait) {
        while self.time_wait.len() >= self.cfg.max_time_wait {
            let Some((t, addr, id)) = self.time_wait_order.pop_front() else {
                break;
            };
            if self.time_wait_ends(t, addr, id) {
                self.time_wait.remove(&(addr, id));
                self.stats.time_wait_ended_early += 1;
            }
        }
        if self.cfg.max_time_wait == 0 {
            self.stats.time_wait_ended_early += 1;
            return;
        }
        self.time_wait.insert(key, record);
        self.time_wait_end_at(record.until, key);
    }

    /// Whether `(t, addr, id)` of `time_wait_order` is its record's end.
    fn time_wait_ends(&self, t: Instant, addr: SocketAddr, id: u16) -> bool {
        self.time_wait
            .get(&(addr, id))
            .is_some_and(|r| r.until == t)
    }

    /// Records that the record `key` ends at `until`.
    fn time_wait_end_at(&mut self, until: Instant, key: (SocketAddr, u16)) {
        self.time_wait_order.push_back((until, key.0, key.1));
        self.new_timer = Some(self.new_timer.map_or(until, |n| n.min(until)));
        // Stale entries leave at the front, behind which a record kept in
        // TIME_WAIT by re-sent FINs could hold them: pruned when they
        // outnumber the live ones (amortized O(1) per entry).
        if self.time_wait_order.len() > 2 * self.time_wait.len() + 64 {
            let order = std::mem::take(&mut self.time_wait_order);
            self.time_wait_order = order
                .into_iter()
                .filter(|&(t, a, id)| self.time_wait_ends(t, a, id))
                .collect();
        }
    }

    /// The end of the first record in `time_wait_order` (stale entries
    /// before it are dropped). Records released late may end a little
    /// before an earlier entry: they then last at most `time_wait` longer.
    fn next_time_wait_end(&mut self) -> Option<Instant> {
        while let Some(&(t, addr, id)) = self.time_wait_order.front() {
            if self.time_wait_ends(t, addr, id) {
                return Some(t);
            }
            self.time_wait_order.pop_front();
        }
        None
    }

    /// Ends the TIME_WAIT records that are due; returns whether any was.
    fn expire_time_wait(&mut self, now: Instant) -> bool {
        let mut any = false;
        while let Some(t) = self.next_time_wait_end() {
            if t > now {
                break;
            }
            let (_, addr, id) = self.time_wait_order.pop_front().expect("just seen");
            self.time_wait.remove(&(addr, id));
            any = true;
        }
        any
    }

    /// Gives back the room a burst of connections left in the endpoint's
    /// tables: a server that once held 10,000 connections would otherwise
    /// keep about 2 KiB of table per connection of its largest burst for
    /// the rest of its life. Called after connections and records end,
    /// and after timers fire (stale timers of ended connections leave the
    /// heap only as they come due); O(1) unless a table shrinks.
    fn trim_tables(&mut self) {
        self.conns_trim.trim(&mut self.conns);
        self.flights_trim.trim(&mut self.flights);
        let live = self.conns.len();
        // Timers of ended connections wait in the heap until due.
        self.prune_timers();
        macro_rules! trim {
            ($($t:ident),* ; floor $floor:expr) => {$(
                if let Some(to) = trimmed_capacity(self.$t.capacity(), self.$t.len(), $floor) {
                    self.$t.shrink_to(to);
                }
            )*};
        }
        // Tables that hold an entry per connection, peer or record.
        trim!(by_key, ids, time_wait, time_wait_order, flight_ids, paths, accept_queue; floor 0);
        // Working queues that take an entry per live connection in every
        // busy moment keep room for all of them.
        trim!(timers, dirty, touched, path_queries; floor live);
    }

    /// A STATE header sent with no connection behind it (a SYN cookie's
    /// SYN-ACK, a TIME_WAIT record's ack), timed as a connection's: its
    /// timestamp difference is measured from `answered`.
    fn stateless_state(
        &self,
        now: Instant,
        answered: &Header,
        conn_id: u16,
        wnd_size: u32,
        seq_nr: u16,
        ack_nr: u16,
    ) -> Header {
        let micros = now.saturating_duration_since(self.epoch).as_micros() as u32;
        Header {
            ty: PacketType::State,
            conn_id,
            timestamp: micros,
            timestamp_diff: micros.wrapping_sub(answered.timestamp),
            wnd_size,
            seq_nr,
            ack_nr,
        }
    }

    /// A packet for a record in TIME_WAIT gets the connection's answers: a
    /// re-sent FIN (our ack was lost) or data its ack pair, and a FIN
    /// starts TIME_WAIT over (RFC 793 restarts TIME-WAIT too). Returns
    /// whether `h` was for such a record.
    fn answer_time_wait(&mut self, now: Instant, from: SocketAddr, h: &Header) -> bool {
        let key = (from, h.conn_id);
        let Some(r) = self.time_wait.get_mut(&key) else {
            return false;
        };
        if !matches!(h.ty, PacketType::Fin | PacketType::Data) {
            return true;
        }
        let r = if h.ty == PacketType::Fin {
            r.until = now + self.cfg.time_wait;
            let r = *r;
            self.time_wait_end_at(r.until, key);
            r
        } else {
            *r
        };
        if self.resets.len() + 2 > MAX_QUEUED_REPLIES {
            return true;
        }
        let ack = self.stateless_state(now, h, r.send_id, r.wnd, r.seq_nr, r.ack_nr);
        // As after our FIN (see `Connection::poll_transmit`): libutp takes
        // an ack with seq = FIN + 1, libtorrent one with seq <= FIN.
        self.resets.push_back((from, ack));
        let echo = Header {
            seq_nr: r.seq_nr.wrapping_sub(1),
            ..ack
        };
        self.resets.push_back((from, echo));
        true
    }

    /// Tells connection `idx` what it may add to the data in flight to its
    /// peer address (see [`Config::max_peer_flight`]); if that holds its
    /// data back, it waits for the next acknowledgement to that peer (some
    /// data is in flight then, or there would be room).
    fn update_peer_room(&mut self, idx: usize) {
        let e = &mut self.conns[idx];
        let f = &mut self.flights[e.flight_id];
        let sending = e.conn.is_sending();
        if sending != e.sending {
            e.sending = sending;
            if sending {
                f.sending += 1;
            } else {
                f.sending -= 1;
            }
        }
        e.conn
            .set_peer_room(f.room(), f.limit.bytes / f.sending.max(1));
        if !e.waiting && e.conn.waits_for_peer_room() {
            e.waiting = true;
            f.waiting.push_back(idx);
        }
    }

    /// Brings `flights` up to date with connection `idx`'s bytes in flight
    /// (none once it is done). When that frees room, waiting connections
    /// are woken in turn, as many as the room takes (not all of them on
    /// every acknowledgement: with thousands waiting, that would poll each
    /// for every packet).
    fn count_flight(&mut self, idx: usize) {
        let e = &mut self.conns[idx];
        let now_in_flight = if e.conn.is_done() {
            FlightSize::default()
        } else {
            e.conn.in_flight()
        };
        if now_in_flight == e.flight {
            return;
        }
        let before = std::mem::replace(&mut e.flight, now_in_flight);
        let f = &mut self.flights[e.flight_id];
        f.size = f.size.replace(before, now_in_flight);
        if now_in_flight.bytes >= before.bytes && now_in_flight.cost >= before.cost {
            return;
        }
        let mut room = f.room();
        while room.any_room() {
            let Some(w) = f.waiting.pop_front() else {
                break;
            };
            let e = &mut self.conns[w];
            e.waiting = false;
            room = room.saturating_sub(e.conn.peer_room_wanted());
            if !e.dirty {
                e.dirty = true;
                self.dirty.push_back(w);
            }
        }
    }

    /// Keeps `paths` up to date with connection `idx`: a larger size it
    /// confirmed goes to every connection to the same peer address, and a
    /// new connection starts with the size found recently; a smaller one
    /// (a black hole, a route change) is what later connections start with.
    fn share_path(&mut self, idx: usize, now: Instant) {
        let e = &mut self.conns[idx];
        let (ip, size) = (e.addr.ip(), e.conn.datagram_size());
        if size == e.path_size {
            return;
        }
        let new = e.path_size == 0;
        e.path_size = size;
        if !self.paths.contains_key(&ip) && self.paths.len() >= MAX_PATHS {
            self.paths.clear();
        }
        let share = self.paths.entry(ip).or_insert(PathShare {
            size,
            at: now,
            searcher: None,
            conns: 0,
        });
        share.conns += usize::from(new);
        if size > share.size {
            share.size = size;
            share.at = now;
            if share.conns < 2 {
                return;
            }
            let mut adopted = Vec::new();
            for (j, o) in self.conns.iter_mut() {
                if j != idx && o.addr.ip() == ip && o.conn.datagram_size() < size {
                    o.conn.adopt_datagram_size(size, now);
                    adopted.push(j);
                }
            }
            // Their path MTU timers changed.
            for j in adopted {
                self.schedule(j);
            }
        } else if size < share.size {
            if new && now.saturating_duration_since(share.at) < self.cfg.pmtud_interval {
                // A new connection starts with what the others found.
                let size = share.size;
                let e = &mut self.conns[idx];
                e.conn.adopt_datagram_size(size, now);
                e.path_size = e.conn.datagram_size();
            } else {
                share.size = size;
                share.at = now;
            }
        }
    }

    /// Whether connection `idx` may probe the path now: no other connection
    /// to its peer address has a probe out.
    fn may_probe(&self, idx: usize) -> bool {
        let ip = self.conns[idx].addr.ip();
        match self.paths.get(&ip).and_then(|p| p.searcher) {
            Some(s) if s != idx => !self
                .conns
                .get(s)
                .is_some_and(|o| o.addr.ip() == ip && o.conn.is_probing()),
            _ => true,
        }
    }

    /// Records connection `idx`'s next timer. A heap entry is only added
    /// when the timer moved earlier; one that moved later (a retransmission
    /// timer re-armed by every ack) leaves the old entry, which
    /// [`Endpoint::next_timer`] moves when it comes up.
    fn schedule(&mut self, idx: usize) {
        let e = &mut self.conns[idx];
        e.deadline = e.conn.poll_timeout();
        if let Some(t) = e.deadline {
            if e.scheduled.is_none_or(|s| t < s) {
                e.scheduled = Some(t);
                self.timers.push(Reverse((t, idx)));
                self.new_timer = Some(self.new_timer.map_or(t, |n| n.min(t)));
                self.prune_timers();
            }
        }
    }

    /// Drops the heap's stale entries once they outnumber the live
    /// connections. Ended connections leave theirs behind, and a timer
    /// moved earlier leaves its later entry; `next_timer` drops stale
    /// entries only as they reach the top. Checked where the heap grows,
    /// so it stays bounded however seldom a timer fires.
    fn prune_timers(&mut self) {
        if self.timers.len() > 2 * self.conns.len() + TRIM_MIN {
            let conns = &self.conns;
            self.timers
                .retain(|Reverse((t, i))| conns.get(*i).is_some_and(|e| e.scheduled == Some(*t)));
        }
    }

    /// The earliest heap entry that is a connection's real next timer.
    /// Stale entries on top are dropped, and an entry whose connection's
    /// timer moved later is moved with it: a request/response connection
    /// re-arms its retransmission timers with every message, and waking the
    /// driver at each old deadline (every few milliseconds) did nothing but
    /// wake a thread.
    fn next_timer(&mut self) -> Option<(Instant, usize)> {
        while let Some(Reverse((t, idx))) = self.timers.peek().copied() {
            let moved = match self.conns.get_mut(idx) {
                Some(e) if e.scheduled == Some(t) => match e.deadline {
                    Some(d) if d == t => return Some((t, idx)),
                    d => {
                        e.scheduled = d;
                        d
                    }
                },
                _ => None,
            };
            self.timers.pop();
            if let Some(d) = moved {
                self.timers.push(Reverse((d, idx)));
            }
        }
        None
    }

    /// The earliest timer that came up since the last call, if any: a
    /// connection's timer that moved earlier, or a new connection's.
    /// Cheaper than [`Endpoint::poll_timeout`] for a caller that only needs
    /// to learn whether something is now due sooner than what
    /// `poll_timeout` told it (call this one right before that one, so that
    /// nothing falls between them); a timer that moved later never is.
    pub fn take_new_timer(&mut self) -> Option<Instant> {
        self.new_timer.take()
    }

    /// The earliest moment [`Endpoint::handle_timeout`] needs to run.
    pub fn poll_timeout(&mut self) -> Option<Instant> {
        let conn = self.next_timer().map(|(t, _)| t);
        match (conn, self.next_time_wait_end()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Runs every timer due at `now`.
    pub fn handle_timeout(&mut self, now: Instant) {
        let mut changed = self.expire_time_wait(now);
        while let Some((t, idx)) = self.next_timer() {
            if t > now {
                break;
            }
            changed = true;
            self.timers.pop();
            let e = &mut self.conns[idx];
            e.scheduled = None;
            let _span = conn_span(&e.conn, e.addr).entered();
            e.conn.handle_timeout(now);
            self.touch(idx);
            self.after_change(idx, now);
        }
        // Only a timer or an expired record changes what the tables hold
        // here; the driver calls this on every turn.
        if changed {
            self.trim_tables();
        }
    }

    /// Whether a connect of ours still waits for its SYN-ACK (the only
    /// connections [`Endpoint::handle_unreachable`] can end).
    pub fn is_connecting(&self) -> bool {
        self.connecting > 0
    }

    /// The OS reports that a datagram we sent to `peer` found no socket
    /// there (an ICMP port unreachable); `quoted` is the start of that
    /// datagram, as the report quotes it. If it was the SYN of a connection
    /// still waiting for its SYN-ACK, that connection fails as refused
    /// (returns true), as a TCP connect does, instead of resending its SYN
    /// until `connect_timeout`. Anything else is only counted: such reports
    /// are not authenticated, and the quoted SYN (its connection id and
    /// sequence number) must match the attempt, so a forger must know both.
    pub fn handle_unreachable(&mut self, now: Instant, peer: SocketAddr, quoted: &[u8]) -> bool {
        self.stats.unreachable_reports += 1;
        self.fail_syn(now, peer, quoted, Connection::handle_syn_unreachable)
    }

    /// The OS refused to send a datagram of ours to `peer` (no route to its
    /// network or host, an address unreachable from here; not a full
    /// buffer or an ICMP error it reported late), `datagram` being what was
    /// not sent. If it was a connect's SYN, that connect fails now with
    /// [`ConnectionError::Unreachable`], as TCP's does; anything else is
    /// left to retransmission. Returns whether a connect took it.
    pub fn handle_syn_not_sent(&mut self, now: Instant, peer: SocketAddr, datagram: &[u8]) -> bool {
        self.fail_syn(now, peer, datagram, Connection::handle_syn_not_sent)
    }

    /// Fails the connect whose SYN `quoted` starts with, through `fail`.
    fn fail_syn(
        &mut self,
        now: Instant,
        peer: SocketAddr,
        quoted: &[u8],
        fail: fn(&mut Connection, u16) -> bool,
    ) -> bool {
        let Ok(h) = Header::parse_fixed(quoted) else {
            return false;
        };
        if h.ty != PacketType::Syn {
            return false;
        }
        // A SYN carries the id its sender receives on: ours.
        let Some(&idx) = self.by_key.get(&(peer, h.conn_id)) else {
            return false;
        };
        if !fail(&mut self.conns[idx].conn, h.seq_nr) {
            return false;
        }
        self.touch(idx);
        self.after_change(idx, now);
        true
    }

    /// A router reports that a datagram we sent to `peer` did not fit a
    /// link on the way (ICMP "fragmentation needed" / "packet too big"):
    /// at most `max` bytes of UDP payload pass. `quoted` is the start of
    /// that datagram, as the report quotes it. The connection that sent it
    /// lowers its size to `max` at once and resends what it sent larger,
    /// instead of finding the black hole by losses (RFC 8899 4.6), and so
    /// do the other connections to the same address that are larger. Such
    /// reports are not authenticated: one counts only if it quotes a
    /// packet of that connection that is still unacknowledged and larger
    /// than `max`, so a forger must know its ids and sequence numbers.
    /// Returns whether a connection took it.
    pub fn handle_too_big(
        &mut self,
        now: Instant,
        peer: SocketAddr,
        quoted: &[u8],
        max: usize,
    ) -> bool {
        self.stats.too_big_reports += 1;
        let Ok(h) = Header::parse_fixed(quoted) else {
            return false;
        };
        // A packet other than a SYN carries its receiver's id: our send id.
        let Some(idx) = self.find_by_send_id(peer, h.conn_id) else {
            return false;
        };
        if !self.conns[idx].conn.handle_too_big(now, h.seq_nr, max) {
            return false;
        }
        self.touch(idx);
        self.after_change(idx, now);
        // The report names the path to the peer's address, which all its
        // connections share (as the OS's route cache does); this one quoted
        // a packet in flight, so it is no forgery by someone off the path.
        let ip = peer.ip();
        let others: Vec<usize> = self
            .conns
            .iter()
            .filter(|&(j, e)| j != idx && e.addr.ip() == ip && e.conn.datagram_size() > max)
            .map(|(j, _)| j)
            .collect();
        for j in others {
            if self.conns[j].conn.path_too_big(now, max) {
                self.touch(j);
                self.after_change(j, now);
            }
        }
        true
    }

    /// Processes one datagram from `from`. Malformed datagrams and packets for
    /// unknown connections are dropped and counted, never trusted.
    pub fn handle_datagram(
        &mut self,
        now: Instant,
        from: SocketAddr,
        data: &[u8],
    ) -> Result<(), packet::ParseError> {
        self.handle_datagram_in(now, from, data, None)
    }

    /// [`Endpoint::handle_datagram`] for a datagram in a shared buffer:
    /// large payloads reach the reader as slices of `owner`, with no copy.
    /// The buffer stays allocated until they are read.
    pub fn handle_datagram_shared(
        &mut self,
        now: Instant,
        from: SocketAddr,
        owner: &Bytes,
    ) -> Result<(), packet::ParseError> {
        self.handle_datagram_in(now, from, owner, Some(owner))
    }

    fn handle_datagram_in(
        &mut self,
        now: Instant,
        from: SocketAddr,
        data: &[u8],
        owner: Option<&Bytes>,
    ) -> Result<(), packet::ParseError> {
        self.stats.datagrams_received += 1;
        let pkt = match Packet::parse(data) {
            Ok(p) => p,
            Err(e) => {
                self.stats.invalid_datagrams += 1;
                return Err(e);
            }
        };
        let h = pkt.header;
        let idx = match h.ty {
            PacketType::Syn => {
                let key = (from, h.conn_id.wrapping_add(1));
                if let Some(&idx) = self.by_key.get(&key) {
                    Some(idx)
                } else if self.time_wait.contains_key(&key) {
                    // An old duplicate of a closed connection's SYN: what
                    // TIME_WAIT keeps the id reserved for.
                    self.retired_drops.unexpected_syn += 1;
                    return Ok(());
                } else {
                    self.new_incoming(now, from, &h);
                    return Ok(());
                }
            }
            PacketType::Reset => match self.find_reset_target(from, h.conn_id) {
                Some(idx) => Some(idx),
                None if self.is_time_wait_reset(from, h.conn_id) => {
                    // TIME_WAIT ignores RESETs (RFC 1337): the record keeps
                    // the id from reuse for its whole time.
                    self.retired_drops.after_close += 1;
                    return Ok(());
                }
                None => None,
            },
            _ => match self.lookup(from, h.conn_id) {
                Some(idx) => Some(idx),
                None if self.answer_time_wait(now, from, &h) => return Ok(()),
                None => self.accept_cookie(now, from, &h),
            },
        };
        match idx {
            Some(idx) => {
                // What the other connections leave of the out-of-order limit.
                let others = self.reorder_held.saturating_sub(self.conns[idx].held);
                let room = self.cfg.reorder_memory.saturating_sub(others);
                let e = &mut self.conns[idx];
                e.conn.set_reorder_room(room);
                // Everything the connection logs carries its id and peer.
                let _span = conn_span(&e.conn, e.addr).entered();
                e.conn.handle_packet_in(now, &pkt, owner);
                self.touch(idx);
                self.after_change(idx, now);
            }
            None if h.ty != PacketType::Syn && self.ids.contains_key(&h.conn_id) => {
                // Another address's connection id (RESETs: or the id next to
                // it, as find_reset_target accepts). Answering with a RESET
                // is harmless (it goes to the sender), but rate-limited.
                self.stats.wrong_source_address += 1;
                if h.ty != PacketType::Reset {
                    self.queue_reset(now, from, &h);
                }
            }
            None => {
                self.stats.unknown_connection += 1;
                if h.ty != PacketType::Reset {
                    self.queue_reset(now, from, &h);
                }
            }
        }
        Ok(())
    }

    /// The connection receiving on `id` from `from`. Bulk traffic brings
    /// runs of datagrams for one connection: the last hit is checked first,
    /// which saves hashing the address (SipHash, kept for its resistance to
    /// chosen-key flooding) for most datagrams. Keys are unique, so an entry
    /// with this address and receive id is the one the map would return.
    fn lookup(&mut self, from: SocketAddr, id: u16) -> Option<usize> {
        if let Some(idx) = self.last_hit {
            if self
                .conns
                .get(idx)
                .is_some_and(|e| e.addr == from && e.conn.recv_id() == id)
            {
                return Some(idx);
            }
        }
        let idx = self.by_key.get(&(from, id)).copied();
        if idx.is_some() {
            self.last_hit = idx;
        }
        idx
    }

    /// A RESET echoes either our receive id or our send id (libutp echoes the
    /// id of the packet it answers), so accept both.
    fn find_reset_target(&self, from: SocketAddr, id: u16) -> Option<usize> {
        if let Some(&idx) = self.by_key.get(&(from, id)) {
            return Some(idx);
        }
        self.find_by_send_id(from, id)
    }

    /// Whether a RESET on `id` from `from` is for a TIME_WAIT record, by
    /// either of its ids (as `find_reset_target` takes them).
    fn is_time_wait_reset(&self, from: SocketAddr, id: u16) -> bool {
        self.time_wait.contains_key(&(from, id))
            || [id.wrapping_sub(1), id.wrapping_add(1)]
                .into_iter()
                .any(|k| {
                    self.time_wait
                        .get(&(from, k))
                        .is_some_and(|r| r.send_id == id)
                })
    }

    /// The connection to `from` that sends on `id`: its receive id is `id`
    /// plus or minus one (by role).
    fn find_by_send_id(&self, from: SocketAddr, id: u16) -> Option<usize> {
        [id.wrapping_sub(1), id.wrapping_add(1)]
            .into_iter()
            .filter_map(|k| self.by_key.get(&(from, k)).copied())
            .find(|&idx| self.conns[idx].conn.send_id() == id)
    }

    fn new_incoming(&mut self, now: Instant, from: SocketAddr, syn: &Header) {
        if !self.listening {
            self.stats.syn_refused += 1;
            self.queue_reset(now, from, syn);
            return;
        }
        if self.accept_queue.len() >= self.cfg.backlog_limit() {
            self.purge_accept_queue();
        }
        if self.half_open >= self.cfg.max_half_open {
            self.stats.syn_half_open_full += 1;
            self.send_syn_cookie(now, from, syn);
            return;
        }
        if self.accept_queue.len() >= self.cfg.backlog_limit() {
            self.stats.syn_backlog_full += 1;
            tracing::debug!(peer = %from, "accept backlog full, SYN dropped");
            return;
        }
        let isn = self.rng.gen();
        let conn = self.incoming(now, syn, isn);
        tracing::debug!(peer = %from, conn_id = syn.conn_id, "incoming connection");
        self.stats.connections_accepted += 1;
        let h = self.insert(now, from, conn);
        self.accept_queue.push_back(h);
    }

    /// SYN cookies (a SYN flood): with the half-open limit reached, a SYN
    /// is answered with a SYN-ACK whose sequence number is a keyed hash of
    /// the initiator's address, its connection id and sequence number, and
    /// a time slot, and nothing is kept. The initiator's next packet acks
    /// that number (`accept_cookie`), and only then is the connection made:
    /// a flood from forged addresses never sees its SYN-ACKs, so it holds
    /// no more than `max_half_open` connections, while real initiators
    /// still get in. The cookie has 16 bits (all a sequence number has): a
    /// forger needs 65,536 tries per connection on average. The cost: the
    /// application sees the connection when the initiator first sends,
    /// not at its SYN (BitTorrent's initiator speaks first).
    fn send_syn_cookie(&mut self, now: Instant, to: SocketAddr, syn: &Header) {
        if self.resets.len() >= MAX_QUEUED_REPLIES {
            return;
        }
        let cookie = self.syn_cookie(to, syn.conn_id, syn.seq_nr, self.cookie_slot(now));
        let wnd = u32::try_from(self.cfg.recv_buffer).unwrap_or(u32::MAX);
        let h = self.stateless_state(now, syn, syn.conn_id, wnd, cookie, syn.seq_nr);
        self.resets.push_back((to, h));
        self.cookies_until = Some(now + std::time::Duration::from_secs(2 * COOKIE_SLOT_SECS));
        tracing::debug!(peer = %to, "too many half-open connections, SYN answered with a cookie");
    }

    fn cookie_slot(&self, now: Instant) -> u64 {
        now.saturating_duration_since(self.epoch).as_secs() / COOKIE_SLOT_SECS
    }

    fn syn_cookie(&mut self, from: SocketAddr, syn_id: u16, syn_seq: u16, slot: u64) -> u16 {
        let rng = &mut self.rng;
        let key = self.cookie_key.get_or_insert_with(|| {
            ahash::RandomState::with_seeds(rng.gen(), rng.gen(), rng.gen(), rng.gen())
        });
        // The address's IP and port only: an IPv6 flow label may differ
        // between the SYN and the packet that returns the cookie.
        key.hash_one((from.ip(), from.port(), syn_id, syn_seq, slot)) as u16
    }

    /// A packet for no connection, while SYN cookies are out: if it is an
    /// initiator's first packet after our cookie SYN-ACK (data, an ack, or
    /// a FIN from one that closes at once; its connection id and sequence
    /// number one past its SYN's, its ack one before the cookie, as every
    /// stack acks a SYN-ACK), the connection is made now, as if from that
    /// SYN, and the packet goes to it. Returns it.
    fn accept_cookie(&mut self, now: Instant, from: SocketAddr, h: &Header) -> Option<usize> {
        if !matches!(h.ty, PacketType::Data | PacketType::State | PacketType::Fin)
            || !self.listening
            || self.cookies_until.is_none_or(|t| now >= t)
            || self.accept_queue.len() >= self.cfg.backlog_limit()
        {
            return None;
        }
        let syn = Header {
            ty: PacketType::Syn,
            conn_id: h.conn_id.wrapping_sub(1),
            timestamp: h.timestamp,
            timestamp_diff: 0,
            wnd_size: h.wnd_size,
            seq_nr: h.seq_nr.wrapping_sub(1),
            ack_nr: 0,
        };
        let isn = h.ack_nr.wrapping_add(1);
        let slot = self.cookie_slot(now);
        let valid = [slot, slot.wrapping_sub(1)]
            .into_iter()
            .any(|s| self.syn_cookie(from, syn.conn_id, syn.seq_nr, s) == isn);
        if !valid {
            return None;
        }
        let conn = self.incoming(now, &syn, isn);
        tracing::debug!(peer = %from, conn_id = syn.conn_id, "incoming connection (SYN cookie)");
        self.stats.syn_cookies_accepted += 1;
        self.stats.connections_accepted += 1;
        let handle = self.insert(now, from, conn);
        self.accept_queue.push_back(handle);
        Some(handle.0)
    }

    /// An incoming connection for `syn`, waiting to be accepted.
    fn incoming(&self, now: Instant, syn: &Header, isn: u16) -> Connection {
        let mut conn = Connection::accept(self.cfg.clone(), now, self.epoch, syn, isn);
        conn.set_shared_limits(self.limits.clone());
        conn.set_waiting_for_accept(true);
        conn
    }

    fn queue_reset(&mut self, now: Instant, to: SocketAddr, probe: &Header) {
        let elapsed = now
            .saturating_duration_since(self.reset_refill)
            .as_secs_f64();
        self.reset_refill = now;
        let cap = self.cfg.reset_rate as f64;
        self.reset_tokens = (self.reset_tokens + elapsed * cap).min(cap);
        if self.reset_recently(now, to, probe.conn_id) {
            self.stats.resets_repeated += 1;
            return;
        }
        if self.reset_tokens < 1.0 || self.resets.len() >= MAX_QUEUED_RESETS {
            self.stats.resets_suppressed += 1;
            return;
        }
        self.reset_tokens -= 1.0;
        self.note_reset(now, to, probe.conn_id);
        // Same shape as libutp's: the probe's id echoed, its seq acked, and
        // never larger than the packet that caused it (20 bytes).
        let h = Header {
            ty: PacketType::Reset,
            conn_id: probe.conn_id,
            timestamp: now.saturating_duration_since(self.epoch).as_micros() as u32,
            timestamp_diff: 0,
            wnd_size: 0,
            seq_nr: self.rng.gen(),
            ack_nr: probe.seq_nr,
        };
        self.resets.push_back((to, h));
    }

    /// Whether the connection `id` at `to` got a RESET within
    /// [`RESET_QUIET`].
    fn reset_recently(&mut self, now: Instant, to: SocketAddr, id: u16) -> bool {
        self.forget_resets(now, usize::MAX);
        self.recent_resets.contains_key(&(to, id))
    }

    /// Remembers a RESET to the connection `id` at `to` (see
    /// [`RESET_QUIET`]).
    fn note_reset(&mut self, now: Instant, to: SocketAddr, id: u16) {
        self.forget_resets(now, MAX_RECENT_RESETS - 1);
        self.recent_resets.insert((to, id), now);
        self.recent_reset_order.push_back((now, to, id));
    }

    /// Forgets the RESETs older than [`RESET_QUIET`], and the oldest ones
    /// beyond `keep`.
    fn forget_resets(&mut self, now: Instant, keep: usize) {
        while let Some(&(t, a, i)) = self.recent_reset_order.front() {
            let expired = now.saturating_duration_since(t) >= RESET_QUIET;
            // Entries replaced later are stale: count them against the
            // bound too, so the queue stays within twice it.
            let over = self.recent_resets.len() > keep
                || self.recent_reset_order.len() > keep.saturating_mul(2);
            if !expired && !over {
                break;
            }
            self.recent_reset_order.pop_front();
            if self.recent_resets.get(&(a, i)) == Some(&t) {
                self.recent_resets.remove(&(a, i));
            }
        }
    }

    /// Writes the next datagram into `buf` (at least `max_payload + 64`
    /// bytes). Connections take turns so one bulk sender can't starve others.
    pub fn poll_transmit(&mut self, now: Instant, buf: &mut [u8]) -> Option<Transmit> {
        self.next_transmit(now, buf, false).map(|(t, _)| t)
    }

    /// Like [`Endpoint::poll_transmit`], except that a payload of at least
    /// [`SPLIT_MIN`](crate::SPLIT_MIN) bytes is returned beside the header
    /// instead of being copied into `buf` (see
    /// [`Connection::poll_transmit_split`]): the datagram is `buf[..len]`
    /// followed by the payload, for a gather send.
    pub fn poll_transmit_split(
        &mut self,
        now: Instant,
        buf: &mut [u8],
    ) -> Option<(Transmit, Option<Bytes>)> {
        self.next_transmit(now, buf, true)
    }

    fn next_transmit(
        &mut self,
        now: Instant,
        buf: &mut [u8],
        split: bool,
    ) -> Option<(Transmit, Option<Bytes>)> {
        if let Some((to, h)) = self.resets.pop_front() {
            if h.ty == PacketType::Reset {
                self.stats.resets_sent += 1;
            }
            self.stats.datagrams_sent += 1;
            let len = packet::encode(&h, &[], &[], buf);
            debug_assert_eq!(len, HEADER_LEN);
            let t = Transmit {
                destination: to,
                len,
                fragmentable: false,
            };
            return Some((t, None));
        }
        while let Some(idx) = self.dirty.pop_front() {
            let Some(e) = self.conns.get_mut(idx) else {
                continue;
            };
            e.dirty = false;
            let may_probe = self.may_probe(idx);
            self.update_peer_room(idx);
            let e = &mut self.conns[idx];
            e.conn.set_probing_allowed(may_probe);
            let sent = if split {
                e.conn.poll_transmit_split(now, buf)
            } else {
                e.conn.poll_transmit(now, buf).map(|n| (n, None))
            };
            let Some((len, payload)) = sent else {
                // Nothing sent, but a timer may be due (persist, after a
                // write `with_conn_sending` left to this).
                e.conn.refresh(now);
                self.schedule(idx);
                continue;
            };
            let destination = e.addr;
            let fragmentable = e.conn.transmit_fragmentable();
            if e.conn.is_probing() {
                if let Some(p) = self.paths.get_mut(&destination.ip()) {
                    p.searcher = Some(idx);
                }
            }
            self.stats.datagrams_sent += 1;
            self.after_change(idx, now);
            let t = Transmit {
                destination,
                len,
                fragmentable,
            };
            return Some((t, payload));
        }
        None
    }

    /// Tells the connection behind `h` the largest datagram the OS can send
    /// on its route (route MTU minus IP and UDP headers): the ceiling of
    /// its path MTU search.
    pub fn set_max_datagram(&mut self, h: ConnHandle, now: Instant, size: usize) {
        if self.conns.contains(h.0) {
            self.with_conn(h, now, |c| c.set_max_datagram(now, size));
        }
    }

    /// The OS refused a datagram to `to` as too big (EMSGSIZE), or reported
    /// a smaller path MTU: every connection to `to` lowers its size to at
    /// most `size` bytes per datagram.
    pub fn on_datagram_too_big(&mut self, now: Instant, to: SocketAddr, size: usize) {
        let idxs: Vec<usize> = self
            .conns
            .iter()
            .filter(|(_, e)| e.addr == to)
            .map(|(i, _)| i)
            .collect();
        for idx in idxs {
            self.conns[idx].conn.on_datagram_too_big(now, size);
            self.after_change(idx, now);
        }
    }

    /// A connection that lost a path MTU probe and asks for the OS's view
    /// of its route's MTU, with its peer address. Answer (optionally) with
    /// [`Endpoint::set_max_datagram`]: where ICMP "packet too big" is not
    /// filtered, the kernel knows the path MTU by the time a probe counts
    /// as lost, and the search ends at once instead of probing down.
    pub fn poll_path_query(&mut self) -> Option<(ConnHandle, SocketAddr)> {
        while let Some(h) = self.path_queries.pop_front() {
            if let Some(e) = self.conns.get(h.0) {
                return Some((h, e.addr));
            }
        }
        None
    }

    /// Whether no connection is tracked at all and no RESET waits to go
    /// out (an aborted connection's is its last word).
    pub fn is_idle(&self) -> bool {
        self.conns.is_empty() && self.time_wait.is_empty() && self.resets.is_empty()
    }

    /// Whether every connection has finished both ways (TIME_WAIT) or
    /// ended: nothing is sent any more except answers to late packets.
    pub fn is_winding_down(&self) -> bool {
        self.conns.iter().all(|(_, e)| {
            matches!(
                e.conn.state(),
                State::TimeWait | State::Done | State::Failed(_)
            )
        })
    }
}

/// The tracing span of one connection: its receive id and peer. Cheap when
/// debug logging is off (the level is checked before anything is built).
fn conn_span(conn: &Connection, peer: SocketAddr) -> tracing::Span {
    tracing::debug_span!("utp", id = conn.recv_id(), %peer)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Delivers everything `from` has to send to `to`, arriving at `now`.
    fn pump(from: &mut Endpoint, from_addr: SocketAddr, to: &mut Endpoint, now: Instant) -> usize {
        let mut buf = vec![0u8; 70_000];
        let mut n = 0;
        while let Some(t) = from.poll_transmit(now, &mut buf) {
            let _ = to.handle_datagram(now, from_addr, &buf[..t.len]);
            n += 1;
        }
        n
    }

    /// A request/response connection arms and moves its timers with every
    /// message; the heap holds a few entries for it, not one per message,
    /// even while no timer ever fires (tables are trimmed only after one).
    /// One side writes and reads as the async layer does, the other
    /// through `with_conn`.
    #[test]
    fn stale_timer_entries_stay_bounded_while_no_timer_fires() {
        let (a_addr, b_addr): (SocketAddr, SocketAddr) =
            ("10.0.0.1:1".parse().unwrap(), "10.0.0.2:2".parse().unwrap());
        let cfg = Arc::new(Config::default());
        let mut now = Instant::now();
        let mut a = Endpoint::with_seed(cfg.clone(), now, 1);
        let mut b = Endpoint::with_seed(cfg, now, 2);
        b.set_listening(true);
        let ha = a.connect(now, b_addr).unwrap();
        while pump(&mut a, a_addr, &mut b, now) + pump(&mut b, b_addr, &mut a, now) > 0 {}
        let hb = b.accept().expect("accepted");
        let mut buf = [0u8; 64];
        let mut peak = 0;
        for i in 0..4 * TRIM_MIN {
            // Far below any retransmission or keep-alive timeout.
            now += Duration::from_micros(50);
            let msg = [i as u8; 64];
            assert_eq!(a.with_conn_sending(ha, now, |c| c.write(&msg)), Ok(64));
            pump(&mut a, a_addr, &mut b, now);
            assert_eq!(b.with_conn(hb, now, |c| c.read(&mut buf)), Ok(64));
            assert_eq!(buf, msg);
            assert_eq!(b.with_conn(hb, now, |c| c.write(&buf)), Ok(64));
            pump(&mut b, b_addr, &mut a, now);
            assert_eq!(a.with_conn_reading(ha, now, |c| c.read(&mut buf)), Ok(64));
            for ep in [&mut a, &mut b] {
                ep.handle_timeout(now);
                peak = peak.max(ep.timers.len());
            }
        }
        assert_eq!(a.conn(ha).stats().timeouts, 0, "no timer fired");
        assert!(peak <= 8, "{peak} timer entries for one connection");
    }
}
