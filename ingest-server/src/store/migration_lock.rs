//! One ingest server at a time applies the migrations to a database.
//!
//! Several ingest servers started together on a fresh database would otherwise each run every
//! migration: the records in `schema_migrations` doubled, and migration 110's copy-and-swap run
//! twice at once dropped the other's tables (ClickHouse 18.16 then answered code 390, "no
//! metadata file", for `events`).
//!
//! ClickHouse has neither locks nor transactions. What it does atomically is create a table: of
//! several `CREATE TABLE` of one name (without `IF NOT EXISTS`), one succeeds and the others get
//! code 57. So the lock is a table, `schema_migrating`, created with a row `(holder, until_ms)`.
//! Its engine is Memory: on 18.16 a TinyLog table read while `CREATE .. AS SELECT` still writes
//! it fails with "file not found"; a ClickHouse restart empties it, which the empty rule below
//! covers.
//!
//! - The holder appends a row with a later `until_ms` every [`TTL`]/3 while it migrates, and drops
//!   the table when done (only if no other server's row is in it).
//! - A waiter polls it every [`POLL`]. Once the newest `until_ms` is past (the holder died), or
//!   the table stayed empty for a [`TTL`] of the waiter's own clock (a holder that died between
//!   creating it and its row), the waiter moves it aside with `RENAME TABLE` (of several renames
//!   one succeeds), puts it back if what it moved turns out to be live, else drops it, and tries
//!   again.
//!
//! A holder stalled for longer than [`TTL`] (a frozen VM) can lose the lock while still working;
//! the next migration's statements are idempotent (`IF NOT EXISTS`, and migration 110 starts
//! from what the tables say), so the damage is a doubled record, not lost data. Times compared
//! are `until_ms` against the waiter's clock: servers' clocks must agree to well within [`TTL`].
//!
//! On a cluster the table is local to the ClickHouse server the ingest server talks to: servers
//! that talk to different ClickHouse servers are not kept apart by it (their `ON CLUSTER`
//! statements are serialised by ClickHouse's distributed DDL queue, and are `IF NOT EXISTS`).

use std::future::Future;
use std::time::{Duration, Instant};

use serde::Deserialize;

use super::{classify, exception_code, StoreError};
use crate::clock::now_ms;

/// The lock table.
pub const TABLE: &str = "schema_migrating";
/// How long a holder's claim lasts without renewal.
pub const TTL: Duration = Duration::from_secs(30);
/// How often a waiter looks again.
pub const POLL: Duration = Duration::from_millis(500);

/// ClickHouse's "table already exists".
const TABLE_ALREADY_EXISTS: u32 = 57;

/// Runs `work` holding the lock on `db` (which must exist). `waiting` is told, while this
/// server waits, which server holds the lock.
pub async fn with_lock<T, F>(
    client: &clickhouse::Client,
    db: &str,
    waiting: impl Fn(Option<&str>),
    work: F,
) -> Result<T, StoreError>
where
    F: Future<Output = Result<T, StoreError>>,
{
    let me = format!("{}-{}", std::process::id(), uuid::Uuid::new_v4().simple());
    acquire(client, db, &me, &waiting).await?;
    waiting(None);
    let renew = async {
        loop {
            tokio::time::sleep(TTL / 3).await;
            if let Err(e) = claim(client, db, &me, false).await {
                tracing::warn!(error = %e.message, "could not renew the migration lock");
            }
        }
    };
    let out = tokio::select! {
        out = work => out,
        never = renew => never,
    };
    if let Err(e) = release(client, db, &me).await {
        // It expires after TTL; the next server to start waits that long.
        tracing::warn!(error = %e.message, "could not release the migration lock");
    }
    out
}

/// Creates the lock with this server's claim (`create`), or renews the claim.
async fn claim(
    client: &clickhouse::Client,
    db: &str,
    me: &str,
    create: bool,
) -> Result<(), StoreError> {
    let until = now_ms() + TTL.as_millis() as i64;
    let sql = if create {
        format!("CREATE TABLE {db}.{TABLE} ENGINE = Memory AS SELECT '{me}' AS holder, toInt64({until}) AS until_ms")
    } else {
        format!("INSERT INTO {db}.{TABLE} (holder, until_ms) VALUES ('{me}', {until})")
    };
    client.query(&sql).execute().await.map_err(|e| classify(&e))
}

#[derive(Debug, Deserialize, clickhouse::Row)]
struct Claim {
    holder: String,
    until_ms: i64,
}

/// The rows of `table`, newest claim last; `None` when the table does not exist.
async fn claims(
    client: &clickhouse::Client,
    db: &str,
    table: &str,
) -> Result<Option<Vec<Claim>>, StoreError> {
    match client
        .query(&format!(
            "SELECT holder, until_ms FROM {db}.{table} ORDER BY until_ms"
        ))
        .fetch_all::<Claim>()
        .await
    {
        Ok(rows) => Ok(Some(rows)),
        // 60: the table does not exist (released, or moved aside by another waiter).
        Err(e) if exception_code(&e.to_string()) == Some(60) => Ok(None),
        Err(e) => Err(classify(&e)),
    }
}

async fn acquire(
    client: &clickhouse::Client,
    db: &str,
    me: &str,
    waiting: &impl Fn(Option<&str>),
) -> Result<(), StoreError> {
    let mut empty_since: Option<Instant> = None;
    let mut logged = String::new();
    loop {
        match claim(client, db, me, true).await {
            Ok(()) => return Ok(()),
            Err(e) if exception_code(&e.message) == Some(TABLE_ALREADY_EXISTS) => {}
            Err(e) => return Err(e),
        }
        let rows = match claims(client, db, TABLE).await {
            Ok(Some(rows)) => rows,
            Ok(None) => continue,
            // Unreadable now (dropped or moved while read): counted as empty.
            Err(e) => {
                tracing::debug!(error = %e.message, "migration lock unreadable; looking again");
                Vec::new()
            }
        };
        let stale = match rows.last() {
            Some(newest) => {
                empty_since = None;
                if newest.holder != logged {
                    tracing::info!(holder = %newest.holder, db, "another server is migrating this database; waiting for it");
                    logged.clone_from(&newest.holder);
                }
                waiting(Some(&newest.holder));
                newest.until_ms < now_ms()
            }
            None => empty_since.get_or_insert_with(Instant::now).elapsed() > TTL,
        };
        if stale {
            take_aside(client, db, me).await?;
        } else {
            tokio::time::sleep(POLL).await;
        }
    }
}

/// Moves a stale lock out of the way (see the module documentation).
async fn take_aside(client: &clickhouse::Client, db: &str, me: &str) -> Result<(), StoreError> {
    let aside = format!("{TABLE}_stale_{}", me.replace('-', "_"));
    let exec =
        |sql: String| async move { client.query(&sql).execute().await.map_err(|e| classify(&e)) };
    if exec(format!("RENAME TABLE {db}.{TABLE} TO {db}.{aside}"))
        .await
        .is_err()
    {
        // Another waiter moved it first (or its holder released it): look again.
        return Ok(());
    }
    let rows = claims(client, db, &aside).await?.unwrap_or_default();
    if rows.last().is_some_and(|r| r.until_ms >= now_ms()) {
        // A live lock taken since this server looked: give it back. Should a newer one exist
        // already, it stays aside (its holder finds the lock gone when it releases).
        if let Err(e) = exec(format!("RENAME TABLE {db}.{aside} TO {db}.{TABLE}")).await {
            tracing::warn!(error = %e.message, db, "a live migration lock moved aside could not be put back");
        }
        return Ok(());
    } else {
        tracing::warn!(
            holder = rows.last().map_or("(none)", |r| r.holder.as_str()),
            db,
            "took over a migration lock its holder no longer renews"
        );
    }
    exec(format!("DROP TABLE IF EXISTS {db}.{aside}")).await
}

async fn release(client: &clickhouse::Client, db: &str, me: &str) -> Result<(), StoreError> {
    let Some(rows) = claims(client, db, TABLE).await? else {
        return Ok(());
    };
    if rows.iter().any(|r| r.holder != me) {
        tracing::warn!(
            db,
            "the migration lock was taken over while this server held it"
        );
        return Ok(());
    }
    client
        .query(&format!("DROP TABLE IF EXISTS {db}.{TABLE}"))
        .execute()
        .await
        .map_err(|e| classify(&e))
}
