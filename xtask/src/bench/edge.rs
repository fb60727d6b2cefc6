//! `cargo xtask bench edge`: the edge worker's CPU time per 20-event batch, and per email click
//! redirect and open pixel against that batch as the reference, measured natively in release
//! mode by `edge-worker/examples/bench.rs` (it prints the figures).

use std::path::Path;

use anyhow::Result;

use crate::process::{cargo, run};

pub fn run_bench(root: &Path) -> Result<()> {
    run(cargo()
        .args([
            "run",
            "--release",
            "-p",
            "waymark-edge",
            "--example",
            "bench",
        ])
        .current_dir(root))
}
