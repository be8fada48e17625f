//! Pacing of new data: a token bucket filled at 1.5 times the window per
//! smoothed RTT, so a window's worth of packets leaves spread over the RTT
//! instead of in one burst. Bursts fill bottleneck queues in a moment, which
//! small buffers drop and LEDBAT reads as queueing delay.
//!
//! The bucket holds ten packets or 2 ms at the pacing rate, whichever is
//! more: timers (tokio's among them) have about a millisecond of resolution,
//! so a pacer that wanted finer gaps would only stall fast paths.

use std::time::{Duration, Instant};

/// Pacing rate as a multiple of window per RTT (room for slow start to grow).
const RATE_FACTOR: f64 = 1.5;
/// Packets the bucket holds at least.
const BURST_PACKETS: f64 = 10.0;
/// Time at the pacing rate the bucket holds at least.
const BURST_TIME: f64 = 0.002;

/// Token bucket for new data.
#[derive(Debug, Default)]
pub(crate) struct Pacer {
    tokens: Option<f64>,
    last: Option<Instant>,
}

impl Pacer {
    /// How long until `bytes` may go (`None`: now).
    pub(crate) fn delay(
        &mut self,
        now: Instant,
        bytes: usize,
        cwnd: usize,
        srtt: Option<Duration>,
        mss: usize,
    ) -> Option<Duration> {
        let srtt = srtt?.as_secs_f64();
        if srtt <= 0.0 {
            return None;
        }
        let rate = RATE_FACTOR * cwnd.max(mss) as f64 / srtt;
        let cap = (BURST_PACKETS * mss as f64).max(rate * BURST_TIME);
        let elapsed = self
            .last
            .map_or(0.0, |l| now.saturating_duration_since(l).as_secs_f64());
        let tokens = self.tokens.map_or(cap, |t| (t + rate * elapsed).min(cap));
        self.tokens = Some(tokens);
        self.last = Some(now);
        let need = bytes as f64;
        if tokens >= need || need > cap {
            return None;
        }
        // A wait below a microsecond is rounding: waiting for it would arm a
        // timer for "now" and come back to the same answer.
        let wait = Duration::from_secs_f64((need - tokens) / rate);
        (wait >= Duration::from_micros(1)).then_some(wait)
    }

    /// `bytes` of new data went out.
    pub(crate) fn on_sent(&mut self, bytes: usize) {
        if let Some(t) = &mut self.tokens {
            *t = (*t - bytes as f64).max(0.0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_window_is_spread_over_the_rtt_after_the_first_burst() {
        let t0 = Instant::now();
        let mut p = Pacer::default();
        let (mss, cwnd, srtt) = (1000, 100_000, Some(Duration::from_millis(100)));
        // Rate 1.5 MB/s; the bucket holds 10 packets.
        let mut sent = 0;
        while p.delay(t0, mss, cwnd, srtt, mss).is_none() {
            p.on_sent(mss);
            sent += 1;
            assert!(sent < 100);
        }
        assert_eq!(sent, 10);
        let wait = p.delay(t0, mss, cwnd, srtt, mss).expect("paced");
        assert!(
            wait > Duration::from_micros(600) && wait < Duration::from_micros(700),
            "{wait:?}"
        );
        // One packet's worth later, one more may go.
        assert!(p.delay(t0 + wait, mss, cwnd, srtt, mss).is_none());
    }

    #[test]
    fn no_rtt_sample_no_pacing() {
        let mut p = Pacer::default();
        for _ in 0..1000 {
            assert!(p.delay(Instant::now(), 1000, 10_000, None, 1000).is_none());
            p.on_sent(1000);
        }
    }
}
