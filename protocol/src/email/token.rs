//! The signed token of a tracked link or an open pixel.
//!
//! # Format (version 1)
//!
//! ```text
//! token   = base64url-without-padding( payload || mac )
//! payload = 0x01 version
//!           kind      1 byte: 'o' open, 'c' click, 's' stitch marker (see [`sign_marker`])
//!           key id    string
//!           issued    LEB128 varint, Unix seconds
//!           site, user id, email, campaign, send id    strings
//!           target    string (clicks only: the URL the click redirects to)
//! string  = LEB128 varint byte length || UTF-8 bytes
//! mac     = the first 16 bytes of HMAC-SHA256(secret of key id, "waymark-email-v1" || payload)
//! ```
//!
//! A binary layout rather than JSON or a JWT: the test link below (a 52-byte target, an email
//! address, a user id, campaign and send id) is a 176-character token, where the same claims as
//! an HS256 JWT take about 320. The MAC is truncated
//! to 128 bits (NIST SP 800-107 allows truncation to at least 64), and compared in constant
//! time. The key id lets a site rotate its signing secret: tokens signed with the old key keep
//! verifying while the old key is still listed.
//!
//! The token is signed, not encrypted: whoever holds the email can read the recipient's user id
//! and email address out of it, as they can read the address the email was sent to.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use sha2::Sha256;

const VERSION: u8 = 1;
const DOMAIN: &[u8] = b"waymark-email-v1";
/// Bytes of the truncated HMAC.
pub const MAC_LEN: usize = 16;
/// The longest string a token carries (ids, campaign, email).
pub const MAX_FIELD_LEN: usize = 512;
/// The longest click target.
pub const MAX_TARGET_LEN: usize = 4096;
/// The longest token accepted (base64 of the longest payload), checked before decoding.
pub const MAX_TOKEN_LEN: usize = 8192;

/// An open pixel or a click redirect.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Open,
    Click,
}

/// The kind byte of a stitch marker: the short-lived cookie a person's click leaves (see
/// `super::stitch`). Inside the MAC like every kind byte, so a pixel or link token is never
/// taken for a marker, nor the other way round.
const MARKER: u8 = b's';

impl Kind {
    fn byte(self) -> u8 {
        match self {
            Kind::Open => b'o',
            Kind::Click => b'c',
        }
    }
}

/// What a token says.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Claims {
    pub site: String,
    /// The recipient's user id on the site (may be empty when only the email is known).
    pub user_id: String,
    /// The recipient's email address (may be empty when only the user id is known).
    pub email: String,
    pub campaign: String,
    /// The email platform's id for this one message to this one recipient.
    pub send_id: String,
    /// Unix seconds.
    pub issued_at: u64,
    /// The URL a click redirects to; `None` for an open.
    pub target: Option<String>,
}

impl Claims {
    /// Open or click, by whether there is a target.
    pub fn kind(&self) -> Kind {
        if self.target.is_some() {
            Kind::Click
        } else {
            Kind::Open
        }
    }
}

/// A signing secret and the id it is listed under (`[[sites]] email_keys`).
#[derive(Clone, PartialEq, Eq)]
pub struct SigningKey {
    pub id: String,
    pub secret: Vec<u8>,
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SigningKey")
            .field("id", &self.id)
            .field("secret", &"<redacted>")
            .finish()
    }
}

/// Why a token was refused (never redirect to its target then).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenError {
    /// Not a token of this format: the reason names the part.
    Malformed(&'static str),
    /// Signed with a key id the site does not list (any more).
    UnknownKey(String),
    /// The MAC does not match: tampered with, or signed with another secret.
    BadSignature,
    /// Older than the site's maximum age.
    Expired { issued_at: u64, max_age_secs: u64 },
    /// Issued more than a minute after now (a signer's clock, or a forged time with a valid
    /// MAC, which means the secret leaked).
    FromTheFuture { issued_at: u64 },
    /// Refused at signing: the field and the reason.
    Invalid {
        field: &'static str,
        reason: &'static str,
    },
}

impl TokenError {
    /// The refusal as a metric label (`waymark_email_tokens_refused_total{reason}`), the same
    /// on the edge and on the ingest server.
    pub fn label(&self) -> &'static str {
        match self {
            TokenError::Malformed(_) => "malformed",
            TokenError::UnknownKey(_) => "unknown_key",
            TokenError::BadSignature => "bad_signature",
            TokenError::Expired { .. } => "expired",
            TokenError::FromTheFuture { .. } => "from_the_future",
            TokenError::Invalid { .. } => "invalid",
        }
    }
}

impl std::fmt::Display for TokenError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TokenError::Malformed(what) => write!(f, "token: malformed ({what})"),
            TokenError::UnknownKey(id) => write!(f, "token: unknown key id {id:?}"),
            TokenError::BadSignature => write!(f, "token: signature does not match"),
            TokenError::Expired {
                issued_at,
                max_age_secs,
            } => write!(
                f,
                "token: expired (issued at {issued_at}, older than {max_age_secs} s)"
            ),
            TokenError::FromTheFuture { issued_at } => {
                write!(f, "token: issued in the future ({issued_at})")
            }
            TokenError::Invalid { field, reason } => write!(f, "{field}: {reason}"),
        }
    }
}

impl std::error::Error for TokenError {}

/// Whether `url` may be a click target: an absolute `http` or `https` URL without spaces or
/// control characters (never `javascript:`, `data:` or a relative path).
pub fn valid_target(url: &str) -> bool {
    let lower = url.get(..8).unwrap_or(url).to_ascii_lowercase();
    let rest = if lower.starts_with("https://") {
        &url[8..]
    } else if lower.starts_with("http://") {
        &url[7..]
    } else {
        return false;
    };
    !rest.is_empty()
        && !rest.starts_with('/')
        && url.len() <= MAX_TARGET_LEN
        && !url.chars().any(|c| c.is_control() || c.is_whitespace())
}

/// Signs `claims` with `key`: the token for a pixel (no target) or a link.
pub fn sign(claims: &Claims, key: &SigningKey) -> Result<String, TokenError> {
    encode(claims, key, claims.kind().byte())
}

/// Signs a stitch marker: the recipient of a person's click (`claims` without a target, issued
/// at the click), for the click's first-party cookie.
pub fn sign_marker(claims: &Claims, key: &SigningKey) -> Result<String, TokenError> {
    if claims.target.is_some() {
        return Err(TokenError::Invalid {
            field: "target",
            reason: "a stitch marker has no target",
        });
    }
    encode(claims, key, MARKER)
}

/// Checks a stitch marker against the site's `keys` and `max_age_secs` (minutes, not the
/// weeks a link lives).
pub fn verify_marker(
    token: &str,
    keys: &[SigningKey],
    now_secs: u64,
    max_age_secs: u64,
) -> Result<Claims, TokenError> {
    decode(token, keys, now_secs, max_age_secs, true)
}

fn encode(claims: &Claims, key: &SigningKey, kind: u8) -> Result<String, TokenError> {
    let invalid = |field, reason| TokenError::Invalid { field, reason };
    for (field, v) in [
        ("site", &claims.site),
        ("recipient.user_id", &claims.user_id),
        ("recipient.email", &claims.email),
        ("campaign", &claims.campaign),
        ("send_id", &claims.send_id),
        ("key id", &key.id),
    ] {
        if v.len() > MAX_FIELD_LEN {
            return Err(invalid(field, "longer than 512 bytes"));
        }
    }
    if claims.site.is_empty() {
        return Err(invalid("site", "missing"));
    }
    if claims.user_id.is_empty() && claims.email.is_empty() {
        return Err(invalid("recipient", "needs a user_id or an email"));
    }
    if key.secret.len() < 16 {
        return Err(invalid("key secret", "shorter than 16 bytes"));
    }
    if let Some(t) = &claims.target {
        if !valid_target(t) {
            return Err(invalid(
                "links",
                "a link must be an absolute http(s) URL of at most 4096 bytes",
            ));
        }
    }
    let mut payload = Vec::with_capacity(128);
    payload.push(VERSION);
    payload.push(kind);
    put_str(&mut payload, &key.id);
    put_varint(&mut payload, claims.issued_at);
    for s in [
        &claims.site,
        &claims.user_id,
        &claims.email,
        &claims.campaign,
        &claims.send_id,
    ] {
        put_str(&mut payload, s);
    }
    if let Some(t) = &claims.target {
        put_str(&mut payload, t);
    }
    let tag = mac(&key.secret, &payload).finalize().into_bytes();
    payload.extend_from_slice(&tag[..MAC_LEN]);
    Ok(URL_SAFE_NO_PAD.encode(payload))
}

/// Checks `token` against the site's `keys` (by key id) and age limit; returns its claims.
/// A stitch marker is not a token here ("unknown kind").
pub fn verify(
    token: &str,
    keys: &[SigningKey],
    now_secs: u64,
    max_age_secs: u64,
) -> Result<Claims, TokenError> {
    decode(token, keys, now_secs, max_age_secs, false)
}

/// Verifies a pixel or link token, or (`marker`) a stitch marker.
fn decode(
    token: &str,
    keys: &[SigningKey],
    now_secs: u64,
    max_age_secs: u64,
    marker: bool,
) -> Result<Claims, TokenError> {
    if token.len() > MAX_TOKEN_LEN {
        return Err(TokenError::Malformed("too long"));
    }
    let bytes = URL_SAFE_NO_PAD
        .decode(token)
        .map_err(|_| TokenError::Malformed("not base64url"))?;
    if bytes.len() < 2 + MAC_LEN {
        return Err(TokenError::Malformed("too short"));
    }
    let (payload, tag) = bytes.split_at(bytes.len() - MAC_LEN);
    let mut r = Reader(payload);
    if r.byte()? != VERSION {
        return Err(TokenError::Malformed("unknown version"));
    }
    let kind = r.byte()?;
    let known = if marker {
        kind == MARKER
    } else {
        matches!(kind, b'o' | b'c')
    };
    if !known {
        return Err(TokenError::Malformed("unknown kind"));
    }
    let key_id = r.string()?;
    let key = keys
        .iter()
        .find(|k| k.id == key_id)
        .ok_or_else(|| TokenError::UnknownKey(key_id.to_string()))?;
    // The MAC before anything else is believed.
    mac(&key.secret, payload)
        .verify_truncated_left(tag)
        .map_err(|_| TokenError::BadSignature)?;
    let issued_at = r.varint()?;
    let mut claims = Claims {
        issued_at,
        site: r.string()?.to_string(),
        user_id: r.string()?.to_string(),
        email: r.string()?.to_string(),
        campaign: r.string()?.to_string(),
        send_id: r.string()?.to_string(),
        target: None,
    };
    if kind == b'c' {
        let t = r.string()?;
        if !valid_target(t) {
            return Err(TokenError::Malformed("target"));
        }
        claims.target = Some(t.to_string());
    }
    if !r.0.is_empty() {
        return Err(TokenError::Malformed("trailing bytes"));
    }
    if issued_at > now_secs.saturating_add(60) {
        return Err(TokenError::FromTheFuture { issued_at });
    }
    if now_secs.saturating_sub(issued_at) > max_age_secs {
        return Err(TokenError::Expired {
            issued_at,
            max_age_secs,
        });
    }
    Ok(claims)
}

/// The site a token claims, read without checking its signature. Only for choosing which
/// site's configured home page a refused token's click goes to: never trust it with more.
pub fn claimed_site(token: &str) -> Option<String> {
    if token.len() > MAX_TOKEN_LEN {
        return None;
    }
    let bytes = URL_SAFE_NO_PAD.decode(token).ok()?;
    let payload = bytes.get(..bytes.len().checked_sub(MAC_LEN)?)?;
    let mut r = Reader(payload);
    (r.byte().ok()? == VERSION).then_some(())?;
    r.byte().ok()?;
    r.string().ok()?;
    r.varint().ok()?;
    r.string().ok().map(str::to_string)
}

fn mac(secret: &[u8], payload: &[u8]) -> Hmac<Sha256> {
    let mut m = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes any key length");
    m.update(DOMAIN);
    m.update(payload);
    m
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    loop {
        let b = (v & 0x7f) as u8;
        v >>= 7;
        if v == 0 {
            out.push(b);
            return;
        }
        out.push(b | 0x80);
    }
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    put_varint(out, s.len() as u64);
    out.extend_from_slice(s.as_bytes());
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn byte(&mut self) -> Result<u8, TokenError> {
        let (&b, rest) = self
            .0
            .split_first()
            .ok_or(TokenError::Malformed("truncated"))?;
        self.0 = rest;
        Ok(b)
    }

    fn varint(&mut self) -> Result<u64, TokenError> {
        let mut v: u64 = 0;
        for shift in (0..64).step_by(7) {
            let b = self.byte()?;
            v |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(TokenError::Malformed("varint too long"))
    }

    fn string(&mut self) -> Result<&'a str, TokenError> {
        let len = self.varint()?;
        if len > MAX_TARGET_LEN as u64 || len > self.0.len() as u64 {
            return Err(TokenError::Malformed("string length"));
        }
        let (s, rest) = self.0.split_at(len as usize);
        self.0 = rest;
        std::str::from_utf8(s).map_err(|_| TokenError::Malformed("not UTF-8"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const NOW: u64 = 1_800_000_000;
    const DAY: u64 = 86_400;

    fn key(id: &str) -> SigningKey {
        SigningKey {
            id: id.into(),
            secret: format!("secret-of-{id}-0123456789").into_bytes(),
        }
    }

    fn click() -> Claims {
        Claims {
            site: "shop".into(),
            user_id: "u-1842".into(),
            email: "ada@example.com".into(),
            campaign: "november-sale".into(),
            send_id: "snd_01HZY3".into(),
            issued_at: NOW,
            target: Some("https://shop.example.com/products/42?utm_source=email".into()),
        }
    }

    #[test]
    fn a_signed_click_verifies_and_is_compact() {
        let t = sign(&click(), &key("k1")).unwrap();
        assert!(t.len() < 200, "{} chars: {t}", t.len());
        assert!(t
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'));
        assert_eq!(verify(&t, &[key("k1")], NOW, 30 * DAY), Ok(click()));
    }

    #[test]
    fn an_open_has_no_target() {
        let open = Claims {
            target: None,
            ..click()
        };
        let t = sign(&open, &key("k1")).unwrap();
        let got = verify(&t, &[key("k1")], NOW, DAY).unwrap();
        assert_eq!(got.kind(), Kind::Open);
        assert_eq!(got, open);
    }

    #[test]
    fn rotation_by_key_id() {
        let old = sign(&click(), &key("k1")).unwrap();
        // k2 added, k1 still listed: both verify; k1 removed: refused by id.
        assert!(verify(&old, &[key("k2"), key("k1")], NOW, DAY).is_ok());
        assert_eq!(
            verify(&old, &[key("k2")], NOW, DAY),
            Err(TokenError::UnknownKey("k1".into()))
        );
        // Same id, another secret: the signature fails.
        let other = SigningKey {
            id: "k1".into(),
            secret: b"a-different-secret-entirely".to_vec(),
        };
        assert_eq!(
            verify(&old, &[other], NOW, DAY),
            Err(TokenError::BadSignature)
        );
    }

    #[test]
    fn age_limits() {
        let t = sign(&click(), &key("k1")).unwrap();
        assert!(verify(&t, &[key("k1")], NOW + 30 * DAY, 30 * DAY).is_ok());
        assert_eq!(
            verify(&t, &[key("k1")], NOW + 30 * DAY + 1, 30 * DAY),
            Err(TokenError::Expired {
                issued_at: NOW,
                max_age_secs: 30 * DAY
            })
        );
        assert_eq!(
            verify(&t, &[key("k1")], NOW - 61, 30 * DAY),
            Err(TokenError::FromTheFuture { issued_at: NOW })
        );
    }

    #[test]
    fn a_changed_target_is_refused() {
        let t = sign(&click(), &key("k1")).unwrap();
        let mut bytes = URL_SAFE_NO_PAD.decode(&t).unwrap();
        let at = bytes
            .windows(4)
            .position(|w| w == b"shop")
            .expect("site in payload");
        bytes[at] = b'x';
        let forged = URL_SAFE_NO_PAD.encode(&bytes);
        assert_eq!(
            verify(&forged, &[key("k1")], NOW, DAY),
            Err(TokenError::BadSignature)
        );
    }

    #[test]
    fn signing_refuses_what_must_not_be_a_redirect() {
        for bad in [
            "javascript:alert(1)",
            "data:text/html,x",
            "/relative",
            "//evil.example",
            "https://",
            "https:///path",
            "https://a b",
            "ftp://files.example.com",
        ] {
            let c = Claims {
                target: Some(bad.into()),
                ..click()
            };
            assert!(
                matches!(
                    sign(&c, &key("k1")),
                    Err(TokenError::Invalid { field: "links", .. })
                ),
                "{bad}"
            );
        }
        assert!(valid_target("HTTPS://Shop.Example.com/x"));
        let nobody = Claims {
            user_id: String::new(),
            email: String::new(),
            ..click()
        };
        assert_eq!(
            sign(&nobody, &key("k1")).unwrap_err().to_string(),
            "recipient: needs a user_id or an email"
        );
        let short = SigningKey {
            id: "k".into(),
            secret: b"short".to_vec(),
        };
        assert!(sign(&click(), &short).is_err());
    }

    #[test]
    fn the_claimed_site_is_readable_without_a_key() {
        let t = sign(&click(), &key("k1")).unwrap();
        assert_eq!(claimed_site(&t).as_deref(), Some("shop"));
        assert_eq!(claimed_site("!!"), None);
        assert_eq!(claimed_site(""), None);
    }

    #[test]
    fn garbage_is_malformed_not_a_panic() {
        for t in ["", "!!!", "AQ", &"A".repeat(MAX_TOKEN_LEN + 1)] {
            assert!(
                matches!(
                    verify(t, &[key("k1")], NOW, DAY),
                    Err(TokenError::Malformed(_))
                ),
                "{t:.20}"
            );
        }
    }

    #[test]
    fn a_marker_is_not_a_token_and_a_token_is_not_a_marker() {
        let who = Claims {
            target: None,
            ..click()
        };
        let m = sign_marker(&who, &key("k1")).unwrap();
        assert_eq!(
            verify_marker(&m, &[key("k1")], NOW + 60, 600),
            Ok(who.clone())
        );
        assert_eq!(
            verify_marker(&m, &[key("k1")], NOW + 601, 600),
            Err(TokenError::Expired {
                issued_at: NOW,
                max_age_secs: 600
            })
        );
        assert_eq!(
            verify(&m, &[key("k1")], NOW, DAY),
            Err(TokenError::Malformed("unknown kind"))
        );
        let open = sign(&who, &key("k1")).unwrap();
        assert_eq!(
            verify_marker(&open, &[key("k1")], NOW, 600),
            Err(TokenError::Malformed("unknown kind"))
        );
        assert!(sign_marker(&click(), &key("k1")).is_err(), "no target");
    }

    /// The format, pinned: a token signed today verifies in every later release.
    #[test]
    fn the_format_is_stable() {
        let t = sign(&click(), &key("k1")).unwrap();
        insta::assert_snapshot!(t);
    }

    proptest! {
        #[test]
        fn any_claims_round_trip(
            site in "[a-z]{1,20}", user in ".{0,40}", email in ".{0,40}", campaign in ".{0,40}",
            send in ".{0,40}", age in 0u64..(400 * DAY), path in "[a-z0-9/]{0,60}", open: bool,
        ) {
            prop_assume!(!user.is_empty() || !email.is_empty());
            let c = Claims {
                site, user_id: user, email, campaign, send_id: send, issued_at: NOW - age,
                target: (!open).then(|| format!("https://shop.example.com/{path}")),
            };
            let t = sign(&c, &key("k1")).unwrap();
            prop_assert_eq!(verify(&t, &[key("k1")], NOW, 400 * DAY), Ok(c));
        }

        #[test]
        fn any_bytes_are_refused_without_panicking(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let t = URL_SAFE_NO_PAD.encode(&bytes);
            prop_assert!(verify(&t, &[key("k1")], NOW, DAY).is_err());
        }
    }
}
