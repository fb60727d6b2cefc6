//! The query API's error: a status and `{"error", "message", "field"}`.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::json;

/// Why a query request failed. The body is `{"error": code, "message", "field"}`.
#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    /// 400: a parameter or the query body is wrong; the same request fails again.
    #[error("{field}: {message}")]
    BadRequest { field: String, message: String },
    /// 401: no read key, or one we do not know.
    #[error("{0}")]
    Unauthorized(String),
    /// 403: the key is valid but not for this site (it never sees another site's data).
    #[error("{0}")]
    Forbidden(String),
    /// 404: no visitor or user with this id on this site.
    #[error("{0}")]
    NotFound(String),
    /// 503 + Retry-After: ClickHouse did not answer or failed; retrying later may work.
    #[error("the database failed: {0}")]
    Unavailable(String),
    /// 503 + Retry-After: the server is still applying its ClickHouse migrations (a new query
    /// table backfilling after an upgrade).
    #[error("schema: ClickHouse migrations are not applied yet ({0}); retry shortly")]
    Migrating(String),
}

impl QueryError {
    pub fn bad(field: impl Into<String>, message: impl Into<String>) -> Self {
        QueryError::BadRequest {
            field: field.into(),
            message: message.into(),
        }
    }

    fn parts(&self) -> (StatusCode, &'static str, Option<&str>) {
        match self {
            QueryError::BadRequest { field, .. } => {
                (StatusCode::BAD_REQUEST, "bad_request", Some(field))
            }
            QueryError::Unauthorized(_) => (
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                Some("authorization"),
            ),
            QueryError::Forbidden(_) => (StatusCode::FORBIDDEN, "forbidden", Some("site")),
            QueryError::NotFound(_) => (StatusCode::NOT_FOUND, "not_found", Some("id")),
            QueryError::Unavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, "unavailable", None),
            QueryError::Migrating(_) => {
                (StatusCode::SERVICE_UNAVAILABLE, "migrating", Some("schema"))
            }
        }
    }
}

impl From<clickhouse::error::Error> for QueryError {
    fn from(e: clickhouse::error::Error) -> Self {
        QueryError::Unavailable(e.to_string())
    }
}

impl IntoResponse for QueryError {
    fn into_response(self) -> Response {
        let (status, code, field) = self.parts();
        if status.is_server_error() {
            tracing::warn!(error = %self, "query failed");
        }
        let body = json!({ "error": code, "message": self.to_string(), "field": field });
        let mut resp = (status, axum::Json(body)).into_response();
        if status == StatusCode::SERVICE_UNAVAILABLE {
            let after = if code == "migrating" { "5" } else { "1" };
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static(after));
        }
        resp
    }
}
