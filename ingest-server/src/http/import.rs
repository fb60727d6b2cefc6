//! `POST /v1/import?site=S`: bulk import of NDJSON in the Segment shape (gzip allowed), of any
//! size, read as a stream (see [`crate::intake::import`] for what happens to each chunk).
//!
//! Credentials: the site's write key (HTTP Basic user name, as `/v1/batch`; send it over TLS)
//! or one of its send keys (`Authorization: Bearer`); `site` must be the key's site. The body
//! limit and the request timeout do not apply: the body is never held whole, and a large
//! import takes as long as it takes.
//!
//! The answer is 200 with the [`ImportReport`] when every line was read; when the import
//! stopped early (the spool stayed full, the body broke off) it is 503 (spool) or 400 (body)
//! with the same report, whose `acknowledged_lines` says where to resume.

use axum::extract::{DefaultBodyLimit, Query, Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use futures::TryStreamExt as _;
use serde::Deserialize;

use super::AppState;
use crate::config::SiteConfig;
use crate::intake::import::{admit_chunk, chunk_rows, ImportReport, Lines};
use crate::intake::ApiError;

pub const PATH: &str = "/v1/import";

pub fn routes() -> Router<AppState> {
    Router::new().route(PATH, post(handle).layer(DefaultBodyLimit::disable()))
}

#[derive(Deserialize)]
struct SiteParam {
    site: Option<String>,
}

/// The site whose key the request carries, checked against `?site=`.
fn authorize<'a>(
    state: &'a AppState,
    headers: &HeaderMap,
    site: Option<&str>,
) -> Result<&'a SiteConfig, ApiError> {
    let intake = state.intake();
    let auth = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    let by_key = match auth {
        Some(a) if a.starts_with("Bearer ") => intake.site_for_send_key(a[7..].trim()),
        Some(a) => waymark_protocol::intake::basic_user(a).and_then(|k| intake.site_for_key(&k)),
        None => None,
    };
    let key_site = by_key.ok_or(ApiError::Unauthorized {
        code: "invalid_key",
        field: "authorization",
        message: "authorization: expected the site's write key (HTTP Basic user name) or a send key (Bearer)".into(),
    })?;
    let site = site.filter(|s| !s.is_empty()).ok_or_else(|| {
        ApiError::bad(
            "missing_site",
            "site",
            "site: missing; pass ?site=<site id>",
        )
    })?;
    if key_site.id != site {
        return Err(ApiError::Forbidden {
            code: "wrong_site",
            field: "site",
            message: format!("site: this key belongs to another site than {site:?}"),
        });
    }
    Ok(key_site)
}

async fn handle(
    State(state): State<AppState>,
    axum::Extension(identity): axum::Extension<crate::identity::IdentityState>,
    Query(q): Query<SiteParam>,
    req: Request,
) -> Response {
    let site = match authorize(&state, req.headers(), q.site.as_deref()) {
        Ok(s) => s.clone(),
        Err(e) => return e.into_response(),
    };
    let gzip = match req
        .headers()
        .get(header::CONTENT_ENCODING)
        .and_then(|v| v.to_str().ok())
        .map(|s| s.trim().to_ascii_lowercase())
        .as_deref()
    {
        None | Some("" | "identity") => false,
        Some("gzip" | "x-gzip") => true,
        Some(other) => {
            return ApiError::UnsupportedEncoding {
                message: format!("content-encoding: {other:?} is not supported (use gzip or none)"),
            }
            .into_response()
        }
    };
    let stream = req
        .into_body()
        .into_data_stream()
        .map_err(std::io::Error::other);
    let reader = tokio_util::io::StreamReader::new(stream);
    let handle = tokio::runtime::Handle::current();
    let st = state.clone();
    // The body is read, parsed and enriched on a blocking thread (a sync reader over the async
    // stream, so gzip is flate2's); each chunk is admitted on the runtime before the next is
    // read, which is the backpressure.
    let run = tokio::task::spawn_blocking(move || {
        let bridge = tokio_util::io::SyncIoBridge::new_with_handle(reader, handle.clone());
        let read: Box<dyn std::io::Read> = if gzip {
            Box::new(flate2::read::MultiGzDecoder::new(bridge))
        } else {
            Box::new(bridge)
        };
        let mut lines = Lines::new(std::io::BufReader::with_capacity(256 << 10, read));
        let intake = st.intake();
        let mut report = ImportReport::default();
        loop {
            let (chunk, covered) = match lines.next_chunk() {
                Ok(c) => c,
                Err(e) => {
                    report.error = Some(format!("body: {e}"));
                    return (StatusCode::BAD_REQUEST, report);
                }
            };
            if covered == 0 {
                return (StatusCode::OK, report);
            }
            let received_at_ms = crate::clock::now_ms();
            let rows = chunk_rows(intake, &site, &chunk, received_at_ms, &mut report);
            report.lines += covered;
            match handle.block_on(admit_chunk(intake, rows)) {
                Ok((stored, suppressed)) => {
                    report.accepted += stored;
                    report.suppressed += suppressed;
                    report.acknowledged_lines = report.lines;
                }
                Err(e) => {
                    report.lines -= covered;
                    report.error = Some(e.to_string());
                    return (e.status(), report);
                }
            }
        }
    });
    let (status, report) = match run.await {
        Ok(r) => r,
        Err(e) => {
            return ApiError::Overloaded {
                code: "import_failed",
                retry_after_secs: 5,
                message: format!("the import stopped: {e}"),
            }
            .into_response()
        }
    };
    // Merges of the imported identifiers come sooner than the next regular pass (the
    // writer inserts the rows first; the pass sees them when they are there).
    identity.nudge();
    let m = &state.intake().metrics;
    m.request("import", status.as_u16());
    if report.rejected_lines > 0 {
        m.rejected("import_line", report.rejected_lines);
    }
    (status, Json(report)).into_response()
}
