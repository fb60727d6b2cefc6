//! Migration 110: `events` partitioned by the month of the skew-corrected `timestamp` instead of
//! the client's own clock (`client_time`).
//!
//! ClickHouse cannot change a table's partition key in place, so the rows move:
//!
//! 1. `events_repartition` is created empty with the new key (any copy left by an interrupted
//!    attempt is dropped first) and filled with `INSERT .. SELECT` from `events`, then the two
//!    row counts are compared.
//! 2. The materialized views reading `events` are dropped. Their target tables stay: they hold
//!    the same rows already, and the copy does not go through a view.
//! 3. One `RENAME TABLE` swaps the two tables (`events` becomes `events_client_time`).
//! 4. The views are created again from their migrations' own statements, now on the new `events`.
//! 5. `events_client_time` is dropped.
//!
//! Each step starts from what the table says, not from a record of earlier steps: an attempt
//! stopped anywhere (a crash, ClickHouse going away) is finished by the next start. Once
//! `events` has the new key, steps 1 to 3 are skipped and 4 and 5 are harmless to repeat.
//!
//! The server's own writer waits for every migration before inserting, so nothing is written
//! between the copy and the swap, and servers of this version take turns (the migration lock,
//! [`super::migration_lock`]). Ingest servers of an earlier version on the same database must be
//! stopped before it runs: a row they insert into `events` after the copy began is
//! left in `events_client_time`, and the counts compared in step 1 catch only rows that arrive
//! during the copy itself.

use super::schema::{self, EVENTS_PARTITION, EVENTS_V1, EVENTS_V1_PARTITION, MIGRATIONS};
use super::{classify, Cause, ErrorClass, StoreError};

/// This migration's version.
pub const VERSION: u32 = 110;
const COPY: &str = "events_repartition";
const OLD: &str = "events_client_time";

/// Runs the migration on `db` (see the module documentation).
pub async fn run(client: &clickhouse::Client, db: &str) -> Result<(), StoreError> {
    let exec = |sql: String| async move {
        tracing::debug!(%sql, "migration 110");
        client.query(&sql).execute().await.map_err(|e| classify(&e))
    };
    let create: String = client
        .query(&format!("SHOW CREATE TABLE {db}.events"))
        .fetch_one::<String>()
        .await
        .map_err(|e| classify(&e))?;
    let views = views_on_events();
    if !create.contains(EVENTS_PARTITION) {
        exec(format!("DROP TABLE IF EXISTS {db}.{COPY}")).await?;
        exec(copy_table(db)).await?;
        let started = std::time::Instant::now();
        exec(format!("INSERT INTO {db}.{COPY} SELECT * FROM {db}.events")).await?;
        let (from, to) = (
            count(client, &format!("{db}.events")).await?,
            count(client, &format!("{db}.{COPY}")).await?,
        );
        tracing::info!(
            rows = to,
            ms = started.elapsed().as_millis() as u64,
            "migration 110: events copied into the new partitioning"
        );
        if from != to {
            return Err(StoreError {
                class: ErrorClass::Unavailable(Cause::Other),
                message: format!(
                "migration 110: {db}.events has {from} rows but its copy {db}.{COPY} has {to}: \
                 something inserted during the copy (stop other ingest servers writing to \
                 {db}; the copy is made again at the next start)"
                ),
            });
        }
        for (name, _) in &views {
            exec(format!("DROP TABLE IF EXISTS {db}.{name}")).await?;
        }
        exec(format!("DROP TABLE IF EXISTS {db}.{OLD}")).await?;
        exec(format!(
            "RENAME TABLE {db}.events TO {db}.{OLD}, {db}.{COPY} TO {db}.events"
        ))
        .await?;
    }
    for (_, sql) in &views {
        exec(schema::render(sql, db)).await?;
    }
    exec(format!("DROP TABLE IF EXISTS {db}.{OLD}")).await?;
    Ok(())
}

/// The new table: migration 1's columns with the new partition key.
fn copy_table(db: &str) -> String {
    let sql = EVENTS_V1
        .replacen("{db}.events (", &format!("{{db}}.{COPY} ("), 1)
        .replacen(EVENTS_V1_PARTITION, EVENTS_PARTITION, 1);
    debug_assert!(sql.contains(COPY) && sql.contains(EVENTS_PARTITION));
    schema::render(&sql, db)
}

/// The materialized views on `events` that the migrations before this one leave, with the
/// statement that created each: every `CREATE MATERIALIZED VIEW` reading `{db}.events` whose
/// view no later statement drops. Taken from the migrations rather than from the database, so a
/// view this migration dropped before an interruption is still known afterwards.
fn views_on_events() -> Vec<(String, &'static str)> {
    const HEAD: &str = "CREATE MATERIALIZED VIEW IF NOT EXISTS {db}.";
    let statements: Vec<&'static str> = MIGRATIONS
        .iter()
        .filter(|m| m.version < VERSION)
        .flat_map(|m| m.statements.iter().copied())
        .collect();
    let mut views: Vec<(String, &'static str)> = Vec::new();
    for sql in statements {
        if let Some(rest) = sql.strip_prefix(HEAD) {
            let name = rest.split_whitespace().next().unwrap_or_default();
            if reads_events(sql) {
                views.push((name.to_string(), sql));
            }
        } else if let Some(name) = sql.strip_prefix("DROP TABLE IF EXISTS {db}.") {
            views.retain(|(n, _)| n != name.trim());
        }
    }
    views
}

/// Whether `sql` selects from `{db}.events` itself (not `{db}.events_something`).
fn reads_events(sql: &str) -> bool {
    sql.match_indices("FROM {db}.events").any(|(i, m)| {
        sql[i + m.len()..]
            .chars()
            .next()
            .is_none_or(|c| !(c.is_alphanumeric() || c == '_'))
    })
}

async fn count(client: &clickhouse::Client, table: &str) -> Result<u64, StoreError> {
    client
        .query(&format!("SELECT count() FROM {table}"))
        .fetch_one::<u64>()
        .await
        .map_err(|e| classify(&e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_copy_has_the_columns_and_the_new_key() {
        let sql = copy_table("w");
        assert!(sql.starts_with("CREATE TABLE IF NOT EXISTS w.events_repartition ("));
        assert!(sql.contains("PARTITION BY toYYYYMM(timestamp)"));
        assert!(!sql.contains("client_time)"));
        assert!(sql.contains("client_time DateTime"));
        assert!(sql.contains("ORDER BY (site, visitor_id, message_id)"));
    }

    #[test]
    fn the_views_on_events_are_found_by_name() {
        let names: Vec<String> = views_on_events().into_iter().map(|(n, _)| n).collect();
        for want in ["q_visitor_mv", "q_visitor_days_mv", "q_history_mv"] {
            assert!(names.iter().any(|n| n == want), "{want} in {names:?}");
        }
        // Views on `identities` are not views on `events`; views a later migration dropped
        // (`q_visitor_daily_mv`, replaced by `q_visitor_days_mv`) are not made again.
        for not in ["q_ident_by_anon_mv", "q_visitor_daily_mv", "q_products_mv"] {
            assert!(!names.iter().any(|n| n == not), "{not} in {names:?}");
        }
        assert!(reads_events("SELECT 1 FROM {db}.events WHERE 1"));
        assert!(reads_events("SELECT 1 FROM {db}.events"));
        assert!(!reads_events("SELECT 1 FROM {db}.events_old"));
    }
}
