//! `cargo xtask demo`: runs Waymark locally, everything on 127.0.0.1.
//!
//! Today it starts ClickHouse with its data under `.waymark/clickhouse` (kept between runs).
//! The ingest server, the edge worker in workerd and the demo shop join it as they land.

use std::path::Path;
use std::sync::mpsc;

use anyhow::{bail, Context, Result};
use waymark_testkit::ClickHouse;

/// Fixed ports so the printed URLs stay the same from run to run.
pub const CLICKHOUSE_HTTP_PORT: u16 = 18123;
pub const CLICKHOUSE_TCP_PORT: u16 = 19000;

pub fn run(root: &Path, args: &[String]) -> Result<()> {
    if let Some(a) = args.first() {
        bail!("`cargo xtask demo` takes no arguments yet (got {a:?})");
    }
    for port in [CLICKHOUSE_HTTP_PORT, CLICKHOUSE_TCP_PORT] {
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_err() {
            bail!("port {port} on 127.0.0.1 is in use: is another `cargo xtask demo` running?");
        }
    }
    let data = root.join(".waymark/clickhouse");
    println!("starting ClickHouse (data in {}) ...", data.display());
    let ch = ClickHouse::start_kept(&data, CLICKHOUSE_HTTP_PORT, CLICKHOUSE_TCP_PORT)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let version = ch
        .query("SELECT version()")
        .map_err(|e| anyhow::anyhow!("{e}"))?;

    let (tx, rx) = mpsc::channel();
    ctrlc::set_handler(move || {
        let _ = tx.send(());
    })
    .context("installing the Ctrl-C handler")?;

    println!();
    println!("Waymark demo is running:");
    println!("  ClickHouse {}  http://127.0.0.1:{CLICKHOUSE_HTTP_PORT}/  (native port {CLICKHOUSE_TCP_PORT})", version.trim());
    println!("    try: curl 'http://127.0.0.1:{CLICKHOUSE_HTTP_PORT}/?query=SELECT+1'");
    println!("    or:  clickhouse-client --port {CLICKHOUSE_TCP_PORT}");
    println!(
        "  data:  {} (kept between runs; delete it to start afresh)",
        data.display()
    );
    println!();
    println!("Press Ctrl-C to stop everything.");
    let _ = rx.recv();
    println!("\nstopping ClickHouse ...");
    drop(ch);
    println!("stopped.");
    Ok(())
}
