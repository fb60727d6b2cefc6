//! `ingest-server --config FILE`: see `--help` for every setting.

use std::io::Write as _;
use std::path::PathBuf;

use anyhow::Context as _;
use clap::Parser;
use waymark_ingest::config::{Config, SETTINGS_HELP};

/// mimalloc instead of glibc malloc: intake allocates many small, short-lived strings and maps
/// per event, and glibc's allocator took about a quarter of the server's CPU under load.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// The Waymark ingest server: durable, Segment-compatible event intake into ClickHouse.
#[derive(Parser)]
#[command(name = "ingest-server", version, after_long_help = SETTINGS_HELP, after_help = SETTINGS_HELP)]
struct Args {
    /// The TOML configuration file. Without it, the defaults below (plus environment overrides).
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
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
    let config = match &args.config {
        Some(path) => Config::load(path)?,
        None => {
            let mut c = Config::default();
            let env = std::env::vars().collect();
            c.apply_env(&env)?;
            c.validate()?;
            c
        }
    };
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    runtime.block_on(async move {
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
    })
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
