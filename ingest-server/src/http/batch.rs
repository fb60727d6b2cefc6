//! The Segment-compatible endpoints: `POST /v1/batch` and the single-event `/v1/track`,
//! `/v1/identify`, `/v1/page`, `/v1/screen`, `/v1/alias`, `/v1/group`.
//!
//! The write key comes as the HTTP Basic username (Segment's SDKs) or as `writeKey` in the body
//! (beacons, which cannot set headers). Bodies may be JSON or text/plain, plain or gzip.

use std::net::SocketAddr;
use std::time::Instant;

use axum::extract::{ConnectInfo, DefaultBodyLimit, Request, State};
use axum::http::{header, HeaderMap};
use axum::response::Response;
use axum::routing::{post, MethodRouter};
use axum::Router;
use waymark_protocol::limits::MAX_BATCH_BYTES;
use waymark_protocol::{parse_batch, parse_single, BatchError, EventType};

use super::error::ApiError;
use super::{body, now_ms, origin_allowed, respond, spool_rows, Accepted, AppState};
use crate::enrich::{to_row, RequestFacts};

pub fn routes(_state: &AppState) -> Router<AppState> {
    let mut r = Router::new().route("/v1/batch", route(None));
    for kind in EventType::ALL {
        r = r.route(&format!("/v1/{}", kind.as_str()), route(Some(kind)));
    }
    r
}

/// One endpoint; the raw body limit equals the decompressed one (gzip only shrinks JSON).
fn route(kind: Option<EventType>) -> MethodRouter<AppState> {
    post(move |state: State<AppState>, req: Request| handle(state, kind, req))
        .options(|| async { axum::http::StatusCode::NO_CONTENT })
        .layer(DefaultBodyLimit::max(MAX_BATCH_BYTES))
}

async fn handle(State(state): State<AppState>, kind: Option<EventType>, req: Request) -> Response {
    let started = Instant::now();
    let endpoint = match kind {
        None => "batch",
        Some(k) => k.as_str(),
    };
    let r = intake(&state, kind, req).await;
    respond(&state, endpoint, started, r)
}

/// `Authorization: Basic base64(key:)` -> key.
pub fn basic_username(headers: &HeaderMap) -> Option<String> {
    let v = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, b64) = v.trim().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let raw = base64_decode(b64.trim())?;
    let s = String::from_utf8(raw).ok()?;
    let user = s.split_once(':').map(|(u, _)| u).unwrap_or(&s);
    (!user.is_empty()).then(|| user.to_string())
}

fn base64_decode(s: &str) -> Option<Vec<u8>> {
    let val = |c: u8| -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' | b'-' => 62,
            b'/' | b'_' => 63,
            _ => return None,
        } as u32)
    };
    let bytes: Vec<u8> = s.bytes().filter(|&c| c != b'=').collect();
    let mut out = Vec::with_capacity(bytes.len() * 3 / 4);
    for chunk in bytes.chunks(4) {
        let mut n = 0u32;
        for (i, &c) in chunk.iter().enumerate() {
            n |= val(c)? << (18 - 6 * i);
        }
        let produced = match chunk.len() {
            4 => 3,
            3 => 2,
            2 => 1,
            _ => return None,
        };
        out.extend_from_slice(&n.to_be_bytes()[1..1 + produced]);
    }
    Some(out)
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

async fn intake(
    state: &AppState,
    kind: Option<EventType>,
    req: Request,
) -> Result<Accepted, ApiError> {
    let peer = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip().to_string());
    let headers = req.headers().clone();
    let origin = headers
        .get(header::ORIGIN)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let basic_key = basic_username(&headers);
    // Refuse an unknown key before spending time on the body.
    if let Some(k) = &basic_key {
        if state.site_for_key(k).is_none() {
            return Err(unknown_key());
        }
    }
    let raw = body::read(req).await?;
    let body = body::decode(&headers, &raw, MAX_BATCH_BYTES)?;
    let received_at_ms = now_ms();
    let validated = match kind {
        None => parse_batch(&body, received_at_ms),
        Some(k) => parse_single(&body, k, received_at_ms),
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
    fn basic_auth_username_is_the_write_key() {
        let mut h = HeaderMap::new();
        // base64("wk_shop:")
        h.insert(header::AUTHORIZATION, "Basic d2tfc2hvcDo=".parse().unwrap());
        assert_eq!(basic_username(&h).as_deref(), Some("wk_shop"));
        h.insert(header::AUTHORIZATION, "Bearer x".parse().unwrap());
        assert_eq!(basic_username(&h), None);
        h.insert(header::AUTHORIZATION, "Basic !!!".parse().unwrap());
        assert_eq!(basic_username(&h), None);
    }

    #[test]
    fn base64() {
        assert_eq!(base64_decode("aGVsbG8=").unwrap(), b"hello");
        assert_eq!(base64_decode("aGk").unwrap(), b"hi");
        assert_eq!(base64_decode("").unwrap(), b"");
    }
}
