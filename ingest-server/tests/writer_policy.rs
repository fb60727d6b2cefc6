//! The writer's error policy against a real ClickHouse: when ClickHouse cannot take anything
//! (a dropped column, a read-only user, a stopped server) acknowledged events stay in the spool,
//! `/readyz` and `/metrics` name the cause, and they arrive once it is fixed, none in
//! quarantine. Only rows ClickHouse refuses while it takes a probe row are quarantined, and
//! `ingest-server quarantine replay` brings them back once the cause is fixed, once.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};
use waymark_testkit::{ClickHouse, SWITCHABLE_USER};

const WAIT: Duration = Duration::from_secs(30);

/// More attempts than the old policy made (8) before it sent rows to quarantine.
const MANY_RETRIES: u64 = 20;

/// A server that retries quickly (backoff capped at 100 ms), so many attempts fit in a test.
async fn server(ch: &ClickHouse, user: Option<&str>) -> Server {
    Server::start_with(ch, |c| {
        c.writer.max_backoff = waymark_ingest::config::HumanDuration(Duration::from_millis(100));
        if let Some(u) = user {
            c.clickhouse.user = u.into();
        }
    })
    .await
}

async fn send(srv: &Server, key: &str, events: &[(&str, &str)]) {
    let batch: Vec<Value> = events
        .iter()
        .map(
            |(id, ev)| json!({"type": "track", "messageId": id, "anonymousId": "a-1", "event": ev}),
        )
        .collect();
    let r = http()
        .post(srv.url("/v1/batch"))
        .basic_auth(key, Some(""))
        .body(json!({ "batch": batch }).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
}

async fn metrics(srv: &Server) -> String {
    http()
        .get(srv.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

fn metric(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
}

/// Polls `/metrics` until the writer is blocked for `cause` and has retried more than the old
/// policy's attempt limit; returns the metrics then.
async fn blocked_for_long(srv: &Server, cause: &str) -> String {
    let line = format!("waymark_writer_blocked{{cause=\"{cause}\"}} 1");
    let deadline = Instant::now() + WAIT;
    loop {
        let m = metrics(srv).await;
        let retries = metric(&m, "waymark_insert_retries_total").unwrap_or(0.0);
        if m.contains(&line) && retries >= MANY_RETRIES as f64 {
            return m;
        }
        assert!(
            Instant::now() < deadline,
            "no {line:?} with {MANY_RETRIES} retries within {WAIT:?}:\n{m}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn readyz(srv: &Server) -> (u16, Value) {
    let r = http().get(srv.url("/readyz")).send().await.unwrap();
    (r.status().as_u16(), r.json().await.unwrap())
}

fn count(ch: &ClickHouse, sql: &str) -> u64 {
    tokio::task::block_in_place(|| ch.query(sql))
        .unwrap_or_else(|e| panic!("{e}"))
        .trim()
        .parse()
        .unwrap()
}

/// Checks the state while ClickHouse refuses: blocked for `cause` with `error_has` in the last
/// error, the rows in the spool, none in `events` or `quarantine`.
async fn assert_held(ch: &ClickHouse, srv: &Server, cause: &str, error_has: &str, prefix: &str) {
    let m = blocked_for_long(srv, cause).await;
    assert!(
        metric(&m, "waymark_spool_pending_bytes").unwrap() > 0.0,
        "the rows left the spool:\n{m}"
    );
    assert_eq!(metric(&m, "waymark_quarantined_rows_total"), Some(0.0));
    let (status, body) = readyz(srv).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["writer"]["state"], "blocked", "{body}");
    assert_eq!(body["writer"]["cause"], cause, "{body}");
    let error = body["writer"]["error"].as_str().unwrap();
    assert!(error.contains(error_has), "{error_has:?} not in {error:?}");
    if ch.is_running() {
        let db = &srv.db;
        assert_eq!(
            count(ch, &format!("SELECT count() FROM {db}.quarantine")),
            0
        );
        assert_eq!(
            count(
                ch,
                &format!("SELECT count() FROM {db}.events WHERE message_id LIKE '{prefix}%'")
            ),
            0
        );
    }
}

/// After the fix: every held row in `events`, none in quarantine, the writer ready again.
async fn assert_arrived(ch: &ClickHouse, srv: &Server, cause: &str, prefix: &str, n: usize) {
    let db = &srv.db;
    let got = wait_for(
        ch,
        &format!("SELECT uniqExact(message_id) FROM {db}.events WHERE message_id LIKE '{prefix}%'"),
        &n.to_string(),
        WAIT,
    )
    .await;
    assert_eq!(got, n.to_string(), "held rows did not all arrive");
    assert_eq!(
        count(ch, &format!("SELECT count() FROM {db}.quarantine")),
        0
    );
    let deadline = Instant::now() + WAIT;
    loop {
        let (status, body) = readyz(srv).await;
        let m = metrics(srv).await;
        if status == 200
            && body["writer"]["state"] == "ok"
            && m.contains(&format!("waymark_writer_blocked{{cause=\"{cause}\"}} 0"))
        {
            break;
        }
        assert!(Instant::now() < deadline, "still not ready: {body}\n{m}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn warm_up(ch: &ClickHouse, srv: &Server) {
    send(srv, WRITE_KEY, &[("warm", "E")]).await;
    let db = &srv.db;
    let got = wait_for(ch, &format!("SELECT count() FROM {db}.events"), "1", WAIT).await;
    assert_eq!(got, "1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_column_holds_rows_in_the_spool_until_it_is_back() {
    let ch = clickhouse();
    let mut srv = server(ch, None).await;
    warm_up(ch, &srv).await;
    let db = srv.db.clone();
    query(ch, &format!("ALTER TABLE {db}.events DROP COLUMN utm_term"));
    let ids = ["col-0", "col-1", "col-2", "col-3", "col-4"];
    send(&srv, WRITE_KEY, &ids.map(|i| (i, "E"))).await;
    assert_held(ch, &srv, "missing_column", "utm_term", "col-").await;

    query(
        ch,
        &format!("ALTER TABLE {db}.events ADD COLUMN utm_term String AFTER utm_medium"),
    );
    assert_arrived(ch, &srv, "missing_column", "col-", ids.len()).await;
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_only_user_holds_rows_in_the_spool_until_it_may_write() {
    let ch = clickhouse();
    let mut srv = server(ch, Some(SWITCHABLE_USER)).await;
    warm_up(ch, &srv).await;
    tokio::task::block_in_place(|| ch.set_readonly(true)).unwrap();
    let ids = ["ro-0", "ro-1", "ro-2"];
    send(&srv, WRITE_KEY, &ids.map(|i| (i, "E"))).await;
    assert_held(ch, &srv, "read_only", "Code: 164", "ro-").await;

    tokio::task::block_in_place(|| ch.set_readonly(false)).unwrap();
    assert_arrived(ch, &srv, "read_only", "ro-", ids.len()).await;
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_server_holds_rows_in_the_spool_until_it_is_back() {
    // Its own server: stopping the binary's shared one would fail the other tests.
    let mut ch = tokio::task::block_in_place(ClickHouse::start).unwrap_or_else(|e| panic!("{e}"));
    let mut srv = server(&ch, None).await;
    warm_up(&ch, &srv).await;
    tokio::task::block_in_place(|| ch.stop());
    let ids = ["down-0", "down-1", "down-2"];
    send(&srv, WRITE_KEY, &ids.map(|i| (i, "E"))).await;
    assert_held(&ch, &srv, "unreachable", "network error", "down-").await;

    tokio::task::block_in_place(|| ch.resume()).unwrap();
    assert_arrived(&ch, &srv, "unreachable", "down-", ids.len()).await;
    srv.stop().await;
}

/// Runs `ingest-server quarantine replay --config FILE ARGS`; whether it exited 0, its stdout.
fn replay_run(config: &std::path::Path, args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_ingest-server"))
        .args(["quarantine", "replay", "--config"])
        .arg(config)
        .args(args)
        .env("RUST_LOG", "warn")
        .output()
        .expect("running ingest-server quarantine replay");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        eprintln!("{}", String::from_utf8_lossy(&out.stderr));
    }
    (out.status.success(), stdout)
}

/// The same, which must succeed.
fn replay(config: &std::path::Path, args: &[&str]) -> String {
    let (ok, out) = replay_run(config, args);
    assert!(ok, "replay {args:?} failed:\n{out}");
    out
}

fn has(out: &str, line: &str) {
    assert!(
        out.contains(line),
        "{line:?} not in the replay's output:\n{out}"
    );
}

/// A row-fault: a value the table refuses (a column whose default throws on it). The batch is
/// bisected, the good rows land, the refused ones go to quarantine. Replay before the fix moves
/// nothing and says why; after it, each row arrives in `events` with its original message id,
/// once, with `--site` and `--since` choosing which; lines of an old dead-letter file too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_rows_are_quarantined_and_replayed_once_the_cause_is_fixed() {
    let ch = clickhouse();
    let mut srv = Server::start(ch).await;
    warm_up(ch, &srv).await;
    let db = srv.db.clone();
    query(
        ch,
        &format!(
            "ALTER TABLE {db}.events ADD COLUMN guard UInt8 DEFAULT throwIf(event = 'poison')"
        ),
    );
    let shop: Vec<(String, &str)> = (0..10)
        .map(|i| {
            (
                format!("rf-{i}"),
                if i == 3 || i == 7 { "poison" } else { "E" },
            )
        })
        .collect();
    let shop: Vec<(&str, &str)> = shop.iter().map(|(i, e)| (i.as_str(), *e)).collect();
    send(&srv, WRITE_KEY, &shop).await;
    send(&srv, OTHER_KEY, &[("rf-b1", "poison")]).await;
    let q = wait_for(
        ch,
        &format!("SELECT arrayStringConcat(groupArray(message_id), ',') FROM (SELECT message_id FROM {db}.quarantine ORDER BY message_id)"),
        "rf-3,rf-7,rf-b1",
        WAIT,
    )
    .await;
    assert_eq!(q, "rf-3,rf-7,rf-b1");
    let landed = wait_for(
        ch,
        &format!("SELECT uniqExact(message_id) FROM {db}.events WHERE message_id LIKE 'rf-%'"),
        "8",
        WAIT,
    )
    .await;
    assert_eq!(landed, "8", "the good rows of the refused batch");
    let reason = query(ch, &format!("SELECT any(reason) FROM {db}.quarantine"));
    assert!(reason.contains("throwIf"), "{reason}");

    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("ingest.toml");
    common::config("127.0.0.1:0", &ch.http_url(), &db, srv.spool.path())
        .write(&config)
        .unwrap_or_else(|e| panic!("{e}"));

    // Not fixed yet: nothing moves, the reason is shown, nothing is marked.
    let out = tokio::task::block_in_place(|| replay(&config, &[]));
    has(
        &out,
        "quarantine replay: 0 moved to events, 3 still refused",
    );
    has(&out, "  shop rf-3: ");
    has(&out, "throwIf");
    assert_eq!(
        count(ch, &format!("SELECT count() FROM {db}.quarantine_replays")),
        0
    );

    // ClickHouse unable to take anything (a column missing): the replay waits `--wait`, then
    // stops, says why and exits 1, having moved and marked nothing.
    query(ch, &format!("ALTER TABLE {db}.events DROP COLUMN utm_term"));
    let (ok, out) = tokio::task::block_in_place(|| replay_run(&config, &["--wait", "1s"]));
    assert!(!ok, "a blocked replay exited 0:\n{out}");
    has(&out, "quarantine replay: 0 moved to events");
    has(
        &out,
        "stopped early: ClickHouse cannot take rows (missing_column)",
    );
    assert_eq!(
        count(ch, &format!("SELECT count() FROM {db}.quarantine_replays")),
        0
    );
    query(
        ch,
        &format!("ALTER TABLE {db}.events ADD COLUMN utm_term String AFTER utm_medium"),
    );

    // A dead-letter file from an earlier version: one event row, one damaged line.
    let now_s = (now_ms() / 1000) as u32;
    let dl_row = json!({"site": "shop", "visitor_id": "a-9", "message_id": "rf-dl", "type": "track",
                        "event": "E", "anonymous_id": "a-9", "timestamp": now_s, "client_time": now_s});
    let dl = json!({"quarantined_at": now_s, "site": "shop", "message_id": "rf-dl",
                    "reason": "quarantine insert failed", "row": dl_row.to_string()});
    let dead_letter = srv.spool.path().join("dead-letter.jsonl");
    std::fs::write(&dead_letter, format!("{dl}\nnot json\n")).unwrap();

    query(ch, &format!("ALTER TABLE {db}.events DROP COLUMN guard"));

    let out = tokio::task::block_in_place(|| replay(&config, &["--site", "blog"]));
    has(
        &out,
        "quarantine replay: 1 moved to events, 0 still refused, 1 unreadable",
    );
    has(&out, "  site blog: 1 moved, 0 still refused");
    has(&out, "0 of 2 lines moved, 2 left in it");

    let out = tokio::task::block_in_place(|| replay(&config, &["--since", "2099-01-01"]));
    has(&out, "quarantine replay: 0 moved to events");

    let out = tokio::task::block_in_place(|| replay(&config, &["--since", "1h"]));
    has(
        &out,
        "quarantine replay: 3 moved to events, 0 still refused, 1 unreadable",
    );
    has(&out, "  site shop: 3 moved, 0 still refused");
    has(&out, "1 of 2 lines moved, 1 left in it");
    assert_eq!(std::fs::read_to_string(&dead_letter).unwrap(), "not json\n");

    // Each with its original message id, once.
    let ids = query(
        ch,
        &format!("SELECT arrayStringConcat(groupArray(message_id), ',') FROM (SELECT message_id FROM {db}.events FINAL WHERE message_id IN ('rf-3', 'rf-7', 'rf-b1', 'rf-dl') ORDER BY message_id)"),
    );
    assert_eq!(ids.trim(), "rf-3,rf-7,rf-b1,rf-dl");

    // Idempotent: a second run moves nothing.
    let out = tokio::task::block_in_place(|| replay(&config, &[]));
    has(
        &out,
        "quarantine replay: 0 moved to events, 0 still refused, 1 unreadable",
    );
    assert_eq!(
        count(ch, &format!("SELECT count() FROM {db}.quarantine")),
        3
    );
    assert_eq!(
        count(ch, &format!("SELECT count() FROM {db}.quarantine_replays")),
        3
    );
    assert_eq!(
        count(
            ch,
            &format!("SELECT count() FROM {db}.events FINAL WHERE message_id LIKE 'rf-%'")
        ),
        12,
        "8 good + 3 replayed + 1 from the dead-letter file"
    );
    srv.stop().await;
}
