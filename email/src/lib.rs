//! Tracked email links and open pixels, for the email platform's side of a send.
//!
//! - [`track`]: one recipient's message: a pixel URL and a tracked URL for each of its links,
//!   each carrying a signed token ([`waymark_protocol::email::token`]), so the site's own domain
//!   answers opens and clicks without a database look-up and cannot be made to redirect anywhere
//!   the signer did not sign.
//! - [`rewrite_html`]: the same for a whole HTML message, with a streaming HTML rewriter
//!   (`lol_html`, which also runs in Cloudflare Workers): every `<a href>` to an http(s) URL is
//!   tracked, the pixel goes before `</body>` (or at the end), and `mailto:`, `tel:`, in-page
//!   anchors and links marked `data-waymark-skip` (unsubscribe links) are left alone.
//!
//! No I/O here: the ingest server's `POST /v1/email/links` and `POST /v1/email/rewrite` call
//! these, and a platform can call them itself (or the npm package's equivalent) to sign without
//! a round trip.

use serde::{Deserialize, Serialize};
use waymark_protocol::email::{self as wire, Claims, SigningKey, TokenError};

/// Who a message goes to: a user id, an email address, or both.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Recipient {
    #[serde(default)]
    pub user_id: String,
    #[serde(default)]
    pub email: String,
}

/// One recipient's message.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Message {
    pub recipient: Recipient,
    #[serde(default)]
    pub campaign: String,
    #[serde(default)]
    pub send_id: String,
}

/// A link and its tracked form.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TrackedLink {
    pub url: String,
    pub tracked: String,
}

/// The answer of `POST /v1/email/links`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tracked {
    pub pixel: String,
    pub links: Vec<TrackedLink>,
}

/// Where the tracking endpoints live and how tokens are signed, for one site.
#[derive(Debug, Clone)]
pub struct Signer<'a> {
    pub site: &'a str,
    /// The site's first-party base, e.g. `https://shop.example.com/wm` (the edge prefix), or
    /// the ingest server's public URL; no trailing slash needed.
    pub base_url: &'a str,
    /// The key new tokens are signed with (the first of the site's `email_keys`).
    pub key: &'a SigningKey,
    /// Unix seconds: the tokens' issue time.
    pub now_secs: u64,
}

impl Signer<'_> {
    fn claims(&self, m: &Message, target: Option<&str>) -> Claims {
        Claims {
            site: self.site.to_string(),
            user_id: m.recipient.user_id.clone(),
            email: m.recipient.email.clone(),
            campaign: m.campaign.clone(),
            send_id: m.send_id.clone(),
            issued_at: self.now_secs,
            target: target.map(str::to_string),
        }
    }

    fn base(&self) -> &str {
        self.base_url.trim_end_matches('/')
    }

    /// The open pixel's URL for `m`.
    pub fn pixel(&self, m: &Message) -> Result<String, TokenError> {
        let t = wire::sign(&self.claims(m, None), self.key)?;
        Ok(format!("{}{}", self.base(), wire::pixel_path(&t)))
    }

    /// The tracked URL of `target` for `m`.
    pub fn link(&self, m: &Message, target: &str) -> Result<String, TokenError> {
        let t = wire::sign(&self.claims(m, Some(target)), self.key)?;
        Ok(format!("{}{}", self.base(), wire::click_path(&t)))
    }
}

/// The pixel and tracked links of one message. An error names the field (`links[2]: ...`).
pub fn track(signer: &Signer<'_>, m: &Message, links: &[String]) -> Result<Tracked, TokenError> {
    let pixel = signer.pixel(m)?;
    let links = links
        .iter()
        .enumerate()
        .map(|(i, url)| {
            let tracked = signer.link(m, url).map_err(|e| match e {
                TokenError::Invalid { reason, .. } => TokenError::Invalid {
                    field: leak_index(i),
                    reason,
                },
                other => other,
            })?;
            Ok(TrackedLink {
                url: url.clone(),
                tracked,
            })
        })
        .collect::<Result<Vec<_>, TokenError>>()?;
    Ok(Tracked { pixel, links })
}

/// `links[i]` as a field name (the first 64 by position; later ones as `links[..]`).
fn leak_index(i: usize) -> &'static str {
    LINK_NAMES.get(i).copied().unwrap_or("links[..]")
}

macro_rules! link_names {
    ($($n:literal)*) => { [$(concat!("links[", $n, "]")),*] };
}
const LINK_NAMES: [&str; 64] = link_names!(
    0 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20 21 22 23 24 25 26 27 28 29 30 31
    32 33 34 35 36 37 38 39 40 41 42 43 44 45 46 47 48 49 50 51 52 53 54 55 56 57 58 59 60 61 62 63
);

/// Why a message could not be rewritten.
#[derive(Debug)]
pub enum RewriteError {
    /// A link or the recipient could not be signed.
    Token(TokenError),
    /// The HTML rewriter failed (it does not fail on malformed HTML, only on limits).
    Html(String),
}

impl std::fmt::Display for RewriteError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RewriteError::Token(e) => e.fmt(f),
            RewriteError::Html(e) => write!(f, "html: {e}"),
        }
    }
}

impl std::error::Error for RewriteError {}

/// What a rewrite did.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Rewritten {
    pub html: String,
    /// Links replaced by their tracked form.
    pub tracked: usize,
    /// Links left alone (`mailto:`, `tel:`, anchors, relative, `data-waymark-skip`).
    pub skipped: usize,
}

/// Tracks every http(s) `<a href>` of `html` and adds the pixel (see the crate doc).
pub fn rewrite_html(
    signer: &Signer<'_>,
    m: &Message,
    html: &str,
) -> Result<Rewritten, RewriteError> {
    use lol_html::html_content::ContentType;
    use lol_html::{element, end, end_tag, rewrite_str, RewriteStrSettings};
    use std::cell::{Cell, RefCell};
    use std::rc::Rc;

    let pixel = signer.pixel(m).map_err(RewriteError::Token)?;
    let img = format!(
        r#"<img src="{}" width="1" height="1" alt="" style="display:none;border:0">"#,
        escape_attr(&pixel)
    );
    let tracked = Cell::new(0usize);
    let skipped = Cell::new(0usize);
    let failed: RefCell<Option<TokenError>> = RefCell::new(None);
    let placed = Rc::new(Cell::new(false));

    let out = rewrite_str(
        html,
        RewriteStrSettings {
            element_content_handlers: vec![
                element!("a[href]", |el| {
                    // Attribute values come with their entities (`&amp;`); the browser would
                    // follow the decoded URL, so that is what gets signed.
                    let href = el.get_attribute("href").unwrap_or_default();
                    let decoded = html_escape::decode_html_entities(href.trim());
                    let target: &str = &decoded;
                    if el.has_attribute("data-waymark-skip") || !wire::token::valid_target(target) {
                        skipped.set(skipped.get() + 1);
                        return Ok(());
                    }
                    match signer.link(m, target) {
                        Ok(url) => {
                            el.set_attribute("href", &url.replace('&', "&amp;"))?;
                            tracked.set(tracked.get() + 1);
                        }
                        Err(e) => {
                            failed.borrow_mut().get_or_insert(e);
                        }
                    }
                    Ok(())
                }),
                element!("body", |el| {
                    let (img, placed) = (img.clone(), placed.clone());
                    el.on_end_tag(end_tag!(move |end| {
                        end.before(&img, ContentType::Html);
                        placed.set(true);
                        Ok(())
                    }))
                }),
            ],
            document_content_handlers: vec![end!(|end| {
                if !placed.get() {
                    end.append(&img, ContentType::Html);
                }
                Ok(())
            })],
            ..RewriteStrSettings::new()
        },
    )
    .map_err(|e| RewriteError::Html(e.to_string()))?;
    if let Some(e) = failed.into_inner() {
        return Err(RewriteError::Token(e));
    }
    Ok(Rewritten {
        html: out,
        tracked: tracked.get(),
        skipped: skipped.get(),
    })
}

fn escape_attr(s: &str) -> String {
    s.replace('&', "&amp;").replace('"', "&quot;")
}

#[cfg(test)]
mod tests {
    use super::*;
    use waymark_protocol::email::{parse_path, verify, Kind};

    const NOW: u64 = 1_800_000_000;

    fn key() -> SigningKey {
        SigningKey {
            id: "k1".into(),
            secret: b"a-signing-secret-for-tests".to_vec(),
        }
    }

    fn signer<'a>(key: &'a SigningKey, base_url: &'a str) -> Signer<'a> {
        Signer {
            site: "shop",
            base_url,
            key,
            now_secs: NOW,
        }
    }

    fn message() -> Message {
        Message {
            recipient: Recipient {
                user_id: "u-1".into(),
                email: "ada@example.com".into(),
            },
            campaign: "nov".into(),
            send_id: "s-1".into(),
        }
    }

    fn claims_of(url: &str) -> Claims {
        let path = url.strip_prefix("https://shop.example.com/wm").unwrap();
        let (_, token) = parse_path(path).unwrap();
        verify(token, &[key()], NOW, 86_400).unwrap()
    }

    #[test]
    fn links_and_pixel_carry_the_message() {
        let k = key();
        let s = signer(&k, "https://shop.example.com/wm/");
        let links = vec!["https://shop.example.com/p/1".to_string()];
        let t = track(&s, &message(), &links).unwrap();
        assert!(t.pixel.starts_with("https://shop.example.com/wm/e/o/"));
        assert!(t.pixel.ends_with(".gif"));
        let p = claims_of(&t.pixel);
        assert_eq!((p.kind(), p.campaign.as_str()), (Kind::Open, "nov"));
        let c = claims_of(&t.links[0].tracked);
        assert_eq!(c.target.as_deref(), Some("https://shop.example.com/p/1"));
        assert_eq!(c.user_id, "u-1");
        let bad = vec![links[0].clone(), "javascript:alert(1)".to_string()];
        let e = track(&s, &message(), &bad).unwrap_err();
        assert!(e.to_string().starts_with("links[1]: "), "{e}");
    }

    #[test]
    fn html_links_are_tracked_and_the_rest_left_alone() {
        let k = key();
        let s = signer(&k, "https://shop.example.com/wm");
        let html = r##"<html><body><p>Hi <a href="https://shop.example.com/sale?x=1&amp;y=2">sale</a>
<a href="mailto:help@example.com">mail</a> <a href="tel:+49301234">call</a>
<a href="#top">top</a> <a href="/relative">rel</a>
<a data-waymark-skip href="https://shop.example.com/unsubscribe?u=1">unsubscribe</a>
<A HREF="HTTP://Shop.Example.com/Caps">caps</A></p></body></html>"##;
        let r = rewrite_html(&s, &message(), html).unwrap();
        assert_eq!((r.tracked, r.skipped), (2, 5), "{}", r.html);
        assert!(r.html.contains(r#"href="mailto:help@example.com""#));
        assert!(r.html.contains(r#"href="tel:+49301234""#));
        assert!(r.html.contains(r##"href="#top""##));
        assert!(r.html.contains("unsubscribe?u=1"));
        assert!(!r.html.contains("sale?x=1"));
        // The entity in the original href was decoded once: the signed target is the URL.
        let html = r.html.replace("HREF=", "href=");
        let tracked: Vec<&str> = html
            .split(r#"href=""#)
            .skip(1)
            .map(|s| &s[..s.find('"').unwrap()])
            .filter(|h| h.contains("/e/c/"))
            .collect();
        let targets: Vec<String> = tracked
            .iter()
            .map(|u| claims_of(u).target.unwrap())
            .collect();
        assert_eq!(
            targets,
            [
                "https://shop.example.com/sale?x=1&y=2",
                "HTTP://Shop.Example.com/Caps"
            ]
        );
        // One pixel, just before </body>.
        assert_eq!(r.html.matches("/e/o/").count(), 1);
        let at = r.html.find("/e/o/").unwrap();
        assert!(at < r.html.find("</body>").unwrap());
    }

    #[test]
    fn a_fragment_without_body_gets_the_pixel_at_the_end() {
        let k = key();
        let s = signer(&k, "https://shop.example.com/wm");
        let r = rewrite_html(&s, &message(), "<p>no body</p>").unwrap();
        assert!(r.html.starts_with("<p>no body</p><img src="), "{}", r.html);
    }
}
