//! The ClickHouse schema, as versioned migrations applied at start-up.
//!
//! Every statement runs on ClickHouse 18.16 (the Debian package) and on current releases: no
//! DateTime64, Map, TTL, LowCardinality or JSON functions. Each migration is idempotent
//! (`IF NOT EXISTS`) and recorded in `schema_migrations`, so re-running start-up, or two servers
//! starting at once, is harmless.
//!
//! # Duplicates and exact queries
//!
//! An event can reach ClickHouse twice: a client retries after a lost response (a new receive
//! time, so a different skew-corrected `timestamp`), or the server replays its spool after a crash
//! between a confirmed insert and the checkpoint (an identical row). The events table is a
//! `ReplacingMergeTree` whose sorting key is `(site, visitor_id, message_id)` and whose partition
//! comes from `client_time`, the time as the client sent it, so both kinds of duplicate have the
//! same key in the same partition and collapse when parts merge. The corrected time is a plain
//! column, never part of the key.
//!
//! Until a merge happens, duplicates are visible. Queries that must be exact either read
//! `FROM events FINAL` (collapses at read time; fine for one visitor's rows) or count
//! `uniqExact(message_id)` instead of `count()` and pick per-event values with
//! `argMax(col, received_at_ms)`. Aggregate tables fed by materialized views see each insert, so
//! they must be built on uniq-style states (or deduplicate by `message_id` at read time).

/// One migration: a version, a name, and the statements (`{db}` is the database).
pub struct Migration {
    pub version: u32,
    pub name: &'static str,
    pub statements: &'static [&'static str],
}

/// The bookkeeping table itself (created before anything else).
pub const MIGRATIONS_TABLE: &str = "CREATE TABLE IF NOT EXISTS {db}.schema_migrations (
    version UInt32,
    name String,
    applied_at DateTime
) ENGINE = MergeTree ORDER BY version";

/// All migrations, oldest first. Never edit one that has shipped: add a new one.
pub const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        name: "events",
        statements: &["CREATE TABLE IF NOT EXISTS {db}.events (
    site String,
    -- anonymous id, else user id: the key for per-visitor recency lookups
    visitor_id String,
    message_id String,
    type String,
    event String,
    name String,
    anonymous_id String,
    user_id String,
    previous_id String,
    group_id String,
    -- skew-corrected event time (server clock); the time every query should use
    timestamp DateTime,
    timestamp_ms Int64,
    skew_rule String,
    -- the event time as the client sent it (timestamp, else originalTimestamp, else receipt):
    -- the same on a retry, so it fixes the partition of duplicates
    client_time DateTime,
    received_at_ms Int64,
    sent_at_ms Int64,
    source String,
    session_id String,
    page_url String,
    page_path String,
    page_title String,
    page_referrer String,
    page_search String,
    utm_source String,
    utm_medium String,
    utm_campaign String,
    utm_term String,
    utm_content String,
    user_agent String,
    browser String,
    browser_version String,
    os String,
    os_version String,
    device_type String,
    is_bot UInt8,
    bot_score Nullable(UInt8),
    -- truncated (IPv4 /24, IPv6 /48) or empty, per site; never the whole address
    ip String,
    locale String,
    library_name String,
    library_version String,
    country String,
    region String,
    region_code String,
    city String,
    postal_code String,
    geo_timezone String,
    continent String,
    colo String,
    latitude Nullable(Float64),
    longitude Nullable(Float64),
    asn Nullable(UInt32),
    gpc UInt8,
    product_id String,
    product_name String,
    price Nullable(Float64),
    quantity Nullable(Float64),
    currency String,
    order_id String,
    revenue Nullable(Float64),
    engaged_ms UInt64,
    scroll_depth UInt8,
    properties String,
    traits String,
    context String
) ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(client_time)
ORDER BY (site, visitor_id, message_id)
SETTINGS index_granularity = 8192"],
    },
    Migration {
        version: 2,
        name: "identities",
        // One row per (site, user id, anonymous id) link, from identify calls and any event
        // carrying both ids, and from alias (previousId -> userId). Duplicates collapse.
        statements: &["CREATE TABLE IF NOT EXISTS {db}.identities (
    site String,
    user_id String,
    anonymous_id String,
    linked_at DateTime,
    message_id String,
    source_type String
) ENGINE = ReplacingMergeTree
ORDER BY (site, user_id, anonymous_id)"],
    },
    Migration {
        version: 3,
        name: "quarantine",
        // Rows ClickHouse refused (proven by bisection and a probe row), with its reason, kept
        // until `ingest-server quarantine replay` sends them again.
        statements: &["CREATE TABLE IF NOT EXISTS {db}.quarantine (
    quarantined_at DateTime,
    site String,
    message_id String,
    reason String,
    row String
) ENGINE = MergeTree
PARTITION BY toYYYYMM(quarantined_at)
ORDER BY (quarantined_at, site)"],
    },
    Migration {
        version: 4,
        name: "quarantine_replays",
        // The ledger of `ingest-server quarantine replay`: one row per quarantine row that
        // reached `events`, so a second replay does not send it again. The quarantine row
        // itself stays, for the record.
        statements: &["CREATE TABLE IF NOT EXISTS {db}.quarantine_replays (
    site String,
    message_id String,
    quarantined_at DateTime,
    replayed_at DateTime
) ENGINE = ReplacingMergeTree
ORDER BY (site, message_id, quarantined_at)"],
    },
    // 100..: the query API's pre-aggregated state (SQL and design in `crate::query::schema`).
    Migration {
        version: 100,
        name: "query_visitor_state",
        statements: crate::query::schema::VISITOR,
    },
    Migration {
        version: 101,
        name: "query_visitor_daily",
        statements: crate::query::schema::DAILY,
    },
    Migration {
        version: 102,
        name: "query_products",
        statements: crate::query::schema::PRODUCTS,
    },
    Migration {
        version: 103,
        name: "query_orders",
        statements: crate::query::schema::ORDERS,
    },
    Migration {
        version: 104,
        name: "query_events_by_name",
        statements: crate::query::schema::BY_NAME,
    },
    Migration {
        version: 105,
        name: "query_ident_by_anon",
        statements: crate::query::schema::IDENT_BY_ANON,
    },
    Migration {
        version: 106,
        name: "query_history",
        statements: crate::query::schema::HISTORY,
    },
    Migration {
        version: 107,
        name: "query_visitor_days",
        statements: crate::query::schema::DAYS,
    },
    Migration {
        version: 108,
        name: "query_visitor_products",
        statements: crate::query::schema::VISITOR_PRODUCTS,
    },
    Migration {
        version: 109,
        name: "query_user_visitors",
        statements: crate::query::schema::USER_VISITORS,
    },
];

/// Renders a statement for a database.
pub fn render(sql: &str, db: &str) -> String {
    sql.replace("{db}", db)
}
