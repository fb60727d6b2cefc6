//! The one builder of ingest server configurations, for every test, benchmark, chaos run and the
//! demo (and, through `waymark-stack`, the worker's JS tests).
//!
//! It holds the server's real [`Config`] (the `waymark-ingest-config` crate), starting from the
//! server's own defaults, and writes it with [`Config::to_toml`]: a setting added to the config
//! types is in every file the builder writes, with its default, without touching this module.
//! The methods cover what the callers set today; anything else goes through [`IngestConfig::with`],
//! which hands over the typed `Config` itself.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

/// Tracking plans and critical fields (`[[sites.completeness]]`).
pub use waymark_ingest_config::plan;
pub use waymark_ingest_config::{
    ByteSize, Compression, Config, EdgeConfig, EmailConfig, EmailKey, HumanDuration, IpMode,
    QueryConfig, ReadKey, SiteConfig,
};

use crate::Error;

/// An ingest server configuration being built (see the module doc).
#[derive(Debug, Clone)]
pub struct IngestConfig {
    config: Config,
}

impl Default for IngestConfig {
    fn default() -> Self {
        Self::new()
    }
}

/// A site with one write key, accepting browser requests from `origins`; the rest of its
/// settings are the server's defaults (IP truncated, no rate limit, no email).
pub fn site(id: &str, write_key: &str, origins: &[&str]) -> SiteConfig {
    SiteConfig {
        id: id.into(),
        write_keys: vec![write_key.into()],
        allowed_origins: origins.iter().map(|o| o.to_string()).collect(),
        ..SiteConfig::default()
    }
}

impl IngestConfig {
    /// The server's defaults, listening on `127.0.0.1:0` (a port the kernel picks; the server
    /// prints it) rather than the fixed 8080.
    pub fn new() -> Self {
        IngestConfig {
            config: Config {
                listen: SocketAddr::from(([127, 0, 0, 1], 0)),
                ..Config::default()
            },
        }
    }

    /// `listen`.
    pub fn listen(mut self, addr: SocketAddr) -> Self {
        self.config.listen = addr;
        self
    }

    /// `listen = "127.0.0.1:<port>"`.
    pub fn port(self, port: u16) -> Self {
        self.listen(SocketAddr::from(([127, 0, 0, 1], port)))
    }

    /// `[clickhouse] url, database`.
    pub fn clickhouse(mut self, url: &str, database: &str) -> Self {
        self.config.clickhouse.url = url.into();
        self.config.clickhouse.database = database.into();
        self
    }

    /// `[spool] dir`.
    pub fn spool(mut self, dir: &Path) -> Self {
        self.config.spool.dir = dir.to_path_buf();
        self
    }

    /// `[spool] max_bytes`.
    pub fn spool_max(mut self, bytes: u64) -> Self {
        self.config.spool.max_bytes = ByteSize(bytes);
        self
    }

    /// `[writer] max_age`: how long rows wait in the spool before an insert (tests want short).
    pub fn writer_max_age(mut self, age: Duration) -> Self {
        self.config.writer.max_age = HumanDuration(age);
        self
    }

    /// `[edge] secret` (the rest of `[edge]` as it was, or its defaults).
    pub fn edge_secret(mut self, secret: &str) -> Self {
        self.config
            .edge
            .get_or_insert_with(EdgeConfig::default)
            .secret = Some(secret.into());
        self
    }

    /// Adds a `[[sites]]` entry (see [`site`]).
    pub fn site(mut self, site: SiteConfig) -> Self {
        self.config.sites.push(site);
        self
    }

    /// Adds a `[[query.read_keys]]` entry.
    pub fn read_key(mut self, key: &str, sites: &[&str]) -> Self {
        self.config.query.read_keys.push(ReadKey {
            key: key.into(),
            sites: sites.iter().map(|s| s.to_string()).collect(),
            subscribe: false,
        });
        self
    }

    /// Any other change, on the typed configuration itself.
    pub fn with(mut self, change: impl FnOnce(&mut Config)) -> Self {
        change(&mut self.config);
        self
    }

    /// The configuration as built so far.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The configuration, checked as the server checks it at start-up.
    pub fn build(self) -> Result<Config, Error> {
        self.config
            .validate()
            .map_err(|e| Error::Other(format!("the ingest config built by the testkit: {e}")))?;
        Ok(self.config)
    }

    /// The checked configuration as a TOML file the server reads back as the same settings.
    pub fn to_toml(&self) -> Result<String, Error> {
        Ok(self.clone().build()?.to_toml())
    }

    /// Writes the settings to `path`, without the keys left at the server's defaults (so an
    /// earlier build of the server reads it too, as long as it knows the keys that were set).
    pub fn write(&self, path: &Path) -> Result<(), Error> {
        let text = format!(
            "# Written by waymark-testkit's IngestConfig: the settings that differ from the \
             server's defaults.\n{}",
            self.clone().build()?.to_toml_minimal()
        );
        std::fs::write(path, text)
            .map_err(|e| Error::Other(format!("writing {}: {e}", path.display())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_is_built_is_what_the_server_reads() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ingest.toml");
        let built = IngestConfig::new()
            .port(4321)
            .clickhouse("http://127.0.0.1:9", "db_1")
            .spool(&dir.path().join("spool"))
            .spool_max(64 << 20)
            .writer_max_age(Duration::from_millis(200))
            .edge_secret("s")
            .site(site("shop", "wk_shop", &["*"]))
            .site(SiteConfig {
                ip: IpMode::Drop,
                ..site("blog", "wk_blog", &[])
            })
            .read_key("rk", &["shop", "blog"])
            .with(|c| c.query.cart_abandon_after = HumanDuration(Duration::from_secs(2)));
        built.write(&path).unwrap();
        let read = Config::load(&path).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(read.listen.to_string(), "127.0.0.1:4321");
        assert_eq!(read.clickhouse.database, "db_1");
        assert_eq!(read.spool.max_bytes, ByteSize(64 << 20));
        assert_eq!(read.writer.max_age.0, Duration::from_millis(200));
        assert_eq!(read.edge_secret(), Some("s"));
        assert_eq!(read.sites[1].ip, IpMode::Drop);
        assert_eq!(read.sites[0].allowed_origins, ["*"]);
        assert_eq!(read.query.read_keys[0].sites, ["shop", "blog"]);
        assert_eq!(read.query.cart_abandon_after.0, Duration::from_secs(2));
        assert_eq!(format!("{read:?}"), format!("{:?}", built.config()));
    }

    #[test]
    fn a_config_the_server_would_refuse_is_refused_naming_the_key() {
        let e = IngestConfig::new()
            .read_key("rk", &["nowhere"])
            .to_toml()
            .unwrap_err()
            .to_string();
        assert!(e.contains("query.read_keys[0].sites[0]"), "{e}");
    }
}
