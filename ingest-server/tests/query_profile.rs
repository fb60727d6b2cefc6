//! Profiles and event history against real ClickHouse: exact figures from known histories
//! (identity stitching, cart, RFM, windows, engagement, products, orders, latest geo / device /
//! traits), duplicates that must not double anything, read-key scoping, and the cache.

mod query_support;

use axum::http::StatusCode;
use query_support::*;
use serde_json::{json, Value};
use waymark_ingest::query::identity::IdentityIndex;
use waymark_ingest::query::QueryState;
use waymark_ingest::store::Sink;

fn profile_of(answer: &Answer) -> Value {
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.text);
    answer.json()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn profile_figures_are_exact_with_stitching_and_duplicates() {
    let db = Db::new().await;
    let now = now_ms();
    seed(&db, now).await;
    let st = db.state(&[]);

    let p = profile_of(&get(&st, "/v1/profiles/alice?site=shop", SHOP_KEY).await);
    assert_eq!(p["id"], "alice");
    assert_eq!(p["site"], "shop");
    assert_eq!(p["user_id"], "alice");
    assert_eq!(p["anonymous_ids"], json!(["a1", "a2"]));
    // Events before the identify (a1, 40 days ago) count for the user.
    assert_eq!(p["first_seen"], time(now - 40 * DAY));
    assert_eq!(p["last_seen"], time(now - 3 * HOUR));
    assert_eq!(
        p["last_page"],
        json!({"url": "https://shop.example/p/2", "title": "P2", "time": time(now - 2 * DAY)})
    );
    assert_eq!(
        p["counts"],
        json!({
            "last_7_days": {"sessions": 2, "page_views": 1, "events": 8},
            "last_30_days": {"sessions": 3, "page_views": 2, "events": 13},
        })
    );
    // 30 s (a1, before identify) + 45 s (a2); the retried engagement event counts once.
    assert_eq!(
        p["engagement"],
        json!({"engaged_ms_30_days": 75_000, "bucket": "medium"})
    );
    assert_eq!(
        p["recently_viewed"],
        json!([
            {"product_id": "p1", "name": "Shoe", "last_viewed": time(now - 2 * DAY + 3 * MINUTE), "views": 2, "engaged_ms": 30_000},
            {"product_id": "p2", "name": "Hat", "last_viewed": time(now - 2 * DAY + 2 * MINUTE), "views": 1, "engaged_ms": 45_000},
        ])
    );
    // Ranked by attention, p2 (45 s engaged) comes before the more recent p1 (30 s).
    let ranked: Vec<&str> = p["products_by_attention"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x["product_id"].as_str().unwrap())
        .collect();
    assert_eq!(ranked, vec!["p2", "p1"]);
    assert_eq!(p["products_by_attention"][0]["engaged_ms"], 45_000);
    // p2 was added before order o1; p1 was added after it, 3 hours ago (> 1h): abandoned.
    assert_eq!(
        p["cart"],
        json!({
            "products": [{"product_id": "p1", "name": "Shoe", "price": 30.0, "quantity": 1.0, "currency": "EUR",
                          "added_at": time(now - 3 * HOUR)}],
            "last_added_at": time(now - 3 * HOUR),
            "abandoned": true,
        })
    );
    assert_eq!(
        p["orders"],
        json!({"count": 2, "revenue": 159.98, "currency": "EUR", "last_order_at": time(now - 2 * DAY + HOUR),
               "average_order_value": 79.99})
    );
    // Customers: bob (100 d, 1, 10), carol (50 d, 3, 60), dave (5 d, 4, 400), erin (200 d, 5,
    // 500), alice (1 d, 2, 159.98): alice is the most recent (5), second by frequency (2),
    // third by money (3).
    assert_eq!(
        p["rfm"],
        json!({"recency_days": 1, "frequency": 2, "monetary": 159.98, "r_score": 5, "f_score": 2, "m_score": 3,
               "site_customers": 5})
    );
    assert_eq!(
        p["geo"],
        json!({"country": "DE", "region": "Berlin", "city": "Berlin", "timezone": "Europe/Berlin", "time": time(now - 3 * HOUR)})
    );
    assert_eq!(
        p["device"],
        json!({"type": "mobile", "browser": "Safari", "os": "iOS", "time": time(now - 3 * HOUR)})
    );
    assert_eq!(
        p["traits"],
        json!({"email": "alice@example.com", "plan": "enterprise"})
    );
    assert_eq!(p["traits_at"], time(now - DAY));

    // Either anonymous id resolves to the same person.
    for anon in ["a1", "a2"] {
        let q = profile_of(&get(&st, &format!("/v1/profiles/{anon}?site=shop"), SHOP_KEY).await);
        assert_eq!(q, p, "profile via {anon}");
    }

    // Everything sent a third time, as separate inserts: nothing changes.
    let mut again = alice(now);
    again.extend(others(now));
    for r in again {
        db.insert(&[r]).await;
    }
    let q = profile_of(&get(&st, "/v1/profiles/alice?site=shop", SHOP_KEY).await);
    assert_eq!(q, p, "re-sent events changed the profile");

    // And after ClickHouse merges the parts.
    for t in [
        "events",
        "q_visitor",
        "q_visitor_days",
        "q_visitor_products",
        "q_orders",
        "q_history",
    ] {
        sql(&format!("OPTIMIZE TABLE {}.{t} FINAL", db.name));
    }
    let q = profile_of(&get(&st, "/v1/profiles/alice?site=shop", SHOP_KEY).await);
    assert_eq!(q, p, "merging changed the profile");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn carts_rfm_and_anonymous_visitors() {
    let db = Db::new().await;
    let now = now_ms();
    seed(&db, now).await;
    let st = db.state(&[]);

    // Carl: anonymous, added 10 minutes ago: a cart, not abandoned yet.
    let c = profile_of(&get(&st, "/v1/profiles/c1?site=shop", SHOP_KEY).await);
    assert_eq!(c["id"], "c1");
    assert_eq!(c["user_id"], Value::Null);
    assert_eq!(c["anonymous_ids"], json!(["c1"]));
    assert_eq!(c["cart"]["abandoned"], false);
    assert_eq!(c["cart"]["last_added_at"], time(now - 10 * MINUTE));
    assert_eq!(c["cart"]["products"][0]["product_id"], "p3");
    assert_eq!(
        c["counts"]["last_7_days"],
        json!({"sessions": 1, "page_views": 1, "events": 2})
    );
    assert_eq!(c["recently_viewed"], json!([]));
    assert_eq!(c["products_by_attention"], json!([]));
    assert_eq!(
        c["engagement"],
        json!({"engaged_ms_30_days": 0, "bucket": "short"})
    );
    assert_eq!(
        c["rfm"],
        json!({"recency_days": null, "frequency": 0, "monetary": 0.0, "r_score": null, "f_score": null,
               "m_score": null, "site_customers": 5})
    );
    assert_eq!(c["orders"]["count"], 0);
    assert_eq!(c["traits"], json!({}));
    assert_eq!(c["device"], Value::Null);

    // Dora: added then removed: empty cart.
    let d = profile_of(&get(&st, "/v1/profiles/d1?site=shop", SHOP_KEY).await);
    assert_eq!(
        d["cart"],
        json!({"products": [], "last_added_at": null, "abandoned": false})
    );
    assert_eq!(d["last_page"], Value::Null);

    // Eve: added 30 hours ago, nothing since: abandoned.
    let e = profile_of(&get(&st, "/v1/profiles/e1?site=shop", SHOP_KEY).await);
    assert_eq!(e["cart"]["abandoned"], true);

    // Server-side customers by bare user id: quintile scores.
    let expect = [
        ("bob", 100, 1, 10.0, [2, 1, 1]),
        ("carol", 50, 3, 60.0, [3, 3, 2]),
        ("dave", 5, 4, 400.0, [4, 4, 4]),
        ("erin", 200, 5, 500.0, [1, 5, 5]),
    ];
    for (user, r, f, m, s) in expect {
        let p = profile_of(&get(&st, &format!("/v1/profiles/{user}?site=shop"), SHOP_KEY).await);
        assert_eq!(p["user_id"], user);
        assert_eq!(p["anonymous_ids"], json!([]));
        assert_eq!(
            p["rfm"],
            json!({"recency_days": r, "frequency": f, "monetary": m, "r_score": s[0], "f_score": s[1], "m_score": s[2], "site_customers": 5}),
            "{user}"
        );
    }

    // Unknown ids: 404 naming the id.
    let a = get(&st, "/v1/profiles/nobody?site=shop", SHOP_KEY).await;
    assert_eq!(a.status, StatusCode::NOT_FOUND);
    assert_eq!(a.json()["field"], "id");
    let a = get(&st, "/v1/profiles/nobody/events?site=shop", SHOP_KEY).await;
    assert_eq!(a.status, StatusCode::NOT_FOUND);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_keys_never_cross_sites() {
    let db = Db::new().await;
    let now = now_ms();
    seed(&db, now).await;
    let st = db.state(&[]);

    // Same user id on two sites: each key sees its own site's alice only.
    let shop = profile_of(&get(&st, "/v1/profiles/alice?site=shop", SHOP_KEY).await);
    let other = profile_of(&get(&st, "/v1/profiles/alice?site=other", OTHER_KEY).await);
    assert_eq!(other["site"], "other");
    assert_eq!(other["anonymous_ids"], json!(["x1"]));
    assert_eq!(other["counts"]["last_30_days"]["events"], 2);
    assert_eq!(other["geo"]["city"], "Munich");
    assert_eq!(shop["counts"]["last_30_days"]["events"], 13);
    let both = profile_of(&get(&st, "/v1/profiles/alice?site=other", BOTH_KEY).await);
    assert_eq!(both, other);

    // A key for one site asking for another: 403, and no data in the body.
    for (uri, key) in [
        ("/v1/profiles/alice?site=other", SHOP_KEY),
        ("/v1/profiles/alice?site=shop", OTHER_KEY),
        ("/v1/profiles/alice/events?site=other", SHOP_KEY),
    ] {
        let a = get(&st, uri, key).await;
        assert_eq!(a.status, StatusCode::FORBIDDEN, "{uri}");
        assert_eq!(a.json()["error"], "forbidden");
        assert!(
            !a.text.contains("Munich") && !a.text.contains("x1"),
            "{}",
            a.text
        );
    }
    let a = post(
        &st,
        "/v1/audiences/query?site=other",
        SHOP_KEY,
        r#"{"conditions":[{"type":"did","event":"Product Added"}]}"#,
    )
    .await;
    assert_eq!(a.status, StatusCode::FORBIDDEN);

    // No key, an unknown key, a malformed header: 401. No site: 400 naming it.
    let a = call(&st, "GET", "/v1/profiles/alice?site=shop", None, None, None).await;
    assert_eq!(a.status, StatusCode::UNAUTHORIZED);
    assert_eq!(a.json()["field"], "authorization");
    let a = get(&st, "/v1/profiles/alice?site=shop", "rk_guess").await;
    assert_eq!(a.status, StatusCode::UNAUTHORIZED);
    let a = get(&st, "/v1/profiles/alice", SHOP_KEY).await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST);
    assert_eq!(a.json()["field"], "site");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn event_history_pages_newest_first_without_duplicates() {
    let db = Db::new().await;
    let now = now_ms();
    seed(&db, now).await;
    let st = db.state(&[]);

    let ids = |v: &Value| -> Vec<String> {
        v["events"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["message_id"].as_str().unwrap().to_string())
            .collect()
    };
    let mut seen = Vec::new();
    let mut uri = "/v1/profiles/a1/events?site=shop&limit=5".to_string();
    let mut pages = 0;
    loop {
        let a = get(&st, &uri, SHOP_KEY).await;
        assert_eq!(a.status, StatusCode::OK, "{}", a.text);
        let v = a.json();
        assert_eq!(v["id"], "alice");
        seen.push(ids(&v));
        pages += 1;
        match v["next_before"].as_str() {
            Some(c) => uri = format!("/v1/profiles/a1/events?site=shop&limit=5&before={}", enc(c)),
            None => break,
        }
        assert!(pages < 10, "too many pages");
    }
    assert_eq!(
        seen,
        vec![
            vec!["m12", "m13", "m11", "m10", "m9"],
            vec!["m8", "m7", "m6", "m5", "m4"],
            vec!["m3", "m2", "m14", "m1"],
        ]
    );

    let a = get(
        &st,
        "/v1/profiles/alice/events?site=shop&type=page",
        SHOP_KEY,
    )
    .await;
    let v = a.json();
    assert_eq!(ids(&v), vec!["m6", "m2", "m1"]);
    assert_eq!(
        v["events"][0]["page"],
        json!({"url": "https://shop.example/p/2", "title": "P2"})
    );
    assert_eq!(v["events"][0]["timestamp"], time(now - 2 * DAY));
    assert_eq!(v["next_before"], Value::Null);
    let a = get(
        &st,
        &format!(
            "/v1/profiles/alice/events?site=shop&name={}",
            enc("Product Viewed")
        ),
        SHOP_KEY,
    )
    .await;
    let v = a.json();
    assert_eq!(ids(&v), vec!["m9", "m7", "m3"]);
    assert_eq!(v["events"][0]["properties"]["product_id"], "p1");
    // `before` as a time.
    let a = get(
        &st,
        &format!(
            "/v1/profiles/alice/events?site=shop&before={}",
            enc(&time(now - 9 * DAY))
        ),
        SHOP_KEY,
    )
    .await;
    assert_eq!(ids(&a.json()), vec!["m4", "m3", "m2", "m14", "m1"]);

    // Bad parameters name themselves.
    for (q, field) in [
        ("limit=0", "limit"),
        ("limit=abc", "limit"),
        ("type=pageview", "type"),
        ("before=zz", "before"),
    ] {
        let a = get(
            &st,
            &format!("/v1/profiles/alice/events?site=shop&{q}"),
            SHOP_KEY,
        )
        .await;
        assert_eq!(a.status, StatusCode::BAD_REQUEST, "{q}");
        assert_eq!(a.json()["field"], field, "{q}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cache_serves_repeats_until_its_ttl() {
    let db = Db::new().await;
    let now = now_ms();
    db.insert(&[row("shop", "v1", "", "k1", "page", "", now - HOUR)])
        .await;
    let cfg = waymark_ingest::query::QueryConfig {
        read_keys: vec![waymark_ingest::query::ReadKey {
            key: SHOP_KEY.into(),
            sites: vec!["shop".into()],
            subscribe: false,
        }],
        cache_ttl: waymark_ingest::config::HumanDuration(std::time::Duration::from_secs(3600)),
        ..Default::default()
    };
    let st = waymark_ingest::query::QueryState::new(&cfg, &db.ch);
    let first = get(&st, "/v1/profiles/v1?site=shop", SHOP_KEY).await.json();
    assert_eq!(first["counts"]["last_7_days"]["events"], 1);
    db.insert(&[row("shop", "v1", "", "k2", "page", "", now - HOUR)])
        .await;
    let cached = get(&st, "/v1/profiles/v1?site=shop", SHOP_KEY).await.json();
    assert_eq!(cached, first, "served from the cache");
    // The cache is keyed by site too: another key's answer for another site is not reused.
    let a = get(&st, "/v1/profiles/v1?site=other", SHOP_KEY).await;
    assert_eq!(a.status, StatusCode::FORBIDDEN);
    // A fresh state (no cache) sees the new event.
    let fresh = get(&db.state(&[]), "/v1/profiles/v1?site=shop", SHOP_KEY)
        .await
        .json();
    assert_eq!(fresh["counts"]["last_7_days"]["events"], 2);
}

/// Every site and id the fixtures hold: visitor ids and user ids.
fn ids_in(db: &Db) -> Vec<(String, String)> {
    sql(&format!(
        "SELECT DISTINCT site, id FROM (
    SELECT site, visitor_id AS id FROM {db}.events
    UNION ALL SELECT site, user_id AS id FROM {db}.events WHERE user_id != ''
    UNION ALL SELECT site, anonymous_id AS id FROM {db}.identities)
ORDER BY site, id FORMAT TSV",
        db = db.name
    ))
    .lines()
    .filter_map(|l| l.split_once('\t'))
    .map(|(s, i)| (s.to_string(), i.to_string()))
    .chain([("shop".to_string(), "nobody".to_string())])
    .collect()
}

/// Resolution, profile and history of every id agree between the SQL lookup and the index.
async fn same_answers(db: &Db, plain: &QueryState, indexed: &QueryState, ix: &IdentityIndex) {
    let ids = ids_in(db);
    assert!(ids.len() >= 10, "fixtures: {ids:?}");
    for (site, id) in &ids {
        let by_sql = waymark_ingest::query::profile::resolve_in_clickhouse(plain, site, id)
            .await
            .unwrap();
        let by_index = ix.resolve(site, id).expect("the index is loaded");
        assert_eq!(
            (&by_index.user_id, &by_index.anonymous_ids),
            (&by_sql.user_id, &by_sql.anonymous_ids),
            "{site} {id}"
        );
        // The index may leave out a user id without events of its own, nothing else.
        let dropped: Vec<&String> = by_sql
            .visitors
            .iter()
            .filter(|v| !by_index.visitors.contains(v))
            .collect();
        assert!(
            dropped.iter().all(|v| Some(*v) == by_sql.user_id.as_ref()),
            "{site} {id}: {by_index:?} against {by_sql:?}"
        );
        for uri in [
            format!("/v1/profiles/{id}?site={site}"),
            format!("/v1/profiles/{id}/events?site={site}&limit=5"),
        ] {
            let a = get(plain, &uri, BOTH_KEY).await;
            let b = get(indexed, &uri, BOTH_KEY).await;
            assert_eq!((a.status, &a.text), (b.status, &b.text), "{uri}");
        }
    }
}

/// The in-memory identity index answers as the SQL lookup does; it loads links other servers
/// wrote (parts of `identities` it has not read), takes this server's links before they are
/// inserted, and neither loses nor doubles a link when parts merge.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_identity_index_answers_as_the_sql_lookup_does() {
    let db = Db::new().await;
    let now = now_ms();
    seed(&db, now).await;
    let plain = db.state(&[]);
    let (indexed, ix) = db.indexed_state().await;
    same_answers(&db, &plain, &indexed, &ix).await;

    // Another server's links: straight into `identities`, not through this process.
    let other_server = |user: &str, anon: &str, at_ms: i64| {
        sql(&format!(
            "INSERT INTO {}.identities (site, user_id, anonymous_id, linked_at, message_id, source_type)
VALUES ('shop', '{user}', '{anon}', {}, 'm-{user}-{anon}', 'identify')",
            db.name,
            at_ms / 1000
        ));
    };
    other_server("zed", "z1", now);
    assert_eq!(
        ix.resolve("shop", "z1").unwrap().user_id,
        None,
        "not read yet"
    );
    // Before the index reads a link, a person known only through it is still found: the
    // index's 404 is checked against ClickHouse.
    other_server("yan", "y1", now);
    db.insert(&[row("shop", "y1", "", "m-y1", "page", "", now)])
        .await;
    assert_eq!(ix.resolve("shop", "yan").unwrap().visitors, vec!["yan"]);
    for uri in [
        "/v1/profiles/yan?site=shop",
        "/v1/profiles/yan/events?site=shop",
    ] {
        let a = get(&indexed, uri, BOTH_KEY).await;
        assert_eq!(a.status, 200, "{uri}: {}", a.text);
        assert!(a.text.contains("y1"), "{uri}: {}", a.text);
    }
    assert_eq!(
        get(&indexed, "/v1/profiles/nobody-at-all?site=shop", BOTH_KEY)
            .await
            .status,
        404
    );
    assert_eq!(
        ix.refresh(&indexed).await.unwrap(),
        2,
        "only the new parts are read (two links)"
    );
    assert_eq!(
        ix.resolve("shop", "z1").unwrap().user_id.as_deref(),
        Some("zed")
    );
    // a1 (alice's) relinked to zed later; then every part merged into one, which holds blocks
    // already read and one not read yet.
    other_server("zed", "a1", now + HOUR);
    sql(&format!("OPTIMIZE TABLE {}.identities FINAL", db.name));
    ix.refresh(&indexed).await.unwrap();
    assert_eq!(
        ix.resolve("shop", "a1").unwrap().user_id.as_deref(),
        Some("zed")
    );
    same_answers(&db, &plain, &indexed, &ix).await;
    // Another server's event without an anonymous id: zed becomes a visitor id too.
    db.insert(&[row("shop", "", "zed", "m-zed", "track", "Signed Up", now)])
        .await;
    assert!(!ix
        .resolve("shop", "zed")
        .unwrap()
        .visitors
        .contains(&"zed".to_string()));
    ix.refresh(&indexed).await.unwrap();
    assert_eq!(
        ix.resolve("shop", "z1").unwrap().visitors,
        vec!["zed", "a1", "z1"]
    );
    same_answers(&db, &plain, &indexed, &ix).await;
    let held: usize = sql(&format!(
        "SELECT (SELECT count() FROM (SELECT DISTINCT site, user_id, anonymous_id FROM {0}.identities))
    + (SELECT count() FROM (SELECT DISTINCT site, user_id FROM {0}.q_user_visitors))",
        db.name
    ))
    .trim()
    .parse()
    .unwrap();
    assert_eq!(ix.links(), Some(held));

    // This server's writer adds links and users before inserting them: no refresh needed.
    db.sink_into(&ix)
        .insert(&[
            row("shop", "n1", "nina", "m-n1", "identify", "", now),
            row("shop", "", "nina", "m-n2", "track", "Signed Up", now),
        ])
        .await
        .unwrap();
    assert_eq!(
        ix.resolve("shop", "n1").unwrap().visitors,
        vec!["nina", "n1"]
    );
    same_answers(&db, &plain, &indexed, &ix).await;

    // An index too small for the table turns itself off before reading it; the state then
    // resolves in ClickHouse and answers the same.
    let small = std::sync::Arc::new(IdentityIndex::new(2));
    let st = QueryState::with_schema(
        &waymark_ingest::query::QueryConfig {
            read_keys: vec![waymark_ingest::query::ReadKey {
                key: SHOP_KEY.into(),
                sites: vec!["shop".into()],
                subscribe: false,
            }],
            cache_ttl: waymark_ingest::config::HumanDuration(std::time::Duration::ZERO),
            ..Default::default()
        },
        &db.ch,
        std::sync::Arc::new(waymark_ingest::store::SchemaStatus::ready_now()),
        Some(small.clone()),
    );
    assert_eq!(small.refresh(&st).await.unwrap(), 0, "nothing read");
    assert_eq!((small.links(), small.resolve("shop", "a1")), (None, None));
    let a = get(&plain, "/v1/profiles/alice?site=shop", SHOP_KEY).await;
    let b = get(&st, "/v1/profiles/alice?site=shop", SHOP_KEY).await;
    assert_eq!((a.status, a.text), (b.status, b.text));
}
