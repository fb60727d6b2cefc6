//! The edge worker's stages: build it with worker-build (printing the deployed wasm's gzipped
//! size, held to [`BUDGET_GZ`]) and run its tests in workerd (`node --test` in `edge-worker/`).

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{bail, Context, Result};

use crate::process::{cargo, run};
use crate::tools::Tools;

/// The Cargo profile of the deployed wasm (root Cargo.toml; shared with the tag).
pub const PROFILE: &str = "wasm-release";

/// The most the deployed wasm may weigh gzipped. Cloudflare's own limit is far above it (3 MB
/// compressed on the free plan), but a worker's cold start grows with its module: this is a
/// tripwire about 15% above the 276.8 KB the worker reached with the email endpoints and URL
/// redaction, so a dependency that drags in much more fails the build and is looked at.
pub const BUDGET_GZ: u64 = 320_000;

/// What the build produced.
#[derive(Debug)]
pub struct EdgeBuild {
    pub wasm: PathBuf,
    pub wasm_bytes: u64,
    pub wasm_gz_bytes: u64,
    /// The directory whose tag files were bundled.
    pub tag_dir: PathBuf,
}

fn has_tag_files(dir: &Path) -> bool {
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten().any(|e| {
                let n = e.file_name().to_string_lossy().into_owned();
                n.ends_with(".js") || n.ends_with(".mjs") || n.ends_with(".wasm")
            })
        })
        .unwrap_or(false)
}

/// Bytes of `path` after `gzip -9`.
fn gzipped_len(path: &Path) -> Result<u64> {
    let data = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let mut child = Command::new("gzip")
        .args(["-9", "-c"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .context("running gzip (Debian package gzip)")?;
    let mut stdin = child.stdin.take().context("gzip stdin")?;
    let writer = std::thread::spawn(move || stdin.write_all(&data));
    let out = child.wait_with_output().context("waiting for gzip")?;
    writer
        .join()
        .map_err(|_| anyhow::anyhow!("gzip writer panicked"))?
        .context("writing to gzip")?;
    if !out.status.success() {
        bail!("gzip failed: {}", out.status);
    }
    Ok(out.stdout.len() as u64)
}

/// `worker-build --profile wasm-release` in `edge-worker/`, with the pinned wasm-bindgen,
/// wasm-opt and esbuild (worker-build would download them otherwise). Bundles `js/dist/`; when
/// the tag has not been built it bundles the labelled placeholder files instead and says so.
pub fn build(root: &Path, tools: &Tools) -> Result<EdgeBuild> {
    let dir = root.join("edge-worker");
    let dist = root.join("js/dist");
    let tag_dir = if has_tag_files(&dist) {
        dist
    } else {
        let p = dir.join("workerd-tests/placeholder-tag");
        println!(
            "!! {} has no tag files: bundling the PLACEHOLDER files in {} (build the tag first to serve the real one)",
            dist.display(),
            p.display()
        );
        p
    };
    run(Command::new(&tools.worker_build)
        .args(["--profile", PROFILE])
        .current_dir(&dir)
        .env("WASM_BINDGEN_BIN", &tools.wasm_bindgen)
        .env("WASM_OPT_BIN", &tools.wasm_opt)
        .env("ESBUILD_BIN", &tools.esbuild)
        .env("WAYMARK_TAG_DIST", &tag_dir))?;
    let wasm = dir.join("build/index_bg.wasm");
    // The profile keeps the name section (with `strip = true` wasm-bindgen cannot see the wasm's
    // features); drop it and the producers section from the final module instead.
    run(Command::new(&tools.wasm_opt)
        .arg(&wasm)
        .args(["--strip-debug", "--strip-producers", "-o"])
        .arg(&wasm))?;
    let wasm_bytes = std::fs::metadata(&wasm)
        .with_context(|| format!("worker-build did not write {}", wasm.display()))?
        .len();
    let wasm_gz_bytes = gzipped_len(&wasm)?;
    let built = EdgeBuild {
        wasm,
        wasm_bytes,
        wasm_gz_bytes,
        tag_dir,
    };
    println!("{}", built.summary());
    if built.wasm_gz_bytes > BUDGET_GZ {
        bail!(
            "the edge worker's wasm is {:.1} KB gzipped, over its budget of {:.1} KB (xtask/src/edge.rs BUDGET_GZ says why it exists)",
            built.wasm_gz_bytes as f64 / 1000.0,
            BUDGET_GZ as f64 / 1000.0
        );
    }
    Ok(built)
}

impl EdgeBuild {
    pub fn summary(&self) -> String {
        format!(
            "edge worker wasm: {:.1} KB, {:.1} KB gzipped (budget {:.1} KB; {}, tag files from {})",
            self.wasm_bytes as f64 / 1000.0,
            self.wasm_gz_bytes as f64 / 1000.0,
            BUDGET_GZ as f64 / 1000.0,
            self.wasm.display(),
            self.tag_dir.display()
        )
    }
}

/// The worker tests in workerd (`edge-worker/workerd-tests/*.test.mjs`). The real-ingest tests
/// need the ingest server binary and the testkit's `waymark-stack` (which starts ClickHouse and
/// the ingest server for them), built here, and ClickHouse on PATH.
pub fn test(root: &Path, tools: &Tools) -> Result<()> {
    let dir = root.join("edge-worker");
    // Two builds, not one with both packages: each alone resolves features as the other
    // commands' builds do, so neither rebuilds what they built.
    run(cargo().args(["build", "-p", "waymark-ingest", "--bin", "ingest-server"]))?;
    run(cargo().args(["build", "-p", "waymark-testkit", "--bin", "waymark-stack"]))?;
    let ingest = crate::process::target_dir(root).join("debug/ingest-server");
    let stack = crate::process::target_dir(root).join("debug/waymark-stack");
    let mut files: Vec<String> = std::fs::read_dir(dir.join("workerd-tests"))
        .context("reading edge-worker/workerd-tests")?
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".test.mjs"))
        .map(|n| format!("workerd-tests/{n}"))
        .collect();
    files.sort();
    if files.is_empty() {
        bail!("no edge-worker/workerd-tests/*.test.mjs found");
    }
    run(Command::new(&tools.node)
        .arg("--test")
        // One file at a time: each starts its own workerd (and ClickHouse), and the cores are few.
        .arg("--test-concurrency=1")
        .args(&files)
        .current_dir(&dir)
        .env("WAYMARK_INGEST_SERVER", &ingest)
        .env("WAYMARK_STACK", &stack))
}
