//! The Segment-compatible endpoints: every path in [`waymark_protocol::intake::PATHS`]
//! (`/v1/batch` and `/v1/b`; the single-event `/v1/track` ... `/v1/group` and analytics.js's
//! short `/v1/t` ... `/v1/g`; RudderStack's `/beacon/v1/batch`).
//!
//! The write key comes as the HTTP Basic username (Segment's SDKs), as `writeKey` in the body
//! (beacons, which cannot set headers), or as `?writeKey=` on the beacon path. Bodies may be JSON
//! or text/plain, plain or gzip.

use std::net::SocketAddr;
use std::time::Instant;

use axum::extract::{ConnectInfo, DefaultBodyLimit, Request, State};
use axum::http::{header, HeaderMap};
use axum::response::Response;
use axum::routing::{post, MethodRouter};
use axum::Router;
use waymark_protocol::intake::{basic_user, query_write_key, IntakePath, PATHS};
use waymark_protocol::limits::MAX_BATCH_BYTES;
use waymark_protocol::{parse_batch, parse_single, BatchError};

use super::error::ApiError;
use super::{body, now_ms, origin_allowed, respond, spool_rows, Accepted, AppState};
use crate::enrich::{to_row, RequestFacts};

pub fn routes(_state: &AppState) -> Router<AppState> {
    PATHS
        .iter()
        .fold(Router::new(), |r, &(path, kind)| r.route(path, route(kind)))
}

/// One endpoint; the raw body limit equals the decompressed one (gzip only shrinks JSON).
/// Preflights are answered by the CORS layer in `http/mod.rs` before they reach here.
fn route(kind: IntakePath) -> MethodRouter<AppState> {
    post(move |state: State<AppState>, req: Request| handle(state, kind, req))
        .options(|| async { axum::http::StatusCode::NO_CONTENT })
        .layer(DefaultBodyLimit::max(MAX_BATCH_BYTES))
}

async fn handle(State(state): State<AppState>, kind: IntakePath, req: Request) -> Response {
    let started = Instant::now();
    let r = intake(&state, kind, req).await;
    respond(&state, kind.name(), started, r)
}

/// The write key a request carries outside its body: the Basic user name, else `?writeKey=`.
pub fn request_write_key(headers: &HeaderMap, query: Option<&str>) -> Option<String> {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(basic_user)
        .or_else(|| query.and_then(query_write_key))
}

pub fn batch_error(e: BatchError) -> ApiError {
    if e.is_too_large() {
        ApiError::TooLarge {
            code: e.code(),
            field: e.field(),
            message: e.to_string(),
        }
    } else {
        ApiError::bad(e.code(), e.field(), e.to_string())
    }
}

async fn intake(state: &AppState, kind: IntakePath, req: Request) -> Result<Accepted, ApiError> {
    let peer = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip().to_string());
    let headers = req.headers().clone();
    let origin = headers
        .get(header::ORIGIN)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let basic_key = request_write_key(&headers, req.uri().query());
    // Refuse an unknown key before spending time on the body.
    if let Some(k) = &basic_key {
        if state.site_for_key(k).is_none() {
            return Err(unknown_key());
        }
    }
    let raw = body::read(req, state.0.config.http.body_timeout.0).await?;
    let body = body::decode(&headers, &raw, MAX_BATCH_BYTES)?;
    let received_at_ms = now_ms();
    let validated = match kind {
        IntakePath::Batch => parse_batch(&body, received_at_ms),
        IntakePath::Single(k) => parse_single(&body, k, received_at_ms),
    }
    .map_err(batch_error)?;
    let key = basic_key
        .or_else(|| validated.write_key.clone())
        .ok_or(ApiError::Unauthorized {
        code: "missing_write_key",
        field: "writeKey",
        message:
            "writeKey: missing (send it as the HTTP Basic username or as \"writeKey\" in the body)"
                .into(),
    })?;
    let site = state.site_for_key(&key).ok_or_else(unknown_key)?;
    if let Some(o) = &origin {
        if !origin_allowed(site, o) {
            return Err(ApiError::Forbidden {
                code: "origin_not_allowed",
                field: "origin",
                message: format!("origin: {o:?} may not send events for this site"),
            });
        }
    }
    let facts = RequestFacts {
        site: &site.id,
        ip_mode: site.ip,
        received_at_ms,
        batch_sent_at: validated.sent_at.as_deref(),
        source: "api",
        peer_ip: peer,
        geo: None,
        client: None,
    };
    let rows = validated
        .events
        .iter()
        .map(|ev| to_row(ev, &facts, &state.0.ua))
        .collect::<Vec<_>>();
    let accepted = rows.len();
    spool_rows(state, rows, "api").await?;
    Ok(Accepted {
        accepted,
        rejected: validated.rejections,
    })
}

fn unknown_key() -> ApiError {
    ApiError::Unauthorized {
        code: "invalid_write_key",
        field: "writeKey",
        message: "writeKey: not the write key of any site".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_write_key_comes_from_basic_auth_else_the_query() {
        let mut h = HeaderMap::new();
        assert_eq!(
            request_write_key(&h, Some("writeKey=wk_q")).as_deref(),
            Some("wk_q")
        );
        // base64("wk_shop:")
        h.insert(header::AUTHORIZATION, "Basic d2tfc2hvcDo=".parse().unwrap());
        assert_eq!(
            request_write_key(&h, Some("writeKey=wk_q")).as_deref(),
            Some("wk_shop")
        );
        assert_eq!(request_write_key(&h, None).as_deref(), Some("wk_shop"));
        h.insert(header::AUTHORIZATION, "Bearer x".parse().unwrap());
        assert_eq!(request_write_key(&h, None), None);
    }
}
