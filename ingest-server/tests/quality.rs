//! Data quality at intake, against the real ClickHouse: events checked against the shipped
//! starter tracking plan and the site's critical fields, violations and missing fields stored
//! on the row and counted in /metrics; a rejecting plan refuses what breaks it; a plan that
//! cannot be read or compiled stops the config with its name.

mod common;

use std::time::Duration;

use common::{clickhouse, iso, now_ms, query, wait_for, Server, WRITE_KEY};
use serde_json::{json, Value};
use waymark_ingest::config::plan::{Completeness, OnViolation, TrackingPlan};
use waymark_ingest::Config;

fn starter_plan() -> TrackingPlan {
    TrackingPlan::read(
        &std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("plans/segment-ecommerce.json"),
    )
    .unwrap()
}

async fn server(on_violation: OnViolation) -> Server {
    Server::start_with(clickhouse(), |c| {
        let mut plan = starter_plan();
        plan.on_violation = on_violation;
        let shop = &mut c.sites[0];
        shop.plan = Some(plan);
        shop.completeness = vec![
            Completeness {
                event: "identify".into(),
                field: "traits.email".into(),
                min: 0.95,
            },
            Completeness {
                event: "Order Completed".into(),
                field: "properties.revenue".into(),
                min: 1.0,
            },
        ];
    })
    .await
}

/// A batch: a good order, an order without revenue, a misspelled event, an identify without
/// an email, one with a bad email, and the tag's own engagement event.
fn batch(prefix: &str) -> Value {
    let at = iso(now_ms());
    let ev = |id: &str, body: Value| {
        let mut e =
            json!({"messageId": format!("{prefix}-{id}"), "anonymousId": "a1", "timestamp": at});
        e.as_object_mut()
            .unwrap()
            .extend(body.as_object().unwrap().clone());
        e
    };
    json!({"batch": [
        ev("1-good", json!({"type": "track", "event": "Order Completed", "properties": {"order_id": "o1", "revenue": 30.0, "currency": "EUR"}})),
        ev("2-norevenue", json!({"type": "track", "event": "Order Completed", "properties": {"order_id": "o2", "currency": "EUR"}})),
        ev("3-misspelled", json!({"type": "track", "event": "Order Complete", "properties": {"order_id": "o3"}})),
        ev("4-noemail", json!({"type": "identify", "userId": "u1", "traits": {"name": "Ada"}})),
        ev("5-bademail", json!({"type": "identify", "userId": "u2", "traits": {"email": "ada at example"}})),
        ev("6-engagement", json!({"type": "track", "event": "$engagement", "properties": {"engaged_ms": 1000}})),
    ]})
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

/// The value of the /metrics series named `name` whose labels include every pair of `labels`.
async fn metric(srv: &Server, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let text = common::http()
        .get(srv.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines().find_map(|l| {
        let rest = l.strip_prefix(name)?.strip_prefix('{')?;
        let (labels_text, value) = rest.rsplit_once("} ")?;
        labels
            .iter()
            .all(|(k, v)| labels_text.split(',').any(|p| p == format!("{k}=\"{v}\"")))
            .then(|| value.trim().parse().ok())?
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flagged_events_are_stored_with_their_violations_and_missing_fields() {
    let ch = clickhouse();
    let mut srv = server(OnViolation::Flag).await;
    let answer = send(&srv, &batch("f")).await;
    assert_eq!(answer["accepted"], 6, "{answer}");
    assert_eq!(answer["rejected"], json!([]), "{answer}");

    let sql = format!(
        "SELECT message_id, violations, missing FROM {}.events ORDER BY message_id FORMAT TSV",
        srv.db
    );
    let got = wait_for(
        ch,
        &format!("SELECT count() FROM {}.events", srv.db),
        "6",
        Duration::from_secs(30),
    )
    .await;
    assert_eq!(got, "6");
    let rows = query(ch, &sql);
    let want = [
        "f-1-good\t[]\t[]",
        "f-2-norevenue\t['required_missing:properties.revenue']\t['properties.revenue']",
        "f-3-misspelled\t['unplanned_event:event']\t[]",
        "f-4-noemail\t[]\t['traits.email']",
        "f-5-bademail\t['format:traits.email']\t[]",
        "f-6-engagement\t[]\t[]",
    ];
    assert_eq!(rows.trim().lines().collect::<Vec<_>>(), want, "{rows}");

    let site = ("site", "shop");
    for (name, labels, want) in [
        ("waymark_quality_checked_total", vec![site], 6.0),
        (
            "waymark_quality_violations_total",
            vec![
                site,
                ("event", "Order Completed"),
                ("kind", "required_missing"),
            ],
            1.0,
        ),
        (
            "waymark_quality_violations_total",
            vec![site, ("event", "$unplanned"), ("kind", "unplanned_event")],
            1.0,
        ),
        (
            "waymark_quality_violations_total",
            vec![site, ("event", "identify"), ("kind", "format")],
            1.0,
        ),
        (
            "waymark_quality_field_checked_total",
            vec![site, ("event", "identify"), ("field", "traits.email")],
            2.0,
        ),
        (
            "waymark_quality_field_missing_total",
            vec![site, ("event", "identify"), ("field", "traits.email")],
            1.0,
        ),
        (
            "waymark_quality_field_checked_total",
            vec![
                site,
                ("event", "Order Completed"),
                ("field", "properties.revenue"),
            ],
            2.0,
        ),
        (
            "waymark_quality_field_missing_total",
            vec![
                site,
                ("event", "Order Completed"),
                ("field", "properties.revenue"),
            ],
            1.0,
        ),
        (
            "waymark_quality_field_min",
            vec![site, ("event", "identify"), ("field", "traits.email")],
            0.95,
        ),
    ] {
        assert_eq!(
            metric(&srv, name, &labels).await,
            Some(want),
            "{name} {labels:?}"
        );
    }
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rejecting_plan_refuses_what_breaks_it_and_keeps_the_rest() {
    let ch = clickhouse();
    let mut srv = server(OnViolation::Reject).await;
    let answer = send(&srv, &batch("r")).await;
    assert_eq!(answer["accepted"], 3, "{answer}");
    let rejected = answer["rejected"].as_array().unwrap();
    let got: Vec<(u64, &str)> = rejected
        .iter()
        .map(|r| (r["index"].as_u64().unwrap(), r["field"].as_str().unwrap()))
        .collect();
    assert_eq!(
        got,
        [(1, "properties.revenue"), (2, "event"), (4, "traits.email")],
        "{answer}"
    );
    assert!(
        rejected[0]["reason"]
            .as_str()
            .unwrap()
            .contains("required_missing"),
        "{answer}"
    );
    // A missing critical field alone does not reject (identify without an email is kept).
    let ids = wait_for(
        ch,
        &format!("SELECT arrayStringConcat(groupArray(message_id), ',') FROM (SELECT message_id FROM {}.events ORDER BY message_id)", srv.db),
        "r-1-good,r-4-noemail,r-6-engagement",
        Duration::from_secs(30),
    )
    .await;
    assert_eq!(ids, "r-1-good,r-4-noemail,r-6-engagement");

    // Under Sec-GPC the identify leaves before the plan sees the batch; the rejections still
    // name the events' places in the batch as sent.
    let at = iso(now_ms());
    let gpc_batch = json!({"batch": [
        {"type": "identify", "messageId": "g-0", "anonymousId": "a2", "userId": "u3", "traits": {"email": "bad"}, "timestamp": at},
        {"type": "track", "event": "Order Completed", "messageId": "g-1", "anonymousId": "a2", "properties": {"order_id": "o4"}, "timestamp": at},
        {"type": "track", "event": "Order Complete", "messageId": "g-2", "anonymousId": "a2", "timestamp": at},
    ]});
    let resp = common::http()
        .post(srv.url("/v1/batch"))
        .basic_auth(WRITE_KEY, Some(""))
        .header("content-type", "application/json")
        .header("sec-gpc", "1")
        .body(gpc_batch.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let answer: Value = resp.json().await.unwrap();
    let got: Vec<(u64, &str)> = answer["rejected"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| (r["index"].as_u64().unwrap(), r["field"].as_str().unwrap()))
        .collect();
    assert_eq!(
        got,
        [(1, "properties.revenue"), (2, "event")],
        "positions in the batch as sent: {answer}"
    );
    srv.stop().await;
}

#[test]
fn a_plan_that_cannot_be_read_or_compiled_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let config = |plan: &str| {
        let path = dir.path().join("ingest.toml");
        std::fs::write(
            &path,
            format!(
                "[clickhouse]\nurl = \"http://127.0.0.1:1\"\n[spool]\ndir = \"{}\"\n[[sites]]\nid = \"shop\"\nwrite_keys = [\"wk\"]\ntracking_plan = \"{plan}\"\n",
                dir.path().join("spool").display()
            ),
        )
        .unwrap();
        Config::load(&path).map(|_| ()).map_err(|e| e.to_string())
    };
    let err = config("plans/none.json").unwrap_err();
    assert!(
        err.contains("sites[0].tracking_plan") && err.contains("none.json"),
        "{err}"
    );

    std::fs::create_dir_all(dir.path().join("plans")).unwrap();
    std::fs::write(
        dir.path().join("plans/bad.json"),
        r#"{"track": {"Order Completed": {"properties": {"type": "objekt"}}}}"#,
    )
    .unwrap();
    let err = config("plans/bad.json").unwrap_err();
    assert!(
        err.contains("sites[0].tracking_plan")
            && err.contains(r#"track."Order Completed".properties"#),
        "{err}"
    );
    std::fs::write(dir.path().join("plans/typo.json"), r#"{"trak": {}}"#).unwrap();
    let err = config("plans/typo.json").unwrap_err();
    assert!(err.contains("trak"), "{err}");

    // Relative to the config file's directory, and the shipped plan loads.
    std::fs::copy(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("plans/segment-ecommerce.json"),
        dir.path().join("plans/shop.json"),
    )
    .unwrap();
    config("plans/shop.json").unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_quality_columns_migration_finishes_after_a_crash_between_its_steps() {
    use waymark_ingest::store::{self, SchemaStatus};
    let ch = clickhouse();
    let db = tokio::task::block_in_place(|| ch.fresh_database()).unwrap();
    let c = store::client(&waymark_ingest::config::ClickHouseConfig {
        url: ch.http_url(),
        ..Default::default()
    });
    store::migrate_up_to(&c, &db, 110).await.unwrap();
    // As if a crash came after the first column was added and before the migration was
    // recorded: the next start adds the other one and records it.
    query(
        ch,
        &format!("ALTER TABLE {db}.events ADD COLUMN violations Array(String)"),
    );
    let newly = store::migrate(&c, &db, &SchemaStatus::default())
        .await
        .unwrap();
    assert!(newly.contains(&113), "{newly:?}");
    let cols = query(
        ch,
        &format!("SELECT name, type FROM system.columns WHERE database = '{db}' AND table = 'events' AND name IN ('violations', 'missing') ORDER BY name FORMAT TSV"),
    );
    assert_eq!(
        cols.trim(),
        "missing\tArray(String)\nviolations\tArray(String)"
    );
    assert!(store::migrate(&c, &db, &SchemaStatus::default())
        .await
        .unwrap()
        .is_empty());
}
