//! The HTTP surface: one module per endpoint, each owning its route and body limit.
//!
//! - [`batch`]: the Segment-compatible intake: `/v1/batch`, `/v1/b`, `/v1/track` ... `/v1/group`,
//!   analytics.js's `/v1/t` ... `/v1/g`, RudderStack's `/beacon/v1/batch`;
//! - [`edge`]: `/v1/edge`, signed batches forwarded by the edge worker;
//! - [`import`]: `/v1/import`, bulk NDJSON imports, streamed;
//! - [`ops`]: `/healthz`, `/readyz`, `/metrics`.

pub mod batch;
pub mod body;
pub mod conn;
pub mod edge;
pub mod email;
pub mod import;
pub mod ops;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Router;

pub use crate::intake::error;
pub use crate::intake::Accepted;

use crate::config::Config;
use crate::intake::auth::origin_allowed;
use crate::intake::{ApiError, Intake};
use crate::metrics::Metrics;
use crate::spool::Spool;

/// Everything the handlers share.
#[derive(Clone)]
pub struct AppState(pub Arc<Inner>);

pub struct Inner {
    /// The admit pipeline (auth, limits, dedup, enrichment, the spool).
    pub intake: Intake,
    /// For `/readyz`.
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
        Self::with_suppressions(config, spool, metrics, schema, identities, Arc::default())
    }

    /// [`AppState::new`] sharing the suppression list of deleted people with the writer.
    pub fn with_suppressions(
        config: Config,
        spool: Spool,
        metrics: Arc<Metrics>,
        schema: Arc<crate::store::SchemaStatus>,
        identities: Option<Arc<crate::query::identity::IdentityIndex>>,
        suppressions: Arc<crate::store::suppress::Suppressions>,
    ) -> Self {
        let clickhouse = crate::store::client(&config.clickhouse);
        AppState(Arc::new(Inner {
            intake: Intake::new(config, spool, metrics, suppressions),
            clickhouse,
            schema,
            identities,
        }))
    }

    /// The admit pipeline.
    pub fn intake(&self) -> &Intake {
        &self.0.intake
    }

    /// The server's configuration.
    pub fn config(&self) -> &Config {
        &self.0.intake.config
    }
}

/// The whole application: intake and operations over `state`, the query API over `query`.
pub fn app(state: AppState, query: crate::query::QueryState) -> Router {
    app_parts(state, query).0
}

/// [`app`], and the identity state whose merge pass (`crate::identity::run`) the caller runs.
pub fn app_parts(
    state: AppState,
    query: crate::query::QueryState,
) -> (Router, crate::identity::IdentityState) {
    let limit = state.config().http.request_timeout.0;
    let privacy = crate::privacy::PrivacyState::new(
        &state.config().privacy,
        query.clone(),
        state.intake().suppressions.clone(),
        state.0.identities.clone(),
    );
    let identity = crate::identity::IdentityState::new(
        query.clone(),
        privacy.clone(),
        state.config().sites.clone(),
    );
    let router = Router::new()
        .merge(batch::routes(&state))
        .merge(edge::routes(&state))
        .merge(email::routes())
        .merge(import::routes().layer(axum::Extension(identity.clone())))
        .merge(crate::identity::router(identity.clone()))
        .merge(ops::routes())
        .merge(crate::triggers::api::router(
            query.clone(),
            state.config().triggers.clone(),
        ))
        .merge(crate::query::quality::router(
            crate::query::quality::QualityState::new(query.clone(), state.config()),
        ))
        .merge(crate::query::router(query))
        .merge(crate::privacy::router(privacy))
        .layer(axum::middleware::from_fn_with_state(state.clone(), cors))
        .layer(axum::middleware::from_fn(
            move |req: Request, next: Next| async move {
                // An import streams for as long as its body lasts (`import`).
                if req.uri().path() == import::PATH {
                    next.run(req).await
                } else {
                    conn::request_timeout(limit, req, next).await
                }
            },
        ))
        .with_state(state);
    (router, identity)
}

/// Turns a handler result into a response, counting it.
pub fn respond(
    state: &AppState,
    endpoint: &str,
    started: Instant,
    r: Result<Accepted, ApiError>,
) -> Response {
    let m = &state.intake().metrics;
    let resp = match r {
        Ok(a) => {
            m.ack_seconds.record(started.elapsed().as_secs_f64());
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

/// CORS for browsers sending straight to the intake: preflights are answered for origins some
/// site allows (the write key is not known yet), echoing the headers asked for when they are
/// plain header names (analytics.js adds `authorization` and `x-retry-count`, RudderStack's SDK
/// `anonymousid`); each request is then checked against its own site's list in the handler (403
/// otherwise).
///
/// Hand-written, not tower-http's `CorsLayer` (measured against tower-http 0.6.11's code and
/// this crate's `endpoints` test): that layer answers every `OPTIONS` itself with 200 and the
/// same headers whatever the origin, where the intake answers 204, and 403 with a JSON body
/// naming the origin when no site allows it; it sends `Access-Control-Allow-Credentials`,
/// `Expose-Headers` and a three-name `Vary` on answers to origins it refuses too; its
/// `mirror_request` echoes any requested header list, where this one echoes only plain header
/// names and otherwise lists the three the intake reads; and it would wrap the query API and
/// `/v1/edge` too unless split off, where this covers the intake paths only. Bending it to
/// each of these would leave it doing none of the work.
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
        .config()
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
