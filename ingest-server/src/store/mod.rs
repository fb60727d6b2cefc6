//! ClickHouse: the schema and its migrations ([`schema`]), the rows ([`row`]), the writer that
//! moves spooled events into ClickHouse ([`writer`]) by the error policy in [`delivery`], and
//! the replay of quarantined rows ([`replay`]).

pub mod delivery;
#[cfg(test)]
pub(crate) mod fake;
pub mod migration_lock;
pub mod quality;
pub mod repartition;
pub mod replay;
pub mod row;
pub mod schema;
pub mod suppress;
pub mod writer;

use std::sync::Arc;

use futures::future::BoxFuture;

use crate::config::ClickHouseConfig;
use row::{identity_links, EventRow, IdentityRow, QuarantineRow, LINK_ROW};
pub use schema::cluster::Layout;

/// Why ClickHouse cannot take anything right now: the label of
/// `waymark_writer_blocked{cause="..."}` and the `cause` in `/readyz`'s `writer` object.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Cause {
    /// No connection, a cut connection, or an HTTP failure without a ClickHouse exception.
    Unreachable,
    /// A timeout on either side.
    Timeout,
    /// Unknown user, wrong or missing password, address not allowed.
    Auth,
    /// The user lacks a right it needs.
    AccessDenied,
    /// A quota of the user is used up.
    Quota,
    /// Not enough disk space.
    DiskFull,
    /// A memory limit was hit.
    Memory,
    /// The user or the table is read-only.
    ReadOnly,
    /// A table or the database does not exist.
    MissingTable,
    /// A column the writer inserts does not exist (the schema lags, or was changed by hand).
    MissingColumn,
    /// The query was killed (`KILL QUERY`, a server restart).
    QueryKilled,
    /// Too many parts in a partition: merges lag behind inserts.
    TooManyParts,
    /// One insert touches more partitions than `max_partitions_per_insert_block`; the batch is
    /// split, the rows are fine.
    TooManyPartitions,
    /// Too many queries or connections at once, replication trouble.
    Overloaded,
    /// An error of no known kind, which a known-good probe row got too.
    Other,
    /// Not ClickHouse: the writer could not read a batch back from its own spool (a disk
    /// error). The rows stay there and are read again.
    SpoolRead,
}

impl Cause {
    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            Cause::Unreachable => "unreachable",
            Cause::Timeout => "timeout",
            Cause::Auth => "auth",
            Cause::AccessDenied => "access_denied",
            Cause::Quota => "quota",
            Cause::DiskFull => "disk_full",
            Cause::Memory => "memory",
            Cause::ReadOnly => "read_only",
            Cause::MissingTable => "missing_table",
            Cause::MissingColumn => "missing_column",
            Cause::QueryKilled => "query_killed",
            Cause::TooManyParts => "too_many_parts",
            Cause::TooManyPartitions => "too_many_partitions",
            Cause::Overloaded => "overloaded",
            Cause::Other => "other",
            Cause::SpoolRead => "spool_read",
        }
    }
}

/// How a failed ClickHouse call should be handled. The split is by whose fault it may be: a
/// code can say "ClickHouse cannot take anything now", but no code alone ever says "these rows
/// are bad" (see [`writer`] for the proof the writer asks before it quarantines a row).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorClass {
    /// ClickHouse's own state: the same rows are tried again, with capped backoff, for as long
    /// as it takes.
    Unavailable(Cause),
    /// ClickHouse refused this insert and the reason may lie in the rows (a value it cannot
    /// parse, a check that throws, or a code this table does not know).
    Refused,
}

/// A failed ClickHouse call.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct StoreError {
    pub class: ErrorClass,
    pub message: String,
}

impl StoreError {
    /// Why nothing goes in, when this error is the reason ([`Cause::Other`] for a refusal).
    pub fn cause(&self) -> Cause {
        match self.class {
            ErrorClass::Unavailable(c) => c,
            ErrorClass::Refused => Cause::Other,
        }
    }
}

/// ClickHouse error codes that mean "ClickHouse cannot take anything now", whatever the rows.
/// Codes not listed (parse and type errors, throwIf, codes of future releases) are
/// [`ErrorClass::Refused`]: the probe and bisection decide.
const STATE_CODES: &[(u32, Cause)] = &[
    (3, Cause::Unreachable),    // UNEXPECTED_END_OF_FILE (connection cut)
    (16, Cause::MissingColumn), // NO_SUCH_COLUMN_IN_TABLE
    (47, Cause::MissingColumn), // UNKNOWN_IDENTIFIER (a view selects a dropped column)
    (60, Cause::MissingTable),  // UNKNOWN_TABLE
    (81, Cause::MissingTable),  // UNKNOWN_DATABASE
    (159, Cause::Timeout),      // TIMEOUT_EXCEEDED
    (164, Cause::ReadOnly),     // READONLY
    (173, Cause::Memory),       // CANNOT_ALLOCATE_MEMORY
    (192, Cause::Auth),         // UNKNOWN_USER
    (193, Cause::Auth),         // WRONG_PASSWORD
    (194, Cause::Auth),         // REQUIRED_PASSWORD
    (195, Cause::Auth),         // IP_ADDRESS_NOT_ALLOWED
    (201, Cause::Quota),        // QUOTA_EXPIRED (quota exceeded)
    (202, Cause::Overloaded),   // TOO_MANY_SIMULTANEOUS_QUERIES
    (203, Cause::Overloaded),   // NO_FREE_CONNECTION
    (209, Cause::Timeout),      // SOCKET_TIMEOUT
    (210, Cause::Unreachable),  // NETWORK_ERROR
    (236, Cause::QueryKilled),  // ABORTED
    (241, Cause::Memory),       // MEMORY_LIMIT_EXCEEDED
    (242, Cause::ReadOnly),     // TABLE_IS_READ_ONLY
    (243, Cause::DiskFull),     // NOT_ENOUGH_SPACE
    (252, Cause::TooManyParts), // TOO_MANY_PARTS (or partitions: see `classify_code`)
    (291, Cause::AccessDenied), // DATABASE_ACCESS_DENIED
    (319, Cause::Overloaded),   // UNKNOWN_STATUS_OF_INSERT
    (394, Cause::QueryKilled),  // QUERY_WAS_CANCELLED
    (425, Cause::Overloaded),   // SYSTEM_ERROR
    (497, Cause::AccessDenied), // ACCESS_DENIED
    (516, Cause::Auth),         // AUTHENTICATION_FAILED
    (999, Cause::Overloaded),   // KEEPER_EXCEPTION
];

/// The `Code: N` of a ClickHouse exception text.
pub fn exception_code(text: &str) -> Option<u32> {
    let rest = &text[text.find("Code: ")? + 6..];
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

/// The class of a ClickHouse exception with code `code` and text `text`.
pub fn classify_code(code: u32, text: &str) -> ErrorClass {
    // 252 is both "too many parts" (merges lag) and, on releases with
    // max_partitions_per_insert_block, "too many partitions for a single INSERT block".
    if code == 252 && text.to_ascii_lowercase().contains("partitions") {
        return ErrorClass::Unavailable(Cause::TooManyPartitions);
    }
    match STATE_CODES.iter().find(|(c, _)| *c == code) {
        Some((_, cause)) => ErrorClass::Unavailable(*cause),
        None => ErrorClass::Refused,
    }
}

/// Classifies an error from the `clickhouse` crate.
pub fn classify(e: &clickhouse::error::Error) -> StoreError {
    use clickhouse::error::Error as E;
    let message = e.to_string();
    let class = match e {
        E::Network(_) | E::Compression(_) | E::Decompression(_) | E::Other(_) => {
            ErrorClass::Unavailable(Cause::Unreachable)
        }
        E::TimedOut => ErrorClass::Unavailable(Cause::Timeout),
        E::BadResponse(text) => match exception_code(text) {
            Some(code) => classify_code(code, text),
            // No exception text: an HTTP-level failure (proxy, 5xx without body).
            None => ErrorClass::Unavailable(Cause::Unreachable),
        },
        // Serialising a row failed, or an answer did not fit: may be the rows; the probe says.
        _ => ErrorClass::Refused,
    };
    StoreError { class, message }
}

/// Where the writer sends rows. ClickHouse in production; a failing fake in unit tests.
pub trait Sink: Send + Sync + 'static {
    /// Inserts events (and the identity links they carry). All or nothing from the caller's
    /// view: on error, the same rows are sent again or bisected.
    fn insert<'a>(&'a self, rows: &'a [EventRow]) -> BoxFuture<'a, Result<(), StoreError>>;
    /// [`Sink::insert`] of the rows of spool payloads (`crate::spool::rows`), which the writer
    /// checked as it gathered them. The production sink streams them into the insert one row
    /// at a time, as they are read, instead of holding the batch; this default decodes them
    /// all first.
    fn insert_payloads<'a>(
        &'a self,
        payloads: &'a dyn Payloads,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move { self.insert(&decode_payloads(payloads)?).await })
    }
    /// Stores refused rows with their reason.
    fn quarantine<'a>(&'a self, rows: &'a [QuarantineRow])
        -> BoxFuture<'a, Result<(), StoreError>>;
    /// Makes sure the schema exists (called before the first insert and after schema errors).
    fn prepare(&self) -> BoxFuture<'_, Result<(), StoreError>>;
    /// Inserts one known-good row where no query sees it, through the same server, user,
    /// database, columns, types and disk as `insert`. Ok means ClickHouse takes rows right now,
    /// so a refusal of the batch is about its rows; an error means it is about ClickHouse.
    fn probe(&self) -> BoxFuture<'_, Result<(), StoreError>>;
}

/// The table the probe row goes to: created afresh as a copy of `events` before every probe,
/// so it has the columns, types, defaults and engine `events` has at that moment (and no
/// materialized views); no query reads it.
pub const PROBE_TABLE: &str = "writer_probe";

/// The probe's row: every field at its empty value, times now. Synthesised rather than
/// re-inserting a row that went in earlier: it exists before any row ever succeeded (a fresh
/// install, the first batch after a restart), and, going to [`PROBE_TABLE`], it cannot show up
/// in `events` or in the query tables fed from it.
pub fn probe_row(now_ms: u64) -> EventRow {
    EventRow {
        site: "_waymark_probe".into(),
        message_id: "probe".into(),
        kind: "track".into(),
        timestamp: (now_ms / 1000) as u32,
        timestamp_ms: now_ms as i64,
        client_time: (now_ms / 1000) as u32,
        received_at_ms: now_ms as i64,
        ..EventRow::default()
    }
}

/// The statement creating [`PROBE_TABLE`] in `db`.
pub fn probe_table_sql(layout: &Layout, db: &str) -> String {
    match layout.cluster() {
        None => format!("CREATE TABLE {db}.{PROBE_TABLE} AS {db}.events"),
        // On this server only, as plain MergeTree: a copy of the Distributed `events` would
        // write into `events_local`, and one of `events_local` would join its replication.
        // ON CLUSTER would wait for every server, which is what a probe must not depend on.
        Some(_) => format!(
            "CREATE TABLE {db}.{PROBE_TABLE} AS {db}.events{} ENGINE = MergeTree {} ORDER BY (site, visitor_id, message_id)",
            schema::cluster::LOCAL,
            schema::EVENTS_PARTITION
        ),
    }
}

/// A `clickhouse::Client` for the configured server (no database selected).
pub fn client(cfg: &ClickHouseConfig) -> clickhouse::Client {
    // The crate's default HTTP client leaves Nagle's algorithm on, so a request written in two
    // pieces (headers, then the SQL or rows) can wait for the server's delayed ACK. Same
    // settings as the default (TCP keep-alive 60 s, idle connections dropped after 2 s, below
    // ClickHouse's 3 s keep-alive timeout), plus TCP_NODELAY.
    let mut connector = hyper_util::client::legacy::connect::HttpConnector::new();
    connector.set_keepalive(Some(std::time::Duration::from_secs(60)));
    connector.set_nodelay(true);
    let http = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .pool_idle_timeout(std::time::Duration::from_secs(2))
        .build(connector);
    let client = clickhouse::Client::with_http_client(http)
        .with_url(&cfg.url)
        .with_user(&cfg.user)
        .with_password(&cfg.password)
        .with_compression(match cfg.compression {
            crate::config::Compression::Lz4 => clickhouse::Compression::Lz4,
            crate::config::Compression::None => clickhouse::Compression::None,
        })
        // 18.16 has no RowBinaryWithNamesAndTypes.
        .with_validation(false);
    match cfg.cluster {
        Some(_) => client
            // An insert into a `Distributed` table is confirmed once a replica of every shard
            // has written its rows, not when they are queued on this server's disk to be sent
            // later: the writer lets rows go from its spool on that confirmation, and a queue
            // on a server that is then lost would lose them.
            .with_setting("insert_distributed_sync", "1")
            // A subquery (`IN (SELECT ...)`) over a Distributed table inside a query over
            // another runs once, here, and its result goes to every shard (`GLOBAL IN`): right
            // whichever key each table is sharded by (18.16 refuses it by default).
            .with_setting("distributed_product_mode", "global"),
        None => client,
    }
}

/// Where the ClickHouse schema stands, shared by the start-up migration, the writer, the query
/// API and `/readyz`. Migrations can take minutes on a large `events` table (a new query table
/// backfills from it), so they run in the background: intake goes on into the spool, the
/// writer waits for the schema, and the query API answers 503 until it is ready.
#[derive(Debug, Default)]
pub struct SchemaStatus {
    ready: std::sync::atomic::AtomicBool,
    /// The version being applied (0: none).
    applying: std::sync::atomic::AtomicU32,
    /// One migration run at a time per process (start-up and the writer may both ask).
    lock: tokio::sync::Mutex<()>,
    /// Why the last attempt failed (ClickHouse unreachable, a statement refused), until one
    /// succeeds.
    last_error: std::sync::Mutex<Option<String>>,
}

impl SchemaStatus {
    /// A status that says ready: for callers that applied the migrations themselves (tests).
    pub fn ready_now() -> Self {
        let s = SchemaStatus::default();
        s.ready.store(true, std::sync::atomic::Ordering::Relaxed);
        s
    }

    /// Every migration is applied.
    pub fn is_ready(&self) -> bool {
        self.ready.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// `"ok"`, `"migrating: <version> <name>"`, or `"pending"` (not yet applied), with why the
    /// last attempt failed when one did (`"pending: <error>"`).
    pub fn describe(&self) -> String {
        if self.is_ready() {
            return "ok".into();
        }
        match self.applying.load(std::sync::atomic::Ordering::Relaxed) {
            0 => match self.last_error.lock().expect("schema status").as_deref() {
                Some(e) => format!("pending: {e}"),
                None => "pending".into(),
            },
            v => {
                let name = schema::MIGRATIONS
                    .iter()
                    .find(|m| m.version == v)
                    .map_or("", |m| m.name);
                format!("migrating: {v} {name}")
            }
        }
    }
}

/// Creates the database and applies every migration not yet recorded, logging each with its
/// duration. Idempotent; concurrent calls sharing `status` run one after the other.
pub async fn migrate(
    client: &clickhouse::Client,
    db: &str,
    status: &SchemaStatus,
) -> Result<Vec<u32>, StoreError> {
    migrate_on(client, db, &Layout::Single, status).await
}

/// [`migrate`] for a layout: one server, or a cluster (`[clickhouse] cluster`, see
/// [`schema::cluster`]).
pub async fn migrate_on(
    client: &clickhouse::Client,
    db: &str,
    layout: &Layout,
    status: &SchemaStatus,
) -> Result<Vec<u32>, StoreError> {
    use std::sync::atomic::Ordering;
    let _one_at_a_time = status.lock.lock().await;
    let result = apply(client, db, layout, status, u32::MAX).await;
    status.applying.store(0, Ordering::Relaxed);
    let mut last = status.last_error.lock().expect("schema status");
    match &result {
        Ok(_) => {
            *last = None;
            status.ready.store(true, Ordering::Relaxed);
        }
        Err(e) => *last = Some(e.message.clone()),
    }
    result
}

/// Applies the migrations up to `version` only, leaving the schema status as it was: a database
/// as an older release left it, for the tests of later migrations.
pub async fn migrate_up_to(
    client: &clickhouse::Client,
    db: &str,
    version: u32,
) -> Result<Vec<u32>, StoreError> {
    apply(
        client,
        db,
        &Layout::Single,
        &SchemaStatus::default(),
        version,
    )
    .await
}

/// The statements that apply migration `m`'s own statements (not its [`schema::Code`]) to `db`
/// in `layout`: on one server, exactly the migration's statements.
pub fn migration_sql(
    m: &schema::Migration,
    layout: &Layout,
    db: &str,
) -> Result<Vec<String>, StoreError> {
    let mut out = Vec::new();
    for stmt in m.statements {
        for sql in layout.rewrite(stmt).map_err(unsupported)? {
            out.push(schema::render(&sql, db));
        }
    }
    Ok(out)
}

/// A statement cluster mode cannot apply: a bug of this release, not ClickHouse's state, but it
/// blocks like one (nothing can be inserted until the schema exists), and says why.
fn unsupported(e: schema::cluster::Unsupported) -> StoreError {
    StoreError {
        class: ErrorClass::Unavailable(Cause::Other),
        message: e.to_string(),
    }
}

async fn apply(
    client: &clickhouse::Client,
    db: &str,
    layout: &Layout,
    status: &SchemaStatus,
    up_to: u32,
) -> Result<Vec<u32>, StoreError> {
    // Nothing left to apply: no lock, and no statement (on a cluster, `ON CLUSTER` waits for
    // every server: a server restarting while a replica is down must not need it). Asked of
    // `system.tables` first, so a fresh database costs no refused statement.
    let recorded = client
        .query(
            "SELECT count() FROM system.tables WHERE database = ? AND name = 'schema_migrations'",
        )
        .bind(db)
        .fetch_one::<u64>()
        .await
        .is_ok_and(|n| n > 0);
    let applied = match recorded {
        true => client
            .query(&format!("SELECT version FROM {db}.schema_migrations"))
            .fetch_all::<u32>()
            .await
            .ok(),
        false => None,
    };
    if let Some(applied) = applied {
        if schema::MIGRATIONS
            .iter()
            .all(|m| applied.contains(&m.version) || m.version > up_to)
        {
            return Ok(Vec::new());
        }
    }
    client
        .query(&layout.create_database(db))
        .execute()
        .await
        .map_err(|e| classify(&e))?;
    let waiting = |holder: Option<&str>| {
        *status.last_error.lock().expect("schema status") = holder.map(|h| {
            format!("waiting for another ingest server ({h}) to finish migrating this database")
        });
    };
    migration_lock::with_lock(
        client,
        db,
        waiting,
        apply_locked(client, db, layout, status, up_to),
    )
    .await
}

/// [`apply`] once this server holds the database's migration lock.
async fn apply_locked(
    client: &clickhouse::Client,
    db: &str,
    layout: &Layout,
    status: &SchemaStatus,
    up_to: u32,
) -> Result<Vec<u32>, StoreError> {
    let run =
        |sql: String| async move { client.query(&sql).execute().await.map_err(|e| classify(&e)) };
    for sql in layout
        .rewrite(schema::MIGRATIONS_TABLE)
        .map_err(unsupported)?
    {
        run(schema::render(&sql, db)).await?;
    }
    let applied: Vec<u32> = client
        .query(&format!("SELECT version FROM {db}.schema_migrations"))
        .fetch_all::<u32>()
        .await
        .map_err(|e| classify(&e))?;
    let mut newly = Vec::new();
    for m in schema::MIGRATIONS {
        if applied.contains(&m.version) || m.version > up_to {
            continue;
        }
        status
            .applying
            .store(m.version, std::sync::atomic::Ordering::Relaxed);
        tracing::info!(
            version = m.version,
            name = m.name,
            statements = m.statements.len(),
            "applying ClickHouse migration"
        );
        let started = std::time::Instant::now();
        for sql in migration_sql(m, layout, db)? {
            run(sql).await?;
        }
        match m.code {
            // A cluster database is created with events' final partition key
            // (`schema::cluster`): nothing to move.
            Some(schema::Code::RepartitionEvents) if layout.cluster().is_some() => {}
            Some(schema::Code::RepartitionEvents) => repartition::run(client, db).await?,
            Some(schema::Code::AddColumns { table, columns }) => {
                let local = layout.local_name(table);
                let have: Vec<String> = client
                    .query(&format!(
                        "SELECT name FROM system.columns WHERE database = '{db}' AND table = '{local}'"
                    ))
                    .fetch_all::<String>()
                    .await
                    .map_err(|e| classify(&e))?;
                for (name, kind) in columns {
                    if !have.iter().any(|h| h == name) {
                        let alter = format!("ALTER TABLE {{db}}.{table} ADD COLUMN {name} {kind}");
                        for sql in layout.rewrite(&alter).map_err(unsupported)? {
                            run(schema::render(&sql, db)).await?;
                        }
                    }
                }
                // On a cluster, an attempt interrupted between the local ALTER and making the
                // Distributed table again leaves the latter without the columns.
                if layout.cluster().is_some() {
                    let dist: Vec<String> = client
                        .query(&format!(
                            "SELECT name FROM system.columns WHERE database = '{db}' AND table = '{table}'"
                        ))
                        .fetch_all::<String>()
                        .await
                        .map_err(|e| classify(&e))?;
                    if !columns.iter().all(|(n, _)| dist.iter().any(|h| h == n)) {
                        for sql in layout.distributed_again(table) {
                            run(schema::render(&sql, db)).await?;
                        }
                    }
                }
            }
            None => {}
        }
        run(format!(
            "INSERT INTO {db}.schema_migrations (version, name, applied_at) VALUES ({}, '{}', now())",
            m.version, m.name
        ))
        .await?;
        tracing::info!(
            version = m.version,
            name = m.name,
            ms = started.elapsed().as_millis() as u64,
            "applied ClickHouse migration"
        );
        newly.push(m.version);
    }
    Ok(newly)
}

const INSERT_SEND_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);
const INSERT_END_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(120);

/// Told of the identity links the writer is about to insert, before it inserts them, so a
/// reader of the links never sees events before the links they came with. The query API's
/// in-memory identity index implements it (`crate::query::identity`); the store knows only this
/// trait, so it does not depend on the layer that reads through it.
pub trait IdentityFeed: Send + Sync {
    /// `links`: (site, anonymous id, user id, linked at, Unix seconds); `users`: (site, user
    /// id) of events sent under a user id alone, what `q_user_visitors` will hold.
    fn add_links<'a>(
        &self,
        links: &mut dyn Iterator<Item = (&'a str, &'a str, &'a str, u32)>,
        users: &mut dyn Iterator<Item = (&'a str, &'a str)>,
    );
}

/// The production sink.
pub struct ClickHouseSink {
    client: clickhouse::Client,
    db_client: clickhouse::Client,
    database: String,
    layout: Layout,
    schema: Arc<SchemaStatus>,
    identities: Option<Arc<dyn IdentityFeed>>,
    suppressions: Option<Arc<suppress::Suppressions>>,
}

impl ClickHouseSink {
    pub fn new(cfg: &ClickHouseConfig, schema: Arc<SchemaStatus>) -> Self {
        let client = client(cfg);
        ClickHouseSink {
            db_client: client.clone().with_database(&cfg.database),
            client,
            database: cfg.database.clone(),
            layout: Layout::new(cfg.cluster.as_deref()),
            schema,
            identities: None,
            suppressions: None,
        }
    }

    /// Drops the rows of people on `list` (deleted, their late events still in the spool)
    /// before each insert.
    pub fn with_suppressions(mut self, list: Arc<suppress::Suppressions>) -> Self {
        self.suppressions = Some(list);
        self
    }

    /// Adds every identity link to `index` before inserting it, so the query API never sees
    /// events before the links they came with.
    pub fn with_identities<F: IdentityFeed + 'static>(mut self, index: Option<Arc<F>>) -> Self {
        self.identities = index.map(|ix| ix as Arc<dyn IdentityFeed>);
        self
    }

    /// A client with the configured database selected.
    pub fn db_client(&self) -> &clickhouse::Client {
        &self.db_client
    }

    /// The configured database.
    pub fn database(&self) -> &str {
        &self.database
    }

    /// Inserts `rows` into `table` of the configured database.
    pub async fn insert_rows<T>(&self, table: &str, rows: &[T]) -> Result<(), StoreError>
    where
        T: clickhouse::RowOwned + clickhouse::RowWrite,
    {
        self.insert_each(table, rows.iter()).await
    }

    /// Inserts the rows `rows` yields into `table` (no query when it yields none): a filtered
    /// view of a batch goes in without copying its rows.
    async fn insert_each<'r, T>(
        &self,
        table: &str,
        rows: impl Iterator<Item = &'r T>,
    ) -> Result<(), StoreError>
    where
        T: clickhouse::RowOwned + clickhouse::RowWrite + 'r,
    {
        let mut rows = rows.peekable();
        if rows.peek().is_none() {
            return Ok(());
        }
        let mut insert = self
            .db_client
            .insert::<T>(table)
            .await
            .map_err(|e| classify(&e))?
            .with_timeouts(Some(INSERT_SEND_TIMEOUT), Some(INSERT_END_TIMEOUT));
        for r in rows {
            insert.write(r).await.map_err(|e| classify(&e))?;
        }
        insert.end().await.map_err(|e| classify(&e))
    }
}

/// A batch's spool payloads, read from the first each time they are asked for: each attempt
/// at an insert reads them again, so a batch need not be held in memory between attempts.
pub trait Payloads: Send + Sync {
    /// The payloads in order; an error if they cannot be read (the spool's disk).
    fn payloads(&self) -> Box<dyn Iterator<Item = Result<bytes::Bytes, String>> + Send + '_>;
}

/// A spool read that failed while a batch was read back for its insert.
fn spool_read_error(e: String) -> StoreError {
    StoreError {
        class: ErrorClass::Unavailable(Cause::SpoolRead),
        message: format!("reading the batch back from the spool: {e}"),
    }
}

/// The rows of spool payloads the writer checked as it gathered them. A payload that does not
/// decode cannot get here; were one to, it is logged and left out rather than failing the
/// batch over and over.
pub fn decode_payloads(payloads: &dyn Payloads) -> Result<Vec<EventRow>, StoreError> {
    let mut rows = Vec::new();
    for p in payloads.payloads() {
        let p = p.map_err(spool_read_error)?;
        if let Err(e) = crate::spool::rows::decode_into(&p, &mut rows) {
            tracing::error!(error = %e, "a checked spool payload no longer decodes; left out");
        }
    }
    Ok(rows)
}

/// The RowBinary bytes gathered before they are sent as one chunk of an `events` insert (the
/// size the `clickhouse` crate's own inserts send).
const INSERT_CHUNK: usize = 256 * 1024;

impl ClickHouseSink {
    /// Adds a batch's identity links, and the (site, user id) of its events sent under a user
    /// id alone, to the in-memory index, if there is one.
    fn feed_identities<'a>(
        &self,
        links: &'a [IdentityRow],
        users: &mut dyn Iterator<Item = (&'a str, &'a str)>,
    ) {
        if let Some(ix) = &self.identities {
            ix.add_links(
                &mut links.iter().map(|l| {
                    (
                        l.site.as_str(),
                        l.anonymous_id.as_str(),
                        l.user_id.as_str(),
                        l.linked_at,
                    )
                }),
                users,
            );
        }
    }

    /// An `INSERT` into `events` of RowBinary in `crate::spool::rows::columns` order.
    fn events_insert(&self) -> clickhouse::insert_formatted::BufInsertFormatted {
        let columns: Vec<String> = crate::spool::rows::columns()
            .map(|c| format!("`{c}`"))
            .collect();
        self.db_client
            .insert_formatted_with(format!(
                "INSERT INTO events ({}) FORMAT RowBinary",
                columns.join(",")
            ))
            .with_timeouts(Some(INSERT_SEND_TIMEOUT), Some(INSERT_END_TIMEOUT))
            .buffered_with_capacity(INSERT_CHUNK)
    }
}

/// Whether a row belongs in `events` (not a link-only row). A function, not a closure: the
/// insert future holding the filter must be `Send` for every lifetime.
fn is_event(r: &&EventRow) -> bool {
    r.kind != LINK_ROW
}

impl Sink for ClickHouseSink {
    fn insert<'a>(&'a self, rows: &'a [EventRow]) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move {
            let kept = self
                .suppressions
                .as_ref()
                .and_then(|s| s.filter(rows, crate::clock::now_ms().div_euclid(1000) as u32));
            if let Some(kept) = &kept {
                tracing::info!(
                    dropped = rows.len() - kept.len(),
                    "rows of deleted people dropped before insert"
                );
            }
            let rows = kept.as_deref().unwrap_or(rows);
            if rows.is_empty() {
                return Ok(());
            }
            // Both at once: the batch is done when the slower is (a failure of either retries
            // both; the tables collapse the rows inserted twice).
            let links: Vec<IdentityRow> = rows.iter().flat_map(identity_links).collect();
            self.feed_identities(
                &links,
                // What `q_user_visitors` will hold (its view's condition).
                &mut rows
                    .iter()
                    .filter(|r| r.anonymous_id.is_empty() && !r.user_id.is_empty())
                    .map(|r| (r.site.as_str(), r.user_id.as_str())),
            );
            // Link-only rows (an email click's stitch, identifier links) go to `identities`
            // alone: the others are inserted in place, never copied.
            let events = rows.iter().filter(is_event);
            futures::future::try_join(
                self.insert_each("events", events),
                self.insert_rows("identities", &links),
            )
            .await
            .map(|_| ())
        })
    }

    /// The same as [`Sink::insert`], row by row, without decoding the rows: each payload is
    /// transcoded from its spooled bytes to RowBinary (`crate::spool::rows::transcode`) and
    /// sent as it is read. Only the fields the checks need are read out, into one reused
    /// `EventRow`, so suppression and identity links are the same functions `insert` uses. The
    /// links go into the in-memory index and into `identities` before the `events` insert ends.
    fn insert_payloads<'a>(
        &'a self,
        payloads: &'a dyn Payloads,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move {
            let now_secs = crate::clock::now_ms().div_euclid(1000) as u32;
            let suppressions = self.suppressions.as_ref().filter(|s| !s.is_empty());
            let mut row = EventRow::default();
            let mut links: Vec<IdentityRow> = Vec::new();
            let mut users: Vec<(String, String)> = Vec::new();
            let mut dropped = 0usize;
            let mut insert: Option<clickhouse::insert_formatted::BufInsertFormatted> = None;
            let mut out: Vec<u8> = Vec::new();
            for p in payloads.payloads() {
                let p = p.map_err(spool_read_error)?;
                let kept = crate::spool::rows::transcode(&p, &mut out, |k| {
                    for (to, from) in [
                        (&mut row.site, k.site),
                        (&mut row.visitor_id, k.visitor_id),
                        (&mut row.message_id, k.message_id),
                        (&mut row.kind, k.kind),
                        (&mut row.anonymous_id, k.anonymous_id),
                        (&mut row.user_id, k.user_id),
                        (&mut row.previous_id, k.previous_id),
                        (&mut row.source, k.source),
                    ] {
                        to.clear();
                        to.push_str(from);
                    }
                    row.timestamp = k.timestamp;
                    if suppressions.is_some_and(|s| s.suppresses(&row, now_secs)) {
                        dropped += 1;
                        return false;
                    }
                    links.extend(identity_links(&row));
                    if self.identities.is_some()
                        && row.anonymous_id.is_empty()
                        && !row.user_id.is_empty()
                    {
                        users.push((row.site.clone(), row.user_id.clone()));
                    }
                    is_event(&&row)
                });
                if let Err(e) = kept {
                    // Checked by the writer as it gathered the batch (see `decode_payloads`).
                    tracing::error!(error = %e, "a checked spool payload no longer decodes; left out");
                    continue;
                }
                if out.len() >= INSERT_CHUNK {
                    let ins = insert.get_or_insert_with(|| self.events_insert());
                    ins.write_buffered(&out);
                    out.clear();
                    ins.flush().await.map_err(|e| classify(&e))?;
                }
            }
            if !out.is_empty() {
                insert
                    .get_or_insert_with(|| self.events_insert())
                    .write_buffered(&out);
            }
            if dropped > 0 {
                tracing::info!(dropped, "rows of deleted people dropped before insert");
            }
            self.feed_identities(
                &links,
                &mut users.iter().map(|(s, u)| (s.as_str(), u.as_str())),
            );
            // The links first, while the `events` insert is still open: whoever sees these
            // events in ClickHouse sees their links too.
            self.insert_rows("identities", &links).await?;
            if let Some(mut ins) = insert {
                ins.end().await.map_err(|e| classify(&e))?;
            }
            Ok(())
        })
    }

    fn quarantine<'a>(
        &'a self,
        rows: &'a [QuarantineRow],
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move { self.insert_rows("quarantine", rows).await })
    }

    fn prepare(&self) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(async move {
            migrate_on(&self.client, &self.database, &self.layout, &self.schema)
                .await
                .map(|_| ())
        })
    }

    fn probe(&self) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(async move {
            let db = &self.database;
            let create = probe_table_sql(&self.layout, db);
            for sql in [format!("DROP TABLE IF EXISTS {db}.{PROBE_TABLE}"), create] {
                self.client
                    .query(&sql)
                    .execute()
                    .await
                    .map_err(|e| classify(&e))?;
            }
            self.insert_rows(PROBE_TABLE, &[probe_row(crate::clock::now_ms_u64())])
                .await
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_failed_migration_says_why() {
        let status = SchemaStatus::default();
        assert_eq!(status.describe(), "pending");
        // Nothing listens on port 1 of the loopback address.
        let cfg = ClickHouseConfig {
            url: "http://127.0.0.1:1".into(),
            ..ClickHouseConfig::default()
        };
        let e = migrate(&client(&cfg), "waymark", &status)
            .await
            .unwrap_err();
        assert_eq!(e.class, ErrorClass::Unavailable(Cause::Unreachable));
        let said = status.describe();
        assert!(said.starts_with("pending: "), "{said}");
        assert!(said.contains(&e.message), "{said}");
        assert!(!status.is_ready());
    }

    #[test]
    fn without_a_cluster_the_sql_sent_is_what_the_migrations_say() {
        let single = Layout::new(None);
        for m in schema::MIGRATIONS {
            let want: Vec<String> = m
                .statements
                .iter()
                .map(|s| schema::render(s, "w"))
                .collect();
            assert_eq!(
                migration_sql(m, &single, "w").unwrap(),
                want,
                "migration {}",
                m.version
            );
        }
        assert_eq!(
            single.rewrite(schema::MIGRATIONS_TABLE).unwrap(),
            vec![schema::MIGRATIONS_TABLE.to_string()]
        );
        assert_eq!(
            single.create_database("w"),
            "CREATE DATABASE IF NOT EXISTS w"
        );
        assert_eq!(single.distributed_again("events"), Vec::<String>::new());
        assert_eq!(
            probe_table_sql(&single, "w"),
            "CREATE TABLE w.writer_probe AS w.events"
        );
    }

    #[test]
    fn codes_are_read_from_exception_text() {
        assert_eq!(
            exception_code("Code: 252. DB::Exception: Too many parts (300)."),
            Some(252)
        );
        assert_eq!(
            exception_code("Code: 27, e.displayText() = DB::Exception"),
            Some(27)
        );
        assert_eq!(exception_code("bad gateway"), None);
    }

    #[test]
    fn classification() {
        let class =
            |text: &str| classify(&clickhouse::error::Error::BadResponse(text.into())).class;
        let state = |c| ErrorClass::Unavailable(c);
        for (text, want) in [
            ("Code: 252. DB::Exception: Too many parts (300). Merges are processing significantly slower than inserts.", state(Cause::TooManyParts)),
            ("Code: 252. DB::Exception: Too many partitions for single INSERT block (more than 100).", state(Cause::TooManyPartitions)),
            ("Code: 16, e.displayText() = DB::Exception: No such column utm_term in table waymark.events", state(Cause::MissingColumn)),
            ("Code: 60. DB::Exception: Table waymark.events doesn't exist.", state(Cause::MissingTable)),
            ("Code: 164, e.displayText() = DB::Exception: Cannot execute query in readonly mode", state(Cause::ReadOnly)),
            ("Code: 516. DB::Exception: waymark: Authentication failed", state(Cause::Auth)),
            ("Code: 192. DB::Exception: Unknown user waymark", state(Cause::Auth)),
            ("Code: 497. DB::Exception: waymark: Not enough privileges.", state(Cause::AccessDenied)),
            ("Code: 201. DB::Exception: Quota for user 'waymark' for 1 hour has been exceeded", state(Cause::Quota)),
            ("Code: 243. DB::Exception: Cannot reserve 1.00 MiB, not enough space.", state(Cause::DiskFull)),
            ("Code: 241. DB::Exception: Memory limit (for query) exceeded", state(Cause::Memory)),
            ("Code: 394. DB::Exception: Query was cancelled", state(Cause::QueryKilled)),
            ("Code: 202. DB::Exception: Too many simultaneous queries", state(Cause::Overloaded)),
            // No code alone says "bad rows": these are refusals the probe and bisection judge.
            ("Code: 27. DB::Exception: Cannot parse input", ErrorClass::Refused),
            ("Code: 395. DB::Exception: Value passed to 'throwIf' function is non zero", ErrorClass::Refused),
            ("Code: 48. DB::Exception: not implemented", ErrorClass::Refused),
            // An HTTP failure without a ClickHouse exception: a proxy, a restart.
            ("502 Bad Gateway", state(Cause::Unreachable)),
        ] {
            assert_eq!(class(text), want, "{text}");
        }
        assert_eq!(
            classify(&clickhouse::error::Error::TimedOut).class,
            state(Cause::Timeout)
        );
        let refused = StoreError {
            class: ErrorClass::Refused,
            message: "Code: 48".into(),
        };
        assert_eq!(refused.cause(), Cause::Other);
    }
}
