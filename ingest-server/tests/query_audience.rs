//! Audiences against real ClickHouse: exact members for known histories, pagination, NDJSON
//! streaming, site scoping, and hostile strings in every field of the query.

mod query_support;

use axum::http::StatusCode;
use query_support::*;
use serde_json::{json, Value};

fn members(a: &Answer) -> Vec<String> {
    assert_eq!(a.status, StatusCode::OK, "{}", a.text);
    a.json()["members"]
        .as_array()
        .unwrap_or_else(|| panic!("{}", a.text))
        .iter()
        .map(|m| m["id"].as_str().unwrap().to_string())
        .collect()
}

async fn audience(
    st: &waymark_ingest::query::QueryState,
    site: &str,
    key: &str,
    q: Value,
) -> Answer {
    post(
        st,
        &format!("/v1/audiences/query?site={}", enc(site)),
        key,
        &q.to_string(),
    )
    .await
}

fn cart_abandoners() -> Vec<Value> {
    vec![
        json!({"type": "did", "event": "Product Added", "within": "24h"}),
        json!({"type": "did_not", "event": "Order Completed", "within": "24h"}),
        json!({"type": "last_seen_within", "within": "7d"}),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audiences_return_exactly_the_expected_people() {
    let db = Db::new().await;
    let now = now_ms();
    seed(&db, now).await;
    let st = db.state(&[]);
    let q = |conds: Vec<Value>| json!({"conditions": conds});

    // Added within 24h, no order within 24h, seen within 7 days: alice (3 h ago, her order
    // was 2 days ago), carl (10 min), dora (5 h; removing it does not undo "did add").
    // Eve added 30 h ago; the other site's alice is not on this site.
    let a = audience(&st, "shop", SHOP_KEY, q(cart_abandoners())).await;
    assert_eq!(members(&a), ["alice", "c1", "d1"]);
    let body = a.json();
    let first = &body["members"][0];
    assert_eq!(first["user_id"], "alice");
    assert_eq!(first["last_seen"], time(now - 3 * HOUR));
    assert_eq!(
        first["geo"],
        json!({"country": "DE", "region": "Berlin", "city": "Berlin", "timezone": "Europe/Berlin"})
    );
    assert_eq!(
        first["traits"],
        json!({"email": "alice@example.com", "plan": "enterprise"})
    );
    assert_eq!(body["members"][1]["user_id"], Value::Null);
    assert_eq!(body["next_cursor"], Value::Null);
    assert_eq!(body["count"], 3);

    let mut with_de = cart_abandoners();
    with_de.push(json!({"type": "geo", "field": "country", "op": "eq", "value": "DE"}));
    assert_eq!(
        members(&audience(&st, "shop", SHOP_KEY, q(with_de)).await),
        ["alice", "d1"]
    );
    let mut with_in = cart_abandoners();
    with_in.push(json!({"type": "geo", "field": "city", "op": "in", "value": ["Lyon", "Hamburg"]}));
    assert_eq!(
        members(&audience(&st, "shop", SHOP_KEY, q(with_in)).await),
        ["c1", "d1"]
    );
    // The same query on the other site finds only its own alice.
    let a = audience(&st, "other", OTHER_KEY, q(cart_abandoners())).await;
    assert_eq!(members(&a), ["alice"]);
    assert_eq!(a.json()["members"][0]["geo"]["city"], "Munich");

    // Latest traits only.
    let t = |v: &str| {
        q(vec![
            json!({"type": "trait", "name": "plan", "op": "eq", "value": v}),
        ])
    };
    assert_eq!(
        members(&audience(&st, "shop", SHOP_KEY, t("enterprise")).await),
        ["alice"]
    );
    assert!(members(&audience(&st, "shop", SHOP_KEY, t("pro")).await).is_empty());

    // Counts across stitched devices: p1 was viewed once on a1 (before identify) and once on a2.
    let viewed = |min: u64, product: Option<&str>| {
        let mut c = json!({"type": "did", "event": "Product Viewed", "min_count": min});
        if let Some(p) = product {
            c["where"] = json!([{"property": "product_id", "op": "eq", "value": p}]);
        }
        q(vec![c])
    };
    assert_eq!(
        members(&audience(&st, "shop", SHOP_KEY, viewed(2, Some("p1"))).await),
        ["alice"]
    );
    assert!(members(&audience(&st, "shop", SHOP_KEY, viewed(3, Some("p1"))).await).is_empty());
    assert_eq!(
        members(&audience(&st, "shop", SHOP_KEY, viewed(3, None)).await),
        ["alice"]
    );
    assert!(members(&audience(&st, "shop", SHOP_KEY, viewed(4, None)).await).is_empty());
    // Numeric property filters; orders over 50 within 30 days: alice (59.98), dave (100s).
    let big = q(vec![
        json!({"type": "did", "event": "Order Completed", "within": "30d",
        "where": [{"property": "revenue", "op": "gt", "value": 50}]}),
    ]);
    assert_eq!(
        members(&audience(&st, "shop", SHOP_KEY, big).await),
        ["alice", "dave"]
    );
    // Page views ($page) within 30 days.
    let pages = q(vec![
        json!({"type": "did", "event": "$page", "within": "30d"}),
    ]);
    assert_eq!(
        members(&audience(&st, "shop", SHOP_KEY, pages).await),
        ["alice", "c1"]
    );

    // Only a negative condition: everyone on the site who never added to a cart.
    let never = json!({"conditions": [{"type": "did_not", "event": "Product Added"}], "limit": 2});
    let a = audience(&st, "shop", SHOP_KEY, never.clone()).await;
    assert_eq!(members(&a), ["bob", "carol"]);
    let cursor = a.json()["next_cursor"]
        .as_str()
        .expect("a second page")
        .to_string();
    let mut next = never.clone();
    next["cursor"] = json!(cursor);
    let a = audience(&st, "shop", SHOP_KEY, next).await;
    assert_eq!(members(&a), ["dave", "erin"]);
    assert_eq!(a.json()["next_cursor"], Value::Null);

    // NDJSON: the whole audience, one member per line, no cursor.
    let a = call(
        &st,
        "POST",
        "/v1/audiences/query?site=shop",
        Some(SHOP_KEY),
        Some(&never.to_string()),
        Some("application/x-ndjson"),
    )
    .await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(a.content_type, "application/x-ndjson");
    let lines: Vec<Value> = a
        .text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let ids: Vec<&str> = lines.iter().map(|m| m["id"].as_str().unwrap()).collect();
    assert_eq!(ids, ["bob", "carol", "dave", "erin"]);

    // Duplicates sent again do not change membership or counts.
    let mut again = alice(now);
    again.extend(others(now));
    db.insert(&again).await;
    assert_eq!(
        members(&audience(&st, "shop", SHOP_KEY, viewed(3, None)).await),
        ["alice"]
    );
    assert!(members(&audience(&st, "shop", SHOP_KEY, viewed(4, None)).await).is_empty());
}

/// Strings that would break naive SQL building (or the client's `?` placeholders).
const HOSTILE: &[&str] = &[
    "'",
    "\\",
    "\\'",
    "''",
    "'; DROP TABLE events; --",
    "\\'; DROP TABLE q_visitor; --",
    "\") OR 1=1 --",
    "' OR '1'='1",
    "x\0y",
    "\0",
    "é漢字🙂",
    "?",
    "??",
    "?fields",
    "{db}",
    "`events`",
    "\n\r\t",
    "%s",
    "a'||'b",
    "\\x27",
    "*/ /*",
    "\u{202e}",
    "1e400",
];

/// A value that really is stored, and must be matched exactly.
const STORED: &str = "x'\"; DROP TABLE events; -- \\ é漢🙂 ? {db}";
const HOSTILE_USER: &str = "u'; DROP TABLE identities; --\\é";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_strings_in_every_field_stay_inert() {
    let db = Db::new().await;
    let now = now_ms();
    seed(&db, now).await;
    // Someone whose product id and traits are hostile, stitched to a hostile user id.
    let mut add = row(
        "shop",
        "h1",
        HOSTILE_USER,
        "h-m1",
        "track",
        "Product Added",
        now - 40 * DAY,
    );
    add.product_id = STORED.into();
    add.properties = json!({"product_id": STORED}).to_string();
    let mut ident = row(
        "shop",
        "h1",
        HOSTILE_USER,
        "h-m2",
        "identify",
        "",
        now - 40 * DAY,
    );
    ident.traits = json!({"plan": STORED}).to_string();
    db.insert(&[add, ident]).await;

    let hostile_sites: Vec<&str> = HOSTILE.to_vec();
    let st = db.state(&hostile_sites);
    let tables = sql(&format!(
        "SELECT name FROM system.tables WHERE database = '{}' ORDER BY name",
        db.name
    ));
    let counts = || {
        sql(&format!(
            "SELECT (SELECT count() FROM {0}.events), (SELECT count() FROM {0}.identities), (SELECT count() FROM {0}.q_visitor), (SELECT count() FROM {0}.q_events_by_name)",
            db.name
        ))
    };
    let before = counts();
    let q = |conds: Vec<Value>| json!({"conditions": conds});
    let baseline = ["alice", "c1", "d1"];

    // Stored hostile values are matched exactly, as data.
    let a = audience(
        &st,
        "shop",
        SHOP_KEY,
        q(vec![json!({"type": "did", "event": "Product Added",
        "where": [{"property": "product_id", "op": "eq", "value": STORED}]})]),
    )
    .await;
    assert_eq!(members(&a), [HOSTILE_USER]);
    let a = audience(
        &st,
        "shop",
        SHOP_KEY,
        q(vec![
            json!({"type": "trait", "name": "plan", "op": "eq", "value": STORED}),
        ]),
    )
    .await;
    assert_eq!(members(&a), [HOSTILE_USER]);
    let p = get(
        &st,
        &format!("/v1/profiles/{}?site=shop", enc(HOSTILE_USER)),
        SHOP_KEY,
    )
    .await;
    assert_eq!(p.status, StatusCode::OK, "{}", p.text);
    assert_eq!(p.json()["traits"]["plan"], STORED);
    assert_eq!(p.json()["anonymous_ids"], json!(["h1"]));

    for s in HOSTILE {
        let ctx = format!("hostile {s:?}");
        let with = |extra: Value| {
            let mut c = cart_abandoners();
            c.push(extra);
            q(c)
        };
        // Values: nothing matches them, and conditions that exclude them keep the baseline.
        for cond in [
            json!({"type": "did", "event": s}),
            json!({"type": "did", "event": "Product Added", "where": [{"property": "product_id", "op": "eq", "value": s}]}),
            json!({"type": "did", "event": "Product Added", "where": [{"property": s, "op": "eq", "value": "p1"}]}),
            json!({"type": "did", "event": "Product Added", "where": [{"property": "product_id", "op": "in", "value": [s, "zz"]}]}),
            json!({"type": "did", "event": "Product Added", "where": [{"property": "product_id", "op": "contains", "value": format!("{s}\u{1}")}]}),
            json!({"type": "geo", "field": "country", "op": "eq", "value": s}),
            json!({"type": "geo", "field": "city", "op": "in", "value": [s]}),
            json!({"type": "trait", "name": s, "op": "eq", "value": "enterprise"}),
            json!({"type": "trait", "name": "plan", "op": "eq", "value": s}),
        ] {
            let a = audience(&st, "shop", SHOP_KEY, q(vec![cond.clone()])).await;
            assert!(members(&a).is_empty(), "{ctx}: {cond} matched {}", a.text);
        }
        for cond in [
            json!({"type": "did_not", "event": s, "within": "24h"}),
            json!({"type": "geo", "field": "country", "op": "neq", "value": s}),
            json!({"type": "trait", "name": "plan", "op": "neq", "value": s}),
            json!({"type": "trait", "name": s, "op": "neq", "value": s}),
        ] {
            let a = audience(&st, "shop", SHOP_KEY, with(cond.clone())).await;
            assert_eq!(members(&a), baseline, "{ctx}: {cond}");
        }
        // The cursor: an opaque hex string of the last member; any content pages correctly.
        let hex: String = s.bytes().map(|b| format!("{b:02x}")).collect();
        let mut paged = q(cart_abandoners());
        paged["cursor"] = json!(hex);
        let expect: Vec<&str> = baseline.iter().copied().filter(|m| *m > *s).collect();
        assert_eq!(
            members(&audience(&st, "shop", SHOP_KEY, paged).await),
            expect,
            "{ctx}: cursor"
        );
        // The site: a key may list odd site names; they hold nothing.
        let a = audience(&st, s, BOTH_KEY, q(cart_abandoners())).await;
        assert!(members(&a).is_empty(), "{ctx}: site");
        let a = get(
            &st,
            &format!("/v1/profiles/alice?site={}", enc(s)),
            BOTH_KEY,
        )
        .await;
        assert_eq!(a.status, StatusCode::NOT_FOUND, "{ctx}: profile site");
        let a = get(
            &st,
            &format!(
                "/v1/profiles/alice/events?site=shop&name={}&before={}",
                enc(s),
                enc(s)
            ),
            SHOP_KEY,
        )
        .await;
        assert!(
            a.status == StatusCode::OK || a.status == StatusCode::BAD_REQUEST,
            "{ctx}: events {}",
            a.text
        );
        // Identifiers and keywords: refused, naming the field.
        for (cond, field) in [
            (
                json!({"type": "geo", "field": s, "op": "eq", "value": "DE"}),
                "conditions[0].field",
            ),
            (
                json!({"type": "geo", "field": "country", "op": s, "value": "DE"}),
                "conditions[0].op",
            ),
            (json!({"type": s}), "conditions[0].type"),
            (
                json!({"type": "did", "event": "x", "within": s}),
                "conditions[0].within",
            ),
        ] {
            let a = audience(&st, "shop", SHOP_KEY, q(vec![cond.clone()])).await;
            assert_eq!(a.status, StatusCode::BAD_REQUEST, "{ctx}: {cond}");
            assert_eq!(a.json()["field"], field, "{ctx}: {cond}");
        }
        let mut raw = q(cart_abandoners());
        raw["cursor"] = json!(s);
        let a = audience(&st, "shop", SHOP_KEY, raw).await;
        assert_eq!(a.status, StatusCode::BAD_REQUEST, "{ctx}: raw cursor");
        let mut odd = json!({"type": "did", "event": "x"});
        odd[*s] = json!(1);
        let a = audience(&st, "shop", SHOP_KEY, q(vec![odd])).await;
        assert_eq!(a.status, StatusCode::BAD_REQUEST, "{ctx}: unknown key");
    }

    // Nothing was dropped or changed, and the answers are still right.
    assert_eq!(
        sql(&format!(
            "SELECT name FROM system.tables WHERE database = '{}' ORDER BY name",
            db.name
        )),
        tables
    );
    assert_eq!(counts(), before);
    assert_eq!(
        members(&audience(&st, "shop", SHOP_KEY, q(cart_abandoners())).await),
        baseline
    );
}
