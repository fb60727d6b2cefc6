//! `cargo xtask bench query [--events N] [--visitors V] [--samples S] [--keep DIR]
//! [--with-load [EVENTS_PER_S]]`
//!
//! Loads synthetic history (default 10 million events for 100,000 visitors) into a private
//! ClickHouse whose schema the release ingest server created (so the query API's materialized
//! views fill while loading, as they would in production), then times the query API over HTTP:
//! profile, event history and the cart-abandonment audience, printing p50 / p99. It measures
//! and prints; it asserts nothing. With `--with-load` the same server takes a paced intake
//! (5,000 events/s unless given) into the same ClickHouse while the queries are timed, and
//! the load's achieved rate, ack latency and drain are printed beside them (issue 20's mixed
//! load).
//!
//! The history is skewed like a real shop's: visitor activity follows a Zipf-like law (the
//! busiest visitor has about 1 % of all events, the median one about 50), products are Zipf
//! popular, events come in sessions spread over 90 days, a quarter of visitors identify (a fifth
//! of those on two devices, stitched through `identities`), and carts, removals and orders are
//! mixed in; half of the identified people's orders come from the shop's backend with the user
//! id only. Rows are generated as TSV and streamed into `clickhouse-client`.
//! The server's cache is off (`cache_ttl = "0s"`), so every request reaches ClickHouse.
//!
//! `--keep DIR` keeps ClickHouse's data in `DIR` and reuses it on the next run with the same
//! `--events`, `--visitors` and generator (`GENERATOR`; the load takes about two minutes for
//! the default size): the history is generated relative to the time of the first run, so
//! windows such as "within 24h" drift as the kept data ages. The server's migrations still run, so a new table backfills.

use std::fmt::Write as _;
use std::io::Write as _;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use waymark_ingest::clock::now_ms;
use waymark_testkit::config::{site, HumanDuration, IngestConfig};
use waymark_testkit::ingest::IngestServer;
use waymark_testkit::ClickHouse;

const SITE: &str = "shop";
/// The synthetic history's version, kept in `--keep`'s marker: data generated otherwise is
/// loaded again. Bump it with any change to what `visitor_history` writes.
pub(super) const GENERATOR: u32 = 2;
const READ_KEY: &str = "rk_bench";
const DAY_MS: i64 = 86_400_000;
const PRODUCTS: usize = 5_000;
const COUNTRIES: &[(&str, &str, &str, f64)] = &[
    ("DE", "Berlin", "Europe/Berlin", 0.30),
    ("US", "New York", "America/New_York", 0.25),
    ("FR", "Paris", "Europe/Paris", 0.15),
    ("GB", "London", "Europe/London", 0.10),
    ("NL", "Amsterdam", "Europe/Amsterdam", 0.08),
    ("ES", "Madrid", "Europe/Madrid", 0.07),
    ("JP", "Tokyo", "Asia/Tokyo", 0.05),
];
/// The audience the issue names: added to cart within 24h, no order within 24h, in Germany,
/// seen within 7 days.
const CART_AUDIENCE: &str = r#"{"conditions": [
  {"type": "did", "event": "Product Added", "within": "24h"},
  {"type": "did_not", "event": "Order Completed", "within": "24h"},
  {"type": "geo", "field": "country", "op": "eq", "value": "DE"},
  {"type": "last_seen_within", "within": "7d"}], "limit": 100}"#;

/// The query API's latency over synthetic history (p50 / p99).
///
/// Loads skewed synthetic history into a private ClickHouse through the release server's
/// schema, then times profiles, event histories and the cart-abandonment audience over HTTP.
/// Measures and prints; asserts nothing.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Events of synthetic history (at least one per visitor).
    #[arg(long, value_name = "N", default_value_t = 10_000_000)]
    pub(super) events: u64,
    /// Visitors the history is spread over (at least 1).
    #[arg(long, value_name = "V", default_value_t = 100_000, value_parser = at_least_one)]
    pub(super) visitors: usize,
    /// Sampled visitors whose profile and event history are timed (at least 1).
    #[arg(long, value_name = "S", default_value_t = 1_000, value_parser = at_least_one)]
    pub(super) samples: usize,
    /// Keep ClickHouse's data in DIR and reuse it on the next run with the same --events,
    /// --visitors and generator.
    #[arg(long, value_name = "DIR")]
    pub(super) keep: Option<std::path::PathBuf>,
    /// Run this server binary instead of building the release one.
    #[arg(long, value_name = "PATH")]
    pub(super) server: Option<std::path::PathBuf>,
    /// Time a second server binary (e.g. an earlier build) on the same data in the same run:
    /// each sampled request goes to both servers in turn, so the machine's noise falls on
    /// both alike; its lines and the ratios are printed under the first server's.
    #[arg(long, value_name = "PATH")]
    pub(super) against: Option<std::path::PathBuf>,
    /// Time the queries while the same server takes this many events a second into the same
    /// ClickHouse (`/v1/batch`, 20 events a request, 16 clients; 5000 when given bare), as a
    /// live shop's intake would. Not with --against.
    #[arg(long, value_name = "EVENTS_PER_S", num_args = 0..=1, default_missing_value = "5000",
        value_parser = at_least_one, conflicts_with = "against")]
    pub(super) with_load: Option<usize>,
}

fn at_least_one(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(0) => Err("must be at least 1".into()),
        Ok(n) => Ok(n),
        Err(e) => Err(e.to_string()),
    }
}

/// splitmix64: a small deterministic generator (the same data every run).
pub(super) struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn f(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

/// Zipf-like sampler over `n` items (weight 1 / rank^s).
struct Zipf(Vec<f64>);

impl Zipf {
    fn new(n: usize, s: f64) -> Zipf {
        let mut acc = 0.0;
        Zipf(
            (1..=n)
                .map(|r| {
                    acc += 1.0 / (r as f64).powf(s);
                    acc
                })
                .collect(),
        )
    }
    fn sample(&self, rng: &mut Rng) -> usize {
        let x = rng.f() * self.0.last().copied().unwrap_or(1.0);
        self.0.partition_point(|c| *c < x).min(self.0.len() - 1)
    }
}

/// Events per visitor: weight (rank+1)^-0.7, scaled to `total`, at least one each.
fn activity(total: u64, visitors: usize) -> Vec<u64> {
    let w: Vec<f64> = (0..visitors).map(|i| ((i + 1) as f64).powf(-0.7)).collect();
    let sum: f64 = w.iter().sum();
    let spare = total - visitors as u64;
    let mut n: Vec<u64> = w
        .iter()
        .map(|x| 1 + (spare as f64 * x / sum) as u64)
        .collect();
    let mut left = total - n.iter().sum::<u64>();
    let mut i = 0;
    while left > 0 {
        n[i % visitors] += 1;
        left -= 1;
        i += 1;
    }
    n
}

/// `YYYY-MM-DD hh:mm:ss` (UTC) for unix seconds, as ClickHouse reads a DateTime: the protocol
/// crate's RFC 3339 form (`YYYY-MM-DDThh:mm:ss.mmmZ`) cut to seconds.
fn datetime(secs: i64) -> String {
    let t = waymark_protocol::time::format_rfc3339(secs * 1000);
    format!("{} {}", &t[..10], &t[11..19])
}

const COLUMNS: &str = "site, visitor_id, message_id, type, event, name, anonymous_id, user_id, \
timestamp, timestamp_ms, client_time, received_at_ms, session_id, page_url, page_title, \
device_type, browser, os, country, city, geo_timezone, product_id, product_name, price, \
quantity, currency, order_id, revenue, engaged_ms, properties, traits";

/// One visitor's fixed attributes.
pub(super) struct Visitor {
    anon: String,
    second: Option<String>,
    user: Option<String>,
    country: usize,
    device: (&'static str, &'static str, &'static str),
}

#[allow(clippy::too_many_arguments)]
/// What varies between the rows `push_row` writes.
struct Row<'a> {
    kind: &'a str,
    event: &'a str,
    name: &'a str,
    page: (&'a str, &'a str),
    product: Option<(usize, Option<f64>)>,
    order: Option<(&'a str, f64)>,
    engaged_ms: u64,
    traits: &'a str,
}

impl<'a> Row<'a> {
    /// A track event on `page`, with nothing else set.
    fn track(event: &'a str, page: (&'a str, &'a str)) -> Row<'a> {
        Row {
            kind: "track",
            event,
            name: "",
            page,
            product: None,
            order: None,
            engaged_ms: 0,
            traits: "{}",
        }
    }
}

/// Writes one event row (TSV, the columns of `COLUMNS`).
#[allow(clippy::too_many_arguments)]
fn push_row(
    out: &mut String,
    v: &Visitor,
    anon: &str,
    user: &str,
    msg: &str,
    ts: i64,
    session: &str,
    row: &Row<'_>,
) {
    let Row {
        kind,
        event,
        name,
        page,
        product,
        order,
        engaged_ms,
        traits,
    } = *row;
    let (country, city, tz, _) = COUNTRIES[v.country];
    let secs = datetime(ts.div_euclid(1000));
    let (pid, pname, price) = match product {
        Some((p, price)) => (format!("p{p}"), format!("Product {p}"), price),
        None => (String::new(), String::new(), None),
    };
    let price_s = price
        .map(|p| format!("{p:.2}"))
        .unwrap_or_else(|| "\\N".into());
    let qty = if price.is_some() { "1" } else { "\\N" };
    let currency = if price.is_some() || order.is_some() {
        "EUR"
    } else {
        ""
    };
    let (order_id, revenue) = match order {
        Some((o, r)) => (o, format!("{r:.2}")),
        None => ("", "\\N".to_string()),
    };
    let props = if let Some((o, r)) = order {
        format!(r#"{{"order_id":"{o}","revenue":{r:.2},"currency":"EUR"}}"#)
    } else if engaged_ms > 0 {
        format!(r#"{{"engaged_ms":{engaged_ms},"scroll_depth":60,"product_id":"{pid}"}}"#)
    } else if !pid.is_empty() {
        format!(
            r#"{{"product_id":"{pid}","name":"{pname}","price":{}}}"#,
            price.unwrap_or(0.0)
        )
    } else {
        "{}".to_string()
    };
    let visitor_id = if anon.is_empty() { user } else { anon };
    let _ = writeln!(
        out,
        "{SITE}\t{visitor_id}\t{msg}\t{kind}\t{event}\t{name}\t{anon}\t{user}\t{secs}\t{ts}\t{secs}\t{ts}\t{session}\t{}\t{}\t{}\t{}\t{}\t{country}\t{city}\t{tz}\t{pid}\t{pname}\t{price_s}\t{qty}\t{currency}\t{order_id}\t{revenue}\t{engaged_ms}\t{props}\t{traits}",
        page.0, page.1, v.device.0, v.device.1, v.device.2
    );
}

/// Generates one visitor's history into `out`, and its identity links (TSV) into `ids`.
#[allow(clippy::too_many_arguments)]
fn visitor_history(
    i: usize,
    n: u64,
    v: &Visitor,
    products: &Zipf,
    now: i64,
    rng: &mut Rng,
    out: &mut String,
    ids: &mut String,
) {
    let sessions = n.div_ceil(15).max(1);
    let mut left = n;
    let identify_at = v.user.as_ref().map(|_| rng.below(n));
    let mut k = 0u64;
    let mut identified = false;
    for s in 0..sessions {
        let in_session = if s + 1 == sessions {
            left
        } else {
            (n / sessions).min(left)
        };
        left -= in_session;
        let mut ts = now - (rng.f() * 90.0 * DAY_MS as f64) as i64;
        let session = format!("s{i}-{s}");
        // The second device is used for some sessions of two-device users.
        let anon = match &v.second {
            Some(b) if s % 3 == 1 => b.as_str(),
            _ => v.anon.as_str(),
        };
        for _ in 0..in_session {
            ts = (ts + 5_000 + rng.below(115_000) as i64).min(now - 1_000);
            let msg = format!("m{i}-{k}");
            let user = if identified {
                v.user.as_deref().unwrap_or("")
            } else {
                ""
            };
            if identify_at == Some(k) {
                let u = v.user.as_deref().unwrap_or("");
                let traits = format!(
                    r#"{{"email":"{u}@example.com","plan":"{}"}}"#,
                    ["free", "pro", "team"][i % 3]
                );
                let row = Row {
                    kind: "identify",
                    traits: &traits,
                    ..Row::track("", ("", ""))
                };
                push_row(out, v, anon, u, &msg, ts, &session, &row);
                identified = true;
                let _ = writeln!(
                    ids,
                    "{SITE}\t{u}\t{}\t{}\t{msg}\tidentify",
                    v.anon,
                    datetime(ts / 1000)
                );
                if let Some(b) = &v.second {
                    let _ = writeln!(
                        ids,
                        "{SITE}\t{u}\t{b}\t{}\t{msg}-2\tidentify",
                        datetime(ts / 1000)
                    );
                }
                k += 1;
                continue;
            }
            let p = products.sample(rng);
            let r = rng.f();
            let page_url = format!("https://shop.example/p/{p}");
            let title = format!("Product {p}");
            let page = (page_url.as_str(), title.as_str());
            let order = format!("o{i}-{k}");
            let row = if r < 0.35 {
                Row {
                    kind: "page",
                    event: "",
                    name: &title,
                    ..Row::track("", page)
                }
            } else if r < 0.55 {
                Row {
                    product: Some((p, None)),
                    ..Row::track("Product Viewed", page)
                }
            } else if r < 0.70 {
                Row {
                    product: Some((p, None)),
                    engaged_ms: 1_000 + rng.below(120_000),
                    ..Row::track("$engagement", page)
                }
            } else if r < 0.85 {
                Row::track("$click", page)
            } else if r < 0.92 {
                Row {
                    product: Some((p, Some(5.0 + (p % 200) as f64))),
                    ..Row::track("Product Added", page)
                }
            } else if r < 0.93 {
                Row {
                    product: Some((p, None)),
                    ..Row::track("Product Removed", page)
                }
            } else if r < 0.945 {
                Row {
                    order: Some((&order, 10.0 + rng.below(30_000) as f64 / 100.0)),
                    ..Row::track(
                        "Order Completed",
                        ("https://shop.example/checkout", "Checkout"),
                    )
                }
            } else {
                Row::track("Search", ("https://shop.example/search", "Search"))
            };
            // Half of the identified people's orders are confirmed by the shop's backend, with
            // the user id only (a server-side call): their user id is a visitor id too.
            let anon = if row.order.is_some() && identified && i.is_multiple_of(2) {
                ""
            } else {
                anon
            };
            push_row(out, v, anon, user, &msg, ts, &session, &row);
            k += 1;
        }
    }
}

/// Blocks of 200k rows: the materialized views aggregate each block in memory (uniqExact and
/// groupUniqArray states per visitor and product), and 1M-row blocks exceed the test server's
/// 4 GB query memory limit. The ingest writer's own batches are at most 100k rows by default.
const INSERT_BLOCK_ROWS: &str = "200000";

fn insert_client(ch: &ClickHouse, sql: &str) -> Result<Child> {
    let client = waymark_testkit::client_command();
    Command::new(&client[0])
        .args(&client[1..])
        .args([
            "--host",
            "127.0.0.1",
            "--port",
            &ch.tcp_port().to_string(),
            "--max_insert_block_size",
            INSERT_BLOCK_ROWS,
            "--query",
            sql,
        ])
        .stdin(Stdio::piped())
        .spawn()
        .context("running clickhouse-client (apt-get install -y clickhouse-client)")
}

fn count(ch: &ClickHouse, sql: &str) -> u64 {
    ch.query(sql)
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0)
}

/// The visitors (ids, country, device) and how many events each has; the generator is
/// returned too, so the history that follows is the same on every run.
pub(super) fn population(o: &Args) -> (Rng, Vec<Visitor>, Vec<u64>) {
    let mut rng = Rng(0x5EED);
    let n = activity(o.events, o.visitors);
    let country_cdf: Vec<f64> = COUNTRIES
        .iter()
        .scan(0.0, |a, c| {
            *a += c.3;
            Some(*a)
        })
        .collect();
    let devices = [
        ("mobile", "Mobile Safari", "iOS"),
        ("mobile", "Chrome", "Android"),
        ("desktop", "Chrome", "Windows 10"),
        ("desktop", "Safari", "Mac OSX"),
        ("tablet", "Safari", "iPad"),
    ];
    let visitors: Vec<Visitor> = (0..o.visitors)
        .map(|i| {
            let identified = rng.f() < 0.25;
            let two = identified && rng.f() < 0.2;
            let c = rng.f() * country_cdf.last().copied().unwrap_or(1.0);
            Visitor {
                anon: format!("a{i}"),
                second: two.then(|| format!("a{i}-2")),
                user: identified.then(|| format!("u{i}")),
                country: country_cdf
                    .partition_point(|x| *x < c)
                    .min(COUNTRIES.len() - 1),
                device: devices[rng.below(devices.len() as u64) as usize],
            }
        })
        .collect();
    (rng, visitors, n)
}

/// Loads the synthetic history of `population`.
pub(super) fn load(
    ch: &ClickHouse,
    db: &str,
    o: &Args,
    now: i64,
    (mut rng, visitors, n): (Rng, Vec<Visitor>, Vec<u64>),
) -> Result<(Vec<Visitor>, Vec<u64>)> {
    let products = Zipf::new(PRODUCTS, 1.0);
    let mut events = insert_client(
        ch,
        &format!("INSERT INTO {db}.events ({COLUMNS}) FORMAT TabSeparated"),
    )?;
    let mut stdin = events.stdin.take().context("clickhouse-client stdin")?;
    let mut ids = String::new();
    let mut buf = String::with_capacity(72 << 20);
    let started = Instant::now();
    let mut sent: u64 = 0;
    let mut last_print = Instant::now();
    for (i, v) in visitors.iter().enumerate() {
        visitor_history(i, n[i], v, &products, now, &mut rng, &mut buf, &mut ids);
        sent += n[i];
        if buf.len() > 64 << 20 || i + 1 == visitors.len() {
            stdin
                .write_all(buf.as_bytes())
                .context("streaming rows to clickhouse-client")?;
            buf.clear();
            if last_print.elapsed() > Duration::from_millis(500) || i + 1 == visitors.len() {
                let secs = started.elapsed().as_secs_f64();
                eprint!(
                    "\r  loading: {sent:>10} / {} events ({:>5.1} %), {:>7.0} events/s, {secs:>5.0} s ",
                    o.events,
                    100.0 * sent as f64 / o.events as f64,
                    sent as f64 / secs
                );
                last_print = Instant::now();
            }
        }
    }
    drop(stdin);
    let st = events.wait()?;
    eprintln!();
    if !st.success() {
        bail!("clickhouse-client failed loading events");
    }
    let mut idc = insert_client(ch, &format!("INSERT INTO {db}.identities (site, user_id, anonymous_id, linked_at, message_id, source_type) FORMAT TabSeparated"))?;
    idc.stdin
        .take()
        .context("stdin")?
        .write_all(ids.as_bytes())?;
    if !idc.wait()?.success() {
        bail!("clickhouse-client failed loading identities");
    }
    println!(
        "loaded {} events and {} identity links in {:.1} s ({:.0} events/s including the materialized views)",
        count(ch, &format!("SELECT count() FROM {db}.events")),
        count(ch, &format!("SELECT count() FROM {db}.identities")),
        started.elapsed().as_secs_f64(),
        o.events as f64 / started.elapsed().as_secs_f64()
    );
    Ok((visitors, n))
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(120)))
        .build()
        .into()
}

/// One timed request; returns (milliseconds, status, body length).
fn timed(
    agent: &ureq::Agent,
    method: &str,
    url: &str,
    body: Option<&str>,
    accept: &str,
) -> Result<(f64, u16, String)> {
    let t = Instant::now();
    let mut r = if method == "POST" {
        agent
            .post(url)
            .header("authorization", format!("Bearer {READ_KEY}"))
            .header("content-type", "application/json")
            .header("accept", accept)
            .send(body.unwrap_or(""))?
    } else {
        agent
            .get(url)
            .header("authorization", format!("Bearer {READ_KEY}"))
            .call()?
    };
    let status = r.status().as_u16();
    let text = r.body_mut().with_config().limit(1 << 30).read_to_string()?;
    Ok((t.elapsed().as_secs_f64() * 1000.0, status, text))
}

fn pct(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i]
}

#[derive(Default)]
struct Timing {
    ms: Vec<f64>,
    errors: usize,
    /// Status and the start of the body of the first non-200 answers, printed under the line.
    failures: Vec<String>,
}

/// How many non-200 answers a [`Timing`] line shows in full.
const FAILURES_SHOWN: usize = 10;

impl Timing {
    /// Records one answer of [`timed`]; returns its body.
    fn add(&mut self, (ms, status, text): (f64, u16, String)) -> String {
        self.ms.push(ms);
        if status != 200 {
            self.errors += 1;
            if self.failures.len() < FAILURES_SHOWN {
                let body: String = text.chars().take(300).collect();
                self.failures.push(format!("{status} {body}"));
            }
        }
        text
    }

    fn line(&mut self, what: &str, target: &str) -> String {
        self.ms.sort_by(|a, b| a.total_cmp(b));
        format!(
            "{what:<28} n={:<5} p50 {:>7.1} ms   p99 {:>7.1} ms   max {:>7.1} ms   (target p99 <= {target}){}",
            self.ms.len(),
            pct(&self.ms, 0.5),
            pct(&self.ms, 0.99),
            self.ms.last().copied().unwrap_or(f64::NAN),
            if self.errors > 0 {
                let shown: String = self
                    .failures
                    .iter()
                    .map(|f| format!("\n      non-200: {f}"))
                    .collect();
                format!("   {} non-200 answers!{shown}", self.errors)
            } else {
                String::new()
            }
        )
    }
}

pub fn run(root: &Path, o: &Args) -> Result<()> {
    if o.events < o.visitors as u64 {
        bail!(
            "--events {} is fewer than --visitors {}: need at least one event per visitor",
            o.events,
            o.visitors
        );
    }
    let binary = match &o.server {
        Some(path) => path.clone(),
        None => crate::server::build_release(root)?,
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
    // With --keep: the database `bench`, reused when its marker matches this run's size.
    let kept_now = match &o.keep {
        None => None,
        Some(_) => ch
            .query(&format!(
                "SELECT now_ms FROM bench.bench_meta WHERE events = {} AND visitors = {} AND generator = {GENERATOR} FORMAT TSV",
                o.events, o.visitors
            ))
            .ok()
            .and_then(|s| s.trim().parse::<i64>().ok()),
    };
    let db = match (&o.keep, kept_now) {
        (None, _) => ch.fresh_database().map_err(|e| anyhow::anyhow!("{e}"))?,
        (Some(_), Some(_)) => "bench".to_string(),
        (Some(_), None) => {
            for sql in ["DROP DATABASE IF EXISTS bench", "CREATE DATABASE bench"] {
                ch.query(sql).map_err(|e| anyhow::anyhow!("{sql}: {e}"))?;
            }
            "bench".to_string()
        }
    };
    let dir = std::env::temp_dir().join(format!("waymark-bench-query-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let config = |name: &str| {
        IngestConfig::new()
            .clickhouse(&ch.http_url(), &db)
            .spool(&dir.join(name).join("spool"))
            .site(site(SITE, "wk_bench", &[]))
            .read_key(READ_KEY, &[SITE])
            .with(|c| c.query.cache_ttl = HumanDuration(Duration::ZERO))
    };
    let server = IngestServer::start(
        &binary,
        &config("ingest"),
        &dir.join("ingest"),
        &[("RUST_LOG", "warn")],
    )
    .map_err(|e| anyhow::anyhow!("{e}"))?;
    let addr = server.addr;
    // Wait for the server's migrations (tables and materialized views; on kept data a new
    // query table backfills from `events`, which takes a while).
    let started = Instant::now();
    let mut said = String::new();
    loop {
        // `"schema":"ok"`, `"schema":"migrating: 106 query_history"`, ...
        let ready = timed(&agent(), "GET", &format!("http://{addr}/readyz"), None, "")
            .ok()
            .and_then(|(_, _, body)| {
                let rest = &body[body.find("\"schema\":\"")? + 10..];
                Some(rest[..rest.find('"')?].to_string())
            })
            .unwrap_or_default();
        if ready == "ok" {
            break;
        }
        if ready != said {
            println!("  schema: {ready}");
            said = ready;
        }
        if started.elapsed() > Duration::from_secs(1800) {
            bail!("the ingest server did not apply its migrations within 30 min");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    if started.elapsed() > Duration::from_secs(1) {
        println!(
            "  migrations applied in {:.1} s",
            started.elapsed().as_secs_f64()
        );
    }

    let (visitors, n) = if let Some(now) = kept_now {
        println!(
            "reusing the kept {} events for {} visitors (loaded {:.1} h ago)",
            o.events,
            o.visitors,
            (now_ms() - now) as f64 / 3.6e6
        );
        let (_, visitors, n) = population(o);
        (visitors, n)
    } else {
        let now = now_ms();
        println!(
            "generating and loading {} events for {} visitors...",
            o.events, o.visitors
        );
        let loaded = load(&ch, &db, o, now, population(o))?;
        if o.keep.is_some() {
            for sql in [
                "CREATE TABLE bench.bench_meta (events UInt64, visitors UInt64, now_ms Int64, generator UInt32) ENGINE = TinyLog".to_string(),
                format!("INSERT INTO bench.bench_meta VALUES ({}, {}, {now}, {GENERATOR})", o.events, o.visitors),
            ] {
                ch.query(&sql).map_err(|e| anyhow::anyhow!("{sql}: {e}"))?;
            }
        }
        loaded
    };

    // Let background merges settle (bounded), then report the parts left.
    let settle = Instant::now();
    while count(&ch, "SELECT count() FROM system.merges") > 0
        && settle.elapsed() < Duration::from_secs(120)
    {
        std::thread::sleep(Duration::from_millis(500));
    }
    let parts = ch
        .query(&format!(
            "SELECT table, count(), sum(rows) FROM system.parts WHERE database = '{db}' AND active GROUP BY table ORDER BY table FORMAT TSV"
        ))
        .unwrap_or_default();
    println!(
        "merges settled after {:.0} s; active parts (table, parts, rows):",
        settle.elapsed().as_secs_f64()
    );
    for l in parts.lines() {
        println!("  {l}");
    }

    let base = format!("http://{addr}");
    let agent = agent();
    let mut rng = Rng(0xBE7C);
    // Ids to ask for: uniform over visitors; identified ones by user id half the time.
    // (id, the visitor's events, identified: the id resolves to a user and its anonymous ids)
    let ids: Vec<(String, u64, bool)> = (0..o.samples)
        .map(|_| {
            let i = rng.below(visitors.len() as u64) as usize;
            let v = &visitors[i];
            let id = match &v.user {
                Some(u) if rng.f() < 0.5 => u.clone(),
                _ => v.anon.clone(),
            };
            (id, n[i], v.user.is_some())
        })
        .collect();
    let profile_url = |id: &str| format!("{base}/v1/profiles/{id}?site={SITE}");
    let history_url = |id: &str| format!("{base}/v1/profiles/{id}/events?site={SITE}&limit=50");
    let audience_url = format!("{base}/v1/audiences/query?site={SITE}");
    let get = |url: &str| timed(&agent, "GET", url, None, "");
    let audience = |accept: &str| timed(&agent, "POST", &audience_url, Some(CART_AUDIENCE), accept);
    // The intake load, started before the warm-up so that the writer's inserts and
    // ClickHouse's merges of them are in their steady state when the timing starts.
    let stop = Arc::new(AtomicBool::new(false));
    let load = o.with_load.map(|rate| {
        println!(
            "intake load: {rate} events/s into the same server, for as long as the timing lasts"
        );
        let (url, stop) = (format!("{base}/v1/batch"), stop.clone());
        std::thread::spawn(move || {
            super::ingest::paced_until(&url, rate.div_ceil(20), 24 * 3600, "load", &stop)
        })
    });
    if load.is_some() {
        std::thread::sleep(Duration::from_secs(10));
    }
    println!("warming up...");
    for (id, _, _) in ids.iter().take(20) {
        get(&profile_url(id))?;
        get(&history_url(id))?;
    }

    println!(
        "timing {} profiles, {} event histories, 30 audiences...",
        ids.len(),
        ids.len()
    );
    let mut profile = Timing::default();
    let mut history = Timing::default();
    // The same requests split by who asks: [anonymous, identified].
    let mut profile_by: [Timing; 2] = Default::default();
    let mut history_by: [Timing; 2] = Default::default();
    for (id, _, identified) in &ids {
        let p = get(&profile_url(id))?;
        profile_by[usize::from(*identified)].add((p.0, p.1, String::new()));
        profile.add(p);
        let h = get(&history_url(id))?;
        history_by[usize::from(*identified)].add((h.0, h.1, String::new()));
        history.add(h);
    }
    let mut audiences = Timing::default();
    let mut members = 0;
    let mut next_cursor = false;
    for _ in 0..30 {
        let text = audiences.add(audience("application/json")?);
        members = text.matches("\"last_seen\"").count();
        next_cursor = text.contains("\"next_cursor\":\"");
    }
    let mut stream = Timing::default();
    let mut streamed = 0;
    for _ in 0..5 {
        streamed = stream
            .add(audience("application/x-ndjson")?)
            .lines()
            .count();
    }
    // The heaviest visitor, alone.
    let heavy = (0..visitors.len()).max_by_key(|&i| n[i]).unwrap_or(0);
    let hid = visitors[heavy]
        .user
        .clone()
        .unwrap_or_else(|| visitors[heavy].anon.clone());
    let mut heavy_profile = Timing::default();
    let mut heavy_history = Timing::default();
    for _ in 0..20 {
        heavy_profile.add(get(&profile_url(&hid))?);
        heavy_history.add(get(&history_url(&hid))?);
    }
    stop.store(true, Ordering::Relaxed);
    let load = match load {
        None => None,
        Some(h) => {
            let paced = h
                .join()
                .map_err(|_| anyhow::anyhow!("the intake load panicked"))??;
            let drained = Instant::now();
            let visible = super::ingest::count_acked(&ch, &db, "load", paced.acked_events);
            Some((paced, visible, drained.elapsed()))
        }
    };
    let paired = match &o.against {
        None => None,
        Some(other) => Some(paired(
            &agent,
            (&binary, &server),
            other,
            &config("against"),
            &dir.join("against"),
            &ids,
        )?),
    };
    drop(server);

    let mut sizes: Vec<u64> = ids.iter().map(|(_, k, _)| *k).collect();
    sizes.sort_unstable();
    let mut out = std::io::stdout().lock();
    writeln!(out, "\n== cargo xtask bench query ==")?;
    writeln!(out, "data: {} events, {} visitors; sampled visitors' events: median {}, p99 {}, max {}; heaviest visitor {} events",
        o.events, o.visitors, sizes[sizes.len() / 2], sizes[(sizes.len() * 99 / 100).min(sizes.len() - 1)], sizes.last().copied().unwrap_or(0), n[heavy])?;
    let [anon, ident] = &mut profile_by;
    writeln!(out, "{}", profile.line("profile", "20 ms"))?;
    writeln!(out, "{}", anon.line("  anonymous visitors", "-"))?;
    writeln!(out, "{}", ident.line("  identified (user + anons)", "-"))?;
    let [anon, ident] = &mut history_by;
    writeln!(out, "{}", history.line("event history (limit 50)", "20 ms"))?;
    writeln!(out, "{}", anon.line("  anonymous visitors", "-"))?;
    writeln!(out, "{}", ident.line("  identified (user + anons)", "-"))?;
    writeln!(
        out,
        "{}",
        audiences.line("cart-abandonment audience", "300 ms")
    )?;
    writeln!(
        out,
        "  first page: {members} members{}; whole audience as NDJSON: {streamed} members",
        if next_cursor {
            " and a next cursor"
        } else {
            ""
        }
    )?;
    writeln!(out, "{}", stream.line("  same, whole NDJSON stream", "-"))?;
    writeln!(
        out,
        "{}",
        heavy_profile.line("heaviest visitor: profile", "-")
    )?;
    writeln!(
        out,
        "{}",
        heavy_history.line("heaviest visitor: events", "-")
    )?;
    writeln!(
        out,
        "(sequential requests over HTTP/1.1 keep-alive to the release server, cache off)"
    )?;
    if let (Some(rate), Some((paced, visible, drained))) = (o.with_load, &load) {
        writeln!(
            out,
            "intake load during the timing (target {rate} events/s): {:.0} events/s acknowledged over {:.0} s; {}",
            paced.acked_events as f64 / paced.elapsed.as_secs_f64(),
            paced.elapsed.as_secs_f64(),
            paced.summary()
        )?;
        writeln!(
            out,
            "  all {} acknowledged events visible in `events`: {}",
            paced.acked_events,
            if *visible {
                format!("yes, {:.1} s after the load ended", drained.as_secs_f64())
            } else {
                "NO, not within the drain timeout".to_string()
            }
        )?;
    }
    if let Some(p) = paired {
        write!(out, "{p}")?;
    }
    drop(ch);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

/// Times the sampled profiles and histories on `first` (already running) and on the `other`
/// binary (started here on the same database), each request sent to both in turn, the order
/// swapped every sample; returns the lines to print: p50/p99 for both, their ratio, and each
/// server's CPU per request (from /proc, so ClickHouse's share is not in it).
fn paired(
    agent: &ureq::Agent,
    (binary, server): (&Path, &IngestServer),
    other: &Path,
    config: &IngestConfig,
    dir: &Path,
    ids: &[(String, u64, bool)],
) -> Result<String> {
    let other_server = IngestServer::start(other, config, dir, &[("RUST_LOG", "warn")])
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let pids = [server.proc.id(), other_server.proc.id()];
    let bases = [server.url(), other_server.url()];
    let mut profile: [Timing; 2] = Default::default();
    let mut history: [Timing; 2] = Default::default();
    let cpu_before = pids.map(super::cpu_secs);
    println!(
        "timing {} profiles and histories on both servers in turn...",
        ids.len()
    );
    for (i, (id, _, _)) in ids.iter().enumerate() {
        let order = if i % 2 == 0 { [0, 1] } else { [1, 0] };
        for k in order {
            let base = &bases[k];
            profile[k].add(timed(
                agent,
                "GET",
                &format!("{base}/v1/profiles/{id}?site={SITE}"),
                None,
                "",
            )?);
        }
        for k in order {
            let base = &bases[k];
            history[k].add(timed(
                agent,
                "GET",
                &format!("{base}/v1/profiles/{id}/events?site={SITE}&limit=50"),
                None,
                "",
            )?);
        }
    }
    let cpu_after = pids.map(super::cpu_secs);
    let cpu_ms = |k: usize| match (cpu_after[k], cpu_before[k]) {
        (Some(a), Some(b)) => format!("{:.2} ms", (a - b) * 1e3 / (2 * ids.len()) as f64),
        _ => "?".into(),
    };
    let names = [binary.display().to_string(), other.display().to_string()];
    let mut out = String::from("\n== paired: the same requests to both servers, in turn ==\n");
    for k in 0..2 {
        out += &format!(
            "server {}: {}   server CPU per request {}\n",
            k + 1,
            names[k],
            cpu_ms(k)
        );
        out += &format!("{}\n", profile[k].line("  profile", "20 ms"));
        out += &format!(
            "{}\n",
            history[k].line("  event history (limit 50)", "20 ms")
        );
    }
    let ratio = |t: &[Timing; 2], q: f64| pct(&t[0].ms, q) / pct(&t[1].ms, q);
    out += &format!(
        "server 1 / server 2: profile p50 {:.3} p99 {:.3}; history p50 {:.3} p99 {:.3}\n",
        ratio(&profile, 0.5),
        ratio(&profile, 0.99),
        ratio(&history, 0.5),
        ratio(&history, 0.99)
    );
    drop(other_server);
    Ok(out)
}

#[cfg(test)]
mod tests {
    #[test]
    fn datetime_is_clickhouse_text_in_utc() {
        for (secs, text) in [
            (0, "1970-01-01 00:00:00"),
            (1_764_460_800, "2025-11-30 00:00:00"),
            (951_786_061, "2000-02-29 01:01:01"),
            (-1, "1969-12-31 23:59:59"),
        ] {
            assert_eq!(super::datetime(secs), text, "{secs}");
        }
    }
}
