//! What is kept of a visitor's URLs and ids: one definition for the edge worker (which applies
//! it before anything leaves Cloudflare) and the ingest server (which applies it to what it
//! receives directly, and again to what the edge sent, before the spool).
//!
//! # URLs ([`redact_url`], [`redact_event`])
//!
//! `context.page.url`, `.search` and `.referrer`, the same three in a `page` event's
//! properties, `$click`'s `href` and `$email_click`'s `url` (the link's target) are rewritten:
//!
//! - every query parameter whose name is not on the site's allow-list ([`UrlPolicy`]: `utm_*`,
//!   `gclid`, `fbclid` and the names the site adds, `*` at the end matching a prefix, ASCII case
//!   ignored) keeps its name and gets the value [`REDACTED`]; fragments written as parameters
//!   (`#access_token=...`) are treated the same way;
//! - a value that looks like an email address or a long token is replaced even when its
//!   parameter is allowed, and so is such a path segment, fragment or parameter name;
//! - user info in the authority (`https://user:pass@host/`) becomes `REDACTED@host`;
//! - `mailto:`, `tel:` and `sms:` targets keep only the scheme.
//!
//! Everything else stays byte for byte (the original percent-encoding included), so a URL with
//! nothing to hide is stored exactly as sent.
//!
//! "Looks like an email": after percent-decoding, an `@` with something before it and a `.`
//! after it. "Looks like a long token": a run of at least [`TOKEN_MIN_LEN`] characters from
//! `A-Z a-z 0-9 - _ . ~ + / =` holding both a letter and a digit, in which fewer than one
//! character in eight is a separator (`-_.~`): so API keys, JWTs, hex digests, UUIDs and
//! base64 are tokens, while slugs (`spring-sale-2024-newsletter-v2`) are not.
//!
//! # Global Privacy Control ([`GpcMode`], [`apply_gpc`])
//!
//! What a request with `Sec-GPC: 1` does to its events, per site.

use std::borrow::Cow;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::event::{Event, EventType};
use crate::limits::MAX_ID_LEN;
use crate::names;

/// What replaces a value that is not kept.
pub const REDACTED: &str = "REDACTED";

/// Query parameters every site keeps (unless the value looks like a secret).
pub const DEFAULT_ALLOWED_PARAMS: &[&str] = &["utm_*", "gclid", "fbclid"];

/// The shortest run of token characters that counts as a token.
pub const TOKEN_MIN_LEN: usize = 20;

/// Schemes whose target is personal data as a whole; only the scheme is kept.
const OPAQUE_SCHEMES: &[&str] = &["mailto:", "tel:", "sms:"];

/// A site's query-parameter allow-list: [`DEFAULT_ALLOWED_PARAMS`] plus `extra` (product and
/// category parameters the site names). A name ending in `*` matches every name it prefixes.
#[derive(Debug, Clone, Copy, Default)]
pub struct UrlPolicy<'a> {
    pub extra: &'a [String],
}

impl UrlPolicy<'_> {
    /// Whether the parameter `name` (decoded) keeps its value.
    pub fn allows(&self, name: &str) -> bool {
        DEFAULT_ALLOWED_PARAMS
            .iter()
            .copied()
            .chain(self.extra.iter().map(String::as_str))
            .any(|p| pattern_matches(p, name))
    }
}

fn pattern_matches(pattern: &str, name: &str) -> bool {
    match pattern.strip_suffix('*') {
        Some(prefix) => {
            name.len() >= prefix.len()
                && name.as_bytes()[..prefix.len()].eq_ignore_ascii_case(prefix.as_bytes())
        }
        None => name.eq_ignore_ascii_case(pattern),
    }
}

/// Checks an allow-list entry as written in a configuration; the reason when it is unusable.
pub fn check_param_pattern(p: &str) -> Result<(), &'static str> {
    let name = p.strip_suffix('*').unwrap_or(p);
    if p.is_empty() || p == "*" {
        return Err("must name a parameter (a `*` alone would keep every value)");
    }
    if name.contains('*') {
        return Err("`*` may only end the name");
    }
    if name
        .chars()
        .any(|c| matches!(c, '&' | '=' | '#' | '?') || c.is_whitespace())
    {
        return Err("must be a parameter name, without `&`, `=`, `#`, `?` or spaces");
    }
    Ok(())
}

/// Percent-decoded text (`+` as a space), as `application/x-www-form-urlencoded` reads it.
fn decoded(s: &str) -> Cow<'_, str> {
    if !s.contains(['%', '+']) {
        return Cow::Borrowed(s);
    }
    // `parse` splits at `&` and `=`: escaped first, the text decodes as one name.
    let one = s.replace('&', "%26").replace('=', "%3D");
    form_urlencoded::parse(one.as_bytes())
        .next()
        .map(|(k, _)| Cow::Owned(k.into_owned()))
        .unwrap_or(Cow::Borrowed(s))
}

/// Whether decoded text looks like an email address: an `@` with text before it and a `.`
/// later, with text between.
pub fn looks_like_email(s: &str) -> bool {
    s.match_indices('@').any(|(i, _)| {
        i > 0 && {
            let after = &s[i + 1..];
            after
                .find('.')
                .is_some_and(|d| d > 0 && d + 1 < after.len())
        }
    })
}

fn is_token_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '~' | '+' | '/' | '=')
}

/// Whether decoded text holds a long token (see the module doc).
pub fn looks_like_token(s: &str) -> bool {
    s.split(|c: char| !is_token_char(c)).any(|run| {
        run.len() >= TOKEN_MIN_LEN
            && run.bytes().any(|b| b.is_ascii_digit())
            && run.bytes().any(|b| b.is_ascii_alphabetic())
            && run
                .bytes()
                .filter(|b| matches!(b, b'-' | b'_' | b'.' | b'~'))
                .count()
                * 8
                < run.len()
    })
}

/// Whether raw (percent-encoded) URL text is an email address or a token once decoded.
fn secret(raw: &str) -> bool {
    let d = decoded(raw);
    looks_like_email(&d) || looks_like_token(&d)
}

/// A URL (absolute, relative, or only its `?search`) with every value that is not kept replaced
/// by [`REDACTED`]; see the module doc. Borrowed when nothing changed.
pub fn redact_url<'s>(url: &'s str, policy: &UrlPolicy<'_>) -> Cow<'s, str> {
    let trimmed = url.trim_start();
    for scheme in OPAQUE_SCHEMES {
        if trimmed.len() >= scheme.len()
            && trimmed.as_bytes()[..scheme.len()].eq_ignore_ascii_case(scheme.as_bytes())
        {
            let kept = &trimmed[..scheme.len()];
            return if kept.len() == url.len() {
                Cow::Borrowed(url)
            } else {
                Cow::Owned(kept.to_string())
            };
        }
    }
    let (before_fragment, fragment) = match url.split_once('#') {
        Some((b, f)) => (b, Some(f)),
        None => (url, None),
    };
    let (base, query) = match before_fragment.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (before_fragment, None),
    };
    let mut out = String::with_capacity(url.len());
    let mut changed = redact_base(base, &mut out);
    if let Some(q) = query {
        out.push('?');
        changed |= redact_query(q, policy, &mut out);
    }
    if let Some(f) = fragment {
        out.push('#');
        changed |= redact_fragment(f, policy, &mut out);
    }
    if changed {
        Cow::Owned(out)
    } else {
        Cow::Borrowed(url)
    }
}

/// Scheme, authority and path: user info dropped, secret-looking path segments replaced.
fn redact_base(base: &str, out: &mut String) -> bool {
    let mut changed = false;
    let mut path = base;
    if let Some(i) = base.find("://") {
        let rest = &base[i + 3..];
        let end = rest.find('/').unwrap_or(rest.len());
        let authority = &rest[..end];
        out.push_str(&base[..i + 3]);
        match authority.rfind('@') {
            Some(at) => {
                out.push_str(REDACTED);
                out.push_str(&authority[at..]);
                changed = &authority[..at] != REDACTED;
            }
            None => out.push_str(authority),
        }
        path = &rest[end..];
    }
    changed | redact_path(path, out)
}

fn redact_path(path: &str, out: &mut String) -> bool {
    let mut changed = false;
    for (i, seg) in path.split('/').enumerate() {
        if i > 0 {
            out.push('/');
        }
        if secret(seg) {
            out.push_str(REDACTED);
            changed = true;
        } else {
            out.push_str(seg);
        }
    }
    changed
}

fn redact_query(query: &str, policy: &UrlPolicy<'_>, out: &mut String) -> bool {
    let mut changed = false;
    for (i, pair) in query.split('&').enumerate() {
        if i > 0 {
            out.push('&');
        }
        match pair.split_once('=') {
            None => {
                if secret(pair) {
                    out.push_str(REDACTED);
                    changed = true;
                } else {
                    out.push_str(pair);
                }
            }
            Some((name, value)) => {
                let name_secret = secret(name);
                if name_secret {
                    out.push_str(REDACTED);
                } else {
                    out.push_str(name);
                }
                out.push('=');
                let keep = !name_secret && policy.allows(&decoded(name)) && !secret(value);
                if keep || value == REDACTED {
                    out.push_str(value);
                } else {
                    out.push_str(REDACTED);
                }
                changed |= name_secret || !(keep || value == REDACTED);
            }
        }
    }
    changed
}

/// A fragment is a route (`#/reset/<token>`), a query (`#access_token=...`), or both
/// (`#/p?x=1`).
fn redact_fragment(f: &str, policy: &UrlPolicy<'_>, out: &mut String) -> bool {
    match f.split_once('?') {
        Some((route, q)) => {
            let mut changed = redact_path(route, out);
            out.push('?');
            changed |= redact_query(q, policy, out);
            changed
        }
        None if f.contains('=') => redact_query(f, policy, out),
        None => redact_path(f, out),
    }
}

/// Whether [`redact_url`] would leave `url` as it is (the ingest server asks this of three URLs
/// per event, and most are clean): `plainly_clean`'s one pass for the usual page URL, else
/// [`redact_url`] itself.
pub fn url_is_clean(url: &str, policy: &UrlPolicy<'_>) -> bool {
    plainly_clean(url, policy) || matches!(redact_url(url, policy), Cow::Borrowed(_))
}

/// A one-pass test that is true only of URLs [`redact_url`] leaves as they are (what it cannot
/// tell, the walk decides): no `@` (user info, emails), `%` or `+` (encoded text), `#`
/// (fragments), leading space or opaque scheme; no run of token characters as long as a token
/// (counted across a query pair's `=`, so never shorter than the walk's runs); every query
/// parameter on the allow-list. Most page URLs pass; the walk's splitting and checks cost the
/// ingest server 5 % of its CPU in `cargo xtask bench ingest` when every URL took it,
/// whether or not it wrote its copy (not writing it saved nothing measurable).
fn plainly_clean(url: &str, policy: &UrlPolicy<'_>) -> bool {
    let b = url.as_bytes();
    if b.first().is_some_and(u8::is_ascii_whitespace)
        || b.iter().any(|c| matches!(c, b'@' | b'%' | b'+' | b'#'))
        || OPAQUE_SCHEMES
            .iter()
            .any(|s| b.len() >= s.len() && b[..s.len()].eq_ignore_ascii_case(s.as_bytes()))
    {
        return false;
    }
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (url, None),
    };
    // Path segments are split at `/` before they are checked; query values are not.
    let longest_run = |text: &str, slash: bool| {
        let mut longest = 0;
        let mut run = 0;
        for c in text.bytes() {
            if (c != b'/' || slash) && is_token_char(char::from(c)) {
                run += 1;
                longest = longest.max(run);
            } else {
                run = 0;
            }
        }
        longest
    };
    if longest_run(base, false) >= TOKEN_MIN_LEN {
        return false;
    }
    query.is_none_or(|q| {
        longest_run(q, true) < TOKEN_MIN_LEN
            && q.split('&').all(|pair| {
                pair.split_once('=')
                    .is_none_or(|(name, _)| policy.allows(name))
            })
    })
}

/// Rewrites one string field of a JSON object in place; whether it changed.
fn redact_field(obj: &mut serde_json::Map<String, Value>, key: &str, p: &UrlPolicy<'_>) -> bool {
    let Some(Value::String(s)) = obj.get_mut(key) else {
        return false;
    };
    match redact_url(s, p) {
        Cow::Borrowed(_) => false,
        Cow::Owned(r) => {
            *s = r;
            true
        }
    }
}

/// Whether [`redact_event_in_place`] would change `ev` (so a caller holding a shared event
/// clones it only when needed).
pub fn needs_redaction(ev: &Event, p: &UrlPolicy<'_>) -> bool {
    let dirty = |v: Option<&Value>| {
        v.and_then(Value::as_str)
            .is_some_and(|s| !url_is_clean(s, p))
    };
    let page = ev.context.get("page").and_then(Value::as_object);
    PAGE_FIELDS
        .iter()
        .any(|k| dirty(page.and_then(|o| o.get(*k))))
        || (ev.kind == EventType::Page && PAGE_FIELDS.iter().any(|k| dirty(ev.properties.get(*k))))
        || link_field(ev).is_some_and(|k| dirty(ev.properties.get(k)))
}

const PAGE_FIELDS: &[&str] = &["url", "search", "referrer"];

/// The property holding a followed link's target: `$click`'s `href`, `$email_click`'s `url`.
fn link_field(ev: &Event) -> Option<&'static str> {
    match ev.event.as_deref()? {
        names::CLICK => Some("href"),
        crate::email::CLICK_EVENT => Some("url"),
        _ => None,
    }
}

/// Applies [`redact_url`] to the URL fields of an event (see the module doc); whether
/// anything changed.
pub fn redact_event_in_place(ev: &mut Event, p: &UrlPolicy<'_>) -> bool {
    let mut changed = false;
    if let Some(Value::Object(page)) = ev.context.get_mut("page") {
        for k in PAGE_FIELDS {
            changed |= redact_field(page, k, p);
        }
    }
    if ev.kind == EventType::Page {
        for k in PAGE_FIELDS {
            changed |= redact_field(&mut ev.properties, k, p);
        }
    }
    if let Some(k) = link_field(ev) {
        changed |= redact_field(&mut ev.properties, k, p);
    }
    changed
}

/// The event with its URL fields redacted, or `None` when nothing needs to change (no copy).
pub fn redact_event(ev: &Event, p: &UrlPolicy<'_>) -> Option<Event> {
    needs_redaction(ev, p).then(|| {
        let mut e = ev.clone();
        redact_event_in_place(&mut e, p);
        e
    })
}

/// What to do when a request carries `Sec-GPC: 1` (Global Privacy Control).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum GpcMode {
    /// Keep the events but remove the persistent ids (`userId`, `previousId`, and `anonymousId`,
    /// which becomes the session-scoped `gpc-<sessionId>`); `alias` and `identify` events, which
    /// exist to tie ids and personal traits together, are left out.
    #[default]
    DropIds,
    /// Leave every event out (the request is still answered 200).
    DropEvents,
    /// Only record the signal (`client.gpc`, the `gpc` column).
    Keep,
}

impl GpcMode {
    /// `drop-ids`, `drop-events` or `keep` (ASCII case ignored).
    pub fn parse(s: &str) -> Option<GpcMode> {
        match s.trim().to_ascii_lowercase().as_str() {
            "drop-ids" => Some(GpcMode::DropIds),
            "drop-events" => Some(GpcMode::DropEvents),
            "keep" => Some(GpcMode::Keep),
            _ => None,
        }
    }
}

/// Whether a `Sec-GPC` header value is the signal (`1`).
pub fn gpc_signal(header: Option<&str>) -> bool {
    header.is_some_and(|v| v.trim() == "1")
}

/// Prefix of the pseudonymous `anonymousId` that replaces persistent ids under `Sec-GPC: 1`.
pub const GPC_ID_PREFIX: &str = "gpc-";

/// Applies `mode` to the events of a request that carried `Sec-GPC: 1`; the number of events
/// left out.
pub fn apply_gpc(events: &mut Vec<Event>, mode: GpcMode) -> usize {
    let before = events.len();
    events.retain(|e| gpc_keeps(e, mode));
    if mode == GpcMode::DropIds {
        events.iter_mut().for_each(drop_persistent_ids);
    }
    before - events.len()
}

/// Whether [`apply_gpc`] keeps `e` under `mode` (so a caller can follow which of a batch's
/// positions remain).
pub fn gpc_keeps(e: &Event, mode: GpcMode) -> bool {
    match mode {
        GpcMode::Keep => true,
        GpcMode::DropEvents => false,
        GpcMode::DropIds => !matches!(e.kind, EventType::Alias | EventType::Identify),
    }
}

/// Replaces the persistent ids with a session-scoped pseudonym: every event needs an id (the
/// ingest server refuses one without), and `gpc-<sessionId>` links a visit's events to each other
/// but not to the visitor's other visits or to a user. Without a session id the event's own id is
/// used, which links nothing.
fn drop_persistent_ids(e: &mut Event) {
    e.user_id = None;
    e.previous_id = None;
    let basis = e
        .context_str(&["sessionId"])
        .filter(|s| !s.is_empty())
        .unwrap_or(&e.message_id);
    let mut id = format!("{GPC_ID_PREFIX}{basis}");
    if id.len() > MAX_ID_LEN {
        let mut cut = MAX_ID_LEN;
        while !id.is_char_boundary(cut) {
            cut -= 1;
        }
        id.truncate(cut);
    }
    e.anonymous_id = Some(id);
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    fn r(url: &str) -> String {
        redact_url(url, &UrlPolicy::default()).into_owned()
    }

    #[test]
    fn parameters_off_the_list_lose_their_values() {
        assert_eq!(
            r("https://shop.example/reset?token=abc&utm_source=news&gclid=G1&x"),
            "https://shop.example/reset?token=REDACTED&utm_source=news&gclid=G1&x"
        );
        assert_eq!(
            r("?q=shoes&UTM_Medium=email"),
            "?q=REDACTED&UTM_Medium=email"
        );
        let extra = ["sku".to_string(), "cat_*".to_string()];
        let p = UrlPolicy { extra: &extra };
        assert_eq!(
            redact_url("/p?sku=12&cat_id=3&category=4", &p),
            "/p?sku=12&cat_id=3&category=REDACTED"
        );
    }

    #[test]
    fn clean_urls_are_kept_byte_for_byte() {
        for u in [
            "https://shop.example/",
            "https://shop.example/p/blue-running-shoes-for-men-2024?utm_campaign=spring-sale-2024-newsletter-v2#reviews",
            "/a%20b?utm_term=t%C3%A9",
            "",
            "?",
        ] {
            assert!(matches!(redact_url(u, &UrlPolicy::default()), Cow::Borrowed(_)), "{u}");
        }
    }

    #[test]
    fn emails_and_tokens_go_even_where_allowed() {
        assert_eq!(
            r("https://x.example/?utm_source=jane%40example.com&utm_medium=a@b.co"),
            "https://x.example/?utm_source=REDACTED&utm_medium=REDACTED"
        );
        assert_eq!(
            r("https://x.example/reset/9f86d081884c7d659a2feaa0c55ad015a3bf4f1b?utm_content=eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0In0.abc123"),
            "https://x.example/reset/REDACTED?utm_content=REDACTED"
        );
        assert_eq!(
            r("/users/jane@example.com/orders"),
            "/users/REDACTED/orders"
        );
        assert_eq!(
            r("https://app.example/cb#access_token=abcd&state=1"),
            "https://app.example/cb#access_token=REDACTED&state=REDACTED"
        );
        assert_eq!(
            r("/#/reset/550e8400-e29b-41d4-a716-446655440000"),
            "/#/reset/REDACTED"
        );
        assert_eq!(
            r("https://u:pw@x.example/a"),
            "https://REDACTED@x.example/a"
        );
        assert_eq!(r("?jane@example.com"), "?REDACTED");
        assert_eq!(r("?jane%40example.com=1"), "?REDACTED=REDACTED");
    }

    #[test]
    fn mailto_and_tel_keep_only_the_scheme() {
        assert_eq!(r("mailto:jane@example.com?subject=hi"), "mailto:");
        assert_eq!(r(" MailTo:jane@example.com"), "MailTo:");
        assert_eq!(r("tel:+491701234567"), "tel:");
        assert_eq!(r("sms:+491701234567"), "sms:");
    }

    #[test]
    fn tokens_and_slugs() {
        assert!(looks_like_token("sk_live_4eC39HqLyjWDarjtT1zdp7dc"));
        assert!(looks_like_token("550e8400-e29b-41d4-a716-446655440000"));
        assert!(!looks_like_token("spring-sale-2024-newsletter-v2"));
        assert!(!looks_like_token("abcdefghijklmnopqrstuvwxyz"));
        assert!(!looks_like_token("1234"));
        assert!(looks_like_email("a.b+c@mail.example.org"));
        assert!(!looks_like_email("@handle"));
        assert!(!looks_like_email("a@b."));
    }

    #[test]
    fn patterns_are_checked() {
        assert!(check_param_pattern("sku").is_ok());
        assert!(check_param_pattern("cat_*").is_ok());
        assert!(check_param_pattern("*").is_err());
        assert!(check_param_pattern("a*b").is_err());
        assert!(check_param_pattern("a=b").is_err());
    }

    #[test]
    fn events_are_redacted_where_urls_live() {
        let mut ev: Event = serde_json::from_value(json!({
            "type": "track", "event": "$click", "messageId": "m", "anonymousId": "a",
            "context": {"page": {"url": "https://s.example/?email=a@b.co", "path": "/",
                "referrer": "https://mail.example/?t=1", "search": "?email=a@b.co"}},
            "properties": {"kind": "link", "href": "mailto:a@b.co"}
        }))
        .unwrap();
        let p = UrlPolicy::default();
        let e = redact_event(&ev, &p).expect("changed");
        assert_eq!(
            e.context_str(&["page", "url"]),
            Some("https://s.example/?email=REDACTED")
        );
        assert_eq!(e.context_str(&["page", "search"]), Some("?email=REDACTED"));
        assert_eq!(
            e.context_str(&["page", "referrer"]),
            Some("https://mail.example/?t=REDACTED")
        );
        assert_eq!(e.context_str(&["page", "path"]), Some("/"));
        assert_eq!(e.properties["href"], "mailto:");
        assert!(
            redact_event(&e, &p).is_none(),
            "redacting twice changes nothing"
        );
        ev.kind = EventType::Page;
        ev.event = None;
        ev.properties = json!({"url": "https://s.example/?k=v", "href": "?k=v"})
            .as_object()
            .unwrap()
            .clone();
        redact_event_in_place(&mut ev, &p);
        assert_eq!(ev.properties["url"], "https://s.example/?k=REDACTED");
        assert_eq!(
            ev.properties["href"], "?k=v",
            "href is only a $click property"
        );

        // An email click's target is a URL the site wrote, and may carry the reader's address.
        ev.kind = EventType::Track;
        ev.event = Some(crate::email::CLICK_EVENT.to_string());
        ev.properties = json!({"url": "https://s.example/cart?u=a@b.co&utm_source=mail",
            "email": "a@b.co", "campaign": "c"})
        .as_object()
        .unwrap()
        .clone();
        let e = redact_event(&ev, &p).expect("changed");
        assert_eq!(
            e.properties["url"],
            "https://s.example/cart?u=REDACTED&utm_source=mail"
        );
        assert_eq!(
            e.properties["email"], "a@b.co",
            "the recipient property is not a URL"
        );
    }

    /// An email address as a generator writes it, and how it may appear in a URL.
    fn email() -> impl Strategy<Value = String> {
        "[a-z0-9][a-z0-9._+-]{0,15}@[a-z0-9][a-z0-9-]{0,10}\\.[a-z]{2,6}"
    }

    /// A token: letters and digits (with both), at least `TOKEN_MIN_LEN` long.
    fn token() -> impl Strategy<Value = String> {
        ("[A-Za-z0-9]{18,60}", "[A-Za-z]", "[0-9]").prop_map(|(t, l, d)| format!("{l}{t}{d}"))
    }

    /// URLs as pages have them: a host, path segments and query pairs from few characters, so
    /// that long runs, allowed and other names, `=` and `/` in values all come up.
    fn plain_url() -> impl Strategy<Value = String> {
        (
            "[a-z0-9-]{1,12}(\\.[a-z0-9-]{1,12}){0,2}",
            proptest::collection::vec("[a-zA-Z0-9._~-]{0,24}", 0..4),
            proptest::collection::vec(
                (
                    prop_oneof![
                        Just("utm_source".to_string()),
                        Just("UTM_Medium".to_string()),
                        Just("gclid".to_string()),
                        "[a-z_]{1,8}"
                    ],
                    "[a-zA-Z0-9/=._~-]{0,24}",
                ),
                0..4,
            ),
        )
            .prop_map(|(host, segments, pairs)| {
                let mut url = format!("https://{host}/{}", segments.join("/"));
                for (i, (k, v)) in pairs.iter().enumerate() {
                    url.push(if i == 0 { '?' } else { '&' });
                    url.push_str(k);
                    url.push('=');
                    url.push_str(v);
                }
                url
            })
    }

    fn encode(s: &str, how: u8) -> String {
        match how % 3 {
            0 => s.to_string(),
            1 => form_urlencoded::byte_serialize(s.as_bytes()).collect(),
            _ => s.replace('@', "%40").replace('+', "%2B"),
        }
    }

    fn url_with(secret: &str, place: u8, how: u8, name: &str) -> String {
        let s = encode(secret, how);
        match place % 7 {
            0 => format!("https://shop.example/p?{name}={s}&utm_source=news"),
            1 => format!("https://shop.example/p?utm_source={s}"),
            2 => format!("https://shop.example/u/{s}/edit"),
            3 => format!("https://shop.example/#{name}={s}"),
            4 => format!("https://shop.example/#/r/{s}"),
            5 => format!("?{s}"),
            _ => format!("mailto:{s}"),
        }
    }

    proptest! {
        #[test]
        fn no_email_or_token_survives(
            e in email(), t in token(), place in 0u8..7, how in 0u8..3,
            name in "[a-z_]{1,12}", pick in proptest::bool::ANY,
        ) {
            let secret = if pick { e } else { t };
            let url = url_with(&secret, place, how, &name);
            let out = r(&url);
            let lower = out.to_ascii_lowercase();
            for form in [secret.clone(), encode(&secret, 1), encode(&secret, 2)] {
                prop_assert!(!lower.contains(&form.to_ascii_lowercase()), "{url} -> {out}");
            }
            prop_assert_eq!(r(&out), out.clone(), "redaction is idempotent");
        }

    }

    proptest! {
        // A privacy filter: more cases than the default.
        #![proptest_config(ProptestConfig::with_cases(2048))]

        /// The walk without a copy answers as the walk with one, on URLs with and without
        /// secrets, under an allow-list and without.
        #[test]
        fn url_is_clean_agrees_with_redact_url(
            e in email(), t in token(), place in 0u8..7, how in 0u8..3,
            name in "[a-z_]{1,12}", pick in 0u8..4, noise in "[a-zA-Z0-9/?#&=%@+.:_-]{0,40}",
            allow in proptest::bool::ANY, plain in plain_url(),
        ) {
            let url = match pick {
                0 => url_with(&e, place, how, &name),
                1 => url_with(&t, place, how, &name),
                2 => plain,
                _ => format!("https://shop.example/{noise}"),
            };
            let allowed = [name.clone()];
            let policy = UrlPolicy { extra: if allow { &allowed } else { &[] } };
            let clean = matches!(redact_url(&url, &policy), Cow::Borrowed(_));
            prop_assert_eq!(url_is_clean(&url, &policy), clean, "{}", url);
            prop_assert_eq!(url_is_clean(&noise, &policy), matches!(redact_url(&noise, &policy), Cow::Borrowed(_)));
        }
    }

    /// The shortcut's edges, each against the walk.
    #[test]
    fn url_is_clean_on_the_shortcut_edges() {
        let allowed = ["sku".to_string()];
        let p = UrlPolicy { extra: &allowed };
        for url in [
            "https://shop.example/p/42?utm_source=news&sku=A-1",
            "https://u:p@shop.example/",
            "https://shop.example/ada@example.com",
            "https://shop.example/?utm_source=ada@example.com",
            "https://shop.example/?utm_source=a1b2c3d4e5f6g7h8i9j0",
            "https://shop.example/a1b2c3d4e5f6g7h8i9j0",
            "https://shop.example/a1b2c3d4e5/f6g7h8i9j0",
            "https://shop.example/?utm_source=a1b2c3d4e5/f6g7h8i9j0",
            "https://shop.example/?UTM_SOURCE=x&SKU=y",
            "https://shop.example/?x=1",
            "https://shop.example/?x",
            "https://shop.example/p#token=abc",
            "https://shop.example/a%40b.co",
            "https://a-very-long-host-name-1234.example/",
            "mailto:ada@example.com",
            "MAILTO:",
            " tel:+4912345",
            "",
            "?",
            "?utm_source=",
        ] {
            let walk = matches!(redact_url(url, &p), Cow::Borrowed(_));
            assert_eq!(url_is_clean(url, &p), walk, "{url:?}");
        }
    }
}
