//! `ingest-server quarantine replay`: sends quarantined rows through the writer again once the
//! cause of their refusal is fixed.
//!
//! Rows come from the `quarantine` table and from `dead-letter.jsonl` in the spool directory
//! (the file earlier versions wrote when the quarantine insert failed; this version never
//! writes it, only drains it). Each is the [`EventRow`] as it was refused, with its original
//! message id. They go through the writer's own policy ([`super::delivery`]): bisected, with a
//! probe row, so one row ClickHouse still refuses does not hold back the others.
//!
//! Idempotent by message id:
//! - a quarantine row that reached `events` gets a row in `quarantine_replays` (site, message
//!   id, quarantined_at), and the next run skips it; the quarantine row itself stays, for the
//!   record;
//! - a dead-letter line that reached `events` is removed from the file (rewritten atomically);
//! - a row sent twice anyway (the replay stopped between the insert and its ledger row) is the
//!   same row twice: `events` is a ReplacingMergeTree keyed by (site, visitor_id, message_id),
//!   so the copies collapse.
//!
//! Rows ClickHouse still refuses stay where they were, unmarked, and are listed with its
//! reason; a later run tries them again. If ClickHouse cannot take rows at all for longer than
//! `wait`, the run stops and says why; what moved until then is counted and marked.

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use super::delivery::{Delivery, Policy};
use super::row::{EventRow, QuarantineRow};
use super::{classify, ClickHouseSink, SchemaStatus, Sink as _, StoreError};
use crate::clock::now_ms_u64 as now_ms;
use crate::config::Config;
use crate::metrics::Metrics;

/// The file earlier versions appended rows to when the quarantine insert failed.
pub const DEAD_LETTER_FILE: &str = "dead-letter.jsonl";

/// Which quarantined rows to send again.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    /// Only this site's rows.
    pub site: Option<String>,
    /// Only rows quarantined at or after this time (Unix seconds).
    pub since: Option<u32>,
}

impl Filter {
    fn keeps(&self, q: &QuarantineRow) -> bool {
        self.site.as_ref().is_none_or(|s| *s == q.site)
            && self.since.is_none_or(|t| q.quarantined_at >= t)
    }
}

/// One row of `quarantine_replays`.
#[derive(Debug, Clone, Serialize, Deserialize, clickhouse::Row)]
struct Replayed {
    site: String,
    message_id: String,
    /// DateTime.
    quarantined_at: u32,
    /// DateTime.
    replayed_at: u32,
}

/// Moved and still refused, for one site.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct SiteCounts {
    pub moved: u64,
    pub refused: u64,
}

/// What a replay did.
#[derive(Debug, Default)]
pub struct Report {
    /// Per site: events (distinct message ids) now in `events`, and still refused.
    pub sites: BTreeMap<String, SiteCounts>,
    /// Still refused: site, message id, ClickHouse's reason.
    pub refused: Vec<(String, String, String)>,
    /// Entries that are not an event row (where, and why): left where they are.
    pub unreadable: Vec<(String, String)>,
    /// The dead-letter file, when there was one: lines read, lines moved.
    pub dead_letter: Option<(PathBuf, usize, usize)>,
    /// Why the run stopped early (ClickHouse could not take rows), if it did.
    pub stopped: Option<String>,
}

impl Report {
    pub fn moved(&self) -> u64 {
        self.sites.values().map(|c| c.moved).sum()
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "quarantine replay: {} moved to events, {} still refused, {} unreadable",
            self.moved(),
            self.refused.len(),
            self.unreadable.len()
        )?;
        for (site, c) in &self.sites {
            writeln!(
                f,
                "  site {site}: {} moved, {} still refused",
                c.moved, c.refused
            )?;
        }
        if !self.refused.is_empty() {
            writeln!(
                f,
                "still refused (left in quarantine; ClickHouse's reason):"
            )?;
            for (site, id, why) in &self.refused {
                writeln!(f, "  {site} {id}: {}", first_line(why))?;
            }
        }
        if !self.unreadable.is_empty() {
            writeln!(f, "not an event row (left where they are):")?;
            for (what, why) in &self.unreadable {
                writeln!(f, "  {what}: {why}")?;
            }
        }
        if let Some((path, lines, moved)) = &self.dead_letter {
            writeln!(
                f,
                "dead-letter file {}: {moved} of {lines} lines moved{}",
                path.display(),
                if moved == lines {
                    ", file removed".to_string()
                } else {
                    format!(", {} left in it", lines - moved)
                }
            )?;
        }
        if let Some(why) = &self.stopped {
            writeln!(
                f,
                "stopped early: {why}; run the replay again once ClickHouse takes rows"
            )?;
        }
        Ok(())
    }
}

fn first_line(s: &str) -> String {
    let line = s.lines().next().unwrap_or("");
    match line.char_indices().nth(300) {
        Some((i, _)) => format!("{}...", &line[..i]),
        None => line.to_string(),
    }
}

/// Why a replay could not run at all.
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    #[error("ClickHouse at the configured clickhouse.url: {0}")]
    ClickHouse(StoreError),
    #[error("dead-letter file {path}: {source}")]
    DeadLetter {
        path: String,
        source: std::io::Error,
    },
}

impl From<StoreError> for ReplayError {
    fn from(e: StoreError) -> Self {
        ReplayError::ClickHouse(e)
    }
}

/// One row to send again and where it came from.
struct Candidate {
    q: QuarantineRow,
    /// Its line in the dead-letter file, or `None` for the quarantine table.
    line: Option<usize>,
}

/// Sends the quarantined rows `filter` selects through the writer's policy into `events`;
/// stops when ClickHouse has been unable to take rows for `wait`.
pub async fn replay(
    config: &Config,
    filter: &Filter,
    wait: Duration,
) -> Result<Report, ReplayError> {
    let sink = Arc::new(ClickHouseSink::new(
        &config.clickhouse,
        Arc::new(SchemaStatus::default()),
    ));
    // The ledger table may be new: the migrations are idempotent.
    sink.prepare().await?;
    let db = sink.database().to_string();
    let mut report = Report::default();

    let mut sql = format!(
        "SELECT ?fields FROM {db}.quarantine \
         WHERE (site, message_id, quarantined_at) NOT IN \
         (SELECT site, message_id, quarantined_at FROM {db}.quarantine_replays)"
    );
    if filter.site.is_some() {
        sql.push_str(" AND site = ?");
    }
    if filter.since.is_some() {
        sql.push_str(" AND quarantined_at >= toDateTime(?)");
    }
    sql.push_str(" ORDER BY quarantined_at");
    let mut query = sink.db_client().query(&sql);
    if let Some(site) = &filter.site {
        query = query.bind(site.as_str());
    }
    if let Some(since) = filter.since {
        query = query.bind(since);
    }
    let rows: Vec<QuarantineRow> = query.fetch_all().await.map_err(|e| classify(&e))?;
    let mut candidates: Vec<Candidate> = rows
        .into_iter()
        .map(|q| Candidate { q, line: None })
        .collect();

    let file = config.spool.dir.join(DEAD_LETTER_FILE);
    let lines = read_dead_letter(&file)?;
    for (i, line) in lines.iter().enumerate() {
        match serde_json::from_str::<QuarantineRow>(line) {
            Ok(q) if filter.keeps(&q) => candidates.push(Candidate { q, line: Some(i) }),
            Ok(_) => {}
            Err(e) => report.unreadable.push((
                format!("{} line {}", file.display(), i + 1),
                format!("not a quarantine row: {e}"),
            )),
        }
    }

    // One event row per (site, message id), the latest quarantined copy.
    let mut events: BTreeMap<(String, String), (u32, EventRow)> = BTreeMap::new();
    let mut readable: Vec<&Candidate> = Vec::new();
    for c in &candidates {
        match serde_json::from_str::<EventRow>(&c.q.row) {
            Ok(r) if !r.site.is_empty() && !r.message_id.is_empty() => {
                let key = (r.site.clone(), r.message_id.clone());
                let newer = events
                    .get(&key)
                    .is_none_or(|(at, _)| c.q.quarantined_at >= *at);
                if newer {
                    events.insert(key, (c.q.quarantined_at, r));
                }
                readable.push(c);
            }
            Ok(_) | Err(_) => report.unreadable.push((
                match c.line {
                    Some(i) => format!("{} line {}", file.display(), i + 1),
                    None => format!(
                        "quarantine row of {} (site {:?}, message id {:?})",
                        c.q.quarantined_at, c.q.site, c.q.message_id
                    ),
                },
                format!(
                    "not an event row (reason it was quarantined: {})",
                    first_line(&c.q.reason)
                ),
            )),
        }
    }
    let events: Vec<EventRow> = events.into_values().map(|(_, r)| r).collect();

    let (stop_tx, stop_rx) = watch::channel(false);
    let metrics = Arc::new(Metrics::default());
    let policy = Policy {
        max_attempts: config.writer.max_attempts,
        backoff_min: Duration::from_millis(100).min(config.writer.max_backoff.0),
        backoff_max: config.writer.max_backoff.0,
    };
    let delivery = Delivery::new(sink.clone(), metrics.clone(), policy, stop_rx);
    let watchdog = tokio::spawn(stop_when_blocked(metrics.clone(), wait, stop_tx));

    let mut landed: HashSet<(String, String)> = HashSet::new();
    for chunk in events.chunks(config.writer.max_rows.max(1)) {
        if delivery.deliver(chunk).await.is_err() {
            let why = metrics.writer.blocked().map_or_else(
                || "stopped".to_string(),
                |b| {
                    format!(
                        "ClickHouse cannot take rows ({}): {}",
                        b.cause,
                        first_line(&b.error)
                    )
                },
            );
            report.stopped = Some(why);
            break;
        }
        let refused = delivery.take_refused();
        let refused_keys: HashSet<(&str, &str)> = refused
            .iter()
            .map(|(r, _)| (r.site.as_str(), r.message_id.as_str()))
            .collect();
        let mut marks = Vec::new();
        for r in chunk {
            let key = (r.site.as_str(), r.message_id.as_str());
            let counts = report.sites.entry(r.site.clone()).or_default();
            if refused_keys.contains(&key) {
                counts.refused += 1;
                continue;
            }
            counts.moved += 1;
            landed.insert((r.site.clone(), r.message_id.clone()));
            for c in &readable {
                if c.line.is_none() && c.q.site == r.site && c.q.message_id == r.message_id {
                    marks.push(Replayed {
                        site: c.q.site.clone(),
                        message_id: c.q.message_id.clone(),
                        quarantined_at: c.q.quarantined_at,
                        replayed_at: (now_ms() / 1000) as u32,
                    });
                }
            }
        }
        for (r, e) in refused {
            report.refused.push((r.site, r.message_id, e.message));
        }
        if let Err(e) = sink.insert_rows("quarantine_replays", &marks).await {
            // The rows are in `events`; without their ledger rows the next run sends them
            // again, and the copies collapse.
            report.stopped = Some(format!("recording the replayed rows failed: {e}"));
            break;
        }
    }
    watchdog.abort();

    if !lines.is_empty() {
        let moved: HashSet<usize> = readable
            .iter()
            .filter_map(|c| {
                let key = (c.q.site.clone(), c.q.message_id.clone());
                c.line.filter(|_| landed.contains(&key))
            })
            .collect();
        if !moved.is_empty() {
            let left: Vec<&String> = lines
                .iter()
                .enumerate()
                .filter(|(i, _)| !moved.contains(i))
                .map(|(_, l)| l)
                .collect();
            rewrite_dead_letter(&file, &left)?;
        }
        report.dead_letter = Some((file, lines.len(), moved.len()));
    }
    Ok(report)
}

/// Signals `stop` once the writer has been blocked for longer than `wait`.
async fn stop_when_blocked(metrics: Arc<Metrics>, wait: Duration, stop: watch::Sender<bool>) {
    loop {
        tokio::time::sleep(Duration::from_millis(100)).await;
        if let Some(b) = metrics.writer.blocked() {
            if now_ms().saturating_sub(b.since_ms) >= wait.as_millis() as u64 {
                let _ = stop.send(true);
                return;
            }
        }
    }
}

/// The non-empty lines of the dead-letter file (none when there is no file).
fn read_dead_letter(path: &Path) -> Result<Vec<String>, ReplayError> {
    match std::fs::read_to_string(path) {
        Ok(s) => Ok(s
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(str::to_string)
            .collect()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(source) => Err(ReplayError::DeadLetter {
            path: path.display().to_string(),
            source,
        }),
    }
}

/// Replaces the dead-letter file with `left` (fsynced, then renamed over it), or removes it
/// when nothing is left.
fn rewrite_dead_letter(path: &Path, left: &[&String]) -> Result<(), ReplayError> {
    let err = |source| ReplayError::DeadLetter {
        path: path.display().to_string(),
        source,
    };
    if left.is_empty() {
        return std::fs::remove_file(path).map_err(err);
    }
    let tmp = path.with_extension("jsonl.tmp");
    let mut f = std::fs::File::create(&tmp).map_err(err)?;
    for l in left {
        f.write_all(l.as_bytes()).map_err(err)?;
        f.write_all(b"\n").map_err(err)?;
    }
    f.sync_all().map_err(err)?;
    std::fs::rename(&tmp, path).map_err(err)
}

/// Parses `--since`: a duration back from now (`"24h"`, `"30m"`), a date-time (RFC 3339) or a
/// date (`YYYY-MM-DD`, midnight UTC). Unix seconds.
pub fn parse_since(s: &str, now_ms: u64) -> Result<u32, String> {
    let s = s.trim();
    let ms = if let Ok(d) = crate::config::HumanDuration::parse(s) {
        now_ms.saturating_sub(d.0.as_millis() as u64) as i64
    } else if let Some(t) = waymark_protocol::time::parse_rfc3339(s) {
        t
    } else if let Some(t) = waymark_protocol::time::parse_rfc3339(&format!("{s}T00:00:00Z")) {
        t
    } else {
        return Err(format!(
            "{s:?} is neither a duration (\"24h\"), a date-time (\"2026-11-01T12:00:00Z\") nor a date (\"2026-11-01\")"
        ));
    };
    u32::try_from(ms.max(0) / 1000).map_err(|_| format!("{s:?} is out of range"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn since_reads_durations_dates_and_date_times() {
        let now = 1_800_000_000_000;
        assert_eq!(parse_since("24h", now), Ok(1_800_000_000 - 86_400));
        assert_eq!(parse_since("2027-01-15T08:00:00Z", now), Ok(1_800_000_000));
        assert_eq!(parse_since("2027-01-15", now), Ok(1_799_971_200));
        let e = parse_since("last tuesday", now).unwrap_err();
        assert!(e.contains("last tuesday"), "{e}");
    }

    #[test]
    fn the_filter_keeps_a_site_and_a_time() {
        let q = |site: &str, at: u32| QuarantineRow {
            quarantined_at: at,
            site: site.into(),
            message_id: "m".into(),
            reason: String::new(),
            row: String::new(),
        };
        let f = Filter {
            site: Some("shop".into()),
            since: Some(100),
        };
        assert!(f.keeps(&q("shop", 100)));
        assert!(!f.keeps(&q("shop", 99)));
        assert!(!f.keeps(&q("blog", 200)));
        assert!(Filter::default().keeps(&q("blog", 0)));
    }

    #[test]
    fn the_report_counts_and_lists() {
        let mut r = Report::default();
        r.sites.insert(
            "shop".into(),
            SiteCounts {
                moved: 2,
                refused: 1,
            },
        );
        r.refused.push((
            "shop".into(),
            "q-1".into(),
            "Code: 395. DB::Exception: Value passed to 'throwIf' function is non zero\nstack"
                .into(),
        ));
        r.dead_letter = Some((PathBuf::from("/s/dead-letter.jsonl"), 3, 1));
        let text = r.to_string();
        for want in [
            "quarantine replay: 2 moved to events, 1 still refused, 0 unreadable",
            "  site shop: 2 moved, 1 still refused",
            "  shop q-1: Code: 395. DB::Exception: Value passed to 'throwIf' function is non zero\n",
            "dead-letter file /s/dead-letter.jsonl: 1 of 3 lines moved, 2 left in it",
        ] {
            assert!(text.contains(want), "{want:?} not in\n{text}");
        }
        assert!(!text.contains("stack"));
    }
}
