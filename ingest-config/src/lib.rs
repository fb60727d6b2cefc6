//! The ingest server's configuration: one TOML file, typed, with defaults that run on a laptop
//! and environment overrides. Sizes and durations are written in human units (`"64MiB"`, `"5s"`).
//! An unknown key or a bad value is an error that names it.
//!
//! Its own crate, at the bottom of the graph (it uses only the protocol crate), so that the
//! ingest server (`waymark_ingest::config` is this crate) and the test stack (`waymark-testkit`,
//! which the server's tests use) both build on these types without depending on each other.
//! Every type is `Serialize` too: [`Config::to_toml`] writes a file that [`Config::from_toml`]
//! reads back as the same settings, which is how the test stack writes the configs it starts
//! servers with.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
pub use waymark_protocol::edge::IpMode;
pub use waymark_protocol::privacy::GpcMode;
use waymark_protocol::privacy::UrlPolicy;

mod env;
mod help;
pub mod identity;
pub mod plan;
mod query;
mod triggers;
mod units;

pub use help::SETTINGS_HELP;
pub use query::{EngagementConfig, QueryConfig, ReadKey, RfmConfig};
pub use triggers::TriggersConfig;
pub use units::{ByteSize, HumanDuration};

/// The whole configuration.
#[derive(Debug, Clone, Serialize, Deserialize)]
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
    /// The query API (read keys, cart and engagement settings): see `QueryConfig`.
    #[serde(default)]
    pub query: QueryConfig,
    /// Audience subscriptions pushed to webhooks: see `TriggersConfig`.
    #[serde(default)]
    pub triggers: TriggersConfig,
    /// Deletion, export and retention (`[privacy]`): see `PrivacyConfig`.
    #[serde(default)]
    pub privacy: PrivacyConfig,
    /// The data quality report and its counters (`[quality]`): see `QualityConfig`.
    #[serde(default)]
    pub quality: QualityConfig,
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
            query: QueryConfig::default(),
            triggers: TriggersConfig::default(),
            privacy: PrivacyConfig::default(),
            quality: QualityConfig::default(),
        }
    }
}

/// `[quality]`: the data quality report (`GET /v1/quality`, `GET /quality`) and the per site
/// and hour counters behind it.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct QualityConfig {
    /// An event name's volume in an hour is an anomaly when it is more than this many times,
    /// or less than 1/this of, the same hour's average over the last 7 days.
    pub anomaly_factor: f64,
    /// Hours the same-hour average must average at least this many events for the hour to be
    /// judged (a rare event's 0 or 3 is noise, not an anomaly).
    pub anomaly_min_events: u64,
    /// How often this server's per site and hour counters (rejects by reason, duplicates
    /// dropped) are added to ClickHouse's `quality_hourly`; at most this much is lost on a crash.
    pub flush: HumanDuration,
    /// How often the report is computed for every site to refresh its Prometheus gauges
    /// (`waymark_quality_volume_anomalies` ...); "0s" = never (the gauges stay unset).
    pub check_interval: HumanDuration,
}

impl Default for QualityConfig {
    fn default() -> Self {
        QualityConfig {
            anomaly_factor: 2.0,
            anomaly_min_events: 20,
            flush: HumanDuration(Duration::from_secs(10)),
            check_interval: HumanDuration(Duration::from_secs(300)),
        }
    }
}

/// `[privacy]`: who may delete and export a person, how long a deleted person's late events
/// are dropped, how often retention runs.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PrivacyConfig {
    /// `[[privacy.admin_keys]] name = "dpo", key = "...", sites = ["shop"]`: the only keys
    /// that may delete or export a person (read keys and write keys cannot).
    pub admin_keys: Vec<AdminKey>,
    /// How long the ids of a deleted person stay on the suppression list: their events still in
    /// a spool, the edge queue or a browser's retry queue are dropped meanwhile.
    pub suppress_for: HumanDuration,
    /// How often the retention check runs (sites with `retention`).
    pub retention_check: HumanDuration,
}

impl Default for PrivacyConfig {
    fn default() -> Self {
        PrivacyConfig {
            admin_keys: Vec::new(),
            suppress_for: HumanDuration(Duration::from_secs(30 * 86_400)),
            retention_check: HumanDuration(Duration::from_secs(86_400)),
        }
    }
}

/// An admin key: deletes and exports people of its sites.
#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminKey {
    /// Who holds it, written to the deletion audit (never the key).
    pub name: String,
    pub key: String,
    pub sites: Vec<String>,
}

impl std::fmt::Debug for AdminKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminKey")
            .field("name", &self.name)
            .field("key", &"<redacted>")
            .field("sites", &self.sites)
            .finish()
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClickHouseConfig {
    pub url: String,
    pub database: String,
    pub user: String,
    pub password: String,
    /// A cluster named in ClickHouse's `remote_servers` (absent = one server): the migrations
    /// run `ON CLUSTER` and create replicated local tables plus `Distributed` tables over them
    /// (`waymark_ingest::store::schema::cluster`).
    pub cluster: Option<String>,
    /// How requests and answers travel between the server and ClickHouse.
    pub compression: Compression,
}

/// `[clickhouse] compression`: the `clickhouse` crate's compression of inserts (and answers).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Compression {
    /// LZ4 blocks, ClickHouse's own: fewer bytes on the network, CPU on both ends.
    #[default]
    Lz4,
    /// As they are: for a ClickHouse on the same host or a fast network, where the bytes LZ4
    /// saves matter little (it was 4-5 % of the server's CPU in a profile under load in
    /// `cargo xtask bench ingest`; end to end, two runs each way showed no difference beyond
    /// the machine's noise).
    None,
}

impl Compression {
    /// Reads the setting's TOML spelling (`lz4`, `none`).
    pub fn parse(s: &str) -> Result<Self, String> {
        match s {
            "lz4" => Ok(Compression::Lz4),
            "none" => Ok(Compression::None),
            _ => Err(format!("{s:?}: must be \"lz4\" or \"none\"")),
        }
    }
}

impl Default for ClickHouseConfig {
    fn default() -> Self {
        ClickHouseConfig {
            url: "http://127.0.0.1:8123".into(),
            database: "waymark".into(),
            user: "default".into(),
            password: String::new(),
            cluster: None,
            compression: Compression::default(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
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

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WriterConfig {
    pub max_rows: usize,
    pub max_bytes: ByteSize,
    pub max_age: HumanDuration,
    /// `max_age` for a batch of imported rows only (`POST /v1/import`, `ingest-server
    /// import`): history needs no one-second freshness, and an import cut into one-second
    /// inserts costs ClickHouse five times the CPU per row (each insert spans every month the
    /// import covers). Such a batch also goes once the spool has been quiet for half a second.
    pub import_max_age: HumanDuration,
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
            import_max_age: HumanDuration(Duration::from_secs(10)),
            max_backoff: HumanDuration(Duration::from_secs(5)),
            max_attempts: 3,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EdgeConfig {
    #[serde(default)]
    pub secret: Option<String>,
    #[serde(default = "default_replay_window")]
    pub replay_window: HumanDuration,
    #[serde(default = "default_edge_max_body")]
    pub max_body: ByteSize,
}

impl Default for EdgeConfig {
    /// The `[edge]` section with no secret of its own (one may come from the environment).
    fn default() -> Self {
        EdgeConfig {
            secret: None,
            replay_window: default_replay_window(),
            max_body: default_edge_max_body(),
        }
    }
}

fn default_replay_window() -> HumanDuration {
    HumanDuration(Duration::from_secs(300))
}

fn default_edge_max_body() -> ByteSize {
    ByteSize(8 << 20)
}

#[derive(Debug, Clone, Serialize, Deserialize)]
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
#[derive(Debug, Clone, Serialize, Deserialize)]
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

/// A site; `Default` is one with an empty id and every optional setting off, to fill in with
/// `SiteConfig { id, ..Default::default() }`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
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
    /// Absent = unlimited (see `crate::intake::ratelimit` for why that is the default).
    #[serde(default)]
    pub rate_limit: Option<RateLimitConfig>,
    /// Secret keys the email platform uses for `POST /v1/email/links` and `/v1/email/rewrite`
    /// (`Authorization: Bearer <key>`); never the public write key.
    #[serde(default)]
    pub send_keys: Vec<String>,
    /// Tracked email links and open pixels (`[sites.email]`); absent = off for this site.
    #[serde(default)]
    pub email: Option<EmailConfig>,
    /// A tracking plan file (JSON, see [`plan`]); a relative path is relative to the config
    /// file's directory. Absent = events are not checked against a plan.
    #[serde(default)]
    pub tracking_plan: Option<PathBuf>,
    /// The plan `tracking_plan` names, read by [`Config::load`] (or [`Config::read_plans`]).
    #[serde(skip)]
    pub plan: Option<plan::TrackingPlan>,
    /// Critical fields and the share of events that must carry them (`[[sites.completeness]]`).
    #[serde(default)]
    pub completeness: Vec<plan::Completeness>,
    /// Query parameters whose values stored URLs keep besides `utm_*`, `gclid` and `fbclid`
    /// (product and category parameters; `*` at the end matches a prefix); every other value
    /// becomes `REDACTED` (see `waymark_protocol::privacy`).
    #[serde(default)]
    pub allowed_query_params: Vec<String>,
    /// What `Sec-GPC: 1` on a direct request (`/v1/batch`, `/v1/track`...) does, as the edge
    /// worker's `GPC_MODE` does for the tag's requests.
    #[serde(default)]
    pub gpc: GpcMode,
    /// How long the site's events are kept (`"400d"`); absent = kept until deleted. See
    /// `crate::privacy::retention`.
    #[serde(default)]
    pub retention: Option<HumanDuration>,
    /// Identifiers and merging (`[sites.identity]`): by default user ids and normalised emails
    /// merge people.
    #[serde(default)]
    pub identity: identity::IdentityConfig,
}

impl SiteConfig {
    /// The site's URL allow-list.
    pub fn url_policy(&self) -> UrlPolicy<'_> {
        UrlPolicy {
            extra: &self.allowed_query_params,
        }
    }
}

/// A site's email engagement settings (`[sites.email]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EmailConfig {
    /// The public, first-party base URL the tracking paths (`/e/o/..`, `/e/c/..`) are served
    /// under: the edge worker's prefix on the site's domain (`https://shop.example.com/wm`), or
    /// this server's public URL.
    pub base_url: String,
    /// Where a click with a token that fails verification or has expired goes (never to the
    /// target the token claims).
    pub home_url: String,
    /// Signing keys, `{ id = "k2", secret = "..." }`, newest first: the first signs new tokens,
    /// all of them verify (rotation: add a new key in front, drop the old one after `max_age`).
    pub keys: Vec<EmailKey>,
    /// How long a tracked link or pixel stays valid.
    #[serde(default = "EmailConfig::default_max_age")]
    pub max_age: HumanDuration,
}

impl EmailConfig {
    fn default_max_age() -> HumanDuration {
        HumanDuration(Duration::from_secs(400 * 86_400))
    }

    /// The keys as the protocol crate takes them.
    pub fn signing_keys(&self) -> Vec<waymark_protocol::email::SigningKey> {
        self.keys
            .iter()
            .map(|k| waymark_protocol::email::SigningKey {
                id: k.id.clone(),
                secret: k.secret.as_bytes().to_vec(),
            })
            .collect()
    }
}

/// One signing key of `[sites.email]`.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EmailKey {
    pub id: String,
    pub secret: String,
}

impl std::fmt::Debug for EmailKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmailKey")
            .field("id", &self.id)
            .field("secret", &"<redacted>")
            .finish()
    }
}

/// A site's token bucket: `burst` events at once, refilled at `events_per_second`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimitConfig {
    pub events_per_second: f64,
    pub burst: u64,
    /// The ingest servers the site's traffic is spread over (default 1). The limit is the
    /// site's across all of them, split evenly: each server's bucket refills at
    /// `events_per_second / servers` and holds `burst / servers` (at least 1). Servers share no
    /// state, so this is exact when the load balancer spreads requests evenly, and a site
    /// whose requests all land on one server gets that server's share.
    #[serde(default = "one_server")]
    pub servers: u32,
}

fn one_server() -> u32 {
    1
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
        cfg.read_plans(path.parent())?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Reads every site's `tracking_plan` file (relative paths from `config_dir`).
    pub fn read_plans(&mut self, config_dir: Option<&Path>) -> Result<(), ConfigError> {
        for (i, site) in self.sites.iter_mut().enumerate() {
            if let Some(file) = &site.tracking_plan {
                let plan = plan::TrackingPlan::read(&plan::resolve(config_dir, file)).map_err(
                    |message| ConfigError::Invalid {
                        key: format!("sites[{i}].tracking_plan"),
                        message,
                    },
                )?;
                site.plan = Some(plan);
            }
        }
        Ok(())
    }

    /// Parses TOML text (no environment, no validation).
    pub fn from_toml(text: &str) -> Result<Self, String> {
        toml::from_str(text).map_err(|e| e.to_string())
    }

    /// The settings as TOML that [`Self::from_toml`] reads back as the same settings (sizes in
    /// bytes, durations in `humantime`'s words); what the test stack writes for the servers it
    /// starts.
    pub fn to_toml(&self) -> String {
        toml::to_string(self).expect("every setting has a TOML form")
    }

    /// [`Self::to_toml`] without the keys whose absence reads back as the same settings (the
    /// defaults): the shortest file with these settings, which an earlier build of the server
    /// also reads as long as it knows the keys that differ from the defaults (so a benchmark
    /// can compare two builds on one config).
    pub fn to_toml_minimal(&self) -> String {
        use toml::{Table, Value};
        let full = self.to_toml();
        let same = |t: &Table| {
            toml::to_string(t)
                .ok()
                .and_then(|text| Self::from_toml(&text).ok())
                .is_some_and(|c| c.to_toml() == full)
        };
        // A key's place: table keys, with an index into arrays of tables.
        #[derive(Clone)]
        enum Seg {
            Key(String),
            Index(usize),
        }
        fn places(v: &Value, at: &mut Vec<Seg>, out: &mut Vec<Vec<Seg>>) {
            match v {
                Value::Table(t) => {
                    for (k, v) in t {
                        at.push(Seg::Key(k.clone()));
                        places(v, at, out);
                        out.push(at.clone());
                        at.pop();
                    }
                }
                Value::Array(a) if a.iter().all(Value::is_table) => {
                    for (i, v) in a.iter().enumerate() {
                        at.push(Seg::Index(i));
                        places(v, at, out);
                        at.pop();
                    }
                }
                _ => {}
            }
        }
        fn remove(v: &mut Value, path: &[Seg]) -> bool {
            match (path, v) {
                ([Seg::Key(k)], Value::Table(t)) => t.remove(k).is_some(),
                ([Seg::Key(k), rest @ ..], Value::Table(t)) => {
                    t.get_mut(k).is_some_and(|v| remove(v, rest))
                }
                ([Seg::Index(i), rest @ ..], Value::Array(a)) => {
                    a.get_mut(*i).is_some_and(|v| remove(v, rest))
                }
                _ => false,
            }
        }
        let mut doc = Value::Table(toml::from_str(&full).expect("its own TOML parses"));
        let mut all = Vec::new();
        places(&doc, &mut Vec::new(), &mut all);
        // Leaves come before the tables holding them: a table left empty goes last.
        for path in all {
            let mut candidate = doc.clone();
            if remove(&mut candidate, &path) {
                if let Value::Table(t) = &candidate {
                    if same(t) {
                        doc = candidate;
                    }
                }
            }
        }
        toml::to_string(&doc).expect("a TOML table")
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
        if let Some(cluster) = &self.clickhouse.cluster {
            // It is written into DDL (`ON CLUSTER name`, `Distributed(name, ...)`) unquoted.
            if cluster.is_empty()
                || !cluster
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_')
                || cluster.starts_with(|c: char| c.is_ascii_digit())
            {
                return Err(invalid(
                    "clickhouse.cluster",
                    "must be letters, digits and underscores, not starting with a digit (a cluster of remote_servers)",
                ));
            }
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
                if rl.servers == 0 {
                    return Err(invalid(
                        format!("sites[{i}].rate_limit.servers"),
                        "must be at least 1 (the ingest servers sharing the site's limit)",
                    ));
                }
                if rl.burst == 0 {
                    return Err(invalid(
                        format!("sites[{i}].rate_limit.burst"),
                        "must be at least 1",
                    ));
                }
            }
            if let Some(r) = &site.identity.phone_region {
                if r.len() != 2 || !r.bytes().all(|b| b.is_ascii_uppercase()) {
                    return Err(invalid(
                        format!("sites[{i}].identity.phone_region"),
                        format!("{r:?} is not a two-letter region code such as \"DE\""),
                    ));
                }
            }
            for (j, p) in site.allowed_query_params.iter().enumerate() {
                waymark_protocol::privacy::check_param_pattern(p).map_err(|why| {
                    invalid(
                        format!("sites[{i}].allowed_query_params[{j}]"),
                        format!("{p:?} {why}"),
                    )
                })?;
            }
            for (j, k) in site.send_keys.iter().enumerate() {
                if k.len() < 16 {
                    return Err(invalid(
                        format!("sites[{i}].send_keys[{j}]"),
                        "must be at least 16 characters (it is a secret)",
                    ));
                }
                if site.write_keys.contains(k) {
                    return Err(invalid(
                        format!("sites[{i}].send_keys[{j}]"),
                        "must not be one of the site's public write keys",
                    ));
                }
            }
            if let Some(p) = &site.plan {
                for (at, schema) in p.schemas() {
                    plan::compile(schema).map_err(|e| {
                        invalid(
                            format!("sites[{i}].tracking_plan"),
                            format!("{at}: not a usable JSON Schema: {e}"),
                        )
                    })?;
                }
            }
            for (j, c) in site.completeness.iter().enumerate() {
                let key = |k: &str| format!("sites[{i}].completeness[{j}].{k}");
                if c.event.is_empty() {
                    return Err(invalid(key("event"), "must not be empty"));
                }
                let rest = ["properties.", "traits.", "context."]
                    .iter()
                    .find_map(|p| c.field.strip_prefix(p));
                if rest.is_none_or(|r| r.is_empty() || r.split('.').any(str::is_empty)) {
                    return Err(invalid(
                        key("field"),
                        format!(
                            "{:?} must be a dotted path under properties., traits. or context.",
                            c.field
                        ),
                    ));
                }
                if !(0.0..=1.0).contains(&c.min) {
                    return Err(invalid(key("min"), "must be a share from 0 to 1"));
                }
            }
            if !site.send_keys.is_empty() && site.email.is_none() {
                return Err(invalid(
                    format!("sites[{i}].send_keys"),
                    "needs a [sites.email] section (base_url, home_url, keys)",
                ));
            }
            if let Some(e) = &site.email {
                let key = |k: &str| format!("sites[{i}].email.{k}");
                if !waymark_protocol::email::token::valid_target(&e.base_url) {
                    return Err(invalid(key("base_url"), "must be an absolute http(s) URL"));
                }
                if !waymark_protocol::email::token::valid_target(&e.home_url) {
                    return Err(invalid(key("home_url"), "must be an absolute http(s) URL"));
                }
                if e.keys.is_empty() {
                    return Err(invalid(key("keys"), "needs at least one { id, secret }"));
                }
                for (j, k) in e.keys.iter().enumerate() {
                    if k.id.is_empty() || k.id.len() > 32 {
                        return Err(invalid(
                            key(&format!("keys[{j}].id")),
                            "must be 1 to 32 characters",
                        ));
                    }
                    if k.secret.len() < 32 {
                        return Err(invalid(
                            key(&format!("keys[{j}].secret")),
                            "must be at least 32 characters (a random secret)",
                        ));
                    }
                    if e.keys[..j].iter().any(|o| o.id == k.id) {
                        return Err(invalid(
                            key(&format!("keys[{j}].id")),
                            format!("{:?} is used twice", k.id),
                        ));
                    }
                }
                if e.max_age.0.is_zero() {
                    return Err(invalid(key("max_age"), "must be positive"));
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
        self.triggers.validate().map_err(|message| {
            let (key, why) = message.split_once(": ").unwrap_or(("triggers", &message));
            invalid(key, why)
        })?;
        for (i, k) in self.privacy.admin_keys.iter().enumerate() {
            let key = |f: &str| format!("privacy.admin_keys[{i}].{f}");
            if k.name.is_empty() {
                return Err(invalid(
                    key("name"),
                    "must not be empty (it names the holder in the audit)",
                ));
            }
            if k.key.len() < 16 {
                return Err(invalid(
                    key("key"),
                    "must be at least 16 characters (it is a secret)",
                ));
            }
            if self.privacy.admin_keys[..i].iter().any(|o| o.key == k.key)
                || self.query.read_keys.iter().any(|r| r.key == k.key)
                || self
                    .sites
                    .iter()
                    .any(|s| s.write_keys.contains(&k.key) || s.send_keys.contains(&k.key))
            {
                return Err(invalid(
                    key("key"),
                    "must not be any other key (admin keys have their own scope)",
                ));
            }
            if k.sites.is_empty() {
                return Err(invalid(key("sites"), "must list at least one site"));
            }
            for (j, site) in k.sites.iter().enumerate() {
                if !self.sites.iter().any(|s| &s.id == site) {
                    return Err(invalid(
                        format!("privacy.admin_keys[{i}].sites[{j}]"),
                        format!("no site has the id {site:?}"),
                    ));
                }
            }
        }
        if self.privacy.suppress_for.0.is_zero() {
            return Err(invalid("privacy.suppress_for", "must be positive"));
        }
        if !(self.quality.anomaly_factor > 1.0 && self.quality.anomaly_factor.is_finite()) {
            return Err(invalid(
                "quality.anomaly_factor",
                "must be a number above 1 (2 = half or twice the usual volume)",
            ));
        }
        if self.quality.flush.0 < Duration::from_millis(100) {
            return Err(invalid("quality.flush", "must be at least 100ms"));
        }
        if self.privacy.retention_check.0 < Duration::from_secs(1) {
            return Err(invalid("privacy.retention_check", "must be at least 1s"));
        }
        for (i, site) in self.sites.iter().enumerate() {
            if let Some(r) = site.retention {
                if r.0 < Duration::from_secs(86_400) {
                    return Err(invalid(
                        format!("sites[{i}].retention"),
                        "must be at least 1d",
                    ));
                }
            }
        }
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
compression = "none"
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
allowed_query_params = ["sku", "cat_*"]
gpc = "drop-events"
retention = "400d"
[privacy]
suppress_for = "7d"
[[privacy.admin_keys]]
name = "dpo"
key = "ak_shop_0123456789"
sites = ["shop"]
[quality]
anomaly_factor = 3.0
flush = "2s"
"#;

    #[test]
    fn parses_the_documented_file() {
        let c = Config::from_toml(FULL).unwrap();
        c.validate().unwrap();
        assert_eq!(c.spool.max_bytes, ByteSize(1 << 30));
        assert_eq!(c.clickhouse.compression, Compression::None);
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
                burst: 20000,
                servers: 1
            })
        );
        assert_eq!(c.edge_secret(), Some("s3cret"));
        assert_eq!(c.sites[0].allowed_query_params, ["sku", "cat_*"]);
        assert_eq!(c.sites[0].gpc, GpcMode::DropEvents);
        assert!(c.sites[0].url_policy().allows("cat_id"));
        assert_eq!(
            c.sites[0].retention.unwrap().0,
            Duration::from_secs(400 * 86_400)
        );
        assert_eq!(c.privacy.suppress_for.0, Duration::from_secs(7 * 86_400));
        assert_eq!(c.privacy.admin_keys[0].sites, ["shop"]);
        assert_eq!(c.quality.anomaly_factor, 3.0);
        assert_eq!(c.quality.flush.0, Duration::from_secs(2));
        assert_eq!(c.quality.check_interval.0, Duration::from_secs(300));
        let mut bad = c.clone();
        bad.quality.anomaly_factor = 1.0;
        let e = bad.validate().unwrap_err().to_string();
        assert!(e.contains("quality.anomaly_factor"), "{e}");
    }

    #[test]
    fn a_cluster_is_named_like_an_identifier() {
        let with = |cluster: &str| {
            Config::from_toml(&format!("[clickhouse]\ncluster = {cluster:?}\n")).unwrap()
        };
        let c = with("waymark_2x2");
        assert_eq!(c.clickhouse.cluster.as_deref(), Some("waymark_2x2"));
        c.validate().unwrap();
        assert_eq!(Config::default().clickhouse.cluster, None);
        for bad in ["", "two words", "2x2", "c); DROP"] {
            let e = with(bad).validate().unwrap_err().to_string();
            assert!(e.contains("clickhouse.cluster"), "{bad:?}: {e}");
        }
    }

    #[test]
    fn written_toml_reads_back_as_the_same_settings() {
        let mut c = Config::from_toml(FULL).unwrap();
        c.sites[0].send_keys = vec!["sk_0123456789abcdef".into()];
        c.sites[0].email = Some(EmailConfig {
            base_url: "https://shop.example/wm".into(),
            home_url: "https://shop.example/".into(),
            keys: vec![EmailKey {
                id: "k1".into(),
                secret: "a-signing-secret-of-32-bytes-or-more".into(),
            }],
            max_age: HumanDuration(Duration::from_millis(90_061_250)),
        });
        c.sites.push(SiteConfig {
            id: "blog".into(),
            ip: IpMode::Drop,
            ..SiteConfig::default()
        });
        c.query.read_keys.push(ReadKey {
            key: "rk".into(),
            sites: vec!["shop".into(), "blog".into()],
            subscribe: true,
        });
        c.query.cache_ttl = HumanDuration(Duration::ZERO);
        c.clickhouse.cluster = Some("waymark".into());
        c.validate().unwrap();
        let text = c.to_toml();
        let back = Config::from_toml(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
        back.validate().unwrap();
        assert_eq!(back.to_toml(), text);
        assert_eq!(format!("{back:?}"), format!("{c:?}"));
        // The defaults too: an empty file written out and read back is the same.
        let d = Config::default();
        assert_eq!(
            format!("{:?}", Config::from_toml(&d.to_toml()).unwrap()),
            format!("{d:?}")
        );
    }

    #[test]
    fn the_minimal_form_keeps_only_what_differs_from_the_defaults() {
        let mut c = Config::from_toml("[[sites]]\nid = \"shop\"\nwrite_keys = [\"wk\"]\n").unwrap();
        c.query.cache_ttl = HumanDuration(Duration::ZERO);
        c.sites[0].ip = IpMode::Drop;
        let min = c.to_toml_minimal();
        let back = Config::from_toml(&min).unwrap_or_else(|e| panic!("{e}\n{min}"));
        assert_eq!(back.to_toml(), c.to_toml(), "{min}");
        let keys: Vec<&str> = min.lines().filter(|l| !l.trim().is_empty()).collect();
        assert_eq!(
            keys,
            [
                "[query]",
                "cache_ttl = \"0s\"",
                "[[sites]]",
                "id = \"shop\"",
                "ip = \"drop\"",
                "write_keys = [\"wk\"]",
            ],
        );
        assert!(Config::default().to_toml_minimal().trim().is_empty());
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
        let c =
            Config::from_toml("[[sites]]\nid = \"a\"\nallowed_query_params = [\"*\"]\n").unwrap();
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("sites[0].allowed_query_params[0]"), "{e}");
        let c = Config::from_toml(
            "[[sites]]\nid = \"a\"\n[[privacy.admin_keys]]\nname = \"x\"\nkey = \"0123456789abcdef\"\nsites = [\"b\"]\n",
        )
        .unwrap();
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("privacy.admin_keys[0].sites[0]"), "{e}");
        let e = Config::from_toml("[[sites]]\nid = \"a\"\ngpc = \"ignore\"\n").unwrap_err();
        assert!(e.contains("ignore"), "{e}");
    }

    #[test]
    fn env_overrides_win_and_bad_ones_are_named() {
        let mut c = Config::from_toml(FULL).unwrap();
        let env: HashMap<String, String> = [
            ("WAYMARK_LISTEN", "127.0.0.1:9999"),
            ("WAYMARK_SPOOL_MAX_BYTES", "10MiB"),
            ("WAYMARK_CLICKHOUSE_DATABASE", "other"),
            ("WAYMARK_CLICKHOUSE_CLUSTER", "waymark"),
            ("WAYMARK_CLICKHOUSE_COMPRESSION", "lz4"),
            ("WAYMARK_EDGE_SECRET", "fromenv"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        c.apply_env(&env).unwrap();
        assert_eq!(c.listen.port(), 9999);
        assert_eq!(c.spool.max_bytes, ByteSize(10 << 20));
        assert_eq!(c.clickhouse.database, "other");
        assert_eq!(c.clickhouse.cluster.as_deref(), Some("waymark"));
        assert_eq!(c.clickhouse.compression, Compression::Lz4);
        assert_eq!(c.edge_secret(), Some("fromenv"));

        let env: HashMap<String, String> = [(
            "WAYMARK_CLICKHOUSE_COMPRESSION".to_string(),
            "zstd".to_string(),
        )]
        .into();
        let e = c.apply_env(&env).unwrap_err().to_string();
        assert!(
            e.contains("WAYMARK_CLICKHOUSE_COMPRESSION") && e.contains("\"lz4\" or \"none\""),
            "{e}"
        );
        let e = Config::from_toml("[clickhouse]\ncompression = \"zstd\"\n").unwrap_err();
        assert!(e.contains("compression") && e.contains("lz4"), "{e}");

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
