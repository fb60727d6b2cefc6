//! Privacy against a real ClickHouse: no email or token sent in a URL is stored (direct and
//! edge paths), and `Sec-GPC: 1` on a direct request follows the site's `gpc` policy.

mod common;

use std::time::Duration;

use common::*;
use proptest::strategy::{Strategy, ValueTree};
use proptest::test_runner::TestRunner;
use serde_json::{json, Value};
use waymark_protocol::edge::{sign, HEADER_SIGNATURE, HEADER_TIMESTAMP};

const WAIT: Duration = Duration::from_secs(20);

/// Generated secrets: email addresses and tokens, the shapes the protocol crate's property test
/// uses, from a fixed seed (so a failure repeats).
fn secrets(n: usize) -> Vec<String> {
    let email = "[a-z0-9][a-z0-9._+-]{0,15}@[a-z0-9][a-z0-9-]{0,10}\\.[a-z]{2,6}";
    let token =
        ("[A-Za-z0-9]{18,60}", "[A-Za-z]", "[0-9]").prop_map(|(t, l, d)| format!("{l}{t}{d}"));
    let mut runner = TestRunner::deterministic();
    (0..n)
        .map(|i| {
            if i % 2 == 0 {
                email.new_tree(&mut runner).unwrap().current()
            } else {
                token.new_tree(&mut runner).unwrap().current()
            }
        })
        .collect()
}

fn encoded(s: &str) -> String {
    s.replace('@', "%40").replace('+', "%2B")
}

/// Events that carry `secret` in every URL field the intake stores, in an allowed parameter,
/// a parameter off the list, a path segment and a `mailto:` link.
fn events(prefix: &str, i: usize, secret: &str, now: i64) -> Vec<Value> {
    let enc = encoded(secret);
    let url = format!("https://shop.example/reset/{secret}?token={enc}&utm_source={enc}&sku=7");
    let search = format!("?token={enc}&utm_source={enc}&sku=7");
    let page = json!({"url": url, "search": search, "path": "/reset",
        "referrer": format!("https://mail.example/open?u={enc}#access_token={secret}")});
    vec![
        json!({"type": "page", "messageId": format!("{prefix}-p{i}"), "anonymousId": "anon-priv",
               "originalTimestamp": iso(now), "context": {"page": page},
               "properties": {"url": url, "search": search}}),
        json!({"type": "track", "event": "$click", "messageId": format!("{prefix}-c{i}"),
               "anonymousId": "anon-priv", "originalTimestamp": iso(now),
               "context": {"page": page},
               "properties": {"kind": "link", "text": "Mail us", "href": format!("mailto:{secret}")}}),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_generated_email_or_token_reaches_clickhouse() {
    let ch = clickhouse();
    let mut srv = Server::start_with(ch, |c| {
        c.sites[0].allowed_query_params = vec!["sku".into()];
    })
    .await;
    let now = now_ms();
    let secrets = secrets(24);
    let (direct, edge) = secrets.split_at(12);

    let batch: Vec<Value> = direct
        .iter()
        .enumerate()
        .flat_map(|(i, s)| events("d", i, s, now))
        .collect();
    let resp = http()
        .post(srv.url("/v1/batch"))
        .basic_auth(WRITE_KEY, Some(""))
        .json(&json!({"batch": batch, "sentAt": iso(now)}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200, "{}", resp.text().await.unwrap());

    // An edge that forwards raw URLs (an older worker): the server redacts them too.
    let forwarded: Vec<Value> = edge
        .iter()
        .enumerate()
        .flat_map(|(i, s)| events("e", i, s, now))
        .collect();
    let body =
        json!({"envelopes": [{"writeKey": WRITE_KEY, "receivedAt": iso(now), "sentAt": iso(now),
        "client": {"ip": "198.51.100.0"}, "events": forwarded}]})
        .to_string();
    let ts = now / 1000;
    let resp = http()
        .post(srv.url("/v1/edge"))
        .header(HEADER_TIMESTAMP, ts.to_string())
        .header(
            HEADER_SIGNATURE,
            sign(EDGE_SECRET.as_bytes(), ts, body.as_bytes()),
        )
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200, "{}", resp.text().await.unwrap());

    let db = &srv.db;
    let n = wait_for(ch, &format!("SELECT count() FROM {db}.events"), "48", WAIT).await;
    assert_eq!(n, "48");
    let stored = query(ch, &format!("SELECT * FROM {db}.events FORMAT TSV")).to_lowercase();
    for s in &secrets {
        for form in [s.clone(), encoded(s)] {
            assert!(
                !stored.contains(&form.to_lowercase()),
                "{form:?} was stored:\n{stored}"
            );
        }
    }
    // What is kept: the allowed parameter, the names, the scheme of the mailto: link.
    let row = query(
        ch,
        &format!("SELECT page_url, page_search, properties FROM {db}.events WHERE message_id = 'd-c0' FORMAT JSONEachRow"),
    );
    let row: Value = serde_json::from_str(row.trim()).unwrap();
    assert_eq!(
        row["page_url"],
        "https://shop.example/reset/REDACTED?token=REDACTED&utm_source=REDACTED&sku=7"
    );
    assert_eq!(
        row["page_search"],
        "?token=REDACTED&utm_source=REDACTED&sku=7"
    );
    let props: Value = serde_json::from_str(row["properties"].as_str().unwrap()).unwrap();
    assert_eq!(props["href"], "mailto:");
    srv.stop().await;
}

async fn send_with_gpc(srv: &Server, prefix: &str, now: i64) -> Value {
    let batch = json!({"sentAt": iso(now), "batch": [
        {"type": "identify", "messageId": format!("{prefix}-id"), "anonymousId": "anon-g", "userId": "user-g",
         "originalTimestamp": iso(now), "traits": {"email": "g@example.com"}},
        {"type": "track", "event": "Product Viewed", "messageId": format!("{prefix}-tr"), "anonymousId": "anon-g",
         "userId": "user-g", "originalTimestamp": iso(now), "context": {"sessionId": "sess-g"}},
    ]});
    let resp = http()
        .post(srv.url("/v1/batch"))
        .basic_auth(WRITE_KEY, Some(""))
        .header("sec-gpc", "1")
        .json(&batch)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    resp.json().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gpc_on_the_direct_intake_follows_the_site_policy() {
    let ch = clickhouse();
    let now = now_ms();

    // Default policy (drop-ids): identify left out, ids replaced by the session pseudonym.
    let mut srv = Server::start(ch).await;
    let answer = send_with_gpc(&srv, "g1", now).await;
    assert_eq!(answer["accepted"], 1, "{answer}");
    assert_eq!(answer["gpc_dropped"], 1, "{answer}");
    let db = srv.db.clone();
    let n = wait_for(ch, &format!("SELECT count() FROM {db}.events"), "1", WAIT).await;
    assert_eq!(n, "1");
    let row = query(
        ch,
        &format!("SELECT message_id, anonymous_id, user_id, visitor_id, gpc FROM {db}.events FORMAT JSONEachRow"),
    );
    let row: Value = serde_json::from_str(row.trim()).unwrap();
    assert_eq!(row["message_id"], "g1-tr");
    assert_eq!(row["anonymous_id"], "gpc-sess-g");
    assert_eq!(row["visitor_id"], "gpc-sess-g");
    assert_eq!(row["user_id"], "");
    assert_eq!(row["gpc"], 1);
    let links = query(ch, &format!("SELECT count() FROM {db}.identities"));
    assert_eq!(links.trim(), "0", "no identity link under GPC");
    srv.stop().await;

    // drop-events: nothing stored, the request still answered 200.
    let mut srv = Server::start_with(ch, |c| {
        c.sites[0].gpc = waymark_ingest::config::GpcMode::DropEvents;
    })
    .await;
    let answer = send_with_gpc(&srv, "g2", now).await;
    assert_eq!(answer["accepted"], 0, "{answer}");
    assert_eq!(answer["gpc_dropped"], 2, "{answer}");
    srv.stop().await;
    let n = query(ch, &format!("SELECT count() FROM {}.events", srv.db));
    assert_eq!(n.trim(), "0");

    // keep: stored as sent, flagged.
    let mut srv = Server::start_with(ch, |c| {
        c.sites[0].gpc = waymark_ingest::config::GpcMode::Keep;
    })
    .await;
    let answer = send_with_gpc(&srv, "g3", now).await;
    assert_eq!(answer["accepted"], 2, "{answer}");
    let db = srv.db.clone();
    let n = wait_for(
        ch,
        &format!("SELECT sum(gpc), countIf(user_id = 'user-g') FROM {db}.events"),
        "2\t2",
        WAIT,
    )
    .await;
    assert_eq!(n, "2\t2");
    srv.stop().await;
}
