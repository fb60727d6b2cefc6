//! Batches forwarded by the edge worker (`POST /v1/edge`), signed with HMAC-SHA256 over
//! `"<timestamp>.<body>"` (see `waymark_protocol::edge`). A request is refused when the
//! signature does not match, when its timestamp is outside the replay window, and when the same
//! signature was already accepted within the window (a replay). The edge must sign each attempt
//! afresh; a retried delivery then gets through and its events deduplicate by message id.

use std::borrow::Cow;

use serde::Deserialize;
use serde_json::value::RawValue;
use waymark_protocol::edge::{verify, Client, EdgeEmail, Geo, HEADER_SIGNATURE};
use waymark_protocol::time::parse_rfc3339;
use waymark_protocol::{parse_events, Rejection};

use super::auth::signature_error;
use super::enrich::{to_row, RequestFacts};
use super::error::ApiError;
use super::{Accepted, Intake};
use crate::config::EdgeConfig;
use crate::store::row::LINK_ROW;

/// The edge settings, when the endpoint is enabled (a secret is configured); 404 otherwise.
pub fn enabled(intake: &Intake) -> Result<&EdgeConfig, ApiError> {
    intake
        .config
        .edge
        .as_ref()
        .filter(|e| e.secret.is_some())
        .ok_or_else(|| ApiError::NotFound {
            code: "edge_disabled",
            message: "the edge endpoint is not configured on this server (no [edge] secret)".into(),
        })
}

/// Checks the signature `sig` made at `ts` over `raw` and claims it against replays, then
/// decodes the body with `decode` (`Content-Encoding`, capped at the edge's `max_body`) and
/// admits every envelope's events. The claim is given back if the events were not accepted, so
/// a retry may pass.
pub async fn accept(
    intake: &Intake,
    ts: &str,
    sig: &str,
    raw: &[u8],
    decode: impl FnOnce(&[u8]) -> Result<Cow<'_, [u8]>, ApiError>,
) -> Result<Accepted, ApiError> {
    let edge = enabled(intake)?;
    let secret = edge.secret.as_deref().unwrap_or_default();
    let window = edge.replay_window.0.as_secs() as i64;
    let now = crate::clock::now_ms();
    verify(secret.as_bytes(), ts, sig, raw, now / 1000, window).map_err(signature_error)?;
    if !intake.replay.claim(sig, now / 1000, window) {
        return Err(ApiError::Unauthorized {
            code: "replayed",
            field: HEADER_SIGNATURE,
            message: "x-waymark-signature: this signed request was already accepted; sign each delivery afresh".into(),
        });
    }
    let result = accept_forward(intake, raw, decode).await;
    if result.is_err() {
        intake.replay.release(sig);
    }
    result
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
    #[serde(default)]
    email: Option<EdgeEmail>,
}

#[derive(Deserialize)]
struct RawForward {
    envelopes: Vec<RawEnvelope>,
}

async fn accept_forward(
    intake: &Intake,
    raw: &[u8],
    decode: impl FnOnce(&[u8]) -> Result<Cow<'_, [u8]>, ApiError>,
) -> Result<Accepted, ApiError> {
    let body = decode(raw)?;
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
        let Some(site) = intake.site_for_key(&env.write_key) else {
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
        let email = env.email.clone().unwrap_or_default();
        if let Some(why) = &email.refused {
            intake
                .metrics
                .email_refused(super::email::refused_label(why));
        }
        if let Some(link) = &email.link {
            rows.push(super::email::link_row(&site.id, link, received_at_ms));
        }
        if email.hits {
            // Events the edge made from verified email tokens (`$email_open`, `$email_click`):
            // names no client may send, taken only from this signed forward.
            for (j, raw) in env.events.iter().enumerate() {
                match super::email::edge_hit(raw.get()) {
                    Ok(ev) => {
                        intake.metrics.email_hit(
                            ev.event.as_deref().unwrap_or_default(),
                            ev.properties["class"].as_str().unwrap_or_default(),
                        );
                        let facts = RequestFacts {
                            site: &site.id,
                            ip_mode: site.ip,
                            received_at_ms,
                            batch_sent_at: None,
                            source: "email",
                            peer_ip: None,
                            geo: Some(&env.geo),
                            client: Some(&env.client),
                            urls: site.url_policy(),
                            gpc: false,
                            request_ip: Default::default(),
                        };
                        rows.push(to_row(&ev, &facts, &intake.ua));
                    }
                    Err(reason) => rejected.push(Rejection {
                        index: Some(offset + j),
                        field: format!("envelopes[{i}].events[{j}]"),
                        reason,
                    }),
                }
            }
            offset += n;
            continue;
        }
        let events: Vec<&RawValue> = env.events.iter().map(|e| &**e).collect();
        match parse_events(&events, env.sent_at.as_deref(), received_at_ms) {
            Ok(mut v) => {
                let verdicts =
                    intake.check_quality(&site.id, None, &mut v.events, &mut v.rejections);
                intake.count_rejections(&site.id, &v.rejections);
                let facts = RequestFacts {
                    site: &site.id,
                    ip_mode: site.ip,
                    received_at_ms,
                    batch_sent_at: v.sent_at.as_deref(),
                    source: "edge",
                    peer_ip: None,
                    geo: Some(&env.geo),
                    client: Some(&env.client),
                    urls: site.url_policy(),
                    gpc: false,
                    request_ip: Default::default(),
                };
                let new = super::segment::with_verdicts(
                    v.events.iter().map(|ev| to_row(ev, &facts, &intake.ua)),
                    verdicts,
                );
                let links = super::identifiers::links_of(&new, &v.events, &site.identity);
                rows.extend(new);
                rows.extend(links);
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
    // Link-only rows (an email click's stitch) are not events: they are not counted as accepted.
    let total = rows.iter().filter(|r| r.kind != LINK_ROW).count();
    let suppressed = intake.admit_unsuppressed(rows, "edge").await?;
    Ok(Accepted {
        accepted: total.saturating_sub(suppressed),
        rejected,
        suppressed,
        gpc_dropped: 0,
    })
}
