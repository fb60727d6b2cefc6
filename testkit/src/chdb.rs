//! Current ClickHouse in-process: chdb-core (PyPI) run by a small Python driver
//! (`testkit/chdb/driver.py`, one JSON request and one JSON answer per line), in a temporary
//! directory removed on drop. Its venv is made by `cargo xtask test` (xtask `tools.rs`), which
//! passes its python as `WAYMARK_CHDB_PYTHON`.
//!
//! chdb has no server mode, so the product cannot talk to it over HTTP; tests replay the
//! statements the server sent to a real ClickHouse 18.16 instead (`ingest-server/tests/
//! clickhouse_parity.rs`).

use std::io::{BufRead as _, BufReader, Write as _};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};

use serde_json::{json, Value};

use crate::Error;

/// The variable naming the python of a venv with chdb-core installed.
pub const PYTHON_VAR: &str = "WAYMARK_CHDB_PYTHON";

/// Printed when the driver cannot start.
pub const CHDB_HINT: &str = "chdb-core is needed for the ClickHouse parity test: run `cargo xtask test \"rust tests\"` \
(it makes a venv under the tool cache and pip-installs the pinned chdb-core, then sets WAYMARK_CHDB_PYTHON), or set \
WAYMARK_CHDB_PYTHON to the python of a venv where `pip install chdb-core==26.9.0` ran";

const DRIVER: &str = include_str!("../chdb/driver.py");

/// A chdb session: statements run one at a time, answers are TabSeparated text.
pub struct Chdb {
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: BufReader<ChildStdout>,
    version: String,
    _home: tempfile::TempDir,
}

impl Chdb {
    /// Starts the driver with the python in `WAYMARK_CHDB_PYTHON`.
    pub fn start() -> Result<Self, Error> {
        Self::start_with_config(None)
    }

    /// [`start`](Self::start) with a server config file of this text (`<clickhouse>...`), for
    /// what only a config can set, such as `remote_servers`.
    pub fn start_with_config(config: Option<&str>) -> Result<Self, Error> {
        let python = std::env::var(PYTHON_VAR)
            .map_err(|_| Error::Other(format!("{PYTHON_VAR} is not set. {CHDB_HINT}")))?;
        let home = tempfile::Builder::new()
            .prefix("waymark-chdb-")
            .tempdir()
            .map_err(|e| Error::Other(format!("creating a temporary directory: {e}")))?;
        let driver = home.path().join("driver.py");
        std::fs::write(&driver, DRIVER)
            .map_err(|e| Error::Other(format!("writing {}: {e}", driver.display())))?;
        let mut command = Command::new(&python);
        command.arg(&driver).arg(home.path().join("session"));
        if let Some(text) = config {
            let path = home.path().join("config.xml");
            std::fs::write(&path, text)
                .map_err(|e| Error::Other(format!("writing {}: {e}", path.display())))?;
            command.arg(&path);
        }
        let mut child = command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| Error::Other(format!("running {python}: {e}. {CHDB_HINT}")))?;
        let stdin = child.stdin.take();
        let stdout = BufReader::new(child.stdout.take().expect("stdout was piped"));
        let mut chdb = Chdb {
            child,
            stdin,
            stdout,
            version: String::new(),
            _home: home,
        };
        let hello = chdb
            .read_answer()
            .map_err(|e| Error::Other(format!("{e}. {CHDB_HINT}")))?;
        chdb.version = hello["version"]
            .as_str()
            .ok_or_else(|| Error::Other(format!("the chdb driver said {hello} first")))?
            .to_string();
        Ok(chdb)
    }

    /// `SELECT version()` of the embedded ClickHouse, e.g. `26.9.2.1`.
    pub fn version(&self) -> &str {
        &self.version
    }

    /// Runs one statement: `Ok(TabSeparated output)`, or `Err(ClickHouse's message)`.
    pub fn query(&mut self, sql: &str) -> Result<String, String> {
        let stdin = self.stdin.as_mut().ok_or("the chdb driver is closed")?;
        let line = json!({ "sql": sql }).to_string();
        writeln!(stdin, "{line}")
            .and_then(|_| stdin.flush())
            .map_err(|e| format!("writing to the chdb driver: {e}"))?;
        let answer = self.read_answer().map_err(|e| e.to_string())?;
        match answer["ok"].as_bool() {
            Some(true) => Ok(answer["out"].as_str().unwrap_or_default().to_string()),
            _ => Err(answer["error"]
                .as_str()
                .unwrap_or("no error text")
                .to_string()),
        }
    }

    fn read_answer(&mut self) -> Result<Value, Error> {
        let mut line = String::new();
        let n = self
            .stdout
            .read_line(&mut line)
            .map_err(|e| Error::Other(format!("reading from the chdb driver: {e}")))?;
        if n == 0 {
            let status = self.child.try_wait().ok().flatten();
            return Err(Error::Other(format!(
                "the chdb driver ended without answering (exit {status:?}; its stderr is above)"
            )));
        }
        serde_json::from_str(&line)
            .map_err(|e| Error::Other(format!("the chdb driver said {line:?}: {e}")))
    }
}

impl Drop for Chdb {
    fn drop(&mut self) {
        // Closing stdin ends the driver's loop.
        self.stdin.take();
        let _ = self.child.wait();
    }
}
