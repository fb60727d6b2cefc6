//! Email engagement: the signed tokens in tracked links and open pixels ([`token`]), and who
//! fetched a pixel or followed a link: a person, a proxy or a security scanner ([`classify`]).
//!
//! A tracked link is `{prefix}/e/c/{token}` and a pixel `{prefix}/e/o/{token}.gif` on the
//! site's own domain ([`click_path`], [`pixel_path`]). The token carries everything the
//! endpoint needs (site, recipient, campaign, send id, issue time and, for a click, the target),
//! so answering needs no database look-up, and the target is signed, so the redirect cannot be
//! pointed anywhere else.

pub mod classify;
pub mod stitch;
pub mod token;

pub use classify::{classify_click, classify_open, ClickClass, Hit, OpenClass, Verdict};
pub use token::{sign, sign_marker, verify, verify_marker, Claims, Kind, SigningKey, TokenError};

use serde_json::{json, Map, Value};

use crate::event::{Event, EventType};

/// The event a pixel fetch records.
pub const OPEN_EVENT: &str = "$email_open";
/// The event a link click records.
pub const CLICK_EVENT: &str = "$email_click";

/// The transparent 1x1 GIF every pixel answers with (43 bytes).
pub const PIXEL_GIF: &[u8] = &[
    0x47, 0x49, 0x46, 0x38, 0x39, 0x61, 0x01, 0x00, 0x01, 0x00, 0x80, 0x00, 0x00, 0xff, 0xff, 0xff,
    0x00, 0x00, 0x00, 0x21, 0xf9, 0x04, 0x01, 0x00, 0x00, 0x00, 0x00, 0x2c, 0x00, 0x00, 0x00, 0x00,
    0x01, 0x00, 0x01, 0x00, 0x00, 0x02, 0x02, 0x44, 0x01, 0x00, 0x3b,
];

/// A message id for the event of one hit where no random source is at hand (the edge worker):
/// the token and the receive time in milliseconds, hashed. The same token fetched twice in
/// one millisecond is one event.
pub fn hit_message_id(token: &str, now_ms: i64) -> String {
    use sha2::Digest as _;
    let mut h = sha2::Sha256::new();
    h.update(token.as_bytes());
    h.update(now_ms.to_be_bytes());
    format!("email-{}", hex::encode(&h.finalize()[..16]))
}

/// The recipient's id on the site: the user id, else the email address.
pub fn recipient_id(c: &Claims) -> &str {
    if c.user_id.is_empty() {
        &c.email
    } else {
        &c.user_id
    }
}

/// The `$email_open` or `$email_click` event of a verified token, as the ingest server and the
/// edge worker both record it: the recipient's, with `campaign`, `send_id`, `email`, `class`,
/// `reason`, `url` (clicks) and `sent_at` (Unix seconds) as properties.
pub fn hit_event(
    message_id: String,
    c: &Claims,
    class: &str,
    why: &str,
    user_agent: &str,
) -> Event {
    let mut ev = Event::new(EventType::Track, message_id);
    ev.event = Some(
        match c.kind() {
            Kind::Open => OPEN_EVENT,
            Kind::Click => CLICK_EVENT,
        }
        .to_string(),
    );
    ev.user_id = Some(recipient_id(c).to_string());
    let mut props = Map::new();
    for (k, v) in [
        ("campaign", &c.campaign),
        ("send_id", &c.send_id),
        ("email", &c.email),
    ] {
        if !v.is_empty() {
            props.insert(k.into(), Value::String(v.clone()));
        }
    }
    props.insert("class".into(), json!(class));
    props.insert("reason".into(), json!(why));
    if let Some(t) = &c.target {
        props.insert("url".into(), json!(t));
    }
    props.insert("sent_at".into(), json!(c.issued_at));
    ev.properties = props;
    if !user_agent.is_empty() {
        ev.context
            .insert("userAgent".into(), Value::String(user_agent.to_string()));
    }
    ev
}

/// The path of the open pixel for `token`, below the site's prefix.
pub fn pixel_path(token: &str) -> String {
    format!("/e/o/{token}.gif")
}

/// The path of the click redirect for `token`, below the site's prefix.
pub fn click_path(token: &str) -> String {
    format!("/e/c/{token}")
}

/// The token in a pixel or click path (`/e/o/<token>.gif`, `/e/c/<token>`), with its kind.
pub fn parse_path(path: &str) -> Option<(Kind, &str)> {
    if let Some(t) = path.strip_prefix("/e/o/") {
        return Some((Kind::Open, t.strip_suffix(".gif")?));
    }
    path.strip_prefix("/e/c/").map(|t| (Kind::Click, t))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_round_trip() {
        assert_eq!(parse_path(&pixel_path("abc")), Some((Kind::Open, "abc")));
        assert_eq!(parse_path(&click_path("abc")), Some((Kind::Click, "abc")));
        assert_eq!(parse_path("/e/o/abc"), None);
        assert_eq!(parse_path("/v1/batch"), None);
    }
}
