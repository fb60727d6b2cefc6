//! The tables of audience triggers (`crate::triggers`), migrations 120 and 121.
//!
//! - `trigger_subscriptions` (ReplacingMergeTree by `version`, one row per `(site, id)` once
//!   merged, read with `argMax(..., version)`): the subscriptions every ingest server lists; a
//!   removal is a row with `deleted = 1` and a higher version.
//! - `trigger_touched` (MergeTree by `(site, inserted_at)`, daily partitions the evaluator
//!   drops after two days): a view on `events` writes each inserted row's visitor with the
//!   ClickHouse server's time of the insert, so an evaluation tick reads the visitors touched
//!   since its watermark from a few recent granules instead of scanning `events`.
//! - `trigger_members` (ReplacingMergeTree by `version`, per `(site, subscription, person)`):
//!   whether the person is in the audience now and how many times they entered (the `entry` of
//!   the idempotency key).
//! - `trigger_deliveries` (ReplacingMergeTree by `version`, per idempotency `key`): the outbox.
//!   A transition is written `pending` (version 0); each failed attempt writes the attempt count
//!   as the version, and `delivered` or `dead` writes [`TERMINAL`], so a pending row written
//!   again (an evaluation repeated after a crash) never hides an outcome.
//! - `trigger_state` (ReplacingMergeTree by `version`): the evaluator's last tick and watermark.
//! - `trigger_candidates` (Memory): the visitors one tick evaluates, filled and emptied by the
//!   evaluator per site; lost on a ClickHouse restart, which costs nothing. On a cluster each
//!   ClickHouse server has its own (the evaluator fills the one of the server it talks to), and
//!   queries over `Distributed` tables name it with `GLOBAL IN`, so its visitors are sent to
//!   every shard.
//!
//! - `trigger_lease` (ReplacingMergeTree by `version`, migration 121): which server evaluates
//!   and delivers, until when (`crate::triggers::lease`).
//!
//! 18.16 has no TTL: old `trigger_touched` partitions are dropped by the evaluator.
//!
//! On a cluster (`[clickhouse] cluster`), `trigger_touched` is sharded like `events` and the
//! tables in [`WHOLE`] are replicated whole on every server (`super::cluster`).

/// The tables a cluster holds whole on every server instead of sharding them
/// (`super::cluster`): what the one evaluating server reads and writes besides the events. Read
/// after `SYSTEM SYNC REPLICA` (`crate::triggers::sync`), a server's own copy holds every row
/// any server had written by then, which the lease and the outbox's "already written" checks
/// rely on; a sharded table read through `Distributed` may answer from a replica that has not
/// fetched the last insert yet. Their size follows subscriptions, members and deliveries, not
/// events.
pub const WHOLE: &[&str] = &[
    "trigger_subscriptions",
    "trigger_members",
    "trigger_deliveries",
    "trigger_state",
    "trigger_lease",
];

/// The version of a delivery's final row (`delivered` or `dead`), above any attempt count.
pub const TERMINAL: u64 = 1_000_000;

/// Migration 120's statements.
pub const TRIGGERS: &[&str] = &[
    "CREATE TABLE IF NOT EXISTS {db}.trigger_subscriptions (
    site String,
    id String,
    name String,
    audience String,
    url String,
    secret String,
    created_at_ms Int64,
    deleted UInt8,
    version UInt64
) ENGINE = ReplacingMergeTree(version) ORDER BY (site, id)",
    "CREATE TABLE IF NOT EXISTS {db}.trigger_touched (
    site String,
    visitor_id String,
    inserted_at DateTime
) ENGINE = MergeTree PARTITION BY toYYYYMMDD(inserted_at) ORDER BY (site, inserted_at)",
    "CREATE MATERIALIZED VIEW IF NOT EXISTS {db}.trigger_touched_mv TO {db}.trigger_touched AS SELECT site, visitor_id, now() AS inserted_at
FROM {db}.events",
    "CREATE TABLE IF NOT EXISTS {db}.trigger_members (
    site String,
    sub_id String,
    person String,
    member UInt8,
    entry UInt32,
    changed_at_ms Int64,
    version UInt64
) ENGINE = ReplacingMergeTree(version) ORDER BY (site, sub_id, person)",
    "CREATE TABLE IF NOT EXISTS {db}.trigger_deliveries (
    key String,
    site String,
    sub_id String,
    person String,
    entry UInt32,
    kind String,
    payload String,
    created_at_ms Int64,
    state String,
    attempts UInt32,
    next_at_ms Int64,
    last_error String,
    updated_at_ms Int64,
    version UInt64
) ENGINE = ReplacingMergeTree(version) ORDER BY key",
    "CREATE TABLE IF NOT EXISTS {db}.trigger_state (
    name String,
    value Int64,
    version UInt64
) ENGINE = ReplacingMergeTree(version) ORDER BY name",
    "CREATE TABLE IF NOT EXISTS {db}.trigger_candidates (
    site String,
    visitor_id String
) ENGINE = Memory",
];

/// Migration 121's statements: the evaluator's lease (`crate::triggers::lease`).
pub const TRIGGER_LEASE: &[&str] = &["CREATE TABLE IF NOT EXISTS {db}.trigger_lease (
    name String,
    holder String,
    expires_at Int64,
    version UInt64
) ENGINE = ReplacingMergeTree(version) ORDER BY name"];
