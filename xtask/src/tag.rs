//! The tag: `collector-wasm` built for the browser and bundled with the `js/` loader, its size
//! budget, and the browser tests in real headless Chromium.
//!
//! Build: cargo (`tag-release` profile) -> wasm-bindgen `--target bundler` -> wasm-opt `-Oz` ->
//! esbuild bundles `js/src/waymark.js` with the wasm-bindgen glue and `js/src/imports.js` into
//! one minified ES module.
//! Output in `js/dist/`: `waymark.js`, `waymark.wasm`, `waymark.d.ts` (the npm package's files).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{bail, Context, Result};

use crate::process::{cargo, run};
use crate::tools::Tools;

/// The wasm plus every byte of JS it needs, gzipped: the budget ("Size and cost").
pub const BUDGET_GZ: usize = 12 * 1024;
/// What the build is held to: the budget itself (11.98 KB reached with wasm-bindgen, without
/// web-sys; see js/README.md, "Size").
pub const LIMIT_GZ: usize = BUDGET_GZ;

#[derive(Debug, Clone)]
pub struct TagArtifacts {
    pub js: PathBuf,
    pub wasm: PathBuf,
    pub js_gz: usize,
    pub wasm_gz: usize,
}

impl TagArtifacts {
    pub fn total_gz(&self) -> usize {
        self.js_gz + self.wasm_gz
    }
}

pub fn build(root: &Path, tools: &Tools) -> Result<TagArtifacts> {
    run(cargo().current_dir(root).args([
        "build",
        "-p",
        "waymark-collector",
        "--target",
        "wasm32-unknown-unknown",
        "--profile",
        "tag-release",
    ]))?;
    let built = crate::process::target_dir(root)
        .join("wasm32-unknown-unknown/tag-release/waymark_collector.wasm");
    let dist = root.join("js/dist");
    let pkg = dist.join("pkg");
    if pkg.exists() {
        std::fs::remove_dir_all(&pkg).with_context(|| format!("removing {}", pkg.display()))?;
    }
    run(Command::new(&tools.wasm_bindgen)
        .args([
            // `bundler`: the glue (`waymark_collector_bg.js`) exports the module's imports and
            // `__wbg_set_wasm`, and the loader instantiates the wasm itself; with `web`, the
            // glue's `initSync` and its imports object cost 43 bytes more (gzipped).
            "--target",
            "bundler",
            "--no-typescript",
            // Every browser the tag targets has TextEncoder.encodeInto (`never` is 34 bytes
            // more: a copy loop).
            "--encode-into",
            "always",
            "--out-dir",
        ])
        .arg(&pkg)
        .arg(&built))?;

    let wasm = dist.join("waymark.wasm");
    run(Command::new(&tools.wasm_opt)
        .arg(pkg.join("waymark_collector_bg.wasm"))
        .args([
            "-Oz",
            // Repeats the passes while they still shrink the module (about 40 bytes gzipped).
            "--converge",
            "--enable-bulk-memory",
            "--enable-nontrapping-float-to-int",
            "--enable-sign-ext",
            "--enable-mutable-globals",
            "--enable-reference-types",
            "--enable-multivalue",
            "--strip-debug",
            "--strip-producers",
            "--strip-target-features",
            "-o",
        ])
        .arg(&wasm))?;

    let js = dist.join("waymark.js");
    run(Command::new(&tools.esbuild)
        .arg(root.join("js/src/waymark.js"))
        .args([
            "--bundle",
            "--format=esm",
            "--minify",
            "--target=es2020",
            "--legal-comments=none",
        ])
        .arg(format!("--outfile={}", js.display())))?;
    std::fs::copy(root.join("js/src/waymark.d.ts"), dist.join("waymark.d.ts"))
        .context("copying js/src/waymark.d.ts")?;

    let art = TagArtifacts {
        js_gz: gz_len(&js)?,
        wasm_gz: gz_len(&wasm)?,
        js,
        wasm,
    };
    let kb = |n: usize| n as f64 / 1024.0;
    println!(
        "tag size (gzip -9): wasm {:.2} KB + js {:.2} KB = {:.2} KB (budget {:.0} KB; raw wasm {} B, raw js {} B)",
        kb(art.wasm_gz),
        kb(art.js_gz),
        kb(art.total_gz()),
        kb(BUDGET_GZ),
        std::fs::metadata(&art.wasm)?.len(),
        std::fs::metadata(&art.js)?.len(),
    );
    if art.total_gz() > LIMIT_GZ {
        bail!(
            "the tag is {:.2} KB gzipped, over its limit of {:.2} KB (budget {:.0} KB)",
            kb(art.total_gz()),
            kb(LIMIT_GZ),
            kb(BUDGET_GZ)
        );
    }
    Ok(art)
}

/// Gzipped size with `gzip -9`, as a CDN would serve it.
fn gz_len(path: &Path) -> Result<usize> {
    let out = Command::new("gzip")
        .args(["-9", "-c", "-n"])
        .arg(path)
        .stderr(Stdio::inherit())
        .output()
        .context("running gzip (apt-get install gzip)")?;
    if !out.status.success() {
        bail!("gzip {} failed: {}", path.display(), out.status);
    }
    Ok(out.stdout.len())
}

/// The browser tests (`js/test/*.test.mjs`, node's test runner) against the built tag.
pub fn test(root: &Path, tools: &Tools) -> Result<()> {
    let dist = root.join("js/dist");
    if !dist.join("waymark.js").exists() || !dist.join("waymark.wasm").exists() {
        build(root, tools)?;
    }
    let dir = root.join("js/test");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.to_string_lossy().ends_with(".test.mjs"))
        .collect();
    files.sort();
    if files.is_empty() {
        bail!("no browser tests in {}", dir.display());
    }
    run(Command::new(&tools.node)
        .arg("--test")
        .arg("--test-concurrency=1")
        .args(&files)
        .current_dir(root.join("js"))
        .env("WAYMARK_CHROMIUM", &tools.chromium))
}
