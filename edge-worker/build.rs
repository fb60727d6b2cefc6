//! Bundles the built tag (`js/dist/`, or the directory in `WAYMARK_TAG_DIST`) into the worker.
//!
//! Every `.js`, `.mjs`, `.wasm`, `.map` and `.json` file at the top of the directory becomes an entry of
//! `assets::FILES`, and the SHA-256 of all of them (names and bytes) gives `assets::VERSION`, the
//! version segment of the long-cached URLs. When the directory is missing the table is empty and
//! the worker answers 404 for the tag's files: `cargo xtask test` builds the tag before the worker,
//! so a deployable build always has it.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

fn content_type(name: &str) -> Option<&'static str> {
    if name.ends_with(".d.ts") {
        return None;
    }
    let ext = name.rsplit_once('.').map(|(_, e)| e)?;
    Some(match ext {
        "js" | "mjs" => "text/javascript; charset=utf-8",
        "wasm" => "application/wasm",
        "map" | "json" => "application/json; charset=utf-8",
        _ => return None,
    })
}

fn collect(dir: &Path, base: &Path, out: &mut Vec<(String, PathBuf)>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        // Top level only: what the tag's npm package publishes (`dist/pkg/` is its intermediate
        // wasm-bindgen output).
        if path.is_dir() {
            continue;
        }
        if let Ok(rel) = path.strip_prefix(base) {
            let name = rel.to_string_lossy().replace('\\', "/");
            if content_type(&name).is_some() {
                out.push((name, path));
            }
        }
    }
}

fn main() {
    let manifest = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("set by cargo"));
    let workspace = manifest
        .parent()
        .expect("edge-worker lives in the workspace")
        .to_path_buf();
    println!("cargo:rerun-if-env-changed=WAYMARK_TAG_DIST");
    println!("cargo:rerun-if-changed=build.rs");
    let dist = match std::env::var_os("WAYMARK_TAG_DIST") {
        Some(d) => {
            let d = PathBuf::from(d);
            if d.is_absolute() {
                d
            } else {
                workspace.join(d)
            }
        }
        None => workspace.join("js/dist"),
    };
    // Watch the directory when it exists; otherwise its parent, so that building the tag later
    // makes the next worker build pick it up.
    if dist.is_dir() {
        println!("cargo:rerun-if-changed={}", dist.display());
    } else if let Some(parent) = dist.parent().filter(|p| p.is_dir()) {
        println!("cargo:rerun-if-changed={}", parent.display());
    }

    let mut files = Vec::new();
    collect(&dist, &dist, &mut files);
    files.sort();

    let mut all = Sha256::new();
    let mut table = String::new();
    for (name, path) in &files {
        let bytes =
            std::fs::read(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
        all.update(name.as_bytes());
        all.update([0]);
        all.update((bytes.len() as u64).to_le_bytes());
        all.update(&bytes);
        let etag = hex::encode(&Sha256::digest(&bytes)[..8]);
        writeln!(
            table,
            "    Asset {{ name: {name:?}, content_type: {ct:?}, etag: \"\\\"{etag}\\\"\", bytes: include_bytes!({path:?}) }},",
            ct = content_type(name).expect("filtered above"),
            path = path.display().to_string(),
        )
        .expect("writing to a String");
    }
    let version = if files.is_empty() {
        "none".to_string()
    } else {
        hex::encode(&all.finalize()[..6])
    };
    let code = format!(
        "/// The content hash of the bundled tag files: the version segment of their long-cached URLs.\n\
         pub const VERSION: &str = {version:?};\n\
         /// The directory the tag files were read from at build time.\n\
         pub const SOURCE: &str = {source:?};\n\
         /// The bundled tag files (empty when the tag was not built before the worker).\n\
         pub static FILES: &[Asset] = &[\n{table}];\n",
        source = dist.display().to_string(),
    );
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("set by cargo")).join("assets.rs");
    std::fs::write(&out, code).unwrap_or_else(|e| panic!("writing {}: {e}", out.display()));
    let for_wasm = std::env::var("CARGO_CFG_TARGET_ARCH").is_ok_and(|a| a == "wasm32");
    if files.is_empty() && for_wasm {
        println!(
            "cargo:warning=no tag files in {}: the worker is built without the tag (build it first)",
            dist.display()
        );
    }
}
