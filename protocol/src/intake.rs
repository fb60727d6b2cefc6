//! Where Segment-family clients send, and how they name the site: one table for the edge worker
//! and the ingest server, so both accept exactly the same paths.
//!
//! | path (after the API root) | body | sent by |
//! |---|---|---|
//! | `/v1/batch`, `/v1/b` | `{"batch": [...]}` | server SDKs, analytics.js batching, the Waymark tag |
//! | `/v1/track`, `/v1/identify`, `/v1/page`, `/v1/screen`, `/v1/alias`, `/v1/group` | one event | server SDKs' single calls, RudderStack's JavaScript SDK |
//! | `/v1/t`, `/v1/i`, `/v1/p`, `/v1/s`, `/v1/a`, `/v1/g` | one event | analytics.js (`@segment/analytics-next`) per-event delivery |
//! | `/beacon/v1/batch` | `{"batch": [...]}` | RudderStack's JavaScript SDK with beacon delivery (`?writeKey=` in the URL) |
//!
//! The write key comes as the HTTP Basic user name, as `writeKey` in the body, or (beacon only)
//! as the `writeKey` query parameter; see [`basic_user`] and [`query_write_key`].

use base64::Engine as _;

use crate::EventType;

/// What an intake path carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum IntakePath {
    /// A batch of events.
    #[default]
    Batch,
    /// One event of this type (the body is the event itself).
    Single(EventType),
}

/// Every intake path, for routers that register them one by one.
pub const PATHS: [(&str, IntakePath); 15] = [
    ("/v1/batch", IntakePath::Batch),
    ("/v1/b", IntakePath::Batch),
    ("/beacon/v1/batch", IntakePath::Batch),
    ("/v1/track", IntakePath::Single(EventType::Track)),
    ("/v1/identify", IntakePath::Single(EventType::Identify)),
    ("/v1/page", IntakePath::Single(EventType::Page)),
    ("/v1/screen", IntakePath::Single(EventType::Screen)),
    ("/v1/alias", IntakePath::Single(EventType::Alias)),
    ("/v1/group", IntakePath::Single(EventType::Group)),
    ("/v1/t", IntakePath::Single(EventType::Track)),
    ("/v1/i", IntakePath::Single(EventType::Identify)),
    ("/v1/p", IntakePath::Single(EventType::Page)),
    ("/v1/s", IntakePath::Single(EventType::Screen)),
    ("/v1/a", IntakePath::Single(EventType::Alias)),
    ("/v1/g", IntakePath::Single(EventType::Group)),
];

/// The intake a path names (the part after the API root or the edge prefix), if any.
pub fn intake_path(path: &str) -> Option<IntakePath> {
    let path = path.strip_suffix('/').unwrap_or(path);
    PATHS.iter().find(|(p, _)| *p == path).map(|(_, k)| *k)
}

impl IntakePath {
    /// A short name for logs and metrics: `batch`, `track`, ...
    pub fn name(self) -> &'static str {
        match self {
            IntakePath::Batch => "batch",
            IntakePath::Single(k) => k.as_str(),
        }
    }
}

/// The user name of an `Authorization: Basic base64(user:password)` header: Segment-family
/// SDKs send the write key there with an empty password. `None` for another scheme, bad base64,
/// or an empty user. Padding is optional (some clients leave it out).
pub fn basic_user(header: &str) -> Option<String> {
    let (scheme, b64) = header.trim().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let raw = BASE64.decode(b64.trim()).ok()?;
    let text = String::from_utf8(raw).ok()?;
    let user = text.split_once(':').map_or(text.as_str(), |(u, _)| u);
    (!user.is_empty()).then(|| user.to_string())
}

/// Standard alphabet, padding accepted or not.
const BASE64: base64::engine::GeneralPurpose = base64::engine::GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    base64::engine::GeneralPurposeConfig::new()
        .with_decode_padding_mode(base64::engine::DecodePaddingMode::Indifferent),
);

/// `writeKey` from a query string (`a=1&writeKey=wk_x`), form-decoded, if present and not
/// empty. RudderStack's beacon delivery cannot set headers and puts the key there.
pub fn query_write_key(query: &str) -> Option<String> {
    form_urlencoded::parse(query.as_bytes())
        .find(|(k, v)| k == "writeKey" && !v.is_empty())
        .map(|(_, v)| v.into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_segment_family_path_is_known() {
        assert_eq!(intake_path("/v1/batch"), Some(IntakePath::Batch));
        assert_eq!(intake_path("/v1/b"), Some(IntakePath::Batch));
        assert_eq!(intake_path("/beacon/v1/batch"), Some(IntakePath::Batch));
        for k in EventType::ALL {
            let long = format!("/v1/{}", k.as_str());
            let short = format!("/v1/{}", &k.as_str()[..1]);
            assert_eq!(intake_path(&long), Some(IntakePath::Single(k)), "{long}");
            assert_eq!(intake_path(&short), Some(IntakePath::Single(k)), "{short}");
        }
        assert_eq!(intake_path("/v1/x"), None);
        assert_eq!(intake_path("/v1/"), None);
        assert_eq!(intake_path("/v2/batch"), None);
        assert_eq!(
            intake_path("/v1/t/"),
            Some(IntakePath::Single(EventType::Track))
        );
    }

    #[test]
    fn basic_auth_user_is_the_write_key() {
        // base64("wk_shop:")
        assert_eq!(basic_user("Basic d2tfc2hvcDo=").as_deref(), Some("wk_shop"));
        assert_eq!(basic_user("basic d2tfc2hvcDo").as_deref(), Some("wk_shop"));
        // base64("wk_shop") without a colon
        assert_eq!(basic_user("Basic d2tfc2hvcA==").as_deref(), Some("wk_shop"));
        assert_eq!(basic_user("Bearer d2tfc2hvcDo="), None);
        assert_eq!(basic_user("Basic !!!"), None);
        assert_eq!(basic_user("Basic Og=="), None, "empty user");
        assert_eq!(basic_user("Basic"), None);
    }

    #[test]
    fn write_key_from_a_query_string() {
        assert_eq!(query_write_key("writeKey=wk_a").as_deref(), Some("wk_a"));
        assert_eq!(
            query_write_key("x=1&writeKey=wk%5Fa%2Bb+c").as_deref(),
            Some("wk_a+b c")
        );
        assert_eq!(query_write_key("writeKey=").as_deref(), None);
        assert_eq!(query_write_key("writekey=x"), None);
        assert_eq!(query_write_key("writeKey=a%2").as_deref(), Some("a%2"));
        assert_eq!(query_write_key(""), None);
    }
}
