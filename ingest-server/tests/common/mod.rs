//! Shared helpers for the ingest server's integration tests: one real ClickHouse per test
//! binary, an in-process server per test (own database, own spool directory), and polling
//! with deadlines.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use waymark_ingest::Config;
use waymark_testkit::config::{site, IngestConfig, IpMode, SiteConfig};
use waymark_testkit::ClickHouse;

pub const WRITE_KEY: &str = "wk_shop";
pub const OTHER_KEY: &str = "wk_blog";
pub const ORIGIN: &str = "http://127.0.0.1:8000";
pub const EDGE_SECRET: &str = "edge-test-secret";

static CLICKHOUSE: OnceLock<ClickHouse> = OnceLock::new();

/// The binary's shared ClickHouse (started on first use, stopped when the process exits).
pub fn clickhouse() -> &'static ClickHouse {
    CLICKHOUSE.get_or_init(|| ClickHouse::start().unwrap_or_else(|e| panic!("{e}")))
}

/// A blocking ClickHouse query from async code.
pub fn query(ch: &ClickHouse, sql: &str) -> String {
    tokio::task::block_in_place(|| ch.query(sql)).unwrap_or_else(|e| panic!("{e}"))
}

/// The tests' configuration (from the testkit's builder): a server on `listen` writing to `db`
/// with its spool in `spool`, short writer age, an edge secret, and two sites: `shop` (write key
/// [`WRITE_KEY`], browser origin [`ORIGIN`], IPs truncated) and `blog` ([`OTHER_KEY`], IPs
/// dropped).
pub fn config(listen: &str, ch_url: &str, db: &str, spool: &std::path::Path) -> IngestConfig {
    IngestConfig::new()
        .listen(listen.parse().expect("a socket address"))
        .clickhouse(ch_url, db)
        .spool(spool)
        .spool_max(64 << 20)
        .writer_max_age(Duration::from_millis(100))
        .edge_secret(EDGE_SECRET)
        .site(site("shop", WRITE_KEY, &[ORIGIN]))
        .site(SiteConfig {
            ip: IpMode::Drop,
            ..site("blog", OTHER_KEY, &[])
        })
}

/// An in-process server on a free port.
pub struct Server {
    pub addr: SocketAddr,
    pub db: String,
    pub spool: tempfile::TempDir,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    handle: Option<tokio::task::JoinHandle<Result<(), waymark_ingest::ServeError>>>,
}

impl Server {
    pub async fn start(ch: &ClickHouse) -> Server {
        Self::start_with(ch, |_| {}).await
    }

    pub async fn start_with(ch: &ClickHouse, tweak: impl FnOnce(&mut Config)) -> Server {
        let db =
            tokio::task::block_in_place(|| ch.fresh_database()).unwrap_or_else(|e| panic!("{e}"));
        let spool = tempfile::tempdir().unwrap();
        let config = config("127.0.0.1:0", &ch.http_url(), &db, spool.path())
            .with(tweak)
            .build()
            .unwrap_or_else(|e| panic!("{e}"));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let handle = tokio::spawn(waymark_ingest::serve(config, listener, async move {
            let _ = rx.await;
        }));
        Server {
            addr,
            db,
            spool,
            stop: Some(tx),
            handle: Some(handle),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Graceful stop: stop accepting, flush, return.
    pub async fn stop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(h) = self.handle.take() {
            tokio::time::timeout(Duration::from_secs(60), h)
                .await
                .expect("server stops within 60 s")
                .unwrap()
                .unwrap();
        }
    }
}

/// Polls `sql` until it returns `want` (trimmed) or the deadline passes; returns the last answer.
pub async fn wait_for(ch: &ClickHouse, sql: &str, want: &str, within: Duration) -> String {
    let deadline = Instant::now() + within;
    loop {
        let got = tokio::task::block_in_place(|| ch.query(sql)).unwrap_or_default();
        if got.trim() == want || Instant::now() > deadline {
            return got.trim().to_string();
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The server's clock (`waymark_ingest::clock`).
pub fn now_ms() -> i64 {
    waymark_ingest::clock::now_ms()
}

pub fn iso(ms: i64) -> String {
    waymark_protocol::time::format_rfc3339(ms)
}

pub fn http() -> reqwest::Client {
    reqwest::Client::builder().build().unwrap()
}
