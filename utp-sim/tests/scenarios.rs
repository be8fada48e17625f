//! LEDBAT held to its scenarios in the deterministic simulator. Virtual
//! time: the outcomes are exact for a seed, so these bounds cannot flake.
//! Each test prints its figures, so a failing bound says by how much.

use std::time::Duration;

use utp_sim::scenario::{self, Figure};
use utp_sim::{Sim, SimResult};

fn run(name: &str) -> (Vec<Figure>, SimResult) {
    let sc = scenario::by_name(name).expect("known scenario");
    let r = Sim::new(sc.spec.clone()).run();
    let figures = (sc.check)(&sc.spec, &r);
    println!(
        "scenario {name}: {} ({} events, {:.2} s real time)",
        sc.about,
        r.events,
        r.wall.as_secs_f64()
    );
    for f in &figures {
        println!("  {f}");
    }
    (figures, r)
}

fn assert_ok(name: &str) -> SimResult {
    let (figures, r) = run(name);
    let failed: Vec<String> = figures
        .iter()
        .filter(|f| !f.ok)
        .map(|f| f.to_string())
        .collect();
    assert!(
        failed.is_empty(),
        "scenario {name} out of bounds:\n{}",
        failed.join("\n")
    );
    r
}

#[test]
fn steady_fills_the_link_and_keeps_the_queue_near_target() {
    assert_ok("steady");
}

#[test]
fn fast_link_is_filled() {
    assert_ok("fast");
}

#[test]
fn yields_to_a_loss_based_flow_and_comes_back() {
    assert_ok("yield");
}

#[test]
fn latecomer_gets_a_fair_share_with_the_remedy_and_not_without() {
    let with = assert_ok("latecomer");
    let (_, without) = run("latecomer-no-remedy");
    let from = Duration::from_secs(60);
    let to = Duration::from_secs(90);
    let (j_with, j_without) = (
        with.jain(&[0, 1], from, to),
        without.jain(&[0, 1], from, to),
    );
    println!("Jain index, last 30 s: {j_with:.3} with slowdowns, {j_without:.3} without");
    assert!(
        j_with > j_without,
        "the remedy must help: {j_with} vs {j_without}"
    );
}

#[test]
fn random_loss_of_one_percent_keeps_goodput() {
    assert_ok("loss");
}

#[test]
fn clock_drift_either_way_does_not_fool_the_delay_estimate() {
    assert_ok("drift-fast");
    assert_ok("drift-slow");
}

#[test]
fn bufferbloat_does_not_fill_a_huge_buffer() {
    assert_ok("bufferbloat");
}

#[test]
fn tiny_buffer_does_not_collapse() {
    assert_ok("tiny-buffer");
}

#[test]
fn same_seed_same_run_other_seed_other_run() {
    let sc = scenario::by_name("loss").expect("known");
    let mut spec = sc.spec;
    spec.duration = Duration::from_secs(10);
    let a = Sim::new(spec.clone()).run();
    let b = Sim::new(spec.clone()).run();
    assert_eq!(a.flows[0].goodput_bps, b.flows[0].goodput_bps);
    assert_eq!(a.queue_delays, b.queue_delays);
    spec.seed = 2;
    let c = Sim::new(spec).run();
    assert_ne!(a.queue_delays, c.queue_delays);
}

#[test]
fn a_simulated_minute_at_10_mbit_takes_little_work() {
    // Speed is a benchmark matter; this bounds the work (events), which is
    // machine-independent: ~900 data packets/s, their acks, timers.
    let (_, r) = run("steady");
    assert!(r.events < 400_000, "{} events for one minute", r.events);
}
