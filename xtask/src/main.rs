//! Waymark's developer commands. The README names two of them:
//!
//! - `cargo xtask test`: install what is missing, then every check CI runs, one summary line per stage.
//! - `cargo xtask demo`: run the product locally.
//!
//! and `cargo xtask bench ...` prints the figures the issues ask for.

mod bench;
mod demo;
mod stage;
mod tools;

use anyhow::{bail, Result};

const USAGE: &str = "\
usage: cargo xtask <command>

commands:
  test            install missing tools (pinned, cached outside the repo), then run fmt, clippy,
                  every Rust test, the wasm builds and size budget, the browser and worker tests
  demo            run Waymark locally (ClickHouse with data under .waymark/, ...)
  bench <name>    run a benchmark and print its figures
  install         only install the tools `test` needs
  help            this text

environment:
  WAYMARK_CACHE   where compiled tools are cached (default: $HOME/.cache/waymark)
";

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let root = tools::repo_root()?;
    std::env::set_current_dir(&root)?;
    match args.first().map(String::as_str) {
        Some("test") => stage::run_test(&root, &args[1..]),
        Some("demo") => demo::run(&root, &args[1..]),
        Some("bench") => bench::run(&root, &args[1..]),
        Some("install") => {
            let t = tools::ensure_all(&root)?;
            println!("tools ready (cache {}):", t.cache.display());
            for (name, path) in [
                ("wasm-bindgen", &t.wasm_bindgen),
                ("worker-build", &t.worker_build),
                ("wasm-opt", &t.wasm_opt),
                ("esbuild", &t.esbuild),
                ("chromium", &t.chromium),
                ("chromedriver", &t.chromedriver),
                ("node", &t.node),
            ] {
                println!("  {name:<13} {}", path.display());
            }
            Ok(())
        }
        Some("help") | Some("--help") | Some("-h") | None => {
            print!("{USAGE}");
            Ok(())
        }
        Some(other) => bail!("unknown command {other:?}\n\n{USAGE}"),
    }
}
