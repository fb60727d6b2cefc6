//! The query API for email platforms: recency profiles, event history and audiences, read from
//! ClickHouse with read keys scoped to sites.
//!
//! - [`profile`]: `GET /v1/profiles/{id}?site=`: identity-resolved profile from pre-aggregated
//!   state ([`schema`]), never from a visitor's raw history;
//! - [`events`]: `GET /v1/profiles/{id}/events?site=&limit=&before=&type=&name=`, newest first
//!   with a cursor;
//! - [`audience`]: `POST /v1/audiences/query?site=`, a JSON query compiled to SQL in which every
//!   value is an escaped literal ([`sql`]) and every identifier comes from an allow-list; pages
//!   with a cursor, or the whole audience as NDJSON;
//! - [`openapi`]: `GET /openapi.json`.
//!
//! Every `/v1/` request carries `Authorization: Bearer <read key>` and a `site`; a key only ever
//! reads the sites it lists. Answers are JSON; errors are `{"error", "message", "field"}`.

pub mod audience;
pub mod events;
pub mod identity;
pub mod openapi;
pub mod profile;
pub mod schema;
pub mod sql;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::config::{ClickHouseConfig, HumanDuration};

/// `[query]` settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct QueryConfig {
    /// `[[query.read_keys]] key = "...", sites = ["shop"]`.
    pub read_keys: Vec<ReadKey>,
    /// A cart is abandoned when its last add is older than this with no order after it.
    pub cart_abandon_after: HumanDuration,
    pub engagement: EngagementConfig,
    /// How long a profile or event page is served from the in-process cache (0 = no cache).
    pub cache_ttl: HumanDuration,
    /// Entries the cache holds at most.
    pub cache_entries: usize,
    /// How many recently viewed products a profile lists.
    pub recent_products: usize,
    /// How often the in-memory identity index reads new links from ClickHouse (0 = no index:
    /// every id is resolved in ClickHouse). See `query::identity`.
    pub identity_refresh: HumanDuration,
    /// Links the identity index holds at most; beyond, it turns itself off.
    pub identity_max_links: usize,
    pub rfm: RfmConfig,
}

impl Default for QueryConfig {
    fn default() -> Self {
        QueryConfig {
            read_keys: Vec::new(),
            cart_abandon_after: HumanDuration(Duration::from_secs(3600)),
            engagement: EngagementConfig::default(),
            cache_ttl: HumanDuration(Duration::from_secs(5)),
            cache_entries: 10_000,
            recent_products: 10,
            identity_refresh: HumanDuration(Duration::from_secs(1)),
            identity_max_links: 1_000_000,
            rfm: RfmConfig::default(),
        }
    }
}

/// One read key and the sites it may read.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReadKey {
    pub key: String,
    pub sites: Vec<String>,
}

/// Engaged time over 30 days below `medium` is "short", below `long` "medium", else "long".
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EngagementConfig {
    pub medium: HumanDuration,
    pub long: HumanDuration,
}

impl Default for EngagementConfig {
    fn default() -> Self {
        EngagementConfig {
            medium: HumanDuration(Duration::from_secs(60)),
            long: HumanDuration(Duration::from_secs(600)),
        }
    }
}

/// RFM: scores come from the site's own quintiles, recomputed every `refresh`, over the orders
/// of the last `lookback`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RfmConfig {
    pub refresh: HumanDuration,
    pub lookback: HumanDuration,
}

impl Default for RfmConfig {
    fn default() -> Self {
        RfmConfig {
            refresh: HumanDuration(Duration::from_secs(300)),
            lookback: HumanDuration(Duration::from_secs(365 * 86_400)),
        }
    }
}

impl QueryConfig {
    /// Checks values that parse but make no sense; errors name the key.
    pub fn validate(&self) -> Result<(), String> {
        for (i, k) in self.read_keys.iter().enumerate() {
            if k.key.is_empty() {
                return Err(format!("query.read_keys[{i}].key: must not be empty"));
            }
            if k.sites.is_empty() {
                return Err(format!(
                    "query.read_keys[{i}].sites: must list at least one site"
                ));
            }
            if self.read_keys[..i].iter().any(|o| o.key == k.key) {
                return Err(format!(
                    "query.read_keys[{i}].key: the same key is listed twice"
                ));
            }
        }
        if self.engagement.medium.0 > self.engagement.long.0 {
            return Err(
                "query.engagement.medium: must not be longer than query.engagement.long".into(),
            );
        }
        if self.rfm.refresh.0.is_zero() {
            return Err("query.rfm.refresh: must be positive".into());
        }
        if !self.identity_refresh.0.is_zero() && self.identity_max_links == 0 {
            return Err(
                "query.identity_max_links: must be positive (to resolve every id in \
                 ClickHouse instead, set query.identity_refresh = \"0s\")"
                    .into(),
            );
        }
        Ok(())
    }
}

/// Why a query request failed. The body is `{"error": code, "message", "field"}`.
#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    /// 400: a parameter or the query body is wrong; the same request fails again.
    #[error("{field}: {message}")]
    BadRequest { field: String, message: String },
    /// 401: no read key, or one we do not know.
    #[error("{0}")]
    Unauthorized(String),
    /// 403: the key is valid but not for this site (it never sees another site's data).
    #[error("{0}")]
    Forbidden(String),
    /// 404: no visitor or user with this id on this site.
    #[error("{0}")]
    NotFound(String),
    /// 503 + Retry-After: ClickHouse did not answer or failed; retrying later may work.
    #[error("the database failed: {0}")]
    Unavailable(String),
    /// 503 + Retry-After: the server is still applying its ClickHouse migrations (a new query
    /// table backfilling after an upgrade).
    #[error("schema: ClickHouse migrations are not applied yet ({0}); retry shortly")]
    Migrating(String),
}

impl QueryError {
    pub fn bad(field: impl Into<String>, message: impl Into<String>) -> Self {
        QueryError::BadRequest {
            field: field.into(),
            message: message.into(),
        }
    }

    fn parts(&self) -> (StatusCode, &'static str, Option<&str>) {
        match self {
            QueryError::BadRequest { field, .. } => {
                (StatusCode::BAD_REQUEST, "bad_request", Some(field))
            }
            QueryError::Unauthorized(_) => (
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                Some("authorization"),
            ),
            QueryError::Forbidden(_) => (StatusCode::FORBIDDEN, "forbidden", Some("site")),
            QueryError::NotFound(_) => (StatusCode::NOT_FOUND, "not_found", Some("id")),
            QueryError::Unavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, "unavailable", None),
            QueryError::Migrating(_) => {
                (StatusCode::SERVICE_UNAVAILABLE, "migrating", Some("schema"))
            }
        }
    }
}

impl From<clickhouse::error::Error> for QueryError {
    fn from(e: clickhouse::error::Error) -> Self {
        QueryError::Unavailable(e.to_string())
    }
}

impl IntoResponse for QueryError {
    fn into_response(self) -> Response {
        let (status, code, field) = self.parts();
        if status.is_server_error() {
            tracing::warn!(error = %self, "query failed");
        }
        let body = json!({ "error": code, "message": self.to_string(), "field": field });
        let mut resp = (status, axum::Json(body)).into_response();
        if status == StatusCode::SERVICE_UNAVAILABLE {
            let after = if code == "migrating" { "5" } else { "1" };
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static(after));
        }
        resp
    }
}

/// A short in-process cache of answers, keyed by site and request.
struct Cache {
    ttl: Duration,
    max: usize,
    map: Mutex<HashMap<String, (Instant, Arc<Value>)>>,
}

impl Cache {
    fn get(&self, key: &str) -> Option<Arc<Value>> {
        if self.ttl.is_zero() {
            return None;
        }
        let map = self.map.lock().expect("cache lock");
        map.get(key)
            .filter(|(at, _)| at.elapsed() < self.ttl)
            .map(|(_, v)| v.clone())
    }

    fn put(&self, key: String, value: Arc<Value>) {
        if self.ttl.is_zero() || self.max == 0 {
            return;
        }
        let mut map = self.map.lock().expect("cache lock");
        if map.len() >= self.max {
            map.retain(|_, (at, _)| at.elapsed() < self.ttl);
            if map.len() >= self.max {
                map.clear();
            }
        }
        map.insert(key, (Instant::now(), value));
    }
}

/// What the query handlers share.
#[derive(Clone)]
pub struct QueryState(Arc<Inner>);

struct Inner {
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
    identities: Option<Arc<identity::IdentityIndex>>,
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
        QueryState(Arc::new(Inner {
            schema,
            cache: Cache {
                ttl: query.cache_ttl.0,
                max: query.cache_entries,
                map: Mutex::new(HashMap::new()),
            },
            rfm: profile::RfmCache::default(),
            utc: tokio::sync::OnceCell::new(),
            identities,
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

    /// The database name (validated by the config: letters, digits, underscores).
    pub(crate) fn db(&self) -> &str {
        &self.0.db
    }

    /// Checks the bearer key and that it may read `site`; returns the site.
    pub fn authorize(&self, headers: &HeaderMap, site: Option<&str>) -> Result<String, QueryError> {
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
        Ok(site.to_string())
    }

    /// Runs a SELECT and parses its `JSONEachRow` answer.
    pub(crate) async fn fetch<T: DeserializeOwned>(&self, sql: &str) -> Result<Vec<T>, QueryError> {
        parse_rows(&self.select(sql)?.collect().await?)
    }

    /// [`fetch`](Self::fetch) for a lookup by primary key that reads a few granules of each
    /// part: one thread and no PREWHERE analysis. Measured on the query bench (CH 18.16, the
    /// 30-day figures of one visitor): 3.9 ms of server CPU with the defaults, 1.9 ms with
    /// these settings, literal dates and `=` for a single id (see `profile::visitor_filter`).
    pub(crate) async fn lookup<T: DeserializeOwned>(
        &self,
        sql: &str,
    ) -> Result<Vec<T>, QueryError> {
        let mut cursor = self
            .query(sql)?
            .with_setting("max_threads", "1")
            .with_setting("optimize_move_to_prewhere", "0")
            .with_setting("use_uncompressed_cache", "1")
            .fetch_bytes("JSONEachRow")?;
        parse_rows(&cursor.collect().await?)
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

    fn cached(&self, key: &str) -> Option<Arc<Value>> {
        self.0.cache.get(key)
    }

    fn remember(&self, key: String, value: Arc<Value>) {
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

/// The routes over an explicit state (tests build one against their own database).
pub fn router<S: Clone + Send + Sync + 'static>(state: QueryState) -> Router<S> {
    Router::new()
        .route("/v1/profiles/{id}", get(profile::handler))
        .route("/v1/profiles/{id}/events", get(events::handler))
        .route("/v1/audiences/query", post(audience::handler))
        .route("/openapi.json", get(openapi::handler))
        .with_state(state)
}

/// A JSON answer from a cached value.
fn json_response(v: Arc<Value>) -> Response {
    let body = serde_json::to_vec(&*v).expect("a Value serialises");
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        body,
    )
        .into_response()
}

/// Milliseconds since the epoch.
pub(crate) fn now_ms() -> i64 {
    crate::http::now_ms()
}

/// RFC 3339 time for a millisecond timestamp; `null` for 0 (never).
pub(crate) fn time_or_null(ms: i64) -> Value {
    if ms <= 0 {
        Value::Null
    } else {
        Value::String(waymark_protocol::time::format_rfc3339(ms))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    #[test]
    fn config_parses_with_defaults_and_names_bad_keys() {
        let c: Config = toml::from_str(
            r#"
[query]
cart_abandon_after = "2h"
cache_ttl = "0s"
[query.engagement]
medium = "30s"
[[query.read_keys]]
key = "rk_shop"
sites = ["shop"]
"#,
        )
        .unwrap();
        assert_eq!(c.query.cart_abandon_after.0, Duration::from_secs(7200));
        assert_eq!(c.query.engagement.medium.0, Duration::from_secs(30));
        assert_eq!(c.query.engagement.long.0, Duration::from_secs(600));
        assert_eq!(c.query.read_keys[0].sites, ["shop"]);
        c.query.validate().unwrap();
        let e = toml::from_str::<Config>("[query]\ncart_abandon = \"1h\"\n").unwrap_err();
        assert!(e.to_string().contains("cart_abandon"), "{e}");
        let e = toml::from_str::<Config>("[query]\ncache_ttl = \"soon\"\n").unwrap_err();
        assert!(e.to_string().contains("soon"), "{e}");
        let c: Config = toml::from_str("[[query.read_keys]]\nkey = \"k\"\nsites = []\n").unwrap();
        assert!(c
            .query
            .validate()
            .unwrap_err()
            .contains("query.read_keys[0].sites"));
    }

    #[test]
    fn keys_are_scoped_to_their_sites() {
        let cfg = QueryConfig {
            read_keys: vec![ReadKey {
                key: "k1".into(),
                sites: vec!["a".into(), "b".into()],
            }],
            ..QueryConfig::default()
        };
        let st = QueryState::new(&cfg, &ClickHouseConfig::default());
        let h = |v: &str| {
            let mut h = HeaderMap::new();
            h.insert(header::AUTHORIZATION, HeaderValue::from_str(v).unwrap());
            h
        };
        assert_eq!(st.authorize(&h("Bearer k1"), Some("b")).unwrap(), "b");
        assert!(matches!(
            st.authorize(&h("Bearer k1"), Some("c")),
            Err(QueryError::Forbidden(_))
        ));
        assert!(matches!(
            st.authorize(&h("Bearer k2"), Some("a")),
            Err(QueryError::Unauthorized(_))
        ));
        assert!(matches!(
            st.authorize(&h("Basic k1"), Some("a")),
            Err(QueryError::Unauthorized(_))
        ));
        assert!(matches!(
            st.authorize(&HeaderMap::new(), Some("a")),
            Err(QueryError::Unauthorized(_))
        ));
        assert!(matches!(
            st.authorize(&h("Bearer k1"), None),
            Err(QueryError::BadRequest { .. })
        ));
    }

    #[tokio::test]
    async fn answers_503_until_the_migrations_are_applied() {
        let schema = Arc::new(crate::store::SchemaStatus::default());
        let st = QueryState::with_schema(
            &QueryConfig::default(),
            &ClickHouseConfig::default(),
            schema.clone(),
            None,
        );
        let e = st.fetch::<Value>("SELECT 1").await.unwrap_err();
        assert!(matches!(e, QueryError::Migrating(_)), "{e}");
        assert_eq!(schema.describe(), "pending");
        let resp = e.into_response();
        assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(resp.headers()[header::RETRY_AFTER], "5");
        let body = axum::body::to_bytes(resp.into_body(), 1 << 16)
            .await
            .unwrap();
        let body: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(body["error"], "migrating");
        assert_eq!(body["field"], "schema");
        assert!(
            body["message"].as_str().unwrap().contains("pending"),
            "{body}"
        );
    }
}
