//! The error every endpoint answers with: a status and `{"error", "message", "field"}`.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::json;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// 400: the body or a field is wrong; resending it unchanged will fail again.
    #[error("{message}")]
    BadRequest {
        code: &'static str,
        field: String,
        message: String,
    },
    /// 401: no credentials, or credentials we do not know (write key, edge signature).
    #[error("{message}")]
    Unauthorized {
        code: &'static str,
        field: &'static str,
        message: String,
    },
    /// 403: the credentials are fine but this origin may not use them.
    #[error("{message}")]
    Forbidden {
        code: &'static str,
        field: &'static str,
        message: String,
    },
    /// 404: the endpoint is switched off by configuration.
    #[error("{message}")]
    NotFound { code: &'static str, message: String },
    /// 408: the body did not arrive, or the answer was not ready, within the configured time
    /// (`[http] body_timeout`, `request_timeout`); nothing was stored, sending again is safe.
    #[error("{message}")]
    Timeout {
        code: &'static str,
        field: &'static str,
        message: String,
    },
    /// 413: the body (after decompression) or the batch is larger than the limit.
    #[error("{message}")]
    TooLarge {
        code: &'static str,
        field: &'static str,
        message: String,
    },
    /// 415: a Content-Encoding we do not decode.
    #[error("{message}")]
    UnsupportedEncoding { message: String },
    /// 429 + Retry-After: the site is over its configured rate limit; this request is fine and
    /// will be taken after the wait. Nothing was stored.
    #[error("{message}")]
    RateLimited {
        retry_after_secs: u64,
        message: String,
    },
    /// 503 + Retry-After: we cannot take it durably right now (spool full or failing);
    /// the client should retry later, nothing was stored.
    #[error("{message}")]
    Overloaded {
        code: &'static str,
        retry_after_secs: u64,
        message: String,
    },
}

impl ApiError {
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::BadRequest { .. } => StatusCode::BAD_REQUEST,
            ApiError::Unauthorized { .. } => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden { .. } => StatusCode::FORBIDDEN,
            ApiError::NotFound { .. } => StatusCode::NOT_FOUND,
            ApiError::Timeout { .. } => StatusCode::REQUEST_TIMEOUT,
            ApiError::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::UnsupportedEncoding { .. } => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            ApiError::Overloaded { .. } => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    /// The machine-readable reason code.
    pub fn code(&self) -> &'static str {
        match self {
            ApiError::BadRequest { code, .. }
            | ApiError::Unauthorized { code, .. }
            | ApiError::Forbidden { code, .. }
            | ApiError::NotFound { code, .. }
            | ApiError::Timeout { code, .. }
            | ApiError::TooLarge { code, .. }
            | ApiError::Overloaded { code, .. } => code,
            ApiError::UnsupportedEncoding { .. } => "unsupported_encoding",
            ApiError::RateLimited { .. } => "rate_limited",
        }
    }

    fn field(&self) -> Option<&str> {
        match self {
            ApiError::BadRequest { field, .. } => Some(field),
            ApiError::Unauthorized { field, .. }
            | ApiError::Forbidden { field, .. }
            | ApiError::Timeout { field, .. }
            | ApiError::TooLarge { field, .. } => Some(field),
            ApiError::UnsupportedEncoding { .. } => Some("content-encoding"),
            ApiError::NotFound { .. } | ApiError::Overloaded { .. } => None,
            ApiError::RateLimited { .. } => Some("rate_limit"),
        }
    }

    pub fn bad(code: &'static str, field: impl Into<String>, message: impl Into<String>) -> Self {
        ApiError::BadRequest {
            code,
            field: field.into(),
            message: message.into(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = json!({
            "error": self.code(),
            "message": self.to_string(),
            "field": self.field(),
        });
        let mut resp = (self.status(), axum::Json(body)).into_response();
        if let ApiError::Overloaded {
            retry_after_secs, ..
        }
        | ApiError::RateLimited {
            retry_after_secs, ..
        } = self
        {
            resp.headers_mut().insert(
                header::RETRY_AFTER,
                HeaderValue::from_str(&retry_after_secs.to_string()).expect("digits"),
            );
        }
        resp
    }
}
