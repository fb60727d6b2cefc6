//! `cargo xtask bench <name>`: benchmarks that measure and print figures (they assert nothing).
//! Each lives in its own module beside this one and is added to [`Bench`] when it lands.

use std::path::Path;

use anyhow::Result;

mod edge;
mod ingest;
mod query;
mod triggers;

/// Run a benchmark and print its figures (they assert nothing).
#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(subcommand)]
    bench: Bench,
}

#[derive(clap::Subcommand, Debug)]
enum Bench {
    Ingest(ingest::Args),
    /// The edge worker's CPU time per 20-event batch.
    ///
    /// Measured natively in release mode by `edge-worker/examples/bench.rs`, which prints the
    /// figures.
    Edge,
    Query(query::Args),
    Triggers(triggers::Args),
}

pub fn run(root: &Path, args: &Args) -> Result<()> {
    match &args.bench {
        Bench::Edge => edge::run_bench(root),
        Bench::Ingest(a) => ingest::run(root, a),
        Bench::Query(a) => query::run(root, a),
        Bench::Triggers(a) => triggers::run(root, a),
    }
}
