//! The CPU each stage of the intake path costs per event, in release mode, in one process:
//! `cargo xtask bench ingest` writes its batches to a file (one JSON body per line) and runs
//! `cargo run --release -p waymark-ingest --example intake_cost -- BATCHES`.
//!
//! The server's CPU per event in the end-to-end run moves by a third between runs on a shared
//! machine; these stages, timed alone over many passes and printed beside `parse_batch` (the
//! reference, measured in the same run), show where a change to one of them moved it.
//!
//! Stages, in the order an event meets them: validation (`parse_batch`), enrichment (`to_row`),
//! the dedup window (keys, look-up, remembering), the spool payload (`rows::encode`), the
//! writer's check of each record as it gathers a batch (`rows::check`), its RowBinary
//! (`rows::transcode`), and freeing the request's events and rows. Not here: HTTP, the spool's
//! compression and writes, ClickHouse's client.

use std::hint::black_box;
use std::time::Duration;

use cpu_time::ProcessTime;
use waymark_ingest::intake::dedup::Dedup;
use waymark_ingest::intake::enrich::{to_row, RequestFacts, UaParser};
use waymark_ingest::spool::rows;
use waymark_protocol::edge::IpMode;
use waymark_protocol::privacy::UrlPolicy;

const PASSES: usize = 4;

/// The server's allocator (`src/main.rs`): allocating and freeing are a good part of these
/// stages.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> Result<(), String> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [batches] = args.as_slice() else {
        return Err("usage: intake_cost BATCHES.ndjson".into());
    };
    let text = std::fs::read_to_string(batches).map_err(|e| format!("{batches}: {e}"))?;
    let bodies: Vec<&str> = text.lines().filter(|l| !l.is_empty()).collect();
    let now = waymark_ingest::clock::now_ms();
    let ua = UaParser::default();
    let dedup = Dedup::new(1_000_000);
    let mut stages = [Duration::ZERO; 7];
    let mut events = 0;
    let mut out = Vec::new();
    for _ in 0..PASSES {
        for body in &bodies {
            let t = ProcessTime::now();
            let v =
                waymark_protocol::parse_batch(body.as_bytes(), now).map_err(|e| e.to_string())?;
            stages[0] += t.elapsed();
            events += v.events.len();

            let t = ProcessTime::now();
            let facts = RequestFacts {
                site: "bench",
                ip_mode: IpMode::Truncate,
                received_at_ms: now,
                batch_sent_at: v.sent_at.as_deref(),
                source: "api",
                peer_ip: Some("198.51.100.23".into()),
                geo: None,
                client: None,
                urls: UrlPolicy::default(),
                gpc: false,
                request_ip: Default::default(),
            };
            let rows: Vec<_> = v.events.iter().map(|ev| to_row(ev, &facts, &ua)).collect();
            stages[1] += t.elapsed();

            let t = ProcessTime::now();
            let keys = dedup.keys(
                rows.iter()
                    .map(|r| (r.site.as_str(), r.message_id.as_str())),
            );
            let seen = dedup.seen(&keys);
            dedup.remember(&keys, &seen);
            stages[2] += t.elapsed();

            let t = ProcessTime::now();
            let payload = rows::encode(&rows);
            stages[3] += t.elapsed();

            let t = ProcessTime::now();
            black_box(rows::check(&payload).map_err(|e| e.to_string())?);
            stages[4] += t.elapsed();

            let t = ProcessTime::now();
            out.clear();
            black_box(rows::transcode(&payload, &mut out, |_| true).map_err(|e| e.to_string())?);
            stages[5] += t.elapsed();

            let t = ProcessTime::now();
            drop((v, rows, payload));
            stages[6] += t.elapsed();
        }
    }
    let per = |d: Duration| d.as_secs_f64() * 1e6 / events as f64;
    let names = [
        "parse_batch (reference)",
        "to_row",
        "dedup window",
        "encode",
        "writer check",
        "transcode",
        "freeing events and rows",
    ];
    println!(
        "intake stages (release, {} events x {PASSES} passes, one thread), CPU per event:",
        events / PASSES
    );
    for (name, d) in names.iter().zip(stages) {
        println!(
            "  {name:<24} {:>6.2} us  ({:.2} x parse_batch)",
            per(d),
            d.as_secs_f64() / stages[0].as_secs_f64()
        );
    }
    let total: Duration = stages.iter().sum();
    println!("  {:<24} {:>6.2} us", "all stages", per(total));
    Ok(())
}
