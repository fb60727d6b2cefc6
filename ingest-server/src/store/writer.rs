//! The writer: moves spooled events into ClickHouse in large batches.
//!
//! It reads records from the spool's checkpoint on, gathers rows until `max_rows`, `max_bytes`
//! or `max_age` (age of the oldest gathered event) is reached, inserts them, and only after
//! ClickHouse confirmed the insert moves the spool checkpoint. On failure:
//! - retryable (network, overload, too many parts): the same rows again, with exponential
//!   backoff; the spool keeps accepting meanwhile, up to its cap;
//! - bad data: the batch is bisected so good rows still land, down to single rows, which go to
//!   the quarantine table with ClickHouse's reason;
//! - anything else: retried `max_attempts` times, then handled as bad data.
//!
//! If the quarantine insert itself is refused, the rows are appended to `dead-letter.jsonl` in
//! the spool directory (fsynced) and counted: never retried forever, never dropped silently.

use std::io::Write as _;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures::future::BoxFuture;
use tokio::sync::{mpsc, watch, Semaphore, TryAcquireError};

use super::row::{EventRow, QuarantineRow};
use super::{exception_code, ErrorClass, Sink, StoreError};
use crate::config::WriterConfig;
use crate::metrics::Metrics;
use crate::spool::Spool;

/// Thresholds and retry pacing.
#[derive(Debug, Clone)]
pub struct WriterSettings {
    pub max_rows: usize,
    pub max_bytes: usize,
    pub max_age: Duration,
    pub max_attempts: u32,
    pub backoff_min: Duration,
    pub backoff_max: Duration,
}

impl From<&WriterConfig> for WriterSettings {
    fn from(c: &WriterConfig) -> Self {
        WriterSettings {
            max_rows: c.max_rows,
            max_bytes: c.max_bytes.0 as usize,
            max_age: c.max_age.0,
            max_attempts: c.max_attempts,
            backoff_min: Duration::from_millis(100),
            backoff_max: Duration::from_secs(5),
        }
    }
}

/// The writer gave up because the server is shutting down; the rows stay in the spool.
#[derive(Debug)]
pub struct Stopped;

pub struct Writer<S: Sink> {
    spool: Spool,
    sink: Arc<S>,
    metrics: Arc<Metrics>,
    settings: WriterSettings,
    prepared: AtomicBool,
    shutdown: watch::Receiver<bool>,
    dead_letter: PathBuf,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl<S: Sink> Writer<S> {
    pub fn new(
        spool: Spool,
        sink: Arc<S>,
        metrics: Arc<Metrics>,
        settings: WriterSettings,
        shutdown: watch::Receiver<bool>,
    ) -> Self {
        let dead_letter = spool.dir().join("dead-letter.jsonl");
        Writer {
            spool,
            sink,
            metrics,
            settings,
            prepared: AtomicBool::new(false),
            shutdown,
            dead_letter,
        }
    }

    fn stopping(&self) -> bool {
        *self.shutdown.borrow()
    }

    /// Runs until shutdown is signalled and everything spooled is delivered (or cannot be
    /// delivered right now, in which case it stays in the spool for the next start).
    pub async fn run(self) {
        // Reading and decoding the next batch overlaps with inserting this one. The gatherer
        // hands a batch over only when the inserter is free (`idle`), and until then goes on
        // adding rows to it (up to the row and byte limits): no batch waits, closed, behind an
        // insert while newer rows wait behind it. At most two batches are in memory.
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
            if !batch.undecodable.is_empty() && self.quarantine(&batch.undecodable).await.is_err() {
                break;
            }
            if !batch.rows.is_empty() && self.deliver(&batch.rows).await.is_err() {
                tracing::warn!(
                    rows = batch.rows.len(),
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

    async fn backoff(&self, delay: &mut Duration) -> Result<(), Stopped> {
        if self.stopping() {
            return Err(Stopped);
        }
        let mut sd = self.shutdown.clone();
        tokio::select! {
            _ = tokio::time::sleep(*delay) => {}
            _ = sd.changed() => {}
        }
        *delay = (*delay * 2).min(self.settings.backoff_max);
        if self.stopping() {
            return Err(Stopped);
        }
        Ok(())
    }

    /// Inserts `rows`, retrying and bisecting as the error demands.
    pub fn deliver<'a>(&'a self, rows: &'a [EventRow]) -> BoxFuture<'a, Result<(), Stopped>> {
        Box::pin(async move {
            let mut attempts = 0u32;
            let mut delay = self.settings.backoff_min;
            loop {
                if !self.prepared.load(Ordering::Relaxed) {
                    match self.sink.prepare().await {
                        Ok(()) => self.prepared.store(true, Ordering::Relaxed),
                        Err(e) => {
                            self.metrics.clickhouse_up.store(0, Ordering::Relaxed);
                            tracing::warn!(error = %e, "ClickHouse schema check failed; retrying");
                            self.metrics.insert_retries.fetch_add(1, Ordering::Relaxed);
                            self.backoff(&mut delay).await?;
                            continue;
                        }
                    }
                }
                let started = Instant::now();
                match self.sink.insert(rows).await {
                    Ok(()) => {
                        let m = &self.metrics;
                        m.clickhouse_up.store(1, Ordering::Relaxed);
                        m.insert_batches.fetch_add(1, Ordering::Relaxed);
                        m.insert_rows
                            .fetch_add(rows.len() as u64, Ordering::Relaxed);
                        m.insert_batch_rows.observe(rows.len() as f64);
                        m.insert_seconds.observe(started.elapsed().as_secs_f64());
                        tracing::debug!(
                            rows = rows.len(),
                            ms = started.elapsed().as_millis() as u64,
                            "inserted"
                        );
                        return Ok(());
                    }
                    Err(e) => {
                        self.metrics.insert_retries.fetch_add(1, Ordering::Relaxed);
                        // Unknown table or database: the schema is gone; prepare it again.
                        if matches!(exception_code(&e.message), Some(60 | 81)) {
                            self.prepared.store(false, Ordering::Relaxed);
                            tracing::warn!(error = %e, "ClickHouse table missing; re-applying migrations");
                            self.backoff(&mut delay).await?;
                            continue;
                        }
                        match e.class {
                            ErrorClass::Retryable => {
                                self.metrics.clickhouse_up.store(0, Ordering::Relaxed);
                                tracing::warn!(error = %e, rows = rows.len(), retry_in_ms = delay.as_millis() as u64, "ClickHouse insert failed; will retry");
                                self.backoff(&mut delay).await?;
                            }
                            ErrorClass::BadData => return self.bisect(rows, &e).await,
                            ErrorClass::Unknown => {
                                attempts += 1;
                                if attempts >= self.settings.max_attempts {
                                    tracing::error!(error = %e, attempts, "ClickHouse keeps refusing this batch; bisecting it");
                                    return self.bisect(rows, &e).await;
                                }
                                tracing::warn!(error = %e, attempts, "ClickHouse insert failed; will retry");
                                self.backoff(&mut delay).await?;
                            }
                        }
                    }
                }
            }
        })
    }

    async fn bisect(&self, rows: &[EventRow], e: &StoreError) -> Result<(), Stopped> {
        if rows.len() <= 1 {
            let q: Vec<QuarantineRow> = rows
                .iter()
                .map(|r| QuarantineRow {
                    quarantined_at: (now_ms() / 1000) as u32,
                    site: r.site.clone(),
                    message_id: r.message_id.clone(),
                    reason: e.message.clone(),
                    row: serde_json::to_string(r).unwrap_or_default(),
                })
                .collect();
            tracing::warn!(reason = %e, message_id = rows.first().map(|r| r.message_id.as_str()).unwrap_or(""), "row refused by ClickHouse; quarantined");
            return self.quarantine(&q).await;
        }
        let (left, right) = rows.split_at(rows.len() / 2);
        self.deliver(left).await?;
        self.deliver(right).await
    }

    async fn quarantine(&self, rows: &[QuarantineRow]) -> Result<(), Stopped> {
        let mut delay = self.settings.backoff_min;
        for _ in 0..self.settings.max_attempts.max(1) {
            match self.sink.quarantine(rows).await {
                Ok(()) => {
                    self.metrics
                        .quarantined_rows
                        .fetch_add(rows.len() as u64, Ordering::Relaxed);
                    return Ok(());
                }
                Err(e) if e.class == ErrorClass::Retryable => {
                    tracing::warn!(error = %e, "quarantine insert failed; will retry");
                    self.backoff(&mut delay).await?;
                }
                Err(e) => {
                    tracing::error!(error = %e, "quarantine insert refused");
                    break;
                }
            }
        }
        self.dead_letter(rows);
        Ok(())
    }

    fn dead_letter(&self, rows: &[QuarantineRow]) {
        let result = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.dead_letter)
            .and_then(|mut f| {
                for r in rows {
                    let line = serde_json::to_string(r).unwrap_or_default();
                    f.write_all(line.as_bytes())?;
                    f.write_all(b"\n")?;
                }
                f.sync_data()
            });
        self.metrics
            .dead_lettered_rows
            .fetch_add(rows.len() as u64, Ordering::Relaxed);
        match result {
            Ok(()) => {
                tracing::error!(rows = rows.len(), file = %self.dead_letter.display(), "rows written to the dead-letter file")
            }
            Err(e) => {
                tracing::error!(rows = rows.len(), error = %e, "rows could not be stored anywhere; see this log line")
            }
        }
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
) {
    let mut reader = spool.reader();
    let mut committed = spool.subscribe();
    loop {
        let mut rows: Vec<EventRow> = Vec::new();
        let mut undecodable: Vec<QuarantineRow> = Vec::new();
        let mut bytes = 0usize;
        let mut end: Option<u64> = None;
        let mut oldest: Option<u64> = None;
        loop {
            match reader.read(settings.max_bytes.saturating_sub(bytes).max(1)) {
                Ok(records) => {
                    for r in records {
                        bytes += r.payload.len();
                        end = Some(r.end);
                        oldest.get_or_insert(r.appended_ms);
                        match crate::spool::rows::decode(&r.payload) {
                            Ok(mut v) => rows.append(&mut v),
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
            let age = oldest.map(|o| Duration::from_millis(now_ms().saturating_sub(o)));
            if end.is_some() && (full || stopping || age >= Some(settings.max_age)) {
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
            let wait = match age {
                Some(a) => settings.max_age.saturating_sub(a),
                None => Duration::from_secs(3600),
            };
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
    use std::sync::Mutex;

    /// A sink that refuses rows whose event is "poison" as bad data, and fails the first
    /// `outage` calls with a retryable error.
    #[derive(Default)]
    struct FakeSink {
        outage: Mutex<u32>,
        stored: Mutex<Vec<String>>,
        quarantined: Mutex<Vec<QuarantineRow>>,
        calls: Mutex<u32>,
        /// When set, the next insert waits for it; and the size of each stored batch.
        hold: Mutex<Option<Arc<tokio::sync::Notify>>>,
        batches: Mutex<Vec<usize>>,
    }

    impl Sink for FakeSink {
        fn insert<'a>(&'a self, rows: &'a [EventRow]) -> BoxFuture<'a, Result<(), StoreError>> {
            Box::pin(async move {
                *self.calls.lock().unwrap() += 1;
                let hold = self.hold.lock().unwrap().take();
                if let Some(h) = hold {
                    h.notified().await;
                }
                let mut o = self.outage.lock().unwrap();
                if *o > 0 {
                    *o -= 1;
                    return Err(StoreError {
                        class: ErrorClass::Retryable,
                        message: "connection refused".into(),
                    });
                }
                if rows.iter().any(|r| r.event == "poison") {
                    return Err(StoreError {
                        class: ErrorClass::BadData,
                        message: "Code: 27. poison".into(),
                    });
                }
                self.stored
                    .lock()
                    .unwrap()
                    .extend(rows.iter().map(|r| r.message_id.clone()));
                self.batches.lock().unwrap().push(rows.len());
                Ok(())
            })
        }
        fn quarantine<'a>(
            &'a self,
            rows: &'a [QuarantineRow],
        ) -> BoxFuture<'a, Result<(), StoreError>> {
            Box::pin(async move {
                self.quarantined
                    .lock()
                    .unwrap()
                    .extend(rows.iter().cloned());
                Ok(())
            })
        }
        fn prepare(&self) -> BoxFuture<'_, Result<(), StoreError>> {
            Box::pin(async { Ok(()) })
        }
    }

    fn row(id: usize, event: &str) -> EventRow {
        EventRow {
            site: "s".into(),
            message_id: format!("m{id}"),
            event: event.into(),
            ..EventRow::default()
        }
    }

    fn writer(
        sink: Arc<FakeSink>,
        dir: &std::path::Path,
    ) -> (Writer<FakeSink>, watch::Sender<bool>) {
        let (spool, _) = Spool::open(dir, 1 << 20, 1 << 16).unwrap();
        let (tx, rx) = watch::channel(false);
        let mut settings = WriterSettings::from(&WriterConfig::default());
        settings.backoff_min = Duration::from_millis(1);
        settings.max_attempts = 3;
        (
            Writer::new(spool, sink, Arc::new(Metrics::default()), settings, rx),
            tx,
        )
    }

    #[tokio::test]
    async fn bad_rows_are_bisected_into_quarantine_and_good_rows_land() {
        let dir = tempfile::tempdir().unwrap();
        let sink = Arc::new(FakeSink::default());
        let (w, _tx) = writer(sink.clone(), dir.path());
        let rows: Vec<EventRow> = (0..37)
            .map(|i| row(i, if i == 5 || i == 30 { "poison" } else { "ok" }))
            .collect();
        w.deliver(&rows).await.unwrap();
        let stored = sink.stored.lock().unwrap().clone();
        assert_eq!(stored.len(), 35);
        let q = sink.quarantined.lock().unwrap().clone();
        let ids: Vec<&str> = q.iter().map(|r| r.message_id.as_str()).collect();
        assert_eq!(ids, ["m5", "m30"]);
        assert!(q[0].reason.contains("poison") && q[0].row.contains("\"m5\""));
    }

    #[tokio::test]
    async fn retryable_errors_are_retried_until_they_pass() {
        let dir = tempfile::tempdir().unwrap();
        let sink = Arc::new(FakeSink::default());
        *sink.outage.lock().unwrap() = 4;
        let (w, _tx) = writer(sink.clone(), dir.path());
        w.deliver(&[row(1, "ok")]).await.unwrap();
        assert_eq!(*sink.calls.lock().unwrap(), 5);
        assert_eq!(sink.stored.lock().unwrap().len(), 1);
        assert_eq!(w.metrics.insert_retries.load(Ordering::Relaxed), 4);
    }

    #[tokio::test]
    async fn shutdown_stops_retrying_and_keeps_rows() {
        let dir = tempfile::tempdir().unwrap();
        let sink = Arc::new(FakeSink::default());
        *sink.outage.lock().unwrap() = u32::MAX;
        let (w, tx) = writer(sink.clone(), dir.path());
        tx.send(true).unwrap();
        assert!(w.deliver(&[row(1, "ok")]).await.is_err());
        assert!(sink.stored.lock().unwrap().is_empty());
    }

    #[tokio::test]
    async fn rows_due_during_an_insert_go_together_when_it_ends() {
        let dir = tempfile::tempdir().unwrap();
        let sink = Arc::new(FakeSink::default());
        let gate = Arc::new(tokio::sync::Notify::new());
        *sink.hold.lock().unwrap() = Some(gate.clone());
        let (mut w, tx) = writer(sink.clone(), dir.path());
        w.settings.max_age = Duration::from_millis(10);
        let spool = w.spool.clone();
        let run = tokio::spawn(w.run());
        let append = |i: usize| {
            let spool = spool.clone();
            async move {
                let payload = serde_json::to_vec(&vec![row(i, "ok")]).unwrap();
                spool.append(payload).await.unwrap();
            }
        };
        append(0).await;
        let until = Instant::now() + Duration::from_secs(5);
        while *sink.calls.lock().unwrap() == 0 && Instant::now() < until {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        // The first insert is under way (held): each of these rows is due (10 ms) before it
        // ends, and they are handed over as one batch when it does, not one batch each.
        for i in 1..=10 {
            append(i).await;
            tokio::time::sleep(Duration::from_millis(15)).await;
        }
        gate.notify_one();
        while sink.stored.lock().unwrap().len() < 11 && Instant::now() < until {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        tx.send(true).unwrap();
        run.await.unwrap();
        assert_eq!(*sink.batches.lock().unwrap(), [1, 10]);
        assert_eq!(spool.pending_bytes(), 0);
    }

    #[tokio::test]
    async fn run_moves_spooled_rows_and_advances_the_checkpoint() {
        let dir = tempfile::tempdir().unwrap();
        let sink = Arc::new(FakeSink::default());
        let (w, tx) = writer(sink.clone(), dir.path());
        let spool = w.spool.clone();
        for i in 0..10 {
            let payload = serde_json::to_vec(&vec![row(i, "ok")]).unwrap();
            spool.append(payload).await.unwrap();
        }
        tx.send(true).unwrap();
        w.run().await;
        assert_eq!(sink.stored.lock().unwrap().len(), 10);
        assert_eq!(spool.checkpoint(), spool.committed());
        assert_eq!(spool.pending_bytes(), 0);
    }
}
