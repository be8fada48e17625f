//! The named scenarios LEDBAT is held to, each with its bounds.
//!
//! Every scenario is a [`SimSpec`] plus a check that turns a run's result
//! into figures, each with its bound, so a failure says by how much.

use std::fmt;
use std::time::Duration;

use utp_proto::{Config, LedbatConfig, LedbatFactory};

use crate::net::{Buffer, ClockSpec, FlowKind, FlowSpec, LinkSpec, SimSpec};
use crate::result::SimResult;

/// One measured figure and its bound.
#[derive(Debug, Clone)]
pub struct Figure {
    /// What was measured.
    pub what: String,
    /// The value, in `unit`.
    pub value: f64,
    /// Unit of `value` and the bound.
    pub unit: &'static str,
    /// The bound, as text (`>= 95`), or empty for an informational figure.
    pub bound: String,
    /// Whether the value is within its bound (true when there is none).
    pub ok: bool,
}

impl fmt::Display for Figure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mark = match (self.bound.is_empty(), self.ok) {
            (true, _) => "    ",
            (false, true) => "ok  ",
            (false, false) => "FAIL",
        };
        write!(
            f,
            "{mark} {:<48} {:>10.2} {:<6}",
            self.what, self.value, self.unit
        )?;
        if !self.bound.is_empty() {
            write!(f, " (bound {} {})", self.bound, self.unit)?;
        }
        Ok(())
    }
}

fn at_least(what: &str, value: f64, min: f64, unit: &'static str) -> Figure {
    Figure {
        what: what.into(),
        value,
        unit,
        bound: format!(">= {min}"),
        ok: value >= min,
    }
}

fn at_most(what: &str, value: f64, max: f64, unit: &'static str) -> Figure {
    Figure {
        what: what.into(),
        value,
        unit,
        bound: format!("<= {max}"),
        ok: value <= max,
    }
}

fn between(what: &str, value: f64, lo: f64, hi: f64, unit: &'static str) -> Figure {
    Figure {
        what: what.into(),
        value,
        unit,
        bound: format!("in {lo}..{hi}"),
        ok: (lo..=hi).contains(&value),
    }
}

fn info(what: &str, value: f64, unit: &'static str) -> Figure {
    Figure {
        what: what.into(),
        value,
        unit,
        bound: String::new(),
        ok: true,
    }
}

/// A named scenario.
pub struct Scenario {
    /// Name used by `utp sim --scenario`.
    pub name: &'static str,
    /// One line on what it shows.
    pub about: &'static str,
    /// The network and flows.
    pub spec: SimSpec,
    /// Turns a result into figures with bounds.
    pub check: fn(&SimSpec, &SimResult) -> Vec<Figure>,
}

fn s(secs: u64) -> Duration {
    Duration::from_secs(secs)
}

fn ms(ms: u64) -> Duration {
    Duration::from_millis(ms)
}

const MBIT: u64 = 1_000_000;

/// A dumbbell: the forward bottleneck as given, acks back over a link of the
/// same rate and delay with a generous queue.
pub fn dumbbell(rate_bps: u64, one_way: Duration, buffer: Buffer, flows: Vec<FlowSpec>) -> SimSpec {
    SimSpec {
        seed: 1,
        duration: s(60),
        forward: LinkSpec::new(rate_bps, one_way, buffer),
        reverse: LinkSpec::new(rate_bps, one_way, Buffer::Packets(10_000)),
        flows,
        sample_every: ms(100),
    }
}

fn no_slowdowns() -> Config {
    Config::default().controller(std::sync::Arc::new(LedbatFactory::new(
        LedbatConfig::default().slowdowns(false),
    )))
}

fn q_ms(r: &SimResult, from: Duration, to: Duration, p: f64) -> f64 {
    r.queue_delay_percentile(from, to, p).as_secs_f64() * 1e3
}

fn end(spec: &SimSpec) -> Duration {
    spec.duration
}

fn steady(spec: &SimSpec, r: &SimResult) -> Vec<Figure> {
    let (from, to) = (s(10), end(spec));
    vec![
        at_least(
            "utilisation, last 50 s",
            100.0 * r.utilization(from, to),
            95.0,
            "%",
        ),
        between(
            "queueing delay median, last 50 s",
            q_ms(r, from, to, 50.0),
            70.0,
            110.0,
            "ms",
        ),
        at_most(
            "queueing delay p95, last 50 s",
            q_ms(r, from, to, 95.0),
            130.0,
            "ms",
        ),
        at_most(
            "queue drops after start-up (10 s)",
            r.queue_drops_after(from) as f64,
            0.0,
            "pkts",
        ),
        info("queue drops in all", r.links[0].queue_drops as f64, "pkts"),
    ]
}

fn fast(spec: &SimSpec, r: &SimResult) -> Vec<Figure> {
    let (from, to) = (s(10), end(spec));
    vec![
        at_least(
            "utilisation, after 10 s",
            100.0 * r.utilization(from, to),
            95.0,
            "%",
        ),
        info("queueing delay median", q_ms(r, from, to, 50.0), "ms"),
        info("queueing delay p95", q_ms(r, from, to, 95.0), "ms"),
    ]
}

fn yielding(spec: &SimSpec, r: &SimResult) -> Vec<Figure> {
    let rate = spec.forward.rate_bps;
    vec![
        at_least(
            "utilisation alone, 10-20 s",
            100.0 * r.utilization(s(10), s(20)),
            90.0,
            "%",
        ),
        at_most(
            "uTP share with Reno, 30-60 s",
            100.0 * r.share(0, rate, s(30), s(60)),
            10.0,
            "%",
        ),
        info(
            "Reno share, 30-60 s",
            100.0 * r.share(1, rate, s(30), s(60)),
            "%",
        ),
        at_least(
            "uTP utilisation 10 s after Reno left, 70-80 s",
            100.0 * r.share(0, rate, s(70), s(80)),
            90.0,
            "%",
        ),
        info(
            "uTP share 60-70 s (coming back)",
            100.0 * r.share(0, rate, s(60), s(70)),
            "%",
        ),
    ]
}

fn latecomer(spec: &SimSpec, r: &SimResult) -> Vec<Figure> {
    let (from, to) = (end(spec) - s(30), end(spec));
    let rate = spec.forward.rate_bps;
    vec![
        at_least("Jain index, last 30 s", r.jain(&[0, 1], from, to), 0.9, ""),
        info(
            "first flow share, last 30 s",
            100.0 * r.share(0, rate, from, to),
            "%",
        ),
        info(
            "latecomer share, last 30 s",
            100.0 * r.share(1, rate, from, to),
            "%",
        ),
        info(
            "utilisation, last 30 s",
            100.0 * r.utilization(from, to),
            "%",
        ),
        info(
            "queueing delay median, last 30 s",
            q_ms(r, from, to, 50.0),
            "ms",
        ),
    ]
}

fn latecomer_plain(spec: &SimSpec, r: &SimResult) -> Vec<Figure> {
    latecomer(spec, r)
        .into_iter()
        .map(|f| info(&f.what, f.value, f.unit))
        .collect()
}

fn lossy(spec: &SimSpec, r: &SimResult) -> Vec<Figure> {
    let (from, to) = (s(5), end(spec));
    vec![
        at_least(
            "goodput, after 5 s",
            r.goodput(0, from, to) / 1e6,
            3.0,
            "Mbit/s",
        ),
        info("random losses", r.links[0].random_losses as f64, "pkts"),
        info("retransmissions", r.flows[0].retransmits as f64, "pkts"),
    ]
}

fn drift(spec: &SimSpec, r: &SimResult) -> Vec<Figure> {
    // The estimate against the truth, minute by minute: medians, so the lag
    // of a few RTTs around slowdowns doesn't count as error.
    let mut worst: f64 = 0.0;
    let minutes = end(spec).as_secs() / 60;
    for m in 1..minutes {
        let (from, to) = (s(m * 60), s((m + 1) * 60));
        let truth = q_ms(r, from, to, 50.0);
        if let Some(est) = r.estimate_median(0, from, to) {
            worst = worst.max((est.as_secs_f64() * 1e3 - truth).abs());
        } else {
            worst = f64::INFINITY;
        }
    }
    let last = (end(spec) - s(60), end(spec));
    vec![
        at_most(
            "worst minute: |estimate - true| queueing delay",
            worst,
            10.0,
            "ms",
        ),
        at_least(
            "utilisation, minute 1 to the end",
            100.0 * r.utilization(s(60), end(spec)),
            95.0,
            "%",
        ),
        info(
            "utilisation, last minute",
            100.0 * r.utilization(last.0, last.1),
            "%",
        ),
        info(
            "true queueing delay median, last minute",
            q_ms(r, last.0, last.1, 50.0),
            "ms",
        ),
    ]
}

fn bufferbloat(spec: &SimSpec, r: &SimResult) -> Vec<Figure> {
    let (from, to) = (s(10), end(spec));
    vec![
        at_most(
            "queueing delay median, after 10 s",
            q_ms(r, from, to, 50.0),
            110.0,
            "ms",
        ),
        at_most(
            "queueing delay p95, after 10 s",
            q_ms(r, from, to, 95.0),
            150.0,
            "ms",
        ),
        at_least(
            "utilisation, after 10 s",
            100.0 * r.utilization(from, to),
            95.0,
            "%",
        ),
        info(
            "queueing delay max, whole run",
            q_ms(r, s(0), to, 100.0),
            "ms",
        ),
    ]
}

fn tiny(spec: &SimSpec, r: &SimResult) -> Vec<Figure> {
    let (from, to) = (s(10), end(spec));
    vec![
        at_least(
            "utilisation, after 10 s",
            100.0 * r.utilization(from, to),
            80.0,
            "%",
        ),
        info("queue drops", r.links[0].queue_drops as f64, "pkts"),
        info("timeouts", r.flows[0].timeouts as f64, ""),
    ]
}

fn drift_spec(ppm: f64) -> SimSpec {
    let mut flow = FlowSpec::utp("utp", Duration::ZERO);
    flow.receiver_clock = ClockSpec {
        offset_us: 123_456_789,
        drift_ppm: ppm,
    };
    flow.sender_clock = ClockSpec {
        offset_us: -5_000_000,
        drift_ppm: 0.0,
    };
    SimSpec {
        duration: s(20 * 60),
        sample_every: ms(250),
        ..dumbbell(10 * MBIT, ms(20), Buffer::Packets(300), vec![flow])
    }
}

/// Every named scenario.
pub fn all() -> Vec<Scenario> {
    let ten = 10 * MBIT;
    let mut v = vec![
        Scenario {
            name: "steady",
            about: "1 uTP flow, 10 Mbit/s, 20 ms one way, 300-packet buffer, 60 s",
            spec: dumbbell(
                ten,
                ms(20),
                Buffer::Packets(300),
                vec![FlowSpec::utp("utp", s(0))],
            ),
            check: steady,
        },
        Scenario {
            name: "fast",
            about: "1 uTP flow, 100 Mbit/s, 5 ms one way, 2000-packet buffer, 30 s",
            spec: SimSpec {
                duration: s(30),
                ..dumbbell(
                    100 * MBIT,
                    ms(5),
                    Buffer::Packets(2000),
                    vec![FlowSpec::utp("utp", s(0))],
                )
            },
            check: fast,
        },
        Scenario {
            name: "yield",
            about: "uTP alone, a Reno flow joins at 20 s and leaves at 60 s",
            spec: SimSpec {
                duration: s(80),
                ..dumbbell(
                    ten,
                    ms(20),
                    Buffer::Packets(300),
                    vec![
                        FlowSpec::utp("utp", s(0)),
                        FlowSpec {
                            stop: Some(s(60)),
                            ..FlowSpec::reno("reno", s(20))
                        },
                    ],
                )
            },
            check: yielding,
        },
        Scenario {
            name: "latecomer",
            about: "2 uTP flows, the second starts at 10 s (with LEDBAT++ slowdowns)",
            spec: SimSpec {
                duration: s(90),
                ..dumbbell(
                    ten,
                    ms(20),
                    Buffer::Packets(300),
                    vec![
                        FlowSpec::utp("first", s(0)),
                        FlowSpec::utp("latecomer", s(10)),
                    ],
                )
            },
            check: latecomer,
        },
        Scenario {
            name: "latecomer-no-remedy",
            about: "as latecomer, slowdowns off: plain RFC 6817 behaviour, for comparison",
            spec: SimSpec {
                duration: s(90),
                ..dumbbell(
                    ten,
                    ms(20),
                    Buffer::Packets(300),
                    vec![
                        FlowSpec {
                            kind: FlowKind::Utp(Box::new(no_slowdowns())),
                            ..FlowSpec::utp("first", s(0))
                        },
                        FlowSpec {
                            kind: FlowKind::Utp(Box::new(no_slowdowns())),
                            ..FlowSpec::utp("latecomer", s(10))
                        },
                    ],
                )
            },
            check: latecomer_plain,
        },
        Scenario {
            name: "loss",
            about: "1 uTP flow, 1% random loss, 10 Mbit/s, 20 ms one way",
            spec: {
                let mut spec = dumbbell(
                    ten,
                    ms(20),
                    Buffer::Packets(300),
                    vec![FlowSpec::utp("utp", s(0))],
                );
                spec.forward.loss = 0.01;
                spec
            },
            check: lossy,
        },
        Scenario {
            name: "drift-fast",
            about: "receiver clock +100 ppm against the sender's, 20 minutes",
            spec: drift_spec(100.0),
            check: drift,
        },
        Scenario {
            name: "drift-slow",
            about: "receiver clock -100 ppm against the sender's, 20 minutes",
            spec: drift_spec(-100.0),
            check: drift,
        },
        Scenario {
            name: "bufferbloat",
            about: "10 Mbit/s with a 3-second buffer: the queue still stays near target",
            spec: dumbbell(
                ten,
                ms(20),
                Buffer::Bytes(10 * 1_000_000 / 8 * 3),
                vec![FlowSpec::utp("utp", s(0))],
            ),
            check: bufferbloat,
        },
        Scenario {
            name: "tiny-buffer",
            about: "10 Mbit/s, 20 ms, a 10-packet buffer: no collapse",
            spec: dumbbell(
                ten,
                ms(20),
                Buffer::Packets(10),
                vec![FlowSpec::utp("utp", s(0))],
            ),
            check: tiny,
        },
    ];
    for sc in &mut v {
        sc.spec.seed = 1;
    }
    v
}

/// The scenario called `name`.
pub fn by_name(name: &str) -> Option<Scenario> {
    all().into_iter().find(|s| s.name == name)
}

/// Names of every scenario.
pub fn names() -> Vec<&'static str> {
    all().iter().map(|s| s.name).collect()
}
