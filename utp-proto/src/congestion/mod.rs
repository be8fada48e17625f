//! Congestion control behind the [`Controller`] trait.
//!
//! The default is [`Ledbat`] (RFC 6817 with the LEDBAT++ remedies); [`Aimd`]
//! (slow start, then additive increase and multiplicative decrease on loss)
//! stays available for flows that should compete like TCP.

mod aimd;
mod ledbat;

pub use aimd::{Aimd, AimdFactory};
pub use ledbat::{Ledbat, LedbatConfig, LedbatFactory};

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
    /// The RTT sample this ack gave (none for acks of retransmissions).
    pub rtt_sample: Option<Duration>,
    /// One-way delay the peer measured for our packets (the
    /// `timestamp_difference` it sent), in µs; 0 means the peer had no sample.
    /// Clocks are not synchronised: only differences between samples mean
    /// anything.
    pub peer_delay_us: u32,
    /// One-way delay we measured for the peer's packet that carried this ack
    /// (the reverse direction), in µs, same caveat. Its drift, opposite to
    /// the forward one, reveals clock skew between the ends.
    pub reverse_delay_us: u32,
}

/// A delay-based controller's view of the path, for statistics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DelayState {
    /// Base one-way delay: the minimum of the history, in the peer's clock
    /// minus ours (µs, wrapping), so only meaningful next to other samples.
    pub base_delay_us: u32,
    /// Current queueing delay estimate (filtered sample minus base).
    pub queuing_delay: Duration,
    /// The queueing delay the controller aims for.
    pub target: Duration,
}

/// A congestion controller: decides how many bytes may be in flight.
pub trait Controller: Send + Debug {
    /// New data was acknowledged.
    fn on_ack(&mut self, now: Instant, ack: &AckInfo);
    /// A loss was detected (fast retransmit); called at most once per window.
    fn on_loss(&mut self, now: Instant);
    /// A retransmission timeout fired.
    fn on_timeout(&mut self, now: Instant);
    /// The loss last reported by [`Controller::on_loss`] proved spurious
    /// (the packets were reordered or delayed, not lost): undo its cut.
    /// Never called after an [`Controller::on_timeout`] that came since.
    /// The default keeps the cut.
    fn on_spurious_loss(&mut self, _now: Instant) {}
    /// The congestion window in bytes.
    fn window(&self) -> usize;
    /// Tells the controller the payload size in use (for per-packet rules).
    fn set_mss(&mut self, mss: usize);
    /// The delay state, for controllers that measure delay.
    fn delay_state(&self) -> Option<DelayState> {
        None
    }
}

/// Builds a fresh controller for each connection.
pub trait ControllerFactory: Send + Sync + Debug {
    /// A controller for a connection whose packets carry up to `mss` payload bytes.
    fn build(&self, mss: usize) -> Box<dyn Controller>;
}

/// Shared handle to a controller factory, as held by configurations.
pub type SharedControllerFactory = Arc<dyn ControllerFactory>;
