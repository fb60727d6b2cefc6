//! Migration 110 against the real ClickHouse: a database as the previous release left it
//! (`events` partitioned by the client's clock, views feeding the query tables) moves to
//! partitions by the corrected `timestamp`, keeps every row and every view, and an attempt
//! stopped half-way is finished by the next start.

mod common;

use std::time::Duration;

use common::{clickhouse, query};
use waymark_ingest::config::ClickHouseConfig;
use waymark_ingest::store::schema::MIGRATIONS;
use waymark_ingest::store::{self, SchemaStatus};

/// 2026-01-15, and a month in ms.
const JAN_MS: i64 = 1_768_435_200_000;
const MONTH_MS: i64 = 31 * 86_400_000;

fn client() -> clickhouse::Client {
    store::client(&ClickHouseConfig {
        url: clickhouse().http_url(),
        ..ClickHouseConfig::default()
    })
}

/// `n` events for visitor `v`, one per month from January 2026, whose client clocks claim years
/// from 2030 on (the old key made one partition of each).
fn insert_events(db: &str, v: &str, n: i64, from: i64) {
    let rows: Vec<String> = (0..n)
        .map(|i| {
            let ts = JAN_MS + (from + i) * MONTH_MS;
            let client = 1_900_000_000 + (from + i) * 366 * 86_400;
            format!(
                "('shop', '{v}', '{v}-{i}', 'page', '{v}', toDateTime({}), {ts}, toDateTime({client}), {ts}, '{v}')",
                ts / 1000
            )
        })
        .collect();
    query(
        clickhouse(),
        &format!(
            "INSERT INTO {db}.events (site, visitor_id, message_id, type, anonymous_id, timestamp, \
             timestamp_ms, client_time, received_at_ms, page_path) VALUES {}",
            rows.join(", ")
        ),
    );
}

fn partitions(db: &str, table: &str) -> Vec<String> {
    query(
        clickhouse(),
        &format!(
            "SELECT DISTINCT partition FROM system.parts WHERE database = '{db}' AND table = '{table}' \
             AND active ORDER BY partition FORMAT TSV"
        ),
    )
    .lines()
    .map(str::to_string)
    .collect()
}

fn tables(db: &str) -> String {
    query(
        clickhouse(),
        &format!(
            "SELECT name, engine FROM system.tables WHERE database = '{db}' ORDER BY name FORMAT TSV"
        ),
    )
}

fn one(db: &str, sql: &str) -> String {
    query(clickhouse(), &sql.replace("{db}", db))
        .trim()
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_move_to_event_time_partitions_with_every_row_and_view() {
    let ch = clickhouse();
    let db = tokio::task::block_in_place(|| ch.fresh_database()).unwrap();
    let c = client();
    store::migrate_up_to(&c, &db, 109).await.unwrap();
    insert_events(&db, "a1", 6, 0);
    insert_events(&db, "a2", 6, 0);
    assert_eq!(
        partitions(&db, "events").len(),
        6,
        "one partition per client year"
    );
    let before = tables(&db);
    let views_before = before.matches("MaterializedView").count();
    assert!(views_before >= 8, "{before}");
    // What an interrupted earlier attempt leaves: a half-filled copy.
    query(
        ch,
        &format!("CREATE TABLE {db}.events_repartition AS {db}.events"),
    );
    insert_events(&db, "stale", 3, 0);
    query(
        ch,
        &format!(
            "INSERT INTO {db}.events_repartition SELECT * FROM {db}.events WHERE visitor_id = 'stale'"
        ),
    );
    query(
        ch,
        &format!("ALTER TABLE {db}.events DELETE WHERE visitor_id = 'stale'"),
    );
    let left = format!("SELECT count() FROM {db}.events WHERE visitor_id = 'stale'");
    assert_eq!(
        common::wait_for(ch, &left, "0", Duration::from_secs(30)).await,
        "0"
    );

    let status = SchemaStatus::default();
    let newly = store::migrate(&c, &db, &status).await.unwrap();
    // 110, then the migrations after it (120: triggers, which adds a view on `events`).
    let later = || MIGRATIONS.iter().filter(|m| m.version > 110);
    let mut want = vec![110];
    want.extend(later().map(|m| m.version));
    assert_eq!(newly, want);
    let views_added_later = later()
        .flat_map(|m| m.statements.iter())
        .filter(|s| s.starts_with("CREATE MATERIALIZED VIEW"))
        .count();
    assert!(status.is_ready());

    let create = one(&db, "SHOW CREATE TABLE {db}.events");
    assert!(
        create.contains("PARTITION BY toYYYYMM(timestamp)"),
        "{create}"
    );
    assert_eq!(one(&db, "SELECT count() FROM {db}.events"), "12");
    assert_eq!(
        partitions(&db, "events"),
        ["202601", "202602", "202603", "202604", "202605", "202606"]
    );
    // The copy was made afresh (the stale rows are gone) and the old table is dropped.
    assert_eq!(
        one(
            &db,
            "SELECT count() FROM {db}.events WHERE visitor_id = 'stale'"
        ),
        "0"
    );
    let after = tables(&db);
    assert!(!after.contains("events_repartition"), "{after}");
    assert!(!after.contains("events_client_time"), "{after}");
    assert_eq!(
        after.matches("MaterializedView").count(),
        views_before + views_added_later,
        "{after}"
    );

    // The views feed the query tables from the new `events`.
    insert_events(&db, "b1", 2, 10);
    assert_eq!(
        one(
            &db,
            "SELECT count() FROM (SELECT visitor_id FROM {db}.q_visitor WHERE visitor_id = 'b1' GROUP BY visitor_id)"
        ),
        "1"
    );
    assert_eq!(
        one(
            &db,
            "SELECT uniqExact(message_id) FROM {db}.q_history WHERE visitor_id = 'b1'"
        ),
        "2"
    );
    // A retry whose corrected time fell into the next month is a row in another partition;
    // FINAL collapses it all the same (the query API's exact reads rely on that).
    let later = JAN_MS + 11 * MONTH_MS;
    query(
        ch,
        &format!(
            "INSERT INTO {db}.events (site, visitor_id, message_id, type, timestamp, timestamp_ms) \
             VALUES ('shop', 'b1', 'b1-0', 'page', toDateTime({}), {later})",
            later / 1000
        ),
    );
    assert_eq!(
        one(
            &db,
            "SELECT count() FROM {db}.events WHERE message_id = 'b1-0'"
        ),
        "2"
    );
    assert_eq!(partitions(&db, "events").len(), 8);
    assert_eq!(
        one(
            &db,
            "SELECT count() FROM {db}.events FINAL WHERE message_id = 'b1-0'"
        ),
        "1"
    );
    // Running again finds everything applied.
    assert!(store::migrate(&c, &db, &status).await.unwrap().is_empty());
}

/// Stopped after the swap, before the views were made again: the next start makes them and
/// copies nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_attempt_stopped_after_the_swap_is_finished() {
    let ch = clickhouse();
    let db = tokio::task::block_in_place(|| ch.fresh_database()).unwrap();
    let c = client();
    store::migrate(&c, &db, &SchemaStatus::default())
        .await
        .unwrap();
    insert_events(&db, "a1", 3, 0);
    let views = tables(&db).matches("MaterializedView").count();
    query(ch, &format!("DROP TABLE {db}.q_visitor_mv"));
    query(ch, &format!("DROP TABLE {db}.q_history_mv"));
    query(
        ch,
        &format!("CREATE TABLE {db}.events_client_time AS {db}.events"),
    );
    query(
        ch,
        &format!("ALTER TABLE {db}.schema_migrations DELETE WHERE version = 110"),
    );
    let left = format!("SELECT count() FROM {db}.schema_migrations WHERE version = 110");
    assert_eq!(
        common::wait_for(ch, &left, "0", Duration::from_secs(30)).await,
        "0"
    );

    let newly = store::migrate(&c, &db, &SchemaStatus::default())
        .await
        .unwrap();
    assert_eq!(newly.first(), Some(&110), "{newly:?}");
    let after = tables(&db);
    assert_eq!(after.matches("MaterializedView").count(), views, "{after}");
    assert!(!after.contains("events_client_time"), "{after}");
    assert_eq!(one(&db, "SELECT count() FROM {db}.events"), "3");
    insert_events(&db, "b1", 1, 0);
    assert_eq!(
        one(
            &db,
            "SELECT uniqExact(message_id) FROM {db}.q_history WHERE visitor_id = 'b1'"
        ),
        "1"
    );
}

/// Two servers starting at once on one fresh database (a deploy of several ingest servers):
/// one applies the migrations while the other waits for it, so every migration runs once, and
/// both end up ready on a schema that works (migration 110's copy-and-swap run twice at once
/// used to drop the other's tables).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_servers_migrating_one_fresh_database_take_turns() {
    let ch = clickhouse();
    let db = tokio::task::block_in_place(|| ch.fresh_database()).unwrap();
    let (c1, c2) = (client(), client());
    let (s1, s2) = (SchemaStatus::default(), SchemaStatus::default());
    let (r1, r2) = tokio::join!(store::migrate(&c1, &db, &s1), store::migrate(&c2, &db, &s2));
    let (n1, n2) = (r1.unwrap(), r2.unwrap());
    assert!(s1.is_ready() && s2.is_ready());
    let all: Vec<u32> = MIGRATIONS.iter().map(|m| m.version).collect();
    let mut both: Vec<u32> = n1.iter().chain(&n2).copied().collect();
    both.sort_unstable();
    assert_eq!(
        both, all,
        "each migration applied by one server: {n1:?} {n2:?}"
    );
    assert_eq!(
        one(
            &db,
            "SELECT count(), uniqExact(version) FROM {db}.schema_migrations FORMAT TSV"
        ),
        format!("{}\t{}", all.len(), all.len())
    );
    // The schema works: a row reaches `events` and the views behind it.
    insert_events(&db, "after", 1, 0);
    assert_eq!(one(&db, "SELECT count() FROM {db}.events FORMAT TSV"), "1");
    assert_eq!(
        one(
            &db,
            "SELECT uniqExact(visitor_id) FROM {db}.q_visitor WHERE visitor_id = 'after' FORMAT TSV"
        ),
        "1"
    );
    assert!(
        !tables(&db).contains("schema_migrating"),
        "the lock is gone: {}",
        tables(&db)
    );
}

/// A lock left by a server that died is taken over once its claim is past; a live one is waited
/// for, and `/readyz`'s description says why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_servers_migration_lock_is_taken_over_and_a_live_one_waited_for() {
    let ch = clickhouse();
    let c = client();
    let lock = store::migration_lock::TABLE;
    let claim = |db: &str, holder: &str, until_ms: i64| {
        query(
            ch,
            &format!(
                "CREATE TABLE {db}.{lock} ENGINE = Memory AS SELECT '{holder}' AS holder, toInt64({until_ms}) AS until_ms"
            ),
        );
    };

    let db = tokio::task::block_in_place(|| ch.fresh_database()).unwrap();
    query(ch, &format!("CREATE DATABASE IF NOT EXISTS {db}"));
    claim(&db, "dead-server", common::now_ms() - 1_000);
    let status = SchemaStatus::default();
    let newly = store::migrate(&c, &db, &status).await.unwrap();
    assert_eq!(newly.len(), MIGRATIONS.len());
    assert!(!tables(&db).contains(lock), "{}", tables(&db));

    let db = tokio::task::block_in_place(|| ch.fresh_database()).unwrap();
    query(ch, &format!("CREATE DATABASE IF NOT EXISTS {db}"));
    claim(&db, "live-server", common::now_ms() + 3_600_000);
    let status = std::sync::Arc::new(SchemaStatus::default());
    let run = {
        let (c, db, status) = (c.clone(), db.clone(), status.clone());
        tokio::spawn(async move { store::migrate(&c, &db, &status).await })
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !status.describe().contains("live-server") {
        assert!(
            std::time::Instant::now() < deadline && !run.is_finished(),
            "waits for the live lock: {}",
            status.describe()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        status.describe(),
        "pending: waiting for another ingest server (live-server) to finish migrating this database"
    );
    assert_eq!(one(&db, "SELECT count() FROM system.tables WHERE database = '{db}' AND name = 'schema_migrations' FORMAT TSV"), "0");
    query(ch, &format!("DROP TABLE {db}.{lock}"));
    let newly = tokio::time::timeout(Duration::from_secs(60), run)
        .await
        .expect("migrates once the lock is released")
        .unwrap()
        .unwrap();
    assert_eq!(newly.len(), MIGRATIONS.len());
    assert!(status.is_ready());
}
