//! A [`Sink`] for unit tests that fails on demand: the errors ClickHouse 18.16 cannot produce
//! (too many partitions, memory, disk), rows refused by their content, a refused probe.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use futures::future::BoxFuture;

use super::row::{EventRow, QuarantineRow};
use super::{classify_code, ErrorClass, Sink, StoreError};

/// A minimal row: site `s`, message id `m<id>`, the given event name.
pub fn row(id: usize, event: &str) -> EventRow {
    EventRow {
        site: "s".into(),
        message_id: format!("m{id}"),
        event: event.into(),
        ..EventRow::default()
    }
}

/// An error as ClickHouse words it, classed by the production table.
fn error(code: u32, text: &str) -> StoreError {
    let message = format!("Code: {code}. DB::Exception: {text}");
    StoreError {
        class: classify_code(code, &message),
        message,
    }
}

/// A state error (the code must be one the production table lists as such).
pub fn state(code: u32, text: &str) -> StoreError {
    let e = error(code, text);
    assert!(
        matches!(e.class, ErrorClass::Unavailable(_)),
        "code {code} is not a state code"
    );
    e
}

/// A refusal (a code the production table does not list as a state).
pub fn refused(code: u32, text: &str) -> StoreError {
    let e = error(code, text);
    assert_eq!(e.class, ErrorClass::Refused, "code {code} is a state code");
    e
}

#[derive(Default)]
struct State {
    /// The next `fail_next` inserts fail with `fail_with`.
    fail_next: u32,
    fail_with: Option<StoreError>,
    /// A batch holding a row with this event is refused with this error.
    refuse: Vec<(String, StoreError)>,
    fail_probes: bool,
    /// A batch over more than this many months of `timestamp` (the partition key) is refused
    /// (code 252).
    max_partitions: Option<usize>,
    fail_quarantine: u32,
    quarantine_error: Option<StoreError>,
    hold: Option<Arc<tokio::sync::Notify>>,
    stored: Vec<String>,
    batches: Vec<usize>,
    quarantined: Vec<QuarantineRow>,
    insert_calls: u32,
    probes: u32,
    quarantine_calls: u32,
}

#[derive(Default)]
pub struct FakeSink(Mutex<State>);

impl FakeSink {
    fn with<T>(&self, f: impl FnOnce(&mut State) -> T) -> T {
        f(&mut self.0.lock().expect("fake sink"))
    }
    pub fn fail_next(&self, n: u32, e: StoreError) {
        self.with(|s| {
            s.fail_next = n;
            s.fail_with = Some(e);
        })
    }
    pub fn refuse_event(&self, event: &str, e: StoreError) {
        self.with(|s| s.refuse.push((event.into(), e)))
    }
    pub fn fail_probes(&self, on: bool) {
        self.with(|s| s.fail_probes = on)
    }
    pub fn max_partitions(&self, n: usize) {
        self.with(|s| s.max_partitions = Some(n))
    }
    pub fn fail_quarantine(&self, n: u32, e: StoreError) {
        self.with(|s| {
            s.fail_quarantine = n;
            s.quarantine_error = Some(e);
        })
    }
    /// The next insert waits for `gate` before it answers.
    pub fn hold_next(&self, gate: Arc<tokio::sync::Notify>) {
        self.with(|s| s.hold = Some(gate))
    }
    pub fn stored(&self) -> Vec<String> {
        self.with(|s| s.stored.clone())
    }
    pub fn batches(&self) -> Vec<usize> {
        self.with(|s| s.batches.clone())
    }
    pub fn quarantined(&self) -> Vec<QuarantineRow> {
        self.with(|s| s.quarantined.clone())
    }
    pub fn insert_calls(&self) -> u32 {
        self.with(|s| s.insert_calls)
    }
    pub fn probes(&self) -> u32 {
        self.with(|s| s.probes)
    }
    pub fn quarantine_calls(&self) -> u32 {
        self.with(|s| s.quarantine_calls)
    }
}

impl Sink for FakeSink {
    fn insert<'a>(&'a self, rows: &'a [EventRow]) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move {
            if let Some(gate) = self.with(|s| {
                s.insert_calls += 1;
                s.hold.take()
            }) {
                gate.notified().await;
            }
            self.with(|s| {
                if s.fail_next > 0 {
                    s.fail_next -= 1;
                    return Err(s.fail_with.clone().expect("an error to fail with"));
                }
                if let Some(max) = s.max_partitions {
                    let months: HashSet<u32> =
                        rows.iter().map(|r| r.timestamp / (31 * 86_400)).collect();
                    if months.len() > max {
                        return Err(error(
                            252,
                            &format!(
                                "Too many partitions for single INSERT block (more than {max})"
                            ),
                        ));
                    }
                }
                for (event, e) in &s.refuse {
                    if rows.iter().any(|r| &r.event == event) {
                        return Err(e.clone());
                    }
                }
                s.stored.extend(rows.iter().map(|r| r.message_id.clone()));
                s.batches.push(rows.len());
                Ok(())
            })
        })
    }

    fn quarantine<'a>(
        &'a self,
        rows: &'a [QuarantineRow],
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move {
            self.with(|s| {
                s.quarantine_calls += 1;
                if s.fail_quarantine > 0 {
                    s.fail_quarantine -= 1;
                    return Err(s.quarantine_error.clone().expect("an error"));
                }
                s.quarantined.extend(rows.iter().cloned());
                Ok(())
            })
        })
    }

    fn prepare(&self) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(async { Ok(()) })
    }

    fn probe(&self) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(async move {
            self.with(|s| {
                s.probes += 1;
                if s.fail_probes {
                    Err(refused(999_999, "the probe row is refused too"))
                } else {
                    Ok(())
                }
            })
        })
    }
}
