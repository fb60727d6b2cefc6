//! The whole Waymark stack as real processes, for the end-to-end tests in `e2e/tests/`: the
//! testkit's stack (a private ClickHouse, the `ingest-server` binary, and the demo shop whose
//! `/wm/` prefix is served by the built edge worker in workerd, `demo/server.mjs`), configured
//! for these tests.
//!
//! Prerequisites, which `cargo xtask test` builds before it runs this crate's tests: the tag
//! (`js/dist`), the edge worker (`edge-worker/build`), the `ingest-server` binary and the npm
//! packages of `js/` and `edge-worker/`. A missing one fails with the command that makes it.

use std::path::{Path, PathBuf};
use std::process::Command;

use std::time::{Duration, Instant};

use serde_json::Value;
use waymark_testkit::config::{site, EmailConfig, EmailKey, HumanDuration, IngestConfig};
use waymark_testkit::free_port;

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

/// Fails with the way to make `path` if it is missing.
pub fn require(path: &Path, how: &str) {
    assert!(path.exists(), "{} is missing: {how}", path.display());
}

/// The running stack: the testkit's [`waymark_testkit::Stack`] with the shop, configured for
/// the end-to-end tests.
pub struct Stack {
    pub stack: waymark_testkit::Stack,
    pub ingest_url: String,
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
        let ingest_bin = waymark_testkit::ingest::debug_binary();
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
        let shop_port = free_port();
        let shop_origin = format!("http://127.0.0.1:{shop_port}");
        let origins: Vec<&str> = std::iter::once(shop_origin.as_str())
            .chain(extra_origins.iter().map(String::as_str))
            .collect();
        let abandon = HumanDuration::parse(cart_abandon_after).unwrap_or_else(|e| panic!("{e}"));
        // The site tracks email through the worker's prefix (the worker gets the same keys).
        let mut shop_site = site(SITE, WRITE_KEY, &origins);
        shop_site.email = Some(EmailConfig {
            base_url: format!("{shop_origin}/wm"),
            home_url: format!("{shop_origin}/"),
            keys: vec![EmailKey {
                id: EMAIL_KEY_ID.into(),
                secret: EMAIL_SECRET.into(),
            }],
            max_age: HumanDuration(Duration::from_secs(30 * 86_400)),
        });
        let config = IngestConfig::new()
            .port(free_port())
            .writer_max_age(Duration::from_millis(200))
            .edge_secret(SECRET)
            .site(shop_site)
            .read_key(READ_KEY, &[SITE])
            .with(|c| c.query.cart_abandon_after = abandon);
        let stack = waymark_testkit::Stack::builder(&ingest_bin, config)
            .shop(Path::new("node"), &root, shop_port)
            .start()
            .unwrap_or_else(|e| panic!("{e}"));
        Stack {
            ingest_url: stack.ingest_url(),
            shop_url: stack
                .shop_url
                .clone()
                .expect("the stack was asked for a shop"),
            stack,
        }
    }

    /// The end of the ingest server's log, for failure messages.
    pub fn ingest_log(&self, lines: usize) -> String {
        self.stack.ingest.proc.log_tail(lines)
    }

    /// The end of the shop's (and edge worker's) log, for failure messages.
    pub fn shop_log(&self, lines: usize) -> String {
        self.stack
            .shop
            .as_ref()
            .map(|p| p.log_tail(lines))
            .unwrap_or_default()
    }

    /// Runs one SQL query against this stack's database and returns the rows as text.
    pub fn sql(&self, sql: &str) -> String {
        let sql = sql.replace("{db}", &self.stack.database);
        self.stack.ch.query(&sql).unwrap_or_else(|e| panic!("{e}"))
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
            .arg(self.stack.dir())
            .output()
            .expect("running node e2e/browser/shoppers.mjs");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "browser phase {phase} failed ({}):\n{stdout}\n{}\nshop log:\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr),
            self.shop_log(40)
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
