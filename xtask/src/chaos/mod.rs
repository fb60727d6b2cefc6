//! `cargo xtask chaos`: breaks the stack on purpose under load and counts what survived, then
//! fuzzes every parser of outside bytes ([`crate::fuzz`]).
//!
//! Everything runs on this machine, on loopback ports: a private ClickHouse from the testkit,
//! the ingest server binary (one process per scenario, on its own spool), the edge worker in
//! workerd for (f). Every load is paced, bounded in time and stops by itself. One line per
//! scenario: acknowledged, stored, lost, visible duplicates, extra (see [`count`]); then one line
//! per fuzz target: cases and panics.
//!
//! `--short` is the form `cargo xtask test` runs (stage "chaos and fuzz (short)"): shorter
//! outages, two seconds per fuzz target, under three minutes together. Both forms exit non-zero
//! when anything was lost, a duplicate was visible, a process panicked or a scenario did not do
//! what it says.

mod count;
mod edge;
mod load;
mod plan;
mod scenarios;
mod stack;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _, Result};
use clap::Parser;
use indicatif::{ProgressBar, ProgressStyle};

use crate::fuzz::{self, group};
use crate::tools::{self, Tools};
use plan::Plan;
use scenarios::{Ctx, Outcome, TITLES};

/// Break the Waymark stack on purpose under load and count what survived; then fuzz the parsers.
///
/// Scenarios: (a) the ingest server SIGKILLed twice under load, (b) ClickHouse SIGKILLed for a
/// while, (c) ClickHouse refusing inserts (a column of `events` dropped, then added back), (d) a
/// full spool (clients get 503 + Retry-After and retry), (e) a damaged sealed spool segment,
/// (f) the edge queue during an ingest outage. Each prints acked, stored, lost, visible
/// duplicates and extra (stored but never acknowledged). Loopback only; every load is bounded.
#[derive(Parser, Debug)]
#[command(name = "cargo xtask chaos")]
pub struct Args {
    /// The short form `cargo xtask test` runs: 5 s outages and 2 s per fuzz target.
    #[arg(long)]
    short: bool,
    /// Only these scenarios, e.g. `--scenarios a,e` (letters a to f).
    #[arg(long, value_delimiter = ',', value_name = "LETTERS", value_parser = scenario)]
    scenarios: Vec<char>,
    /// Skip the fuzz stage.
    #[arg(long)]
    no_fuzz: bool,
    /// Skip the scenarios (only fuzz).
    #[arg(long)]
    no_scenarios: bool,
    /// Seconds per fuzz target [default: 60, short: 2].
    #[arg(long, value_name = "SECS")]
    fuzz_secs: Option<f64>,
    /// The fuzz generator's seed [default: from the clock]; the same seed gives the same inputs.
    #[arg(long)]
    seed: Option<u64>,
    /// Batches per second, all clients together [default: 100, short: 60].
    #[arg(long)]
    rate: Option<u32>,
    /// Concurrent clients.
    #[arg(long, default_value_t = 6)]
    clients: usize,
    /// Events per batch.
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u16).range(1..=500))]
    batch: u16,
    /// Run the release build of the ingest server (built first) instead of the debug one.
    #[arg(long)]
    release: bool,
}

/// A value of `--scenarios`: one of the letters of [`TITLES`].
fn scenario(s: &str) -> Result<char, String> {
    match s.parse::<char>() {
        Ok(l) if TITLES.iter().any(|(t, _)| *t == l) => Ok(l),
        _ => Err("no such scenario; they are a to f".into()),
    }
}

/// `cargo xtask chaos [...]`.
pub fn run(root: &Path, args: &Args) -> Result<()> {
    let tools = if args.no_scenarios {
        None
    } else {
        Some(tools::ensure_all(root)?)
    };
    chaos(root, tools.as_ref(), args)
}

/// The stage of `cargo xtask test`: the short form of scenarios and fuzz together.
pub fn stage(root: &Path, tools: &Tools) -> Result<()> {
    let args =
        Args::try_parse_from(["cargo xtask chaos", "--short"]).map_err(|e| anyhow!("{e}"))?;
    chaos(root, Some(tools), &args)
}

/// The ingest server binary to run: the debug build (built now if needed) or the release one.
fn server_binary(root: &Path, release: bool) -> Result<PathBuf> {
    if release {
        crate::server::build_release(root)
    } else {
        crate::server::build_debug(root)
    }
}

fn chaos(root: &Path, tools: Option<&Tools>, args: &Args) -> Result<()> {
    let mut plan = if args.short {
        Plan::short()
    } else {
        Plan::full()
    };
    if let Some(r) = args.rate {
        plan.rate = r.max(1);
    }
    let letters: Vec<char> = if args.scenarios.is_empty() {
        TITLES.iter().map(|(l, _)| *l).collect()
    } else {
        args.scenarios.clone()
    };
    let form = if args.short { "short" } else { "full" };
    let started = Instant::now();
    let mut outcomes: Vec<Outcome> = Vec::new();
    let mut failures: Vec<String> = Vec::new();
    let fuzz_secs = args
        .fuzz_secs
        .unwrap_or(if args.short { 2.0 } else { 60.0 });
    let seed = args.seed.unwrap_or_else(fuzz::clock_seed);
    // The short form fuzzes beside the scenarios, in a process of its own (its own panic
    // hook), to stay within three minutes: the scenarios mostly wait on timers.
    let fuzz_out = std::env::temp_dir().join(format!("waymark-fuzz-{}.out", std::process::id()));
    let fuzz_beside = if args.short && !args.no_fuzz && !args.no_scenarios {
        Some(spawn_fuzz_process(fuzz_secs, seed, &fuzz_out)?)
    } else {
        None
    };

    if !args.no_scenarios {
        let tools = tools.context("the scenarios need the installed tools")?;
        let binary = server_binary(root, args.release)?;
        if letters.contains(&'f') && !root.join("edge-worker/build/index.js").is_file() {
            println!("building the edge worker for scenario (f)...");
            crate::edge::build(root, tools)?;
        }
        let work = tempfile::Builder::new()
            .prefix("waymark-chaos-")
            .tempdir()
            .context("a working directory")?;
        println!(
            "chaos ({form} form): scenarios {}; {} clients x {} events per batch, {} batches/s; server {}",
            letters.iter().collect::<String>(),
            args.clients,
            args.batch,
            plan.rate,
            binary.display()
        );
        let scenario_start = Instant::now();
        let mut ch = waymark_testkit::ClickHouse::start().map_err(|e| anyhow!("{e}"))?;
        let pb = ProgressBar::new_spinner();
        pb.set_style(
            ProgressStyle::with_template("  {spinner} [{elapsed_precise}] {prefix} {wide_msg}")
                .expect("a valid template"),
        );
        pb.enable_steady_tick(Duration::from_millis(200));
        for &l in &letters {
            pb.set_prefix(format!("({l})"));
            println!("\n({l}) {}", scenarios::title(l));
            let mut ctx = Ctx {
                root,
                ch: &mut ch,
                binary: &binary,
                node: Some(&tools.node),
                plan: &plan,
                workdir: work.path(),
                clients: args.clients,
                batch: usize::from(args.batch),
                pb: pb.clone(),
            };
            let r = match l {
                'a' => scenarios::a(&mut ctx),
                'b' => scenarios::b(&mut ctx),
                'c' => scenarios::c(&mut ctx),
                'd' => scenarios::d(&mut ctx),
                'e' => scenarios::e(&mut ctx),
                _ => scenarios::f(&mut ctx),
            };
            if !ch.is_running() {
                // A scenario that failed half-way may have left ClickHouse stopped.
                ch.resume().map_err(|e| anyhow!("{e}"))?;
            }
            match r {
                Ok(o) => {
                    pb.suspend(|| print_outcome(&o));
                    failures.extend(outcome_failures(&o));
                    outcomes.push(o);
                }
                Err(e) => {
                    let msg = format!("({l}) did not complete: {e:#}");
                    pb.suspend(|| println!("    {msg}"));
                    failures.push(msg);
                }
            }
        }
        pb.finish_and_clear();
        println!(
            "\n== chaos ({form}), {} on {}, {:.0} s ==",
            today(),
            machine(),
            scenario_start.elapsed().as_secs_f64()
        );
        for o in &outcomes {
            println!("{}", figures(o));
        }
        if failures.is_empty() {
            // Keep the logs of a failed run; remove the rest.
            drop(work);
        } else {
            let kept = work.keep();
            println!("logs kept in {}", kept.display());
        }
    }

    if let Some(mut child) = fuzz_beside {
        println!();
        failures.extend(finish_fuzz_process(&mut child, &fuzz_out)?);
    } else if !args.no_fuzz {
        println!();
        let reports = fuzz::run(root, Duration::from_secs_f64(fuzz_secs), seed, &[])?;
        failures.extend(fuzz::failures(&reports, seed));
    }
    println!(
        "\nchaos ({form}) took {:.0} s",
        started.elapsed().as_secs_f64()
    );
    if !failures.is_empty() {
        for f in &failures {
            println!("FAILED: {f}");
        }
        bail!("{} chaos check(s) failed", failures.len());
    }
    Ok(())
}

/// The fuzz process of the short form; killed if the scenarios end in an error first.
struct FuzzProcess(std::process::Child);

impl Drop for FuzzProcess {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// `xtask fuzz --secs S --seed N` as a child process, its output to `out`.
fn spawn_fuzz_process(secs: f64, seed: u64, out: &Path) -> Result<FuzzProcess> {
    let exe = std::env::current_exe().context("finding the xtask binary")?;
    let file = std::fs::File::create(out)?;
    std::process::Command::new(exe)
        .args([
            "fuzz",
            "--secs",
            &secs.to_string(),
            "--seed",
            &seed.to_string(),
        ])
        .stdout(file.try_clone()?)
        .stderr(file)
        .spawn()
        .map(FuzzProcess)
        .context("starting the fuzz process")
}

/// Waits for the fuzz process (bounded), prints what it printed, and says what failed.
fn finish_fuzz_process(fuzz: &mut FuzzProcess, out: &Path) -> Result<Vec<String>> {
    let child = &mut fuzz.0;
    let deadline = Instant::now() + Duration::from_secs(300);
    let status = loop {
        if let Some(s) = child.try_wait()? {
            break Some(s);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    print!("{}", std::fs::read_to_string(out).unwrap_or_default());
    let _ = std::fs::remove_file(out);
    Ok(match status {
        Some(s) if s.success() => Vec::new(),
        Some(s) => vec![format!("the fuzz stage failed ({s}); see its lines above")],
        None => vec!["the fuzz stage did not finish within 300 s".to_string()],
    })
}

/// The figures line of a scenario.
fn figures(o: &Outcome) -> String {
    let c = &o.counts;
    let lost = match &o.damage {
        Some(d) => format!("lost {} ({d})", c.lost),
        None => format!("lost {}", c.lost),
    };
    format!(
        "({}) {:<44} acked {:>9}  stored {:>9}  {lost}  dup {}  extra {}  panics {}  ({:.0} s)",
        o.letter,
        o.title,
        group(c.acked),
        group(c.stored),
        c.dup(),
        c.extra,
        o.panics,
        o.secs
    )
}

fn print_outcome(o: &Outcome) {
    println!("{}", figures(o));
    for n in &o.notes {
        println!("    {n}");
    }
    for p in &o.problems {
        println!("    PROBLEM: {p}");
    }
}

fn outcome_failures(o: &Outcome) -> Vec<String> {
    let c = &o.counts;
    let mut f = Vec::new();
    let l = o.letter;
    if c.lost > 0 {
        f.push(format!("({l}) lost {} acknowledged events", c.lost));
    }
    if c.dup() > 0 {
        f.push(format!(
            "({l}) {} duplicates visible ({} through the query API, {} under FINAL)",
            c.dup(),
            c.dup_api,
            c.dup_final
        ));
    }
    if c.api_missing > 0 {
        f.push(format!(
            "({l}) the query API did not show {} stored events of sampled visitors",
            c.api_missing
        ));
    }
    if !c.drained {
        f.push(format!(
            "({l}) the spool did not drain within {:.0} s of the load stopping",
            c.drain_secs
        ));
    }
    if o.panics > 0 {
        f.push(format!(
            "({l}) the ingest server panicked {} times",
            o.panics
        ));
    }
    for p in &o.problems {
        f.push(format!("({l}) {p}"));
    }
    f
}

fn today() -> String {
    let ms = waymark_ingest::clock::now_ms();
    waymark_protocol::time::format_rfc3339(ms)[..10].to_string()
}

/// CPU model and core count, for the figures' heading.
fn machine() -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split(':').nth(1))
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    format!("{cores} cores ({model})")
}
