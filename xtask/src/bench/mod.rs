//! `cargo xtask bench <name>`: benchmarks that measure and print figures (they assert nothing).

use std::path::Path;

use anyhow::{bail, Result};

mod edge;
mod ingest;
mod query;

const BENCHES: &str = "ingest, edge, query";

/// Builds the release ingest server (what the benchmarks measure) and returns its path.
pub fn build_release_server(root: &Path) -> Result<std::path::PathBuf> {
    println!("building the ingest server (release)...");
    crate::stage::run(
        crate::stage::cargo()
            .args([
                "build",
                "--release",
                "-p",
                "waymark-ingest",
                "--bin",
                "ingest-server",
            ])
            .current_dir(root),
    )?;
    Ok(crate::tools::target_dir(root).join("release/ingest-server"))
}

/// Starts `binary --config config` (stderr to `log`) and returns it with the address it listens on.
pub fn start_server(
    binary: &Path,
    config: &Path,
    log: &Path,
) -> Result<(waymark_testkit::process::Proc, String)> {
    let mut cmd = std::process::Command::new(binary);
    cmd.arg("--config").arg(config).env("RUST_LOG", "warn");
    let p = waymark_testkit::process::spawn_until(
        "ingest server",
        cmd,
        "listening on ",
        log,
        std::time::Duration::from_secs(60),
    )
    .map_err(|e| anyhow::anyhow!("{e}"))?;
    let addr = p
        .ready_line()
        .trim()
        .strip_prefix("listening on ")
        .ok_or_else(|| anyhow::anyhow!("unexpected ready line {:?}", p.ready_line()))?
        .to_string();
    Ok((p, addr))
}

pub fn run(root: &Path, args: &[String]) -> Result<()> {
    let _ = root;
    match args.first().map(String::as_str) {
        // Each benchmark lives in its own module beside this one and is added here when it lands.
        Some("edge") => edge::run_bench(root),
        Some("ingest") => ingest::run(root, &args[1..]),
        Some("query") => query::run(root, &args[1..]),
        Some(other) => bail!("unknown benchmark {other:?}; available: {BENCHES}"),
        None => bail!("usage: cargo xtask bench <{BENCHES}>"),
    }
}
