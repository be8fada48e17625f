//! Path MTU discovery for one connection: datagram PLPMTUD (RFC 8899).
//!
//! A pure state machine over *datagram sizes* (UDP payload bytes: the uTP
//! header plus everything after it). The connection asks it which size to
//! use for new packets ([`Pmtud::current`]) and whether to send a probe
//! ([`Pmtud::poll_probe`]), and reports what happened to probes and to
//! full-size packets. Time is passed in; nothing here reads a clock.
//!
//! The search: start at a safe base size, probe the ceiling first (most
//! paths carry what the interface does; loopback then converges in one
//! round trip), then binary-search between the largest confirmed size and
//! the smallest failed one. A size fails after [`MAX_PROBES`] lost probes;
//! a lost probe is not congestion. When the search is done, it starts again
//! after [`PmtudConfig::raise_interval`] to find a grown path MTU.
//!
//! Black holes: when small packets keep getting through while full-size
//! ones do not ([`Pmtud::on_black_hole_evidence`], gathered by the
//! connection after timer-declared losses) the path has shrunk without
//! telling us (ICMP filtered). The size falls back to the base at once, and
//! the search starts over. If the base itself is black-holed, it falls to
//! [`PmtudConfig::min`] (RFC 8899's ERROR state).

use std::time::{Duration, Instant};

/// Probes of one size lost before the size counts as too big (RFC 8899
/// suggests 3; 2 halves the cost of each failed step and a random loss that
/// wrongly ends the search is corrected by the next periodic re-search).
pub const MAX_PROBES: u8 = 2;

/// Pieces of black-hole evidence in a row (a small packet acknowledged
/// while a full-size one sent just before it was not, with no full-size
/// packet acknowledged in between) that declare a black hole. Three keep a
/// path with 25% random loss below a 2% chance of a false alarm per check.
pub const BLACK_HOLE_EVIDENCE: u8 = 3;

/// The search stops when the confirmed size and the smallest failed size
/// are this close (bytes).
pub const SEARCH_GRANULARITY: usize = 8;

/// Largest UDP payload of an IPv4 datagram (65,535 - 20 - 8).
pub const MAX_UDP_PAYLOAD: usize = 65_507;

/// Settings of the search, in datagram sizes (UDP payload bytes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PmtudConfig {
    /// Whether to search at all; without it every packet is `base` bytes.
    pub enabled: bool,
    /// Starting size, assumed to work on every path.
    pub base: usize,
    /// Fallback when even `base` is black-holed.
    pub min: usize,
    /// Upper bound of the search (configuration cap).
    pub max: usize,
    /// Delay after a completed search before searching again.
    pub raise_interval: Duration,
}

/// A probe the connection should send now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Probe {
    /// Datagram size of the probe.
    pub size: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Looking for a larger size.
    Searching,
    /// Nothing to look for until the deadline.
    Complete { research_at: Instant },
    /// Discovery is off.
    Disabled,
}

/// The search state of one connection (see the module documentation).
#[derive(Debug, Clone)]
pub struct Pmtud {
    cfg: PmtudConfig,
    phase: Phase,
    /// Size in use for new packets: the largest confirmed.
    current: usize,
    /// The path's upper bound: configuration cap, OS route MTU, "too big"
    /// signals. Probes never exceed it.
    ceiling: usize,
    /// Smallest size known (or believed) not to pass; the search stays
    /// below it. `ceiling + 1` when nothing failed yet.
    failed: usize,
    /// The probe in flight, if any.
    in_flight: Option<usize>,
    /// Lost probes of the size being tried.
    losses_at_size: u8,
    /// Size being tried (the next probe's size).
    trying: Option<usize>,
    /// Black-hole evidence in a row (see [`BLACK_HOLE_EVIDENCE`]).
    large_losses: u8,
    /// Times the size fell back because of a black hole.
    black_holes: u64,
    /// When the current search started and when it completed (for stats).
    search_started: Option<Instant>,
    last_search_duration: Option<Duration>,
}

impl Pmtud {
    /// A fresh search (or a fixed size when disabled). `cfg.min <= cfg.base
    /// <= cfg.max` is enforced here, so any configuration is usable.
    pub fn new(mut cfg: PmtudConfig, now: Instant) -> Self {
        cfg.max = cfg.max.clamp(1, MAX_UDP_PAYLOAD);
        cfg.base = cfg.base.clamp(1, cfg.max);
        cfg.min = cfg.min.clamp(1, cfg.base);
        let phase = if cfg.enabled && cfg.max > cfg.base {
            Phase::Searching
        } else if cfg.enabled {
            Phase::Complete {
                research_at: now + cfg.raise_interval,
            }
        } else {
            Phase::Disabled
        };
        Self {
            phase,
            current: cfg.base,
            ceiling: cfg.max,
            failed: cfg.max + 1,
            in_flight: None,
            losses_at_size: 0,
            trying: None,
            large_losses: 0,
            black_holes: 0,
            search_started: (phase == Phase::Searching).then_some(now),
            last_search_duration: None,
            cfg,
        }
    }

    /// Datagram size for new packets.
    pub fn current(&self) -> usize {
        self.current
    }

    /// The configured base size.
    pub fn base(&self) -> usize {
        self.cfg.base
    }

    /// Whether the size is at (or below) the base, so that a black hole
    /// would fall to the minimum.
    pub fn at_base(&self) -> bool {
        self.phase != Phase::Disabled && self.current <= self.cfg.base
    }

    /// Whether a search is running (probes may be asked for).
    pub fn is_searching(&self) -> bool {
        self.phase == Phase::Searching
    }

    /// How often the size fell back because of a black hole.
    pub fn black_holes(&self) -> u64 {
        self.black_holes
    }

    /// How long the last completed search took.
    pub fn last_search_duration(&self) -> Option<Duration> {
        self.last_search_duration
    }

    /// The size the next probe would have, if a search is running.
    fn next_size(&self) -> Option<usize> {
        if self.phase != Phase::Searching {
            return None;
        }
        if let Some(s) = self.trying {
            return Some(s);
        }
        let hi = self.failed.min(self.ceiling + 1);
        if hi <= self.current + SEARCH_GRANULARITY {
            return None;
        }
        // First try the ceiling itself (the common case: the path carries
        // what the first hop does), then halve the gap.
        if self.failed > self.ceiling {
            Some(self.ceiling)
        } else {
            Some(self.current + (hi - self.current) / 2)
        }
    }

    /// A probe to send now: a search is running and no probe is in flight.
    /// The caller reports [`Pmtud::on_probe_sent`] when it really sends it.
    pub fn poll_probe(&mut self, now: Instant) -> Option<Probe> {
        if self.in_flight.is_some() {
            return None;
        }
        match self.next_size() {
            Some(size) => Some(Probe { size }),
            None => {
                self.finish_search(now);
                None
            }
        }
    }

    fn finish_search(&mut self, now: Instant) {
        if self.phase == Phase::Searching {
            self.phase = Phase::Complete {
                research_at: now + self.cfg.raise_interval,
            };
            self.trying = None;
            self.last_search_duration = self
                .search_started
                .take()
                .map(|t| now.saturating_duration_since(t));
            tracing::debug!(size = self.current, "path MTU search complete");
        }
    }

    /// A probe of `size` bytes went out.
    pub fn on_probe_sent(&mut self, size: usize) {
        self.in_flight = Some(size);
        self.trying = Some(size);
    }

    /// The probe of `size` bytes was acknowledged: the path carries it.
    pub fn on_probe_acked(&mut self, size: usize, now: Instant) {
        if self.in_flight != Some(size) {
            return;
        }
        self.in_flight = None;
        self.trying = None;
        self.losses_at_size = 0;
        self.large_losses = 0;
        if size > self.current && size <= self.ceiling {
            self.current = size;
        }
        if self.next_size().is_none() {
            self.finish_search(now);
        }
    }

    /// Whether a probe is in flight.
    pub fn probing(&self) -> bool {
        self.in_flight.is_some()
    }

    /// Another connection on the same path (same peer address) confirmed
    /// `size`: taken as if a probe of it had been acknowledged here (the
    /// search goes on above it, and black-hole detection still guards it).
    pub fn adopt(&mut self, size: usize, now: Instant) {
        if self.phase == Phase::Disabled || size <= self.current || size > self.ceiling {
            return;
        }
        self.current = size;
        if self.trying.is_some_and(|t| t <= size) && self.in_flight.is_none() {
            self.trying = None;
        }
        self.losses_at_size = 0;
        self.large_losses = 0;
        if self.phase == Phase::Searching && self.in_flight.is_none() && self.next_size().is_none()
        {
            self.finish_search(now);
        }
    }

    /// The probe of `size` bytes was lost (not congestion).
    pub fn on_probe_lost(&mut self, size: usize, now: Instant) {
        if self.in_flight != Some(size) {
            return;
        }
        self.in_flight = None;
        self.losses_at_size += 1;
        if self.losses_at_size >= MAX_PROBES {
            self.losses_at_size = 0;
            self.trying = None;
            self.failed = self.failed.min(size);
            if self.next_size().is_none() {
                self.finish_search(now);
            }
        }
    }

    /// A non-probe packet of `size` bytes was acknowledged: if it is of the
    /// kind whose loss is evidence, the path carries that kind, and the
    /// evidence in a row starts over.
    pub fn on_packet_acked(&mut self, size: usize) {
        // The same test as the evidence's: at the base size (fall-back to
        // `min`) a base-size packet is both. Clearing only above the base
        // let evidence at the base add up over a whole connection.
        if self.is_large(size) {
            self.large_losses = 0;
        }
    }

    /// Whether losing a packet of `size` bytes could mean a black hole: it
    /// is larger than what the size would fall back to.
    pub fn is_large(&self, size: usize) -> bool {
        self.phase != Phase::Disabled && size > self.fallback_size()
    }

    /// The size a black hole at the current size falls back to.
    pub fn fallback_size(&self) -> usize {
        if self.current > self.cfg.base {
            self.cfg.base
        } else {
            self.cfg.min
        }
    }

    /// A packet of `size` bytes was lost while a small packet sent after it
    /// got through: after [`BLACK_HOLE_EVIDENCE`] such pieces in a row (no
    /// full-size packet acknowledged in between) the size falls back.
    /// Returns whether it did.
    pub fn on_black_hole_evidence(&mut self, size: usize, now: Instant) -> bool {
        if !self.is_large(size) {
            return false;
        }
        self.large_losses = self.large_losses.saturating_add(1);
        if self.large_losses < BLACK_HOLE_EVIDENCE {
            return false;
        }
        self.on_black_hole(size, now)
    }

    /// Packets of `size` bytes are black-holed: a small packet sent after
    /// them was acknowledged while they were not. Falls back to the base
    /// size (or to the minimum when the base itself vanishes) and searches
    /// again below `size`. Returns whether the size fell back.
    pub fn on_black_hole(&mut self, size: usize, now: Instant) -> bool {
        if !self.is_large(size) {
            return false;
        }
        self.large_losses = 0;
        self.black_holes += 1;
        let fallback = self.fallback_size();
        tracing::debug!(
            from = self.current,
            to = fallback,
            "full-size packets black-holed; falling back"
        );
        self.current = fallback;
        // The size that vanished is the new upper bound of the search.
        self.failed = self.failed.min(size).max(fallback + 1);
        self.restart(now);
        true
    }

    /// The OS says datagrams larger than `max` cannot leave (EMSGSIZE, a
    /// route MTU lowered by ICMP): lower the ceiling, and the current size
    /// at once if it is above it.
    pub fn on_too_big(&mut self, max: usize, now: Instant) {
        let max = max.max(self.cfg.min);
        if max < self.ceiling {
            self.ceiling = max;
        }
        self.failed = self.failed.min(max + 1);
        if self.current > max {
            self.current = max;
        }
        if self.in_flight.is_some_and(|s| s > max) {
            self.in_flight = None;
            self.trying = None;
            self.losses_at_size = 0;
        }
        if self.next_size().is_none() {
            self.finish_search(now);
        }
    }

    /// The route's MTU as the OS reports it, as the largest datagram:
    /// becomes the ceiling (never above the configured maximum). A higher
    /// value than before (a new route) allows a search up to it.
    pub fn set_ceiling(&mut self, max: usize, now: Instant) {
        let max = max.clamp(self.cfg.min, self.cfg.max);
        let raised = max > self.ceiling;
        self.ceiling = max;
        if self.current > max {
            self.current = max;
        }
        if raised {
            self.failed = self.ceiling + 1;
            self.restart(now);
        } else {
            self.failed = self.failed.min(max + 1);
            if self.next_size().is_none() {
                self.finish_search(now);
            }
        }
    }

    /// The path changed (new address, new route): back to the base size
    /// and search again.
    pub fn reset(&mut self, now: Instant) {
        self.current = self.cfg.base.min(self.ceiling);
        self.failed = self.ceiling + 1;
        self.large_losses = 0;
        self.restart(now);
    }

    fn restart(&mut self, now: Instant) {
        if self.phase == Phase::Disabled {
            return;
        }
        self.phase = Phase::Searching;
        self.in_flight = None;
        self.trying = None;
        self.losses_at_size = 0;
        self.search_started = Some(now);
    }

    /// When [`Pmtud::handle_timeout`] needs to run (the periodic re-search).
    pub fn poll_timeout(&self) -> Option<Instant> {
        match self.phase {
            Phase::Complete { research_at } => Some(research_at),
            _ => None,
        }
    }

    /// Starts the periodic re-search when it is due: the path MTU may have
    /// grown, so everything above the confirmed size is worth trying again.
    pub fn handle_timeout(&mut self, now: Instant) {
        if let Phase::Complete { research_at } = self.phase {
            if now >= research_at {
                self.failed = self.ceiling + 1;
                if self.current < self.ceiling {
                    self.restart(now);
                } else {
                    self.phase = Phase::Complete {
                        research_at: now + self.cfg.raise_interval,
                    };
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(max: usize) -> PmtudConfig {
        PmtudConfig {
            enabled: true,
            base: 1232,
            min: 548,
            max,
            raise_interval: Duration::from_secs(600),
        }
    }

    /// Runs a search against a path carrying datagrams up to `path`:
    /// every probe is acked or lost at once. Returns (final size, probes).
    fn search(p: &mut Pmtud, path: usize, now: Instant) -> (usize, usize) {
        let mut probes = 0;
        while let Some(probe) = p.poll_probe(now) {
            probes += 1;
            assert!(probes < 100, "search does not end");
            p.on_probe_sent(probe.size);
            if probe.size <= path {
                p.on_probe_acked(probe.size, now);
            } else {
                p.on_probe_lost(probe.size, now);
            }
        }
        (p.current(), probes)
    }

    #[test]
    fn starts_at_base_and_probes_the_ceiling_first() {
        let now = Instant::now();
        let mut p = Pmtud::new(cfg(1472), now);
        assert_eq!(p.current(), 1232);
        assert_eq!(p.poll_probe(now), Some(Probe { size: 1472 }));
        p.on_probe_sent(1472);
        assert_eq!(p.poll_probe(now), None, "one probe at a time");
        p.on_probe_acked(1472, now);
        assert_eq!(p.current(), 1472);
        assert!(!p.is_searching());
    }

    #[test]
    fn binary_search_finds_a_1280_link_within_granularity() {
        let now = Instant::now();
        let mut p = Pmtud::new(cfg(1472), now);
        // IPv4 link MTU 1280: datagrams up to 1252 bytes.
        let (size, probes) = search(&mut p, 1252, now);
        assert!(size <= 1252 && size + SEARCH_GRANULARITY >= 1252, "{size}");
        assert!(probes <= 12, "{probes} probes");
    }

    #[test]
    fn loopback_converges_with_one_probe() {
        let now = Instant::now();
        let mut p = Pmtud::new(cfg(MAX_UDP_PAYLOAD), now);
        let (size, probes) = search(&mut p, MAX_UDP_PAYLOAD, now);
        assert_eq!((size, probes), (MAX_UDP_PAYLOAD, 1));
    }

    #[test]
    fn one_lost_probe_is_retried_before_the_size_fails() {
        let now = Instant::now();
        let mut p = Pmtud::new(cfg(1472), now);
        p.on_probe_sent(1472);
        p.on_probe_lost(1472, now);
        assert_eq!(p.poll_probe(now), Some(Probe { size: 1472 }));
        p.on_probe_sent(1472);
        p.on_probe_lost(1472, now);
        let next = p.poll_probe(now).unwrap().size;
        assert!(next < 1472 && next > 1232, "{next}");
        assert_eq!(p.current(), 1232, "losses never raise or lower the size");
    }

    #[test]
    fn black_hole_falls_back_to_base_then_searches_below_the_lost_size() {
        let now = Instant::now();
        let mut p = Pmtud::new(cfg(8972), now);
        search(&mut p, 8972, now);
        assert_eq!(p.current(), 8972);
        assert!(
            !p.on_black_hole_evidence(8972, now),
            "one piece is not enough"
        );
        assert!(!p.on_black_hole_evidence(8972, now));
        assert!(p.on_black_hole_evidence(8972, now));
        assert_eq!(p.current(), 1232);
        assert_eq!(p.black_holes(), 1);
        let (size, _) = search(&mut p, 1252, now);
        assert!((1244..=1252).contains(&size), "{size}");
    }

    #[test]
    fn an_ack_of_a_full_size_packet_clears_the_black_hole_count() {
        let now = Instant::now();
        let mut p = Pmtud::new(cfg(1472), now);
        search(&mut p, 1472, now);
        assert!(!p.on_black_hole_evidence(1472, now));
        assert!(!p.on_black_hole_evidence(1472, now));
        p.on_packet_acked(1472);
        assert!(!p.on_black_hole_evidence(1472, now));
        assert!(!p.on_black_hole_evidence(1472, now));
        assert_eq!(p.current(), 1472);
    }

    #[test]
    fn at_the_base_size_an_ack_of_a_base_size_packet_clears_the_count() {
        let now = Instant::now();
        let mut p = Pmtud::new(cfg(1472), now);
        search(&mut p, 1000, now);
        assert_eq!(p.current(), 1232, "nothing above base confirmed");
        for _ in 0..3 {
            assert!(!p.on_black_hole_evidence(1232, now));
            assert!(!p.on_black_hole_evidence(1232, now));
            p.on_packet_acked(1232);
        }
        assert_eq!(p.current(), 1232);
        assert!(!p.on_black_hole_evidence(1232, now));
        assert!(!p.on_black_hole_evidence(1232, now));
        p.on_packet_acked(500);
        assert!(
            p.on_black_hole_evidence(1232, now),
            "a packet below the fall-back size proves nothing"
        );
        assert_eq!(p.current(), 548);
    }

    #[test]
    fn black_hole_at_base_falls_to_min() {
        let now = Instant::now();
        let mut p = Pmtud::new(cfg(1472), now);
        search(&mut p, 1000, now);
        assert_eq!(p.current(), 1232, "nothing above base confirmed");
        p.on_black_hole_evidence(1232, now);
        p.on_black_hole_evidence(1232, now);
        assert!(p.on_black_hole_evidence(1232, now));
        assert_eq!(p.current(), 548);
        let (size, _) = search(&mut p, 1000, now);
        assert!((992..=1000).contains(&size), "{size}");
    }

    #[test]
    fn periodic_research_finds_a_grown_path() {
        let start = Instant::now();
        let mut p = Pmtud::new(cfg(8972), start);
        search(&mut p, 1252, start);
        let t = p.poll_timeout().expect("re-search scheduled");
        assert_eq!(t, start + Duration::from_secs(600));
        p.handle_timeout(t - Duration::from_secs(1));
        assert!(!p.is_searching());
        p.handle_timeout(t);
        assert!(p.is_searching());
        let (size, _) = search(&mut p, 8972, t);
        assert_eq!(size, 8972);
    }

    #[test]
    fn too_big_lowers_the_size_at_once() {
        let now = Instant::now();
        let mut p = Pmtud::new(cfg(8972), now);
        search(&mut p, 8972, now);
        p.on_too_big(1472, now);
        assert_eq!(p.current(), 1472);
        assert_eq!(p.poll_probe(now), None);
    }

    #[test]
    fn os_ceiling_bounds_the_search_and_a_raise_restarts_it() {
        let now = Instant::now();
        let mut p = Pmtud::new(cfg(MAX_UDP_PAYLOAD), now);
        p.set_ceiling(1472, now);
        assert_eq!(p.poll_probe(now), Some(Probe { size: 1472 }));
        search(&mut p, 1472, now);
        p.set_ceiling(8972, now);
        assert!(p.is_searching());
        assert_eq!(search(&mut p, 8972, now).0, 8972);
    }

    #[test]
    fn path_change_resets_to_base_and_searches_again() {
        let now = Instant::now();
        let mut p = Pmtud::new(cfg(8972), now);
        search(&mut p, 8972, now);
        assert!(!p.is_searching());
        p.reset(now);
        assert_eq!(p.current(), 1232);
        let (size, _) = search(&mut p, 1472, now);
        assert!((1464..=1472).contains(&size), "{size}");
    }

    #[test]
    fn only_packets_above_the_fallback_size_count_as_black_hole_evidence() {
        let now = Instant::now();
        let mut p = Pmtud::new(cfg(1472), now);
        search(&mut p, 1472, now);
        assert!(!p.is_large(1232));
        assert!(p.is_large(1233));
        for _ in 0..BLACK_HOLE_EVIDENCE {
            assert!(!p.on_black_hole_evidence(1000, now));
        }
        assert_eq!(p.current(), 1472);
    }

    #[test]
    fn disabled_uses_base_and_never_probes() {
        let now = Instant::now();
        let mut p = Pmtud::new(
            PmtudConfig {
                enabled: false,
                ..cfg(8972)
            },
            now,
        );
        assert_eq!(p.poll_probe(now), None);
        for _ in 0..BLACK_HOLE_EVIDENCE {
            assert!(!p.on_black_hole_evidence(1232, now));
        }
        assert_eq!(p.current(), 1232);
        assert_eq!(p.poll_timeout(), None);
    }

    #[test]
    fn stale_probe_reports_are_ignored() {
        let now = Instant::now();
        let mut p = Pmtud::new(cfg(1472), now);
        p.on_probe_acked(1472, now);
        p.on_probe_lost(1472, now);
        assert_eq!(p.current(), 1232);
        assert_eq!(p.poll_probe(now), Some(Probe { size: 1472 }));
    }
}
