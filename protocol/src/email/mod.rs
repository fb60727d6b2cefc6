//! Email engagement: the signed tokens in tracked links and open pixels ([`token`]), and who
//! fetched a pixel or followed a link: a person, a proxy or a security scanner ([`classify`]).
//!
//! A tracked link is `{prefix}/e/c/{token}` and a pixel `{prefix}/e/o/{token}.gif` on the
//! site's own domain ([`click_path`], [`pixel_path`]). The token carries everything the
//! endpoint needs (site, recipient, campaign, send id, issue time and, for a click, the target),
//! so answering needs no database look-up, and the target is signed, so the redirect cannot be
//! pointed anywhere else.

pub mod classify;
pub mod token;

pub use classify::{classify_click, classify_open, ClickClass, Hit, OpenClass, Verdict};
pub use token::{sign, verify, Claims, Kind, SigningKey, TokenError};

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
