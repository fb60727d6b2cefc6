//! Shared helpers for the query API tests: one real ClickHouse per test binary, a database per
//! test with the real migrations, rows inserted through the ingest server's own ClickHouse sink
//! (events plus the identity links they carry, so the materialized views fire as in production),
//! and the query router called in-process.
#![allow(dead_code)]

use std::sync::{Arc, OnceLock};

use axum::body::Body;
use axum::http::{Request, StatusCode};
use serde_json::Value;
use tower::ServiceExt;
use waymark_ingest::config::{ClickHouseConfig, HumanDuration};
use waymark_ingest::query::identity::IdentityIndex;
use waymark_ingest::query::{QueryConfig, QueryState};
use waymark_ingest::store::row::EventRow;
use waymark_ingest::store::{ClickHouseSink, SchemaStatus, Sink};
use waymark_testkit::{ClickHouse, IngestConfig};

pub const SHOP_KEY: &str = "rk_shop";
pub const OTHER_KEY: &str = "rk_other";
/// Reads both sites, and may manage their subscriptions (`subscribe = true`).
pub const BOTH_KEY: &str = "rk_both";
/// The admin key of `shop` (deletes and exports; `crate::privacy`).
pub const ADMIN_KEY: &str = "ak_shop_0123456789";
pub const DAY: i64 = 86_400_000;
pub const HOUR: i64 = 3_600_000;
pub const MINUTE: i64 = 60_000;

static CLICKHOUSE: OnceLock<ClickHouse> = OnceLock::new();

pub fn clickhouse() -> &'static ClickHouse {
    CLICKHOUSE.get_or_init(|| ClickHouse::start().unwrap_or_else(|e| panic!("{e}")))
}

/// A blocking ClickHouse query from async code.
pub fn sql(sql: &str) -> String {
    tokio::task::block_in_place(|| clickhouse().query(sql)).unwrap_or_else(|e| panic!("{e}"))
}

/// The server's clock (`waymark_ingest::clock`).
pub fn now_ms() -> i64 {
    waymark_ingest::clock::now_ms()
}

/// A test database with the ingest server's migrations (including the query API's).
pub struct Db {
    pub name: String,
    pub ch: ClickHouseConfig,
    sink: ClickHouseSink,
}

impl Db {
    pub async fn new() -> Db {
        Db::new_at(&clickhouse().http_url()).await
    }

    /// The same, with the server's clients talking to ClickHouse at `url` (a recording proxy
    /// in front of it, in `clickhouse_parity.rs`); the database is made directly.
    pub async fn new_at(url: &str) -> Db {
        let ch = clickhouse();
        let name = tokio::task::block_in_place(|| ch.fresh_database()).unwrap();
        let cfg = IngestConfig::new()
            .clickhouse(url, &name)
            .config()
            .clickhouse
            .clone();
        let client = waymark_ingest::store::client(&cfg);
        let schema = std::sync::Arc::new(waymark_ingest::store::SchemaStatus::default());
        waymark_ingest::store::migrate(&client, &name, &schema)
            .await
            .unwrap_or_else(|e| panic!("migrations: {e}"));
        assert!(schema.is_ready());
        Db {
            sink: ClickHouseSink::new(&cfg, schema),
            name,
            ch: cfg,
        }
    }

    /// Inserts rows as the ingest writer does (one insert = one block for the views).
    pub async fn insert(&self, rows: &[EventRow]) {
        self.sink
            .insert(rows)
            .await
            .unwrap_or_else(|e| panic!("insert: {e}"));
    }

    /// The query state with read keys: shop, other, and one for both plus `extra_sites`.
    /// Ids are resolved in ClickHouse (no identity index).
    pub fn state(&self, extra_sites: &[&str]) -> QueryState {
        QueryState::new(&query_config(extra_sites), &self.ch)
    }

    /// The same state resolving ids with an identity index, loaded from ClickHouse once
    /// (refresh it again with `IdentityIndex::refresh`).
    pub async fn indexed_state(&self) -> (QueryState, Arc<IdentityIndex>) {
        let ix = Arc::new(IdentityIndex::new(1_000));
        let st = QueryState::with_schema(
            &query_config(&[]),
            &self.ch,
            Arc::new(SchemaStatus::ready_now()),
            Some(ix.clone()),
        );
        ix.refresh(&st)
            .await
            .unwrap_or_else(|e| panic!("loading the identity index: {e}"));
        (st, ix)
    }

    /// A sink that adds the links it inserts to `ix` first, as the server's writer does.
    pub fn sink_into(&self, ix: &Arc<IdentityIndex>) -> ClickHouseSink {
        ClickHouseSink::new(&self.ch, Arc::new(SchemaStatus::ready_now()))
            .with_identities(Some(ix.clone()))
    }
}

fn query_config(extra_sites: &[&str]) -> QueryConfig {
    let mut both = vec!["shop", "other"];
    both.extend_from_slice(extra_sites);
    IngestConfig::new()
        .read_key(SHOP_KEY, &["shop"])
        .read_key(OTHER_KEY, &["other"])
        .read_key(BOTH_KEY, &both)
        // The key for both sites may also manage subscriptions (triggers).
        .with(|c| c.query.read_keys[2].subscribe = true)
        // Every request reads ClickHouse (the cache has its own test).
        .with(|c| c.query.cache_ttl = HumanDuration(std::time::Duration::ZERO))
        .config()
        .query
        .clone()
}

/// An event row with the fields every test sets; the rest via struct update.
pub fn row(
    site: &str,
    anon: &str,
    user: &str,
    msg: &str,
    kind: &str,
    event: &str,
    ts: i64,
) -> EventRow {
    EventRow {
        site: site.into(),
        visitor_id: if anon.is_empty() {
            user.into()
        } else {
            anon.into()
        },
        message_id: msg.into(),
        kind: kind.into(),
        event: event.into(),
        anonymous_id: anon.into(),
        user_id: user.into(),
        timestamp: (ts / 1000) as u32,
        timestamp_ms: ts,
        skew_rule: "explicit".into(),
        client_time: (ts / 1000) as u32,
        received_at_ms: ts,
        sent_at_ms: ts,
        source: "api".into(),
        properties: "{}".into(),
        traits: "{}".into(),
        context: "{}".into(),
        ..EventRow::default()
    }
}

pub struct Answer {
    pub status: StatusCode,
    pub content_type: String,
    pub text: String,
}

impl Answer {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.text).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text))
    }
}

/// Calls the query router in-process.
pub async fn call(
    st: &QueryState,
    method: &str,
    uri: &str,
    key: Option<&str>,
    body: Option<&str>,
    accept: Option<&str>,
) -> Answer {
    let mut req = Request::builder().method(method).uri(uri);
    if let Some(k) = key {
        req = req.header("authorization", format!("Bearer {k}"));
    }
    if let Some(a) = accept {
        req = req.header("accept", a);
    }
    if body.is_some() {
        req = req.header("content-type", "application/json");
    }
    let req = req
        .body(
            body.map(|b| Body::from(b.to_string()))
                .unwrap_or_else(Body::empty),
        )
        .unwrap();
    let privacy = waymark_ingest::privacy::PrivacyState::new(
        &waymark_ingest::config::PrivacyConfig {
            admin_keys: vec![waymark_ingest::config::AdminKey {
                name: "test".into(),
                key: ADMIN_KEY.into(),
                sites: vec!["shop".into()],
            }],
            ..Default::default()
        },
        st.clone(),
        Arc::default(),
        None,
    );
    let identity = waymark_ingest::identity::IdentityState::new(
        st.clone(),
        privacy.clone(),
        vec![waymark_ingest::config::SiteConfig {
            id: "shop".into(),
            ..Default::default()
        }],
    );
    let app: axum::Router = waymark_ingest::query::router(st.clone())
        .merge(waymark_ingest::privacy::router(privacy))
        .merge(waymark_ingest::identity::router(identity))
        .merge(waymark_ingest::triggers::api::router(
            st.clone(),
            waymark_ingest::config::TriggersConfig::default(),
        ))
        .merge(waymark_ingest::query::quality::router(
            waymark_ingest::query::quality::QualityState::new(
                st.clone(),
                &waymark_ingest::Config::default(),
            ),
        ));
    let resp = app.oneshot(req).await.unwrap();
    let status = resp.status();
    let content_type = resp
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let bytes = axum::body::to_bytes(resp.into_body(), 64 << 20)
        .await
        .unwrap();
    Answer {
        status,
        content_type,
        text: String::from_utf8(bytes.to_vec()).unwrap(),
    }
}

pub async fn get(st: &QueryState, uri: &str, key: &str) -> Answer {
    call(st, "GET", uri, Some(key), None, None).await
}

pub async fn post(st: &QueryState, uri: &str, key: &str, body: &str) -> Answer {
    call(st, "POST", uri, Some(key), Some(body), None).await
}

/// Percent-encodes a query-string value.
pub fn enc(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

pub fn time(ms: i64) -> String {
    waymark_protocol::time::format_rfc3339(ms)
}

fn geo(mut r: EventRow, country: &str, region: &str, city: &str, tz: &str) -> EventRow {
    r.country = country.into();
    r.region = region.into();
    r.city = city.into();
    r.geo_timezone = tz.into();
    r
}

fn device(mut r: EventRow, kind: &str, browser: &str, os: &str) -> EventRow {
    r.device_type = kind.into();
    r.browser = browser.into();
    r.os = os.into();
    r
}

fn page(mut r: EventRow, session: &str, url: &str, title: &str) -> EventRow {
    r.session_id = session.into();
    r.page_url = url.into();
    r.page_title = title.into();
    r
}

fn product(mut r: EventRow, id: &str, name: &str, price: Option<f64>) -> EventRow {
    r.product_id = id.into();
    r.product_name = name.into();
    r.price = price;
    if price.is_some() {
        r.quantity = Some(1.0);
        r.currency = "EUR".into();
    }
    r.properties = serde_json::json!({"product_id": id, "name": name, "price": price}).to_string();
    r
}

fn engagement(mut r: EventRow, product_id: &str, ms: u64) -> EventRow {
    r.product_id = product_id.into();
    r.engaged_ms = ms;
    r.scroll_depth = 50;
    r.properties =
        serde_json::json!({"engaged_ms": ms, "scroll_depth": 50, "product_id": product_id})
            .to_string();
    r
}

fn order(mut r: EventRow, order_id: &str, revenue: f64) -> EventRow {
    r.order_id = order_id.into();
    r.revenue = Some(revenue);
    r.currency = "EUR".into();
    r.properties = serde_json::json!({"order_id": order_id, "revenue": revenue, "currency": "EUR"})
        .to_string();
    r
}

fn session(mut r: EventRow, s: &str) -> EventRow {
    r.session_id = s.into();
    r
}

fn traits(mut r: EventRow, t: serde_json::Value) -> EventRow {
    r.traits = t.to_string();
    r
}

/// Alice: two devices (anonymous ids a1, a2) stitched to user `alice` by identify calls, with
/// a server-side order under the bare user id. Timestamps relative to `now`.
pub fn alice(now: i64) -> Vec<EventRow> {
    let s = "shop";
    let fr = |r| {
        device(
            geo(r, "FR", "Ile-de-France", "Paris", "Europe/Paris"),
            "desktop",
            "Chrome",
            "Windows 10",
        )
    };
    let de = |r| {
        device(
            geo(r, "DE", "Berlin", "Berlin", "Europe/Berlin"),
            "mobile",
            "Safari",
            "iOS",
        )
    };
    vec![
        fr(page(
            row(s, "a1", "", "m1", "page", "", now - 40 * DAY),
            "s0",
            "https://shop.example/old",
            "Old",
        )),
        fr(page(
            row(s, "a1", "", "m2", "page", "", now - 10 * DAY),
            "s1",
            "https://shop.example/p/1",
            "P1",
        )),
        fr(session(
            product(
                row(
                    s,
                    "a1",
                    "",
                    "m3",
                    "track",
                    "Product Viewed",
                    now - 10 * DAY + MINUTE,
                ),
                "p1",
                "Shoe",
                None,
            ),
            "s1",
        )),
        fr(session(
            engagement(
                row(
                    s,
                    "a1",
                    "",
                    "m4",
                    "track",
                    "$engagement",
                    now - 10 * DAY + 2 * MINUTE,
                ),
                "p1",
                30_000,
            ),
            "s1",
        )),
        fr(traits(
            row(s, "a1", "alice", "m5", "identify", "", now - 9 * DAY),
            serde_json::json!({"email": "alice@example.com", "plan": "pro"}),
        )),
        de(page(
            row(s, "a2", "alice", "m6", "page", "", now - 2 * DAY),
            "s2",
            "https://shop.example/p/2",
            "P2",
        )),
        de(session(
            product(
                row(
                    s,
                    "a2",
                    "alice",
                    "m7",
                    "track",
                    "Product Viewed",
                    now - 2 * DAY + MINUTE,
                ),
                "p2",
                "Hat",
                None,
            ),
            "s2",
        )),
        de(session(
            engagement(
                row(
                    s,
                    "a2",
                    "alice",
                    "m8",
                    "track",
                    "$engagement",
                    now - 2 * DAY + 2 * MINUTE,
                ),
                "p2",
                45_000,
            ),
            "s2",
        )),
        de(session(
            product(
                row(
                    s,
                    "a2",
                    "alice",
                    "m9",
                    "track",
                    "Product Viewed",
                    now - 2 * DAY + 3 * MINUTE,
                ),
                "p1",
                "Shoe",
                None,
            ),
            "s2",
        )),
        de(session(
            product(
                row(
                    s,
                    "a2",
                    "alice",
                    "m10",
                    "track",
                    "Product Added",
                    now - 2 * DAY + 4 * MINUTE,
                ),
                "p2",
                "Hat",
                Some(20.0),
            ),
            "s2",
        )),
        de(session(
            order(
                row(
                    s,
                    "a2",
                    "alice",
                    "m11",
                    "track",
                    "Order Completed",
                    now - 2 * DAY + HOUR,
                ),
                "o1",
                59.98,
            ),
            "s2",
        )),
        de(session(
            product(
                row(
                    s,
                    "a2",
                    "alice",
                    "m12",
                    "track",
                    "Product Added",
                    now - 3 * HOUR,
                ),
                "p1",
                "Shoe",
                Some(30.0),
            ),
            "s3",
        )),
        de(traits(
            row(s, "a2", "alice", "m13", "identify", "", now - DAY),
            serde_json::json!({"email": "alice@example.com", "plan": "enterprise"}),
        )),
        order(
            row(
                s,
                "",
                "alice",
                "m14",
                "track",
                "Order Completed",
                now - 20 * DAY,
            ),
            "o2",
            100.0,
        ),
    ]
}

/// Everyone else: server-side customers for the RFM quintiles, and three carts.
pub fn others(now: i64) -> Vec<EventRow> {
    let s = "shop";
    let mut rows = Vec::new();
    let mut orders = |user: &str, n: usize, revenue: f64, latest_days: i64| {
        for i in 0..n {
            let ts = now - (latest_days + i as i64) * DAY;
            rows.push(order(
                row(
                    s,
                    "",
                    user,
                    &format!("{user}-m{i}"),
                    "track",
                    "Order Completed",
                    ts,
                ),
                &format!("{user}-o{i}"),
                revenue,
            ));
        }
    };
    orders("bob", 1, 10.0, 100);
    orders("carol", 3, 20.0, 50);
    orders("dave", 4, 100.0, 5);
    orders("erin", 5, 100.0, 200);
    let fr = |r| geo(r, "FR", "", "Lyon", "Europe/Paris");
    let de = |r| geo(r, "DE", "", "Hamburg", "Europe/Berlin");
    // Carl: added 10 minutes ago (not yet abandoned).
    rows.push(fr(page(
        row(s, "c1", "", "c-m1", "page", "", now - 20 * MINUTE),
        "sc",
        "https://shop.example/p/3",
        "P3",
    )));
    rows.push(fr(product(
        row(
            s,
            "c1",
            "",
            "c-m2",
            "track",
            "Product Added",
            now - 10 * MINUTE,
        ),
        "p3",
        "Scarf",
        Some(15.0),
    )));
    // Dora: added 5 hours ago, removed it 4 hours ago (empty cart).
    rows.push(de(product(
        row(
            s,
            "d1",
            "",
            "d-m1",
            "track",
            "Product Added",
            now - 5 * HOUR,
        ),
        "p4",
        "Belt",
        Some(25.0),
    )));
    rows.push(de(product(
        row(
            s,
            "d1",
            "",
            "d-m2",
            "track",
            "Product Removed",
            now - 4 * HOUR,
        ),
        "p4",
        "Belt",
        None,
    )));
    // Eve: added 30 hours ago, no order (abandoned, but outside a 24h audience).
    rows.push(de(product(
        row(
            s,
            "e1",
            "",
            "e-m1",
            "track",
            "Product Added",
            now - 30 * HOUR,
        ),
        "p5",
        "Coat",
        Some(99.0),
    )));
    rows
}

/// Another site with its own `alice`, who must never show up on `shop`.
pub fn other_site(now: i64) -> Vec<EventRow> {
    let s = "other";
    vec![
        geo(
            page(
                row(s, "x1", "alice", "o-m1", "page", "", now - 3 * HOUR),
                "so",
                "https://other.example/",
                "Other",
            ),
            "DE",
            "",
            "Munich",
            "Europe/Berlin",
        ),
        geo(
            product(
                row(
                    s,
                    "x1",
                    "alice",
                    "o-m2",
                    "track",
                    "Product Added",
                    now - 2 * HOUR,
                ),
                "p9",
                "Lamp",
                Some(5.0),
            ),
            "DE",
            "",
            "Munich",
            "Europe/Berlin",
        ),
    ]
}

/// Seeds every fixture, each batch inserted twice (as a spool replay would) plus a retried
/// engagement event with a later corrected time: no figure may double.
pub async fn seed(db: &Db, now: i64) {
    let mut all = alice(now);
    all.extend(others(now));
    all.extend(other_site(now));
    db.insert(&all).await;
    db.insert(&all).await;
    let mut retry = alice(now)[3].clone();
    retry.timestamp_ms += 2_000;
    retry.timestamp = (retry.timestamp_ms / 1000) as u32;
    retry.received_at_ms += 2_000;
    db.insert(&[retry]).await;
}
