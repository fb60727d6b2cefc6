//! The data quality report against the real ClickHouse: orders from the browser and the
//! backend matched by order id, a volume drop against the same hour of the last 7 days,
//! duplicates, refusals and clock skew counted per site and hour in `quality_hourly`,
//! ack-to-visible freshness from the view on `events`; `GET /v1/quality` answers it as JSON,
//! `GET /quality` as a page whose every figure is the JSON's, and the gauges follow.

mod common;

use std::time::Duration;

use common::{clickhouse, iso, now_ms, wait_for, Server, WRITE_KEY};
use serde_json::{json, Value};
use waymark_ingest::config::plan::{Completeness, TrackingPlan};
use waymark_ingest::config::{HumanDuration, ReadKey};

const READ_KEY: &str = "rk_shop_quality";
const HOUR: i64 = 3_600_000;
const DAY: i64 = 24 * HOUR;

async fn server() -> Server {
    Server::start_with(clickhouse(), |c| {
        let shop = &mut c.sites[0];
        shop.plan = Some(
            TrackingPlan::read(
                &std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                    .join("plans/segment-ecommerce.json"),
            )
            .unwrap(),
        );
        shop.completeness = vec![Completeness {
            event: "Order Completed".into(),
            field: "properties.revenue".into(),
            min: 1.0,
        }];
        c.query.read_keys.push(ReadKey {
            key: READ_KEY.into(),
            sites: vec!["shop".into()],
            subscribe: false,
        });
        c.quality.flush = HumanDuration(Duration::from_millis(200));
        c.quality.check_interval = HumanDuration(Duration::from_millis(300));
        c.quality.anomaly_min_events = 5;
    })
    .await
}

async fn send(srv: &Server, body: &Value) -> Value {
    let resp = common::http()
        .post(srv.url("/v1/batch"))
        .basic_auth(WRITE_KEY, Some(""))
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    resp.json().await.unwrap()
}

fn order(id: &str, order_id: &str, revenue: Option<f64>) -> Value {
    let mut props = json!({"order_id": order_id, "currency": "EUR"});
    if let Some(r) = revenue {
        props["revenue"] = json!(r);
    }
    json!({"type": "track", "event": "Order Completed", "messageId": id, "anonymousId": "a1", "properties": props})
}

/// Everything the report should find; returns (events sent that are stored, the last complete
/// hour's start).
async fn seed(srv: &Server) -> (usize, i64) {
    let now = now_ms();
    let last_hour = now - now.rem_euclid(HOUR) - HOUR;
    // `Product Viewed` 30 times in the same hour of each of the last 7 days, 3 times in the
    // last complete hour: a drop. Explicit `timestamp`s: a server import, no skew correction.
    let mut history = Vec::new();
    for d in 0..=7 {
        let n = if d == 0 { 3 } else { 30 };
        for j in 0..n {
            history.push(json!({"type": "track", "event": "Product Viewed", "messageId": format!("pv-{d}-{j}"),
                "anonymousId": "a2", "timestamp": iso(last_hour - d * DAY + j * 60_000),
                "properties": {"product_id": "p1"}}));
        }
    }
    let a = send(srv, &json!({"batch": history})).await;
    assert_eq!(a["accepted"], 7 * 30 + 3, "{a}");
    // The browser (the Waymark tag, its clock 5 minutes fast): o1, o2, o3 and o4 without revenue.
    let ahead = now + 300_000;
    let mut browser = vec![
        order("b1", "o1", Some(30.0)),
        order("b2", "o2", Some(20.0)),
        order("b3", "o3", Some(10.0)),
        order("b4", "o4", None),
    ];
    for e in &mut browser {
        e["originalTimestamp"] = json!(iso(ahead - 1_000));
        e["context"] = json!({"library": {"name": "waymark.js", "version": "0.1.0"}});
    }
    let browser = json!({"batch": browser, "sentAt": iso(ahead)});
    assert_eq!(send(srv, &browser).await["accepted"], 4);
    // The backend: o1 the same, o2 and o4 with other revenue, o5 that the browser never saw.
    let mut backend = vec![
        order("k1", "o1", Some(30.0)),
        order("k2", "o2", Some(25.0)),
        order("k4", "o4", Some(15.0)),
        order("k5", "o5", Some(40.0)),
    ];
    for e in &mut backend {
        e["timestamp"] = json!(iso(now));
        e["context"] = json!({"library": {"name": "analytics-node", "version": "6.0.0"}});
    }
    assert_eq!(send(srv, &json!({"batch": backend})).await["accepted"], 4);
    // The browser's batch again (a retry): 4 duplicates dropped by message id.
    let again = send(srv, &browser).await;
    assert_eq!(again["accepted"], 4, "{again}");
    // Two events the protocol refuses.
    let bad = json!({"batch": [
        {"type": "track", "messageId": "x1", "anonymousId": "a1"},
        {"type": "track", "event": "Order Completed", "messageId": "x2"},
    ]});
    let r = send(srv, &bad).await;
    assert_eq!(r["rejected"].as_array().unwrap().len(), 2, "{r}");
    (7 * 30 + 3 + 8, last_hour)
}

async fn report(srv: &Server, since: &str) -> Value {
    let resp = common::http()
        .get(srv.url(&format!("/v1/quality?site=shop&since={since}")))
        .bearer_auth(READ_KEY)
        .send()
        .await
        .unwrap();
    let status = resp.status();
    let body: Value = resp.json().await.unwrap();
    assert_eq!(status, 200, "{body}");
    body
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_report_matches_orders_finds_the_drop_and_counts_the_intake() {
    let ch = clickhouse();
    let mut srv = server().await;
    let (stored, last_hour) = seed(&srv).await;
    let db = &srv.db;
    wait_for(
        ch,
        &format!("SELECT count() FROM {db}.events"),
        &stored.to_string(),
        Duration::from_secs(30),
    )
    .await;
    // The intake's counts reach ClickHouse with the next flush.
    wait_for(
        ch,
        &format!("SELECT sum(value) FROM {db}.quality_hourly WHERE metric = 'duplicate'"),
        "4",
        Duration::from_secs(30),
    )
    .await;
    // The views on `events` count what became visible, with the insert.
    let visible = wait_for(
        ch,
        &format!("SELECT sum(value) FROM {db}.quality_hourly WHERE metric = 'visible_rows'"),
        &stored.to_string(),
        Duration::from_secs(30),
    )
    .await;
    assert_eq!(
        visible,
        stored.to_string(),
        "{} {} {}",
        common::query(ch, &format!("SELECT * FROM {db}.quality_hourly FORMAT TSV")),
        common::query(
            ch,
            &format!("SELECT version FROM {db}.schema_migrations ORDER BY version FORMAT TSV")
        ),
        common::query(
            ch,
            &format!("SHOW CREATE TABLE {db}.quality_visible_mv FORMAT TSV")
        ),
    );
    let since = iso(now_ms() - 2 * DAY);
    let r = report(&srv, &since).await;

    // The answer is what /openapi.json says it is, field for field.
    let doc: Value = common::http()
        .get(srv.url("/openapi.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let mut errs = Vec::new();
    conforms(
        &doc,
        &json!({"$ref": "#/components/schemas/QualityReport"}),
        &r,
        "",
        &mut errs,
    );
    assert!(errs.is_empty(), "{errs:#?}");

    let c = &r["consistency"];
    assert_eq!(
        (
            &c["orders"],
            &c["both"],
            &c["browser_only"],
            &c["backend_only"]
        ),
        (&json!(5), &json!(3), &json!(1), &json!(1)),
        "{c}"
    );
    assert_eq!(c["one_side_share"], 0.4, "{c}");
    assert_eq!(
        c["revenue_mismatches"], 2,
        "o2 (20 vs 25) and o4 (none vs 15): {c}"
    );
    assert_eq!(c["days"][0]["revenue_difference"], 50.0, "{c}");

    let a = &r["volume"]["anomalies"];
    assert_eq!(
        a[0],
        json!({"event": "Product Viewed", "hour": iso(last_hour), "events": 3, "baseline": 30.0,
               "ratio": 0.1, "kind": "drop"}),
        "{a}"
    );

    let comp = &r["completeness"][0];
    assert_eq!(
        (&comp["events"], &comp["missing"]),
        (&json!(8), &json!(1)),
        "{comp}"
    );
    assert_eq!(comp["below"], true);
    assert_eq!(comp["example"]["message_id"], "b4");

    let i = &r["intake"];
    assert_eq!(i["duplicates_dropped"], 4, "{i}");
    assert_eq!(i["rejected"], 2, "{i}");
    assert!(
        i["rejected_by_reason"][0]["reason"]
            .as_str()
            .unwrap()
            .starts_with("invalid_field:"),
        "{i}"
    );

    // The browser's clock was 5 minutes fast: its 4 orders were moved by about that much.
    let clock = &r["clock"];
    assert_eq!(clock["corrected"], 4, "{clock}");
    let mean = clock["mean_correction_ms"].as_u64().unwrap();
    assert!((280_000..=305_000).contains(&mean), "{clock}");

    let f = &r["freshness"];
    assert_eq!(f["visible"].as_u64().unwrap(), stored as u64, "{f}");
    assert!(f["mean_delay_ms"].as_u64().unwrap() < 30_000, "{f}");

    // Worst first, each with what it is about.
    let problems = r["problems"].as_array().unwrap();
    let scores: Vec<f64> = problems
        .iter()
        .map(|p| p["score"].as_f64().unwrap())
        .collect();
    assert!(scores.windows(2).all(|w| w[0] >= w[1]), "{scores:?}");
    let checks: Vec<&str> = problems
        .iter()
        .map(|p| p["check"].as_str().unwrap())
        .collect();
    for want in [
        "volume",
        "consistency",
        "completeness",
        "violations",
        "rejects",
    ] {
        assert!(checks.contains(&want), "{want} in {checks:?}");
    }
    assert_eq!(
        problems[0]["check"], "volume",
        "a 90% drop is the worst: {checks:?}"
    );

    // The page says what the JSON says.
    let page = common::http()
        .get(srv.url(&format!("/quality?site=shop&since={since}")))
        .bearer_auth(READ_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), 200);
    assert!(page.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .starts_with("default-src 'none'"));
    let html = page.text().await.unwrap();
    assert!(html.matches("<svg").count() >= 5, "a plot per check");
    let figures = figures(&html);
    assert!(figures.len() > 30, "{}", figures.len());
    for (pointer, value) in &figures {
        if pointer == "/until" {
            continue;
        }
        assert_eq!(
            r.pointer(pointer),
            Some(value),
            "{pointer} on the page is {value}"
        );
    }

    // A browser gets a form and posts the key in the body; a wrong key gets the form again.
    let form = common::http()
        .get(srv.url("/quality?site=shop"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(form.contains("type=\"password\" name=\"key\""));
    let post = |key: &'static str| {
        common::http()
            .post(srv.url("/quality?site=shop"))
            .form(&[("key", key), ("since", "7d")])
            .send()
    };
    let ok = post(READ_KEY).await.unwrap();
    assert_eq!(ok.status(), 200);
    assert!(ok
        .text()
        .await
        .unwrap()
        .contains("data-q=\"/consistency/orders\" data-v=\"5\""));
    let refused = post("rk_nope").await.unwrap();
    assert_eq!(refused.status(), 401);
    assert!(refused.text().await.unwrap().contains("unknown read key"));

    // The JSON wants its key too.
    let anon = common::http()
        .get(srv.url("/v1/quality?site=shop"))
        .send()
        .await
        .unwrap();
    assert_eq!(anon.status(), 401);

    // The gauges follow (the check runs every 300 ms here).
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let text = common::http()
            .get(srv.url("/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        let one_side = text
            .lines()
            .find_map(|l| l.strip_prefix("waymark_quality_orders_one_side_share{site=\"shop\"} "));
        if one_side == Some("0.4") {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "waymark_quality_orders_one_side_share is {one_side:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    srv.stop().await;
}

/// Every `data-q="pointer" data-v="json"` pair on a page.
fn figures(html: &str) -> Vec<(String, Value)> {
    let unescape = |s: &str| {
        s.replace("&quot;", "\"")
            .replace("&#x27;", "'")
            .replace("&lt;", "<")
            .replace("&gt;", ">")
            .replace("&amp;", "&")
    };
    html.split("data-q=\"")
        .skip(1)
        .map(|rest| {
            let (pointer, rest) = rest.split_once('"').unwrap();
            let v = rest.split_once("data-v=\"").unwrap().1;
            let (v, _) = v.split_once('"').unwrap();
            (
                unescape(pointer),
                serde_json::from_str(&unescape(v)).unwrap(),
            )
        })
        .collect()
}

/// Checks `v` against an OpenAPI schema: closed objects have exactly their properties (the
/// required ones present), arrays their items, scalars their type; `$ref`s and `nullable` are
/// followed.
fn conforms(doc: &Value, schema: &Value, v: &Value, at: &str, errs: &mut Vec<String>) {
    if let Some(r) = schema["$ref"].as_str() {
        let target = doc.pointer(r.trim_start_matches('#')).unwrap();
        return conforms(doc, target, v, at, errs);
    }
    if v.is_null() {
        if schema["nullable"] != true {
            errs.push(format!("{at}: null"));
        }
        return;
    }
    let ok = match schema["type"].as_str() {
        Some("object") => {
            let o = v.as_object();
            if let (Some(o), Some(props)) = (o, schema["properties"].as_object()) {
                for req in schema["required"].as_array().into_iter().flatten() {
                    if !o.contains_key(req.as_str().unwrap()) {
                        errs.push(format!("{at}/{}: missing", req.as_str().unwrap()));
                    }
                }
                for (k, x) in o {
                    match props.get(k) {
                        Some(p) => conforms(doc, p, x, &format!("{at}/{k}"), errs),
                        None if schema["additionalProperties"] == false => {
                            errs.push(format!("{at}/{k}: not in the document"))
                        }
                        None => {}
                    }
                }
            }
            o.is_some()
        }
        Some("array") => {
            for (i, x) in v.as_array().into_iter().flatten().enumerate() {
                conforms(doc, &schema["items"], x, &format!("{at}/{i}"), errs);
            }
            v.is_array()
        }
        Some("string") => v.is_string(),
        Some("integer") => v.is_u64() || v.is_i64(),
        Some("number") => v.is_number(),
        Some("boolean") => v.is_boolean(),
        _ => true,
    };
    if !ok {
        errs.push(format!("{at}: {v} is not a {}", schema["type"]));
    }
}
