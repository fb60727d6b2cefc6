//! The whole Waymark stack as real processes, for the end-to-end tests in `e2e/tests/`:
//! a private ClickHouse (testkit), the `ingest-server` binary, and the demo shop whose `/wm/`
//! prefix is served by the built edge worker in workerd (`demo/server.mjs`, Miniflare).
//!
//! Prerequisites, which `cargo xtask test` builds before it runs this crate's tests: the tag
//! (`js/dist`), the edge worker (`edge-worker/build`), the `ingest-server` binary and the npm
//! packages of `js/` and `edge-worker/`. A missing one fails with the command that makes it.

use std::path::{Path, PathBuf};
use std::process::Command;

use std::time::{Duration, Instant};

use serde_json::Value;
use waymark_testkit::process::{self, Proc};
use waymark_testkit::{free_port, ClickHouse};

pub const SITE: &str = "demo";
pub const WRITE_KEY: &str = "wk_demo";
pub const READ_KEY: &str = "rk_e2e_test_key";
pub const SECRET: &str = "e2e-edge-secret";
/// The site's email signing key (`[sites.email] keys`, and the worker's `EMAIL_KEYS`).
pub const EMAIL_KEY_ID: &str = "k1";
pub const EMAIL_SECRET: &str = "e2e-email-signing-secret-0123456789";

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("e2e/ has a parent")
        .to_path_buf()
}

fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("target"))
}

/// Fails with the way to make `path` if it is missing.
pub fn require(path: &Path, how: &str) {
    assert!(path.exists(), "{} is missing: {how}", path.display());
}

/// Spawns `cmd` and waits (at most 120 s) for a stdout line containing `ready`.
pub fn spawn_until(cmd: Command, ready: &str, log: PathBuf) -> Proc {
    let name = format!("{:?}", cmd.get_program());
    process::spawn_until(&name, cmd, ready, &log, Duration::from_secs(120))
        .unwrap_or_else(|e| panic!("{e}"))
}

/// The running stack.
pub struct Stack {
    pub dir: tempfile::TempDir,
    pub ch: ClickHouse,
    pub database: String,
    pub ingest: Proc,
    pub ingest_url: String,
    pub shop: Proc,
    pub shop_url: String,
}

impl Stack {
    /// Starts everything. `cart_abandon_after` is the query API's abandonment delay.
    pub fn start(cart_abandon_after: &str) -> Stack {
        Stack::start_with(cart_abandon_after, &[])
    }

    /// [`Stack::start`], with more origins the site accepts browser requests from (besides the
    /// shop's own).
    pub fn start_with(cart_abandon_after: &str, extra_origins: &[String]) -> Stack {
        let root = repo_root();
        let ingest_bin = target_dir().join("debug/ingest-server");
        require(&ingest_bin, "build it with `cargo build -p waymark-ingest`");
        require(
            &root.join("edge-worker/build/index.js"),
            "build the worker with `cargo xtask test` (stage \"edge build\")",
        );
        require(
            &root.join("js/dist/waymark.js"),
            "build the tag with `cargo xtask test` (stage \"tag build and size\")",
        );
        require(
            &root.join("js/node_modules/playwright-core"),
            "run `npm ci` in js/ (cargo xtask test does)",
        );
        require(
            &root.join("edge-worker/node_modules/miniflare"),
            "run `npm ci` in edge-worker/ (cargo xtask test does)",
        );
        let ch = ClickHouse::start().unwrap_or_else(|e| panic!("{e}"));
        let database = ch.fresh_database().unwrap_or_else(|e| panic!("{e}"));
        let dir = tempfile::tempdir().expect("a temporary directory");
        let ingest_port = free_port();
        let shop_port = free_port();
        let config = dir.path().join("ingest.toml");
        let origins = std::iter::once(format!("http://127.0.0.1:{shop_port}"))
            .chain(extra_origins.iter().cloned())
            .map(|o| format!("{o:?}"))
            .collect::<Vec<_>>()
            .join(", ");
        std::fs::write(
            &config,
            format!(
                r#"listen = "127.0.0.1:{ingest_port}"
[clickhouse]
url = "{ch}"
database = "{database}"
[spool]
dir = "{spool}"
[writer]
max_age = "200ms"
[edge]
secret = "{SECRET}"
replay_window = "5m"
[[sites]]
id = "{SITE}"
write_keys = ["{WRITE_KEY}"]
allowed_origins = [{origins}]
ip = "truncate"
[sites.email]
base_url = "http://127.0.0.1:{shop_port}/wm"
home_url = "http://127.0.0.1:{shop_port}/"
keys = [{{ id = "{EMAIL_KEY_ID}", secret = "{EMAIL_SECRET}" }}]
max_age = "30d"
[query]
cart_abandon_after = "{cart_abandon_after}"
[[query.read_keys]]
key = "{READ_KEY}"
sites = ["{SITE}"]
"#,
                ch = ch.http_url(),
                spool = dir.path().join("spool").display(),
            ),
        )
        .expect("writing the ingest config");
        let mut cmd = Command::new(&ingest_bin);
        cmd.arg("--config").arg(&config);
        let ingest = spawn_until(cmd, "listening on", dir.path().join("ingest.log"));
        let ingest_url = format!("http://127.0.0.1:{ingest_port}");

        let mut cmd = Command::new("node");
        cmd.arg(root.join("demo/server.mjs"))
            .args(["--port", &shop_port.to_string()])
            .args(["--ingest", &ingest_url])
            .args(["--secret", SECRET, "--write-key", WRITE_KEY])
            .args([
                "--email-keys",
                &format!("{EMAIL_KEY_ID}:{EMAIL_SECRET}"),
                "--email-site",
                SITE,
                "--email-max-age",
                "30days",
            ])
            .current_dir(&root);
        let shop = spawn_until(cmd, "shop listening on", dir.path().join("shop.log"));
        Stack {
            dir,
            ch,
            database,
            ingest,
            ingest_url,
            shop,
            shop_url: format!("http://127.0.0.1:{shop_port}"),
        }
    }

    /// Runs one SQL query against this stack's database and returns the rows as text.
    pub fn sql(&self, sql: &str) -> String {
        let sql = sql.replace("{db}", &self.database);
        self.ch.query(&sql).unwrap_or_else(|e| panic!("{e}"))
    }

    /// GET on the query API with the read key; returns (status, JSON body).
    pub fn api_get(&self, path: &str) -> (u16, Value) {
        let agent = agent();
        let mut res = agent
            .get(format!("{}{path}", self.ingest_url))
            .header("authorization", format!("Bearer {READ_KEY}"))
            .call()
            .unwrap_or_else(|e| panic!("GET {path}: {e}"));
        let status = res.status().as_u16();
        let text = res.body_mut().read_to_string().unwrap_or_default();
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    /// POST JSON on the query API with the read key; returns (status, JSON body).
    pub fn api_post(&self, path: &str, body: &Value) -> (u16, Value) {
        let agent = agent();
        let mut res = agent
            .post(format!("{}{path}", self.ingest_url))
            .header("authorization", format!("Bearer {READ_KEY}"))
            .header("content-type", "application/json")
            .send(body.to_string().as_bytes())
            .unwrap_or_else(|e| panic!("POST {path}: {e}"));
        let status = res.status().as_u16();
        let text = res.body_mut().read_to_string().unwrap_or_default();
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    /// Runs a phase of `e2e/browser/shoppers.mjs` and returns what it printed (JSON).
    pub fn browser(&self, phase: &str) -> Value {
        self.browser_with(phase, &[])
    }

    /// [`Stack::browser`] with more arguments for the phase (`--link URL`, ...).
    pub fn browser_with(&self, phase: &str, extra: &[&str]) -> Value {
        let root = repo_root();
        let out = Command::new("node")
            .arg(root.join("e2e/browser/shoppers.mjs"))
            .arg(phase)
            .args(extra)
            .args(["--shop", &self.shop_url])
            .arg("--state")
            .arg(self.dir.path())
            .output()
            .expect("running node e2e/browser/shoppers.mjs");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "browser phase {phase} failed ({}):\n{stdout}\n{}\nshop log:\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr),
            self.shop.log_tail(40)
        );
        let last = stdout.lines().last().unwrap_or_default();
        serde_json::from_str(last).unwrap_or_else(|e| panic!("browser printed {last:?}: {e}"))
    }
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .timeout_global(Some(Duration::from_secs(30)))
        .http_status_as_error(false)
        .build()
        .into()
}

/// Polls `check` every 250 ms until it returns `Some`, or panics after `secs` naming `what`.
pub fn wait_for<T>(what: &str, secs: u64, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = check() {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "gave up after {secs} s waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}
