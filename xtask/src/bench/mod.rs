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
