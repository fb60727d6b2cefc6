//! Email engagement on the ingest server, against the real ClickHouse: tracked links and the
//! HTML rewrite for the email platform, the pixel and the click redirect for readers, with
//! people, machines and scanners told apart, and refused tokens never redirected to their
//! claimed target.

mod common;

use std::time::Duration;

use common::{clickhouse, wait_for, Server};
use reqwest::header;
use serde_json::{json, Value};
use waymark_ingest::config::{EmailConfig, EmailKey, HumanDuration, ReadKey};
use waymark_protocol::email::{self as wire, Claims, SigningKey};

const SEND_KEY: &str = "sk_test_0123456789abcdef";
const SECRET: &str = "an-email-signing-secret-of-32-bytes!";
const BASE: &str = "https://shop.example.com/wm";
const HOME: &str = "https://shop.example.com/";
const CHROME: &str = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36";

const READ_KEY: &str = "rk_email_test";

async fn server() -> Server {
    Server::start_with(clickhouse(), |c| {
        c.query.cache_ttl = HumanDuration(Duration::ZERO);
        c.query.read_keys = vec![ReadKey {
            key: READ_KEY.into(),
            sites: vec!["shop".into()],
            subscribe: false,
        }];
        let shop = &mut c.sites[0];
        shop.send_keys = vec![SEND_KEY.into()];
        shop.email = Some(EmailConfig {
            base_url: BASE.into(),
            home_url: HOME.into(),
            keys: vec![EmailKey {
                id: "k1".into(),
                secret: SECRET.into(),
            }],
            max_age: HumanDuration(Duration::from_secs(30 * 86_400)),
        });
    })
    .await
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

/// A token of the test site, issued `age_secs` ago (what a platform signing itself makes).
fn token(target: Option<&str>, age_secs: u64) -> String {
    let now = (common::now_ms() / 1000) as u64;
    wire::sign(
        &Claims {
            site: "shop".into(),
            user_id: "u-ada".into(),
            email: "ada@example.com".into(),
            campaign: "november".into(),
            send_id: format!("send-{age_secs}-{}", target.unwrap_or("open")),
            issued_at: now - age_secs,
            target: target.map(str::to_string),
        },
        &SigningKey {
            id: "k1".into(),
            secret: SECRET.as_bytes().to_vec(),
        },
    )
    .unwrap()
}

/// The path part of a tracked URL (after the configured base), to call this server with.
fn path_of(url: &str) -> &str {
    url.strip_prefix(BASE).expect("a URL under base_url")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_platform_gets_signed_links_and_rewritten_html() {
    let s = server().await;
    let c = client();
    let body = json!({
        "recipient": {"user_id": "u-ada", "email": "ada@example.com"},
        "campaign": "november", "send_id": "s-1",
        "links": ["https://shop.example.com/sale", "https://shop.example.com/p/42"]
    });
    let r = c
        .post(s.url("/v1/email/links?site=shop"))
        .bearer_auth(SEND_KEY)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert!(v["pixel"]
        .as_str()
        .unwrap()
        .starts_with(&format!("{BASE}/e/o/")));
    assert_eq!(v["links"][1]["url"], "https://shop.example.com/p/42");
    // The tracked link redirects to exactly its URL.
    let tracked = v["links"][1]["tracked"].as_str().unwrap();
    let r = c.get(s.url(path_of(tracked))).send().await.unwrap();
    assert_eq!(r.status(), 302);
    assert_eq!(
        r.headers()[header::LOCATION],
        "https://shop.example.com/p/42"
    );

    // Credentials: the send key only, for its own site.
    for (auth, site, status, code) in [
        (None, "shop", 401, "missing_send_key"),
        (Some(common::WRITE_KEY), "shop", 401, "unknown_send_key"),
        (Some(SEND_KEY), "blog", 403, "wrong_site"),
    ] {
        let mut req = c
            .post(s.url(&format!("/v1/email/links?site={site}")))
            .json(&body);
        if let Some(a) = auth {
            req = req.bearer_auth(a);
        }
        let r = req.send().await.unwrap();
        assert_eq!(r.status(), status);
        let e: Value = r.json().await.unwrap();
        assert_eq!(e["error"], code, "{e}");
    }
    // A link that must never be a redirect is refused, naming it.
    let mut bad = body.clone();
    bad["links"] = json!(["https://shop.example.com/", "javascript:alert(1)"]);
    let r = c
        .post(s.url("/v1/email/links"))
        .bearer_auth(SEND_KEY)
        .json(&bad)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let e: Value = r.json().await.unwrap();
    assert_eq!(e["field"], "links[1]", "{e}");

    let html = r#"<html><body><a href="https://shop.example.com/sale">Sale</a>
<a href="mailto:help@example.com">Help</a>
<a data-waymark-skip href="https://shop.example.com/unsubscribe">Unsubscribe</a></body></html>"#;
    let r = c
        .post(s.url("/v1/email/rewrite?site=shop"))
        .bearer_auth(SEND_KEY)
        .json(&json!({"recipient": {"email": "ada@example.com"}, "campaign": "november", "html": html}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert_eq!(
        (v["tracked"].as_u64(), v["skipped"].as_u64()),
        (Some(1), Some(2))
    );
    let out = v["html"].as_str().unwrap();
    assert!(out.contains(&format!("{BASE}/e/c/")) && out.contains(&format!("{BASE}/e/o/")));
    assert!(out.contains("mailto:help@example.com") && out.contains("/unsubscribe"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn opens_and_clicks_are_recorded_and_classified() {
    let s = server().await;
    let c = client();
    let ch = clickhouse();

    // A person's mail client an hour after the send; Apple's privacy proxy at delivery.
    let person_open = token(None, 3600);
    let r = c
        .get(s.url(&wire::pixel_path(&person_open)))
        .header(header::USER_AGENT, CHROME)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()[header::CONTENT_TYPE], "image/gif");
    assert!(r.headers()[header::CACHE_CONTROL]
        .to_str()
        .unwrap()
        .contains("no-store"));
    assert_eq!(r.bytes().await.unwrap().len(), 43);
    let proxy_open = token(None, 1);
    c.get(s.url(&wire::pixel_path(&proxy_open)))
        .header(header::USER_AGENT, "Mozilla/5.0")
        .send()
        .await
        .unwrap();

    // A person's click; a scanner's HEAD on another message's link.
    let person_click = token(Some("https://shop.example.com/p/42"), 3600);
    let r = c
        .get(s.url(&wire::click_path(&person_click)))
        .header(header::USER_AGENT, CHROME)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 302);
    assert_eq!(
        r.headers()[header::LOCATION],
        "https://shop.example.com/p/42"
    );
    let scanned = token(Some("https://shop.example.com/sale"), 7200);
    let r = c
        .head(s.url(&wire::click_path(&scanned)))
        .header(header::USER_AGENT, CHROME)
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status(),
        302,
        "a scanner is sent on too; it is flagged, not refused"
    );

    let sql = format!(
        "SELECT event, user_id, visitParamExtractString(properties, 'class'), \
         visitParamExtractString(properties, 'campaign') FROM {}.events \
         WHERE event LIKE '$email%' ORDER BY event, visitParamExtractString(properties, 'class') FORMAT TSV",
        s.db
    );
    let want = "$email_click\tu-ada\thuman\tnovember\n$email_click\tu-ada\tscanner\tnovember\n\
                $email_open\tu-ada\thuman\tnovember\n$email_open\tu-ada\tmachine\tnovember";
    assert_eq!(
        wait_for(ch, &sql, want, Duration::from_secs(30)).await,
        want
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_tokens_go_home_and_are_counted() {
    let s = server().await;
    let c = client();
    let good = token(Some("https://shop.example.com/p/1"), 3600);
    // One character of the signed part changed.
    let mut tampered: Vec<char> = good.chars().collect();
    let i = tampered.len() / 2;
    tampered[i] = if tampered[i] == 'A' { 'B' } else { 'A' };
    let tampered: String = tampered.into_iter().collect();
    let expired = token(Some("https://evil.example.com/"), 31 * 86_400);
    for (t, reason) in [(&tampered, "bad_signature"), (&expired, "expired")] {
        let r = c
            .get(s.url(&wire::click_path(t)))
            .header(header::USER_AGENT, CHROME)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 302, "{reason}");
        assert_eq!(r.headers()[header::LOCATION], HOME, "{reason}");
    }
    // A token naming no site this server has: nowhere safe to send the reader.
    let r = c.get(s.url("/e/c/not-a-token")).send().await.unwrap();
    assert_eq!(r.status(), 404);
    // An open token on the click path is not a redirect either.
    let open = token(None, 3600);
    let r = c.get(s.url(&wire::click_path(&open))).send().await.unwrap();
    assert_eq!(r.headers()[header::LOCATION], HOME);

    let metrics = c
        .get(s.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for reason in ["bad_signature", "expired", "unknown_site", "wrong_kind"] {
        let line = format!("waymark_email_tokens_refused_total{{reason=\"{reason}\"}} 1");
        assert!(metrics.contains(&line), "{line} in:\n{metrics}");
    }
    // Nothing was recorded for them: a good click made after them is the only email event
    // once it has arrived.
    c.get(s.url(&wire::click_path(&good)))
        .header(header::USER_AGENT, CHROME)
        .send()
        .await
        .unwrap();
    let sql = format!(
        "SELECT count(), countIf(visitParamExtractString(properties, 'url') = 'https://shop.example.com/p/1') \
         FROM {}.events WHERE event LIKE '$email%' FORMAT TSV",
        s.db
    );
    let got = wait_for(clickhouse(), &sql, "1\t1", Duration::from_secs(30)).await;
    assert_eq!(got, "1\t1");
}

/// One tag-like event of an anonymous browser, `ago_ms` before now.
fn browsing(id: &str, anon: &str, event: &str, ago_ms: i64) -> Value {
    json!({
        "type": "track", "event": event, "messageId": id, "anonymousId": anon,
        "timestamp": common::iso(common::now_ms() - ago_ms),
        "properties": {"product_id": "p-9", "name": "Boot", "price": 80.0, "currency": "EUR", "quantity": 1},
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_persons_click_stitches_the_browser_to_the_reader() {
    let s = server().await;
    let c = client();
    let ch = clickhouse();
    let post = |events: Vec<Value>, cookie: Option<String>, gpc: bool| {
        let mut r = c
            .post(s.url("/v1/batch"))
            .header(header::CONTENT_TYPE, "application/json")
            .json(&json!({"writeKey": common::WRITE_KEY, "batch": events}));
        if let Some(cookie) = cookie {
            r = r.header(header::COOKIE, cookie);
        }
        if gpc {
            r = r.header("sec-gpc", "1");
        }
        r.send()
    };
    let click = |t: String| {
        c.get(s.url(&wire::click_path(&t)))
            .header(header::USER_AGENT, CHROME)
            .send()
    };

    // Anonymous browsing before the click, then the reader's click leaves its marker.
    let r = post(
        vec![browsing("st-1", "st-anon", "Product Viewed", 60_000)],
        None,
        false,
    )
    .await
    .unwrap();
    assert_eq!(r.status(), 200);
    let r = click(token(Some("https://shop.example.com/p/9"), 3600))
        .await
        .unwrap();
    assert_eq!(r.status(), 302);
    let set = r.headers()[header::SET_COOKIE]
        .to_str()
        .unwrap()
        .to_string();
    assert!(
        set.starts_with("wm_email=")
            && set.contains("HttpOnly")
            && set.contains("SameSite=Lax")
            && set.contains("Secure")
            && set.contains("Max-Age=300"),
        "{set}"
    );
    let cookie = set.split(';').next().unwrap().to_string();

    // The landing page's batch (the cart) brings it back: a link, and the cookie cleared.
    let r = post(
        vec![browsing("st-2", "st-anon", "Product Added", 1_000)],
        Some(format!("consent=yes; {cookie}")),
        false,
    )
    .await
    .unwrap();
    assert_eq!(r.status(), 200);
    let cleared = r.headers()[header::SET_COOKIE].to_str().unwrap();
    assert!(
        cleared.starts_with("wm_email=;") && cleared.contains("Max-Age=0"),
        "{cleared}"
    );

    // Another browser with GPC: its marker is cleared too, and makes no link.
    let r = click(token(Some("https://shop.example.com/p/10"), 3601))
        .await
        .unwrap();
    let gpc_cookie = r.headers()[header::SET_COOKIE]
        .to_str()
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_string();
    let r = post(
        vec![browsing("st-3", "gpc-browser", "Product Viewed", 1_000)],
        Some(gpc_cookie),
        true,
    )
    .await
    .unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.headers()[header::SET_COOKIE]
        .to_str()
        .unwrap()
        .contains("Max-Age=0"));
    // A marker that was tampered with makes no link either.
    let r = post(
        vec![browsing("st-4", "forger", "Product Viewed", 1_000)],
        Some(format!("{}x", cookie.trim_end_matches('A'))),
        false,
    )
    .await
    .unwrap();
    assert_eq!(r.status(), 200);

    let events = format!(
        "SELECT count() FROM {}.events WHERE message_id IN ('st-1', 'st-2', 'st-3', 'st-4') FORMAT TSV",
        s.db
    );
    wait_for(ch, &events, "4", Duration::from_secs(30)).await;
    // A batch's links go to `identities` beside its events, in a second insert: the rows are
    // all there once the writer has confirmed everything spooled.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let m = c
            .get(s.url("/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        if m.lines().any(|l| l == "waymark_spool_pending_bytes 0") {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the writer confirmed everything spooled within 30 s:\n{m}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let links = format!(
        "SELECT user_id, anonymous_id, source_type FROM {}.identities FORMAT TSV",
        s.db
    );
    assert_eq!(
        common::query(ch, &links).trim(),
        "u-ada\tst-anon\temail_click",
        "one link, from the reader's browser; none for GPC or a forged marker"
    );
    let stored = format!(
        "SELECT count() FROM {}.events WHERE type = '$link' FORMAT TSV",
        s.db
    );
    assert_eq!(
        common::query(ch, &stored).trim(),
        "0",
        "a link is not an event"
    );

    // The reader's profile: the click, the browsing before it and the cart after it.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let p: Value = loop {
        let p: Value = c
            .get(s.url("/v1/profiles/u-ada?site=shop"))
            .bearer_auth(READ_KEY)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let stitched = p["anonymous_ids"]
            .as_array()
            .is_some_and(|a| a.iter().any(|x| x == "st-anon"));
        if stitched && p["cart"]["products"][0]["product_id"] == "p-9" {
            break p;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the profile never showed the stitched browsing: {p:#}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(p["email"]["human_clicks"], 2, "{p:#}");
    assert_eq!(p["recently_viewed"][0]["product_id"], "p-9", "{p:#}");
    assert_eq!(p["recently_viewed"][0]["views"], 1, "{p:#}");
}
