//! The ClickHouse schema, as versioned migrations applied at start-up.
//!
//! Every statement runs on ClickHouse 18.16 (the Debian package) and on current releases: no
//! DateTime64, Map, TTL, LowCardinality or JSON functions. Each migration is idempotent
//! (`IF NOT EXISTS`) and recorded in `schema_migrations`, so re-running start-up, or two servers
//! starting at once, is harmless.
//!
//! # Duplicates and exact queries
//!
//! An event can reach ClickHouse twice: a client retries after a lost response, or the server
//! replays its spool after a crash between a confirmed insert and the checkpoint (an identical
//! row). The events table is a `ReplacingMergeTree` whose sorting key is
//! `(site, visitor_id, message_id)`, so duplicates in one partition collapse when parts merge.
//!
//! Since migration 110 the partition is the month of the skew-corrected `timestamp`
//! ([`EVENTS_PARTITION`]), which the server bounds to the year before receipt: the client's
//! clock can neither spread one batch over a hundred partitions (current releases refuse an
//! insert touching more than 100) nor wrap a date. A replayed row is identical, so it lands in
//! the same partition. A client retry carries the same `originalTimestamp` and a new `sentAt`,
//! so its corrected time moves only by the difference in network delay: it can land in the next
//! month's partition only when the event happened within that delay of midnight on the 1st
//! (UTC), and then it stays a second row until read with `FINAL` (which collapses across
//! partitions) or counted by message id, as below. Migrations 1 to 109 partitioned by
//! `client_time`, the clock as the client sent it; that column stays, clamped to what a
//! `DateTime` can show (`enrich::datetime`).
//!
//! Until a merge happens, duplicates are visible. Queries that must be exact either read
//! `FROM events FINAL` (collapses at read time; fine for one visitor's rows) or count
//! `uniqExact(message_id)` instead of `count()` and pick per-event values with
//! `argMax(col, received_at_ms)`. Aggregate tables fed by materialized views see each insert, so
//! they must be built on uniq-style states (or deduplicate by `message_id` at read time).

pub mod cluster;
pub mod query;
pub mod triggers;

/// One migration: a version, a name, and the statements (`{db}` is the database).
pub struct Migration {
    pub version: u32,
    pub name: &'static str,
    pub statements: &'static [&'static str],
    /// Work that plain statements cannot do safely (steps that depend on what an interrupted
    /// earlier attempt left), run after `statements`.
    pub code: Option<Code>,
}

/// A migration written as code (`crate::store::repartition`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Code {
    /// Migration 110: `events` partitioned by the corrected `timestamp`.
    RepartitionEvents,
    /// Adds each (name, type) column the table lacks: 18.16 has no `ADD COLUMN IF NOT
    /// EXISTS`, and a plain `ADD COLUMN` run again after a crash would fail for ever.
    AddColumns {
        table: &'static str,
        columns: &'static [(&'static str, &'static str)],
    },
}

/// The bookkeeping table itself (created before anything else).
pub const MIGRATIONS_TABLE: &str = "CREATE TABLE IF NOT EXISTS {db}.schema_migrations (
    version UInt32,
    name String,
    applied_at DateTime
) ENGINE = MergeTree ORDER BY version";

/// Migration 1's `events`, partitioned by the client's clock (`client_time`). Migration 110
/// moves it to [`EVENTS_PARTITION`]; the columns stay these.
pub const EVENTS_V1: &str = "CREATE TABLE IF NOT EXISTS {db}.events (
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
SETTINGS index_granularity = 8192";

/// `events`' partition since migration 110: the month of the skew-corrected `timestamp`, which
/// the server bounds to the year before receipt (`protocol::skew`), so one batch spans at most
/// 13 months and a client's clock can neither create partitions nor wrap a date.
pub const EVENTS_PARTITION: &str = "PARTITION BY toYYYYMM(timestamp)";
/// The partition it replaced.
pub const EVENTS_V1_PARTITION: &str = "PARTITION BY toYYYYMM(client_time)";

/// All migrations, oldest first. Never edit one that has shipped: add a new one.
pub const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        name: "events",
        statements: &[EVENTS_V1],
        code: None,
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
        code: None,
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
        code: None,
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
        code: None,
    },
    // 100..: the query API's pre-aggregated state (SQL and design in [`query`]).
    Migration {
        version: 100,
        name: "query_visitor_state",
        statements: query::VISITOR,
        code: None,
    },
    Migration {
        version: 101,
        name: "query_visitor_daily",
        statements: query::DAILY,
        code: None,
    },
    Migration {
        version: 102,
        name: "query_products",
        statements: query::PRODUCTS,
        code: None,
    },
    Migration {
        version: 103,
        name: "query_orders",
        statements: query::ORDERS,
        code: None,
    },
    Migration {
        version: 104,
        name: "query_events_by_name",
        statements: query::BY_NAME,
        code: None,
    },
    Migration {
        version: 105,
        name: "query_ident_by_anon",
        statements: query::IDENT_BY_ANON,
        code: None,
    },
    Migration {
        version: 106,
        name: "query_history",
        statements: query::HISTORY,
        code: None,
    },
    Migration {
        version: 107,
        name: "query_visitor_days",
        statements: query::DAYS,
        code: None,
    },
    Migration {
        version: 108,
        name: "query_visitor_products",
        statements: query::VISITOR_PRODUCTS,
        code: None,
    },
    Migration {
        version: 109,
        name: "query_user_visitors",
        statements: query::USER_VISITORS,
        code: None,
    },
    Migration {
        version: crate::store::repartition::VERSION,
        name: "events_by_event_time",
        // Last, so it runs after every view on `events` exists: those views are dropped and
        // created again around the swap (`crate::store::repartition`).
        statements: &[],
        code: Some(Code::RepartitionEvents),
    },
    // 111..: privacy (`crate::privacy`).
    Migration {
        version: 111,
        name: "suppressions",
        // Ids of deleted people whose late events are dropped until `until`
        // (`crate::store::suppress`).
        statements: &["CREATE TABLE IF NOT EXISTS {db}.suppressions (
    site String,
    id String,
    suppressed_at DateTime,
    until DateTime
) ENGINE = ReplacingMergeTree
ORDER BY (site, id)"],
        code: None,
    },
    Migration {
        version: 112,
        name: "deletions",
        // The audit of person deletions: one row per request. The person's id is kept only as
        // its SHA-256 (the record proves which request was served, not who it was about).
        statements: &["CREATE TABLE IF NOT EXISTS {db}.deletions (
    job_id String,
    site String,
    person_sha256 String,
    ids UInt32,
    tables Array(String),
    mutations UInt32,
    requested_at DateTime,
    admin_key String
) ENGINE = MergeTree
ORDER BY (site, requested_at, job_id)"],
        code: None,
    },
    // 113: data quality (`crate::intake::quality`).
    Migration {
        version: 113,
        name: "events_quality",
        statements: &[],
        code: Some(Code::AddColumns {
            table: "events",
            columns: EVENTS_QUALITY,
        }),
    },
    // 120..: audience triggers (SQL and design in [`triggers`]).
    Migration {
        version: 120,
        name: "triggers",
        statements: triggers::TRIGGERS,
        code: None,
    },
    Migration {
        version: 121,
        name: "trigger_lease",
        statements: triggers::TRIGGER_LEASE,
        code: None,
    },
    // 130..: data quality counters per site and hour (`crate::store::quality`).
    Migration {
        version: 130,
        name: "quality_hourly",
        statements: &[crate::store::quality::QUALITY_HOURLY],
        code: None,
    },
    Migration {
        version: 131,
        name: "quality_freshness",
        statements: crate::store::quality::FRESHNESS_VIEWS,
        code: None,
    },
    // 140..: identity merging (`crate::identity`).
    Migration {
        version: 140,
        name: "merges",
        // The record of merges: one row per (merged user id, person's user id), with the
        // shared identifier that made it; an unmerge writes the same key again with `undone = 1`
        // and a greater `version` (read with argMax), and the merged id is never merged
        // automatically again.
        statements: &["CREATE TABLE IF NOT EXISTS {db}.merges (
    site String,
    merged_id String,
    into_id String,
    identifier String,
    at DateTime,
    undone UInt8,
    version UInt64
) ENGINE = ReplacingMergeTree(version)
ORDER BY (site, merged_id, into_id)"],
        code: None,
    },
    // 145..: the insert time of identity links, by which the identity index refreshes on a
    // cluster (`crate::query::identity`). ClickHouse's `now()` at the insert; rows from before
    // the column read as the time they are read (18.16 evaluates a missing column's default
    // then), which only makes a cluster's refresh read them again. Only `identities`: the
    // writer inserts it, so the default fills in; 18.16 does not fill a default into a view's
    // target (`q_user_visitors`: "Expected column inserted_at" while pushing to the view).
    Migration {
        version: 145,
        name: "identities_inserted_at",
        statements: &[],
        code: Some(Code::AddColumns {
            table: "identities",
            columns: INSERTED_AT,
        }),
    },
];

/// Migration 113: what the intake's data quality checks found in each event
/// (`crate::intake::quality`): tracking plan violations as `kind:field`, and the critical
/// fields it lacks.
pub const EVENTS_QUALITY: &[(&str, &str)] = &[
    ("violations", "Array(String)"),
    ("missing", "Array(String)"),
];

/// Migration 145's column.
pub const INSERTED_AT: &[(&str, &str)] = &[("inserted_at", "DateTime DEFAULT now()")];

/// Renders a statement for a database.
pub fn render(sql: &str, db: &str) -> String {
    sql.replace("{db}", db)
}
