//! The six scenarios. Each gets a fresh database, spool directory and ingest server process on
//! its own fixed port, sends its load, breaks something on a schedule, mends it, stops the load,
//! waits (bounded) for the spool to drain and counts ([`super::count`]).

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Result};
use indicatif::ProgressBar;
use waymark_ingest::spool::record::{self, Decoded};
use waymark_ingest::spool::{rows, DAMAGED_DIR};
use waymark_testkit::{free_port, ClickHouse};

use super::count::{settle_and_count, Counts};
use super::edge::Edge;
use super::load::{Load, Shape};
use super::plan::Plan;
use super::stack::{wait_for, Ingest, Settings, EDGE_SECRET};

/// Everything a scenario needs.
pub struct Ctx<'a> {
    pub root: &'a Path,
    pub ch: &'a mut ClickHouse,
    pub binary: &'a Path,
    pub node: Option<&'a Path>,
    pub plan: &'a Plan,
    pub workdir: &'a Path,
    pub clients: usize,
    pub batch: usize,
    pub pb: ProgressBar,
}

/// What a scenario measured.
pub struct Outcome {
    pub letter: char,
    pub title: &'static str,
    pub counts: Counts,
    pub secs: f64,
    /// What happened on the way (kills, 503s, retries), printed under the figures.
    pub notes: Vec<String>,
    /// The scenario did not do what it says (no 503 seen, a row in quarantine...).
    pub problems: Vec<String>,
    pub panics: usize,
    /// (e): the figures of the damage done on purpose.
    pub damage: Option<String>,
}

pub const TITLES: [(char, &str); 6] = [
    ('a', "ingest server SIGKILLed twice under load"),
    ('b', "ClickHouse SIGKILLed under load"),
    ('c', "ClickHouse refuses inserts (column dropped)"),
    ('d', "spool full, then drained"),
    ('e', "damaged sealed spool segment"),
    ('f', "edge queue during an ingest outage"),
];

pub fn title(letter: char) -> &'static str {
    TITLES
        .iter()
        .find(|(l, _)| *l == letter)
        .map(|(_, t)| *t)
        .unwrap_or("?")
}

impl Ctx<'_> {
    fn say(&self, msg: String) {
        self.pb.suspend(|| println!("    {msg}"));
    }

    /// A fresh database, spool and server (not started), and the load's shape.
    fn setup(&self, letter: char, spool_max: &str) -> Result<(String, Shape, Ingest, PathBuf)> {
        let db = self.ch.fresh_database().map_err(|e| anyhow!("{e}"))?;
        // Unique per run: the ids of an earlier run on the same ClickHouse never match.
        let run = format!("{letter}{:08x}", crate::fuzz::clock_seed() as u32);
        let dir = self.workdir.join(letter.to_string());
        let spool = dir.join("spool");
        let port = free_port();
        let settings = Settings {
            port,
            clickhouse_url: &self.ch.http_url(),
            database: &db,
            spool: &spool,
            spool_max,
        };
        let ingest = Ingest::new(self.binary, &dir, port, settings.config()?)?;
        let shape = Shape {
            run,
            clients: self.clients,
            batch: self.batch,
            rate: self.plan.rate,
            visitors: 400,
        };
        Ok((db, shape, ingest, spool))
    }

    /// Waits until the server's schema is applied (the query API and the writer are ready).
    fn wait_schema(&self, ingest: &Ingest) -> Result<()> {
        wait_for(Duration::from_secs(90), Duration::from_millis(100), || {
            let (_, body) = ingest.get("/readyz", None).ok()?;
            let v: serde_json::Value = serde_json::from_str(&body).ok()?;
            (v["schema"] == "ok").then_some(())
        })
        .ok_or_else(|| anyhow!("the ingest server's schema was not applied within 90 s"))
    }

    /// Lets the load run for `d`, showing progress; `tick` is called every 200 ms.
    fn hold(&self, d: Duration, load: &Load, phase: &str, mut tick: impl FnMut()) {
        let until = Instant::now() + d;
        while Instant::now() < until {
            self.pb.set_message(format!(
                "{phase} ({:.0} s left): {} batches acknowledged, {} 503/429, {} connection errors",
                (until - Instant::now()).as_secs_f64(),
                load.live
                    .acked_batches
                    .load(std::sync::atomic::Ordering::Relaxed),
                load.live
                    .overloaded
                    .load(std::sync::atomic::Ordering::Relaxed),
                load.live
                    .connection_errors
                    .load(std::sync::atomic::Ordering::Relaxed),
            ));
            tick();
            std::thread::sleep(Duration::from_millis(200).min(until - Instant::now()));
        }
    }

    fn settle(
        &self,
        db: &str,
        shape: &Shape,
        acked: &[String],
        damaged: &HashSet<String>,
        ingest: &Ingest,
    ) -> Result<Counts> {
        self.pb
            .set_message("waiting for the spool to drain, then counting".to_string());
        settle_and_count(
            self.ch,
            db,
            shape,
            acked,
            damaged,
            ingest,
            self.plan.drain_timeout,
        )
    }
}

fn client_notes(o: &super::load::Outcome) -> String {
    let s = &o.stats;
    let mut n = format!(
        "{} requests sent for {} batches in {:.0} s; retried: {} connection errors, {} 503, {} 429",
        crate::fuzz::group(s.attempts),
        crate::fuzz::group(s.acked.len() as u64 + s.abandoned),
        o.secs,
        s.connection_errors,
        s.status_503,
        s.status_429
    );
    if s.abandoned > 0 {
        n.push_str(&format!(
            "; {} batch{} given up unacknowledged when the load stopped",
            s.abandoned,
            if s.abandoned == 1 { "" } else { "es" }
        ));
    }
    n
}

fn client_problems(o: &super::load::Outcome) -> Vec<String> {
    let mut p = Vec::new();
    for (status, body) in &o.stats.unexpected {
        p.push(format!("a client got {status}: {body}"));
    }
    if o.stats.partial > 0 {
        p.push(format!(
            "{} answers listed rejected events (the load's events are all valid)",
            o.stats.partial
        ));
    }
    if o.stats.acked.is_empty() {
        p.push("no batch was acknowledged".into());
    }
    p
}

fn outcome(letter: char, started: Instant) -> Outcome {
    Outcome {
        letter,
        title: title(letter),
        counts: Counts::default(),
        secs: started.elapsed().as_secs_f64(),
        notes: Vec::new(),
        problems: Vec::new(),
        panics: 0,
        damage: None,
    }
}

fn api_note(c: &Counts) -> String {
    let drained = if c.drained {
        format!("drained {:.1} s after the load stopped", c.drain_secs)
    } else {
        format!("NOT drained {:.0} s after the load stopped", c.drain_secs)
    };
    format!(
        "{drained}; query API: {} visitors, {} history events listed, {} not shown; {} rows not yet merged (collapsed by FINAL and the API)",
        c.api_visitors,
        crate::fuzz::group(c.api_events),
        c.api_missing,
        crate::fuzz::group(c.rows_unmerged_extra)
    )
}

/// (a) SIGKILL the ingest server twice under load; restart it at once on the same spool.
pub fn a(ctx: &mut Ctx<'_>) -> Result<Outcome> {
    let started = Instant::now();
    let (db, shape, mut ingest, _) = ctx.setup('a', "1GiB")?;
    ingest.start()?;
    ctx.wait_schema(&ingest)?;
    let load = Load::start(&shape, &ingest.url("/v1/batch"));
    let mut restarts = Vec::new();
    let mut at = Duration::ZERO;
    for (i, &kill_at) in ctx.plan.a_kills.iter().enumerate() {
        ctx.hold(
            kill_at - at,
            &load,
            &format!("load, kill {} next", i + 1),
            || {},
        );
        at = kill_at;
        ingest.kill();
        let t = Instant::now();
        ingest.start()?;
        restarts.push(t.elapsed().as_secs_f64());
        ctx.say(format!(
            "SIGKILL {} at {:.0} s, listening again {:.2} s later",
            i + 1,
            kill_at.as_secs_f64(),
            t.elapsed().as_secs_f64()
        ));
    }
    ctx.hold(ctx.plan.a_load - at, &load, "load after the kills", || {});
    let out = load.stop(ctx.plan.grace);
    let mut o = outcome('a', started);
    o.counts = ctx.settle(&db, &shape, &out.acked, &HashSet::new(), &ingest)?;
    o.notes.push(format!(
        "{} SIGKILLs, back in {}; {}",
        restarts.len(),
        restarts
            .iter()
            .map(|s| format!("{s:.2} s"))
            .collect::<Vec<_>>()
            .join(" and "),
        client_notes(&out)
    ));
    o.notes.push(api_note(&o.counts));
    o.problems = client_problems(&out);
    if out.stats.connection_errors == 0 {
        o.problems
            .push("no client saw a connection error: the kills missed the load".into());
    }
    o.panics = ingest.panics();
    o.secs = started.elapsed().as_secs_f64();
    Ok(o)
}

/// (b) SIGKILL ClickHouse under load; start it again after the outage.
pub fn b(ctx: &mut Ctx<'_>) -> Result<Outcome> {
    let started = Instant::now();
    let (db, shape, mut ingest, _) = ctx.setup('b', "1GiB")?;
    ingest.start()?;
    ctx.wait_schema(&ingest)?;
    let load = Load::start(&shape, &ingest.url("/v1/batch"));
    ctx.hold(ctx.plan.outage_before, &load, "load", || {});
    ctx.ch.crash();
    let down = Instant::now();
    let mut blocked = false;
    ctx.hold(ctx.plan.outage, &load, "ClickHouse killed", || {
        if !blocked {
            blocked = ingest.metric("waymark_writer_blocked{cause=\"unreachable\"}") == Some(1.0);
        }
    });
    ctx.ch.resume().map_err(|e| anyhow!("{e}"))?;
    let outage = down.elapsed().as_secs_f64();
    ctx.say(format!(
        "ClickHouse SIGKILLed at {:.0} s, answering again {outage:.1} s later",
        ctx.plan.outage_before.as_secs_f64()
    ));
    ctx.hold(ctx.plan.outage_after, &load, "load after the outage", || {});
    let out = load.stop(ctx.plan.grace);
    let mut o = outcome('b', started);
    o.counts = ctx.settle(&db, &shape, &out.acked, &HashSet::new(), &ingest)?;
    o.notes.push(format!(
        "ClickHouse down {outage:.1} s; writer reported blocked (unreachable): {}; {}",
        if blocked { "yes" } else { "no" },
        client_notes(&out)
    ));
    o.notes.push(api_note(&o.counts));
    o.problems = client_problems(&out);
    if !blocked {
        o.problems
            .push("the writer never reported itself blocked by an unreachable ClickHouse".into());
    }
    o.panics = ingest.panics();
    o.secs = started.elapsed().as_secs_f64();
    Ok(o)
}

/// (c) A column of `events` dropped under load (every insert refused), then added back: the
/// rows arrive and none is quarantined.
pub fn c(ctx: &mut Ctx<'_>) -> Result<Outcome> {
    let started = Instant::now();
    let (db, shape, mut ingest, _) = ctx.setup('c', "1GiB")?;
    ingest.start()?;
    ctx.wait_schema(&ingest)?;
    let load = Load::start(&shape, &ingest.url("/v1/batch"));
    ctx.hold(ctx.plan.outage_before, &load, "load", || {});
    let sql = |s: &str| ctx.ch.query(s).map_err(|e| anyhow!("{e}"));
    sql(&format!("ALTER TABLE {db}.events DROP COLUMN utm_term"))?;
    let dropped = Instant::now();
    let mut blocked = false;
    ctx.hold(ctx.plan.outage, &load, "column utm_term dropped", || {
        if !blocked {
            blocked =
                ingest.metric("waymark_writer_blocked{cause=\"missing_column\"}") == Some(1.0);
        }
    });
    let sql = |s: &str| ctx.ch.query(s).map_err(|e| anyhow!("{e}"));
    sql(&format!(
        "ALTER TABLE {db}.events ADD COLUMN utm_term String AFTER utm_medium"
    ))?;
    let refused = dropped.elapsed().as_secs_f64();
    ctx.say(format!(
        "utm_term dropped at {:.0} s, added back {refused:.1} s later",
        ctx.plan.outage_before.as_secs_f64()
    ));
    ctx.hold(ctx.plan.outage_after, &load, "load after the fix", || {});
    let out = load.stop(ctx.plan.grace);
    let mut o = outcome('c', started);
    o.counts = ctx.settle(&db, &shape, &out.acked, &HashSet::new(), &ingest)?;
    let quarantined: u64 = ctx
        .ch
        .query(&format!("SELECT count() FROM {db}.quarantine"))
        .map_err(|e| anyhow!("{e}"))?
        .trim()
        .parse()?;
    o.notes.push(format!(
        "inserts refused for {refused:.1} s; writer reported blocked (missing_column): {}; rows in quarantine: {quarantined}; {}",
        if blocked { "yes" } else { "no" },
        client_notes(&out)
    ));
    o.notes.push(api_note(&o.counts));
    o.problems = client_problems(&out);
    if quarantined > 0 {
        o.problems
            .push(format!("{quarantined} rows went to quarantine"));
    }
    if !blocked {
        o.problems
            .push("the writer never reported itself blocked by the missing column".into());
    }
    o.panics = ingest.panics();
    o.secs = started.elapsed().as_secs_f64();
    Ok(o)
}

/// (d) ClickHouse stopped and a small spool: it fills, clients get 503 + Retry-After and retry;
/// ClickHouse comes back, the spool drains and the retries get in.
pub fn d(ctx: &mut Ctx<'_>) -> Result<Outcome> {
    let started = Instant::now();
    let (db, shape, mut ingest, _) = ctx.setup('d', "256KiB")?;
    ingest.start()?;
    ctx.wait_schema(&ingest)?;
    ctx.ch.stop();
    let down = Instant::now();
    let load = Load::start(&shape, &ingest.url("/v1/batch"));
    ctx.hold(
        ctx.plan.outage,
        &load,
        "ClickHouse stopped, spool filling",
        || {},
    );
    // The spool must have been full for a while: wait (bounded) for the first 503s.
    let deadline = Instant::now() + Duration::from_secs(60);
    while load
        .live
        .overloaded
        .load(std::sync::atomic::Ordering::Relaxed)
        == 0
        && Instant::now() < deadline
    {
        ctx.hold(
            Duration::from_millis(500),
            &load,
            "waiting for the spool to fill",
            || {},
        );
    }
    ctx.ch.resume().map_err(|e| anyhow!("{e}"))?;
    let outage = down.elapsed().as_secs_f64();
    ctx.say(format!(
        "ClickHouse stopped for {outage:.1} s, {} requests answered 503 meanwhile",
        load.live
            .overloaded
            .load(std::sync::atomic::Ordering::Relaxed)
    ));
    ctx.hold(
        ctx.plan.d_after,
        &load,
        "ClickHouse back, spool draining",
        || {},
    );
    let out = load.stop(ctx.plan.grace_overloaded);
    let mut o = outcome('d', started);
    o.counts = ctx.settle(&db, &shape, &out.acked, &HashSet::new(), &ingest)?;
    let full_total = ingest.metric("waymark_spool_full_total").unwrap_or(0.0);
    o.notes.push(format!(
        "spool cap 256 KiB, ClickHouse down {outage:.1} s; appends refused as full: {full_total:.0}; 503 answers: {} ({} with Retry-After); {}",
        out.stats.status_503,
        out.stats.retry_after,
        client_notes(&out)
    ));
    o.notes.push(api_note(&o.counts));
    o.problems = client_problems(&out);
    if out.stats.status_503 == 0 {
        o.problems
            .push("no client was answered 503: the spool never filled".into());
    }
    if out.stats.retry_after < out.stats.status_503 + out.stats.status_429 {
        o.problems
            .push("a 503 or 429 came without Retry-After".into());
    }
    o.panics = ingest.panics();
    o.secs = started.elapsed().as_secs_f64();
    Ok(o)
}

/// The records of a segment file: (offset, size, message ids of their rows).
fn records_of(segment: &Path) -> Result<Vec<(usize, usize, Vec<String>)>> {
    let data = std::fs::read(segment)?;
    let mut out = Vec::new();
    let mut off = 0;
    while off < data.len() {
        match record::decode(&data[off..]) {
            Decoded::Record { payload, size, .. } => {
                let ids = rows::decode(payload)
                    .map_err(|e| anyhow!("a record at {off} of {}: {e}", segment.display()))?
                    .into_iter()
                    .map(|r| r.message_id)
                    .collect();
                out.push((off, size, ids));
                off += size;
            }
            other => bail!(
                "{} at {off}: {other:?} before any damage was done",
                segment.display()
            ),
        }
    }
    Ok(out)
}

/// (e) With ClickHouse unreachable, the spool grows to several segments; the server is killed,
/// two records of a sealed segment are damaged (one in its header, one in its payload), and the
/// server is started again with ClickHouse: every other record is delivered, the damaged bytes
/// are in `damaged/`. "lost" counts acknowledged events missing beyond those two records.
pub fn e(ctx: &mut Ctx<'_>) -> Result<Outcome> {
    let started = Instant::now();
    let spool_max = ctx.plan.e_spool_max;
    let (db, shape, mut ingest, spool) = ctx.setup('e', spool_max)?;
    let real_url = ctx.ch.http_url();
    let nowhere = format!("http://127.0.0.1:{}", free_port());
    let settings = |url: &str| {
        Settings {
            port: ingest.port,
            clickhouse_url: url,
            database: &db,
            spool: &spool,
            spool_max,
        }
        .config()
    };
    let (unreachable, reachable) = (settings(&nowhere)?, settings(&real_url)?);
    ingest.reconfigure(unreachable);
    ingest.start()?;
    let load = Load::start(&shape, &ingest.url("/v1/batch"));
    let fill = ctx.plan.e_fill_bytes as f64;
    let deadline = Instant::now() + Duration::from_secs(120);
    while ingest.metric("waymark_spool_pending_bytes").unwrap_or(0.0) < fill
        && Instant::now() < deadline
    {
        ctx.hold(
            Duration::from_millis(500),
            &load,
            "ClickHouse unreachable, spool growing",
            || {},
        );
    }
    let out = load.stop(ctx.plan.grace);
    ingest.kill();
    let mut segments: Vec<PathBuf> = std::fs::read_dir(&spool)?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "wal"))
        .collect();
    segments.sort();
    if segments.len() < 2 {
        bail!(
            "(e) the spool has {} segment(s) after the load; a sealed one is needed",
            segments.len()
        );
    }
    // A sealed segment (any but the last), from the middle.
    let target = segments[(segments.len() - 1) / 2].clone();
    let recs = records_of(&target)?;
    if recs.len() < 4 {
        bail!(
            "(e) {} holds {} records; 4 or more are needed",
            target.display(),
            recs.len()
        );
    }
    let (first, second) = (&recs[1], &recs[recs.len() - 2]);
    let mut data = std::fs::read(&target)?;
    data[first.0 + 9] ^= 0x5a; // inside the length: the header checksum fails
    data[second.0 + record::HEADER_LEN + (second.1 - record::HEADER_LEN) / 2] ^= 0x5a; // the payload
    std::fs::write(&target, &data)?;
    let damaged: HashSet<String> = first.2.iter().chain(&second.2).cloned().collect();
    let acked_set: HashSet<&String> = out.acked.iter().collect();
    let damaged_acked = damaged.iter().filter(|id| acked_set.contains(id)).count();
    ctx.say(format!(
        "server killed with {} segments; damaged 2 of the {} records of sealed {} ({} events, {damaged_acked} of them acknowledged)",
        segments.len(),
        recs.len(),
        target.file_name().and_then(|n| n.to_str()).unwrap_or("?"),
        damaged.len()
    ));
    ingest.reconfigure(reachable);
    ingest.start()?;
    ctx.wait_schema(&ingest)?;
    let mut o = outcome('e', started);
    o.counts = ctx.settle(&db, &shape, &out.acked, &damaged, &ingest)?;
    let copies: Vec<u64> = std::fs::read_dir(spool.join(DAMAGED_DIR))
        .map(|rd| {
            rd.flatten()
                .filter_map(|e| e.metadata().ok().map(|m| m.len()))
                .collect()
        })
        .unwrap_or_default();
    let inside = ingest
        .metric("waymark_spool_damaged_ranges_total{kind=\"inside\"}")
        .unwrap_or(0.0);
    o.damage = Some(format!(
        "beyond the {} acknowledged events of the 2 records damaged on purpose; damaged/ holds {} file{}, {} bytes",
        o.counts.lost_to_damage,
        copies.len(),
        if copies.len() == 1 { "" } else { "s" },
        crate::fuzz::group(copies.iter().sum::<u64>())
    ));
    o.notes.push(format!(
        "ClickHouse unreachable while the spool grew to {} segments; server killed, 2 records of a sealed segment damaged, restarted with ClickHouse; inside-damage ranges counted: {inside:.0}; {}",
        segments.len(),
        client_notes(&out)
    ));
    o.notes.push(api_note(&o.counts));
    o.problems = client_problems(&out);
    if copies.len() != 2 {
        o.problems.push(format!(
            "damaged/ holds {} copies, not the 2 damaged records",
            copies.len()
        ));
    }
    if o.counts.lost_to_damage as usize != damaged_acked {
        o.problems.push(format!(
            "{} events of the damaged records were delivered anyway, {} acknowledged ones expected missing",
            damaged_acked as u64 - o.counts.lost_to_damage.min(damaged_acked as u64),
            damaged_acked
        ));
    }
    o.panics = ingest.panics();
    o.secs = started.elapsed().as_secs_f64();
    Ok(o)
}

/// Delays of the worker's retries (30 s doubling up to 30 min; see edge-worker/src/consume.rs).
fn worker_delay(attempt: u32) -> Duration {
    Duration::from_secs((30u64 << attempt.saturating_sub(1).min(10)).min(1800))
}

/// (f) Tag batches through the edge worker (workerd, with its queue) while the ingest server is
/// down; the queue's clock is advanced through hours of retries; the server comes back; every
/// batch the edge acknowledged arrives once.
pub fn f(ctx: &mut Ctx<'_>) -> Result<Outcome> {
    let started = Instant::now();
    let node = ctx
        .node
        .ok_or_else(|| anyhow!("(f) needs node (Node.js 20+) for the edge worker"))?;
    let (db, mut shape, mut ingest, _) = ctx.setup('f', "1GiB")?;
    shape.clients = 1;
    ingest.start()?;
    ctx.wait_schema(&ingest)?;
    ctx.pb
        .set_message("starting the edge worker in workerd".to_string());
    let log = ctx.workdir.join("f/edge-worker.log");
    let mut edge = Edge::start(ctx.root, node, &ingest.url(""), EDGE_SECRET, &log)?;
    let mut acked: Vec<String> = Vec::new();
    let mut refused = Vec::new();
    let mut send = |edge: &mut Edge, seq: u64, acked: &mut Vec<String>| -> Result<()> {
        let (status, json) = edge.post(&shape.body(0, seq, waymark_ingest::clock::now_ms()))?;
        if status == 200 && json["forwarded"] == "queue" {
            acked.extend((0..shape.batch).map(|i| shape.message_id(0, seq, i)));
        } else {
            refused.push(format!("{status} {json}"));
        }
        Ok(())
    };
    let tick = Duration::from_millis(200);
    let stored = |ch: &ClickHouse| -> u64 {
        ch.query(&format!(
            "SELECT uniqExact(message_id) FROM {db}.events WHERE message_id LIKE '{}-%'",
            shape.run
        ))
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0)
    };
    // Two batches while all is up.
    for seq in 0..2 {
        send(&mut edge, seq, &mut acked)?;
    }
    edge.advance(tick)?;
    let ch: &ClickHouse = ctx.ch;
    let want = acked.len() as u64;
    wait_for(Duration::from_secs(60), Duration::from_millis(200), || {
        (stored(ch) >= want).then_some(())
    })
    .ok_or_else(|| anyhow!("(f) the batches sent before the outage did not arrive"))?;
    // The outage.
    ingest.kill();
    let down = Instant::now();
    let batches = ctx.plan.f_batches;
    ctx.pb
        .set_message(format!("ingest down: {batches} batches through the edge"));
    for seq in 2..2 + batches {
        send(&mut edge, seq, &mut acked)?;
    }
    edge.advance(tick)?;
    let mut attempts = 1u32;
    let mut fake = Duration::ZERO;
    while fake < ctx.plan.f_fake_outage {
        let d = worker_delay(attempts);
        ctx.pb.set_message(format!(
            "ingest down: queue clock at {:.1} h of {:.0} h",
            fake.as_secs_f64() / 3600.0,
            ctx.plan.f_fake_outage.as_secs_f64() / 3600.0
        ));
        edge.advance(d)?;
        edge.advance(tick)?;
        fake += d;
        attempts += 1;
    }
    let failed = wait_for(Duration::from_secs(60), Duration::from_millis(250), || {
        edge.failed_forwards()
            .ok()
            .filter(|&n| n >= u64::from(attempts))
    });
    let failed_n = match failed {
        Some(n) => n,
        None => edge.failed_forwards()?,
    };
    let real_left = ctx.plan.f_real_outage.saturating_sub(down.elapsed());
    std::thread::sleep(real_left);
    ingest.start()?;
    let outage = down.elapsed().as_secs_f64();
    ctx.say(format!(
        "ingest down {outage:.1} s (queue clock: {:.1} h, {failed_n} failed deliveries); {} batches acknowledged by the edge meanwhile",
        fake.as_secs_f64() / 3600.0,
        batches
    ));
    let want = acked.len() as u64;
    let arrived = wait_for(Duration::from_secs(120), Duration::from_millis(100), || {
        if edge.advance(Duration::from_secs(1800)).is_err() || edge.advance(tick).is_err() {
            return None;
        }
        (stored(ch) >= want).then_some(())
    });
    if arrived.is_none() {
        ctx.say("not every batch arrived within 120 s of the restart".into());
    }
    // One more batch once all is back: the queue delivers new work at once.
    send(&mut edge, 2 + batches + 1, &mut acked)?;
    edge.advance(tick)?;
    let want = acked.len() as u64;
    wait_for(Duration::from_secs(60), Duration::from_millis(200), || {
        let _ = edge.advance(tick);
        (stored(ch) >= want).then_some(())
    });
    let mut o = outcome('f', started);
    o.counts = ctx.settle(&db, &shape, &acked, &HashSet::new(), &ingest)?;
    drop(edge);
    o.notes.push(format!(
        "ingest server SIGKILLed for {outage:.1} s (the queue's clock advanced {:.1} h through {attempts} rounds of redelivery; the worker logged {failed_n} failed forwards); {} batches of {} acknowledged by the edge",
        fake.as_secs_f64() / 3600.0,
        acked.len() / shape.batch,
        shape.batch
    ));
    o.notes.push(api_note(&o.counts));
    for r in &refused {
        o.problems.push(format!("the edge answered {r}"));
    }
    if failed_n < u64::from(attempts) {
        o.problems.push(format!(
            "the worker logged {failed_n} failed forwards, fewer than the {attempts} deliveries during the outage"
        ));
    }
    o.panics = ingest.panics();
    o.secs = started.elapsed().as_secs_f64();
    Ok(o)
}
