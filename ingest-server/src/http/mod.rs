//! The HTTP surface: one module per endpoint, each owning its route and body limit.
//!
//! - [`batch`]: the Segment-compatible intake: `/v1/batch`, `/v1/b`, `/v1/track` ... `/v1/group`,
//!   analytics.js's `/v1/t` ... `/v1/g`, RudderStack's `/beacon/v1/batch`;
//! - [`edge`]: `/v1/edge`, signed batches forwarded by the edge worker;
//! - [`ops`]: `/healthz`, `/readyz`, `/metrics`.

pub mod batch;
pub mod body;
pub mod conn;
pub mod edge;
pub mod error;
pub mod ops;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Router;
use serde::Serialize;
use waymark_protocol::Rejection;

use crate::config::{Config, SiteConfig};
use crate::dedup::Dedup;
use crate::enrich::UaParser;
use crate::metrics::Metrics;
use crate::ratelimit::RateLimiter;
use crate::spool::{Spool, SpoolError};
use crate::store::row::EventRow;
use error::ApiError;

/// Everything the handlers share.
#[derive(Clone)]
pub struct AppState(pub Arc<Inner>);

pub struct Inner {
    pub config: Config,
    /// write key -> index into `config.sites`, compared in constant time
    pub keys: crate::keys::Keys<usize>,
    pub spool: Spool,
    pub metrics: Arc<Metrics>,
    pub dedup: Dedup,
    pub ua: UaParser,
    pub limiter: RateLimiter,
    pub replay: edge::ReplayGuard,
    pub clickhouse: clickhouse::Client,
    pub schema: Arc<crate::store::SchemaStatus>,
    /// The query API's identity index, for `/metrics` (none when it is configured off).
    pub identities: Option<Arc<crate::query::identity::IdentityIndex>>,
}

impl AppState {
    pub fn new(
        config: Config,
        spool: Spool,
        metrics: Arc<Metrics>,
        schema: Arc<crate::store::SchemaStatus>,
        identities: Option<Arc<crate::query::identity::IdentityIndex>>,
    ) -> Self {
        let keys = crate::keys::Keys::new(
            config
                .sites
                .iter()
                .enumerate()
                .flat_map(|(i, s)| s.write_keys.iter().map(move |k| (k.clone(), i))),
        );
        let clickhouse = crate::store::client(&config.clickhouse);
        AppState(Arc::new(Inner {
            dedup: Dedup::new(config.dedup.capacity),
            keys,
            spool,
            metrics,
            ua: UaParser::default(),
            limiter: RateLimiter::new(&config.sites),
            replay: edge::ReplayGuard::default(),
            clickhouse,
            schema,
            identities,
            config,
        }))
    }

    pub fn site_for_key(&self, key: &str) -> Option<&SiteConfig> {
        self.0.keys.find(key).map(|&i| &self.0.config.sites[i])
    }
}

/// The whole application: intake and operations over `state`, the query API over `query`.
pub fn app(state: AppState, query: crate::query::QueryState) -> Router {
    let limit = state.0.config.http.request_timeout.0;
    Router::new()
        .merge(batch::routes(&state))
        .merge(edge::routes(&state))
        .merge(ops::routes())
        .merge(crate::query::router(query))
        .layer(axum::middleware::from_fn_with_state(state.clone(), cors))
        .layer(axum::middleware::from_fn(move |req, next| {
            conn::request_timeout(limit, req, next)
        }))
        .with_state(state)
}

/// The 200 body.
#[derive(Debug, Serialize)]
pub struct Accepted {
    pub accepted: usize,
    pub rejected: Vec<Rejection>,
}

pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Seconds a client should wait when the spool is full: long enough for the writer to drain.
const RETRY_AFTER_SECS: u64 = 5;

/// Events per site in `rows` (rows of one site are usually adjacent).
fn count_by_site(rows: &[EventRow]) -> Vec<(&str, u64)> {
    let mut counts: Vec<(&str, u64)> = Vec::new();
    for r in rows {
        match counts.iter_mut().find(|(s, _)| *s == r.site) {
            Some((_, n)) => *n += 1,
            None => counts.push((&r.site, 1)),
        }
    }
    counts
}

/// Checks the sites' rate limits, drops recent duplicates, spools the rest as one record, and
/// returns once it is fsynced.
pub async fn spool_rows(
    state: &AppState,
    rows: Vec<EventRow>,
    source: &str,
) -> Result<(), ApiError> {
    let st = &state.0;
    // The limit counts what the client sent (duplicates included) and is checked before
    // anything is written; tokens go back if the spool then refuses.
    let counts: Vec<(String, u64)> = count_by_site(&rows)
        .into_iter()
        .map(|(s, n)| (s.to_string(), n))
        .collect();
    let counts: Vec<(&str, u64)> = counts.iter().map(|(s, n)| (s.as_str(), *n)).collect();
    if let Err(l) = st.limiter.take(&counts) {
        return Err(ApiError::RateLimited {
            retry_after_secs: l.retry_after_secs,
            message: format!(
                "rate_limit: site {:?} is over its limit of {} events/s (burst {}); retry in {} s",
                l.site, l.events_per_second, l.burst, l.retry_after_secs
            ),
        });
    }
    let r = spool_checked(state, rows, source).await;
    if r.is_err() {
        st.limiter.give_back(&counts);
    }
    r
}

async fn spool_checked(
    state: &AppState,
    rows: Vec<EventRow>,
    source: &str,
) -> Result<(), ApiError> {
    let st = &state.0;
    let seen = st.dedup.seen(
        rows.iter()
            .map(|r| (r.site.as_str(), r.message_id.as_str())),
    );
    let before = rows.len();
    let rows: Vec<EventRow> = rows
        .into_iter()
        .zip(&seen)
        .filter(|(_, s)| !**s)
        .map(|(r, _)| r)
        .collect();
    st.metrics.duplicates_dropped.fetch_add(
        (before - rows.len()) as u64,
        std::sync::atomic::Ordering::Relaxed,
    );
    if rows.is_empty() {
        return Ok(());
    }
    let payload = crate::spool::rows::encode(&rows);
    match st.spool.append(payload).await {
        Ok(_) => {
            st.dedup.remember(
                rows.iter()
                    .map(|r| (r.site.as_str(), r.message_id.as_str())),
            );
            st.metrics.accepted(source, rows.len() as u64);
            Ok(())
        }
        Err(SpoolError::Full { used, max }) => {
            st.metrics
                .spool_full
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            Err(ApiError::Overloaded {
                code: "spool_full",
                retry_after_secs: RETRY_AFTER_SECS,
                message: format!(
                    "the server's buffer is full ({used} of {max} bytes) while it waits for its database; retry later"
                ),
            })
        }
        Err(e) => Err(ApiError::Overloaded {
            code: "spool_unavailable",
            retry_after_secs: RETRY_AFTER_SECS,
            message: format!("cannot store events durably right now: {e}"),
        }),
    }
}

/// Turns a handler result into a response, counting it.
pub fn respond(
    state: &AppState,
    endpoint: &str,
    started: Instant,
    r: Result<Accepted, ApiError>,
) -> Response {
    let m = &state.0.metrics;
    let resp = match r {
        Ok(a) => {
            m.ack_seconds.observe(started.elapsed().as_secs_f64());
            let mut reasons: HashMap<&str, u64> = HashMap::new();
            for rej in &a.rejected {
                // Only the top-level field: paths can hold client-chosen property names, and
                // labels must stay few.
                let top = rej.field.split(['.', '[']).next().unwrap_or("");
                *reasons.entry(top).or_default() += 1;
            }
            for (field, n) in reasons {
                m.rejected(&format!("invalid_field:{field}"), n);
            }
            (StatusCode::OK, axum::Json(a)).into_response()
        }
        Err(e) => {
            m.rejected(e.code(), 1);
            if e.status().is_server_error() {
                tracing::warn!(endpoint, error = %e, "refused a request");
            } else {
                tracing::debug!(endpoint, error = %e, "refused a request");
            }
            e.into_response()
        }
    };
    m.request(endpoint, resp.status().as_u16());
    resp
}

/// Whether a site lets `origin` send from a browser.
pub fn origin_allowed(site: &SiteConfig, origin: &str) -> bool {
    site.allowed_origins.iter().any(|o| o == "*" || o == origin)
}

/// CORS for browsers sending straight to the intake: preflights are answered for origins some
/// site allows (the write key is not known yet), echoing the headers asked for when they are
/// plain header names (analytics.js adds `authorization` and `x-retry-count`, RudderStack's SDK
/// `anonymousid`); each request is then checked against its own site's list in the handler (403
/// otherwise).
async fn cors(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let origin = req
        .headers()
        .get(header::ORIGIN)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let path = req.uri().path();
    let is_api = (path.starts_with("/v1/") || path.starts_with("/beacon/")) && path != "/v1/edge";
    let Some(origin) = origin.filter(|_| is_api) else {
        return next.run(req).await;
    };
    let known = state
        .0
        .config
        .sites
        .iter()
        .any(|s| origin_allowed(s, &origin));
    if req.method() == Method::OPTIONS {
        if !known {
            return ApiError::Forbidden {
                code: "origin_not_allowed",
                field: "origin",
                message: format!("origin: {origin:?} is not allowed by any site"),
            }
            .into_response();
        }
        let asked = req
            .headers()
            .get(header::ACCESS_CONTROL_REQUEST_HEADERS)
            .and_then(|v| v.to_str().ok())
            .filter(|h| {
                h.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b',' | b' '))
            })
            .and_then(|h| HeaderValue::from_str(h).ok())
            .unwrap_or(HeaderValue::from_static(
                "content-type, authorization, content-encoding",
            ));
        let mut r = StatusCode::NO_CONTENT.into_response();
        let h = r.headers_mut();
        h.insert(
            header::ACCESS_CONTROL_ALLOW_METHODS,
            HeaderValue::from_static("POST, OPTIONS"),
        );
        h.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, asked);
        h.insert(
            header::ACCESS_CONTROL_MAX_AGE,
            HeaderValue::from_static("86400"),
        );
        add_allow_origin(&mut r, &origin);
        return r;
    }
    let mut r = next.run(req).await;
    if known {
        add_allow_origin(&mut r, &origin);
    }
    r
}

/// The origin itself (never `*`), so requests with credentials (RudderStack's SDK sends
/// cookies) are allowed too; `Retry-After` is readable, so a client can back off.
fn add_allow_origin(r: &mut Response, origin: &str) {
    if let Ok(v) = HeaderValue::from_str(origin) {
        let h = r.headers_mut();
        h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, v);
        h.insert(
            header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
            HeaderValue::from_static("true"),
        );
        h.insert(
            header::ACCESS_CONTROL_EXPOSE_HEADERS,
            HeaderValue::from_static("Retry-After"),
        );
        h.insert(header::VARY, HeaderValue::from_static("Origin"));
    }
}
