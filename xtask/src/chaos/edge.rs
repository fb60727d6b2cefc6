//! The edge worker for scenario (f): `edge.mjs` beside this file runs the built worker in workerd
//! with a queue (through the worker tests' harness) and answers commands, one JSON line each.

use std::io::{BufRead as _, BufReader, Write as _};
use std::path::Path;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{channel, Receiver};
use std::time::Duration;

use anyhow::{anyhow, bail, Context as _, Result};
use serde_json::{json, Value};

const MARKER: &str = "@@chaos ";

pub struct Edge {
    child: Child,
    stdin: ChildStdin,
    answers: Receiver<String>,
}

impl Edge {
    /// Starts workerd with the worker forwarding to `ingest_url`; returns once it is ready.
    /// The worker's own output goes to `log`.
    pub fn start(
        root: &Path,
        node: &Path,
        ingest_url: &str,
        secret: &str,
        log: &Path,
    ) -> Result<Edge> {
        let build = root.join("edge-worker/build/index.js");
        if !build.is_file() {
            bail!(
                "{} is missing: the edge worker is built by `cargo xtask test edge` (stage \"edge build\")",
                build.display()
            );
        }
        let script = root.join("xtask/src/chaos/edge.mjs");
        let mut child = Command::new(node)
            .arg(&script)
            .current_dir(root.join("edge-worker"))
            .env("WAYMARK_CHAOS_INGEST_URL", ingest_url)
            .env("WAYMARK_CHAOS_SECRET", secret)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(std::fs::File::create(log)?))
            .spawn()
            .with_context(|| format!("starting {} {}", node.display(), script.display()))?;
        let stdin = child.stdin.take().context("stdin")?;
        let stdout = child.stdout.take().context("stdout")?;
        let (tx, answers) = channel();
        let mut worker_log = std::fs::OpenOptions::new().append(true).open(log)?;
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                match line.strip_prefix(MARKER) {
                    Some(a) => {
                        if tx.send(a.to_string()).is_err() {
                            return;
                        }
                    }
                    None => {
                        let _ = writeln!(worker_log, "{line}");
                    }
                }
            }
        });
        let mut edge = Edge {
            child,
            stdin,
            answers,
        };
        let ready = edge.answer(Duration::from_secs(120))?;
        if ready["ready"] != json!(true) {
            bail!("the edge worker did not start: {ready}");
        }
        Ok(edge)
    }

    fn answer(&mut self, timeout: Duration) -> Result<Value> {
        let line = self
            .answers
            .recv_timeout(timeout)
            .map_err(|_| anyhow!("the edge worker driver gave no answer within {timeout:?}"))?;
        let v: Value = serde_json::from_str(&line).with_context(|| format!("answer {line:?}"))?;
        if let Some(e) = v.get("error") {
            bail!("edge driver: {}", e.as_str().unwrap_or_default());
        }
        Ok(v)
    }

    fn call(&mut self, cmd: Value) -> Result<Value> {
        writeln!(self.stdin, "{cmd}")?;
        self.stdin.flush()?;
        self.answer(Duration::from_secs(120))
    }

    /// Sends a tag batch through the edge; true if the worker answered 200 and queued it.
    pub fn post(&mut self, body: &str) -> Result<(u16, Value)> {
        let v = self.call(json!({"op": "post", "body": body}))?;
        let status = v["status"].as_u64().unwrap_or(0) as u16;
        Ok((status, v["json"].clone()))
    }

    /// Advances the queue's fake clock and waits for the deliveries that became due.
    pub fn advance(&mut self, d: Duration) -> Result<()> {
        self.call(json!({"op": "advance", "ms": d.as_millis() as u64}))?;
        Ok(())
    }

    /// Forwards the worker logged as failed so far.
    pub fn failed_forwards(&mut self) -> Result<u64> {
        Ok(self.call(json!({"op": "failed"}))?["count"]
            .as_u64()
            .unwrap_or(0))
    }
}

impl Drop for Edge {
    fn drop(&mut self) {
        let _ = writeln!(self.stdin, "{}", json!({"op": "quit"}));
        let _ = self.stdin.flush();
        for _ in 0..100 {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
