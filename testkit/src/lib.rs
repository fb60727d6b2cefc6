//! The test stack: every process a Waymark test, benchmark, chaos run or the demo starts, and
//! the one builder of the ingest server's configuration.
//!
//! - [`ClickHouse`]: a private, real ClickHouse server (this file). [`ClickHouse::start`]
//!   launches `clickhouse-server` with a configuration written into its own directory,
//!   listening on free loopback ports only, and waits until `GET /ping` answers.
//!   [`ClickHouse::fresh_database`] hands each test its own database. Dropping the value stops
//!   the server; if the test process dies first, the server goes too (it runs under a small
//!   shell wrapper that kills it when our end of its stdin pipe closes), so no test leaves one
//!   behind. There is no fake: a missing binary is an error that says how to install it, never
//!   a skip.
//! - [`config::IngestConfig`]: the ingest server's configuration, built on its real types (the
//!   `waymark-ingest-config` crate) and written as TOML; the in-process servers of the ingest
//!   tests take its `Config`, everything else its file.
//! - [`ingest::IngestServer`]: the `ingest-server` binary started on such a config.
//! - [`stack::Stack`]: ClickHouse, the ingest server and, if asked, the demo shop with the edge
//!   worker in workerd: the end-to-end tests and `cargo xtask demo`.
//! - [`crm`]: a generated CRM export (customers and orders as CSV) and the truth about it, for
//!   the import test and the import benchmark.
//! - [`process`]: how the others are run: log to a file, wait for a ready line, stop on drop.
//! - `waymark-stack` (`src/bin/`): [`ClickHouse`] and [`ingest::IngestServer`] as a command, for
//!   the edge worker's JS tests.
//!
//! Dependencies point one way: this crate uses `waymark-ingest-config` (and the protocol's time
//! formatting), never the ingest server itself, so the server's tests can use it.

pub mod chdb;
pub mod cluster;
pub mod config;
pub mod crm;
pub mod ingest;
pub mod process;
pub mod stack;

pub use config::IngestConfig;
pub use stack::Stack;

use std::fmt::Write as _;
use std::io::Write as _;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// How to get the server on Debian or Ubuntu; printed whenever it cannot be found.
pub const INSTALL_HINT: &str = "clickhouse-server was not found on PATH. Install it with \
`sudo apt-get update && sudo apt-get install -y clickhouse-server clickhouse-client` \
(or run `cargo xtask test`, which installs it), or set WAYMARK_CLICKHOUSE_SERVER to its path.";

/// How long a start may take before we give up and show the server's error log.
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// A user besides `default` (no password, loopback only) whose profile
/// [`ClickHouse::set_readonly`] switches between writable and read-only (`readonly = 1`): a
/// client configured with it sees ClickHouse refuse every write with code 164 (READONLY).
pub const SWITCHABLE_USER: &str = "waymark_rw";

/// How long a change of `users.xml` may take to be applied (ClickHouse rereads it on its own).
const RELOAD_TIMEOUT: Duration = Duration::from_secs(60);

/// Errors from starting or talking to the private server.
#[derive(Debug)]
pub enum Error {
    /// The binary is missing; the message says how to install it.
    NotInstalled,
    /// Anything else, with a description that includes the server's own words where we have them.
    Other(String),
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Error::NotInstalled => f.write_str(INSTALL_HINT),
            Error::Other(s) => f.write_str(s),
        }
    }
}

impl std::error::Error for Error {}

/// Where the server keeps its files: a temporary directory removed on drop, or a kept one.
enum Home {
    Temp(tempfile::TempDir),
    Kept(PathBuf),
}

impl Home {
    fn path(&self) -> &Path {
        match self {
            Home::Temp(t) => t.path(),
            Home::Kept(p) => p,
        }
    }
}

/// A running private ClickHouse server.
pub struct ClickHouse {
    home: Home,
    http_port: u16,
    tcp_port: u16,
    process: Option<(Child, ChildStdin)>,
    databases: AtomicU32,
    /// More configuration inside `<yandex>` (a cluster member's ZooKeeper, macros, servers).
    extra: String,
}

/// The first of `names` found in a directory of PATH, with the directory's order first.
fn on_path(names: &[&str]) -> Option<(PathBuf, usize)> {
    std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .find_map(|dir| {
            names.iter().enumerate().find_map(|(i, n)| {
                let full = dir.join(n);
                full.is_file().then_some((full, i))
            })
        })
}

/// Finds the server binary: `WAYMARK_CLICKHOUSE_SERVER`, else `clickhouse-server` on PATH, else
/// the single `clickhouse` binary (newer packages) run as `clickhouse server`.
fn server_command() -> Result<Vec<String>, Error> {
    if let Ok(p) = std::env::var("WAYMARK_CLICKHOUSE_SERVER") {
        return Ok(vec![p]);
    }
    match on_path(&["clickhouse-server", "clickhouse"]) {
        Some((p, 0)) => Ok(vec![p.display().to_string()]),
        Some((p, _)) => Ok(vec![p.display().to_string(), "server".into()]),
        None => Err(Error::NotInstalled),
    }
}

/// The ClickHouse client as a command line: `clickhouse-client` on PATH, else the single
/// `clickhouse` binary (newer packages) run as `clickhouse client`.
pub fn client_command() -> Vec<String> {
    match on_path(&["clickhouse-client", "clickhouse"]) {
        Some((p, 0)) => vec![p.display().to_string()],
        Some((p, _)) => vec![p.display().to_string(), "client".into()],
        None => vec!["clickhouse-client".into()],
    }
}

/// A port nobody is listening on right now. The kernel picks it; we release it for the server.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("binding 127.0.0.1:0 to find a free port")
}

impl ClickHouse {
    /// Starts a server in a new temporary directory (removed when this value drops).
    pub fn start() -> Result<Self, Error> {
        let dir = tempfile::Builder::new()
            .prefix("waymark-clickhouse-")
            .tempdir()
            .map_err(|e| Error::Other(format!("creating a temporary directory: {e}")))?;
        Self::start_in(Home::Temp(dir), free_port(), free_port(), String::new())
    }

    /// Starts a server in a new temporary directory with `extra` XML added inside `<yandex>`
    /// (used by [`cluster::Cluster`]).
    pub fn start_with(extra: String, http_port: u16, tcp_port: u16) -> Result<Self, Error> {
        let dir = tempfile::Builder::new()
            .prefix("waymark-clickhouse-")
            .tempdir()
            .map_err(|e| Error::Other(format!("creating a temporary directory: {e}")))?;
        Self::start_in(Home::Temp(dir), http_port, tcp_port, extra)
    }

    /// Starts a server whose data lives in `dir` and survives it (used by `cargo xtask demo`).
    pub fn start_kept(dir: &Path, http_port: u16, tcp_port: u16) -> Result<Self, Error> {
        std::fs::create_dir_all(dir)
            .map_err(|e| Error::Other(format!("creating {}: {e}", dir.display())))?;
        Self::start_in(
            Home::Kept(dir.to_path_buf()),
            http_port,
            tcp_port,
            String::new(),
        )
    }

    fn start_in(home: Home, http_port: u16, tcp_port: u16, extra: String) -> Result<Self, Error> {
        let mut ch = ClickHouse {
            home,
            http_port,
            tcp_port,
            process: None,
            databases: AtomicU32::new(0),
            extra,
        };
        ch.launch()?;
        Ok(ch)
    }

    fn launch(&mut self) -> Result<(), Error> {
        let cmd = server_command()?;
        let home = self.home.path().to_path_buf();
        for sub in ["data", "tmp", "log", "user_files", "format_schemas"] {
            std::fs::create_dir_all(home.join(sub))
                .map_err(|e| Error::Other(format!("creating {}: {e}", home.join(sub).display())))?;
        }
        write_config(&home, self.http_port, self.tcp_port, &self.extra)?;
        // The wrapper kills the server as soon as its stdin closes: on drop, or when this
        // process dies for any reason. `exec` is not used so that the shell stays to do it.
        // A temporary home is removed once the server is gone (a test binary's shared server
        // lives in a static that is never dropped, so `TempDir` alone would leave it behind),
        // unless "keep" came before the EOF ([`Self::stop`], an outage to resume from) or
        // "crash" ([`Self::crash`]: SIGKILL instead of SIGTERM, data kept too).
        let script = r#"
"$@" &
pid=$!
said=$(cat)
if [ "$said" = crash ]; then kill -KILL "$pid" 2>/dev/null; else kill -TERM "$pid" 2>/dev/null; fi
for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
kill -KILL "$pid" 2>/dev/null
wait "$pid" 2>/dev/null
if [ -n "$WAYMARK_CH_REMOVE_HOME" ] && [ "$said" != keep ] && [ "$said" != crash ]; then rm -rf "$WAYMARK_CH_REMOVE_HOME"; fi
exit 0
"#;
        let mut command = Command::new("sh");
        command
            .arg("-c")
            .arg(script)
            .arg("clickhouse-wrapper")
            .args(&cmd)
            .arg(format!(
                "--config-file={}",
                home.join("config.xml").display()
            ))
            .current_dir(&home)
            .env(
                "WAYMARK_CH_REMOVE_HOME",
                match &self.home {
                    Home::Temp(_) => home.as_os_str(),
                    Home::Kept(_) => std::ffi::OsStr::new(""),
                },
            )
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::from(
                std::fs::File::create(home.join("log/stderr.log"))
                    .map_err(|e| Error::Other(format!("creating the stderr log: {e}")))?,
            ));
        let mut child = command
            .spawn()
            .map_err(|e| Error::Other(format!("spawning {}: {e}", cmd.join(" "))))?;
        let stdin = child.stdin.take().expect("stdin was piped");
        self.process = Some((child, stdin));
        self.wait_ready()
    }

    fn wait_ready(&mut self) -> Result<(), Error> {
        let deadline = Instant::now() + START_TIMEOUT;
        let url = format!("{}/ping", self.http_url());
        loop {
            if let Ok(mut r) = ureq::get(&url).call() {
                if r.body_mut().read_to_string().unwrap_or_default().trim() == "Ok." {
                    return Ok(());
                }
            }
            if let Some((child, _)) = self.process.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    self.process = None;
                    return Err(Error::Other(format!(
                        "clickhouse-server exited ({status}) before answering /ping; its log:\n{}",
                        self.log_tail()
                    )));
                }
            }
            if Instant::now() > deadline {
                let tail = self.log_tail();
                self.kill();
                return Err(Error::Other(format!(
                    "clickhouse-server did not answer {url} within {START_TIMEOUT:?}; its log:\n{tail}"
                )));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The last lines of the server's error log and stderr, for failure messages.
    pub fn log_tail(&self) -> String {
        let mut out = String::new();
        for f in ["log/err.log", "log/stderr.log"] {
            if let Ok(s) = std::fs::read_to_string(self.home.path().join(f)) {
                let lines: Vec<&str> = s.lines().collect();
                let start = lines.len().saturating_sub(20);
                let _ = writeln!(out, "--- {f}");
                for l in &lines[start..] {
                    let _ = writeln!(out, "{l}");
                }
            }
        }
        out
    }

    /// `http://127.0.0.1:PORT`, for the `clickhouse` crate and for plain HTTP queries.
    pub fn http_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.http_port)
    }

    /// The HTTP port.
    pub fn http_port(&self) -> u16 {
        self.http_port
    }

    /// The native-protocol port, for `clickhouse-client --port`.
    pub fn tcp_port(&self) -> u16 {
        self.tcp_port
    }

    /// The directory holding the server's data, logs and configuration.
    pub fn home(&self) -> &Path {
        self.home.path()
    }

    /// Whether the server process is running (false between [`Self::stop`] and [`Self::resume`]).
    pub fn is_running(&self) -> bool {
        self.process.is_some()
    }

    /// Creates a database with a name unique to this server and returns the name.
    pub fn fresh_database(&self) -> Result<String, Error> {
        let n = self.databases.fetch_add(1, Ordering::SeqCst);
        let name = format!("waymark_test_{}_{n}", std::process::id());
        self.query(&format!("CREATE DATABASE {name}"))?;
        Ok(name)
    }

    /// Runs one SQL statement over HTTP and returns the response body.
    pub fn query(&self, sql: &str) -> Result<String, Error> {
        match ureq::post(format!("{}/", self.http_url())).send(sql) {
            Ok(mut r) => r
                .body_mut()
                .read_to_string()
                .map_err(|e| Error::Other(format!("reading the answer to {sql:?}: {e}"))),
            Err(ureq::Error::StatusCode(code)) => Err(Error::Other(format!(
                "ClickHouse answered {code} to {sql:?} (see {})",
                self.home.path().join("log/err.log").display()
            ))),
            Err(e) => Err(Error::Other(format!("sending {sql:?}: {e}"))),
        }
    }

    /// Runs one SQL statement over HTTP as `user`; the HTTP status and the body (ClickHouse's
    /// exception text on an error).
    pub fn query_as(&self, user: &str, sql: &str) -> Result<(u16, String), Error> {
        let mut r = ureq::post(format!("{}/", self.http_url()))
            .query("user", user)
            .config()
            .http_status_as_error(false)
            .build()
            .send(sql)
            .map_err(|e| Error::Other(format!("sending {sql:?} as {user}: {e}")))?;
        let status = r.status().as_u16();
        let body = r
            .body_mut()
            .read_to_string()
            .map_err(|e| Error::Other(format!("reading the answer to {sql:?}: {e}")))?;
        Ok((status, body))
    }

    /// Runs one SQL statement over HTTP with `db` as the default database (as a client with a
    /// `database` setting sends it); the HTTP status and the body.
    pub fn query_in(&self, db: &str, sql: &str) -> Result<(u16, String), Error> {
        let mut r = ureq::post(format!("{}/", self.http_url()))
            .query("database", db)
            .config()
            .http_status_as_error(false)
            .build()
            .send(sql)
            .map_err(|e| Error::Other(format!("sending {sql:?} in {db}: {e}")))?;
        let status = r.status().as_u16();
        let body = r
            .body_mut()
            .read_to_string()
            .map_err(|e| Error::Other(format!("reading the answer to {sql:?}: {e}")))?;
        Ok((status, body))
    }

    /// Makes [`SWITCHABLE_USER`] read-only (`on`) or writable again, and returns once the
    /// server applies it (it rereads `users.xml` by itself; a write as that user is polled).
    pub fn set_readonly(&self, on: bool) -> Result<(), Error> {
        let path = self.home.path().join("users.xml");
        let tmp = self.home.path().join("users.xml.tmp");
        // ClickHouse notices a change by the file's modification time in whole seconds (18.16):
        // the new file's must differ from the old one's even when both are written within a
        // second.
        let write = || -> std::io::Result<()> {
            let old = std::fs::metadata(&path)?.modified()?;
            std::fs::write(&tmp, users_xml(on))?;
            let mtime = std::time::SystemTime::now().max(old + Duration::from_secs(1));
            std::fs::File::options()
                .write(true)
                .open(&tmp)?
                .set_modified(mtime)?;
            std::fs::rename(&tmp, &path)
        };
        write().map_err(|e| Error::Other(format!("writing {}: {e}", path.display())))?;
        let deadline = Instant::now() + RELOAD_TIMEOUT;
        loop {
            // A write that changes nothing: refused with 164 under readonly = 1.
            let (status, body) =
                self.query_as(SWITCHABLE_USER, "CREATE DATABASE IF NOT EXISTS default")?;
            let applied = if on {
                status != 200 && body.contains("Code: 164")
            } else {
                status == 200
            };
            if applied {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(Error::Other(format!(
                    "users.xml set {SWITCHABLE_USER} readonly={} but the server still answers {status} {body:?} after {RELOAD_TIMEOUT:?}",
                    u8::from(on)
                )));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Stops the server but keeps its data and ports, to simulate an outage.
    pub fn stop(&mut self) {
        if let Some((_, stdin)) = self.process.as_mut() {
            let _ = stdin.write_all(b"keep");
        }
        self.kill();
    }

    /// Kills the server with SIGKILL (no shutdown of its own, as in a crash or an OOM kill) but
    /// keeps its data and ports; [`Self::resume`] starts it again on them.
    pub fn crash(&mut self) {
        if let Some((_, stdin)) = self.process.as_mut() {
            let _ = stdin.write_all(b"crash");
        }
        self.kill();
    }

    /// Starts the server again on the same ports and data after [`Self::stop`] or
    /// [`Self::crash`].
    pub fn resume(&mut self) -> Result<(), Error> {
        if self.process.is_none() {
            self.launch()?;
        }
        Ok(())
    }

    fn kill(&mut self) {
        if let Some((mut child, stdin)) = self.process.take() {
            drop(stdin); // the wrapper sees EOF and stops the server
            let _ = child.wait();
        }
    }
}

impl Drop for ClickHouse {
    fn drop(&mut self) {
        self.kill();
    }
}

fn write_config(home: &Path, http_port: u16, tcp_port: u16, extra: &str) -> Result<(), Error> {
    let h = home.display();
    // Works on 18.16 (the Debian package) and on current releases, which still read <yandex>.
    let config = format!(
        r#"<?xml version="1.0"?>
<yandex>
    <logger>
        <level>warning</level>
        <log>{h}/log/clickhouse-server.log</log>
        <errorlog>{h}/log/err.log</errorlog>
        <size>10M</size>
        <count>2</count>
    </logger>
    <listen_host>127.0.0.1</listen_host>
    <http_port>{http_port}</http_port>
    <tcp_port>{tcp_port}</tcp_port>
    <max_connections>256</max_connections>
    <keep_alive_timeout>10</keep_alive_timeout>
    <max_concurrent_queries>100</max_concurrent_queries>
    <uncompressed_cache_size>268435456</uncompressed_cache_size>
    <mark_cache_size>268435456</mark_cache_size>
    <path>{h}/data/</path>
    <tmp_path>{h}/tmp/</tmp_path>
    <user_files_path>{h}/user_files/</user_files_path>
    <format_schema_path>{h}/format_schemas/</format_schema_path>
    <users_config>users.xml</users_config>
    <default_profile>default</default_profile>
    <default_database>default</default_database>
    <timezone>UTC</timezone>
    <mlock_executable>false</mlock_executable>
    <builtin_dictionaries_reload_interval>3600</builtin_dictionaries_reload_interval>
    <max_session_timeout>3600</max_session_timeout>
    <default_session_timeout>60</default_session_timeout>
{extra}
</yandex>
"#
    );
    let mut f = std::fs::File::create(home.join("config.xml"))
        .map_err(|e| Error::Other(format!("writing config.xml: {e}")))?;
    f.write_all(config.as_bytes())
        .map_err(|e| Error::Other(format!("writing config.xml: {e}")))?;
    std::fs::write(home.join("users.xml"), users_xml(false))
        .map_err(|e| Error::Other(format!("writing users.xml: {e}")))?;
    Ok(())
}

/// `users.xml`: `default` and [`SWITCHABLE_USER`], read-only when `readonly`.
fn users_xml(readonly: bool) -> String {
    format!(
        r#"<?xml version="1.0"?>
<yandex>
    <profiles>
        <default>
            <max_memory_usage>4000000000</max_memory_usage>
            <load_balancing>random</load_balancing>
        </default>
        <switchable>
            <max_memory_usage>4000000000</max_memory_usage>
            <readonly>{}</readonly>
        </switchable>
    </profiles>
    <users>
        <default>
            <password></password>
            <networks><ip>127.0.0.1</ip><ip>::1</ip></networks>
            <profile>default</profile>
            <quota>default</quota>
        </default>
        <{SWITCHABLE_USER}>
            <password></password>
            <networks><ip>127.0.0.1</ip><ip>::1</ip></networks>
            <profile>switchable</profile>
            <quota>default</quota>
        </{SWITCHABLE_USER}>
    </users>
    <quotas>
        <default>
            <interval>
                <duration>3600</duration>
                <queries>0</queries>
                <errors>0</errors>
                <result_rows>0</result_rows>
                <read_rows>0</read_rows>
                <execution_time>0</execution_time>
            </interval>
        </default>
    </quotas>
</yandex>
"#,
        u8::from(readonly)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn starts_answers_and_stops_a_real_server() {
        let mut ch = ClickHouse::start().unwrap_or_else(|e| panic!("{e}"));
        let version = ch.query("SELECT version()").unwrap();
        assert!(!version.trim().is_empty());
        let db = ch.fresh_database().unwrap();
        ch.query(&format!(
            "CREATE TABLE {db}.t (x UInt32) ENGINE = MergeTree ORDER BY x"
        ))
        .unwrap();
        ch.query(&format!("INSERT INTO {db}.t VALUES (1), (2), (3)"))
            .unwrap();
        assert_eq!(
            ch.query(&format!("SELECT sum(x) FROM {db}.t"))
                .unwrap()
                .trim(),
            "6"
        );
        let other = ch.fresh_database().unwrap();
        assert_ne!(db, other, "each call gives a new database");

        // The switchable user: writable, then refused with 164 (READONLY), then writable.
        let create = format!("CREATE TABLE {db}.rw (x UInt8) ENGINE = Memory");
        assert_eq!(ch.query_as(SWITCHABLE_USER, &create).unwrap().0, 200);
        ch.set_readonly(true).unwrap();
        let (status, body) = ch
            .query_as(SWITCHABLE_USER, &format!("INSERT INTO {db}.rw VALUES (1)"))
            .unwrap();
        assert!(
            status != 200 && body.contains("Code: 164"),
            "{status} {body}"
        );
        assert_eq!(
            ch.query_as(SWITCHABLE_USER, "SELECT 1").unwrap(),
            (200, "1\n".to_string())
        );
        ch.set_readonly(false).unwrap();
        let (status, body) = ch
            .query_as(SWITCHABLE_USER, &format!("INSERT INTO {db}.rw VALUES (1)"))
            .unwrap();
        assert_eq!(status, 200, "{body}");

        // Outage and recovery on the same ports with the same data.
        let url = format!("{}/ping", ch.http_url());
        ch.stop();
        assert!(
            ureq::get(&url).call().is_err(),
            "server still answers after stop"
        );
        ch.resume().unwrap();
        assert_eq!(
            ch.query(&format!("SELECT count() FROM {db}.t"))
                .unwrap()
                .trim(),
            "3"
        );
        // A crash (SIGKILL) keeps the data too.
        ch.crash();
        assert!(
            ureq::get(&url).call().is_err(),
            "server still answers after crash"
        );
        assert!(ch.home().join("data").exists(), "a crash removed the data");
        ch.resume().unwrap();
        assert_eq!(
            ch.query(&format!("SELECT count() FROM {db}.t"))
                .unwrap()
                .trim(),
            "3"
        );

        let home = ch.home().to_path_buf();
        drop(ch);
        assert!(
            ureq::get(&url).call().is_err(),
            "server still answers after drop"
        );
        assert!(!home.exists(), "temporary directory was not removed");
    }
}
