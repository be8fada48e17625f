//! `utp sim`: runs a scenario in the deterministic network simulator, prints
//! its figures (with their bounds), and optionally plots it or dumps JSON.

use std::time::Duration;

use anyhow::{bail, Context};
use utp_sim::net::{Buffer, FlowSpec, LinkSpec};
use utp_sim::scenario::{self, Scenario};
use utp_sim::Sim;

use crate::SimArgs;

fn custom(args: &SimArgs) -> Scenario {
    let mut flows = Vec::new();
    for i in 0..args.flows {
        let start = Duration::from_secs_f64(args.stagger * i as f64);
        flows.push(FlowSpec::utp(&format!("utp{i}"), start));
    }
    for i in 0..args.reno {
        let mut f = FlowSpec::reno(
            &format!("reno{i}"),
            Duration::from_secs_f64(args.reno_start),
        );
        f.stop = args.reno_stop.map(Duration::from_secs_f64);
        flows.push(f);
    }
    let rate = (args.rate * 1e6) as u64;
    let delay = Duration::from_secs_f64(args.delay / 1e3);
    let mut forward = LinkSpec::new(rate, delay, Buffer::Packets(args.buffer));
    forward.loss = args.loss / 100.0;
    forward.jitter = Duration::from_secs_f64(args.jitter / 1e3);
    Scenario {
        name: "custom",
        about: "from the command-line flags",
        spec: utp_sim::SimSpec {
            forward,
            ..scenario::dumbbell(rate, delay, Buffer::Packets(10_000), flows)
        },
        check: |_, _| Vec::new(),
    }
}

pub fn run(args: &SimArgs) -> anyhow::Result<()> {
    if args.list {
        for s in scenario::all() {
            println!("{:<22} {}", s.name, s.about);
        }
        return Ok(());
    }
    let mut sc = match args.scenario.as_deref() {
        None | Some("custom") => custom(args),
        Some(name) => scenario::by_name(name).with_context(|| {
            format!(
                "unknown scenario {name:?}; known: {}",
                scenario::names().join(", ")
            )
        })?,
    };
    if let Some(seed) = args.seed {
        sc.spec.seed = seed;
    }
    if let Some(d) = args.duration {
        sc.spec.duration = Duration::from_secs_f64(d);
    }
    if let Some(path) = &args.plot {
        // Plots are SVG only: PNG would need a font on the machine to draw
        // text (convert with `rsvg-convert plot.svg -o plot.png`).
        if path.extension().and_then(|e| e.to_str()) != Some("svg") {
            bail!("--plot writes SVG: give a file name ending in .svg");
        }
    }
    if sc.spec.flows.is_empty() {
        bail!("no flows: give --flows and/or --reno");
    }
    let result = Sim::new(sc.spec.clone()).run();
    let figures = (sc.check)(&sc.spec, &result);
    if args.json {
        let figs: Vec<_> = figures
            .iter()
            .map(|f| {
                serde_json::json!({
                    "what": f.what, "value": f.value, "unit": f.unit,
                    "bound": f.bound, "ok": f.ok,
                })
            })
            .collect();
        let out = serde_json::json!({
            "scenario": sc.name,
            "seed": sc.spec.seed,
            "figures": figs,
            "result": result,
        });
        println!("{}", serde_json::to_string(&out)?);
    } else {
        println!("scenario {} (seed {}): {}", sc.name, sc.spec.seed, sc.about);
        println!(
            "  simulated {:.0} s in {:.2} s of real time ({} events)",
            sc.spec.duration.as_secs_f64(),
            result.wall.as_secs_f64(),
            result.events
        );
        for (i, f) in result.flows.iter().enumerate() {
            println!(
                "  flow {:<10} delivered {:>8.1} MB, mean {:>6.2} Mbit/s, {} retransmissions, {} timeouts",
                f.label,
                f.delivered_bytes as f64 / 1e6,
                result.goodput(i, Duration::ZERO, sc.spec.duration) / 1e6,
                f.retransmits,
                f.timeouts
            );
        }
        let l = &result.links[0];
        println!(
            "  bottleneck: {} queue drops, {} random losses, {} MTU drops",
            l.queue_drops, l.random_losses, l.mtu_drops
        );
        for f in &figures {
            println!("  {f}");
        }
    }
    if let Some(path) = &args.plot {
        let title = format!("utp sim: {} (seed {})", sc.name, sc.spec.seed);
        utp_sim::plot::svg(&result, &title, path)
            .map_err(|e| anyhow::anyhow!("cannot write the plot to {}: {e}", path.display()))?;
        eprintln!("plot written to {}", path.display());
    }
    if figures.iter().any(|f| !f.ok) {
        bail!("scenario {}: some figures are out of bounds", sc.name);
    }
    Ok(())
}
