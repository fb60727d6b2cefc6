//! The click that stitches the reader to the visitor.
//!
//! A person's click (a `human` verdict) is answered with its redirect and a short-lived,
//! signed, first-party cookie, [`COOKIE`], holding a stitch marker
//! ([`super::token::sign_marker`]: site, recipient, campaign and send id, issued at the click).
//! The tag's next batch from that browser carries it to the same domain (the edge worker's
//! prefix, or the ingest server's own intake); there it is verified, and when the batch may
//! be kept with its ids (no `Sec-GPC: 1` that removes them) it becomes one identity link,
//! `source_type = "email_click"`, from the batch's anonymous id to the recipient. The answer to
//! that batch clears the cookie either way. So what the visitor browsed before and after the
//! click counts for the recipient's profile, through the same `identities` path an `identify`
//! call takes.
//!
//! The cookie is `HttpOnly` (no script reads it), `SameSite=Lax` (it is set on a top-level
//! navigation and sent only to the same site), `Path=/` and lives [`MAX_AGE_SECS`]: long
//! enough for the landing page to load the tag and send its first batch.

use super::token::Claims;
use crate::event::Event;

/// The cookie's name.
pub const COOKIE: &str = "wm_email";
/// How long a marker is valid (and the cookie kept): five minutes.
pub const MAX_AGE_SECS: u64 = 300;
/// `identities.source_type` of a link made from a marker.
pub const LINK_SOURCE: &str = "email_click";

/// The marker's claims for a verified click: who, without the target, issued now.
pub fn marker_claims(click: &Claims, now_secs: u64) -> Claims {
    Claims {
        target: None,
        issued_at: now_secs,
        ..click.clone()
    }
}

/// The `Set-Cookie` value that leaves `marker`. `secure` when the page is served over HTTPS.
pub fn set_cookie(marker: &str, secure: bool) -> String {
    format!(
        "{COOKIE}={marker}; Path=/; Max-Age={MAX_AGE_SECS}; HttpOnly; SameSite=Lax{}",
        if secure { "; Secure" } else { "" }
    )
}

/// The `Set-Cookie` value that clears the marker.
pub fn clear_cookie(secure: bool) -> String {
    format!(
        "{COOKIE}=; Path=/; Max-Age=0; HttpOnly; SameSite=Lax{}",
        if secure { "; Secure" } else { "" }
    )
}

/// The marker in a `Cookie` request header, if there is one.
pub fn from_cookie_header(header: &str) -> Option<&str> {
    header.split(';').find_map(|pair| {
        let (name, value) = pair.split_once('=')?;
        (name.trim() == COOKIE)
            .then(|| value.trim().trim_matches('"'))
            .filter(|v| !v.is_empty())
    })
}

/// The browser's anonymous id in a batch: the first event's, when it is not a GPC pseudonym
/// (`gpc-...`, which stands for one visit and must not be tied to a person).
pub fn batch_anonymous_id(events: &[Event]) -> Option<&str> {
    events
        .iter()
        .filter_map(|e| e.anonymous_id.as_deref())
        .find(|a| !a.is_empty())
        .filter(|a| !a.starts_with("gpc-"))
}

/// The message id of the link row: the same marker and browser give the same id, so a batch
/// retried (or two batches carrying the cookie) make one link.
pub fn link_message_id(site: &str, anonymous_id: &str, marker_issued_at: u64) -> String {
    use sha2::Digest as _;
    let mut h = sha2::Sha256::new();
    for part in [site, anonymous_id, &marker_issued_at.to_string()] {
        h.update(part.as_bytes());
        h.update([0]);
    }
    format!("email-link-{}", hex::encode(&h.finalize()[..12]))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::EventType;

    #[test]
    fn the_cookie_round_trips_through_a_cookie_header() {
        let set = set_cookie("AbC-_1", true);
        assert_eq!(
            set,
            "wm_email=AbC-_1; Path=/; Max-Age=300; HttpOnly; SameSite=Lax; Secure"
        );
        assert!(!set_cookie("x", false).contains("Secure"));
        assert!(clear_cookie(false).contains("Max-Age=0"));
        assert_eq!(
            from_cookie_header("a=1; wm_email=AbC-_1; b=2"),
            Some("AbC-_1")
        );
        assert_eq!(from_cookie_header("wm_email="), None);
        assert_eq!(from_cookie_header("xwm_email=1; other=2"), None);
        assert_eq!(from_cookie_header(""), None);
    }

    #[test]
    fn gpc_pseudonyms_are_never_linked() {
        let mut a = Event::new(EventType::Page, "m1");
        a.anonymous_id = Some("gpc-s1".into());
        assert_eq!(batch_anonymous_id(std::slice::from_ref(&a)), None);
        a.anonymous_id = Some("anon-1".into());
        let b = Event::new(EventType::Page, "m2");
        assert_eq!(batch_anonymous_id(&[b, a]), Some("anon-1"));
    }

    #[test]
    fn one_marker_and_browser_make_one_link_id() {
        let a = link_message_id("shop", "anon-1", 1);
        assert_eq!(a, link_message_id("shop", "anon-1", 1));
        assert_ne!(a, link_message_id("shop", "anon-2", 1));
        assert_ne!(a, link_message_id("shop", "anon-1", 2));
    }
}
