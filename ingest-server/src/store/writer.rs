//! The writer: moves spooled events into ClickHouse in large batches.
//!
//! It reads records from the spool's checkpoint on, gathers rows until `max_rows`, `max_bytes`
//! or `max_age` (age of the oldest gathered event) is reached, inserts them, and only after
//! ClickHouse confirmed the insert moves the spool checkpoint. What happens when ClickHouse says
//! no is the policy in [`super::delivery`]: while ClickHouse cannot take rows (down, auth, disk,
//! a missing column...) they stay in the spool and are retried for as long as it takes; only
//! rows proven refused (by bisection and a probe row) go to the `quarantine` table, and the
//! checkpoint moves once they are there. Nothing goes to a file.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch, Semaphore, TryAcquireError};

use super::delivery::{quarantine_row, Delivery, Policy};
use super::row::{EventRow, QuarantineRow};
use super::Sink;
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
        // Reading and decoding the next batch overlaps with inserting this one. The gatherer
        // hands a batch over only when the inserter is free (`idle`), and until then goes on
        // adding rows to it (up to the row and byte limits): no batch waits, closed, behind an
        // insert while newer rows wait behind it. At most two batches are in memory.
        let (tx, mut rx) = mpsc::channel::<Gathered>(1);
        // Each batch's row buffer goes back to the gatherer once inserted, so the next batch
        // fills it in place instead of growing a fresh `Vec` of up to `max_rows` rows by
        // doubling into freshly faulted pages (issue 20's profile: `Vec` growth and page
        // zeroing were its top cost). Two buffers go round from the start, because the
        // gatherer fills the next while this one is being inserted; with one, every other
        // batch grew a fresh `Vec`.
        let (recycle, recycled) = mpsc::channel::<Vec<EventRow>>(2);
        for _ in 0..2 {
            let _ = recycle.try_send(Vec::new());
        }
        let idle = Arc::new(Semaphore::new(0));
        let gatherer = tokio::spawn(gather(
            self.spool.clone(),
            self.settings.clone(),
            self.shutdown.clone(),
            idle.clone(),
            tx,
            recycled,
        ));
        loop {
            idle.add_permits(1);
            let Some(batch) = rx.recv().await else {
                break;
            };
            self.spool.set_oldest_pending_ms(Some(batch.oldest));
            if self.store(&batch).await.is_err() {
                tracing::warn!(
                    rows = batch.rows.len(),
                    "shutting down before ClickHouse took these rows; they stay in the spool"
                );
                break;
            }
            let mut rows = batch.rows;
            rows.clear();
            let _ = recycle.try_send(rows);
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
        if batch.rows.is_empty() {
            return Ok(());
        }
        self.delivery.deliver(&batch.rows).await?;
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
    rows: Vec<EventRow>,
    undecodable: Vec<QuarantineRow>,
    /// Commit this position once the batch is in ClickHouse.
    end: u64,
    oldest: u64,
}

/// Reads the spool into batches by the row, byte and age thresholds, and hands them on in
/// order. Ends when shutdown is signalled and everything committed so far has been handed on.
async fn gather(
    spool: Spool,
    settings: WriterSettings,
    mut shutdown: watch::Receiver<bool>,
    idle: Arc<Semaphore>,
    tx: mpsc::Sender<Gathered>,
    mut recycled: mpsc::Receiver<Vec<EventRow>>,
) {
    let mut reader = spool.reader();
    // The most rows a batch holds: `max_rows`, or `max_bytes` of the smallest spooled rows.
    let smallest = crate::spool::rows::encode(&[EventRow::default()]).len() - 5;
    let full_batch = settings.max_rows.min(settings.max_bytes / smallest + 1);
    let mut committed = spool.subscribe();
    loop {
        let mut rows: Vec<EventRow> = recycled.try_recv().unwrap_or_default();
        // Room for a full batch at once: grown by doubling, a batch of tens of thousands of
        // rows was copied several times into fresh pages (6 % of the server's CPU under load).
        // Pages are only touched as rows fill them, so a small batch costs no more memory.
        rows.reserve(full_batch);
        let mut undecodable: Vec<QuarantineRow> = Vec::new();
        let mut bytes = 0usize;
        let mut end: Option<u64> = None;
        let mut oldest: Option<u64> = None;
        // Whether every row so far is imported, and when the newest record was appended.
        let mut import_only = true;
        let mut newest: u64 = 0;
        loop {
            match reader.read(settings.max_bytes.saturating_sub(bytes).max(1)) {
                Ok(records) => {
                    for r in records {
                        bytes += r.payload.len();
                        end = Some(r.end);
                        oldest.get_or_insert(r.appended_ms);
                        newest = newest.max(r.appended_ms);
                        let from = rows.len();
                        match crate::spool::rows::decode_into(&r.payload, &mut rows) {
                            Ok(_) => {
                                import_only &=
                                    rows[from..].iter().all(|row| row.source == "import");
                            }
                            Err(e) => undecodable.push(QuarantineRow {
                                quarantined_at: (now_ms() / 1000) as u32,
                                site: String::new(),
                                message_id: String::new(),
                                reason: format!("spool record is not readable as rows: {e}"),
                                row: String::from_utf8_lossy(&r.payload).into_owned(),
                            }),
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
            let full = rows.len() >= settings.max_rows || bytes >= settings.max_bytes;
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
    use std::time::Instant;

    fn writer(
        sink: Arc<FakeSink>,
        dir: &std::path::Path,
    ) -> (Writer<FakeSink>, watch::Sender<bool>) {
        let (spool, _) = Spool::open(dir, 1 << 20, 1 << 16).unwrap();
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
