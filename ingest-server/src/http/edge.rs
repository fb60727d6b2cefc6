//! `POST /v1/edge`: batches forwarded by the edge worker, signed with HMAC-SHA256 over
//! `"<timestamp>.<body>"` (see `waymark_protocol::edge`). A request is refused when the
//! signature does not match, when its timestamp is outside the replay window, and when the same
//! signature was already accepted within the window (a replay). The edge must sign each attempt
//! afresh; a retried delivery then gets through and its events deduplicate by message id.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::Instant;

use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::HeaderMap;
use axum::response::Response;
use axum::routing::post;
use axum::Router;
use serde::Deserialize;
use serde_json::value::RawValue;
use waymark_protocol::edge::{
    verify, Client, Geo, SignatureError, HEADER_SIGNATURE, HEADER_TIMESTAMP,
};
use waymark_protocol::limits::MAX_BATCH_BYTES;
use waymark_protocol::time::parse_rfc3339;
use waymark_protocol::{parse_events, Rejection};

use super::error::ApiError;
use super::{body, now_ms, respond, spool_rows, Accepted, AppState};
use crate::enrich::{to_row, RequestFacts};

pub fn routes(state: &AppState) -> Router<AppState> {
    let limit = state
        .0
        .config
        .edge
        .as_ref()
        .map(|e| e.max_body.0 as usize)
        .unwrap_or(MAX_BATCH_BYTES);
    Router::new().route("/v1/edge", post(handle).layer(DefaultBodyLimit::max(limit)))
}

async fn handle(State(state): State<AppState>, req: Request) -> Response {
    let started = Instant::now();
    let r = intake(&state, req).await;
    respond(&state, "edge", started, r)
}

/// Signature -> accepted at (unix seconds), plus the same in arrival order for eviction.
type Seen = (HashMap<String, i64>, VecDeque<(i64, String)>);

/// Signatures accepted recently, remembered for the replay window (bounded).
#[derive(Default)]
pub struct ReplayGuard {
    inner: Mutex<Seen>,
}

const REPLAY_MAX: usize = 1_000_000;

impl ReplayGuard {
    /// The form a signature is remembered in: [`verify`] accepts surrounding blanks and hex
    /// digits in either case, so `v1=AB..` and `v1=ab..` are the same signature.
    fn canonical(sig: &str) -> String {
        sig.trim().to_ascii_lowercase()
    }

    pub fn seen(&self, sig: &str) -> bool {
        self.inner
            .lock()
            .expect("replay lock")
            .0
            .contains_key(&Self::canonical(sig))
    }

    /// Claims a signature: false if it was already accepted (or is being handled right now).
    /// Checked and remembered under one lock, so two identical requests at once cannot both pass.
    pub fn claim(&self, sig: &str, now_secs: i64, window_secs: i64) -> bool {
        let sig = Self::canonical(sig);
        let mut g = self.inner.lock().expect("replay lock");
        if g.0.contains_key(&sig) {
            return false;
        }
        Self::insert(&mut g, sig, now_secs, window_secs);
        true
    }

    /// Gives a claim back when the request it covered was not accepted (so a retry may pass).
    pub fn release(&self, sig: &str) {
        self.inner
            .lock()
            .expect("replay lock")
            .0
            .remove(&Self::canonical(sig));
    }

    pub fn remember(&self, sig: &str, now_secs: i64, window_secs: i64) {
        let mut g = self.inner.lock().expect("replay lock");
        Self::insert(&mut g, Self::canonical(sig), now_secs, window_secs);
    }

    fn insert(g: &mut Seen, sig: String, now_secs: i64, window_secs: i64) {
        // Forget signatures whose timestamps can no longer pass the window check anyway.
        while let Some((t, _)) = g.1.front() {
            if *t + 2 * window_secs < now_secs || g.1.len() >= REPLAY_MAX {
                let (_, s) = g.1.pop_front().expect("front exists");
                g.0.remove(&s);
            } else {
                break;
            }
        }
        g.0.insert(sig.clone(), now_secs);
        g.1.push_back((now_secs, sig));
    }
}

/// The envelope with its events left raw, so they are validated by the same code as a batch.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawEnvelope {
    write_key: String,
    received_at: String,
    #[serde(default)]
    sent_at: Option<String>,
    #[serde(default)]
    geo: Geo,
    #[serde(default)]
    client: Client,
    events: Vec<Box<RawValue>>,
}

#[derive(Deserialize)]
struct RawForward {
    envelopes: Vec<RawEnvelope>,
}

fn header<'a>(h: &'a HeaderMap, name: &str) -> &'a str {
    h.get(name).and_then(|v| v.to_str().ok()).unwrap_or("")
}

fn signature_error(e: SignatureError) -> ApiError {
    let (code, field) = match e {
        SignatureError::BadTimestamp => ("invalid_timestamp", HEADER_TIMESTAMP),
        SignatureError::OutsideWindow { .. } => ("outside_replay_window", HEADER_TIMESTAMP),
        SignatureError::Malformed => ("invalid_signature", HEADER_SIGNATURE),
        SignatureError::Mismatch => ("signature_mismatch", HEADER_SIGNATURE),
    };
    ApiError::Unauthorized {
        code,
        field,
        message: e.to_string(),
    }
}

async fn intake(state: &AppState, req: Request) -> Result<Accepted, ApiError> {
    let Some(edge) = state.0.config.edge.as_ref().filter(|e| e.secret.is_some()) else {
        return Err(ApiError::NotFound {
            code: "edge_disabled",
            message: "the edge endpoint is not configured on this server (no [edge] secret)".into(),
        });
    };
    let secret = edge.secret.as_deref().unwrap_or_default();
    let window = edge.replay_window.0.as_secs() as i64;
    let headers = req.headers().clone();
    let raw = body::read(req, state.0.config.http.body_timeout.0).await?;
    let now = now_ms();
    let ts = header(&headers, HEADER_TIMESTAMP);
    let sig = header(&headers, HEADER_SIGNATURE);
    verify(secret.as_bytes(), ts, sig, &raw, now / 1000, window).map_err(signature_error)?;
    if !state.0.replay.claim(sig, now / 1000, window) {
        return Err(ApiError::Unauthorized {
            code: "replayed",
            field: HEADER_SIGNATURE,
            message: "x-waymark-signature: this signed request was already accepted; sign each delivery afresh".into(),
        });
    }
    let result = accept_forward(state, &headers, &raw, edge.max_body.0 as usize).await;
    if result.is_err() {
        state.0.replay.release(sig);
    }
    result
}

async fn accept_forward(
    state: &AppState,
    headers: &HeaderMap,
    raw: &[u8],
    limit: usize,
) -> Result<Accepted, ApiError> {
    let body = body::decode(headers, raw, limit)?;
    let fwd: RawForward = serde_json::from_slice(&body).map_err(|e| {
        ApiError::bad(
            "invalid_json",
            "body",
            format!("body: not an edge forward: {e}"),
        )
    })?;

    let mut rows = Vec::new();
    let mut rejected = Vec::new();
    let mut offset = 0usize;
    for (i, env) in fwd.envelopes.iter().enumerate() {
        let n = env.events.len();
        let whole = |field: String, reason: String, rejected: &mut Vec<Rejection>| {
            for j in 0..n {
                rejected.push(Rejection {
                    index: Some(offset + j),
                    field: field.clone(),
                    reason: reason.clone(),
                });
            }
        };
        let Some(site) = state.site_for_key(&env.write_key) else {
            whole(
                format!("envelopes[{i}].writeKey"),
                "not the write key of any site".into(),
                &mut rejected,
            );
            offset += n;
            continue;
        };
        let Some(received_at_ms) = parse_rfc3339(&env.received_at) else {
            whole(
                format!("envelopes[{i}].receivedAt"),
                "not an RFC 3339 date-time".into(),
                &mut rejected,
            );
            offset += n;
            continue;
        };
        let events: Vec<&RawValue> = env.events.iter().map(|e| &**e).collect();
        match parse_events(&events, env.sent_at.as_deref(), received_at_ms) {
            Ok(v) => {
                let facts = RequestFacts {
                    site: &site.id,
                    ip_mode: site.ip,
                    received_at_ms,
                    batch_sent_at: v.sent_at.as_deref(),
                    source: "edge",
                    peer_ip: None,
                    geo: Some(&env.geo),
                    client: Some(&env.client),
                };
                rows.extend(v.events.iter().map(|ev| to_row(ev, &facts, &state.0.ua)));
                rejected.extend(v.rejections.into_iter().map(|mut r| {
                    r.index = r.index.map(|x| x + offset);
                    r
                }));
            }
            Err(e) => whole(
                format!("envelopes[{i}].{}", e.field()),
                e.to_string(),
                &mut rejected,
            ),
        }
        offset += n;
    }
    let accepted = rows.len();
    spool_rows(state, rows, "edge").await?;
    Ok(Accepted { accepted, rejected })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replay_guard_remembers_and_forgets() {
        let g = ReplayGuard::default();
        g.remember("a", 1000, 300);
        assert!(g.seen("a"));
        g.remember("b", 2000, 300);
        assert!(!g.seen("a"), "older than twice the window: forgotten");
        assert!(g.seen("b"));
    }

    #[test]
    fn a_claim_is_given_back_when_the_request_failed() {
        let g = ReplayGuard::default();
        assert!(g.claim("s", 1000, 300));
        assert!(!g.claim("s", 1001, 300), "a second claim is a replay");
        g.release("s");
        assert!(g.claim("s", 1002, 300), "a retry after a 503 passes");
    }

    #[test]
    fn a_signature_in_another_case_or_with_blanks_is_the_same_signature() {
        let g = ReplayGuard::default();
        assert!(g.claim("v1=abcdef0123", 1000, 300));
        assert!(!g.claim("v1=ABCDEF0123", 1000, 300));
        assert!(!g.claim("v1=ABCdef0123", 1000, 300));
        assert!(!g.claim(" v1=abcdef0123 ", 1000, 300));
        assert!(g.seen("V1=ABCDEF0123"));
    }

    #[test]
    fn of_identical_claims_at_once_exactly_one_passes() {
        let g = std::sync::Arc::new(ReplayGuard::default());
        for round in 0..50 {
            let sig = format!("v1={round:064x}");
            let barrier = std::sync::Arc::new(std::sync::Barrier::new(8));
            let passed: usize = (0..8)
                .map(|i| {
                    let (g, b, sig) = (g.clone(), barrier.clone(), sig.clone());
                    std::thread::spawn(move || {
                        let sig = if i % 2 == 0 { sig } else { sig.to_uppercase() };
                        b.wait();
                        usize::from(g.claim(&sig, 1000, 300))
                    })
                })
                .collect::<Vec<_>>()
                .into_iter()
                .map(|h| h.join().unwrap())
                .sum();
            assert_eq!(passed, 1, "round {round}");
        }
    }
}
