//! Configuration: one TOML file, typed, with defaults that run on a laptop and environment
//! overrides. Sizes and durations are written in human units (`"64MiB"`, `"5s"`). An unknown key
//! or a bad value is an error that names it.

use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Deserializer};
pub use waymark_protocol::edge::IpMode;

/// Every setting, with its default, as printed by `ingest-server --help`.
pub const SETTINGS_HELP: &str = r#"Settings (TOML file given with --config; every key is optional):

  listen = "127.0.0.1:8080"        address to serve HTTP on (port 0 = any free port)  [WAYMARK_LISTEN]

  [clickhouse]
  url = "http://127.0.0.1:8123"    ClickHouse HTTP interface                           [WAYMARK_CLICKHOUSE_URL]
  database = "waymark"             database (created if missing; migrations applied)   [WAYMARK_CLICKHOUSE_DATABASE]
  user = "default"                                                                     [WAYMARK_CLICKHOUSE_USER]
  password = ""                                                                        [WAYMARK_CLICKHOUSE_PASSWORD]

  [spool]
  dir = ".waymark/spool"           durable on-disk buffer (acknowledged events live here
                                   until ClickHouse confirms them)                     [WAYMARK_SPOOL_DIR]
  max_bytes = "1GiB"               cap; beyond it requests get 503 + Retry-After       [WAYMARK_SPOOL_MAX_BYTES]

  [writer]                         a ClickHouse insert happens when any threshold is hit
  max_rows = 100000                rows per insert                                     [WAYMARK_WRITER_MAX_ROWS]
  max_bytes = "32MiB"              spooled bytes per insert (bounds the writer's memory) [WAYMARK_WRITER_MAX_BYTES]
  max_age = "1s"                   oldest waiting event                                [WAYMARK_WRITER_MAX_AGE]
  max_backoff = "5s"               longest pause between retries while ClickHouse cannot take
                                   rows (down, auth, disk, missing column...): they stay in
                                   the spool and are retried for as long as it takes   [WAYMARK_WRITER_MAX_BACKOFF]
  max_attempts = 3                 refusals of a single row, each while a known-good probe
                                   row went in, before it goes to the quarantine table
                                   (replay: `ingest-server quarantine replay`)         [WAYMARK_WRITER_MAX_ATTEMPTS]

  [edge]                           absent (or no secret) = POST /v1/edge answers 404
  secret = "..."                   HMAC-SHA256 secret shared with the edge worker      [WAYMARK_EDGE_SECRET]
  replay_window = "5m"             accepted clock difference; a signature is accepted once
  max_body = "8MiB"                body limit for one forwarded request

  [dedup]
  capacity = 200000                recent message ids remembered per process (0 = off)

  [http]                           limits on clients
  max_connections = 10000          open connections; one more gets 503 + Retry-After, closed
  body_timeout = "10s"             a request body must arrive within this (else 408)
  request_timeout = "30s"          a request must be answered within this (else 408)
  shutdown_grace = "10s"           at SIGTERM, open requests and streams get this long, then
                                   are cut and the spool is flushed

  [[sites]]                        one per site; write keys map requests to the site
  id = "shop"
  write_keys = ["wk_shop"]
  allowed_origins = ["http://127.0.0.1:8000"]   CORS for browsers sending directly ("*" = any)
  ip = "truncate"                  "truncate" (IPv4 /24, IPv6 /48) or "drop"; the raw IP is never stored
  rate_limit = { events_per_second = 5000, burst = 20000 }
                                   optional token bucket on events (absent = unlimited: the
                                   spool cap is the server's own overload guard); a request
                                   the bucket cannot cover gets 429 + Retry-After and nothing
                                   is stored; a request larger than burst passes only when
                                   the bucket is full

  [query]                          the read API (profiles, event history, audiences)
  cart_abandon_after = "1h"        a cart is abandoned when its last add is older, with no order after
  cache_ttl = "5s"                 in-process cache of profile / event answers ("0s" = off)
  cache_entries = 10000            answers the cache holds at most
  recent_products = 10             recently viewed products listed in a profile
  identity_refresh = "1s"          how often the in-memory identity index (anonymous id <-> user
                                   id) reads links other servers wrote; "0s" = no index, ids
                                   are resolved in ClickHouse on every request
  identity_max_links = 1000000     links the index holds at most (about 200 bytes each); beyond,
                                   it turns itself off and ids are resolved in ClickHouse
  [query.engagement]               30-day engaged time: below medium = "short", below long = "medium"
  medium = "1m"
  long = "10m"
  [query.rfm]                      RFM scores 1-5 from the site's own quintiles
  refresh = "5m"                   how often the site's quintiles are recomputed (in the background)
  lookback = "8760h"               orders older than this do not count for RFM
  [[query.read_keys]]              one per key; `Authorization: Bearer <key>`
  key = "rk_shop"
  sites = ["shop"]                 the only sites this key can read

Sizes accept B, KB, MB, GB, KiB, MiB, GiB (e.g. "64MiB"); durations accept ms, s, m, h (e.g. "5s").
"#;

/// The whole configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub listen: SocketAddr,
    pub clickhouse: ClickHouseConfig,
    pub spool: SpoolConfig,
    pub writer: WriterConfig,
    pub edge: Option<EdgeConfig>,
    pub dedup: DedupConfig,
    pub http: HttpConfig,
    pub sites: Vec<SiteConfig>,
    /// The query API (read keys, cart and engagement settings): see `crate::query::QueryConfig`.
    #[serde(default)]
    pub query: crate::query::QueryConfig,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: "127.0.0.1:8080".parse().expect("valid default address"),
            clickhouse: ClickHouseConfig::default(),
            spool: SpoolConfig::default(),
            writer: WriterConfig::default(),
            edge: None,
            dedup: DedupConfig::default(),
            http: HttpConfig::default(),
            sites: Vec::new(),
            query: crate::query::QueryConfig::default(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClickHouseConfig {
    pub url: String,
    pub database: String,
    pub user: String,
    pub password: String,
}

impl Default for ClickHouseConfig {
    fn default() -> Self {
        ClickHouseConfig {
            url: "http://127.0.0.1:8123".into(),
            database: "waymark".into(),
            user: "default".into(),
            password: String::new(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SpoolConfig {
    pub dir: PathBuf,
    pub max_bytes: ByteSize,
}

impl Default for SpoolConfig {
    fn default() -> Self {
        SpoolConfig {
            dir: PathBuf::from(".waymark/spool"),
            max_bytes: ByteSize(1 << 30),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WriterConfig {
    pub max_rows: usize,
    pub max_bytes: ByteSize,
    pub max_age: HumanDuration,
    /// The longest pause between two attempts while ClickHouse cannot take rows.
    pub max_backoff: HumanDuration,
    /// Refusals of a single row, each while a probe row went in, before it is quarantined.
    /// (Before the error policy of issue 12 it counted attempts of any unclassified error
    /// before bisecting into quarantine; state errors no longer count at all.)
    pub max_attempts: u32,
}

impl Default for WriterConfig {
    fn default() -> Self {
        WriterConfig {
            max_rows: 100_000,
            max_bytes: ByteSize(32 << 20),
            max_age: HumanDuration(Duration::from_secs(1)),
            max_backoff: HumanDuration(Duration::from_secs(5)),
            max_attempts: 3,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EdgeConfig {
    #[serde(default)]
    pub secret: Option<String>,
    #[serde(default = "default_replay_window")]
    pub replay_window: HumanDuration,
    #[serde(default = "default_edge_max_body")]
    pub max_body: ByteSize,
}

fn default_replay_window() -> HumanDuration {
    HumanDuration(Duration::from_secs(300))
}

fn default_edge_max_body() -> ByteSize {
    ByteSize(8 << 20)
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DedupConfig {
    pub capacity: usize,
}

impl Default for DedupConfig {
    fn default() -> Self {
        DedupConfig { capacity: 200_000 }
    }
}

/// Limits on clients, so a slow or stuck one cannot hold the server.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    /// Open connections at most; one more is answered 503 + Retry-After and closed.
    pub max_connections: usize,
    /// How long a request body may take to arrive (408 after).
    pub body_timeout: HumanDuration,
    /// How long a handler may take to answer, body read included (408 after); a streamed
    /// answer (NDJSON audiences) is timed until its headers, then by `shutdown_grace` at exit.
    pub request_timeout: HumanDuration,
    /// At SIGTERM, how long open requests and streams may go on before they are cut and the
    /// spool is flushed.
    pub shutdown_grace: HumanDuration,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            max_connections: 10_000,
            body_timeout: HumanDuration(Duration::from_secs(10)),
            request_timeout: HumanDuration(Duration::from_secs(30)),
            shutdown_grace: HumanDuration(Duration::from_secs(10)),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SiteConfig {
    pub id: String,
    #[serde(default)]
    pub write_keys: Vec<String>,
    #[serde(default)]
    pub allowed_origins: Vec<String>,
    #[serde(default)]
    /// What happens to the client IP: never stored raw.
    pub ip: IpMode,
    /// Absent = unlimited (see `crate::ratelimit` for why that is the default).
    #[serde(default)]
    pub rate_limit: Option<RateLimitConfig>,
}

/// A site's token bucket: `burst` events at once, refilled at `events_per_second`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimitConfig {
    pub events_per_second: f64,
    pub burst: u64,
}

/// A size in bytes, written as `"64MiB"`, `"1GB"`, `"512"` or a bare integer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ByteSize(pub u64);

/// A duration written as `"5s"`, `"250ms"`, `"5m"`, `"1h"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HumanDuration(pub Duration);

impl ByteSize {
    pub fn parse(s: &str) -> Result<Self, String> {
        let s = s.trim();
        let split = s
            .find(|c: char| !c.is_ascii_digit() && c != '.')
            .unwrap_or(s.len());
        let (num, unit) = (s[..split].trim(), s[split..].trim());
        let n: f64 = num
            .parse()
            .map_err(|_| format!("{s:?} is not a size (expected e.g. \"64MiB\")"))?;
        let mult: u64 = match unit.to_ascii_lowercase().as_str() {
            "" | "b" => 1,
            "kb" | "k" => 1_000,
            "mb" | "m" => 1_000_000,
            "gb" | "g" => 1_000_000_000,
            "kib" => 1 << 10,
            "mib" => 1 << 20,
            "gib" => 1 << 30,
            "tib" => 1 << 40,
            _ => {
                return Err(format!(
                    "{s:?}: unknown size unit {unit:?} (use B, KB, MB, GB, KiB, MiB, GiB)"
                ))
            }
        };
        if !n.is_finite() || n < 0.0 {
            return Err(format!("{s:?} is not a size"));
        }
        Ok(ByteSize((n * mult as f64) as u64))
    }
}

impl HumanDuration {
    pub fn parse(s: &str) -> Result<Self, String> {
        let s = s.trim();
        let split = s
            .find(|c: char| !c.is_ascii_digit() && c != '.')
            .unwrap_or(s.len());
        let (num, unit) = (s[..split].trim(), s[split..].trim());
        let n: f64 = num
            .parse()
            .map_err(|_| format!("{s:?} is not a duration (expected e.g. \"5s\")"))?;
        let secs = match unit {
            "ms" => n / 1000.0,
            "s" => n,
            "m" | "min" => n * 60.0,
            "h" => n * 3600.0,
            "" => return Err(format!("{s:?}: a duration needs a unit (ms, s, m, h)")),
            _ => {
                return Err(format!(
                    "{s:?}: unknown duration unit {unit:?} (use ms, s, m, h)"
                ))
            }
        };
        if !secs.is_finite() || secs < 0.0 {
            return Err(format!("{s:?} is not a duration"));
        }
        Ok(HumanDuration(Duration::from_secs_f64(secs)))
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            N(u64),
            S(String),
        }
        match Raw::deserialize(d)? {
            Raw::N(n) => Ok(ByteSize(n)),
            Raw::S(s) => ByteSize::parse(&s).map_err(serde::de::Error::custom),
        }
    }
}

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        HumanDuration::parse(&s).map_err(serde::de::Error::custom)
    }
}

impl fmt::Display for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} bytes", self.0)
    }
}

/// Configuration problems; each names the key.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("environment variable {var}: {message}")]
    Env { var: &'static str, message: String },
    #[error("{key}: {message}")]
    Invalid { key: String, message: String },
}

impl Config {
    /// Reads the file, applies the process environment, and checks the result.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let mut cfg = Self::from_toml(&text).map_err(|message| ConfigError::Parse {
            path: path.to_path_buf(),
            message,
        })?;
        let env: HashMap<String, String> = std::env::vars().collect();
        cfg.apply_env(&env)?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Parses TOML text (no environment, no validation).
    pub fn from_toml(text: &str) -> Result<Self, String> {
        toml::from_str(text).map_err(|e| e.to_string())
    }

    /// Applies `WAYMARK_*` overrides from `env`.
    pub fn apply_env(&mut self, env: &HashMap<String, String>) -> Result<(), ConfigError> {
        fn get<'a>(env: &'a HashMap<String, String>, var: &str) -> Option<&'a str> {
            env.get(var).map(String::as_str)
        }
        fn bad(var: &'static str, message: impl Into<String>) -> ConfigError {
            ConfigError::Env {
                var,
                message: message.into(),
            }
        }
        if let Some(v) = get(env, "WAYMARK_LISTEN") {
            self.listen = v
                .parse()
                .map_err(|e| bad("WAYMARK_LISTEN", format!("{v:?}: {e}")))?;
        }
        if let Some(v) = get(env, "WAYMARK_CLICKHOUSE_URL") {
            self.clickhouse.url = v.into();
        }
        if let Some(v) = get(env, "WAYMARK_CLICKHOUSE_DATABASE") {
            self.clickhouse.database = v.into();
        }
        if let Some(v) = get(env, "WAYMARK_CLICKHOUSE_USER") {
            self.clickhouse.user = v.into();
        }
        if let Some(v) = get(env, "WAYMARK_CLICKHOUSE_PASSWORD") {
            self.clickhouse.password = v.into();
        }
        if let Some(v) = get(env, "WAYMARK_SPOOL_DIR") {
            self.spool.dir = v.into();
        }
        if let Some(v) = get(env, "WAYMARK_SPOOL_MAX_BYTES") {
            self.spool.max_bytes =
                ByteSize::parse(v).map_err(|e| bad("WAYMARK_SPOOL_MAX_BYTES", e))?;
        }
        if let Some(v) = get(env, "WAYMARK_WRITER_MAX_ROWS") {
            self.writer.max_rows = v
                .parse()
                .map_err(|e| bad("WAYMARK_WRITER_MAX_ROWS", format!("{v:?}: {e}")))?;
        }
        if let Some(v) = get(env, "WAYMARK_WRITER_MAX_BYTES") {
            self.writer.max_bytes =
                ByteSize::parse(v).map_err(|e| bad("WAYMARK_WRITER_MAX_BYTES", e))?;
        }
        if let Some(v) = get(env, "WAYMARK_WRITER_MAX_AGE") {
            self.writer.max_age =
                HumanDuration::parse(v).map_err(|e| bad("WAYMARK_WRITER_MAX_AGE", e))?;
        }
        if let Some(v) = get(env, "WAYMARK_WRITER_MAX_BACKOFF") {
            self.writer.max_backoff =
                HumanDuration::parse(v).map_err(|e| bad("WAYMARK_WRITER_MAX_BACKOFF", e))?;
        }
        if let Some(v) = get(env, "WAYMARK_WRITER_MAX_ATTEMPTS") {
            self.writer.max_attempts = v
                .parse()
                .map_err(|e| bad("WAYMARK_WRITER_MAX_ATTEMPTS", format!("{v:?}: {e}")))?;
        }
        if let Some(v) = get(env, "WAYMARK_EDGE_SECRET") {
            match &mut self.edge {
                Some(edge) => edge.secret = Some(v.into()),
                None => {
                    self.edge = Some(EdgeConfig {
                        secret: Some(v.into()),
                        replay_window: default_replay_window(),
                        max_body: default_edge_max_body(),
                    })
                }
            }
        }
        Ok(())
    }

    /// Checks values that parse but make no sense.
    pub fn validate(&self) -> Result<(), ConfigError> {
        fn invalid(key: impl Into<String>, message: impl Into<String>) -> ConfigError {
            ConfigError::Invalid {
                key: key.into(),
                message: message.into(),
            }
        }
        if self.http.max_connections == 0 {
            return Err(invalid("http.max_connections", "must be at least 1"));
        }
        for (key, d) in [
            ("http.body_timeout", self.http.body_timeout.0),
            ("http.request_timeout", self.http.request_timeout.0),
        ] {
            if d.is_zero() {
                return Err(invalid(key, "must be more than 0s"));
            }
        }
        if !self.clickhouse.url.starts_with("http://")
            && !self.clickhouse.url.starts_with("https://")
        {
            return Err(invalid(
                "clickhouse.url",
                "must start with http:// or https://",
            ));
        }
        let db = &self.clickhouse.database;
        if db.is_empty() || !db.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Err(invalid(
                "clickhouse.database",
                "must be letters, digits and underscores",
            ));
        }
        if self.spool.max_bytes.0 < 64 * 1024 {
            return Err(invalid("spool.max_bytes", "must be at least 64KiB"));
        }
        if self.writer.max_rows == 0 {
            return Err(invalid("writer.max_rows", "must be at least 1"));
        }
        if self.writer.max_bytes.0 < 1024 {
            return Err(invalid("writer.max_bytes", "must be at least 1KiB"));
        }
        if self.writer.max_attempts == 0 {
            return Err(invalid("writer.max_attempts", "must be at least 1"));
        }
        if self.writer.max_backoff.0 < Duration::from_millis(1) {
            return Err(invalid("writer.max_backoff", "must be at least 1ms"));
        }
        if let Some(edge) = &self.edge {
            if edge.secret.as_deref() == Some("") {
                return Err(invalid("edge.secret", "must not be empty"));
            }
            if edge.replay_window.0.is_zero() {
                return Err(invalid("edge.replay_window", "must be positive"));
            }
        }
        let mut keys = HashMap::new();
        let mut ids = HashMap::new();
        for (i, site) in self.sites.iter().enumerate() {
            if site.id.is_empty() {
                return Err(invalid(format!("sites[{i}].id"), "must not be empty"));
            }
            if ids.insert(site.id.as_str(), i).is_some() {
                return Err(invalid(
                    format!("sites[{i}].id"),
                    format!("{:?} is used twice", site.id),
                ));
            }
            if let Some(rl) = &site.rate_limit {
                if !(rl.events_per_second.is_finite() && rl.events_per_second > 0.0) {
                    return Err(invalid(
                        format!("sites[{i}].rate_limit.events_per_second"),
                        "must be a positive number (leave rate_limit out for no limit)",
                    ));
                }
                if rl.burst == 0 {
                    return Err(invalid(
                        format!("sites[{i}].rate_limit.burst"),
                        "must be at least 1",
                    ));
                }
            }
            for (j, k) in site.write_keys.iter().enumerate() {
                if k.is_empty() {
                    return Err(invalid(
                        format!("sites[{i}].write_keys[{j}]"),
                        "must not be empty",
                    ));
                }
                if keys.insert(k.as_str(), i).is_some() {
                    return Err(invalid(
                        format!("sites[{i}].write_keys[{j}]"),
                        "the same write key is given to two sites",
                    ));
                }
            }
        }
        self.query.validate().map_err(|message| {
            // The query module's messages start with the key they name: "query.x: why".
            let (key, why) = message.split_once(": ").unwrap_or(("query", &message));
            invalid(key, why)
        })?;
        for (i, k) in self.query.read_keys.iter().enumerate() {
            for (j, site) in k.sites.iter().enumerate() {
                if !self.sites.iter().any(|s| &s.id == site) {
                    return Err(invalid(
                        format!("query.read_keys[{i}].sites[{j}]"),
                        format!("no site has the id {site:?}"),
                    ));
                }
            }
        }
        Ok(())
    }

    /// The edge secret when the edge endpoint is enabled.
    pub fn edge_secret(&self) -> Option<&str> {
        self.edge.as_ref().and_then(|e| e.secret.as_deref())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FULL: &str = r#"
listen = "127.0.0.1:0"
[clickhouse]
url = "http://127.0.0.1:8123"
database = "waymark"
user = "default"
password = ""
[spool]
dir = ".waymark/spool"
max_bytes = "1GiB"
[writer]
max_rows = 100000
max_bytes = "32MiB"
max_age = "1s"
max_backoff = "2s"
max_attempts = 4
[edge]
secret = "s3cret"
replay_window = "5m"
[[sites]]
id = "shop"
write_keys = ["wk_shop"]
allowed_origins = ["http://127.0.0.1:8000"]
ip = "truncate"
rate_limit = { events_per_second = 5000, burst = 20000 }
"#;

    #[test]
    fn parses_the_documented_file() {
        let c = Config::from_toml(FULL).unwrap();
        c.validate().unwrap();
        assert_eq!(c.spool.max_bytes, ByteSize(1 << 30));
        assert_eq!(c.writer.max_bytes, ByteSize(32 << 20));
        assert_eq!(c.writer.max_age.0, Duration::from_secs(1));
        assert_eq!(c.writer.max_backoff.0, Duration::from_secs(2));
        assert_eq!(c.writer.max_attempts, 4);
        let edge = c.edge.as_ref().unwrap();
        assert_eq!(edge.replay_window.0, Duration::from_secs(300));
        assert_eq!(c.sites[0].ip, IpMode::Truncate);
        assert_eq!(
            c.sites[0].rate_limit,
            Some(RateLimitConfig {
                events_per_second: 5000.0,
                burst: 20000
            })
        );
        assert_eq!(c.edge_secret(), Some("s3cret"));
    }

    #[test]
    fn empty_file_gives_laptop_defaults() {
        let c = Config::from_toml("").unwrap();
        c.validate().unwrap();
        assert_eq!(c.listen.to_string(), "127.0.0.1:8080");
        assert!(c.edge.is_none());
    }

    #[test]
    fn unknown_key_is_named() {
        let e = Config::from_toml("[spool]\ndir = \"x\"\nmax_byte = 3\n").unwrap_err();
        assert!(e.contains("max_byte"), "{e}");
        let e = Config::from_toml("lissten = \"x\"").unwrap_err();
        assert!(e.contains("lissten"), "{e}");
    }

    #[test]
    fn bad_values_are_named() {
        let e = Config::from_toml("[spool]\nmax_bytes = \"12 parsecs\"\n").unwrap_err();
        assert!(e.contains("max_bytes") && e.contains("parsecs"), "{e}");
        let e = Config::from_toml("[writer]\nmax_age = \"soon\"\n").unwrap_err();
        assert!(e.contains("max_age"), "{e}");
        let e = Config::from_toml("[[sites]]\nid = \"a\"\nip = \"keep\"\n").unwrap_err();
        assert!(e.contains("keep"), "{e}");
        let c = Config::from_toml(
            "[[sites]]\nid = \"a\"\nwrite_keys=[\"k\"]\n[[sites]]\nid = \"b\"\nwrite_keys=[\"k\"]\n",
        )
        .unwrap();
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("sites[1].write_keys[0]"), "{e}");
        let e = Config::from_toml(
            "[[sites]]\nid = \"a\"\nrate_limit = { events_per_second = 5, bursts = 1 }\n",
        )
        .unwrap_err();
        assert!(e.contains("bursts"), "{e}");
        let c = Config::from_toml(
            "[[sites]]\nid = \"a\"\nrate_limit = { events_per_second = 0, burst = 1 }\n",
        )
        .unwrap();
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("sites[0].rate_limit.events_per_second"), "{e}");
    }

    #[test]
    fn env_overrides_win_and_bad_ones_are_named() {
        let mut c = Config::from_toml(FULL).unwrap();
        let env: HashMap<String, String> = [
            ("WAYMARK_LISTEN", "127.0.0.1:9999"),
            ("WAYMARK_SPOOL_MAX_BYTES", "10MiB"),
            ("WAYMARK_CLICKHOUSE_DATABASE", "other"),
            ("WAYMARK_EDGE_SECRET", "fromenv"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        c.apply_env(&env).unwrap();
        assert_eq!(c.listen.port(), 9999);
        assert_eq!(c.spool.max_bytes, ByteSize(10 << 20));
        assert_eq!(c.clickhouse.database, "other");
        assert_eq!(c.edge_secret(), Some("fromenv"));

        let env: HashMap<String, String> = [(
            "WAYMARK_WRITER_MAX_AGE".to_string(),
            "3 fortnights".to_string(),
        )]
        .into();
        let e = c.apply_env(&env).unwrap_err().to_string();
        assert!(e.contains("WAYMARK_WRITER_MAX_AGE"), "{e}");
    }

    #[test]
    fn human_units() {
        assert_eq!(ByteSize::parse("64MiB").unwrap().0, 64 << 20);
        assert_eq!(ByteSize::parse("1.5KB").unwrap().0, 1500);
        assert_eq!(ByteSize::parse("512").unwrap().0, 512);
        assert!(ByteSize::parse("MiB").is_err());
        assert_eq!(
            HumanDuration::parse("250ms").unwrap().0,
            Duration::from_millis(250)
        );
        assert_eq!(
            HumanDuration::parse("5m").unwrap().0,
            Duration::from_secs(300)
        );
        assert!(HumanDuration::parse("5").is_err());
    }
}
