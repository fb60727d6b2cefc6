//! `waymark-stack`: the testkit's ClickHouse and ingest server for tests that are not written in
//! Rust (the edge worker's JS tests, `edge-worker/workerd-tests/services.mjs`), so they start
//! the same processes on configs from the same builder instead of writing their own.
//!
//! Each subcommand starts its process, prints one JSON line with what the caller needs (its
//! address, files), and runs until its stdin closes, then stops it: a caller that dies leaves
//! nothing behind.

use std::io::Read as _;
use std::path::PathBuf;

use clap::{Parser, Subcommand};
use waymark_testkit::config::{site, ByteSize, HumanDuration, IngestConfig};
use waymark_testkit::ingest::IngestServer;
use waymark_testkit::ClickHouse;

#[derive(Parser)]
#[command(about = "Starts the testkit's ClickHouse or ingest server; stops it when stdin closes.")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// A private ClickHouse on free loopback ports, in a temporary directory. Prints
    /// {"url", "http_port", "tcp_port", "home"}.
    Clickhouse,
    /// The ingest server on a config built by the testkit: the given ClickHouse database, its
    /// spool, config and log in --dir, one site with an edge secret. Prints {"url", "config",
    /// "log"}.
    Ingest(Box<IngestArgs>),
}

// The field docs are clap's help text, where `[spool] max_bytes` names a setting, not a link.
#[allow(rustdoc::broken_intra_doc_links)]
#[derive(clap::Args)]
struct IngestArgs {
    /// The ingest-server binary [default: target/debug/ingest-server, or $WAYMARK_INGEST_SERVER].
    #[arg(long)]
    binary: Option<PathBuf>,
    /// ClickHouse's HTTP URL.
    #[arg(long)]
    clickhouse: String,
    #[arg(long)]
    database: String,
    /// Holds the config, the spool and the log; kept, so a second start resumes on them.
    #[arg(long)]
    dir: PathBuf,
    /// The port on 127.0.0.1 [default: one the kernel picks].
    #[arg(long, default_value_t = 0)]
    port: u16,
    #[arg(long)]
    edge_secret: String,
    /// The site's id.
    #[arg(long)]
    site: String,
    #[arg(long)]
    write_key: String,
    /// An origin the site accepts browser requests from (repeatable; "*" for any).
    #[arg(long)]
    origin: Vec<String>,
    /// [spool] max_bytes, e.g. "256MiB" [default: the server's].
    #[arg(long, value_parser = ByteSize::parse)]
    spool_max: Option<ByteSize>,
    /// [writer] max_age, e.g. "200ms" [default: the server's].
    #[arg(long, value_parser = HumanDuration::parse)]
    writer_max_age: Option<HumanDuration>,
}

fn main() {
    if let Err(e) = run(Cli::parse()) {
        eprintln!("waymark-stack: {e}");
        std::process::exit(1);
    }
}

fn run(cli: Cli) -> Result<(), waymark_testkit::Error> {
    match cli.command {
        Cmd::Clickhouse => {
            let ch = ClickHouse::start()?;
            say(serde_json::json!({
                "url": ch.http_url(),
                "http_port": ch.http_port(),
                "tcp_port": ch.tcp_port(),
                "home": ch.home(),
            }));
            wait_for_stdin_to_close();
            drop(ch);
        }
        Cmd::Ingest(a) => {
            let binary = a
                .binary
                .or_else(|| std::env::var_os("WAYMARK_INGEST_SERVER").map(PathBuf::from))
                .unwrap_or_else(waymark_testkit::ingest::debug_binary);
            let origins: Vec<&str> = a.origin.iter().map(String::as_str).collect();
            let mut config = IngestConfig::new()
                .port(a.port)
                .clickhouse(&a.clickhouse, &a.database)
                .spool(&a.dir.join("spool"))
                .edge_secret(&a.edge_secret)
                .site(site(&a.site, &a.write_key, &origins));
            if let Some(max) = a.spool_max {
                config = config.spool_max(max.0);
            }
            if let Some(age) = a.writer_max_age {
                config = config.writer_max_age(age.0);
            }
            let server = IngestServer::start(&binary, &config, &a.dir, &[])?;
            say(serde_json::json!({
                "url": server.url(),
                "config": server.config_path,
                "log": a.dir.join("ingest.log"),
            }));
            wait_for_stdin_to_close();
            drop(server);
        }
    }
    Ok(())
}

/// The one line the caller waits for.
fn say(v: serde_json::Value) {
    println!("{v}");
}

fn wait_for_stdin_to_close() {
    let mut sink = Vec::new();
    let _ = std::io::stdin().read_to_end(&mut sink);
}
