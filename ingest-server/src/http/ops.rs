//! `/healthz` (the process answers), `/readyz` (ClickHouse reachable and taking the writer's
//! inserts, the spool writable; it also says where the schema migrations stand and why the
//! writer is blocked, if it is), `/metrics` (Prometheus text).

use std::time::Duration;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use serde_json::json;

use super::AppState;
use crate::metrics::SpoolGauges;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
}

async fn readyz(State(state): State<AppState>) -> Response {
    let spool = state.intake().spool.clone();
    let spool_ok = tokio::task::spawn_blocking(move || spool.probe_writable())
        .await
        .map_err(|e| e.to_string())
        .and_then(|r| r.map_err(|e| e.to_string()));
    let ch = tokio::time::timeout(
        Duration::from_secs(2),
        state.0.clickhouse.query("SELECT 1").fetch_one::<u8>(),
    )
    .await;
    let ch_ok: Result<(), String> = match ch {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("no answer within 2 s".into()),
    };
    // Intake works while migrations run (events wait in the spool), so readiness does not
    // depend on them; `schema` says where they stand (the query API answers 503 until "ok").
    // A writer that ClickHouse does not let insert (auth, disk, a missing column...) makes the
    // server not ready, like ClickHouse being down: events wait in the spool meanwhile.
    let blocked = state.intake().metrics.writer.blocked();
    let ready = spool_ok.is_ok() && ch_ok.is_ok() && blocked.is_none();
    let writer = match blocked {
        None => json!({"state": "ok"}),
        Some(b) => json!({
            "state": "blocked",
            "cause": b.cause,
            "during": b.during,
            "error": b.error,
            "blocked_for_s": crate::clock::now_ms_u64().saturating_sub(b.since_ms) / 1000,
        }),
    };
    let body = json!({
        "ready": ready,
        "clickhouse": ch_ok.err().unwrap_or_else(|| "ok".into()),
        "spool": spool_ok.err().unwrap_or_else(|| "ok".into()),
        "schema": state.0.schema.describe(),
        "writer": writer,
    });
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, axum::Json(body)).into_response()
}

async fn metrics(State(state): State<AppState>) -> Response {
    let s = &state.intake().spool;
    let now = crate::clock::now_ms_u64();
    let damage = s.damage();
    let gauges = SpoolGauges {
        used_bytes: s.disk_bytes(),
        pending_bytes: s.pending_bytes(),
        max_bytes: s.max_bytes(),
        oldest_age: s
            .oldest_pending_ms()
            .map(|t| Duration::from_millis(now.saturating_sub(t))),
        damaged_inside: (damage.inside_ranges, damage.inside_bytes),
        damaged_tail: (damage.tail_ranges, damage.tail_bytes),
    };
    let metrics = &state.intake().metrics;
    if let Some(ix) = &state.0.identities {
        metrics.identity_index(ix.links());
    }
    let body = metrics.render(&gauges);
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], body).into_response()
}
