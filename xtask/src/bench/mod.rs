//! `cargo xtask bench <name>`: benchmarks that measure and print figures (they assert nothing).
//! Each lives in its own module beside this one and is added to [`Bench`] when it lands.

use std::path::Path;

use anyhow::Result;

mod cluster;
mod edge;
mod import;
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
    Cluster(cluster::Args),
    Import(import::Args),
}

pub fn run(root: &Path, args: &Args) -> Result<()> {
    match &args.bench {
        Bench::Edge => edge::run_bench(root),
        Bench::Ingest(a) => ingest::run(root, a),
        Bench::Query(a) => query::run(root, a),
        Bench::Triggers(a) => triggers::run(root, a),
        Bench::Cluster(a) => cluster::run(root, a),
        Bench::Import(a) => import::run(root, a),
    }
}

/// User plus system CPU seconds a process has used so far (from `/proc/<pid>/stat`).
pub(crate) fn cpu_secs(pid: u32) -> Option<f64> {
    stat_cpu_secs(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

/// User plus system CPU seconds in the text of a `/proc/.../stat` file.
fn stat_cpu_secs(s: &str) -> Option<f64> {
    // Fields after the command name, which is in parentheses and may contain spaces.
    let rest = &s[s.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = f.get(11)?.parse().ok()?;
    let stime: f64 = f.get(12)?.parse().ok()?;
    Some((utime + stime) / 100.0)
}

/// CPU seconds ClickHouse's background pool has used so far: the threads 18.16 (the benches'
/// ClickHouse) names `BackgrProcPool`, which run merges and mutations. They live as long as
/// the server, so their sum is cumulative, unlike the query threads', which come and go (those
/// are the process's total less this).
pub(crate) fn merge_cpu_secs(pid: u32) -> Option<f64> {
    let mut total = 0.0;
    for task in std::fs::read_dir(format!("/proc/{pid}/task"))
        .ok()?
        .flatten()
    {
        let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
        if !comm.trim().starts_with("BackgrProcPool") {
            continue;
        }
        let stat = std::fs::read_to_string(task.path().join("stat")).unwrap_or_default();
        total += stat_cpu_secs(&stat).unwrap_or(0.0);
    }
    Some(total)
}
