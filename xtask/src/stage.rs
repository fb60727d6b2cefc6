//! `cargo xtask test`: a list of stages, each timed and summarised on one line.

use std::path::Path;
use std::process::Command;
use std::time::Instant;

use anyhow::{bail, Result};

use crate::process::{cargo, run};
use crate::tools::{self, Tools};

type StageFn<'a> = Box<dyn FnOnce() -> Result<()> + 'a>;

/// The stages in the order they run, as [`stages`] names them (`cargo xtask test --help` lists
/// them).
pub const NAMES: [&str; 13] = [
    "fmt",
    "clippy",
    "docs",
    "prometheus rules",
    "rust tests",
    "wasm32 build and clippy",
    "tag build and size",
    "tag browser tests",
    "edge build",
    "edge worker tests",
    "chaos and fuzz (short)",
    "end to end",
    "sdk clients",
];

/// Run every check CI runs, one summary line per stage.
///
/// Installs missing tools (pinned, cached outside the repo), then runs fmt, clippy, rustdoc
/// (its warnings are errors), the Prometheus alert rules' checks and unit tests, every Rust test, the wasm builds and size budget, the browser and worker tests, the short form of
/// `chaos`, the end-to-end and SDK client tests.
#[derive(clap::Args, Debug)]
#[command(after_help = stage_list())]
pub struct Args {
    /// Only the stages whose names start with one of these, e.g. `cargo xtask test edge "end to
    /// end"` [default: every stage].
    #[arg(value_name = "STAGE")]
    stages: Vec<String>,
}

fn stage_list() -> String {
    format!("Stages, in order: {}.", NAMES.join(", "))
}

/// Every stage; each runs when called.
fn stages<'a>(root: &'a Path, tools: &'a Tools) -> Vec<(&'static str, StageFn<'a>)> {
    vec![
        (
            "fmt",
            Box::new(|| run(cargo().args(["fmt", "--all", "--check"]))),
        ),
        (
            "clippy",
            Box::new(|| {
                run(cargo().args([
                    "clippy",
                    "--workspace",
                    "--all-targets",
                    "--",
                    "-D",
                    "warnings",
                ]))
            }),
        ),
        (
            "docs",
            // Broken and private intra-doc links are errors, so the docs say what the code is.
            Box::new(|| {
                run(cargo()
                    .args(["doc", "--workspace", "--no-deps"])
                    .env("RUSTDOCFLAGS", "-D warnings"))
            }),
        ),
        (
            "prometheus rules",
            // The alert rules shipped for operators: valid, and each alert fires on a series
            // made to break it and stays quiet otherwise.
            Box::new(|| {
                let dir = root.join("deploy/prometheus");
                run(Command::new(&tools.promtool)
                    .args(["check", "rules", "alerts.yml"])
                    .current_dir(&dir))?;
                run(Command::new(&tools.promtool)
                    .args(["test", "rules", "alerts_test.yml"])
                    .current_dir(&dir))
            }),
        ),
        (
            "rust tests",
            // The end-to-end crate needs the built tag and worker: it runs last, below. The
            // ClickHouse parity test replays on chdb-core from the tool cache.
            Box::new(|| {
                run(cargo()
                    .args([
                        "test",
                        "--workspace",
                        "--exclude",
                        "waymark-e2e",
                        "--no-fail-fast",
                    ])
                    .env("WAYMARK_CHDB_PYTHON", &tools.chdb_python))
            }),
        ),
        (
            "wasm32 build and clippy",
            // The protocol crate as the tag takes it, and clippy over the tag's wasm-only
            // code (exports, allocator), which the native clippy above does not see.
            Box::new(|| {
                run(cargo().args([
                    "build",
                    "-p",
                    "waymark-protocol",
                    "--target",
                    "wasm32-unknown-unknown",
                ]))?;
                run(cargo().args([
                    "clippy",
                    "-p",
                    "waymark-collector",
                    "--target",
                    "wasm32-unknown-unknown",
                    "--all-targets",
                    "--",
                    "-D",
                    "warnings",
                ]))
            }),
        ),
        (
            "tag build and size",
            Box::new(|| crate::tag::build(root, tools).map(|_| ())),
        ),
        (
            "tag browser tests",
            Box::new(|| crate::tag::test(root, tools)),
        ),
        (
            "edge build",
            Box::new(|| crate::edge::build(root, tools).map(|_| ())),
        ),
        (
            "edge worker tests",
            Box::new(|| crate::edge::test(root, tools)),
        ),
        (
            "chaos and fuzz (short)",
            // `cargo xtask chaos --short`: the ingest server and ClickHouse killed under
            // load, a dropped column, a full spool, a damaged segment, the edge queue
            // across an ingest outage; then every parser fuzzed. Asserts lost = 0,
            // duplicates = 0, panics = 0.
            Box::new(|| crate::chaos::stage(root, tools)),
        ),
        (
            "end to end",
            Box::new(|| {
                crate::server::build_debug(root)?;
                run(cargo()
                    .args(["test", "-p", "waymark-e2e", "--test", "pipeline"])
                    .args(["--test", "email"])
                    .args(["--test", "quality_page"])
                    .args(["--", "--test-threads=1"])
                    .env("WAYMARK_CHROMIUM", &tools.chromium))
            }),
        ),
        (
            "sdk clients",
            // The real Segment-family SDKs (e2e/clients/, pinned) against the same stack.
            Box::new(|| {
                crate::server::build_debug(root)?;
                run(cargo()
                    .args(["test", "-p", "waymark-e2e", "--test", "clients"])
                    .args(["--", "--nocapture"])
                    .env("WAYMARK_CHROMIUM", &tools.chromium)
                    .env("WAYMARK_CLIENTS_PYTHON", &tools.python_clients))
            }),
        ),
    ]
}

/// `cargo xtask test [STAGE ...]`: every stage, or only those named (a name or its start, e.g.
/// `cargo xtask test edge "end to end"`), after the install step.
pub fn run_test(root: &Path, args: &Args) -> Result<()> {
    let args = &args.stages;
    for a in args {
        if !NAMES.iter().any(|n| n.starts_with(a.as_str())) {
            bail!(
                "no stage called {a:?}; the stages are: {}",
                NAMES.join(", ")
            );
        }
    }
    let started = Instant::now();
    let mut summary: Vec<(String, Result<()>, f64)> = Vec::new();

    let t0 = Instant::now();
    let tools = tools::ensure_all(root);
    let install_ok = tools.is_ok();
    let tools: Option<Tools> = match tools {
        Ok(t) => {
            summary.push(("install".into(), Ok(()), t0.elapsed().as_secs_f64()));
            Some(t)
        }
        Err(e) => {
            summary.push(("install".into(), Err(e), t0.elapsed().as_secs_f64()));
            None
        }
    };

    if let Some(tools) = tools.as_ref() {
        let stages = stages(root, tools);
        for (name, f) in stages {
            if !args.is_empty() && !args.iter().any(|a| name.starts_with(a.as_str())) {
                continue;
            }
            println!("\n==> {name}");
            let t = Instant::now();
            let r = f();
            summary.push((name.to_string(), r, t.elapsed().as_secs_f64()));
        }
    }

    println!("\n==> summary");
    let mut failed = 0;
    for (name, r, secs) in &summary {
        match r {
            Ok(()) => println!("[ok]   {name:<22} {secs:>7.1}s"),
            Err(e) => {
                failed += 1;
                println!("[FAIL] {name:<22} {secs:>7.1}s  {e:#}");
            }
        }
    }
    let total = started.elapsed().as_secs_f64();
    let passed = summary.len() - failed;
    println!("total {total:.1}s");
    println!("{passed} passed, {failed} failed");
    if !install_ok || failed > 0 {
        bail!("{failed} stage(s) failed");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_listed_names_are_the_stages() {
        let p = std::path::PathBuf::from;
        let tools = Tools {
            cache: p("cache"),
            wasm_bindgen: p("wasm-bindgen"),
            worker_build: p("worker-build"),
            wasm_opt: p("wasm-opt"),
            esbuild: p("esbuild"),
            chromium: p("chromium"),
            chromedriver: p("chromedriver"),
            node: p("node"),
            python_clients: p("python"),
            promtool: p("promtool"),
            chdb_python: p("chdb-python"),
        };
        let names: Vec<&str> = stages(Path::new("."), &tools)
            .iter()
            .map(|(n, _)| *n)
            .collect();
        assert_eq!(names, NAMES);
    }
}
