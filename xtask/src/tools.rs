//! Installs what the checks need, idempotently and with pinned versions.
//!
//! Compiled tools go under `$WAYMARK_CACHE` (default `$HOME/.cache/waymark`), outside the
//! repository, in a folder named after tool and version, so a second run finds them and a
//! version bump installs beside the old one. Debian packages are installed with apt-get when
//! their binary is missing; npm packages with `npm ci` when `node_modules` is older than the
//! lockfile.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{bail, Context, Result};

use crate::process::{cargo, run};

/// Must equal the `wasm-bindgen = "=..."` pin in the root Cargo.toml.
pub const WASM_BINDGEN_VERSION: &str = "0.2.130";
/// Must equal the `worker = "=..."` pin in the root Cargo.toml.
pub const WORKER_BUILD_VERSION: &str = "0.8.7";

/// chdb-core from PyPI: current ClickHouse in-process, for the parity test
/// (`ingest-server/tests/clickhouse_parity.rs`). The README names this version.
pub const CHDB_CORE_VERSION: &str = "26.9.0";

/// Debian packages and the binary each one provides.
const APT_PACKAGES: &[(&str, &str)] = &[
    ("clickhouse-server", "clickhouse-server"),
    ("clickhouse-client", "clickhouse-client"),
    ("chromium", "chromium"),
    ("chromium-driver", "chromedriver"),
    // promtool checks and unit-tests deploy/prometheus/alerts.yml.
    ("prometheus", "promtool"),
    // ZooKeeper for the cluster test's replicated tables (`waymark_testkit::cluster` runs its
    // jars from /usr/share/zookeeper; `zooinspector` is the package's one command on PATH).
    ("zookeeper", "zooinspector"),
];

/// Directories with a package-lock.json that `npm ci` installs.
pub const NPM_DIRS: &[&str] = &["xtask/npm", "js", "edge-worker", "e2e/clients"];

/// Paths to every tool the checks use.
#[derive(Debug, Clone)]
pub struct Tools {
    pub cache: PathBuf,
    pub wasm_bindgen: PathBuf,
    pub worker_build: PathBuf,
    /// `wasm-opt` from npm `binaryen` (Debian's is too old for worker-build output).
    pub wasm_opt: PathBuf,
    /// `esbuild` from npm, which worker-build calls.
    pub esbuild: PathBuf,
    pub chromium: PathBuf,
    pub chromedriver: PathBuf,
    pub node: PathBuf,
    /// The python of a virtualenv holding `e2e/clients/requirements.txt` (RudderStack's SDK).
    pub python_clients: PathBuf,
    /// Prometheus's rule checker, from Debian's `prometheus`.
    pub promtool: PathBuf,
    /// The python of a virtualenv holding chdb-core [`CHDB_CORE_VERSION`] (passed to the tests
    /// as `WAYMARK_CHDB_PYTHON`).
    pub chdb_python: PathBuf,
}

pub fn cache_dir() -> Result<PathBuf> {
    if let Ok(p) = std::env::var("WAYMARK_CACHE") {
        return Ok(PathBuf::from(p));
    }
    let home = std::env::var("HOME").context("HOME is not set; set WAYMARK_CACHE instead")?;
    Ok(PathBuf::from(home).join(".cache/waymark"))
}

pub fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

fn step(what: &str, f: impl FnOnce() -> Result<()>) -> Result<()> {
    let t = Instant::now();
    println!("    installing {what} ...");
    f().with_context(|| format!("installing {what}"))?;
    println!("    installed {what} in {:.0}s", t.elapsed().as_secs_f64());
    Ok(())
}

/// Installs everything missing and returns where each tool is.
pub fn ensure_all(root: &Path) -> Result<Tools> {
    let cache = cache_dir()?;
    std::fs::create_dir_all(&cache).with_context(|| format!("creating {}", cache.display()))?;

    ensure_apt()?;
    ensure_wasm_target()?;
    let wasm_bindgen = ensure_cargo_tool(
        &cache,
        "wasm-bindgen-cli",
        WASM_BINDGEN_VERSION,
        "wasm-bindgen",
        false,
    )?;
    let worker_build = ensure_cargo_tool(
        &cache,
        "worker-build",
        WORKER_BUILD_VERSION,
        "worker-build",
        true,
    )?;
    let node = which("node").context("node is not installed: `apt-get install -y nodejs npm`")?;
    for dir in NPM_DIRS {
        ensure_npm(&root.join(dir))?;
    }
    let python_clients = ensure_python_clients(root, &cache)?;
    let chdb_python = ensure_chdb(&cache)?;
    let bin = root.join("xtask/npm/node_modules/.bin");
    let tools = Tools {
        cache,
        wasm_bindgen,
        worker_build,
        wasm_opt: bin.join("wasm-opt"),
        esbuild: bin.join("esbuild"),
        chromium: which("chromium").context("chromium missing after install")?,
        chromedriver: which("chromedriver").context("chromedriver missing after install")?,
        node,
        python_clients,
        promtool: which("promtool")
            .context("promtool missing after install (Debian `prometheus`)")?,
        chdb_python,
    };
    for p in [&tools.wasm_opt, &tools.esbuild] {
        if !p.exists() {
            bail!("{} is missing after `npm ci` in xtask/npm", p.display());
        }
    }
    Ok(tools)
}

fn ensure_apt() -> Result<()> {
    let missing: Vec<&str> = APT_PACKAGES
        .iter()
        .filter(|(_, bin)| which(bin).is_none())
        .map(|(pkg, _)| *pkg)
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    step(&format!("Debian packages {}", missing.join(" ")), || {
        let sudo = if is_root() { None } else { which("sudo") };
        let apt = |args: &[&str]| {
            let mut c = match &sudo {
                Some(s) => {
                    let mut c = Command::new(s);
                    c.arg("apt-get");
                    c
                }
                None => Command::new("apt-get"),
            };
            c.args(args).env("DEBIAN_FRONTEND", "noninteractive");
            c
        };
        run(&mut apt(&["update", "-q"]))?;
        let mut args = vec!["install", "-y", "-q", "--no-install-recommends"];
        args.extend(&missing);
        run(&mut apt(&args))
    })
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

fn ensure_wasm_target() -> Result<()> {
    let out = Command::new("rustup")
        .args(["target", "list", "--installed"])
        .output()
        .context("rustup is needed to add the wasm32 target")?;
    if String::from_utf8_lossy(&out.stdout).contains("wasm32-unknown-unknown") {
        return Ok(());
    }
    step("rust target wasm32-unknown-unknown", || {
        run(Command::new("rustup").args(["target", "add", "wasm32-unknown-unknown"]))
    })
}

/// `cargo install <krate> --version <v> --root <cache>/tools/<krate>-<v>` unless already there.
fn ensure_cargo_tool(
    cache: &Path,
    krate: &str,
    version: &str,
    bin: &str,
    locked: bool,
) -> Result<PathBuf> {
    let root = cache.join("tools").join(format!("{krate}-{version}"));
    let path = root.join("bin").join(bin);
    if path.is_file() {
        return Ok(path);
    }
    step(
        &format!("{krate} {version} (compiles from crates.io; a few minutes, once)"),
        || {
            let mut c = cargo();
            c.args(["install", krate, "--version", version, "--root"])
                .arg(&root);
            if locked {
                c.arg("--locked");
            }
            run(&mut c)
        },
    )?;
    Ok(path)
}

/// A virtualenv with `e2e/clients/requirements.txt` installed from PyPI, under the cache;
/// made again when the requirements change (a copy of them is kept beside it). Returns its python.
fn ensure_python_clients(root: &Path, cache: &Path) -> Result<PathBuf> {
    let wanted = root.join("e2e/clients/requirements.txt");
    let reqs = std::fs::read_to_string(&wanted)
        .with_context(|| format!("reading {}", wanted.display()))?;
    let venv = cache.join("python-clients");
    let python = venv.join("bin/python");
    let stamp = venv.join("installed-requirements.txt");
    if python.exists() && std::fs::read_to_string(&stamp).ok().as_deref() == Some(&reqs) {
        return Ok(python);
    }
    let system = which("python3").context(
        "python3 is not installed: `apt-get install -y python3 python3-venv` (for RudderStack's Python SDK)",
    )?;
    step(
        "RudderStack's Python SDK (e2e/clients/requirements.txt)",
        || {
            if venv.exists() {
                std::fs::remove_dir_all(&venv)
                    .with_context(|| format!("removing {}", venv.display()))?;
            }
            run(Command::new(&system).arg("-m").arg("venv").arg(&venv))?;
            run(Command::new(&python)
                .args([
                    "-m",
                    "pip",
                    "install",
                    "--quiet",
                    "--disable-pip-version-check",
                    "-r",
                ])
                .arg(&wanted))?;
            std::fs::write(&stamp, &reqs).with_context(|| format!("writing {}", stamp.display()))
        },
    )?;
    Ok(python)
}

/// A virtualenv under the cache with chdb-core [`CHDB_CORE_VERSION`] pip-installed (about
/// 555 MB), made once per version; returns its python.
fn ensure_chdb(cache: &Path) -> Result<PathBuf> {
    let venv = cache.join(format!("chdb-core-{CHDB_CORE_VERSION}"));
    let python = venv.join("bin/python");
    let stamp = venv.join("installed");
    if python.exists() && std::fs::read_to_string(&stamp).ok().as_deref() == Some(CHDB_CORE_VERSION)
    {
        return Ok(python);
    }
    let system = which("python3").context(
        "python3 is not installed: `apt-get install -y python3 python3-venv` (for chdb-core, current ClickHouse in-process)",
    )?;
    step(
        &format!("chdb-core {CHDB_CORE_VERSION} from PyPI (about 555 MB, once)"),
        || {
            if venv.exists() {
                std::fs::remove_dir_all(&venv)
                    .with_context(|| format!("removing {}", venv.display()))?;
            }
            run(Command::new(&system).arg("-m").arg("venv").arg(&venv)).context(
                "python3 -m venv failed: install the venv module with `apt-get install -y python3-venv`",
            )?;
            run(Command::new(&python).args([
                "-m",
                "pip",
                "install",
                "--quiet",
                "--disable-pip-version-check",
                &format!("chdb-core=={CHDB_CORE_VERSION}"),
            ]))?;
            std::fs::write(&stamp, CHDB_CORE_VERSION)
                .with_context(|| format!("writing {}", stamp.display()))
        },
    )?;
    Ok(python)
}

/// `npm ci` when `node_modules` is missing or older than `package-lock.json`.
fn ensure_npm(dir: &Path) -> Result<()> {
    let lock = dir.join("package-lock.json");
    if !lock.exists() {
        return Ok(()); // that package has not been added yet
    }
    let stamp = dir.join("node_modules/.package-lock.json");
    let fresh = match (std::fs::metadata(&lock), std::fs::metadata(&stamp)) {
        (Ok(l), Ok(s)) => s.modified()? >= l.modified()?,
        _ => false,
    };
    if fresh {
        return Ok(());
    }
    step(&format!("npm packages in {}", dir.display()), || {
        run(Command::new("npm")
            .args(["ci", "--no-audit", "--no-fund"])
            .current_dir(dir))
    })
}
