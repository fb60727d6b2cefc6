//! `cargo xtask bench ingest [--events N] [--clients C] [--batch B] [--rate R] [--paced-secs S]
//! [--outage-secs S] [--server PATH] [--perf DIR] [--writer-max-bytes SIZE]
//! [--clickhouse-compression lz4|none]`
//!
//! Measures and prints (asserts nothing):
//! 1. throughput: N realistic events sent over HTTP by C concurrent clients in batches of B;
//!    events/s until every one is visible in ClickHouse; ack latency p50/p99; freshness (ack to
//!    visible, p99, from probe requests polled every 25 ms);
//! 2. ack latency at a paced R requests/s of 20 events for S seconds (p50/p99/max);
//! 3. the server's peak RSS (VmHWM), after steps 1 and 2 and again after a ClickHouse outage of
//!    `--outage-secs` under the paced load of step 2 (the spool takes the load; once ClickHouse
//!    is back, how long until every acknowledged event is visible);
//! 4. a raw `clickhouse-client` insert (TabSeparated) of the same rows, and the ratio: into
//!    `events` with its materialized views (what the writer's inserts cost ClickHouse), and
//!    into a bare copy of `events` without views;
//! 5. in release mode (`ingest-server/examples/plan_cost.rs`), on the same kind of events: the
//!    CPU per event of the wire format's validation (`parse_batch`, what every event costs at
//!    intake) beside that of checking them against the shipped starter tracking plan
//!    (`ingest-server/plans/segment-ecommerce.json`);
//! 6. in release mode (`ingest-server/examples/intake_cost.rs`), on the same kind of events:
//!    the CPU per event of each stage of the intake path timed alone (validation, enrichment,
//!    the dedup window, the spool payload, the writer's check and RowBinary, freeing), beside
//!    `parse_batch` as the reference: on this shared machine the server's CPU per event in step
//!    1 moves by a third between runs, these far less.
//!
//! The server is the release binary with default writer settings, against a private
//! ClickHouse from the testkit. `--server PATH` runs a given binary instead of building one
//! (to compare two builds, e.g. a copy of an earlier `target/release/ingest-server`, in runs
//! taken close together). `--paced-secs 0` skips step 2, `--outage-secs 0` the outage.
//!
//! Beside the server's CPU per event, the private ClickHouse's CPU in the same throughput run
//! is printed (its process found by its config path), to split the cost between the two.
//! `--perf DIR` records both processes with `perf record` during the throughput run
//! (`DIR/server.data`, `DIR/clickhouse.data`; read them with `perf report -i FILE --no-children`,
//! or `--children` for what each function costs with its callees). Call graphs are unwound from
//! DWARF: the release build has no frame pointers, and `-g` alone attributed most samples to
//! garbage frames.

use std::collections::HashMap;
use std::io::Write as _;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _, Result};
use waymark_ingest::clock::now_ms;
use waymark_testkit::config::{site, IngestConfig};
use waymark_testkit::ingest::IngestServer;
use waymark_testkit::ClickHouse;

/// Ingest throughput, ack latency and peak RSS of the release server.
///
/// Measures and prints (asserts nothing): events/s until every event is visible in ClickHouse,
/// ack latency and freshness; ack latency at a paced rate; the server's peak RSS; a raw
/// `clickhouse-client` insert of the same rows, with and without the materialized views.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Events sent in the throughput run (step 1).
    #[arg(long, value_name = "N", default_value_t = 300_000)]
    events: usize,
    /// Concurrent clients in the throughput run (at least 1).
    #[arg(long, value_name = "C", default_value_t = 8)]
    clients: usize,
    /// Events per batch in the throughput run (clamped to 1..=500).
    #[arg(long, value_name = "B", default_value_t = 100)]
    batch: usize,
    /// Requests per second of 20 events in the paced run (step 2; at least 1).
    #[arg(long, value_name = "R", default_value_t = 500)]
    rate: usize,
    /// Seconds the paced run lasts; 0 skips it.
    #[arg(long, value_name = "S", default_value_t = 10)]
    paced_secs: u64,
    /// Seconds ClickHouse is stopped while the paced load goes on (step 3); 0 skips it.
    #[arg(long, value_name = "S", default_value_t = 60)]
    outage_secs: u64,
    /// Record the server and ClickHouse with `perf record` (DWARF call graphs) during the
    /// throughput run, into this directory.
    #[arg(long, value_name = "DIR")]
    perf: Option<std::path::PathBuf>,
    /// Run this server binary instead of building the release one (to compare two builds).
    #[arg(long, value_name = "PATH")]
    server: Option<std::path::PathBuf>,
    /// The server's `[writer] max_bytes` (e.g. `8MiB`; default the server's own): the spooled
    /// bytes of one insert (the writer reads a batch back from the spool a chunk at a time, so
    /// this no longer bounds its memory).
    #[arg(long, value_name = "SIZE", value_parser = waymark_testkit::config::ByteSize::parse)]
    writer_max_bytes: Option<waymark_testkit::config::ByteSize>,
    /// The server's `[clickhouse] compression` (`lz4` or `none`; default the server's own).
    #[arg(long, value_name = "HOW", value_parser = waymark_testkit::config::Compression::parse)]
    clickhouse_compression: Option<waymark_testkit::config::Compression>,
}

fn iso(ms: i64) -> String {
    waymark_protocol::time::format_rfc3339(ms)
}

const UAS: &[&str] = &[
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0.0.0 Safari/537.36",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_1 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.1 Mobile/15E148 Safari/604.1",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.1 Safari/605.1.15",
    "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0.0.0 Mobile Safari/537.36",
];

/// One realistic tag event: page views, product views, adds, clicks and engagement.
fn event(id: &str, visitor: usize, n: usize, at: &str) -> String {
    let product = (n * 7919) % 500;
    let ua = UAS[visitor % UAS.len()];
    let ctx = format!(
        r#"{{"page":{{"url":"https://shop.example/p/{product}?utm_source=news","path":"/p/{product}","title":"Product {product}","referrer":"https://www.google.com/"}},"userAgent":"{ua}","locale":"de-DE","sessionId":"s-{visitor}-1","library":{{"name":"waymark.js","version":"0.1.0"}}}}"#
    );
    let (kind, rest) = match n % 10 {
        0..=3 => ("page", format!(r#""name":"Product {product}""#)),
        4..=5 => ("track", format!(r#""event":"Product Viewed","properties":{{"product_id":"p-{product}","name":"Product {product}","price":19.9,"currency":"EUR"}}"#)),
        6 => ("track", format!(r#""event":"Product Added","properties":{{"product_id":"p-{product}","price":19.9,"quantity":1,"currency":"EUR"}}"#)),
        7..=8 => ("track", r#""event":"$click","properties":{"kind":"link","text":"More","href":"https://shop.example/c/shoes","outbound":false}"#.to_string()),
        _ => ("track", format!(r#""event":"$engagement","properties":{{"engaged_ms":12345,"scroll_depth":70,"product_id":"p-{product}"}}"#)),
    };
    format!(
        r#"{{"type":"{kind}","messageId":"{id}","anonymousId":"anon-{visitor}","originalTimestamp":"{at}",{rest},"context":{ctx}}}"#
    )
}

pub(crate) fn batch_body(prefix: &str, size: usize, seq: usize) -> String {
    let at = iso(now_ms() - 200);
    let events: Vec<String> = (0..size)
        .map(|i| {
            event(
                &format!("{prefix}-{seq}-{i}"),
                (seq * 31 + i) % 20_000,
                seq + i,
                &at,
            )
        })
        .collect();
    format!(
        r#"{{"writeKey":"wk_bench","sentAt":"{}","batch":[{}]}}"#,
        iso(now_ms()),
        events.join(",")
    )
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn sorted(mut v: Vec<f64>) -> Vec<f64> {
    v.sort_by(|a, b| a.total_cmp(b));
    v
}

/// The writer's inserts so far, from the server's `/metrics`: (inserts, rows, seconds).
fn writer_inserts(addr: &str) -> Option<(f64, f64, f64)> {
    let body = agent()
        .get(format!("http://{addr}/metrics"))
        .call()
        .ok()?
        .body_mut()
        .read_to_string()
        .ok()?;
    let value = |name: &str| {
        body.lines().find_map(|l| {
            l.strip_prefix(name)?
                .strip_prefix(' ')?
                .trim()
                .parse::<f64>()
                .ok()
        })
    };
    Some((
        value("waymark_insert_seconds_count")?,
        value("waymark_insert_batch_rows_sum")?,
        value("waymark_insert_seconds_sum")?,
    ))
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(60)))
        .build()
        .into()
}

/// Posts one batch; returns the ack latency, or an error for anything but 200.
fn post(agent: &ureq::Agent, url: &str, body: &str) -> Result<Duration> {
    let t = Instant::now();
    let mut r = agent
        .post(url)
        .header("content-type", "application/json")
        .send(body)
        .context("posting a batch")?;
    let status = r.status().as_u16();
    let text = r.body_mut().read_to_string().unwrap_or_default();
    let took = t.elapsed();
    if status != 200 {
        bail!("ingest answered {status}: {text}");
    }
    Ok(took)
}

fn count(ch: &ClickHouse, sql: &str) -> u64 {
    ch.query(sql)
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0)
}

/// User + system CPU seconds a process used so far (clock ticks of 1/100 s on Linux).
fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
}

fn peak_rss_kib(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find(|l| l.starts_with("VmHWM:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

pub fn run(root: &Path, args: &Args) -> Result<()> {
    let o = Args {
        clients: args.clients.max(1),
        batch: args.batch.clamp(1, 500),
        rate: args.rate.max(1),
        server: args.server.clone(),
        perf: args.perf.clone(),
        ..*args
    };
    let binary = match &o.server {
        Some(path) => {
            println!("using the given server binary {}", path.display());
            path.clone()
        }
        None => crate::server::build_release(root)?,
    };

    println!("starting a private ClickHouse...");
    let ch = ClickHouse::start().map_err(|e| anyhow::anyhow!("{e}"))?;
    let db = ch.fresh_database().map_err(|e| anyhow::anyhow!("{e}"))?;
    let dir = tempfile_dir()?;
    let config = IngestConfig::new()
        .clickhouse(&ch.http_url(), &db)
        .spool(&dir.join("spool"))
        .site(site("bench", "wk_bench", &[]));
    let config = match o.writer_max_bytes {
        Some(size) => {
            println!("the server's [writer] max_bytes is {size}");
            config.with(|c| c.writer.max_bytes = size)
        }
        None => config,
    };
    let config = match o.clickhouse_compression {
        Some(how) => {
            println!("the server's [clickhouse] compression is {how:?}");
            config.with(|c| c.clickhouse.compression = how)
        }
        None => config,
    };
    let server = IngestServer::start(&binary, &config, &dir, &[("RUST_LOG", "warn")])
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let addr = server.addr;
    let pid = server.proc.id();
    let url = format!("http://{addr}/v1/batch");
    // Warm up: schema applied, connections open.
    post(&agent(), &url, &batch_body("warm", 1, 0))?;
    let warm_deadline = Instant::now() + Duration::from_secs(30);
    while count(&ch, &format!("SELECT count() FROM {db}.events")) < 1
        && Instant::now() < warm_deadline
    {
        std::thread::sleep(Duration::from_millis(50));
    }

    // 1. Throughput.
    let requests = o.events.div_ceil(o.batch);
    println!(
        "throughput: {} events in {requests} requests of {} from {} clients...",
        requests * o.batch,
        o.batch,
        o.clients
    );
    let next = Arc::new(AtomicUsize::new(0));
    let acks: Arc<Mutex<Vec<f64>>> = Arc::default();
    // probe request seq -> ack instant
    let probes: Arc<Mutex<HashMap<usize, Instant>>> = Arc::default();
    let done = Arc::new(AtomicBool::new(false));
    let seen: Arc<Mutex<HashMap<usize, Instant>>> = Arc::default();
    let poller = {
        let (done, seen) = (done.clone(), seen.clone());
        let (url, db) = (ch.http_url(), db.clone());
        std::thread::spawn(move || {
            let a = agent();
            while !done.load(Ordering::Relaxed) {
                let sql = format!(
                    "SELECT DISTINCT message_id FROM {db}.events WHERE message_id LIKE 'probe-%' FORMAT TSV"
                );
                if let Ok(mut r) = a.post(format!("{url}/")).send(sql.as_str()) {
                    let body = r.body_mut().read_to_string().unwrap_or_default();
                    let now = Instant::now();
                    let mut s = seen.lock().unwrap();
                    for l in body.lines() {
                        if let Some(seq) = l.split('-').nth(1).and_then(|x| x.parse().ok()) {
                            s.entry(seq).or_insert(now);
                        }
                    }
                }
                std::thread::sleep(Duration::from_millis(25));
            }
        })
    };
    // Bodies are built before the clock starts so the client's own work stays out of the way.
    let bodies: Arc<Vec<String>> = Arc::new(
        (0..requests)
            .map(|seq| batch_body(if seq % 20 == 0 { "probe" } else { "ev" }, o.batch, seq))
            .collect(),
    );
    let ch_pid = clickhouse_pid(ch.home());
    let perf = match &o.perf {
        Some(d) => {
            std::fs::create_dir_all(d)?;
            let mut p = vec![start_perf(pid, &d.join("server.data"))?];
            if let Some(c) = ch_pid {
                p.push(start_perf(c, &d.join("clickhouse.data"))?);
            }
            // perf attaches within a moment; its first samples are what it shows it did.
            std::thread::sleep(Duration::from_millis(500));
            p
        }
        None => Vec::new(),
    };
    let load_before = loadavg();
    let inserts_before = writer_inserts(&addr.to_string());
    let ch_cpu_before = ch_pid.and_then(super::cpu_secs);
    let ch_merge_before = ch_pid.and_then(super::merge_cpu_secs);
    let cpu_before = super::cpu_secs(pid);
    let self_cpu_before = super::cpu_secs(std::process::id());
    let start = Instant::now();
    let workers: Vec<_> = (0..o.clients)
        .map(|_| {
            let (next, acks, probes, url, bodies) = (
                next.clone(),
                acks.clone(),
                probes.clone(),
                url.clone(),
                bodies.clone(),
            );
            std::thread::spawn(move || -> Result<()> {
                let a = agent();
                loop {
                    let seq = next.fetch_add(1, Ordering::Relaxed);
                    if seq >= requests {
                        return Ok(());
                    }
                    let probe = seq % 20 == 0;
                    let took = post(&a, &url, &bodies[seq])?;
                    if probe {
                        probes.lock().unwrap().insert(seq, Instant::now());
                    }
                    acks.lock().unwrap().push(took.as_secs_f64() * 1000.0);
                }
            })
        })
        .collect();
    for w in workers {
        w.join()
            .map_err(|_| anyhow::anyhow!("a client thread panicked"))??;
    }
    let acked_at = start.elapsed();
    let total = (requests * o.batch) as u64 + 1;
    let deadline = Instant::now() + Duration::from_secs(600);
    while count(&ch, &format!("SELECT count() FROM {db}.events")) < total
        && Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(20));
    }
    let visible_at = start.elapsed();
    let inserts = writer_inserts(&addr.to_string())
        .zip(inserts_before)
        .map(|((n, r, t), (n0, r0, t0))| (n - n0, r - r0, t - t0));
    let server_cpu = super::cpu_secs(pid).zip(cpu_before).map(|(a, b)| a - b);
    let ch_cpu = ch_pid
        .and_then(super::cpu_secs)
        .zip(ch_cpu_before)
        .map(|(a, b)| a - b);
    // Merges that the throughput run's inserts start may still run after the rows are
    // visible; these are the ones done by then.
    let ch_merge_cpu = ch_pid
        .and_then(super::merge_cpu_secs)
        .zip(ch_merge_before)
        .map(|(a, b)| a - b);
    for p in perf {
        stop_perf(p)?;
    }
    let client_cpu = super::cpu_secs(std::process::id())
        .zip(self_cpu_before)
        .map(|(a, b)| a - b);
    drop(bodies);
    let load_after = loadavg();
    std::thread::sleep(Duration::from_millis(100));
    done.store(true, Ordering::Relaxed);
    let _ = poller.join();
    let acks = sorted(acks.lock().unwrap().clone());
    let fresh = {
        let p = probes.lock().unwrap();
        let s = seen.lock().unwrap();
        sorted(
            p.iter()
                .filter_map(|(seq, ack)| {
                    s.get(seq)
                        .map(|v| v.saturating_duration_since(*ack).as_secs_f64() * 1000.0)
                })
                .collect(),
        )
    };
    let visible = count(&ch, &format!("SELECT count() FROM {db}.events"));
    let rate = (total - 1) as f64 / visible_at.as_secs_f64();

    // 2. Paced ack latency.
    println!(
        "paced: {} requests/s of 20 events for {} s...",
        o.rate, o.paced_secs
    );
    let paced = paced_load(&url, o.rate, o.paced_secs, "paced")?;
    let rss = peak_rss_kib(pid);

    // 3. A ClickHouse outage under the paced load.
    let mut ch = ch;
    let outage = if o.outage_secs > 0 {
        println!(
            "outage: ClickHouse stopped for {} s under {} requests/s of 20 events...",
            o.outage_secs, o.rate
        );
        ch.stop();
        let load = paced_load(&url, o.rate, o.outage_secs, "outage")?;
        ch.resume().map_err(|e| anyhow::anyhow!("{e}"))?;
        let back = Instant::now();
        let want = count_acked(&ch, &db, "outage", load.acked_events);
        let drained = want.then(|| back.elapsed());
        Some((load, drained))
    } else {
        None
    };
    let rss_outage = peak_rss_kib(pid);

    // 3. Raw clickhouse-client insert of the same rows.
    println!("raw clickhouse-client insert of the same rows...");
    let tsv = dir.join("rows.tsv");
    let client = waymark_testkit::client_command();
    let port = ch.tcp_port().to_string();
    let out = std::fs::File::create(&tsv)?;
    let st = Command::new(&client[0])
        .args(&client[1..])
        .args(["--host", "127.0.0.1", "--port", &port, "--query"])
        .arg(format!(
            "SELECT * FROM {db}.events WHERE message_id NOT LIKE 'paced%' AND message_id NOT LIKE 'outage%' FORMAT TabSeparated"
        ))
        .stdout(out)
        .status()
        .context("running clickhouse-client (install clickhouse-client)")?;
    if !st.success() {
        bail!("exporting rows with clickhouse-client failed");
    }
    // Twice: into `events` itself, with the materialized views the query API keeps (the same
    // work ClickHouse does for the writer's inserts; the rows are duplicates of what is there,
    // which the table and the views are built to absorb), and into a bare copy of `events`.
    // In blocks of at most the default run's 300,000 rows: one block of a million rows took
    // ClickHouse past its 3.7 GiB per-query memory limit (`--events 1000000` failed here).
    let raw_insert = |table: &str| -> Result<f64> {
        let t = Instant::now();
        let st = Command::new(&client[0])
            .args(&client[1..])
            .args(["--host", "127.0.0.1", "--port", &port])
            .args(["--max_insert_block_size", "300000", "--query"])
            .arg(format!("INSERT INTO {db}.{table} FORMAT TabSeparated"))
            .stdin(std::fs::File::open(&tsv)?)
            .status()?;
        if !st.success() {
            bail!("raw insert into {table} with clickhouse-client failed");
        }
        Ok(t.elapsed().as_secs_f64())
    };
    let views_secs = raw_insert("events")?;
    let views = count(
        &ch,
        &format!("SELECT count() FROM system.tables WHERE database = '{db}' AND engine = 'MaterializedView'"),
    );
    ch.query(&format!("CREATE TABLE {db}.events_raw AS {db}.events"))
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let raw_secs = raw_insert("events_raw")?;
    let raw_rows = count(&ch, &format!("SELECT count() FROM {db}.events_raw"));
    let raw_rate = raw_rows as f64 / raw_secs;
    let views_rate = raw_rows as f64 / views_secs;
    let tsv_bytes = std::fs::metadata(&tsv).map(|m| m.len()).unwrap_or(0);
    drop(server);

    let mut out = std::io::stdout().lock();
    writeln!(out, "\n== cargo xtask bench ingest ==")?;
    writeln!(
        out,
        "events sent:               {} ({} requests x {}, {} clients)",
        total - 1,
        requests,
        o.batch,
        o.clients
    )?;
    writeln!(
        out,
        "all acknowledged after:    {:.2} s",
        acked_at.as_secs_f64()
    )?;
    writeln!(
        out,
        "all visible after:         {:.2} s ({visible} rows incl. warm-up)",
        visible_at.as_secs_f64()
    )?;
    writeln!(out, "throughput (to visible):   {rate:.0} events/s")?;
    if let Some(cpu) = server_cpu {
        writeln!(
            out,
            "server CPU (throughput):   {cpu:.1} s = {:.0} us/event, i.e. {:.0} events/s per core",
            cpu * 1e6 / (total - 1) as f64,
            (total - 1) as f64 / cpu
        )?;
    }
    if let Some((n, rows, secs)) = inserts.filter(|i| i.0 > 0.0) {
        writeln!(
            out,
            "writer inserts (same run): {n:.0}, mean {:.0} rows and {:.0} ms each",
            rows / n,
            secs * 1000.0 / n
        )?;
    }
    match ch_cpu {
        Some(cpu) => writeln!(
            out,
            "ClickHouse CPU (same run): {cpu:.1} s = {:.0} us/event (merges {:.1} s, inserts and queries {:.1} s); server share {:.0} %",
            cpu * 1e6 / (total - 1) as f64,
            ch_merge_cpu.unwrap_or(f64::NAN),
            ch_merge_cpu.map_or(f64::NAN, |m| cpu - m),
            server_cpu.map_or(f64::NAN, |s| 100.0 * s / (s + cpu))
        )?,
        None => writeln!(
            out,
            "ClickHouse CPU (same run): unavailable (its process was not found)"
        )?,
    }
    if let Some(d) = &o.perf {
        writeln!(
            out,
            "perf profiles:             {0}/server.data, {0}/clickhouse.data",
            d.display()
        )?;
    }
    if let Some(cpu) = client_cpu {
        writeln!(
            out,
            "bench client CPU:          {cpu:.1} s (HTTP clients and the ClickHouse poller)"
        )?;
    }
    writeln!(
        out,
        "machine load average:      {load_before} before, {load_after} after (2 cores, shared)"
    )?;
    writeln!(
        out,
        "ack latency (throughput):  p50 {:.1} ms, p99 {:.1} ms",
        percentile(&acks, 0.5),
        percentile(&acks, 0.99)
    )?;
    writeln!(
        out,
        "freshness ack->visible:    p50 {:.0} ms, p99 {:.0} ms ({} probes, 25 ms polling)",
        percentile(&fresh, 0.5),
        percentile(&fresh, 0.99),
        fresh.len()
    )?;
    if paced.lat.is_empty() {
        writeln!(
            out,
            "paced: {} req/s x 20 ev:  skipped (--paced-secs {})",
            o.rate, o.paced_secs
        )?;
    } else {
        writeln!(out, "paced: {} req/s x 20 ev:  {}", o.rate, paced.summary())?;
    }
    let mib = |k: Option<u64>| match k {
        Some(k) => format!("{:.1} MiB", k as f64 / 1024.0),
        None => format!("unavailable (/proc/{pid}/status unreadable)"),
    };
    writeln!(
        out,
        "server peak RSS:           {} (throughput and paced runs)",
        mib(rss)
    )?;
    match &outage {
        Some((load, drained)) => {
            writeln!(
                out,
                "outage: ClickHouse {} s down under {} req/s x 20 ev:  {}",
                o.outage_secs,
                o.rate,
                load.summary()
            )?;
            match drained {
                Some(d) => writeln!(
                    out,
                    "  all {} acknowledged events visible {:.1} s after ClickHouse was back",
                    load.acked_events,
                    d.as_secs_f64()
                )?,
                None => writeln!(
                    out,
                    "  NOT all {} acknowledged events visible {} s after ClickHouse was back",
                    load.acked_events,
                    DRAIN_TIMEOUT.as_secs()
                )?,
            }
            writeln!(
                out,
                "server peak RSS:           {} (incl. the outage)",
                mib(rss_outage)
            )?;
        }
        None => writeln!(out, "outage: skipped (--outage-secs 0)")?,
    }
    writeln!(
        out,
        "raw clickhouse-client:     {raw_rows} rows ({:.1} MiB TSV)",
        tsv_bytes as f64 / 1048576.0
    )?;
    writeln!(out, "  into events + {views} views:  {views_secs:.2} s = {views_rate:.0} rows/s (the work ClickHouse does for the writer's inserts)")?;
    writeln!(
        out,
        "  into a bare copy:         {raw_secs:.2} s = {raw_rate:.0} rows/s (no views)"
    )?;
    writeln!(
        out,
        "ratio ingest/raw:          {:.2} against events + views; {:.2} against the bare copy",
        rate / views_rate,
        rate / raw_rate
    )?;
    out.flush()?;
    stage_costs(root, &dir)?;
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

/// Runs the release-mode examples that time parts of the intake alone, on a file of the
/// bench's own batches: `plan_cost.rs` (wire validation and the starter plan's check) and
/// `intake_cost.rs` (each stage of the intake path); each prints its CPU per event.
fn stage_costs(root: &Path, dir: &Path) -> Result<()> {
    let batches = dir.join("stage-batches.ndjson");
    let mut text = String::new();
    for seq in 0..500 {
        text.push_str(&batch_body("stage", 100, seq));
        text.push('\n');
    }
    std::fs::write(&batches, text)?;
    let plan = root.join("ingest-server/plans/segment-ecommerce.json");
    for (example, args) in [
        ("plan_cost", vec![plan.as_path(), batches.as_path()]),
        ("intake_cost", vec![batches.as_path()]),
    ] {
        crate::process::run(
            crate::process::cargo()
                .args([
                    "run",
                    "-q",
                    "--release",
                    "-p",
                    "waymark-ingest",
                    "--example",
                ])
                .arg(example)
                .arg("--")
                .args(args)
                .current_dir(root),
        )?;
    }
    Ok(())
}

/// How long the bench waits for the outage's events to become visible once ClickHouse is back.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(600);

/// Waits (bounded) until ClickHouse shows `n` distinct events whose message id starts with
/// `prefix`; whether it did.
pub(super) fn count_acked(ch: &ClickHouse, db: &str, prefix: &str, n: u64) -> bool {
    let deadline = Instant::now() + DRAIN_TIMEOUT;
    let sql =
        format!("SELECT uniqExact(message_id) FROM {db}.events WHERE message_id LIKE '{prefix}%'");
    loop {
        if count(ch, &sql) >= n {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The outcome of a paced load.
pub(super) struct Paced {
    /// Ack latencies (ms) of the requests answered 200, sorted.
    lat: Vec<f64>,
    pub(super) elapsed: Duration,
    /// Sends more than one interval behind their schedule.
    late: usize,
    /// Requests answered 503 (spool full: the client would retry later).
    refused: usize,
    pub(super) acked_events: u64,
}

impl Paced {
    pub(super) fn summary(&self) -> String {
        let sent = self.lat.len() + self.refused;
        format!(
            "achieved {:.0} req/s; ack p50 {:.2} ms, p99 {:.2} ms, max {:.1} ms; {} sends late; {} refused (503)",
            sent as f64 / self.elapsed.as_secs_f64(),
            percentile(&self.lat, 0.5),
            percentile(&self.lat, 0.99),
            self.lat.last().copied().unwrap_or(f64::NAN),
            self.late,
            self.refused
        )
    }
}

/// Sends `rate` requests/s of 20 events for `secs` seconds from 16 threads, each on its own
/// schedule; message ids start with `prefix`. A 503 is counted, anything else but 200 fails.
fn paced_load(url: &str, rate: usize, secs: u64, prefix: &str) -> Result<Paced> {
    paced_until(url, rate, secs, prefix, &AtomicBool::new(false))
}

/// [`paced_load`] that also ends once `stop` is set (the query bench's load, which lasts as
/// long as its timing does). Each body is built just before it is sent, so a long run holds
/// no pile of them (building one takes microseconds against a send every few milliseconds).
pub(super) fn paced_until(
    url: &str,
    rate: usize,
    secs: u64,
    prefix: &str,
    stop: &AtomicBool,
) -> Result<Paced> {
    const EVENTS: usize = 20;
    let threads = 16usize;
    let interval = Duration::from_secs_f64(threads as f64 / rate as f64);
    let per = (rate as u64 * secs) as usize / threads;
    let lat: Mutex<Vec<f64>> = Mutex::default();
    let late = AtomicUsize::new(0);
    let refused = AtomicUsize::new(0);
    let start = Instant::now() + Duration::from_millis(100);
    std::thread::scope(|scope| -> Result<()> {
        let workers: Vec<_> = (0..threads)
            .map(|t| {
                let (lat, late, refused) = (&lat, &late, &refused);
                scope.spawn(move || -> Result<()> {
                    let a = agent();
                    let offset = interval.mul_f64(t as f64 / threads as f64);
                    for i in 0..per {
                        if stop.load(Ordering::Relaxed) {
                            break;
                        }
                        let when = start + offset + interval * i as u32;
                        let now = Instant::now();
                        if when > now {
                            std::thread::sleep(when - now);
                        } else if now - when > interval {
                            late.fetch_add(1, Ordering::Relaxed);
                        }
                        let body = batch_body(&format!("{prefix}{t}"), EVENTS, i);
                        match post(&a, url, &body) {
                            Ok(took) => lat.lock().unwrap().push(took.as_secs_f64() * 1000.0),
                            Err(e) if e.to_string().starts_with("ingest answered 503") => {
                                refused.fetch_add(1, Ordering::Relaxed);
                            }
                            Err(e) => return Err(e),
                        }
                    }
                    Ok(())
                })
            })
            .collect();
        for w in workers {
            w.join()
                .map_err(|_| anyhow::anyhow!("a paced client panicked"))??;
        }
        Ok(())
    })?;
    let elapsed = start.elapsed();
    let lat = sorted(lat.into_inner().unwrap());
    let acked_events = (lat.len() * EVENTS) as u64;
    Ok(Paced {
        lat,
        elapsed,
        late: late.load(Ordering::Relaxed),
        refused: refused.load(Ordering::Relaxed),
        acked_events,
    })
}

/// The pid of the ClickHouse server (not its wrapper shell) whose home is `home`.
fn clickhouse_pid(home: &Path) -> Option<u32> {
    let needle = format!("--config-file={}", home.join("config.xml").display());
    std::fs::read_dir("/proc").ok()?.find_map(|e| {
        let e = e.ok()?;
        let pid: u32 = e.file_name().to_str()?.parse().ok()?;
        let cmd = std::fs::read(e.path().join("cmdline")).ok()?;
        let args: Vec<&[u8]> = cmd.split(|b| *b == 0).collect();
        let first = String::from_utf8_lossy(args.first()?);
        (!first.ends_with("sh") && args.contains(&needle.as_bytes())).then_some(pid)
    })
}

/// `perf record` with DWARF call graphs of a process into `out`, until [`stop_perf`].
fn start_perf(pid: u32, out: &Path) -> Result<std::process::Child> {
    Command::new("perf")
        .args([
            "record",
            "-q",
            "--call-graph=dwarf,16384",
            "-F",
            "499",
            "-p",
            &pid.to_string(),
            "-o",
        ])
        .arg(out)
        .stdout(std::process::Stdio::null())
        .spawn()
        .context("running perf (apt-get install linux-perf)")
}

/// Stops a `perf record` with SIGINT (so it writes its file) and waits for it.
fn stop_perf(mut child: std::process::Child) -> Result<()> {
    Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()?;
    child.wait()?;
    Ok(())
}

fn tempfile_dir() -> Result<std::path::PathBuf> {
    let d = std::env::temp_dir().join(format!("waymark-bench-ingest-{}", std::process::id()));
    std::fs::create_dir_all(&d)?;
    Ok(d)
}
