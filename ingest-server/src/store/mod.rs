//! ClickHouse: the schema and its migrations ([`schema`]), the rows ([`row`]), and the writer
//! that moves spooled events into ClickHouse ([`writer`]).

pub mod row;
pub mod schema;
pub mod writer;

use std::sync::Arc;

use futures::future::BoxFuture;

use crate::config::ClickHouseConfig;
use row::{identity_links, EventRow, IdentityRow, QuarantineRow};

/// How a failed ClickHouse call should be handled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorClass {
    /// Network trouble, overload, too many parts: try the same rows again later.
    Retryable,
    /// ClickHouse refused the data itself: retrying cannot help; find the bad rows.
    BadData,
    /// Something else: retried a bounded number of times, then treated as bad data.
    Unknown,
}

/// A failed ClickHouse call.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct StoreError {
    pub class: ErrorClass,
    pub message: String,
}

/// ClickHouse error codes that mean "this data is wrong" (parse, type, range, size errors).
const BAD_DATA_CODES: &[u32] = &[
    6,   // CANNOT_PARSE_TEXT
    16,  // NO_SUCH_COLUMN_IN_TABLE
    27,  // CANNOT_PARSE_INPUT_ASSERTION_FAILED
    33,  // CANNOT_READ_ALL_DATA
    36,  // BAD_ARGUMENTS
    38,  // CANNOT_PARSE_DATE
    41,  // CANNOT_PARSE_DATETIME
    53,  // TYPE_MISMATCH
    69,  // ARGUMENT_OUT_OF_BOUND
    70,  // CANNOT_CONVERT_TYPE
    72,  // CANNOT_PARSE_NUMBER
    117, // INCORRECT_DATA
    131, // TOO_LARGE_STRING_SIZE
    395, // FUNCTION_THROW_IF_VALUE_IS_NON_ZERO
];

/// ClickHouse error codes that pass: overload and transient server states.
const RETRYABLE_CODES: &[u32] = &[
    159, // TIMEOUT_EXCEEDED
    164, // READONLY
    202, // TOO_MANY_SIMULTANEOUS_QUERIES
    203, // NO_FREE_CONNECTION
    209, // SOCKET_TIMEOUT
    210, // NETWORK_ERROR
    241, // MEMORY_LIMIT_EXCEEDED
    242, // TABLE_IS_READ_ONLY
    252, // TOO_MANY_PARTS
    319, // UNKNOWN_STATUS_OF_INSERT
    425, // SYSTEM_ERROR
    999, // KEEPER_EXCEPTION
];

/// The `Code: N` of a ClickHouse exception text.
pub fn exception_code(text: &str) -> Option<u32> {
    let rest = &text[text.find("Code: ")? + 6..];
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

/// Classifies an error from the `clickhouse` crate.
pub fn classify(e: &clickhouse::error::Error) -> StoreError {
    use clickhouse::error::Error as E;
    let message = e.to_string();
    let class = match e {
        E::Network(_) | E::TimedOut => ErrorClass::Retryable,
        E::BadResponse(text) => match exception_code(text) {
            Some(c) if BAD_DATA_CODES.contains(&c) => ErrorClass::BadData,
            Some(c) if RETRYABLE_CODES.contains(&c) => ErrorClass::Retryable,
            Some(_) => ErrorClass::Unknown,
            // No exception text: an HTTP-level failure (proxy, 5xx without body).
            None => ErrorClass::Retryable,
        },
        E::Compression(_) | E::Decompression(_) => ErrorClass::Retryable,
        _ => ErrorClass::Unknown,
    };
    StoreError { class, message }
}

/// Where the writer sends rows. ClickHouse in production; a failing fake in unit tests.
pub trait Sink: Send + Sync + 'static {
    /// Inserts events (and the identity links they carry). All or nothing from the caller's
    /// view: on error, the same rows are sent again or bisected.
    fn insert<'a>(&'a self, rows: &'a [EventRow]) -> BoxFuture<'a, Result<(), StoreError>>;
    /// Stores refused rows with their reason.
    fn quarantine<'a>(&'a self, rows: &'a [QuarantineRow])
        -> BoxFuture<'a, Result<(), StoreError>>;
    /// Makes sure the schema exists (called before the first insert and after schema errors).
    fn prepare(&self) -> BoxFuture<'_, Result<(), StoreError>>;
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
    clickhouse::Client::with_http_client(http)
        .with_url(&cfg.url)
        .with_user(&cfg.user)
        .with_password(&cfg.password)
        // 18.16 has no RowBinaryWithNamesAndTypes.
        .with_validation(false)
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
    use std::sync::atomic::Ordering;
    let _one_at_a_time = status.lock.lock().await;
    let result = apply(client, db, status).await;
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

async fn apply(
    client: &clickhouse::Client,
    db: &str,
    status: &SchemaStatus,
) -> Result<Vec<u32>, StoreError> {
    let run =
        |sql: String| async move { client.query(&sql).execute().await.map_err(|e| classify(&e)) };
    run(format!("CREATE DATABASE IF NOT EXISTS {db}")).await?;
    run(schema::render(schema::MIGRATIONS_TABLE, db)).await?;
    let applied: Vec<u32> = client
        .query(&format!("SELECT version FROM {db}.schema_migrations"))
        .fetch_all::<u32>()
        .await
        .map_err(|e| classify(&e))?;
    let mut newly = Vec::new();
    for m in schema::MIGRATIONS {
        if applied.contains(&m.version) {
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
        for stmt in m.statements {
            run(schema::render(stmt, db)).await?;
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

/// The production sink.
pub struct ClickHouseSink {
    client: clickhouse::Client,
    db_client: clickhouse::Client,
    database: String,
    schema: Arc<SchemaStatus>,
    identities: Option<Arc<crate::query::identity::IdentityIndex>>,
}

impl ClickHouseSink {
    pub fn new(cfg: &ClickHouseConfig, schema: Arc<SchemaStatus>) -> Self {
        let client = client(cfg);
        ClickHouseSink {
            db_client: client.clone().with_database(&cfg.database),
            client,
            database: cfg.database.clone(),
            schema,
            identities: None,
        }
    }

    /// Adds every identity link to `index` before inserting it, so the query API never sees
    /// events before the links they came with.
    pub fn with_identities(
        mut self,
        index: Option<Arc<crate::query::identity::IdentityIndex>>,
    ) -> Self {
        self.identities = index;
        self
    }

    async fn insert_rows<T>(&self, table: &str, rows: &[T]) -> Result<(), StoreError>
    where
        T: clickhouse::RowOwned + clickhouse::RowWrite,
    {
        if rows.is_empty() {
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

impl Sink for ClickHouseSink {
    fn insert<'a>(&'a self, rows: &'a [EventRow]) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move {
            // Both at once: the batch is done when the slower is (a failure of either retries
            // both; the tables collapse the rows inserted twice).
            let links: Vec<IdentityRow> = rows.iter().flat_map(identity_links).collect();
            if let Some(ix) = &self.identities {
                ix.add_all(
                    links.iter().map(|l| {
                        (
                            l.site.as_str(),
                            l.anonymous_id.as_str(),
                            l.user_id.as_str(),
                            l.linked_at,
                        )
                    }),
                    // What `q_user_visitors` will hold (its view's condition).
                    rows.iter()
                        .filter(|r| r.anonymous_id.is_empty() && !r.user_id.is_empty())
                        .map(|r| (r.site.as_str(), r.user_id.as_str())),
                );
            }
            futures::future::try_join(
                self.insert_rows("events", rows),
                self.insert_rows("identities", &links),
            )
            .await
            .map(|_| ())
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
            migrate(&self.client, &self.database, &self.schema)
                .await
                .map(|_| ())
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
        assert_eq!(e.class, ErrorClass::Retryable);
        let said = status.describe();
        assert!(said.starts_with("pending: "), "{said}");
        assert!(said.contains(&e.message), "{said}");
        assert!(!status.is_ready());
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
        let e = clickhouse::error::Error::BadResponse(
            "Code: 252. DB::Exception: Too many parts".into(),
        );
        assert_eq!(classify(&e).class, ErrorClass::Retryable);
        let e = clickhouse::error::Error::BadResponse(
            "Code: 27. DB::Exception: Cannot parse input".into(),
        );
        assert_eq!(classify(&e).class, ErrorClass::BadData);
        let e = clickhouse::error::Error::BadResponse(
            "Code: 48. DB::Exception: not implemented".into(),
        );
        assert_eq!(classify(&e).class, ErrorClass::Unknown);
        assert_eq!(
            classify(&clickhouse::error::Error::TimedOut).class,
            ErrorClass::Retryable
        );
    }
}
