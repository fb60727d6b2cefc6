//! Reading a request body: the raw size limit, then gzip decompression capped on the
//! decompressed size, so a gzip bomb costs at most `limit` bytes of memory and gets 413.

use std::borrow::Cow;
use std::io::Read as _;

use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use axum::http::{header, HeaderMap};

use crate::intake::ApiError;

/// Buffers the body (honouring the route's `DefaultBodyLimit`), refusing one that takes longer
/// than `timeout` to arrive (`[http] body_timeout`).
pub async fn read(req: Request, timeout: std::time::Duration) -> Result<Bytes, ApiError> {
    let Ok(read) = tokio::time::timeout(timeout, Bytes::from_request(req, &())).await else {
        return Err(ApiError::Timeout {
            code: "body_timeout",
            field: "body",
            message: format!(
                "body: not received within http.body_timeout ({} ms)",
                timeout.as_millis()
            ),
        });
    };
    read.map_err(|rej| {
        if rej.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::TooLarge {
                code: "body_too_large",
                field: "body",
                message: "body: larger than this endpoint's limit".into(),
            }
        } else {
            ApiError::bad("unreadable_body", "body", format!("body: {rej}"))
        }
    })
}

/// Undoes `Content-Encoding` (identity or gzip), refusing more than `limit` decoded bytes.
pub fn decode<'a>(
    headers: &HeaderMap,
    raw: &'a [u8],
    limit: usize,
) -> Result<Cow<'a, [u8]>, ApiError> {
    let encoding = headers
        .get(header::CONTENT_ENCODING)
        .and_then(|v| v.to_str().ok())
        .map(|s| s.trim().to_ascii_lowercase())
        .unwrap_or_default();
    let too_large = || ApiError::TooLarge {
        code: "body_too_large",
        field: "body",
        message: format!("body: more than {limit} bytes after decompression"),
    };
    match encoding.as_str() {
        "" | "identity" => {
            if raw.len() > limit {
                return Err(too_large());
            }
            Ok(Cow::Borrowed(raw))
        }
        "gzip" | "x-gzip" => {
            let mut out = Vec::with_capacity((raw.len() * 4).min(limit + 1));
            flate2::read::MultiGzDecoder::new(raw)
                .take(limit as u64 + 1)
                .read_to_end(&mut out)
                .map_err(|e| {
                    ApiError::bad("invalid_gzip", "body", format!("body: not valid gzip: {e}"))
                })?;
            if out.len() > limit {
                return Err(too_large());
            }
            Ok(Cow::Owned(out))
        }
        other => Err(ApiError::UnsupportedEncoding {
            message: format!("content-encoding: {other:?} is not supported (use gzip or none)"),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write as _;

    fn gz(data: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    fn headers(enc: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::CONTENT_ENCODING, enc.parse().unwrap());
        h
    }

    #[test]
    fn gzip_is_decoded_and_bombs_refused() {
        let body = gz(b"{\"batch\":[]}");
        assert_eq!(
            &*decode(&headers("gzip"), &body, 100).unwrap(),
            b"{\"batch\":[]}"
        );
        let bomb = gz(&vec![b' '; 10 << 20]);
        assert!(bomb.len() < 20_000);
        let e = decode(&headers("gzip"), &bomb, 512 * 1024).unwrap_err();
        assert_eq!(e.status(), 413);
        let e = decode(&headers("gzip"), b"not gzip", 100).unwrap_err();
        assert_eq!(e.code(), "invalid_gzip");
        let e = decode(&headers("br"), b"x", 100).unwrap_err();
        assert_eq!(e.status(), 415);
        assert_eq!(
            decode(&HeaderMap::new(), b"abc", 2).unwrap_err().status(),
            413
        );
    }
}
