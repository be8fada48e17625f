//! Smoothed RTT, variance and retransmission timeout (RFC 6298).

use std::time::{Duration, Instant};

/// How long a sample stays the recent minimum ([`RttEstimator::recent_min`])
/// before a larger one may replace it: long enough to outlast a queue that
/// builds and drains, short enough that a path which got slower for good
/// (a route change under the same addresses) is noticed within seconds.
pub const RECENT_MIN_WINDOW: Duration = Duration::from_secs(10);

/// RTT estimator with the RFC 6298 rules and exponential backoff.
#[derive(Debug, Clone)]
pub struct RttEstimator {
    srtt: Option<Duration>,
    rttvar: Duration,
    latest: Duration,
    min: Option<Duration>,
    /// The recent minimum and when it was sampled.
    recent_min: Option<(Duration, Instant)>,
    min_rto: Duration,
    max_rto: Duration,
    initial_rto: Duration,
    backoff: u32,
}

impl RttEstimator {
    /// A new estimator; `initial_rto` is used until the first sample.
    pub fn new(initial_rto: Duration, min_rto: Duration, max_rto: Duration) -> Self {
        Self {
            srtt: None,
            rttvar: Duration::ZERO,
            latest: Duration::ZERO,
            min: None,
            recent_min: None,
            min_rto,
            // A cap below the floor is taken as the floor: a cap of 0 made
            // every timer due at once, and connections gave up at once.
            max_rto: max_rto.max(min_rto),
            initial_rto,
            backoff: 0,
        }
    }

    /// Feeds one RTT sample taken at `now` (only from packets sent once:
    /// Karn's rule is the caller's).
    pub fn on_sample(&mut self, rtt: Duration, now: Instant) {
        self.latest = rtt;
        self.min = Some(self.min.map_or(rtt, |m| m.min(rtt)));
        let keep = self.recent_min.is_some_and(|(m, at)| {
            m <= rtt && now.saturating_duration_since(at) < RECENT_MIN_WINDOW
        });
        if !keep {
            self.recent_min = Some((rtt, now));
        }
        match self.srtt {
            None => {
                self.srtt = Some(rtt);
                self.rttvar = rtt / 2;
            }
            Some(srtt) => self.smooth(srtt, rtt),
        }
        // A fresh sample proves the path works again.
        self.backoff = 0;
    }

    /// The handshake completed only after a retransmitted SYN, so without
    /// a sample (Karn): the SYN's backoff is cleared and, until the first
    /// sample, the timeout is at least 3 s (RFC 6298 (5.7), as Linux does).
    /// Kept, the backoff made the first data timeout 4-8 s, and the next
    /// ones longer than a peer's idle timeout.
    pub fn after_syn_retransmission(&mut self) {
        if self.srtt.is_none() {
            self.backoff = 0;
            self.initial_rto = self.initial_rto.max(Duration::from_secs(3));
        }
    }

    /// The ack of a retransmitted packet came `rtt` after its last
    /// transmission: the round trip was at least that, whichever copy
    /// arrived, but no more is known (Karn). Taken as a sample only when
    /// it exceeds the smoothed RTT (the path got slower); the minimum and
    /// the backoff stay as they are.
    pub fn on_sample_at_least(&mut self, rtt: Duration) {
        if let Some(srtt) = self.srtt.filter(|&s| rtt > s) {
            self.smooth(srtt, rtt);
        }
    }

    /// RFC 6298 (2.3): folds `rtt` into the variance and the smoothed RTT.
    fn smooth(&mut self, srtt: Duration, rtt: Duration) {
        // Duration::abs_diff needs Rust 1.81; the MSRV is 1.80.
        let err = srtt.abs_diff(rtt);
        self.rttvar = (self.rttvar * 3 + err) / 4;
        self.srtt = Some((srtt * 7 + rtt) / 8);
    }

    /// Smoothed RTT, if any sample was taken.
    pub fn srtt(&self) -> Option<Duration> {
        self.srtt
    }

    /// Smallest sample so far: no ack can come back sooner than this after
    /// its packet was sent.
    pub fn min(&self) -> Option<Duration> {
        self.min
    }

    /// Smallest sample of about the last [`RECENT_MIN_WINDOW`]: the path's
    /// round trip now, where [`RttEstimator::min`] remembers the best the
    /// connection ever saw. Once the window has passed, the next sample
    /// takes over even if larger.
    pub fn recent_min(&self) -> Option<Duration> {
        self.recent_min.map(|(m, _)| m)
    }

    /// Most recent sample.
    pub fn latest(&self) -> Duration {
        self.latest
    }

    /// Current retransmission timeout including backoff.
    pub fn rto(&self) -> Duration {
        let base = match self.srtt {
            None => self.initial_rto,
            Some(srtt) => (srtt + self.rttvar * 4).max(self.min_rto),
        };
        base.saturating_mul(1u32 << self.backoff.min(16))
            .min(self.max_rto)
    }

    /// Doubles the timeout after a retransmission timeout.
    pub fn back_off(&mut self) {
        self.backoff = self.backoff.saturating_add(1);
    }

    /// Clears backoff (new data acknowledged).
    pub fn reset_backoff(&mut self) {
        self.backoff = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn est() -> RttEstimator {
        RttEstimator::new(
            Duration::from_secs(1),
            Duration::from_millis(500),
            Duration::from_secs(60),
        )
    }

    #[test]
    fn initial_rto_is_one_second_and_doubles() {
        let mut e = est();
        assert_eq!(e.rto(), Duration::from_secs(1));
        e.back_off();
        assert_eq!(e.rto(), Duration::from_secs(2));
        e.back_off();
        assert_eq!(e.rto(), Duration::from_secs(4));
    }

    #[test]
    fn a_lost_syn_leaves_a_3s_timeout_without_its_backoff() {
        let mut e = est();
        e.back_off();
        e.back_off();
        assert_eq!(e.rto(), Duration::from_secs(4));
        e.after_syn_retransmission();
        assert_eq!(e.rto(), Duration::from_secs(3));
        e.back_off();
        assert_eq!(e.rto(), Duration::from_secs(6));
        // A sample rules from then on.
        e.on_sample(Duration::from_millis(100), Instant::now());
        assert_eq!(e.rto(), Duration::from_millis(500));
    }

    #[test]
    fn rto_has_a_500ms_floor_and_a_cap() {
        let mut e = est();
        e.on_sample(Duration::from_millis(10), Instant::now());
        assert_eq!(e.rto(), Duration::from_millis(500));
        for _ in 0..40 {
            e.back_off();
        }
        assert_eq!(e.rto(), Duration::from_secs(60));
    }

    #[test]
    fn a_cap_below_the_floor_is_the_floor() {
        let mut e = RttEstimator::new(
            Duration::from_secs(1),
            Duration::from_millis(500),
            Duration::ZERO,
        );
        assert_eq!(e.rto(), Duration::from_millis(500), "before a sample");
        e.on_sample(Duration::from_millis(10), Instant::now());
        e.back_off();
        assert_eq!(e.rto(), Duration::from_millis(500), "after a backoff");
    }

    #[test]
    fn rto_follows_rfc6298() {
        let mut e = est();
        e.on_sample(Duration::from_millis(400), Instant::now());
        // srtt 400, rttvar 200 -> 1200 ms
        assert_eq!(e.rto(), Duration::from_millis(1200));
        e.on_sample(Duration::from_millis(400), Instant::now());
        // rttvar = 150, srtt = 400 -> 1000
        assert_eq!(e.rto(), Duration::from_millis(1000));
    }

    #[test]
    fn recent_min_forgets_a_faster_path_after_its_window() {
        let mut e = est();
        let t0 = Instant::now();
        e.on_sample(Duration::from_micros(200), t0);
        // Within the window a larger sample does not replace it.
        e.on_sample(Duration::from_millis(50), t0 + Duration::from_secs(5));
        assert_eq!(e.recent_min(), Some(Duration::from_micros(200)));
        // After it, the path's round trip now takes over; the lifetime
        // minimum stays.
        e.on_sample(Duration::from_millis(50), t0 + RECENT_MIN_WINDOW);
        e.on_sample(
            Duration::from_millis(60),
            t0 + RECENT_MIN_WINDOW * 2 - Duration::from_millis(1),
        );
        assert_eq!(e.recent_min(), Some(Duration::from_millis(50)));
        assert_eq!(e.min(), Some(Duration::from_micros(200)));
        // A smaller sample always takes over at once.
        e.on_sample(Duration::from_millis(40), t0 + RECENT_MIN_WINDOW * 2);
        assert_eq!(e.recent_min(), Some(Duration::from_millis(40)));
    }

    #[test]
    fn a_retransmission_bound_only_moves_the_estimate_up_and_keeps_the_backoff() {
        let mut e = est();
        e.on_sample_at_least(Duration::from_millis(300));
        assert_eq!(e.srtt(), None, "no estimate from a bound alone");
        e.on_sample(Duration::from_millis(100), Instant::now());
        e.back_off();
        let rto = e.rto();
        e.on_sample_at_least(Duration::from_millis(50));
        assert_eq!(e.srtt(), Some(Duration::from_millis(100)));
        assert_eq!(e.rto(), rto);
        e.on_sample_at_least(Duration::from_millis(900));
        assert_eq!(e.srtt(), Some(Duration::from_millis(200)));
        assert_eq!(e.min(), Some(Duration::from_millis(100)));
        assert_eq!(e.recent_min(), Some(Duration::from_millis(100)));
        assert!(e.rto() > rto, "backed off and larger: {:?}", e.rto());
    }
}
