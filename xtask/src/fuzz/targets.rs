//! The fuzz targets: every place a byte from outside (a client, the edge, the disk) is parsed.
//!
//! Each target makes its own seeds (valid inputs of its kind), draws inputs from them with
//! [`Gen`], runs the code under test on each and names the outcome (the report counts them, so
//! one sees how many inputs got past the first check). Where the code documents a property, the
//! target asserts it too: a broken property is reported like a panic.

use std::io::Write as _;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context as _, Result};
use axum::body::Body;
use axum::http::Request;
use serde_json::value::RawValue;
use serde_json::{json, Value};
use tower::ServiceExt as _;
use waymark_edge::config::{Config as EdgeConfig, GpcMode};
use waymark_edge::process::{process, RequestParts};
use waymark_ingest::http::body;
use waymark_ingest::intake::enrich::{to_row, RequestFacts, UaParser};
use waymark_ingest::spool::record::{self, Decoded, Format};
use waymark_ingest::spool::{resync, rows, Spool};
use waymark_protocol::edge::{sign, verify, HEADER_SIGNATURE, HEADER_TIMESTAMP};
use waymark_protocol::intake::{IntakePath, PATHS};
use waymark_protocol::limits::{MAX_BATCH_BYTES, MAX_ID_LEN};
use waymark_protocol::time::format_rfc3339;
use waymark_protocol::{parse_batch, parse_events, parse_single, EventType, Validated};
use waymark_testkit::config::{site, IngestConfig};

use super::gen::Gen;

/// One generated case: bytes, and a number the target reads its choices from (an event type, an
/// encoding, a path), so that the two together say exactly what was run.
pub struct Input {
    pub bytes: Vec<u8>,
    pub pick: u64,
}

pub trait Target {
    /// The next case.
    fn input(&mut self, g: &mut Gen) -> Input;
    /// Runs one case and says what happened (counted per label in the report).
    fn run(&mut self, input: &Input) -> String;
}

/// A constructor, called on the thread that fuzzs the target.
pub type Make = fn(&mut Gen, i64) -> Result<Box<dyn Target>>;

/// Every target, in the order they run.
pub fn all() -> Vec<(&'static str, Make)> {
    vec![
        ("protocol parse_batch", |g, now| {
            Ok(Box::new(ParseBatch::new(g, now)))
        }),
        ("protocol parse_single", |g, now| {
            Ok(Box::new(ParseSingle::new(g, now)))
        }),
        ("protocol parse_events", |g, now| {
            Ok(Box::new(ParseEvents::new(g, now)))
        }),
        ("ingest body decode", |g, now| {
            Ok(Box::new(BodyDecode::new(g, now)))
        }),
        ("spool record decode", |g, _| {
            Ok(Box::new(RecordDecode::new(g)))
        }),
        ("spool resync", |g, _| Ok(Box::new(Resync::new(g)))),
        ("spool recovery", |g, _| Ok(Box::new(Recovery::new(g)?))),
        ("spool rows decode", |g, now| {
            Ok(Box::new(RowsDecode::new(g, now)))
        }),
        ("edge signature verify", |g, now| {
            Ok(Box::new(Verify::new(g, now)))
        }),
        ("ingest /v1/edge", |g, now| {
            Ok(Box::new(Router::new(g, now, Route::Edge)?))
        }),
        ("ingest /v1/batch", |g, now| {
            Ok(Box::new(Router::new(g, now, Route::Intake)?))
        }),
        ("edge worker process", |g, now| {
            Ok(Box::new(EdgeProcess::new(g, now)))
        }),
    ]
}

fn to_bytes(v: &Value) -> Vec<u8> {
    serde_json::to_vec(v).expect("a Value serialises")
}

/// `n` batches, plus the two at and past the event-count limit.
fn batch_seeds(g: &mut Gen, now: i64, n: usize) -> Vec<Vec<u8>> {
    let mut seeds: Vec<Vec<u8>> = (0..n).map(|_| to_bytes(&g.batch(now))).collect();
    seeds.extend(g.limit_batches().iter().map(to_bytes));
    seeds
}

const KINDS: [EventType; 6] = EventType::ALL;

/// What the protocol crate promises of every event it keeps, and that every item of a batch is
/// either kept or rejected with its index.
fn check_validated(v: &Validated, items: Option<usize>) {
    for e in &v.events {
        assert!(
            !e.message_id.is_empty() && e.message_id.len() <= MAX_ID_LEN,
            "kept an event whose messageId is empty or too long: {:?}",
            e.message_id
        );
        let has = |s: &Option<String>| s.as_deref().is_some_and(|s| !s.is_empty());
        assert!(
            has(&e.anonymous_id) || has(&e.user_id),
            "kept an event with neither userId nor anonymousId"
        );
    }
    if let Some(n) = items {
        assert_eq!(
            v.events.len() + v.rejected_events(),
            n,
            "kept + rejected events != items in the batch"
        );
    }
}

fn validated_label(r: &Result<Validated, waymark_protocol::BatchError>) -> String {
    match r {
        Ok(v) if !v.events.is_empty() => "accepted: events kept".into(),
        Ok(v) if !v.rejections.is_empty() => "accepted: every event rejected".into(),
        Ok(_) => "accepted: empty".into(),
        Err(e) => format!("refused: {}", e.code()),
    }
}

/// The number of items in a body's `batch` array, if it has one.
fn batch_items(body: &[u8]) -> Option<usize> {
    #[derive(serde::Deserialize)]
    struct B<'a> {
        #[serde(borrow)]
        batch: Vec<&'a RawValue>,
    }
    serde_json::from_slice::<B<'_>>(body)
        .ok()
        .map(|b| b.batch.len())
}

struct ParseBatch {
    seeds: Vec<Vec<u8>>,
    now: i64,
}

impl ParseBatch {
    fn new(g: &mut Gen, now: i64) -> Self {
        ParseBatch {
            seeds: batch_seeds(g, now, 60),
            now,
        }
    }
}

impl Target for ParseBatch {
    fn input(&mut self, g: &mut Gen) -> Input {
        Input {
            bytes: g.input(&self.seeds),
            pick: 0,
        }
    }
    fn run(&mut self, input: &Input) -> String {
        let r = parse_batch(&input.bytes, self.now);
        if let Ok(v) = &r {
            check_validated(v, batch_items(&input.bytes));
        }
        validated_label(&r)
    }
}

struct ParseSingle {
    seeds: Vec<Vec<u8>>,
    now: i64,
}

impl ParseSingle {
    fn new(g: &mut Gen, now: i64) -> Self {
        let seeds = (0..60)
            .map(|_| {
                let mut e = g.event(now);
                e["writeKey"] = json!("wk_fuzz");
                if g.chance(0.5) {
                    e.as_object_mut().expect("an object").remove("type");
                }
                to_bytes(&e)
            })
            .collect();
        ParseSingle { seeds, now }
    }
}

impl Target for ParseSingle {
    fn input(&mut self, g: &mut Gen) -> Input {
        Input {
            bytes: g.input(&self.seeds),
            pick: g.u64(),
        }
    }
    fn run(&mut self, input: &Input) -> String {
        let kind = KINDS[(input.pick % 6) as usize];
        let r = parse_single(&input.bytes, kind, self.now);
        if let Ok(v) = &r {
            check_validated(v, Some(1));
            assert!(
                v.events.iter().all(|e| e.kind == kind),
                "a single-event endpoint kept an event of another type"
            );
        }
        validated_label(&r)
    }
}

struct ParseEvents {
    seeds: Vec<Vec<u8>>,
    now: i64,
}

impl ParseEvents {
    fn new(g: &mut Gen, now: i64) -> Self {
        let seeds = (0..60)
            .map(|_| {
                let b = g.batch(now);
                to_bytes(&b["batch"])
            })
            .collect();
        ParseEvents { seeds, now }
    }
}

impl Target for ParseEvents {
    fn input(&mut self, g: &mut Gen) -> Input {
        // What reaches it has been parsed as a JSON array already: mutated as JSON (inputs
        // that are no array after all are counted as not fed).
        let mut bytes = g.input_json(&self.seeds);
        for _ in 0..5 {
            if bytes.first() == Some(&b'[') {
                break;
            }
            bytes = g.input_json(&self.seeds);
        }
        Input {
            bytes,
            pick: g.u64(),
        }
    }
    fn run(&mut self, input: &Input) -> String {
        // The ingest server hands it the raw events of an envelope: what serde_json parsed.
        let Ok(events) = serde_json::from_slice::<Vec<&RawValue>>(&input.bytes) else {
            return "not a JSON array (not fed)".into();
        };
        let sent_at = match input.pick % 4 {
            0 => None,
            1 => Some(format_rfc3339(self.now - 1000)),
            2 => Some(String::from_utf8_lossy(&input.bytes[..input.bytes.len().min(40)]).into()),
            _ => Some("2026-11-30T12:00:00+25:00".to_string()),
        };
        let r = parse_events(&events, sent_at.as_deref(), self.now);
        if let Ok(v) = &r {
            check_validated(v, Some(events.len()));
        }
        validated_label(&r)
    }
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(data).expect("writing to memory");
    e.finish().expect("writing to memory")
}

struct BodyDecode {
    seeds: Vec<Vec<u8>>,
}

impl BodyDecode {
    fn new(g: &mut Gen, now: i64) -> Self {
        let mut seeds: Vec<Vec<u8>> = batch_seeds(g, now, 20).iter().map(|b| gzip(b)).collect();
        // Two members in one stream, an empty one, and bombs around the cap.
        let mut two = gzip(b"{\"batch\":[");
        two.extend(gzip(b"]}"));
        seeds.push(two);
        seeds.push(gzip(b""));
        seeds.push(gzip(&vec![b' '; MAX_BATCH_BYTES]));
        seeds.push(gzip(&vec![b' '; MAX_BATCH_BYTES + 1]));
        seeds.push(gzip(&vec![0u8; 10 << 20]));
        seeds.extend(batch_seeds(g, now, 5));
        BodyDecode { seeds }
    }
}

const ENCODINGS: [Option<&str>; 7] = [
    None,
    Some("gzip"),
    Some("x-gzip"),
    Some(" GZIP "),
    Some("identity"),
    Some("br"),
    Some("gzip, gzip"),
];

impl Target for BodyDecode {
    fn input(&mut self, g: &mut Gen) -> Input {
        Input {
            bytes: g.input(&self.seeds),
            pick: g.u64(),
        }
    }
    fn run(&mut self, input: &Input) -> String {
        let mut headers = axum::http::HeaderMap::new();
        if let Some(enc) = ENCODINGS[(input.pick % 7) as usize] {
            headers.insert(
                axum::http::header::CONTENT_ENCODING,
                enc.parse().expect("a valid header value"),
            );
        }
        let limit = [MAX_BATCH_BYTES, 1024, 0, 8 << 20][((input.pick >> 8) % 4) as usize];
        match body::decode(&headers, &input.bytes, limit) {
            Ok(out) => {
                assert!(
                    out.len() <= limit,
                    "decoded {} bytes past the limit of {limit}",
                    out.len()
                );
                "decoded".into()
            }
            Err(e) => format!("refused: {} {}", e.status().as_u16(), e.code()),
        }
    }
}

/// Spool segments: 1 to 12 records of rows payloads, in the current format or the old one.
fn segment_seeds(g: &mut Gen, now: i64, n: usize) -> Vec<Vec<u8>> {
    let payloads = rows_seeds(g, now, 12);
    (0..n)
        .map(|i| {
            let mut seg = Vec::new();
            for _ in 0..1 + g.below(8) {
                let p = g.pick(&payloads);
                let at = now as u64 + g.below(10_000) as u64;
                if i % 4 == 3 {
                    waymark_ingest::spool::record::encode_v1(&mut seg, at, p);
                } else {
                    record::encode(&mut seg, at, p);
                }
            }
            seg
        })
        .collect()
}

struct RecordDecode {
    seeds: Vec<Vec<u8>>,
}

impl RecordDecode {
    fn new(g: &mut Gen) -> Self {
        let now = waymark_ingest::clock::now_ms();
        RecordDecode {
            seeds: segment_seeds(g, now, 40),
        }
    }
}

fn check_decoded(d: &Decoded<'_>, buf: &[u8], header: usize) -> &'static str {
    match d {
        Decoded::Record { payload, size, .. } => {
            assert!(*size <= buf.len(), "a record longer than its buffer");
            assert_eq!(
                payload.len() + header,
                *size,
                "payload length != size - header"
            );
            "record"
        }
        Decoded::Incomplete { need } => {
            assert!(
                *need > buf.len(),
                "incomplete although {need} bytes are there"
            );
            "incomplete"
        }
        Decoded::Corrupt => "corrupt",
    }
}

impl Target for RecordDecode {
    fn input(&mut self, g: &mut Gen) -> Input {
        Input {
            bytes: g.input(&self.seeds),
            pick: 0,
        }
    }
    fn run(&mut self, input: &Input) -> String {
        let b = &input.bytes;
        let v2 = check_decoded(&record::decode(b), b, record::HEADER_LEN);
        let v1 = check_decoded(&record::decode_v1(b), b, record::V1_HEADER_LEN);
        assert_eq!(
            Format::V2.decode(b),
            record::decode(b),
            "Format::V2.decode differs from decode"
        );
        if b.len() >= record::HEADER_LEN {
            let _ = record::v2_plausible(b);
        }
        if b.len() >= record::V1_HEADER_LEN {
            let _ = record::v1_plausible(b);
        }
        format!("v2 {v2}, v1 {v1}")
    }
}

struct Resync {
    seeds: Vec<Vec<u8>>,
}

impl Resync {
    fn new(g: &mut Gen) -> Self {
        let now = waymark_ingest::clock::now_ms();
        Resync {
            seeds: segment_seeds(g, now, 40),
        }
    }
}

impl Target for Resync {
    fn input(&mut self, g: &mut Gen) -> Input {
        Input {
            bytes: g.input(&self.seeds),
            pick: 0,
        }
    }
    fn run(&mut self, input: &Input) -> String {
        let data = &input.bytes;
        let format = resync::detect(data).expect("reading memory cannot fail");
        let mut damaged = 0;
        for f in [Format::V2, Format::V1] {
            let w = resync::walk(data, f).expect("reading memory cannot fail");
            let mut end = 0;
            for r in &w.damaged {
                assert!(
                    r.start >= end && r.start < r.end && r.end <= data.len() as u64,
                    "damaged ranges out of order or outside the segment: {:?}",
                    w.damaged
                );
                end = r.end;
            }
            if f == format {
                damaged = w.damaged.len();
            }
        }
        let f = match format {
            Format::V1 => "v1",
            Format::V2 => "v2",
        };
        if damaged == 0 {
            format!("{f}: intact")
        } else {
            format!("{f}: damaged ranges skipped")
        }
    }
}

/// Whole recoveries: a segment file written to a fresh spool directory, [`Spool::open`], then
/// every record read back the way the writer reads them.
struct Recovery {
    seeds: Vec<Vec<u8>>,
    base: tempfile::TempDir,
    case: u64,
}

impl Recovery {
    fn new(g: &mut Gen) -> Result<Self> {
        let now = waymark_ingest::clock::now_ms();
        // Memory-backed when the machine has it: this target is about parsing, not the disk.
        let shm = std::path::Path::new("/dev/shm");
        let base = if shm.is_dir() {
            tempfile::Builder::new()
                .prefix("waymark-fuzz-")
                .tempdir_in(shm)
        } else {
            tempfile::Builder::new().prefix("waymark-fuzz-").tempdir()
        }
        .context("creating a directory for spool cases")?;
        Ok(Recovery {
            seeds: segment_seeds(g, now, 30),
            base,
            case: 0,
        })
    }
}

impl Target for Recovery {
    fn input(&mut self, g: &mut Gen) -> Input {
        Input {
            bytes: g.input(&self.seeds),
            pick: g.u64(),
        }
    }
    fn run(&mut self, input: &Input) -> String {
        self.case += 1;
        let dir: PathBuf = self.base.path().join(self.case.to_string());
        std::fs::create_dir_all(&dir).expect("creating a case directory");
        // The generated bytes as a sealed segment followed by an intact one, or as the only
        // (active) segment; sometimes with a checkpoint inside it.
        let sealed = input.pick.is_multiple_of(2);
        std::fs::write(dir.join("00000000000000000000.wal"), &input.bytes).expect("writing");
        if sealed {
            let mut next = Vec::new();
            record::encode(&mut next, 1_700_000_000_000, b"\x01\x00\x00\x00\x00");
            let name = format!("{:020}.wal", input.bytes.len());
            std::fs::write(dir.join(name), next).expect("writing");
        }
        if (input.pick >> 1).is_multiple_of(3) {
            // `pos: u64 LE | crc32(pos)`, as `Spool::commit` writes it.
            let at = (input.pick >> 8) % (input.bytes.len() as u64 + 1);
            let mut cp = at.to_le_bytes().to_vec();
            cp.extend_from_slice(&crc32fast::hash(&at.to_le_bytes()).to_le_bytes());
            std::fs::write(dir.join("checkpoint"), cp).expect("writing");
        }
        let label = match Spool::open(&dir, 64 << 20, 256 << 10) {
            Ok((spool, rec)) => {
                let mut reader = spool.reader();
                let mut n = 0usize;
                let mut failed = false;
                for _ in 0..100_000 {
                    match reader.read(1 << 20) {
                        Ok(batch) if batch.is_empty() => break,
                        Ok(batch) => n += batch.len(),
                        Err(_) => {
                            failed = true;
                            break;
                        }
                    }
                }
                drop(spool);
                match (
                    failed,
                    n,
                    rec.damaged_ranges + u64::from(rec.torn_bytes > 0),
                ) {
                    (true, _, _) => "opened, read error".to_string(),
                    (false, 0, 0) => "opened, nothing to read".to_string(),
                    (false, 0, _) => "opened, only damage".to_string(),
                    (false, _, 0) => "opened, records read".to_string(),
                    (false, _, _) => "opened, records read past damage".to_string(),
                }
            }
            Err(e) => format!(
                "open refused: {}",
                e.to_string().split(':').next().unwrap_or("")
            ),
        };
        let _ = std::fs::remove_dir_all(&dir);
        label
    }
}

fn rows_seeds(g: &mut Gen, now: i64, n: usize) -> Vec<Vec<u8>> {
    let ua = UaParser::default();
    let facts = RequestFacts {
        site: "fuzz",
        ip_mode: waymark_protocol::edge::IpMode::Truncate,
        received_at_ms: now,
        batch_sent_at: None,
        source: "api",
        peer_ip: Some("203.0.113.9".to_string()),
        geo: None,
        client: None,
        urls: Default::default(),
        gpc: false,
        request_ip: Default::default(),
    };
    let mut seeds = Vec::new();
    while seeds.len() < n {
        let body = to_bytes(&g.batch_of(now, 5));
        let Ok(v) = parse_batch(&body, now) else {
            continue;
        };
        let rows: Vec<_> = v.events.iter().map(|e| to_row(e, &facts, &ua)).collect();
        if seeds.len() % 5 == 4 {
            // The JSON payloads of earlier versions, still read.
            seeds.push(serde_json::to_vec(&rows).expect("rows serialise"));
        } else {
            seeds.push(rows::encode(&rows));
        }
    }
    seeds
}

struct RowsDecode {
    seeds: Vec<Vec<u8>>,
}

impl RowsDecode {
    fn new(g: &mut Gen, now: i64) -> Self {
        RowsDecode {
            seeds: rows_seeds(g, now, 40),
        }
    }
}

impl Target for RowsDecode {
    fn input(&mut self, g: &mut Gen) -> Input {
        Input {
            bytes: g.input(&self.seeds),
            pick: 0,
        }
    }
    fn run(&mut self, input: &Input) -> String {
        match rows::decode(&input.bytes) {
            Ok(r) => {
                // The binary format has one encoding per row list: what decodes re-encodes
                // to the same bytes.
                if input.bytes.first() == Some(&rows::TAG_BINARY_V2) {
                    assert!(
                        rows::encode(&r) == input.bytes,
                        "binary rows decoded, but re-encode to other bytes"
                    );
                }
                "decoded".into()
            }
            Err(e) => {
                let s = format!("{e:?}");
                format!("refused: {}", s.split(['(', ' ', '{']).next().unwrap_or(""))
            }
        }
    }
}

const SECRET: &str = "fuzz-edge-secret";

struct Verify {
    seeds: Vec<Vec<u8>>,
    now: i64,
}

impl Verify {
    /// Inputs are `timestamp \n signature \n body`.
    fn new(g: &mut Gen, now: i64) -> Self {
        let seeds = (0..40)
            .map(|_| {
                let body = to_bytes(&g.batch(now));
                let ts = now / 1000 - g.below(400) as i64;
                let mut s = format!("{ts}\n{}\n", sign(SECRET.as_bytes(), ts, &body)).into_bytes();
                s.extend(body);
                s
            })
            .collect();
        Verify { seeds, now }
    }
}

impl Target for Verify {
    fn input(&mut self, g: &mut Gen) -> Input {
        Input {
            bytes: g.input(&self.seeds),
            pick: 0,
        }
    }
    fn run(&mut self, input: &Input) -> String {
        let mut parts = input.bytes.splitn(3, |&b| b == b'\n');
        let ts = String::from_utf8_lossy(parts.next().unwrap_or_default()).into_owned();
        let sig = String::from_utf8_lossy(parts.next().unwrap_or_default()).into_owned();
        let body = parts.next().unwrap_or_default();
        match verify(SECRET.as_bytes(), &ts, &sig, body, self.now / 1000, 300) {
            Ok(()) => {
                // Accepted only with the signature of this timestamp and body (in any case).
                let t: i64 = ts
                    .trim()
                    .parse()
                    .expect("verify accepted an unparsable timestamp");
                let want = sign(SECRET.as_bytes(), t, body);
                assert!(
                    sig.trim().eq_ignore_ascii_case(&want),
                    "verify accepted a signature that is not the body's"
                );
                "accepted".into()
            }
            Err(e) => format!("refused: {e:?}")
                .split(['(', ' ', '{'])
                .take(2)
                .collect::<Vec<_>>()
                .join(" "),
        }
    }
}

#[derive(Clone, Copy, PartialEq)]
enum Route {
    /// `/v1/edge`, signed.
    Edge,
    /// The Segment intake paths.
    Intake,
}

/// The ingest server's whole HTTP app in process (`waymark_ingest::app`), called with
/// `oneshot`: the handler, the body reading and decoding, the signature and envelope checks,
/// validation and enrichment. Its spool refuses every append (a cap of one byte), so a request
/// that gets that far is answered 503 without touching the disk.
struct Router {
    seeds: Vec<Vec<u8>>,
    route: Route,
    app: axum::Router,
    rt: tokio::runtime::Runtime,
    _dir: tempfile::TempDir,
}

impl Router {
    fn new(g: &mut Gen, now: i64, route: Route) -> Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("waymark-fuzz-app-")
            .tempdir()
            .context("creating a spool directory")?;
        let config = IngestConfig::new()
            .clickhouse("http://127.0.0.1:9", "fuzz")
            .spool(dir.path())
            .edge_secret(SECRET)
            .site(site("fuzz", "wk_fuzz", &["https://shop.example"]))
            .build()
            .map_err(|e| anyhow::anyhow!("fuzz config: {e}"))?;
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("a runtime")?;
        let (spool, _) = Spool::open(&dir.path().join("spool"), 1, 256 << 10)
            .map_err(|e| anyhow::anyhow!("opening the fuzz spool: {e}"))?;
        let app = {
            let _guard = rt.enter();
            let schema = Arc::new(waymark_ingest::store::SchemaStatus::ready_now());
            let query = waymark_ingest::query::QueryState::new(&config.query, &config.clickhouse);
            let state = waymark_ingest::AppState::new(
                config,
                spool,
                Arc::new(waymark_ingest::metrics::Metrics::default()),
                schema,
                None,
            );
            waymark_ingest::app(state, query)
        };
        let seeds = match route {
            Route::Edge => (0..40)
                .map(|_| {
                    let envelopes: Vec<Value> = (0..1 + g.below(3))
                        .map(|_| {
                            let b = g.batch_of(now, 10);
                            json!({
                                "writeKey": if g.chance(0.9) { "wk_fuzz" } else { "wk_other" },
                                "receivedAt": format_rfc3339(now - g.below(5000) as i64),
                                "sentAt": b.get("sentAt").cloned().unwrap_or(Value::Null),
                                "geo": {"country": "DE", "city": g.text(), "latitude": 52.5, "asn": 3320, "colo": "FRA"},
                                "client": {"ip": "203.0.113.0", "userAgent": g.text(), "gpc": g.chance(0.2), "botScore": g.below(100), "bot": false},
                                "events": b["batch"],
                            })
                        })
                        .collect();
                    to_bytes(&json!({ "envelopes": envelopes }))
                })
                .collect(),
            Route::Intake => {
                let mut s = batch_seeds(g, now, 40);
                s.extend((0..20).map(|_| to_bytes(&g.event(now))));
                s
            }
        };
        Ok(Router {
            seeds,
            route,
            app,
            rt,
            _dir: dir,
        })
    }
}

impl Target for Router {
    fn input(&mut self, g: &mut Gen) -> Input {
        Input {
            bytes: g.input(&self.seeds),
            pick: g.u64(),
        }
    }
    fn run(&mut self, input: &Input) -> String {
        let pick = input.pick;
        let gz = pick.is_multiple_of(4);
        let body = if gz {
            gzip(&input.bytes)
        } else {
            input.bytes.clone()
        };
        let mut req = Request::post("/");
        match self.route {
            Route::Edge => {
                // Signed afresh, with the clock the server checks the window against (varied
                // timestamps keep the replay guard out of the way), wrongly one time in eight.
                let ts = waymark_ingest::clock::now_ms() / 1000 - (pick >> 8) as i64 % 200;
                let mut sig = sign(SECRET.as_bytes(), ts, &body);
                if (pick >> 2).is_multiple_of(8) {
                    sig = sig.replace('a', "b");
                }
                req = Request::post("/v1/edge")
                    .header(HEADER_TIMESTAMP, ts.to_string())
                    .header(HEADER_SIGNATURE, sig);
            }
            Route::Intake => {
                let (path, kind) = PATHS[((pick >> 2) % PATHS.len() as u64) as usize];
                let uri = if path.starts_with("/beacon") {
                    format!("{path}?writeKey=wk_fuzz")
                } else {
                    path.to_string()
                };
                req = req.uri(uri);
                if (pick >> 6).is_multiple_of(2) {
                    // Segment SDKs: the write key as the Basic user ("wk_fuzz:").
                    req = req.header("authorization", "Basic d2tfZnV6ejo=");
                }
                if (pick >> 7).is_multiple_of(4) {
                    req = req.header("origin", "https://shop.example");
                }
                let ct = if matches!(kind, IntakePath::Batch) && (pick >> 9).is_multiple_of(2) {
                    "text/plain"
                } else {
                    "application/json"
                };
                req = req.header("content-type", ct);
            }
        }
        if gz {
            req = req.header("content-encoding", "gzip");
        }
        let req = req.body(Body::from(body)).expect("a valid request");
        let app = self.app.clone();
        let status = self
            .rt
            .block_on(async move { app.oneshot(req).await.map(|r| r.status().as_u16()) })
            .expect("the router is infallible");
        assert!(
            status != 500,
            "the ingest server answered 500 (an internal error) to a request"
        );
        match status {
            503 => "503 (parsed to the end; the spool refuses)".into(),
            s => s.to_string(),
        }
    }
}

struct EdgeProcess {
    seeds: Vec<Vec<u8>>,
    cfs: Vec<Value>,
    now: i64,
    configs: Vec<EdgeConfig>,
}

impl EdgeProcess {
    fn new(g: &mut Gen, now: i64) -> Self {
        let mut seeds = batch_seeds(g, now, 40);
        seeds.extend((0..20).map(|_| to_bytes(&g.event(now))));
        let berlin = json!({
            "country": "DE", "region": "Berlin", "regionCode": "BE", "city": "Berlin",
            "postalCode": "10115", "latitude": "52.52000", "longitude": "13.40500",
            "timezone": "Europe/Berlin", "continent": "EU", "asn": 3320, "colo": "FRA",
            "botManagement": {"score": 87, "verifiedBot": false},
        });
        let cfs = (0..30)
            .map(|i| {
                let mut cf = berlin.clone();
                for _ in 0..i % 4 {
                    g.mutate_json(&mut cf);
                }
                cf
            })
            .chain([Value::Null, json!({}), json!([1]), json!("cf")])
            .collect();
        let configs = [GpcMode::DropIds, GpcMode::DropEvents, GpcMode::Keep]
            .into_iter()
            .map(|gpc| EdgeConfig {
                gpc,
                ..EdgeConfig::default()
            })
            .collect();
        EdgeProcess {
            seeds,
            cfs,
            now,
            configs,
        }
    }
}

const UAS: [Option<&str>; 5] = [
    None,
    Some("Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36"),
    Some("Googlebot/2.1 (+http://www.google.com/bot.html)"),
    Some(""),
    Some("\u{0}\u{202e}😀"),
];
const IPS: [Option<&str>; 7] = [
    None,
    Some("203.0.113.77"),
    Some("2001:db8:85a3:8d3:1319:8a2e:370:7348"),
    Some("::ffff:1.2.3.4"),
    Some("1.2.3.4.5"),
    Some("[::1]"),
    Some(""),
];
const GPCS: [Option<&str>; 4] = [None, Some("1"), Some(" 1 "), Some("yes")];
const AUTHS: [Option<&str>; 5] = [
    None,
    Some("Basic d2tfZnV6ejo="),
    Some("Basic !!!"),
    Some("Bearer x"),
    Some("Basic "),
];
const QUERIES: [Option<&str>; 4] = [
    None,
    Some("writeKey=wk_fuzz"),
    Some("writeKey=%ff%fe&writeKey=x"),
    Some("a=%"),
];

impl Target for EdgeProcess {
    fn input(&mut self, g: &mut Gen) -> Input {
        Input {
            bytes: g.input(&self.seeds),
            pick: g.u64(),
        }
    }
    fn run(&mut self, input: &Input) -> String {
        let mut p = input.pick;
        let mut take = |n: usize| {
            let v = (p % n as u64) as usize;
            p /= n as u64;
            v
        };
        let kind = match take(7) {
            6 => IntakePath::Batch,
            k => IntakePath::Single(KINDS[k]),
        };
        let parts = RequestParts {
            body: &input.bytes,
            user_agent: UAS[take(UAS.len())],
            client_ip: IPS[take(IPS.len())],
            sec_gpc: GPCS[take(GPCS.len())],
            authorization: AUTHS[take(AUTHS.len())],
            query: QUERIES[take(QUERIES.len())],
            kind,
            cookie: None,
        };
        let cf = &self.cfs[take(self.cfs.len())];
        let cfg = &self.configs[take(self.configs.len())];
        match process(&parts, cf, cfg, self.now) {
            Ok(out) => {
                if let Some(env) = &out.envelope {
                    assert_eq!(
                        env.events.len(),
                        out.summary.accepted,
                        "the envelope holds another number of events than the tag is told"
                    );
                }
                if out.summary.accepted > 0 {
                    "accepted: events forwarded".into()
                } else {
                    "accepted: nothing to forward".into()
                }
            }
            Err(e) => format!("refused: {} {}", e.status(), e.code()),
        }
    }
}
