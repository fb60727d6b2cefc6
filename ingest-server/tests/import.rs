//! Importing a generated CRM export with the CLI against a real ClickHouse: people counted
//! once however their emails are spelled, orders over three years in the profile, idempotent
//! re-import, resume after an interruption, bad rows reported by line, unmerge and
//! suggestions.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};
use waymark_testkit::crm::Crm;

const WAIT: Duration = Duration::from_secs(90);
const READ_KEY: &str = "rk_shop_0123456789";
const ADMIN_KEY: &str = "ak_shop_0123456789";
const DAY_MS: i64 = 86_400_000;

fn extra(c: &mut waymark_ingest::Config) {
    use waymark_ingest::config::{AdminKey, HumanDuration, ReadKey};
    c.query.cache_ttl = HumanDuration(Duration::ZERO);
    c.query.read_keys.push(ReadKey {
        key: READ_KEY.into(),
        sites: vec!["shop".into()],
        subscribe: false,
    });
    c.privacy.admin_keys.push(AdminKey {
        name: "crm".into(),
        key: ADMIN_KEY.into(),
        sites: vec!["shop".into()],
    });
    // Plus-addressing is folded on this site (the generator writes `+shop` variants).
    for s in &mut c.sites {
        s.identity.email_plus = true;
    }
}

/// Runs `ingest-server import`; its stdout and stderr.
fn import(server: &Server, kind: &str, file: &Path, extra_args: &[&str]) -> (String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_ingest-server"))
        .args(["import", "--site", "shop", "--kind", kind])
        .arg(file)
        .args([
            "--url",
            &server.url(""),
            "--key",
            WRITE_KEY,
            "--chunk",
            "300",
        ])
        .args(extra_args)
        .output()
        .expect("the ingest-server binary runs");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "import failed:\n{stdout}\n{stderr}");
    (stdout, stderr)
}

async fn people_count(server: &Server) -> usize {
    let r = reqwest::Client::new()
        .post(server.url("/v1/audiences/query?site=shop"))
        .bearer_auth(READ_KEY)
        .json(
            &json!({"conditions": [{"type": "did", "event": "$identify", "within": "3650d"}],
            "limit": 10000}),
        )
        .send()
        .await
        .unwrap();
    let v: Value = r.json().await.unwrap();
    v["count"].as_u64().unwrap_or_else(|| panic!("{v}")) as usize
}

async fn wait_people(server: &Server, want: usize) -> usize {
    let deadline = Instant::now() + WAIT;
    loop {
        let n = people_count(server).await;
        if n == want || Instant::now() > deadline {
            return n;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// One NDJSON line to `POST /v1/import`, acknowledged.
async fn post_line(server: &Server, line: &str) {
    let r = reqwest::Client::new()
        .post(server.url("/v1/import?site=shop"))
        .basic_auth(WRITE_KEY, None::<&str>)
        .body(format!("{line}\n"))
        .send()
        .await
        .unwrap();
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["accepted"], 1, "{v}");
}

async fn profile(server: &Server, id: &str) -> Value {
    reqwest::Client::new()
        .get(server.url(&format!("/v1/profiles/{id}?site=shop")))
        .bearer_auth(READ_KEY)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crm_export_imports_into_one_person_per_customer() {
    let ch = clickhouse();
    let mut server = Server::start_with(ch, extra).await;
    let db = server.db.clone();
    let dir = tempfile::tempdir().unwrap();
    let now = now_ms();
    // 150 people, ten near matches of them, a bad row in each file (testkit/src/crm.rs).
    let ex = Crm {
        people: 150,
        near_matches: 10,
        bad_rows: true,
        ..Crm::default()
    }
    .generate(now);
    let people = ex.persons.len();
    let customers = dir.path().join("customers.csv");
    let orders = dir.path().join("orders.csv");
    std::fs::write(&customers, &ex.customers_csv).unwrap();
    std::fs::write(&orders, &ex.orders_csv).unwrap();

    let (out, err) = import(&server, "customers", &customers, &[]);
    assert!(
        out.contains(&format!("{} stored", ex.customer_rows)),
        "{out}"
    );
    assert!(out.contains("1 rejected"), "{out}");
    assert!(
        err.contains(&format!(
            "line {}: customer_id: missing",
            ex.bad_customer_line.unwrap()
        )),
        "{err}"
    );
    let (out, err) = import(&server, "orders", &orders, &[]);
    assert!(out.contains(&format!("{} stored", ex.order_rows)), "{out}");
    assert!(
        err.contains(&format!("line {}: total: ", ex.bad_order_line.unwrap())),
        "{err}"
    );

    // Every imported row arrives, with its own (old) time and `source = import`.
    let rows = ex.customer_rows + ex.order_rows;
    let sql =
        format!("SELECT count() FROM {db}.events FINAL WHERE site = 'shop' AND source = 'import'");
    assert_eq!(
        wait_for(ch, &sql, &rows.to_string(), WAIT).await,
        rows.to_string()
    );
    let months = query(ch, &format!(
        "SELECT uniqExact(toYYYYMM(timestamp)) FROM {db}.events WHERE site = 'shop' AND type = 'track'"
    ));
    assert!(
        months.trim().parse::<u32>().unwrap() >= 30,
        "orders span three years: {months}"
    );

    // One person per customer, however their email was written.
    assert_eq!(wait_people(&server, people).await, people);

    // A merged person's profile: every customer id, the email with its source, all orders.
    let merged_person = ex
        .persons
        .iter()
        .find(|p| p.records.len() == 3 && p.orders > 0)
        .expect("a person with three records and orders");
    let person = merged_person.records[0].clone();
    let n_orders = merged_person.orders;
    let third = merged_person.records[2].clone();
    // ClickHouse fills the query tables after the insert into `events` is visible: wait for
    // the orders to arrive in the profile, then check it.
    let deadline = Instant::now() + WAIT;
    let mut p = profile(&server, &third).await;
    while p["orders"]["count"] != json!(n_orders) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
        p = profile(&server, &third).await;
    }
    assert_eq!(p["user_id"], json!(person), "{p}");
    assert_eq!(p["orders"]["count"], json!(n_orders), "{p}");
    let ids: Vec<&str> = p["ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["id"].as_str().unwrap())
        .collect();
    assert!(
        ids.contains(&third.as_str()) && ids.contains(&merged_person.records[1].as_str()),
        "{p}"
    );
    let merged = p["ids"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["id"] == json!(third))
        .unwrap();
    assert_eq!(merged["source"], "merge", "{p}");
    let idents = p["identifiers"].as_array().unwrap();
    assert!(
        idents
            .iter()
            .all(|i| i["type"] == "email" && i["source"] == "import"),
        "{p}"
    );
    assert!(
        idents
            .iter()
            .all(|i| i["value"] == json!(merged_person.email)),
        "{p}"
    );

    // Importing the same files again stores nothing twice.
    import(&server, "customers", &customers, &[]);
    import(&server, "orders", &orders, &[]);
    // The writer inserts in spool order: once a line sent after them is in ClickHouse, so is
    // everything of the second run that was not dropped as a duplicate.
    post_line(
        &server,
        r#"{"type":"track","event":"Sentinel","userId":"s1","messageId":"sentinel-1"}"#,
    )
    .await;
    let sentinel = format!("SELECT count() FROM {db}.events WHERE event = 'Sentinel'");
    assert_eq!(wait_for(ch, &sentinel, "1", WAIT).await, "1");
    let sql = format!("SELECT count() FROM {db}.events FINAL WHERE site = 'shop' AND source = 'import' AND event != 'Sentinel'");
    assert_eq!(query(ch, &sql).trim(), rows.to_string());
    assert_eq!(wait_people(&server, people).await, people);

    // Near matches are suggested, never merged.
    let s: Value = reqwest::Client::new()
        .get(server.url("/v1/identity/suggestions?site=shop"))
        .bearer_auth(READ_KEY)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let list = s["suggestions"].as_array().unwrap();
    assert!(list.len() >= 10, "{s}");
    assert!(
        list.iter().all(|x| x["score"].as_f64().unwrap() > 0.8),
        "{s}"
    );
    assert!(
        list.iter()
            .any(|x| x["a"]["user_id"] == "x0" || x["b"]["user_id"] == "x0"),
        "{s}"
    );

    // Unmerge: the third record is a person of its own again, and stays one.
    let r = reqwest::Client::new()
        .post(server.url(&format!("/v1/persons/{third}/unmerge?site=shop")))
        .bearer_auth(ADMIN_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["unmerged"][0]["from"], json!(person), "{body}");
    assert_eq!(wait_people(&server, people + 1).await, people + 1);
    let p = profile(&server, &third).await;
    assert_eq!(p["user_id"], json!(third), "{p}");
    // A merge pass has run once a new record with the same email joins the person: the
    // unmerged record still stands apart.
    let nine = format!("{}-9", &person[..person.len() - 2]);
    post_line(
        &server,
        &json!({"type": "identify", "userId": nine, "messageId": format!("m-{nine}"),
        "traits": {"email": merged_person.email.to_uppercase()}})
        .to_string(),
    )
    .await;
    let deadline = Instant::now() + WAIT;
    while profile(&server, &nine).await["user_id"] != json!(person) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(profile(&server, &nine).await["user_id"], json!(person));
    assert_eq!(people_count(&server).await, people + 1, "not merged again");
    assert_eq!(profile(&server, &third).await["user_id"], json!(third));
    // A read key cannot unmerge.
    let r = reqwest::Client::new()
        .post(server.url(&format!("/v1/persons/{person}/unmerge?site=shop")))
        .bearer_auth(READ_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interrupted_import_resumes_and_bad_lines_are_reported() {
    let ch = clickhouse();
    let mut server = Server::start_with(ch, extra).await;
    let db = server.db.clone();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("events.ndjson");
    let old = now_ms() - 800 * DAY_MS;
    let mut body = String::new();
    for i in 0..1000 {
        if i == 700 {
            body.push_str("{\"type\":\"bogus\",\"userId\":\"u1\"}\n");
        }
        body.push_str(&format!(
            "{{\"type\":\"track\",\"event\":\"Viewed\",\"userId\":\"u{}\",\"messageId\":\"e{i}\",\"timestamp\":\"{}\"}}\n",
            i % 7,
            waymark_protocol::time::format_rfc3339(old + i as i64 * 1000)
        ));
    }
    std::fs::write(&file, &body).unwrap();
    // An earlier run acknowledged the first 400 lines, then stopped.
    let sha = {
        use sha2::Digest as _;
        hex::encode(sha2::Sha256::digest(body.as_bytes()))
    };
    let state = dir.path().join("events.ndjson.import-state");
    std::fs::write(
        &state,
        json!({"sha256": sha, "site": "shop", "kind": "events", "line": 400}).to_string(),
    )
    .unwrap();
    let (out, err) = import(&server, "events", &file, &[]);
    assert!(out.contains("resumed after line 400"), "{out}");
    assert!(
        out.contains("600 stored") && out.contains("1 rejected"),
        "{out}"
    );
    assert!(err.contains("line 701: type: must be one of"), "{err}");
    assert!(!state.exists(), "the state goes when the import completes");
    let sql = format!("SELECT count() FROM {db}.events WHERE site = 'shop'");
    assert_eq!(wait_for(ch, &sql, "600", WAIT).await, "600");
    // Events older than a year keep their time.
    let oldest = query(
        ch,
        &format!("SELECT min(timestamp_ms) FROM {db}.events WHERE site = 'shop'"),
    );
    assert_eq!(oldest.trim(), (old + 400_000).to_string());
    // The rest, with --restart: nothing stored twice.
    import(&server, "events", &file, &["--restart"]);
    let sql = format!("SELECT count() FROM {db}.events FINAL WHERE site = 'shop'");
    assert_eq!(wait_for(ch, &sql, "1000", WAIT).await, "1000");

    // The endpoint itself: gzip, a line without messageId gets a stable one, a wrong key and
    // a wrong site are refused.
    let line = format!(
        "{{\"type\":\"track\",\"event\":\"Old\",\"userId\":\"u9\",\"timestamp\":\"{}\"}}\n",
        waymark_protocol::time::format_rfc3339(old)
    );
    let gz = |s: &str| {
        use std::io::Write as _;
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        e.write_all(s.as_bytes()).unwrap();
        e.finish().unwrap()
    };
    let client = reqwest::Client::new();
    for _ in 0..2 {
        let r: Value = client
            .post(server.url("/v1/import?site=shop"))
            .basic_auth(WRITE_KEY, None::<&str>)
            .header("content-encoding", "gzip")
            .body(gz(&format!("{line}\nnot json\n")))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(r["accepted"], 1, "{r}");
        assert_eq!(r["lines"], 3, "{r}");
        assert_eq!(r["rejected"][0]["line"], 3, "{r}");
        assert_eq!(r["acknowledged_lines"], 3, "{r}");
    }
    let sql =
        format!("SELECT count() FROM {db}.events FINAL WHERE site = 'shop' AND event = 'Old'");
    assert_eq!(wait_for(ch, &sql, "1", WAIT).await, "1");
    let r = client
        .post(server.url("/v1/import?site=blog"))
        .basic_auth(WRITE_KEY, None::<&str>)
        .body(line.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    let r = client
        .post(server.url("/v1/import?site=shop"))
        .basic_auth("wk_nope", None::<&str>)
        .body(line)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    server.stop().await;
}
