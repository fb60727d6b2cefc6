//! Every intake endpoint against a real ClickHouse: good events land with the right fields; bad
//! input gets the right status and a body naming the reason, and stores nothing.

mod common;

use std::io::Write as _;
use std::time::Duration;

use common::*;
use serde_json::{json, Value};
use waymark_protocol::edge::{sign, HEADER_SIGNATURE, HEADER_TIMESTAMP};

const CHROME_UA: &str = "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0.0.0 Safari/537.36";
const WAIT: Duration = Duration::from_secs(20);

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

fn row(ch: &waymark_testkit::ClickHouse, db: &str, message_id: &str, cols: &str) -> Value {
    let out = query(
        ch,
        &format!("SELECT {cols} FROM {db}.events FINAL WHERE message_id = '{message_id}' FORMAT JSONEachRow"),
    );
    serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("row {message_id}: {e}: {out:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_with_basic_auth_lands_with_enriched_fields() {
    let ch = clickhouse();
    let mut srv = Server::start(ch).await;
    let now = now_ms();
    let body = json!({
        "sentAt": iso(now - 1000),
        "batch": [
            {"type": "page", "messageId": "b-page", "anonymousId": "anon-1", "name": "Sneakers",
             "originalTimestamp": iso(now - 6000),
             "context": {"ip": "203.0.113.77", "userAgent": CHROME_UA, "sessionId": "sess-9", "locale": "de-DE",
                         "page": {"url": "https://shop.example/p/1?utm_source=mail", "path": "/p/1", "title": "Sneakers", "referrer": "https://google.com/"},
                         "campaign": {"source": "newsletter", "medium": "email", "name": "spring"},
                         "library": {"name": "waymark.js", "version": "0.1.0"}}},
            {"type": "track", "messageId": "b-view", "anonymousId": "anon-1", "event": "Product Viewed",
             "originalTimestamp": iso(now - 5000),
             "properties": {"product_id": "p-1", "name": "Sneaker", "price": 59.9, "currency": "EUR"}},
            {"type": "identify", "messageId": "b-ident", "anonymousId": "anon-1", "userId": "user-1",
             "originalTimestamp": iso(now - 4000), "traits": {"email": "ada@example.com"}},
            {"type": "track", "messageId": "b-bad", "anonymousId": "anon-1", "event": 42}
        ]
    });
    let resp = http()
        .post(srv.url("/v1/batch"))
        .basic_auth(WRITE_KEY, Some(""))
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let answer: Value = resp.json().await.unwrap();
    assert_eq!(answer["accepted"], 3, "{answer}");
    assert_eq!(answer["rejected"][0]["index"], 3, "{answer}");
    assert_eq!(answer["rejected"][0]["field"], "event", "{answer}");

    let db = &srv.db;
    let n = wait_for(ch, &format!("SELECT count() FROM {db}.events"), "3", WAIT).await;
    assert_eq!(n, "3");
    let page = row(ch, db, "b-page", "site, visitor_id, type, name, session_id, locale, page_path, page_title, page_referrer, utm_source, utm_medium, utm_campaign, browser, os, device_type, is_bot, ip, library_name, source, skew_rule, timestamp_ms, received_at_ms, context");
    assert_eq!(page["site"], "shop");
    assert_eq!(page["visitor_id"], "anon-1");
    assert_eq!(page["type"], "page");
    assert_eq!(page["name"], "Sneakers");
    assert_eq!(page["session_id"], "sess-9");
    assert_eq!(page["locale"], "de-DE");
    assert_eq!(page["page_path"], "/p/1");
    assert_eq!(page["page_referrer"], "https://google.com/");
    assert_eq!(
        page["utm_source"], "newsletter",
        "the campaign object wins over the URL"
    );
    assert_eq!(page["utm_medium"], "email");
    assert_eq!(page["utm_campaign"], "spring");
    assert_eq!(page["browser"], "Chrome");
    assert_eq!(page["os"], "Mac OSX");
    assert_eq!(page["device_type"], "desktop");
    assert_eq!(page["is_bot"], 0);
    assert_eq!(page["ip"], "203.0.113.0");
    assert!(
        !page["context"].as_str().unwrap().contains("203.0.113.77"),
        "raw IP stored"
    );
    assert_eq!(page["library_name"], "waymark.js");
    assert_eq!(page["source"], "api");
    assert_eq!(page["skew_rule"], "corrected");
    // 5 s between the event and sentAt by the client's clock: 5 s before receipt.
    let ts: i64 = page["timestamp_ms"]
        .as_str()
        .map(|s| s.parse().unwrap())
        .unwrap_or_else(|| page["timestamp_ms"].as_i64().unwrap());
    let rx: i64 = page["received_at_ms"]
        .as_str()
        .map(|s| s.parse().unwrap())
        .unwrap_or_else(|| page["received_at_ms"].as_i64().unwrap());
    assert_eq!(rx - ts, 5000);

    let view = row(
        ch,
        db,
        "b-view",
        "event, product_id, product_name, price, currency",
    );
    assert_eq!(view["event"], "Product Viewed");
    assert_eq!(view["product_id"], "p-1");
    assert_eq!(view["product_name"], "Sneaker");
    assert_eq!(view["price"], 59.9);
    assert_eq!(view["currency"], "EUR");

    let ident = row(ch, db, "b-ident", "user_id, traits");
    assert_eq!(ident["user_id"], "user-1");
    assert!(ident["traits"]
        .as_str()
        .unwrap()
        .contains("ada@example.com"));
    // The identify's email is an identifier link too (`intake::identifiers`), normalised.
    let links = wait_for(
        ch,
        &format!("SELECT user_id, anonymous_id, source_type FROM {db}.identities FINAL ORDER BY anonymous_id FORMAT TSV"),
        "user-1\t$email:ada@example.com\tidentifier:api\nuser-1\tanon-1\tidentify",
        WAIT,
    )
    .await;
    assert_eq!(
        links,
        "user-1\t$email:ada@example.com\tidentifier:api\nuser-1\tanon-1\tidentify"
    );
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn single_event_endpoints_land_with_write_key_in_body() {
    let ch = clickhouse();
    let mut srv = Server::start(ch).await;
    let now = iso(now_ms() - 2000);
    let calls = [
        (
            "track",
            json!({"messageId": "s-track", "anonymousId": "a2", "event": "Order Completed", "timestamp": now, "properties": {"order_id": "o-7", "revenue": 120.5, "currency": "EUR"}}),
        ),
        (
            "identify",
            json!({"messageId": "s-identify", "anonymousId": "a2", "userId": "u2", "traits": {"plan": "pro"}}),
        ),
        (
            "page",
            json!({"messageId": "s-page", "anonymousId": "a2", "name": "Checkout"}),
        ),
        (
            "screen",
            json!({"messageId": "s-screen", "userId": "u2", "name": "Cart"}),
        ),
        (
            "alias",
            json!({"messageId": "s-alias", "userId": "u2", "previousId": "a-old"}),
        ),
        (
            "group",
            json!({"messageId": "s-group", "userId": "u2", "groupId": "g-1", "traits": {"name": "ACME"}}),
        ),
    ];
    for (kind, mut body) in calls {
        body["writeKey"] = json!(WRITE_KEY);
        let resp = http()
            .post(srv.url(&format!("/v1/{kind}")))
            .header("content-type", "text/plain")
            .body(body.to_string())
            .send()
            .await
            .unwrap();
        let status = resp.status();
        let text = resp.text().await.unwrap();
        assert_eq!(status, 200, "{kind}: {text}");
        assert_eq!(
            serde_json::from_str::<Value>(&text).unwrap()["accepted"],
            1,
            "{kind}: {text}"
        );
    }
    let db = &srv.db;
    assert_eq!(
        wait_for(ch, &format!("SELECT count() FROM {db}.events"), "6", WAIT).await,
        "6"
    );
    let t = row(
        ch,
        db,
        "s-track",
        "type, event, order_id, revenue, currency, skew_rule",
    );
    assert_eq!(
        t,
        json!({"type": "track", "event": "Order Completed", "order_id": "o-7", "revenue": 120.5, "currency": "EUR", "skew_rule": "explicit"})
    );
    assert_eq!(
        row(ch, db, "s-identify", "type, user_id, anonymous_id")["user_id"],
        "u2"
    );
    assert_eq!(
        row(ch, db, "s-page", "type, name"),
        json!({"type": "page", "name": "Checkout"})
    );
    assert_eq!(
        row(ch, db, "s-screen", "type, name, visitor_id"),
        json!({"type": "screen", "name": "Cart", "visitor_id": "u2"})
    );
    assert_eq!(
        row(ch, db, "s-alias", "type, previous_id"),
        json!({"type": "alias", "previous_id": "a-old"})
    );
    assert_eq!(
        row(ch, db, "s-group", "type, group_id"),
        json!({"type": "group", "group_id": "g-1"})
    );
    let links = wait_for(
        ch,
        &format!("SELECT groupArray(anonymous_id) FROM (SELECT anonymous_id FROM {db}.identities FINAL WHERE user_id = 'u2' ORDER BY anonymous_id) FORMAT TSV"),
        "['a-old','a2']",
        WAIT,
    )
    .await;
    assert_eq!(links, "['a-old','a2']");
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_segment_sdk_payloads_and_gzip_are_accepted() {
    let ch = clickhouse();
    let mut srv = Server::start(ch).await;
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../protocol/tests/payloads");
    let mut expected = 0;
    for name in [
        "analytics-python.json",
        "analytics-node.json",
        "analytics-js.json",
    ] {
        let body = std::fs::read(dir.join(name)).unwrap();
        let n = serde_json::from_slice::<Value>(&body).unwrap()["batch"]
            .as_array()
            .unwrap()
            .len();
        expected += n;
        // The Python SDK gzips; send every payload gzipped, as an SDK with gzip on would.
        let resp = http()
            .post(srv.url("/v1/batch"))
            .basic_auth(WRITE_KEY, Some(""))
            .header("content-type", "application/json")
            .header("content-encoding", "gzip")
            .body(gzip(&body))
            .send()
            .await
            .unwrap();
        let status = resp.status();
        let answer: Value = resp.json().await.unwrap();
        assert_eq!(status, 200, "{name}: {answer}");
        assert_eq!(answer["accepted"], n, "{name}: {answer}");
    }
    let db = &srv.db;
    let got = wait_for(
        ch,
        &format!("SELECT count() FROM {db}.events"),
        &expected.to_string(),
        WAIT,
    )
    .await;
    assert_eq!(got, expected.to_string());
    let lib = query(
        ch,
        &format!("SELECT count() FROM {db}.events WHERE library_name = 'analytics-python'"),
    );
    assert_eq!(lib.trim(), "2");
    srv.stop().await;
}

fn forward(events_site: &str, received_at: &str) -> Value {
    json!({"envelopes": [
        {"writeKey": events_site, "receivedAt": received_at, "sentAt": received_at,
         "geo": {"country": "DE", "region": "Berlin", "regionCode": "BE", "city": "Berlin", "postalCode": "10115",
                 "latitude": 52.52, "longitude": 13.4, "timezone": "Europe/Berlin", "continent": "EU", "asn": 3320, "colo": "FRA"},
         "client": {"ip": "198.51.100.0", "userAgent": CHROME_UA, "gpc": true, "botScore": 87, "bot": false},
         "events": [
            {"type": "page", "messageId": "e-page", "anonymousId": "anon-e", "originalTimestamp": received_at,
             "context": {"page": {"url": "https://shop.example/", "path": "/"}}},
            {"type": "track", "messageId": "e-bad", "anonymousId": "anon-e"}
         ]},
        {"writeKey": OTHER_KEY, "receivedAt": received_at,
         "client": {"ip": "198.51.100.0", "userAgent": "curl/8.0", "bot": true},
         "events": [{"type": "track", "messageId": "e-blog", "anonymousId": "anon-f", "event": "$click",
                     "properties": {"kind": "link", "text": "Read", "href": "https://blog.example/x", "outbound": true}}]}
    ]})
}

async fn post_edge(srv: &Server, body: &[u8], ts: i64, secret: &str) -> (u16, Value) {
    post_edge_signed(srv, body, ts, &sign(secret.as_bytes(), ts, body)).await
}

async fn post_edge_signed(srv: &Server, body: &[u8], ts: i64, signature: &str) -> (u16, Value) {
    let resp = http()
        .post(srv.url("/v1/edge"))
        .header("content-type", "application/json")
        .header(HEADER_TIMESTAMP, ts.to_string())
        .header(HEADER_SIGNATURE, signature)
        .body(body.to_vec())
        .send()
        .await
        .unwrap();
    let s = resp.status().as_u16();
    (s, resp.json().await.unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edge_forward_lands_with_geo_and_client_facts() {
    let ch = clickhouse();
    let mut srv = Server::start(ch).await;
    let now = now_ms();
    let body = forward(WRITE_KEY, &iso(now - 500)).to_string();
    let (status, answer) = post_edge(&srv, body.as_bytes(), now / 1000, EDGE_SECRET).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["accepted"], 2, "{answer}");
    assert_eq!(answer["rejected"][0]["index"], 1, "{answer}");
    assert_eq!(answer["rejected"][0]["field"], "event", "{answer}");
    let db = &srv.db;
    assert_eq!(
        wait_for(ch, &format!("SELECT count() FROM {db}.events"), "2", WAIT).await,
        "2"
    );
    let page = row(ch, db, "e-page", "site, source, country, region, region_code, city, postal_code, latitude, longitude, geo_timezone, continent, asn, colo, ip, gpc, bot_score, is_bot, browser");
    assert_eq!(
        page,
        json!({"site": "shop", "source": "edge", "country": "DE", "region": "Berlin", "region_code": "BE", "city": "Berlin",
               "postal_code": "10115", "latitude": 52.52, "longitude": 13.4, "geo_timezone": "Europe/Berlin", "continent": "EU",
               "asn": 3320, "colo": "FRA", "ip": "198.51.100.0", "gpc": 1, "bot_score": 87, "is_bot": 0, "browser": "Chrome"})
    );
    let blog = row(ch, db, "e-blog", "site, ip, is_bot, event");
    assert_eq!(
        blog,
        json!({"site": "blog", "ip": "", "is_bot": 1, "event": "$click"}),
        "site 'blog' drops IPs; bot kept and flagged"
    );
    srv.stop().await;
}

/// Every kind of bad input: the right status, a JSON body naming the reason, nothing stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_refused_with_reason_and_stores_nothing() {
    let ch = clickhouse();
    let mut srv = Server::start(ch).await;
    let client = http();
    let good_event =
        |id: &str| json!({"type": "track", "messageId": id, "anonymousId": "x", "event": "E"});
    let batch = |id: &str| json!({"batch": [good_event(id)]}).to_string();

    struct Case {
        name: &'static str,
        req: reqwest::RequestBuilder,
        status: u16,
        error: &'static str,
        field: Option<&'static str>,
    }
    let post = |path: &str| client.post(srv.url(path));
    let big = format!(
        "{{\"batch\":[{}],\"pad\":\"{}\"}}",
        good_event("bad-big"),
        "x".repeat(600 * 1024)
    );
    let bomb = gzip(
        format!(
            "{{\"batch\":[{}],\"pad\":\"{}\"}}",
            good_event("bad-bomb"),
            " ".repeat(20 << 20)
        )
        .as_bytes(),
    );
    assert!(bomb.len() < 100 * 1024, "the bomb is small on the wire");
    let now = now_ms() / 1000;
    let edge_body = forward(WRITE_KEY, &iso(now_ms()))
        .to_string()
        .replace("e-page", "bad-edge")
        .replace("e-blog", "bad-edge2");
    let cases = vec![
        Case { name: "malformed JSON", req: post("/v1/batch").basic_auth(WRITE_KEY, Some("")).body("{\"batch\": [".to_string()), status: 400, error: "invalid_json", field: Some("body") },
        Case { name: "batch of the wrong type", req: post("/v1/batch").basic_auth(WRITE_KEY, Some("")).body("{\"batch\": {\"messageId\": \"bad-obj\"}}"), status: 400, error: "batch_not_array", field: Some("batch") },
        Case { name: "sentAt of the wrong type", req: post("/v1/batch").basic_auth(WRITE_KEY, Some("")).body(json!({"batch": [good_event("bad-sent")], "sentAt": 5}).to_string()), status: 400, error: "invalid_field", field: Some("sentAt") },
        Case { name: "oversized body", req: post("/v1/batch").basic_auth(WRITE_KEY, Some("")).body(big), status: 413, error: "body_too_large", field: Some("body") },
        Case { name: "gzip bomb", req: post("/v1/batch").basic_auth(WRITE_KEY, Some("")).header("content-encoding", "gzip").body(bomb), status: 413, error: "body_too_large", field: Some("body") },
        Case { name: "not gzip", req: post("/v1/batch").basic_auth(WRITE_KEY, Some("")).header("content-encoding", "gzip").body(batch("bad-notgz")), status: 400, error: "invalid_gzip", field: Some("body") },
        Case { name: "unknown encoding", req: post("/v1/batch").basic_auth(WRITE_KEY, Some("")).header("content-encoding", "br").body(batch("bad-br")), status: 415, error: "unsupported_encoding", field: Some("content-encoding") },
        Case { name: "missing write key", req: post("/v1/batch").body(batch("bad-nokey")), status: 401, error: "missing_write_key", field: Some("writeKey") },
        Case { name: "unknown write key (basic)", req: post("/v1/batch").basic_auth("wk_nope", Some("")).body(batch("bad-key1")), status: 401, error: "invalid_write_key", field: Some("writeKey") },
        Case { name: "unknown write key (body)", req: post("/v1/track").body(json!({"writeKey": "wk_nope", "messageId": "bad-key2", "anonymousId": "x", "event": "E"}).to_string()), status: 401, error: "invalid_write_key", field: Some("writeKey") },
        Case { name: "origin not allowed", req: post("/v1/batch").basic_auth(WRITE_KEY, Some("")).header("origin", "https://evil.example").body(batch("bad-origin")), status: 403, error: "origin_not_allowed", field: Some("origin") },
        Case { name: "edge: bad HMAC", req: post("/v1/edge").header(HEADER_TIMESTAMP, now.to_string()).header(HEADER_SIGNATURE, sign(b"wrong secret", now, edge_body.as_bytes())).body(edge_body.clone()), status: 401, error: "signature_mismatch", field: Some(HEADER_SIGNATURE) },
        Case { name: "edge: no signature", req: post("/v1/edge").header(HEADER_TIMESTAMP, now.to_string()).body(edge_body.clone()), status: 401, error: "invalid_signature", field: Some(HEADER_SIGNATURE) },
        Case { name: "edge: stale timestamp", req: post("/v1/edge").header(HEADER_TIMESTAMP, (now - 3600).to_string()).header(HEADER_SIGNATURE, sign(EDGE_SECRET.as_bytes(), now - 3600, edge_body.as_bytes())).body(edge_body.clone()), status: 401, error: "outside_replay_window", field: Some(HEADER_TIMESTAMP) },
        Case { name: "edge: body changed after signing", req: post("/v1/edge").header(HEADER_TIMESTAMP, now.to_string()).header(HEADER_SIGNATURE, sign(EDGE_SECRET.as_bytes(), now, b"{\"envelopes\":[]}")).body(edge_body.clone()), status: 401, error: "signature_mismatch", field: Some(HEADER_SIGNATURE) },
    ];
    for c in cases {
        let resp = c
            .req
            .send()
            .await
            .unwrap_or_else(|e| panic!("{}: {e}", c.name));
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap();
        assert_eq!(status, c.status, "{}: {text}", c.name);
        let v: Value = serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("{}: body is not JSON ({e}): {text}", c.name));
        assert_eq!(v["error"], c.error, "{}: {text}", c.name);
        assert_eq!(v["field"].as_str(), c.field, "{}: {text}", c.name);
        assert!(
            !v["message"].as_str().unwrap_or("").is_empty(),
            "{}: {text}",
            c.name
        );
    }

    // Wrong types inside an event: 200, the event is listed as rejected and not stored.
    let resp = post("/v1/batch")
        .basic_auth(WRITE_KEY, Some(""))
        .body(json!({"batch": [{"type": "track", "messageId": "bad-types", "anonymousId": ["x"], "event": "E", "properties": "nope"}]}).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["accepted"], 0, "{v}");
    let fields: Vec<&str> = v["rejected"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["field"].as_str().unwrap())
        .collect();
    assert!(
        fields.contains(&"anonymousId") && fields.contains(&"properties"),
        "{v}"
    );

    // A replayed edge request: the first delivery is accepted, the identical second is refused.
    let replay = forward(WRITE_KEY, &iso(now_ms()))
        .to_string()
        .replace("e-page", "edge-once")
        .replace("e-blog", "edge-once2");
    let (s1, a1) = post_edge(&srv, replay.as_bytes(), now, EDGE_SECRET).await;
    assert_eq!(s1, 200, "{a1}");
    let (s2, a2) = post_edge(&srv, replay.as_bytes(), now, EDGE_SECRET).await;
    assert_eq!((s2, a2["error"].as_str()), (401, Some("replayed")), "{a2}");
    // The same signature spelled differently is the same signature: verification takes either
    // case, so the replay guard must too.
    let sig = sign(EDGE_SECRET.as_bytes(), now, replay.as_bytes());
    let (prefix, hex) = sig.split_at(3);
    for variant in [
        format!("{prefix}{}", hex.to_uppercase()),
        format!("{prefix}{}{}", hex[..10].to_uppercase(), &hex[10..]),
    ] {
        let (s, a) = post_edge_signed(&srv, replay.as_bytes(), now, &variant).await;
        assert_eq!(
            (s, a["error"].as_str()),
            (401, Some("replayed")),
            "{variant}: {a}"
        );
    }
    // Identical requests sent together: one passes.
    let twin = replay.replace("edge-once", "edge-twin");
    let answers = futures::future::join_all(
        (0..6).map(|_| post_edge(&srv, twin.as_bytes(), now, EDGE_SECRET)),
    )
    .await;
    let passed = answers.iter().filter(|(s, _)| *s == 200).count();
    assert_eq!(passed, 1, "{answers:?}");

    // A good request last: once it is visible, everything before it was flushed too.
    let resp = post("/v1/batch")
        .basic_auth(WRITE_KEY, Some(""))
        .body(batch("sentinel"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let db = &srv.db;
    wait_for(
        ch,
        &format!("SELECT count() FROM {db}.events WHERE message_id = 'sentinel'"),
        "1",
        WAIT,
    )
    .await;
    let stored = query(
        ch,
        &format!("SELECT groupArray(message_id) FROM {db}.events WHERE message_id LIKE 'bad-%'"),
    );
    assert_eq!(stored.trim(), "[]", "refused input was stored");
    let once = query(
        ch,
        &format!("SELECT count() FROM {db}.events WHERE message_id IN ('edge-once', 'edge-once2', 'edge-twin', 'edge-twin2')"),
    );
    assert_eq!(once.trim(), "4", "the replays stored nothing more");

    let metrics = metrics_when(&client, &srv, |_| true).await;
    assert!(
        metrics.contains("waymark_events_rejected_total{reason=\"signature_mismatch\"} 2"),
        "{metrics}"
    );
    assert!(
        // The replay, its two case variants, and five of the six twins sent together.
        metrics.contains("waymark_events_rejected_total{reason=\"replayed\"} 8"),
        "{metrics}"
    );
    // The identity index is on by default and loads once the schema is there (its loop looks
    // every second).
    let metrics = metrics_when(&client, &srv, |m| {
        m.contains("waymark_identity_index_ready 1\n")
    })
    .await;
    assert!(
        metrics.contains("waymark_identity_index_ready 1\n"),
        "{metrics}"
    );
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cors_preflight_duplicates_and_operations_endpoints() {
    let ch = clickhouse();
    let mut srv = Server::start(ch).await;
    let client = http();
    let pre = client
        .request(reqwest::Method::OPTIONS, srv.url("/v1/batch"))
        .header("origin", ORIGIN)
        .header("access-control-request-method", "POST")
        .send()
        .await
        .unwrap();
    assert_eq!(pre.status(), 204);
    assert_eq!(pre.headers()["access-control-allow-origin"], ORIGIN);
    let pre = client
        .request(reqwest::Method::OPTIONS, srv.url("/v1/batch"))
        .header("origin", "https://evil.example")
        .send()
        .await
        .unwrap();
    assert_eq!(pre.status(), 403);

    // The same message twice (a client retry): acknowledged twice, stored once.
    let body = json!({"writeKey": WRITE_KEY, "batch": [{"type": "track", "messageId": "dup-1", "anonymousId": "a", "event": "E"}]}).to_string();
    for _ in 0..2 {
        let r = client
            .post(srv.url("/v1/batch"))
            .header("origin", ORIGIN)
            .body(body.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(r.headers()["access-control-allow-origin"], ORIGIN);
        assert_eq!(r.json::<Value>().await.unwrap()["accepted"], 1);
    }
    let db = &srv.db;
    assert_eq!(
        wait_for(
            ch,
            &format!("SELECT count() FROM {db}.events FINAL"),
            "1",
            WAIT
        )
        .await,
        "1"
    );
    assert_eq!(
        query(ch, &format!("SELECT count() FROM {db}.events")).trim(),
        "1",
        "the dedup window dropped the retry"
    );

    assert_eq!(
        client
            .get(srv.url("/healthz"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    let ready = client.get(srv.url("/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), 200);
    // The writer counts an insert once ClickHouse answered, a moment after the rows are visible.
    let metrics = metrics_when(&client, &srv, |m| {
        m.contains("waymark_insert_rows_total 1") && m.contains("waymark_spool_pending_bytes 0")
    })
    .await;
    for want in [
        "waymark_events_accepted_total{source=\"api\"} 1",
        "waymark_duplicates_dropped_total 1",
        "waymark_http_requests_total{endpoint=\"batch\",status=\"200\"} 2",
        "waymark_insert_rows_total 1",
        "waymark_spool_pending_bytes 0",
        "waymark_ack_seconds_count 2",
    ] {
        assert!(metrics.contains(want), "missing {want:?} in\n{metrics}");
    }
    srv.stop().await;
}

/// ClickHouse refusing one row (here a materialized view that throws on it) must not block the
/// rest: the batch is bisected, good rows land, the bad one goes to `quarantine` with the reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_row_clickhouse_refuses_is_quarantined_and_the_rest_land() {
    let ch = clickhouse();
    let mut srv = Server::start(ch).await;
    let db = srv.db.clone();
    let send = |ids: Vec<(String, &'static str)>| {
        let events: Vec<Value> = ids
            .iter()
            .map(|(id, ev)| json!({"type": "track", "messageId": id, "anonymousId": "q", "event": ev}))
            .collect();
        http()
            .post(srv.url("/v1/batch"))
            .basic_auth(WRITE_KEY, Some(""))
            .body(json!({"batch": events}).to_string())
            .send()
    };
    assert_eq!(
        send(vec![("q-warm".into(), "E")]).await.unwrap().status(),
        200
    );
    assert_eq!(
        wait_for(ch, &format!("SELECT count() FROM {db}.events"), "1", WAIT).await,
        "1"
    );
    query(
        ch,
        &format!("CREATE MATERIALIZED VIEW {db}.refuse_poison ENGINE = Null AS SELECT throwIf(event = 'poison-pill') AS refused FROM {db}.events"),
    );
    let ids: Vec<(String, &'static str)> = (0..16)
        .map(|i| (format!("q-{i}"), if i == 11 { "poison-pill" } else { "E" }))
        .collect();
    let r = send(ids).await.unwrap();
    assert_eq!(r.status(), 200);
    let q = wait_for(
        ch,
        &format!("SELECT message_id FROM {db}.quarantine FORMAT TSV"),
        "q-11",
        WAIT,
    )
    .await;
    assert_eq!(q, "q-11");
    let reason = query(
        ch,
        &format!("SELECT reason, row FROM {db}.quarantine FORMAT JSONEachRow"),
    );
    let v: Value = serde_json::from_str(reason.trim()).unwrap();
    assert!(v["reason"].as_str().unwrap().contains("throwIf"), "{v}");
    assert!(
        v["row"].as_str().unwrap().contains("\"poison-pill\""),
        "{v}"
    );
    let good = wait_for(
        ch,
        &format!(
            "SELECT count() FROM {db}.events FINAL WHERE message_id LIKE 'q-%' AND event = 'E'"
        ),
        "16",
        WAIT,
    )
    .await;
    assert_eq!(
        good, "16",
        "warm-up plus the 15 good rows of the refused batch"
    );
    srv.stop().await;
}

/// `/metrics` once `done` says so, or as it is after `WAIT`.
async fn metrics_when(
    client: &reqwest::Client,
    srv: &Server,
    done: impl Fn(&str) -> bool,
) -> String {
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let m = client
            .get(srv.url("/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        if done(&m) || std::time::Instant::now() > deadline {
            return m;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
