//! Per-site rate limiting against a real ClickHouse: within the limit events land; over it the
//! request gets 429 with `Retry-After` and a body naming the reason, and none of its events is
//! stored. The refill rate is set so low that the test does not depend on timing.

mod common;

use std::time::Duration;

use common::*;
use serde_json::{json, Value};
use waymark_ingest::config::RateLimitConfig;

const WAIT: Duration = Duration::from_secs(20);

fn batch(ids: &[&str]) -> String {
    let events: Vec<Value> = ids
        .iter()
        .map(|id| json!({"type": "track", "messageId": id, "anonymousId": "rl", "event": "E"}))
        .collect();
    json!({ "batch": events }).to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_the_limit_gets_429_with_retry_after_and_stores_nothing() {
    let ch = clickhouse();
    let mut srv = Server::start_with(ch, |c| {
        // Site "shop": 5 events at once, then one per 1000 s.
        c.sites[0].rate_limit = Some(RateLimitConfig {
            events_per_second: 0.001,
            burst: 5,
            servers: 1,
        });
    })
    .await;
    let client = http();
    let url = srv.url("/v1/batch");
    let send = |key: &'static str, ids: &[&str]| {
        client
            .post(&url)
            .basic_auth(key, Some(""))
            .header("content-type", "application/json")
            .body(batch(ids))
            .send()
    };

    // Within the limit: 3 of 5.
    let resp = send(WRITE_KEY, &["rl-ok-1", "rl-ok-2", "rl-ok-3"])
        .await
        .unwrap();
    assert_eq!(resp.status(), 200, "{}", resp.text().await.unwrap());

    // 3 more do not fit in the 2 left: the whole request is refused.
    let resp = send(WRITE_KEY, &["rl-over-1", "rl-over-2", "rl-over-3"])
        .await
        .unwrap();
    assert_eq!(resp.status(), 429);
    let retry: u64 = resp
        .headers()
        .get("retry-after")
        .expect("429 carries Retry-After")
        .to_str()
        .unwrap()
        .parse()
        .expect("Retry-After in whole seconds");
    assert_eq!(retry, 1000, "one missing token at 0.001/s");
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["error"], "rate_limited", "{v}");
    assert_eq!(v["field"], "rate_limit", "{v}");
    let msg = v["message"].as_str().unwrap();
    assert!(msg.contains("\"shop\"") && msg.contains("limit"), "{msg}");

    // The refused request took nothing: the 2 tokens left still admit 2 events.
    let resp = send(WRITE_KEY, &["rl-ok-4", "rl-ok-5"]).await.unwrap();
    assert_eq!(resp.status(), 200, "{}", resp.text().await.unwrap());
    // Now the bucket is empty.
    let resp = send(WRITE_KEY, &["rl-over-4"]).await.unwrap();
    assert_eq!(resp.status(), 429);

    // Another site has no limit.
    let resp = send(
        OTHER_KEY,
        &[
            "rl-blog-1",
            "rl-blog-2",
            "rl-blog-3",
            "rl-blog-4",
            "rl-blog-5",
            "rl-blog-6",
        ],
    )
    .await
    .unwrap();
    assert_eq!(resp.status(), 200, "{}", resp.text().await.unwrap());

    let db = srv.db.clone();
    let got = wait_for(
        ch,
        &format!("SELECT count() FROM {db}.events WHERE message_id LIKE 'rl-%'"),
        "11",
        WAIT,
    )
    .await;
    assert_eq!(got, "11", "5 accepted for shop + 6 for blog");
    srv.stop().await;
    let over = query(
        ch,
        &format!("SELECT count() FROM {db}.events WHERE message_id LIKE 'rl-over-%'"),
    );
    assert_eq!(over.trim(), "0", "nothing from a refused request is stored");
    let ok = query(
        ch,
        &format!("SELECT count() FROM {db}.events WHERE message_id LIKE 'rl-ok-%'"),
    );
    assert_eq!(ok.trim(), "5");
}
