//! The evaluation tick: who entered or left each subscription's audience since the last tick.
//!
//! A tick at time `now` (the previous one at `prev`) evaluates, per site, only the persons of
//! these visitors (the *candidates*, written to the `trigger_candidates` memory table):
//!
//! 1. *touched*: visitors with rows inserted since the watermark (`trigger_touched`, stamped by
//!    ClickHouse's own clock at insert time, read back [`OVERLAP_SECS`] before the previous
//!    tick's ClickHouse time, so a row whose insert was still running then is read now);
//! 2. *time edges*: visitors with an event that left a window during `[prev, now)`: for each
//!    `did` / `did_not` with `within: W` of the site's subscriptions, rows of that event with
//!    `prev - W <= timestamp < now - W`; for `last_seen_within: W`, any row in that range;
//! 3. the users those visitors are linked to, and every anonymous id of those users, so each
//!    person is evaluated over all their devices.
//!
//! All of a site's audiences are compiled into one statement for those visitors only
//! ([`crate::query::audience::compile_flags`]), which returns every candidate person with
//! whether they match each audience now; compared with `trigger_members` (one more statement
//! for all of them), a person who matches and was not in has *entered* (entry n + 1), one who
//! was in and no longer matches has *left* (entry n). Two statements per site and tick, not two
//! per subscription: on `cargo xtask bench triggers` the per-subscription form spent most of a
//! tick reading the same candidates' rows once per subscription.
//! Conditions that did not change for a person who was not touched and had no window close
//! cannot change their answer, so nothing outside the candidates needs reading.
//!
//! Crash safety: the transitions go to the outbox (`trigger_deliveries`) first, then the
//! memberships, then the tick's state. A crash between them repeats the tick, which finds the
//! same transitions with the same idempotency keys; keys already in the outbox are not written
//! or handed to the deliverer again.
//!
//! A subscription's first tick records who is in the audience already, without deliveries
//! (a *baseline*): registering a subscription does not notify everybody who already matches.
//! The new subscriptions of a site are baselined together, by one read of the site's data.

use std::collections::{HashMap, HashSet};
use std::fmt::Write as _;

use serde::Deserialize;
use serde_json::json;
use sha2::{Digest, Sha256};

use super::subscription::{self, Subscription};
use super::Delivery;
use crate::query::audience::{compile_flags, member, AudienceQuery, Condition, MemberRow};
use crate::query::sql::{int, lit, lit_list};
use crate::query::{QueryError, QueryState};

/// How far before the previous tick's ClickHouse time touched rows are read again: inserts
/// stamp `now()` when they start, and one that started before the previous tick's read but
/// finished after it is seen by this one.
pub const OVERLAP_SECS: i64 = 5;

/// How far before the previous tick outbox rows are looked at for keys a repeated tick found
/// again (the servers that held the lease may disagree on the time by this much).
const REPEAT_SLACK_MS: i64 = 3_600_000;

/// How long `trigger_touched` partitions (days) are kept.
const KEEP_TOUCHED_DAYS: i64 = 2;

/// What one tick did.
#[derive(Debug, Clone, Default)]
pub struct TickReport {
    /// The tick's time (windows are measured from it).
    pub now_ms: i64,
    /// Candidate visitors over all sites.
    pub candidates: u64,
    /// Subscriptions evaluated.
    pub subscriptions: usize,
    /// New deliveries (entered and left).
    pub deliveries: Vec<Delivery>,
    /// Subscriptions whose baseline was taken this tick.
    pub baselines: usize,
    /// Seconds spent on each part of the tick (baselines, candidates, evaluate, record), for
    /// the warning about a tick longer than `triggers.tick`.
    pub timings: Timings,
}

/// Seconds per part of a tick.
#[derive(Debug, Clone, Default)]
pub struct Timings {
    pub baselines: f64,
    pub candidates: f64,
    pub evaluate: f64,
    pub record: f64,
}

impl std::fmt::Display for Timings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "baselines {:.1} s, candidates {:.1} s, evaluate {:.1} s, record {:.1} s",
            self.baselines, self.candidates, self.evaluate, self.record
        )
    }
}

/// What [`Evaluator::find`] found, for [`Evaluator::commit`].
pub struct Found {
    report: TickReport,
    baselined: Vec<(String, i64)>,
    ch_now: i64,
    /// The previous tick's time.
    prev: i64,
}

#[derive(Deserialize)]
struct StateRow {
    name: String,
    value: i64,
}

#[derive(Deserialize)]
struct FlagsRow {
    #[serde(flatten)]
    member: MemberRow,
    /// Per subscription, in the order given to [`compile_flags`].
    matches: Vec<u8>,
}

/// A row of `trigger_members`, written as RowBinary.
#[derive(serde::Serialize, clickhouse::Row)]
struct MembershipOut {
    site: String,
    sub_id: String,
    person: String,
    member: u8,
    entry: u32,
    changed_at_ms: i64,
    version: u64,
}

#[derive(Deserialize)]
struct MembershipRow {
    sub_id: String,
    person: String,
    member: u8,
    entry: u32,
}

#[derive(Deserialize)]
struct Count {
    n: u64,
}

#[derive(Deserialize)]
struct Now {
    now: i64,
}

#[derive(Deserialize)]
struct KeyRow {
    key: String,
}

#[derive(Deserialize)]
struct PartitionRow {
    partition: String,
}

/// `v` as JSON text, to go into every payload of one person unparsed.
fn raw(v: &serde_json::Value) -> Box<serde_json::value::RawValue> {
    serde_json::value::to_raw_value(v).expect("a JSON value serialises")
}

/// The idempotency key of one transition: the same for the same (subscription, person, entry,
/// kind) whoever computes it.
pub fn idempotency_key(site: &str, sub_id: &str, person: &str, entry: u32, kind: &str) -> String {
    let mut h = Sha256::new();
    for part in [site, sub_id, person, &entry.to_string(), kind] {
        h.update(part.as_bytes());
        h.update([0u8]);
    }
    hex::encode(&h.finalize()[..16])
}

/// The SQL condition on `q_events_by_name` rows of one site whose event left a window of the
/// site's subscriptions during `[prev, now)`; `None` when no condition has a window.
pub fn edge_condition(subs: &[&Subscription], prev: i64, now: i64) -> Option<String> {
    let mut parts: Vec<String> = Vec::new();
    // Bounded on `timestamp` (the table's key after the event, whole seconds) on both sides,
    // so each window reads the granules of its seconds only. With the lower bound alone a
    // 60-day window read every row of its event from 60 days ago to now: on `bench triggers
    // --mix shop` 2.4 million rows a tick for the 11 visitors whose rows were in the ranges,
    // 0.36 CPU s of ClickHouse per tick (0.4 million rows and 0.07 s with both bounds).
    let range = |w: i64| {
        let (from, to) = (prev - w, now - w);
        format!(
            "timestamp >= toDateTime({}) AND timestamp <= toDateTime({}) AND timestamp_ms >= {} AND timestamp_ms < {}",
            int(from.div_euclid(1000)),
            int(to.div_euclid(1000)),
            int(from),
            int(to)
        )
    };
    for s in subs {
        for c in &s.query.conditions {
            let part = match c {
                Condition::Did {
                    event,
                    within_ms: Some(w),
                    ..
                }
                | Condition::DidNot {
                    event,
                    within_ms: Some(w),
                    ..
                } => format!("(event = {} AND {})", lit(event), range(*w)),
                Condition::LastSeenWithin { within_ms } => format!("({})", range(*within_ms)),
                _ => continue,
            };
            if !parts.contains(&part) {
                parts.push(part);
            }
        }
    }
    (now > prev && !parts.is_empty()).then(|| parts.join(" OR "))
}

/// The evaluator: one per fleet (`triggers.evaluate`).
pub struct Evaluator {
    st: QueryState,
    last_cleanup_ms: i64,
    /// This evaluator committed the previous tick completely, and nothing else evaluated
    /// since (the server keeps it only while it holds the lease without a gap): this tick's
    /// transitions cannot be in the outbox yet, so `record` skips looking for them. Measured
    /// on `bench triggers` (about 160,000 transitions a tick), the lookup was 80 statements
    /// of 2,000 keys per tick.
    clean: bool,
}

impl Evaluator {
    pub fn new(st: QueryState) -> Self {
        Evaluator {
            st,
            last_cleanup_ms: 0,
            clean: false,
        }
    }

    fn db(&self) -> &str {
        self.st.db()
    }

    /// Forgets that the previous tick was committed by this evaluator (another server may
    /// have evaluated since: the lease was not held throughout).
    pub fn unclean(&mut self) {
        self.clean = false;
    }

    async fn state(&self) -> Result<HashMap<String, i64>, QueryError> {
        let rows: Vec<StateRow> = self
            .st
            .fetch(&format!(
                "SELECT name, argMax(value, version) AS value FROM {}.trigger_state GROUP BY name",
                self.db()
            ))
            .await?;
        Ok(rows.into_iter().map(|r| (r.name, r.value)).collect())
    }

    async fn save_state(&self, values: &[(String, i64)], version: i64) -> Result<(), QueryError> {
        if values.is_empty() {
            return Ok(());
        }
        let mut body = String::new();
        for (name, value) in values {
            let _ = writeln!(
                body,
                "{}",
                json!({"name": name, "value": value, "version": version})
            );
        }
        self.st
            .execute(&format!(
                "INSERT INTO {}.trigger_state FORMAT JSONEachRow\n{body}",
                self.db()
            ))
            .await
    }

    /// Runs one tick at `now_ms` (the server's clock; tests pass their own) and returns what it
    /// found. The new deliveries are in the outbox when this returns.
    pub async fn tick(&mut self, now_ms: i64) -> Result<TickReport, QueryError> {
        let found = self.find(now_ms).await?;
        self.commit(found).await
    }

    /// The first half of a tick: finds the transitions (and takes the baselines of new
    /// subscriptions) without writing them; [`commit`](Self::commit) writes them. The server
    /// checks its lease between the two (`super::lease`).
    pub async fn find(&mut self, now_ms: i64) -> Result<Found, QueryError> {
        let db = self.db().to_string();
        let state = self.state().await?;
        let ch_now = self
            .st
            .fetch::<Now>("SELECT toInt64(now()) AS now")
            .await?
            .first()
            .map(|r| r.now)
            .ok_or_else(|| QueryError::Unavailable("SELECT now() answered nothing".into()))?;
        // First tick ever: no windows to close yet, and rows from a moment ago.
        let prev = state.get("tick").copied().unwrap_or(now_ms).min(now_ms);
        let watermark = state
            .get("watermark")
            .copied()
            .unwrap_or(ch_now - OVERLAP_SECS);
        let subs = subscription::list(&self.st, None).await?;
        let mut by_site: HashMap<&str, Vec<&Subscription>> = HashMap::new();
        for s in &subs {
            by_site.entry(s.site.as_str()).or_default().push(s);
        }
        let mut report = TickReport {
            now_ms,
            subscriptions: subs.len(),
            ..TickReport::default()
        };
        let mut baselined: Vec<(String, i64)> = Vec::new();
        self.st
            .execute(&format!("TRUNCATE TABLE {db}.trigger_candidates"))
            .await?;
        let mut sites: Vec<&str> = by_site.keys().copied().collect();
        sites.sort_unstable();
        for site in sites {
            let site_subs = &by_site[site];
            let s = lit(site);
            // Baselines first: they read the whole audience, so their subscriptions skip the
            // incremental pass of this tick. All of a site's new subscriptions in one read.
            let mut incremental = Vec::new();
            let mut fresh = Vec::new();
            for sub in site_subs {
                let mark = format!("baseline/{}/{}", sub.site, sub.id);
                if state.contains_key(&mark) {
                    incremental.push(*sub);
                } else {
                    fresh.push(*sub);
                    baselined.push((mark, now_ms));
                }
            }
            if !fresh.is_empty() {
                let t = std::time::Instant::now();
                self.baseline(site, &fresh, now_ms).await?;
                report.timings.baselines += t.elapsed().as_secs_f64();
                report.baselines += fresh.len();
            }
            if incremental.is_empty() {
                continue;
            }
            let t = std::time::Instant::now();
            let cand = format!("{db}.trigger_candidates");
            self.st
                .execute(&format!(
                    "INSERT INTO {cand} SELECT {s}, visitor_id FROM {db}.trigger_touched
WHERE site = {s} AND inserted_at >= toDateTime({})",
                    int(watermark.max(0))
                ))
                .await?;
            if let Some(edges) = edge_condition(&incremental, prev, now_ms) {
                self.st
                    .execute(&format!(
                        "INSERT INTO {cand} SELECT {s}, visitor_id FROM {db}.q_events_by_name
WHERE site = {s} AND ({edges})"
                    ))
                    .await?;
            }
            // The candidates are in this ClickHouse server's own memory table; on a cluster,
            // `GLOBAL IN` sends them to the shards that read the `Distributed` tables.
            let global = if self.st.layout().cluster().is_some() {
                "GLOBAL "
            } else {
                ""
            };
            let seeds = format!("{global}IN (SELECT visitor_id FROM {cand} WHERE site = {s})");
            self.st
                .execute(&format!(
                    "INSERT INTO {cand} SELECT {s}, user_id FROM {db}.q_ident_by_anon
WHERE site = {s} AND anonymous_id {seeds}"
                ))
                .await?;
            self.st
                .execute(&format!(
                    "INSERT INTO {cand} SELECT {s}, anonymous_id FROM {db}.identities
WHERE site = {s} AND user_id {seeds}"
                ))
                .await?;
            let n = self
                .st
                .fetch::<Count>(&format!(
                    "SELECT uniqExact(visitor_id) AS n FROM {cand} WHERE site = {s}"
                ))
                .await?
                .first()
                .map_or(0, |c| c.n);
            report.candidates += n;
            report.timings.candidates += t.elapsed().as_secs_f64();
            let t = std::time::Instant::now();
            if n == 0 {
                continue;
            }
            report
                .deliveries
                .extend(evaluate(&self.st, site, &incremental, &seeds, now_ms).await?);
            report.timings.evaluate += t.elapsed().as_secs_f64();
        }
        Ok(Found {
            report,
            baselined,
            ch_now,
            prev,
        })
    }

    /// The second half of a tick: writes what [`find`](Self::find) found.
    pub async fn commit(&mut self, found: Found) -> Result<TickReport, QueryError> {
        let Found {
            mut report,
            baselined,
            ch_now,
            prev,
        } = found;
        let now_ms = report.now_ms;
        // Outbox, then memberships (inside `record`), then the state: see the module notes.
        let t = std::time::Instant::now();
        // Clean again only once this commit is complete.
        let check = !std::mem::replace(&mut self.clean, false);
        self.record(&mut report.deliveries, prev, check).await?;
        report.timings.record = t.elapsed().as_secs_f64();
        let mut values = baselined;
        values.push(("tick".into(), now_ms));
        values.push(("watermark".into(), ch_now - OVERLAP_SECS));
        self.save_state(&values, now_ms).await?;
        self.clean = true;
        if now_ms - self.last_cleanup_ms > 3_600_000 {
            self.last_cleanup_ms = now_ms;
            if let Err(e) = self.drop_old_touched(ch_now).await {
                tracing::warn!(error = %e, "could not drop old trigger_touched partitions");
            }
        }
        Ok(report)
    }

    /// Records who is in each of `subs`' audiences now (subscriptions of `site`), without
    /// deliveries: one read of the site's data for all of them, written by ClickHouse itself
    /// (`INSERT ... SELECT`). Measured on `bench triggers` (10M events, 100 subscriptions,
    /// about 70 of them per visitor): the rows fetched and written back as JSON cost the
    /// server 46 CPU s of a 289 s first tick, ClickHouse 12.
    async fn baseline(
        &self,
        site: &str,
        subs: &[&Subscription],
        now_ms: i64,
    ) -> Result<(), QueryError> {
        let queries: Vec<&AudienceQuery> = subs.iter().map(|s| &s.query).collect();
        let flags = compile_flags(self.db(), site, &queries, now_ms, None);
        let ids: Vec<String> = subs.iter().map(|s| lit(&s.id)).collect();
        let ids = format!("[{}]", ids.join(", "));
        self.st
            .execute(&format!(
                "INSERT INTO {db}.trigger_members (site, sub_id, person, member, entry, changed_at_ms, version)
SELECT {s}, sub_id, person, toUInt8(1), toUInt32(0), {t}, {t}
FROM ({flags})
ARRAY JOIN arrayFilter((id, m) -> m = 1, {ids}, matches) AS sub_id",
                db = self.db(),
                s = lit(site),
                t = int(now_ms),
            ))
            .await
    }
}

/// The transitions of `subs` (all of `site`) among the candidates `scope` (a membership test,
/// `IN (SELECT ...)` or `GLOBAL IN (SELECT ...)`): one statement for
/// whether each candidate person matches each audience, one for their memberships.
async fn evaluate(
    st: &QueryState,
    site: &str,
    subs: &[&Subscription],
    scope: &str,
    now_ms: i64,
) -> Result<Vec<Delivery>, QueryError> {
    let db = st.db();
    let queries: Vec<&AudienceQuery> = subs.iter().map(|s| &s.query).collect();
    let rows: Vec<FlagsRow> = st
        .fetch(&compile_flags(db, site, &queries, now_ms, Some(scope)))
        .await?;
    let ids: Vec<&str> = subs.iter().map(|s| s.id.as_str()).collect();
    let members: Vec<MembershipRow> = st
        .fetch(&format!(
            "SELECT sub_id, person, argMax(member, version) AS member, argMax(entry, version) AS entry
FROM {db}.trigger_members
WHERE site = {} AND sub_id IN {} AND person {scope}
GROUP BY sub_id, person",
            lit(site),
            lit_list(ids)
        ))
        .await?;
    // Per subscription (by position), person -> (member, entry).
    let position: HashMap<&str, usize> = subs
        .iter()
        .enumerate()
        .map(|(i, s)| (s.id.as_str(), i))
        .collect();
    let mut was: Vec<HashMap<String, (bool, u32)>> = vec![HashMap::new(); subs.len()];
    for m in members {
        if let Some(&i) = position.get(m.sub_id.as_str()) {
            was[i].insert(m.person, (m.member == 1, m.entry));
        }
    }
    let mut out = Vec::new();
    let mut seen = HashSet::new();
    for r in rows {
        let person = r.member.person.clone();
        let mut snapshot = None;
        let mut member_row = Some(r.member);
        for (i, sub) in subs.iter().enumerate() {
            let (in_before, entry) = was[i].remove(&person).unwrap_or((false, 0));
            let now_in = r.matches.get(i) == Some(&1);
            if now_in == in_before {
                continue;
            }
            let (kind, entry) = if now_in {
                ("entered", entry + 1)
            } else {
                ("left", entry)
            };
            // The snapshot is what the scoped query read anyway (id, user id, last seen, geo,
            // traits). Not the whole profile: one `GET /v1/profiles` per entry cost 39.8 s of a
            // 10 s tick on `bench triggers` (2,000 events/s, 100 subscriptions, 2,040
            // candidates), where the platform can ask for the profile of the few it emails.
            let (user_id, snap) = snapshot.get_or_insert_with(|| {
                let m = member_row.take().expect("taken once");
                (m.user_id.clone(), raw(&member(m)))
            });
            out.push(Delivery::new(
                sub, &person, user_id, entry, kind, snap, now_ms,
            ));
        }
        seen.insert(person);
    }
    // Members that are no person any more (an anonymous id now linked to a user: the
    // person is the user from then on) have left.
    for (i, sub) in subs.iter().enumerate() {
        for (person, (in_before, entry)) in std::mem::take(&mut was[i]) {
            if in_before && !seen.contains(&person) {
                let snapshot = raw(&json!({"id": person, "merged": true}));
                out.push(Delivery::new(
                    sub, &person, "", entry, "left", &snapshot, now_ms,
                ));
            }
        }
    }
    Ok(out)
}

impl Evaluator {
    /// Writes new deliveries to the outbox (skipping keys already there: a repeated tick) and
    /// the memberships they change; keeps in `deliveries` only those written now.
    ///
    /// A key already there was written by a tick after the previous committed one (`prev`):
    /// only outbox rows created since (less [`REPEAT_SLACK_MS`] for servers' clocks) are
    /// looked at, so the check reads the recent rows' keys rather than every key the outbox
    /// ever held (keys are random, so `key IN` alone touches every granule).
    async fn record(
        &self,
        deliveries: &mut Vec<Delivery>,
        prev: i64,
        check: bool,
    ) -> Result<(), QueryError> {
        if deliveries.is_empty() {
            return Ok(());
        }
        let db = self.db();
        let mut existing = HashSet::new();
        for chunk in deliveries.chunks(2000).take_while(|_| check) {
            let keys: Vec<&str> = chunk.iter().map(|d| d.key.as_str()).collect();
            let rows: Vec<KeyRow> = self
                .st
                .fetch(&format!(
                    "SELECT DISTINCT key FROM {db}.trigger_deliveries
PREWHERE created_at_ms >= {} WHERE key IN {}",
                    int(prev - REPEAT_SLACK_MS),
                    crate::query::sql::lit_list(keys)
                ))
                .await?;
            existing.extend(rows.into_iter().map(|r| r.key));
        }
        let mut outbox = Vec::with_capacity(deliveries.len());
        let mut members = Vec::with_capacity(deliveries.len());
        for d in deliveries.iter() {
            members.push(MembershipOut {
                site: d.site.clone(),
                sub_id: d.sub_id.clone(),
                person: d.person.clone(),
                member: u8::from(d.kind == "entered"),
                entry: d.entry,
                changed_at_ms: d.created_at_ms,
                version: d.created_at_ms as u64,
            });
            if !existing.contains(&d.key) {
                outbox.push(d.row("pending", "", 0));
            }
        }
        self.st.insert_rows("trigger_deliveries", &outbox).await?;
        self.st.insert_rows("trigger_members", &members).await?;
        deliveries.retain(|d| !existing.contains(&d.key));
        Ok(())
    }

    /// Drops `trigger_touched` days older than [`KEEP_TOUCHED_DAYS`] (18.16 has no TTL).
    async fn drop_old_touched(&self, ch_now: i64) -> Result<(), QueryError> {
        let db = self.db();
        let cutoff =
            waymark_protocol::time::format_rfc3339((ch_now - KEEP_TOUCHED_DAYS * 86_400) * 1000);
        let cutoff: String = cutoff
            .chars()
            .take(10)
            .filter(char::is_ascii_digit)
            .collect();
        let layout = self.st.layout();
        let parts: Vec<PartitionRow> = self
            .st
            .fetch(&format!(
                "SELECT DISTINCT partition FROM {}
WHERE database = {} AND table = {} AND active",
                layout.every_shard("parts"),
                lit(db),
                lit(&layout.local_name("trigger_touched"))
            ))
            .await?;
        for p in parts {
            if p.partition.len() == 8
                && p.partition.bytes().all(|b| b.is_ascii_digit())
                && p.partition < cutoff
            {
                self.st
                    .execute(&format!(
                        "ALTER TABLE {} DROP PARTITION {}",
                        layout.alter_target(db, "trigger_touched"),
                        p.partition
                    ))
                    .await?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sub(conditions: serde_json::Value) -> Subscription {
        let audience = json!({ "conditions": conditions });
        Subscription {
            site: "shop".into(),
            id: "s1".into(),
            name: "n".into(),
            query: crate::query::audience::parse(audience.to_string().as_bytes()).unwrap(),
            audience,
            url: "http://127.0.0.1/".into(),
            secret: "0123456789abcdef".into(),
            created_at_ms: 0,
        }
    }

    #[test]
    fn windows_that_closed_since_the_last_tick_are_the_edges() {
        let s = sub(json!([
            {"type": "did", "event": "Product Added", "within": "1h"},
            {"type": "did_not", "event": "Order Completed", "within": "1h"},
            {"type": "geo", "field": "country", "op": "eq", "value": "DE"}
        ]));
        let now = 10_000_000;
        let e = edge_condition(&[&s], now - 10_000, now).unwrap();
        assert!(e.contains("event = 'Product Added'"), "{e}");
        assert!(e.contains("event = 'Order Completed'"), "{e}");
        assert!(
            e.contains(&format!("timestamp_ms >= {}", now - 10_000 - 3_600_000)),
            "{e}"
        );
        assert!(
            e.contains(&format!("timestamp_ms < {}", now - 3_600_000)),
            "{e}"
        );
        // Both ends on the key column, so only the window's granules are read.
        assert!(
            e.contains(&format!(
                "timestamp <= toDateTime({})",
                (now - 3_600_000).div_euclid(1000)
            )),
            "{e}"
        );
        assert!(edge_condition(&[&s], now, now).is_none(), "no time passed");
        let no_window = sub(json!([{"type": "did", "event": "x"}]));
        assert!(edge_condition(&[&no_window], 0, now).is_none());
    }

    #[test]
    fn keys_differ_by_every_part() {
        let k = idempotency_key("shop", "s", "p", 1, "entered");
        assert_eq!(k.len(), 32);
        assert_eq!(k, idempotency_key("shop", "s", "p", 1, "entered"));
        for other in [
            idempotency_key("blog", "s", "p", 1, "entered"),
            idempotency_key("shop", "t", "p", 1, "entered"),
            idempotency_key("shop", "s", "q", 1, "entered"),
            idempotency_key("shop", "s", "p", 2, "entered"),
            idempotency_key("shop", "s", "p", 1, "left"),
            idempotency_key("shop", "s", "p1", 1, "entered"),
        ] {
            assert_ne!(k, other);
        }
    }
}
