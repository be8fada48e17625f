//! Shared helpers for the integration tests: packet building and parsing,
//! draining an endpoint, and a deterministic in-memory network in virtual time.
//!
//! Every test file uses a different subset, hence the `dead_code` allowance.
#![allow(dead_code)]

pub mod alloc;

use std::cmp::Ordering;
use std::collections::BinaryHeap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use utp_proto::packet::{self, Header, Packet, PacketType};
use utp_proto::{Config, ConnHandle, Endpoint};

/// Address of the endpoint under test.
pub fn me() -> SocketAddr {
    "10.0.0.1:6881".parse().unwrap()
}

/// Address of the crafted (or simulated) peer.
pub fn peer() -> SocketAddr {
    "10.0.0.2:6882".parse().unwrap()
}

/// Size of every transmit buffer used by the tests.
pub const BUF: usize = 70_000;

/// A parsed outgoing datagram, owning its bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Out {
    /// Destination.
    pub to: SocketAddr,
    /// Header.
    pub h: Header,
    /// SACK bitmask, if any.
    pub sack: Option<Vec<u8>>,
    /// close_reason extension, if any.
    pub close_reason: Option<u16>,
    /// Payload.
    pub payload: Vec<u8>,
    /// The whole datagram.
    pub raw: Vec<u8>,
}

impl Out {
    /// Parses a datagram; panics when it is not valid uTP (we never emit such).
    pub fn parse(to: SocketAddr, raw: &[u8]) -> Out {
        let p = Packet::parse(raw).expect("endpoint emitted an unparseable datagram");
        Out {
            to,
            h: p.header,
            sack: p.sack.map(<[u8]>::to_vec),
            close_reason: p.close_reason,
            payload: p.payload.to_vec(),
            raw: raw.to_vec(),
        }
    }

    /// Whether SACK bit `i` (packet `ack_nr + 2 + i`) is set.
    pub fn sacked(&self, i: usize) -> bool {
        self.sack.as_deref().is_some_and(|s| packet::sack_bit(s, i))
    }

    /// Sequence numbers the SACK reports as received.
    pub fn sacked_seqs(&self) -> Vec<u16> {
        let Some(s) = self.sack.as_deref() else {
            return Vec::new();
        };
        (0..s.len() * 8)
            .filter(|&i| packet::sack_bit(s, i))
            .map(|i| self.h.ack_nr.wrapping_add(2).wrapping_add(i as u16))
            .collect()
    }
}

/// Everything the endpoint wants to send now, parsed.
pub fn drain(ep: &mut Endpoint, now: Instant) -> Vec<Out> {
    let mut buf = vec![0u8; BUF];
    let mut out = Vec::new();
    while let Some(t) = ep.poll_transmit(now, &mut buf) {
        out.push(Out::parse(t.destination, &buf[..t.len]));
        assert!(out.len() < 100_000, "poll_transmit never returns None");
    }
    out
}

/// An initiator at 10.0.7.1:`port` (SYN id `port`, seq 1) connects to the
/// listening `ep` and the two close cleanly: its FIN, ours, its ack of
/// ours, so our side is in TIME_WAIT. `release`: the application lets go
/// of it (else it only closes it). Returns our handle and the ack the
/// peer's FIN carried.
pub fn close_from(ep: &mut Endpoint, now: Instant, port: u16, release: bool) -> (ConnHandle, u16) {
    let from = SocketAddr::from(([10, 0, 7, 1], port));
    let send = |ep: &mut Endpoint, ty, seq, ack| {
        let h = hdr(ty, port.wrapping_add(1), seq, ack);
        ep.handle_datagram(now, from, &datagram(&h, &[], &[]))
            .unwrap();
        drain(ep, now)
    };
    let syn = hdr(PacketType::Syn, port, 1, 0);
    ep.handle_datagram(now, from, &datagram(&syn, &[], &[]))
        .unwrap();
    let h = ep.accept().expect("accepted");
    assert_eq!(ep.peer_addr(h), from);
    let y = drain(ep, now)[0].h.seq_nr;
    // The SYN-ACK's seq is our first data packet's: it acks `y - 1`.
    send(ep, PacketType::Fin, 2, y.wrapping_sub(1));
    if release {
        ep.release(h, now);
    } else {
        ep.with_conn(h, now, |c| c.close());
    }
    let out = drain(ep, now);
    let fin = out
        .iter()
        .find(|o| o.h.ty == PacketType::Fin)
        .expect("our FIN");
    send(ep, PacketType::State, 3, fin.h.seq_nr);
    (h, y.wrapping_sub(1))
}

/// A header with the given fields, a 1 MiB window and zero timestamps.
pub fn hdr(ty: PacketType, conn_id: u16, seq_nr: u16, ack_nr: u16) -> Header {
    Header {
        ty,
        conn_id,
        timestamp: 0,
        timestamp_diff: 0,
        wnd_size: 1 << 20,
        seq_nr,
        ack_nr,
    }
}

/// Encodes a datagram.
pub fn datagram(h: &Header, sack: &[u8], payload: &[u8]) -> Vec<u8> {
    let mut buf = vec![0u8; packet::encoded_len(sack.len(), payload.len())];
    let n = packet::encode(h, sack, payload, &mut buf);
    assert_eq!(n, buf.len());
    buf
}

/// Builds a SACK bitmask (4-byte multiple) from sequence numbers past `ack`.
pub fn sack_of(ack: u16, seqs: &[u16]) -> Vec<u8> {
    let mut bits = vec![0u8; 4];
    for &s in seqs {
        let i = s.wrapping_sub(ack).wrapping_sub(2) as usize;
        while bits.len() <= i / 8 {
            bits.extend_from_slice(&[0; 4]);
        }
        bits[i / 8] |= 1 << (i % 8);
    }
    bits
}

/// Appends what side `side` read to `got`, asserting it is the next part of
/// `expect` (what the other side sent): never more, never different.
pub fn append_checked(got: &mut Vec<u8>, expect: &[u8], data: &[u8], side: usize) {
    let at = got.len();
    assert!(
        at + data.len() <= expect.len(),
        "side {side}: more bytes than sent"
    );
    assert!(
        data == &expect[at..at + data.len()],
        "side {side}: corrupted stream at byte {at}"
    );
    got.extend_from_slice(data);
}

/// Writes as much of `data[*written..]` as connection `h` takes now;
/// returns how many bytes that was.
pub fn write_now(
    ep: &mut Endpoint,
    h: ConnHandle,
    now: Instant,
    data: &[u8],
    written: &mut usize,
) -> usize {
    let start = *written;
    while *written < data.len() {
        let n = ep
            .with_conn(h, now, |c| c.write(&data[*written..]))
            .expect("writable");
        if n == 0 {
            break;
        }
        *written += n;
    }
    *written - start
}

/// Reads what connection `h` has now, handing each piece to `f`.
pub fn read_now(
    ep: &mut Endpoint,
    h: ConnHandle,
    now: Instant,
    buf: &mut [u8],
    mut f: impl FnMut(&[u8]),
) {
    loop {
        let n = ep.with_conn(h, now, |c| c.read(buf)).expect("readable");
        if n == 0 {
            break;
        }
        f(&buf[..n]);
    }
}

/// Deterministic byte pattern that differs per stream and per position.
pub fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut v = vec![0u8; len];
    rng.fill(&mut v[..]);
    v
}

// ---------------------------------------------------------------- simnet

/// Properties of the simulated path (both directions).
#[derive(Debug, Clone)]
pub struct LinkParams {
    /// One-way propagation delay.
    pub delay: Duration,
    /// Probability a datagram is lost.
    pub loss: f64,
    /// Probability a datagram is delivered twice.
    pub dup: f64,
    /// Probability a datagram gets an extra random delay (reordering).
    pub reorder: f64,
    /// Largest extra delay for a reordered datagram.
    pub reorder_max: Duration,
    /// Bottleneck rate in bytes per second (`None`: unlimited).
    pub rate: Option<u64>,
    /// Longest queue (as waiting time) at the bottleneck before drop-tail.
    pub queue_limit: Duration,
    /// Path MTU (IP packet size; datagrams get 28 bytes of IPv4 and UDP
    /// headers). Larger datagrams sent with DF are dropped silently, as on
    /// a path whose ICMP "fragmentation needed" is filtered; datagrams sent
    /// without DF are fragmented by the router and delivered. `None`: no limit.
    pub mtu: Option<usize>,
}

/// IPv4 + UDP header bytes the simulated path adds to each datagram.
pub const IP_UDP_OVERHEAD: usize = 28;

impl LinkParams {
    /// A clean path: 10 ms one way, no loss, no reordering, unlimited rate,
    /// Ethernet MTU (1500).
    pub fn clean() -> Self {
        Self {
            delay: Duration::from_millis(10),
            loss: 0.0,
            dup: 0.0,
            reorder: 0.0,
            reorder_max: Duration::ZERO,
            rate: None,
            queue_limit: Duration::from_millis(100),
            mtu: Some(1500),
        }
    }

    /// 5% loss, 10% of datagrams delayed by up to 30 ms, 1% duplicated,
    /// 100 Mbit/s bottleneck with a 50 ms drop-tail queue, Ethernet MTU.
    pub fn lossy() -> Self {
        Self {
            delay: Duration::from_millis(15),
            loss: 0.05,
            dup: 0.01,
            reorder: 0.10,
            reorder_max: Duration::from_millis(30),
            rate: Some(12_500_000),
            queue_limit: Duration::from_millis(50),
            mtu: Some(1500),
        }
    }
}

/// What a scripted path does to one datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fate {
    /// Lost.
    pub drop: bool,
    /// Delivered twice (the copy a little later).
    pub dup: bool,
    /// Added to the path delay (reorders it behind later datagrams).
    pub extra_delay: Duration,
}

/// A deterministic impairment pattern instead of random loss: datagram
/// number `i` (both directions counted together) meets `fates[i % len]`,
/// and nothing gets through during a blackout.
#[derive(Debug, Clone, Default)]
pub struct Script {
    /// Fates applied in turn; empty: every datagram passes.
    pub fates: Vec<Fate>,
    /// (start, length) since the simulation started: total outages.
    pub blackouts: Vec<(Duration, Duration)>,
}

struct InFlight {
    at: Instant,
    id: u64,
    to: usize,
    data: Vec<u8>,
}

impl PartialEq for InFlight {
    fn eq(&self, o: &Self) -> bool {
        (self.at, self.id) == (o.at, o.id)
    }
}
impl Eq for InFlight {}
impl PartialOrd for InFlight {
    fn partial_cmp(&self, o: &Self) -> Option<Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for InFlight {
    // Reversed: BinaryHeap is a max-heap, we want the earliest first.
    fn cmp(&self, o: &Self) -> Ordering {
        (o.at, o.id).cmp(&(self.at, self.id))
    }
}

/// Counters of what the network did.
#[derive(Debug, Default, Clone)]
pub struct NetStats {
    /// Datagrams handed to the network.
    pub sent: u64,
    /// Datagrams delivered (duplicates count twice).
    pub delivered: u64,
    /// Random losses.
    pub lost: u64,
    /// Drop-tail losses at the bottleneck.
    pub queue_drops: u64,
    /// Extra copies made.
    pub duplicated: u64,
    /// Datagrams given an extra delay.
    pub reordered: u64,
    /// Datagrams to addresses outside the simulation (replies to packets
    /// a test injected), discarded.
    pub unroutable: u64,
    /// Datagrams (with DF) dropped for exceeding the path MTU.
    pub mtu_drops: u64,
    /// Datagrams sent without DF (fragmentable).
    pub fragmentable: u64,
    /// Their sizes, in the order sent (few: black-hole checks and resends
    /// of packets cut before a fall-back).
    pub fragmentable_sizes: Vec<usize>,
}

/// Two endpoints joined by a lossy, reordering, duplicating path, run in
/// virtual time by a deterministic event loop.
pub struct SimNet {
    /// Virtual time now.
    pub now: Instant,
    /// Virtual time at the start.
    pub start: Instant,
    /// The two endpoints: index 0 at [`me`], index 1 at [`peer`].
    pub eps: [Endpoint; 2],
    /// Their addresses.
    pub addrs: [SocketAddr; 2],
    /// Path properties.
    pub params: LinkParams,
    /// Event-loop iterations so far.
    pub iterations: u64,
    /// What the network did.
    pub stats: NetStats,
    /// The application asks to be called again at this time (a reader that
    /// reads on a schedule); cleared when reached.
    pub app_wake: Option<Instant>,
    /// A scripted impairment replacing the random loss, duplication and
    /// reordering of `params` (delay and rate still apply).
    pub script: Option<Script>,
    script_pos: usize,
    /// Discard (and count) datagrams to addresses other than the two
    /// endpoints' instead of panicking: for tests that inject packets from
    /// elsewhere.
    pub allow_strangers: bool,
    rng: StdRng,
    queue: BinaryHeap<InFlight>,
    link_free: [Instant; 2],
    next_id: u64,
    buf: Vec<u8>,
}

impl SimNet {
    /// Two endpoints with `cfg`; endpoint 1 listens.
    pub fn new(cfg: Config, params: LinkParams, seed: u64) -> Self {
        let start = Instant::now();
        let cfg = Arc::new(cfg);
        let a = Endpoint::with_seed(cfg.clone(), start, seed.wrapping_mul(3).wrapping_add(1));
        let mut b = Endpoint::with_seed(cfg, start, seed.wrapping_mul(7).wrapping_add(2));
        b.set_listening(true);
        Self {
            now: start,
            start,
            eps: [a, b],
            addrs: [me(), peer()],
            params,
            iterations: 0,
            stats: NetStats::default(),
            app_wake: None,
            script: None,
            script_pos: 0,
            allow_strangers: false,
            rng: StdRng::seed_from_u64(seed),
            queue: BinaryHeap::new(),
            link_free: [start; 2],
            next_id: 0,
            buf: vec![0u8; BUF],
        }
    }

    /// Virtual time elapsed since the start.
    pub fn elapsed(&self) -> Duration {
        self.now - self.start
    }

    fn send(&mut self, from: usize, dest: SocketAddr, data: &[u8], fragmentable: bool) {
        let to = 1 - from;
        if self.allow_strangers && dest != self.addrs[to] {
            self.stats.unroutable += 1;
            return;
        }
        assert_eq!(dest, self.addrs[to], "datagram to an unknown address");
        self.stats.sent += 1;
        let p = self.params.clone();
        if fragmentable {
            self.stats.fragmentable += 1;
            self.stats.fragmentable_sizes.push(data.len());
        } else if p.mtu.is_some_and(|m| data.len() + IP_UDP_OVERHEAD > m) {
            self.stats.mtu_drops += 1;
            return;
        }
        if let Some(fate) = self.scripted_fate() {
            if fate.drop {
                self.stats.lost += 1;
                return;
            }
            self.stats.duplicated += u64::from(fate.dup);
            self.stats.reordered += u64::from(!fate.extra_delay.is_zero());
            let at = self.now + p.delay + fate.extra_delay;
            self.enqueue(to, at, data);
            if fate.dup {
                self.enqueue(to, at + Duration::from_millis(1), data);
            }
            return;
        }
        if p.loss > 0.0 && self.rng.gen_bool(p.loss) {
            self.stats.lost += 1;
            return;
        }
        let copies = if p.dup > 0.0 && self.rng.gen_bool(p.dup) {
            self.stats.duplicated += 1;
            2
        } else {
            1
        };
        for _ in 0..copies {
            let mut at = self.now;
            if let Some(rate) = p.rate {
                let start = self.link_free[from].max(self.now);
                if start - self.now > p.queue_limit {
                    self.stats.queue_drops += 1;
                    continue;
                }
                let tx = Duration::from_nanos(data.len() as u64 * 1_000_000_000 / rate);
                self.link_free[from] = start + tx;
                at = start + tx;
            }
            at += p.delay;
            if p.reorder > 0.0 && self.rng.gen_bool(p.reorder) {
                self.stats.reordered += 1;
                let extra = self.rng.gen_range(0..=p.reorder_max.as_micros() as u64);
                at += Duration::from_micros(extra);
            }
            self.enqueue(to, at, data);
        }
    }

    /// The scripted fate of the next datagram, if a script is set.
    fn scripted_fate(&mut self) -> Option<Fate> {
        let sc = self.script.as_ref()?;
        let t = self.now - self.start;
        if sc.blackouts.iter().any(|&(s, l)| t >= s && t < s + l) {
            return Some(Fate {
                drop: true,
                dup: false,
                extra_delay: Duration::ZERO,
            });
        }
        if sc.fates.is_empty() {
            return Some(Fate {
                drop: false,
                dup: false,
                extra_delay: Duration::ZERO,
            });
        }
        let f = sc.fates[self.script_pos % sc.fates.len()];
        self.script_pos += 1;
        Some(f)
    }

    fn enqueue(&mut self, to: usize, at: Instant, data: &[u8]) {
        self.next_id += 1;
        self.queue.push(InFlight {
            at,
            id: self.next_id,
            to,
            data: data.to_vec(),
        });
    }

    /// Runs the event loop until `app` returns true. Each iteration delivers
    /// due datagrams, runs due timers, calls `app`, drains both endpoints'
    /// transmissions, then jumps to the next event. Panics (with context)
    /// when virtual time or iterations exceed the bounds, or when nothing is
    /// scheduled while `app` is not done (a stall).
    pub fn run(
        &mut self,
        max_virtual: Duration,
        max_iters: u64,
        mut app: impl FnMut(&mut SimNet) -> bool,
    ) {
        let first = self.iterations;
        loop {
            self.iterations += 1;
            assert!(
                self.iterations - first <= max_iters,
                "simnet: more than {max_iters} iterations (at {:?} virtual, {:?})",
                self.elapsed(),
                self.stats
            );
            assert!(
                self.elapsed() <= max_virtual,
                "simnet: virtual time bound {max_virtual:?} exceeded ({:?})",
                self.stats
            );
            while self.queue.peek().is_some_and(|d| d.at <= self.now) {
                let d = self.queue.pop().expect("peeked");
                let from = self.addrs[1 - d.to];
                self.stats.delivered += 1;
                self.eps[d.to]
                    .handle_datagram(self.now, from, &d.data)
                    .expect("endpoints only send valid uTP");
            }
            let now = self.now;
            for ep in &mut self.eps {
                ep.handle_timeout(now);
            }
            if app(self) {
                return;
            }
            for i in 0..2 {
                let mut n = 0;
                while let Some(t) = self.eps[i].poll_transmit(now, &mut self.buf) {
                    let data = self.buf[..t.len].to_vec();
                    self.send(i, t.destination, &data, t.fragmentable);
                    n += 1;
                    assert!(n < 1_000_000, "poll_transmit never returns None");
                }
            }
            if self.app_wake.is_some_and(|t| t <= self.now) {
                self.app_wake = None;
            }
            let next = [
                self.app_wake,
                self.queue.peek().map(|d| d.at),
                self.eps[0].poll_timeout(),
                self.eps[1].poll_timeout(),
            ]
            .into_iter()
            .flatten()
            .min();
            match next {
                Some(t) if t > self.now => self.now = t,
                Some(_) => {}
                None => panic!(
                    "simnet stalled at {:?}: no datagram in flight and no timer armed ({:?}, {} + {} connections)",
                    self.elapsed(),
                    self.stats,
                    self.eps[0].connection_count(),
                    self.eps[1].connection_count()
                ),
            }
        }
    }
}
