//! Deleting and exporting a person, and retention, against a real ClickHouse.

mod common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};
use waymark_ingest::privacy::TARGETS;

const WAIT: Duration = Duration::from_secs(60);
const READ_KEY: &str = "rk_shop_0123456789";
const ADMIN_KEY: &str = "ak_shop_0123456789";

/// The query cache off, a read key and an admin key for the shop.
fn extra(c: &mut waymark_ingest::Config) {
    use waymark_ingest::config::{AdminKey, HumanDuration, ReadKey};
    c.query.cache_ttl = HumanDuration(Duration::ZERO);
    c.query.read_keys.push(ReadKey {
        key: "rk_shop_0123456789".into(),
        sites: vec!["shop".into()],
        subscribe: false,
    });
    c.privacy.admin_keys.push(AdminKey {
        name: "dpo".into(),
        key: "ak_shop_0123456789".into(),
        sites: vec!["shop".into()],
    });
}

/// Person A: two devices and a user id; person B: one device and a user id.
fn events(now: i64) -> Vec<Value> {
    let ev = |id: &str, anon: &str, user: Option<&str>, kind: &str| {
        let mut e = json!({"type": kind, "messageId": id, "anonymousId": anon,
            "originalTimestamp": iso(now), "context": {"sessionId": format!("s-{anon}"),
            "page": {"url": "https://shop.example/p/1", "path": "/p/1", "title": "P1"}}});
        if let Some(u) = user {
            e["userId"] = json!(u);
        }
        if kind == "track" {
            e["event"] = json!("Product Viewed");
            e["properties"] = json!({"product_id": "p-1", "price": 10});
        }
        e
    };
    vec![
        ev("a-1", "anon-a", None, "page"),
        ev("a-2", "anon-a", None, "track"),
        ev("a-3", "anon-a", Some("user-a"), "identify"),
        ev("a-4", "anon-a2", Some("user-a"), "track"),
        ev("b-1", "anon-b", None, "page"),
        ev("b-2", "anon-b", Some("user-b"), "identify"),
    ]
}

async fn send(srv: &Server, batch: Vec<Value>) -> Value {
    let resp = http()
        .post(srv.url("/v1/batch"))
        .basic_auth(WRITE_KEY, Some(""))
        .json(&json!({"batch": batch}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    resp.json().await.unwrap()
}

async fn get(srv: &Server, path: &str, key: &str) -> (u16, String) {
    let resp = http()
        .get(srv.url(path))
        .bearer_auth(key)
        .send()
        .await
        .unwrap();
    (resp.status().as_u16(), resp.text().await.unwrap())
}

/// Polls `path` until it answers `want` (bounded); the last answer.
async fn wait_status(srv: &Server, path: &str, key: &str, want: u16) -> (u16, String) {
    let deadline = Instant::now() + WAIT;
    loop {
        let got = get(srv, path, key).await;
        if got.0 == want || Instant::now() > deadline {
            return got;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Rows of `ids` in every table a deletion covers.
fn counts(db: &str, ids: &[&str]) -> Vec<(String, String)> {
    let ch = clickhouse();
    let list = ids
        .iter()
        .map(|i| format!("'{i}'"))
        .collect::<Vec<_>>()
        .join(", ");
    TARGETS
        .iter()
        .filter(|(t, _)| *t != "quarantine")
        .map(|(t, cols)| {
            let any = cols
                .iter()
                .map(|c| format!("{c} IN ({list})"))
                .collect::<Vec<_>>()
                .join(" OR ");
            let n = query(
                ch,
                &format!("SELECT count() FROM {db}.{t} WHERE site = 'shop' AND ({any})"),
            );
            (t.to_string(), n.trim().to_string())
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_person_is_gone_everywhere_and_stays_gone() {
    let ch = clickhouse();
    let mut srv = Server::start_with(ch, extra).await;
    let db = srv.db.clone();
    let now = now_ms();
    send(&srv, events(now)).await;
    let n = wait_for(ch, &format!("SELECT count() FROM {db}.events"), "6", WAIT).await;
    assert_eq!(n, "6");
    let (status, body) = wait_status(&srv, "/v1/profiles/user-a?site=shop", READ_KEY, 200).await;
    assert_eq!(status, 200, "{body}");

    // Export first: every event and link of A, nothing of B.
    let (status, _) = get(&srv, "/v1/persons/user-a/export?site=shop", READ_KEY).await;
    assert_eq!(status, 401, "a read key cannot export");
    let (status, body) = get(&srv, "/v1/persons/anon-a2/export?site=shop", ADMIN_KEY).await;
    assert_eq!(status, 200, "{body}");
    let lines: Vec<Value> = body
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    let mut exported: Vec<&str> = lines
        .iter()
        .filter(|l| l["record"] == "event")
        .map(|l| l["message_id"].as_str().unwrap())
        .collect();
    exported.sort();
    assert_eq!(exported, ["a-1", "a-2", "a-3", "a-4"], "{body}");
    let links: Vec<&Value> = lines.iter().filter(|l| l["record"] == "identity").collect();
    assert_eq!(links.len(), 2, "{body}");
    assert!(
        !body.contains("anon-b") && !body.contains("user-b"),
        "{body}"
    );
    let (status, _) = get(&srv, "/v1/persons/nobody/export?site=shop", ADMIN_KEY).await;
    assert_eq!(status, 404);

    // Only an admin key of the site deletes.
    let del = |key: &'static str, path: &'static str| {
        let url = srv.url(path);
        async move {
            let r = http().delete(url).bearer_auth(key).send().await.unwrap();
            (r.status().as_u16(), r.text().await.unwrap())
        }
    };
    assert_eq!(del(READ_KEY, "/v1/persons/user-a?site=shop").await.0, 401);
    assert_eq!(del(ADMIN_KEY, "/v1/persons/user-a?site=blog").await.0, 403);
    assert_eq!(del(ADMIN_KEY, "/v1/persons/user-a").await.0, 400);
    let (status, body) = del(ADMIN_KEY, "/v1/persons/anon-a?site=shop").await;
    assert_eq!(status, 202, "{body}");
    let answer: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(answer["ids"], 3, "anon-a, user-a and anon-a2: {answer}");
    let job = answer["job"].as_str().unwrap().to_string();

    // The job is done once ClickHouse finished every mutation.
    let deadline = Instant::now() + WAIT;
    let last = loop {
        let (status, body) = get(&srv, &format!("/v1/deletions/{job}?site=shop"), ADMIN_KEY).await;
        assert_eq!(status, 200, "{body}");
        let v: Value = serde_json::from_str(&body).unwrap();
        if v["status"] == "done" || Instant::now() > deadline {
            break v;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(last["status"], "done", "{last}");
    assert_eq!(last["mutations_done"], TARGETS.len(), "{last}");
    let (status, _) = get(&srv, "/v1/deletions/nope?site=shop", ADMIN_KEY).await;
    assert_eq!(status, 404);

    for (table, n) in counts(&db, &["anon-a", "anon-a2", "user-a"]) {
        assert_eq!(n, "0", "{table} still holds the deleted person's rows");
    }
    for id in ["user-a", "anon-a", "anon-a2"] {
        let (status, body) = get(&srv, &format!("/v1/profiles/{id}?site=shop"), READ_KEY).await;
        assert_eq!(status, 404, "{id}: {body}");
    }
    // The other person is untouched.
    let b = counts(&db, &["anon-b", "user-b"]);
    assert_eq!(
        b.iter().find(|(t, _)| t == "events").unwrap().1,
        "2",
        "{b:?}"
    );
    assert_eq!(
        b.iter().find(|(t, _)| t == "identities").unwrap().1,
        "1",
        "{b:?}"
    );
    let (status, body) = get(&srv, "/v1/profiles/user-b?site=shop", READ_KEY).await;
    assert_eq!(status, 200, "{body}");

    // An event from a stale retry queue after the deletion is not stored.
    let mut late = events(now)[1].clone();
    late["messageId"] = json!("a-late");
    let mut sync = events(now)[4].clone();
    sync["messageId"] = json!("b-late");
    let answer = send(&srv, vec![late, sync]).await;
    assert_eq!(answer["accepted"], 1, "{answer}");
    assert_eq!(answer["suppressed"], 1, "{answer}");
    let n = wait_for(
        ch,
        &format!("SELECT count() FROM {db}.events WHERE message_id = 'b-late'"),
        "1",
        WAIT,
    )
    .await;
    assert_eq!(n, "1");
    let n = query(
        ch,
        &format!("SELECT count() FROM {db}.events WHERE message_id = 'a-late'"),
    );
    assert_eq!(n.trim(), "0");

    // The audit has the request, without the person's id.
    let audit = query(
        ch,
        &format!("SELECT site, ids, admin_key, person_sha256 FROM {db}.deletions WHERE job_id = '{job}' FORMAT TSV"),
    );
    let cols: Vec<&str> = audit.trim().split('\t').collect();
    assert_eq!(cols[..3], ["shop", "3", "dpo"], "{audit}");
    assert_eq!(cols[3].len(), 64, "{audit}");
    let suppressed = query(
        ch,
        &format!("SELECT count() FROM {db}.suppressions WHERE until > now()"),
    );
    assert_eq!(suppressed.trim(), "3");
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_drops_old_partitions_and_trims_shorter_sites() {
    let ch = clickhouse();
    let mut srv = Server::start_with(ch, |c| {
        c.sites[0].retention = Some(waymark_ingest::config::HumanDuration(Duration::from_secs(
            400 * 86_400,
        )));
        c.sites[1].retention = Some(waymark_ingest::config::HumanDuration(Duration::from_secs(
            800 * 86_400,
        )));
    })
    .await;
    let db = srv.db.clone();
    let now = now_ms() / 1000;
    let day = 86_400;
    // Partitions made old on purpose: 3 years (both sites past), 600 days (shop past, blog not),
    // and today.
    let rows = [
        ("shop", "old-s", now - 1100 * day),
        ("blog", "old-b", now - 1100 * day),
        ("shop", "mid-s", now - 600 * day),
        ("blog", "mid-b", now - 600 * day),
        ("shop", "new-s", now),
        ("blog", "new-b", now),
    ];
    let values = rows
        .iter()
        .map(|(site, id, t)| {
            format!(
                "('{site}', '{id}', '{id}', 'track', 'E', {t}, {}, {t})",
                t * 1000
            )
        })
        .collect::<Vec<_>>()
        .join(", ");
    // The server applies its migrations in the background: wait for all of them, so that a
    // later one (an ALTER of `events`, a view on it) does not run beside the inserts below.
    let migrated = format!(
        "SELECT count() = {} FROM {db}.schema_migrations",
        waymark_ingest::store::schema::MIGRATIONS.len()
    );
    assert_eq!(wait_for(ch, &migrated, "1", WAIT).await, "1");
    query(
        ch,
        &format!("INSERT INTO {db}.events (site, visitor_id, message_id, type, event, timestamp, timestamp_ms, client_time) VALUES {values}"),
    );
    let old_month = query(
        ch,
        &format!("SELECT toYYYYMM(toDateTime({}))", now - 1100 * day),
    );
    let parts = format!(
        "SELECT count() FROM system.parts WHERE database = '{db}' AND table = 'events' AND active AND partition = '{}'",
        old_month.trim()
    );
    assert_eq!(query(ch, &parts).trim(), "1");

    let config = common::config("127.0.0.1:0", &ch.http_url(), &db, srv.spool.path())
        .build()
        .unwrap();
    let mut sites = config.sites.clone();
    sites[0].retention = Some(waymark_ingest::config::HumanDuration(Duration::from_secs(
        400 * 86_400,
    )));
    sites[1].retention = Some(waymark_ingest::config::HumanDuration(Duration::from_secs(
        800 * 86_400,
    )));
    let st = waymark_ingest::query::QueryState::new(&config.query, &config.clickhouse);
    let client = waymark_ingest::store::client(&config.clickhouse);
    let out = waymark_ingest::privacy::retention::run(&st, &client, &sites, now)
        .await
        .unwrap();
    assert!(
        out.dropped_partitions
            .contains(&format!("events:{}", old_month.trim())),
        "{out:?}"
    );
    assert!(
        out.mutations.contains(&"events:shop".to_string()),
        "{out:?}"
    );
    assert!(
        !out.mutations.contains(&"events:blog".to_string()),
        "{out:?}"
    );
    assert_eq!(
        query(ch, &parts).trim(),
        "0",
        "the old month is dropped whole"
    );
    let left = wait_for(
        ch,
        &format!("SELECT arrayStringConcat(groupArray(message_id), ',') FROM (SELECT message_id FROM {db}.events ORDER BY message_id)"),
        "mid-b,new-b,new-s",
        WAIT,
    )
    .await;
    assert_eq!(left, "mid-b,new-b,new-s");

    // With a site that keeps everything, no month is dropped whole.
    sites[1].retention = None;
    let out = waymark_ingest::privacy::retention::run(&st, &client, &sites, now + 3650 * day)
        .await
        .unwrap();
    assert!(out.dropped_partitions.is_empty(), "{out:?}");
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_still_in_the_spool_at_deletion_are_not_written() {
    let ch = clickhouse();
    // The writer holds rows for an hour: they are in the spool when the deletion comes.
    let mut srv = Server::start_with(ch, |c| {
        extra(c);
        c.writer.max_age = waymark_ingest::config::HumanDuration(Duration::from_secs(3600));
    })
    .await;
    let db = srv.db.clone();
    let now = now_ms();
    let answer = send(&srv, vec![events(now)[0].clone(), events(now)[4].clone()]).await;
    assert_eq!(answer["accepted"], 2, "{answer}");
    // All of them, so that a later one (an ALTER of `events`, a view on it) does not run
    // beside the inserts below.
    let migrated = format!(
        "SELECT count() = {} FROM {db}.schema_migrations",
        waymark_ingest::store::schema::MIGRATIONS.len()
    );
    assert_eq!(wait_for(ch, &migrated, "1", WAIT).await, "1");
    assert_eq!(
        query(ch, &format!("SELECT count() FROM {db}.events")).trim(),
        "0"
    );
    let r = http()
        .delete(srv.url("/v1/persons/anon-a?site=shop"))
        .bearer_auth(ADMIN_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    // Stopping flushes the spool: the writer drops the deleted person's row, keeps the other.
    srv.stop().await;
    let left = query(
        ch,
        &format!("SELECT arrayStringConcat(groupArray(message_id), ',') FROM {db}.events"),
    );
    assert_eq!(left.trim(), "b-1");
}
