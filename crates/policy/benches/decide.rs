//! One policy decision against 1,000 policies, of which about a dozen can apply to the
//! benchmarked target (see `mayfly_policy::bench_support`).
//!
//! Criterion reports mean and median; a decision budget is a tail-latency promise, so the
//! bench also times 20,000 single decisions and prints p50/p99/p99.9 to stdout.

use std::hint::black_box;
use std::time::Instant;

use criterion::{criterion_group, criterion_main, Criterion};
use mayfly_core::duration::Ttl;
use mayfly_core::policy::{PolicyEngine, PolicyRequest};
use mayfly_policy::bench_support::{fixture, synthetic_policies};
use mayfly_policy::{CedarEngine, LoadOptions};

fn decide(c: &mut Criterion) {
    let started = Instant::now();
    let engine = match CedarEngine::from_sources(synthetic_policies(1000), LoadOptions::default()) {
        Ok(e) => e,
        Err(e) => {
            eprintln!("synthetic policies do not load: {e}");
            return;
        }
    };
    let load = started.elapsed();
    let f = fixture();
    let request = PolicyRequest {
        principal: &f.principal,
        identity: &f.identity,
        target: &f.target,
        action: "read",
        purpose: "nightly report",
        task: "JOB-1",
        requested_ttl: Ttl::from_secs(900),
        context: &f.context,
        now: f.now,
    };
    let applicable = engine.policies_for(&f.target, "read").unwrap_or(0);
    println!(
        "loaded {} policies in {load:?}; {applicable} can apply to read on {}",
        engine.policy_count(),
        f.target.name
    );
    match engine.decide(&request) {
        Ok(d) => println!("decision: {:?} by {:?}", d.outcome, d.determined_by),
        Err(e) => {
            eprintln!("decision failed: {e}");
            return;
        }
    }

    // Tail latency: individually timed decisions after a short warm-up.
    for _ in 0..2_000 {
        let _ = black_box(engine.decide(black_box(&request)));
    }
    let mut samples: Vec<u128> = (0..20_000)
        .map(|_| {
            let t = Instant::now();
            let _ = black_box(engine.decide(black_box(&request)));
            t.elapsed().as_nanos()
        })
        .collect();
    samples.sort_unstable();
    let pct = |p: f64| {
        let i = ((samples.len() as f64 * p).ceil() as usize).clamp(1, samples.len()) - 1;
        samples[i] as f64 / 1000.0
    };
    println!(
        "20000 timed decisions: p50 {:.1} µs, p90 {:.1} µs, p99 {:.1} µs, p99.9 {:.1} µs, max {:.1} µs",
        pct(0.50),
        pct(0.90),
        pct(0.99),
        pct(0.999),
        pct(1.0)
    );

    c.bench_function("decide/1000 policies, one target", |b| {
        b.iter(|| engine.decide(black_box(&request)))
    });
}

criterion_group!(benches, decide);
criterion_main!(benches);
