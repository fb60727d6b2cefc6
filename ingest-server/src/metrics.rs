//! Prometheus text-format metrics, kept by hand: a few atomics and labelled counters.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

/// Histogram with fixed buckets.
pub struct Histogram {
    bounds: &'static [f64],
    counts: Vec<AtomicU64>,
    sum_micros: AtomicU64,
    count: AtomicU64,
}

impl Histogram {
    fn new(bounds: &'static [f64]) -> Self {
        Histogram {
            bounds,
            counts: bounds.iter().map(|_| AtomicU64::new(0)).collect(),
            sum_micros: AtomicU64::new(0),
            count: AtomicU64::new(0),
        }
    }

    pub fn observe(&self, v: f64) {
        for (b, c) in self.bounds.iter().zip(&self.counts) {
            if v <= *b {
                c.fetch_add(1, Ordering::Relaxed);
            }
        }
        self.sum_micros
            .fetch_add((v * 1e6) as u64, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
    }

    fn render(&self, out: &mut String, name: &str, help: &str) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        for (b, c) in self.bounds.iter().zip(&self.counts) {
            let _ = writeln!(
                out,
                "{name}_bucket{{le=\"{b}\"}} {}",
                c.load(Ordering::Relaxed)
            );
        }
        let n = self.count.load(Ordering::Relaxed);
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {n}");
        let _ = writeln!(
            out,
            "{name}_sum {}",
            self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6
        );
        let _ = writeln!(out, "{name}_count {n}");
    }
}

const LATENCY: &[f64] = &[
    0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];
const ROWS: &[f64] = &[
    1.0, 10.0, 100.0, 1_000.0, 10_000.0, 50_000.0, 100_000.0, 500_000.0,
];

/// Every metric the server exports.
pub struct Metrics {
    /// (endpoint, status) -> requests.
    requests: Mutex<BTreeMap<(String, u16), u64>>,
    /// source -> events accepted.
    accepted: Mutex<BTreeMap<String, u64>>,
    /// reason -> events (or requests) rejected.
    rejected: Mutex<BTreeMap<String, u64>>,
    pub duplicates_dropped: AtomicU64,
    pub spool_full: AtomicU64,
    pub ack_seconds: Histogram,
    pub insert_batches: AtomicU64,
    pub insert_rows: AtomicU64,
    pub insert_batch_rows: Histogram,
    pub insert_seconds: Histogram,
    pub insert_retries: AtomicU64,
    pub quarantined_rows: AtomicU64,
    pub probes: AtomicU64,
    pub clickhouse_up: AtomicU64,
    /// Why the writer cannot insert right now, if it cannot.
    pub writer: WriterHealth,
}

/// Why the writer is blocked: ClickHouse cannot take rows, and they wait in the spool.
#[derive(Debug, Clone, PartialEq)]
pub struct Blocked {
    /// The `cause` label (`store::Cause::label`).
    pub cause: &'static str,
    /// What failed: `insert`, `probe`, `quarantine` or `schema`.
    pub during: &'static str,
    /// ClickHouse's last error text.
    pub error: String,
    /// Since when (Unix ms) the writer has been blocked, whatever the cause.
    pub since_ms: u64,
}

/// The writer's state for `/readyz` and `waymark_writer_blocked`.
#[derive(Debug, Default)]
pub struct WriterHealth {
    state: Mutex<WriterState>,
}

#[derive(Debug, Default)]
struct WriterState {
    blocked: Option<Blocked>,
    /// Every cause seen since start, so its series stays (at 0) after it cleared.
    seen: BTreeSet<&'static str>,
}

impl WriterHealth {
    /// The writer cannot insert, for `cause`; `error` is ClickHouse's last word.
    pub fn block(&self, cause: &'static str, during: &'static str, error: &str, now_ms: u64) {
        let mut s = self.state.lock().expect("writer health");
        s.seen.insert(cause);
        let since_ms = s.blocked.as_ref().map_or(now_ms, |b| b.since_ms);
        s.blocked = Some(Blocked {
            cause,
            during,
            error: error.to_string(),
            since_ms,
        });
    }

    /// ClickHouse took rows again.
    pub fn clear(&self) {
        self.state.lock().expect("writer health").blocked = None;
    }

    /// Why the writer is blocked, if it is.
    pub fn blocked(&self) -> Option<Blocked> {
        self.state.lock().expect("writer health").blocked.clone()
    }

    fn render(&self, o: &mut String) {
        let s = self.state.lock().expect("writer health");
        let _ = writeln!(o, "# HELP waymark_writer_blocked 1 while the writer cannot insert for this cause (rows wait in the spool and are retried); the cause is in /readyz too.\n# TYPE waymark_writer_blocked gauge");
        for cause in &s.seen {
            let on = s.blocked.as_ref().is_some_and(|b| b.cause == *cause);
            let _ = writeln!(
                o,
                "waymark_writer_blocked{{cause=\"{cause}\"}} {}",
                u8::from(on)
            );
        }
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            requests: Mutex::default(),
            accepted: Mutex::default(),
            rejected: Mutex::default(),
            duplicates_dropped: AtomicU64::new(0),
            spool_full: AtomicU64::new(0),
            ack_seconds: Histogram::new(LATENCY),
            insert_batches: AtomicU64::new(0),
            insert_rows: AtomicU64::new(0),
            insert_batch_rows: Histogram::new(ROWS),
            insert_seconds: Histogram::new(LATENCY),
            insert_retries: AtomicU64::new(0),
            quarantined_rows: AtomicU64::new(0),
            probes: AtomicU64::new(0),
            clickhouse_up: AtomicU64::new(0),
            writer: WriterHealth::default(),
        }
    }
}

/// Spool figures sampled at render time.
pub struct SpoolGauges {
    pub used_bytes: u64,
    pub pending_bytes: u64,
    pub max_bytes: u64,
    pub oldest_age: Option<Duration>,
    /// Damaged ranges between intact records or at the end of a sealed segment, and their bytes.
    pub damaged_inside: (u64, u64),
    /// Damaged ends of the last segment at start-up (cut off), and their bytes.
    pub damaged_tail: (u64, u64),
}

impl Metrics {
    pub fn request(&self, endpoint: &str, status: u16) {
        *self
            .requests
            .lock()
            .expect("metrics")
            .entry((endpoint.to_string(), status))
            .or_default() += 1;
    }

    pub fn accepted(&self, source: &str, n: u64) {
        if n > 0 {
            *self
                .accepted
                .lock()
                .expect("metrics")
                .entry(source.to_string())
                .or_default() += n;
        }
    }

    pub fn rejected(&self, reason: &str, n: u64) {
        if n > 0 {
            *self
                .rejected
                .lock()
                .expect("metrics")
                .entry(reason.to_string())
                .or_default() += n;
        }
    }

    /// Events accepted so far, all sources.
    pub fn accepted_total(&self) -> u64 {
        self.accepted.lock().expect("metrics").values().sum()
    }

    pub fn render(&self, spool: &SpoolGauges) -> String {
        let mut o = String::new();
        let esc = |s: &str| {
            s.replace('\\', "\\\\")
                .replace('"', "\\\"")
                .replace('\n', " ")
        };
        let _ = writeln!(o, "# HELP waymark_http_requests_total HTTP requests by endpoint and status.\n# TYPE waymark_http_requests_total counter");
        for ((e, s), n) in self.requests.lock().expect("metrics").iter() {
            let _ = writeln!(
                o,
                "waymark_http_requests_total{{endpoint=\"{}\",status=\"{s}\"}} {n}",
                esc(e)
            );
        }
        let _ = writeln!(o, "# HELP waymark_events_accepted_total Events acknowledged (spooled).\n# TYPE waymark_events_accepted_total counter");
        for (src, n) in self.accepted.lock().expect("metrics").iter() {
            let _ = writeln!(
                o,
                "waymark_events_accepted_total{{source=\"{}\"}} {n}",
                esc(src)
            );
        }
        let _ = writeln!(o, "# HELP waymark_events_rejected_total Events or requests refused, by reason.\n# TYPE waymark_events_rejected_total counter");
        for (r, n) in self.rejected.lock().expect("metrics").iter() {
            let _ = writeln!(
                o,
                "waymark_events_rejected_total{{reason=\"{}\"}} {n}",
                esc(r)
            );
        }
        let counters: [(&str, &str, &AtomicU64); 7] = [
            ("waymark_duplicates_dropped_total", "Events dropped by the in-memory dedup window.", &self.duplicates_dropped),
            ("waymark_spool_full_total", "Requests refused with 503 because the spool was full.", &self.spool_full),
            ("waymark_insert_batches_total", "Confirmed ClickHouse inserts.", &self.insert_batches),
            ("waymark_insert_rows_total", "Rows confirmed by ClickHouse.", &self.insert_rows),
            ("waymark_insert_retries_total", "ClickHouse insert attempts that failed and were retried.", &self.insert_retries),
            ("waymark_quarantined_rows_total", "Rows ClickHouse refused while it took a known-good probe row, written to the quarantine table.", &self.quarantined_rows),
            ("waymark_writer_probes_total", "Known-good probe rows sent to tell a refusal of the rows from one of ClickHouse's state.", &self.probes),
        ];
        for (name, help, v) in counters {
            let _ = writeln!(
                o,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {}",
                v.load(Ordering::Relaxed)
            );
        }
        let damage = [
            ("waymark_spool_damaged_ranges_total", "Spool byte ranges that were not intact records, copied to the spool's damaged/ directory. kind=\"inside\": between intact records or at the end of a sealed segment, skipped (acknowledged events in them may have been lost); kind=\"tail\": the end of the last segment at start-up, cut off (a write torn by a crash, or damage to its last records).", spool.damaged_inside.0, spool.damaged_tail.0),
            ("waymark_spool_damaged_bytes_total", "Bytes in those ranges (see waymark_spool_damaged_ranges_total).", spool.damaged_inside.1, spool.damaged_tail.1),
        ];
        for (name, help, inside, tail) in damage {
            let _ = writeln!(
                o,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name}{{kind=\"inside\"}} {inside}\n{name}{{kind=\"tail\"}} {tail}"
            );
        }
        let gauges: [(&str, &str, f64); 5] = [
            (
                "waymark_spool_bytes",
                "Bytes in the spool on disk.",
                spool.used_bytes as f64,
            ),
            (
                "waymark_spool_pending_bytes",
                "Spooled bytes not yet confirmed by ClickHouse.",
                spool.pending_bytes as f64,
            ),
            (
                "waymark_spool_max_bytes",
                "The spool cap.",
                spool.max_bytes as f64,
            ),
            (
                "waymark_spool_oldest_age_seconds",
                "Age of the oldest event not yet in ClickHouse.",
                spool.oldest_age.map(|d| d.as_secs_f64()).unwrap_or(0.0),
            ),
            (
                "waymark_clickhouse_up",
                "1 when the last ClickHouse call succeeded.",
                self.clickhouse_up.load(Ordering::Relaxed) as f64,
            ),
        ];
        for (name, help, v) in gauges {
            let _ = writeln!(o, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {v}");
        }
        self.writer.render(&mut o);
        self.ack_seconds.render(
            &mut o,
            "waymark_ack_seconds",
            "Time from request to acknowledgement (spool fsync included).",
        );
        self.insert_batch_rows.render(
            &mut o,
            "waymark_insert_batch_rows",
            "Rows per ClickHouse insert.",
        );
        self.insert_seconds.render(
            &mut o,
            "waymark_insert_seconds",
            "ClickHouse insert latency.",
        );
        o
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spool_damage_is_exported_by_kind() {
        let body = Metrics::default().render(&SpoolGauges {
            used_bytes: 0,
            pending_bytes: 0,
            max_bytes: 1,
            oldest_age: None,
            damaged_inside: (2, 300),
            damaged_tail: (1, 40),
        });
        for line in [
            "# TYPE waymark_spool_damaged_ranges_total counter",
            "waymark_spool_damaged_ranges_total{kind=\"inside\"} 2",
            "waymark_spool_damaged_ranges_total{kind=\"tail\"} 1",
            "waymark_spool_damaged_bytes_total{kind=\"inside\"} 300",
            "waymark_spool_damaged_bytes_total{kind=\"tail\"} 40",
        ] {
            assert!(body.lines().any(|l| l == line), "{line} missing in\n{body}");
        }
    }
}
