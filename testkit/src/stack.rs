//! The whole stack as real processes: a private ClickHouse, the `ingest-server` binary on a
//! config from [`IngestConfig`], and optionally the demo shop, whose `/wm/` prefix is served by
//! the built edge worker in workerd (`demo/server.mjs`, Miniflare) forwarding to that server.
//! The end-to-end tests and `cargo xtask demo` start it; the benchmarks use its parts
//! ([`ClickHouse`], [`IngestServer`]) directly.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::config::IngestConfig;
use crate::ingest::IngestServer;
use crate::process::{spawn_until, Proc};
use crate::{ClickHouse, Error};

/// How long the shop (Miniflare starting workerd) may take to say it listens.
const SHOP_TIMEOUT: Duration = Duration::from_secs(120);

/// Where the stack keeps its files (config, spool, logs): a temporary directory or a kept one.
enum Dir {
    Temp(tempfile::TempDir),
    Kept(PathBuf),
}

/// The demo shop with the edge worker, to start after the ingest server.
struct Shop {
    node: PathBuf,
    repo: PathBuf,
    port: u16,
}

/// What to start; see [`Stack::builder`].
pub struct StackBuilder {
    ingest_binary: PathBuf,
    config: IngestConfig,
    clickhouse: Option<(ClickHouse, Option<String>)>,
    dir: Option<PathBuf>,
    shop: Option<Shop>,
    env: Vec<(String, String)>,
}

/// The running stack. Dropping it stops the shop, then the ingest server (which flushes its
/// spool), then ClickHouse.
pub struct Stack {
    /// The demo shop and edge worker, when asked for (stopped first).
    pub shop: Option<Proc>,
    /// `http://127.0.0.1:PORT` of the shop, when there is one.
    pub shop_url: Option<String>,
    /// The ingest server.
    pub ingest: IngestServer,
    /// The private ClickHouse.
    pub ch: ClickHouse,
    /// The database the ingest server writes to.
    pub database: String,
    dir: Dir,
}

impl Stack {
    /// A stack running `ingest_binary` on `config`, to which the stack adds the addresses it
    /// owns: `[clickhouse]` (url and database) and `[spool] dir`. `listen` is the config's
    /// (`127.0.0.1:0` unless set, the server printing the port it got).
    pub fn builder(ingest_binary: &Path, config: IngestConfig) -> StackBuilder {
        StackBuilder {
            ingest_binary: ingest_binary.to_path_buf(),
            config,
            clickhouse: None,
            dir: None,
            shop: None,
            env: Vec::new(),
        }
    }

    /// The directory holding the config, the spool and the logs.
    pub fn dir(&self) -> &Path {
        match &self.dir {
            Dir::Temp(t) => t.path(),
            Dir::Kept(p) => p,
        }
    }

    /// `http://ADDR` of the ingest server.
    pub fn ingest_url(&self) -> String {
        self.ingest.url()
    }
}

impl StackBuilder {
    /// Use this ClickHouse (e.g. one started on kept data) rather than a new private one, and
    /// `database` in it rather than a fresh one.
    pub fn clickhouse(mut self, ch: ClickHouse, database: Option<&str>) -> Self {
        self.clickhouse = Some((ch, database.map(str::to_string)));
        self
    }

    /// Keep the stack's files in `dir` (created if missing) rather than a temporary directory.
    pub fn dir(mut self, dir: &Path) -> Self {
        self.dir = Some(dir.to_path_buf());
        self
    }

    /// Also start the demo shop and the edge worker (`node demo/server.mjs` of the repository
    /// at `repo`) on `port`, forwarding to the ingest server, signed with the config's edge
    /// secret, with the first site's first write key.
    pub fn shop(mut self, node: &Path, repo: &Path, port: u16) -> Self {
        self.shop = Some(Shop {
            node: node.to_path_buf(),
            repo: repo.to_path_buf(),
            port,
        });
        self
    }

    /// Adds a variable to the ingest server's environment (e.g. `RUST_LOG`).
    pub fn ingest_env(mut self, key: &str, value: &str) -> Self {
        self.env.push((key.into(), value.into()));
        self
    }

    /// Starts ClickHouse (unless given), the ingest server and the shop (if asked), in that
    /// order, each once the one before answers.
    pub fn start(self) -> Result<Stack, Error> {
        let (ch, database) = match self.clickhouse {
            Some((ch, db)) => (ch, db),
            None => (ClickHouse::start()?, None),
        };
        let database = match database {
            Some(db) => db,
            None => ch.fresh_database()?,
        };
        let dir = match self.dir {
            Some(d) => {
                std::fs::create_dir_all(&d)
                    .map_err(|e| Error::Other(format!("creating {}: {e}", d.display())))?;
                Dir::Kept(d)
            }
            None => Dir::Temp(
                tempfile::Builder::new()
                    .prefix("waymark-stack-")
                    .tempdir()
                    .map_err(|e| Error::Other(format!("creating a temporary directory: {e}")))?,
            ),
        };
        let path = match &dir {
            Dir::Temp(t) => t.path().to_path_buf(),
            Dir::Kept(p) => p.clone(),
        };
        let config = self
            .config
            .clickhouse(&ch.http_url(), &database)
            .spool(&path.join("spool"));
        let env: Vec<(&str, &str)> = self
            .env
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let ingest = IngestServer::start(&self.ingest_binary, &config, &path, &env)?;
        let (shop, shop_url) = match self.shop {
            None => (None, None),
            Some(shop) => {
                let c = config.config();
                let secret = c.edge_secret().ok_or_else(|| {
                    Error::Other("the shop's edge worker needs [edge] secret in the config".into())
                })?;
                let write_key = c
                    .sites
                    .first()
                    .and_then(|s| s.write_keys.first())
                    .ok_or_else(|| {
                        Error::Other("the shop needs a site with a write key in the config".into())
                    })?;
                let mut cmd = Command::new(&shop.node);
                cmd.arg(shop.repo.join("demo/server.mjs"))
                    .args(["--port", &shop.port.to_string()])
                    .args(["--ingest", &ingest.url()])
                    .args(["--secret", secret, "--write-key", write_key])
                    .current_dir(&shop.repo);
                // The first site's email tracking, if it has any, is served by the worker too
                // (its EMAIL_* settings).
                if let Some((site, email)) = c
                    .sites
                    .first()
                    .and_then(|s| s.email.as_ref().map(|e| (s, e)))
                {
                    let keys: Vec<String> = email
                        .keys
                        .iter()
                        .map(|k| format!("{}:{}", k.id, k.secret))
                        .collect();
                    cmd.args(["--email-keys", &keys.join(",")])
                        .args(["--email-site", &site.id])
                        .args([
                            "--email-max-age",
                            &format!("{}s", email.max_age.0.as_secs()),
                        ]);
                }
                let proc = spawn_until(
                    "demo shop + edge worker",
                    cmd,
                    "shop listening on",
                    &path.join("shop.log"),
                    SHOP_TIMEOUT,
                )?;
                (Some(proc), Some(format!("http://127.0.0.1:{}", shop.port)))
            }
        };
        Ok(Stack {
            shop,
            shop_url,
            ingest,
            ch,
            database,
            dir,
        })
    }
}
