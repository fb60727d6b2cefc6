//! Every metric the server exports, kept by the `metrics` crate's Prometheus recorder
//! (`metrics-exporter-prometheus`) and rendered by it in the Prometheus text format at
//! `GET /metrics`.
//!
//! Each server (and each test's server) has its own recorder: nothing is installed globally, so
//! several servers in one process keep separate counts. Handles to fixed series are made once;
//! series with labels from requests (endpoint, status, source, reason) are looked up in the
//! recorder's registry when counted. Figures the spool and the identity index keep themselves are
//! copied into gauges when `/metrics` is rendered.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use metrics::{Counter, Gauge, Histogram, Key, KeyName, Label, Level, Metadata, Recorder as _};
use metrics_exporter_prometheus::{
    Matcher, PrometheusBuilder, PrometheusHandle, PrometheusRecorder,
};

/// Latency buckets, seconds (acknowledgement, ClickHouse inserts, query endpoints).
const LATENCY: &[f64] = &[
    0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];
/// Rows per insert.
const ROWS: &[f64] = &[
    1.0, 10.0, 100.0, 1_000.0, 10_000.0, 50_000.0, 100_000.0, 500_000.0,
];

static META: Metadata<'static> = Metadata::new(module_path!(), Level::INFO, Some(module_path!()));

/// (name, type, help) of every metric, in one list.
const DESCRIPTIONS: &[(&str, Kind, &str)] = &[
    ("waymark_http_requests_total", Kind::Counter, "HTTP requests by endpoint and status."),
    ("waymark_events_accepted_total", Kind::Counter, "Events acknowledged (spooled)."),
    ("waymark_events_rejected_total", Kind::Counter, "Events or requests refused, by reason."),
    ("waymark_duplicates_dropped_total", Kind::Counter, "Events dropped by the in-memory dedup window."),
    ("waymark_spool_full_total", Kind::Counter, "Requests refused with 503 because the spool was full."),
    ("waymark_insert_batches_total", Kind::Counter, "Confirmed ClickHouse inserts."),
    ("waymark_insert_rows_total", Kind::Counter, "Rows confirmed by ClickHouse."),
    ("waymark_insert_retries_total", Kind::Counter, "ClickHouse insert attempts that failed and were retried."),
    ("waymark_quarantined_rows_total", Kind::Counter, "Rows ClickHouse refused while it took a known-good probe row, written to the quarantine table."),
    ("waymark_writer_probes_total", Kind::Counter, "Known-good probe rows sent to tell a refusal of the rows from one of ClickHouse's state."),
    ("waymark_spool_damaged_ranges_total", Kind::Counter, "Spool byte ranges that were not intact records, copied to the spool's damaged/ directory. kind=\"inside\": between intact records or at the end of a sealed segment, skipped (acknowledged events in them may have been lost); kind=\"tail\": the end of the last segment at start-up, cut off (a write torn by a crash, or damage to its last records)."),
    ("waymark_spool_damaged_bytes_total", Kind::Counter, "Bytes in those ranges (see waymark_spool_damaged_ranges_total)."),
    ("waymark_spool_bytes", Kind::Gauge, "Bytes in the spool on disk."),
    ("waymark_spool_pending_bytes", Kind::Gauge, "Spooled bytes not yet confirmed by ClickHouse."),
    ("waymark_spool_max_bytes", Kind::Gauge, "The spool cap."),
    ("waymark_spool_oldest_age_seconds", Kind::Gauge, "Age of the oldest event not yet in ClickHouse."),
    ("waymark_clickhouse_up", Kind::Gauge, "1 when the last ClickHouse call succeeded."),
    ("waymark_writer_blocked", Kind::Gauge, "1 while the writer cannot insert for this cause (rows wait in the spool and are retried); the cause is in /readyz too."),
    ("waymark_identity_index_ready", Kind::Gauge, "1 when the query API resolves ids in memory, 0 while the index loads or after it turned itself off (query.identity_max_links)."),
    ("waymark_identity_index_links", Kind::Gauge, "Identity links and users with events of their own held by the index."),
    ("waymark_ack_seconds", Kind::Histogram, "Time from request to acknowledgement (spool fsync included)."),
    ("waymark_insert_batch_rows", Kind::Histogram, "Rows per ClickHouse insert."),
    ("waymark_insert_seconds", Kind::Histogram, "ClickHouse insert latency."),
    ("waymark_query_seconds", Kind::Histogram, "Query API latency by endpoint, until the answer's headers (an NDJSON audience streams on after)."),
    ("waymark_query_cache_hits_total", Kind::Counter, "Query answers served from the in-process cache, by endpoint."),
    ("waymark_email_hits_total", Kind::Counter, "Email opens and clicks recorded, by event ($email_open, $email_click) and class (human, machine, unknown; human, scanner)."),
    ("waymark_email_tokens_refused_total", Kind::Counter, "Pixel fetches and link clicks whose token was refused, by reason (malformed, unknown_site, unknown_key, bad_signature, expired, from_the_future, wrong_kind); a refused click goes to the site's home_url."),
    ("waymark_email_events_failed_total", Kind::Counter, "Email open or click events that could not be spooled (spool full or unavailable), logged; the pixel or redirect was answered all the same."),
    ("waymark_quality_checked_total", Kind::Counter, "Events checked against their site's tracking plan or critical fields, by site."),
    ("waymark_quality_violations_total", Kind::Counter, "Tracking plan violations, by site, event (a planned name, or $unplanned) and kind (unplanned_event, required_missing, type_mismatch, additional_property, format)."),
    ("waymark_quality_field_checked_total", Kind::Counter, "Events that should carry a critical field ([[sites.completeness]]), by site, event and field."),
    ("waymark_quality_field_missing_total", Kind::Counter, "Of those, the events that lacked it (absent, null or empty)."),
    ("waymark_quality_field_min", Kind::Gauge, "The share of events that must carry a critical field (its completeness threshold), by site, event and field."),
    ("waymark_quality_volume_anomalies", Kind::Gauge, "Event names whose volume in the last complete hour was beyond quality.anomaly_factor of the same hour's 7-day average, by site (the quality report, every quality.check_interval)."),
    ("waymark_quality_freshness_mean_seconds", Kind::Gauge, "Mean time from acknowledgement to visible in ClickHouse over the last 2 hours, by site."),
    ("waymark_quality_freshness_late_share", Kind::Gauge, "Share of the last 2 hours' events that took over a minute to become visible, by site."),
    ("waymark_quality_orders_one_side_share", Kind::Gauge, "Share of the last 2 hours' orders (Order Completed by order_id) seen by the browser or the backend only, by site."),
    ("waymark_quality_orders_revenue_mismatch_share", Kind::Gauge, "Share of the last 2 hours' orders seen by both sides with a different revenue, by site."),
    ("waymark_quality_rejected_share", Kind::Gauge, "Share of the last 2 hours' received events refused, by site (from quality_hourly, all servers)."),
    ("waymark_quality_bot_share", Kind::Gauge, "Share of the last 2 hours' events flagged as bots, by site."),
    ("waymark_quality_clock_corrected_share", Kind::Gauge, "Share of the last 2 hours' events whose timestamp the clock-skew rule moved, by site."),
    ("waymark_query_cache_misses_total", Kind::Counter, "Query answers the cache did not hold (read from ClickHouse), by endpoint."),
    ("waymark_trigger_ticks_total", Kind::Counter, "Trigger evaluation ticks completed."),
    ("waymark_trigger_tick_seconds", Kind::Histogram, "Time one trigger evaluation tick took (all subscriptions)."),
    ("waymark_trigger_candidates", Kind::Gauge, "Visitors the last trigger tick evaluated (touched since the previous tick, a window closed, or linked to those)."),
    ("waymark_trigger_transitions_total", Kind::Counter, "Persons who entered or left a subscription's audience, by type (entered, left)."),
    ("waymark_trigger_deliveries_total", Kind::Counter, "Webhook delivery attempts by outcome: delivered, failed (retried later), dead (given up after triggers.max_attempts: a dead letter, listed by GET /v1/subscriptions/dead_letters), cancelled (the subscription was removed)."),
    ("waymark_trigger_pending", Kind::Gauge, "Deliveries in the outbox waiting to be sent or retried."),
    ("waymark_trigger_lease_held", Kind::Gauge, "1 while this server holds the trigger evaluator's lease (evaluates and delivers), 0 while it stands by."),
    ("waymark_trigger_delivery_seconds", Kind::Histogram, "Time from the tick that found a transition to its successful delivery."),
];

#[derive(Clone, Copy)]
enum Kind {
    Counter,
    Gauge,
    Histogram,
}

/// Every metric the server exports.
pub struct Metrics {
    recorder: PrometheusRecorder,
    handle: PrometheusHandle,
    /// Events accepted so far, all sources (for [`Metrics::accepted_total`]).
    accepted_total: AtomicU64,
    pub duplicates_dropped: Counter,
    pub spool_full: Counter,
    pub ack_seconds: Histogram,
    pub insert_batches: Counter,
    pub insert_rows: Counter,
    pub insert_batch_rows: Histogram,
    pub insert_seconds: Histogram,
    pub insert_retries: Counter,
    pub quarantined_rows: Counter,
    pub probes: Counter,
    /// 1 when the last ClickHouse call succeeded.
    pub clickhouse_up: Gauge,
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

    /// Every cause seen since start, and whether the writer is blocked for it now.
    fn causes(&self) -> Vec<(&'static str, bool)> {
        let s = self.state.lock().expect("writer health");
        s.seen
            .iter()
            .map(|c| (*c, s.blocked.as_ref().is_some_and(|b| b.cause == *c)))
            .collect()
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

impl Default for Metrics {
    fn default() -> Self {
        let buckets = |b: PrometheusBuilder, name: &str, bounds: &[f64]| {
            b.set_buckets_for_metric(Matcher::Full(name.to_string()), bounds)
                .expect("bucket bounds are not empty")
        };
        let mut b = PrometheusBuilder::new();
        for name in [
            "waymark_ack_seconds",
            "waymark_insert_seconds",
            "waymark_query_seconds",
        ] {
            b = buckets(b, name, LATENCY);
        }
        b = buckets(b, "waymark_insert_batch_rows", ROWS);
        let recorder = b.build_recorder();
        for (name, kind, help) in DESCRIPTIONS {
            let (name, help) = (KeyName::from_const_str(name), (*help).into());
            match kind {
                Kind::Counter => recorder.describe_counter(name, None, help),
                Kind::Gauge => recorder.describe_gauge(name, None, help),
                Kind::Histogram => recorder.describe_histogram(name, None, help),
            }
        }
        let counter =
            |name: &'static str| recorder.register_counter(&Key::from_static_name(name), &META);
        let histogram =
            |name: &'static str| recorder.register_histogram(&Key::from_static_name(name), &META);
        Metrics {
            handle: recorder.handle(),
            accepted_total: AtomicU64::new(0),
            duplicates_dropped: counter("waymark_duplicates_dropped_total"),
            spool_full: counter("waymark_spool_full_total"),
            ack_seconds: histogram("waymark_ack_seconds"),
            insert_batches: counter("waymark_insert_batches_total"),
            insert_rows: counter("waymark_insert_rows_total"),
            insert_batch_rows: histogram("waymark_insert_batch_rows"),
            insert_seconds: histogram("waymark_insert_seconds"),
            insert_retries: counter("waymark_insert_retries_total"),
            quarantined_rows: counter("waymark_quarantined_rows_total"),
            probes: counter("waymark_writer_probes_total"),
            clickhouse_up: recorder
                .register_gauge(&Key::from_static_name("waymark_clickhouse_up"), &META),
            writer: WriterHealth::default(),
            recorder,
        }
    }
}

impl Metrics {
    fn counter(&self, name: &'static str, labels: Vec<Label>) -> Counter {
        self.recorder
            .register_counter(&Key::from_parts(name, labels), &META)
    }

    fn gauge(&self, name: &'static str, labels: Vec<Label>) -> Gauge {
        self.recorder
            .register_gauge(&Key::from_parts(name, labels), &META)
    }

    pub fn request(&self, endpoint: &str, status: u16) {
        self.counter(
            "waymark_http_requests_total",
            vec![
                Label::new("endpoint", endpoint.to_string()),
                Label::new("status", status.to_string()),
            ],
        )
        .increment(1);
    }

    pub fn accepted(&self, source: &str, n: u64) {
        if n > 0 {
            self.accepted_total.fetch_add(n, Ordering::Relaxed);
            self.counter(
                "waymark_events_accepted_total",
                vec![Label::new("source", source.to_string())],
            )
            .increment(n);
        }
    }

    pub fn rejected(&self, reason: &str, n: u64) {
        if n > 0 {
            self.counter(
                "waymark_events_rejected_total",
                vec![Label::new("reason", reason.to_string())],
            )
            .increment(n);
        }
    }

    /// An email open or click recorded.
    pub fn email_hit(&self, event: &str, class: &str) {
        self.counter(
            "waymark_email_hits_total",
            vec![
                Label::new("event", event.to_string()),
                Label::new("class", class.to_string()),
            ],
        )
        .increment(1);
    }

    /// A pixel or link token refused.
    pub fn email_refused(&self, reason: &'static str) {
        self.counter(
            "waymark_email_tokens_refused_total",
            vec![Label::new("reason", reason)],
        )
        .increment(1);
    }

    /// An email event that could not be spooled.
    pub fn email_failed(&self) {
        self.counter("waymark_email_events_failed_total", vec![])
            .increment(1);
    }

    /// Events of one request checked for quality.
    pub fn quality_checked(&self, site: &str, n: u64) {
        self.counter(
            "waymark_quality_checked_total",
            vec![Label::new("site", site.to_string())],
        )
        .increment(n);
    }

    /// `n` tracking plan violations of one kind in one request.
    pub fn quality_violations(&self, site: &str, event: &str, kind: &str, n: u64) {
        self.counter(
            "waymark_quality_violations_total",
            vec![
                Label::new("site", site.to_string()),
                Label::new("event", event.to_string()),
                Label::new("kind", kind.to_string()),
            ],
        )
        .increment(n);
    }

    /// One request's events that should carry a critical field, and those that lacked it.
    pub fn quality_field(&self, site: &str, event: &str, field: &str, checked: u64, missing: u64) {
        let labels = || {
            vec![
                Label::new("site", site.to_string()),
                Label::new("event", event.to_string()),
                Label::new("field", field.to_string()),
            ]
        };
        self.counter("waymark_quality_field_checked_total", labels())
            .increment(checked);
        self.counter("waymark_quality_field_missing_total", labels())
            .increment(missing);
    }

    /// A critical field's threshold, exported for alert rules (set once at start; the two
    /// counters start at 0 so a rate exists before the first event).
    pub fn quality_threshold(&self, site: &str, event: &str, field: &str, min: f64) {
        let labels = vec![
            Label::new("site", site.to_string()),
            Label::new("event", event.to_string()),
            Label::new("field", field.to_string()),
        ];
        self.gauge("waymark_quality_field_min", labels).set(min);
        self.quality_field(site, event, field, 0, 0);
    }

    /// A site's quality report figures (`crate::query::quality::gauges`): each becomes
    /// `waymark_quality_<name>{site}`.
    pub fn quality_report(&self, site: &str, figures: &[(&'static str, f64)]) {
        for (name, v) in figures {
            let Some((full, _, _)) = DESCRIPTIONS
                .iter()
                .find(|(n, _, _)| n.strip_prefix("waymark_quality_") == Some(name))
            else {
                continue;
            };
            self.gauge(full, vec![Label::new("site", site.to_string())])
                .set(*v);
        }
    }

    /// Events accepted so far, all sources.
    pub fn accepted_total(&self) -> u64 {
        self.accepted_total.load(Ordering::Relaxed)
    }

    /// The time a query endpoint took to answer.
    pub fn query_seconds(&self, endpoint: &'static str, seconds: f64) {
        self.recorder
            .register_histogram(
                &Key::from_parts(
                    "waymark_query_seconds",
                    vec![Label::new("endpoint", endpoint)],
                ),
                &META,
            )
            .record(seconds);
    }

    /// A query answer served from the cache (`hit`) or read from ClickHouse.
    pub fn query_cache(&self, endpoint: &'static str, hit: bool) {
        let name = if hit {
            "waymark_query_cache_hits_total"
        } else {
            "waymark_query_cache_misses_total"
        };
        self.counter(name, vec![Label::new("endpoint", endpoint)])
            .increment(1);
    }

    /// The identity index's state, exported only by servers that have one.
    pub fn identity_index(&self, links: Option<usize>) {
        self.gauge("waymark_identity_index_ready", vec![])
            .set(f64::from(u8::from(links.is_some())));
        self.gauge("waymark_identity_index_links", vec![])
            .set(links.unwrap_or(0) as f64);
    }

    /// A trigger tick that took `seconds` over `candidates` visitors.
    pub fn trigger_tick(&self, seconds: f64, candidates: u64) {
        self.counter("waymark_trigger_ticks_total", vec![])
            .increment(1);
        self.recorder
            .register_histogram(
                &Key::from_static_name("waymark_trigger_tick_seconds"),
                &META,
            )
            .record(seconds);
        self.gauge("waymark_trigger_candidates", vec![])
            .set(candidates as f64);
    }

    /// A person entered or left an audience.
    pub fn trigger_transition(&self, kind: &str) {
        self.counter(
            "waymark_trigger_transitions_total",
            vec![Label::new("type", kind.to_string())],
        )
        .increment(1);
    }

    /// One delivery attempt's outcome.
    pub fn trigger_delivery(&self, outcome: &'static str) {
        self.counter(
            "waymark_trigger_deliveries_total",
            vec![Label::new("outcome", outcome)],
        )
        .increment(1);
    }

    /// Whether this server holds the trigger evaluator's lease.
    pub fn trigger_lease(&self, held: bool) {
        self.gauge("waymark_trigger_lease_held", vec![])
            .set(f64::from(u8::from(held)));
    }

    /// Deliveries waiting in the outbox.
    pub fn trigger_pending(&self, n: usize) {
        self.gauge("waymark_trigger_pending", vec![]).set(n as f64);
    }

    /// Seconds from detection to delivery.
    pub fn trigger_latency(&self, seconds: f64) {
        self.recorder
            .register_histogram(
                &Key::from_static_name("waymark_trigger_delivery_seconds"),
                &META,
            )
            .record(seconds);
    }

    /// Folds recorded histogram samples into their buckets. The recorder keeps samples until
    /// then, so the server calls this every few seconds whether or not `/metrics` is scraped.
    pub fn upkeep(&self) {
        self.handle.run_upkeep();
    }

    /// The value of one series (`name` or `name{labels}`) as rendered now, without the spool's
    /// figures: for tests.
    pub fn value(&self, series: &str) -> Option<f64> {
        self.handle.render().lines().find_map(|l| {
            l.strip_prefix(series)?
                .strip_prefix(' ')?
                .trim()
                .parse()
                .ok()
        })
    }

    /// The Prometheus text, with the spool's figures as of now.
    pub fn render(&self, spool: &SpoolGauges) -> String {
        for (name, inside, tail) in [
            (
                "waymark_spool_damaged_ranges_total",
                spool.damaged_inside.0,
                spool.damaged_tail.0,
            ),
            (
                "waymark_spool_damaged_bytes_total",
                spool.damaged_inside.1,
                spool.damaged_tail.1,
            ),
        ] {
            self.counter(name, vec![Label::new("kind", "inside")])
                .absolute(inside);
            self.counter(name, vec![Label::new("kind", "tail")])
                .absolute(tail);
        }
        for (name, v) in [
            ("waymark_spool_bytes", spool.used_bytes as f64),
            ("waymark_spool_pending_bytes", spool.pending_bytes as f64),
            ("waymark_spool_max_bytes", spool.max_bytes as f64),
            (
                "waymark_spool_oldest_age_seconds",
                spool.oldest_age.map(|d| d.as_secs_f64()).unwrap_or(0.0),
            ),
        ] {
            self.gauge(name, vec![]).set(v);
        }
        for (cause, on) in self.writer.causes() {
            self.gauge("waymark_writer_blocked", vec![Label::new("cause", cause)])
                .set(f64::from(u8::from(on)));
        }
        self.handle.render()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn render(m: &Metrics) -> String {
        m.render(&SpoolGauges {
            used_bytes: 0,
            pending_bytes: 0,
            max_bytes: 1,
            oldest_age: None,
            damaged_inside: (2, 300),
            damaged_tail: (1, 40),
        })
    }

    #[test]
    fn spool_damage_is_exported_by_kind() {
        let body = render(&Metrics::default());
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

    #[test]
    fn histograms_keep_their_buckets_and_query_metrics_are_by_endpoint() {
        let m = Metrics::default();
        m.ack_seconds.record(0.003);
        m.query_seconds("profile", 0.003);
        m.query_seconds("audience", 0.2);
        m.query_cache("profile", true);
        m.query_cache("profile", false);
        m.query_cache("events", false);
        let body = render(&m);
        for line in [
            "# TYPE waymark_ack_seconds histogram",
            "waymark_ack_seconds_bucket{le=\"0.002\"} 0",
            "waymark_ack_seconds_bucket{le=\"0.005\"} 1",
            "waymark_ack_seconds_bucket{le=\"+Inf\"} 1",
            "waymark_ack_seconds_count 1",
            "# TYPE waymark_query_seconds histogram",
            "waymark_query_seconds_bucket{endpoint=\"profile\",le=\"0.005\"} 1",
            "waymark_query_seconds_bucket{endpoint=\"audience\",le=\"0.1\"} 0",
            "waymark_query_seconds_count{endpoint=\"audience\"} 1",
            "# TYPE waymark_query_cache_hits_total counter",
            "waymark_query_cache_hits_total{endpoint=\"profile\"} 1",
            "waymark_query_cache_misses_total{endpoint=\"profile\"} 1",
            "waymark_query_cache_misses_total{endpoint=\"events\"} 1",
        ] {
            assert!(body.lines().any(|l| l == line), "{line} missing in\n{body}");
        }
    }

    #[test]
    fn the_writer_blocked_series_stays_at_0_once_its_cause_cleared() {
        let m = Metrics::default();
        m.writer.block("auth", "insert", "no", 1);
        assert!(render(&m).contains("waymark_writer_blocked{cause=\"auth\"} 1\n"));
        m.writer.clear();
        assert!(render(&m).contains("waymark_writer_blocked{cause=\"auth\"} 0\n"));
    }
}
