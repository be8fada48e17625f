//! The simulated network: a dumbbell of flows sharing one bottleneck link in
//! each direction, run by a discrete-event loop in virtual time.

use std::cmp::Ordering;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use utp_proto::{Config, ConnHandle, Endpoint};

use crate::reno::{self, Nanos, RenoReceiver, RenoSender, Segment};
use crate::result::{FlowSeries, SimResult};

/// Bytes of IPv4 and UDP headers added to every uTP datagram on the wire.
pub const UDP_OVERHEAD: usize = 28;

/// How much a link's queue holds before it drops (drop-tail).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Buffer {
    /// At most this many packets, the one being sent included.
    Packets(usize),
    /// At most this many bytes, the packet being sent included.
    Bytes(usize),
}

/// One direction of the bottleneck.
#[derive(Debug, Clone)]
pub struct LinkSpec {
    /// Rate in bits per second.
    pub rate_bps: u64,
    /// One-way propagation delay.
    pub delay: Duration,
    /// Extra random delay per packet, up to this much, order kept (the
    /// delivery of a packet never precedes the previous one's).
    pub jitter: Duration,
    /// Queue size.
    pub buffer: Buffer,
    /// Probability a packet is lost (before the queue).
    pub loss: f64,
    /// Probability a packet gets an extra delay that can reorder it.
    pub reorder: f64,
    /// Largest extra delay of a reordered packet.
    pub reorder_extra: Duration,
    /// Probability a packet is delivered twice.
    pub duplicate: f64,
    /// Largest packet on the wire (IP header included); bigger ones vanish,
    /// as on a path that filters ICMP.
    pub mtu: usize,
}

impl LinkSpec {
    /// A clean link: this rate and delay, a queue of `buffer`, no
    /// impairments, a 1500-byte MTU.
    pub fn new(rate_bps: u64, delay: Duration, buffer: Buffer) -> Self {
        Self {
            rate_bps: rate_bps.max(1),
            delay,
            jitter: Duration::ZERO,
            buffer,
            loss: 0.0,
            reorder: 0.0,
            reorder_extra: Duration::ZERO,
            duplicate: 0.0,
            mtu: 1500,
        }
    }

    fn tx_time(&self, bytes: usize) -> Nanos {
        (bytes as u128 * 8 * 1_000_000_000 / u128::from(self.rate_bps)) as Nanos
    }
}

/// A host's clock against true (virtual) time.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct ClockSpec {
    /// Offset from true time, in microseconds (may be negative).
    pub offset_us: i64,
    /// Rate error in parts per million (positive: runs fast).
    pub drift_ppm: f64,
}

/// What kind of sender a flow uses.
#[derive(Debug, Clone)]
pub enum FlowKind {
    /// A uTP connection with this configuration (both ends).
    Utp(Box<Config>),
    /// The loss-based reference flow.
    Reno,
}

/// One flow: a sender on the left of the bottleneck, a receiver on the right.
#[derive(Debug, Clone)]
pub struct FlowSpec {
    /// Name in reports and plots.
    pub label: String,
    /// Sender kind.
    pub kind: FlowKind,
    /// When the sender starts.
    pub start: Duration,
    /// When the sender stops sending new data (`None`: never).
    pub stop: Option<Duration>,
    /// Sender's clock.
    pub sender_clock: ClockSpec,
    /// Receiver's clock.
    pub receiver_clock: ClockSpec,
}

impl FlowSpec {
    /// A bulk uTP flow with the default configuration, from `start` on.
    pub fn utp(label: &str, start: Duration) -> Self {
        Self {
            label: label.to_string(),
            kind: FlowKind::Utp(Box::default()),
            start,
            stop: None,
            sender_clock: ClockSpec::default(),
            receiver_clock: ClockSpec::default(),
        }
    }

    /// A bulk loss-based reference flow from `start` on.
    pub fn reno(label: &str, start: Duration) -> Self {
        Self {
            kind: FlowKind::Reno,
            ..Self::utp(label, start)
        }
    }
}

/// A whole simulation.
#[derive(Debug, Clone)]
pub struct SimSpec {
    /// Seed of every random choice.
    pub seed: u64,
    /// Virtual time to run.
    pub duration: Duration,
    /// Senders to receivers (data).
    pub forward: LinkSpec,
    /// Receivers to senders (acks).
    pub reverse: LinkSpec,
    /// The flows.
    pub flows: Vec<FlowSpec>,
    /// Interval of the time series.
    pub sample_every: Duration,
}

fn ns(d: Duration) -> Nanos {
    d.as_nanos().min(u128::from(u64::MAX)) as Nanos
}

/// Host clocks are mapped onto `Instant`s this far after the origin, so that
/// negative offsets stay representable.
const CLOCK_BASE_NS: i64 = 3_600_000_000_000;

#[derive(Debug, Clone, Copy)]
struct Clock {
    origin: Instant,
    offset_ns: i64,
    rate: f64,
}

impl Clock {
    fn new(origin: Instant, spec: ClockSpec) -> Self {
        Self {
            origin,
            offset_ns: spec.offset_us.saturating_mul(1000),
            rate: 1.0 + spec.drift_ppm * 1e-6,
        }
    }

    fn local(&self, t: Nanos) -> Instant {
        let l = CLOCK_BASE_NS + self.offset_ns + (t as f64 * self.rate) as i64;
        self.origin + Duration::from_nanos(l.max(0) as u64)
    }

    /// The first virtual time at which the local clock reads `at` or later.
    fn virt(&self, at: Instant) -> Nanos {
        let l = at.saturating_duration_since(self.origin).as_nanos() as i64
            - CLOCK_BASE_NS
            - self.offset_ns;
        // +1: rounding must never make a timer fire a hair early (it would
        // not be due and would be rescheduled at the same instant forever).
        ((l as f64 / self.rate).ceil().max(0.0) as Nanos).saturating_add(1)
    }
}

#[derive(Debug)]
enum Body {
    Utp(Vec<u8>),
    Reno(Segment),
}

#[derive(Debug)]
struct Pkt {
    src: usize,
    dst: usize,
    wire: usize,
    enqueued: Nanos,
    body: Body,
}

#[derive(Debug)]
enum Ev {
    LinkDone(usize),
    Arrive(Pkt),
    Timer(usize),
    Start(usize),
    Stop(usize),
    Sample,
}

struct Event {
    at: Nanos,
    seq: u64,
    ev: Ev,
}

impl PartialEq for Event {
    fn eq(&self, o: &Self) -> bool {
        (self.at, self.seq) == (o.at, o.seq)
    }
}
impl Eq for Event {}
impl PartialOrd for Event {
    fn partial_cmp(&self, o: &Self) -> Option<Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Event {
    // Reversed: BinaryHeap is a max-heap and the earliest event goes first.
    fn cmp(&self, o: &Self) -> Ordering {
        (o.at, o.seq).cmp(&(self.at, self.seq))
    }
}

struct Link {
    spec: LinkSpec,
    queue: VecDeque<Pkt>,
    bytes: usize,
    busy: bool,
    last_delivery: Nanos,
    /// Wire bytes sent since the last sample.
    sent_since_sample: u64,
    record_delays: bool,
}

struct UtpHost {
    ep: Endpoint,
    clock: Clock,
    conn: Option<ConnHandle>,
    sender: bool,
}

enum HostKind {
    Utp(Box<UtpHost>),
    RenoSender(RenoSender),
    RenoReceiver(RenoReceiver),
}

struct Host {
    kind: HostKind,
    addr: SocketAddr,
    flow: usize,
    /// Link this host sends on.
    link: usize,
    timer: Option<Nanos>,
}

/// Per-flow running figures.
#[derive(Default)]
struct FlowState {
    delivered: u64,
    delivered_at_sample: u64,
    started: bool,
    stopped: bool,
}

/// A simulation ready to run.
pub struct Sim {
    spec: SimSpec,
    now: Nanos,
    seq: u64,
    events: BinaryHeap<Event>,
    links: [Link; 2],
    hosts: Vec<Host>,
    by_addr: HashMap<SocketAddr, usize>,
    flows: Vec<FlowState>,
    rng: StdRng,
    buf: Vec<u8>,
    scratch: Vec<u8>,
    write_chunk: Vec<u8>,
    result: SimResult,
}

impl Sim {
    /// Builds the hosts and links of `spec`.
    pub fn new(spec: SimSpec) -> Self {
        let origin = Instant::now();
        let mut rng = StdRng::seed_from_u64(spec.seed);
        let mut hosts = Vec::new();
        let mut by_addr = HashMap::new();
        for (f, flow) in spec.flows.iter().enumerate() {
            for side in 0..2 {
                let i = hosts.len();
                let addr = SocketAddr::from(([10, side as u8, (f >> 8) as u8, f as u8], 6881));
                let clock_spec = if side == 0 {
                    flow.sender_clock
                } else {
                    flow.receiver_clock
                };
                let kind = match (&flow.kind, side) {
                    (FlowKind::Utp(cfg), _) => {
                        let clock = Clock::new(origin, clock_spec);
                        let mut ep = Endpoint::with_seed(
                            Arc::new((**cfg).clone()),
                            clock.local(0),
                            rng.gen(),
                        );
                        ep.set_listening(side == 1);
                        HostKind::Utp(Box::new(UtpHost {
                            ep,
                            clock,
                            conn: None,
                            sender: side == 0,
                        }))
                    }
                    (FlowKind::Reno, 0) => HostKind::RenoSender(RenoSender::new()),
                    (FlowKind::Reno, _) => HostKind::RenoReceiver(RenoReceiver::default()),
                };
                by_addr.insert(addr, i);
                hosts.push(Host {
                    kind,
                    addr,
                    flow: f,
                    link: side,
                    timer: None,
                });
            }
        }
        let result = SimResult::new(&spec);
        let mut sim = Self {
            now: 0,
            seq: 0,
            events: BinaryHeap::new(),
            links: [
                Link::new(spec.forward.clone(), true),
                Link::new(spec.reverse.clone(), false),
            ],
            flows: spec.flows.iter().map(|_| FlowState::default()).collect(),
            hosts,
            by_addr,
            rng,
            buf: vec![0; 70_000],
            scratch: vec![0; 256 * 1024],
            write_chunk: vec![0x5a; 256 * 1024],
            result,
            spec,
        };
        for f in 0..sim.spec.flows.len() {
            let flow = &sim.spec.flows[f];
            let (start, stop) = (ns(flow.start), flow.stop.map(ns));
            sim.schedule(start, Ev::Start(f));
            if let Some(stop) = stop {
                sim.schedule(stop, Ev::Stop(f));
            }
        }
        let every = ns(sim.spec.sample_every).max(1);
        sim.schedule(every, Ev::Sample);
        sim
    }

    fn schedule(&mut self, at: Nanos, ev: Ev) {
        self.seq += 1;
        self.events.push(Event {
            at,
            seq: self.seq,
            ev,
        });
    }

    /// Runs to the end and returns what was measured.
    pub fn run(mut self) -> SimResult {
        let wall = std::time::Instant::now();
        let end = ns(self.spec.duration);
        while let Some(e) = self.events.pop() {
            if e.at > end {
                break;
            }
            self.now = e.at;
            self.result.events += 1;
            match e.ev {
                Ev::LinkDone(l) => self.link_done(l),
                Ev::Arrive(p) => self.arrive(p),
                Ev::Timer(h) => {
                    if self.hosts[h].timer == Some(self.now) {
                        self.hosts[h].timer = None;
                        self.timer(h);
                        self.service(h);
                    }
                }
                Ev::Start(f) => self.start_flow(f),
                Ev::Stop(f) => {
                    self.flows[f].stopped = true;
                    for h in [2 * f, 2 * f + 1] {
                        self.service(h);
                    }
                }
                Ev::Sample => {
                    self.sample();
                    let every = ns(self.spec.sample_every).max(1);
                    self.schedule(self.now + every, Ev::Sample);
                }
            }
        }
        self.finish(wall.elapsed())
    }

    fn start_flow(&mut self, f: usize) {
        self.flows[f].started = true;
        let (s, r) = (2 * f, 2 * f + 1);
        let dest = self.hosts[r].addr;
        let now = self.now;
        if let HostKind::Utp(u) = &mut self.hosts[s].kind {
            let local = u.clock.local(now);
            u.conn = u.ep.connect(local, dest).ok();
        }
        self.service(s);
    }

    /// Runs a host's application and flushes what it wants to send.
    fn service(&mut self, h: usize) {
        let now = self.now;
        let f = self.hosts[h].flow;
        let stopped = self.flows[f].stopped;
        let mut out: Vec<(usize, usize, Body)> = Vec::new();
        let peer = h ^ 1;
        let next_timer;
        match &mut self.hosts[h].kind {
            HostKind::Utp(u) => {
                let local = u.clock.local(now);
                if u.sender {
                    if let Some(c) = u.conn {
                        if stopped {
                            u.ep.with_conn(c, local, |c| c.close());
                        } else if u.ep.conn(c).is_established() {
                            let chunk = &self.write_chunk;
                            u.ep.with_conn(c, local, |c| while let Ok(1..) = c.write(chunk) {});
                        }
                    }
                } else {
                    while let Some(c) = u.ep.accept() {
                        u.conn = Some(c);
                    }
                    if let Some(c) = u.conn {
                        let scratch = &mut self.scratch;
                        let got = u.ep.with_conn(c, local, |c| {
                            let mut total = 0u64;
                            while let Ok(n @ 1..) = c.read(scratch) {
                                total += n as u64;
                            }
                            total
                        });
                        self.flows[f].delivered += got;
                    }
                }
                while let Some(t) = u.ep.poll_transmit(local, &mut self.buf) {
                    let dst = self.by_addr.get(&t.destination).copied().unwrap_or(peer);
                    out.push((
                        dst,
                        t.len + UDP_OVERHEAD,
                        Body::Utp(self.buf[..t.len].to_vec()),
                    ));
                }
                next_timer = u.ep.poll_timeout().map(|at| u.clock.virt(at));
            }
            HostKind::RenoSender(s) => {
                s.stopped = stopped;
                while let Some(seg) = s.poll_send(now) {
                    out.push((peer, reno::DATA_WIRE, Body::Reno(seg)));
                }
                next_timer = s.rto_at;
            }
            HostKind::RenoReceiver(r) => {
                self.flows[f].delivered = r.delivered;
                next_timer = None;
            }
        }
        let link = self.hosts[h].link;
        for (dst, wire, body) in out {
            self.enqueue(link, h, dst, wire, body);
        }
        let next_timer = next_timer.map(|t| t.max(now + 1));
        if next_timer != self.hosts[h].timer {
            self.hosts[h].timer = next_timer;
            if let Some(t) = next_timer {
                self.schedule(t, Ev::Timer(h));
            }
        }
    }

    fn timer(&mut self, h: usize) {
        let now = self.now;
        match &mut self.hosts[h].kind {
            HostKind::Utp(u) => {
                let local = u.clock.local(now);
                u.ep.handle_timeout(local);
            }
            HostKind::RenoSender(s) => {
                if s.rto_at.is_some_and(|t| t <= now) {
                    s.on_timeout(now);
                }
            }
            HostKind::RenoReceiver(_) => {}
        }
    }

    fn arrive(&mut self, p: Pkt) {
        let now = self.now;
        let h = p.dst;
        let from = self.hosts[p.src].addr;
        let mut reply = None;
        match (&mut self.hosts[h].kind, p.body) {
            (HostKind::Utp(u), Body::Utp(data)) => {
                let local = u.clock.local(now);
                // Endpoints only emit valid uTP; a parse error would be a bug
                // the counters show.
                let _ = u.ep.handle_datagram(local, from, &data);
            }
            (HostKind::RenoSender(s), Body::Reno(Segment::Ack { cum, seq, echo })) => {
                s.on_ack(now, cum, seq, echo);
            }
            (HostKind::RenoReceiver(r), Body::Reno(Segment::Data { seq, sent })) => {
                reply = Some(r.on_data(seq, sent));
            }
            _ => {}
        }
        if let Some(ack) = reply {
            let link = self.hosts[h].link;
            self.enqueue(link, h, p.src, reno::ACK_WIRE, Body::Reno(ack));
        }
        self.service(h);
    }

    fn enqueue(&mut self, l: usize, src: usize, dst: usize, wire: usize, body: Body) {
        let now = self.now;
        let link = &mut self.links[l];
        let stats = &mut self.result.links[l];
        stats.offered += 1;
        if wire > link.spec.mtu {
            stats.mtu_drops += 1;
            return;
        }
        if link.spec.loss > 0.0 && self.rng.gen_bool(link.spec.loss.clamp(0.0, 1.0)) {
            stats.random_losses += 1;
            return;
        }
        let full = match link.spec.buffer {
            Buffer::Packets(n) => link.queue.len() >= n.max(1),
            Buffer::Bytes(n) => link.bytes + wire > n.max(wire),
        };
        if full {
            stats.queue_drops += 1;
            stats.drop_times.push(now);
            return;
        }
        link.bytes += wire;
        link.queue.push_back(Pkt {
            src,
            dst,
            wire,
            enqueued: now,
            body,
        });
        if !link.busy {
            self.start_tx(l);
        }
    }

    fn start_tx(&mut self, l: usize) {
        let now = self.now;
        let link = &mut self.links[l];
        let Some(p) = link.queue.front() else {
            link.busy = false;
            return;
        };
        link.busy = true;
        if link.record_delays {
            self.result
                .queue_delays
                .push((p.enqueued, now - p.enqueued));
        }
        let done = now + link.spec.tx_time(p.wire);
        self.schedule(done, Ev::LinkDone(l));
    }

    fn link_done(&mut self, l: usize) {
        let now = self.now;
        let link = &mut self.links[l];
        let Some(p) = link.queue.pop_front() else {
            link.busy = false;
            return;
        };
        link.bytes -= p.wire;
        link.sent_since_sample += p.wire as u64;
        let spec = &link.spec;
        let mut at = now + ns(spec.delay);
        if spec.jitter > Duration::ZERO {
            at += self.rng.gen_range(0..=ns(spec.jitter));
        }
        // Jitter keeps order; only "reordering" reorders.
        at = at.max(link.last_delivery);
        link.last_delivery = at;
        if spec.reorder > 0.0 && self.rng.gen_bool(spec.reorder.clamp(0.0, 1.0)) {
            at += self.rng.gen_range(0..=ns(spec.reorder_extra));
            self.result.links[l].reordered += 1;
        }
        let dup = spec.duplicate > 0.0 && self.rng.gen_bool(spec.duplicate.clamp(0.0, 1.0));
        if dup {
            let copy = match &p.body {
                Body::Utp(d) => Body::Utp(d.clone()),
                Body::Reno(s) => Body::Reno(*s),
            };
            self.result.links[l].duplicated += 1;
            self.schedule(
                at + 1,
                Ev::Arrive(Pkt {
                    body: copy,
                    enqueued: p.enqueued,
                    ..p
                }),
            );
        }
        self.schedule(at, Ev::Arrive(p));
        self.start_tx(l);
    }

    fn sample(&mut self) {
        let every = self.spec.sample_every.as_secs_f64().max(1e-9);
        let t = self.now as f64 / 1e9;
        let r = &mut self.result;
        r.t.push(t);
        for (l, link) in self.links.iter_mut().enumerate() {
            let cap = link.spec.rate_bps as f64 * every / 8.0;
            r.links[l]
                .utilization
                .push(link.sent_since_sample as f64 / cap);
            r.links[l].sent_bytes += link.sent_since_sample;
            link.sent_since_sample = 0;
            // Waiting time a packet joining the queue now would see.
            let q = link.spec.tx_time(link.bytes) as f64 / 1e6;
            r.links[l].queue_ms.push(q);
        }
        for (f, flow) in self.flows.iter_mut().enumerate() {
            let series: &mut FlowSeries = &mut r.flows[f];
            let got = flow.delivered - flow.delivered_at_sample;
            flow.delivered_at_sample = flow.delivered;
            series.goodput_bps.push(got as f64 * 8.0 / every);
            let (cwnd, est) = match &self.hosts[2 * f].kind {
                HostKind::Utp(u) => match u.conn {
                    Some(c) => {
                        let s = u.ep.conn(c).stats();
                        (
                            s.cwnd as f64,
                            s.delay.map(|d| d.queuing_delay.as_secs_f64() * 1e3),
                        )
                    }
                    None => (0.0, None),
                },
                HostKind::RenoSender(s) => (s.window_bytes() as f64, None),
                HostKind::RenoReceiver(_) => (0.0, None),
            };
            series
                .cwnd_bytes
                .push(if flow.started { cwnd } else { 0.0 });
            series.queuing_estimate_ms.push(est);
        }
    }

    fn finish(mut self, wall: Duration) -> SimResult {
        let mut r = std::mem::replace(&mut self.result, SimResult::new(&self.spec));
        r.wall = wall;
        for (f, flow) in self.flows.iter().enumerate() {
            r.flows[f].delivered_bytes = flow.delivered;
            match &self.hosts[2 * f].kind {
                HostKind::Utp(u) => {
                    if let Some(c) = u.conn {
                        let s = u.ep.conn(c).stats();
                        r.flows[f].retransmits = s.packets_retransmitted;
                        r.flows[f].timeouts = s.timeouts;
                    }
                }
                HostKind::RenoSender(s) => {
                    r.flows[f].retransmits = s.retransmits;
                    r.flows[f].timeouts = s.timeouts;
                }
                HostKind::RenoReceiver(_) => {}
            }
        }
        r
    }
}

impl Link {
    fn new(spec: LinkSpec, record_delays: bool) -> Self {
        Self {
            spec,
            queue: VecDeque::new(),
            bytes: 0,
            busy: false,
            last_delivery: 0,
            sent_since_sample: 0,
            record_delays,
        }
    }
}
