//! Bulk import (`POST /v1/import?site=S`): NDJSON in the Segment shape, one event a line, of
//! any size. The handler (`crate::http::import`) reads the body as a stream and hands it here
//! [`CHUNK_LINES`] lines at a time; nothing holds more than one chunk.
//!
//! Each chunk goes through the intake's own steps: validation by the protocol crate
//! ([`waymark_protocol::check_import_event`]: every check of `/v1/batch` but the window in the
//! past), the site's tracking plan, enrichment ([`super::enrich::to_row`]), identifiers from
//! traits ([`super::identifiers`]), the suppression list, duplicates, and the spool: a chunk is
//! counted as acknowledged only once its record is fsynced, like any intake.
//!
//! What differs from live intake, and why:
//! - **Time.** An imported event keeps its own `timestamp` (else `originalTimestamp`), however
//!   old (`skew_rule` `import`); one in the future is clamped to receipt. Its `source` column
//!   is `import`, so queries can tell history from live traffic.
//! - **Idempotency.** A line without `messageId` gets one derived from the site and the line's
//!   bytes ([`message_id`]); the CLI derives it from the source row's key. Importing the same
//!   file again makes the same rows, which the dedup window and the `ReplacingMergeTree`
//!   collapse: nothing is stored twice.
//! - **No rate limit.** An import is bounded by the spool instead: a full spool makes the
//!   chunk wait and retry ([`ADMIT_PATIENCE`]) rather than fail the whole import.
//! - **Partitions.** `events` is partitioned by month and current ClickHouse refuses an insert
//!   touching more than 100 partitions. Each chunk's rows are sorted by time, so consecutive
//!   records cover few months; and the writer splits a batch ClickHouse refuses for that
//!   reason (`crate::store::delivery`), so years of history still arrive.
//! - **Bad lines** are listed by line number and field (the first [`MAX_LISTED`]; all are
//!   counted) and never stop the rest.

use serde::Serialize;
use serde_json::Value;
use sha2::Digest as _;
use waymark_protocol::limits::MAX_EVENT_BYTES;
use waymark_protocol::time::parse_rfc3339;
use waymark_protocol::{check_import_event, Validated};

use super::enrich::{datetime, to_row, RequestFacts};
use super::error::ApiError;
use super::Intake;
use crate::config::SiteConfig;
use crate::store::row::{EventRow, LINK_ROW};

/// Lines per chunk: one spool record each (about 1 MB of rows).
pub const CHUNK_LINES: usize = 2000;
/// Rejected lines listed in the answer; beyond that they are only counted.
pub const MAX_LISTED: usize = 1000;
/// How long a chunk waits for room in a full spool before the import stops (what was
/// acknowledged stays; the answer says up to which line).
pub const ADMIT_PATIENCE: std::time::Duration = std::time::Duration::from_secs(120);

/// One refused line.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct LineRejection {
    /// 1-based line number in the body.
    pub line: u64,
    pub field: String,
    pub reason: String,
}

/// The answer to an import.
#[derive(Debug, Default, Serialize)]
pub struct ImportReport {
    /// Lines read (empty lines included).
    pub lines: u64,
    /// Events stored (durably spooled); identifier links not counted.
    pub accepted: u64,
    /// Lines refused.
    pub rejected_lines: u64,
    /// The first [`MAX_LISTED`] refused lines.
    pub rejected: Vec<LineRejection>,
    /// Events of deleted people left out.
    pub suppressed: u64,
    /// Every line up to this one (1-based) is done: stored or refused. Equal to `lines` when
    /// the import finished; a client resumes after it.
    pub acknowledged_lines: u64,
    /// Why the import stopped early, if it did.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl ImportReport {
    fn reject(&mut self, line: u64, field: String, reason: String) {
        self.rejected_lines += 1;
        if self.rejected.len() < MAX_LISTED {
            self.rejected.push(LineRejection {
                line,
                field,
                reason,
            });
        }
    }
}

/// The message id of an imported line without one: the site and the line's bytes, hashed.
pub fn message_id(site: &str, line: &[u8]) -> String {
    let mut h = sha2::Sha256::new();
    h.update(site.as_bytes());
    h.update(b"\n");
    h.update(line);
    format!("imp-{}", hex::encode(&h.finalize()[..16]))
}

/// The time an imported event happened: its `timestamp`, else `originalTimestamp`, else
/// receipt; never later than receipt.
pub fn import_time(ev: &waymark_protocol::Event, received_at_ms: i64) -> i64 {
    let parse = |s: &Option<String>| s.as_deref().and_then(parse_rfc3339);
    parse(&ev.timestamp)
        .or_else(|| parse(&ev.original_timestamp))
        .unwrap_or(received_at_ms)
        .min(received_at_ms)
}

/// Validates and enriches one chunk of lines (`(line number, bytes)`), recording refusals in
/// `report`; returns the rows to admit (events and their identifier links), sorted by time.
pub fn chunk_rows(
    intake: &Intake,
    site: &SiteConfig,
    lines: &[(u64, Vec<u8>)],
    received_at_ms: i64,
    report: &mut ImportReport,
) -> Vec<EventRow> {
    let mut v = Validated {
        events: Vec::with_capacity(lines.len()),
        rejections: Vec::new(),
        sent_at: None,
        write_key: None,
    };
    // Positions in `v` are indexes into `lines`.
    for (pos, (_, bytes)) in lines.iter().enumerate() {
        let reject = |v: &mut Validated, reason: String| {
            v.rejections.push(waymark_protocol::Rejection {
                index: Some(pos),
                field: String::new(),
                reason,
            })
        };
        if bytes.len() > MAX_EVENT_BYTES {
            reject(
                &mut v,
                format!(
                    "line is {} bytes, more than the limit of {MAX_EVENT_BYTES}",
                    bytes.len()
                ),
            );
            continue;
        }
        let mut value: Value = match serde_json::from_slice(bytes) {
            Ok(v) => v,
            Err(e) => {
                reject(&mut v, format!("not valid JSON: {e}"));
                continue;
            }
        };
        if let Value::Object(o) = &mut value {
            if matches!(o.get("messageId"), None | Some(Value::Null)) {
                o.insert(
                    "messageId".into(),
                    Value::String(message_id(&site.id, bytes)),
                );
            }
        }
        check_import_event(pos, value, &mut v);
    }
    let verdicts = intake.check_quality(&site.id, None, &mut v.events, &mut v.rejections);
    intake.count_rejections(&site.id, &v.rejections);
    for r in &v.rejections {
        let line = r.index.map_or(0, |i| lines[i].0);
        report.reject(line, r.field.clone(), r.reason.clone());
    }
    let facts = RequestFacts {
        site: &site.id,
        ip_mode: site.ip,
        received_at_ms,
        batch_sent_at: None,
        source: "import",
        peer_ip: None,
        geo: None,
        client: None,
        urls: site.url_policy(),
        gpc: false,
        request_ip: Default::default(),
    };
    let mut rows = super::segment::with_verdicts(
        v.events.iter().map(|ev| {
            let mut row = to_row(ev, &facts, &intake.ua);
            let t = import_time(ev, received_at_ms);
            row.timestamp_ms = t;
            row.timestamp = datetime(t);
            row.client_time = row.timestamp;
            row.skew_rule = "import".into();
            row
        }),
        verdicts,
    );
    let links = super::identifiers::links_of(&rows, &v.events, &site.identity);
    rows.extend(links);
    rows.sort_by_key(|r| r.timestamp);
    rows
}

/// Admits one chunk's rows: the suppression list, duplicates, the spool (no rate limit),
/// waiting up to [`ADMIT_PATIENCE`] while the spool is full. Returns the events stored and the
/// events suppressed.
pub async fn admit_chunk(intake: &Intake, rows: Vec<EventRow>) -> Result<(u64, u64), ApiError> {
    let now = crate::clock::now_ms().div_euclid(1000) as u32;
    let rows = match intake.suppressions.filter(&rows, now) {
        Some(kept) => kept,
        None => rows,
    };
    let events = |rs: &[EventRow]| rs.iter().filter(|r| r.kind != LINK_ROW).count() as u64;
    let started = std::time::Instant::now();
    let kept = events(&rows);
    if rows.is_empty() {
        return Ok((0, 0));
    }
    loop {
        match intake
            .drop_duplicates_and_append(rows.clone(), "import")
            .await
        {
            Ok(()) => return Ok((kept, 0)),
            Err(ApiError::Overloaded {
                retry_after_secs, ..
            }) if started.elapsed() < ADMIT_PATIENCE => {
                tokio::time::sleep(std::time::Duration::from_secs(retry_after_secs.max(1))).await;
            }
            Err(e) => return Err(e),
        }
    }
}

/// A chunk of numbered lines: `(1-based line number, the line's bytes trimmed)`.
pub type Chunk = Vec<(u64, Vec<u8>)>;

/// Splits `[(line, bytes)]` off a reader, a chunk at a time: see [`chunk_rows`].
pub struct Lines<R> {
    reader: R,
    next_line: u64,
    done: bool,
}

impl<R: std::io::BufRead> Lines<R> {
    pub fn new(reader: R) -> Self {
        Lines {
            reader,
            next_line: 1,
            done: false,
        }
    }

    /// The next chunk of up to [`CHUNK_LINES`] non-empty lines, and how many lines (empty ones
    /// included) it covers; an empty chunk at the end. A line longer than the event limit is
    /// kept cut at the limit plus one byte (so it is refused as too large) and the rest of it
    /// skipped, so memory stays bounded.
    pub fn next_chunk(&mut self) -> std::io::Result<(Chunk, u64)> {
        use std::io::{BufRead as _, Read as _};
        let mut out = Vec::new();
        let mut covered = 0;
        while !self.done && out.len() < CHUNK_LINES {
            let mut buf = Vec::new();
            let n = (&mut self.reader)
                .take(MAX_EVENT_BYTES as u64 + 1)
                .read_until(b'\n', &mut buf)?;
            if n == 0 {
                self.done = true;
                break;
            }
            if buf.last() != Some(&b'\n') && buf.len() > MAX_EVENT_BYTES {
                // Skip the rest of an overlong line.
                let mut sink = Vec::new();
                loop {
                    sink.clear();
                    let m = (&mut self.reader)
                        .take(64 << 10)
                        .read_until(b'\n', &mut sink)?;
                    if m == 0 || sink.last() == Some(&b'\n') {
                        break;
                    }
                }
            }
            let line = self.next_line;
            self.next_line += 1;
            covered += 1;
            let trimmed = buf.trim_ascii();
            if !trimmed.is_empty() {
                out.push((line, trimmed.to_vec()));
            }
        }
        Ok((out, covered))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_ids_are_stable_per_site_and_line() {
        let a = message_id("shop", br#"{"type":"track"}"#);
        assert_eq!(a, message_id("shop", br#"{"type":"track"}"#));
        assert_ne!(a, message_id("blog", br#"{"type":"track"}"#));
        assert_ne!(a, message_id("shop", br#"{"type":"page"}"#));
        assert_eq!(a.len(), 4 + 32);
    }

    #[test]
    fn lines_come_in_bounded_chunks_with_their_numbers() {
        let mut body = String::new();
        for i in 0..(CHUNK_LINES + 5) {
            body.push_str(&format!("{{\"n\":{i}}}\n"));
            if i == 2 {
                body.push('\n');
            }
        }
        body.push_str(&"x".repeat(MAX_EVENT_BYTES + 100));
        body.push_str("\n{\"last\":1}");
        let mut l = Lines::new(std::io::Cursor::new(body.into_bytes()));
        let (a, covered) = l.next_chunk().unwrap();
        assert_eq!(a.len(), CHUNK_LINES);
        assert_eq!(
            covered as usize,
            CHUNK_LINES + 1,
            "the empty line is covered"
        );
        assert_eq!(a[3].0, 5, "line numbers count the empty line");
        let (b, _) = l.next_chunk().unwrap();
        assert_eq!(b.len(), 7);
        assert_eq!(b[5].1.len(), MAX_EVENT_BYTES + 1, "an overlong line is cut");
        assert_eq!(b[6].1, b"{\"last\":1}");
        assert_eq!(b[6].0, CHUNK_LINES as u64 + 8);
        let (c, covered) = l.next_chunk().unwrap();
        assert!(c.is_empty() && covered == 0);
    }

    #[test]
    fn imported_events_keep_their_own_old_time() {
        let mut ev = waymark_protocol::Event::new(waymark_protocol::EventType::Track, "m");
        ev.timestamp = Some("2021-03-04T05:06:07Z".into());
        let now = 1_800_000_000_000;
        assert_eq!(import_time(&ev, now), 1_614_834_367_000);
        ev.timestamp = Some("2099-01-01T00:00:00Z".into());
        assert_eq!(import_time(&ev, now), now, "the future is clamped");
    }
}
