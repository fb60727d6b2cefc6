//! `cargo xtask test`: a list of stages, each timed and summarised on one line.

use std::path::Path;
use std::process::Command;
use std::time::Instant;

use anyhow::{bail, Context, Result};

use crate::tools::{self, Tools};

/// Runs a command, streaming its output, and fails with the command line if it fails.
pub fn run(cmd: &mut Command) -> Result<()> {
    let shown = format!("{cmd:?}");
    let status = cmd
        .status()
        .with_context(|| format!("could not start {shown}"))?;
    if !status.success() {
        bail!("{shown} failed: {status}");
    }
    Ok(())
}

/// `cargo` with the same toolchain that runs xtask.
pub fn cargo() -> Command {
    Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
}

type StageFn<'a> = Box<dyn FnOnce() -> Result<()> + 'a>;

pub fn run_test(root: &Path, args: &[String]) -> Result<()> {
    if let Some(a) = args.first() {
        bail!("`cargo xtask test` takes no arguments (got {a:?})");
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

    if let Some(_tools) = tools.as_ref() {
        let stages: Vec<(&str, StageFn<'_>)> = vec![
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
                "rust tests",
                Box::new(|| run(cargo().args(["test", "--workspace", "--no-fail-fast"]))),
            ),
            (
                "protocol for wasm32",
                Box::new(|| {
                    run(cargo().args([
                        "build",
                        "-p",
                        "waymark-protocol",
                        "--target",
                        "wasm32-unknown-unknown",
                    ]))
                }),
            ),
            // The tag and edge stages are added here as those crates land
            // (`crate::tag::build` / `test`, `crate::edge::build` / `test`).
        ];
        for (name, f) in stages {
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
