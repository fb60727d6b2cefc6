//! Email engagement end to end: real Chromium follows tracked links on the demo shop, whose
//! `/wm/` prefix is the real edge worker in workerd; the ingest server stores in a real
//! ClickHouse and the query API answers. The reader who clicked has the click, the browsing
//! before and after it (stitched by the click's marker) and the cart in their profile; a reader
//! whose browser sends GPC is not stitched; a tampered and an expired link land on the home
//! page and are counted; a scanner's click and a mail client's open are told apart.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::Value;
use waymark_e2e::{wait_for, Stack, EMAIL_KEY_ID, EMAIL_SECRET, SITE};
use waymark_protocol::email::{self as wire, Claims, SigningKey};

const THUNDERBIRD: &str =
    "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Thunderbird/128.5.0";

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// A token for `reader`, sent `age_secs` ago, to `target` (a click) or a pixel.
fn token(reader: &str, target: Option<String>, age_secs: u64) -> String {
    wire::sign(
        &Claims {
            site: SITE.into(),
            user_id: reader.into(),
            email: format!("{reader}@example.com"),
            campaign: "november".into(),
            send_id: format!("snd-{reader}"),
            issued_at: now_secs() - age_secs,
            target,
        },
        &SigningKey {
            id: EMAIL_KEY_ID.into(),
            secret: EMAIL_SECRET.as_bytes().to_vec(),
        },
    )
    .expect("a valid token")
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .timeout_global(Some(Duration::from_secs(30)))
        .max_redirects(0)
        .http_status_as_error(false)
        .build()
        .into()
}

fn product_ids(list: &Value) -> Vec<&str> {
    list.as_array()
        .map(|a| a.iter().filter_map(|p| p["product_id"].as_str()).collect())
        .unwrap_or_default()
}

#[test]
fn a_tracked_click_stitches_the_reader_to_the_visitor() {
    let stack = Stack::start("1h");
    let shop = &stack.shop_url;
    let click = |t: &str| format!("{shop}/wm{}", wire::click_path(t));
    let target = |p: &str| Some(format!("{shop}/products/{p}?utm_source=email"));

    let link = click(&token("reader-1", target("p-100"), 3600));
    let gpc_link = click(&token("reader-2", target("p-101"), 3600));
    let good = token("reader-3", target("p-102"), 3600);
    // One character of the MAC changed (not the last, whose spare bits would make it malformed).
    let mut chars: Vec<char> = good.chars().collect();
    let i = chars.len() - 5;
    chars[i] = if chars[i] == 'A' { 'B' } else { 'A' };
    let tampered = click(&chars.into_iter().collect::<String>());
    let expired = click(&token("reader-3", target("p-102"), 31 * 86_400));

    let out = stack.browser_with(
        "email",
        &[
            "--link",
            &link,
            "--gpc-link",
            &gpc_link,
            "--tampered",
            &tampered,
            "--expired",
            &expired,
        ],
    );
    let landed = &out["landed"];
    assert_eq!(
        landed["link"],
        format!("{shop}/products/p-100?utm_source=email")
    );
    assert_eq!(
        landed["gpc"],
        format!("{shop}/products/p-101?utm_source=email")
    );
    assert_eq!(
        landed["tampered"],
        format!("{shop}/"),
        "never the claimed target"
    );
    assert_eq!(landed["expired"], format!("{shop}/"));

    // A scanner's HEAD on reader-1's other link, and reader-1's mail client opening the pixel.
    let a = agent();
    let r = a
        .head(click(&token("reader-1", target("p-104"), 3600)))
        .header("user-agent", THUNDERBIRD)
        .call()
        .expect("HEAD on a tracked link");
    assert_eq!(r.status().as_u16(), 302);
    assert!(
        r.headers().get("set-cookie").is_none(),
        "a scanner gets no marker"
    );
    let pixel = format!(
        "{shop}/wm{}",
        wire::pixel_path(&token("reader-1", None, 1800))
    );
    let mut r = a
        .get(&pixel)
        .header("user-agent", THUNDERBIRD)
        .call()
        .expect("GET the pixel");
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(r.body_mut().read_to_vec().unwrap().len(), 43);

    // Reader 1's profile: the click and the open (people), the scanner beside them, the
    // browsing before the click (p-103) and after it (p-100), and the cart.
    let p = wait_for("reader-1's stitched profile", 60, || {
        let (status, p) = stack.api_get(&format!("/v1/profiles/reader-1?site={SITE}"));
        let ready = status == 200
            && p["email"]["human_clicks"] == 1
            && p["email"]["scanner_clicks"] == 1
            && p["email"]["human_opens"] == 1
            && product_ids(&p["cart"]["products"]) == ["p-100"]
            && product_ids(&p["recently_viewed"]).contains(&"p-103");
        ready.then_some(p)
    });
    let viewed = product_ids(&p["recently_viewed"]);
    assert!(
        viewed.contains(&"p-100") && viewed.contains(&"p-103"),
        "{p:#}"
    );
    assert_eq!(
        p["anonymous_ids"].as_array().map(Vec::len),
        Some(1),
        "{p:#}"
    );
    assert_eq!(p["email"]["campaigns"][0]["campaign"], "november", "{p:#}");
    let links = stack.sql(
        "SELECT user_id, source_type FROM {db}.identities WHERE source_type = 'email_click' FORMAT TSV",
    );
    assert_eq!(
        links.trim(),
        "reader-1\temail_click",
        "no link for the GPC reader"
    );

    // Reader 2 (GPC) clicked as a person, but their browsing stays apart.
    let (_, p2) = stack.api_get(&format!("/v1/profiles/reader-2?site={SITE}"));
    assert_eq!(p2["email"]["human_clicks"], 1, "{p2:#}");
    assert!(product_ids(&p2["recently_viewed"]).is_empty(), "{p2:#}");

    // The tampered and the expired link were counted.
    let mut r = agent()
        .get(format!("{}/metrics", stack.ingest_url))
        .call()
        .expect("GET /metrics");
    let metrics = r.body_mut().read_to_string().unwrap();
    for reason in ["bad_signature", "expired"] {
        let line = format!("waymark_email_tokens_refused_total{{reason=\"{reason}\"}} 1");
        assert!(metrics.contains(&line), "{line} in:\n{metrics}");
    }
}
