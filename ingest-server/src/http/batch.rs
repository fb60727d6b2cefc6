//! The Segment-compatible endpoints: every path in [`waymark_protocol::intake::PATHS`]
//! (`/v1/batch` and `/v1/b`; the single-event `/v1/track` ... `/v1/group` and analytics.js's
//! short `/v1/t` ... `/v1/g`; RudderStack's `/beacon/v1/batch`).
//!
//! The write key comes as the HTTP Basic username (Segment's SDKs), as `writeKey` in the body
//! (beacons, which cannot set headers), or as `?writeKey=` on the beacon path. Bodies may be JSON
//! or text/plain, plain or gzip. What happens to the body is the intake's
//! ([`crate::intake::segment`]).

use std::net::SocketAddr;
use std::time::Instant;

use axum::extract::{ConnectInfo, DefaultBodyLimit, Request, State};
use axum::http::{header, HeaderMap, HeaderValue};
use axum::response::Response;
use axum::routing::{post, MethodRouter};
use axum::Router;
use waymark_protocol::email::stitch;
use waymark_protocol::intake::{basic_user, query_write_key, IntakePath, PATHS};
use waymark_protocol::limits::MAX_BATCH_BYTES;
use waymark_protocol::privacy::gpc_signal;

use super::{body, respond, AppState};
use crate::intake::{segment, Accepted, ApiError};

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
    let marker = req
        .headers()
        .get(header::COOKIE)
        .and_then(|v| v.to_str().ok())
        .and_then(stitch::from_cookie_header)
        .is_some();
    let r = intake(&state, kind, req).await;
    let ok = r.is_ok();
    let mut resp = respond(&state, kind.name(), started, r);
    // An email click's stitch marker is used once: the answer that took it clears it (without
    // `Secure`, which a clearing cookie does not need).
    if marker && ok {
        if let Ok(v) = HeaderValue::from_str(&stitch::clear_cookie(false)) {
            resp.headers_mut().append(header::SET_COOKIE, v);
        }
    }
    resp
}

/// The write key a request carries outside its body: the Basic user name, else `?writeKey=`.
pub fn request_write_key(headers: &HeaderMap, query: Option<&str>) -> Option<String> {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(basic_user)
        .or_else(|| query.and_then(query_write_key))
}

async fn intake(state: &AppState, kind: IntakePath, req: Request) -> Result<Accepted, ApiError> {
    let intake = state.intake();
    let peer = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip().to_string());
    let headers = req.headers().clone();
    let origin = headers
        .get(header::ORIGIN)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let write_key = request_write_key(&headers, req.uri().query());
    let cookie = headers
        .get(header::COOKIE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let gpc = gpc_signal(headers.get("sec-gpc").and_then(|v| v.to_str().ok()));
    // Refuse an unknown key before spending time on the body.
    segment::check_key(intake, write_key.as_deref())?;
    let raw = body::read(req, intake.config.http.body_timeout.0).await?;
    let body = body::decode(&headers, &raw, MAX_BATCH_BYTES)?;
    segment::accept(
        intake,
        segment::Delivery {
            kind,
            body: &body,
            write_key,
            origin: origin.as_deref(),
            peer_ip: peer,
            cookie: cookie.as_deref(),
            gpc,
        },
    )
    .await
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
