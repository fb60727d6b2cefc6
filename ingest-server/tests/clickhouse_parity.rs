//! ClickHouse 18.16 and current ClickHouse (26.x, in-process through chdb-core) give the same
//! answers to every statement the server sends.
//!
//! # How
//!
//! 1. **Record.** The server's own code runs against a real ClickHouse 18.16 through a recording
//!    HTTP proxy: the migrations, the fixture of the query tests (`query_support::seed`, through
//!    the server's sink), then the API: profiles, histories, audiences of every condition kind,
//!    a subscription and two ticks of the trigger evaluator (its scoped audience), the export of
//!    a person and their deletion, and the reads again after it. The proxy keeps every statement
//!    in the order sent. A statement another engineer adds to one of these paths is recorded
//!    without a change here.
//! 2. **Snapshot.** After the fixture, the rows of every table the server inserted into
//!    (`INSERT ... FORMAT RowBinary`: the data travels compressed, not as SQL) are read from
//!    18.16 as TabSeparated, duplicates included.
//! 3. **Replay twice, compare.** The same script runs on a fresh 18.16 and on chdb: every
//!    recorded statement in order, the snapshot loaded in place of the fixture's inserts (so the
//!    materialized views fill on each side). Every query's rows must be equal: as multisets, or
//!    in order when the query ends with an `ORDER BY`; numbers within a relative 1e-9. Statements
//!    on `system.` tables, `version()` and `SHOW`/`DESCRIBE` only have to run on both. Inserts
//!    made by the API after the snapshot (audit and subscription rows) are not replayed: the
//!    queries that read them see the same empty tables on both sides.
//!
//! Where the server picks a statement by `SELECT version()` (the person deletion: `ALTER TABLE
//! ... DELETE` before 23.3, the lightweight `DELETE FROM` after), chdb gets the form the server
//! would send it (`privacy::delete_statement`).
//!
//! Both sides replay the same script, so any difference is the versions', not the recording's.
//!
//! 4. **One shard per person (26 only).** Every lookup of the script (`QueryState::lookup`:
//!    profiles, histories, identity reads) runs again on chdb over `Distributed` tables of two
//!    shards, one of them unreachable, sharded as cluster mode shards them, with the settings
//!    the server sends on a cluster ([`one_shard_lookups`]): a lookup of one visitor id must
//!    answer from one shard, with the rows it gives unsharded.

mod query_support;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use query_support::*;
use serde_json::json;
use waymark_ingest::triggers::{subscription, Evaluator};
use waymark_testkit::chdb::Chdb;
use waymark_testkit::ClickHouse;

/// One request the server sent to ClickHouse.
#[derive(Debug, Clone)]
struct Sent {
    sql: String,
    /// An insert whose rows travel in the body (compressed RowBinary), not in the SQL.
    data: bool,
    /// Settings sent as URL parameters.
    settings: Vec<(String, String)>,
}

/// A recording HTTP proxy in front of ClickHouse.
struct Recorder {
    url: String,
    log: Arc<Mutex<Vec<Sent>>>,
}

/// URL parameters that are about the transport, not the statement's meaning.
const TRANSPORT_PARAMS: &[&str] = &[
    "query",
    "database",
    "default_format",
    "compress",
    "decompress",
    "enable_http_compression",
    "wait_end_of_query",
];

impl Recorder {
    async fn start(upstream: String) -> Recorder {
        let log: Arc<Mutex<Vec<Sent>>> = Arc::default();
        let client = reqwest::Client::new();
        let kept = log.clone();
        let app = axum::Router::new().fallback(
            move |method: Method, uri: Uri, headers: HeaderMap, body: Bytes| {
                let (client, log, upstream) = (client.clone(), kept.clone(), upstream.clone());
                async move { forward(&client, &log, &upstream, method, uri, headers, body).await }
            },
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        Recorder { url, log }
    }

    fn len(&self) -> usize {
        self.log.lock().unwrap().len()
    }

    fn statements(&self) -> Vec<Sent> {
        self.log.lock().unwrap().clone()
    }
}

async fn forward(
    client: &reqwest::Client,
    log: &Mutex<Vec<Sent>>,
    upstream: &str,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let target = format!(
        "{upstream}{}",
        uri.path_and_query().map(|p| p.as_str()).unwrap_or("/")
    );
    let url = reqwest::Url::parse(&target).unwrap();
    let params: Vec<(String, String)> = url.query_pairs().into_owned().collect();
    let in_url = params.iter().find(|(k, _)| k == "query").map(|(_, v)| v);
    let sent = match in_url {
        Some(sql) => Sent {
            sql: sql.clone(),
            data: !body.is_empty(),
            settings: Vec::new(),
        },
        None => Sent {
            sql: String::from_utf8_lossy(&body).into_owned(),
            data: false,
            settings: Vec::new(),
        },
    };
    let settings = params
        .into_iter()
        .filter(|(k, _)| !TRANSPORT_PARAMS.contains(&k.as_str()))
        .collect();
    if !sent.sql.trim().is_empty() {
        log.lock().unwrap().push(Sent { settings, ..sent });
    }
    let mut req = client.request(method, url).body(body);
    for (name, value) in &headers {
        if !matches!(name.as_str(), "host" | "content-length" | "connection") {
            req = req.header(name, value);
        }
    }
    match req.send().await {
        Ok(resp) => {
            let status = resp.status();
            let mut out = HeaderMap::new();
            for (name, value) in resp.headers() {
                if !matches!(
                    name.as_str(),
                    "content-length" | "transfer-encoding" | "connection"
                ) {
                    out.insert(name.clone(), value.clone());
                }
            }
            let bytes = resp.bytes().await.unwrap_or_default();
            (status, out, bytes).into_response()
        }
        Err(e) => (StatusCode::BAD_GATEWAY, e.to_string()).into_response(),
    }
}

/// What a statement is, for the replay.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// Rows come back and must be equal.
    Query,
    /// Must run on both sides; its answer is the version's own (system tables, version()).
    RunOnly,
    /// DDL, mutations, INSERT ... SELECT.
    Change,
}

fn kind(sql: &str) -> Kind {
    let upper = sql.trim_start().to_ascii_uppercase();
    let reads = ["SELECT", "WITH", "EXISTS", "(SELECT"]
        .iter()
        .any(|p| upper.starts_with(p));
    if upper.starts_with("SHOW") || upper.starts_with("DESC") {
        return Kind::RunOnly;
    }
    if !reads {
        return Kind::Change;
    }
    if upper.contains("SYSTEM.") || upper.contains("VERSION()") {
        Kind::RunOnly
    } else {
        Kind::Query
    }
}

/// The statement without a trailing `FORMAT <name>` (both sides answer TabSeparated).
fn without_format(sql: &str) -> String {
    let t = sql.trim().trim_end_matches(';').trim_end();
    if let Some(i) = t.to_ascii_uppercase().rfind("FORMAT ") {
        let rest = t[i + "FORMAT ".len()..].trim();
        if !rest.is_empty() && rest.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
            return t[..i].trim_end().to_string();
        }
    }
    t.to_string()
}

/// `db.table` of `INSERT INTO db.table ...`.
fn insert_target(sql: &str) -> Option<String> {
    let upper = sql.trim_start().to_ascii_uppercase();
    let rest = upper.strip_prefix("INSERT INTO ")?;
    let len = rest
        .find(|c: char| c.is_whitespace() || c == '(')
        .unwrap_or(rest.len());
    let start = sql.len() - sql.trim_start().len() + "INSERT INTO ".len();
    Some(sql[start..start + len].replace('`', ""))
}

/// `(table, filter)` of `ALTER TABLE {db}.table DELETE WHERE filter`.
fn alter_delete(sql: &str, db: &str) -> Option<(String, String)> {
    let rest = sql.trim().strip_prefix(&format!("ALTER TABLE {db}."))?;
    let (table, filter) = rest.split_once(" DELETE WHERE ")?;
    Some((table.to_string(), filter.to_string()))
}

/// Whether two TabSeparated answers hold the same rows (in order when `ordered`), cells equal
/// as text or as numbers within a relative 1e-9.
fn same_rows(a: &str, b: &str, ordered: bool) -> bool {
    let rows = |s: &str| -> Vec<Vec<String>> {
        s.lines()
            .map(|l| l.split('\t').map(str::to_string).collect())
            .collect()
    };
    let (mut ra, mut rb) = (rows(a), rows(b));
    if !ordered {
        ra.sort();
        rb.sort();
    }
    let cell = |x: &String, y: &String| {
        x == y
            || matches!((x.parse::<f64>(), y.parse::<f64>()),
                (Ok(p), Ok(q)) if (p - q).abs() <= 1e-9 * p.abs().max(q.abs()).max(1.0))
    };
    ra.len() == rb.len()
        && ra
            .iter()
            .zip(&rb)
            .all(|(x, y)| x.len() == y.len() && x.iter().zip(y).all(|(p, q)| cell(p, q)))
}

/// Whether the statement's outermost query ends with an ORDER BY (so row order is its answer).
fn ordered(sql: &str) -> bool {
    let upper = sql.to_ascii_uppercase();
    match (upper.rfind("ORDER BY"), upper.rfind(')')) {
        (Some(o), Some(p)) => o > p,
        (Some(_), None) => true,
        _ => false,
    }
}

/// One replay target.
trait Side {
    fn run(&mut self, sql: &str) -> Result<String, String>;
    /// Blocks until the database's mutations are done.
    fn settle(&mut self, db: &str);
}

/// The fresh 18.16 and the database the statements name unqualified tables in.
struct Old(ClickHouse, String);

impl Side for Old {
    fn run(&mut self, sql: &str) -> Result<String, String> {
        match self.0.query_in(&self.1, sql) {
            Ok((200, body)) => Ok(body),
            Ok((status, body)) => Err(format!("{status}: {body}")),
            Err(e) => Err(e.to_string()),
        }
    }

    fn settle(&mut self, db: &str) {
        let deadline = Instant::now() + Duration::from_secs(60);
        let sql =
            format!("SELECT count() FROM system.mutations WHERE database = '{db}' AND is_done = 0");
        while self.run(&sql).map(|n| n.trim() != "0").unwrap_or(true) {
            assert!(
                Instant::now() < deadline,
                "18.16: mutations in {db} not done after 60 s"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Side for Chdb {
    fn run(&mut self, sql: &str) -> Result<String, String> {
        self.query(sql)
    }

    fn settle(&mut self, _db: &str) {
        // The driver's session runs with mutations_sync = 2.
    }
}

/// Tables that materialized views fill with values of the ClickHouse clock at the insert
/// (`quality_hourly`'s ack-to-visible delays, migration 131). Loading the snapshot's `events`
/// on each side runs those views at that side's moment, a second or more apart, so the sums
/// differ by the gap alone: after the load, such a table is emptied on both sides and gets the
/// recording's rows instead. The views themselves still run on both versions.
const CLOCK_FED: &[&str] = &["quality_hourly"];

fn clock_fed(table: &str) -> bool {
    CLOCK_FED
        .iter()
        .any(|t| table.rsplit('.').next() == Some(*t))
}

/// Replays `script` on both sides; the differences found, one line each.
fn replay(
    script: &[Sent],
    snapshot_at: usize,
    snapshot: &[(String, String)],
    db: &str,
    old: &mut Old,
    new: &mut Chdb,
) -> (Vec<String>, Tally) {
    let mut problems = Vec::new();
    let mut tally = Tally::default();
    let create = format!("CREATE DATABASE IF NOT EXISTS {db}");
    let default_db = format!("USE {db}");
    // (Made without the `database` setting, which must name a database that exists.)
    old.0.query(&create).unwrap_or_else(|e| panic!("{e}"));
    for side in [new.run(&create), new.run(&default_db)] {
        side.unwrap_or_else(|e| panic!("{create}: {e}"));
    }
    for (i, s) in script.iter().enumerate() {
        if i == snapshot_at {
            for (table, rows) in snapshot {
                if clock_fed(table) {
                    let empty = format!("ALTER TABLE {table} DELETE WHERE 1");
                    old.run(&empty)
                        .unwrap_or_else(|e| panic!("18.16: emptying {table}: {e}"));
                    new.run(&empty)
                        .unwrap_or_else(|e| panic!("26: emptying {table}: {e}"));
                    old.settle(db);
                    new.settle(db);
                }
                let load = format!("INSERT INTO {table} FORMAT TabSeparated\n{rows}");
                old.run(&load)
                    .unwrap_or_else(|e| panic!("18.16: loading {table}: {e}"));
                // Current releases collapse the duplicates of one insert block in a Replacing
                // table as it is written (`optimize_on_insert`); the server's duplicates come
                // from separate inserts, which stay apart until a merge, as in 18.16. The
                // snapshot is one block, so it is loaded as 18.16 writes it.
                let load_as_written = format!(
                    "INSERT INTO {table} SETTINGS optimize_on_insert = 0 FORMAT TabSeparated\n{rows}"
                );
                new.run(&load_as_written)
                    .unwrap_or_else(|e| panic!("26: loading {table}: {e}"));
            }
        }
        if s.data {
            continue;
        }
        let sql = without_format(&s.sql);
        // The statement the server would send the newer version, where it picks by version.
        let new_sql = match alter_delete(&sql, db) {
            Some((table, filter)) => {
                tally.by_version += 1;
                waymark_ingest::privacy::delete_statement(db, &table, &filter, true)
            }
            None => sql.clone(),
        };
        let k = kind(&sql);
        let a = old.run(&sql);
        let b = new.run(&new_sql);
        if k == Kind::Change {
            old.settle(db);
            new.settle(db);
        }
        let short = sql.chars().take(300).collect::<String>();
        match (&a, &b) {
            (Ok(x), Ok(y)) if k == Kind::Query => {
                tally.compared += 1;
                tally.with_rows += usize::from(!x.trim().is_empty());
                if !same_rows(x, y, ordered(&sql)) {
                    problems.push(format!(
                        "different rows for statement {i}: {short}\n  18.16: {x:?}\n  26: {y:?}"
                    ));
                }
            }
            (Ok(_), Ok(_)) => {}
            (Err(x), Err(y)) => problems.push(format!(
                "statement {i} fails on both (it did not when recorded): {short}\n  18.16: {x}\n  26: {y}"
            )),
            (Ok(_), Err(y)) => {
                problems.push(format!("statement {i} fails on 26 only: {new_sql}\n  26: {y}"))
            }
            (Err(x), Ok(_)) => {
                problems.push(format!("statement {i} fails on 18.16 only: {short}\n  18.16: {x}"))
            }
        }
    }
    (problems, tally)
}

/// What a replay did.
#[derive(Debug, Default)]
struct Tally {
    /// Queries whose rows were compared ...
    compared: usize,
    /// ... and how many of them had rows on 18.16.
    with_rows: usize,
    /// Statements sent to 26 in the form the server picks for it by version.
    by_version: usize,
}

/// The API calls whose statements are recorded: every read endpoint with the variants the
/// query tests use.
/// `deleted`: alice has been deleted, so her export answers 404.
async fn reads(st: &waymark_ingest::query::QueryState, now: i64, deleted: bool) {
    let ok = |a: &Answer, what: &str| assert_eq!(a.status, StatusCode::OK, "{what}: {}", a.text);
    for uri in [
        "/v1/profiles/alice?site=shop".to_string(),
        "/v1/profiles/alice?site=other".to_string(),
        "/v1/profiles/v1?site=shop".to_string(),
        "/v1/profiles/c1?site=shop".to_string(),
        "/v1/profiles/yan?site=shop".to_string(),
        "/v1/profiles/nobody?site=shop".to_string(),
        "/v1/profiles/alice/events?site=shop".to_string(),
        "/v1/profiles/alice/events?site=shop&limit=3".to_string(),
        "/v1/profiles/alice/events?site=shop&type=page".to_string(),
        format!(
            "/v1/profiles/alice/events?site=shop&name={}&before={}",
            enc("Product Added"),
            enc(&time(now - HOUR))
        ),
        "/v1/profiles/a1/events?site=shop&limit=5".to_string(),
        "/v1/quality?site=shop".to_string(),
        "/v1/identity/suggestions?site=shop".to_string(),
        format!("/v1/quality?site=shop&since={}", enc(&time(now - 2 * HOUR))),
    ] {
        let a = get(st, &uri, BOTH_KEY).await;
        assert!(
            a.status == StatusCode::OK || a.status == StatusCode::NOT_FOUND,
            "{uri}: {} {}",
            a.status,
            a.text
        );
    }
    let conditions = [
        json!([{"type": "did", "event": "Product Added", "within": "24h"},
               {"type": "did_not", "event": "Order Completed", "within": "24h"},
               {"type": "last_seen_within", "within": "7d"}]),
        json!([{"type": "geo", "field": "country", "op": "eq", "value": "DE"}]),
        json!([{"type": "geo", "field": "city", "op": "in", "value": ["Lyon", "Hamburg"]}]),
        json!([{"type": "geo", "field": "country", "op": "neq", "value": "FR"}]),
        json!([{"type": "trait", "name": "plan", "op": "eq", "value": "pro"}]),
        json!([{"type": "trait", "name": "plan", "op": "neq", "value": "pro"}]),
        json!([{"type": "did", "event": "Product Viewed", "min_count": 2}]),
        json!([{"type": "did", "event": "Order Completed", "within": "30d"}]),
        json!([{"type": "did", "event": "$page", "within": "30d"}]),
        json!([{"type": "did", "event": "Product Added",
                "where": [{"property": "product_id", "op": "eq", "value": "p1"}]}]),
        json!([{"type": "did", "event": "Product Added",
                "where": [{"property": "product_id", "op": "in", "value": ["p1", "p2"]}]}]),
        json!([{"type": "did", "event": "Product Added",
                "where": [{"property": "product_id", "op": "contains", "value": "p"}]}]),
        json!([{"type": "did_not", "event": "Product Added"}]),
    ];
    for c in conditions {
        let body = json!({"conditions": c}).to_string();
        let a = post(st, "/v1/audiences/query?site=shop", SHOP_KEY, &body).await;
        ok(&a, &body);
        let paged = json!({"conditions": c, "limit": 2}).to_string();
        ok(
            &post(st, "/v1/audiences/query?site=shop", SHOP_KEY, &paged).await,
            &paged,
        );
    }
    let export = get(st, "/v1/persons/alice/export?site=shop", ADMIN_KEY).await;
    let want = if deleted {
        StatusCode::NOT_FOUND
    } else {
        StatusCode::OK
    };
    assert_eq!(export.status, want, "export: {}", export.text);
}

#[tokio::test(flavor = "multi_thread")]
async fn every_statement_gives_the_same_rows_on_clickhouse_26() {
    // Fail early, with the install hint, when chdb is missing.
    let mut chdb = Chdb::start_with_config(Some(TWO_SHARDS)).unwrap_or_else(|e| panic!("{e}"));
    let recorder = Recorder::start(clickhouse().http_url()).await;
    let db = Db::new_at(&recorder.url).await;
    let now = now_ms();
    seed(&db, now).await;
    let snapshot_at = recorder.len();
    let script_so_far = recorder.statements();
    let mut tables: Vec<String> = Vec::new();
    for s in script_so_far.iter().filter(|s| s.data) {
        let mut t =
            insert_target(&s.sql).unwrap_or_else(|| panic!("an insert without a table: {}", s.sql));
        if !t.contains('.') {
            t = format!("{}.{t}", db.name);
        }
        if !tables.contains(&t) {
            tables.push(t);
        }
    }
    assert!(tables.iter().any(|t| t.ends_with(".events")), "{tables:?}");
    // Tables that views fill from the insert's own clock are loaded as recorded, last.
    tables.retain(|t| !clock_fed(t));
    tables.extend(CLOCK_FED.iter().map(|t| format!("{}.{t}", db.name)));
    let snapshot: Vec<(String, String)> = tables
        .iter()
        .map(|t| {
            (
                t.clone(),
                sql(&format!("SELECT * FROM {t} FORMAT TabSeparated")),
            )
        })
        .collect();

    // The API, through the recorder.
    let st = db.state(&[]);
    reads(&st, now, false).await;
    let sub = subscription::parse(
        json!({"name": "cart", "url": "http://127.0.0.1:9/hook", "secret": "receiver-secret-0123456789",
               "audience": {"conditions": [
                   {"type": "did", "event": "Product Added", "within": "3h"},
                   {"type": "did_not", "event": "Order Completed", "within": "1h"}]}})
        .to_string()
        .as_bytes(),
    )
    .unwrap();
    subscription::create(&st, "shop", sub, 10, now - HOUR)
        .await
        .unwrap();
    let mut ev = Evaluator::new(st.clone());
    ev.tick(now - HOUR).await.unwrap();
    ev.tick(now).await.unwrap();
    let del = call(
        &st,
        "DELETE",
        "/v1/persons/alice?site=shop",
        Some(ADMIN_KEY),
        None,
        None,
    )
    .await;
    assert_eq!(del.status.as_u16() / 100, 2, "delete: {}", del.text);
    let status_url = del.json()["status_url"].as_str().unwrap().to_string();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let s = get(&st, &status_url, ADMIN_KEY).await;
        if s.json()["status"] == "done" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the deletion did not finish: {}",
            s.text
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    reads(&st, now, true).await;

    let script = recorder.statements();
    let settings: std::collections::BTreeSet<String> = script
        .iter()
        .flat_map(|s| s.settings.iter().map(|(k, v)| format!("{k}={v}")))
        .collect();
    println!(
        "recorded {} statements ({} before the snapshot; {} data inserts); settings sent: {settings:?}",
        script.len(),
        snapshot_at,
        script.iter().filter(|s| s.data).count()
    );

    let fresh = tokio::task::block_in_place(ClickHouse::start).unwrap_or_else(|e| panic!("{e}"));
    let mut fresh = Old(fresh, db.name.clone());
    let (problems, tally) = tokio::task::block_in_place(|| {
        replay(
            &script,
            snapshot_at,
            &snapshot,
            &db.name,
            &mut fresh,
            &mut chdb,
        )
    });
    println!(
        "replayed on 18.16 and {} (chdb): {} queries compared ({} with rows), {} statements in the form picked by version, {} problems",
        chdb.version(),
        tally.compared,
        tally.with_rows,
        tally.by_version,
        problems.len()
    );
    assert!(tally.compared >= 100, "only {tally:?}");
    assert!(
        tally.with_rows * 2 >= tally.compared,
        "most answers empty: {tally:?}"
    );
    assert!(
        tally.by_version > 0,
        "the deletion's statements were not seen: {tally:?}"
    );
    if !problems.is_empty() {
        // The whole script, numbered as in the messages, to read what led up to a difference.
        let path = std::env::temp_dir().join(format!("waymark-parity-{}.sql", db.name));
        let text: String = script
            .iter()
            .enumerate()
            .map(|(i, s)| {
                format!(
                    "-- {i}{}\n{};\n\n",
                    if s.data { " (data)" } else { "" },
                    s.sql
                )
            })
            .collect();
        std::fs::write(&path, text).unwrap();
        panic!(
            "{}\n\n(the recorded statements are in {})",
            problems.join("\n\n"),
            path.display()
        );
    }
    tokio::task::block_in_place(|| one_shard_lookups(&script, &db.name, &mut chdb));
}

/// The chdb session's config: two clusters of two shards, for [`one_shard_lookups`]. Shard
/// `127.0.0.1:9000` is chdb itself (the config's `tcp_port`, so ClickHouse runs it in process);
/// `127.0.0.2:1` refuses every connection. A query over a `Distributed` table of
/// `live_first` succeeds only if it went to shard 1 alone, of `live_second` only if it went to
/// shard 2 alone.
const TWO_SHARDS: &str = "<clickhouse>
  <tcp_port>9000</tcp_port>
  <remote_servers>
    <live_first>
      <shard><replica><host>127.0.0.1</host><port>9000</port></replica></shard>
      <shard><replica><host>127.0.0.2</host><port>1</port></replica></shard>
    </live_first>
    <live_second>
      <shard><replica><host>127.0.0.2</host><port>1</port></replica></shard>
      <shard><replica><host>127.0.0.1</host><port>9000</port></replica></shard>
    </live_second>
  </remote_servers>
</clickhouse>";

/// `sql` with every table of `db` in `tables` renamed `<table>_<suffix>`.
fn renamed(sql: &str, db: &str, tables: &[String], suffix: &str) -> String {
    let head = format!("{db}.");
    let ident = |b: u8| b.is_ascii_alphanumeric() || b == b'_';
    let mut out = String::new();
    let mut rest = sql;
    while let Some(i) = rest.find(&head) {
        let after = &rest[i + head.len()..];
        let n = after.bytes().take_while(|b| ident(*b)).count();
        let table = &after[..n];
        let whole = i == 0 || !ident(rest.as_bytes()[i - 1]);
        out.push_str(&rest[..i + head.len() + n]);
        if whole && tables.iter().any(|t| t == table) {
            out.push('_');
            out.push_str(suffix);
        }
        rest = &after[n..];
    }
    out.push_str(rest);
    out
}

/// #19's "per-person queries touch one shard", on ClickHouse 26: every lookup the API sent
/// (profiles, histories, the identity reads; `QueryState::lookup`) is run over two shards of
/// which one cannot be reached, once with each as the live one, with the settings the server
/// adds on a cluster (`SKIP_UNUSED_SHARDS`, and `distributed_product_mode` from
/// `store::client`). Runs on chdb's final state, compared with the same lookup unsharded.
fn one_shard_lookups(script: &[Sent], db: &str, chdb: &mut Chdb) {
    let lookup = |s: &&Sent| {
        waymark_ingest::query::LOOKUP_SETTINGS
            .iter()
            .all(|(k, v)| s.settings.iter().any(|(a, b)| a == k && b == v))
    };
    // Each table of the database, twice over the two shards (`TWO_SHARDS`), sharded by the key
    // cluster mode gives it. The live shard is this database itself.
    let list = format!(
        "SELECT name FROM system.tables WHERE database = '{db}' AND engine LIKE '%MergeTree'"
    );
    let tables: Vec<String> = chdb
        .run(&list)
        .unwrap_or_else(|e| panic!("{list}: {e}"))
        .lines()
        .map(str::to_string)
        .filter(|t| waymark_ingest::store::schema::cluster::table_sharding_key(t).is_some())
        .collect();
    for t in &tables {
        let key = waymark_ingest::store::schema::cluster::table_sharding_key(t).unwrap();
        for cluster in ["live_first", "live_second"] {
            let create = format!(
                "CREATE TABLE {db}.{t}_{cluster} AS {db}.{t} ENGINE = Distributed({cluster}, {db}, {t}, {key})"
            );
            chdb.run(&create)
                .unwrap_or_else(|e| panic!("{create}: {e}"));
        }
    }
    let (skip, on) = waymark_ingest::query::SKIP_UNUSED_SHARDS;
    for set in [
        format!("SET {skip} = {on}"),
        "SET distributed_product_mode = 'global'".to_string(),
    ] {
        chdb.run(&set).unwrap_or_else(|e| panic!("{set}: {e}"));
    }
    let (mut one, mut all, mut single_visitor) = (0, 0, 0);
    let mut problems = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for s in script.iter().filter(lookup) {
        let sql = without_format(&s.sql);
        if !seen.insert(sql.clone()) {
            continue;
        }
        let plain = chdb.run(&sql).unwrap_or_else(|e| panic!("{sql}: {e}"));
        let answers =
            ["live_first", "live_second"].map(|c| chdb.run(&renamed(&sql, db, &tables, c)));
        let short = sql.chars().take(300).collect::<String>();
        let pinned = sql.contains("visitor_id = '") && !sql.contains("identities");
        single_visitor += usize::from(pinned);
        match answers {
            [Ok(x), Err(_)] | [Err(_), Ok(x)] => {
                one += 1;
                if !same_rows(&plain, &x, ordered(&sql)) {
                    problems.push(format!(
                        "one shard answered differently: {short}\n  unsharded: {plain:?}\n  one shard: {x:?}"
                    ));
                }
            }
            [Err(x), Err(_)] => {
                all += 1;
                if pinned {
                    problems.push(format!(
                        "a one-visitor lookup did not go to one shard: {short}\n  {x}"
                    ));
                }
            }
            [Ok(_), Ok(_)] => problems.push(format!(
                "a lookup answered with a shard unreachable on either side (not sharded?): {short}"
            )),
        }
    }
    chdb.run(&format!("SET {skip} = 0")).unwrap();
    println!(
        "lookups over two shards on {}: {one} went to one shard ({single_visitor} for a single visitor id), {all} to both",
        chdb.version()
    );
    assert!(problems.is_empty(), "{}", problems.join("\n\n"));
    assert!(
        single_visitor >= 10 && one >= single_visitor,
        "one {one}, single visitor {single_visitor}, both {all}"
    );
}

#[test]
fn statements_are_classified_and_their_format_dropped() {
    assert_eq!(kind("SELECT 1"), Kind::Query);
    assert_eq!(kind("  WITH x AS (SELECT 1) SELECT * FROM x"), Kind::Query);
    assert_eq!(kind("SELECT count() FROM system.mutations"), Kind::RunOnly);
    assert_eq!(kind("SELECT version() AS v"), Kind::RunOnly);
    assert_eq!(
        kind("CREATE TABLE t (a UInt8) ENGINE = Memory"),
        Kind::Change
    );
    assert_eq!(kind("ALTER TABLE d.t DELETE WHERE 1"), Kind::Change);
    assert_eq!(without_format("SELECT 1 FORMAT RowBinary"), "SELECT 1");
    assert_eq!(without_format("SELECT 'FORMAT x y'"), "SELECT 'FORMAT x y'");
    assert_eq!(
        insert_target("INSERT INTO db.events (a, b) FORMAT RowBinary").as_deref(),
        Some("db.events")
    );
    assert_eq!(
        alter_delete("ALTER TABLE db.events DELETE WHERE site = 'a'", "db"),
        Some(("events".into(), "site = 'a'".into()))
    );
    assert!(ordered("SELECT a FROM (SELECT a FROM t) ORDER BY a"));
    assert!(!ordered("SELECT a FROM (SELECT a FROM t ORDER BY a)"));
}

#[test]
fn rows_compare_as_sets_unless_ordered_and_numbers_with_tolerance() {
    assert!(same_rows("a\t1\nb\t2\n", "b\t2\na\t1\n", false));
    assert!(!same_rows("a\t1\nb\t2\n", "b\t2\na\t1\n", true));
    assert!(same_rows("0.30000000000000004\n", "0.3\n", true));
    assert!(!same_rows("0.31\n", "0.3\n", true));
    assert!(!same_rows("a\n", "a\na\n", false), "duplicates count");
    assert!(!same_rows("x\ty\n", "x\n", false));
}
