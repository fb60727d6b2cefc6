//! `POST /v1/edge`: batches forwarded by the edge worker; the signature check, the replay guard
//! and the envelopes' events are the intake's ([`crate::intake::edge`]).

use std::time::Instant;

use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::HeaderMap;
use axum::response::Response;
use axum::routing::post;
use axum::Router;
use waymark_protocol::edge::{HEADER_SIGNATURE, HEADER_TIMESTAMP};
use waymark_protocol::limits::MAX_BATCH_BYTES;

use super::{body, respond, AppState};
use crate::intake::{self, Accepted, ApiError};

pub fn routes(state: &AppState) -> Router<AppState> {
    let limit = state
        .intake()
        .config
        .edge
        .as_ref()
        .map(|e| e.max_body.0 as usize)
        .unwrap_or(MAX_BATCH_BYTES);
    Router::new().route("/v1/edge", post(handle).layer(DefaultBodyLimit::max(limit)))
}

async fn handle(State(state): State<AppState>, req: Request) -> Response {
    let started = Instant::now();
    let r = forward(&state, req).await;
    respond(&state, "edge", started, r)
}

fn header<'a>(h: &'a HeaderMap, name: &str) -> &'a str {
    h.get(name).and_then(|v| v.to_str().ok()).unwrap_or("")
}

async fn forward(state: &AppState, req: Request) -> Result<Accepted, ApiError> {
    let intake = state.intake();
    let limit = intake::edge::enabled(intake)?.max_body.0 as usize;
    let headers = req.headers().clone();
    let raw = body::read(req, intake.config.http.body_timeout.0).await?;
    intake::edge::accept(
        intake,
        header(&headers, HEADER_TIMESTAMP),
        header(&headers, HEADER_SIGNATURE),
        &raw,
        |raw| body::decode(&headers, raw, limit),
    )
    .await
}
