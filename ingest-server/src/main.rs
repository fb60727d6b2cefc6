//! `ingest-server --config FILE`: see `--help` for every setting;
//! `ingest-server quarantine replay`: see `ingest-server quarantine replay --help`;
//! `ingest-server import`: see `ingest-server import --help` and `import_cli.rs`.

mod import_cli;

use std::io::Write as _;
use std::path::PathBuf;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use waymark_ingest::config::{Config, HumanDuration, SETTINGS_HELP};
use waymark_ingest::store::replay::{replay, Filter};

/// mimalloc instead of glibc malloc: intake allocates many small, short-lived strings and maps
/// per event, and glibc's allocator took about a quarter of the server's CPU under load.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// The Waymark ingest server: durable, Segment-compatible event intake into ClickHouse.
#[derive(Parser)]
#[command(name = "ingest-server", version, after_long_help = SETTINGS_HELP, after_help = SETTINGS_HELP)]
struct Args {
    /// The TOML configuration file. Without it, the defaults (plus environment overrides) that
    /// `ingest-server --help` lists.
    #[arg(long, value_name = "FILE", global = true)]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Cmd>,
}

#[derive(Subcommand)]
enum Cmd {
    /// Import a CRM or shop export (CSV or NDJSON) into a running server through
    /// `POST /v1/import`: customers, orders or events, with a column mapping, a progress bar
    /// and a summary. Idempotent (message ids from each row's key) and resumable (a
    /// `FILE.import-state` file records the last acknowledged line).
    Import(import_cli::ImportArgs),
    /// Rows ClickHouse refused (kept in the `quarantine` table).
    Quarantine {
        #[command(subcommand)]
        action: QuarantineCmd,
    },
}

#[derive(Subcommand)]
enum QuarantineCmd {
    /// Send quarantined rows (and the lines of an old dead-letter.jsonl in the spool
    /// directory) through the writer into `events` again, once the cause of their refusal is
    /// fixed.
    ///
    /// Idempotent by message id: a row that reached `events` is recorded in the
    /// `quarantine_replays` table (a dead-letter line is removed from its file), so a second
    /// run does not send it again. Rows ClickHouse still refuses stay where they are and are
    /// listed with its reason. Prints what moved, per site. Exits 1 if ClickHouse could not
    /// take rows for `--wait`.
    Replay {
        /// Only this site's rows.
        #[arg(long, value_name = "SITE")]
        site: Option<String>,
        /// Only rows quarantined since then: a duration back from now ("24h"), a date-time
        /// ("2026-11-01T12:00:00Z") or a date ("2026-11-01", midnight UTC).
        #[arg(long, value_name = "T", value_parser = since)]
        since: Option<u32>,
        /// Give up when ClickHouse cannot take any rows for this long.
        #[arg(long, value_name = "DURATION", default_value = "60s", value_parser = duration)]
        wait: std::time::Duration,
    },
}

fn since(s: &str) -> Result<u32, String> {
    waymark_ingest::store::replay::parse_since(s, waymark_ingest::clock::now_ms_u64())
}

fn duration(s: &str) -> Result<std::time::Duration, String> {
    HumanDuration::parse(s).map(|d| d.0)
}

fn load_config(path: Option<&std::path::Path>) -> anyhow::Result<Config> {
    Ok(match path {
        Some(path) => Config::load(path)?,
        None => {
            let mut c = Config::default();
            let env = std::env::vars().collect();
            c.apply_env(&env)?;
            c.validate()?;
            c
        }
    })
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let config = load_config(args.config.as_deref())?;
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    match args.command {
        None => runtime.block_on(serve(config)),
        Some(Cmd::Import(import)) => {
            let default_url = format!("http://{}", config.listen);
            let started = std::time::Instant::now();
            let s = runtime.block_on(import_cli::run(import, default_url))?;
            let secs = started.elapsed().as_secs_f64();
            println!(
                "import done: {} lines read{}, {} sent, {} stored, {} rejected, {} of deleted people skipped; {:.1} s ({:.0} rows/s)",
                s.lines,
                if s.resumed_after > 0 {
                    format!(" (resumed after line {})", s.resumed_after)
                } else {
                    String::new()
                },
                s.sent,
                s.accepted,
                s.rejected,
                s.suppressed,
                secs,
                s.sent as f64 / secs.max(1e-3)
            );
            std::io::stdout().flush()?;
            Ok(())
        }
        Some(Cmd::Quarantine {
            action: QuarantineCmd::Replay { site, since, wait },
        }) => {
            let filter = Filter { site, since };
            let report = runtime
                .block_on(replay(&config, &filter, wait))
                .context("quarantine replay")?;
            print!("{report}");
            std::io::stdout().flush()?;
            if report.stopped.is_some() {
                std::process::exit(1);
            }
            Ok(())
        }
    }
}

async fn serve(config: Config) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("binding {}", config.listen))?;
    let addr = listener.local_addr()?;
    // One line on stdout so scripts and tests can find a port-0 server.
    let mut out = std::io::stdout().lock();
    writeln!(out, "listening on {addr}")?;
    out.flush()?;
    drop(out);
    waymark_ingest::serve(config, listener, shutdown_signal()).await?;
    Ok(())
}

/// SIGTERM or Ctrl-C.
async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "cannot listen for SIGTERM");
            std::future::pending::<()>().await;
            return;
        }
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
        _ = tokio::signal::ctrl_c() => tracing::info!("interrupt: shutting down"),
    }
}
