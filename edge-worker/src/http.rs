//! Routes, CORS and the answers, as plain data ([`Reply`]) so they are tested on the host; the
//! Workers runtime side (`runtime.rs`) only turns a `Reply` into a `worker::Response`.
//!
//! Under the configured prefix (say `/wm`):
//!
//! | path | methods | what |
//! |---|---|---|
//! | `/wm/v1/batch` | POST, OPTIONS | the tag's batches (CORS, preflight) |
//! | `/wm/v1/b`, `/wm/v1/t` ... `/wm/v1/track` ..., `/wm/beacon/v1/batch` | POST, OPTIONS | Segment-family clients (every path of `waymark_protocol::intake`) |
//! | `/wm/t/<version>/<file>` | GET, HEAD | a tag file; `<version>` is a content hash, cached for a year |
//! | `/wm/<file>` | GET, HEAD | the same file under a stable name, cached for 5 minutes |
//! | `/wm/tag.json` | GET, HEAD | the versioned URLs of the current files, cached for 5 minutes |
//! | `/wm/e/o/<token>.gif` | GET | an email's open pixel (`crate::email`) |
//! | `/wm/e/c/<token>` | GET, HEAD | an email's tracked link: a redirect (`crate::email`) |
//!
//! Files keep their names inside the versioned folder, so the loader finds the wasm module next
//! to itself whichever way it was loaded.

use serde::Serialize;
use waymark_protocol::email::Kind;
use waymark_protocol::intake::{intake_path, IntakePath};

use crate::assets::{self, Asset};
use crate::config::{Config, ConfigError};
use crate::process::{ProcessError, Summary};

/// A response, before it becomes a `worker::Response`.
#[derive(Debug, Clone, PartialEq)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(&'static str, String)>,
    pub body: Body,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Body {
    Empty,
    Json(String),
    Static(&'static [u8]),
}

impl Reply {
    fn new(status: u16, body: Body) -> Reply {
        let mut headers = Vec::new();
        if let Body::Json(_) = body {
            headers.push((
                "content-type",
                "application/json; charset=utf-8".to_string(),
            ));
        }
        Reply {
            status,
            headers,
            body,
        }
    }

    fn json(status: u16, value: &impl Serialize) -> Reply {
        Reply::new(
            status,
            Body::Json(serde_json::to_string(value).expect("replies serialise")),
        )
    }

    pub fn header(mut self, name: &'static str, value: impl Into<String>) -> Reply {
        self.headers.push((name, value.into()));
        self
    }

    /// The value of a header (first match, names compared case-insensitively).
    pub fn get(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// Adds the CORS headers for an allowed origin.
    pub fn with_cors(self, cors: &Cors) -> Reply {
        match cors {
            Cors::Allowed(origin) => self
                .header("access-control-allow-origin", origin.clone())
                .header("access-control-allow-credentials", "true")
                // The tag backs off by Retry-After, which is not a CORS-safelisted header.
                .header("access-control-expose-headers", "Retry-After")
                .header("vary", "Origin"),
            Cors::NoOrigin | Cors::Refused(_) => self.header("vary", "Origin"),
        }
    }
}

/// `{"error": {"code", "field", "reason"}}`: every refusal names the field and the reason.
#[derive(Serialize)]
struct ErrorBody<'a> {
    error: ErrorDetail<'a>,
}

#[derive(Serialize)]
struct ErrorDetail<'a> {
    code: &'a str,
    field: &'a str,
    reason: String,
}

fn error(status: u16, code: &str, field: &str, reason: impl Into<String>) -> Reply {
    Reply::json(
        status,
        &ErrorBody {
            error: ErrorDetail {
                code,
                field,
                reason: reason.into(),
            },
        },
    )
}

/// Which route a path names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route<'a> {
    /// A batch or a single event from the tag or a Segment-family client.
    Intake(IntakePath),
    Manifest,
    /// An email's open pixel or tracked link, with its token.
    Email(Kind, &'a str),
    /// A tag file under `t/<version>/`.
    Versioned {
        version: &'a str,
        name: &'a str,
    },
    /// A tag file under its stable name.
    Stable {
        name: &'a str,
    },
    NotFound,
}

pub const MANIFEST_PATH: &str = "/tag.json";

pub fn route<'a>(path: &'a str, prefix: &str) -> Route<'a> {
    let Some(rest) = path.strip_prefix(prefix) else {
        return Route::NotFound;
    };
    if !rest.starts_with('/') {
        return Route::NotFound;
    }
    if let Some(k) = intake_path(rest) {
        return Route::Intake(k);
    }
    if rest == MANIFEST_PATH {
        return Route::Manifest;
    }
    if let Some((kind, token)) = waymark_protocol::email::parse_path(rest) {
        return Route::Email(kind, token);
    }
    if let Some(v) = rest.strip_prefix("/t/") {
        if let Some((version, name)) = v.split_once('/') {
            if !version.is_empty() && !name.is_empty() {
                return Route::Versioned { version, name };
            }
        }
        return Route::NotFound;
    }
    let name = &rest[1..];
    if !name.is_empty() {
        return Route::Stable { name };
    }
    Route::NotFound
}

/// The long-cached URL of a bundled file.
pub fn versioned_url(prefix: &str, name: &str) -> String {
    format!("{prefix}/t/{}/{name}", assets::VERSION)
}

const IMMUTABLE: &str = "public, max-age=31536000, immutable";
const SHORT: &str = "public, max-age=300, stale-while-revalidate=86400";

/// The answer for a tag file, the manifest, or an unknown path (GET or HEAD).
pub fn serve_static(route: Route<'_>, prefix: &str, if_none_match: Option<&str>) -> Reply {
    let (asset, cache) = match route {
        Route::Versioned { version, name } => match assets::find(name) {
            Some(a) if version == assets::VERSION => (a, IMMUTABLE),
            // An old version (a page cached before a deploy): point at the current one, briefly.
            Some(_) => {
                return Reply::new(302, Body::Empty)
                    .header("location", versioned_url(prefix, name))
                    .header("cache-control", "public, max-age=60")
            }
            None => return not_found(),
        },
        Route::Stable { name } => match assets::find(name) {
            Some(a) => (a, SHORT),
            None => return not_found(),
        },
        Route::Manifest => return manifest(prefix),
        Route::Intake(_) | Route::Email(..) | Route::NotFound => return not_found(),
    };
    asset_reply(asset, cache, if_none_match)
}

fn asset_reply(a: &'static Asset, cache: &str, if_none_match: Option<&str>) -> Reply {
    let matches = if_none_match.is_some_and(|v| v.split(',').any(|t| t.trim() == a.etag));
    let r = if matches {
        Reply::new(304, Body::Empty)
    } else {
        Reply::new(200, Body::Static(a.bytes)).header("content-type", a.content_type)
    };
    r.header("cache-control", cache)
        .header("etag", a.etag)
        .header("x-content-type-options", "nosniff")
        // Public files; a page on another host of the site may fetch the wasm module with CORS.
        .header("access-control-allow-origin", "*")
}

#[derive(Serialize)]
struct Manifest {
    version: &'static str,
    files: std::collections::BTreeMap<&'static str, String>,
}

fn manifest(prefix: &str) -> Reply {
    let m = Manifest {
        version: assets::VERSION,
        files: assets::FILES
            .iter()
            .map(|a| (a.name, versioned_url(prefix, a.name)))
            .collect(),
    };
    Reply::json(200, &m)
        .header("cache-control", SHORT)
        .header("access-control-allow-origin", "*")
}

pub fn not_found() -> Reply {
    error(404, "not_found", "path", "no such route")
}

pub fn method_not_allowed(allow: &'static str) -> Reply {
    error(
        405,
        "method_not_allowed",
        "method",
        format!("only {allow} here"),
    )
    .header("allow", allow)
}

/// What CORS says about a request's `Origin`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cors {
    /// No `Origin` header: not a cross-origin browser request (or a same-origin GET).
    NoOrigin,
    Allowed(String),
    Refused(String),
}

pub fn cors(origin: Option<&str>, cfg: &Config) -> Cors {
    match origin.map(str::trim).filter(|o| !o.is_empty()) {
        None => Cors::NoOrigin,
        Some(o) if cfg.allowed_origins.allows(o) => Cors::Allowed(o.to_string()),
        Some(o) => Cors::Refused(o.to_string()),
    }
}

/// 403 for a batch from an origin not in `ALLOWED_ORIGINS`.
pub fn origin_refused(origin: &str) -> Reply {
    error(
        403,
        "origin_not_allowed",
        "origin",
        format!("{origin:?} is not in ALLOWED_ORIGINS"),
    )
    .header("vary", "Origin")
}

/// The answer to a CORS preflight for the batch route.
pub fn preflight(cors: &Cors, request_headers: Option<&str>) -> Reply {
    match cors {
        Cors::Refused(o) => origin_refused(o),
        _ => {
            // Echo the requested headers when they are plain header names (the tag asks for
            // content-type; Segment SDKs add authorization).
            let allowed = request_headers
                .filter(|h| {
                    h.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b',' | b' '))
                })
                .unwrap_or("content-type");
            Reply::new(204, Body::Empty)
                .header("access-control-allow-methods", "POST, OPTIONS")
                .header("access-control-allow-headers", allowed.to_string())
                .header("access-control-max-age", "86400")
                .with_cors(cors)
        }
    }
}

/// The answer to a batch accepted as a whole (events may still have been rejected).
pub fn accepted(summary: &Summary, queued: bool, cors: &Cors) -> Reply {
    #[derive(Serialize)]
    struct Accepted<'a> {
        #[serde(flatten)]
        summary: &'a Summary,
        /// `queue` or `direct`: how the events went on.
        forwarded: &'static str,
    }
    Reply::json(
        200,
        &Accepted {
            summary,
            forwarded: if queued { "queue" } else { "direct" },
        },
    )
    .with_cors(cors)
}

/// The answer to a batch refused as a whole: 400 or 413, naming the field and the reason.
pub fn refused(e: &ProcessError, cors: &Cors) -> Reply {
    error(e.status(), e.code(), e.field(), e.to_string()).with_cors(cors)
}

/// A 413 decided from `Content-Length` before reading the body.
pub fn too_large(bytes: usize, limit: usize, cors: &Cors) -> Reply {
    error(
        413,
        "body_too_large",
        "body",
        format!("body: {bytes} bytes is more than the limit of {limit}"),
    )
    .with_cors(cors)
}

/// The events could not be handed on (queue or ingest server unavailable). 503 with
/// `Retry-After`: the tag keeps the batch and sends it again; nothing was accepted.
pub fn unavailable(reason: &str, cors: &Cors) -> Reply {
    error(503, "unavailable", "upstream", reason)
        .header("retry-after", "5")
        .with_cors(cors)
}

/// The worker's own configuration is wrong: 500 naming the variable.
pub fn misconfigured(e: &ConfigError) -> Reply {
    error(500, "misconfigured", e.var, e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::AllowedOrigins;

    #[test]
    fn paths_route_under_the_prefix_only() {
        assert_eq!(
            route("/wm/v1/batch", "/wm"),
            Route::Intake(IntakePath::Batch)
        );
        assert_eq!(route("/wm/v1/b", "/wm"), Route::Intake(IntakePath::Batch));
        assert_eq!(
            route("/wm/v1/t", "/wm"),
            Route::Intake(IntakePath::Single(waymark_protocol::EventType::Track))
        );
        assert_eq!(
            route("/wm/v1/identify", "/wm"),
            Route::Intake(IntakePath::Single(waymark_protocol::EventType::Identify))
        );
        assert_eq!(route("/wm/tag.json", "/wm"), Route::Manifest);
        assert_eq!(
            route("/wm/e/o/tok.gif", "/wm"),
            Route::Email(Kind::Open, "tok")
        );
        assert_eq!(
            route("/wm/e/c/tok", "/wm"),
            Route::Email(Kind::Click, "tok")
        );
        assert_eq!(
            route("/wm/t/abc123/waymark.js", "/wm"),
            Route::Versioned {
                version: "abc123",
                name: "waymark.js"
            }
        );
        assert_eq!(
            route("/wm/waymark_bg.wasm", "/wm"),
            Route::Stable {
                name: "waymark_bg.wasm"
            }
        );
        assert_eq!(route("/v1/batch", "/wm"), Route::NotFound);
        assert_eq!(route("/wmx/v1/batch", "/wm"), Route::NotFound);
        assert_eq!(route("/wm", "/wm"), Route::NotFound);
        assert_eq!(route("/wm/", "/wm"), Route::NotFound);
        assert_eq!(route("/wm/t/abc", "/wm"), Route::NotFound);
        assert_eq!(route("/v1/batch", ""), Route::Intake(IntakePath::Batch));
    }

    #[test]
    fn unknown_files_are_404_and_the_manifest_lists_every_file() {
        let r = serve_static(Route::Stable { name: "nope.js" }, "/wm", None);
        assert_eq!(r.status, 404);
        let r = serve_static(Route::Manifest, "/wm", None);
        assert_eq!(r.status, 200);
        let Body::Json(j) = &r.body else {
            panic!("json")
        };
        let v: serde_json::Value = serde_json::from_str(j).unwrap();
        assert_eq!(v["version"], assets::VERSION);
        assert_eq!(v["files"].as_object().unwrap().len(), assets::FILES.len());
    }

    #[test]
    fn bundled_files_are_served_with_types_and_cache_lifetimes() {
        // Runs over whatever the build bundled (nothing when js/dist was not built).
        for a in assets::FILES {
            let r = serve_static(
                Route::Versioned {
                    version: assets::VERSION,
                    name: a.name,
                },
                "/wm",
                None,
            );
            assert_eq!(r.status, 200);
            assert_eq!(r.body, Body::Static(a.bytes));
            assert_eq!(r.get("content-type"), Some(a.content_type));
            assert_eq!(r.get("cache-control"), Some(IMMUTABLE));
            let etag = r.get("etag").unwrap().to_string();
            let r = serve_static(
                Route::Versioned {
                    version: assets::VERSION,
                    name: a.name,
                },
                "/wm",
                Some(&etag),
            );
            assert_eq!((r.status, r.body), (304, Body::Empty));
            let r = serve_static(Route::Stable { name: a.name }, "/wm", None);
            assert_eq!(r.get("cache-control"), Some(SHORT));
            let r = serve_static(
                Route::Versioned {
                    version: "old",
                    name: a.name,
                },
                "/wm",
                None,
            );
            assert_eq!(r.status, 302);
            assert_eq!(
                r.get("location"),
                Some(versioned_url("/wm", a.name).as_str())
            );
        }
    }

    #[test]
    fn cors_follows_the_allowed_origins() {
        let cfg = Config {
            allowed_origins: AllowedOrigins::List(vec!["https://shop.example".into()]),
            ..Config::default()
        };
        assert_eq!(cors(None, &cfg), Cors::NoOrigin);
        let ok = cors(Some("https://shop.example"), &cfg);
        assert_eq!(ok, Cors::Allowed("https://shop.example".into()));
        let bad = cors(Some("https://evil.example"), &cfg);
        assert!(matches!(bad, Cors::Refused(_)));

        let r = preflight(&ok, Some("content-type, authorization"));
        assert_eq!(r.status, 204);
        assert_eq!(
            r.get("access-control-allow-origin"),
            Some("https://shop.example")
        );
        assert_eq!(r.get("access-control-allow-methods"), Some("POST, OPTIONS"));
        assert_eq!(
            r.get("access-control-allow-headers"),
            Some("content-type, authorization")
        );
        assert_eq!(
            preflight(&ok, Some("x\r\ny")).get("access-control-allow-headers"),
            Some("content-type")
        );
        assert_eq!(preflight(&bad, None).status, 403);
    }

    #[test]
    fn the_tag_is_told_what_went_on_and_what_did_not() {
        let summary = Summary {
            accepted: 2,
            rejected: 1,
            gpc_dropped: 0,
            rejections: vec![waymark_protocol::Rejection {
                index: Some(1),
                field: "messageId".into(),
                reason: "missing".into(),
            }],
        };
        let r = accepted(&summary, true, &Cors::NoOrigin);
        assert_eq!(r.status, 200);
        let Body::Json(j) = &r.body else {
            panic!("json")
        };
        let v: serde_json::Value = serde_json::from_str(j).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"accepted": 2, "rejected": 1, "forwarded": "queue",
                "rejections": [{"index": 1, "field": "messageId", "reason": "missing"}]})
        );
    }

    #[test]
    fn refusals_name_field_and_reason() {
        let e = ProcessError::MissingWriteKey;
        let r = refused(&e, &Cors::NoOrigin);
        assert_eq!(r.status, 400);
        let Body::Json(j) = &r.body else {
            panic!("json")
        };
        let v: serde_json::Value = serde_json::from_str(j).unwrap();
        assert_eq!(v["error"]["field"], "writeKey");
        assert_eq!(v["error"]["code"], "missing_write_key");
        let r = unavailable("ingest server answered 502", &Cors::NoOrigin);
        assert_eq!((r.status, r.get("retry-after")), (503, Some("5")));
        let r = unavailable("down", &Cors::Allowed("https://shop.example".into()));
        assert_eq!(r.get("access-control-expose-headers"), Some("Retry-After"));
        assert_eq!(
            r.get("access-control-allow-origin"),
            Some("https://shop.example")
        );
    }
}
