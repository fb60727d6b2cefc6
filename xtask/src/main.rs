//! Waymark's developer commands. The README names two of them:
//!
//! - `cargo xtask test`: install what is missing, then every check CI runs, one summary line per stage.
//! - `cargo xtask demo`: run the product locally.
//!
//! and `cargo xtask bench ...` prints the figures the issues ask for.

mod bench;
mod chaos;
mod demo;
mod edge;
mod fuzz;
mod stage;
mod tag;
mod tools;
mod traffic;

use anyhow::{bail, Result};

const USAGE: &str = "\
usage: cargo xtask <command>

commands:
  test [STAGE..]  install missing tools (pinned, cached outside the repo), then run fmt, clippy,
                  every Rust test, the wasm builds and size budget, the browser and worker tests,
                  the short form of `chaos`, the end-to-end and SDK client tests
  demo [--traffic N]
                  run Waymark locally: ClickHouse (data under .waymark/), the ingest server,
                  the edge worker in workerd and a demo shop; N synthetic visitors on request
  bench <name>    run a benchmark and print its figures
  chaos [--short] kill and break the stack under load (ingest server, ClickHouse, a column, a
                  full spool, a damaged spool segment, the edge queue during an ingest outage),
                  print acked / stored / lost / duplicates per scenario, then fuzz every parser;
                  `cargo xtask chaos --help` for the options
  fuzz [TARGET..] only the fuzz stage (`cargo xtask fuzz --help`)
  tag             build the tag (size budget checked) and run its browser tests
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
        Some("chaos") => chaos::run(&root, &args[1..]),
        Some("fuzz") => chaos::run_fuzz(&root, &args[1..]),
        Some("tag") => {
            // Only the tag's two stages: build + size budget, then the browser tests.
            let t = tools::ensure_all(&root)?;
            tag::build(&root, &t)?;
            tag::test(&root, &t)
        }
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
