//! Child processes for tests and the demo: started with their output going to a log file,
//! ready once they print an agreed line, stopped (SIGTERM, then SIGKILL) when dropped.

use std::io::{BufRead, BufReader, Read as _};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::Error;

/// How long a stopped process gets to exit on SIGTERM (the ingest server flushes its spool).
const STOP_GRACE: Duration = Duration::from_secs(15);

/// A running child process. Dropping it stops it: SIGTERM first, SIGKILL after `STOP_GRACE` (15 s).
pub struct Proc {
    name: String,
    child: Child,
    log: PathBuf,
    ready_line: String,
}

impl Proc {
    /// The line it printed to say it was ready (e.g. `listening on 127.0.0.1:PORT`).
    pub fn ready_line(&self) -> &str {
        &self.ready_line
    }

    /// Its process id.
    pub fn id(&self) -> u32 {
        self.child.id()
    }

    /// What the process is called in messages.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The last `lines` lines of its log (stderr), for failure messages.
    pub fn log_tail(&self, lines: usize) -> String {
        log_tail(&self.log, lines)
    }

    /// Kills it with SIGKILL at once (no shutdown of its own, as in a crash) and waits for it.
    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Stops it now; returns false if it had to be killed.
    pub fn stop(mut self) -> bool {
        self.stop_inner()
    }

    fn stop_inner(&mut self) -> bool {
        if let Ok(Some(_)) = self.child.try_wait() {
            return true;
        }
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + STOP_GRACE;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        false
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.stop_inner();
    }
}

fn log_tail(log: &Path, lines: usize) -> String {
    let mut s = String::new();
    let _ = std::fs::File::open(log).and_then(|mut f| f.read_to_string(&mut s));
    let all: Vec<&str> = s.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Starts `cmd` with stderr to `log`, and waits up to `timeout` for a stdout line containing
/// `ready`. On failure the error holds the end of the log.
pub fn spawn_until(
    name: &str,
    mut cmd: Command,
    ready: &str,
    log: &Path,
    timeout: Duration,
) -> Result<Proc, Error> {
    let log_file = std::fs::File::create(log)
        .map_err(|e| Error::Other(format!("creating {}: {e}", log.display())))?;
    cmd.stdout(Stdio::piped()).stderr(Stdio::from(log_file));
    let mut child = cmd
        .spawn()
        .map_err(|e| Error::Other(format!("starting {name} ({cmd:?}): {e}")))?;
    let stdout = child.stdout.take().expect("stdout was piped");
    let (tx, rx) = mpsc::channel();
    let marker = ready.to_string();
    std::thread::spawn(move || {
        let mut told = false;
        // Keep reading to the end so the child never blocks on a full pipe.
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if !told && line.contains(&marker) {
                let _ = tx.send(line.clone());
                told = true;
            }
        }
    });
    let mut proc = Proc {
        name: name.to_string(),
        child,
        log: log.to_path_buf(),
        ready_line: String::new(),
    };
    match rx.recv_timeout(timeout) {
        Ok(line) => {
            proc.ready_line = line;
            Ok(proc)
        }
        Err(_) => Err(Error::Other(format!(
            "{name} did not print {ready:?} within {timeout:?}; the end of its log {}:\n{}",
            log.display(),
            proc.log_tail(30)
        ))),
    }
}
