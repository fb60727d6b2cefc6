//! The ingest server binary, for the commands that run it (demo, bench, chaos, the end-to-end
//! stages): built in debug or release (the testkit starts it).

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
