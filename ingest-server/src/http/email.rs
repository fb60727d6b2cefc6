//! Email engagement endpoints.
//!
//! For the email platform (`Authorization: Bearer <send key>`, never the public write key):
//! - `POST /v1/email/links?site=S`: `{"recipient": {"user_id", "email"}, "campaign", "send_id",
//!   "links": [..]}` -> `{"pixel": "<url>", "links": [{"url", "tracked"}]}`;
//! - `POST /v1/email/rewrite?site=S`: the same fields with `"html"` instead of `"links"` ->
//!   `{"html", "tracked", "skipped"}`, every http(s) link tracked and the pixel added.
//!
//! For the reader's mail client and browser (first-party when served under the site's domain;
//! the edge worker serves the same paths under its prefix):
//! - `GET /e/o/{token}.gif`: a 43-byte transparent GIF with no-cache headers, answered at
//!   once; the `$email_open` event is admitted after the answer;
//! - `GET|HEAD /e/c/{token}`: `302` to the signed target (`$email_click` admitted in the
//!   background); a refused token goes to the site's `home_url`, never to the target it
//!   claims. A person's click also sets the stitch marker cookie
//!   (`waymark_protocol::email::stitch`), which the next batch to `/v1/batch` on this domain
//!   turns into an identity link.

use std::net::SocketAddr;

use axum::body::Bytes;
use axum::extract::{ConnectInfo, Path, Query, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use waymark_email::{rewrite_html, track, Message, Signer};
use waymark_protocol::email::Kind;

use super::AppState;
use crate::config::SiteConfig;
use crate::intake::email::{admit, judge, Answer, EmailHit};
use crate::intake::ApiError;

/// The transparent 1x1 GIF every pixel answers with (43 bytes).
pub const GIF: &[u8] = waymark_protocol::email::PIXEL_GIF;

/// The largest HTML message `/v1/email/rewrite` takes.
const MAX_HTML_BYTES: usize = 2 * 1024 * 1024;
/// The most links one `/v1/email/links` call signs.
const MAX_LINKS: usize = 1000;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/v1/email/links", post(links))
        .route(
            "/v1/email/rewrite",
            post(rewrite).layer(axum::extract::DefaultBodyLimit::max(
                MAX_HTML_BYTES + 64 * 1024,
            )),
        )
        .route("/e/o/{file}", get(open))
        .route("/e/c/{token}", get(click).head(click))
}

#[derive(Deserialize)]
struct SiteParam {
    site: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LinksBody {
    #[serde(flatten)]
    message: MessageFields,
    links: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RewriteBody {
    #[serde(flatten)]
    message: MessageFields,
    html: String,
}

#[derive(Deserialize)]
struct MessageFields {
    recipient: waymark_email::Recipient,
    #[serde(default)]
    campaign: String,
    #[serde(default)]
    send_id: String,
}

impl MessageFields {
    fn message(self) -> Message {
        Message {
            recipient: self.recipient,
            campaign: self.campaign,
            send_id: self.send_id,
        }
    }
}

/// The site a send key and `?site=` name, with its email settings.
fn site_for<'a>(
    state: &'a AppState,
    headers: &HeaderMap,
    site: Option<&str>,
) -> Result<&'a SiteConfig, ApiError> {
    let key = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .ok_or(ApiError::Unauthorized {
            code: "missing_send_key",
            field: "authorization",
            message: "authorization: missing (send \"Authorization: Bearer <send key>\"; a site's send keys are its sites.send_keys)".into(),
        })?;
    let found = state
        .intake()
        .site_for_send_key(key.trim())
        .ok_or(ApiError::Unauthorized {
            code: "unknown_send_key",
            field: "authorization",
            message: "authorization: unknown send key".into(),
        })?;
    match site {
        Some(s) if s != found.id => Err(ApiError::Forbidden {
            code: "wrong_site",
            field: "site",
            message: format!("site: this send key belongs to another site than {s:?}"),
        }),
        _ => Ok(found),
    }
}

fn json_body<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|e| {
        ApiError::bad(
            "invalid_body",
            "body",
            format!("body: {e} (expected {{\"recipient\": {{\"user_id\", \"email\"}}, \"campaign\", \"send_id\", ...}})"),
        )
    })
}

fn token_error(e: waymark_protocol::email::TokenError) -> ApiError {
    use waymark_protocol::email::TokenError;
    match e {
        TokenError::Invalid { field, .. } => ApiError::bad("invalid_field", field, e.to_string()),
        other => ApiError::bad("invalid", "body", other.to_string()),
    }
}

fn signer<'a>(site: &'a SiteConfig, key: &'a waymark_protocol::email::SigningKey) -> Signer<'a> {
    let email = site
        .email
        .as_ref()
        .expect("a site with send keys has [sites.email]");
    Signer {
        site: &site.id,
        base_url: &email.base_url,
        key,
        now_secs: (crate::clock::now_ms() / 1000).max(0) as u64,
    }
}

async fn links(
    State(state): State<AppState>,
    Query(q): Query<SiteParam>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let run = || -> Result<Response, ApiError> {
        let site = site_for(&state, &headers, q.site.as_deref())?;
        let b: LinksBody = json_body(&body)?;
        if b.links.len() > MAX_LINKS {
            return Err(ApiError::bad(
                "too_many_links",
                "links",
                format!("links: at most {MAX_LINKS} per call"),
            ));
        }
        let keys = site.email.as_ref().expect("validated").signing_keys();
        let tracked =
            track(&signer(site, &keys[0]), &b.message.message(), &b.links).map_err(token_error)?;
        Ok(Json(tracked).into_response())
    };
    run().unwrap_or_else(IntoResponse::into_response)
}

async fn rewrite(
    State(state): State<AppState>,
    Query(q): Query<SiteParam>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let run =
        || -> Result<Response, ApiError> {
            let site = site_for(&state, &headers, q.site.as_deref())?;
            let b: RewriteBody = json_body(&body)?;
            if b.html.len() > MAX_HTML_BYTES {
                return Err(ApiError::TooLarge {
                    code: "html_too_large",
                    field: "html",
                    message: format!("html: larger than {MAX_HTML_BYTES} bytes"),
                });
            }
            let keys = site.email.as_ref().expect("validated").signing_keys();
            let out = rewrite_html(&signer(site, &keys[0]), &b.message.message(), &b.html)
                .map_err(|e| match e {
                    waymark_email::RewriteError::Token(t) => token_error(t),
                    other => ApiError::bad("invalid_html", "html", other.to_string()),
                })?;
            Ok(Json(out).into_response())
        };
    run().unwrap_or_else(IntoResponse::into_response)
}

fn hit<'a>(
    kind: Kind,
    token: &'a str,
    method: &'a Method,
    headers: &'a HeaderMap,
    peer: Option<SocketAddr>,
) -> EmailHit<'a> {
    EmailHit {
        kind,
        token,
        method: method.as_str(),
        user_agent: headers
            .get(header::USER_AGENT)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default(),
        peer_ip: peer.map(|p| p.ip().to_string()),
    }
}

/// Admits the event in the background: the pixel and the redirect never wait for the spool. A
/// failure is counted and logged (the answer has gone out already).
fn admit_later(state: &AppState, site: String, ev: waymark_protocol::Event, ip: Option<String>) {
    let state = state.clone();
    tokio::spawn(async move {
        let intake = state.intake();
        if let Err(e) = admit(intake, &site, ev, ip).await {
            intake.metrics.email_failed();
            tracing::warn!(site, error = %e, "an email open or click could not be spooled");
        }
    });
}

/// The peer address the accept loop records (absent when a test calls the router directly).
fn peer(req: &Request) -> Option<SocketAddr> {
    req.extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0)
}

async fn open(State(state): State<AppState>, Path(file): Path<String>, req: Request) -> Response {
    let Some(token) = file.strip_suffix(".gif") else {
        return StatusCode::NOT_FOUND.into_response();
    };
    let h = hit(Kind::Open, token, req.method(), req.headers(), peer(&req));
    if let (_, Some(ev), Some(site)) = judge(state.intake(), &h) {
        admit_later(&state, site, ev, h.peer_ip.clone());
    }
    // The same pixel whatever the token: a refused one is counted, not shown.
    (
        [
            (header::CONTENT_TYPE, HeaderValue::from_static("image/gif")),
            (
                header::CACHE_CONTROL,
                HeaderValue::from_static("no-store, no-cache, must-revalidate, max-age=0"),
            ),
            (header::PRAGMA, HeaderValue::from_static("no-cache")),
            (header::EXPIRES, HeaderValue::from_static("0")),
        ],
        GIF,
    )
        .into_response()
}

async fn click(State(state): State<AppState>, Path(token): Path<String>, req: Request) -> Response {
    let h = hit(Kind::Click, &token, req.method(), req.headers(), peer(&req));
    let (answer, ev, site) = judge(state.intake(), &h);
    if let (Some(ev), Some(site)) = (ev, site) {
        admit_later(&state, site, ev, h.peer_ip.clone());
    }
    let (to, marker) = match answer {
        Answer::Recorded { target, marker, .. } => (target, marker),
        Answer::Refused { home, .. } => (home, None),
    };
    match to {
        Some(url) => match HeaderValue::from_str(&url) {
            Ok(v) => {
                let mut resp = (
                    StatusCode::FOUND,
                    [
                        (header::LOCATION, v),
                        (header::CACHE_CONTROL, HeaderValue::from_static("no-store")),
                        (
                            header::REFERRER_POLICY,
                            HeaderValue::from_static("no-referrer"),
                        ),
                    ],
                )
                    .into_response();
                // A person's click: the stitch marker for the next batch from this browser.
                if let Some(cookie) = marker.and_then(|m| HeaderValue::from_str(&m).ok()) {
                    resp.headers_mut().append(header::SET_COOKIE, cookie);
                }
                resp
            }
            Err(_) => StatusCode::NOT_FOUND.into_response(),
        },
        // No site could be told from the token: nowhere safe to send the reader.
        None => (
            StatusCode::NOT_FOUND,
            "This link is not valid. Please open the site directly.",
        )
            .into_response(),
    }
}
