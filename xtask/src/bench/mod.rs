//! `cargo xtask bench <name>`: benchmarks that measure and print figures (they assert nothing).

use std::path::Path;

use anyhow::{bail, Result};

const BENCHES: &str = "ingest";

pub fn run(root: &Path, args: &[String]) -> Result<()> {
    let _ = root;
    match args.first().map(String::as_str) {
        // Each benchmark lives in its own module beside this one and is added here when it lands.
        Some(other) => bail!("unknown benchmark {other:?}; available: {BENCHES}"),
        None => bail!("usage: cargo xtask bench <{BENCHES}>"),
    }
}
