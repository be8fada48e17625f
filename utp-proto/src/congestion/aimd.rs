//! Slow start plus AIMD: the loss-based controller, kept as an alternative to
//! LEDBAT (a uTP flow that should compete like TCP, or a baseline to compare).

use std::time::Instant;

use super::{AckInfo, Controller, ControllerFactory};

/// Slow start plus AIMD (NewReno-like), in bytes.
#[derive(Debug, Clone)]
pub struct Aimd {
    cwnd: usize,
    ssthresh: usize,
    mss: usize,
    max: usize,
    /// Bytes acked since the last additive increase step.
    acked_accum: usize,
    /// Nothing acked or lost yet: the window is still the initial one.
    fresh: bool,
    /// (cwnd, ssthresh) before the last loss's cut, for an undo.
    before_loss: Option<(usize, usize)>,
}

impl Aimd {
    /// Initial window in packets (RFC 6928 style).
    pub const INITIAL_PACKETS: usize = 10;
    /// Minimum window in packets.
    pub const MIN_PACKETS: usize = 2;

    /// A controller starting in slow start.
    pub fn new(mss: usize, max: usize) -> Self {
        Self {
            cwnd: mss * Self::INITIAL_PACKETS,
            ssthresh: usize::MAX,
            mss,
            max,
            acked_accum: 0,
            fresh: true,
            before_loss: None,
        }
    }

    fn min_window(&self) -> usize {
        self.mss * Self::MIN_PACKETS
    }
}

impl Controller for Aimd {
    fn on_ack(&mut self, _now: Instant, ack: &AckInfo) {
        self.fresh = false;
        // Don't grow a window the sender isn't using (RFC 7661 spirit).
        if ack.bytes_in_flight + 2 * self.mss < self.cwnd {
            return;
        }
        if self.cwnd < self.ssthresh {
            self.cwnd = self.cwnd.saturating_add(ack.bytes_acked);
        } else {
            self.acked_accum = self.acked_accum.saturating_add(ack.bytes_acked);
            if self.acked_accum >= self.cwnd {
                self.acked_accum -= self.cwnd;
                self.cwnd = self.cwnd.saturating_add(self.mss);
            }
        }
        self.cwnd = self.cwnd.min(self.max);
    }

    fn on_loss(&mut self, _now: Instant) {
        self.fresh = false;
        self.before_loss = Some((self.cwnd, self.ssthresh));
        self.cwnd = (self.cwnd / 2).max(self.min_window());
        self.ssthresh = self.cwnd;
        self.acked_accum = 0;
    }

    fn on_spurious_loss(&mut self, _now: Instant) {
        if let Some((cwnd, ssthresh)) = self.before_loss.take() {
            self.cwnd = self.cwnd.max(cwnd);
            self.ssthresh = self.ssthresh.max(ssthresh);
        }
    }

    fn on_timeout(&mut self, _now: Instant) {
        self.fresh = false;
        self.before_loss = None;
        self.ssthresh = (self.cwnd / 2).max(self.min_window());
        self.cwnd = self.mss;
        self.acked_accum = 0;
    }

    fn window(&self) -> usize {
        self.cwnd
    }

    fn set_mss(&mut self, mss: usize) {
        self.mss = mss.max(1);
        if self.fresh {
            // The initial window is in packets of the size in use.
            self.cwnd = (self.mss * Self::INITIAL_PACKETS).min(self.max);
        }
    }
}

/// Factory for [`Aimd`].
#[derive(Debug, Clone)]
pub struct AimdFactory {
    /// Upper bound of the window in bytes.
    pub max_window: usize,
}

impl Default for AimdFactory {
    fn default() -> Self {
        Self {
            max_window: 16 << 20,
        }
    }
}

impl ControllerFactory for AimdFactory {
    fn build(&self, mss: usize) -> Box<dyn Controller> {
        Box::new(Aimd::new(mss, self.max_window))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ack(bytes: usize, in_flight: usize) -> AckInfo {
        AckInfo {
            bytes_acked: bytes,
            bytes_in_flight: in_flight,
            srtt: None,
            rtt_sample: None,
            peer_delay_us: 0,
            reverse_delay_us: 0,
        }
    }

    #[test]
    fn slow_start_doubles_per_window_then_loss_halves() {
        let now = Instant::now();
        let mut c = Aimd::new(1000, 1 << 30);
        assert_eq!(c.window(), 10_000);
        c.on_ack(now, &ack(10_000, 10_000));
        assert_eq!(c.window(), 20_000);
        c.on_loss(now);
        assert_eq!(c.window(), 10_000);
        // Congestion avoidance: one mss per window of acked bytes.
        c.on_ack(now, &ack(5_000, 10_000));
        assert_eq!(c.window(), 10_000);
        c.on_ack(now, &ack(5_000, 10_000));
        assert_eq!(c.window(), 11_000);
    }

    #[test]
    fn timeout_collapses_to_one_packet() {
        let now = Instant::now();
        let mut c = Aimd::new(1000, 1 << 30);
        c.on_timeout(now);
        assert_eq!(c.window(), 1000);
    }

    #[test]
    fn idle_sender_does_not_grow_window() {
        let now = Instant::now();
        let mut c = Aimd::new(1000, 1 << 30);
        c.on_ack(now, &ack(1000, 1000));
        assert_eq!(c.window(), 10_000);
    }
}
