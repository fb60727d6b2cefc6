//! What the query handlers share: read keys, the ClickHouse client, the answer cache, the RFM
//! cache, the schema status and the identity index; and how they read ClickHouse.

use std::sync::Arc;

use axum::http::{header, HeaderMap};
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::Value;

use super::cache::Cache;
use super::{identity, profile, QueryError};
use crate::config::{ClickHouseConfig, QueryConfig};
use crate::metrics::Metrics;

/// What the query handlers share.
#[derive(Clone)]
pub struct QueryState(Arc<Inner>);

/// The settings of every lookup (`QueryState::lookup`).
pub const LOOKUP_SETTINGS: &[(&str, &str)] = &[
    ("max_threads", "1"),
    ("optimize_move_to_prewhere", "0"),
    ("use_uncompressed_cache", "1"),
];

/// What a lookup adds on a cluster whose ClickHouse knows it: the per-person tables are sharded
/// by `cityHash64(site, visitor_id)` (`store::schema::cluster`), and a lookup names the site and
/// the person's visitor ids as literals, so ClickHouse sends it only to those ids' shards (one,
/// for a person with one visitor id). `ingest-server/tests/clickhouse_parity.rs` checks every
/// lookup the API sends on ClickHouse 26 against two shards of which one cannot be reached.
pub const SKIP_UNUSED_SHARDS: (&str, &str) = ("optimize_skip_unused_shards", "1");

struct Inner {
    metrics: Arc<Metrics>,
    config: QueryConfig,
    /// Read key -> index into `config.read_keys`, compared in constant time.
    read_keys: crate::keys::Keys<usize>,
    client: clickhouse::Client,
    db: String,
    cache: Cache,
    rfm: profile::RfmCache,
    schema: Arc<crate::store::SchemaStatus>,
    /// Whether ClickHouse's time zone is UTC, asked once (see [`QueryState::utc_days`]).
    utc: tokio::sync::OnceCell<bool>,
    /// Whether lookups ask ClickHouse to skip the shards their key rules out, asked once (see
    /// [`QueryState::skips_shards`]).
    skip_shards: tokio::sync::OnceCell<bool>,
    identities: Option<Arc<identity::IdentityIndex>>,
    /// One server or a cluster (`[clickhouse] cluster`): where data-changing `ALTER`s go.
    layout: crate::store::Layout,
}

impl QueryState {
    /// A state over a database whose migrations the caller has applied, resolving ids in
    /// ClickHouse (no identity index).
    pub fn new(query: &QueryConfig, clickhouse: &ClickHouseConfig) -> Self {
        Self::with_schema(
            query,
            clickhouse,
            Arc::new(crate::store::SchemaStatus::ready_now()),
            None,
        )
    }

    /// A state that answers 503 until `schema` is ready, resolving ids with `identities` once
    /// it has loaded (its refresh is the caller's to run: [`identity::IdentityIndex::run`]).
    pub fn with_schema(
        query: &QueryConfig,
        clickhouse: &ClickHouseConfig,
        schema: Arc<crate::store::SchemaStatus>,
        identities: Option<Arc<identity::IdentityIndex>>,
    ) -> Self {
        Self::with_metrics(
            query,
            clickhouse,
            schema,
            identities,
            Arc::new(Metrics::default()),
        )
    }

    /// [`with_schema`](Self::with_schema), counting latency and cache hits in `metrics` (the
    /// server's, so they show in its `/metrics`).
    pub fn with_metrics(
        query: &QueryConfig,
        clickhouse: &ClickHouseConfig,
        schema: Arc<crate::store::SchemaStatus>,
        identities: Option<Arc<identity::IdentityIndex>>,
        metrics: Arc<Metrics>,
    ) -> Self {
        QueryState(Arc::new(Inner {
            metrics,
            schema,
            cache: Cache::new(
                query.cache_ttl.0,
                query.cache_entries,
                query.cache_max_bytes.0,
            ),
            rfm: profile::RfmCache::default(),
            utc: tokio::sync::OnceCell::new(),
            skip_shards: tokio::sync::OnceCell::new(),
            identities,
            layout: crate::store::Layout::new(clickhouse.cluster.as_deref()),
            client: crate::store::client(clickhouse),
            db: clickhouse.database.clone(),
            read_keys: crate::keys::Keys::new(
                query
                    .read_keys
                    .iter()
                    .enumerate()
                    .map(|(i, k)| (k.key.clone(), i)),
            ),
            config: query.clone(),
        }))
    }

    /// Where the query API counts its latency and cache hits.
    pub(crate) fn metrics(&self) -> &Arc<Metrics> {
        &self.0.metrics
    }

    /// The site's RFM quintile boundaries.
    pub(crate) fn rfm(&self) -> &profile::RfmCache {
        &self.0.rfm
    }

    /// One server or a cluster: the tables `ALTER ... DELETE` and `DROP PARTITION` name.
    pub fn layout(&self) -> &crate::store::Layout {
        &self.0.layout
    }

    pub fn config(&self) -> &QueryConfig {
        &self.0.config
    }

    /// The in-memory identity index, if this state has one.
    pub(crate) fn identities(&self) -> Option<&identity::IdentityIndex> {
        self.0.identities.as_deref()
    }

    /// Whether the ClickHouse migrations are applied.
    pub(crate) fn schema_ready(&self) -> bool {
        self.0.schema.is_ready()
    }

    /// The ClickHouse client (no database selected).
    pub(crate) fn clickhouse(&self) -> &clickhouse::Client {
        &self.0.client
    }

    /// The database name (validated by the config: letters, digits, underscores).
    pub fn db(&self) -> &str {
        &self.0.db
    }

    /// Checks the bearer key and that it may read `site`; returns the site.
    pub fn authorize(&self, headers: &HeaderMap, site: Option<&str>) -> Result<String, QueryError> {
        self.authorize_key(headers, site).map(|(site, _)| site)
    }

    /// [`authorize`](Self::authorize) for managing audience subscriptions: the key must also
    /// have `subscribe = true`.
    pub fn authorize_subscribe(
        &self,
        headers: &HeaderMap,
        site: Option<&str>,
    ) -> Result<String, QueryError> {
        let (site, subscribe) = self.authorize_key(headers, site)?;
        if !subscribe {
            return Err(QueryError::Forbidden(
                "authorization: this read key may not manage subscriptions (its [[query.read_keys]] entry needs subscribe = true)".into(),
            ));
        }
        Ok(site)
    }

    fn authorize_key(
        &self,
        headers: &HeaderMap,
        site: Option<&str>,
    ) -> Result<(String, bool), QueryError> {
        let auth = headers.get(header::AUTHORIZATION).ok_or_else(|| {
            QueryError::Unauthorized(
                "authorization: missing; send `Authorization: Bearer <read key>`".into(),
            )
        })?;
        let key = auth
            .to_str()
            .ok()
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim)
            .filter(|k| !k.is_empty())
            .ok_or_else(|| {
                QueryError::Unauthorized("authorization: expected `Bearer <read key>`".into())
            })?;
        self.authorize_read_key(key, site)
    }

    /// Checks a read key given as such (the quality page's form) and that it may read `site`;
    /// returns the site and whether the key may subscribe.
    pub fn authorize_read_key(
        &self,
        key: &str,
        site: Option<&str>,
    ) -> Result<(String, bool), QueryError> {
        let entry = self
            .0
            .read_keys
            .find(key)
            .map(|&i| &self.0.config.read_keys[i])
            .ok_or_else(|| QueryError::Unauthorized("authorization: unknown read key".into()))?;
        let site = site
            .filter(|s| !s.is_empty())
            .ok_or_else(|| QueryError::bad("site", "missing; pass ?site=<site id>"))?;
        if !entry.sites.iter().any(|s| s == site) {
            return Err(QueryError::Forbidden(format!(
                "site: this read key may not read site {site:?}"
            )));
        }
        Ok((site.to_string(), entry.subscribe))
    }

    /// Runs a SELECT and parses its `JSONEachRow` answer.
    pub async fn fetch<T: DeserializeOwned>(&self, sql: &str) -> Result<Vec<T>, QueryError> {
        parse_rows(&self.select(sql)?.collect().await?)
    }

    /// [`fetch`](Self::fetch) with ClickHouse settings for this statement.
    pub(crate) async fn fetch_with<T: DeserializeOwned>(
        &self,
        sql: &str,
        settings: &[(&str, &str)],
    ) -> Result<Vec<T>, QueryError> {
        let mut query = self.query(sql)?;
        for (name, value) in settings {
            query = query.with_setting(*name, *value);
        }
        parse_rows(&query.fetch_bytes("JSONEachRow")?.collect().await?)
    }

    /// [`fetch`](Self::fetch) for a lookup by primary key that reads a few granules of each
    /// part: one thread and no PREWHERE analysis. Measured on the query bench (CH 18.16, the
    /// 30-day figures of one visitor): 3.9 ms of server CPU with the defaults, 1.9 ms with
    /// these settings, literal dates and `=` for a single id (see `profile::visitor_filter`).
    ///
    /// On a cluster whose ClickHouse has it, a lookup also goes only to the shards its
    /// `site = .. AND visitor_id IN (..)` filter leaves ([`SKIP_UNUSED_SHARDS`]).
    pub(crate) async fn lookup<T: DeserializeOwned>(
        &self,
        sql: &str,
    ) -> Result<Vec<T>, QueryError> {
        let mut query = self.query(sql)?;
        for (name, value) in LOOKUP_SETTINGS {
            query = query.with_setting(*name, *value);
        }
        if self.skips_shards().await? {
            query = query.with_setting(SKIP_UNUSED_SHARDS.0, SKIP_UNUSED_SHARDS.1);
        }
        parse_rows(&query.fetch_bytes("JSONEachRow")?.collect().await?)
    }

    /// Whether lookups carry [`SKIP_UNUSED_SHARDS`]: in cluster mode, when ClickHouse knows the
    /// setting (current releases; 18.16 does not, and sends every `Distributed` query to every
    /// shard). Asked once, from `system.settings` rather than the version number.
    async fn skips_shards(&self) -> Result<bool, QueryError> {
        if self.0.layout.cluster().is_none() {
            return Ok(false);
        }
        self.0
            .skip_shards
            .get_or_try_init(|| async {
                #[derive(Deserialize)]
                struct Known {
                    n: u64,
                }
                let sql = format!(
                    "SELECT count() AS n FROM system.settings WHERE name = '{}'",
                    SKIP_UNUSED_SHARDS.0
                );
                let rows: Vec<Known> = self.fetch(&sql).await?;
                let known = rows.first().is_some_and(|r| r.n > 0);
                if known {
                    tracing::info!("cluster lookups go to the shards of the person's visitor ids only ({}=1)", SKIP_UNUSED_SHARDS.0);
                } else {
                    tracing::info!("this ClickHouse has no {}: every shard answers every lookup (from its primary key)", SKIP_UNUSED_SHARDS.0);
                }
                Ok(known)
            })
            .await
            .copied()
    }

    /// Runs a statement that answers nothing (an `INSERT ... FORMAT JSONEachRow` with its rows,
    /// a `TRUNCATE`, an `ALTER`).
    pub async fn execute(&self, sql: &str) -> Result<(), QueryError> {
        Ok(self.query(sql)?.execute().await?)
    }

    /// Inserts `rows` into `table` of the database as RowBinary (nothing when empty).
    pub(crate) async fn insert_rows<T>(&self, table: &str, rows: &[T]) -> Result<(), QueryError>
    where
        T: clickhouse::RowOwned + clickhouse::RowWrite,
    {
        if rows.is_empty() {
            return Ok(());
        }
        if !self.0.schema.is_ready() {
            return Err(QueryError::Migrating(self.0.schema.describe()));
        }
        // (The crate quotes the table name whole, so the database goes on the client.)
        let mut insert = self
            .0
            .client
            .clone()
            .with_database(&self.0.db)
            .insert::<T>(table)
            .await?;
        for r in rows {
            insert.write(r).await?;
        }
        Ok(insert.end().await?)
    }

    /// Starts a SELECT whose `JSONEachRow` answer is read as it streams.
    pub(crate) fn select(&self, sql: &str) -> Result<clickhouse::query::BytesCursor, QueryError> {
        Ok(self.query(sql)?.fetch_bytes("JSONEachRow")?)
    }

    fn query(&self, sql: &str) -> Result<clickhouse::query::Query, QueryError> {
        if !self.0.schema.is_ready() {
            return Err(QueryError::Migrating(self.0.schema.describe()));
        }
        // `query_raw`: the SQL is sent verbatim (a `?` inside an escaped literal is not a
        // placeholder). 64-bit integers as JSON numbers.
        Ok(self
            .0
            .client
            .query_raw(sql)
            .with_setting("output_format_json_quote_64bit_integers", "0"))
    }

    /// Whether ClickHouse's `today()` and `toDate` count UTC days, so that a window's first day
    /// can be sent as a literal date computed here (cheaper for ClickHouse to analyse than
    /// `today() - 6`). Asked once; `false` (keep `today()`) if the answer is not UTC.
    pub(crate) async fn utc_days(&self) -> Result<bool, QueryError> {
        self.0
            .utc
            .get_or_try_init(|| async {
                #[derive(Deserialize)]
                struct Tz {
                    tz: String,
                }
                let rows: Vec<Tz> = self.fetch("SELECT timezone() AS tz").await?;
                Ok(rows.first().is_some_and(|r| {
                    matches!(
                        r.tz.as_str(),
                        "UTC"
                            | "Etc/UTC"
                            | "UCT"
                            | "Etc/UCT"
                            | "Zulu"
                            | "Etc/Zulu"
                            | "Universal"
                            | "Etc/Universal"
                    )
                }))
            })
            .await
            .copied()
    }

    /// The cached answer for `key`, if it is fresh; counted as a hit or a miss of the endpoint
    /// the key starts with (`profile\n...`, `events\n...`).
    pub(crate) fn cached(&self, key: &str) -> Option<Arc<Value>> {
        let hit = self.0.cache.get(key);
        let endpoint = match key.split('\n').next() {
            Some("profile") => "profile",
            Some("events") => "events",
            _ => "other",
        };
        self.0.metrics.query_cache(endpoint, hit.is_some());
        hit
    }

    /// Forgets every cached answer (`crate::privacy`: a person was deleted).
    pub(crate) fn forget_cached(&self) {
        self.0.cache.clear()
    }

    pub(crate) fn remember(&self, key: String, value: Arc<Value>) {
        self.0.cache.put(key, value)
    }
}

/// Parses a `JSONEachRow` answer.
fn parse_rows<T: DeserializeOwned>(bytes: &[u8]) -> Result<Vec<T>, QueryError> {
    bytes
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .map(|l| {
            serde_json::from_slice(l).map_err(|e| {
                QueryError::Unavailable(format!("unexpected answer from ClickHouse: {e}"))
            })
        })
        .collect()
}
