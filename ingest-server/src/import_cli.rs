//! `ingest-server import --site S --kind customers|orders|events FILE [--map map.toml]`: reads
//! a CRM or shop export (CSV, or NDJSON), turns each row into a Segment event, and sends them
//! in chunks to a running server's `POST /v1/import` (`--url`, default the configured `listen`
//! address; `--key`, the site's write key, or `WAYMARK_WRITE_KEY`).
//!
//! Why through the server rather than straight into ClickHouse: the rows then take the one
//! validation and enrichment path, the spool's durability and the server's identity index,
//! and the CLI needs no database credentials.
//!
//! - **Rows to events.** `customers` rows become `identify` calls (traits), `orders` rows
//!   `track` calls named `Order Completed` (properties), `events` rows are Segment events as
//!   they are (NDJSON lines are sent unchanged). The map file names what each column is:
//!   `userId`, `anonymousId`, `timestamp`, `event`, `traits.<name>` or `properties.<name>`,
//!   with `:number` or `:bool` to send a number or a boolean; without a map (or for columns it
//!   does not name) the usual column names are recognised ([`Mapping::default_for`]).
//! - **Idempotent.** Each event's `messageId` is derived from the site, the kind and the row's
//!   key (`key` in the map; by default the customer or order id), so running the same file
//!   again stores nothing twice (the server drops and collapses the duplicates).
//! - **Pipelined.** `--in-flight` requests (default 2) are under way at once, so the CLI reads
//!   and converts the next chunk while the server validates and spools the one before.
//! - **Resumable.** After each chunk the server acknowledged (answers are taken in the order
//!   the chunks were sent), the last line is written to `FILE.import-state` with the file's
//!   SHA-256; a new run of the same file, site and kind
//!   starts after it (`--restart` ignores it). The state file is removed when the import
//!   completes.
//! - **Bad rows** (the CLI's own checks and the server's) are printed by line and field, never
//!   stopping the rest; the summary counts them.

use std::collections::BTreeMap;
use std::io::{BufRead as _, Read as _, Write as _};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use sha2::Digest as _;

/// What the rows of the file are.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// One customer a row: `identify` calls with traits.
    Customers,
    /// One order a row: `track` `Order Completed` calls with properties.
    Orders,
    /// Segment events (`type`, `event`, `userId`...).
    Events,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Customers => "customers",
            Kind::Orders => "orders",
            Kind::Events => "events",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Csv,
    Ndjson,
}

/// `ingest-server import`.
#[derive(Debug, clap::Args)]
pub struct ImportArgs {
    /// The site the rows belong to.
    #[arg(long)]
    pub site: String,
    /// What each row is.
    #[arg(long, value_enum)]
    pub kind: Kind,
    /// The export: CSV with a header row, or NDJSON.
    pub file: PathBuf,
    /// The column mapping (TOML): `key = "column"`, `event = "Order Completed"`, and
    /// `[columns]` entries `column = "traits.email"` (see the README).
    #[arg(long, value_name = "map.toml")]
    pub map: Option<PathBuf>,
    /// The running ingest server (default: http:// and the configured `listen` address).
    #[arg(long)]
    pub url: Option<String>,
    /// The site's write key (else the environment's `WAYMARK_WRITE_KEY`).
    #[arg(long)]
    pub key: Option<String>,
    /// The file's format (default: from its extension, `.csv` or else NDJSON).
    #[arg(long, value_enum)]
    pub format: Option<Format>,
    /// Rows per request.
    #[arg(long, default_value_t = 5000)]
    pub chunk: usize,
    /// Requests under way at once: the next chunk is read, converted and sent while the
    /// server works on the one before (the resume point still only moves past chunks
    /// acknowledged in order).
    #[arg(long, default_value_t = 2, value_name = "N")]
    pub in_flight: usize,
    /// Start from the first line even if an earlier run of this file was interrupted.
    #[arg(long)]
    pub restart: bool,
}

/// The map file.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MapFile {
    /// The column whose value identifies the row (its message id is derived from it).
    pub key: Option<String>,
    /// The event name of `orders` (default `Order Completed`) or of `events` rows without one.
    pub event: Option<String>,
    /// Column -> target (`userId`, `traits.email`, `properties.revenue:number`...).
    #[serde(default)]
    pub columns: BTreeMap<String, String>,
}

/// Where a column's value goes.
#[derive(Debug, Clone, PartialEq)]
pub enum Target {
    /// A top-level field (`userId`, `anonymousId`, `timestamp`, `event`, `type`, `messageId`).
    Top(String),
    Trait(String),
    Property(String),
    Skip,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Conv {
    Text,
    Number,
    Bool,
}

/// The mapping of one file.
#[derive(Debug, Clone)]
pub struct Mapping {
    kind: Kind,
    key: Option<String>,
    event: String,
    columns: BTreeMap<String, (Target, Conv)>,
}

fn parse_target(spec: &str) -> anyhow::Result<(Target, Conv)> {
    let (path, conv) = match spec.rsplit_once(':') {
        Some((p, "number")) => (p, Conv::Number),
        Some((p, "bool")) => (p, Conv::Bool),
        Some((p, "text")) => (p, Conv::Text),
        Some((_, other)) => bail!("{spec:?}: unknown conversion {other:?} (number, bool, text)"),
        None => (spec, Conv::Text),
    };
    let target = if let Some(t) = path.strip_prefix("traits.") {
        Target::Trait(t.to_string())
    } else if let Some(p) = path.strip_prefix("properties.") {
        Target::Property(p.to_string())
    } else if path == "skip" {
        Target::Skip
    } else if matches!(
        path,
        "userId" | "anonymousId" | "timestamp" | "event" | "type" | "messageId"
    ) {
        Target::Top(path.to_string())
    } else {
        bail!("{spec:?}: not userId, anonymousId, timestamp, event, type, messageId, traits.<name>, properties.<name> or skip")
    };
    Ok((target, conv))
}

impl Mapping {
    /// The mapping from a map file (columns it does not name are recognised as without one).
    pub fn new(kind: Kind, file: MapFile) -> anyhow::Result<Self> {
        let mut columns = BTreeMap::new();
        for (col, spec) in &file.columns {
            columns.insert(
                col.clone(),
                parse_target(spec).with_context(|| format!("map: columns.{col}"))?,
            );
        }
        Ok(Mapping {
            kind,
            key: file.key,
            event: file.event.unwrap_or_else(|| "Order Completed".into()),
            columns,
        })
    }

    /// Where an unmapped column goes, by its usual name.
    pub fn default_for(&self, col: &str) -> (Target, Conv) {
        let c = col.to_ascii_lowercase();
        let top = |s: &str| (Target::Top(s.into()), Conv::Text);
        match (self.kind, c.as_str()) {
            (_, "user_id" | "userid" | "customer_id" | "customerid") => top("userId"),
            (_, "anonymous_id" | "anonymousid") => top("anonymousId"),
            (_, "timestamp" | "created_at" | "ordered_at" | "date" | "time") => top("timestamp"),
            (Kind::Events, "type" | "event" | "messageid" | "message_id") => {
                top(match c.as_str() {
                    "messageid" | "message_id" => "messageId",
                    other => other,
                })
            }
            (Kind::Customers, _) => (Target::Trait(col.into()), Conv::Text),
            (
                Kind::Orders | Kind::Events,
                "revenue" | "total" | "price" | "quantity" | "value" | "amount",
            ) => (
                Target::Property(if c == "total" || c == "amount" {
                    "revenue".into()
                } else {
                    c.clone()
                }),
                Conv::Number,
            ),
            (Kind::Orders | Kind::Events, _) => (Target::Property(col.into()), Conv::Text),
        }
    }

    fn target(&self, col: &str) -> (Target, Conv) {
        self.columns
            .get(col)
            .cloned()
            .unwrap_or_else(|| self.default_for(col))
    }

    /// The key column of a row and its value: the map's `key`, else the usual id column.
    fn key_of<'a>(&self, row: &'a [(String, Value)]) -> Option<(&'a str, &'a Value)> {
        let names: &[&str] = match (&self.key, self.kind) {
            (Some(_), _) => &[],
            (None, Kind::Customers) => &["customer_id", "user_id", "id", "userId"],
            (None, Kind::Orders) => &["order_id", "orderId", "id"],
            (None, Kind::Events) => &["messageId", "message_id"],
        };
        row.iter()
            .find(|(c, _)| match &self.key {
                Some(k) => c == k,
                None => names.contains(&c.as_str()),
            })
            .map(|(c, v)| (c.as_str(), v))
    }

    /// A row (column -> value) as a Segment event, with its message id derived from `site`,
    /// the kind and the row's key. `Err((field, reason))` for a row that cannot be one.
    pub fn event(&self, site: &str, row: &[(String, Value)]) -> Result<Value, (String, String)> {
        let mut ev = Map::new();
        let mut traits = Map::new();
        let mut props = Map::new();
        for (col, raw) in row {
            let (target, conv) = self.target(col);
            let value = match convert(raw, conv) {
                Ok(Some(v)) => v,
                Ok(None) => continue,
                Err(why) => return Err((col.clone(), why)),
            };
            match target {
                Target::Top(t) if t == "timestamp" => {
                    let text = value.as_str().unwrap_or_default();
                    ev.insert(t, Value::String(rfc3339(text)));
                }
                Target::Top(t) => {
                    ev.insert(t, value);
                }
                Target::Trait(t) => {
                    traits.insert(t, value);
                }
                Target::Property(p) => {
                    props.insert(p, value);
                }
                Target::Skip => {}
            }
        }
        let key = match self.key_of(row) {
            Some((col, v)) => {
                let k = text_of(v);
                if k.is_empty() && self.kind != Kind::Events {
                    return Err((col.to_string(), "missing: the row's key is empty".into()));
                }
                k
            }
            None if self.kind == Kind::Events => String::new(),
            None => {
                return Err((
                    self.key.clone().unwrap_or_else(|| "key".into()),
                    "missing: the row needs a key column (set `key` in the map)".into(),
                ))
            }
        };
        match self.kind {
            Kind::Customers => {
                ev.insert("type".into(), "identify".into());
                ev.insert("traits".into(), Value::Object(traits));
            }
            Kind::Orders => {
                ev.insert("type".into(), "track".into());
                ev.entry("event")
                    .or_insert(Value::String(self.event.clone()));
                props
                    .entry("order_id")
                    .or_insert_with(|| Value::String(key.clone()));
                ev.insert("properties".into(), Value::Object(props));
            }
            Kind::Events => {
                if !traits.is_empty() {
                    ev.insert("traits".into(), Value::Object(traits));
                }
                if !props.is_empty() {
                    ev.insert("properties".into(), Value::Object(props));
                }
            }
        }
        if !key.is_empty() && !ev.contains_key("messageId") {
            ev.insert(
                "messageId".into(),
                Value::String(message_id(site, self.kind, &key)),
            );
        }
        Ok(Value::Object(ev))
    }
}

/// The message id of an imported row: the site, the kind and the row's key, hashed.
pub fn message_id(site: &str, kind: Kind, key: &str) -> String {
    let mut h = sha2::Sha256::new();
    for part in [site, kind.name(), key] {
        h.update(part.as_bytes());
        h.update(b"\n");
    }
    format!("imp-{}", hex::encode(&h.finalize()[..16]))
}

fn text_of(v: &Value) -> String {
    match v {
        Value::String(s) => s.trim().to_string(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

/// A cell converted; `None` for an empty cell (left out).
fn convert(raw: &Value, conv: Conv) -> Result<Option<Value>, String> {
    let text = match raw {
        Value::String(s) => s.trim(),
        Value::Null => return Ok(None),
        other => return Ok(Some(other.clone())),
    };
    if text.is_empty() {
        return Ok(None);
    }
    Ok(Some(match conv {
        Conv::Text => Value::String(text.to_string()),
        Conv::Number => {
            let n: f64 = text
                .parse()
                .map_err(|_| format!("{text:?} is not a number"))?;
            serde_json::Number::from_f64(n)
                .map(Value::Number)
                .ok_or_else(|| format!("{text:?} is not a finite number"))?
        }
        Conv::Bool => match text.to_ascii_lowercase().as_str() {
            "true" | "1" | "yes" => Value::Bool(true),
            "false" | "0" | "no" => Value::Bool(false),
            _ => return Err(format!("{text:?} is not true or false")),
        },
    }))
}

/// Dates as exports write them, as RFC 3339: `2024-03-01` (midnight UTC), `2024-03-01
/// 12:00:00` (UTC); anything else is sent as it is (the server says what is wrong with it).
pub fn rfc3339(s: &str) -> String {
    let s = s.trim();
    let b = s.as_bytes();
    if b.len() == 10 && b[4] == b'-' && b[7] == b'-' {
        return format!("{s}T00:00:00Z");
    }
    if b.len() == 19 && b[10] == b' ' {
        return format!("{}T{}Z", &s[..10], &s[11..]);
    }
    if b.len() == 19 && b[10] == b'T' {
        return format!("{s}Z");
    }
    s.to_string()
}

/// Where an interrupted import stopped.
#[derive(Debug, Serialize, Deserialize, PartialEq)]
struct State {
    sha256: String,
    site: String,
    kind: Kind,
    /// Every line up to this one is done.
    line: u64,
}

fn state_path(file: &Path) -> PathBuf {
    let mut p = file.as_os_str().to_owned();
    p.push(".import-state");
    PathBuf::from(p)
}

fn file_sha256(file: &Path) -> anyhow::Result<String> {
    let mut f = std::fs::File::open(file).with_context(|| format!("opening {}", file.display()))?;
    let mut h = sha2::Sha256::new();
    let mut buf = vec![0; 1 << 20];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex::encode(h.finalize()))
}

/// One row read from the file: its line, and its cells (or the NDJSON line as it is).
enum Row {
    Cells(u64, Vec<(String, Value)>),
    Raw(u64, String),
    Bad(u64, String, String),
}

/// The server's answer (`crate::intake::import::ImportReport`).
#[derive(Debug, Deserialize, Default)]
struct Report {
    #[serde(default)]
    accepted: u64,
    #[serde(default)]
    rejected: Vec<Rejected>,
    #[serde(default)]
    rejected_lines: u64,
    #[serde(default)]
    suppressed: u64,
    #[serde(default)]
    acknowledged_lines: u64,
    #[serde(default)]
    error: Option<String>,
    #[serde(default)]
    message: Option<String>,
}

#[derive(Debug, Deserialize)]
struct Rejected {
    line: u64,
    field: String,
    reason: String,
}

/// What an import did.
#[derive(Debug, Default)]
pub struct Summary {
    pub lines: u64,
    pub sent: u64,
    pub accepted: u64,
    pub rejected: u64,
    pub suppressed: u64,
    pub resumed_after: u64,
}

/// Bad rows printed at most (all are counted).
const MAX_PRINTED: u64 = 100;

pub async fn run(args: ImportArgs, default_url: String) -> anyhow::Result<Summary> {
    let format =
        args.format
            .unwrap_or_else(|| match args.file.extension().and_then(|e| e.to_str()) {
                Some(e) if e.eq_ignore_ascii_case("csv") => Format::Csv,
                _ => Format::Ndjson,
            });
    let map = match &args.map {
        Some(p) => {
            let text =
                std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?;
            toml::from_str::<MapFile>(&text).with_context(|| format!("map file {}", p.display()))?
        }
        None => MapFile::default(),
    };
    let mapping = Mapping::new(args.kind, map)?;
    let key = match args
        .key
        .clone()
        .or_else(|| std::env::var("WAYMARK_WRITE_KEY").ok())
    {
        Some(k) if !k.is_empty() => k,
        _ => bail!("--key: missing (the site's write key; or set WAYMARK_WRITE_KEY)"),
    };
    let sha = file_sha256(&args.file)?;
    let state_file = state_path(&args.file);
    let mut summary = Summary::default();
    if !args.restart {
        if let Ok(text) = std::fs::read_to_string(&state_file) {
            if let Ok(s) = serde_json::from_str::<State>(&text) {
                if s.sha256 == sha && s.site == args.site && s.kind == args.kind {
                    summary.resumed_after = s.line;
                }
            }
        }
    }
    let url = format!(
        "{}/v1/import?site={}",
        args.url.unwrap_or(default_url).trim_end_matches('/'),
        form_urlencode(&args.site)
    );
    let client = reqwest::Client::new();
    let size = std::fs::metadata(&args.file)?.len();
    let bar = indicatif::ProgressBar::new(size);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{bar:40} {bytes}/{total_bytes} {per_sec} eta {eta} {msg}",
        )
        .expect("a valid template"),
    );
    let file = std::fs::File::open(&args.file)?;
    let counted = CountingReader {
        inner: file,
        bar: bar.clone(),
    };
    let mut printed = 0u64;
    let mut report_bad = |line: u64, field: &str, reason: &str, summary: &mut Summary| {
        summary.rejected += 1;
        if printed < MAX_PRINTED {
            printed += 1;
            bar.suspend(|| eprintln!("line {line}: {field}: {reason}"));
        }
    };
    let mut rows: Box<dyn Iterator<Item = Row>> = match format {
        Format::Csv => {
            let mut r = csv::ReaderBuilder::new()
                .flexible(false)
                .from_reader(counted);
            let headers: Vec<String> = r
                .headers()
                .context("reading the CSV header")?
                .iter()
                .map(|h| h.trim().to_string())
                .collect();
            Box::new(r.into_records().map(move |rec| match rec {
                Ok(rec) => {
                    let line = rec.position().map_or(0, |p| p.line());
                    Row::Cells(
                        line,
                        headers
                            .iter()
                            .cloned()
                            .zip(rec.iter().map(|v| Value::String(v.to_string())))
                            .collect(),
                    )
                }
                Err(e) => {
                    let line = e.position().map_or(0, |p| p.line());
                    Row::Bad(line, "csv".into(), e.to_string())
                }
            }))
        }
        Format::Ndjson => {
            let kind = args.kind;
            let lines = std::io::BufReader::new(counted).lines();
            Box::new(lines.enumerate().filter_map(move |(i, l)| {
                let line = i as u64 + 1;
                match l {
                    Err(e) => Some(Row::Bad(line, "line".into(), e.to_string())),
                    Ok(l) if l.trim().is_empty() => None,
                    Ok(l) if kind == Kind::Events => Some(Row::Raw(line, l)),
                    Ok(l) => match serde_json::from_str::<Map<String, Value>>(&l) {
                        Ok(obj) => Some(Row::Cells(line, obj.into_iter().collect())),
                        Err(e) => Some(Row::Bad(
                            line,
                            "line".into(),
                            format!("not a JSON object: {e}"),
                        )),
                    },
                }
            }))
        }
    };
    let started = Instant::now();
    let in_flight = args.in_flight.max(1);
    let client = std::sync::Arc::new((client, url, key));
    // Chunks sent and not yet answered, oldest first: (their line numbers, the request). The
    // answers are taken in order, so the state file only ever names a line up to which every
    // chunk was acknowledged, whatever order the server finishes them in.
    let mut pending: std::collections::VecDeque<(
        Vec<u64>,
        tokio::task::JoinHandle<anyhow::Result<Report>>,
    )> = std::collections::VecDeque::new();
    let mut chunk: Vec<(u64, String)> = Vec::with_capacity(args.chunk);
    loop {
        let next = rows.next();
        let end = next.is_none();
        if let Some(row) = next {
            let line = match &row {
                Row::Cells(l, _) | Row::Raw(l, _) | Row::Bad(l, _, _) => *l,
            };
            summary.lines = summary.lines.max(line);
            if line <= summary.resumed_after {
                continue;
            }
            match row {
                Row::Bad(l, field, why) => report_bad(l, &field, &why, &mut summary),
                Row::Raw(l, text) => chunk.push((l, text)),
                Row::Cells(l, cells) => match mapping.event(&args.site, &cells) {
                    Ok(ev) => chunk.push((l, ev.to_string())),
                    Err((field, why)) => report_bad(l, &field, &why, &mut summary),
                },
            }
        }
        if chunk.len() >= args.chunk || (end && !chunk.is_empty()) {
            let lines: Vec<u64> = chunk.iter().map(|c| c.0).collect();
            let texts: Vec<String> = chunk.drain(..).map(|c| c.1).collect();
            let c = client.clone();
            pending.push_back((
                lines,
                tokio::spawn(async move { send(&c.0, &c.1, &c.2, &texts).await }),
            ));
        }
        // Wait for the oldest answer once `in_flight` chunks are out, and for all at the end.
        while pending.len() >= in_flight || (end && !pending.is_empty()) {
            let (lines, request) = pending.pop_front().expect("a chunk in flight");
            let report = request.await.context("sending a chunk")??;
            summary.sent += lines.len() as u64;
            summary.accepted += report.accepted;
            summary.suppressed += report.suppressed;
            for r in &report.rejected {
                let line = lines
                    .get((r.line as usize).saturating_sub(1))
                    .copied()
                    .unwrap_or(0);
                report_bad(line, &r.field, &r.reason, &mut summary);
            }
            // Counted but not listed by the server (beyond its list).
            summary.rejected += report
                .rejected_lines
                .saturating_sub(report.rejected.len() as u64);
            let state = State {
                sha256: sha.clone(),
                site: args.site.clone(),
                kind: args.kind,
                line: lines.last().copied().unwrap_or(0),
            };
            std::fs::write(&state_file, serde_json::to_vec(&state)?)
                .with_context(|| format!("writing {}", state_file.display()))?;
            bar.set_message(format!(
                "{} rows/s",
                (summary.sent as f64 / started.elapsed().as_secs_f64().max(1e-3)) as u64
            ));
        }
        if end {
            break;
        }
    }
    bar.finish_and_clear();
    let _ = std::fs::remove_file(&state_file);
    Ok(summary)
}

/// Sends one chunk (gzip NDJSON), retrying what the server did not acknowledge (a full
/// spool, a broken connection) with backoff; the answer for the whole chunk, line numbers
/// 1-based in the chunk.
async fn send(
    client: &reqwest::Client,
    url: &str,
    key: &str,
    chunk: &[String],
) -> anyhow::Result<Report> {
    let mut done = 0usize;
    let mut total = Report::default();
    let mut delay = Duration::from_millis(500);
    for attempt in 1.. {
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        for line in &chunk[done..] {
            gz.write_all(line.as_bytes())?;
            gz.write_all(b"\n")?;
        }
        let body = gz.finish()?;
        let resp = client
            .post(url)
            .basic_auth(key, None::<&str>)
            .header("content-type", "application/x-ndjson")
            .header("content-encoding", "gzip")
            .body(body)
            .send()
            .await;
        let (status, report) = match resp {
            Ok(r) => {
                let status = r.status();
                let text = r.text().await.unwrap_or_default();
                (
                    Some(status),
                    serde_json::from_str::<Report>(&text).unwrap_or_else(|_| Report {
                        error: Some(text),
                        ..Report::default()
                    }),
                )
            }
            Err(e) => (
                None,
                Report {
                    error: Some(e.to_string()),
                    ..Report::default()
                },
            ),
        };
        total.accepted += report.accepted;
        total.suppressed += report.suppressed;
        total.rejected_lines += report.rejected_lines;
        total
            .rejected
            .extend(report.rejected.into_iter().map(|mut r| {
                r.line += done as u64;
                r
            }));
        done += report.acknowledged_lines as usize;
        match status {
            Some(s) if s.is_success() && done >= chunk.len() => return Ok(total),
            Some(s) if s.is_client_error() => bail!(
                "the server refused the import ({s}): {}",
                report.message.or(report.error).unwrap_or_default()
            ),
            _ if attempt >= 10 => bail!(
                "the server did not take the rows after {attempt} attempts: {}",
                report.message.or(report.error).unwrap_or_default()
            ),
            _ => {
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(30));
            }
        }
    }
    unreachable!("the loop returns or fails")
}

fn form_urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Moves the progress bar as the file is read.
struct CountingReader<R> {
    inner: R,
    bar: indicatif::ProgressBar,
}

impl<R: std::io::Read> std::io::Read for CountingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.bar.inc(n as u64);
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cells(pairs: &[(&str, &str)]) -> Vec<(String, Value)> {
        pairs
            .iter()
            .map(|(c, v)| (c.to_string(), Value::String(v.to_string())))
            .collect()
    }

    #[test]
    fn customers_become_identify_calls_keyed_by_customer_id() {
        let m = Mapping::new(Kind::Customers, MapFile::default()).unwrap();
        let ev = m
            .event(
                "shop",
                &cells(&[
                    ("customer_id", "c1"),
                    ("email", " Ada@Example.com "),
                    ("created_at", "2023-02-01"),
                    ("city", ""),
                ]),
            )
            .unwrap();
        assert_eq!(ev["type"], "identify");
        assert_eq!(ev["userId"], "c1");
        assert_eq!(ev["traits"]["email"], "Ada@Example.com");
        assert_eq!(ev["timestamp"], "2023-02-01T00:00:00Z");
        assert!(
            ev["traits"].get("city").is_none(),
            "empty cells are left out"
        );
        assert_eq!(ev["messageId"], message_id("shop", Kind::Customers, "c1"));
        let again = m
            .event("shop", &cells(&[("customer_id", "c1"), ("email", "x@y.z")]))
            .unwrap();
        assert_eq!(
            again["messageId"], ev["messageId"],
            "the key decides the id"
        );
    }

    #[test]
    fn orders_follow_the_map_and_bad_cells_name_their_column() {
        let map: MapFile = toml::from_str(
            r#"
key = "order_no"
[columns]
order_no = "properties.order_id"
cust = "userId"
placed = "timestamp"
total_eur = "properties.revenue:number"
"#,
        )
        .unwrap();
        let m = Mapping::new(Kind::Orders, map).unwrap();
        let ev = m
            .event(
                "shop",
                &cells(&[
                    ("order_no", "o9"),
                    ("cust", "c1"),
                    ("placed", "2022-05-06 07:08:09"),
                    ("total_eur", "12.5"),
                    ("currency", "EUR"),
                ]),
            )
            .unwrap();
        assert_eq!(ev["type"], "track");
        assert_eq!(ev["event"], "Order Completed");
        assert_eq!(ev["timestamp"], "2022-05-06T07:08:09Z");
        assert_eq!(ev["properties"]["revenue"], 12.5);
        assert_eq!(ev["properties"]["order_id"], "o9");
        assert_eq!(ev["properties"]["currency"], "EUR");
        let err = m
            .event("shop", &cells(&[("order_no", "o9"), ("total_eur", "abc")]))
            .unwrap_err();
        assert_eq!(err.0, "total_eur");
        let err = m.event("shop", &cells(&[("cust", "c1")])).unwrap_err();
        assert_eq!(err.0, "order_no");
        assert!(Mapping::new(
            Kind::Orders,
            toml::from_str("[columns]\na = \"nowhere\"").unwrap()
        )
        .is_err());
    }
}
