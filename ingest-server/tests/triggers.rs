//! Triggers against real ClickHouse and a webhook receiver on 127.0.0.1: the deliveries of a
//! generated history match a recomputation of who entered and left when; a person who orders
//! inside the window never enters; a restart loses no pending delivery and sends none twice;
//! dead letters show in the API and in /metrics.

mod query_support;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode};
use query_support::*;
use serde_json::{json, Value};
use waymark_ingest::metrics::Metrics;
use waymark_ingest::triggers::{subscription, Deliverer, Evaluator};
use waymark_protocol::edge::{verify, HEADER_SIGNATURE, HEADER_TIMESTAMP};

const SECRET: &str = "receiver-secret-0123456789";

/// What the receiver saw: every request (key, status it answered, verified body).
#[derive(Default)]
struct Seen {
    requests: Vec<(String, u16, Value)>,
    /// POSTs received (a batch is one).
    posts: usize,
    /// Answer 500 while set.
    failing: bool,
}

struct Receiver {
    addr: SocketAddr,
    seen: Arc<Mutex<Seen>>,
}

impl Receiver {
    async fn start() -> Receiver {
        let seen = Arc::new(Mutex::new(Seen::default()));
        let s2 = seen.clone();
        let hook = move |path: &'static str| {
            let seen = s2.clone();
            move |headers: HeaderMap, body: Bytes| {
                let seen = seen.clone();
                async move {
                    let h = |n: &str| {
                        headers
                            .get(n)
                            .and_then(|v| v.to_str().ok())
                            .unwrap_or_default()
                            .to_string()
                    };
                    let now = now_ms() / 1000;
                    verify(
                        SECRET.as_bytes(),
                        &h(HEADER_TIMESTAMP),
                        &h(HEADER_SIGNATURE),
                        &body,
                        now,
                        300,
                    )
                    .unwrap_or_else(|e| panic!("a delivery's signature does not verify: {e}"));
                    let v: Value = serde_json::from_slice(&body).unwrap();
                    let mut s = seen.lock().unwrap();
                    let status = if s.failing || path == "dead" {
                        500
                    } else {
                        200
                    };
                    s.posts += 1;
                    if let Some(batch) = v["deliveries"].as_array() {
                        // `[triggers] batch`: each delivery carries its key as its `id`.
                        assert!(h("idempotency-key").is_empty(), "a batch has no one key");
                        for d in batch {
                            let key = d["id"].as_str().unwrap().to_string();
                            s.requests.push((key, status, d.clone()));
                        }
                    } else {
                        let key = h("idempotency-key");
                        assert_eq!(
                            v["id"],
                            key.as_str(),
                            "the body's id is the idempotency key"
                        );
                        s.requests.push((key, status, v));
                    }
                    StatusCode::from_u16(status).unwrap()
                }
            }
        };
        let app = axum::Router::new()
            .route("/hook", axum::routing::post(hook("hook")))
            .route("/dead", axum::routing::post(hook("dead")));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Receiver { addr, seen }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Keys answered 2xx, with how many times.
    fn delivered(&self) -> BTreeMap<String, usize> {
        let mut m = BTreeMap::new();
        for (k, status, _) in &self.seen.lock().unwrap().requests {
            if *status == 200 {
                *m.entry(k.clone()).or_default() += 1;
            }
        }
        m
    }
}

async fn wait_until(what: &str, within: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A small deterministic generator (no dependency for one test).
struct Lcg(u64);
impl Lcg {
    fn next(&mut self, n: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.0 >> 33) % n
    }
}

#[derive(Clone)]
struct Ev {
    person: String,
    event: &'static str,
    ts: i64,
}

/// The conditions of the test's subscriptions, recomputed in plain Rust.
fn cart_abandoned(evs: &[&Ev], now: i64) -> bool {
    let did = |e: &str, w: i64| evs.iter().any(|x| x.event == e && x.ts >= now - w);
    did("Product Added", 3 * HOUR)
        && !did("Product Added", HOUR)
        && !did("Order Completed", 3 * HOUR)
}

fn recent_buyer(evs: &[&Ev], now: i64) -> bool {
    evs.iter()
        .any(|x| x.event == "Order Completed" && x.ts >= now - HOUR)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deliveries_match_a_recomputed_history() {
    let db = Db::new().await;
    let st = db.state(&[]);
    let rx = Receiver::start().await;
    let sub = |name: &str, conditions: Value| {
        let body = json!({"name": name, "url": rx.url("/hook"), "secret": SECRET,
                          "audience": {"conditions": conditions}});
        subscription::parse(body.to_string().as_bytes()).unwrap()
    };
    let step = 10 * MINUTE;
    let steps = 30i64;
    let t0 = now_ms() - (steps + 1) * step;
    let cart = subscription::create(
        &st,
        "shop",
        sub(
            "cart abandoned",
            json!([
                {"type": "did", "event": "Product Added", "within": "3h"},
                {"type": "did_not", "event": "Product Added", "within": "1h"},
                {"type": "did_not", "event": "Order Completed", "within": "3h"}
            ]),
        ),
        10,
        t0,
    )
    .await
    .unwrap();
    let buyer = subscription::create(
        &st,
        "shop",
        sub(
            "recent buyer",
            json!([{"type": "did", "event": "Order Completed", "within": "1h"}]),
        ),
        10,
        t0,
    )
    .await
    .unwrap();

    // The history: 24 visitors with random adds, orders and page views over 5 hours, and
    // `orderer`, who orders 20 minutes after adding (inside the hour).
    let mut rng = Lcg(7);
    let mut history: Vec<Ev> = Vec::new();
    for k in 1..=steps {
        for _ in 0..6 {
            let person = format!("v{:02}", rng.next(24));
            let event = match rng.next(5) {
                0 | 1 => "Product Added",
                2 => "Order Completed",
                _ => "Page",
            };
            let ts = t0 + (k - 1) * step + 1 + rng.next(step as u64 - 1) as i64;
            history.push(Ev { person, event, ts });
        }
    }
    history.push(Ev {
        person: "orderer".into(),
        event: "Product Added",
        ts: t0 + 2 * step + 1000,
    });
    history.push(Ev {
        person: "orderer".into(),
        event: "Order Completed",
        ts: t0 + 4 * step + 1000,
    });

    let mut ev = Evaluator::new(st.clone());
    let baseline = ev.tick(t0).await.unwrap();
    assert_eq!(baseline.baselines, 2);
    assert!(baseline.deliveries.is_empty());

    // Ticks: the events of each step are inserted, then the tick at its end evaluates.
    let mut found = Vec::new();
    let mut ticks = vec![t0];
    let mut msg = 0;
    for k in 1..=steps {
        let t = t0 + k * step;
        let rows: Vec<_> = history
            .iter()
            .filter(|e| e.ts > t - step && e.ts <= t)
            .map(|e| {
                msg += 1;
                let (kind, name) = if e.event == "Page" {
                    ("page", "")
                } else {
                    ("track", e.event)
                };
                row("shop", &e.person, "", &format!("m{msg}"), kind, name, e.ts)
            })
            .collect();
        if !rows.is_empty() {
            db.insert(&rows).await;
        }
        let report = ev.tick(t).await.unwrap();
        assert!(
            report.candidates <= 30,
            "a tick evaluates the touched persons and the closed windows only: {}",
            report.candidates
        );
        found.extend(report.deliveries);
        ticks.push(t);
    }

    // Expected: membership at each tick from the history so far; a change is a transition.
    let mut expected: BTreeSet<(String, String, String, u32, i64)> = BTreeSet::new();
    let mut persons: BTreeSet<String> = history.iter().map(|e| e.person.clone()).collect();
    persons.insert("orderer".into());
    for (sub_id, rule) in [
        (&cart.id, cart_abandoned as fn(&[&Ev], i64) -> bool),
        (&buyer.id, recent_buyer as fn(&[&Ev], i64) -> bool),
    ] {
        for p in &persons {
            let mut was = false;
            let mut entry = 0u32;
            for &t in &ticks[1..] {
                let evs: Vec<&Ev> = history
                    .iter()
                    .filter(|e| &e.person == p && e.ts <= t)
                    .collect();
                let now_in = rule(&evs, t);
                if now_in && !was {
                    entry += 1;
                    expected.insert((sub_id.clone(), p.clone(), "entered".into(), entry, t));
                } else if !now_in && was {
                    expected.insert((sub_id.clone(), p.clone(), "left".into(), entry, t));
                }
                was = now_in;
            }
        }
    }
    assert!(
        expected.iter().filter(|e| e.2 == "entered").count() >= 5
            && expected.iter().any(|e| e.2 == "left" && e.0 == cart.id),
        "the history exercises entering and leaving: {expected:?}"
    );
    assert!(
        !expected.iter().any(|e| e.1 == "orderer" && e.0 == cart.id),
        "the recomputation agrees that the orderer never abandons"
    );

    // Deliver from the outbox as a server would after a restart (everything pending is
    // loaded from ClickHouse), then compare what the receiver got.
    assert_eq!(found.len(), expected.len());
    let mut d = Deliverer::new(
        st.clone(),
        waymark_ingest::config::TriggersConfig::default(),
        Arc::new(Metrics::default()),
    );
    assert_eq!(d.load().await.unwrap(), expected.len());
    let deadline = Instant::now() + Duration::from_secs(60);
    while d.pending() > 0 {
        assert!(Instant::now() < deadline, "deliveries did not finish");
        d.round().await.unwrap();
    }
    let requests = rx.seen.lock().unwrap().requests.clone();
    let got: BTreeSet<(String, String, String, u32, i64)> = requests
        .iter()
        .map(|(_, _, v)| {
            (
                v["subscription"]["id"].as_str().unwrap().to_string(),
                v["person"]["id"].as_str().unwrap().to_string(),
                v["type"].as_str().unwrap().to_string(),
                v["entry"].as_u64().unwrap() as u32,
                waymark_protocol::time::parse_rfc3339(v["at"].as_str().unwrap()).unwrap(),
            )
        })
        .collect();
    assert_eq!(requests.len(), got.len(), "no delivery was sent twice");
    let missing: Vec<_> = expected.difference(&got).collect();
    let extra: Vec<_> = got.difference(&expected).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "missing {missing:?}\nextra {extra:?}"
    );
    // An entered delivery carries the person's profile.
    let entered = requests
        .iter()
        .find(|(_, _, v)| v["type"] == "entered")
        .unwrap();
    assert_eq!(entered.2["profile"]["id"], entered.2["person"]["id"]);
    assert_eq!(entered.2["site"], "shop");
    assert!(entered.2["subscription"]["name"].as_str().is_some());

    // Every outbox row is delivered now; a repeated tick finds nothing new.
    let again = ev.tick(ticks[ticks.len() - 1]).await.unwrap();
    assert!(again.deliveries.is_empty(), "{:?}", again.deliveries);
    let states = sql(&format!(
        "SELECT argMax(state, version) AS s, count() FROM (SELECT key, state, version FROM {}.trigger_deliveries) GROUP BY key HAVING s != 'delivered'",
        db.name
    ));
    assert_eq!(states.trim(), "", "every delivery is recorded as delivered");
}

fn server_config(ch_url: &str, db: &str, spool: &std::path::Path, dead_attempts: u32) -> String {
    format!(
        r#"
listen = "127.0.0.1:0"
[clickhouse]
url = "{ch_url}"
database = "{db}"
[spool]
dir = "{spool}"
[writer]
max_age = "100ms"
[[sites]]
id = "shop"
write_keys = ["wk_shop"]
[query]
cache_ttl = "0s"
[[query.read_keys]]
key = "rk_reader"
sites = ["shop"]
[[query.read_keys]]
key = "rk_platform"
sites = ["shop"]
subscribe = true
[triggers]
evaluate = true
tick = "1s"
backoff = "200ms"
max_backoff = "400ms"
max_attempts = {dead_attempts}
"#,
        spool = spool.display()
    )
}

struct Running {
    addr: SocketAddr,
    stop: tokio::sync::oneshot::Sender<()>,
    handle: tokio::task::JoinHandle<Result<(), waymark_ingest::ServeError>>,
}

async fn start(db: &str, spool: &std::path::Path) -> Running {
    start_with(db, spool, "").await
}

/// [`start`] with more `[triggers]` settings.
async fn start_with(db: &str, spool: &std::path::Path, triggers: &str) -> Running {
    let toml = server_config(&clickhouse().http_url(), db, spool, 3)
        .replace("[triggers]\n", &format!("[triggers]\n{triggers}\n"));
    let cfg = waymark_ingest::Config::from_toml(&toml).unwrap();
    cfg.validate().unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, rx) = tokio::sync::oneshot::channel::<()>();
    let handle = tokio::spawn(waymark_ingest::serve(cfg, listener, async move {
        let _ = rx.await;
    }));
    Running { addr, stop, handle }
}

impl Running {
    async fn shutdown(self) {
        let _ = self.stop.send(());
        tokio::time::timeout(Duration::from_secs(60), self.handle)
            .await
            .expect("the server stops within 60 s")
            .unwrap()
            .unwrap();
    }
}

/// Polls the dead letters until there are `n`.
async fn dead_letters(http: &reqwest::Client, base: &str, n: u64) -> Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let v: Value = http
            .get(format!("{base}/v1/subscriptions/dead_letters?site=shop"))
            .bearer_auth("rk_platform")
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if v["count"] == n || Instant::now() > deadline {
            assert_eq!(v["count"], n, "{v}");
            return v;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn send_adds(addr: SocketAddr, persons: &[String]) {
    let now = now_ms();
    let batch: Vec<Value> = persons
        .iter()
        .map(|p| {
            json!({"type": "track", "event": "Product Added", "anonymousId": p,
                   "messageId": format!("add-{p}"), "timestamp": waymark_protocol::time::format_rfc3339(now)})
        })
        .collect();
    let r = reqwest::Client::new()
        .post(format!("http://{addr}/v1/batch"))
        .header("content-type", "application/json")
        .body(json!({"writeKey": "wk_shop", "batch": batch}).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_loses_no_delivery_and_sends_none_twice() {
    let ch = clickhouse();
    let db = tokio::task::block_in_place(|| ch.fresh_database()).unwrap();
    let spool = tempfile::tempdir().unwrap();
    let rx = Receiver::start().await;
    let http = reqwest::Client::new();
    let a = start(&db, spool.path()).await;
    let base = format!("http://{}", a.addr);

    // The API: a key without `subscribe` may not register; the platform's key may.
    let body = |url: String| {
        json!({"name": "added", "url": url, "secret": SECRET,
               "audience": {"conditions": [{"type": "did", "event": "Product Added", "within": "1h"}]}})
        .to_string()
    };
    let post = |key: &'static str, b: String| {
        http.post(format!("{base}/v1/subscriptions?site=shop"))
            .bearer_auth(key)
            .body(b)
            .send()
    };
    let r = post("rk_reader", body(rx.url("/hook"))).await.unwrap();
    assert_eq!(r.status(), 403);
    let r = post("rk_platform", body(rx.url("/hook"))).await.unwrap();
    assert_eq!(r.status(), 201);
    let sub: Value = r.json().await.unwrap();
    assert!(sub.get("secret").is_none(), "{sub}");
    let r = post("rk_platform", body(rx.url("/dead"))).await.unwrap();
    assert_eq!(r.status(), 201);
    let dead_sub: Value = r.json().await.unwrap();
    let r = post("rk_platform", json!({"name": "x"}).to_string())
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let e: Value = r.json().await.unwrap();
    assert_eq!(e["field"], "url", "{e}");
    let list: Value = http
        .get(format!("{base}/v1/subscriptions?site=shop"))
        .bearer_auth("rk_platform")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(list["subscriptions"].as_array().unwrap().len(), 2, "{list}");

    // The baseline of both subscriptions is taken before any event.
    let baselines = format!(
        "SELECT count() FROM (SELECT name FROM {db}.trigger_state WHERE name LIKE 'baseline/%' GROUP BY name)"
    );
    let got = tokio::task::block_in_place(|| {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let n = ch.query(&baselines).unwrap_or_default();
            if n.trim() == "2" || Instant::now() > deadline {
                return n;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    });
    assert_eq!(got.trim(), "2");

    // Five people add to their carts: each entered once for /hook (and /dead fails).
    let first: Vec<String> = (1..=5).map(|i| format!("p{i}")).collect();
    send_adds(a.addr, &first).await;
    wait_until("the first five deliveries", Duration::from_secs(60), || {
        rx.delivered().len() == 5
    })
    .await;

    // The /dead subscription's five deliveries end as dead letters (3 attempts each), listed
    // and counted.
    let dead = dead_letters(&http, &base, 5).await;
    let one = &dead["dead_letters"][0];
    assert_eq!(one["subscription_id"], dead_sub["id"]);
    assert_eq!(one["attempts"], 3);
    assert!(one["last_error"].as_str().unwrap().contains("500"), "{one}");
    let metrics = http
        .get(format!("{base}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("waymark_trigger_deliveries_total{outcome=\"dead\"} 5")),
        "{metrics}"
    );

    // The receiver fails; five more enter and stay pending through retries.
    rx.seen.lock().unwrap().failing = true;
    let second: Vec<String> = (6..=10).map(|i| format!("p{i}")).collect();
    send_adds(a.addr, &second).await;
    wait_until(
        "failed attempts at the next five",
        Duration::from_secs(60),
        || {
            let s = rx.seen.lock().unwrap();
            let failed: BTreeSet<&str> = s
                .requests
                .iter()
                .filter(|(_, st, v)| *st == 500 && v["subscription"]["id"] == sub["id"])
                .map(|(k, _, _)| k.as_str())
                .collect();
            failed.len() == 5
        },
    )
    .await;
    a.shutdown().await;
    let before_restart = rx.seen.lock().unwrap().requests.len();

    // A new server on the same database sends the pending ones, once each, and never the
    // delivered ones again.
    rx.seen.lock().unwrap().failing = false;
    let b = start(&db, spool.path()).await;
    wait_until("all ten delivered", Duration::from_secs(60), || {
        rx.delivered().len() == 10
    })
    .await;
    let delivered = rx.delivered();
    assert!(delivered.values().all(|n| *n == 1), "{delivered:?}");
    let requests = rx.seen.lock().unwrap().requests.clone();
    let hook_keys: HashMap<&str, &Value> = requests
        .iter()
        .filter(|(_, st, _)| *st == 200)
        .map(|(k, _, v)| (k.as_str(), v))
        .collect();
    let persons: BTreeSet<&str> = hook_keys
        .values()
        .map(|v| v["person"]["id"].as_str().unwrap())
        .collect();
    assert_eq!(persons.len(), 10, "{persons:?}");
    for (k, st, _) in &requests[before_restart..] {
        assert!(
            !(*st == 200
                && requests[..before_restart]
                    .iter()
                    .any(|(k2, st2, _)| k2 == k && *st2 == 200)),
            "{k} was delivered before the restart and sent again"
        );
    }

    // The second five of /dead are dead letters too, whichever server gave up on them.
    let base = format!("http://{}", b.addr);
    dead_letters(&http, &base, 10).await;

    // Removing a subscription: gone from the list, 404 the second time.
    let del = |id: String| {
        http.delete(format!("{base}/v1/subscriptions/{id}?site=shop"))
            .bearer_auth("rk_platform")
            .send()
    };
    let id = dead_sub["id"].as_str().unwrap().to_string();
    assert_eq!(del(id.clone()).await.unwrap().status(), 200);
    assert_eq!(del(id).await.unwrap().status(), 404);
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_lease_holder_at_a_time() {
    let db = Db::new().await;
    let st = db.state(&[]);
    let mut a = waymark_ingest::triggers::Lease::new(st.clone(), Duration::from_secs(6));
    let mut b = waymark_ingest::triggers::Lease::new(st.clone(), Duration::from_secs(6));

    // Both take the free lease at once: one wins, and both agree which.
    let (ha, hb) = tokio::join!(a.acquire(), b.acquire());
    let (ha, hb) = (ha.unwrap(), hb.unwrap());
    assert!(
        ha ^ hb,
        "exactly one server holds the lease: a {ha}, b {hb}"
    );
    let (mut holder, mut other) = if ha { (a, b) } else { (b, a) };
    assert!(!other.acquire().await.unwrap(), "a held lease is not taken");
    assert!(holder.acquire().await.unwrap(), "the holder renews");
    assert!(holder.held());

    // The holder stops renewing: the other takes it once it expires, and the old holder, back,
    // finds it taken.
    let deadline = Instant::now() + Duration::from_secs(30);
    while !other.acquire().await.unwrap() {
        assert!(Instant::now() < deadline, "the expired lease was not taken");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert!(
        !holder.acquire().await.unwrap(),
        "a lease taken over stays with the new holder"
    );
    assert!(!holder.held());

    // A released lease is taken at once, without waiting for its expiry.
    other.release().await.unwrap();
    let t = Instant::now();
    assert!(holder.acquire().await.unwrap(), "a released lease is free");
    assert!(t.elapsed() < Duration::from_secs(6), "{:?}", t.elapsed());
    assert!(!other.acquire().await.unwrap());
}

/// Whether the server at `addr` says it holds the trigger lease.
async fn holds_lease(http: &reqwest::Client, addr: SocketAddr) -> bool {
    http.get(format!("http://{addr}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
        .lines()
        .any(|l| l == "waymark_trigger_lease_held 1")
}

/// Waits (60 s at most) until `s` says its schema is migrated.
async fn wait_ready(http: &reqwest::Client, s: &Running) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let r = http
            .get(format!("http://{}/readyz", s.addr))
            .send()
            .await
            .unwrap();
        let body = r.text().await.unwrap();
        if body.contains("\"schema\":\"ok\"") {
            return;
        }
        assert!(Instant::now() < deadline, "not ready: {body}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_evaluating_servers_deliver_once_each() {
    let ch = clickhouse();
    let db = tokio::task::block_in_place(|| ch.fresh_database()).unwrap();
    let (spool_a, spool_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let rx = Receiver::start().await;
    let http = reqwest::Client::new();
    // One after the other: two servers migrating a fresh database at the same moment once left
    // 18.16 answering code 390 ("no metadata file for table events") to the migrations for a
    // whole minute in CI (likely migration 110's copy-and-swap run twice at once); that is a
    // known gap of its own, not what this test is about.
    let a = start(&db, spool_a.path()).await;
    wait_ready(&http, &a).await;
    let b = start(&db, spool_b.path()).await;
    wait_ready(&http, &b).await;
    let r = http
        .post(format!("http://{}/v1/subscriptions?site=shop", a.addr))
        .bearer_auth("rk_platform")
        .body(
            json!({"name": "added", "url": rx.url("/hook"), "secret": SECRET,
                   "audience": {"conditions": [{"type": "did", "event": "Product Added", "within": "1h"}]}})
            .to_string(),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201, "{}", r.text().await.unwrap());
    let tick = format!("SELECT argMax(value, version) FROM {db}.trigger_state WHERE name = 'tick'");
    let last_tick = || -> i64 {
        tokio::task::block_in_place(|| ch.query(&tick))
            .unwrap_or_default()
            .trim()
            .parse()
            .unwrap_or(0)
    };
    let baseline = format!("SELECT count() FROM {db}.trigger_state WHERE name LIKE 'baseline/%'");
    wait_until("the baseline", Duration::from_secs(60), || {
        tokio::task::block_in_place(|| ch.query(&baseline)).is_ok_and(|n| n.trim() != "0")
    })
    .await;

    // Events through both servers; each person is delivered once, and still once after several
    // more ticks (of whichever server evaluates).
    let first: Vec<String> = (1..=10).map(|i| format!("p{i}")).collect();
    send_adds(a.addr, &first[..5]).await;
    send_adds(b.addr, &first[5..]).await;
    wait_until("ten deliveries", Duration::from_secs(60), || {
        rx.delivered().len() == 10
    })
    .await;
    let after = last_tick() + 3_000;
    wait_until("three more ticks", Duration::from_secs(60), || {
        last_tick() >= after
    })
    .await;
    let delivered = rx.delivered();
    assert!(delivered.values().all(|n| *n == 1), "{delivered:?}");
    let (ha, hb) = (
        holds_lease(&http, a.addr).await,
        holds_lease(&http, b.addr).await,
    );
    assert!(ha ^ hb, "one server holds the lease: a {ha}, b {hb}");

    // The holder stops; the other takes over and delivers the next ones, once each.
    let (gone, stays) = if ha { (a, b) } else { (b, a) };
    gone.shutdown().await;
    let second: Vec<String> = (11..=20).map(|i| format!("p{i}")).collect();
    send_adds(stays.addr, &second).await;
    wait_until("twenty deliveries", Duration::from_secs(60), || {
        rx.delivered().len() == 20
    })
    .await;
    let after = last_tick() + 3_000;
    wait_until("three more ticks", Duration::from_secs(60), || {
        last_tick() >= after
    })
    .await;
    let delivered = rx.delivered();
    assert!(delivered.values().all(|n| *n == 1), "{delivered:?}");
    assert_eq!(
        rx.seen.lock().unwrap().requests.len(),
        20,
        "no request was sent twice"
    );
    assert!(holds_lease(&http, stays.addr).await);
    stays.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_baseline_records_who_matches_already_without_deliveries() {
    let db = Db::new().await;
    let st = db.state(&[]);
    let now = now_ms();
    // Before the subscriptions: `early` added to cart, `buyer` added and ordered.
    db.insert(&[
        row(
            "shop",
            "early",
            "",
            "e1",
            "track",
            "Product Added",
            now - 10 * MINUTE,
        ),
        row(
            "shop",
            "buyer",
            "",
            "b1",
            "track",
            "Product Added",
            now - 10 * MINUTE,
        ),
        row(
            "shop",
            "buyer",
            "",
            "b2",
            "track",
            "Order Completed",
            now - 5 * MINUTE,
        ),
    ])
    .await;
    let sub = |name: &str, conditions: Value| {
        let body = json!({"name": name, "url": "http://127.0.0.1:9/hook", "secret": SECRET,
                          "audience": {"conditions": conditions}});
        subscription::parse(body.to_string().as_bytes()).unwrap()
    };
    let added = subscription::create(
        &st,
        "shop",
        sub(
            "added",
            json!([{"type": "did", "event": "Product Added", "within": "1h"}]),
        ),
        10,
        now,
    )
    .await
    .unwrap();
    let abandoned = subscription::create(
        &st,
        "shop",
        sub(
            "abandoned",
            json!([{"type": "did", "event": "Product Added", "within": "1h"},
                   {"type": "did_not", "event": "Order Completed", "within": "1h"}]),
        ),
        10,
        now,
    )
    .await
    .unwrap();
    let mut ev = Evaluator::new(st.clone());
    let first = ev.tick(now).await.unwrap();
    assert_eq!(first.baselines, 2);
    assert!(first.deliveries.is_empty());
    let members = sql(&format!(
        "SELECT sub_id, person FROM {}.trigger_members WHERE member = 1 ORDER BY sub_id, person FORMAT TSV",
        db.name
    ));
    let mut expected = vec![
        format!("{}\tbuyer", added.id),
        format!("{}\tearly", added.id),
        format!("{}\tearly", abandoned.id),
    ];
    expected.sort();
    let got: Vec<&str> = members.lines().collect();
    assert_eq!(got, expected);

    // Touched again, they are members already: no `entered`; `buyer` enters `abandoned` only
    // when their order leaves its hour, which is not now.
    db.insert(&[
        row(
            "shop",
            "early",
            "",
            "e2",
            "track",
            "Product Added",
            now + 1000,
        ),
        row("shop", "buyer", "", "b3", "page", "", now + 1000),
    ])
    .await;
    let next = ev.tick(now + 2000).await.unwrap();
    assert!(next.deliveries.is_empty(), "{:?}", next.deliveries);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_carries_many_deliveries_in_one_signed_post() {
    let ch = clickhouse();
    let db = tokio::task::block_in_place(|| ch.fresh_database()).unwrap();
    let spool = tempfile::tempdir().unwrap();
    let rx = Receiver::start().await;
    let http = reqwest::Client::new();
    let a = start_with(&db, spool.path(), "batch = 8").await;
    let base = format!("http://{}", a.addr);
    let r = http
        .post(format!("{base}/v1/subscriptions?site=shop"))
        .bearer_auth("rk_platform")
        .body(
            json!({"name": "added", "url": rx.url("/hook"), "secret": SECRET,
                   "audience": {"conditions": [{"type": "did", "event": "Product Added", "within": "1h"}]}})
            .to_string(),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let baseline = format!("SELECT count() FROM {db}.trigger_state WHERE name LIKE 'baseline/%'");
    wait_until("the baseline", Duration::from_secs(30), || {
        tokio::task::block_in_place(|| ch.query(&baseline)).is_ok_and(|n| n.trim() != "0")
    })
    .await;

    // Twenty people add to their carts in one request: one tick finds them all, and they go
    // out eight at a time, each delivery once, each batch signed as a whole (the receiver
    // checks the signature of every POST).
    let persons: Vec<String> = (1..=20).map(|i| format!("b{i}")).collect();
    send_adds(a.addr, &persons).await;
    wait_until("twenty deliveries", Duration::from_secs(60), || {
        rx.delivered().len() == 20
    })
    .await;
    let delivered = rx.delivered();
    assert!(delivered.values().all(|n| *n == 1), "{delivered:?}");
    let (posts, requests) = {
        let seen = rx.seen.lock().unwrap();
        (seen.posts, seen.requests.clone())
    };
    let people: BTreeSet<&str> = requests
        .iter()
        .map(|(_, _, d)| d["person"]["id"].as_str().unwrap())
        .collect();
    assert_eq!(people.len(), 20, "{people:?}");
    assert!(
        requests.iter().all(|(_, _, d)| d["type"] == "entered"),
        "{requests:?}"
    );
    assert!(
        (3..20).contains(&posts),
        "20 deliveries of one subscription, at most 8 per POST, came in {posts} POSTs"
    );
    a.shutdown().await;
}
