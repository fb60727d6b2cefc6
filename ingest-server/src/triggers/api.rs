//! The subscription endpoints (thin: parse, call [`super::subscription`], answer).
//!
//! - `POST /v1/subscriptions?site=` `{"name", "audience": {"conditions": [...]}, "url",
//!   "secret"}` -> 201 with the subscription (without its secret);
//! - `GET /v1/subscriptions?site=` -> `{"site", "subscriptions": [...]}`;
//! - `DELETE /v1/subscriptions/{id}?site=` -> `{"deleted": id}`, 404 if unknown;
//! - `GET /v1/subscriptions/dead_letters?site=&limit=` -> the deliveries given up on, newest
//!   first, with their last error and payload.
//!
//! All take a read key with `subscribe = true` for the site.

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, MethodRouter};
use axum::Router;
use serde::Deserialize;
use serde_json::{json, Value};

use super::subscription;
use crate::config::TriggersConfig;
use crate::query::sql::lit;
use crate::query::{QueryError, QueryState};

/// Largest registration body.
const MAX_BODY: usize = 64 * 1024;
/// Dead letters listed at most per request.
const MAX_DEAD: u64 = 1000;

/// What the handlers share.
#[derive(Clone)]
pub struct ApiState {
    pub query: QueryState,
    pub config: TriggersConfig,
}

/// The routes.
pub fn router<S: Clone + Send + Sync + 'static>(
    query: QueryState,
    config: TriggersConfig,
) -> Router<S> {
    let subs: MethodRouter<ApiState> = get(list).post(create);
    Router::new()
        .route("/v1/subscriptions", subs)
        .route("/v1/subscriptions/dead_letters", get(dead_letters))
        .route("/v1/subscriptions/{id}", delete(remove))
        .with_state(ApiState { query, config })
}

#[derive(Debug, Deserialize)]
pub struct SiteParam {
    pub site: Option<String>,
    pub limit: Option<u64>,
}

fn answer(r: Result<Response, QueryError>) -> Response {
    r.unwrap_or_else(IntoResponse::into_response)
}

async fn create(
    State(st): State<ApiState>,
    Query(p): Query<SiteParam>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    answer(
        async {
            let site = st.query.authorize_subscribe(&headers, p.site.as_deref())?;
            if body.len() > MAX_BODY {
                return Err(QueryError::bad(
                    "body",
                    format!("larger than {MAX_BODY} bytes"),
                ));
            }
            let new = subscription::parse(&body)?;
            let sub = subscription::create(
                &st.query,
                &site,
                new,
                st.config.max_subscriptions,
                crate::clock::now_ms(),
            )
            .await?;
            Ok((StatusCode::CREATED, axum::Json(sub.public())).into_response())
        }
        .await,
    )
}

async fn list(
    State(st): State<ApiState>,
    Query(p): Query<SiteParam>,
    headers: HeaderMap,
) -> Response {
    answer(
        async {
            let site = st.query.authorize_subscribe(&headers, p.site.as_deref())?;
            let subs = subscription::list(&st.query, Some(&site)).await?;
            let subs: Vec<Value> = subs.iter().map(|s| s.public()).collect();
            Ok(axum::Json(json!({"site": site, "subscriptions": subs})).into_response())
        }
        .await,
    )
}

async fn remove(
    State(st): State<ApiState>,
    Path(id): Path<String>,
    Query(p): Query<SiteParam>,
    headers: HeaderMap,
) -> Response {
    answer(
        async {
            let site = st.query.authorize_subscribe(&headers, p.site.as_deref())?;
            subscription::remove(&st.query, &site, &id, crate::clock::now_ms()).await?;
            Ok(axum::Json(json!({"deleted": id})).into_response())
        }
        .await,
    )
}

#[derive(Deserialize)]
struct DeadRow {
    key: String,
    sub_id: String,
    person: String,
    kind: String,
    attempts: u32,
    last_error: String,
    updated_at_ms: i64,
    payload: String,
}

async fn dead_letters(
    State(st): State<ApiState>,
    Query(p): Query<SiteParam>,
    headers: HeaderMap,
) -> Response {
    answer(
        async {
            let site = st.query.authorize_subscribe(&headers, p.site.as_deref())?;
            let limit = match p.limit {
                None => 100,
                Some(n) if (1..=MAX_DEAD).contains(&n) => n,
                Some(_) => {
                    return Err(QueryError::bad(
                        "limit",
                        format!("must be a whole number from 1 to {MAX_DEAD}"),
                    ))
                }
            };
            let rows: Vec<DeadRow> = st
                .query
                .fetch(&format!(
                    "SELECT key, any(sub_id) AS sub_id, any(person) AS person, any(kind) AS kind,
    argMax(attempts, version) AS attempts, argMax(last_error, version) AS last_error,
    argMax(updated_at_ms, version) AS updated_at_ms, any(payload) AS payload
FROM {}.trigger_deliveries
WHERE site = {}
GROUP BY key
HAVING argMax(state, version) = 'dead'
ORDER BY updated_at_ms DESC, key
LIMIT {limit}",
                    st.query.db(),
                    lit(&site)
                ))
                .await?;
            let items: Vec<Value> = rows
                .into_iter()
                .map(|r| {
                    json!({
                        "id": r.key, "subscription_id": r.sub_id, "person": r.person,
                        "type": r.kind, "attempts": r.attempts, "last_error": r.last_error,
                        "failed_at": waymark_protocol::time::format_rfc3339(r.updated_at_ms),
                        "payload": serde_json::from_str::<Value>(&r.payload).unwrap_or(Value::Null),
                    })
                })
                .collect();
            Ok(
                axum::Json(json!({"site": site, "count": items.len(), "dead_letters": items}))
                    .into_response(),
            )
        }
        .await,
    )
}
