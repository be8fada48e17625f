//! What a simulation measured, and the figures derived from it.

use std::time::Duration;

use serde::Serialize;

use crate::net::SimSpec;

/// Time series of one flow, one point per sample interval.
#[derive(Debug, Clone, Default, Serialize)]
pub struct FlowSeries {
    /// The flow's label.
    pub label: String,
    /// Goodput (bytes delivered to the receiving application) in bit/s.
    pub goodput_bps: Vec<f64>,
    /// Sender's congestion window in bytes.
    pub cwnd_bytes: Vec<f64>,
    /// The sender's own queueing delay estimate (LEDBAT), in ms.
    pub queuing_estimate_ms: Vec<Option<f64>>,
    /// Bytes delivered in all.
    pub delivered_bytes: u64,
    /// Packets retransmitted.
    pub retransmits: u64,
    /// Retransmission timeouts.
    pub timeouts: u64,
}

/// Counters and series of one link direction.
#[derive(Debug, Clone, Default, Serialize)]
pub struct LinkSeries {
    /// Packets offered to the link.
    pub offered: u64,
    /// Dropped by the full queue.
    pub queue_drops: u64,
    /// When each queue drop happened (virtual ns).
    #[serde(skip)]
    pub drop_times: Vec<u64>,
    /// Dropped at random (configured loss).
    pub random_losses: u64,
    /// Dropped for exceeding the MTU.
    pub mtu_drops: u64,
    /// Delivered late (reordered).
    pub reordered: u64,
    /// Delivered twice.
    pub duplicated: u64,
    /// Wire bytes sent.
    pub sent_bytes: u64,
    /// Fraction of the link rate used, per sample interval.
    pub utilization: Vec<f64>,
    /// Queue length as waiting time, at each sample, in ms.
    pub queue_ms: Vec<f64>,
}

/// Everything one run measured.
#[derive(Debug, Clone, Serialize)]
pub struct SimResult {
    /// Sample times in seconds.
    pub t: Vec<f64>,
    /// Per-flow series.
    pub flows: Vec<FlowSeries>,
    /// Forward (data) and reverse (ack) link.
    pub links: [LinkSeries; 2],
    /// Queueing delay of every packet through the forward bottleneck:
    /// (enqueue time, wait) in virtual ns.
    #[serde(skip)]
    pub queue_delays: Vec<(u64, u64)>,
    /// Events processed.
    pub events: u64,
    /// Real time the run took.
    #[serde(skip)]
    pub wall: Duration,
    /// The sample interval.
    #[serde(skip)]
    pub sample_every: Duration,
}

fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

impl SimResult {
    pub(crate) fn new(spec: &SimSpec) -> Self {
        Self {
            t: Vec::new(),
            flows: spec
                .flows
                .iter()
                .map(|f| FlowSeries {
                    label: f.label.clone(),
                    ..FlowSeries::default()
                })
                .collect(),
            links: Default::default(),
            queue_delays: Vec::new(),
            events: 0,
            wall: Duration::ZERO,
            sample_every: spec.sample_every,
        }
    }

    /// Sample indices whose interval lies within `[from, to]`.
    fn window(&self, from: Duration, to: Duration) -> impl Iterator<Item = usize> + '_ {
        let every = secs(self.sample_every);
        let (from, to) = (secs(from), secs(to));
        self.t
            .iter()
            .enumerate()
            .filter(move |(_, &t)| t - every >= from - 1e-9 && t <= to + 1e-9)
            .map(|(i, _)| i)
    }

    /// Mean forward link utilisation over `[from, to]`.
    pub fn utilization(&self, from: Duration, to: Duration) -> f64 {
        mean(self.window(from, to).map(|i| self.links[0].utilization[i]))
    }

    /// Mean goodput of flow `f` over `[from, to]`, in bit/s.
    pub fn goodput(&self, f: usize, from: Duration, to: Duration) -> f64 {
        mean(self.window(from, to).map(|i| self.flows[f].goodput_bps[i]))
    }

    /// Share of the link rate (`rate_bps`) flow `f` got over `[from, to]`.
    pub fn share(&self, f: usize, rate_bps: u64, from: Duration, to: Duration) -> f64 {
        self.goodput(f, from, to) / rate_bps as f64
    }

    /// Jain's fairness index of the flows' goodputs over `[from, to]`.
    pub fn jain(&self, flows: &[usize], from: Duration, to: Duration) -> f64 {
        let x: Vec<f64> = flows.iter().map(|&f| self.goodput(f, from, to)).collect();
        let sum: f64 = x.iter().sum();
        let sq: f64 = x.iter().map(|v| v * v).sum();
        if sq == 0.0 {
            return 0.0;
        }
        sum * sum / (x.len() as f64 * sq)
    }

    /// Percentile `p` (0..=100) of the queueing delay of packets that joined
    /// the forward bottleneck's queue in `[from, to]`.
    pub fn queue_delay_percentile(&self, from: Duration, to: Duration, p: f64) -> Duration {
        let (from, to) = (from.as_nanos() as u64, to.as_nanos() as u64);
        let mut v: Vec<u64> = self
            .queue_delays
            .iter()
            .filter(|(t, _)| *t >= from && *t <= to)
            .map(|&(_, d)| d)
            .collect();
        Duration::from_nanos(percentile(&mut v, p))
    }

    /// Median of flow `f`'s own queueing delay estimate over `[from, to]`.
    pub fn estimate_median(&self, f: usize, from: Duration, to: Duration) -> Option<Duration> {
        let mut v: Vec<u64> = self
            .window(from, to)
            .filter_map(|i| self.flows[f].queuing_estimate_ms[i])
            .map(|ms| (ms * 1e6) as u64)
            .collect();
        (!v.is_empty()).then(|| Duration::from_nanos(percentile(&mut v, 50.0)))
    }

    /// Losses of the forward link: queue drops and random ones.
    pub fn forward_losses(&self) -> u64 {
        self.links[0].queue_drops + self.links[0].random_losses
    }

    /// Forward-link queue drops at or after `from`.
    pub fn queue_drops_after(&self, from: Duration) -> u64 {
        let from = from.as_nanos() as u64;
        self.links[0]
            .drop_times
            .iter()
            .filter(|&&t| t >= from)
            .count() as u64
    }
}

fn mean(it: impl Iterator<Item = f64>) -> f64 {
    let (n, sum) = it.fold((0usize, 0.0), |(n, s), x| (n + 1, s + x));
    if n == 0 {
        0.0
    } else {
        sum / n as f64
    }
}

fn percentile(v: &mut [u64], p: f64) -> u64 {
    if v.is_empty() {
        return 0;
    }
    v.sort_unstable();
    let idx = ((p / 100.0) * (v.len() - 1) as f64).round() as usize;
    v[idx.min(v.len() - 1)]
}
