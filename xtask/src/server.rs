//! The ingest server binary, for the commands that run it (demo, bench, chaos, the end-to-end
//! stages): built in debug or release, and started on a config.

use std::path::{Path, PathBuf};

use anyhow::Result;

use crate::process::{cargo, run, target_dir};

/// Builds the debug ingest server (if needed) and returns its path.
pub fn build_debug(root: &Path) -> Result<PathBuf> {
    run(cargo()
        .args(["build", "-p", "waymark-ingest", "--bin", "ingest-server"])
        .current_dir(root))?;
    Ok(target_dir(root).join("debug/ingest-server"))
}

/// Builds the release ingest server (what the benchmarks measure) and returns its path.
pub fn build_release(root: &Path) -> Result<PathBuf> {
    println!("building the ingest server (release)...");
    run(cargo()
        .args([
            "build",
            "--release",
            "-p",
            "waymark-ingest",
            "--bin",
            "ingest-server",
        ])
        .current_dir(root))?;
    Ok(target_dir(root).join("release/ingest-server"))
}

/// Starts `binary --config config` (stderr to `log`) and returns it with the address it listens on.
pub fn start(
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
