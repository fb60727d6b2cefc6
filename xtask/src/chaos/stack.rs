//! The ingest server of a scenario: its configuration, started and killed as a process on a
//! fixed loopback port (so clients and the edge worker find it again after a restart), always on
//! the same spool directory.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context as _, Result};
use waymark_testkit::config::{site, ByteSize, HumanDuration, IngestConfig};
use waymark_testkit::ingest::IngestServer;

use super::load::{READ_KEY, SITE, WRITE_KEY};

/// The secret the edge worker signs with, in scenario (f).
pub const EDGE_SECRET: &str = "chaos-edge-secret";

/// What a scenario's server is configured with.
pub struct Settings<'a> {
    pub port: u16,
    pub clickhouse_url: &'a str,
    pub database: &'a str,
    pub spool: &'a Path,
    pub spool_max: &'a str,
}

impl Settings<'_> {
    /// The server's configuration (from the testkit's builder).
    pub fn config(&self) -> Result<IngestConfig> {
        let spool_max = ByteSize::parse(self.spool_max).map_err(|e| anyhow!("spool_max: {e}"))?;
        let config = IngestConfig::new()
            .port(self.port)
            .clickhouse(self.clickhouse_url, self.database)
            .spool(self.spool)
            .spool_max(spool_max.0)
            .edge_secret(EDGE_SECRET)
            .site(site(SITE, WRITE_KEY, &[]))
            .read_key(READ_KEY, &[SITE])
            .with(|c| c.query.cache_ttl = HumanDuration(Duration::ZERO));
        // Checked now, so a scenario fails before it starts rather than at a restart.
        config.to_toml().map_err(|e| anyhow!("{e}"))?;
        Ok(config)
    }
}

/// The ingest server of one scenario (the testkit's [`IngestServer`], restartable).
pub struct Ingest {
    binary: PathBuf,
    dir: PathBuf,
    config: IngestConfig,
    pub port: u16,
    server: Option<IngestServer>,
    logs: Vec<PathBuf>,
}

impl Ingest {
    /// Keeps the configuration; does not start it.
    pub fn new(binary: &Path, dir: &Path, port: u16, config: IngestConfig) -> Result<Ingest> {
        std::fs::create_dir_all(dir)?;
        Ok(Ingest {
            binary: binary.to_path_buf(),
            dir: dir.to_path_buf(),
            config,
            port,
            server: None,
            logs: Vec::new(),
        })
    }

    /// Replaces the configuration (takes effect at the next start).
    pub fn reconfigure(&mut self, config: IngestConfig) {
        self.config = config;
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// Starts it and returns once it listens (a new log file per start).
    pub fn start(&mut self) -> Result<()> {
        let log = self.dir.join(format!("server-{}.log", self.logs.len() + 1));
        // A port just freed by a killed server can take a moment to be bindable again.
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let attempt = IngestServer::start_logging_to(
                &self.binary,
                &self.config,
                &self.dir,
                &[("RUST_LOG", "info")],
                &log,
            );
            match attempt {
                Ok(s) => {
                    self.logs.push(log);
                    self.server = Some(s);
                    return Ok(());
                }
                Err(e) if Instant::now() < deadline && e.to_string().contains("binding") => {
                    std::thread::sleep(Duration::from_millis(200));
                }
                Err(e) => {
                    self.logs.push(log);
                    return Err(anyhow!("{e}"));
                }
            }
        }
    }

    /// SIGKILL: no flush, no goodbye, as in a crash.
    pub fn kill(&mut self) {
        if let Some(s) = self.server.take() {
            s.proc.kill();
        }
    }

    /// `GET path` on the server: status and body.
    pub fn get(&self, path: &str, bearer: Option<&str>) -> Result<(u16, String)> {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(30)))
            .build()
            .into();
        let mut req = agent.get(self.url(path));
        if let Some(k) = bearer {
            req = req.header("authorization", format!("Bearer {k}"));
        }
        let mut r = req.call().with_context(|| format!("GET {path}"))?;
        let status = r.status().as_u16();
        Ok((status, r.body_mut().read_to_string().unwrap_or_default()))
    }

    /// A sample of `/metrics` (the line `name` with its labels), if the server answers.
    pub fn metric(&self, name: &str) -> Option<f64> {
        let (status, body) = self.get("/metrics", None).ok()?;
        if status != 200 {
            return None;
        }
        metric_in(&body, name)
    }

    /// Panics in every log this server wrote (all its starts).
    pub fn panics(&self) -> usize {
        self.logs
            .iter()
            .filter_map(|l| std::fs::read_to_string(l).ok())
            .map(|s| s.matches("panicked at").count())
            .sum()
    }
}

impl Drop for Ingest {
    fn drop(&mut self) {
        // Whatever state a failed scenario left: do not wait for a flush to a dead ClickHouse.
        self.kill();
    }
}

fn metric_in(body: &str, name: &str) -> Option<f64> {
    body.lines()
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// Polls `check` every `every` until it returns `Some`, for at most `timeout`.
pub fn wait_for<T>(
    timeout: Duration,
    every: Duration,
    mut check: impl FnMut() -> Option<T>,
) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check() {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(every);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metric_lines_are_found_by_name_and_labels() {
        let body = "# HELP x\nwaymark_spool_pending_bytes 123\nwaymark_writer_blocked{cause=\"unreachable\"} 1\nwaymark_spool_pending_bytes_other 5\n";
        assert_eq!(metric_in(body, "waymark_spool_pending_bytes"), Some(123.0));
        assert_eq!(
            metric_in(body, "waymark_writer_blocked{cause=\"unreachable\"}"),
            Some(1.0)
        );
        assert_eq!(metric_in(body, "waymark_spool_bytes"), None);
    }
}
