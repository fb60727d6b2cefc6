//! Counting after a scenario: what was acknowledged against what `events` holds, and what a user
//! of the query API sees.
//!
//! - **acked**: message ids answered 200 (by the ingest server, or by the edge worker in (f)).
//! - **stored**: distinct message ids of the scenario in `events`.
//! - **lost**: acknowledged ids not in `events` once the server's spool has drained (in (e),
//!   beyond the ids of the records the scenario damaged on purpose).
//! - **dup**: duplicates a reader can see. Through the query API, for sampled visitors: every
//!   page of their event history (an id listed twice) and their profile's 30-day event count
//!   (above the distinct ids stored for them). In storage, under `FINAL` as the API reads
//!   collapsing tables: rows beyond one per message id.
//! - **extra**: stored ids never acknowledged (a kill between fsync and answer, a batch given up).

use std::collections::HashSet;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _, Result};
use serde_json::Value;
use waymark_testkit::ClickHouse;

use super::load::{Shape, READ_KEY, SITE};
use super::stack::Ingest;

#[derive(Debug, Default, Clone)]
pub struct Counts {
    pub acked: u64,
    pub stored: u64,
    pub lost: u64,
    /// Acknowledged ids missing because the scenario damaged their spool records.
    pub lost_to_damage: u64,
    pub dup_api: u64,
    pub dup_final: u64,
    /// Rows beyond one per id before merging (what `FINAL` and the API collapse).
    pub rows_unmerged_extra: u64,
    pub extra: u64,
    pub api_visitors: usize,
    pub api_events: u64,
    /// Stored events of sampled visitors that the API did not show (history or profile).
    pub api_missing: u64,
    /// How long the spool took to drain after the load stopped (or how long it was waited for).
    pub drain_secs: f64,
    /// Whether it drained: every acknowledged id stored (but the damaged) and nothing pending.
    pub drained: bool,
}

impl Counts {
    pub fn dup(&self) -> u64 {
        self.dup_api + self.dup_final
    }
}

fn q(ch: &ClickHouse, sql: &str) -> Result<String> {
    ch.query(sql).map_err(|e| anyhow!("{e}"))
}

fn num(ch: &ClickHouse, sql: &str) -> Result<u64> {
    let s = q(ch, sql)?;
    s.trim()
        .parse()
        .with_context(|| format!("{sql} answered {s:?}"))
}

/// Puts the acknowledged ids into `{db}.chaos_acked`, so ClickHouse compares the sets.
fn upload(ch: &ClickHouse, db: &str, acked: &[String]) -> Result<()> {
    q(
        ch,
        &format!("CREATE TABLE {db}.chaos_acked (message_id String) ENGINE = Log"),
    )?;
    for chunk in acked.chunks(200_000) {
        // Ids are letters, digits and dashes: nothing to escape in TabSeparated.
        let mut sql = format!("INSERT INTO {db}.chaos_acked FORMAT TabSeparated\n");
        for id in chunk {
            sql.push_str(id);
            sql.push('\n');
        }
        q(ch, &sql)?;
    }
    let n = num(ch, &format!("SELECT count() FROM {db}.chaos_acked"))?;
    if n != acked.len() as u64 {
        bail!(
            "uploaded {} acknowledged ids, ClickHouse holds {n}",
            acked.len()
        );
    }
    Ok(())
}

/// Acknowledged ids not in `events`.
fn missing(ch: &ClickHouse, db: &str) -> Result<Vec<String>> {
    Ok(q(
        ch,
        &format!(
            "SELECT message_id FROM {db}.chaos_acked WHERE message_id NOT IN \
             (SELECT message_id FROM {db}.events) FORMAT TabSeparated"
        ),
    )?
    .lines()
    .map(str::to_string)
    .collect())
}

/// Waits (up to `timeout`) until every acknowledged id but those in `damaged` is in `events`
/// and the server's spool has nothing pending, then counts.
pub fn settle_and_count(
    ch: &ClickHouse,
    db: &str,
    shape: &Shape,
    acked: &[String],
    damaged: &HashSet<String>,
    ingest: &Ingest,
    timeout: Duration,
) -> Result<Counts> {
    upload(ch, db, acked)?;
    let started = Instant::now();
    let deadline = started + timeout;
    let mut lost_ids;
    let drained = loop {
        // ClickHouse may still be coming back, or the table being created: asked again.
        lost_ids = match missing(ch, db) {
            Ok(ids) => ids,
            Err(e) if Instant::now() >= deadline => return Err(e),
            Err(_) => {
                std::thread::sleep(Duration::from_millis(500));
                continue;
            }
        };
        let beyond = lost_ids.iter().filter(|id| !damaged.contains(*id)).count();
        let pending = ingest.metric("waymark_spool_pending_bytes");
        if beyond == 0 && pending == Some(0.0) {
            break true;
        }
        if Instant::now() >= deadline {
            break false;
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    let drain_secs = started.elapsed().as_secs_f64();
    let lost_to_damage = lost_ids.iter().filter(|id| damaged.contains(*id)).count() as u64;
    let lost = lost_ids.len() as u64 - lost_to_damage;
    let run = &shape.run;
    let mine = format!("message_id LIKE '{run}-%'");
    let stored = num(
        ch,
        &format!("SELECT uniqExact(message_id) FROM {db}.events WHERE {mine}"),
    )?;
    let extra = num(
        ch,
        &format!(
            "SELECT uniqExact(message_id) FROM {db}.events WHERE {mine} AND message_id NOT IN \
             (SELECT message_id FROM {db}.chaos_acked)"
        ),
    )?;
    let dup_final = num(
        ch,
        &format!("SELECT count() - uniqExact(message_id) FROM {db}.events FINAL WHERE {mine}"),
    )?;
    let rows_unmerged_extra = num(
        ch,
        &format!("SELECT count() - uniqExact(message_id) FROM {db}.events WHERE {mine}"),
    )?;
    let mut c = Counts {
        acked: acked.len() as u64,
        stored,
        lost,
        lost_to_damage,
        dup_final,
        rows_unmerged_extra,
        extra,
        drain_secs,
        drained,
        ..Counts::default()
    };
    api_check(ch, db, shape, ingest, &mut c)?;
    Ok(c)
}

/// Visitors whose history and profile are read through the API.
const SAMPLED: usize = 8;

/// Reads sampled visitors' event history (every page) and profile through the query API and
/// compares them with the distinct ids stored for them.
fn api_check(
    ch: &ClickHouse,
    db: &str,
    shape: &Shape,
    ingest: &Ingest,
    c: &mut Counts,
) -> Result<()> {
    let step = (shape.visitors / SAMPLED).max(1);
    for k in (0..shape.visitors).step_by(step).take(SAMPLED) {
        let visitor = shape.visitor(k);
        let stored = num(
            ch,
            &format!(
                "SELECT uniqExact(message_id) FROM {db}.events WHERE site = '{SITE}' AND visitor_id = '{visitor}'"
            ),
        )?;
        if stored == 0 {
            continue;
        }
        c.api_visitors += 1;
        let mut listed = 0u64;
        let mut ids = HashSet::new();
        let mut before: Option<String> = None;
        for _page in 0..1000 {
            let mut path = format!("/v1/profiles/{visitor}/events?site={SITE}&limit=1000");
            if let Some(b) = &before {
                path.push_str(&format!("&before={b}"));
            }
            let v = api_json(ingest, &path)?;
            let events = v["events"]
                .as_array()
                .ok_or_else(|| anyhow!("{path}: no events array in {v}"))?;
            for e in events {
                listed += 1;
                ids.insert(e["message_id"].as_str().unwrap_or_default().to_string());
            }
            match v["next_before"].as_str() {
                Some(b) => before = Some(b.to_string()),
                None => break,
            }
        }
        c.api_events += listed;
        c.dup_api += listed - ids.len() as u64;
        c.api_missing += stored.saturating_sub(ids.len() as u64);
        let profile = api_json(ingest, &format!("/v1/profiles/{visitor}?site={SITE}"))?;
        let counted = profile["counts"]["last_30_days"]["events"]
            .as_u64()
            .ok_or_else(|| anyhow!("profile of {visitor}: no counts.last_30_days.events"))?;
        c.dup_api += counted.saturating_sub(stored);
        c.api_missing += stored.saturating_sub(counted);
    }
    Ok(())
}

fn api_json(ingest: &Ingest, path: &str) -> Result<Value> {
    // The query API answers 503 while ClickHouse or the schema is not ready: wait a little.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (status, body) = ingest.get(path, Some(READ_KEY))?;
        if status == 200 {
            return serde_json::from_str(&body).with_context(|| format!("{path}: {body}"));
        }
        if status != 503 || Instant::now() >= deadline {
            bail!("GET {path} answered {status}: {body}");
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}
