//! The `ingest-server` binary as a child process, started on a config from [`IngestConfig`].

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::config::IngestConfig;
use crate::process::{spawn_until, Proc};
use crate::Error;

/// How to build the binary; said when it is missing.
pub const INGEST_HINT: &str = "build the ingest server with `cargo build -p waymark-ingest --bin \
ingest-server` (`cargo xtask test` does)";

/// How long the server may take to print its `listening on` line.
const READY_TIMEOUT: Duration = Duration::from_secs(120);

/// `target/debug/ingest-server` of this workspace (`CARGO_TARGET_DIR` if set).
pub fn debug_binary() -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("testkit/ has a parent")
        .to_path_buf();
    let target = match std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from) {
        Some(d) if d.is_absolute() => d,
        Some(d) => root.join(d),
        None => root.join("target"),
    };
    target.join("debug/ingest-server")
}

/// A running ingest server; dropping it stops it (SIGTERM: it flushes its spool first).
pub struct IngestServer {
    /// The process (its log is `<dir>/ingest.log`).
    pub proc: Proc,
    /// The address it listens on, as it printed it.
    pub addr: SocketAddr,
    /// The config file it was started with.
    pub config_path: PathBuf,
}

impl IngestServer {
    /// Writes `config` to `<dir>/ingest.toml` and starts `binary` on it, with `env` added to its
    /// environment, `dir` as its working directory and its log in `<dir>/ingest.log`; returns
    /// once it listens. The config's `listen` may have port 0: the address is read from the
    /// server's ready line.
    pub fn start(
        binary: &Path,
        config: &IngestConfig,
        dir: &Path,
        env: &[(&str, &str)],
    ) -> Result<IngestServer, Error> {
        Self::start_logging_to(binary, config, dir, env, &dir.join("ingest.log"))
    }

    /// [`Self::start`] with the log in `log` (e.g. one file per start of a restarted server).
    pub fn start_logging_to(
        binary: &Path,
        config: &IngestConfig,
        dir: &Path,
        env: &[(&str, &str)],
        log: &Path,
    ) -> Result<IngestServer, Error> {
        // The server runs in `dir`: a relative path to it is taken from here, not from there.
        let binary = std::path::absolute(binary)
            .map_err(|e| Error::Other(format!("{}: {e}", binary.display())))?;
        if !binary.is_file() {
            return Err(Error::Other(format!(
                "{} is missing: {INGEST_HINT}",
                binary.display()
            )));
        }
        std::fs::create_dir_all(dir)
            .map_err(|e| Error::Other(format!("creating {}: {e}", dir.display())))?;
        let config_path = dir.join("ingest.toml");
        config.write(&config_path)?;
        let mut cmd = Command::new(&binary);
        cmd.arg("--config").arg(&config_path).current_dir(dir);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let proc = spawn_until("ingest server", cmd, "listening on ", log, READY_TIMEOUT)?;
        let line = proc.ready_line().trim();
        let addr = line
            .rsplit_once("listening on ")
            .and_then(|(_, a)| a.trim().parse().ok())
            .ok_or_else(|| {
                Error::Other(format!(
                    "the ingest server's ready line {line:?} names no address"
                ))
            })?;
        Ok(IngestServer {
            proc,
            addr,
            config_path,
        })
    }

    /// `http://ADDR`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}
