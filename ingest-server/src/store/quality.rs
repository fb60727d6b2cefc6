//! `quality_hourly`: per site and hour counts that only the intake sees (events refused by
//! reason, duplicates dropped by message id, events over the rate limit), kept in ClickHouse so
//! they survive restarts and add up across servers, beside what a view on `events` writes there
//! (how long acknowledged events took to become visible). Migrations 130 and 131; read by
//! `crate::query::quality`.
//!
//! The intake adds to an in-memory [`HourlyCounts`] (a mutex over a small map: one lock per
//! request, never per event); [`run_flusher`] moves it into ClickHouse every `quality.flush`
//! as one insert. The table is a `SummingMergeTree`, so each server's rows, and each flush's,
//! add up as parts merge; readers `sum(value)` anyway. What a failed insert took is put back
//! and sent with the next flush; what is in memory when the process dies (at most one flush
//! interval) is lost, which is fine for counts that only describe quality.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{ClickHouseSink, StoreError};

/// The table.
pub const TABLE: &str = "quality_hourly";

/// Migration 130's statement.
pub const QUALITY_HOURLY: &str = "CREATE TABLE IF NOT EXISTS {db}.quality_hourly (
    site String,
    hour DateTime,
    metric String,
    reason String,
    value UInt64
) ENGINE = SummingMergeTree(value)
PARTITION BY toYYYYMM(hour)
ORDER BY (site, hour, metric, reason)";

/// Migration 131's statements: for each insert into `events`, per site, the rows that became
/// visible, the sum of their ack-to-visible delays (the ClickHouse server's clock at the insert
/// minus the intake's `received_at_ms`; the intake answered right after `received_at_ms`), and
/// how many took over a minute. Aggregated per insert block, so a batch of 10,000 rows writes
/// one row per site to each. Three plain views rather than one: 18.16 refuses a view whose
/// `ARRAY JOIN` reads a subquery's aliases ("Unknown identifier" while pushing to the view,
/// which fails the insert into `events` after its rows are written).
pub const FRESHNESS_VIEWS: &[&str] = &[
    "CREATE MATERIALIZED VIEW IF NOT EXISTS {db}.quality_visible_mv TO {db}.quality_hourly AS SELECT site, toStartOfHour(now()) AS hour, 'visible_rows' AS metric, '' AS reason, count() AS value
FROM {db}.events GROUP BY site",
    "CREATE MATERIALIZED VIEW IF NOT EXISTS {db}.quality_delay_mv TO {db}.quality_hourly AS SELECT site, toStartOfHour(now()) AS hour, 'visible_delay_ms' AS metric, '' AS reason, sum(toUInt64(greatest(toInt64(now()) * 1000 - received_at_ms, 0))) AS value
FROM {db}.events GROUP BY site",
    "CREATE MATERIALIZED VIEW IF NOT EXISTS {db}.quality_late_mv TO {db}.quality_hourly AS SELECT site, toStartOfHour(now()) AS hour, 'visible_late_60s' AS metric, '' AS reason, countIf(toInt64(now()) * 1000 - received_at_ms > 60000) AS value
FROM {db}.events GROUP BY site",
];

/// The metrics the intake counts (the `metric` column); the view writes `visible_*`.
pub mod metric {
    /// An event refused; `reason` is `invalid_field:<top-level field>` or the plan's
    /// `plan:<kind>`.
    pub const REJECTED: &str = "rejected";
    /// An event dropped as a recent duplicate of the same message id (`crate::intake::dedup`).
    pub const DUPLICATE: &str = "duplicate";
    /// An event refused by the site's rate limit (429).
    pub const RATE_LIMITED: &str = "rate_limited";
    pub const VISIBLE_ROWS: &str = "visible_rows";
    pub const VISIBLE_DELAY_MS: &str = "visible_delay_ms";
    pub const VISIBLE_LATE_60S: &str = "visible_late_60s";
}

/// One row of `quality_hourly`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, clickhouse::Row)]
pub struct HourlyRow {
    pub site: String,
    /// DateTime: the start of the hour.
    pub hour: u32,
    pub metric: String,
    pub reason: String,
    pub value: u64,
}

type Key = (String, u32, &'static str, String);

/// Counts not yet in ClickHouse, by (site, hour, metric, reason).
#[derive(Debug, Default)]
pub struct HourlyCounts(Mutex<HashMap<Key, u64>>);

impl HourlyCounts {
    /// Adds `n` to `metric`/`reason` of `site` in the hour holding `at_ms`.
    pub fn add(&self, site: &str, at_ms: i64, metric: &'static str, reason: &str, n: u64) {
        self.add_all(site, at_ms, [(metric, reason, n)]);
    }

    /// Adds several counts of one site and moment under one lock.
    pub fn add_all<'a>(
        &self,
        site: &str,
        at_ms: i64,
        counts: impl IntoIterator<Item = (&'static str, &'a str, u64)>,
    ) {
        let hour = hour_of(at_ms);
        let mut map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        for (metric, reason, n) in counts {
            if n > 0 {
                *map.entry((site.to_string(), hour, metric, reason.to_string()))
                    .or_default() += n;
            }
        }
    }

    /// Takes every count out, as rows.
    pub fn take(&self) -> Vec<HourlyRow> {
        let map = std::mem::take(&mut *self.0.lock().unwrap_or_else(|p| p.into_inner()));
        map.into_iter()
            .map(|((site, hour, metric, reason), value)| HourlyRow {
                site,
                hour,
                metric: metric.to_string(),
                reason,
                value,
            })
            .collect()
    }

    /// Puts rows back (an insert failed); they go with the next flush.
    fn put_back(&self, rows: Vec<HourlyRow>) {
        let mut map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        for r in rows {
            let Some(metric) = static_metric(&r.metric) else {
                continue;
            };
            *map.entry((r.site, r.hour, metric, r.reason)).or_default() += r.value;
        }
    }

    /// Inserts what has been counted; on failure the counts stay for the next call.
    pub async fn flush(&self, sink: &ClickHouseSink) -> Result<usize, StoreError> {
        let rows = self.take();
        let n = rows.len();
        if let Err(e) = sink.insert_rows(TABLE, &rows).await {
            self.put_back(rows);
            return Err(e);
        }
        Ok(n)
    }
}

fn static_metric(m: &str) -> Option<&'static str> {
    [metric::REJECTED, metric::DUPLICATE, metric::RATE_LIMITED]
        .into_iter()
        .find(|s| *s == m)
}

/// The start of the UTC hour holding `ms`, in seconds (clamped to a `DateTime`'s range).
pub fn hour_of(ms: i64) -> u32 {
    let s = ms.div_euclid(1000).clamp(0, u32::MAX as i64);
    (s - s % 3600) as u32
}

/// Flushes `counts` every `every` until `stop` turns true, then once more.
pub async fn run_flusher(
    counts: Arc<HourlyCounts>,
    sink: Arc<ClickHouseSink>,
    every: Duration,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    loop {
        let stopping = tokio::select! {
            _ = tokio::time::sleep(every) => false,
            _ = stop.changed() => true,
        };
        if sink_ready(&sink) {
            if let Err(e) = counts.flush(&sink).await {
                tracing::warn!(error = %e, "quality counts not flushed yet; kept for the next try");
            }
        }
        if stopping || *stop.borrow() {
            return;
        }
    }
}

fn sink_ready(sink: &ClickHouseSink) -> bool {
    sink.schema.is_ready()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_add_up_by_site_hour_metric_and_reason_and_come_back_after_a_failure() {
        let c = HourlyCounts::default();
        let t = 1_764_000_000_000; // 2025-11-24T16:00:00Z
        c.add("a", t + 5_000, metric::DUPLICATE, "", 2);
        c.add("a", t + 3_599_000, metric::DUPLICATE, "", 3);
        c.add("a", t + 3_600_000, metric::DUPLICATE, "", 1);
        c.add_all(
            "b",
            t,
            [
                (metric::REJECTED, "invalid_field:event", 4),
                (metric::REJECTED, "plan:type_mismatch", 0),
            ],
        );
        let mut rows = c.take();
        rows.sort_by(|x, y| (&x.site, x.hour).cmp(&(&y.site, y.hour)));
        let got: Vec<(&str, u32, &str, &str, u64)> = rows
            .iter()
            .map(|r| {
                (
                    r.site.as_str(),
                    r.hour,
                    r.metric.as_str(),
                    r.reason.as_str(),
                    r.value,
                )
            })
            .collect();
        let h = (t / 1000) as u32;
        assert_eq!(
            got,
            [
                ("a", h, "duplicate", "", 5),
                ("a", h + 3600, "duplicate", "", 1),
                ("b", h, "rejected", "invalid_field:event", 4),
            ]
        );
        assert!(c.take().is_empty());
        c.put_back(rows);
        c.add("a", t, metric::DUPLICATE, "", 1);
        let back: u64 = c.take().iter().map(|r| r.value).sum();
        assert_eq!(back, 11);
    }

    #[test]
    fn hours_start_on_the_hour() {
        assert_eq!(hour_of(3_600_000 * 5 + 1), 3600 * 5);
        assert_eq!(hour_of(-5), 0);
    }
}
