//! The CPU a tracking plan costs per event, in release mode: `cargo xtask bench ingest` writes
//! its own batches to a file (one JSON body per line) and runs
//! `cargo run --release -p waymark-ingest --example plan_cost -- PLAN BATCHES`.
//!
//! Prints one line: the wire format's validation per event (`parse_batch`, what every event
//! costs at intake today, the reference) and the plan's check of the same events, both as
//! this process's CPU time.

use std::time::Duration;

use cpu_time::ProcessTime;
use waymark_ingest::config::plan::TrackingPlan;
use waymark_ingest::intake::quality::Quality;

const PASSES: usize = 4;

fn main() -> Result<(), String> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [plan, batches] = args.as_slice() else {
        return Err("usage: plan_cost PLAN.json BATCHES.ndjson".into());
    };
    let plan = TrackingPlan::read(plan.as_ref())?;
    let mut config = waymark_ingest::Config::from_toml("[[sites]]\nid = \"bench\"\n")?;
    config.sites[0].plan = Some(plan);
    let quality = Quality::new(&config);
    let site = quality.site("bench").ok_or("the site has no checks")?;
    let text = std::fs::read_to_string(batches).map_err(|e| format!("{batches}: {e}"))?;
    let bodies: Vec<&str> = text.lines().filter(|l| !l.is_empty()).collect();
    let now = waymark_ingest::clock::now_ms();

    let mut parsed = Vec::with_capacity(bodies.len());
    let t = ProcessTime::now();
    for _ in 0..PASSES {
        parsed.clear();
        for b in &bodies {
            parsed
                .push(waymark_protocol::parse_batch(b.as_bytes(), now).map_err(|e| e.to_string())?);
        }
    }
    let validate = t.elapsed();
    let t = ProcessTime::now();
    let mut violations = 0;
    for _ in 0..PASSES {
        for v in &mut parsed {
            for ev in &mut v.events {
                violations += std::hint::black_box(site.check(ev)).violations.len();
            }
        }
    }
    let check = t.elapsed();
    let n: usize = parsed.iter().map(|v| v.events.len()).sum();
    let per = |d: Duration| d.as_secs_f64() * 1e6 / (n * PASSES) as f64;
    println!(
        "tracking plan (release, {n} events x {PASSES} passes, {} violations per pass): wire validation {:.2} us/event CPU (reference); starter plan check {:.2} us/event CPU (target < 2)",
        violations / PASSES,
        per(validate),
        per(check)
    );
    Ok(())
}
