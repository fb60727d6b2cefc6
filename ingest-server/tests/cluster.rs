//! Cluster mode against a real cluster (issue 19): ZooKeeper and four ClickHouse servers as
//! 2 shards x 2 replicas, two ingest server processes behind this test's own round-robin. One
//! ingest server is killed (SIGKILL) and one replica crashed while events flow; the client
//! retries a refused or cut batch on the other server, and some batches are sent to both (a
//! retry after a lost answer). Then: no acknowledged event is missing, nothing counts twice, the
//! crashed replica catches up, and the profiles, histories and audiences the query API answers
//! are those of a single server that received every event once.
//!
//! Then, on the same cluster and database, triggers: two more ingest servers, both with
//! `[triggers] evaluate = true`, take events for a subscription's audience through both; each
//! person who enters is delivered once to a webhook receiver on 127.0.0.1, signed, whichever
//! server holds the lease.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode};
use serde_json::{json, Value};
use waymark_protocol::edge::{verify, HEADER_SIGNATURE, HEADER_TIMESTAMP};
use waymark_testkit::cluster::{Cluster, CLUSTER};
use waymark_testkit::config::{site, IngestConfig};
use waymark_testkit::ingest::IngestServer;
use waymark_testkit::ClickHouse;

const WRITE_KEY: &str = "wk_shop";
const READ_KEY: &str = "rk_shop_cluster";
const DB: &str = "wm";
const VISITORS: usize = 48;
const EVENTS_PER_VISITOR: usize = 12;
const BATCH: usize = 8;

fn now_ms() -> i64 {
    waymark_ingest::clock::now_ms()
}

fn iso(ms: i64) -> String {
    waymark_protocol::time::format_rfc3339(ms)
}

/// Visitor `i`'s events: pages, product views, adds, an order for every third, and an identify
/// for half of them, two visitors per user (so a person may span shards).
fn events(now: i64) -> Vec<Value> {
    let mut out = Vec::new();
    for i in 0..VISITORS {
        let anon = format!("anon-{i}");
        let user = format!("user-{}", i / 4);
        for j in 0..EVENTS_PER_VISITOR {
            // Two to three hours ago: every cart is past `cart_abandon_after` (1 h) and every event
            // within the audiences' 24 h, whenever in the run the answers are compared.
            let t = now
                - 2 * 3_600_000
                - ((VISITORS * EVENTS_PER_VISITOR - (i * EVENTS_PER_VISITOR + j)) as i64) * 7_000;
            let id = format!("m-{i}-{j}");
            let product = format!("p-{}", (i + j) % 5);
            let ctx = json!({"page": {"url": format!("https://shop.example/p/{product}"), "path": format!("/p/{product}"), "title": "P"},
                             "sessionId": format!("s-{i}-{}", j / 6)});
            let e = match j {
                0 | 6 => json!({"type": "page", "name": "Product"}),
                3 if i % 4 < 2 => json!({"type": "identify", "userId": user,
                                         "traits": {"email": format!("{user}@example.com"), "plan": if i % 3 == 0 {"pro"} else {"free"}}}),
                7 | 8 => json!({"type": "track", "event": "Product Added",
                                "properties": {"product_id": product, "price": 10.0 + i as f64, "quantity": 1}}),
                10 if i % 3 == 0 => json!({"type": "track", "event": "Order Completed",
                                           "properties": {"order_id": format!("o-{i}"), "revenue": 25.5 + i as f64, "currency": "EUR"}}),
                _ => json!({"type": "track", "event": "Product Viewed",
                            "properties": {"product_id": product, "name": format!("Product {product}"), "price": 10.0}}),
            };
            let mut e = e;
            e["messageId"] = json!(id);
            e["anonymousId"] = json!(anon);
            if j > 3 && i % 4 < 2 {
                e["userId"] = json!(user);
            }
            // Explicit: the same time on every server and run (no clock-skew correction).
            e["timestamp"] = json!(iso(t));
            e["context"] = ctx;
            out.push(e);
        }
    }
    out
}

fn body(batch: &[Value]) -> String {
    json!({"writeKey": WRITE_KEY, "batch": batch}).to_string()
}

fn config(ch_url: &str, cluster: Option<&str>, spool: &Path) -> IngestConfig {
    IngestConfig::new()
        .listen("127.0.0.1:0".parse().unwrap())
        .clickhouse(ch_url, DB)
        .spool(spool)
        .writer_max_age(Duration::from_millis(100))
        .site(site("shop", WRITE_KEY, &[]))
        .read_key(READ_KEY, &["shop"])
        .with(|c| {
            c.clickhouse.cluster = cluster.map(str::to_string);
            // The RFM quintiles are cached per site for `rfm.refresh` (5 min): computed between
            // a restarted server's events and its identity links (two inserts), they would keep
            // counting an identified visitor apart from its user until then. The test compares
            // answers once everything is in, so it refreshes them every second.
            c.query.rfm.refresh = waymark_ingest::config::HumanDuration(Duration::from_secs(1));
        })
}

fn start(cfg: &IngestConfig, dir: &Path, log: &str) -> IngestServer {
    IngestServer::start_logging_to(
        Path::new(env!("CARGO_BIN_EXE_ingest-server")),
        cfg,
        dir,
        &[("RUST_LOG", "warn")],
        &dir.join(log),
    )
    .unwrap_or_else(|e| panic!("{e}"))
}

/// What a failed wait needs to tell where missing events are: the server's `/readyz` (its
/// writer blocked or not) and the spooled bytes ClickHouse has not confirmed. Both at zero
/// pending means ClickHouse acknowledged everything the server took.
fn writer_state(url: &str) -> String {
    let get = |path: &str| {
        ureq::get(format!("{url}{path}"))
            .call()
            .map_err(|e| e.to_string())
            .and_then(|mut r| r.body_mut().read_to_string().map_err(|e| e.to_string()))
            .unwrap_or_else(|e| format!("({e})"))
    };
    let metrics = get("/metrics");
    let pending = metrics
        .lines()
        .find(|l| l.starts_with("waymark_spool_pending_bytes"))
        .unwrap_or("waymark_spool_pending_bytes (absent)");
    format!("readyz {}, {pending}", get("/readyz").trim())
}

fn post(url: &str, body: &str) -> Result<(), String> {
    match ureq::post(format!("{url}/v1/batch"))
        .header("content-type", "application/json")
        .send(body)
    {
        Ok(_) => Ok(()),
        Err(e) => Err(e.to_string()),
    }
}

fn count(ch: &ClickHouse, sql: &str) -> u64 {
    ch.query(sql)
        .unwrap_or_else(|e| panic!("{e}"))
        .trim()
        .parse()
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
}

/// Where `cluster` and `single` differ, as `path: cluster value != single value`.
fn differences(cluster: &Value, single: &Value, path: &str) -> Vec<String> {
    match (cluster, single) {
        (Value::Object(a), Value::Object(b)) => {
            let keys: BTreeSet<&String> = a.keys().chain(b.keys()).collect();
            keys.into_iter()
                .flat_map(|k| {
                    let (x, y) = (
                        a.get(k).unwrap_or(&Value::Null),
                        b.get(k).unwrap_or(&Value::Null),
                    );
                    differences(x, y, &format!("{path}.{k}"))
                })
                .collect()
        }
        (Value::Array(a), Value::Array(b)) if a.len() == b.len() => a
            .iter()
            .zip(b)
            .enumerate()
            .flat_map(|(i, (x, y))| differences(x, y, &format!("{path}[{i}]")))
            .collect(),
        (a, b) if a == b => Vec::new(),
        (a, b) => vec![format!("{path}: cluster {a} != single {b}")],
    }
}

/// A profile with its `ids` and `identifiers` reduced to the ids and identifier values. A link
/// sent by several events is shown with the row `identities` kept, the one inserted last (a
/// ReplacingMergeTree without a version), so its `source` and `linked_at` follow the order of
/// inserts, which two ingest servers and one do not share (see the README's "Scaling out").
fn without_link_provenance(v: &Value) -> Value {
    let mut v = v.clone();
    if let Some(o) = v.as_object_mut() {
        for (key, field) in [("ids", "id"), ("identifiers", "value")] {
            if let Some(Value::Array(a)) = o.get(key) {
                let mut ids: Vec<Value> = a.iter().map(|x| x[field].clone()).collect();
                ids.sort_by_key(|x| x.to_string());
                o.insert(key.to_string(), Value::Array(ids));
            }
        }
    }
    v
}

fn poll(what: &str, within: Duration, mut done: impl FnMut() -> Result<(), String>) {
    let deadline = Instant::now() + within;
    loop {
        match done() {
            Ok(()) => return,
            Err(e) if Instant::now() > deadline => panic!("{what} within {within:?}: {e}"),
            Err(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    }
}

/// Every answer the query API gives about the people of [`events`]: each visitor's and user's
/// profile and history, and a few audiences.
fn answers(url: &str) -> Vec<(String, Value)> {
    let get = |path: &str| -> Value {
        let mut r = ureq::get(format!("{url}{path}"))
            .header("authorization", format!("Bearer {READ_KEY}"))
            .call()
            .unwrap_or_else(|e| panic!("GET {path}: {e}"));
        serde_json::from_str(&r.body_mut().read_to_string().unwrap()).unwrap()
    };
    let mut ids: Vec<String> = (0..VISITORS).map(|i| format!("anon-{i}")).collect();
    ids.extend((0..VISITORS / 4).map(|u| format!("user-{u}")));
    let mut out = Vec::new();
    for id in &ids {
        out.push((
            format!("profile {id}"),
            get(&format!("/v1/profiles/{id}?site=shop")),
        ));
        out.push((
            format!("history {id}"),
            get(&format!("/v1/profiles/{id}/events?site=shop&limit=100")),
        ));
    }
    for (name, conds) in [
        (
            "cart abandoners",
            json!([{"type": "did", "event": "Product Added", "within": "24h"},
                                   {"type": "did_not", "event": "Order Completed", "within": "24h"}]),
        ),
        (
            "pro plan",
            json!([{"type": "trait", "name": "plan", "op": "eq", "value": "pro"}]),
        ),
        (
            "seen",
            json!([{"type": "last_seen_within", "within": "7d"}]),
        ),
    ] {
        let mut r = ureq::post(format!("{url}/v1/audiences/query?site=shop"))
            .header("authorization", format!("Bearer {READ_KEY}"))
            .header("content-type", "application/json")
            .send(json!({"conditions": conds}).to_string())
            .unwrap_or_else(|e| panic!("audience {name}: {e}"));
        let v: Value = serde_json::from_str(&r.body_mut().read_to_string().unwrap()).unwrap();
        out.push((format!("audience {name}"), v));
    }
    out
}

/// One cluster for both parts: starting it and migrating a database is most of the time.
#[test]
fn two_ingest_servers_on_a_two_by_two_cluster() {
    let t0 = Instant::now();
    let phase = |what: &str| eprintln!("{:>6.1} s  {what}", t0.elapsed().as_secs_f64());
    let mut cluster = Cluster::start(2, 2).unwrap_or_else(|e| panic!("{e}"));
    phase("cluster up");
    let dir = tempfile::tempdir().unwrap();
    lose_nothing_and_answer_like_one_server(&mut cluster, dir.path(), &phase);
    triggers_are_delivered_once_with_two_evaluating_servers(&cluster, dir.path(), &phase);
}

fn lose_nothing_and_answer_like_one_server(
    cluster: &mut Cluster,
    dir: &Path,
    phase: &dyn Fn(&str),
) {
    let now = now_ms();
    let all = events(now);
    let batches: Vec<Vec<Value>> = all.chunks(BATCH).map(<[Value]>::to_vec).collect();

    // Ingest server A writes through shard 1's first replica, B through shard 2's.
    let cfg_a = config(
        &cluster.node(1, 1).http_url(),
        Some(CLUSTER),
        &dir.join("a/spool"),
    );
    let cfg_b = config(
        &cluster.node(2, 1).http_url(),
        Some(CLUSTER),
        &dir.join("b/spool"),
    );
    let a = start(&cfg_a, &dir.join("a"), "ingest.log");
    let last = waymark_ingest::store::schema::MIGRATIONS
        .iter()
        .map(|m| m.version)
        .max()
        .unwrap();
    poll("every migration", Duration::from_secs(180), || {
        let v = cluster
            .node(2, 2)
            .query(&format!("SELECT max(version) FROM {DB}.schema_migrations"))
            .map_err(|e| e.to_string())?;
        (v.trim() == last.to_string()).then_some(()).ok_or(v)
    });
    phase("migrations applied");
    // Migrations ran ON CLUSTER: every server has the local and Distributed tables.
    for n in cluster.nodes() {
        let t = n
            .query(&format!(
                "SELECT name, engine FROM system.tables WHERE database = '{DB}' AND name IN ('events', 'events_local', 'q_visitor_days_local', 'q_visitor_mv') ORDER BY name FORMAT TSV"
            ))
            .unwrap();
        assert_eq!(
            t,
            "events\tDistributed\nevents_local\tReplicatedReplacingMergeTree\nq_visitor_days_local\tReplicatedAggregatingMergeTree\nq_visitor_mv\tMaterializedView\n",
            "{}",
            n.http_url()
        );
    }
    let mut b = Some(start(&cfg_b, &dir.join("b"), "ingest.log"));
    // The test's own round-robin; a batch a server does not acknowledge goes to the other.
    let mut urls = vec![a.url(), b.as_ref().unwrap().url()];
    // Each acknowledged id, with the servers that acknowledged it (bit 1: A, bit 2: B), so a
    // failure can say whose spool the missing events went through.
    let mut acked: HashMap<String, u8> = HashMap::new();
    let mut twice = 0;
    let kill_at = batches.len() * 2 / 5;
    for (n, batch) in batches.iter().enumerate() {
        if n == kill_at {
            // Under load: B dies without flushing its spool, and shard 2 loses a replica.
            b.take().unwrap().proc.kill();
            cluster.node_mut(2, 2).crash();
        }
        let text = body(batch);
        let first = n % urls.len();
        let mut by = 0u8;
        for k in 0..urls.len() * 3 {
            let i = (first + k) % urls.len();
            if post(&urls[i], &text).is_ok() {
                by |= 1 << i;
                break;
            }
        }
        assert!(by != 0, "batch {n} was acknowledged by no server");
        // Every seventh batch again through the other server: a client retry after a lost
        // answer, which no server's in-memory dedup sees.
        let other = (first + 1) % urls.len();
        if n % 7 == 0 && post(&urls[other], &text).is_ok() {
            twice += 1;
            by |= 1 << other;
        }
        for e in batch {
            *acked
                .entry(e["messageId"].as_str().unwrap().to_string())
                .or_default() |= by;
        }
        if n == kill_at {
            urls.truncate(1); // B's address refuses from now on; keep the loop simple
        }
    }
    phase("events sent");
    assert!(twice > 5, "only {twice} batches were sent twice");

    // B comes back on its spool and sends what it had acknowledged but not written.
    let b = start(&cfg_b, &dir.join("b"), "ingest-restarted.log");
    let reader = cluster.node(1, 1);
    let within = Duration::from_secs(120);
    // The servers' states go into the message of the last, failing try only: asking for them
    // on every try would load the servers the test is waiting for.
    let last_try = Instant::now() + within;
    poll("every acknowledged event in the cluster", within, || {
        let stored: HashSet<String> = reader
            .query(&format!(
                "SELECT DISTINCT message_id FROM {DB}.events FORMAT TSV"
            ))
            .map_err(|e| e.to_string())?
            .lines()
            .map(str::to_string)
            .collect();
        let missing: Vec<u8> = acked
            .iter()
            .filter(|(id, _)| !stored.contains(*id))
            .map(|(_, by)| *by)
            .collect();
        if missing.is_empty() {
            return Ok(());
        }
        let mut e = format!("{} of {} missing", missing.len(), acked.len());
        if Instant::now() > last_try {
            let through = |bit: u8| missing.iter().filter(|by| **by & bit != 0).count();
            e += &format!(
                " (acknowledged by A: {}, by B: {}); A: {}; B restarted: {}",
                through(1),
                through(2),
                writer_state(&a.url()),
                writer_state(&b.url()),
            );
        }
        Err(e)
    });
    phase("every acknowledged event stored");
    // Nothing counted twice: one row per event once duplicates collapse, on either shard.
    let unique = count(
        reader,
        &format!("SELECT uniqExact(message_id) FROM {DB}.events"),
    );
    assert_eq!(unique, all.len() as u64);
    assert_eq!(
        count(reader, &format!("SELECT count() FROM {DB}.events FINAL")),
        unique
    );
    // Each visitor's rows on one shard.
    let per_server: Vec<BTreeSet<String>> = [cluster.node(1, 1), cluster.node(2, 1)]
        .iter()
        .map(|n| {
            n.query(&format!(
                "SELECT DISTINCT visitor_id FROM {DB}.events_local FORMAT TSV"
            ))
            .unwrap()
            .lines()
            .map(str::to_string)
            .collect()
        })
        .collect();
    assert!(
        per_server[0].is_disjoint(&per_server[1]),
        "a visitor on both shards"
    );
    assert!(
        !per_server[0].is_empty() && !per_server[1].is_empty(),
        "one shard holds everything"
    );

    // The crashed replica comes back and catches up with its shard.
    cluster
        .node_mut(2, 2)
        .resume()
        .unwrap_or_else(|e| panic!("{e}"));
    let want = count(
        cluster.node(2, 1),
        &format!("SELECT uniqExact(message_id) FROM {DB}.events_local"),
    );
    poll(
        "the crashed replica to catch up",
        Duration::from_secs(60),
        || {
            let got = cluster
                .node(2, 2)
                .query(&format!(
                    "SELECT uniqExact(message_id) FROM {DB}.events_local"
                ))
                .map_err(|e| e.to_string())?;
            (got.trim() == want.to_string()).then_some(()).ok_or(got)
        },
    );

    phase("replica caught up");
    // A single server given every event once answers the same.
    let single = ClickHouse::start().unwrap_or_else(|e| panic!("{e}"));
    let one = start(
        &config(&single.http_url(), None, &dir.join("one/spool")),
        &dir.join("one"),
        "ingest.log",
    );
    for batch in &batches {
        post(&one.url(), &body(batch)).unwrap();
    }
    poll(
        "every event on the single server",
        Duration::from_secs(60),
        || {
            let n = single
                .query(&format!("SELECT uniqExact(message_id) FROM {DB}.events"))
                .map_err(|e| e.to_string())?;
            (n.trim() == all.len().to_string()).then_some(()).ok_or(n)
        },
    );
    phase("single server filled");
    // Both ingest servers of the cluster answer it (the query tables fill through views, on
    // the single server too: its answers are asked again each time, since its views may still
    // be running after `events` shows every row, and its RFM quintiles are cached for a second).
    for srv in [&a, &b] {
        poll(
            "the cluster's answers to equal one server's",
            Duration::from_secs(60),
            || {
                let want = answers(&one.url());
                let got = answers(&srv.url());
                for ((what, w), (_, g)) in want.iter().zip(&got) {
                    let (w, g) = (&without_link_provenance(w), &without_link_provenance(g));
                    if w != g {
                        return Err(format!("{what}: {}", differences(g, w, "").join("; ")));
                    }
                }
                Ok(())
            },
        );
    }
}

const SECRET: &str = "receiver-secret-0123456789";
const PLATFORM_KEY: &str = "rk_platform_cluster";
const ADMIN_KEY: &str = "ak_shop_cluster_0123456789";

/// What the receiver recorded per request: its key and body, or why it was refused.
type Seen = Arc<Mutex<Vec<Result<(String, Value), String>>>>;

/// A webhook receiver on 127.0.0.1 (its own runtime: the test is synchronous): each request's
/// idempotency key and body once its signature verified, or why it did not.
struct Receiver {
    url: String,
    seen: Seen,
    _runtime: tokio::runtime::Runtime,
}

impl Receiver {
    fn start() -> Receiver {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let seen: Seen = Arc::default();
        let record = seen.clone();
        let hook = move |headers: HeaderMap, body: Bytes| {
            let record = record.clone();
            async move {
                let h = |n: &str| {
                    headers
                        .get(n)
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or_default()
                        .to_string()
                };
                let checked = verify(
                    SECRET.as_bytes(),
                    &h(HEADER_TIMESTAMP),
                    &h(HEADER_SIGNATURE),
                    &body,
                    now_ms() / 1000,
                    300,
                )
                .map_err(|e| format!("the signature does not verify: {e}"))
                .and_then(|()| {
                    serde_json::from_slice::<Value>(&body).map_err(|e| format!("the body: {e}"))
                })
                .and_then(|v| {
                    let key = h("idempotency-key");
                    if v["id"] == key.as_str() {
                        Ok((key, v))
                    } else {
                        Err(format!("idempotency-key {key:?} is not the body's id: {v}"))
                    }
                });
                let status = if checked.is_ok() {
                    StatusCode::OK
                } else {
                    StatusCode::BAD_REQUEST
                };
                record.lock().unwrap().push(checked);
                status
            }
        };
        let app = axum::Router::new().route("/hook", axum::routing::post(hook));
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .unwrap();
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        runtime.spawn(async move { axum::serve(listener, app).await.unwrap() });
        Receiver {
            url,
            seen,
            _runtime: runtime,
        }
    }

    /// Every request so far: `(key, kind, person)`, or the first that was refused.
    fn requests(&self) -> Result<Vec<(String, String, String)>, String> {
        self.seen
            .lock()
            .unwrap()
            .iter()
            .map(|r| {
                let (key, v) = r.as_ref().map_err(Clone::clone)?;
                let s = |x: &Value| x.as_str().unwrap_or_default().to_string();
                Ok((key.clone(), s(&v["type"]), s(&v["person"]["id"])))
            })
            .collect()
    }
}

fn get(url: &str) -> Result<String, String> {
    ureq::get(url)
        .call()
        .map_err(|e| e.to_string())?
        .body_mut()
        .read_to_string()
        .map_err(|e| e.to_string())
}

/// The tick the evaluators last committed (ClickHouse's copy on `node`).
fn last_tick(node: &ClickHouse) -> i64 {
    node.query(&format!(
        "SELECT argMax(value, version) FROM {DB}.trigger_state WHERE name = 'tick'"
    ))
    .ok()
    .and_then(|v| v.trim().parse().ok())
    .unwrap_or(0)
}

fn triggers_are_delivered_once_with_two_evaluating_servers(
    cluster: &Cluster,
    dir: &Path,
    phase: &dyn Fn(&str),
) {
    // The evaluator's bookkeeping is one table replicated whole on every server, not sharded.
    for n in cluster.nodes() {
        let t = n
            .query(&format!(
                "SELECT name, engine FROM system.tables WHERE database = '{DB}' AND name LIKE 'trigger_%' ORDER BY name FORMAT TSV"
            ))
            .unwrap();
        for (table, engine) in [
            ("trigger_candidates", "Memory"),
            ("trigger_lease", "ReplicatedReplacingMergeTree"),
            ("trigger_members", "ReplicatedReplacingMergeTree"),
            ("trigger_touched", "Distributed"),
            ("trigger_touched_local", "ReplicatedMergeTree"),
        ] {
            assert!(
                t.contains(&format!("{table}\t{engine}\n")),
                "{table} on {}: {t}",
                n.http_url()
            );
        }
        assert!(!t.contains("trigger_lease_local"), "{t}");
    }
    let rx = Receiver::start();
    // Two more servers, both evaluating, on the other replica of each shard.
    let evaluating = |node: &ClickHouse, name: &str| {
        let cfg = config(
            &node.http_url(),
            Some(CLUSTER),
            &dir.join(format!("{name}/spool")),
        )
        .with(|c| {
            c.query.read_keys.push(waymark_ingest::config::ReadKey {
                key: PLATFORM_KEY.into(),
                sites: vec!["shop".into()],
                subscribe: true,
            });
            c.privacy.admin_keys.push(waymark_ingest::config::AdminKey {
                name: "dpo".into(),
                key: ADMIN_KEY.into(),
                sites: vec!["shop".into()],
            });
            c.triggers.evaluate = true;
            c.triggers.tick = waymark_ingest::config::HumanDuration(Duration::from_secs(1));
        });
        let s = start(&cfg, &dir.join(name), "ingest.log");
        poll(
            "the evaluating server's schema",
            Duration::from_secs(60),
            || {
                let body = get(&format!("{}/readyz", s.url()))?;
                body.contains("\"schema\":\"ok\"").then_some(()).ok_or(body)
            },
        );
        s
    };
    let c = evaluating(cluster.node(1, 2), "c");
    let d = evaluating(cluster.node(2, 2), "d");
    let r = ureq::post(format!("{}/v1/subscriptions?site=shop", c.url()))
        .header("authorization", format!("Bearer {PLATFORM_KEY}"))
        .header("content-type", "application/json")
        .send(
            json!({"name": "added", "url": rx.url, "secret": SECRET,
                   "audience": {"conditions": [{"type": "did", "event": "Product Added", "within": "1h"}]}})
            .to_string(),
        )
        .unwrap_or_else(|e| panic!("registering the subscription: {e}"));
    assert_eq!(r.status(), 201);
    // Listed through the other server too (its copy of the table syncs before it is read).
    let listed = ureq::get(format!("{}/v1/subscriptions?site=shop", d.url()))
        .header("authorization", format!("Bearer {PLATFORM_KEY}"))
        .call()
        .unwrap()
        .body_mut()
        .read_to_string()
        .unwrap();
    assert!(listed.contains("\"name\":\"added\""), "{listed}");
    let reader = cluster.node(2, 1);
    poll(
        "the subscription's baseline",
        Duration::from_secs(60),
        || {
            let n = reader
                .query(&format!(
                    "SELECT count() FROM {DB}.trigger_state WHERE name LIKE 'baseline/%'"
                ))
                .map_err(|e| e.to_string())?;
            (n.trim() != "0").then_some(()).ok_or(n)
        },
    );
    phase("triggers: subscription baselined");

    // A person known by two visitor ids (on either shard, most likely) whose links came through
    // different servers, linked before the carts so the person is the user from the start; and
    // six visitors, their carts sent through one server or the other.
    let event = |id: &str, anon: &str, e: Value| {
        let mut e = e;
        e["messageId"] = json!(id);
        e["anonymousId"] = json!(anon);
        e["timestamp"] = json!(iso(now_ms()));
        e
    };
    let servers = [c.url(), d.url()];
    for (k, anon) in ["t-a", "t-b"].iter().enumerate() {
        let identify = event(
            &format!("tid-{anon}"),
            anon,
            json!({"type": "identify", "userId": "tu-1"}),
        );
        post(&servers[k], &body(&[identify])).unwrap();
    }
    poll("both links of tu-1", Duration::from_secs(30), || {
        let n = reader
            .query(&format!(
                "SELECT uniqExact(anonymous_id) FROM {DB}.q_ident_by_anon WHERE site = 'shop' AND user_id = 'tu-1'"
            ))
            .map_err(|e| e.to_string())?;
        (n.trim() == "2").then_some(()).ok_or(n)
    });
    // Each server's in-memory identity index has the link the other wrote, within its
    // refresh (1 s, by insert time from every shard): the person's profile lists both ids.
    let linked = Instant::now();
    for (k, s) in [&c, &d].iter().enumerate() {
        let other = ["t-b", "t-a"][k];
        poll(
            "the other server's link in the identity index",
            Duration::from_secs(10),
            || {
                let metrics = get(&format!("{}/metrics", s.url()))?;
                if !metrics
                    .lines()
                    .any(|l| l == "waymark_identity_index_ready 1")
                {
                    return Err("the identity index is not ready".into());
                }
                let mut r = ureq::get(format!("{}/v1/profiles/tu-1?site=shop", s.url()))
                    .header("authorization", format!("Bearer {READ_KEY}"))
                    .call()
                    .map_err(|e| e.to_string())?;
                let v: Value = serde_json::from_str(&r.body_mut().read_to_string().unwrap())
                    .map_err(|e| e.to_string())?;
                let ids = &v["anonymous_ids"];
                ids.as_array()
                    .is_some_and(|a| a.iter().any(|x| x == other))
                    .then_some(())
                    .ok_or(format!("anonymous_ids {ids}"))
            },
        );
    }
    eprintln!(
        "         both servers resolve the other's link {:.1} s after both were in ClickHouse",
        linked.elapsed().as_secs_f64()
    );
    let anons = ["t-1", "t-2", "t-3", "t-4", "t-5", "t-6", "t-a", "t-b"];
    for (k, anon) in anons.iter().enumerate() {
        let mut add = event(
            &format!("tadd-{anon}"),
            anon,
            json!({"type": "track", "event": "Product Added", "properties": {"product_id": "p-1"}}),
        );
        if anon.starts_with("t-a") || anon.starts_with("t-b") {
            add["userId"] = json!("tu-1");
        }
        post(&servers[k % 2], &body(&[add])).unwrap();
    }
    let mut want: Vec<(String, String)> = ["t-1", "t-2", "t-3", "t-4", "t-5", "t-6", "tu-1"]
        .iter()
        .map(|p| ("entered".to_string(), p.to_string()))
        .collect();
    want.sort();
    let entered = |rx: &Receiver| -> Result<Vec<(String, String)>, String> {
        let mut got: Vec<(String, String)> = rx
            .requests()?
            .into_iter()
            .map(|(_, kind, person)| (kind, person))
            .collect();
        got.sort();
        Ok(got)
    };
    poll("seven persons delivered", Duration::from_secs(60), || {
        let got = entered(&rx)?;
        (got.len() >= want.len())
            .then_some(())
            .ok_or(format!("{got:?}"))
    });
    phase("triggers: delivered");
    // Still once each after three more ticks, of whichever server evaluates.
    let after = last_tick(reader) + 3_000;
    poll("three more ticks", Duration::from_secs(60), || {
        let t = last_tick(reader);
        (t >= after).then_some(()).ok_or(t.to_string())
    });
    assert_eq!(entered(&rx).unwrap(), want, "one delivery per person");
    let keys: HashSet<String> = rx.requests().unwrap().into_iter().map(|r| r.0).collect();
    assert_eq!(keys.len(), want.len(), "no key sent twice");
    // One server evaluates and delivers, the other stands by.
    let holds = |s: &IngestServer| {
        get(&format!("{}/metrics", s.url()))
            .unwrap()
            .lines()
            .any(|l| l == "waymark_trigger_lease_held 1")
    };
    let (hc, hd) = (holds(&c), holds(&d));
    assert!(hc ^ hd, "one server holds the lease: c {hc}, d {hd}");
    // Nothing the cluster refused along the way: the replica syncs before each read of the
    // bookkeeping, and the first tick's clean-up of old `trigger_touched` partitions (which
    // lists every shard's parts and drops partitions on the local tables ON CLUSTER).
    for name in ["c", "d"] {
        let log = std::fs::read_to_string(dir.join(name).join("ingest.log")).unwrap();
        for bad in [
            "could not catch up",
            "could not drop old trigger_touched partitions",
            "trigger evaluation failed",
        ] {
            assert!(!log.contains(bad), "{name}'s log: {log}");
        }
    }
    phase("triggers: once each, one lease holder");

    // A person's deletion runs on every shard (ALTER ... ON CLUSTER), and its status, read
    // from a replica of each shard's `system.mutations`, says done once every shard is.
    let mut r = ureq::delete(format!("{}/v1/persons/tu-1?site=shop", c.url()))
        .header("authorization", format!("Bearer {ADMIN_KEY}"))
        .call()
        .unwrap_or_else(|e| panic!("deleting tu-1: {e}"));
    let answer: Value = serde_json::from_str(&r.body_mut().read_to_string().unwrap()).unwrap();
    let job = answer["job"].as_str().unwrap_or_else(|| panic!("{answer}"));
    poll("the deletion to be done", Duration::from_secs(60), || {
        let mut r = ureq::get(format!("{}/v1/deletions/{job}?site=shop", d.url()))
            .header("authorization", format!("Bearer {ADMIN_KEY}"))
            .call()
            .map_err(|e| e.to_string())?;
        let v: Value = serde_json::from_str(&r.body_mut().read_to_string().unwrap()).unwrap();
        (v["status"] == "done").then_some(()).ok_or(v.to_string())
    });
    // Every replica follows (the one not asked fetches the mutated parts or mutates itself).
    for n in cluster.nodes() {
        poll(
            "tu-1's events gone on every replica",
            Duration::from_secs(30),
            || {
                let left = n
                .query(&format!(
                    "SELECT count() FROM {DB}.events_local WHERE anonymous_id IN ('t-a', 't-b') OR user_id = 'tu-1'"
                ))
                .map_err(|e| e.to_string())?;
                (left.trim() == "0")
                    .then_some(())
                    .ok_or(format!("{left} on {}", n.http_url()))
            },
        );
    }
    phase("deletion: done on every shard");
}
