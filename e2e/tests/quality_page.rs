//! The data quality page in real Chromium, against the real `ingest-server` binary and
//! ClickHouse: a site with the starter tracking plan and two critical fields receives a day of
//! realistic trouble (a browser whose clock is 5 minutes fast, a broken release that drops
//! `revenue` and misspells `Product Added`, orders the backend reports differently, a retried
//! batch, refused events, and a product page whose views fell to a tenth of the last 7 days').
//! The browser opens `GET /quality`, types the read key into the form, and the test checks that
//! the page loads without console errors or outside requests, that every figure on it equals
//! `GET /v1/quality`'s, and writes a screenshot to `target/e2e/quality-page.png` (the README's
//! is a copy).

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};
use waymark_e2e::{repo_root, require, wait_for, READ_KEY, SITE, WRITE_KEY};
use waymark_testkit::config::plan::Completeness;
use waymark_testkit::config::{site, HumanDuration, IngestConfig};
use waymark_testkit::free_port;

const HOUR: i64 = 3_600_000;
const DAY: i64 = 24 * HOUR;

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

fn iso(ms: i64) -> String {
    waymark_protocol::time::format_rfc3339(ms)
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .timeout_global(Some(Duration::from_secs(30)))
        .http_status_as_error(false)
        .build()
        .into()
}

fn send(ingest: &str, batch: Value) -> Value {
    let mut r = agent()
        .post(format!("{ingest}/v1/batch"))
        // base64("wk_demo:")
        .header("authorization", "Basic d2tfZGVtbzo=")
        .header("content-type", "application/json")
        .send(batch.to_string())
        .expect("POST /v1/batch");
    assert_eq!(r.status().as_u16(), 200);
    serde_json::from_str(&r.body_mut().read_to_string().unwrap()).unwrap()
}

/// The browser's events: the tag's library name, its clock 5 minutes fast.
fn browser_batch(now: i64, events: Vec<Value>) -> Value {
    let ahead = now + 300_000;
    let events: Vec<Value> = events
        .into_iter()
        .map(|mut e| {
            e["originalTimestamp"] = json!(iso(ahead - 2_000));
            e["context"] = json!({"library": {"name": "waymark.js", "version": "0.1.0"},
                "userAgent": "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/156.0 Safari/537.36"});
            e
        })
        .collect();
    json!({"batch": events, "sentAt": iso(ahead)})
}

fn track(id: String, anon: &str, event: &str, props: Value) -> Value {
    json!({"type": "track", "event": event, "messageId": id, "anonymousId": anon, "properties": props})
}

/// Sends the day's traffic; returns how many events should be stored.
fn seed(ingest: &str) -> usize {
    let now = now_ms();
    let last_hour = now - now.rem_euclid(HOUR) - HOUR;
    let mut stored = 0;
    // Product Viewed: 40 in the same hour of each of the last 7 days, 4 in the last hour.
    let mut history = Vec::new();
    for d in 0..=7 {
        for j in 0..if d == 0 { 4 } else { 40 } {
            let mut e = track(
                format!("pv-{d}-{j}"),
                &format!("v{j}"),
                "Product Viewed",
                json!({"product_id": format!("p-10{}", j % 4), "price": 20.0}),
            );
            e["timestamp"] = json!(iso(last_hour - d * DAY + j * 60_000));
            history.push(e);
        }
    }
    stored += history.len();
    send(ingest, json!({"batch": history}));
    // The browser: 20 shoppers; the last 5 met the broken release.
    let mut events = Vec::new();
    for i in 0..20 {
        let anon = format!("shopper-{i}");
        let broken = i >= 15;
        events.push(
            json!({"type": "page", "messageId": format!("pg-{i}"), "anonymousId": anon,
            "properties": {"path": "/products/p-100"}}),
        );
        events.push(track(
            format!("add-{i}"),
            &anon,
            if broken {
                "Product Add"
            } else {
                "Product Added"
            },
            json!({"product_id": "p-100", "price": 20.0, "quantity": 1}),
        ));
        if i % 2 == 0 {
            let mut props = json!({"order_id": format!("o-{i}"), "currency": "EUR",
                "products": [{"product_id": "p-100", "price": 20.0, "quantity": 1}]});
            if !broken {
                props["revenue"] = json!(20.0);
            }
            events.push(track(format!("ord-{i}"), &anon, "Order Completed", props));
        }
    }
    stored += events.len();
    let browser = browser_batch(now, events);
    send(ingest, browser.clone());
    // The same batch again (a retry after a lost answer): every event a duplicate.
    send(ingest, browser);
    // The backend's view of the orders: o-4 with another revenue, and o-90, which the browser
    // never reported (a phone app's order, say).
    let mut backend = Vec::new();
    for i in (0..20).step_by(2) {
        let revenue = if i == 4 { 25.0 } else { 20.0 };
        backend.push(
            json!({"type": "track", "event": "Order Completed", "messageId": format!("srv-{i}"),
            "userId": format!("u-{i}"), "timestamp": iso(now),
            "properties": {"order_id": format!("o-{i}"), "revenue": revenue, "currency": "EUR"},
            "context": {"library": {"name": "analytics-node", "version": "6.2.0"}}}),
        );
    }
    backend.push(
        json!({"type": "track", "event": "Order Completed", "messageId": "srv-90",
        "userId": "u-90", "timestamp": iso(now),
        "properties": {"order_id": "o-90", "revenue": 55.0, "currency": "EUR"},
        "context": {"library": {"name": "analytics-node", "version": "6.2.0"}}}),
    );
    stored += backend.len();
    send(ingest, json!({"batch": backend}));
    // Events the protocol refuses.
    let r = send(
        ingest,
        json!({"batch": [
            {"type": "track", "messageId": "bad-1", "anonymousId": "x"},
            {"type": "track", "event": "Order Completed", "messageId": "bad-2"},
            {"type": "bogus", "messageId": "bad-3", "anonymousId": "x"},
        ]}),
    );
    assert_eq!(r["rejected"].as_array().map(Vec::len), Some(3), "{r}");
    stored
}

fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("target"))
}

/// A figure as the page shows it (`page::fig` in the server).
fn shown(v: &Value, fmt: &str) -> String {
    match (fmt, v.as_f64()) {
        ("pct", Some(x)) => format!("{:.1}%", x * 100.0),
        ("ms", Some(x)) => format!("{x} ms"),
        (_, Some(_)) => v.to_string(),
        _ => v.as_str().map(str::to_string).unwrap_or_default(),
    }
}

#[test]
fn the_quality_page_shows_what_the_json_says_in_chromium() {
    let root = repo_root();
    let ingest_bin = waymark_testkit::ingest::debug_binary();
    require(&ingest_bin, "build it with `cargo build -p waymark-ingest`");
    require(
        &root.join("js/node_modules/playwright-core"),
        "run `npm ci` in js/ (cargo xtask test does)",
    );
    let mut shop = site(SITE, WRITE_KEY, &[]);
    shop.tracking_plan = Some(root.join("ingest-server/plans/segment-ecommerce.json"));
    shop.completeness = vec![
        Completeness {
            event: "Order Completed".into(),
            field: "properties.revenue".into(),
            min: 1.0,
        },
        Completeness {
            event: "Product Added".into(),
            field: "properties.price".into(),
            min: 0.95,
        },
    ];
    let config = IngestConfig::new()
        .port(free_port())
        .writer_max_age(Duration::from_millis(200))
        .site(shop)
        .read_key(READ_KEY, &[SITE])
        .with(|c| c.quality.flush = HumanDuration(Duration::from_millis(200)));
    let stack = waymark_testkit::Stack::builder(&ingest_bin, config)
        .start()
        .unwrap_or_else(|e| panic!("{e}"));
    let ingest = stack.ingest_url();
    let db = stack.database.clone();
    let sql = |q: &str| {
        stack
            .ch
            .query(&q.replace("{db}", &db))
            .unwrap_or_else(|e| panic!("{e}"))
    };

    let stored = seed(&ingest);
    wait_for("every event in ClickHouse", 60, || {
        (sql("SELECT count() FROM {db}.events").trim() == stored.to_string()).then_some(())
    });
    wait_for("the duplicates counted in quality_hourly", 60, || {
        (sql("SELECT sum(value) FROM {db}.quality_hourly WHERE metric = 'duplicate'").trim() != "0")
            .then_some(())
    });

    let out = target_dir().join("e2e");
    std::fs::create_dir_all(&out).unwrap();
    let png = out.join("quality-page.png");
    let _ = std::fs::remove_file(&png);
    let run = Command::new("node")
        .arg(root.join("e2e/browser/quality_page.mjs"))
        .args(["--url", &format!("{ingest}/quality?site={SITE}")])
        .args(["--key", READ_KEY])
        .arg("--out")
        .arg(&png)
        .output()
        .expect("running node e2e/browser/quality_page.mjs");
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert!(
        run.status.success(),
        "quality_page.mjs failed ({}):\n{stdout}\n{}",
        run.status,
        String::from_utf8_lossy(&run.stderr)
    );
    let page: Value = serde_json::from_str(stdout.lines().last().unwrap_or_default())
        .unwrap_or_else(|e| panic!("quality_page.mjs printed {stdout:?}: {e}"));

    // The JSON, for the same window (the form's default: the last 24 hours).
    let mut r = agent()
        .get(format!("{ingest}/v1/quality?site={SITE}&since=24h"))
        .header("authorization", format!("Bearer {READ_KEY}"))
        .call()
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let report: Value = serde_json::from_str(&r.body_mut().read_to_string().unwrap()).unwrap();

    assert_eq!(page["status"], 200, "{page}");
    assert_eq!(page["errors"], json!([]), "no console errors: {page}");
    assert!(
        !page["url"].as_str().unwrap().contains(READ_KEY),
        "the key stays out of the URL"
    );
    for url in page["requests"].as_array().unwrap() {
        assert!(
            url.as_str().unwrap().starts_with(&ingest),
            "the page loads nothing from elsewhere: {url}"
        );
    }
    assert!(page["svgs"].as_u64().unwrap() >= 6, "{}", page["svgs"]);

    let figures = page["figures"].as_array().unwrap();
    assert!(figures.len() > 40, "{} figures", figures.len());
    for f in figures {
        let pointer = f["q"].as_str().unwrap();
        if pointer == "/since" || pointer == "/until" {
            continue; // "24h ago" and "now" moved on between the two requests
        }
        let on_page: Value = serde_json::from_str(f["v"].as_str().unwrap()).unwrap();
        let in_json = report
            .pointer(pointer)
            .unwrap_or_else(|| panic!("{pointer} is not in the JSON"));
        assert_eq!(&on_page, in_json, "{pointer}");
        assert_eq!(
            f["text"].as_str().unwrap(),
            shown(in_json, f["fmt"].as_str().unwrap()),
            "{pointer} as shown"
        );
    }

    // What the day's trouble must show, worst first.
    let checks: Vec<&str> = report["problems"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["check"].as_str().unwrap())
        .collect();
    for want in [
        "volume",
        "violations",
        "completeness",
        "consistency",
        "rejects",
    ] {
        assert!(checks.contains(&want), "{want} in {checks:?}");
    }
    let c = &report["consistency"];
    assert_eq!(
        (&c["orders"], &c["browser_only"], &c["backend_only"]),
        (&json!(11), &json!(0), &json!(1)),
        "{c}"
    );
    assert_eq!(
        c["revenue_mismatches"], 3,
        "o-4 (20 vs 25), o-16 and o-18 (no revenue in the browser): {c}"
    );
    assert_eq!(
        report["intake"]["duplicates_dropped"], 50,
        "{}",
        report["intake"]
    );
    assert_eq!(report["clock"]["corrected"], 50, "{}", report["clock"]);

    let size = std::fs::metadata(&png).map(|m| m.len()).unwrap_or(0);
    assert!(size > 20_000, "{} is {size} bytes", png.display());
    println!("screenshot: {}", png.display());
}
