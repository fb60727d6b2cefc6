//! The query API for email platforms: recency profiles, event history and audiences, read from
//! ClickHouse with read keys scoped to sites.
//!
//! - [`profile`]: `GET /v1/profiles/{id}?site=`: identity-resolved profile from pre-aggregated
//!   state (`crate::store::schema::query`), never from a visitor's raw history;
//! - [`events`]: `GET /v1/profiles/{id}/events?site=&limit=&before=&type=&name=`, newest first
//!   with a cursor;
//! - [`audience`]: `POST /v1/audiences/query?site=`, a JSON query compiled to SQL in which every
//!   value is an escaped literal ([`sql`]) and every identifier comes from an allow-list; pages
//!   with a cursor, or the whole audience as NDJSON;
//! - [`quality`]: `GET /v1/quality?site=&since=`, the data quality report, and `GET /quality`,
//!   the same as a page with plots;
//! - [`openapi`]: `GET /openapi.json`.
//!
//! Every `/v1/` request carries `Authorization: Bearer <read key>` and a `site`; a key only ever
//! reads the sites it lists. Answers are JSON; errors are `{"error", "message", "field"}`.

pub mod audience;
mod cache;
mod error;
pub mod events;
pub mod identity;
pub mod openapi;
pub mod profile;
pub mod quality;
pub mod sql;
mod state;

pub use error::QueryError;
pub use state::{QueryState, LOOKUP_SETTINGS, SKIP_UNUSED_SHARDS};

use std::sync::Arc;

use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, MethodRouter};
use axum::Router;
use serde_json::Value;

pub use crate::config::{EngagementConfig, QueryConfig, ReadKey, RfmConfig};

/// The routes over an explicit state (tests build one against their own database).
pub fn router<S: Clone + Send + Sync + 'static>(state: QueryState) -> Router<S> {
    let timed = |endpoint: &'static str, route: MethodRouter<QueryState>| {
        let metrics = state.metrics().clone();
        route.layer(axum::middleware::from_fn(
            move |req: axum::extract::Request, next: axum::middleware::Next| {
                let metrics = metrics.clone();
                async move {
                    let started = std::time::Instant::now();
                    let resp = next.run(req).await;
                    metrics.query_seconds(endpoint, started.elapsed().as_secs_f64());
                    resp
                }
            },
        ))
    };
    Router::new()
        .route("/v1/profiles/{id}", timed("profile", get(profile::handler)))
        .route(
            "/v1/profiles/{id}/events",
            timed("events", get(events::handler)),
        )
        .route(
            "/v1/audiences/query",
            timed("audience", post(audience::handler)),
        )
        .route("/openapi.json", timed("openapi", get(openapi::handler)))
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
pub(crate) use crate::clock::now_ms;

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
    use std::time::Duration;

    use axum::http::{HeaderMap, StatusCode};

    use super::*;
    use crate::config::{ClickHouseConfig, Config};

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
                subscribe: false,
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
