//! Durability against a real ClickHouse: the real binary killed with SIGKILL while clients send
//! loses no acknowledged event and shows no duplicates at query level; a ClickHouse outage is
//! absorbed by the spool up to its cap (then 503 + Retry-After) and drained afterwards.

mod common;

use std::collections::HashSet;
use std::io::{BufRead as _, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};
use waymark_testkit::ClickHouse;

/// Starts `ingest-server --config FILE` and returns it with the address it printed.
fn spawn_server(config: &std::path::Path) -> (Child, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_ingest-server"))
        .arg("--config")
        .arg(config)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawning ingest-server");
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = BufReader::new(stdout).read_line(&mut line);
        let _ = tx.send(line);
    });
    let line = rx
        .recv_timeout(Duration::from_secs(60))
        .expect("the server printed its address within 60 s");
    let addr = line
        .trim()
        .strip_prefix("listening on ")
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
        .to_string();
    (child, addr)
}

fn batch(prefix: &str, n: usize) -> (String, Vec<String>) {
    let ids: Vec<String> = (0..n).map(|i| format!("{prefix}-{i}")).collect();
    let events: Vec<Value> = ids
        .iter()
        .map(|id| {
            json!({"type": "track", "messageId": id, "anonymousId": format!("v-{}", id.len() % 7), "event": "Product Viewed",
                   "originalTimestamp": iso(now_ms() - 1000), "properties": {"product_id": "p-1", "price": 10.0},
                   "context": {"page": {"url": "https://shop.example/p/1", "path": "/p/1"}, "sessionId": "s1"}})
        })
        .collect();
    (
        json!({"writeKey": WRITE_KEY, "sentAt": iso(now_ms()), "batch": events}).to_string(),
        ids,
    )
}

fn all_ids(ch: &ClickHouse, db: &str) -> HashSet<String> {
    ch.query(&format!(
        "SELECT DISTINCT message_id FROM {db}.events FORMAT TSV"
    ))
    .unwrap_or_default()
    .lines()
    .map(str::to_string)
    .collect()
}

#[test]
fn sigkill_while_sending_loses_no_acknowledged_event_and_duplicates_do_not_count() {
    let ch = ClickHouse::start().unwrap_or_else(|e| panic!("{e}"));
    let db = ch.fresh_database().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("ingest.toml");
    common::config(
        "127.0.0.1:0",
        &ch.http_url(),
        &db,
        &dir.path().join("spool"),
    )
    .writer_max_age(Duration::from_millis(300))
    .write(&config)
    .unwrap_or_else(|e| panic!("{e}"));
    let (mut child, addr) = spawn_server(&config);

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let acked: Arc<Mutex<Vec<String>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let clients: Vec<_> = (0..4)
        .map(|c| {
            let (acked, stop, url) = (
                acked.clone(),
                stop.clone(),
                format!("http://{addr}/v1/batch"),
            );
            rt.spawn(async move {
                let http = reqwest::Client::new();
                let mut n = 0;
                while !stop.load(Ordering::Relaxed) && n < 100_000 {
                    let (body, ids) = batch(&format!("c{c}-{n}"), 20);
                    n += 1;
                    match http.post(&url).body(body).send().await {
                        Ok(r) if r.status().is_success() => acked.lock().unwrap().extend(ids),
                        Ok(r) => panic!("unexpected status {}", r.status()),
                        Err(_) => break, // the server is gone: this request was never acknowledged
                    }
                }
            })
        })
        .collect();
    // Let the clients run until a few thousand events were acknowledged (bounded in time).
    let deadline = Instant::now() + Duration::from_secs(30);
    while acked.lock().unwrap().len() < 3000 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().unwrap(); // SIGKILL, mid-stream
    child.wait().unwrap();
    stop.store(true, Ordering::Relaxed);
    rt.block_on(async {
        for c in clients {
            c.await.unwrap();
        }
    });
    let acked: HashSet<String> = acked.lock().unwrap().iter().cloned().collect();
    assert!(
        acked.len() >= 1000,
        "only {} events acknowledged before the kill",
        acked.len()
    );
    let before_restart = all_ids(&ch, &db);
    eprintln!(
        "acknowledged {} events; {} were in ClickHouse at the kill",
        acked.len(),
        before_restart.len()
    );

    // Restart on the same spool: it replays what ClickHouse had not confirmed.
    let (mut child, addr) = spawn_server(&config);
    let deadline = Instant::now() + Duration::from_secs(60);
    let missing = loop {
        let stored = all_ids(&ch, &db);
        let missing: Vec<&String> = acked.iter().filter(|id| !stored.contains(*id)).collect();
        if missing.is_empty() || Instant::now() > deadline {
            break missing.len();
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(missing, 0, "acknowledged events missing after restart");

    // Query level: FINAL (and uniqExact) see each event once, whatever the replay re-inserted.
    let final_count: u64 = ch
        .query(&format!("SELECT count() FROM {db}.events FINAL"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let unique: u64 = ch
        .query(&format!("SELECT uniqExact(message_id) FROM {db}.events"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let raw: u64 = ch
        .query(&format!("SELECT count() FROM {db}.events"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    eprintln!("rows: raw {raw}, FINAL {final_count}, unique ids {unique}");
    assert_eq!(final_count, unique, "duplicates visible at query level");
    assert!(unique >= acked.len() as u64);

    // Graceful stop: SIGTERM, the server flushes and exits 0.
    let _ = Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status();
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < deadline, "no exit within 30 s of SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "exit status {status}");
    drop(addr);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clickhouse_outage_is_absorbed_by_the_spool_up_to_its_cap() {
    let mut ch = tokio::task::block_in_place(ClickHouse::start).unwrap_or_else(|e| panic!("{e}"));
    let mut srv = Server::start_with(&ch, |c| {
        c.spool.max_bytes = waymark_ingest::config::ByteSize(256 << 10);
    })
    .await;
    let http = http();
    let db = srv.db.clone();
    let url = srv.url("/v1/batch");
    let (body, _) = batch("warm", 1);
    assert_eq!(
        http.post(&url).body(body).send().await.unwrap().status(),
        200
    );
    assert_eq!(
        wait_for(
            &ch,
            &format!("SELECT count() FROM {db}.events"),
            "1",
            Duration::from_secs(20)
        )
        .await,
        "1"
    );

    tokio::task::block_in_place(|| ch.stop());
    let ready = http.get(srv.url("/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), 503, "readyz while ClickHouse is down");

    // Keep sending until the spool is full: every 200 is a promise.
    let mut acked = vec!["warm-0".to_string()];
    let mut refused = None;
    for n in 0..200 {
        let (body, ids) = batch(&format!("out-{n}"), 20);
        let r = http.post(&url).body(body).send().await.unwrap();
        match r.status().as_u16() {
            200 => acked.extend(ids),
            503 => {
                let retry = r
                    .headers()
                    .get("retry-after")
                    .map(|v| v.to_str().unwrap().to_string());
                let v: Value = r.json().await.unwrap();
                refused = Some((retry, v));
                break;
            }
            s => panic!("unexpected status {s}"),
        }
    }
    let (retry, v) = refused.expect("the spool cap was never reached");
    assert!(
        retry.is_some_and(|s| s.parse::<u64>().unwrap() > 0),
        "503 without Retry-After"
    );
    assert_eq!(v["error"], "spool_full", "{v}");
    assert!(
        acked.len() > 40,
        "only {} events were accepted into the spool during the outage",
        acked.len()
    );

    tokio::task::block_in_place(|| ch.resume()).unwrap();
    let want = acked.len().to_string();
    let got = wait_for(
        &ch,
        &format!("SELECT uniqExact(message_id) FROM {db}.events"),
        &want,
        Duration::from_secs(60),
    )
    .await;
    assert_eq!(
        got, want,
        "not every acknowledged event arrived after ClickHouse came back"
    );
    let stored = tokio::task::block_in_place(|| all_ids(&ch, &db));
    assert!(acked.iter().all(|id| stored.contains(id)));

    // The backlog is gone, so the spool takes events again.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (body, _) = batch("after", 20);
        let s = http.post(&url).body(body).send().await.unwrap().status();
        if s == 200 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "still {s} after the backlog drained"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    srv.stop().await;
}
