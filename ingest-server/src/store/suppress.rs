//! The suppression list: (site, id, until) for every id of a person deleted through
//! `DELETE /v1/persons/{id}` (`crate::privacy`). Events of that person can still be on their way
//! when the deletion runs: in this server's spool, in the edge worker's queue, or in a browser's
//! retry queue that sends them days later. The intake drops them before the spool
//! (`crate::intake::Intake::admit`), and the ClickHouse sink drops them before each insert
//! (`super::ClickHouseSink`), until the entry expires (`[privacy] suppress_for`).
//!
//! The list is kept in memory (a map; one lookup per id column per row) and in the
//! `suppressions` table, so every server sharing the database honours it: each loads the
//! table at start and again every [`REFRESH`].

use std::collections::HashMap;
use std::sync::RwLock;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::row::EventRow;
use super::{classify, StoreError};

/// How often the list is read again from ClickHouse (entries other servers added).
pub const REFRESH: Duration = Duration::from_secs(30);

/// One row of the `suppressions` table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, clickhouse::Row)]
pub struct SuppressionRow {
    pub site: String,
    pub id: String,
    /// DateTime: when the person was deleted.
    pub suppressed_at: u32,
    /// DateTime: until when their late events are dropped.
    pub until: u32,
}

/// The in-memory list: site -> id -> until (Unix seconds). Nested so a lookup borrows the
/// row's strings instead of building a key (it runs for every id of every row while the list
/// is not empty).
#[derive(Debug, Default)]
pub struct Suppressions {
    entries: RwLock<HashMap<String, HashMap<String, u32>>>,
}

impl Suppressions {
    /// Adds entries (the later `until` wins).
    pub fn add(&self, rows: &[SuppressionRow]) {
        let mut m = self.entries.write().expect("suppressions");
        for r in rows {
            let e = m
                .entry(r.site.clone())
                .or_default()
                .entry(r.id.clone())
                .or_insert(0);
            *e = (*e).max(r.until);
        }
    }

    /// Whether the list is empty (the common case: no lookups at all).
    pub fn is_empty(&self) -> bool {
        self.entries.read().expect("suppressions").is_empty()
    }

    /// Whether `id` of `site` is suppressed at `now_secs`.
    pub fn contains(&self, site: &str, id: &str, now_secs: u32) -> bool {
        if id.is_empty() {
            return false;
        }
        self.entries
            .read()
            .expect("suppressions")
            .get(site)
            .and_then(|ids| ids.get(id))
            .is_some_and(|&until| until > now_secs)
    }

    /// Whether a row belongs to a suppressed person (by any of its ids). Reads only fields of
    /// `crate::spool::rows::Keys`, as [`super::row::identity_links`] does, for the same reason.
    pub fn suppresses(&self, r: &EventRow, now_secs: u32) -> bool {
        [&r.visitor_id, &r.anonymous_id, &r.user_id, &r.previous_id]
            .iter()
            .any(|id| self.contains(&r.site, id, now_secs))
    }

    /// `rows` without those of suppressed people; `None` when none is dropped (no copy).
    pub fn filter(&self, rows: &[EventRow], now_secs: u32) -> Option<Vec<EventRow>> {
        if self.is_empty() || !rows.iter().any(|r| self.suppresses(r, now_secs)) {
            return None;
        }
        Some(
            rows.iter()
                .filter(|r| !self.suppresses(r, now_secs))
                .cloned()
                .collect(),
        )
    }

    /// Drops expired entries from memory.
    pub fn expire(&self, now_secs: u32) {
        let mut m = self.entries.write().expect("suppressions");
        for ids in m.values_mut() {
            ids.retain(|_, until| *until > now_secs);
        }
        m.retain(|_, ids| !ids.is_empty());
    }

    /// Reads the entries still in force from `db.suppressions` (after the migrations).
    pub async fn load(&self, client: &clickhouse::Client, db: &str) -> Result<usize, StoreError> {
        let rows: Vec<SuppressionRow> = client
            .query(&format!(
                "SELECT site, id, suppressed_at, until FROM {db}.suppressions WHERE until > now()"
            ))
            .fetch_all()
            .await
            .map_err(|e| classify(&e))?;
        self.add(&rows);
        self.expire(crate::clock::now_ms().div_euclid(1000) as u32);
        Ok(rows.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_of_suppressed_people_are_dropped_until_the_entry_expires() {
        let s = Suppressions::default();
        let row = |site: &str, anon: &str, user: &str| EventRow {
            site: site.into(),
            visitor_id: anon.into(),
            anonymous_id: anon.into(),
            user_id: user.into(),
            ..EventRow::default()
        };
        let rows = vec![
            row("shop", "a1", ""),
            row("shop", "a2", "u1"),
            row("blog", "a1", ""),
        ];
        assert!(
            s.filter(&rows, 100).is_none(),
            "empty list: nothing dropped"
        );
        s.add(&[
            SuppressionRow {
                site: "shop".into(),
                id: "a1".into(),
                suppressed_at: 50,
                until: 200,
            },
            SuppressionRow {
                site: "shop".into(),
                id: "u1".into(),
                suppressed_at: 50,
                until: 200,
            },
        ]);
        let kept = s.filter(&rows, 100).expect("some dropped");
        assert_eq!(
            kept,
            vec![row("blog", "a1", "")],
            "only the other site's row stays"
        );
        assert!(s.filter(&rows, 200).is_none(), "expired at `until`");
        s.expire(200);
        assert!(s.is_empty());
    }
}
