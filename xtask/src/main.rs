//! Waymark's developer commands. The README names two of them:
//!
//! - `cargo xtask test`: install what is missing, then every check CI runs, one summary line per stage.
//! - `cargo xtask demo`: run the product locally.
//!
//! and `cargo xtask bench ...` prints the figures the issues ask for. Every command and
//! subcommand takes `--help` (clap; each command's options are declared beside its code, in an
//! `Args` struct).
//!
//! Modules form layers, and a module imports only from layers below its own (never one that
//! imports it back):
//!
//! 1. `main` (this file): the command line, dispatching to the commands.
//! 2. The commands: `stage` (`test`), `demo`, `bench/`, `chaos/`, `fuzz/` (`fuzz`, and the fuzz
//!    stage `chaos` runs). `stage` runs `chaos`'s short form; `chaos` runs `fuzz`.
//! 3. What the commands build and run: `tag` and `edge` (build and test the two wasm
//!    deployables), `server` (build and start the ingest server), `traffic` (synthetic
//!    visitors for `demo`), `tools` (install the pinned tools).
//! 4. `process`: running a command, `cargo`, the repository's paths. It imports nothing of
//!    xtask.
//!
//! Inside a folder the same holds: `mod.rs` uses its children, and a child uses only siblings
//! below it, never an item of `mod.rs` (`chaos/`: `scenarios` -> `count` -> `stack` -> `load`,
//! with `edge` and `plan` below `scenarios`; `fuzz/`: `targets` -> `gen`; `bench/`: each
//! benchmark on its own).

mod bench;
mod chaos;
mod demo;
mod edge;
mod fuzz;
mod process;
mod server;
mod stage;
mod tag;
mod tools;
mod traffic;
mod webhook;

use anyhow::Result;
use clap::{CommandFactory, Parser, Subcommand};

/// Waymark's developer commands.
#[derive(Parser, Debug)]
#[command(
    name = "xtask",
    bin_name = "cargo xtask",
    after_help = "Environment:\n  WAYMARK_CACHE  where compiled tools are cached [default: $HOME/.cache/waymark]"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand, Debug)]
enum Command {
    Test(stage::Args),
    Demo(demo::Args),
    Bench(bench::Args),
    Chaos(chaos::Args),
    Fuzz(fuzz::Args),
    /// Build the tag (size budget checked) and run its browser tests.
    Tag,
    /// Only install the tools `test` needs, and print where each one is.
    Install,
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    let root = process::repo_root()?;
    std::env::set_current_dir(&root)?;
    let Some(command) = cli.command else {
        Cli::command().print_help()?;
        return Ok(());
    };
    match command {
        Command::Test(a) => stage::run_test(&root, &a),
        Command::Demo(a) => demo::run(&root, &a),
        Command::Bench(a) => bench::run(&root, &a),
        Command::Chaos(a) => chaos::run(&root, &a),
        Command::Fuzz(a) => fuzz::command(&root, &a),
        Command::Tag => {
            // Only the tag's two stages: build + size budget, then the browser tests.
            let t = tools::ensure_all(&root)?;
            tag::build(&root, &t)?;
            tag::test(&root, &t)
        }
        Command::Install => {
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
    }
}
