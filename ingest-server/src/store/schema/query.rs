//! Pre-aggregated state for the query API: ClickHouse tables fed by materialized views on
//! `events` and `identities`, so a profile reads a handful of aggregate rows instead of a
//! visitor's raw history. Applied as migrations 100.. (see [`super::MIGRATIONS`]); the query API (`crate::query`) reads them.
//!
//! # Tables
//!
//! - `q_visitor` (AggregatingMergeTree, one row per `(site, visitor_id)` once merged): first and
//!   last seen, last page, latest geo, device, identify traits and user id.
//! - `q_visitor_days` (AggregatingMergeTree, per `(site, visitor_id, day)`): events, page views,
//!   sessions and engaged time, for the 7- and 30-day figures (whole UTC days). It replaced
//!   `q_visitor_daily` (migration 107): message ids as 64-bit hashes and smaller granules.
//! - `q_visitor_products` (AggregatingMergeTree, per `(site, visitor_id, product_id)`): last
//!   view, view count, engaged time, last add / remove and the last added line (for the cart).
//!   It replaced `q_products` (migration 108), in the same way.
//! - `q_history` (ReplacingMergeTree sorted by `(site, visitor_id, timestamp_ms, message_id)`):
//!   the columns the event history lists, so a page of one person's events reads a few small
//!   granules instead of 8192-row granules of the wide `events` table in every part.
//! - `q_orders` (ReplacingMergeTree, one row per `(site, visitor_id, order key)`): orders, for
//!   the profile's order figures and the site-wide RFM quantiles.
//! - `q_events_by_name` (MergeTree sorted by `(site, event, timestamp)`): a narrow copy of every
//!   event, so audience conditions ("did `Product Added` within 24h") read one event name's recent
//!   rows instead of the whole table.
//! - `q_ident_by_anon` (ReplacingMergeTree sorted by `(site, anonymous_id)`): the reverse index of
//!   `identities`, to resolve an anonymous id to its user.
//! - `q_user_visitors` (ReplacingMergeTree sorted by `(site, user_id)`): the user ids that are
//!   visitor ids too, because some of their events came without an anonymous id (server-side
//!   calls). A user id not listed here has no rows under its own id, so the identity index
//!   (`query::identity`) leaves it out of the ids a lookup reads: one key range less in every
//!   part of every table (on the query bench, identified people's profiles took 13.8 ms at p50
//!   against 8.7 ms for anonymous ones, the difference being that range).
//!
//! The per-visitor tables use small granules (`index_granularity` 256, and 64 for the day and
//! product states): a profile reads a handful of rows from each part, and aggregate states (sets
//! of message ids, tuples with URLs and traits) are large, so reading a default 8192-row granule
//! per lookup would cost more than the rows wanted. Measured on the query bench (10M events,
//! server-side, one visitor): the 30-day figures read 2,048 rows and 2.1 MB from
//! `q_visitor_daily` (19 parts), 256 rows and 0.21 MB from `q_visitor_days` (5 parts).
//!
//! The per-visitor tables are not partitioned: a lookup pays for every part it opens (about
//! 0.5 ms each on the bench machine: the event history read 14 parts in 13 ms, the same rows
//! in 4 parts in 7 ms), and monthly partitions would add parts with every month kept. Old rows
//! are removed with `ALTER TABLE ... DELETE WHERE` when needed.
//!
//! Sets of message ids hold `sipHash64(message_id)`, 8 bytes instead of `uniqExact`'s 16-byte
//! hash of a string (or the whole string in `groupUniqArray`). Two different events of one
//! visitor collide with probability about n² / 2⁶⁵: for a visitor with 100,000 events, 3 in 10⁹.
//!
//! # Duplicates (why no figure doubles)
//!
//! A materialized view sees every insert block, so an event inserted twice (a client retry, a
//! spool replay) reaches these tables twice, before and after any merge. Every state is chosen to
//! be idempotent under that:
//! - counts are `uniqExact` states of the message id (never `count()`);
//! - sums (engaged time) are `groupUniqArray((message id, value))` states, summed at read time
//!   after the set has removed the duplicate pair;
//! - first / last times are `min` / `max`, latest values are `argMax` (a duplicate changes nothing);
//! - orders are keyed by `order_id` (else the message id) in a ReplacingMergeTree read with
//!   `FINAL`, and grouped by that key again per person;
//! - `q_events_by_name` keeps duplicate rows and every query over it counts
//!   `uniqExact(message_id)`;
//! - `q_history` collapses identical rows (a replay) when parts merge, and the history query
//!   groups by message id (a retry with another corrected time is a second row until then).
//!
//! A retried event may carry a slightly different skew-corrected time and so land in another day
//! row; the 7/30-day figures merge the window's day rows into one state, which still counts it
//! once.
//!
//! Each migration creates its table, then the view, then backfills from what `events` already
//! holds. Because every state is idempotent, rows that arrive between the view and the backfill
//! (seen by both) or a migration re-run after a crash do not double anything either.

/// `events` type/name as one event key: the track event name, else `$` + the type (`$page`,
/// `$identify`, `$screen`, `$alias`, `$group`).
macro_rules! event_key {
    () => {
        "if(type = 'track', event, concat('$', type))"
    };
}

macro_rules! visitor_select {
    () => {
        "SELECT site, visitor_id,
    minState(timestamp_ms) AS first_seen,
    maxState(timestamp_ms) AS last_seen,
    argMaxIfState((page_url, page_title, timestamp_ms), timestamp_ms, type = 'page') AS last_page,
    argMaxIfState((country, region, city, geo_timezone, timestamp_ms), timestamp_ms, country != '') AS geo,
    argMaxIfState((device_type, browser, os, timestamp_ms), timestamp_ms, device_type != '') AS device,
    argMaxIfState((traits, timestamp_ms), timestamp_ms, type = 'identify') AS traits,
    argMaxIfState(user_id, timestamp_ms, user_id != '') AS user_id
FROM {db}.events
GROUP BY site, visitor_id"
    };
}

macro_rules! daily_select {
    () => {
        "SELECT site, visitor_id, toDate(timestamp) AS day,
    uniqExactState(message_id) AS events,
    uniqExactIfState(message_id, type = 'page') AS page_views,
    uniqExactIfState(session_id, session_id != '') AS sessions,
    groupUniqArrayIfState((message_id, engaged_ms), engaged_ms > 0) AS engaged
FROM {db}.events
GROUP BY site, visitor_id, day"
    };
}

macro_rules! products_select {
    () => {
        "SELECT site, visitor_id, product_id,
    argMaxIfState(product_name, timestamp_ms, product_name != '') AS name,
    maxIfState(timestamp_ms, event IN ('Product Viewed', '$engagement')) AS last_viewed,
    uniqExactIfState(message_id, event = 'Product Viewed') AS views,
    groupUniqArrayIfState((message_id, engaged_ms), engaged_ms > 0) AS engaged,
    maxIfState(timestamp_ms, event = 'Product Added') AS last_added,
    maxIfState(timestamp_ms, event = 'Product Removed') AS last_removed,
    argMaxIfState((ifNull(price, 0), ifNull(quantity, 1), currency), timestamp_ms, event = 'Product Added') AS cart_line
FROM {db}.events
WHERE product_id != ''
GROUP BY site, visitor_id, product_id"
    };
}

macro_rules! orders_select {
    () => {
        "SELECT site, visitor_id, if(order_id != '', order_id, message_id) AS order_key,
    timestamp_ms, ifNull(revenue, 0) AS revenue, currency
FROM {db}.events
WHERE type = 'track' AND event = 'Order Completed'"
    };
}

macro_rules! days_select {
    () => {
        "SELECT site, visitor_id, toDate(timestamp) AS day,
    uniqExactState(sipHash64(message_id)) AS events,
    uniqExactIfState(sipHash64(message_id), type = 'page') AS page_views,
    uniqExactIfState(session_id, session_id != '') AS sessions,
    groupUniqArrayIfState((sipHash64(message_id), engaged_ms), engaged_ms > 0) AS engaged
FROM {db}.events
GROUP BY site, visitor_id, day"
    };
}

macro_rules! visitor_products_select {
    () => {
        "SELECT site, visitor_id, product_id,
    argMaxIfState(product_name, timestamp_ms, product_name != '') AS name,
    maxIfState(timestamp_ms, event IN ('Product Viewed', '$engagement')) AS last_viewed,
    uniqExactIfState(sipHash64(message_id), event = 'Product Viewed') AS views,
    groupUniqArrayIfState((sipHash64(message_id), engaged_ms), engaged_ms > 0) AS engaged,
    maxIfState(timestamp_ms, event = 'Product Added') AS last_added,
    maxIfState(timestamp_ms, event = 'Product Removed') AS last_removed,
    argMaxIfState((ifNull(price, 0), ifNull(quantity, 1), currency), timestamp_ms, event = 'Product Added') AS cart_line
FROM {db}.events
WHERE product_id != ''
GROUP BY site, visitor_id, product_id"
    };
}

macro_rules! history_select {
    () => {
        "SELECT site, visitor_id, timestamp, timestamp_ms, message_id, type, event, name,
    session_id, page_url, page_title, product_id, properties
FROM {db}.events"
    };
}

macro_rules! by_name_select {
    () => {
        concat!(
            "SELECT site, ",
            event_key!(),
            " AS event, timestamp, timestamp_ms, visitor_id, message_id, properties
FROM {db}.events"
        )
    };
}

macro_rules! user_visitors_select {
    () => {
        "SELECT DISTINCT site, user_id FROM {db}.events WHERE anonymous_id = '' AND user_id != ''"
    };
}

macro_rules! ident_select {
    () => {
        "SELECT site, anonymous_id, user_id, linked_at FROM {db}.identities"
    };
}

/// A query table fed by a materialized view, as the statements of its migration: the table
/// (`definition` is what follows its name: columns, engine, settings), the view on `select`
/// (a macro naming the query), the backfill of what the source holds already, then any
/// statements after (dropping what the table replaces).
macro_rules! fed_table {
    ($name:literal, $definition:literal, $select:ident $(, $then:literal)* $(,)?) => {
        &[
            concat!("CREATE TABLE IF NOT EXISTS {db}.", $name, " ", $definition),
            concat!(
                "CREATE MATERIALIZED VIEW IF NOT EXISTS {db}.",
                $name,
                "_mv TO {db}.",
                $name,
                " AS ",
                $select!()
            ),
            concat!("INSERT INTO {db}.", $name, " ", $select!()),
            $($then,)*
        ]
    };
}

/// Migration 100: per-visitor lifetime state.
pub const VISITOR: &[&str] = fed_table!(
    "q_visitor",
    "(
    site String,
    visitor_id String,
    first_seen AggregateFunction(min, Int64),
    last_seen AggregateFunction(max, Int64),
    last_page AggregateFunction(argMaxIf, Tuple(String, String, Int64), Int64, UInt8),
    geo AggregateFunction(argMaxIf, Tuple(String, String, String, String, Int64), Int64, UInt8),
    device AggregateFunction(argMaxIf, Tuple(String, String, String, Int64), Int64, UInt8),
    traits AggregateFunction(argMaxIf, Tuple(String, Int64), Int64, UInt8),
    user_id AggregateFunction(argMaxIf, String, Int64, UInt8)
) ENGINE = AggregatingMergeTree ORDER BY (site, visitor_id)
SETTINGS index_granularity = 256",
    visitor_select
);

/// Migration 101: per-visitor, per-day counts and engaged time.
pub const DAILY: &[&str] = fed_table!(
    "q_visitor_daily",
    "(
    site String,
    visitor_id String,
    day Date,
    events AggregateFunction(uniqExact, String),
    page_views AggregateFunction(uniqExactIf, String, UInt8),
    sessions AggregateFunction(uniqExactIf, String, UInt8),
    engaged AggregateFunction(groupUniqArrayIf, Tuple(String, UInt64), UInt8)
) ENGINE = AggregatingMergeTree PARTITION BY toYYYYMM(day) ORDER BY (site, visitor_id, day)
SETTINGS index_granularity = 256",
    daily_select
);

/// Migration 102: per-visitor, per-product state (recently viewed, cart).
pub const PRODUCTS: &[&str] = fed_table!(
    "q_products",
    "(
    site String,
    visitor_id String,
    product_id String,
    name AggregateFunction(argMaxIf, String, Int64, UInt8),
    last_viewed AggregateFunction(maxIf, Int64, UInt8),
    views AggregateFunction(uniqExactIf, String, UInt8),
    engaged AggregateFunction(groupUniqArrayIf, Tuple(String, UInt64), UInt8),
    last_added AggregateFunction(maxIf, Int64, UInt8),
    last_removed AggregateFunction(maxIf, Int64, UInt8),
    cart_line AggregateFunction(argMaxIf, Tuple(Float64, Float64, String), Int64, UInt8)
) ENGINE = AggregatingMergeTree ORDER BY (site, visitor_id, product_id)
SETTINGS index_granularity = 256",
    products_select
);

/// Migration 103: one row per order.
pub const ORDERS: &[&str] = fed_table!(
    "q_orders",
    "(
    site String,
    visitor_id String,
    order_key String,
    timestamp_ms Int64,
    revenue Float64,
    currency String
) ENGINE = ReplacingMergeTree ORDER BY (site, visitor_id, order_key)
SETTINGS index_granularity = 256",
    orders_select
);

/// Migration 104: events by name and time, for audiences.
pub const BY_NAME: &[&str] = fed_table!(
    "q_events_by_name",
    "(
    site String,
    event String,
    timestamp DateTime,
    timestamp_ms Int64,
    visitor_id String,
    message_id String,
    properties String
) ENGINE = MergeTree PARTITION BY toYYYYMM(timestamp) ORDER BY (site, event, timestamp)",
    by_name_select
);

/// Migration 105: anonymous id -> user id.
pub const IDENT_BY_ANON: &[&str] = fed_table!(
    "q_ident_by_anon",
    "(
    site String,
    anonymous_id String,
    user_id String,
    linked_at DateTime
) ENGINE = ReplacingMergeTree ORDER BY (site, anonymous_id, user_id)
SETTINGS index_granularity = 256",
    ident_select
);

/// Migration 106: one person's events by time, for the event history.
pub const HISTORY: &[&str] = fed_table!(
    "q_history",
    "(
    site String,
    visitor_id String,
    timestamp DateTime,
    timestamp_ms Int64,
    message_id String,
    type String,
    event String,
    name String,
    session_id String,
    page_url String,
    page_title String,
    product_id String,
    properties String
) ENGINE = ReplacingMergeTree
ORDER BY (site, visitor_id, timestamp_ms, message_id)
SETTINGS index_granularity = 256",
    history_select
);

/// Migration 107: `q_visitor_days` replaces `q_visitor_daily` (hashed ids, 64-row granules).
pub const DAYS: &[&str] = fed_table!(
    "q_visitor_days",
    "(
    site String,
    visitor_id String,
    day Date,
    events AggregateFunction(uniqExact, UInt64),
    page_views AggregateFunction(uniqExactIf, UInt64, UInt8),
    sessions AggregateFunction(uniqExactIf, String, UInt8),
    engaged AggregateFunction(groupUniqArrayIf, Tuple(UInt64, UInt64), UInt8)
) ENGINE = AggregatingMergeTree ORDER BY (site, visitor_id, day)
SETTINGS index_granularity = 64",
    days_select,
    "DROP TABLE IF EXISTS {db}.q_visitor_daily_mv",
    "DROP TABLE IF EXISTS {db}.q_visitor_daily"
);

/// Migration 108: `q_visitor_products` replaces `q_products` (hashed ids, 64-row granules).
pub const VISITOR_PRODUCTS: &[&str] = fed_table!(
    "q_visitor_products",
    "(
    site String,
    visitor_id String,
    product_id String,
    name AggregateFunction(argMaxIf, String, Int64, UInt8),
    last_viewed AggregateFunction(maxIf, Int64, UInt8),
    views AggregateFunction(uniqExactIf, UInt64, UInt8),
    engaged AggregateFunction(groupUniqArrayIf, Tuple(UInt64, UInt64), UInt8),
    last_added AggregateFunction(maxIf, Int64, UInt8),
    last_removed AggregateFunction(maxIf, Int64, UInt8),
    cart_line AggregateFunction(argMaxIf, Tuple(Float64, Float64, String), Int64, UInt8)
) ENGINE = AggregatingMergeTree ORDER BY (site, visitor_id, product_id)
SETTINGS index_granularity = 64",
    visitor_products_select,
    "DROP TABLE IF EXISTS {db}.q_products_mv",
    "DROP TABLE IF EXISTS {db}.q_products"
);

/// Migration 109: user ids with events under their own id (see the module documentation).
pub const USER_VISITORS: &[&str] = fed_table!(
    "q_user_visitors",
    "(
    site String,
    user_id String
) ENGINE = ReplacingMergeTree ORDER BY (site, user_id)",
    user_visitors_select
);

/// The tables the query API owns (for tests that check they survive hostile input).
pub const TABLES: &[&str] = &[
    "q_visitor",
    "q_visitor_days",
    "q_visitor_products",
    "q_orders",
    "q_events_by_name",
    "q_ident_by_anon",
    "q_history",
    "q_user_visitors",
];
