//! `cargo xtask bench cluster [--events N] [--clients C] [--batch B] [--server PATH]`
//!
//! Measures and prints (asserts nothing): N realistic events (the ingest bench's) sent by C
//! clients round-robin to two release ingest servers in cluster mode, over a testkit cluster
//! of ZooKeeper and 2 shards x 2 replicas of ClickHouse, until every event is visible through
//! the `Distributed` table. Prints:
//! - events/s end to end, and events per CPU-second of the ingest servers (events/s per ingest
//!   core: what one core of ingest sustains, the figure to size the ingest tier by);
//! - rows/s per shard (each shard's share of the rows over the same wall time) and the rows
//!   each replica holds at the end (replication caught up or not);
//! - the same events sent to one release ingest server over one ClickHouse server, for the
//!   cost of cluster mode beside it.
//!
//! Everything runs on this machine: four ClickHouse servers, ZooKeeper, two ingest servers and
//! the clients share its cores, so the figures are a floor for a real cluster (one server per
//! machine), not a forecast; the README's "Scaling out" says what is measured and what is
//! extrapolated.

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _, Result};
use waymark_testkit::cluster::{Cluster, CLUSTER};
use waymark_testkit::config::{site, IngestConfig};
use waymark_testkit::ingest::IngestServer;
use waymark_testkit::ClickHouse;

/// Cluster throughput: events/s per ingest core, rows/s per shard.
///
/// Measures and prints (asserts nothing): two release ingest servers in cluster mode over a
/// private 2 shards x 2 replicas ClickHouse cluster with ZooKeeper, then one ingest server over
/// one ClickHouse server on the same events.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Events sent to each setup.
    #[arg(long, value_name = "N", default_value_t = 100_000)]
    events: usize,
    /// Concurrent clients (at least 1), spread round-robin over the ingest servers.
    #[arg(long, value_name = "C", default_value_t = 8)]
    clients: usize,
    /// Events per batch (clamped to 1..=500).
    #[arg(long, value_name = "B", default_value_t = 100)]
    batch: usize,
    /// Run this server binary instead of building the release one.
    #[arg(long, value_name = "PATH")]
    server: Option<std::path::PathBuf>,
}

const DB: &str = "wm_bench";

fn count(ch: &ClickHouse, sql: &str) -> u64 {
    ch.query(sql)
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0)
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(60)))
        .build()
        .into()
}

fn post(agent: &ureq::Agent, url: &str, body: &str) -> Result<()> {
    let mut r = agent
        .post(url)
        .header("content-type", "application/json")
        .send(body)
        .context("posting a batch")?;
    let status = r.status().as_u16();
    if status != 200 {
        bail!(
            "ingest answered {status}: {}",
            r.body_mut().read_to_string().unwrap_or_default()
        );
    }
    Ok(())
}

/// What one run measured.
struct Run {
    secs: f64,
    ingest_cpu: f64,
}

/// Sends `bodies` from `clients` threads round-robin over `urls`, then waits until `reader`
/// counts `total` rows in `events`.
fn send(
    urls: &[String],
    bodies: Arc<Vec<String>>,
    clients: usize,
    pids: &[u32],
    reader: &ClickHouse,
    total: u64,
) -> Result<Run> {
    let cpu = || -> f64 { pids.iter().filter_map(|p| super::cpu_secs(*p)).sum() };
    let cpu_before = cpu();
    let next = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();
    let workers: Vec<_> = (0..clients)
        .map(|_| {
            let (next, bodies, urls) = (next.clone(), bodies.clone(), urls.to_vec());
            std::thread::spawn(move || -> Result<()> {
                let a = agent();
                loop {
                    let seq = next.fetch_add(1, Ordering::Relaxed);
                    let Some(body) = bodies.get(seq) else {
                        return Ok(());
                    };
                    post(&a, &urls[seq % urls.len()], body)?;
                }
            })
        })
        .collect();
    for w in workers {
        w.join()
            .map_err(|_| anyhow!("a client thread panicked"))??;
    }
    let deadline = Instant::now() + Duration::from_secs(900);
    while count(reader, &format!("SELECT count() FROM {DB}.events")) < total {
        if Instant::now() > deadline {
            bail!("the events did not all arrive within 15 minutes");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(Run {
        secs: start.elapsed().as_secs_f64(),
        ingest_cpu: cpu() - cpu_before,
    })
}

fn config(ch_url: &str, cluster: Option<&str>, dir: &Path) -> IngestConfig {
    IngestConfig::new()
        .clickhouse(ch_url, DB)
        .spool(&dir.join("spool"))
        .site(site("bench", "wk_bench", &[]))
        .with(|c| c.clickhouse.cluster = cluster.map(str::to_string))
}

fn start(binary: &Path, cfg: &IngestConfig, dir: &Path) -> Result<IngestServer> {
    IngestServer::start(binary, cfg, dir, &[("RUST_LOG", "warn")]).map_err(|e| anyhow!("{e}"))
}

/// Waits until the server at `base` has applied its migrations (one event goes all the way
/// through).
fn warm(base: &str, reader: &ClickHouse) -> Result<()> {
    post(
        &agent(),
        &format!("{base}/v1/batch"),
        &super::ingest::batch_body("warm", 1, 0),
    )?;
    let deadline = Instant::now() + Duration::from_secs(300);
    while count(reader, &format!("SELECT count() FROM {DB}.events")) < 1 {
        if Instant::now() > deadline {
            bail!("the warm-up event did not arrive within 5 minutes");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(())
}

pub fn run(root: &Path, args: &Args) -> Result<()> {
    let (clients, batch) = (args.clients.max(1), args.batch.clamp(1, 500));
    let binary = match &args.server {
        Some(p) => p.clone(),
        None => crate::server::build_release(root)?,
    };
    let requests = args.events.div_ceil(batch);
    let bodies: Arc<Vec<String>> = Arc::new(
        (0..requests)
            .map(|seq| super::ingest::batch_body("ev", batch, seq))
            .collect(),
    );
    let total = (requests * batch) as u64 + 1; // + the warm-up event
    let dir = tempfile::Builder::new()
        .prefix("waymark-bench-cluster-")
        .tempdir()?;

    println!("starting ZooKeeper and 2 shards x 2 replicas of ClickHouse...");
    let cluster = Cluster::start(2, 2).map_err(|e| anyhow!("{e}"))?;
    let a = start(
        &binary,
        &config(
            &cluster.node(1, 1).http_url(),
            Some(CLUSTER),
            &dir.path().join("a"),
        ),
        &dir.path().join("a"),
    )?;
    let reader = cluster.node(1, 1);
    warm(&a.url(), reader)?;
    let b = start(
        &binary,
        &config(
            &cluster.node(2, 1).http_url(),
            Some(CLUSTER),
            &dir.path().join("b"),
        ),
        &dir.path().join("b"),
    )?;
    let urls = [a.url(), b.url()].map(|u| format!("{u}/v1/batch"));
    println!(
        "cluster: {} events in {requests} requests of {batch} from {clients} clients to 2 ingest servers...",
        total - 1
    );
    let run = send(
        &urls,
        bodies.clone(),
        clients,
        &[a.proc.id(), b.proc.id()],
        reader,
        total,
    )?;
    let per_shard: Vec<u64> = (1..=2)
        .map(|s| {
            count(
                cluster.node(s, 1),
                &format!("SELECT count() FROM {DB}.events_local"),
            )
        })
        .collect();
    // Replication is asynchronous: give the second replicas a moment, bounded, then report.
    let deadline = Instant::now() + Duration::from_secs(60);
    let replicas = loop {
        let r: Vec<u64> = cluster
            .nodes()
            .iter()
            .map(|n| count(n, &format!("SELECT count() FROM {DB}.events_local")))
            .collect();
        if (r[0], r[2]) == (r[1], r[3]) || Instant::now() > deadline {
            break r;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    drop((a, b));
    drop(cluster);

    println!("one ingest server over one ClickHouse server, the same events...");
    let ch = ClickHouse::start().map_err(|e| anyhow!("{e}"))?;
    let one = start(
        &binary,
        &config(&ch.http_url(), None, &dir.path().join("one")),
        &dir.path().join("one"),
    )?;
    warm(&one.url(), &ch)?;
    let single = send(
        &[format!("{}/v1/batch", one.url())],
        bodies,
        clients,
        &[one.proc.id()],
        &ch,
        total,
    )?;
    drop(one);

    let events = (total - 1) as f64;
    println!();
    println!(
        "cluster (2 ingest servers, 2 shards x 2 replicas, one machine of {} cores):",
        cores()
    );
    println!(
        "  {:.0} events/s end to end ({events:.0} events visible in {:.1} s)",
        events / run.secs,
        run.secs
    );
    println!(
        "  {:.0} events/s per ingest core ({:.1} CPU-s across both ingest servers)",
        events / run.ingest_cpu.max(1e-9),
        run.ingest_cpu
    );
    for (s, rows) in per_shard.iter().enumerate() {
        println!(
            "  shard {}: {rows} rows, {:.0} rows/s",
            s + 1,
            *rows as f64 / run.secs
        );
    }
    println!(
        "  rows per replica at the end (s1r1 s1r2 s2r1 s2r2): {}",
        replicas
            .iter()
            .map(u64::to_string)
            .collect::<Vec<_>>()
            .join(" ")
    );
    println!("one server (1 ingest server, 1 ClickHouse server, the same machine):");
    println!(
        "  {:.0} events/s end to end ({:.1} s); {:.0} events/s per ingest core",
        events / single.secs,
        single.secs,
        events / single.ingest_cpu.max(1e-9)
    );
    Ok(())
}

fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, usize::from)
}
