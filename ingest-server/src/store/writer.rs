//! The writer: moves spooled events into ClickHouse in large batches.
//!
//! It reads records from the spool's checkpoint on, gathers rows until `max_rows`, `max_bytes`
//! or `max_age` (age of the oldest gathered event) is reached, inserts them, and only after
//! ClickHouse confirmed the insert moves the spool checkpoint. A batch is held as its place in
//! the spool: each insert attempt reads its records again and streams their rows into the
//! insert as RowBinary, so the writer's memory does not grow with the batch. What happens when
//! ClickHouse says no is the policy in [`super::delivery`]: while ClickHouse cannot take rows
//! (down, auth, disk, a missing column...) they stay in the spool and are retried for as long
//! as it takes; only rows proven refused (by bisection and a probe row) go to the `quarantine`
//! table, and the checkpoint moves once they are there. Nothing goes to a file.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch, Semaphore, TryAcquireError};

use super::delivery::{quarantine_row, Delivery, Policy};
use super::row::QuarantineRow;
use super::{Payloads, Sink};
use crate::clock::now_ms_u64 as now_ms;
use crate::config::WriterConfig;
use crate::metrics::Metrics;
use crate::spool::Spool;

pub use super::delivery::Stopped;

/// Thresholds and retry pacing.
#[derive(Debug, Clone)]
pub struct WriterSettings {
    pub max_rows: usize,
    pub max_bytes: usize,
    pub max_age: Duration,
    /// `max_age` for a batch holding imported rows only (`[writer] import_max_age`).
    pub import_max_age: Duration,
    /// [`IMPORT_QUIET`] (a field so tests can widen it).
    pub import_quiet: Duration,
    pub policy: Policy,
}

/// A batch of imported rows only also goes once no record was appended for this long: the
/// import has ended (or paused), and its last rows need not wait for `import_max_age`.
pub const IMPORT_QUIET: Duration = Duration::from_millis(500);

impl From<&WriterConfig> for WriterSettings {
    fn from(c: &WriterConfig) -> Self {
        WriterSettings {
            max_rows: c.max_rows,
            max_bytes: c.max_bytes.0 as usize,
            max_age: c.max_age.0,
            import_max_age: c.import_max_age.0,
            import_quiet: IMPORT_QUIET,
            policy: Policy {
                max_attempts: c.max_attempts,
                backoff_min: Duration::from_millis(100).min(c.max_backoff.0),
                backoff_max: c.max_backoff.0,
            },
        }
    }
}

pub struct Writer<S: Sink> {
    spool: Spool,
    delivery: Delivery<S>,
    settings: WriterSettings,
    shutdown: watch::Receiver<bool>,
}

impl<S: Sink> Writer<S> {
    pub fn new(
        spool: Spool,
        sink: Arc<S>,
        metrics: Arc<Metrics>,
        settings: WriterSettings,
        shutdown: watch::Receiver<bool>,
    ) -> Self {
        Writer {
            spool,
            delivery: Delivery::new(sink, metrics, settings.policy.clone(), shutdown.clone()),
            settings,
            shutdown,
        }
    }

    /// Runs until shutdown is signalled and everything spooled is delivered (or cannot be
    /// delivered right now, in which case it stays in the spool for the next start).
    pub async fn run(self) {
        // Reading and checking the next batch overlaps with inserting this one. The gatherer
        // hands a batch over only when the inserter is free (`idle`), and until then goes on
        // adding rows to it (up to the row and byte limits): no batch waits, closed, behind an
        // insert while newer rows wait behind it. A batch is held as its place in the spool,
        // not as rows: the gatherer checks each record as it reads it and keeps only counts,
        // and each insert attempt reads the records again, a chunk at a time, transcoding each
        // row to RowBinary as it is written to the insert (issue 20: two decoded batches of
        // the default 32 MiB took about 200 MB, most of the server's RSS). The records are
        // read twice, from the page cache; memory no longer grows with `max_bytes`.
        let (tx, mut rx) = mpsc::channel::<Gathered>(1);
        let idle = Arc::new(Semaphore::new(0));
        let gatherer = tokio::spawn(gather(
            self.spool.clone(),
            self.settings.clone(),
            self.shutdown.clone(),
            idle.clone(),
            tx,
        ));
        loop {
            idle.add_permits(1);
            let Some(batch) = rx.recv().await else {
                break;
            };
            self.spool.set_oldest_pending_ms(Some(batch.oldest));
            if self.store(&batch).await.is_err() {
                tracing::warn!(
                    rows = batch.rows,
                    "shutting down before ClickHouse took these rows; they stay in the spool"
                );
                break;
            }
            if let Err(e) = self.spool.commit(batch.end) {
                // The rows are in ClickHouse; a stale checkpoint only means a replay later,
                // which the table collapses.
                tracing::error!(error = %e, "moving the spool checkpoint failed");
            }
            self.spool.set_oldest_pending_ms(None);
        }
        idle.close();
        drop(rx);
        let _ = gatherer.await;
    }

    /// Everything in `batch` into `events`, or (proven refused) into `quarantine`.
    async fn store(&self, batch: &Gathered) -> Result<(), Stopped> {
        if !batch.undecodable.is_empty() {
            self.delivery.quarantine(&batch.undecodable).await?;
        }
        if batch.rows == 0 {
            return Ok(());
        }
        self.delivery
            .deliver_payloads(&batch.range, batch.rows)
            .await?;
        let refused: Vec<QuarantineRow> = self
            .delivery
            .take_refused()
            .iter()
            .map(|(row, e)| quarantine_row(row, &e.message))
            .collect();
        if refused.is_empty() {
            return Ok(());
        }
        self.delivery.quarantine(&refused).await
    }
}

/// One batch read from the spool, ready to insert.
struct Gathered {
    range: SpoolRange,
    rows: usize,
    undecodable: Vec<QuarantineRow>,
    /// Commit this position once the batch is in ClickHouse.
    end: u64,
    oldest: u64,
}

/// The most bytes the writer reads from the spool at once: what it holds of a batch, which is
/// read once to gather it and once per insert attempt.
const READ_CHUNK: usize = 1 << 20;

/// A batch as its records' place in the spool, read again (a chunk at a time) for each attempt
/// at inserting it. The records are committed only once the batch is in ClickHouse, so they
/// are still there; the reader meets them in the same order, with any damage skipped the same.
struct SpoolRange {
    spool: Spool,
    start: u64,
    end: u64,
    /// The ends of records that do not decode (quarantined whole by the gatherer).
    skip: Vec<u64>,
}

impl Payloads for SpoolRange {
    fn payloads(&self) -> Box<dyn Iterator<Item = Result<bytes::Bytes, String>> + Send + '_> {
        let mut reader = self.spool.reader_at(self.start);
        let mut read: std::vec::IntoIter<crate::spool::Record> = Vec::new().into_iter();
        let mut failed = false;
        Box::new(std::iter::from_fn(move || loop {
            if let Some(r) = read.next() {
                if r.end > self.end {
                    return None;
                }
                if self.skip.contains(&r.end) {
                    continue;
                }
                return Some(Ok(r.payload));
            }
            let pos = reader.position();
            if failed || pos >= self.end {
                return None;
            }
            let want = ((self.end - pos) as usize).min(READ_CHUNK);
            match reader.read(want) {
                Ok(records) if records.is_empty() => {
                    failed = true;
                    return Some(Err(format!(
                        "the spool ends at {pos}, before the batch's end at {}",
                        self.end
                    )));
                }
                Ok(records) => read = records.into_iter(),
                Err(e) => {
                    failed = true;
                    return Some(Err(e.to_string()));
                }
            }
        }))
    }
}

/// Reads the spool into batches by the row, byte and age thresholds, and hands them on in
/// order. Ends when shutdown is signalled and everything committed so far has been handed on.
async fn gather(
    spool: Spool,
    settings: WriterSettings,
    mut shutdown: watch::Receiver<bool>,
    idle: Arc<Semaphore>,
    tx: mpsc::Sender<Gathered>,
) {
    let mut reader = spool.reader();
    let mut committed = spool.subscribe();
    loop {
        let start = reader.position();
        let mut skip: Vec<u64> = Vec::new();
        let mut rows = 0usize;
        let mut undecodable: Vec<QuarantineRow> = Vec::new();
        let mut bytes = 0usize;
        let mut end: Option<u64> = None;
        let mut oldest: Option<u64> = None;
        // Whether every row so far is imported, and when the newest record was appended.
        let mut import_only = true;
        let mut newest: u64 = 0;
        loop {
            let want = settings
                .max_bytes
                .saturating_sub(bytes)
                .clamp(1, READ_CHUNK);
            match reader.read(want) {
                Ok(records) => {
                    for r in records {
                        bytes += r.payload.len();
                        end = Some(r.end);
                        oldest.get_or_insert(r.appended_ms);
                        newest = newest.max(r.appended_ms);
                        match crate::spool::rows::check(&r.payload) {
                            Ok(c) => {
                                import_only &= c.import_only;
                                rows += c.rows;
                            }
                            Err(e) => {
                                // Quarantined whole; the insert's reading skips it.
                                skip.push(r.end);
                                undecodable.push(QuarantineRow {
                                    quarantined_at: (now_ms() / 1000) as u32,
                                    site: String::new(),
                                    message_id: String::new(),
                                    reason: format!("spool record is not readable as rows: {e}"),
                                    row: String::from_utf8_lossy(&r.payload).into_owned(),
                                })
                            }
                        }
                    }
                }
                Err(e) => {
                    tracing::error!(error = %e, "reading the spool failed; retrying in 1 s");
                    if *shutdown.borrow() {
                        return;
                    }
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            }
            let full = rows >= settings.max_rows || bytes >= settings.max_bytes;
            // Records already committed and not yet read: reads stop at `READ_CHUNK`, so
            // there may be more than one read took, with no new commit to wake for.
            let more = reader.position() < spool.committed();
            let stopping = *shutdown.borrow();
            if stopping && end.is_none() {
                return;
            }
            let now = now_ms();
            let age = oldest.map(|o| Duration::from_millis(now.saturating_sub(o)));
            // How long until the batch is due by time: its age against `max_age`, or for
            // imported rows only, against `import_max_age` or the spool's quiet.
            let due_in = age.map(|a| {
                if import_only && undecodable.is_empty() {
                    let quiet = Duration::from_millis(now.saturating_sub(newest));
                    settings
                        .import_max_age
                        .saturating_sub(a)
                        .min(settings.import_quiet.saturating_sub(quiet))
                } else {
                    settings.max_age.saturating_sub(a)
                }
            });
            if end.is_some() && (full || stopping || due_in == Some(Duration::ZERO)) {
                // Due: hand it over as soon as the inserter is free. A full batch (or one at
                // shutdown) waits for that; one that is not full keeps taking rows meanwhile.
                match idle.try_acquire() {
                    Ok(p) => {
                        p.forget();
                        break;
                    }
                    Err(TryAcquireError::Closed) => return,
                    Err(TryAcquireError::NoPermits) => {}
                }
                if full || stopping {
                    match idle.acquire().await {
                        Ok(p) => {
                            p.forget();
                            break;
                        }
                        Err(_) => return,
                    }
                }
                if more {
                    tokio::task::yield_now().await;
                    continue;
                }
                tokio::select! {
                    r = committed.changed() => { if r.is_err() { return; } }
                    p = idle.acquire() => match p {
                        Ok(p) => {
                            p.forget();
                            break;
                        }
                        Err(_) => return,
                    },
                    _ = shutdown.changed() => {}
                }
                continue;
            }
            if more {
                tokio::task::yield_now().await;
                continue;
            }
            let wait = due_in.unwrap_or(Duration::from_secs(3600));
            tokio::select! {
                r = committed.changed() => { if r.is_err() { return; } }
                _ = tokio::time::sleep(wait) => {}
                _ = shutdown.changed() => {}
            }
        }
        let (Some(end), Some(oldest)) = (end, oldest) else {
            continue;
        };
        let batch = Gathered {
            range: SpoolRange {
                spool: spool.clone(),
                start,
                end,
                skip,
            },
            rows,
            undecodable,
            end,
            oldest,
        };
        if tx.send(batch).await.is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::fake::{refused, row, state, FakeSink};
    use crate::store::row::EventRow;
    use std::time::Instant;

    fn writer(
        sink: Arc<FakeSink>,
        dir: &std::path::Path,
    ) -> (Writer<FakeSink>, watch::Sender<bool>) {
        let (spool, _) = Spool::open(dir, 1 << 20, 1 << 16).unwrap();
        writer_on(sink, spool)
    }

    fn writer_on(sink: Arc<FakeSink>, spool: Spool) -> (Writer<FakeSink>, watch::Sender<bool>) {
        let (tx, rx) = watch::channel(false);
        let mut settings = WriterSettings::from(&WriterConfig::default());
        settings.policy.backoff_min = Duration::from_millis(1);
        settings.policy.backoff_max = Duration::from_millis(5);
        (
            Writer::new(spool, sink, Arc::new(Metrics::default()), settings, rx),
            tx,
        )
    }

    async fn append(spool: &Spool, rows: &[EventRow]) {
        spool
            .append(crate::spool::rows::encode(rows))
            .await
            .unwrap();
    }

    /// Runs the writer over what is spooled until `done`, then stops it.
    async fn run_until(w: Writer<FakeSink>, tx: &watch::Sender<bool>, done: impl Fn() -> bool) {
        let run = tokio::spawn(w.run());
        let until = Instant::now() + Duration::from_secs(10);
        while !done() && Instant::now() < until {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        tx.send(true).unwrap();
        run.await.unwrap();
    }

    #[tokio::test]
    async fn refused_rows_are_quarantined_and_the_checkpoint_moves() {
        let dir = tempfile::tempdir().unwrap();
        let sink = Arc::new(FakeSink::default());
        sink.refuse_event("poison", refused(27, "Cannot parse input"));
        let (w, tx) = writer(sink.clone(), dir.path());
        let spool = w.spool.clone();
        let rows: Vec<EventRow> = (0..37)
            .map(|i| row(i, if i == 5 || i == 30 { "poison" } else { "ok" }))
            .collect();
        append(&spool, &rows).await;
        run_until(w, &tx, || spool.pending_bytes() == 0).await;
        assert_eq!(sink.stored().len(), 35);
        let q = sink.quarantined();
        let ids: Vec<&str> = q.iter().map(|r| r.message_id.as_str()).collect();
        assert_eq!(ids, ["m5", "m30"]);
        assert!(q[0].reason.contains("Cannot parse input") && q[0].row.contains("\"m5\""));
        assert_eq!(spool.pending_bytes(), 0);
        assert!(!dir.path().join("dead-letter.jsonl").exists());
    }

    /// The quarantine refusing its insert holds the batch in the spool: no file, no loss.
    #[tokio::test]
    async fn a_quarantine_that_fails_keeps_the_batch_in_the_spool() {
        let dir = tempfile::tempdir().unwrap();
        let sink = Arc::new(FakeSink::default());
        sink.refuse_event("poison", refused(27, "Cannot parse input"));
        sink.fail_quarantine(
            u32::MAX,
            state(60, "Table waymark.quarantine doesn't exist."),
        );
        let (w, tx) = writer(sink.clone(), dir.path());
        let metrics = w.delivery.metrics.clone();
        let spool = w.spool.clone();
        append(&spool, &[row(1, "ok"), row(2, "poison")]).await;
        run_until(w, &tx, || sink.quarantine_calls() >= 20).await;
        assert!(sink.quarantine_calls() >= 20);
        assert!(sink.quarantined().is_empty());
        assert!(spool.pending_bytes() > 0, "the batch left the spool");
        assert_eq!(spool.checkpoint(), 0);
        let b = metrics.writer.blocked().expect("blocked");
        assert_eq!((b.cause, b.during), ("missing_table", "quarantine"));
        assert!(!dir.path().join("dead-letter.jsonl").exists());
    }

    #[tokio::test]
    async fn state_errors_are_retried_until_they_pass() {
        let dir = tempfile::tempdir().unwrap();
        let sink = Arc::new(FakeSink::default());
        sink.fail_next(30, state(210, "connection refused"));
        let (w, tx) = writer(sink.clone(), dir.path());
        let metrics = w.delivery.metrics.clone();
        let spool = w.spool.clone();
        append(&spool, &[row(1, "ok")]).await;
        run_until(w, &tx, || spool.pending_bytes() == 0).await;
        assert_eq!(sink.insert_calls(), 31);
        assert_eq!(sink.stored().len(), 1);
        assert!(sink.quarantined().is_empty());
        assert_eq!(metrics.value("waymark_insert_retries_total"), Some(30.0));
        assert!(metrics.writer.blocked().is_none());
    }

    #[tokio::test]
    async fn shutdown_stops_retrying_and_keeps_rows() {
        let dir = tempfile::tempdir().unwrap();
        let sink = Arc::new(FakeSink::default());
        sink.fail_next(u32::MAX, state(210, "connection refused"));
        let (w, tx) = writer(sink.clone(), dir.path());
        let spool = w.spool.clone();
        append(&spool, &[row(1, "ok")]).await;
        run_until(w, &tx, || sink.insert_calls() >= 3).await;
        assert!(sink.stored().is_empty());
        assert!(spool.pending_bytes() > 0);
    }

    #[tokio::test]
    async fn rows_due_during_an_insert_go_together_when_it_ends() {
        let dir = tempfile::tempdir().unwrap();
        let sink = Arc::new(FakeSink::default());
        let gate = Arc::new(tokio::sync::Notify::new());
        sink.hold_next(gate.clone());
        let (mut w, tx) = writer(sink.clone(), dir.path());
        w.settings.max_age = Duration::from_millis(10);
        let spool = w.spool.clone();
        let run = tokio::spawn(w.run());
        append(&spool, &[row(0, "ok")]).await;
        let until = Instant::now() + Duration::from_secs(5);
        while sink.insert_calls() == 0 && Instant::now() < until {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        // The first insert is under way (held): each of these rows is due (10 ms) before it
        // ends, and they are handed over as one batch when it does, not one batch each.
        for i in 1..=10 {
            append(&spool, &[row(i, "ok")]).await;
            tokio::time::sleep(Duration::from_millis(15)).await;
        }
        gate.notify_one();
        while sink.stored().len() < 11 && Instant::now() < until {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        tx.send(true).unwrap();
        run.await.unwrap();
        assert_eq!(sink.batches(), [1, 10]);
        assert_eq!(spool.pending_bytes(), 0);
    }

    /// Imported rows wait past `max_age` while the import goes on, and go as one batch once
    /// the spool is quiet; live rows still go at `max_age`.
    #[tokio::test]
    async fn an_import_goes_in_one_insert_once_the_spool_is_quiet() {
        let dir = tempfile::tempdir().unwrap();
        let sink = Arc::new(FakeSink::default());
        let (mut w, tx) = writer(sink.clone(), dir.path());
        w.settings.max_age = Duration::from_millis(10);
        w.settings.import_quiet = Duration::from_secs(2);
        let spool = w.spool.clone();
        let run = tokio::spawn(w.run());
        let imported = |i: usize| {
            let mut r = row(i, "ok");
            r.source = "import".into();
            r
        };
        for i in 0..5 {
            append(&spool, &[imported(i)]).await;
            tokio::time::sleep(Duration::from_millis(30)).await;
        }
        let until = Instant::now() + Duration::from_secs(10);
        while sink.stored().len() < 5 && Instant::now() < until {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        append(&spool, &[row(5, "ok")]).await;
        while sink.stored().len() < 6 && Instant::now() < until {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        tx.send(true).unwrap();
        run.await.unwrap();
        assert_eq!(sink.batches(), [5, 1]);
        assert_eq!(spool.pending_bytes(), 0);
    }

    /// A batch larger than a read (`READ_CHUNK`), with a record in the middle that does not
    /// decode: gathered and read back in chunks, its rows go in as one insert, the bad record
    /// alone goes to quarantine, and the checkpoint moves past all of it.
    #[tokio::test]
    async fn a_batch_of_several_reads_goes_in_whole_around_a_bad_record() {
        let dir = tempfile::tempdir().unwrap();
        let sink = Arc::new(FakeSink::default());
        let (spool, _) = Spool::open(dir.path(), 16 << 20, 1 << 20).unwrap();
        let (w, tx) = writer_on(sink.clone(), spool.clone());
        let big = "x".repeat(20_000);
        let mut ids = 0;
        for record in 0..200 {
            if record == 100 {
                spool.append(vec![0x07, 1, 2, 3]).await.unwrap();
            }
            let rows: Vec<EventRow> = (0..2)
                .map(|_| {
                    ids += 1;
                    EventRow {
                        properties: big.clone(),
                        ..row(ids, "ok")
                    }
                })
                .collect();
            append(&spool, &rows).await;
        }
        assert!(spool.committed() > 2 * READ_CHUNK as u64);
        run_until(w, &tx, || sink.stored().len() == 400).await;
        assert_eq!(sink.batches(), [400]);
        let stored = sink.stored();
        assert_eq!(stored.first().map(String::as_str), Some("m1"));
        assert_eq!(stored.last().map(String::as_str), Some("m400"));
        let q = sink.quarantined();
        assert_eq!(q.len(), 1);
        assert!(
            q[0].reason.contains("not readable as rows"),
            "{}",
            q[0].reason
        );
        assert_eq!(spool.checkpoint(), spool.committed());
    }

    #[tokio::test]
    async fn run_moves_spooled_rows_and_advances_the_checkpoint() {
        let dir = tempfile::tempdir().unwrap();
        let sink = Arc::new(FakeSink::default());
        let (w, tx) = writer(sink.clone(), dir.path());
        let spool = w.spool.clone();
        for i in 0..10 {
            append(&spool, &[row(i, "ok")]).await;
        }
        tx.send(true).unwrap();
        w.run().await;
        assert_eq!(sink.stored().len(), 10);
        assert_eq!(spool.checkpoint(), spool.committed());
        assert_eq!(spool.pending_bytes(), 0);
    }
}
