//! Privacy: forgetting a person, handing a person their data, and keeping data no longer than
//! the site decides. Every endpoint takes an admin key (`[[privacy.admin_keys]]`,
//! `Authorization: Bearer <key>`), a key kind of its own: read keys and write keys cannot
//! delete or export.
//!
//! - `DELETE /v1/persons/{id}?site=S` ([`delete`]): every id of the person is found through the
//!   identity links (anonymous ids, user ids, alias previous ids, to a fixed point); the ids go
//!   on the suppression list (`crate::store::suppress`), so late events still in a spool, the
//!   edge queue or a browser's retry queue are dropped; one delete per table removes their rows
//!   from `events`, `identities`, `quarantine` and every query table ([`TARGETS`]): `ALTER TABLE
//!   .. DELETE` (a mutation; ClickHouse 18.16 has nothing else), or the lightweight `DELETE FROM`
//!   on servers that have it (23.3 and later). Each statement carries the job id as a constant
//!   in its condition, so `GET /v1/deletions/{job}` ([`status`]) finds the job's mutations in
//!   `system.mutations` and says when ClickHouse has finished. Every request is written to the
//!   `deletions` audit table (the person's id as its SHA-256 only). Answer: 202 and the job.
//! - `GET /v1/persons/{id}/export?site=S` ([`export`]): NDJSON, streamed: one line per stored
//!   event (`"record": "event"` and every column) and per identity link
//!   (`"record": "identity"`).
//! - [`retention`]: per-site `retention`, run every `[privacy] retention_check`.
//!
//! Layer: above `query` (it reads through [`QueryState`] and builds SQL with `query::sql`),
//! below `http`.

pub mod retention;

use std::collections::BTreeSet;
use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use serde::Deserialize;
use serde_json::json;
use sha2::Digest as _;

use crate::config::{AdminKey, PrivacyConfig};
use crate::query::identity::IdentityIndex;
use crate::query::sql::{lit, lit_list};
use crate::query::{QueryError, QueryState};
use crate::store::suppress::{SuppressionRow, Suppressions};

/// The tables a person's rows are deleted from, with the columns that hold their ids.
/// `quarantine` keeps a refused row as JSON text, read with `visitParamExtractString`.
pub const TARGETS: &[(&str, &[&str])] = &[
    (
        "events",
        &["visitor_id", "anonymous_id", "user_id", "previous_id"],
    ),
    ("identities", &["user_id", "anonymous_id"]),
    ("q_visitor", &["visitor_id"]),
    ("q_visitor_days", &["visitor_id"]),
    ("q_visitor_products", &["visitor_id"]),
    ("q_orders", &["visitor_id"]),
    ("q_events_by_name", &["visitor_id"]),
    ("q_history", &["visitor_id"]),
    ("q_ident_by_anon", &["anonymous_id", "user_id"]),
    ("q_user_visitors", &["user_id"]),
    ("merges", &["merged_id", "into_id"]),
    ("quarantine", &[]),
];

/// At most this many rounds of following identity links (a person with more hops is unusual;
/// the ids found so far are deleted either way).
const MAX_ROUNDS: usize = 8;

/// What the privacy endpoints share.
#[derive(Clone)]
pub struct PrivacyState(Arc<Inner>);

struct Inner {
    query: QueryState,
    client: clickhouse::Client,
    keys: crate::keys::Keys<usize>,
    admin_keys: Vec<AdminKey>,
    suppress_for_secs: u32,
    suppressions: Arc<Suppressions>,
    identities: Option<Arc<IdentityIndex>>,
}

impl PrivacyState {
    /// The state over `query`'s ClickHouse and database.
    pub fn new(
        config: &PrivacyConfig,
        query: QueryState,
        suppressions: Arc<Suppressions>,
        identities: Option<Arc<IdentityIndex>>,
    ) -> Self {
        let admin_keys = config.admin_keys.clone();
        PrivacyState(Arc::new(Inner {
            client: query.clickhouse().clone(),
            query,
            keys: crate::keys::Keys::new(
                admin_keys
                    .iter()
                    .enumerate()
                    .map(|(i, k)| (k.key.clone(), i)),
            ),
            admin_keys,
            suppress_for_secs: config.suppress_for.0.as_secs().min(u32::MAX as u64) as u32,
            suppressions,
            identities,
        }))
    }

    /// Checks the admin key and that it covers `site`; returns the key's entry and the site.
    pub(crate) fn authorize(
        &self,
        headers: &HeaderMap,
        site: Option<&str>,
    ) -> Result<(&AdminKey, String), QueryError> {
        let key = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim)
            .filter(|k| !k.is_empty())
            .ok_or_else(|| {
                QueryError::Unauthorized(
                    "authorization: expected `Bearer <admin key>` ([[privacy.admin_keys]])".into(),
                )
            })?;
        let entry = self
            .0
            .keys
            .find(key)
            .map(|&i| &self.0.admin_keys[i])
            .ok_or_else(|| {
                QueryError::Unauthorized(
                    "authorization: not an admin key (read and write keys cannot delete or export)"
                        .into(),
                )
            })?;
        let site = site
            .filter(|s| !s.is_empty())
            .ok_or_else(|| QueryError::bad("site", "missing; pass ?site=<site id>"))?;
        if !entry.sites.iter().any(|s| s == site) {
            return Err(QueryError::Forbidden(format!(
                "site: this admin key may not act on site {site:?}"
            )));
        }
        Ok((entry, site.to_string()))
    }

    fn db(&self) -> &str {
        self.0.query.db()
    }

    async fn execute(&self, sql: &str) -> Result<(), QueryError> {
        self.0
            .client
            .query(sql)
            .execute()
            .await
            .map_err(QueryError::from)
    }
}

/// The routes.
pub fn router<S: Clone + Send + Sync + 'static>(state: PrivacyState) -> Router<S> {
    Router::new()
        .route("/v1/persons/{id}", axum::routing::delete(delete))
        .route("/v1/persons/{id}/export", get(export))
        .route("/v1/deletions/{job}", get(status))
        .with_state(state)
}

#[derive(Debug, Deserialize)]
pub struct SiteParam {
    pub site: Option<String>,
}

/// Every id of the person behind `id` on `site`: `id` itself and everything linked to it in
/// `identities`, followed until nothing new is found (or `MAX_ROUNDS` rounds).
pub async fn person_ids(
    st: &QueryState,
    site: &str,
    id: &str,
) -> Result<BTreeSet<String>, QueryError> {
    let db = st.db();
    let mut ids: BTreeSet<String> = [id.to_string()].into();
    let mut frontier = vec![id.to_string()];
    for _ in 0..MAX_ROUNDS {
        if frontier.is_empty() {
            break;
        }
        let list = lit_list(frontier.iter().map(String::as_str));
        #[derive(Deserialize)]
        struct Link {
            user_id: String,
            anonymous_id: String,
        }
        let links: Vec<Link> = st
            .fetch(&format!(
                "SELECT DISTINCT user_id, anonymous_id FROM {db}.identities
WHERE site = {} AND (user_id IN {list} OR anonymous_id IN {list})",
                lit(site)
            ))
            .await?;
        // An identifier (`$email:`...) is deleted with the person but not followed: another
        // user sharing it on a site that does not merge on it is another person (merged users
        // are linked directly, `crate::identity`).
        frontier = links
            .into_iter()
            .flat_map(|l| [l.user_id, l.anonymous_id])
            .filter(|x| !x.is_empty() && ids.insert(x.clone()))
            .filter(|x| !crate::store::row::is_identifier(x))
            .collect();
    }
    Ok(ids)
}

/// The condition selecting a person's rows of `table` (`columns` from [`TARGETS`]).
fn person_filter(table: &str, columns: &[&str], site: &str, ids: &BTreeSet<String>) -> String {
    let list = lit_list(ids.iter().map(String::as_str));
    let any = if table == "quarantine" {
        ["visitor_id", "anonymous_id", "user_id", "previous_id"]
            .iter()
            .map(|c| format!("visitParamExtractString(row, '{c}') IN {list}"))
            .collect::<Vec<_>>()
            .join(" OR ")
    } else {
        columns
            .iter()
            .map(|c| format!("{c} IN {list}"))
            .collect::<Vec<_>>()
            .join(" OR ")
    };
    format!("site = {} AND ({any})", lit(site))
}

/// `(major, minor)` of the server, from `SELECT version()`.
async fn server_version(st: &QueryState) -> Result<(u32, u32), QueryError> {
    #[derive(Deserialize)]
    struct V {
        v: String,
    }
    let rows: Vec<V> = st.fetch("SELECT version() AS v").await?;
    let v = rows.first().map(|r| r.v.as_str()).unwrap_or("0.0");
    let mut parts = v.split('.').map(|p| p.parse::<u32>().unwrap_or(0));
    Ok((parts.next().unwrap_or(0), parts.next().unwrap_or(0)))
}

/// The statement deleting `filter`'s rows of `table`: lightweight where the server has it.
pub fn delete_statement(db: &str, table: &str, filter: &str, lightweight: bool) -> String {
    if lightweight {
        format!("DELETE FROM {db}.{table} WHERE {filter}")
    } else {
        format!("ALTER TABLE {db}.{table} DELETE WHERE {filter}")
    }
}

/// The constant each statement of a job carries, so `system.mutations` can be searched for it.
fn job_marker(job: &str) -> String {
    format!("notEmpty('waymark deletion {job}')")
}

fn sha256_hex(s: &str) -> String {
    sha2::Sha256::digest(s.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// One row of the `deletions` audit table.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, clickhouse::Row)]
pub struct DeletionRow {
    pub job_id: String,
    pub site: String,
    pub person_sha256: String,
    pub ids: u32,
    pub tables: Vec<String>,
    pub mutations: u32,
    /// DateTime.
    pub requested_at: u32,
    pub admin_key: String,
}

/// `DELETE /v1/persons/{id}?site=S` (see the module doc).
pub async fn delete(
    State(st): State<PrivacyState>,
    Path(id): Path<String>,
    Query(p): Query<SiteParam>,
    headers: HeaderMap,
) -> Response {
    let run = async {
        let (key, site) = st.authorize(&headers, p.site.as_deref())?;
        if id.is_empty() {
            return Err(QueryError::bad("id", "must not be empty"));
        }
        let q = &st.0.query;
        let ids = person_ids(q, &site, &id).await?;
        let now = (crate::clock::now_ms().div_euclid(1000)) as u32;
        let job = uuid::Uuid::new_v4().to_string();

        // Suppression first: from here on, nothing new of this person is stored.
        let rows: Vec<SuppressionRow> = ids
            .iter()
            .map(|i| SuppressionRow {
                site: site.clone(),
                id: i.clone(),
                suppressed_at: now,
                until: now.saturating_add(st.0.suppress_for_secs),
            })
            .collect();
        st.0.suppressions.add(&rows);
        insert(&st.0.client, st.db(), "suppressions", &rows).await?;
        if let Some(ix) = &st.0.identities {
            ix.forget(&site, ids.iter().map(String::as_str));
        }

        let (major, minor) = server_version(q).await?;
        let lightweight = (major, minor) >= (23, 3);
        let db = st.db().to_string();
        let marker = job_marker(&job);
        let mut tables = Vec::new();
        for (table, columns) in TARGETS {
            let filter = format!(
                "{} AND {marker}",
                person_filter(table, columns, &site, &ids)
            );
            // `quarantine` is a plain MergeTree; every table takes both forms. On a cluster,
            // a mutation of every shard's local table (`ON CLUSTER`); `status` then follows
            // this server's replica, which gets each of them.
            let sql = match q.layout().cluster() {
                Some(_) => format!(
                    "ALTER TABLE {} DELETE WHERE {filter}",
                    q.layout().alter_target(&db, table)
                ),
                None => delete_statement(&db, table, &filter, lightweight),
            };
            st.execute(&sql).await?;
            tables.push(table.to_string());
        }
        let audit = DeletionRow {
            job_id: job.clone(),
            site: site.clone(),
            person_sha256: sha256_hex(&id),
            ids: ids.len() as u32,
            mutations: tables.len() as u32,
            tables,
            requested_at: now,
            admin_key: key.name.clone(),
        };
        insert(&st.0.client, &db, "deletions", &[audit]).await?;
        // No cached answer of the person is served again (a profile asked for before
        // ClickHouse finishes is cached anew; the status call clears again when done).
        q.forget_cached();
        tracing::info!(%site, job = %job, ids = ids.len(), lightweight, "person deletion requested");
        Ok((
            StatusCode::ACCEPTED,
            axum::Json(json!({
                "job": job,
                "site": site,
                "ids": ids.len(),
                "status": "running",
                "status_url": format!("/v1/deletions/{job}?site={site}"),
            })),
        )
            .into_response())
    };
    run.await.unwrap_or_else(IntoResponse::into_response)
}

async fn insert<T>(
    client: &clickhouse::Client,
    db: &str,
    table: &str,
    rows: &[T],
) -> Result<(), QueryError>
where
    T: clickhouse::RowOwned + clickhouse::RowWrite,
{
    let mut ins = client
        .clone()
        .with_database(db)
        .insert::<T>(table)
        .await
        .map_err(QueryError::from)?;
    for r in rows {
        ins.write(r).await.map_err(QueryError::from)?;
    }
    ins.end().await.map_err(QueryError::from)
}

/// `GET /v1/deletions/{job}?site=S`: `running` until every statement of the job is done in
/// `system.mutations`, then `done`.
pub async fn status(
    State(st): State<PrivacyState>,
    Path(job): Path<String>,
    Query(p): Query<SiteParam>,
    headers: HeaderMap,
) -> Response {
    let run = async {
        let (_, site) = st.authorize(&headers, p.site.as_deref())?;
        let q = &st.0.query;
        let db = st.db();
        #[derive(Deserialize)]
        struct Job {
            mutations: u32,
            requested_at: String,
        }
        let jobs: Vec<Job> = q
            .fetch(&format!(
                "SELECT mutations, toString(requested_at) AS requested_at FROM {db}.deletions
WHERE site = {} AND job_id = {}",
                lit(&site),
                lit(&job)
            ))
            .await?;
        let Some(j) = jobs.into_iter().next() else {
            return Err(QueryError::NotFound(format!(
                "job: no deletion {job:?} on site {site:?}"
            )));
        };
        #[derive(Deserialize)]
        struct M {
            table: String,
            is_done: u8,
            parts_to_do: i64,
        }
        let marker = format!("waymark deletion {job}");
        // One row per statement: on a cluster, `every_shard` lists each statement's mutation
        // once per shard (a replica of each; 18.16 has no `clusterAllReplicas`), done when done
        // on every shard.
        let ms: Vec<M> = q
            .fetch(&format!(
                "SELECT table, min(is_done) AS is_done, toInt64(sum(parts_to_do)) AS parts_to_do
FROM {}
WHERE database = {} AND position(command, {}) > 0
GROUP BY table, command",
                q.layout().every_shard("mutations"),
                lit(db),
                lit(&marker)
            ))
            .await?;
        let finished = ms.iter().filter(|m| m.is_done == 1).count();
        // A lightweight delete that completed at once may be gone from `system.mutations`
        // after cleanup; a job with no mutation left at all is finished too.
        let done = finished == ms.len();
        if done {
            q.forget_cached();
        }
        let pending: Vec<&str> = ms
            .iter()
            .filter(|m| m.is_done == 0)
            .map(|m| m.table.as_str())
            .collect();
        Ok(axum::Json(json!({
            "job": job,
            "site": site,
            "requested_at": j.requested_at,
            "status": if done { "done" } else { "running" },
            "statements": j.mutations,
            "mutations_done": finished,
            "parts_to_do": ms.iter().map(|m| m.parts_to_do.max(0)).sum::<i64>(),
            "pending_tables": pending,
        }))
        .into_response())
    };
    run.await.unwrap_or_else(IntoResponse::into_response)
}

/// `GET /v1/persons/{id}/export?site=S`: NDJSON of every stored event and identity link of
/// the person, read from ClickHouse as it streams. A failure after the first line ends the
/// stream with an `{"error": ...}` line.
pub async fn export(
    State(st): State<PrivacyState>,
    Path(id): Path<String>,
    Query(p): Query<SiteParam>,
    headers: HeaderMap,
) -> Response {
    let run = async {
        let (_, site) = st.authorize(&headers, p.site.as_deref())?;
        let q = st.0.query.clone();
        let ids = person_ids(&q, &site, &id).await?;
        let db = st.db();
        let events = format!(
            "SELECT 'event' AS record, * FROM {db}.events FINAL WHERE {} ORDER BY timestamp_ms, message_id",
            person_filter("events", TARGETS[0].1, &site, &ids)
        );
        let links = format!(
            "SELECT 'identity' AS record, site, user_id, anonymous_id, toString(linked_at) AS linked_at,
    message_id, source_type FROM {db}.identities FINAL WHERE {} ORDER BY linked_at, anonymous_id",
            person_filter("identities", TARGETS[1].1, &site, &ids)
        );
        #[derive(Deserialize)]
        struct N {
            n: u64,
        }
        let found: Vec<N> = q
            .fetch(&format!(
                "SELECT (SELECT count() FROM {db}.events WHERE {}) + (SELECT count() FROM {db}.identities WHERE {}) AS n",
                person_filter("events", TARGETS[0].1, &site, &ids),
                person_filter("identities", TARGETS[1].1, &site, &ids)
            ))
            .await?;
        if found.first().is_none_or(|f| f.n == 0) {
            return Err(QueryError::NotFound(format!(
                "id: nothing stored for {id:?} on site {site:?}"
            )));
        }
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(16);
        tokio::spawn(async move {
            for sql in [events, links] {
                let mut cursor = match q.select(&sql) {
                    Ok(c) => c,
                    Err(e) => {
                        let _ = tx.send(Ok(error_line(&e.to_string()))).await;
                        return;
                    }
                };
                loop {
                    match cursor.next().await {
                        // JSONEachRow: every row ends with a newline, so chunks pass as they are.
                        Ok(Some(chunk)) => {
                            if tx.send(Ok(chunk)).await.is_err() {
                                return; // the client went away
                            }
                        }
                        Ok(None) => break,
                        Err(e) => {
                            let _ = tx
                                .send(Ok(error_line(&format!("the database failed: {e}"))))
                                .await;
                            return;
                        }
                    }
                }
            }
        });
        let mut rx = rx;
        let body = Body::from_stream(futures::stream::poll_fn(move |cx| rx.poll_recv(cx)));
        let mut resp = Response::new(body);
        resp.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/x-ndjson"),
        );
        Ok(resp)
    };
    run.await.unwrap_or_else(IntoResponse::into_response)
}

fn error_line(message: &str) -> Bytes {
    Bytes::from(format!(
        "{}\n",
        json!({"error": "unavailable", "message": message})
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_name_every_id_column_and_escape_ids() {
        let ids: BTreeSet<String> = ["a'1".to_string(), "u1".to_string()].into();
        let f = person_filter("events", TARGETS[0].1, "shop", &ids);
        assert_eq!(
            f,
            "site = 'shop' AND (visitor_id IN ('a\\x271', 'u1') OR anonymous_id IN ('a\\x271', 'u1') \
             OR user_id IN ('a\\x271', 'u1') OR previous_id IN ('a\\x271', 'u1'))"
        );
        let q = person_filter("quarantine", &[], "shop", &ids);
        assert!(
            q.contains("visitParamExtractString(row, 'user_id') IN"),
            "{q}"
        );
        assert_eq!(
            delete_statement("db", "events", "x = 1", false),
            "ALTER TABLE db.events DELETE WHERE x = 1"
        );
        assert_eq!(
            delete_statement("db", "events", "x = 1", true),
            "DELETE FROM db.events WHERE x = 1"
        );
    }
}
