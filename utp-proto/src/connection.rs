//! One uTP connection as a sans-IO state machine.
//!
//! Inputs: [`Connection::handle_packet`], [`Connection::write`],
//! [`Connection::read`], [`Connection::close`], [`Connection::handle_timeout`].
//! Outputs: [`Connection::poll_transmit`] and [`Connection::poll_timeout`].
//! Time is always passed in; nothing here touches a socket or a clock.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use thiserror::Error;

use crate::config::Config;
use crate::congestion::{AckInfo, Controller, DelayState};
use crate::drops::DropStats;
use crate::flight::FlightSize;
use crate::pacing::Pacer;
use crate::packet::{self, Header, Packet, PacketType, HEADER_LEN, MAX_SACK_BYTES};
use crate::pmtud::Pmtud;
use crate::ratelimit::{ConnLimits, SharedLimits, TokenBucket};
use crate::rtt::RttEstimator;
use crate::sendbuf::SendQueue;
use crate::seq;

/// Retransmission timeouts of our FIN, when it is all that is left after
/// the peer's FIN, before the close counts as complete for the application
/// (the FIN is still resent after that, see `fin_presumed`).
const FIN_ONLY_TIMEOUTS: u32 = 2;

/// Copies of such a FIN sent a probe timeout apart (two RTTs) before the
/// close counts as complete, when an RTT is known: the usual way there,
/// as libtorrent and librqbit-utp never answer it, and sooner than
/// `FIN_ONLY_TIMEOUTS` (1.5 s with the 500 ms minimum RTO).
const FIN_ONLY_COPIES: u32 = 3;

/// The first keep-alive after the peer acked our FIN while its own FIN is
/// still to come (see `Connection::keepalive_at`).
const HALF_CLOSED_PROBE: Duration = Duration::from_secs(1);

/// How long an accepted connection holds its first DATA (and FIN) back,
/// waiting for the initiator's first packet to show the SYN-ACK arrived.
/// libtorrent, when a DATA reaches it before the SYN-ACK (reordered, or the
/// SYN-ACK lost), completes its handshake on that DATA, acks it and drops
/// its payload: the stream then stalls. Initiators that speak first
/// (BitTorrent peers; ours acks the SYN-ACK at once) are not delayed. For a
/// silent one, a copy of the SYN-ACK goes out right before our first DATA,
/// this long after the first: a lost SYN-ACK is replaced in time, and no
/// DATA can overtake it.
pub const SYN_RECV_HOLD: Duration = Duration::from_millis(200);

/// Smallest payload kept as a slice of the datagram buffer it arrived in
/// rather than copied. A slice keeps its whole buffer (64 KiB) alive until
/// read, so this bounds what it pins to twice the bytes it holds.
const SHARE_MIN: usize = 32 * 1024;

/// `payload` as a slice of `owner` (no copy) when it is large and lies
/// within it.
fn shared_slice(owner: Option<&Bytes>, payload: &[u8]) -> Option<Bytes> {
    let owner = owner?;
    let start = (payload.as_ptr() as usize).checked_sub(owner.as_ptr() as usize)?;
    let inside = start.checked_add(payload.len())? <= owner.len();
    (payload.len() >= SHARE_MIN && inside).then(|| owner.slice(start..start + payload.len()))
}

/// The smallest send limit `Connection::send_limit` sets.
const MIN_SEND_LIMIT: usize = 64 * 1024;

/// How long an idle connection keeps spare send chunks for the next write.
const SPARE_LINGER: Duration = Duration::from_millis(250);

/// Most unacknowledged packets a connection keeps in flight.
const MAX_OUTSTANDING_PACKETS: usize = 16_384;

/// A path whose recent smallest round trip
/// ([`RttEstimator::recent_min`]) is below this is on this host or a LAN
/// (see `LOCAL_FLIGHT`). The recent one, so that a path that moves to a WAN
/// under the same addresses loses the cap within seconds.
const LOCAL_PATH_RTT: Duration = Duration::from_millis(1);

/// Most bytes in flight on such a path, whatever the congestion window:
/// 512 KiB already cover 4 Gbit/s for a whole millisecond, and more only
/// waits in the receiver's socket buffer (LEDBAT sees no delay worth
/// reacting to there), while every byte of it is memory that both ends'
/// copies pass through. On loopback a flight of 1 MiB (the peer's window)
/// fell out of this VM's 2 MiB per-core cache: in paired runs a bulk
/// transfer went 2,590 -> 3,080 MB/s (medians of five) with this cap;
/// 256 KiB and 768 KiB did less well.
const LOCAL_FLIGHT: usize = 512 * 1024;

/// Most doublings of the probe timeout (`Connection::tlp_backoff`); the
/// RTO bounds it anyway.
const MAX_TLP_BACKOFF: u32 = 6;

/// The reordering window grows to at most this many quarters of the
/// smoothed RTT (RFC 8985 caps it at one RTT).
const REO_WND_MAX_MULT: u32 = 4;

/// The packet and duplicate-ack thresholds rise to at most this (Linux's
/// `tcp_max_reordering`).
const MAX_REORDER_DIST: u64 = 300;

/// Loss episodes without a spurious retransmission before the reordering
/// window shrinks back (RFC 8985's 16).
const REO_WND_PERSIST: u32 = 16;

/// Why a connection failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum ConnectionError {
    /// The peer answered our SYN with a RESET, or its host reported that
    /// nothing listens on its port (ICMP port unreachable).
    #[error("connection refused by peer")]
    Refused,
    /// The peer reset an established connection.
    #[error("connection reset by peer")]
    Reset,
    /// The handshake or a retransmission gave up.
    #[error("connection timed out")]
    TimedOut,
    /// The OS could not send our SYN towards the peer at all (no route to
    /// its network or host, an address it cannot reach from here).
    #[error("peer unreachable from this host")]
    Unreachable,
}

/// Which side opened the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// We sent the SYN.
    Initiator,
    /// We answered a SYN.
    Responder,
}

/// Coarse connection state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// SYN sent, waiting for the SYN-ACK.
    SynSent,
    /// SYN answered, the initiator has not spoken since.
    SynRecv,
    /// Established (either direction may be finished).
    Connected,
    /// Both directions finished; the id stays reserved until the deadline.
    TimeWait,
    /// Failed with an error.
    Failed(ConnectionError),
    /// Nothing left to do; the endpoint may free it.
    Done,
}

/// Per-connection counters, readable at any time.
#[derive(Debug, Clone, Default, PartialEq)]
#[non_exhaustive]
pub struct ConnectionStats {
    /// Payload bytes handed to the network (first transmissions only).
    pub bytes_sent: u64,
    /// In-order payload bytes received.
    pub bytes_received: u64,
    /// Datagrams sent (all types, retransmissions included).
    pub packets_sent: u64,
    /// Datagrams received for this connection.
    pub packets_received: u64,
    /// Packets sent again (fast retransmit or timeout).
    pub packets_retransmitted: u64,
    /// Retransmission timeouts that fired.
    pub timeouts: u64,
    /// Fast retransmits (duplicate acks or SACK evidence).
    pub fast_retransmits: u64,
    /// Packets declared lost needlessly: acknowledged before their resend
    /// went out, or sooner after it than any round trip so far (so the ack
    /// was for an earlier copy). They tell loss detection that the path
    /// reorders, and widen its reordering window.
    pub spurious_retransmits: u64,
    /// Zero-window probes the peer could not take, sent again (flow
    /// control, not counted as timeouts or congestion).
    pub zero_window_probes: u64,
    /// Tail loss probes sent (the newest packet resent after ~2 RTTs of silence).
    pub tail_loss_probes: u64,
    /// Data packets received that were already held or delivered.
    pub duplicates_received: u64,
    /// Packets ignored because they acked data never sent (also in
    /// `drops.ack_beyond_sent`).
    pub invalid_acks: u64,
    /// Data packets dropped: outside the receive window or buffer full
    /// (`drops.seq_out_of_window`, `drops.recv_buffer_full` and
    /// `drops.reorder_memory_full`).
    pub dropped_out_of_window: u64,
    /// Everything ignored, by reason.
    pub drops: DropStats,
    /// Smoothed round-trip time.
    pub rtt: Option<Duration>,
    /// Current congestion window in bytes.
    pub cwnd: usize,
    /// Largest congestion window seen.
    pub max_cwnd: usize,
    /// Payload size in use for new packets (bytes per full packet): path
    /// MTU discovery's confirmed size.
    pub payload_size: usize,
    /// The delay-based controller's state (LEDBAT: base delay, queueing
    /// delay, target); `None` for loss-based controllers or before the
    /// first delay sample.
    pub delay: Option<DelayState>,
    /// Path MTU probes sent (padded one-byte data packets).
    pub pmtud_probes: u64,
    /// Path MTU probes lost (not counted as congestion).
    pub pmtud_probes_lost: u64,
    /// Times the payload size fell back because full-size packets were
    /// black-holed.
    pub pmtud_black_holes: u64,
    /// How long the last completed path MTU search took.
    pub pmtud_search_time: Option<Duration>,
    /// Largest payload actually sent in one packet.
    pub max_payload_sent: usize,
    /// Peer's last advertised receive window.
    pub peer_window: u32,
    /// Bytes currently in flight.
    pub bytes_in_flight: usize,
    /// Bytes written by the application and not yet acknowledged by the
    /// peer (queued, in flight, or waiting for retransmission).
    pub bytes_unacked: usize,
    /// Close reason reported by the peer (libtorrent extension 3).
    pub peer_close_reason: Option<u16>,
    /// The close completed without an ack of our FIN: the peer had sent its
    /// own FIN, all our data was acked, and it stopped answering (libtorrent
    /// forgets a connection once its FIN is acked). The FIN is still resent
    /// for a few seconds after that; an ack then clears this again.
    pub fin_unacknowledged: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FinState {
    None,
    /// Requested; goes out once all queued data is packetized.
    Queued,
    Sent,
    Acked,
}

#[derive(Debug)]
struct Sent {
    seq: u16,
    ty: PacketType,
    payload: Bytes,
    last_sent: Instant,
    transmissions: u32,
    /// Monotonic transmission counter of the latest send (a packet number).
    tx_index: u64,
    sacked: bool,
    /// Counted in `in_flight` (sent and neither acked nor declared lost).
    in_flight: bool,
    /// Declared lost and queued for retransmission.
    lost: bool,
    /// Out of `in_flight` without being declared lost: past the SACK's
    /// reach, and sent well before a packet whose resend was acked (see
    /// `Connection::detect_losses`). Judged again once the SACK can report
    /// it.
    parked: bool,
    /// Path MTU probe: padding bytes of its first transmission (0 for
    /// ordinary packets). Cleared when resent: a probe's one byte of data
    /// goes again unpadded.
    pad: usize,
    /// Its latest transmission's receive-buffer charge, counted in
    /// `Connection::in_flight` while `in_flight`.
    cost: usize,
}

/// Black-hole detection by contrast (RFC 8899 section 4.3). When a timer
/// (tail loss probe, RTO) declares a full-size packet lost, the oldest
/// unacknowledged packet (full-size) is resent and followed by an empty
/// data packet, padded to the fall-back size, carrying a sequence number
/// the peer already acknowledged: every stack acks such a duplicate at
/// once, and it needs no new sequence number, no reorder-buffer room and no
/// SACK reach. If that ack comes while
/// the resent full-size packet is still unacknowledged, that is one piece of
/// evidence; three in a row with no full-size packet acknowledged in between
/// make a black hole and the size falls back. Packets lost before the timer
/// prove nothing (a drop-tail burst loses large packets first); a random
/// loss of the one resend is why one piece of evidence is not enough.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BlackHoleCheck {
    Idle,
    /// Goes out with the next transmission, after the resend of `big`.
    Due {
        big: u16,
    },
    /// Sent; its ack tells whether `big` got through.
    Sent {
        big: u16,
    },
    /// Answered: unless `big` is acknowledged by `decide_at` (one more
    /// round trip, for a reordered `big`), that is evidence.
    Answered {
        big: u16,
        decide_at: Instant,
    },
}

/// One uTP connection.
pub struct Connection {
    cfg: Arc<Config>,
    role: Role,
    state: State,
    epoch: Instant,
    recv_id: u16,
    send_id: u16,
    mss: usize,
    /// Path MTU search; `mss` follows its confirmed size.
    pmtud: Pmtud,
    /// The datagram last returned by poll_transmit is larger than the
    /// current path MTU (sent before a fall-back): send it without DF.
    fragmentable: bool,
    /// Set during `poll_transmit_split`: a large payload is handed out as
    /// `split_payload` instead of being copied behind the header.
    split: bool,
    split_payload: Option<Bytes>,
    /// A probe was lost: ask the OS whether ICMP taught it a smaller path
    /// MTU (see `take_path_query`).
    path_query: bool,
    /// Whether this connection may send path MTU probes now (the endpoint
    /// lets one connection per peer address search at a time).
    probing_allowed: bool,
    /// Black-hole check (see `on_large_timer_loss`).
    bh_check: BlackHoleCheck,
    /// After a fall-back, no new check until every packet sent before it
    /// (this sequence number on) is delivered: their resends crowd the path
    /// and would look like a second black hole at the new size.
    bh_quiet_until: Option<u16>,
    /// At the base size, no black-hole check before this (see
    /// `decide_check`).
    bh_base_rest_until: Option<Instant>,

    // Handshake.
    syn_seq: u16,
    syn_send: bool,
    syn_sent_at: Option<Instant>,
    syn_transmissions: u32,
    syn_retx_at: Option<Instant>,
    connect_deadline: Option<Instant>,
    /// Responder: our SYN-ACK's seq (our ISN) and whether it is due. The
    /// SYN-ACK always goes out as its own ST_STATE carrying this seq, even
    /// when re-sent after data: the initiator's ack_nr starts at seq - 1.
    synack_seq: u16,
    synack_pending: bool,
    /// Responder: new DATA and FIN wait until the initiator's first packet
    /// shows it has the SYN-ACK, or until this deadline (see `SYN_RECV_HOLD`).
    hold_until: Option<Instant>,
    /// Responder still to send a SYN-ACK copy ahead of its first DATA/FIN
    /// (while the initiator has not spoken).
    synack_copy: bool,
    /// Initiator: DATA/FIN that overtook the SYN-ACK, replayed after it.
    early: Vec<(Header, Bytes)>,

    // Send side.
    seq_nr: u16,
    pending: SendQueue,
    pacer: Pacer,
    /// New data waits for the pacer or an upload limit until then.
    paced_until: Option<Instant>,
    limits: ConnLimits,
    /// A download limit holds reads back until then.
    read_limited_until: Option<Instant>,
    /// When an idle connection lets go of its spare send chunks and its
    /// drained receive tail. Not at once: a bulk sender is briefly
    /// app-limited many times a second, fresh chunks cost a page fault per
    /// 4 KiB the application writes, and a request/response stream drains
    /// its receive tail with every message.
    spare_release_at: Option<Instant>,
    /// The latest time the connection was told (reads have no clock).
    clock: Instant,
    outstanding: VecDeque<Sent>,
    /// Payload bytes in `outstanding` (sacked ones included): the send
    /// buffer's share of unacknowledged data, kept as a running sum.
    outstanding_bytes: usize,
    resend: VecDeque<u16>,
    /// Packets sent and neither acknowledged nor declared lost: their
    /// payload bytes and receive-buffer charge (see
    /// `flight::receive_buffer_cost`).
    in_flight: FlightSize,
    /// What the endpoint lets this connection add to its peer's data in
    /// flight (see [`Connection::set_peer_room`]).
    peer_room: FlightSize,
    peer_share: usize,
    peer_wnd: u32,
    peer_wnd_known: bool,
    /// ack_nr and timestamp of the packet whose window we use: a reordered
    /// older packet must not bring back a stale (larger) window.
    wnd_ack: u16,
    wnd_ts: u32,
    cc: Box<dyn Controller>,
    rtt: RttEstimator,
    rto_deadline: Option<Instant>,
    /// Tail loss probe: resend the newest packet after ~2 RTTs of silence so
    /// the peer's SACK reveals losses at the tail, long before the RTO.
    tlp_deadline: Option<Instant>,
    tlp_fired: bool,
    /// The probe may be sent once regardless of the congestion window.
    tlp_credit: bool,
    /// Doublings of the probe timeout. A probe answered by an ack that may
    /// be the original's (Karn: no sample) may have gone too early; as for
    /// the RTO (RFC 6298), the longer timeout stays until a packet sent
    /// once is acked.
    tlp_backoff: u32,
    /// A retransmission timeout fired since a packet sent once was last
    /// acked: its backoff stays until one is (Karn, RFC 6298), since an ack
    /// of a resent packet may answer the original, and a timeout that was
    /// too short would be too short again. (A zero-window probe's backoff
    /// is flow control and ends with any progress.)
    karn_hold: bool,
    consecutive_timeouts: u32,
    dup_acks: u32,
    last_ack_seen: u16,
    /// The packet last resent on duplicate acks; not resent again that way.
    dup_ack_resent: Option<u16>,
    tx_counter: u64,
    largest_acked_tx: u64,
    recovery_point: Option<u16>,
    /// RACK (RFC 8985) reordering state. The path delivered a packet after
    /// a later-sent one, or acked a packet sooner after its retransmission
    /// than a round trip: it reorders, so the time rule's window widens.
    reordering_seen: bool,
    /// The farthest a packet was seen delivered behind later-sent ones, in
    /// transmissions: the packet and duplicate-ack thresholds rise past it
    /// (as Linux's `tp->reordering` does), so the counts only declare
    /// packets lost that reordering does not explain.
    reorder_dist: u64,
    /// The reordering window is `reo_wnd_mult` quarters of the smoothed RTT
    /// (at most one RTT): raised by each round trip with a spurious
    /// retransmission, back to 1 after `REO_WND_PERSIST` loss episodes
    /// without one.
    reo_wnd_mult: u32,
    reo_wnd_persist: u32,
    /// No second raise until the cumulative ack passes this seq_nr (one
    /// per round trip, as RFC 8985 does with its DSACK round).
    spurious_round: Option<u16>,
    /// The loss episode whose window cut can still be undone:
    /// (first packet declared lost, recovery point, packets declared lost
    /// and not yet proven to have arrived). At zero the cut is undone.
    undo: Option<(u16, u16, u32)>,
    probe_allowed: bool,
    fin: FinState,

    // Receive side.
    ack_nr: u16,
    reorder: VecDeque<Option<Bytes>>,
    reorder_bytes: usize,
    /// Most out-of-order bytes this connection may hold now: its share of
    /// [`Config::reorder_memory`] left by the others (the endpoint sets it).
    reorder_room: usize,
    ready: VecDeque<Bytes>,
    /// In-order bytes after `ready`, from small packets (see `push_ready`).
    ready_tail: BytesMut,
    ready_bytes: usize,
    peer_fin: Option<u16>,
    eof: bool,
    ack_pending: bool,
    /// Until when the pending ack may wait for data to carry it (a lone
    /// small packet: see `Config::ack_delay`).
    ack_held_until: Option<Instant>,
    /// A second copy of the last ack, carrying our FIN's seq (see poll_transmit).
    ack_echo_pending: bool,
    /// The receive buffer in use: `Config::recv_buffer`, or
    /// `Config::backlog_recv_buffer` while the connection waits to be
    /// accepted (see `set_waiting_for_accept`).
    recv_cap: usize,
    last_wnd_sent: u32,
    /// The window of the latest ack (duplicate acks must repeat it).
    last_wnd_seen: u32,
    reply_micro: u32,
    last_recv: Instant,
    /// When we last sent anything (keep-alives go out after silence).
    last_sent: Instant,

    // Teardown.
    released: bool,
    /// Our FIN, all that is left after the peer's FIN, went unanswered
    /// `FIN_ONLY_COPIES` times (`FIN_ONLY_TIMEOUTS` without an RTT sample):
    /// the close is complete for the application
    /// (libtorrent forgets a connection once its own FIN is acked, and
    /// never answers ours), but the FIN is still resent until acked, reset
    /// or `max_timeouts`, since a peer that is still there and lost every
    /// copy so far would otherwise wait for its EOF forever.
    fin_presumed: bool,
    /// Probe timeouts while our FIN was all that was left (each but the
    /// last sends a copy; see `FIN_ONLY_COPIES`).
    fin_only_copies: u32,
    /// When the peer acked our FIN (see `keepalive_at`).
    fin_acked_at: Option<Instant>,
    time_wait_until: Option<Instant>,
    linger_until: Option<Instant>,

    stats: ConnectionStats,
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("role", &self.role)
            .field("state", &self.state)
            .field("recv_id", &self.recv_id)
            .field("send_id", &self.send_id)
            .field("seq_nr", &self.seq_nr)
            .field("ack_nr", &self.ack_nr)
            .finish_non_exhaustive()
    }
}

impl Connection {
    fn new(
        cfg: Arc<Config>,
        role: Role,
        now: Instant,
        epoch: Instant,
        recv_id: u16,
        send_id: u16,
        seq_nr: u16,
    ) -> Self {
        let pmtud = Pmtud::new(cfg.pmtud_config(), now);
        let mss = pmtud.current() - HEADER_LEN;
        let cc = cfg.controller.build(mss);
        let rtt = RttEstimator::new(cfg.initial_rto, cfg.min_rto, cfg.max_rto);
        Self {
            role,
            state: State::SynSent,
            epoch,
            recv_id,
            send_id,
            mss,
            pmtud,
            fragmentable: false,
            split: false,
            split_payload: None,
            probing_allowed: true,
            path_query: false,
            bh_check: BlackHoleCheck::Idle,
            bh_base_rest_until: None,
            bh_quiet_until: None,
            syn_seq: 0,
            syn_send: false,
            syn_sent_at: None,
            syn_transmissions: 0,
            syn_retx_at: None,
            connect_deadline: None,
            synack_seq: seq_nr,
            synack_pending: false,
            hold_until: None,
            synack_copy: false,
            early: Vec::new(),
            seq_nr,
            pending: SendQueue::default(),
            pacer: Pacer::default(),
            paced_until: None,
            limits: ConnLimits::new(
                SharedLimits::default(),
                cfg.upload_limit,
                cfg.download_limit,
            ),
            read_limited_until: None,
            spare_release_at: None,
            clock: now,
            outstanding: VecDeque::new(),
            outstanding_bytes: 0,
            resend: VecDeque::new(),
            in_flight: FlightSize::default(),
            peer_room: FlightSize::UNLIMITED,
            peer_share: usize::MAX,
            peer_wnd: 0,
            peer_wnd_known: false,
            wnd_ack: 0,
            wnd_ts: 0,
            cc,
            rtt,
            rto_deadline: None,
            tlp_deadline: None,
            tlp_fired: false,
            tlp_credit: false,
            tlp_backoff: 0,
            karn_hold: false,
            consecutive_timeouts: 0,
            dup_acks: 0,
            last_ack_seen: 0,
            dup_ack_resent: None,
            tx_counter: 0,
            largest_acked_tx: 0,
            recovery_point: None,
            reordering_seen: false,
            reorder_dist: 0,
            reo_wnd_mult: 1,
            reo_wnd_persist: 0,
            spurious_round: None,
            undo: None,
            probe_allowed: false,
            fin: FinState::None,
            ack_nr: 0,
            reorder: VecDeque::new(),
            reorder_bytes: 0,
            reorder_room: usize::MAX,
            ready: VecDeque::new(),
            ready_tail: BytesMut::new(),
            ready_bytes: 0,
            peer_fin: None,
            eof: false,
            ack_pending: false,
            ack_held_until: None,
            ack_echo_pending: false,
            recv_cap: cfg.recv_buffer,
            last_wnd_sent: cfg.recv_buffer as u32,
            last_wnd_seen: 0,
            reply_micro: 0,
            last_recv: now,
            last_sent: now,
            released: false,
            fin_presumed: false,
            fin_only_copies: 0,
            fin_acked_at: None,
            time_wait_until: None,
            linger_until: None,
            stats: ConnectionStats {
                payload_size: mss,
                ..Default::default()
            },
            cfg,
        }
    }

    /// A connection that will send a SYN with connection id `recv_id` and
    /// sequence number `isn`.
    pub fn connect(cfg: Arc<Config>, now: Instant, epoch: Instant, recv_id: u16, isn: u16) -> Self {
        let deadline = now + cfg.connect_timeout;
        let mut c = Self::new(
            cfg,
            Role::Initiator,
            now,
            epoch,
            recv_id,
            recv_id.wrapping_add(1),
            isn.wrapping_add(1),
        );
        c.syn_seq = isn;
        c.syn_send = true;
        c.connect_deadline = Some(deadline);
        c.last_ack_seen = isn;
        c
    }

    /// A connection answering `syn` (which must be an ST_SYN); our first
    /// sequence number is `isn`. The SYN-ACK is queued for transmission.
    pub fn accept(cfg: Arc<Config>, now: Instant, epoch: Instant, syn: &Header, isn: u16) -> Self {
        let mut c = Self::new(
            cfg,
            Role::Responder,
            now,
            epoch,
            syn.conn_id.wrapping_add(1),
            syn.conn_id,
            isn,
        );
        c.state = State::SynRecv;
        c.syn_seq = syn.seq_nr;
        c.ack_nr = syn.seq_nr;
        c.synack_pending = true;
        c.hold_until = Some(now + SYN_RECV_HOLD);
        c.synack_copy = true;
        // An initiator that never speaks again must not pin us forever.
        c.connect_deadline = Some(now + c.cfg.connect_timeout);
        c.last_ack_seen = isn.wrapping_sub(1);
        c.reply_micro = c.micros(now).wrapping_sub(syn.timestamp);
        c.stats.packets_received = 1;
        c
    }

    fn micros(&self, now: Instant) -> u32 {
        now.saturating_duration_since(self.epoch).as_micros() as u32
    }

    /// Which side opened the connection.
    pub fn role(&self) -> Role {
        self.role
    }

    /// Current state.
    pub fn state(&self) -> State {
        self.state
    }

    /// The connection id we receive on.
    pub fn recv_id(&self) -> u16 {
        self.recv_id
    }

    /// The connection id we send with.
    pub fn send_id(&self) -> u16 {
        self.send_id
    }

    /// The error the connection failed with, if any.
    pub fn error(&self) -> Option<ConnectionError> {
        match self.state {
            State::Failed(e) => Some(e),
            _ => None,
        }
    }

    /// Limits this connection's upload, in payload bytes per second
    /// (`None`: unlimited); the endpoint's shared limit applies as well.
    pub fn set_upload_limit(&mut self, rate: Option<u64>) {
        self.limits.up = rate.map(TokenBucket::new);
    }

    /// Limits this connection's download, in payload bytes per second
    /// (`None`: unlimited): reads are metered, so the receive buffer fills
    /// and the advertised window shrinks until the peer slows down.
    pub fn set_download_limit(&mut self, rate: Option<u64>) {
        self.limits.down = rate.map(TokenBucket::new);
    }

    /// This connection's own (upload, download) limits.
    pub fn rate_limits(&self) -> (Option<u64>, Option<u64>) {
        (
            self.limits.up.as_ref().map(TokenBucket::rate),
            self.limits.down.as_ref().map(TokenBucket::rate),
        )
    }

    pub(crate) fn set_shared_limits(&mut self, shared: SharedLimits) {
        self.limits.set_shared(shared);
    }

    /// While an incoming connection waits in the accept queue, it takes
    /// at most `Config::backlog_recv_buffer` of data (its window says so);
    /// once accepted, its whole `Config::recv_buffer`. A peer the smaller
    /// window held up (under half of it left) learns of the larger one at
    /// once; one that sent little learns with the next ack.
    pub(crate) fn set_waiting_for_accept(&mut self, waiting: bool) {
        let (was, full) = (self.recv_cap, self.cfg.recv_buffer);
        self.recv_cap = if waiting {
            self.cfg.backlog_recv_buffer.min(full)
        } else {
            full
        };
        let held_up = (self.last_wnd_sent as usize) < was / 2;
        if self.recv_cap > was && held_up && self.is_established() {
            self.ack_now();
        }
    }

    /// Tells the connection the time before an application call (reads
    /// meter the download against it).
    pub(crate) fn observe(&mut self, now: Instant) {
        self.clock = self.clock.max(now);
    }

    /// Whether the handshake is complete (from our side's view).
    pub fn is_established(&self) -> bool {
        !matches!(self.state, State::SynSent | State::Failed(_))
    }

    /// Packets ignored so far, by reason (cheaper than [`Connection::stats`]).
    pub fn drop_stats(&self) -> &DropStats {
        &self.stats.drops
    }

    /// Counters and current figures.
    pub fn stats(&self) -> ConnectionStats {
        let mut s = self.stats.clone();
        s.rtt = self.rtt.srtt();
        s.cwnd = self.cc.window();
        s.peer_window = self.peer_wnd;
        s.bytes_in_flight = self.in_flight.bytes;
        s.bytes_unacked = self.queued_bytes();
        s.max_cwnd = s.max_cwnd.max(s.cwnd);
        s.delay = self.cc.delay_state();
        s.payload_size = self.mss;
        s.pmtud_black_holes = self.pmtud.black_holes();
        s.pmtud_search_time = self.pmtud.last_search_duration();
        s
    }

    // ------------------------------------------------------- path MTU hooks

    /// The largest datagram the OS can send towards the peer (the route's
    /// MTU minus IP and UDP headers): caps path MTU discovery.
    pub fn set_max_datagram(&mut self, now: Instant, size: usize) {
        self.pmtud.set_ceiling(size, now);
        self.sync_mss();
    }

    /// The OS refused a datagram as too big (EMSGSIZE) or reported a
    /// smaller path MTU: `size` is the largest datagram that can leave.
    pub fn on_datagram_too_big(&mut self, now: Instant, size: usize) {
        self.pmtud.on_too_big(size, now);
        self.sync_mss();
    }

    /// A router reported that our packet `seq` did not fit a link: at most
    /// `max` bytes per datagram pass (see
    /// [`Endpoint::handle_too_big`](crate::Endpoint::handle_too_big)).
    /// Taken only if `seq` is unacknowledged and was sent larger than
    /// `max`; then the size drops to `max` (never below the search's
    /// minimum) and every packet in flight that is larger is resent now.
    /// Returns whether the report was taken.
    pub fn handle_too_big(&mut self, now: Instant, seq: u16, max: usize) -> bool {
        let front = self.seq_nr.wrapping_sub(self.outstanding.len() as u16);
        if self.outstanding.is_empty() || seq::lt(seq, front) || !seq::lt(seq, self.seq_nr) {
            return false;
        }
        let Some(p) = self.outstanding.get(seq::ahead(seq, front) as usize) else {
            return false;
        };
        if p.sacked || HEADER_LEN + p.pad + p.payload.len() <= max {
            return false;
        }
        tracing::debug!(
            recv_id = self.recv_id,
            seq,
            max,
            "packet too big for the path"
        );
        self.lower_for_too_big(now, max);
        true
    }

    /// Another connection to the same peer address took a "packet too big"
    /// report (see [`Connection::handle_too_big`]): the path is the same,
    /// so this one drops to `max` too if it is larger, rather than wait for
    /// a report of its own (routers rate-limit them) or find a black hole
    /// by losses. Returns whether it changed anything.
    pub(crate) fn path_too_big(&mut self, now: Instant, max: usize) -> bool {
        if self.datagram_size() <= max || !matches!(self.state, State::Connected) {
            return false;
        }
        self.lower_for_too_big(now, max);
        true
    }

    fn lower_for_too_big(&mut self, now: Instant, max: usize) {
        self.pmtud.on_too_big(max, now);
        self.sync_mss();
        self.resend_oversized();
        // Their resends would look like a black hole at the new size.
        self.bh_quiet_until = Some(self.seq_nr);
    }

    /// The path changed (new route): search again from the base size.
    pub fn reset_path_mtu(&mut self, now: Instant) {
        self.pmtud.reset(now);
        self.sync_mss();
    }

    /// Whether the datagram last returned by [`Connection::poll_transmit`]
    /// is larger than the current path MTU: a packet sent before a fall-back
    /// and now resent. Its sequence number fixes its size, so it can only
    /// pass a shrunk path with fragmentation allowed (no DF bit).
    pub fn transmit_fragmentable(&self) -> bool {
        self.fragmentable
    }

    /// Whether the connection wants the OS's current idea of the path MTU
    /// (cleared by the call): a probe was lost, and where ICMP "packet too
    /// big" gets through the kernel has learnt the path MTU by then. The
    /// I/O layer answers with [`Connection::set_max_datagram`]; nothing
    /// depends on an answer.
    pub fn take_path_query(&mut self) -> bool {
        std::mem::take(&mut self.path_query)
    }

    /// Keeps the payload size (and the controller's idea of it) in step
    /// with the path MTU search.
    /// The datagram size in use, as path MTU discovery confirmed it.
    pub fn datagram_size(&self) -> usize {
        self.pmtud.current()
    }

    /// Whether a path MTU probe of this connection is unanswered.
    pub fn is_probing(&self) -> bool {
        self.pmtud.probing()
    }

    /// Another connection to the same peer address confirmed datagrams of
    /// `size` bytes: this one uses them too, without probing for them.
    pub fn adopt_datagram_size(&mut self, size: usize, now: Instant) {
        self.pmtud.adopt(size, now);
        self.sync_mss();
    }

    /// Lets this connection send path MTU probes, or holds them back (the
    /// endpoint lets one connection per peer address search at a time:
    /// a thousand connections each probing with 64 KiB datagrams at once
    /// overflowed the peer's socket buffer).
    pub fn set_probing_allowed(&mut self, allowed: bool) {
        self.probing_allowed = allowed;
    }

    fn sync_mss(&mut self) {
        let mss = self.pmtud.current().saturating_sub(HEADER_LEN).max(1);
        if mss != self.mss {
            tracing::debug!(
                recv_id = self.recv_id,
                from = self.mss,
                to = mss,
                "payload size"
            );
            self.mss = mss;
            self.cc.set_mss(mss);
        }
    }

    // ---------------------------------------------------------------- app side

    /// Queues bytes for sending; returns how many were accepted (0 when the
    /// send buffer is full). Fails once the connection failed or was closed.
    pub fn write(&mut self, data: &[u8]) -> Result<usize, WriteError> {
        self.check_writable()?;
        let n = self.write_room().min(data.len());
        self.pending.push(&data[..n]);
        Ok(n)
    }

    /// Like [`Connection::write`], without copying: queues as much of
    /// `data` as there is room for, split off its front (`data` keeps the
    /// rest), and returns how much that was. Packets are cut from those
    /// bytes themselves and hold them until acknowledged. (Pieces under
    /// 4 KiB are copied: one chunk per few bytes would cost more.)
    pub fn write_bytes(&mut self, data: &mut Bytes) -> Result<usize, WriteError> {
        self.check_writable()?;
        let n = self.write_room().min(data.len());
        if n > 0 {
            self.pending.push_lent(data.split_to(n));
        }
        Ok(n)
    }

    /// [`Connection::write`] in two steps, for a caller that copies outside
    /// a lock (the copy, and the page faults of fresh memory, then do not
    /// hold up everybody else): returns room for at most `max` bytes and how
    /// many to copy into it (`None` when the send buffer is full). Copy
    /// with `extend_from_slice` (never more than that), then
    /// [`Connection::write_commit`]. One reservation at a time.
    pub fn write_reserve(&mut self, max: usize) -> Result<Option<(BytesMut, usize)>, WriteError> {
        self.check_writable()?;
        let n = self.write_room().min(max);
        if n == 0 {
            return Ok(None);
        }
        let buf = self.pending.reserve(n);
        let n = n.min(buf.capacity() - buf.len());
        // The caller's write returns n: 0 would read as "write zero".
        debug_assert!(n > 0, "a reservation of no room");
        Ok(Some((buf, n)))
    }

    /// Queues what was copied into a [`Connection::write_reserve`] region;
    /// returns how many bytes that was. Fails (dropping them) when the
    /// connection failed or was closed meanwhile.
    pub fn write_commit(&mut self, data: BytesMut) -> Result<usize, WriteError> {
        if let Err(e) = self.check_writable() {
            self.pending.cancel();
            return Err(e);
        }
        let n = data.len();
        self.pending.commit(data);
        Ok(n)
    }

    fn check_writable(&self) -> Result<(), WriteError> {
        if let Some(e) = self.error() {
            return Err(WriteError::Failed(e));
        }
        if self.fin != FinState::None || matches!(self.state, State::TimeWait | State::Done) {
            return Err(WriteError::Closed);
        }
        Ok(())
    }

    /// How many more bytes a write may queue now.
    fn write_room(&self) -> usize {
        self.send_limit().saturating_sub(self.queued_bytes())
    }

    /// Bytes the application wrote that the peer has not acknowledged yet.
    fn queued_bytes(&self) -> usize {
        self.pending.len() + self.outstanding_bytes
    }

    /// Whether `write` would accept at least one byte now.
    pub fn is_writable(&self) -> bool {
        self.error().is_some()
            || self.fin != FinState::None
            || self.queued_bytes() < self.send_limit()
    }

    /// How many unacknowledged bytes the application may queue: the send
    /// buffer, but no more than a few windows' worth. Bytes queued far ahead
    /// of the window only occupy memory (as TCP sizes its send buffer from
    /// the window); with many connections that is memory the application's
    /// writes fault in afresh, where a short queue cycles through warm
    /// chunks. Many connections to one peer share its flight limit, so the
    /// window here is at most this connection's fair share of it.
    fn send_limit(&self) -> usize {
        let by_window = self.cc.window().min(self.peer_share).saturating_mul(2);
        let limit = self.cfg.send_buffer.min(by_window.max(MIN_SEND_LIMIT));
        // Whole packets: 64 KiB of 65,487-byte packets would leave 49 bytes
        // to a packet of their own each time.
        if limit >= self.mss {
            limit - limit % self.mss
        } else {
            limit
        }
    }

    /// Copies received in-order bytes into `buf`. `Ok(0)` with a non-empty
    /// `buf` means end of stream only when [`Connection::is_eof`]; otherwise
    /// nothing is available yet.
    pub fn read(&mut self, buf: &mut [u8]) -> Result<usize, ConnectionError> {
        let Some(limit) = self.read_allowance(buf.len()) else {
            return Ok(0);
        };
        let n = self.read_unlimited(&mut buf[..limit])?;
        self.limits.on_download(n);
        Ok(n)
    }

    /// Like [`Connection::read`], for a caller that copies outside a lock:
    /// hands out at most `max` bytes as up to `out.len()` pieces of the
    /// receive buffers (no copy), and returns the bytes and the pieces
    /// filled. The window opens as if they had been read.
    pub fn read_pieces(
        &mut self,
        max: usize,
        out: &mut [Bytes],
    ) -> Result<(usize, usize), ConnectionError> {
        let Some(limit) = self.read_allowance(max) else {
            return Ok((0, 0));
        };
        let (mut n, mut k) = (0, 0);
        while n < limit && k < out.len() {
            let Some(front) = self.ready.front_mut() else {
                break;
            };
            let take = front.len().min(limit - n);
            out[k] = if take == front.len() {
                self.ready.pop_front().expect("front exists")
            } else {
                front.split_to(take)
            };
            n += take;
            k += 1;
        }
        if n < limit && k < out.len() && self.ready.is_empty() && !self.ready_tail.is_empty() {
            let take = self.ready_tail.len().min(limit - n);
            out[k] = self.ready_tail.split_to(take).freeze();
            n += take;
            k += 1;
        }
        let n = self.finish_read(n)?;
        self.limits.on_download(n);
        Ok((n, k))
    }

    /// How much a read of up to `len` bytes may take under the download
    /// limits; `None` (with a timer armed to try again) when nothing.
    fn read_allowance(&mut self, len: usize) -> Option<usize> {
        // Reads go in chunks of at least 8 KiB (or what is there): waking
        // for every few bytes the bucket refills would be all overhead.
        let want = self.readable_bytes().min(len).min(8 * 1024);
        let allowed = self.limits.download_allowance(self.clock);
        if want > 0 && allowed < want {
            let wait = self.limits.download_delay(self.clock, want);
            self.read_limited_until = Some(self.clock + wait);
            return None;
        }
        Some(len.min(allowed))
    }

    fn read_unlimited(&mut self, buf: &mut [u8]) -> Result<usize, ConnectionError> {
        let mut n = 0;
        while n < buf.len() {
            let Some(front) = self.ready.front_mut() else {
                break;
            };
            let take = front.len().min(buf.len() - n);
            buf[n..n + take].copy_from_slice(&front[..take]);
            n += take;
            if take == front.len() {
                self.ready.pop_front();
            } else {
                let _ = front.split_to(take);
            }
        }
        if n < buf.len() && self.ready.is_empty() && !self.ready_tail.is_empty() {
            let take = self.ready_tail.len().min(buf.len() - n);
            buf[n..n + take].copy_from_slice(&self.ready_tail[..take]);
            bytes::Buf::advance(&mut self.ready_tail, take);
            n += take;
        }
        self.finish_read(n)
    }

    /// Accounts for `n` bytes read: buffers, the error to report, and the
    /// window update a stalled sender needs.
    fn finish_read(&mut self, n: usize) -> Result<usize, ConnectionError> {
        self.ready_bytes -= n;
        if self.ready_bytes == 0 {
            if self.ready_tail.capacity() == 0 {
                // No room left to reuse (or only a share of an allocation
                // handed out): let go of it now.
                self.ready_tail = BytesMut::new();
            } else {
                // Drained: the tail's room is reused in place by the next
                // small packets (request/response traffic would otherwise
                // allocate and free it for every message); an idle
                // connection lets go of it after `SPARE_LINGER` (see
                // `refresh`).
                self.ready_tail.clear();
            }
        }
        if n == 0 {
            if let Some(e) = self.error() {
                if !self.eof {
                    return Err(e);
                }
            }
        }
        // Tell a sender stalled on our window that room opened up: once half
        // the buffer is free (fewer, bigger updates), or with a download
        // limit metering the reads, once a few packets fit (the room grows
        // slowly then, and a stalled sender would wait for its persist timer).
        let wnd = self.recv_window();
        let mut threshold = (self.recv_cap / 2) as u32;
        if self.limits.download_limited() {
            threshold = threshold.min((8 * self.mss) as u32);
        }
        if n > 0 && self.last_wnd_sent < threshold && wnd >= threshold && self.is_established() {
            self.ack_now();
        }
        Ok(n)
    }

    /// Bytes ready to be read.
    pub fn readable_bytes(&self) -> usize {
        self.ready_bytes
    }

    /// Whether all data up to the peer's FIN has been read.
    pub fn is_eof(&self) -> bool {
        self.eof && self.ready_bytes == 0
    }

    /// Whether `read` has something to report (data, EOF or an error).
    pub fn is_readable(&self) -> bool {
        self.ready_bytes > 0 || self.eof || self.error().is_some()
    }

    /// Finishes our direction: a FIN follows the queued data. Idempotent.
    pub fn close(&mut self) {
        if self.fin == FinState::None && !matches!(self.state, State::Failed(_) | State::Done) {
            self.fin = FinState::Queued;
        }
    }

    /// Whether our FIN has been acknowledged (all our data was delivered).
    pub fn is_fin_acked(&self) -> bool {
        self.fin == FinState::Acked || self.fin_presumed
    }

    /// Whether the peer's FIN and all data before it have arrived (unread
    /// data may remain).
    pub fn is_peer_finished(&self) -> bool {
        self.eof
    }

    /// The application let go of the connection: finish it gracefully and
    /// discard what arrives from now on.
    pub fn release(&mut self, now: Instant) {
        self.released = true;
        self.ready.clear();
        self.ready_tail = BytesMut::new();
        self.ready_bytes = 0;
        match self.state {
            // Nothing was agreed yet: just forget it.
            State::SynSent | State::Failed(_) => self.state = State::Done,
            _ => {
                self.close();
                self.update_teardown(now);
            }
        }
    }

    /// The application aborts the connection: unsent and unread data are
    /// discarded, nothing more is sent or retransmitted, and the connection
    /// is released (the endpoint frees it). Returns the RESET that tells the
    /// peer, `None` when the peer holds nothing to reset (no SYN went out
    /// yet, or the connection already ended). Use
    /// [`crate::Endpoint::abort`], which sends it.
    ///
    /// The RESET carries our next sequence number and acks the peer's last
    /// in-order packet: libtorrent ignores a RESET that acks a packet it
    /// never sent, and drops one whose seq_nr is past its reorder window.
    pub fn abort(&mut self, now: Instant) -> Option<Header> {
        let peer_knows = match self.state {
            State::SynSent => self.syn_transmissions > 0,
            State::SynRecv | State::Connected => true,
            // TIME_WAIT: both directions finished and acked; the peer may
            // already have forgotten the connection.
            State::TimeWait | State::Failed(_) | State::Done => false,
        };
        let reset = peer_knows.then(|| self.header(PacketType::Reset, self.seq_nr, now));
        if !matches!(self.state, State::Failed(_) | State::Done) {
            // Clears queues and timers; the error is never seen (the handle
            // is gone) and not counted as the peer's doing.
            self.fail(ConnectionError::Reset);
        }
        // A failed connection's release drops the unread data and ends it.
        self.release(now);
        reset
    }

    /// What the endpoint keeps of a connection in TIME_WAIT that the
    /// application let go of, to answer late packets without the rest of
    /// it. `None` in any other case.
    pub(crate) fn time_wait_record(&self) -> Option<crate::endpoint::TimeWait> {
        if self.state != State::TimeWait || !self.released {
            return None;
        }
        Some(crate::endpoint::TimeWait {
            send_id: self.send_id,
            seq_nr: self.seq_nr,
            ack_nr: self.ack_nr,
            wnd: self.recv_window(),
            until: self.time_wait_until?,
        })
    }

    /// Whether the endpoint may forget this connection.
    pub fn is_done(&self) -> bool {
        self.released && matches!(self.state, State::Done | State::Failed(_))
    }

    // ------------------------------------------------------------- network side

    /// Processes one packet addressed to this connection.
    pub fn handle_packet(&mut self, now: Instant, pkt: &Packet<'_>) {
        self.handle_packet_in(now, pkt, None);
    }

    /// [`Connection::handle_packet`] for a packet parsed out of `owner`: a
    /// large payload is then queued for the reader as a slice of it instead
    /// of a copy.
    pub fn handle_packet_in(&mut self, now: Instant, pkt: &Packet<'_>, owner: Option<&Bytes>) {
        self.clock = self.clock.max(now);
        let h = &pkt.header;
        self.stats.packets_received += 1;
        if matches!(self.state, State::Failed(_) | State::Done) {
            self.stats.drops.after_close += 1;
            return;
        }
        if h.ty == PacketType::Reset {
            if self.state == State::TimeWait {
                // Everything was delivered both ways; a late RESET (the peer's
                // own hold ended) changes nothing.
                return;
            }
            if self.state == State::Connected && self.only_fin_left() {
                // All our data was acked and the peer's FIN arrived; only the
                // ack of our FIN is missing (lost, and the peer's hold ended
                // before our resend). Nothing is lost: a clean close, as when
                // the FIN goes unanswered (see on_rto).
                tracing::debug!(recv_id = self.recv_id, "RESET after both FINs; closing");
                self.close_without_fin_ack(now);
                return;
            }
            self.fail(if self.state == State::SynSent {
                ConnectionError::Refused
            } else {
                ConnectionError::Reset
            });
            return;
        }
        if h.ty == PacketType::Syn {
            // A retransmitted SYN: our SYN-ACK was lost, answer again.
            if self.role == Role::Responder && h.seq_nr == self.syn_seq {
                if self.state == State::SynRecv {
                    self.synack_pending = true;
                } else {
                    self.ack_now();
                }
            } else {
                self.stats.drops.unexpected_syn += 1;
            }
            return;
        }
        if self.state == State::SynSent {
            if h.ty == PacketType::State && h.ack_nr == self.syn_seq {
                self.state = State::Connected;
                self.connect_deadline = None;
                self.syn_retx_at = None;
                // Acked (ack_nr = seq - 1, as before any data) at once, or
                // by our first data or FIN if the application has it within
                // the ack delay: the responder holds its first DATA until it
                // hears from us (SYN_RECV_HOLD), and we may have nothing to
                // say yet.
                self.ack_now();
                self.ack_held_until = self.cfg.ack_delay.map(|d| self.clock + d);
                // The SYN-ACK does not consume a sequence number. A re-sent
                // SYN-ACK (libutp) may carry a later seq than data we hold.
                let mut first = h.seq_nr;
                for (e, _) in &self.early {
                    if seq::lt(e.seq_nr, first) {
                        first = e.seq_nr;
                    }
                }
                self.ack_nr = first.wrapping_sub(1);
                match (self.syn_sent_at, self.syn_transmissions) {
                    (Some(at), 1) => self.rtt.on_sample(now.saturating_duration_since(at), now),
                    _ => self.rtt.after_syn_retransmission(),
                }
                self.reply_micro = self.micros(now).wrapping_sub(h.timestamp);
                self.last_recv = now;
                // libtorrent's SYN-ACK may advertise little: the window is
                // known from the first real packet on.
                for (eh, payload) in std::mem::take(&mut self.early) {
                    self.stats.packets_received -= 1; // counted on arrival
                    let p = Packet {
                        header: eh,
                        sack: None,
                        close_reason: None,
                        payload: &payload,
                    };
                    self.handle_packet(now, &p);
                }
            } else if matches!(h.ty, PacketType::Data | PacketType::Fin)
                && h.ack_nr == self.syn_seq
                && self.early.len() < 64
            {
                // Data that overtook (or outlived) the SYN-ACK: keep it for
                // later, and ask for the SYN-ACK again at once (a 20-byte
                // SYN per data packet received, so no amplification).
                self.early.push((*h, Bytes::copy_from_slice(pkt.payload)));
                self.syn_send = true;
            } else {
                self.stats.drops.before_handshake += 1;
            }
            // Anything else before the SYN-ACK is dropped; the peer resends.
            return;
        }

        // Acks for data never sent are not trusted: drop the whole packet,
        // as libtorrent does.
        let highest_sent = self.seq_nr.wrapping_sub(1);
        if seq::lt(highest_sent, h.ack_nr) {
            self.stats.invalid_acks += 1;
            self.stats.drops.ack_beyond_sent += 1;
            return;
        }
        self.last_recv = now;
        if !self.released {
            // A live peer is not a dead path. Once the application let go,
            // only progress counts, so a peer holding its window at zero
            // can't pin an orphaned connection forever (like TCP's orphan
            // retries).
            self.consecutive_timeouts = 0;
        }
        self.reply_micro = self.micros(now).wrapping_sub(h.timestamp);
        if self.state == State::SynRecv {
            self.state = State::Connected;
            self.connect_deadline = None;
            self.hold_until = None;
            self.synack_copy = false;
        }
        if let Some(r) = pkt.close_reason {
            self.stats.peer_close_reason = Some(r);
        }
        let old_wnd = self.peer_wnd;
        // Take the window only from a packet at least as new as the one we
        // took it from (TCP's SND.WL1/WL2 rule; same ack: the peer's clock).
        let newer = !self.peer_wnd_known
            || seq::lt(self.wnd_ack, h.ack_nr)
            || (h.ack_nr == self.wnd_ack && h.timestamp.wrapping_sub(self.wnd_ts) as i32 >= 0);
        if newer {
            self.peer_wnd = h.wnd_size;
            self.wnd_ack = h.ack_nr;
            self.wnd_ts = h.timestamp;
        }
        self.peer_wnd_known = true;
        if self.peer_wnd > old_wnd {
            self.probe_allowed = false;
        }

        self.process_ack(now, h, pkt.sack);

        match h.ty {
            PacketType::Data | PacketType::Fin => self.process_data(h, pkt.payload, owner),
            _ => {}
        }
        if self.state == State::TimeWait && h.ty == PacketType::Fin {
            // The peer re-sent its FIN: our ack was lost. Keep answering for
            // another full period (RFC 793 restarts TIME-WAIT here too).
            self.time_wait_until = Some(now + self.cfg.time_wait);
        }
        self.update_teardown(now);
    }

    fn process_ack(&mut self, now: Instant, h: &Header, sack: Option<&[u8]>) {
        let first_unacked = self.seq_nr.wrapping_sub(self.outstanding.len() as u16);
        let base = first_unacked.wrapping_sub(1);
        let in_flight_before = self.in_flight.bytes;
        let mut bytes_acked = 0usize;
        // The newest transmission this ack covers: (sent at, sent once).
        let mut newest: Option<(Instant, bool)> = None;
        let mut progressed = false;

        if seq::lt(base, h.ack_nr) {
            let n = seq::ahead(h.ack_nr, base) as usize;
            for _ in 0..n.min(self.outstanding.len()) {
                let mut p = self.outstanding.pop_front().expect("counted above");
                self.outstanding_bytes -= p.payload.len();
                self.on_packet_acked(now, &mut p, &mut bytes_acked, &mut newest);
            }
            progressed = true;
        }
        if self
            .spurious_round
            .is_some_and(|r| !seq::lt(h.ack_nr.wrapping_add(1), r))
        {
            self.spurious_round = None;
        }

        let mut sacked_any = false;
        if let Some(bits) = sack {
            // Bit i means ack_nr + 2 + i; outstanding[0] is ack_nr + 1 when
            // the cumulative ack reached it, so bit i is index i + 1 + shift.
            let front = self.seq_nr.wrapping_sub(self.outstanding.len() as u16);
            for i in 0..bits.len() * 8 {
                if !packet::sack_bit(bits, i) {
                    continue;
                }
                let s = h.ack_nr.wrapping_add(2).wrapping_add(i as u16);
                if !seq::lt(s, self.seq_nr) {
                    // SACK bits beyond what we sent are ignored.
                    self.stats.drops.sack_beyond_sent += 1;
                    break;
                }
                if seq::lt(s, front) {
                    continue;
                }
                let idx = seq::ahead(s, front) as usize;
                let Some(p) = self.outstanding.get_mut(idx) else {
                    break;
                };
                if p.sacked {
                    continue;
                }
                p.sacked = true;
                sacked_any = true;
                bytes_acked += p.payload.len();
                Self::leave_flight(p, &mut self.in_flight);
                let lost = std::mem::replace(&mut p.lost, false);
                let sent = (p.seq, p.transmissions, p.tx_index, p.last_sent);
                self.check_reordering(now, sent, lost);
                let p = &self.outstanding[idx];
                let tx = self.evidence_tx(p);
                note_newest(&mut newest, p);
                let (pad, len) = (p.pad, p.payload.len());
                self.largest_acked_tx = self.largest_acked_tx.max(tx);
                self.on_delivered(pad, len, now);
            }
        }

        match self.bh_check {
            BlackHoleCheck::Sent { big } => self.on_check_answer(big, now),
            BlackHoleCheck::Answered { big, .. } if self.check_target(big).is_none() => {
                self.bh_check = BlackHoleCheck::Idle; // `big` got through
            }
            _ => {}
        }

        // Sample only when the newest packet acked was sent once (Karn). An
        // ack that fills a hole with a retransmission also covers packets
        // that waited behind it; their age is not a round trip.
        //
        // Except upward: the time since the packet's last transmission is
        // at most a real round trip, whichever copy arrived, so when even
        // that exceeds the smoothed RTT the path got slower. With one packet
        // per round trip (request/response traffic) and a round trip that
        // jumped past the probe or retransmission timeout, every packet was
        // resent before its ack came and every ack was a resent packet's:
        // the smoothed RTT kept its old value for good, each message went
        // twice, and past the RTO each one also cut the window to a packet.
        // The bound moves the estimate up (alone, to a third of the new
        // round trip); the timers' backoffs, kept until a packet sent once
        // is acked, let them wait for the rest. The bound is no sample for
        // the congestion controller: it takes a sample as the most the
        // queueing delay can be.
        let mut rtt_sample = None;
        if let Some((sent, once)) = newest {
            let age = now.saturating_duration_since(sent);
            if once {
                rtt_sample = Some(age);
                self.rtt.on_sample(age, now);
                self.tlp_backoff = 0;
                self.karn_hold = false;
            } else {
                self.rtt.on_sample_at_least(age);
                if self.tlp_fired {
                    self.tlp_backoff = (self.tlp_backoff + 1).min(MAX_TLP_BACKOFF);
                }
            }
        }
        if progressed || sacked_any {
            self.consecutive_timeouts = 0;
            if !self.karn_hold {
                self.rtt.reset_backoff();
            }
            self.dup_acks = 0;
            // Restart the timers: the path delivers.
            self.tlp_fired = false;
            self.tlp_credit = false;
            self.rto_deadline = if self.outstanding.is_empty() {
                None
            } else {
                Some(now + self.rtt.rto())
            };
            self.tlp_deadline = self.rto_deadline.and_then(|_| self.pto().map(|d| now + d));
        } else if h.ty == PacketType::State
            && h.ack_nr == self.last_ack_seen
            && !self.outstanding.is_empty()
            // RFC 5681: an ack that changes the window is a window update,
            // and one from a receiver with no room is flow control; neither
            // says a packet was lost.
            && h.wnd_size == self.last_wnd_seen
            && h.wnd_size as usize >= self.mss
        {
            self.dup_acks += 1;
            // The answer to a tail loss probe that still doesn't move the
            // ack: the receiver is past the hole (libutp's 32-bit SACK may not
            // reach far enough to say so), so the oldest packet is lost.
            if self.tlp_fired {
                self.dup_acks = self.dup_acks.max(self.dup_threshold());
            }
        }
        self.last_ack_seen = h.ack_nr;
        self.last_wnd_seen = h.wnd_size;

        // RACK (RFC 8985): the send time of the newest packet known to be
        // delivered. An ack arriving sooner after a retransmission than any
        // round trip seen is for the original, so it proves nothing (RFC
        // 8985, 6.2). Not half the smoothed RTT, as before: behind a queue
        // that has since drained that is several real round trips, and a
        // tail loss probe's ack then never counted while its SACK kept
        // restarting the RTO: a lost resend at the front stalled the
        // stream for seconds (a simulated 4 MB/s link, 180 ms queue).
        let rack_time = newest.and_then(|(sent, once)| {
            let srtt = self.rtt.srtt()?;
            let ambiguous = self.rtt.min().unwrap_or(srtt / 2);
            (once || now.saturating_duration_since(sent) >= ambiguous).then_some((sent, once))
        });

        // Loss first: an ack that reveals a loss must not grow the window
        // it is about to halve.
        // The packets this ack could report: its SACK bitmask ends here; a
        // packet past it may have arrived unreported.
        let sack_end = sack.map(|bits| {
            h.ack_nr
                .wrapping_add(2)
                .wrapping_add((bits.len() * 8).min(u16::MAX as usize / 2) as u16)
        });
        let sack_bits = sack.map_or(0, |bits| bits.len() * 8);
        let congestion = self.detect_losses(now, sacked_any, rack_time, sack_end, sack_bits);
        if bytes_acked > 0 && !congestion {
            self.cc.on_ack(
                now,
                &AckInfo {
                    bytes_acked,
                    bytes_in_flight: in_flight_before,
                    srtt: self.rtt.srtt(),
                    rtt_sample,
                    peer_delay_us: h.timestamp_diff,
                    reverse_delay_us: self.reply_micro,
                },
            );
            let w = self.cc.window();
            self.stats.max_cwnd = self.stats.max_cwnd.max(w);
        }
    }

    fn on_packet_acked(
        &mut self,
        now: Instant,
        p: &mut Sent,
        bytes_acked: &mut usize,
        newest: &mut Option<(Instant, bool)>,
    ) {
        Self::leave_flight(p, &mut self.in_flight);
        if !p.sacked {
            *bytes_acked += p.payload.len();
            note_newest(newest, p);
            self.on_delivered(p.pad, p.payload.len(), now);
            let sent = (p.seq, p.transmissions, p.tx_index, p.last_sent);
            self.check_reordering(now, sent, p.lost);
        }
        self.note_acked_tx(p);
        if p.ty == PacketType::Fin {
            self.fin = FinState::Acked;
            self.fin_acked_at.get_or_insert(now);
            // Acked after all (late, after the close was presumed).
            self.stats.fin_unacknowledged = false;
        }
        // Queued resends of acked packets are skipped lazily in poll_transmit.
    }

    /// RACK's reordering detection (RFC 8985 without DSACK, which uTP
    /// lacks), for a packet newly acknowledged: `sent` is its
    /// (seq, transmissions, tx_index, last_sent), `was_lost` whether it was
    /// declared lost. A loss episode whose every loss proves spurious gets
    /// its window cut undone (as Linux does), since a cut taken for
    /// reordering before it was recognised otherwise costs many round trips
    /// of regrowth.
    fn check_reordering(&mut self, now: Instant, sent: (u16, u32, u64, Instant), was_lost: bool) {
        let (seq, transmissions, tx_index, last_sent) = sent;
        let spurious = if transmissions == 1 {
            // Delivered after a packet sent later: reordered.
            if tx_index < self.largest_acked_tx {
                self.reordering_seen = true;
                // Twice the distance: reordering seen once reaches farther
                // soon, and each step behind it costs a needless resend.
                let dist = (self.largest_acked_tx - tx_index).saturating_mul(2);
                self.reorder_dist = self.reorder_dist.max(dist).min(MAX_REORDER_DIST);
            }
            // Declared lost, but acked before the resend went out.
            was_lost
        } else {
            // No ack comes back sooner than the shortest round trip: this
            // one is for an earlier copy.
            self.rtt
                .min()
                .is_some_and(|min| now.saturating_duration_since(last_sent) < min)
        };
        if spurious {
            self.stats.spurious_retransmits += 1;
            self.reordering_seen = true;
            if let Some((first, end, left)) = self.undo {
                if !seq::lt(seq, first) && !seq::lt(end, seq) {
                    if left <= 1 {
                        self.undo = None;
                        self.cc.on_spurious_loss(now);
                    } else {
                        self.undo = Some((first, end, left - 1));
                    }
                }
            }
            if self.spurious_round.is_none() {
                self.reo_wnd_mult = (self.reo_wnd_mult + 1).min(REO_WND_MAX_MULT);
                self.reo_wnd_persist = REO_WND_PERSIST;
                self.spurious_round = Some(self.seq_nr);
            }
        }
    }

    /// The transmission an ack of `p` proves delivered, for the packet
    /// threshold: only a packet sent once says which transmission arrived
    /// (Karn); the ack of a retransmitted one may be for any copy, and
    /// taking the latest would declare everything sent in between lost.
    fn evidence_tx(&self, p: &Sent) -> u64 {
        if p.transmissions == 1 {
            p.tx_index
        } else {
            0
        }
    }

    fn note_acked_tx(&mut self, p: &Sent) {
        let tx = self.evidence_tx(p);
        self.largest_acked_tx = self.largest_acked_tx.max(tx);
    }

    /// A packet reached the peer: a probe confirms its size, a full-size
    /// packet shows the path still carries the current size.
    fn on_delivered(&mut self, pad: usize, payload_len: usize, now: Instant) {
        if pad > 0 {
            self.pmtud
                .on_probe_acked(HEADER_LEN + pad + payload_len, now);
            self.sync_mss();
        } else if payload_len > 0 {
            self.pmtud.on_packet_acked(HEADER_LEN + payload_len);
        }
    }

    /// Declares packets lost; returns whether a new congestion episode began.
    fn detect_losses(
        &mut self,
        now: Instant,
        sacked_any: bool,
        rack_time: Option<(Instant, bool)>,
        sack_end: Option<u16>,
        sack_bits: usize,
    ) -> bool {
        // Oldest packet newly declared lost (outstanding is in seq order),
        // and how many (path MTU probes aside).
        let mut first_lost: Option<u16> = None;
        let mut n_lost = 0u32;
        let threshold = self.dup_threshold();
        if self.dup_acks >= threshold {
            self.dup_acks = 0;
            if let Some(p) = self.outstanding.front_mut() {
                // Duplicate acks keep coming while the resent packet travels;
                // resending it again is the RTO's job (or SACK evidence's).
                // A packet already sent again (by SACK or time evidence) is
                // waiting on that copy: the acks duplicate until it lands.
                if !p.sacked
                    && !p.lost
                    && p.transmissions == 1
                    && self.dup_ack_resent != Some(p.seq)
                {
                    self.dup_ack_resent = Some(p.seq);
                    Self::mark_lost(p, &mut self.in_flight, &mut self.resend);
                    // A lost path MTU probe is not congestion (RFC 8899).
                    if p.pad == 0 {
                        first_lost.get_or_insert(p.seq);
                        n_lost += 1;
                    }
                }
            }
        }
        // Two rules, one pass in sequence order (so resends go oldest first):
        // - time threshold (RACK): a packet sent a reordering window before
        //   one that was delivered is lost; this catches burst losses beyond
        //   what a short SACK (libutp: 32 packets) can describe;
        // - packet threshold (as in QUIC), on SACK evidence: lost when a
        //   packet sent three transmissions after it was acknowledged (more
        //   on a path seen reordering farther); the transmission counter
        //   keeps retransmissions from being re-declared.
        let mult = if self.reordering_seen {
            self.reo_wnd_mult
        } else {
            1
        };
        let rack = rack_time
            .zip(self.rtt.srtt())
            .map(|((delivered, once), srtt)| {
                let reo_wnd = (srtt / 4 * mult).min(srtt);
                (delivered, reo_wnd.max(Duration::from_millis(1)), once)
            });
        // A threshold past the SACK's reach could never be met (libutp's 32
        // bits): there reordering beyond it costs a needless resend (whose
        // window cut is undone) rather than a timeout.
        let count_threshold = u64::from(threshold).min(sack_bits.saturating_sub(2).max(3) as u64);
        if rack.is_some() || sacked_any {
            for p in self.outstanding.iter_mut() {
                if p.sacked || p.lost || !(p.in_flight || p.parked) {
                    continue;
                }
                let by_time =
                    rack.is_some_and(|(delivered, reo_wnd, _)| p.last_sent + reo_wnd < delivered);
                // Only for packets the SACK could have reported: libutp's
                // 32 bits (and ours) don't reach a big window's far end.
                let reportable = sack_end.is_some_and(|end| seq::lt(p.seq, end));
                let by_count = sacked_any
                    && reportable
                    && p.tx_index.saturating_add(count_threshold) <= self.largest_acked_tx;
                let resent_evidence = rack.is_some_and(|(_, _, once)| !once);
                if by_time && !by_count && !reportable && resent_evidence {
                    // Evidence from a resent packet (a tail loss probe's,
                    // mostly) for one the SACK can't report: behind a
                    // draining queue such packets were mostly delivered, so
                    // they leave the flight (making room for the resends
                    // the SACK does call for) without being resent; once
                    // the SACK reaches them they are judged again. Resent
                    // at once, 382 of 3,500 packets went twice needlessly
                    // in a simulated 4 MB/s run with a 180 ms queue.
                    if p.in_flight {
                        Self::leave_flight(p, &mut self.in_flight);
                        p.parked = true;
                    }
                    continue;
                }
                if by_time || by_count {
                    Self::mark_lost(p, &mut self.in_flight, &mut self.resend);
                    if p.pad == 0 {
                        first_lost.get_or_insert(p.seq);
                        n_lost += 1;
                    }
                }
            }
        }
        if let Some(first_lost) = first_lost {
            self.stats.fast_retransmits += 1;
            let new_episode = match self.recovery_point {
                None => true,
                Some(rp) => seq::lt(rp, first_lost),
            };
            if new_episode {
                if self.reo_wnd_persist > 0 {
                    self.reo_wnd_persist -= 1;
                    if self.reo_wnd_persist == 0 {
                        self.reo_wnd_mult = 1;
                    }
                }
                self.cc.on_loss(now);
                let end = self.seq_nr.wrapping_sub(1);
                self.recovery_point = Some(end);
                self.undo = Some((first_lost, end, n_lost));
            } else if let Some((_, _, left)) = &mut self.undo {
                *left += n_lost;
            }
            return new_episode;
        }
        false
    }

    /// Duplicate acks, or later transmissions acknowledged, that declare a
    /// packet lost: 3, or one past the farthest reordering seen.
    fn dup_threshold(&self) -> u32 {
        (self.reorder_dist + 1).max(3) as u32
    }

    fn mark_lost(p: &mut Sent, in_flight: &mut FlightSize, resend: &mut VecDeque<u16>) {
        p.lost = true;
        p.parked = false;
        Self::leave_flight(p, in_flight);
        resend.push_back(p.seq);
    }

    /// Debug builds: the running sums over `outstanding` match a recount
    /// (a drift would hold back or overfill the peer's flight for good).
    /// Skipped for long queues, whose recount would make tests crawl.
    fn debug_check_counts(&self) {
        if !cfg!(debug_assertions) || self.outstanding.len() > 256 {
            return;
        }
        let mut recount = FlightSize::default();
        let mut queued = 0;
        for p in &self.outstanding {
            queued += p.payload.len();
            if p.in_flight {
                recount.bytes += p.payload.len();
                recount.cost += p.cost;
            }
        }
        debug_assert_eq!(recount, self.in_flight, "data in flight");
        debug_assert_eq!(queued, self.outstanding_bytes, "outstanding bytes");
    }

    /// Counts `p`'s latest transmission in the data in flight (it must not
    /// be counted there already).
    fn enter_flight(p: &mut Sent, in_flight: &mut FlightSize) {
        let size = FlightSize::packet(p.payload.len(), p.pad);
        p.in_flight = true;
        p.cost = size.cost;
        in_flight.bytes += size.bytes;
        in_flight.cost += size.cost;
    }

    /// Takes `p` out of the data in flight, if it is counted there.
    fn leave_flight(p: &mut Sent, in_flight: &mut FlightSize) {
        if p.in_flight {
            p.in_flight = false;
            in_flight.bytes -= p.payload.len();
            in_flight.cost -= p.cost;
        }
    }

    fn recv_window(&self) -> u32 {
        self.recv_cap
            .saturating_sub(self.ready_bytes + self.reorder_bytes)
            .min(u32::MAX as usize) as u32
    }

    /// An ack is due at once.
    fn ack_now(&mut self) {
        self.ack_pending = true;
        self.ack_held_until = None;
    }

    /// Whether the pending ack may still wait for data to carry it.
    fn ack_held(&self, now: Instant) -> bool {
        self.ack_held_until.is_some_and(|t| now < t)
    }

    fn process_data(&mut self, h: &Header, payload: &[u8], owner: Option<&Bytes>) {
        let s = h.seq_nr;
        // A second packet unacked means an ack now (TCP's rule), whatever
        // held the first one.
        let lone = !self.ack_pending;
        // Every data packet gets an ack, duplicates too (the peer may have
        // lost our earlier one).
        self.ack_now();
        if let Some(fin) = self.peer_fin {
            if h.ty == PacketType::Fin && fin != s {
                self.stats.drops.fin_mismatch += 1;
                return;
            }
            if seq::lt(fin, s) {
                self.stats.drops.data_past_fin += 1;
                return;
            }
        }
        let max_reorder = self.cfg.reorder_limit();
        if seq::le(s, self.ack_nr) {
            if seq::ahead(self.ack_nr, s) as usize >= max_reorder {
                // Far behind: no packet of this connection's window, but a
                // duplicate from long ago is harmless, so only counted.
                self.stats.drops.seq_out_of_window += 1;
            } else {
                self.stats.duplicates_received += 1;
            }
            return;
        }
        let offset = seq::ahead(s, self.ack_nr) as usize - 1;
        if offset >= max_reorder {
            self.stats.dropped_out_of_window += 1;
            self.stats.drops.seq_out_of_window += 1;
            return;
        }
        // A duplicate of a packet held out of order is a duplicate, even
        // when the buffer is too full for a new packet.
        if self.reorder.get(offset).is_some_and(Option::is_some) {
            self.stats.duplicates_received += 1;
            return;
        }
        let used = self.ready_bytes + self.reorder_bytes;
        // The next in-order packet is taken while the buffer is not over its
        // size yet (so by at most one packet): it is a zero-window probe,
        // and acking it (with a zero window) keeps the sender's persist
        // timer going instead of a retransmission timeout.
        let probe = offset == 0 && used <= self.recv_cap;
        if self.released || probe {
            // Nobody will read it; accept it only to keep the stream moving.
        } else if used + payload.len() > self.recv_cap {
            self.stats.dropped_out_of_window += 1;
            self.stats.drops.recv_buffer_full += 1;
            return;
        }
        if offset == 0
            && self.reorder.is_empty()
            && h.ty == PacketType::Data
            && self.peer_fin.is_none()
        {
            // In order with nothing held back (the steady state): straight to
            // the reader, copied into the shared tail, with no allocation or
            // reorder-buffer round trip per packet.
            self.ack_nr = s;
            if lone && payload.len() < ACK_LATER_BELOW && self.state == State::Connected {
                self.ack_held_until = self.cfg.ack_delay.map(|d| self.clock + d);
            }
            if !self.released && !payload.is_empty() {
                self.stats.bytes_received += payload.len() as u64;
                self.ready_bytes += payload.len();
                match shared_slice(owner, payload) {
                    Some(data) => self.push_ready(data),
                    None => self.push_ready_slice(payload),
                }
            }
            return;
        }
        if offset > 0 && !self.released && self.reorder_bytes + payload.len() > self.reorder_room {
            // The socket's connections hold all the out-of-order data they
            // may (Config::reorder_memory): this comes again.
            self.stats.dropped_out_of_window += 1;
            self.stats.drops.reorder_memory_full += 1;
            return;
        }
        if self.reorder.len() <= offset {
            self.reorder.resize(offset + 1, None);
        }
        if h.ty == PacketType::Fin {
            self.peer_fin = Some(s);
        }
        let data = if self.released {
            Bytes::new()
        } else {
            shared_slice(owner, payload).unwrap_or_else(|| Bytes::copy_from_slice(payload))
        };
        self.reorder_bytes += data.len();
        self.reorder[offset] = Some(data);
        while let Some(Some(_)) = self.reorder.front() {
            let data = self.reorder.pop_front().flatten().expect("checked Some");
            self.ack_nr = self.ack_nr.wrapping_add(1);
            self.reorder_bytes -= data.len();
            if !data.is_empty() {
                self.stats.bytes_received += data.len() as u64;
                self.ready_bytes += data.len();
                self.push_ready(data);
            }
            if self.peer_fin == Some(self.ack_nr) {
                self.eof = true;
                self.reorder.clear();
                self.reorder_bytes = 0;
                break;
            }
        }
    }

    /// Queues in-order bytes from a packet's payload, copied into the tail
    /// buffer. When it is full it moves to `ready` whole and a new one is
    /// allocated, sized by how far the reader lags (16 KiB for
    /// request/response traffic, 64 KiB for bulk): one allocation per many
    /// packets, none per packet.
    fn push_ready_slice(&mut self, data: &[u8]) {
        if self.ready_tail.capacity() - self.ready_tail.len() < data.len() {
            if !self.ready_tail.is_empty() {
                self.ready.push_back(self.ready_tail.split().freeze());
            }
            let size = (self.ready_bytes * 2).clamp(16 << 10, 64 << 10);
            self.ready_tail.reserve(size.max(data.len()));
        }
        self.ready_tail.extend_from_slice(data);
    }

    /// Queues in-order data for the reader. Small payloads are copied into
    /// one shared tail buffer: a peer sending 1-byte packets must not cost a
    /// heap allocation (and ~40 bytes of bookkeeping) per byte.
    fn push_ready(&mut self, data: Bytes) {
        const SMALL: usize = 512;
        const TAIL_CHUNK: usize = 16 * 1024;
        if data.len() < SMALL {
            self.ready_tail.extend_from_slice(&data);
            if self.ready_tail.len() >= TAIL_CHUNK {
                self.ready.push_back(self.ready_tail.split().freeze());
            }
        } else {
            if !self.ready_tail.is_empty() {
                self.ready.push_back(self.ready_tail.split().freeze());
            }
            self.ready.push_back(data);
        }
    }

    /// The OS reported our SYN with sequence number `syn_seq` unreachable
    /// (an ICMP "port unreachable": nothing listens on the peer's port).
    /// A connect still waiting for its SYN-ACK fails as refused, as TCP's
    /// does; anything later ignores it, since such reports are not
    /// authenticated and an answered peer is not refused by one of them.
    /// Returns whether the connection failed.
    pub fn handle_syn_unreachable(&mut self, syn_seq: u16) -> bool {
        self.fail_connect(syn_seq, ConnectionError::Refused)
    }

    /// Our SYN `syn_seq` could not be sent at all (see
    /// [`ConnectionError::Unreachable`]): the connect fails now, as TCP's
    /// does, instead of resending into the same error until its timeout.
    /// Returns whether it was this connection's pending SYN.
    pub fn handle_syn_not_sent(&mut self, syn_seq: u16) -> bool {
        self.fail_connect(syn_seq, ConnectionError::Unreachable)
    }

    fn fail_connect(&mut self, syn_seq: u16, e: ConnectionError) -> bool {
        if self.state != State::SynSent || syn_seq != self.syn_seq {
            return false;
        }
        self.fail(e);
        true
    }

    fn fail(&mut self, e: ConnectionError) {
        tracing::debug!(recv_id = self.recv_id, error = %e, state = ?self.state, "connection failed");
        self.state = State::Failed(e);
        self.pending.clear();
        self.outstanding.clear();
        self.outstanding_bytes = 0;
        self.resend.clear();
        self.in_flight = FlightSize::default();
        self.ack_pending = false;
        self.syn_send = false;
        // A failure is final: no handshake timer may fire (and overwrite
        // the error with TimedOut) afterwards.
        self.syn_retx_at = None;
        self.connect_deadline = None;
        self.rto_deadline = None;
        self.tlp_deadline = None;
        self.reorder.clear();
        self.reorder_bytes = 0;
    }

    /// Moves to TIME_WAIT / Done when both directions are finished.
    fn update_teardown(&mut self, now: Instant) {
        if self.state != State::Connected {
            return;
        }
        let ours_done = self.fin == FinState::Acked;
        if ours_done && self.eof {
            self.state = State::TimeWait;
            self.time_wait_until = Some(now + self.cfg.time_wait);
            self.linger_until = None;
            // Nothing is sent or reordered any more; TIME_WAIT may hold
            // many connections, so drop what the queues had grown to.
            self.outstanding = VecDeque::new();
            self.resend = VecDeque::new();
            self.reorder = VecDeque::new();
        } else if ours_done && self.released {
            self.linger_until = Some(self.last_recv + self.cfg.linger);
        }
    }

    /// Ends a close whose last step, the ack of our FIN, never came (see
    /// `fin_presumed`): everything else was delivered both ways.
    fn close_without_fin_ack(&mut self, now: Instant) {
        self.stats.fin_unacknowledged = true;
        self.outstanding.clear();
        self.outstanding_bytes = 0;
        self.in_flight = FlightSize::default();
        self.resend.clear();
        self.rto_deadline = None;
        self.tlp_deadline = None;
        self.fin = FinState::Acked;
        self.update_teardown(now);
    }

    /// Re-arms derived timers after any change (the endpoint calls it after
    /// every input): a closed peer window with data waiting and nothing in
    /// flight starts the persist timer, whose expiry allows one probe; a
    /// FIN that is all that is left gets its probe timer.
    pub fn refresh(&mut self, now: Instant) {
        if self.fin != FinState::None
            && self.outstanding_bytes == 0
            && self.pending.is_empty()
            && self.pending.has_spare()
        {
            // No data unacknowledged and no writes after FIN: the send
            // chunks go now (to the process's pool, for new connections).
            self.pending.release_spare();
        }
        if self.send_spare_idle() || self.recv_tail_idle() {
            // All acknowledged, or all read: an idle connection keeps no
            // buffer memory (once it has stayed idle a moment).
            self.spare_release_at.get_or_insert(now + SPARE_LINGER);
        } else {
            self.spare_release_at = None;
        }
        if self.rto_deadline.is_none()
            && matches!(self.state, State::Connected | State::SynRecv)
            && !self.pending.is_empty()
            && self.in_flight.bytes == 0
            && self.resend.is_empty()
            && self.send_allowance() == 0
        {
            self.rto_deadline = Some(now + self.rtt.rto());
        }
        if self.tlp_deadline.is_none() && !self.fin_presumed && self.only_fin_left() {
            // Our FIN is all that is left: copies go a probe timeout apart
            // (see `FIN_ONLY_COPIES`), whether or not a tail loss probe
            // already fired in this flight.
            self.tlp_deadline = self.pto().map(|d| now + d);
        }
    }

    /// Everything sent is acknowledged and nothing waits, yet spare send
    /// chunks are kept.
    fn send_spare_idle(&self) -> bool {
        self.outstanding.is_empty() && self.pending.is_empty() && self.pending.has_spare()
    }

    /// Everything received was read, yet the receive tail keeps its room.
    fn recv_tail_idle(&self) -> bool {
        self.ready_bytes == 0 && self.ready_tail.capacity() > 0
    }

    /// The earliest moment [`Connection::handle_timeout`] needs to run.
    pub fn poll_timeout(&self) -> Option<Instant> {
        // Runs after every change to every connection: each timer is taken
        // as it is read, with no array of them built first and no
        // `flatten().min()`, which compile to far more instructions.
        let mut first: Option<Instant> = None;
        let mut take = |t: Option<Instant>| {
            if let Some(t) = t {
                if first.is_none_or(|f| t < f) {
                    first = Some(t);
                }
            }
        };
        take(self.syn_retx_at);
        take(self.connect_deadline);
        take(self.rto_deadline);
        take(self.tlp_deadline);
        // Only a hold with something held needs waking for.
        take(
            self.hold_until
                .filter(|_| !self.pending.is_empty() || self.fin == FinState::Queued),
        );
        take(self.time_wait_until);
        take(self.linger_until);
        take(self.paced_until);
        take(self.read_limited_until);
        take(self.spare_release_at);
        take(self.ack_held_until);
        take(self.keepalive_at());
        take(self.idle_deadline());
        if self.state == State::Connected {
            take(self.pmtud.poll_timeout());
        }
        if let BlackHoleCheck::Answered { decide_at, .. } = self.bh_check {
            take(Some(decide_at));
        }
        first
    }

    /// When an established, idle connection sends a keep-alive (an ST_STATE,
    /// as libutp does every 29 s, so NAT mappings survive quiet periods).
    ///
    /// After the peer acked our FIN, while its own FIN has not come, they go
    /// out sooner: 1 s after, then each gap as long as the time since the
    /// ack (1, 2, 4 ... s) up to the interval. The original libutp (as in
    /// Transmission 3) never sends its FIN after it received ours: when its
    /// application closes, it drops the connection without a word and
    /// answers the next packet with a RESET. A reader waiting for EOF then
    /// learns of the end in about a second instead of 29.
    fn keepalive_at(&self) -> Option<Instant> {
        let (State::Connected, Some(k), false) =
            (self.state, self.cfg.keepalive_interval, self.ack_pending)
        else {
            return None;
        };
        let gap = match self.fin_acked_at {
            Some(acked) if self.peer_fin.is_none() => self
                .last_sent
                .saturating_duration_since(acked)
                .max(HALF_CLOSED_PROBE)
                .min(k),
            _ => k,
        };
        Some(self.last_sent + gap)
    }

    /// When a peer that sent nothing at all is declared dead.
    fn idle_deadline(&self) -> Option<Instant> {
        match (self.state, self.cfg.idle_timeout) {
            (State::Connected, Some(d)) => Some(self.last_recv + d),
            _ => None,
        }
    }

    /// Runs timers that are due at `now`.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.debug_check_counts();
        self.clock = self.clock.max(now);
        if self.paced_until.is_some_and(|t| now >= t) {
            self.paced_until = None;
        }
        if self.hold_until.is_some_and(|t| now >= t) {
            // The initiator stayed silent (it waits for us to speak first):
            // send after all, led by a SYN-ACK copy (next_datagram).
            self.hold_until = None;
        }
        if self.spare_release_at.is_some_and(|t| now >= t) {
            self.spare_release_at = None;
            if self.send_spare_idle() {
                self.pending.release_spare();
            }
            if self.recv_tail_idle() {
                self.ready_tail = BytesMut::new();
            }
        }
        if self.ack_held_until.is_some_and(|t| now >= t) {
            // No data of ours came to carry it: the ack goes alone.
            self.ack_held_until = None;
        }
        if self.read_limited_until.is_some_and(|t| now >= t) {
            // The reader is woken (the endpoint marks the connection touched).
            self.read_limited_until = None;
        }
        if self.idle_deadline().is_some_and(|t| now >= t) {
            if self.fin_presumed {
                // Closed already for the application: not a failure.
                self.close_without_fin_ack(now);
                return;
            }
            tracing::debug!(
                recv_id = self.recv_id,
                fin = ?self.fin,
                eof = self.eof,
                outstanding = self.outstanding.len(),
                pending = self.pending.len(),
                resend = self.resend.len(),
                rto_in = ?self.rto_deadline.map(|t| t.saturating_duration_since(now)),
                hold = self.hold_until.is_some(),
                paced = self.paced_until.is_some(),
                peer_wnd = self.peer_wnd,
                seq_nr = self.seq_nr,
                ack_nr = self.ack_nr,
                peer_fin = ?self.peer_fin,
                reorder = self.reorder.len(),
                // (seq, type, bytes, sacked, lost, transmissions) of each
                // packet unacked: what a stall is waiting for.
                sent = ?self
                    .outstanding
                    .iter()
                    .map(|p| (p.seq, p.ty, p.payload.len(), p.sacked, p.lost, p.transmissions))
                    .collect::<Vec<_>>(),
                "peer silent past the idle timeout"
            );
            self.fail(ConnectionError::TimedOut);
            return;
        }
        if self.keepalive_at().is_some_and(|t| now >= t) {
            self.ack_now();
        }
        if self.state == State::Connected {
            self.pmtud.handle_timeout(now);
        }
        if let BlackHoleCheck::Answered { big, decide_at } = self.bh_check {
            if now >= decide_at {
                self.decide_check(big, now);
            }
        }
        if let Some(d) = self.connect_deadline {
            if now >= d {
                self.fail(ConnectionError::TimedOut);
                self.connect_deadline = None;
                self.syn_retx_at = None;
                return;
            }
        }
        if let Some(t) = self.syn_retx_at {
            if now >= t {
                self.syn_retx_at = None;
                self.rtt.back_off();
                self.syn_send = true;
            }
        }
        if let Some(t) = self.time_wait_until {
            if now >= t {
                self.time_wait_until = None;
                self.state = State::Done;
            }
        }
        if let Some(t) = self.linger_until {
            if now >= t && self.released {
                self.linger_until = None;
                if self.last_recv + self.cfg.linger <= now {
                    self.state = State::Done;
                } else {
                    self.linger_until = Some(self.last_recv + self.cfg.linger);
                }
            }
        }
        if let Some(t) = self.rto_deadline {
            if now >= t {
                self.tlp_deadline = None;
                self.on_rto(now);
            }
        }
        if let Some(t) = self.tlp_deadline {
            if now >= t {
                self.on_tail_loss_probe(now);
            }
        }
    }

    /// Probe timeout for the tail loss probe: two smoothed RTTs, at least
    /// 10 ms, doubled `tlp_backoff` times and at most the RTO; none before
    /// the first RTT sample.
    fn pto(&self) -> Option<Duration> {
        let srtt = self.rtt.srtt()?;
        let base = (srtt * 2).max(Duration::from_millis(10));
        Some(
            base.saturating_mul(1 << self.tlp_backoff)
                .min(self.rtt.rto()),
        )
    }

    fn on_tail_loss_probe(&mut self, now: Instant) {
        self.tlp_deadline = None;
        if self.only_fin_left() {
            // Our FIN is all that is left after the peer's: resend it a
            // probe timeout apart, and after `FIN_ONLY_COPIES` copies count
            // the close as complete (the RTO goes on resending it).
            self.fin_only_copies += 1;
            if self.fin_only_copies >= FIN_ONLY_COPIES {
                self.presume_fin_acked();
                return;
            }
            self.stats.tail_loss_probes += 1;
            Self::mark_lost(
                &mut self.outstanding[0],
                &mut self.in_flight,
                &mut self.resend,
            );
            self.tlp_deadline = self.pto().map(|d| now + d);
            return;
        }
        if self.peer_wnd_known && (self.peer_wnd as usize) < self.mss {
            // Silence behind a closed window is flow control: the persist
            // timer probes, a tail loss probe would only look like loss.
            return;
        }
        self.tlp_fired = true;
        // Resend the newest unacknowledged packet: not a congestion signal,
        // just a way to get a fresh (selective) ack.
        if let Some(p) = self
            .outstanding
            .iter_mut()
            .rev()
            .find(|p| !p.sacked && p.in_flight)
        {
            self.stats.tail_loss_probes += 1;
            self.tlp_credit = true;
            Self::mark_lost(p, &mut self.in_flight, &mut self.resend);
            self.start_black_hole_check(now);
        }
    }

    /// All our data was acked and the peer's FIN arrived; only our FIN is
    /// unacknowledged.
    fn only_fin_left(&self) -> bool {
        self.eof
            && self.fin == FinState::Sent
            && self.pending.is_empty()
            && self.outstanding.len() == 1
            && self.outstanding[0].ty == PacketType::Fin
    }

    /// The close is complete for the application though our FIN was never
    /// acked (see `fin_presumed`).
    fn presume_fin_acked(&mut self) {
        if !self.fin_presumed {
            tracing::debug!(
                recv_id = self.recv_id,
                "FIN unanswered after peer's FIN; closed, still resending it"
            );
            self.fin_presumed = true;
            self.stats.fin_unacknowledged = true;
        }
    }

    /// A timer (tail loss probe, RTO) fired with packets unacknowledged:
    /// if the oldest is full-size, check for a black hole (see
    /// [`BlackHoleCheck`]). A check still unanswered is replaced.
    fn start_black_hole_check(&mut self, now: Instant) {
        let refused = |p: &Sent| self.window_refuses(HEADER_LEN + p.payload.len());
        if self.state != State::Connected || self.outstanding.front().is_some_and(refused) {
            return;
        }
        if self.bh_base_rest_until.is_some_and(|t| now < t) && self.pmtud.at_base() {
            return;
        }
        let Some(p) = self.outstanding.front_mut() else {
            return;
        };
        if let Some(q) = self.bh_quiet_until {
            if seq::lt(p.seq, q) {
                return;
            }
            self.bh_quiet_until = None;
        }
        // Evidence must be a packet of the current size sent with DF (one
        // from before a fall-back is resent without it and proves nothing).
        let big = HEADER_LEN + p.payload.len();
        if p.sacked || p.pad > 0 || !self.pmtud.is_large(big) || big > self.pmtud.current() {
            return;
        }
        if !p.lost {
            Self::mark_lost(p, &mut self.in_flight, &mut self.resend);
        }
        tracing::trace!(recv_id = self.recv_id, big = p.seq, "black-hole check");
        self.bh_check = BlackHoleCheck::Due { big: p.seq };
    }

    /// An ack arrived while a black-hole check is out: unless it is too
    /// early to answer the check, it tells whether `big` got through.
    /// The first ack after the check. A timer fired because acks stopped,
    /// so this is almost always the check's answer; when it is an older
    /// ack, waiting a round trip before deciding (`Answered`) still lets a
    /// delivered `big` clear the check. (An echo of the check's timestamp
    /// would identify the answer exactly, but libutp does not update its
    /// timestamp difference for an old sequence number.)
    fn on_check_answer(&mut self, big: u16, now: Instant) {
        let srtt = self.rtt.srtt().unwrap_or(self.cfg.min_rto);
        tracing::trace!(
            recv_id = self.recv_id,
            big,
            missing = self.check_target(big).is_some(),
            "black-hole check answered"
        );
        self.bh_check = match self.check_target(big) {
            Some(size) if !self.window_refuses(size) => BlackHoleCheck::Answered {
                big,
                decide_at: now + srtt,
            },
            _ => BlackHoleCheck::Idle,
        };
    }

    /// Whether the peer's advertised window is too small for a packet of
    /// `size` bytes. A receiver whose buffer is full drops such packets
    /// (libtorrent does, "other end is not honoring our advertised
    /// window") yet acks the black-hole check at once (a duplicate), so
    /// the missing packet is flow control, not a black hole: a scripted
    /// receiver that stopped reading made a false one in three timeouts.
    fn window_refuses(&self, size: usize) -> bool {
        self.peer_wnd_known && (self.peer_wnd as usize) < size.saturating_sub(HEADER_LEN)
    }

    /// The size of `big` while it is undelivered and was sent with DF at
    /// the current size (the only kind of packet that is evidence).
    fn check_target(&self, big: u16) -> Option<usize> {
        let front = self.seq_nr.wrapping_sub(self.outstanding.len() as u16);
        if seq::lt(big, front) {
            return None; // delivered
        }
        let p = self.outstanding.get(seq::ahead(big, front) as usize)?;
        let size = HEADER_LEN + p.payload.len();
        (!p.sacked && size <= self.pmtud.current()).then_some(size)
    }

    /// The check was answered a round trip ago and `big` is still missing:
    /// one piece of evidence.
    fn decide_check(&mut self, big: u16, now: Instant) {
        self.bh_check = BlackHoleCheck::Idle;
        let Some(size) = self.check_target(big) else {
            return;
        };
        if self.window_refuses(size) {
            return;
        }
        tracing::trace!(recv_id = self.recv_id, big, size, "black-hole evidence");
        if self.pmtud.on_black_hole_evidence(size, now) {
            self.sync_mss();
            self.resend_oversized();
            self.bh_quiet_until = Some(self.seq_nr);
        } else if self.pmtud.at_base() {
            // At the base size the check is padded to the minimum (548
            // bytes), which a Linux receive buffer charges 1,280 bytes
            // against a base-size packet's 2,304: a nearly full buffer
            // takes the check and drops the resend, just as a black hole
            // would. Against libtorrent under load, checks at once made
            // three such pieces within a search (a fall to 548 bytes).
            // Checks at least a minimum RTO apart outlast such an episode;
            // a real black hole at the base is still found within seconds.
            self.bh_base_rest_until = Some(now + self.cfg.min_rto);
        } else {
            // Check again at once rather than wait for the next timer.
            self.start_black_hole_check(now);
        }
    }

    /// After a fall-back: every packet in flight larger than the new size
    /// was sent into the black hole; resend them now (without DF, see
    /// `transmit_fragmentable`) instead of waiting for timers.
    fn resend_oversized(&mut self) {
        let max = self.pmtud.current();
        for p in self.outstanding.iter_mut() {
            if !p.sacked && !p.lost && HEADER_LEN + p.payload.len() > max {
                Self::mark_lost(p, &mut self.in_flight, &mut self.resend);
            }
        }
    }

    fn on_rto(&mut self, now: Instant) {
        self.rto_deadline = None;
        let unacked = self.outstanding.iter().any(|p| !p.sacked);
        if !unacked {
            // Persist timer: the peer's window is closed; allow one probe.
            if self.peer_wnd_known && !self.pending.is_empty() {
                self.probe_allowed = true;
            }
            return;
        }
        if self.peer_wnd_known
            && (self.peer_wnd as usize) < self.mss
            && self.outstanding.len() == 1
            && self.outstanding[0].ty == PacketType::Data
        {
            // A zero-window probe the full receiver could not take (it acks
            // it with a closed window, so the peer is alive): flow control,
            // not congestion. Probe again later, window untouched. An
            // orphaned connection (the application let go) still gives up
            // after `max_timeouts` probes, like TCP's orphan retries.
            if self.released {
                self.consecutive_timeouts += 1;
                if self.consecutive_timeouts >= self.cfg.max_timeouts {
                    self.fail(ConnectionError::TimedOut);
                    return;
                }
            }
            self.stats.zero_window_probes += 1;
            self.rtt.back_off();
            let p = &mut self.outstanding[0];
            Self::mark_lost(p, &mut self.in_flight, &mut self.resend);
            self.rto_deadline = Some(now + self.rtt.rto());
            return;
        }
        self.consecutive_timeouts += 1;
        self.stats.timeouts += 1;
        if self.only_fin_left() && self.consecutive_timeouts >= FIN_ONLY_TIMEOUTS {
            // Both directions are complete except the ack of our FIN.
            // libtorrent forgets a connection once its own FIN is acked and
            // never answers our later FIN: nothing is lost, so this is a
            // clean close, not a timeout.
            if self.consecutive_timeouts >= self.cfg.max_timeouts.max(FIN_ONLY_TIMEOUTS) {
                tracing::debug!(recv_id = self.recv_id, "FIN never answered; closing");
                self.close_without_fin_ack(now);
                return;
            }
            self.presume_fin_acked();
            // A 20-byte packet now and then: no further backoff, so the
            // copies go out within seconds, not half a minute.
            // (Queued again even if marked lost already: a duplicate entry
            // is skipped once the FIN went.)
            Self::mark_lost(
                &mut self.outstanding[0],
                &mut self.in_flight,
                &mut self.resend,
            );
            self.rto_deadline = Some(now + self.rtt.rto());
            return;
        }
        if self.consecutive_timeouts >= self.cfg.max_timeouts {
            self.fail(ConnectionError::TimedOut);
            return;
        }
        // A lost path MTU probe is explained by its size, not by a timeout
        // too short: its backoff ends with any progress, as before, or
        // probes lost one after another (one packet in flight) stretched
        // the timeout to seconds.
        self.karn_hold = self
            .outstanding
            .iter()
            .find(|p| !p.sacked)
            .is_none_or(|p| p.pad == 0);
        // A shrunk path drops every full-size packet: check for that.
        self.start_black_hole_check(now);
        self.rtt.back_off();
        self.cc.on_timeout(now);
        // A timeout's cut is not undone.
        self.undo = None;
        self.dup_acks = 0;
        // Everything unacked is presumed lost; cwnd of one packet lets the
        // oldest go first. Losses from before the timeout don't halve again.
        self.resend.clear();
        for p in self.outstanding.iter_mut() {
            if !p.sacked {
                p.lost = false;
                Self::mark_lost(p, &mut self.in_flight, &mut self.resend);
            }
        }
        self.recovery_point = Some(self.seq_nr.wrapping_sub(1));
    }

    /// Whether a call to [`Connection::poll_transmit`] may produce a datagram.
    pub fn wants_transmit(&self) -> bool {
        match self.state {
            State::Failed(_) | State::Done => false,
            State::SynSent => self.syn_send,
            _ => {
                (self.ack_pending && self.ack_held_until.is_none())
                    || self.ack_echo_pending
                    || self.synack_pending
                    || !self.resend.is_empty()
                    || (self.fin == FinState::Queued && self.hold_until.is_none())
                    || matches!(self.bh_check, BlackHoleCheck::Due { .. })
                    || (!self.pending.is_empty()
                        && self.hold_until.is_none()
                        && self.paced_until.is_none()
                        && self.send_allowance() > 0)
            }
        }
    }

    fn send_window(&self) -> usize {
        let mut cwnd = self.cc.window();
        if self.rtt.recent_min().is_some_and(|m| m < LOCAL_PATH_RTT) {
            cwnd = cwnd.min(LOCAL_FLIGHT);
        }
        if self.peer_wnd_known {
            cwnd.min(self.peer_wnd as usize)
        } else {
            cwnd
        }
    }

    /// Bytes of new data that may be sent now.
    fn send_allowance(&self) -> usize {
        let own = self.own_allowance();
        if self.peer_room.fits(FlightSize::packet(own, 0)) {
            own
        } else {
            0
        }
    }

    /// How much of its data in flight the endpoint lets this connection add
    /// now (see [`Config::max_peer_flight`] and
    /// [`Endpoint::set_socket_receive_buffer`](crate::Endpoint::set_socket_receive_buffer));
    /// unlimited by default. `share` is its fair share of the payload
    /// limit, which bounds its send buffer (see `send_limit`).
    pub(crate) fn set_peer_room(&mut self, room: FlightSize, share: usize) {
        self.peer_room = room;
        self.peer_share = share;
    }

    /// Out-of-order bytes held (received past a gap).
    pub(crate) fn reorder_held(&self) -> usize {
        self.reorder_bytes
    }

    /// How many out-of-order bytes it may hold (see
    /// [`Config::reorder_memory`]).
    pub(crate) fn set_reorder_room(&mut self, room: usize) {
        self.reorder_room = room;
    }

    /// Packets sent and neither acknowledged nor declared lost: their
    /// payload bytes and receive-buffer charge.
    pub(crate) fn in_flight(&self) -> FlightSize {
        self.in_flight
    }

    /// Whether it has data queued or unacknowledged.
    pub(crate) fn is_sending(&self) -> bool {
        self.queued_bytes() > 0
    }

    /// Whether new data waits only for room among the connections to the
    /// same peer (the endpoint wakes it when some is freed).
    pub(crate) fn waits_for_peer_room(&self) -> bool {
        matches!(self.state, State::Connected | State::SynRecv)
            && !self.pending.is_empty()
            && self.hold_until.is_none()
            && self.paced_until.is_none()
            && !self.peer_room.fits(self.peer_room_wanted())
    }

    /// The room its next packet of new data takes (see
    /// [`Connection::set_peer_room`]).
    pub(crate) fn peer_room_wanted(&self) -> FlightSize {
        FlightSize::packet(self.own_allowance().max(1), 0)
    }

    /// [`Connection::send_allowance`] by this connection's own windows.
    fn own_allowance(&self) -> usize {
        // Sequence comparisons work over half the 16-bit space; stay well
        // inside it whatever the buffers and payload size.
        if self.outstanding.len() >= MAX_OUTSTANDING_PACKETS {
            return 0;
        }
        let wnd = self.send_window();
        let room = wnd.saturating_sub(self.in_flight.bytes);
        if room >= self.mss.min(self.pending.len()) {
            return room.min(self.mss);
        }
        if self.in_flight.bytes == 0 {
            // A tiny window must not stall us; a closed one waits for a probe.
            if room > 0 {
                return room;
            }
            if self.probe_allowed {
                return self.mss;
            }
        }
        0
    }

    fn header(&self, ty: PacketType, seq_nr: u16, now: Instant) -> Header {
        Header {
            ty,
            conn_id: if ty == PacketType::Syn {
                self.recv_id
            } else {
                self.send_id
            },
            timestamp: self.micros(now),
            timestamp_diff: if ty == PacketType::Syn {
                0
            } else {
                self.reply_micro
            },
            wnd_size: self.recv_window(),
            seq_nr,
            ack_nr: if ty == PacketType::Syn {
                0
            } else {
                self.ack_nr
            },
        }
    }

    fn sack_bytes(&self, out: &mut [u8; MAX_SACK_BYTES]) -> usize {
        // reorder[0] is ack_nr + 1 (the hole); bit i is ack_nr + 2 + i.
        let n = self.reorder.len().saturating_sub(1).min(MAX_SACK_BYTES * 8);
        if n == 0 {
            return 0;
        }
        out.fill(0);
        for i in 0..n {
            if self.reorder[i + 1].is_some() {
                out[i / 8] |= 1 << (i % 8);
            }
        }
        // libutp requires a multiple of four bytes.
        (n.div_ceil(8)).div_ceil(4) * 4
    }

    /// Writes the next datagram into `buf` (at least `max_payload + 60`
    /// bytes) and returns its length, or `None` when nothing is due.
    pub fn poll_transmit(&mut self, now: Instant, buf: &mut [u8]) -> Option<usize> {
        self.debug_check_counts();
        self.fragmentable = false;
        let n = self.next_datagram(now, buf)?;
        self.last_sent = now;
        Some(n)
    }

    /// Like [`Connection::poll_transmit`], except that a payload of at
    /// least [`SPLIT_MIN`] bytes is not copied into `buf`: `buf` gets the
    /// header (and extensions) and the payload is returned beside it, to
    /// follow the header in the same datagram (a gather send), which saves
    /// copying every byte sent once more.
    pub fn poll_transmit_split(
        &mut self,
        now: Instant,
        buf: &mut [u8],
    ) -> Option<(usize, Option<Bytes>)> {
        self.split = true;
        let n = self.poll_transmit(now, buf);
        self.split = false;
        let payload = self.split_payload.take();
        n.map(|n| (n, payload))
    }

    fn next_datagram(&mut self, now: Instant, buf: &mut [u8]) -> Option<usize> {
        match self.state {
            State::Failed(_) | State::Done => return None,
            State::SynSent => {
                if !self.syn_send {
                    return None;
                }
                self.syn_send = false;
                self.syn_transmissions += 1;
                self.syn_sent_at = Some(now);
                self.syn_retx_at = Some(now + self.rtt.rto());
                let h = self.header(PacketType::Syn, self.syn_seq, now);
                self.stats.packets_sent += 1;
                return Some(packet::encode(&h, &[], &[], buf));
            }
            _ => {}
        }

        // 0. A (re-sent) SYN-ACK, always ahead of our first data.
        if self.synack_pending {
            self.synack_pending = false;
            let seq = self.synack_seq;
            return Some(self.send_state(now, seq, buf));
        }

        // 1. Retransmissions first.
        while let Some(s) = self.resend.pop_front() {
            let front = self.seq_nr.wrapping_sub(self.outstanding.len() as u16);
            if seq::lt(s, front) {
                continue; // acked meanwhile
            }
            let idx = seq::ahead(s, front) as usize;
            let cwnd = self.cc.window().max(self.mss);
            let Some(p) = self.outstanding.get(idx) else {
                continue;
            };
            if !p.lost || p.sacked {
                continue;
            }
            // The oldest packet holds up the whole stream, and a tail loss
            // probe exists to get an ack: both go out whatever the window.
            // `in_flight` may still count packets the peer has but could not
            // report (libutp's SACK covers 32 packets), and waiting for room
            // that no ack will make would cost a full RTO (RFC 6675 spirit).
            let exempt = idx == 0 || self.tlp_credit;
            if !exempt && self.in_flight.bytes > 0 && self.in_flight.bytes + p.payload.len() > cwnd
            {
                self.resend.push_front(s);
                break;
            }
            if idx != 0 {
                self.tlp_credit = false;
            }
            return Some(self.send_outstanding(now, idx, buf, true));
        }

        // 2. A black-hole check: a fall-back-sized packet after unanswered
        // large ones.
        if let BlackHoleCheck::Due { big } = self.bh_check {
            // After the resend of `big` (retransmissions go first): an
            // empty data packet with the last sequence number the peer
            // acknowledged, which it answers with an ack at once.
            let acked = self
                .seq_nr
                .wrapping_sub(self.outstanding.len() as u16)
                .wrapping_sub(1);
            self.bh_check = BlackHoleCheck::Sent { big };
            tracing::trace!(recv_id = self.recv_id, seq = acked, "black-hole check sent");
            let h = self.header(PacketType::Data, acked, now);
            self.stats.packets_sent += 1;
            // Marked fragmentable so it goes out alone: batched with the
            // big resend (one GSO send), it would share its fate, since a
            // router drops a whole GSO batch when one segment is too big.
            self.fragmentable = true;
            // Padded to the size a fall-back would go to, so the contrast
            // is the one that matters: that size gets through, the current
            // one does not. A bare 20-byte check also passes where a full
            // receive buffer drops by size (room for a small datagram, not
            // for a big one): against libtorrent, whose socket our bursts
            // overflow, that made false black holes in 1 run of 40.
            let pad = self.pmtud.fallback_size().saturating_sub(HEADER_LEN);
            let pad = if pad >= packet::MIN_PADDING { pad } else { 0 };
            return Some(packet::encode_padded(&h, pad, &[], buf));
        }

        // 2b. Before a silent initiator gets our first DATA or FIN: a copy of
        // the SYN-ACK, in case the first was lost (see SYN_RECV_HOLD).
        let news = (!self.pending.is_empty() && self.paced_until.is_none())
            || (self.fin == FinState::Queued && self.pending.is_empty());
        if news && self.synack_copy && self.hold_until.is_none() && self.state == State::SynRecv {
            self.synack_copy = false;
            let seq = self.synack_seq;
            return Some(self.send_state(now, seq, buf));
        }

        // 3. New data, led by a path MTU probe when one is due, paced.
        if !self.pending.is_empty() && self.paced_until.is_none() && self.hold_until.is_none() {
            let allowance = self.send_allowance();
            let n = allowance.min(self.pending.len());
            let paced = if self.cfg.pacing && n > 0 {
                let (cwnd, srtt) = (self.cc.window(), self.rtt.srtt());
                self.pacer.delay(now, n, cwnd, srtt, self.mss)
            } else {
                None
            };
            let limited = if n > 0 {
                self.limits.upload_delay(now, n)
            } else {
                None
            };
            if let Some(wait) = paced.max(limited) {
                self.paced_until = Some(now + wait);
            } else if allowance > 0 {
                if let Some(n) = self.send_mtu_probe(now, buf) {
                    return Some(n);
                }
                self.probe_allowed = false;
                let payload = self.take_new_data(n);
                return Some(self.send_new(now, PacketType::Data, payload, buf, 0));
            }
        }

        // 4. FIN once all data is packetized.
        if self.fin == FinState::Queued && self.pending.is_empty() && self.hold_until.is_none() {
            self.fin = FinState::Sent;
            return Some(self.send_new(now, PacketType::Fin, Bytes::new(), buf, 0));
        }

        // 5. A pure ack, unless it may wait for data of ours to carry it.
        if self.ack_pending && !self.ack_held(now) {
            let seq = self.seq_nr;
            if matches!(self.fin, FinState::Sent | FinState::Acked) {
                // After our FIN the two big stacks disagree on an ack's seq:
                // libutp drops a packet unless seq = FIN + 1, libtorrent
                // drops it unless seq <= FIN. Send both; each peer takes one.
                self.ack_echo_pending = true;
            }
            return Some(self.send_state(now, seq, buf));
        }
        if self.ack_echo_pending {
            self.ack_echo_pending = false;
            let fin_seq = self.seq_nr.wrapping_sub(1);
            return Some(self.send_state(now, fin_seq, buf));
        }
        None
    }

    fn send_state(&mut self, now: Instant, seq_nr: u16, buf: &mut [u8]) -> usize {
        self.ack_pending = false;
        self.ack_held_until = None;
        let mut sack = [0u8; MAX_SACK_BYTES];
        let sn = self.sack_bytes(&mut sack);
        let h = self.header(PacketType::State, seq_nr, now);
        self.last_wnd_sent = h.wnd_size;
        self.stats.packets_sent += 1;
        packet::encode(&h, &sack[..sn], &[], buf)
    }

    /// A path MTU probe (RFC 8899): a data packet of one stream byte,
    /// padded to the probe size with extensions the peer skips. It takes a
    /// sequence number of its own so its ack confirms the size; when it is
    /// lost only that byte goes again, unpadded. The padding comes before
    /// the byte, so a peer that truncates large datagrams finds the
    /// extension chain cut (and drops the packet) unless it cut exactly
    /// the byte: such a packet reads as empty, so probe sizes keep
    /// `size - 1` odd (receive buffers are 1,500, 16,384, 65,536 bytes...).
    /// Not empty: librqbit-utp rejects a data packet without payload, so
    /// an empty probe's sequence number never got through to it and the
    /// connection died. Sent only during bulk
    /// sending (a full packet waiting behind it), when the window allows
    /// new data; its padding is not counted in flight.
    fn send_mtu_probe(&mut self, now: Instant, buf: &mut [u8]) -> Option<usize> {
        // A full packet of data must still wait behind the probe, so the
        // FIN (sent once `pending` is empty) never precedes it.
        if self.state != State::Connected || self.pending.len() <= self.mss || !self.probing_allowed
        {
            return None;
        }
        let probe = self.pmtud.poll_probe(now)?;
        let size = probe_size(probe.size.min(buf.len()));
        if size < HEADER_LEN + packet::MIN_PADDING + 1 {
            return None;
        }
        self.pmtud.on_probe_sent(size);
        self.stats.pmtud_probes += 1;
        let byte = self.take_new_data(1);
        debug_assert_eq!(byte.len(), 1);
        let pad = size - HEADER_LEN - byte.len();
        Some(self.send_new(now, PacketType::Data, byte, buf, pad))
    }

    /// Up to `n` bytes of new data for a packet (fewer at the end of a
    /// chunk), counted by the pacer, the rate limit and the statistics.
    fn take_new_data(&mut self, n: usize) -> Bytes {
        let payload = self.pending.take(n);
        let n = payload.len();
        self.pacer.on_sent(n);
        self.limits.on_upload(n);
        self.stats.bytes_sent += n as u64;
        self.stats.max_payload_sent = self.stats.max_payload_sent.max(n);
        payload
    }

    fn send_new(
        &mut self,
        now: Instant,
        ty: PacketType,
        payload: Bytes,
        buf: &mut [u8],
        pad: usize,
    ) -> usize {
        let s = self.seq_nr;
        self.seq_nr = self.seq_nr.wrapping_add(1);
        self.outstanding_bytes += payload.len();
        self.outstanding.push_back(Sent {
            seq: s,
            ty,
            payload,
            last_sent: now,
            transmissions: 0,
            tx_index: 0,
            sacked: false,
            in_flight: false,
            lost: false,
            parked: false,
            pad,
            cost: 0,
        });
        let idx = self.outstanding.len() - 1;
        self.send_outstanding(now, idx, buf, false)
    }

    fn send_outstanding(&mut self, now: Instant, idx: usize, buf: &mut [u8], retx: bool) -> usize {
        // New data into an empty flight gets a whole RTO: a deadline armed
        // while nothing was in flight (the persist timer, see `refresh`)
        // is not its own, and fired a few hundred ms after such a send.
        let starts_flight = !retx && self.in_flight.is_empty();
        self.tx_counter += 1;
        let tx = self.tx_counter;
        let p = &mut self.outstanding[idx];
        p.last_sent = now;
        p.transmissions += 1;
        p.tx_index = tx;
        p.lost = false;
        let (ty, s) = (p.ty, p.seq);
        if retx && p.pad > 0 {
            // The padded probe was lost (or overtaken by a timer): not
            // congestion, and its one byte goes again unpadded.
            let size = HEADER_LEN + p.pad + p.payload.len();
            p.pad = 0;
            self.stats.pmtud_probes_lost += 1;
            self.pmtud.on_probe_lost(size, now);
            self.path_query = true;
            self.sync_mss();
        }
        let p = &mut self.outstanding[idx];
        p.parked = false;
        Self::leave_flight(p, &mut self.in_flight);
        Self::enter_flight(p, &mut self.in_flight);
        if retx {
            self.stats.packets_retransmitted += 1;
        }
        if self.rto_deadline.is_none() || starts_flight {
            self.rto_deadline = Some(now + self.rtt.rto());
        }
        if !self.tlp_fired && !retx {
            self.tlp_deadline = self.pto().map(|d| now + d);
        }
        // Data carries the ack; a separate STATE is only needed for SACKs.
        if self.reorder.is_empty() {
            self.ack_pending = false;
            self.ack_held_until = None;
        }
        let h = self.header(ty, s, now);
        self.last_wnd_sent = h.wnd_size;
        self.stats.packets_sent += 1;
        let p = &self.outstanding[idx];
        self.fragmentable = HEADER_LEN + p.payload.len() > self.pmtud.current();
        if self.split && p.payload.len() >= SPLIT_MIN {
            // The payload comes last in the datagram: it follows the
            // header (and any padding) as is.
            self.split_payload = Some(p.payload.clone());
            return packet::encode_padded(&h, p.pad, &[], buf);
        }
        packet::encode_padded(&h, p.pad, &p.payload, buf)
    }
}

/// `size`, or one byte less if odd: a receiver reading into a buffer one
/// byte shorter than a probe would see the probe's byte of data cut off and
/// the rest intact (see `Connection::send_mtu_probe`), and receive buffers
/// are even (1,500, 16,384, 65,536 bytes; 65,535 is beyond any datagram).
fn probe_size(size: usize) -> usize {
    size & !1
}

/// Payloads below this are "small" for the delayed ack (`Config::ack_delay`):
/// messages of request/response traffic, not bulk data.
const ACK_LATER_BELOW: usize = 1024;

/// Smallest payload [`Connection::poll_transmit_split`] hands out beside
/// the header rather than copying it: below this, one more piece for the
/// kernel to gather costs about what the copy saves.
pub const SPLIT_MIN: usize = 4096;

/// Keeps the most recently sent of the packets an ack covers.
fn note_newest(newest: &mut Option<(Instant, bool)>, p: &Sent) {
    if newest.is_none_or(|(t, _)| p.last_sent >= t) {
        *newest = Some((p.last_sent, p.transmissions == 1));
    }
}

/// Why [`Connection::write`] refused data.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum WriteError {
    /// The connection failed.
    #[error(transparent)]
    Failed(#[from] ConnectionError),
    /// Our direction was already closed.
    #[error("write after close")]
    Closed,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_large_payloads_inside_their_buffer_are_sliced() {
        let owner = Bytes::from(vec![5u8; 65_536]);
        let big = &owner[100..100 + SHARE_MIN];
        let s = shared_slice(Some(&owner), big).expect("large and inside");
        assert_eq!(s.as_ptr(), big.as_ptr(), "a slice, not a copy");
        assert_eq!(s.len(), SHARE_MIN);
        assert!(shared_slice(Some(&owner), &owner[..SHARE_MIN - 1]).is_none());
        assert!(shared_slice(None, big).is_none());
        // Not inside `owner`: never sliced (a slice would be out of bounds).
        let elsewhere = vec![5u8; SHARE_MIN];
        assert!(shared_slice(Some(&owner), &elsewhere).is_none());
        let tail = owner.slice(owner.len() - SHARE_MIN..);
        assert!(shared_slice(Some(&tail), big).is_none(), "before the owner");
    }
}
