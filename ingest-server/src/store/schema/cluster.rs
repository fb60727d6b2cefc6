//! Cluster mode (`[clickhouse] cluster = "name"`): every migration statement rewritten for a
//! ClickHouse cluster of shards and replicas, so the migrations themselves stay written for one
//! server (including ones added later: nothing here names a table).
//!
//! # What each statement becomes
//!
//! - `CREATE TABLE {db}.T (...) ENGINE = XMergeTree(args) ...` becomes two tables, both
//!   `ON CLUSTER`: `{db}.T_local`, a `ReplicatedXMergeTree('/clickhouse/tables/{shard}/<db>/T_local',
//!   '{replica}', args)` holding this shard's rows, copied between its replicas through
//!   ZooKeeper; and `{db}.T`, a `Distributed` table over the `T_local` of every shard. Every
//!   query and insert of the server names `{db}.T` as before and reads or writes the whole
//!   cluster. Other engines (`Memory`) are created `ON CLUSTER` as they are: one per server.
//! - `CREATE MATERIALIZED VIEW {db}.V TO {db}.T AS SELECT ... FROM {db}.S` becomes a view on
//!   each server from `S_local` to `T_local`: a view sees the rows inserted into its own
//!   replica, and since the query tables are sharded like `events`, its output belongs to the
//!   shard it is computed on. The view on the other replica of the shard does not fire for the
//!   parts replication brings (ClickHouse replicates the view's target table itself).
//! - `INSERT INTO {db}.T SELECT ... FROM {db}.S` (a backfill) stays: it reads the `Distributed`
//!   source and writes through the `Distributed` target, which shards the rows by the same key.
//! - `ALTER TABLE {db}.T ...` runs on `T_local` `ON CLUSTER` (ClickHouse runs it on one replica
//!   per shard for replicated tables); when it changes columns, the `Distributed` table, which
//!   holds no rows, is dropped and created again so it sees them.
//! - `DROP TABLE {db}.X` drops `X` and `X_local` `ON CLUSTER`.
//! - The trigger evaluator's bookkeeping ([`super::triggers::WHOLE`]: subscriptions,
//!   memberships, outbox, state, lease) is not sharded: `{db}.T` itself is a
//!   `ReplicatedXMergeTree('/clickhouse/tables/whole/<db>/T', '{shard}-{replica}', args)` on
//!   every server, all replicas of one table, with no `Distributed` table. Each server reads
//!   its own whole copy, and `SYSTEM SYNC REPLICA` before a read makes it see every insert any
//!   server had confirmed by then (`crate::triggers` explains why that matters to the lease and
//!   the outbox). One server evaluates at a time, so sharding these tables would spread nothing.
//!   An `ALTER` of one is refused for now (`ON CLUSTER` runs a replicated table's `ALTER` once
//!   per shard, which for these is once per replica set too many); no migration has one.
//!
//! # The sharding key: (site, visitor id)
//!
//! Every table with a `visitor_id` column is sharded by `cityHash64(site, visitor_id)`: one
//! visitor's events, history, day and product state, orders and audience rows are on one shard,
//! and the views that build the query state from `events` find all of a visitor's rows on the
//! replica they run on. `identities` and `q_ident_by_anon` use `anonymous_id` (the visitor id of
//! the events the link came with), `q_user_visitors` its `user_id` (a visitor id too, for the
//! events it lists). Tables without such a column (audit, quarantine, trigger bookkeeping) are
//! sharded by a hash of their sorting key, so the versions of one row of a `ReplacingMergeTree`
//! meet on one shard and collapse there.
//!
//! Why the visitor and not the person (the user id an identify links visitors to): a visitor's
//! first events carry no user id, and the link may come days later, so sharding by person would
//! either need the link before the row is written (it is not known) or move rows when it
//! arrives; and per-visitor aggregate state would be split between shards. The cost: a person
//! known under several visitor ids (two devices, then logging in) has rows on the shards of each
//! id, so a profile of an identified person reads up to that many shards; an anonymous visitor's
//! profile, the common case, lives on one. Current releases send a lookup only to the shards
//! of its ids: the query API's lookups name the site and the visitor ids as literals and carry
//! `optimize_skip_unused_shards = 1` where ClickHouse has the setting
//! (`query::SKIP_UNUSED_SHARDS`; checked on ClickHouse 26 by `tests/clickhouse_parity.rs`).
//! ClickHouse 18.16 has no such setting and sends a query on a `Distributed` table to every
//! shard (each answers from its primary key, a few granules).
//!
//! Only tables whose rows sit where their key says may be read that way: a view writes its rows
//! on the shard of the `events` row it came from, so a view's target is keyed by the same
//! visitor column (`q_user_visitors` lists events that have no anonymous id, whose visitor id
//! is the user id it is keyed by). `quality_hourly`, filled by views on `events` but keyed by
//! its sorting key, is never read by a lookup.
//!
//! # Several ingest servers: what they share and what the tables absorb
//!
//! - Duplicates: each server's dedup remembers the ids it saw (`intake::dedup`); a client retry
//!   that reaches another server is written twice. It has the same site and visitor, so both
//!   copies land on one shard, where `events` collapses them on merge and every read that must
//!   be exact uses `FINAL` or counts distinct message ids, and the query state is built from
//!   idempotent aggregate states (see [`super::query`]). Replicated tables also drop a block
//!   identical to one of the last 100 inserted. That covers every figure the API serves, so no
//!   shared dedup store (a round trip on every request) is kept.
//! - Inserts: `insert_distributed_sync = 1` (`store::client`), so the writer's spool lets go of
//!   rows only once every shard they go to has them.
//! - Identity links: the in-memory index refreshes by insert time on a cluster (`inserted_at`,
//!   migration 145; `crate::query::identity`), since this server's `system.parts`
//!   lists one shard's parts of `identities`.
//! - Rate limits: split per server (`rate_limit.servers`, `intake::ratelimit`).
//!
//! # What cluster mode assumes
//!
//! A cluster database is created new by this release, so `events` is created with its final
//! partition key ([`super::EVENTS_PARTITION`]) and migration 110's copy-and-swap does not run.
//! `ON CLUSTER` statements wait for every server of the cluster: migrations run while all are up
//! (a statement queued for a server that is down runs when it comes back, after
//! `distributed_ddl_task_timeout`, 180 s by default, has failed the migration, which the next
//! start resumes).

use super::{EVENTS_PARTITION, EVENTS_V1_PARTITION};

/// Suffix of the replicated table under each `Distributed` one.
pub const LOCAL: &str = "_local";

/// A statement the rewrite does not know how to apply on a cluster.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("cluster mode cannot rewrite this migration statement ({why}): {sql}")]
pub struct Unsupported {
    pub why: &'static str,
    pub sql: String,
}

/// How the migrations' statements are applied: as written (one server), or rewritten for a
/// cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Layout {
    Single,
    Cluster(String),
}

impl Layout {
    /// The layout of `[clickhouse] cluster`.
    pub fn new(cluster: Option<&str>) -> Self {
        match cluster {
            Some(c) => Layout::Cluster(c.to_string()),
            None => Layout::Single,
        }
    }

    /// The cluster's name, in cluster mode.
    pub fn cluster(&self) -> Option<&str> {
        match self {
            Layout::Single => None,
            Layout::Cluster(c) => Some(c),
        }
    }

    /// The statements that apply migration statement `sql` (a template with `{db}`). On one
    /// server, `sql` itself, unchanged.
    pub fn rewrite(&self, sql: &str) -> Result<Vec<String>, Unsupported> {
        match self {
            Layout::Single => Ok(vec![sql.to_string()]),
            Layout::Cluster(c) => rewrite(c, sql),
        }
    }

    /// The table that data-changing `ALTER`s (deletions, partition drops) name, with the
    /// clause that sends them to every shard: `{db}.T` alone on one server, `{db}.T_local ON
    /// CLUSTER c` on a cluster.
    pub fn alter_target(&self, db: &str, table: &str) -> String {
        match self {
            Layout::Single => format!("{db}.{table}"),
            Layout::Cluster(c) => format!("{db}.{table}{LOCAL} ON CLUSTER {c}"),
        }
    }

    /// The name of the table holding a server's own rows of `table` (`system.parts` and
    /// `system.mutations` list it): `table` on one server, `table_local` on a cluster.
    pub fn local_name(&self, table: &str) -> String {
        match self {
            Layout::Single => table.to_string(),
            Layout::Cluster(_) => format!("{table}{LOCAL}"),
        }
    }

    /// The system table `system.<table>` (`parts`, `mutations`) as seen from one replica of
    /// every shard: `system.<table>` on one server, the `cluster` table function on a cluster
    /// (18.16 has no `clusterAllReplicas`; `remote()` over every host would need the
    /// credentials written into the SQL). Enough where a shard's replicas hold the same data:
    /// its partitions, and a mutation one replica has applied, which the other fetches (the
    /// mutated parts) or applies itself.
    pub fn every_shard(&self, table: &str) -> String {
        match self {
            Layout::Single => format!("system.{table}"),
            Layout::Cluster(c) => format!("cluster('{c}', system, {table})"),
        }
    }

    /// Drops and creates again the `Distributed` table over `table_local` (it holds no rows),
    /// so it has the local table's columns. Nothing on one server.
    pub fn distributed_again(&self, table: &str) -> Vec<String> {
        match self {
            Layout::Single => Vec::new(),
            Layout::Cluster(c) => distributed(c, table, true),
        }
    }

    /// `CREATE DATABASE`, on every server of the cluster.
    pub fn create_database(&self, db: &str) -> String {
        match self {
            Layout::Single => format!("CREATE DATABASE IF NOT EXISTS {db}"),
            Layout::Cluster(c) => format!("CREATE DATABASE IF NOT EXISTS {db} ON CLUSTER {c}"),
        }
    }
}

const CREATE_TABLE: &str = "CREATE TABLE IF NOT EXISTS {db}.";
const CREATE_VIEW: &str = "CREATE MATERIALIZED VIEW IF NOT EXISTS {db}.";
const DROP_TABLE: &str = "DROP TABLE IF EXISTS {db}.";
const ALTER_TABLE: &str = "ALTER TABLE {db}.";
const INSERT_INTO: &str = "INSERT INTO {db}.";

fn rewrite(cluster: &str, sql: &str) -> Result<Vec<String>, Unsupported> {
    let unsupported = |why| Unsupported {
        why,
        sql: sql.to_string(),
    };
    if let Some(rest) = sql.strip_prefix(CREATE_TABLE) {
        let (name, definition) = split_name(rest);
        if name.is_empty() {
            return Err(unsupported("no table name"));
        }
        return create_table(cluster, name, definition).ok_or_else(|| unsupported("no ENGINE"));
    }
    if let Some(rest) = sql.strip_prefix(CREATE_VIEW) {
        let (name, definition) = split_name(rest);
        let definition = definition.trim_start();
        let Some(after_to) = definition.strip_prefix("TO {db}.") else {
            return Err(unsupported("a materialized view without TO {db}.table"));
        };
        let (target, select) = split_name(after_to);
        return Ok(vec![format!(
            "{CREATE_VIEW}{name} ON CLUSTER {cluster} TO {{db}}.{target}{LOCAL}{}",
            local_sources(select)
        )]);
    }
    if let Some(rest) = sql.strip_prefix(DROP_TABLE) {
        let (name, tail) = split_name(rest);
        if !tail.trim().is_empty() {
            return Err(unsupported("text after the table name"));
        }
        return Ok(vec![
            format!("{DROP_TABLE}{name} ON CLUSTER {cluster}"),
            format!("{DROP_TABLE}{name}{LOCAL} ON CLUSTER {cluster}"),
        ]);
    }
    if let Some(rest) = sql.strip_prefix(ALTER_TABLE) {
        let (name, command) = split_name(rest);
        if is_whole(name) {
            return Err(unsupported(
                "an ALTER of a table replicated whole on every server (it would run once per shard)",
            ));
        }
        let mut out = vec![format!(
            "{ALTER_TABLE}{name}{LOCAL} ON CLUSTER {cluster}{command}"
        )];
        if command.to_ascii_uppercase().contains("COLUMN") {
            out.extend(distributed(cluster, name, true));
        }
        return Ok(out);
    }
    if sql.starts_with(INSERT_INTO) {
        return Ok(vec![sql.to_string()]);
    }
    Err(unsupported(
        "only CREATE TABLE, CREATE MATERIALIZED VIEW ... TO, INSERT INTO, ALTER TABLE and DROP TABLE on {db} are known",
    ))
}

/// `name` and what follows it.
fn split_name(rest: &str) -> (&str, &str) {
    let end = rest
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .unwrap_or(rest.len());
    rest.split_at(end)
}

/// Every `{db}.X` of a view's query as `{db}.X_local`: a view reads its own server's rows.
fn local_sources(select: &str) -> String {
    let mut out = String::with_capacity(select.len() + 16);
    let mut rest = select;
    while let Some(i) = rest.find("{db}.") {
        let (name, tail) = split_name(&rest[i + 5..]);
        out.push_str(&rest[..i + 5]);
        out.push_str(name);
        out.push_str(LOCAL);
        rest = tail;
    }
    out.push_str(rest);
    out
}

fn create_table(cluster: &str, name: &str, definition: &str) -> Option<Vec<String>> {
    let at = definition.find("ENGINE = ")?;
    let (columns, engine_and_rest) = definition.split_at(at);
    let engine_and_rest = &engine_and_rest["ENGINE = ".len()..];
    let (engine, after_engine) = split_name(engine_and_rest);
    if !engine.ends_with("MergeTree") {
        // Memory and the like: one per server, nothing to replicate or shard.
        return Some(vec![format!(
            "{CREATE_TABLE}{name} ON CLUSTER {cluster}{definition}"
        )]);
    }
    // Engine arguments (`ReplacingMergeTree(version)`) follow the replication ones.
    let (args, tail) = match after_engine.strip_prefix('(') {
        Some(a) => {
            let close = a.find(')')?;
            (Some(&a[..close]), &a[close + 1..])
        }
        None => (None, after_engine),
    };
    let whole = is_whole(name);
    let path = if whole {
        // One table for the whole cluster: a replica name unique across shards.
        format!("'/clickhouse/tables/whole/{{db}}/{name}', '{{shard}}-{{replica}}'")
    } else {
        format!("'/clickhouse/tables/{{shard}}/{{db}}/{name}{LOCAL}', '{{replica}}'")
    };
    let args = match args {
        Some(a) if !a.trim().is_empty() => format!("{path}, {a}"),
        _ => path,
    };
    if whole {
        return Some(vec![format!(
            "{CREATE_TABLE}{name} ON CLUSTER {cluster}{columns}ENGINE = Replicated{engine}({args}){tail}"
        )]);
    }
    // Migration 1's events: a cluster database is new, so it gets its final partition key.
    let tail = if name == "events" {
        tail.replacen(EVENTS_V1_PARTITION, EVENTS_PARTITION, 1)
    } else {
        tail.to_string()
    };
    let mut out = vec![format!(
        "{CREATE_TABLE}{name}{LOCAL} ON CLUSTER {cluster}{columns}ENGINE = Replicated{engine}({args}){tail}"
    )];
    out.extend(distributed_with_key(
        cluster,
        name,
        &sharding_key(columns, &tail),
        false,
    ));
    Some(out)
}

/// Whether `name` is replicated whole on every server rather than sharded (see the module doc).
fn is_whole(name: &str) -> bool {
    super::triggers::WHOLE.contains(&name)
}

/// The `Distributed` table over `name_local`, dropped first when `recreate`.
fn distributed(cluster: &str, name: &str, recreate: bool) -> Vec<String> {
    let key = table_sharding_key(name).unwrap_or_else(|| "rand()".into());
    distributed_with_key(cluster, name, &key, recreate)
}

fn distributed_with_key(cluster: &str, name: &str, key: &str, recreate: bool) -> Vec<String> {
    let mut out = Vec::new();
    if recreate {
        out.push(format!("{DROP_TABLE}{name} ON CLUSTER {cluster}"));
    }
    out.push(format!(
        "{CREATE_TABLE}{name} ON CLUSTER {cluster} AS {{db}}.{name}{LOCAL} ENGINE = Distributed({cluster}, {{db}}, {name}{LOCAL}, {key})"
    ));
    out
}

/// The sharding key of a table created by some migration (for re-creating its `Distributed`
/// table after an `ALTER`, and for tests that shard a table as a cluster would).
pub fn table_sharding_key(name: &str) -> Option<String> {
    let head = format!("{CREATE_TABLE}{name}");
    super::MIGRATIONS
        .iter()
        .flat_map(|m| m.statements.iter())
        .filter_map(|s| s.strip_prefix(head.as_str()))
        .filter(|rest| rest.starts_with([' ', '(', '\n']))
        .find_map(|rest| {
            let at = rest.find("ENGINE = ")?;
            Some(sharding_key(&rest[..at], &rest[at..]))
        })
}

/// `cityHash64(site, <visitor column>)`, else a hash of the sorting key (see the module doc).
fn sharding_key(columns: &str, tail: &str) -> String {
    let has = |col: &str| {
        columns.lines().any(|l| {
            l.trim_start()
                .strip_prefix(col)
                .is_some_and(|r| r.starts_with(' '))
        })
    };
    for col in ["visitor_id", "anonymous_id", "user_id"] {
        if has("site") && has(col) {
            return format!("cityHash64(site, {col})");
        }
    }
    let order = tail
        .split_once("ORDER BY ")
        .map(|(_, o)| o)
        .unwrap_or_default();
    let order = match order.strip_prefix('(') {
        Some(o) => o.split(')').next().unwrap_or_default(),
        None => order.split_whitespace().next().unwrap_or_default(),
    };
    if order.trim().is_empty() {
        "rand()".into()
    } else {
        format!("cityHash64({})", order.trim())
    }
}

#[cfg(test)]
mod tests {
    use super::super::triggers::WHOLE;
    use super::super::{render, MIGRATIONS, MIGRATIONS_TABLE};
    use super::*;

    fn c(sql: &str) -> Vec<String> {
        Layout::new(Some("c2")).rewrite(sql).unwrap()
    }

    #[test]
    fn one_server_gets_every_statement_byte_for_byte() {
        let single = Layout::new(None);
        for m in MIGRATIONS {
            for s in m.statements {
                assert_eq!(single.rewrite(s).unwrap(), vec![s.to_string()]);
            }
        }
        assert_eq!(
            single.create_database("w"),
            "CREATE DATABASE IF NOT EXISTS w"
        );
        assert_eq!(single.alter_target("w", "events"), "w.events");
        assert_eq!(single.local_name("events"), "events");
        assert_eq!(single.every_shard("parts"), "system.parts");
        assert_eq!(
            Layout::new(Some("c2")).every_shard("parts"),
            "cluster('c2', system, parts)"
        );
    }

    #[test]
    fn every_migration_has_a_cluster_form() {
        let layout = Layout::new(Some("c2"));
        for s in
            std::iter::once(&MIGRATIONS_TABLE).chain(MIGRATIONS.iter().flat_map(|m| m.statements))
        {
            let out = layout.rewrite(s).unwrap_or_else(|e| panic!("{e}"));
            for o in &out {
                assert!(
                    o.contains(" ON CLUSTER c2") || o.starts_with(INSERT_INTO),
                    "{o}"
                );
                assert!(
                    !o.contains("ENGINE = MergeTree") && !o.contains("ENGINE = ReplacingMergeTree"),
                    "{o}"
                );
            }
        }
    }

    #[test]
    fn tables_become_replicated_local_tables_under_distributed_ones() {
        let out = c("CREATE TABLE IF NOT EXISTS {db}.t (
    site String,
    id String,
    version UInt64
) ENGINE = ReplacingMergeTree(version) ORDER BY (site, id)");
        assert_eq!(
            out,
            vec![
                "CREATE TABLE IF NOT EXISTS {db}.t_local ON CLUSTER c2 (
    site String,
    id String,
    version UInt64
) ENGINE = ReplicatedReplacingMergeTree('/clickhouse/tables/{shard}/{db}/t_local', '{replica}', version) ORDER BY (site, id)",
                "CREATE TABLE IF NOT EXISTS {db}.t ON CLUSTER c2 AS {db}.t_local ENGINE = Distributed(c2, {db}, t_local, cityHash64(site, id))",
            ]
        );
        // The database is filled in the ZooKeeper path too; the macros are left to each server.
        assert!(
            render(&out[0], "w").contains("'/clickhouse/tables/{shard}/w/t_local', '{replica}'")
        );
    }

    #[test]
    fn events_and_the_query_state_are_sharded_by_visitor() {
        let all: Vec<String> = MIGRATIONS
            .iter()
            .flat_map(|m| m.statements)
            .flat_map(|s| c(s))
            .collect();
        let dist = |t: &str| {
            all.iter()
                .find(|s| s.starts_with(&format!("{CREATE_TABLE}{t} ON CLUSTER")))
                .unwrap_or_else(|| panic!("no Distributed {t}"))
                .clone()
        };
        for t in [
            "events",
            "q_visitor",
            "q_visitor_days",
            "q_history",
            "q_orders",
            "q_events_by_name",
            "trigger_touched",
        ] {
            assert!(
                dist(t).ends_with("cityHash64(site, visitor_id))"),
                "{}",
                dist(t)
            );
        }
        for t in ["identities", "q_ident_by_anon"] {
            assert!(
                dist(t).ends_with("cityHash64(site, anonymous_id))"),
                "{}",
                dist(t)
            );
        }
        assert!(dist("q_user_visitors").ends_with("cityHash64(site, user_id))"));
        // No visitor column: the sorting key, so a row's versions meet on one shard.
        assert!(
            dist("quarantine_replays").ends_with("cityHash64(site, message_id, quarantined_at))")
        );
        // The triggers' bookkeeping: one table replicated whole on every server, no Distributed.
        for t in WHOLE {
            let create = all
                .iter()
                .filter(|s| s.starts_with(&format!("{CREATE_TABLE}{t} ")))
                .collect::<Vec<_>>();
            assert_eq!(create.len(), 1, "{t}: {create:?}");
            assert!(
                create[0].contains(&format!(
                    "ENGINE = ReplicatedReplacingMergeTree('/clickhouse/tables/whole/{{db}}/{t}', '{{shard}}-{{replica}}', version)"
                )),
                "{}",
                create[0]
            );
            assert!(!all.iter().any(|s| s.contains(&format!("{t}{LOCAL}"))));
        }
        let e = Layout::new(Some("c2"))
            .rewrite("ALTER TABLE {db}.trigger_lease ADD COLUMN x UInt8")
            .unwrap_err();
        assert!(e.why.contains("whole"), "{e}");
        // events keeps its columns and gets its final partition key.
        let events = all
            .iter()
            .find(|s| s.starts_with("CREATE TABLE IF NOT EXISTS {db}.events_local"))
            .unwrap();
        assert!(events.contains(EVENTS_PARTITION) && !events.contains(EVENTS_V1_PARTITION));
        assert!(events.contains("ENGINE = ReplicatedReplacingMergeTree('/clickhouse/tables/{shard}/{db}/events_local', '{replica}')"));
    }

    #[test]
    fn views_read_and_write_local_tables() {
        let out = c(
            "CREATE MATERIALIZED VIEW IF NOT EXISTS {db}.q_mv TO {db}.q AS SELECT site, visitor_id
FROM {db}.events
WHERE x IN (SELECT y FROM {db}.events_other)",
        );
        assert_eq!(
            out,
            vec!["CREATE MATERIALIZED VIEW IF NOT EXISTS {db}.q_mv ON CLUSTER c2 TO {db}.q_local AS SELECT site, visitor_id
FROM {db}.events_local
WHERE x IN (SELECT y FROM {db}.events_other_local)"]
        );
    }

    #[test]
    fn drops_alters_and_backfills() {
        assert_eq!(
            c("DROP TABLE IF EXISTS {db}.q_products"),
            vec![
                "DROP TABLE IF EXISTS {db}.q_products ON CLUSTER c2",
                "DROP TABLE IF EXISTS {db}.q_products_local ON CLUSTER c2",
            ]
        );
        assert_eq!(
            c("ALTER TABLE {db}.events ADD COLUMN x UInt8"),
            vec![
                "ALTER TABLE {db}.events_local ON CLUSTER c2 ADD COLUMN x UInt8",
                "DROP TABLE IF EXISTS {db}.events ON CLUSTER c2",
                "CREATE TABLE IF NOT EXISTS {db}.events ON CLUSTER c2 AS {db}.events_local ENGINE = Distributed(c2, {db}, events_local, cityHash64(site, visitor_id))",
            ]
        );
        assert_eq!(
            c("ALTER TABLE {db}.events DELETE WHERE site = 'a'"),
            vec!["ALTER TABLE {db}.events_local ON CLUSTER c2 DELETE WHERE site = 'a'"]
        );
        let backfill = "INSERT INTO {db}.q SELECT site FROM {db}.events";
        assert_eq!(c(backfill), vec![backfill]);
        let e = Layout::new(Some("c2"))
            .rewrite("OPTIMIZE TABLE {db}.events")
            .unwrap_err();
        assert!(e.to_string().contains("OPTIMIZE TABLE {db}.events"), "{e}");
    }

    #[test]
    fn memory_tables_are_one_per_server() {
        assert_eq!(
            c("CREATE TABLE IF NOT EXISTS {db}.m (
    a String
) ENGINE = Memory"),
            vec![
                "CREATE TABLE IF NOT EXISTS {db}.m ON CLUSTER c2 (
    a String
) ENGINE = Memory"
            ]
        );
    }
}
