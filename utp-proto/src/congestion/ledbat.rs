//! LEDBAT (RFC 6817) as libutp and libtorrent run it, with the remedies of
//! LEDBAT++ (draft-irtf-iccrg-ledbat-plus-plus) for its known weaknesses.
//!
//! - One-way delay samples come from the peer's `timestamp_difference`; the
//!   base delay is the minimum over a rotating history of buckets, the
//!   current delay the minimum of the last few samples, and
//!   `queuing delay = current - base` (wrapping: clocks are not synchronised).
//! - Below the target the window grows by at most `gain` packets per RTT, in
//!   proportion to how far below target the queue is (RFC 6817). Above it the
//!   window shrinks multiplicatively, by `W * (delay / target - 1)` packets per
//!   RTT, at most half (LEDBAT++): competing LEDBAT flows then converge to
//!   equal shares like AIMD flows do, and a loss-based flow gets the link fast.
//! - Slow start until the queuing delay passes 3/4 of the target, or a loss.
//! - Slowdowns (LEDBAT++): two RTTs after the initial slow start, and then
//!   periodically (every `slowdown_spacing` times as long as the last
//!   slowdown took), the window is frozen at two packets for two RTTs and
//!   then regrown by slow start. The queue drains, so every flow measures the
//!   true base delay. This cures the latecomer advantage (a flow that starts
//!   on a standing queue takes that queue for base delay and starves the
//!   others) and keeps a flow's own standing queue from creeping into its
//!   base as the history rotates.
//! - Clock skew: the peer's clock drifts against ours, so forward samples
//!   drift too. A drift that makes them grow would leave a stale base and an
//!   inflated queue estimate; the reverse-direction samples (our measurement
//!   of the peer's packets) drift the other way by the same amount, so each
//!   drop of the reverse base shifts the forward base up by as much (the rule
//!   libutp uses, capped at 10 ms per step).

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use super::{AckInfo, Controller, ControllerFactory, DelayState};

/// LEDBAT's settings, with the defaults of [`LedbatConfig::default`].
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct LedbatConfig {
    /// Queueing delay to aim for. Default 100 ms (RFC 6817's upper bound,
    /// what libutp and libtorrent use).
    pub target: Duration,
    /// Largest window growth per RTT, in packets, when the queue is empty.
    /// Default 1 (like Reno's additive increase).
    pub gain: f64,
    /// Window at the start, in packets. Default 4.
    pub initial_window_packets: usize,
    /// Smallest window, in packets. Default 2.
    pub min_window_packets: usize,
    /// Largest window, in bytes. Default 16 MiB.
    pub max_window: usize,
    /// Base delay history: number of buckets. Default 10.
    pub history_buckets: usize,
    /// Base delay history: time each bucket covers. Default 60 s, so the
    /// base follows route changes within 10 minutes.
    pub bucket: Duration,
    /// Current delay: minimum of this many latest samples. Default 4.
    pub current_filter: usize,
    /// Whether to do LEDBAT++ slowdowns. Default true.
    pub slowdowns: bool,
    /// Time between slowdowns, as a multiple of how long the last one took
    /// (LEDBAT++ uses 9, for at most ~10% utilisation cost). Default 12.
    pub slowdown_spacing: u32,
}

impl Default for LedbatConfig {
    fn default() -> Self {
        Self {
            target: Duration::from_millis(100),
            gain: 1.0,
            initial_window_packets: 4,
            min_window_packets: 2,
            max_window: 16 << 20,
            history_buckets: 10,
            bucket: Duration::from_secs(60),
            current_filter: 4,
            slowdowns: true,
            slowdown_spacing: 12,
        }
    }
}

impl LedbatConfig {
    /// Sets [`LedbatConfig::target`].
    pub fn target(mut self, v: Duration) -> Self {
        self.target = v;
        self
    }

    /// Sets [`LedbatConfig::slowdowns`].
    pub fn slowdowns(mut self, v: bool) -> Self {
        self.slowdowns = v;
        self
    }

    /// Sets [`LedbatConfig::max_window`].
    pub fn max_window(mut self, v: usize) -> Self {
        self.max_window = v;
        self
    }
}

/// `a < b` for wrapping µs delays.
fn delay_lt(a: u32, b: u32) -> bool {
    (a.wrapping_sub(b) as i32) < 0
}

/// Minimum one-way delay per time bucket over a sliding history.
#[derive(Debug, Clone)]
struct DelayHistory {
    /// Minimum of each bucket, oldest first; the last one is filling.
    mins: VecDeque<u32>,
    /// When the filling bucket ends (None: never, for a bucket too long to
    /// add to the clock). An end, not a start: one comparison per sample.
    ends: Option<Instant>,
    bucket: Duration,
    max_buckets: usize,
    /// The minimum over `mins`, kept up to date by every change to them:
    /// it is asked for two or three times per ack, and most acks change
    /// no bucket's minimum.
    base: Option<u32>,
}

impl DelayHistory {
    fn new(bucket: Duration, max_buckets: usize) -> Self {
        Self {
            mins: VecDeque::with_capacity(max_buckets.max(1)),
            ends: None,
            bucket,
            max_buckets: max_buckets.max(1),
            base: None,
        }
    }

    fn add(&mut self, now: Instant, sample: u32) {
        match self.mins.back_mut() {
            Some(last) if self.ends.is_none_or(|e| now < e) => {
                if !delay_lt(sample, *last) {
                    return;
                }
                *last = sample;
            }
            _ => {
                if self.mins.len() == self.max_buckets {
                    self.mins.pop_front();
                }
                self.mins.push_back(sample);
                self.ends = now.checked_add(self.bucket);
            }
        }
        self.refresh_base();
    }

    /// Recomputes `base` the one way it is defined (the comparison wraps,
    /// so the fold's order matters where samples are half the range apart).
    fn refresh_base(&mut self) {
        let mut it = self.mins.iter().copied();
        self.base = it
            .next()
            .map(|first| it.fold(first, |m, x| if delay_lt(x, m) { x } else { m }));
    }

    fn base(&self) -> Option<u32> {
        self.base
    }

    fn shift(&mut self, by: u32) {
        for m in &mut self.mins {
            *m = m.wrapping_add(by);
        }
        self.refresh_base();
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Initial slow start.
    SlowStart,
    /// Congestion avoidance: the LEDBAT rule.
    Avoidance,
    /// A slowdown: the window is held at the minimum until `until`.
    Frozen { since: Instant, until: Instant },
    /// Slow start back to `ssthresh`, after a slowdown (`since` is when it
    /// began) or a timeout (`None`).
    Regrow { since: Option<Instant> },
}

/// The LEDBAT controller (see the module docs).
#[derive(Debug, Clone)]
pub struct Ledbat {
    cfg: LedbatConfig,
    mss: usize,
    /// Window in bytes; fractional so that small per-ack steps add up.
    cwnd: f64,
    ssthresh: f64,
    phase: Phase,
    next_slowdown: Option<Instant>,
    forward: DelayHistory,
    reverse: DelayHistory,
    /// Latest forward samples (the current-delay filter).
    recent: VecDeque<u32>,
    srtt: Option<Duration>,
    /// Nothing acked or lost yet: the window is still the initial one.
    fresh: bool,
    /// (cwnd, ssthresh, phase, next slowdown) before the last loss's cut,
    /// for an undo.
    before_loss: Option<(f64, f64, Phase, Option<Instant>)>,
}

impl Ledbat {
    /// Most the forward base is shifted for one drop of the reverse base: a
    /// bigger drop is a path change, not clock drift.
    const MAX_DRIFT_STEP_US: u32 = 10_000;

    /// A controller for packets of up to `mss` payload bytes.
    pub fn new(mss: usize, cfg: LedbatConfig) -> Self {
        let mss = mss.max(1);
        Self {
            cwnd: (mss * cfg.initial_window_packets.max(1)) as f64,
            ssthresh: f64::INFINITY,
            phase: Phase::SlowStart,
            next_slowdown: None,
            forward: DelayHistory::new(cfg.bucket, cfg.history_buckets),
            reverse: DelayHistory::new(cfg.bucket, cfg.history_buckets),
            recent: VecDeque::with_capacity(cfg.current_filter.max(1)),
            srtt: None,
            fresh: true,
            before_loss: None,
            mss,
            cfg,
        }
    }

    fn min_window(&self) -> f64 {
        (self.mss * self.cfg.min_window_packets.max(1)) as f64
    }

    fn rtt(&self) -> Duration {
        self.srtt.unwrap_or(Duration::from_millis(100))
    }

    /// Current queueing delay estimate, once the peer reported a delay.
    pub fn queuing_delay(&self) -> Option<Duration> {
        let base = self.forward.base()?;
        let mut it = self.recent.iter().copied();
        let first = it.next()?;
        let current = it.fold(first, |m, x| if delay_lt(x, m) { x } else { m });
        let q = current.wrapping_sub(base) as i32;
        Some(Duration::from_micros(q.max(0) as u64))
    }

    /// Takes the delays `ack` reports; returns the queueing delay after them
    /// (computed once per ack: it folds over the recent samples and the
    /// history).
    fn sample(&mut self, now: Instant, ack: &AckInfo) -> Option<Duration> {
        if ack.reverse_delay_us != 0 {
            let before = self.reverse.base();
            self.reverse.add(now, ack.reverse_delay_us);
            if let (Some(b), Some(a)) = (before, self.reverse.base()) {
                let drop = b.wrapping_sub(a);
                if (drop as i32) > 0 && drop <= Self::MAX_DRIFT_STEP_US {
                    self.forward.shift(drop);
                }
            }
        }
        if ack.peer_delay_us != 0 {
            self.forward.add(now, ack.peer_delay_us);
            if self.recent.len() >= self.cfg.current_filter.max(1) {
                self.recent.pop_front();
            }
            self.recent.push_back(ack.peer_delay_us);
        }
        // A one-way queueing delay longer than the whole round trip is
        // impossible: the base is wrong (a bogus sample from the peer, or a
        // clock step). Raise it so the estimate is at most the RTT, as
        // libutp does, instead of sitting at the minimum window for the
        // ten minutes the history remembers it.
        let q = self.queuing_delay();
        if let (Some(q), Some(rtt)) = (q, ack.rtt_sample) {
            if q > rtt {
                let excess = (q - rtt).as_micros().min(u128::from(u32::MAX >> 1)) as u32;
                self.forward.shift(excess);
                return self.queuing_delay();
            }
        }
        q
    }

    /// Leaves (initial or post-slowdown) slow start for congestion avoidance.
    fn end_slow_start(&mut self, now: Instant) {
        match self.phase {
            Phase::SlowStart => {
                self.ssthresh = self.cwnd;
                if self.cfg.slowdowns {
                    // LEDBAT++: the initial slowdown, two RTTs after slow start.
                    self.next_slowdown = Some(now + 2 * self.rtt());
                }
            }
            Phase::Regrow { since: Some(since) } => {
                let took = now.saturating_duration_since(since);
                self.next_slowdown = Some(now + took * self.cfg.slowdown_spacing.max(1));
            }
            _ => {}
        }
        self.phase = Phase::Avoidance;
    }

    fn clamp(&mut self) {
        self.cwnd = self.cwnd.clamp(
            self.min_window(),
            (self.cfg.max_window as f64).max(self.min_window()),
        );
    }
}

impl Controller for Ledbat {
    fn on_ack(&mut self, now: Instant, ack: &AckInfo) {
        self.fresh = false;
        if ack.srtt.is_some() {
            self.srtt = ack.srtt;
        }
        let queuing_delay = self.sample(now, ack);
        if let Phase::Frozen { since, until } = self.phase {
            if now < until {
                return;
            }
            self.phase = Phase::Regrow { since: Some(since) };
        }
        if self.phase == Phase::Avoidance && self.next_slowdown.is_some_and(|t| now >= t) {
            self.next_slowdown = None;
            self.ssthresh = self.cwnd;
            self.cwnd = self.min_window();
            self.phase = Phase::Frozen {
                since: now,
                until: now + 2 * self.rtt(),
            };
            return;
        }
        let mss = self.mss as f64;
        let acked = ack.bytes_acked as f64;
        // Don't grow a window the sender isn't using (RFC 6817's
        // ALLOWED_INCREASE; RFC 7661's spirit).
        let app_limited = (ack.bytes_in_flight + 2 * self.mss) as f64 <= self.cwnd;
        let target = self.cfg.target.as_secs_f64().max(1e-6);
        let q = queuing_delay.map_or(0.0, |d| d.as_secs_f64()) / target;
        match self.phase {
            Phase::SlowStart | Phase::Regrow { .. } => {
                // After a slowdown the window only returns to what it was:
                // the other flows' queue must not keep it down (they hold
                // the queue near the target while this one measured).
                let after_slowdown = matches!(self.phase, Phase::Regrow { since: Some(_) });
                if q > 0.75 && !after_slowdown {
                    self.end_slow_start(now);
                } else if !app_limited {
                    self.cwnd += acked;
                    if self.cwnd >= self.ssthresh {
                        self.cwnd = self.ssthresh;
                        self.end_slow_start(now);
                    }
                }
            }
            Phase::Avoidance => {
                let w = self.cwnd / mss;
                // Packets per RTT: spread over the window's worth of acks.
                // LEDBAT++: a constant increase below the target (not RFC
                // 6817's proportional one, whose equilibrium sits just under
                // the target, where flows never decrease and so never
                // converge to equal shares), multiplicative decrease above.
                let per_rtt = if q <= 1.0 {
                    self.cfg.gain
                } else {
                    -(w * (q - 1.0)).min(w / 2.0)
                };
                if per_rtt < 0.0 || !app_limited {
                    self.cwnd += per_rtt * acked * mss / self.cwnd;
                }
            }
            Phase::Frozen { .. } => {}
        }
        self.clamp();
    }

    fn on_loss(&mut self, now: Instant) {
        self.fresh = false;
        if matches!(self.phase, Phase::Frozen { .. }) {
            self.before_loss = None; // nothing was cut
            return;
        }
        self.before_loss = Some((self.cwnd, self.ssthresh, self.phase, self.next_slowdown));
        self.cwnd /= 2.0;
        self.clamp();
        if matches!(self.phase, Phase::SlowStart | Phase::Regrow { .. }) {
            self.end_slow_start(now);
        }
        self.ssthresh = self.cwnd;
    }

    fn on_spurious_loss(&mut self, _now: Instant) {
        let Some((cwnd, ssthresh, phase, next_slowdown)) = self.before_loss.take() else {
            return;
        };
        // A slowdown that began since stands (its window is held low on
        // purpose); otherwise back to where the cut found us (a slow start
        // goes on).
        if matches!(self.phase, Phase::Frozen { .. }) {
            return;
        }
        if self.phase == Phase::Avoidance {
            self.phase = phase;
            self.next_slowdown = next_slowdown;
        }
        self.cwnd = self.cwnd.max(cwnd);
        self.ssthresh = self.ssthresh.max(ssthresh);
        self.clamp();
    }

    fn on_timeout(&mut self, _now: Instant) {
        self.fresh = false;
        self.before_loss = None;
        self.ssthresh = (self.cwnd / 2.0).max(self.min_window());
        self.cwnd = self.mss as f64;
        let since = match self.phase {
            Phase::Frozen { since, .. } | Phase::Regrow { since: Some(since) } => Some(since),
            _ => None,
        };
        self.phase = Phase::Regrow { since };
    }

    fn window(&self) -> usize {
        // A timeout allows one packet; otherwise never below the minimum.
        self.cwnd as usize
    }

    fn set_mss(&mut self, mss: usize) {
        self.mss = mss.max(1);
        if self.fresh {
            // The initial window is in packets of the size in use: a size
            // known before any data (a loopback peer's, or one another
            // connection to the peer found) starts at four of those, not
            // four base-size ones.
            self.cwnd = (self.mss * self.cfg.initial_window_packets.max(1)) as f64;
        }
    }

    fn delay_state(&self) -> Option<DelayState> {
        Some(DelayState {
            base_delay_us: self.forward.base()?,
            queuing_delay: self.queuing_delay()?,
            target: self.cfg.target,
        })
    }
}

/// Factory for [`Ledbat`]: the default controller.
#[derive(Debug, Clone, Default)]
pub struct LedbatFactory {
    /// Settings every connection's controller starts with.
    pub config: LedbatConfig,
}

impl LedbatFactory {
    /// A factory with these settings.
    pub fn new(config: LedbatConfig) -> Self {
        Self { config }
    }
}

impl ControllerFactory for LedbatFactory {
    fn build(&self, mss: usize) -> Box<dyn Controller> {
        Box::new(Ledbat::new(mss, self.config.clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    proptest::proptest! {
        /// The kept minimum is always the fold over the buckets, whatever
        /// mix of samples (wrapping included), bucket turns and shifts.
        #[test]
        fn the_kept_base_is_the_minimum_of_the_buckets(
            ops in proptest::collection::vec((0u8..4, proptest::prelude::any::<u32>()), 1..200)
        ) {
            let mut h = DelayHistory::new(Duration::from_secs(1), 4);
            let mut now = Instant::now();
            for (op, v) in ops {
                match op {
                    0 => now += Duration::from_millis(700),
                    1 => h.shift(v % 20_000),
                    _ => h.add(now, v),
                }
                let mut it = h.mins.iter().copied();
                let folded = it
                    .next()
                    .map(|f| it.fold(f, |m, x| if delay_lt(x, m) { x } else { m }));
                proptest::prop_assert_eq!(h.base(), folded);
            }
        }
    }

    const MSS: usize = 1000;

    fn ack(bytes: usize, in_flight: usize, fwd: u32, rev: u32) -> AckInfo {
        AckInfo {
            bytes_acked: bytes,
            bytes_in_flight: in_flight,
            srtt: Some(Duration::from_millis(50)),
            rtt_sample: None,
            peer_delay_us: fwd,
            reverse_delay_us: rev,
        }
    }

    fn no_slowdowns() -> LedbatConfig {
        LedbatConfig::default().slowdowns(false)
    }

    /// Acks a full window at the given forward delay, `rounds` times.
    fn run_rounds(c: &mut Ledbat, now: &mut Instant, rounds: usize, fwd: u32) {
        for _ in 0..rounds {
            let w = c.window();
            for _ in 0..(w / MSS).max(1) {
                // A busy sender: the window is full when each ack arrives.
                let in_flight = c.window();
                c.on_ack(*now, &ack(MSS, in_flight, fwd, 5_000));
            }
            *now += Duration::from_millis(50);
        }
    }

    #[test]
    fn slow_start_ends_at_three_quarters_of_target() {
        let mut now = Instant::now();
        let mut c = Ledbat::new(MSS, no_slowdowns());
        // Base 1_000_000 µs (arbitrary clock offset), no queue: doubling.
        run_rounds(&mut c, &mut now, 3, 1_000_000);
        assert_eq!(c.window(), 32 * MSS);
        assert_eq!(c.phase, Phase::SlowStart);
        // 80 ms of queue is past 3/4 of 100 ms: slow start ends once the
        // current-delay filter (minimum of 4 samples) sees it.
        for _ in 0..3 {
            c.on_ack(now, &ack(MSS, c.window(), 1_080_000, 5_000));
        }
        assert_eq!(c.phase, Phase::SlowStart);
        c.on_ack(now, &ack(MSS, c.window(), 1_080_000, 5_000));
        assert_eq!(c.phase, Phase::Avoidance);
        assert_eq!(c.queuing_delay(), Some(Duration::from_millis(80)));
    }

    #[test]
    fn the_initial_window_follows_a_size_known_before_any_ack() {
        let now = Instant::now();
        let mut c = Ledbat::new(MSS, no_slowdowns());
        assert_eq!(c.window(), 4 * MSS);
        // A loopback peer's size, set before any data.
        c.set_mss(40 * MSS);
        assert_eq!(c.window(), 4 * 40 * MSS);
        // Once acks came, a new size leaves the window to them.
        c.on_ack(now, &ack(MSS, c.window(), 7, 5_000));
        let w = c.window();
        c.set_mss(MSS);
        assert_eq!(c.window(), w);
    }

    #[test]
    fn grows_below_target_and_shrinks_above_it() {
        let mut now = Instant::now();
        let mut c = Ledbat::new(MSS, no_slowdowns());
        run_rounds(&mut c, &mut now, 2, 7);
        c.on_loss(now); // leaves slow start at 8 packets
        let w0 = c.window();
        // Queue below the target: one packet per RTT (LEDBAT++'s constant
        // increase), whatever the distance to the target.
        run_rounds(&mut c, &mut now, 4, 7 + 50_000);
        let grown = c.window() - w0;
        assert!((3500..=4500).contains(&grown), "grew {grown}");
        // Queue at 150 ms: shrinks by about W/2 per RTT, capped at half.
        let w1 = c.window();
        run_rounds(&mut c, &mut now, 1, 7 + 150_000);
        let w2 = c.window();
        assert!(w2 < w1 * 7 / 10 && w2 >= w1 / 3, "{w1} -> {w2}");
        // Never below two packets.
        run_rounds(&mut c, &mut now, 20, 7 + 400_000);
        assert_eq!(c.window(), 2 * MSS);
    }

    #[test]
    fn wrapping_clock_offsets_are_fine() {
        let mut now = Instant::now();
        let mut c = Ledbat::new(MSS, no_slowdowns());
        // Samples straddle u32::MAX: base u32::MAX - 10 ms, then 20 ms later.
        let base = u32::MAX - 10_000;
        c.on_ack(now, &ack(MSS, 4 * MSS, base, 1));
        now += Duration::from_millis(10);
        for _ in 0..4 {
            c.on_ack(now, &ack(MSS, 4 * MSS, base.wrapping_add(30_000), 1));
        }
        assert_eq!(c.queuing_delay(), Some(Duration::from_millis(30)));
    }

    #[test]
    fn app_limited_sender_does_not_grow() {
        let now = Instant::now();
        let mut c = Ledbat::new(MSS, no_slowdowns());
        for _ in 0..100 {
            c.on_ack(now, &ack(MSS, MSS, 1000, 1000));
        }
        assert_eq!(c.window(), 4 * MSS);
    }

    #[test]
    fn loss_halves_and_timeout_collapses_then_regrows() {
        let mut now = Instant::now();
        let mut c = Ledbat::new(MSS, no_slowdowns());
        run_rounds(&mut c, &mut now, 3, 500);
        assert_eq!(c.window(), 32 * MSS);
        c.on_loss(now);
        assert_eq!(c.window(), 16 * MSS);
        c.on_timeout(now);
        assert_eq!(c.window(), MSS);
        // Slow start back to half the window the timeout found.
        run_rounds(&mut c, &mut now, 3, 500);
        assert_eq!(c.window(), 8 * MSS);
        assert_eq!(c.phase, Phase::Avoidance);
    }

    #[test]
    fn a_spurious_loss_is_undone_but_not_after_a_timeout() {
        let mut now = Instant::now();
        let mut c = Ledbat::new(MSS, no_slowdowns());
        run_rounds(&mut c, &mut now, 3, 500);
        assert_eq!(c.window(), 32 * MSS);
        assert_eq!(c.phase, Phase::SlowStart);
        c.on_loss(now);
        assert_eq!(c.window(), 16 * MSS);
        c.on_spurious_loss(now);
        // Back to the window and the slow start the cut found.
        assert_eq!(c.window(), 32 * MSS);
        assert_eq!(c.phase, Phase::SlowStart);
        // One undo per cut.
        c.on_spurious_loss(now);
        assert_eq!(c.window(), 32 * MSS);
        c.on_loss(now);
        c.on_timeout(now);
        c.on_spurious_loss(now);
        assert_eq!(c.window(), MSS);
    }

    #[test]
    fn base_follows_the_history_rotation() {
        let mut now = Instant::now();
        let cfg = LedbatConfig {
            bucket: Duration::from_secs(1),
            history_buckets: 3,
            ..no_slowdowns()
        };
        let mut c = Ledbat::new(MSS, cfg);
        c.on_ack(now, &ack(MSS, MSS, 10_000, 1));
        // The path got 40 ms longer (a route change): after 3 buckets the
        // old minimum is gone and the queue estimate is back to zero.
        for _ in 0..8 {
            now += Duration::from_millis(900);
            c.on_ack(now, &ack(MSS, MSS, 50_000, 1));
        }
        assert_eq!(c.queuing_delay(), Some(Duration::ZERO));
    }

    #[test]
    fn reverse_drift_shifts_the_forward_base() {
        let mut now = Instant::now();
        let mut c = Ledbat::new(MSS, no_slowdowns());
        // The peer's clock runs fast: forward samples grow 1 ms per step,
        // reverse samples shrink as much. No real queue anywhere.
        for i in 0..50u32 {
            c.on_ack(now, &ack(MSS, MSS, 20_000 + i * 1000, 900_000 - i * 1000));
            now += Duration::from_secs(1);
        }
        assert_eq!(c.queuing_delay(), Some(Duration::ZERO));
        // Without the reverse samples the same drift reads as queue (the
        // filter's minimum of the last 4 samples: 46 ms).
        let mut d = Ledbat::new(MSS, no_slowdowns());
        for i in 0..50u32 {
            d.on_ack(now, &ack(MSS, MSS, 20_000 + i * 1000, 0));
        }
        assert_eq!(d.queuing_delay(), Some(Duration::from_millis(46)));
    }

    #[test]
    fn a_bogus_low_sample_cannot_pin_the_window_for_the_history() {
        let now = Instant::now();
        let mut c = Ledbat::new(MSS, no_slowdowns());
        // One absurd sample (16 minutes below the others), then honest ones on
        // a 40 ms round trip without any queue.
        c.on_ack(now, &ack(MSS, 4 * MSS, 4_000_000_000, 1));
        let mut honest = ack(
            MSS,
            4 * MSS,
            4_000_000_000u32.wrapping_add(1_000_000_000),
            1,
        );
        honest.rtt_sample = Some(Duration::from_millis(40));
        for _ in 0..4 {
            c.on_ack(now, &honest);
        }
        let q = c.queuing_delay().expect("estimate");
        assert!(q <= Duration::from_millis(40), "{q:?}");
    }

    #[test]
    fn slowdown_freezes_two_rtts_then_regrows_and_reschedules() {
        let mut now = Instant::now();
        let mut c = Ledbat::new(MSS, LedbatConfig::default());
        run_rounds(&mut c, &mut now, 3, 1000);
        // Delay signal: slow start ends, the initial slowdown is 2 RTTs away.
        for _ in 0..4 {
            c.on_ack(now, &ack(MSS, c.window(), 1000 + 90_000, 1));
        }
        assert_eq!(c.phase, Phase::Avoidance);
        let before = c.window();
        now += Duration::from_millis(101);
        c.on_ack(now, &ack(MSS, before, 1000 + 90_000, 1));
        assert!(matches!(c.phase, Phase::Frozen { .. }));
        assert_eq!(c.window(), 2 * MSS);
        // Acks during the freeze don't grow it.
        c.on_ack(now + Duration::from_millis(50), &ack(MSS, 2 * MSS, 1000, 1));
        assert_eq!(c.window(), 2 * MSS);
        // After 2 RTTs: slow start back to where it was, then a later slowdown.
        now += Duration::from_millis(101);
        run_rounds(&mut c, &mut now, 6, 1000);
        assert_eq!(c.phase, Phase::Avoidance);
        assert!(c.window() >= before, "{} < {before}", c.window());
        let next = c.next_slowdown.expect("next slowdown scheduled");
        assert!(next > now, "scheduled in the future");
    }
}
