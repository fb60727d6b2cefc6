//! `cargo xtask bench triggers [--events N] [--visitors V] [--subscriptions S] [--rate R]
//! [--seconds T] [--batch N] [--mix stress|shop] [--keep DIR]`
//!
//! Audience triggers at scale: the query bench's synthetic history (default 10 million events,
//! loaded the same way, `--keep` shared with it), S subscriptions (default 100) pointing at a
//! webhook receiver in this process, and a live stream of R events/s (default 2,000) sent to
//! `/v1/batch` by new visitors who view, add to cart and sometimes order. It prints:
//!
//! - evaluation CPU per tick: the CPU that ClickHouse's and the ingest server's processes use
//!   over a phase with `triggers.evaluate = true`, less what the same number of events cost
//!   them in an equal phase without it, per tick (`TICK_SECS`) and as a share of a core, split
//!   between ClickHouse and the server; and per delivery received. Each phase starts once
//!   ClickHouse's merges of what came before (the loaded history, the baselines) are done;
//! - delivery latency p50 / p99: from sending the event that makes a person enter a
//!   `did <event>` audience to the webhook receiving `entered`.
//!
//! It measures and prints; it asserts nothing.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use axum::body::Bytes;
use serde_json::{json, Value};
use waymark_testkit::config::{site, HumanDuration, IngestConfig};
use waymark_testkit::ingest::IngestServer;
use waymark_testkit::ClickHouse;

use super::cpu_secs;

const SITE: &str = "shop";
const READ_KEY: &str = "rk_bench";
const WRITE_KEY: &str = "wk_bench";
const SECRET: &str = "bench-secret-0123456789";
const TICK_SECS: u64 = 10;
const EVENTS: &[&str] = &[
    "Product Viewed",
    "Product Added",
    "Order Completed",
    "$page",
];

/// Trigger evaluation CPU per tick and webhook latency at a live event rate.
///
/// Loads the query bench's synthetic history, registers subscriptions, streams live events and
/// times deliveries. Measures and prints; asserts nothing.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Events of synthetic history (at least one per visitor).
    #[arg(long, value_name = "N", default_value_t = 10_000_000)]
    events: u64,
    /// Visitors the history is spread over.
    #[arg(long, value_name = "V", default_value_t = 100_000)]
    visitors: usize,
    /// Subscriptions registered.
    #[arg(long, value_name = "S", default_value_t = 100)]
    subscriptions: usize,
    /// Live events per second.
    #[arg(long, value_name = "R", default_value_t = 2_000)]
    rate: u64,
    /// Seconds of each measured phase (without, then with evaluation). The CPU figure is a
    /// difference of the two, and each carries merges of parts inserted before it: with 90 s
    /// phases the `shop` mix measured 0.10 to 0.26 cores over four runs, with 180 s 0.03 to 0.13
    /// over three.
    #[arg(long, value_name = "T", default_value_t = 180)]
    seconds: u64,
    /// Keep ClickHouse's data in DIR (shared with `bench query --keep`).
    #[arg(long, value_name = "DIR")]
    keep: Option<std::path::PathBuf>,
    /// Deliveries per webhook POST (`[triggers] batch`): the new visitors of the stream enter
    /// dozens of audiences each, tens of thousands of transitions a tick, so one POST each is
    /// measured with `--batch 1`.
    #[arg(long, value_name = "N", default_value_t = 100)]
    batch: usize,
    /// Which audiences: `stress`, broad ones that almost every live visitor enters dozens of
    /// (about 40 transitions per visitor), or `shop`, the narrow ones of a shop's triggered
    /// emails (cart and browse abandonment per product, post-purchase per product group,
    /// winback), a few transitions per visitor.
    #[arg(long, value_enum, default_value_t = Mix::Stress)]
    mix: Mix,
    /// Run the debug ingest server instead of building a release one (saves the release
    /// build's disk and time; the server's own CPU is then overstated, ClickHouse's is not).
    #[arg(long)]
    debug_server: bool,
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(60)))
        .build()
        .into()
}

/// The pid of the ClickHouse server whose home is `home` (for its CPU time): the process
/// started with its config file, not the shell that waits for it.
fn clickhouse_pid(home: &Path) -> Option<u32> {
    let needle = format!("--config-file={}", home.join("config.xml").display());
    std::fs::read_dir("/proc").ok()?.flatten().find_map(|e| {
        let pid: u32 = e.file_name().to_str()?.parse().ok()?;
        let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
        let args: Vec<String> = cmd
            .split(|b| *b == 0)
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        let shell = args
            .first()
            .is_some_and(|a| a == "sh" || a.ends_with("/sh"));
        (!shell && args.contains(&needle)).then_some(pid)
    })
}

/// The kind of audiences registered.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mix {
    Stress,
    Shop,
}

/// Products the live stream's visitors view, add and order (`p0` .. `p49`).
const PRODUCTS: usize = 50;

/// The `shop` mix, by `i % 100`:
/// - 0..50: cart abandonment of product `p{i}`: added it within 24 h, no order within 24 h;
/// - 50..80: browse abandonment of `p{i - 50}`: viewed it within 24 h, added nothing;
/// - 80..90: post-purchase for a group of five products: ordered one of them within 7 days;
/// - 90..100: winback: ordered within 60, 70 .. 150 days, no page view in 30 days. No live
///   visitor enters these; they are evaluated at every tick's time edges over the history.
///
/// A live visitor enters one or two of them and leaves one when they add to cart or order.
fn shop_subscription(i: usize) -> (String, &'static str, Value) {
    let product = |k: usize| json!([{"property": "product_id", "op": "eq", "value": format!("p{}", k % PRODUCTS)}]);
    let (name, event, conditions) = match i % 100 {
        k @ 0..50 => (
            format!("cart abandoned p{k}"),
            "Product Added",
            json!([
                {"type": "did", "event": "Product Added", "within": "24h", "where": product(k)},
                {"type": "did_not", "event": "Order Completed", "within": "24h"}]),
        ),
        k @ 50..80 => (
            format!("browse abandoned p{}", k - 50),
            "Product Viewed",
            json!([
                {"type": "did", "event": "Product Viewed", "within": "24h", "where": product(k - 50)},
                {"type": "did_not", "event": "Product Added", "within": "24h"}]),
        ),
        k @ 80..90 => {
            let group: Vec<String> = (0..5).map(|j| format!("p{}", (k - 80) * 5 + j)).collect();
            (
                format!("post-purchase group {}", k - 80),
                "Order Completed",
                json!([{"type": "did", "event": "Order Completed", "within": "7d",
                        "where": [{"property": "product_id", "op": "in", "value": group}]}]),
            )
        }
        k => (
            format!("winback {k}"),
            "Order Completed",
            json!([
                {"type": "did", "event": "Order Completed", "within": format!("{}d", 60 + (k - 90) * 10)},
                {"type": "did_not", "event": "$page", "within": "30d"}]),
        ),
    };
    (
        format!("shop {i}: {name}"),
        event,
        json!({"conditions": conditions}),
    )
}

/// The subscriptions: `did <event> within <w>`, every other one without an order in 24 h,
/// every fifth one seen within 7 days, every seventh one in Germany.
fn subscription(i: usize) -> (String, &'static str, Value) {
    let event = EVENTS[i % EVENTS.len()];
    let within = ["1h", "24h", "7d"][(i / EVENTS.len()) % 3];
    let mut conditions = vec![json!({"type": "did", "event": event, "within": within})];
    if i % 2 == 1 && event != "Order Completed" {
        conditions.push(json!({"type": "did_not", "event": "Order Completed", "within": "24h"}));
    }
    if i.is_multiple_of(5) {
        conditions.push(json!({"type": "last_seen_within", "within": "7d"}));
    }
    if i.is_multiple_of(7) {
        conditions.push(json!({"type": "geo", "field": "country", "op": "eq", "value": "DE"}));
    }
    (
        format!("bench {i}"),
        event,
        json!({"conditions": conditions}),
    )
}

/// What the receiver reads of a delivery.
#[derive(serde::Deserialize)]
struct Hook {
    subscription: IdOnly,
    person: IdOnly,
    #[serde(rename = "type")]
    kind: String,
}

#[derive(serde::Deserialize)]
struct IdOnly {
    id: String,
}

#[derive(serde::Deserialize)]
struct Batch {
    deliveries: Vec<Hook>,
}

/// Arrivals at the receiver: (subscription id, person, type, when).
type Arrivals = Arc<Mutex<Vec<(String, String, String, Instant)>>>;

fn start_receiver() -> Result<(String, Arrivals)> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    listener.set_nonblocking(true)?;
    let url = format!("http://{}/hook", listener.local_addr()?);
    let arrivals: Arrivals = Arc::default();
    let a2 = arrivals.clone();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("a runtime");
        rt.block_on(async move {
            let app = axum::Router::new().route(
                "/hook",
                axum::routing::post(move |body: Bytes| {
                    let a = a2.clone();
                    async move {
                        let at = Instant::now();
                        // One delivery, or a batch of them (`[triggers] batch`). Read
                        // into the three fields timed, not a `Value` tree: this receiver
                        // runs in the (debug) xtask on the same two cores as the server.
                        let ds = match serde_json::from_slice::<Batch>(&body) {
                            Ok(b) => b.deliveries,
                            Err(_) => serde_json::from_slice::<Hook>(&body)
                                .map(|d| vec![d])
                                .unwrap_or_default(),
                        };
                        let mut a = a.lock().unwrap();
                        for d in ds {
                            a.push((d.subscription.id, d.person.id, d.kind, at));
                        }
                        axum::http::StatusCode::OK
                    }
                }),
            );
            let l = tokio::net::TcpListener::from_std(listener).expect("listener");
            let _ = axum::serve(l, app).await;
        });
    });
    Ok((url, arrivals))
}

/// When each live (person, event) was first sent.
type Sent = Arc<Mutex<HashMap<(String, &'static str), Instant>>>;

/// Streams `rate` events/s until `stop`: each new visitor views, adds, and one in four orders
/// (with a page view first). Returns the events sent.
fn stream(
    base: String,
    rate: u64,
    sent: Sent,
    stop: Arc<std::sync::atomic::AtomicBool>,
    prefix: String,
) -> std::thread::JoinHandle<Result<u64>> {
    std::thread::spawn(move || {
        let agent = agent();
        let batch_every = Duration::from_millis(100);
        let per_batch = (rate / 10).max(1) as usize;
        let mut next = Instant::now();
        let mut person = 0u64;
        let mut step = 0usize;
        let mut total = 0u64;
        let plan = [
            "$page",
            "Product Viewed",
            "Product Added",
            "Order Completed",
        ];
        while !stop.load(std::sync::atomic::Ordering::Relaxed) {
            let mut batch = Vec::with_capacity(per_batch);
            let mut firsts = Vec::new();
            let now = waymark_protocol::time::format_rfc3339(
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)?
                    .as_millis() as i64,
            );
            for _ in 0..per_batch {
                // Four steps per person; one in four persons orders.
                let ordering = person.is_multiple_of(4);
                let name = plan[step];
                let id = format!("{prefix}-{person}");
                total += 1;
                let ev = if name == "$page" {
                    json!({"type": "page", "anonymousId": id, "messageId": format!("{id}-{step}"),
                           "timestamp": now, "properties": {"path": "/p"}})
                } else {
                    json!({"type": "track", "event": name, "anonymousId": id,
                           "messageId": format!("{id}-{step}"), "timestamp": now,
                           "properties": {"product_id": format!("p{}", person as usize % PRODUCTS), "price": 10}})
                };
                batch.push(ev);
                firsts.push((id, name));
                step += 1;
                if step == 4 || (step == 3 && !ordering) {
                    step = 0;
                    person += 1;
                }
            }
            let t = Instant::now();
            {
                let mut s = sent.lock().unwrap();
                for (id, name) in firsts {
                    s.entry((id, name)).or_insert(t);
                }
            }
            let mut r = agent
                .post(&format!("{base}/v1/batch"))
                .header("content-type", "application/json")
                .send(json!({"writeKey": WRITE_KEY, "batch": batch}).to_string())
                .context("sending live events")?;
            if r.status() != 200 {
                bail!(
                    "ingest answered {}: {}",
                    r.status(),
                    r.body_mut().read_to_string().unwrap_or_default()
                );
            }
            next += batch_every;
            if let Some(d) = next.checked_duration_since(Instant::now()) {
                std::thread::sleep(d);
            }
        }
        Ok(total)
    })
}

fn metric(base: &str, name: &str) -> f64 {
    agent()
        .get(&format!("{base}/metrics"))
        .call()
        .ok()
        .and_then(|mut r| r.body_mut().read_to_string().ok())
        .and_then(|t| {
            t.lines()
                .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
        })
        .unwrap_or(0.0)
}

/// The server's settings: the bench site, its read key (which may subscribe), the cache off,
/// and the triggers evaluated or not.
fn config(ch: &ClickHouse, db: &str, spool: &Path, evaluate: bool, batch: usize) -> IngestConfig {
    IngestConfig::new()
        .clickhouse(&ch.http_url(), db)
        .spool(spool)
        .writer_max_age(Duration::from_secs(1))
        .site(site(SITE, WRITE_KEY, &[]))
        .read_key(READ_KEY, &[SITE])
        .with(|c| {
            c.query.cache_ttl = HumanDuration(Duration::ZERO);
            c.query.read_keys[0].subscribe = true;
            c.triggers.evaluate = evaluate;
            c.triggers.tick = HumanDuration(Duration::from_secs(TICK_SECS));
            c.triggers.max_subscriptions = 10_000;
            c.triggers.batch = batch;
        })
}

fn pct(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// Waits until ClickHouse has had no merge running for two seconds (at most 5 min) and says
/// how long that took, so a phase does not start beside the merges of what came before it (the
/// loaded history, the baselines' memberships). It sees only merges already running: those
/// ClickHouse schedules later still fall into the next phase, which is why the phases are long
/// (the phase without evaluation measured 0.18 to 0.41 cores of ClickHouse between runs for the
/// same stream).
fn settle(ch: &ClickHouse, what: &str) -> Result<()> {
    let t = Instant::now();
    let mut quiet_since: Option<Instant> = None;
    while t.elapsed() < Duration::from_secs(300) {
        let running: u64 = ch
            .query("SELECT count() FROM system.merges FORMAT TSV")
            .map_err(|e| anyhow::anyhow!("reading system.merges: {e}"))?
            .trim()
            .parse()
            .unwrap_or(0);
        if running > 0 {
            quiet_since = None;
        } else if quiet_since.get_or_insert_with(Instant::now).elapsed() >= Duration::from_secs(2) {
            println!(
                "merges after {what} settled in {:.0} s",
                t.elapsed().as_secs_f64()
            );
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    println!("merges after {what} still running after 300 s: the phase that follows carries some of them");
    Ok(())
}

/// What one phase of the live stream used.
struct Phase {
    /// CPU seconds of ClickHouse's process and of the ingest server's.
    ch_cpu: f64,
    server_cpu: f64,
    /// Of `ch_cpu`, ClickHouse's background pool (merges).
    ch_merge_cpu: f64,
    secs: f64,
    events: u64,
}

impl Phase {
    fn cores(&self) -> (f64, f64) {
        (self.ch_cpu / self.secs, self.server_cpu / self.secs)
    }
}

/// One phase of the live stream.
fn phase(
    base: &str,
    rate: u64,
    secs: u64,
    ch_pid: u32,
    server_pid: u32,
    sent: &Sent,
    prefix: &str,
) -> Result<Phase> {
    let cpu = || {
        (
            cpu_secs(ch_pid).unwrap_or(0.0),
            cpu_secs(server_pid).unwrap_or(0.0),
            super::merge_cpu_secs(ch_pid).unwrap_or(0.0),
        )
    };
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let c0 = cpu();
    let t0 = Instant::now();
    let h = stream(
        base.to_string(),
        rate,
        sent.clone(),
        stop.clone(),
        prefix.to_string(),
    );
    while t0.elapsed() < Duration::from_secs(secs) && !h.is_finished() {
        std::thread::sleep(Duration::from_millis(200));
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let n = h
        .join()
        .map_err(|_| anyhow::anyhow!("the stream panicked"))??;
    let c1 = cpu();
    Ok(Phase {
        ch_cpu: c1.0 - c0.0,
        server_cpu: c1.1 - c0.1,
        ch_merge_cpu: c1.2 - c0.2,
        secs: t0.elapsed().as_secs_f64(),
        events: n,
    })
}

pub fn run(root: &Path, o: &Args) -> Result<()> {
    let binary = if o.debug_server {
        crate::server::build_debug(root)?
    } else {
        crate::server::build_release(root)?
    };
    println!("starting a private ClickHouse...");
    let ch = match &o.keep {
        Some(dir) => ClickHouse::start_kept(
            dir,
            waymark_testkit::free_port(),
            waymark_testkit::free_port(),
        ),
        None => ClickHouse::start(),
    }
    .map_err(|e| anyhow::anyhow!("{e}"))?;
    let ch_pid = clickhouse_pid(ch.home()).context("finding ClickHouse's pid")?;
    let qargs = super::query::Args {
        events: o.events,
        visitors: o.visitors,
        samples: 1,
        keep: o.keep.clone(),
        server: None,
        against: None,
        with_load: None,
    };
    let kept = o.keep.is_some()
        && ch
            .query(&format!(
                "SELECT count() FROM bench.bench_meta WHERE events = {} AND visitors = {} FORMAT TSV",
                o.events, o.visitors
            ))
            .is_ok_and(|s| s.trim() == "1");
    let db = if o.keep.is_some() {
        "bench".to_string()
    } else {
        ch.fresh_database().map_err(|e| anyhow::anyhow!("{e}"))?
    };
    if let (Some(dir), false) = (&o.keep, kept) {
        // Kept data of other sizes is not dropped silently: it may be hours of loading.
        if let Ok(meta) = ch.query("SELECT events, visitors FROM bench.bench_meta FORMAT TSV") {
            if !meta.trim().is_empty() {
                bail!(
                    "{} holds a history of (events, visitors) {}, not {} {}: pass those with --events and --visitors, or another --keep directory",
                    dir.display(),
                    meta.trim().replace('\t', ", "),
                    o.events,
                    o.visitors
                );
            }
        }
        for sql in ["DROP DATABASE IF EXISTS bench", "CREATE DATABASE bench"] {
            ch.query(sql).map_err(|e| anyhow::anyhow!("{sql}: {e}"))?;
        }
    }
    let dir = std::env::temp_dir().join(format!("waymark-bench-triggers-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let start = |evaluate: bool| {
        let name = if evaluate { "on" } else { "off" };
        IngestServer::start(
            &binary,
            &config(&ch, &db, &dir.join("spool"), evaluate, o.batch),
            &dir.join(name),
            &[("RUST_LOG", "warn")],
        )
        .map_err(|e| anyhow::anyhow!("{e}"))
    };

    // Without evaluation: migrations, history, subscriptions, then the baseline phase.
    let server = start(false)?;
    let base = server.url();
    let started = Instant::now();
    while !agent()
        .get(&format!("{base}/readyz"))
        .call()
        .ok()
        .and_then(|mut r| r.body_mut().read_to_string().ok())
        .is_some_and(|b| b.contains("\"schema\":\"ok\""))
    {
        if started.elapsed() > Duration::from_secs(1800) {
            bail!("the ingest server did not apply its migrations within 30 min");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    if !kept {
        println!(
            "generating and loading {} events for {} visitors...",
            o.events, o.visitors
        );
        let now = waymark_ingest::clock::now_ms();
        super::query::load(&ch, &db, &qargs, now, super::query::population(&qargs))?;
        if o.keep.is_some() {
            ch.query("CREATE TABLE bench.bench_meta (events UInt64, visitors UInt64, now_ms Int64, generator UInt32) ENGINE = TinyLog")
                .and_then(|_| ch.query(&format!("INSERT INTO bench.bench_meta VALUES ({}, {}, {now}, {})", o.events, o.visitors, super::query::GENERATOR)))
                .map_err(|e| anyhow::anyhow!("{e}"))?;
        }
    }
    let (hook, arrivals) = start_receiver()?;
    // A kept history may hold an earlier run's triggers: start from none.
    for t in [
        "trigger_subscriptions",
        "trigger_members",
        "trigger_deliveries",
        "trigger_state",
        "trigger_lease",
        "trigger_touched",
    ] {
        ch.query(&format!("TRUNCATE TABLE {db}.{t}"))
            .map_err(|e| anyhow::anyhow!("{t}: {e}"))?;
    }
    let mut sub_event: HashMap<String, &'static str> = HashMap::new();
    for i in 0..o.subscriptions {
        let (name, event, audience) = match o.mix {
            Mix::Stress => subscription(i),
            Mix::Shop => shop_subscription(i),
        };
        let mut r = agent()
            .post(&format!("{base}/v1/subscriptions?site={SITE}"))
            .header("authorization", &format!("Bearer {READ_KEY}"))
            .header("content-type", "application/json")
            .send(
                json!({"name": name, "audience": audience, "url": hook, "secret": SECRET})
                    .to_string(),
            )?;
        let text = r.body_mut().read_to_string().unwrap_or_default();
        if r.status() != 201 {
            bail!("registering a subscription: {} {text}", r.status());
        }
        let v: Value = serde_json::from_str(&text)?;
        sub_event.insert(v["id"].as_str().unwrap_or_default().to_string(), event);
    }
    println!("{} subscriptions registered", o.subscriptions);
    let sent: Sent = Arc::default();
    // Each run's live visitors are new: a kept history holds earlier runs' visitors, whom the
    // baselines would count as members already.
    let run = waymark_ingest::clock::now_ms();
    let (prefix_off, prefix_on) = (format!("live-{run}-1"), format!("live-{run}-2"));
    settle(&ch, "loading")?;
    println!(
        "phase 1: {} events/s for {} s without evaluation...",
        o.rate, o.seconds
    );
    let off = phase(
        &base,
        o.rate,
        o.seconds,
        ch_pid,
        server.proc.id(),
        &sent,
        &prefix_off,
    )?;
    drop(server);

    // With evaluation: the baselines first (each reads its whole audience once), then the
    // measured phase.
    let server = start(true)?;
    let base = server.url();
    let t = Instant::now();
    let first_cpu = (
        cpu_secs(ch_pid).unwrap_or(0.0),
        cpu_secs(server.proc.id()).unwrap_or(0.0),
    );
    while metric(&base, "waymark_trigger_ticks_total") < 1.0 {
        if t.elapsed() > Duration::from_secs(3600) {
            bail!("the first tick (baselines) did not finish within an hour");
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    println!(
        "baselines of {} subscriptions taken in {:.1} s (the first tick: one read of the history); CPU s ClickHouse {:.1}, server {:.1}",
        o.subscriptions,
        t.elapsed().as_secs_f64(),
        cpu_secs(ch_pid).unwrap_or(0.0) - first_cpu.0,
        cpu_secs(server.proc.id()).unwrap_or(0.0) - first_cpu.1,
    );
    settle(&ch, "the baselines")?;
    let ticks0 = metric(&base, "waymark_trigger_ticks_total");
    let tick_s0 = metric(&base, "waymark_trigger_tick_seconds_sum");
    let measure_from = Instant::now();
    println!(
        "phase 2: {} events/s for {} s with evaluation every {TICK_SECS} s...",
        o.rate, o.seconds
    );
    let on = phase(
        &base,
        o.rate,
        o.seconds,
        ch_pid,
        server.proc.id(),
        &sent,
        &prefix_on,
    )?;
    let measure_to = Instant::now();
    let ticks = metric(&base, "waymark_trigger_ticks_total") - ticks0;
    let tick_wall = metric(&base, "waymark_trigger_tick_seconds_sum") - tick_s0;
    // The phase's last events are delivered by the tick after the one running now: wait for
    // two more ticks and an empty outbox (bounded), so their latency counts too.
    let wait = Instant::now();
    let after = ticks0 + ticks + 2.0;
    while (metric(&base, "waymark_trigger_ticks_total") < after
        || metric(&base, "waymark_trigger_pending") > 0.0)
        && wait.elapsed() < Duration::from_secs(300)
    {
        std::thread::sleep(Duration::from_millis(500));
    }
    let candidates = metric(&base, "waymark_trigger_candidates");
    drop(server);

    let sent = sent.lock().unwrap();
    let mut lat: Vec<f64> = arrivals
        .lock()
        .unwrap()
        .iter()
        .filter(|(_, p, kind, at)| {
            kind == "entered"
                && p.strip_prefix(prefix_on.as_str())
                    .is_some_and(|rest| rest.starts_with('-'))
                && *at >= measure_from
        })
        .filter_map(|(sub, p, _, at)| {
            let ev = sub_event.get(sub)?;
            let t = sent.get(&(p.clone(), *ev))?;
            Some(at.duration_since(*t).as_secs_f64())
        })
        .collect();
    lat.sort_by(f64::total_cmp);
    // Deliveries that arrived during phase 2 (every subscription, entered and left): what the
    // server's extra CPU was spent on besides evaluating.
    let delivered = arrivals
        .lock()
        .unwrap()
        .iter()
        .filter(|(_, _, _, at)| *at >= measure_from && *at < measure_to)
        .count();
    let (ch_off, server_off) = off.cores();
    let (ch_on, server_on) = on.cores();
    // What phase 2's events would have cost without evaluation, at phase 1's CPU per event:
    // on a loaded machine the stream does not always reach its rate, and less CPU for fewer
    // events is not evaluation saving any.
    let scale = on.events as f64 / off.events.max(1) as f64;
    let (ch_extra, server_extra) = (
        ((on.ch_cpu - off.ch_cpu * scale) / on.secs).max(0.0),
        ((on.server_cpu - off.server_cpu * scale) / on.secs).max(0.0),
    );
    let extra = ch_extra + server_extra;
    // ClickHouse's extra split into its merges and the rest (queries and inserts).
    let merge_extra = (on.ch_merge_cpu - off.ch_merge_cpu * scale) / on.secs;
    let merges = |p: &Phase| p.ch_merge_cpu / p.secs;
    println!();
    println!(
        "history: {} events, {} visitors; {} subscriptions ({:?} mix); live {} events/s; {} deliveries per POST at most",
        o.events, o.visitors, o.subscriptions, o.mix, o.rate, o.batch
    );
    println!(
        "phase 1 (no evaluation): {} events in {:.0} s; CPU cores: ClickHouse {ch_off:.2} (merges {:.2}), server {server_off:.2}",
        off.events, off.secs, merges(&off)
    );
    println!(
        "phase 2 (evaluation):    {} events in {:.0} s; CPU cores: ClickHouse {ch_on:.2} (merges {:.2}), server {server_on:.2}",
        on.events, on.secs, merges(&on)
    );
    println!(
        "evaluation and delivery: {ticks:.0} ticks, {:.2} s wall per tick, {:.2} CPU s per tick ({extra:.3} cores: ClickHouse {ch_extra:.3} of which merges {merge_extra:.3}, server {server_extra:.3}); last tick's candidates {candidates:.0} (target: under 0.25 cores)",
        tick_wall / ticks.max(1.0),
        extra * TICK_SECS as f64,
    );
    let per_delivery = |cores: f64| cores * on.secs / (delivered.max(1) as f64) * 1000.0;
    println!(
        "deliveries received during phase 2: {delivered} ({:.0}/s); extra CPU per delivery {:.2} ms (server {:.2} ms){}",
        delivered as f64 / on.secs,
        per_delivery(extra),
        per_delivery(server_extra),
        if o.debug_server { " (debug server: its share overstated)" } else { "" }
    );
    println!(
        "delivery latency (event sent -> webhook got `entered`), {} deliveries: p50 {:.1} s, p99 {:.1} s, max {:.1} s (target: p99 under 60 s)",
        lat.len(),
        pct(&lat, 0.5),
        pct(&lat, 0.99),
        lat.last().copied().unwrap_or(f64::NAN)
    );
    // Evaluation failures are the server's warnings: show them rather than a silent figure.
    let log = std::fs::read_to_string(dir.join("on").join("ingest.log")).unwrap_or_default();
    let failures: Vec<&str> = log.lines().filter(|l| l.contains("trigger")).collect();
    if !failures.is_empty() {
        println!(
            "server warnings about triggers ({}), the last:",
            failures.len()
        );
        for l in failures.iter().rev().take(6) {
            println!("  {l}");
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
