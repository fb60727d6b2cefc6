//! Retention: a site's events are kept for its `retention` (`"400d"`), then removed.
//!
//! `events` is partitioned by the month of the server-corrected `timestamp` (migration 110),
//! and every site shares those partitions. So:
//!
//! - a whole month is dropped (`ALTER TABLE .. DROP PARTITION`, instant, no rewrite) once it
//!   ends before the cutoff of every site: only when every configured site has a retention,
//!   and the month is older than the longest of them;
//! - a site whose retention is shorter than that loses its older rows by a mutation
//!   (`ALTER TABLE .. DELETE WHERE site = .. AND timestamp < ..`), issued only when such rows
//!   exist (on 18.16 a mutation rewrites every part it touches);
//! - the query tables that keep rows by time get the same treatment: `q_events_by_name` (same
//!   monthly partitions), `q_history`, `q_orders` and `q_visitor_days` (mutations).
//!
//! TTL is not used: 18.16 has none, and a per-site TTL needs `TTL .. WHERE`, which only
//! recent releases have; partition drops and mutations work on every server. The lifetime
//! aggregates (`q_visitor`, `q_visitor_products`) and the identity links are not trimmed by
//! time; deleting a person removes them.
//!
//! [`run`] is called every `[privacy] retention_check` (a day by default) by the server, and
//! directly by tests, with partitions made old on purpose.

use std::time::Duration;

use serde::Deserialize;

use crate::config::SiteConfig;
use crate::query::sql::lit;
use crate::query::{QueryError, QueryState};

/// Tables whose rows are removed by time: name, time column as a `DateTime` expression,
/// partitioned by `toYYYYMM` of it.
const TABLES: &[(&str, &str, bool)] = &[
    ("events", "timestamp", true),
    ("q_events_by_name", "timestamp", true),
    ("q_history", "timestamp", false),
    ("q_orders", "toDateTime(intDiv(timestamp_ms, 1000))", false),
    ("q_visitor_days", "toDateTime(day)", false),
];

/// What one run did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// `table:partition` dropped whole.
    pub dropped_partitions: Vec<String>,
    /// `table:site` given a delete mutation.
    pub mutations: Vec<String>,
}

/// The cutoff (Unix seconds) of every site with a retention.
pub fn cutoffs(sites: &[SiteConfig], now_secs: i64) -> Vec<(String, i64)> {
    sites
        .iter()
        .filter_map(|s| {
            s.retention
                .map(|r| (s.id.clone(), now_secs - r.0.as_secs() as i64))
        })
        .collect()
}

/// The first second after the month `yyyymm` (UTC).
pub fn month_end(yyyymm: u32) -> i64 {
    let (y, m) = ((yyyymm / 100) as i64, (yyyymm % 100) as i64);
    let (y, m) = if m == 12 { (y + 1, 1) } else { (y, m + 1) };
    days_from_civil(y, m, 1) * 86_400
}

/// Days since 1970-01-01 of a civil date (H. Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Whether a month can be dropped whole: every site has a cutoff and the month ends before the
/// earliest of them.
pub fn droppable(yyyymm: u32, all_sites: usize, cutoffs: &[(String, i64)]) -> bool {
    all_sites > 0
        && cutoffs.len() == all_sites
        && cutoffs.iter().all(|(_, c)| month_end(yyyymm) <= *c)
}

/// Removes what is past every site's retention (see the module doc).
pub async fn run(
    st: &QueryState,
    client: &clickhouse::Client,
    sites: &[SiteConfig],
    now_secs: i64,
) -> Result<Outcome, QueryError> {
    let db = st.db();
    let cuts = cutoffs(sites, now_secs);
    let mut out = Outcome::default();
    if cuts.is_empty() {
        return Ok(out);
    }
    for (table, time, partitioned) in TABLES {
        if *partitioned {
            #[derive(Deserialize)]
            struct P {
                partition: String,
            }
            let parts: Vec<P> = st
                .fetch(&format!(
                    "SELECT DISTINCT partition FROM {}
WHERE database = {} AND table = {} AND active",
                    st.layout().every_shard("parts"),
                    lit(db),
                    lit(&st.layout().local_name(table))
                ))
                .await?;
            for p in parts {
                let Ok(month) = p.partition.trim_matches('\'').parse::<u32>() else {
                    continue;
                };
                if droppable(month, sites.len(), &cuts) {
                    client
                        .query(&format!(
                            "ALTER TABLE {} DROP PARTITION {month}",
                            st.layout().alter_target(db, table)
                        ))
                        .execute()
                        .await?;
                    out.dropped_partitions.push(format!("{table}:{month}"));
                }
            }
        }
        for (site, cut) in &cuts {
            let filter = format!("site = {} AND {time} < toDateTime({cut})", lit(site));
            #[derive(Deserialize)]
            struct N {
                n: u64,
            }
            let n: Vec<N> = st
                .fetch(&format!(
                    "SELECT count() AS n FROM {db}.{table} WHERE {filter}"
                ))
                .await?;
            if n.first().is_some_and(|n| n.n > 0) {
                client
                    .query(&format!(
                        "ALTER TABLE {} DELETE WHERE {filter}",
                        st.layout().alter_target(db, table)
                    ))
                    .execute()
                    .await?;
                out.mutations.push(format!("{table}:{site}"));
            }
        }
    }
    if !out.dropped_partitions.is_empty() || !out.mutations.is_empty() {
        tracing::info!(dropped = ?out.dropped_partitions, mutations = ?out.mutations, "retention applied");
    }
    Ok(out)
}

/// Runs [`run`] every `every` while the server runs (the first time once the schema is ready).
pub async fn schedule(
    st: QueryState,
    client: clickhouse::Client,
    sites: Vec<SiteConfig>,
    every: Duration,
) {
    if sites.iter().all(|s| s.retention.is_none()) {
        return;
    }
    loop {
        if st.schema_ready() {
            let now = crate::clock::now_ms().div_euclid(1000);
            if let Err(e) = run(&st, &client, &sites, now).await {
                tracing::warn!(error = %e, "retention check failed; retried at the next check");
            }
            tokio::time::sleep(every).await;
        } else {
            tokio::time::sleep(Duration::from_secs(5)).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn months_end_where_the_next_begins() {
        assert_eq!(month_end(197001), 31 * 86_400);
        assert_eq!(month_end(202412), 1_735_689_600); // 2025-01-01
        assert_eq!(month_end(202402), 1_709_251_200); // 2024-03-01 (leap year)
    }

    #[test]
    fn a_month_goes_whole_only_past_every_sites_cutoff() {
        let mar_2024 = 1_709_251_200;
        let cuts = vec![("a".to_string(), mar_2024), ("b".to_string(), mar_2024 + 1)];
        assert!(droppable(202402, 2, &cuts));
        assert!(!droppable(202403, 2, &cuts), "March ends after the cutoffs");
        assert!(
            !droppable(202402, 3, &cuts),
            "a site without retention keeps every month"
        );
        assert!(!droppable(202402, 0, &[]));
    }
}
