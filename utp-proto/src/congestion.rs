//! Congestion control behind the [`Controller`] trait.
//!
//! The default today is [`Aimd`]: slow start, then additive increase and
//! multiplicative decrease on loss. LEDBAT will plug in behind the same trait.

use std::fmt::Debug;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// What a controller learns from one acknowledgement.
#[derive(Debug, Clone, Copy)]
pub struct AckInfo {
    /// Bytes newly acknowledged (cumulatively or selectively).
    pub bytes_acked: usize,
    /// Bytes in flight before this ack was applied.
    pub bytes_in_flight: usize,
    /// Smoothed RTT, if known.
    pub srtt: Option<Duration>,
    /// One-way delay the peer measured for our packets (`timestamp_difference`), in µs.
    pub peer_delay_us: u32,
}

/// A congestion controller: decides how many bytes may be in flight.
pub trait Controller: Send + Debug {
    /// New data was acknowledged.
    fn on_ack(&mut self, now: Instant, ack: &AckInfo);
    /// A loss was detected (fast retransmit); called at most once per window.
    fn on_loss(&mut self, now: Instant);
    /// A retransmission timeout fired.
    fn on_timeout(&mut self, now: Instant);
    /// The congestion window in bytes.
    fn window(&self) -> usize;
    /// Tells the controller the payload size in use (for per-packet rules).
    fn set_mss(&mut self, mss: usize);
}

/// Builds a fresh controller for each connection.
pub trait ControllerFactory: Send + Sync + Debug {
    /// A controller for a connection whose packets carry up to `mss` payload bytes.
    fn build(&self, mss: usize) -> Box<dyn Controller>;
}

/// Shared handle to a controller factory, as held by configurations.
pub type SharedControllerFactory = Arc<dyn ControllerFactory>;

/// Slow start plus AIMD (NewReno-like), in bytes.
#[derive(Debug, Clone)]
pub struct Aimd {
    cwnd: usize,
    ssthresh: usize,
    mss: usize,
    max: usize,
    /// Bytes acked since the last additive increase step.
    acked_accum: usize,
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
        }
    }

    fn min_window(&self) -> usize {
        self.mss * Self::MIN_PACKETS
    }
}

impl Controller for Aimd {
    fn on_ack(&mut self, _now: Instant, ack: &AckInfo) {
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
        self.cwnd = (self.cwnd / 2).max(self.min_window());
        self.ssthresh = self.cwnd;
        self.acked_accum = 0;
    }

    fn on_timeout(&mut self, _now: Instant) {
        self.ssthresh = (self.cwnd / 2).max(self.min_window());
        self.cwnd = self.mss;
        self.acked_accum = 0;
    }

    fn window(&self) -> usize {
        self.cwnd
    }

    fn set_mss(&mut self, mss: usize) {
        self.mss = mss.max(1);
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
            peer_delay_us: 0,
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
