//! The writer's error policy: how rows get into ClickHouse when it says no.
//!
//! Every failed insert is one of two things ([`ErrorClass`]):
//!
//! - **ClickHouse cannot take anything now** ([`ErrorClass::Unavailable`]): down, timeouts,
//!   auth, access, quota, disk, memory, read-only, a missing table or column, a killed query,
//!   too many parts. The same rows are tried again with backoff (capped at `max_backoff`) for
//!   as long as it takes: they stay in the spool, no attempt limit ever sends them elsewhere.
//!   `/readyz` and `waymark_writer_blocked{cause}` name the cause meanwhile.
//! - **ClickHouse refused this insert** ([`ErrorClass::Refused`]): a parse or type error, a
//!   check that throws, or a code the table in `store` does not know. That may be the rows, or
//!   may be ClickHouse; a code alone never decides. The writer asks for proof:
//!   1. a *probe*: one known-good row ([`super::probe_row`]) inserted into a fresh copy of
//!      `events` ([`super::PROBE_TABLE`]). If ClickHouse refuses the probe too, the refusal is
//!      about ClickHouse, and the rows wait as above.
//!   2. *bisection*: the probe went in, so the batch is split in halves, each delivered by this
//!      same policy; the halves that go in, go in.
//!   3. a single row refused while a probe row went in (within the last second) is tried again
//!      until it was refused `max_attempts` times in a row, and only then is it proven guilty.
//!
//! Proven rows are handed back ([`Delivery::take_refused`]): the writer puts them in the
//! `quarantine` table, from which `ingest-server quarantine replay` sends them again once the
//! cause is fixed; the replay reports them. If the quarantine insert fails, that is
//! ClickHouse's state again: retried for as long as it takes, the batch stays in the spool.
//! Nothing is written to a file.
//!
//! `too many partitions for a single INSERT block` is about the batch, not a row: the batch is
//! split (a single row touches one partition) and nothing is quarantined for it.
//!
//! What the probe cannot see: materialized views on `events` (the copy has none). A view that
//! fails every insert with a code outside the state list would make every row look refused;
//! such rows are kept in `quarantine` and replayed once the view is fixed.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use tokio::sync::watch;

use super::row::{EventRow, QuarantineRow};
use super::{Cause, ErrorClass, Sink, StoreError};
use crate::clock::now_ms_u64 as now_ms;
use crate::metrics::Metrics;

/// How long a probe row that went in counts as proof that ClickHouse takes rows.
const PROBE_FRESH: Duration = Duration::from_secs(1);

/// Retry pacing and the proof asked before a row counts as refused.
#[derive(Debug, Clone)]
pub struct Policy {
    /// Refusals of a single row, each while a probe row went in, before it is handed back as
    /// refused (at least 1).
    pub max_attempts: u32,
    pub backoff_min: Duration,
    /// The longest pause between two attempts while ClickHouse cannot take rows.
    pub backoff_max: Duration,
}

/// Delivery gave up because the server (or the replay) is stopping; the rows stay where they
/// came from.
#[derive(Debug)]
pub struct Stopped;

/// The quarantine row for `row`, which ClickHouse refused with `reason`.
pub fn quarantine_row(row: &EventRow, reason: &str) -> QuarantineRow {
    QuarantineRow {
        quarantined_at: (now_ms() / 1000) as u32,
        site: row.site.clone(),
        message_id: row.message_id.clone(),
        reason: reason.to_string(),
        row: serde_json::to_string(row).unwrap_or_default(),
    }
}

/// Delivers rows to a [`Sink`] by the policy in the module doc.
pub struct Delivery<S: Sink> {
    sink: Arc<S>,
    pub(crate) metrics: Arc<Metrics>,
    policy: Policy,
    prepared: AtomicBool,
    shutdown: watch::Receiver<bool>,
    probe_ok_at: Mutex<Option<Instant>>,
    refused: Mutex<Vec<(EventRow, StoreError)>>,
}

impl<S: Sink> Delivery<S> {
    pub fn new(
        sink: Arc<S>,
        metrics: Arc<Metrics>,
        policy: Policy,
        shutdown: watch::Receiver<bool>,
    ) -> Self {
        Delivery {
            sink,
            metrics,
            policy,
            prepared: AtomicBool::new(false),
            shutdown,
            probe_ok_at: Mutex::new(None),
            refused: Mutex::new(Vec::new()),
        }
    }

    fn stopping(&self) -> bool {
        *self.shutdown.borrow()
    }

    /// The rows proven refused since the last call, with ClickHouse's reason.
    pub fn take_refused(&self) -> Vec<(EventRow, StoreError)> {
        std::mem::take(&mut *self.refused.lock().expect("refused rows"))
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
        *delay = (*delay * 2).min(self.policy.backoff_max);
        if self.stopping() {
            return Err(Stopped);
        }
        Ok(())
    }

    /// ClickHouse cannot take rows (`during` says what failed): say why, wait, and let the
    /// caller try the same rows again.
    async fn wait_out(
        &self,
        cause: Cause,
        during: &'static str,
        error: &str,
        delay: &mut Duration,
    ) -> Result<(), Stopped> {
        if cause == Cause::MissingTable {
            // The schema may be gone: apply the migrations again before the next attempt.
            self.prepared.store(false, Ordering::Relaxed);
        }
        if cause != Cause::SpoolRead {
            self.metrics.clickhouse_up.set(0.0);
        }
        self.metrics
            .writer
            .block(cause.label(), during, error, now_ms());
        tracing::warn!(
            cause = cause.label(),
            during,
            error,
            retry_in_ms = delay.as_millis() as u64,
            "ClickHouse cannot take rows now; they stay in the spool and are tried again"
        );
        self.backoff(delay).await
    }

    /// Applies the migrations once (and again after a table went missing), retrying while
    /// ClickHouse cannot.
    async fn prepare(&self, delay: &mut Duration) -> Result<(), Stopped> {
        while !self.prepared.load(Ordering::Relaxed) {
            match self.sink.prepare().await {
                Ok(()) => self.prepared.store(true, Ordering::Relaxed),
                Err(e) => {
                    self.metrics.insert_retries.increment(1);
                    self.wait_out(e.cause(), "schema", &e.message, delay)
                        .await?;
                }
            }
        }
        Ok(())
    }

    /// Whether ClickHouse takes a known-good row now (a recent pass counts).
    async fn probe(&self) -> Result<(), StoreError> {
        let fresh = self
            .probe_ok_at
            .lock()
            .expect("probe time")
            .is_some_and(|t| t.elapsed() < PROBE_FRESH);
        if fresh {
            return Ok(());
        }
        self.metrics.probes.increment(1);
        let result = self.sink.probe().await;
        if result.is_ok() {
            *self.probe_ok_at.lock().expect("probe time") = Some(Instant::now());
            self.metrics.clickhouse_up.set(1.0);
            self.metrics.writer.clear();
        }
        result
    }

    /// Inserts `rows`: retried while ClickHouse cannot take them, split when it refuses them
    /// and takes a probe row; rows proven refused are kept for [`Self::take_refused`]. Returns
    /// once every row went in or was proven refused, or when stopping.
    pub fn deliver<'a>(&'a self, rows: &'a [EventRow]) -> BoxFuture<'a, Result<(), Stopped>> {
        Box::pin(async move {
            let mut delay = self.policy.backoff_min;
            let mut refusals = 0u32;
            loop {
                self.prepare(&mut delay).await?;
                let started = Instant::now();
                let e = match self.sink.insert(rows).await {
                    Ok(()) => {
                        self.landed(rows.len(), started);
                        return Ok(());
                    }
                    Err(e) => e,
                };
                self.metrics.insert_retries.increment(1);
                match e.class {
                    ErrorClass::Unavailable(Cause::TooManyPartitions) if rows.len() > 1 => {
                        tracing::warn!(rows = rows.len(), error = %e, "the batch spans too many partitions for one insert; splitting it");
                        return self.split(rows).await;
                    }
                    ErrorClass::Unavailable(cause) => {
                        self.wait_out(cause, "insert", &e.message, &mut delay)
                            .await?;
                    }
                    ErrorClass::Refused => {
                        if let Err(p) = self.probe().await {
                            // A known-good row is refused too: ClickHouse's state, not the rows.
                            let error = format!("{p} (the batch of {} rows: {e})", rows.len());
                            self.wait_out(p.cause(), "probe", &error, &mut delay)
                                .await?;
                            continue;
                        }
                        delay = self.policy.backoff_min;
                        if rows.len() > 1 {
                            tracing::info!(rows = rows.len(), error = %e, "ClickHouse refused the batch and took a probe row; splitting it to find the rows it refuses");
                            return self.split(rows).await;
                        }
                        refusals += 1;
                        if refusals >= self.policy.max_attempts.max(1) {
                            tracing::warn!(message_id = %rows[0].message_id, site = %rows[0].site, refusals, error = %e, "ClickHouse refuses this row and takes a probe row");
                            self.refused
                                .lock()
                                .expect("refused rows")
                                .push((rows[0].clone(), e));
                            return Ok(());
                        }
                    }
                }
            }
        })
    }

    /// Inserts the rows of spool payloads (`rows` of them) by [`Sink::insert_payloads`],
    /// without holding them decoded, and retries the same way while ClickHouse cannot take
    /// them. What needs rows one by one (a refusal to bisect, a batch over too many
    /// partitions to split) decodes them and goes on by [`Self::deliver`].
    pub async fn deliver_payloads(
        &self,
        payloads: &dyn super::Payloads,
        rows: usize,
    ) -> Result<(), Stopped> {
        let mut delay = self.policy.backoff_min;
        loop {
            self.prepare(&mut delay).await?;
            let started = Instant::now();
            let e = match self.sink.insert_payloads(payloads).await {
                Ok(()) => {
                    self.landed(rows, started);
                    return Ok(());
                }
                Err(e) => e,
            };
            self.metrics.insert_retries.increment(1);
            match e.class {
                ErrorClass::Unavailable(cause) if cause != Cause::TooManyPartitions => {
                    self.wait_out(cause, "insert", &e.message, &mut delay)
                        .await?;
                }
                _ => {
                    tracing::info!(rows, error = %e, "the batch needs its rows one by one; decoding it");
                    let decoded = loop {
                        match super::decode_payloads(payloads) {
                            Ok(d) => break d,
                            Err(e) => {
                                self.wait_out(e.cause(), "spool", &e.message, &mut delay)
                                    .await?
                            }
                        }
                    };
                    return self.deliver(&decoded).await;
                }
            }
        }
    }

    async fn split(&self, rows: &[EventRow]) -> Result<(), Stopped> {
        let (left, right) = rows.split_at(rows.len() / 2);
        self.deliver(left).await?;
        self.deliver(right).await
    }

    fn landed(&self, rows: usize, started: Instant) {
        let m = &self.metrics;
        m.clickhouse_up.set(1.0);
        m.writer.clear();
        m.insert_batches.increment(1);
        m.insert_rows.increment(rows as u64);
        m.insert_batch_rows.record(rows as f64);
        m.insert_seconds.record(started.elapsed().as_secs_f64());
        tracing::debug!(rows, ms = started.elapsed().as_millis() as u64, "inserted");
    }

    /// Stores rows in the quarantine table, retrying for as long as it takes (a refused
    /// quarantine insert is ClickHouse's state: no row of it is at fault).
    pub async fn quarantine(&self, rows: &[QuarantineRow]) -> Result<(), Stopped> {
        let mut delay = self.policy.backoff_min;
        loop {
            self.prepare(&mut delay).await?;
            match self.sink.quarantine(rows).await {
                Ok(()) => {
                    self.metrics.quarantined_rows.increment(rows.len() as u64);
                    self.metrics.writer.clear();
                    for r in rows {
                        tracing::warn!(site = %r.site, message_id = %r.message_id, reason = %r.reason, "row quarantined");
                    }
                    return Ok(());
                }
                Err(e) => {
                    self.wait_out(e.cause(), "quarantine", &e.message, &mut delay)
                        .await?
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::fake::{refused, row, state, FakeSink};

    fn delivery(sink: Arc<FakeSink>) -> (Delivery<FakeSink>, watch::Sender<bool>) {
        let (tx, rx) = watch::channel(false);
        let policy = Policy {
            max_attempts: 3,
            backoff_min: Duration::from_millis(1),
            backoff_max: Duration::from_millis(2),
        };
        (
            Delivery::new(sink, Arc::new(Metrics::default()), policy, rx),
            tx,
        )
    }

    /// A row-fault: a String where the column wants a UInt8 (the fake refuses it as ClickHouse
    /// does, code 6). The batch is bisected; the good rows land, the bad ones are handed back.
    #[tokio::test]
    async fn refused_rows_are_bisected_out_and_the_good_rows_land() {
        let sink = Arc::new(FakeSink::default());
        sink.refuse_event(
            "not-a-uint8",
            refused(6, "Cannot parse input: expected UInt8"),
        );
        let (d, _tx) = delivery(sink.clone());
        let rows: Vec<EventRow> = (0..37)
            .map(|i| {
                row(
                    i,
                    if i == 5 || i == 30 {
                        "not-a-uint8"
                    } else {
                        "ok"
                    },
                )
            })
            .collect();
        d.deliver(&rows).await.unwrap();
        assert_eq!(sink.stored().len(), 35);
        let refused: Vec<String> = d
            .take_refused()
            .into_iter()
            .map(|(r, e)| {
                assert!(e.message.contains("Code: 6"), "{e}");
                r.message_id
            })
            .collect();
        assert_eq!(refused, ["m5", "m30"]);
        assert!(sink.probes() >= 1, "no probe before the rows were blamed");
    }

    /// A single-row batch the sink refuses is handed back only after `max_attempts` refusals,
    /// each with the probe row going in.
    #[tokio::test]
    async fn a_single_refused_row_is_tried_max_attempts_times() {
        let sink = Arc::new(FakeSink::default());
        sink.refuse_event("bad", refused(27, "Cannot parse input"));
        let (d, _tx) = delivery(sink.clone());
        d.deliver(&[row(1, "bad")]).await.unwrap();
        assert_eq!(sink.insert_calls(), 3);
        assert_eq!(d.take_refused().len(), 1);
    }

    /// A refusal the probe row gets too is ClickHouse's state: nothing is bisected or handed
    /// back, the rows are retried until ClickHouse takes them (far beyond `max_attempts`).
    #[tokio::test]
    async fn a_refusal_the_probe_gets_too_is_waited_out() {
        let sink = Arc::new(FakeSink::default());
        // A code no table knows, on 20 inserts in a row, and the probe refused meanwhile.
        sink.fail_next(20, refused(999_999, "something new"));
        sink.fail_probes(true);
        let (d, _tx) = delivery(sink.clone());
        let rows: Vec<EventRow> = (0..4).map(|i| row(i, "ok")).collect();
        d.deliver(&rows).await.unwrap();
        assert_eq!(sink.insert_calls(), 21);
        assert_eq!(sink.batches(), [4], "the batch was split");
        assert!(sink.probes() >= 20);
        assert!(d.take_refused().is_empty());
    }

    /// Codes 18.16 cannot produce, each a state of ClickHouse: the rows stay, retried well past
    /// `max_attempts`, the cause is named while it lasts, and no row is blamed.
    #[tokio::test]
    async fn state_errors_keep_the_rows_and_name_the_cause() {
        for (code, text, label) in [
            (252, "Too many parts (300). Merges are processing significantly slower than inserts", "too_many_parts"),
            (241, "Memory limit (for query) exceeded: would use 9.31 GiB", "memory"),
            (243, "Cannot reserve 1.00 MiB, not enough space", "disk_full"),
            (201, "Quota for user `waymark` for 3600 seconds has been exceeded", "quota"),
            (497, "waymark: Not enough privileges. To execute this query it's necessary to have grant INSERT ON waymark.events", "access_denied"),
            (516, "waymark: Authentication failed: password is incorrect", "auth"),
            (394, "Query was cancelled", "query_killed"),
            (16, "No such column utm_term in table waymark.events", "missing_column"),
        ] {
            let sink = Arc::new(FakeSink::default());
            sink.fail_next(12, state(code, text));
            let (d, _tx) = delivery(sink.clone());
            let metrics = d.metrics.clone();
            let rows: Vec<EventRow> = (0..3).map(|i| row(i, "ok")).collect();
            let run = tokio::spawn(async move {
                d.deliver(&rows).await.unwrap();
                d
            });
            // Blocked, naming the cause, while the errors last.
            let deadline = Instant::now() + Duration::from_secs(10);
            let mut seen = None;
            while !run.is_finished() && Instant::now() < deadline {
                if let Some(b) = metrics.writer.blocked() {
                    seen = Some(b);
                }
                tokio::task::yield_now().await;
            }
            let d = run.await.unwrap();
            let b = seen.unwrap_or_else(|| panic!("code {code}: never reported blocked"));
            assert_eq!(b.cause, label, "code {code}");
            assert!(b.error.contains(text), "code {code}: {}", b.error);
            assert_eq!(sink.insert_calls(), 13, "code {code}");
            assert_eq!(sink.stored().len(), 3, "code {code}");
            assert_eq!(sink.probes(), 0, "code {code}: a state error needs no probe");
            assert!(d.take_refused().is_empty(), "code {code}");
            assert!(metrics.writer.blocked().is_none(), "code {code}: still blocked");
            let text = metrics.render(&crate::metrics::SpoolGauges {
                used_bytes: 0,
                pending_bytes: 0,
                max_bytes: 1,
                oldest_age: None,
                damaged_inside: (0, 0),
                damaged_tail: (0, 0),
            });
            assert!(
                text.contains(&format!("waymark_writer_blocked{{cause=\"{label}\"}} 0")),
                "{text}"
            );
        }
    }

    /// Code 252 "too many partitions" (current releases refuse an insert touching more than
    /// 100): the batch is split until each part fits; every row lands, none is blamed.
    #[tokio::test]
    async fn too_many_partitions_splits_the_batch_and_blames_no_row() {
        let sink = Arc::new(FakeSink::default());
        sink.max_partitions(3);
        let (d, _tx) = delivery(sink.clone());
        // 40 rows over 20 months.
        let rows: Vec<EventRow> = (0..40)
            .map(|i| EventRow {
                timestamp: 1_700_000_000 + (i as u32 % 20) * 31 * 86_400,
                ..row(i, "ok")
            })
            .collect();
        d.deliver(&rows).await.unwrap();
        assert_eq!(sink.stored().len(), 40);
        assert!(d.take_refused().is_empty());
        assert!(sink.batches().iter().all(|&n| n < 40));
    }

    /// The quarantine insert failing is ClickHouse's state too: retried until it takes the rows.
    #[tokio::test]
    async fn a_failing_quarantine_insert_is_retried_not_written_elsewhere() {
        let sink = Arc::new(FakeSink::default());
        sink.fail_quarantine(15, state(243, "not enough space"));
        let (d, _tx) = delivery(sink.clone());
        let q = quarantine_row(&row(1, "bad"), "Code: 27. bad");
        d.quarantine(std::slice::from_ref(&q)).await.unwrap();
        assert_eq!(sink.quarantined(), [q]);
        assert_eq!(sink.quarantine_calls(), 16);
    }

    #[tokio::test]
    async fn stopping_ends_the_wait_and_keeps_the_rows() {
        let sink = Arc::new(FakeSink::default());
        sink.fail_next(u32::MAX, state(210, "connection refused"));
        let (d, tx) = delivery(sink.clone());
        tx.send(true).unwrap();
        assert!(d.deliver(&[row(1, "ok")]).await.is_err());
        assert!(sink.stored().is_empty());
        assert!(d.take_refused().is_empty());
    }
}
