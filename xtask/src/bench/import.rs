//! `cargo xtask bench import [--people N] [--samples S] [--server PATH]`
//!
//! Generates a CRM export ([`waymark_testkit::crm`]: customers with one to three records each,
//! their email written with another case, spaces or a `+shop` tag; orders over three years),
//! imports it with `ingest-server import` into the release server (built unless `--server`
//! names a binary) on a private ClickHouse, and prints:
//!
//! - import rows/s: from the CLI's start until every row is in ClickHouse's `events` (the
//!   server's validation, enrichment, spool, writer, the materialized views and the identity
//!   links included), and the CPU seconds per 1,000 rows of the CLI, of the ingest server and
//!   of ClickHouse (the machine may be shared: CPU per row is the figure to compare);
//! - the people the audience API counts against the generator's truth, and the profile's p50 /
//!   p99 over sampled customer ids on the merged data;
//! - raw rows/s: the same rows (`SELECT *` of what the import stored, as TSV) inserted by
//!   `clickhouse-client` into the same tables: `events`, which fills the same materialized
//!   views, and `identities` with the same links (the floor the issue compares against; target:
//!   the import at least half of it), with the client's and ClickHouse's CPU per 1,000 rows;
//!   and into a bare copy of `events` (no views, no links), for scale.
//!
//! It measures and prints; it asserts nothing. The CLI's and clickhouse-client's CPU is
//! sampled from `/proc` every 20 ms while they run (the last few milliseconds before they exit
//! are not seen).

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use waymark_ingest::clock::now_ms;
use waymark_testkit::config::{site, HumanDuration, IngestConfig};
use waymark_testkit::crm::Crm;
use waymark_testkit::ingest::IngestServer;
use waymark_testkit::ClickHouse;

const SITE: &str = "shop";
const WRITE_KEY: &str = "wk_bench";
const READ_KEY: &str = "rk_bench";

/// Import rows/s against a raw clickhouse-client insert, and profile latency on merged people.
///
/// Generates a CRM export, imports it with `ingest-server import`, inserts the same rows with
/// clickhouse-client, and times profiles. Measures and prints; asserts nothing.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// People in the export (each with one to three customer records).
    #[arg(long, value_name = "N", default_value_t = 20_000)]
    people: usize,
    /// Customer ids whose profile is timed.
    #[arg(long, value_name = "S", default_value_t = 1_000)]
    samples: usize,
    /// Run this server binary instead of building the release one.
    #[arg(long, value_name = "PATH")]
    server: Option<std::path::PathBuf>,
    /// The server's `[writer] max_age` (default: the server's default), to see what larger
    /// writer batches save ClickHouse: each batch of imported rows spans up to 36 monthly
    /// partitions of `events` and of the views' tables.
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    writer_max_age: Option<Duration>,
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(120)))
        .build()
        .into()
}

fn pct(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i]
}

fn count(ch: &ClickHouse, sql: &str) -> u64 {
    ch.query(sql)
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0)
}

/// Runs a command to its end, sampling its CPU from `/proc` every 20 ms; (wall seconds, CPU
/// seconds seen, stdout).
fn sampled(cmd: &mut Command, what: &str) -> Result<(f64, f64, String)> {
    let started = Instant::now();
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .with_context(|| format!("running {what}"))?;
    // Read stdout on its own thread so a chatty child never blocks on a full pipe.
    let mut stdout = child.stdout.take().expect("piped");
    let reader = std::thread::spawn(move || {
        let mut out = String::new();
        let _ = std::io::Read::read_to_string(&mut stdout, &mut out);
        out
    });
    let mut cpu = 0.0;
    loop {
        if let Some(c) = super::cpu_secs(child.id()) {
            cpu = c;
        }
        if let Some(status) = child.try_wait()? {
            let out = reader.join().unwrap_or_default();
            if !status.success() {
                bail!("{what} failed ({status}): {out}");
            }
            return Ok((started.elapsed().as_secs_f64(), cpu, out));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Runs the CLI on one file; (wall seconds, CPU seconds seen).
fn import(binary: &Path, url: &str, kind: &str, file: &Path) -> Result<(f64, f64)> {
    let (wall, cpu, out) = sampled(
        Command::new(binary)
            .args(["import", "--site", SITE, "--kind", kind])
            .arg(file)
            .args(["--url", url, "--key", WRITE_KEY]),
        &format!("ingest-server import --kind {kind}"),
    )?;
    print!("  {kind}: {out}");
    Ok((wall, cpu))
}

/// ClickHouse's own counters (`system.events`, server-wide: the private server runs only this
/// benchmark): the queries and merges behind its CPU time.
const COUNTERS: [&str; 5] = [
    "InsertQuery",
    "SelectQuery",
    "InsertedRows",
    "Merge",
    "MergedRows",
];

fn counters(ch: &ClickHouse) -> [u64; 5] {
    let list = COUNTERS.map(|c| format!("'{c}'")).join(",");
    let text = ch
        .query(&format!(
            "SELECT event, value FROM system.events WHERE event IN ({list}) FORMAT TabSeparated"
        ))
        .unwrap_or_default();
    COUNTERS.map(|c| {
        text.lines()
            .filter_map(|l| l.split_once('\t'))
            .find(|(e, _)| *e == c)
            .and_then(|(_, v)| v.trim().parse().ok())
            .unwrap_or(0)
    })
}

fn counter_line(before: [u64; 5], after: [u64; 5]) -> String {
    COUNTERS
        .iter()
        .zip(before.iter().zip(after))
        .map(|(c, (b, a))| format!("{c} {}", a.saturating_sub(*b)))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The pid of the `clickhouse-server` process whose files are under `home` (not its shell
/// wrapper), to read its CPU time.
fn clickhouse_pid(home: &Path) -> Option<u32> {
    let home = home.to_string_lossy().into_owned();
    std::fs::read_dir("/proc").ok()?.flatten().find_map(|e| {
        let pid: u32 = e.file_name().to_str()?.parse().ok()?;
        let cmdline = std::fs::read(e.path().join("cmdline")).ok()?;
        let comm = std::fs::read_to_string(e.path().join("comm")).ok()?;
        (comm.trim() != "sh" && String::from_utf8_lossy(&cmdline).contains(&home)).then_some(pid)
    })
}

pub fn run(root: &Path, o: &Args) -> Result<()> {
    let binary = match &o.server {
        Some(p) => p.clone(),
        None => crate::server::build_release(root)?,
    };
    println!("starting a private ClickHouse...");
    let ch = ClickHouse::start().map_err(|e| anyhow::anyhow!("{e}"))?;
    let db = ch.fresh_database().map_err(|e| anyhow::anyhow!("{e}"))?;
    let dir = std::env::temp_dir().join(format!("waymark-bench-import-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let config = IngestConfig::new()
        .clickhouse(&ch.http_url(), &db)
        .spool(&dir.join("spool"))
        .site(site(SITE, WRITE_KEY, &[]))
        .read_key(READ_KEY, &[SITE])
        .with(|c| {
            c.query.cache_ttl = HumanDuration(Duration::ZERO);
            if let Some(age) = o.writer_max_age {
                c.writer.max_age = HumanDuration(age);
            }
            for s in &mut c.sites {
                s.identity.email_plus = true;
            }
        });
    let server = IngestServer::start(
        &binary,
        &config,
        &dir.join("ingest"),
        &[("RUST_LOG", "warn")],
    )
    .map_err(|e| anyhow::anyhow!("{e}"))?;
    let url = server.url();
    let deadline = Instant::now() + Duration::from_secs(300);
    while !agent()
        .get(format!("{url}/readyz"))
        .call()
        .map(|r| r.status().as_u16() == 200)
        .unwrap_or(false)
    {
        if Instant::now() > deadline {
            bail!("the ingest server was not ready within 5 min");
        }
        std::thread::sleep(Duration::from_millis(200));
    }

    let now = now_ms();
    let ex = Crm {
        people: o.people,
        ..Crm::default()
    }
    .generate(now);
    let (customers, orders) = (dir.join("customers.csv"), dir.join("orders.csv"));
    std::fs::write(&customers, &ex.customers_csv)?;
    std::fs::write(&orders, &ex.orders_csv)?;
    let rows = (ex.customer_rows + ex.order_rows) as u64;
    if let Some(age) = o.writer_max_age {
        println!("writer max_age: {age:?} (not the default)");
    }
    println!(
        "export: {} people, {} customer rows, {} orders over three years ({:.1} MB of CSV)",
        o.people,
        ex.customer_rows,
        ex.order_rows,
        (ex.customers_csv.len() + ex.orders_csv.len()) as f64 / 1e6
    );

    let ch_pid = clickhouse_pid(ch.home());
    let ch_cpu = || ch_pid.and_then(super::cpu_secs).unwrap_or(f64::NAN);
    let server_cpu0 = super::cpu_secs(server.proc.id()).unwrap_or(0.0);
    let ch_cpu0 = ch_cpu();
    let counted0 = counters(&ch);
    let started = Instant::now();
    let (w1, c1) = import(&binary, &url, "customers", &customers)?;
    let (w2, c2) = import(&binary, &url, "orders", &orders)?;
    let in_ch = format!("SELECT count() FROM {db}.events WHERE source = 'import'");
    while count(&ch, &in_ch) < rows {
        if started.elapsed() > Duration::from_secs(1800) {
            bail!("the rows did not reach ClickHouse within 30 min");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let import_s = started.elapsed().as_secs_f64();
    let server_cpu = super::cpu_secs(server.proc.id()).unwrap_or(0.0) - server_cpu0;
    let import_ch_cpu = ch_cpu() - ch_cpu0;
    let import_counted = counter_line(counted0, counters(&ch));
    let import_rate = rows as f64 / import_s;
    let per_k = |cpu: f64| cpu * 1000.0 / rows as f64;
    println!(
        "import: {rows} rows in {import_s:.2} s until in ClickHouse = {import_rate:.0} rows/s (the CLI took {:.2} s to have them acknowledged)",
        w1 + w2
    );
    println!(
        "  CPU s per 1,000 rows: CLI {:.3}, ingest server {:.3}, ClickHouse {:.3} (ClickHouse's includes what else it did meanwhile: the server's merge pass and its own merges)",
        per_k(c1 + c2),
        per_k(server_cpu),
        per_k(import_ch_cpu)
    );
    println!("  ClickHouse meanwhile (this benchmark's own count polls, every 100 ms, included): {import_counted}");

    // People, once merged.
    let people = |a: &ureq::Agent| -> Result<u64> {
        let mut r = a
            .post(format!("{url}/v1/audiences/query?site={SITE}"))
            .header("authorization", format!("Bearer {READ_KEY}"))
            .header("content-type", "application/json")
            .send(r#"{"conditions":[{"type":"did","event":"$identify","within":"3650d"}],"limit":10000}"#)?;
        let v: serde_json::Value =
            serde_json::from_str(&r.body_mut().with_config().limit(1 << 30).read_to_string()?)?;
        Ok(v["count"].as_u64().unwrap_or(0))
    };
    let a = agent();
    let t = Instant::now();
    let truth = ex.persons.len() as u64;
    let mut n = people(&a)?;
    while n != truth && t.elapsed() < Duration::from_secs(120) {
        std::thread::sleep(Duration::from_millis(500));
        n = people(&a)?;
    }
    println!(
        "people counted by the audience API: {n} (the generator's truth: {truth}; {} customer records; the audience page holds at most 10,000)",
        ex.customer_rows
    );

    let step = (ex.customer_rows / o.samples.max(1)).max(1);
    let mut ms = Vec::new();
    for id in ex.customer_ids().step_by(step).take(o.samples) {
        let t = Instant::now();
        let r = a
            .get(format!("{url}/v1/profiles/{id}?site={SITE}"))
            .header("authorization", format!("Bearer {READ_KEY}"))
            .call()?;
        if r.status().as_u16() == 200 {
            ms.push(t.elapsed().as_secs_f64() * 1000.0);
        }
    }
    ms.sort_by(f64::total_cmp);
    println!(
        "profile on merged data: {} requests, p50 {:.1} ms, p99 {:.1} ms",
        ms.len(),
        pct(&ms, 0.5),
        pct(&ms, 0.99)
    );

    // The same rows, raw: what the import stored, exported as TSV and inserted again by
    // clickhouse-client (after the profile figures: the second copy of each row is a duplicate
    // the tables collapse, but the aggregating views count it).
    let client = waymark_testkit::client_command();
    let port = ch.tcp_port().to_string();
    // Exported with clickhouse-client too: the rows are more than an HTTP answer may hold.
    let export = |sql: String, file: &Path| -> Result<u64> {
        let st = Command::new(&client[0])
            .args(&client[1..])
            .args(["--host", "127.0.0.1", "--port", &port, "--query", &sql])
            .stdout(std::fs::File::create(file)?)
            .status()
            .context("running clickhouse-client (apt-get install -y clickhouse-client)")?;
        if !st.success() {
            bail!("exporting rows with clickhouse-client failed: {sql}");
        }
        Ok(
            std::io::BufRead::lines(std::io::BufReader::new(std::fs::File::open(file)?)).count()
                as u64,
        )
    };
    let events_tsv = dir.join("events.tsv");
    export(
        format!("SELECT * FROM {db}.events WHERE source = 'import' FORMAT TabSeparated"),
        &events_tsv,
    )?;
    let links_tsv = dir.join("identities.tsv");
    let links = export(
        format!("SELECT * FROM {db}.identities WHERE site = '{SITE}' FORMAT TabSeparated"),
        &links_tsv,
    )?;
    let raw_insert = |table: &str, file: &Path| -> Result<(f64, f64)> {
        let (wall, cpu, _) = sampled(
            Command::new(&client[0])
                .args(&client[1..])
                .args(["--host", "127.0.0.1", "--port", &port, "--query"])
                .arg(format!("INSERT INTO {db}.{table} FORMAT TabSeparated"))
                .stdin(std::fs::File::open(file)?),
            &format!(
                "clickhouse-client inserting into {table} (apt-get install -y clickhouse-client)"
            ),
        )?;
        Ok((wall, cpu))
    };
    let views = count(
        &ch,
        &format!("SELECT count() FROM system.tables WHERE database = '{db}' AND engine = 'MaterializedView'"),
    );
    // ClickHouse first finishes the merges the import's parts started (up to two minutes), so
    // the raw insert is not timed against the import's leftovers.
    let settle = Instant::now();
    while count(&ch, "SELECT count() FROM system.merges") > 0
        && settle.elapsed() < Duration::from_secs(120)
    {
        std::thread::sleep(Duration::from_millis(200));
    }
    println!(
        "  (ClickHouse's merges settled {:.1} s after the profile figures)",
        settle.elapsed().as_secs_f64()
    );
    let ch_cpu0 = ch_cpu();
    let counted0 = counters(&ch);
    let (ev_s, ev_cpu) = raw_insert("events", &events_tsv)?;
    let (id_s, id_cpu) = raw_insert("identities", &links_tsv)?;
    let raw_ch_cpu = ch_cpu() - ch_cpu0;
    let raw_counted = counter_line(counted0, counters(&ch));
    let raw_s = ev_s + id_s;
    let raw_rate = rows as f64 / raw_s;
    ch.query(&format!("CREATE TABLE {db}.raw_events AS {db}.events"))
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let (bare_s, _) = raw_insert("raw_events", &events_tsv)?;
    let bare_rate = count(&ch, &format!("SELECT count() FROM {db}.raw_events")) as f64 / bare_s;
    println!(
        "raw clickhouse-client insert of the same rows (TabSeparated, exported from what the import stored):"
    );
    println!(
        "  into events ({views} materialized views on the database fill from it) and the {links} identity links into identities: {raw_s:.2} s = {raw_rate:.0} rows/s"
    );
    println!(
        "    CPU s per 1,000 rows: clickhouse-client {:.3}, ClickHouse {:.3}",
        per_k(ev_cpu + id_cpu),
        per_k(raw_ch_cpu)
    );
    println!("    ClickHouse meanwhile: {raw_counted}");
    println!(
        "  into a bare copy of events (no views, no links): {bare_s:.2} s = {bare_rate:.0} rows/s"
    );
    println!(
        "import / raw = {:.2} against the same tables and views (target: at least 0.5); {:.2} against the bare copy",
        import_rate / raw_rate,
        import_rate / bare_rate
    );
    drop(server);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
