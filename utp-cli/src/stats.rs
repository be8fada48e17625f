//! The `--stats-json` report.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result};
use serde::Serialize;
use tokio_utp::ConnectionStats;

/// What `--stats-json` writes: one JSON object describing the connection.
#[derive(Debug, Serialize)]
pub struct StatsReport {
    /// `"listen"`, `"connect"`, or `"demo-client"`.
    pub role: &'static str,
    pub peer: String,
    pub bytes_sent: u64,
    pub bytes_received: u64,
    pub packets_sent: u64,
    pub packets_received: u64,
    pub packets_retransmitted: u64,
    pub timeouts: u64,
    pub fast_retransmits: u64,
    /// Packets declared lost that had only been reordered or delayed.
    pub spurious_retransmits: u64,
    /// Resends of the newest packet when acks stopped (not congestion).
    pub tail_loss_probes: u64,
    /// Probes of a peer's closed receive window.
    pub zero_window_probes: u64,
    pub duplicates_received: u64,
    /// Smoothed RTT in milliseconds; `null` without a sample.
    pub rtt_ms: Option<f64>,
    pub max_cwnd_bytes: usize,
    /// Payload size in use for new packets at exit (path MTU discovery's
    /// confirmed size).
    pub payload_size: usize,
    /// Largest payload actually sent in one packet.
    pub max_payload_sent: usize,
    /// Path MTU probes sent, and lost (not congestion).
    pub pmtud_probes: u64,
    pub pmtud_probes_lost: u64,
    /// Fall-backs to the base size after full-size packets were black-holed.
    pub pmtud_black_holes: u64,
    /// Duration of the last completed path MTU search in seconds (`null`
    /// when none completed).
    pub pmtud_search_s: Option<f64>,
    pub duration_s: f64,
    /// LEDBAT's base one-way delay (raw µs in the peer's clock minus ours:
    /// only meaningful next to other samples); `null` without a sample or
    /// with a loss-based controller.
    pub base_delay_us: Option<u32>,
    /// LEDBAT's queueing delay estimate at the end, in ms.
    pub queuing_delay_ms: Option<f64>,
    /// LEDBAT's target queueing delay, in ms.
    pub target_delay_ms: Option<f64>,
}

impl StatsReport {
    pub fn new(
        role: &'static str,
        peer: String,
        stats: &ConnectionStats,
        duration: Duration,
    ) -> Self {
        Self {
            role,
            peer,
            bytes_sent: stats.bytes_sent,
            bytes_received: stats.bytes_received,
            packets_sent: stats.packets_sent,
            packets_received: stats.packets_received,
            packets_retransmitted: stats.packets_retransmitted,
            timeouts: stats.timeouts,
            fast_retransmits: stats.fast_retransmits,
            spurious_retransmits: stats.spurious_retransmits,
            tail_loss_probes: stats.tail_loss_probes,
            zero_window_probes: stats.zero_window_probes,
            duplicates_received: stats.duplicates_received,
            rtt_ms: stats.rtt.map(|d| d.as_secs_f64() * 1e3),
            max_cwnd_bytes: stats.max_cwnd,
            payload_size: stats.payload_size,
            max_payload_sent: stats.max_payload_sent,
            pmtud_probes: stats.pmtud_probes,
            pmtud_probes_lost: stats.pmtud_probes_lost,
            pmtud_black_holes: stats.pmtud_black_holes,
            pmtud_search_s: stats.pmtud_search_time.map(|d| d.as_secs_f64()),
            duration_s: duration.as_secs_f64(),
            base_delay_us: stats.delay.map(|d| d.base_delay_us),
            queuing_delay_ms: stats.delay.map(|d| d.queuing_delay.as_secs_f64() * 1e3),
            target_delay_ms: stats.delay.map(|d| d.target.as_secs_f64() * 1e3),
        }
    }

    /// Writes the report as pretty JSON (with a trailing newline) to `path`.
    pub fn write(&self, path: &Path) -> Result<()> {
        let mut json = serde_json::to_string_pretty(self)?;
        json.push('\n');
        std::fs::write(path, json)
            .with_context(|| format!("cannot write stats to {}", path.display()))
    }
}
