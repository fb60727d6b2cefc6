//! The data quality report: `GET /v1/quality?site=&since=` (JSON, read key) and `GET /quality`
//! (the same report as a page with server-rendered SVG plots, [`page`]).
//!
//! Everything is read from ClickHouse, so every server answers the same and nothing is lost on
//! a restart:
//!
//! - **volume**: events per hour, and per event name per hour against the same hour of the 7
//!   days before; an hour is an anomaly when it is over `quality.anomaly_factor` times, or
//!   under 1/factor of, that average (hours whose average is under
//!   `quality.anomaly_min_events` are not judged; the current, incomplete hour never is);
//! - **violations** (`events.violations`, `kind:field`) by event and kind, and **completeness**
//!   (`events.missing`) against each `[[sites.completeness]]` threshold;
//! - **consistency**: `Order Completed` events matched by `order_id`. The browser's side is
//!   what came through the edge worker (`source = 'edge'`), or straight from the Waymark tag
//!   (`context.library.name = 'waymark.js'`); the backend's side is every other direct call to
//!   `/v1/batch` and friends (`source = 'api'`: Segment's server SDKs, curl). Per day (of the
//!   order's first event): orders seen by one side only, and orders whose revenue differs;
//! - **intake**: events refused by reason, duplicates dropped by message id, events over the
//!   rate limit (the intake's counts in `quality_hourly`, `crate::store::quality`), duplicate
//!   rows stored but not yet merged, rows in `quarantine`, the share of bots, and how many
//!   timestamps the clock-skew rule moved and by how much;
//! - **freshness**: how long acknowledged events took to become visible in ClickHouse (the
//!   view on `events` in `quality_hourly`: the insert's time minus `received_at_ms`).
//!
//! `problems` lists what is wrong, worst first (by the share of events it touches), each with
//! an example event. [`run_checks`] computes the report every `quality.check_interval` for every
//! site and copies its headline figures into Prometheus gauges (`waymark_quality_*`), which
//! `deploy/prometheus/alerts.yml` watches.

pub mod page;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Query, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use serde::Deserialize;
use serde_json::{json, Value};

use super::sql::{int, lit, parse_within};
use super::{QueryError, QueryState};
use crate::config::plan::Completeness;
use crate::config::{Config, QualityConfig};
use crate::metrics::Metrics;

/// The window when `since` is absent, and the longest one.
const DEFAULT_WINDOW_MS: i64 = 24 * 3_600_000;
const MAX_WINDOW_MS: i64 = 31 * 86_400_000;
const HOUR_MS: i64 = 3_600_000;
const DAY_S: i64 = 86_400;

/// Which side of the browser/backend comparison a row is on (see the module doc).
const SIDE: &str = "if(source = 'edge' OR (source = 'api' AND library_name = 'waymark.js'), 'browser', if(source = 'api', 'backend', 'other'))";
/// The name an event is judged by: a track event's name, else its type.
const NAME: &str = "if(type = 'track', event, type)";
/// How far the clock-skew rule moved an event's time, ms: for `corrected` exactly
/// `receivedAt - sentAt` (the client's clock error plus the network delay), for the clamps the
/// distance from the time the client said (`client_time`, whole seconds).
const CORRECTION: &str = "toUInt64(if(skew_rule = 'corrected' AND sent_at_ms > 0, abs(received_at_ms - sent_at_ms), abs(timestamp_ms - toInt64(toUInt32(client_time)) * 1000)))";
/// An event whose time the rule moved by a second or more (less is network delay, not a
/// wrong clock).
const MOVED: &str =
    "skew_rule IN ('corrected', 'negative_offset', 'clamped_future') AND {CORRECTION} >= 1000";

/// What the report handlers share: the query state, each site's critical fields, the settings.
#[derive(Clone)]
pub struct QualityState {
    query: QueryState,
    completeness: Arc<HashMap<String, Vec<Completeness>>>,
    sites: Arc<Vec<String>>,
    config: QualityConfig,
}

impl QualityState {
    pub fn new(query: QueryState, config: &Config) -> Self {
        QualityState {
            query,
            completeness: Arc::new(
                config
                    .sites
                    .iter()
                    .map(|s| (s.id.clone(), s.completeness.clone()))
                    .collect(),
            ),
            sites: Arc::new(config.sites.iter().map(|s| s.id.clone()).collect()),
            config: config.quality.clone(),
        }
    }

    pub fn query(&self) -> &QueryState {
        &self.query
    }
}

/// `GET /v1/quality`, `GET /quality` and `POST /quality` (the page's key form).
pub fn router<S: Clone + Send + Sync + 'static>(state: QualityState) -> Router<S> {
    Router::new()
        .route("/v1/quality", get(handler))
        .route("/quality", get(page::get_page).post(page::post_page))
        .with_state(state)
}

#[derive(Debug, Default, Deserialize)]
pub struct Params {
    pub site: Option<String>,
    pub since: Option<String>,
}

async fn handler(
    State(st): State<QualityState>,
    Query(p): Query<Params>,
    headers: HeaderMap,
) -> Response {
    let started = std::time::Instant::now();
    let run = async {
        let site = st.query.authorize(&headers, p.site.as_deref())?;
        let since = parse_since(p.since.as_deref(), crate::clock::now_ms())?;
        report(&st, &site, since, crate::clock::now_ms()).await
    };
    let resp = match run.await {
        Ok(v) => super::json_response(Arc::new(v)),
        Err(e) => e.into_response(),
    };
    st.query
        .metrics()
        .query_seconds("quality", started.elapsed().as_secs_f64());
    resp
}

/// The window's start: an RFC 3339 time, or a duration before now (`"24h"`, `"7d"`); 24 hours
/// when absent; at most 31 days back.
pub fn parse_since(since: Option<&str>, now_ms: i64) -> Result<i64, QueryError> {
    let ms = match since.map(str::trim).filter(|s| !s.is_empty()) {
        None => now_ms - DEFAULT_WINDOW_MS,
        Some(s) => match waymark_protocol::time::parse_rfc3339(s) {
            Some(ms) => ms,
            None => now_ms - parse_within(s).map_err(|e| QueryError::bad("since", e))?,
        },
    };
    if ms >= now_ms {
        return Err(QueryError::bad("since", "must be in the past"));
    }
    if now_ms - ms > MAX_WINDOW_MS {
        return Err(QueryError::bad("since", "must be at most 31 days ago"));
    }
    Ok(ms)
}

// --- rows read from ClickHouse -------------------------------------------------------------

#[derive(Debug, Deserialize)]
struct HourRow {
    h: i64,
    events: u64,
    unique_events: u64,
    bots: u64,
    violating: u64,
    corrected: u64,
    correction_ms: u64,
    max_correction_ms: u64,
}

#[derive(Debug, Deserialize)]
struct NameHourRow {
    name: String,
    h: i64,
    n: u64,
}

#[derive(Debug, Deserialize)]
struct FlagRow {
    name: String,
    flag: String,
    n: u64,
    example_id: String,
    example_ms: i64,
    example_json: String,
}

#[derive(Debug, Deserialize)]
struct OrderDayRow {
    day: String,
    orders: u64,
    both: u64,
    browser_only: u64,
    backend_only: u64,
    revenue_mismatches: u64,
    #[serde(rename = "browser_sum")]
    browser_revenue: f64,
    #[serde(rename = "backend_sum")]
    backend_revenue: f64,
}

#[derive(Debug, Deserialize)]
struct OrderExampleRow {
    order_id: String,
    day: String,
    browser: u8,
    backend: u8,
    browser_revenue: f64,
    backend_revenue: f64,
    example_id: String,
}

#[derive(Debug, Deserialize)]
struct CountRow {
    h: i64,
    metric: String,
    reason: String,
    value: u64,
}

#[derive(Debug, Deserialize)]
struct QuarantineRow {
    h: i64,
    reason: String,
    n: u64,
    example_id: String,
}

/// The report's eight SELECTs for `site` since `since_ms`, in the order [`report`] reads them:
/// hours, names per hour, violations, missing fields, orders per day, order examples, the
/// intake's counts, quarantine.
pub fn statements(db: &str, site: &str, since_ms: i64) -> [String; 8] {
    let s = lit(site);
    let since_s = since_ms.div_euclid(1000);
    let from_hour = since_s - since_s.rem_euclid(3600);
    let events_since = format!("site = {s} AND timestamp >= toDateTime({})", int(since_s));
    let moved = MOVED.replace("{CORRECTION}", CORRECTION);
    let hours_sql = format!(
        "SELECT toInt64(toUInt32(toStartOfHour(timestamp))) AS h, count() AS events,
            uniqExact(message_id) AS unique_events, sum(is_bot) AS bots,
            countIf(notEmpty(violations)) AS violating,
            countIf({moved}) AS corrected,
            sumIf({CORRECTION}, {moved}) AS correction_ms,
            maxIf({CORRECTION}, {moved}) AS max_correction_ms
        FROM {db}.events WHERE {events_since} GROUP BY h ORDER BY h"
    );
    let names_sql = format!(
        "SELECT {NAME} AS name, toInt64(toUInt32(toStartOfHour(timestamp))) AS h, count() AS n
        FROM {db}.events WHERE site = {s} AND timestamp >= toDateTime({})
        GROUP BY name, h ORDER BY name, h LIMIT 200000",
        int(from_hour - 7 * DAY_S)
    );
    let flags_sql = |column: &str| {
        format!(
            "SELECT {NAME} AS name, flag, count() AS n,
                argMax(message_id, timestamp_ms) AS example_id,
                max(timestamp_ms) AS example_ms,
                argMax(substring(if(type = 'identify', traits, properties), 1, 300), timestamp_ms) AS example_json
            FROM {db}.events ARRAY JOIN {column} AS flag
            WHERE {events_since} GROUP BY name, flag ORDER BY n DESC, name, flag LIMIT 200"
        )
    };
    let violations_sql = flags_sql("violations");
    let missing_sql = flags_sql("missing");
    let orders_inner = format!(
        "SELECT order_id, toString(toDate(min(timestamp))) AS day,
            max(side = 'browser') AS browser, max(side = 'backend') AS backend,
            maxIf(ifNull(revenue, 0), side = 'browser') AS browser_revenue,
            maxIf(ifNull(revenue, 0), side = 'backend') AS backend_revenue,
            argMax(message_id, timestamp_ms) AS example_id
        FROM (SELECT order_id, timestamp, timestamp_ms, revenue, message_id, {SIDE} AS side
              FROM {db}.events
              WHERE {events_since} AND type = 'track' AND event = 'Order Completed' AND order_id != '')
        GROUP BY order_id"
    );
    let mismatch = "abs(browser_revenue - backend_revenue) > 0.005";
    let orders_sql = format!(
        "SELECT day, count() AS orders, countIf(browser AND backend) AS both,
            countIf(browser AND NOT backend) AS browser_only, countIf(backend AND NOT browser) AS backend_only,
            countIf(browser AND backend AND {mismatch}) AS revenue_mismatches,
            sum(browser_revenue) AS browser_sum, sum(backend_revenue) AS backend_sum
        FROM ({orders_inner}) GROUP BY day ORDER BY day"
    );
    let order_examples_sql = format!(
        "SELECT order_id, day, browser, backend, browser_revenue, backend_revenue, example_id
        FROM ({orders_inner})
        WHERE browser != backend OR (browser AND backend AND {mismatch})
        ORDER BY day DESC, order_id LIMIT 5"
    );
    let counts_sql = format!(
        "SELECT toInt64(toUInt32(hour)) AS h, metric, reason, sum(value) AS value
        FROM {db}.quality_hourly WHERE site = {s} AND hour >= toDateTime({})
        GROUP BY h, metric, reason ORDER BY h, metric, reason",
        int(from_hour)
    );
    let quarantine_sql = format!(
        "SELECT toInt64(toUInt32(toStartOfHour(quarantined_at))) AS h, substring(reason, 1, 160) AS reason,
            count() AS n, any(message_id) AS example_id
        FROM {db}.quarantine WHERE site = {s} AND quarantined_at >= toDateTime({})
        GROUP BY h, reason ORDER BY h, reason",
        int(since_s)
    );
    [
        hours_sql,
        names_sql,
        violations_sql,
        missing_sql,
        orders_sql,
        order_examples_sql,
        counts_sql,
        quarantine_sql,
    ]
}

/// The report for `site` from `since_ms` to `now_ms`.
pub async fn report(
    st: &QualityState,
    site: &str,
    since_ms: i64,
    now_ms: i64,
) -> Result<Value, QueryError> {
    let q = &st.query;
    let [hours_sql, names_sql, violations_sql, missing_sql, orders_sql, order_examples_sql, counts_sql, quarantine_sql] =
        statements(q.db(), site, since_ms);
    let (hours, names, violations, missing, order_days, order_examples, counts, quarantine) = tokio::try_join!(
        q.fetch::<HourRow>(&hours_sql),
        q.fetch::<NameHourRow>(&names_sql),
        q.fetch::<FlagRow>(&violations_sql),
        q.fetch::<FlagRow>(&missing_sql),
        q.fetch::<OrderDayRow>(&orders_sql),
        q.fetch::<OrderExampleRow>(&order_examples_sql),
        q.fetch::<CountRow>(&counts_sql),
        q.fetch::<QuarantineRow>(&quarantine_sql),
    )?;
    let completeness = st.completeness.get(site).map(Vec::as_slice).unwrap_or(&[]);
    Ok(assemble(Inputs {
        site,
        since_ms,
        now_ms,
        config: &st.config,
        completeness,
        hours,
        names,
        violations,
        missing,
        order_days,
        order_examples,
        counts,
        quarantine,
    }))
}

struct Inputs<'a> {
    site: &'a str,
    since_ms: i64,
    now_ms: i64,
    config: &'a QualityConfig,
    completeness: &'a [Completeness],
    hours: Vec<HourRow>,
    names: Vec<NameHourRow>,
    violations: Vec<FlagRow>,
    missing: Vec<FlagRow>,
    order_days: Vec<OrderDayRow>,
    order_examples: Vec<OrderExampleRow>,
    counts: Vec<CountRow>,
    quarantine: Vec<QuarantineRow>,
}

fn time(ms: i64) -> Value {
    Value::String(waymark_protocol::time::format_rfc3339(ms))
}

fn share(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        0.0
    } else {
        round4(part as f64 / whole as f64)
    }
}

/// Four decimals: enough for a share, and the page shows exactly what the JSON says.
fn round4(x: f64) -> f64 {
    (x * 10_000.0).round() / 10_000.0
}

fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

fn example(id: &str, ms: i64, json: &str) -> Value {
    json!({"message_id": id, "timestamp": time(ms), "data": json})
}

/// One event name's hour judged against the same hour of the 7 days before.
#[derive(Debug, Clone, PartialEq)]
pub struct Anomaly {
    pub event: String,
    pub hour_ms: i64,
    pub events: u64,
    pub baseline: f64,
    pub ratio: f64,
    pub kind: &'static str,
}

/// Every (event name, complete hour from `from_hour_ms` on) whose count is beyond `factor` of
/// its 7-day same-hour average (`counts`: (name, hour start in ms) -> events; absent = 0).
/// Hours whose average is under `min_events` are not judged; `now_ms`'s hour is incomplete
/// and is not either. Largest deviation first.
pub fn anomalies(
    counts: &HashMap<(String, i64), u64>,
    from_hour_ms: i64,
    now_ms: i64,
    factor: f64,
    min_events: u64,
) -> Vec<Anomaly> {
    let current = now_ms - now_ms.rem_euclid(HOUR_MS);
    let mut names: Vec<&String> = counts.keys().map(|(n, _)| n).collect();
    names.sort();
    names.dedup();
    let mut out = Vec::new();
    for name in names {
        let mut h = from_hour_ms - from_hour_ms.rem_euclid(HOUR_MS);
        while h < current {
            let at = |t: i64| counts.get(&(name.clone(), t)).copied().unwrap_or(0);
            let baseline = (1..=7).map(|d| at(h - d * 24 * HOUR_MS)).sum::<u64>() as f64 / 7.0;
            if baseline >= min_events as f64 && baseline > 0.0 {
                let n = at(h);
                let ratio = n as f64 / baseline;
                let kind = if ratio > factor {
                    Some("spike")
                } else if ratio < 1.0 / factor {
                    Some("drop")
                } else {
                    None
                };
                if let Some(kind) = kind {
                    out.push(Anomaly {
                        event: name.clone(),
                        hour_ms: h,
                        events: n,
                        baseline: round2(baseline),
                        ratio: round4(ratio),
                        kind,
                    });
                }
            }
            h += HOUR_MS;
        }
    }
    out.sort_by(|a, b| {
        deviation(b.ratio)
            .total_cmp(&deviation(a.ratio))
            .then(b.hour_ms.cmp(&a.hour_ms))
    });
    out
}

/// How far a ratio is from 1, either way (0.25 and 4 are as far).
fn deviation(ratio: f64) -> f64 {
    if ratio <= 0.0 {
        f64::INFINITY
    } else {
        ratio.ln().abs()
    }
}

fn assemble(i: Inputs<'_>) -> Value {
    let total: u64 = i.hours.iter().map(|h| h.events).sum();
    let unique: u64 = i.hours.iter().map(|h| h.unique_events).sum();
    let bots: u64 = i.hours.iter().map(|h| h.bots).sum();
    let violating: u64 = i.hours.iter().map(|h| h.violating).sum();
    let corrected: u64 = i.hours.iter().map(|h| h.corrected).sum();
    let correction_ms: u64 = i.hours.iter().map(|h| h.correction_ms).sum();
    let max_correction_ms = i
        .hours
        .iter()
        .map(|h| h.max_correction_ms)
        .max()
        .unwrap_or(0);
    let mut problems: Vec<Value> = Vec::new();

    // Volume.
    let mut by_name_hour: HashMap<(String, i64), u64> = HashMap::new();
    let mut by_name: HashMap<&str, u64> = HashMap::new();
    for r in &i.names {
        by_name_hour.insert((r.name.clone(), r.h * 1000), r.n);
        if r.h * 1000 >= i.since_ms - i.since_ms.rem_euclid(HOUR_MS) {
            *by_name.entry(r.name.as_str()).or_default() += r.n;
        }
    }
    let found = anomalies(
        &by_name_hour,
        i.since_ms,
        i.now_ms,
        i.config.anomaly_factor,
        i.config.anomaly_min_events,
    );
    let last_complete = i.now_ms - i.now_ms.rem_euclid(HOUR_MS) - HOUR_MS;
    for a in &found {
        problems.push(json!({
            "check": "volume",
            "title": format!("{}: {} events at {}, {}x the usual {} ({})", a.event, a.events,
                waymark_protocol::time::format_rfc3339(a.hour_ms), a.ratio, a.baseline, a.kind),
            "score": round4((1.0 - a.ratio.min(1.0 / a.ratio.max(1e-9))).clamp(0.0, 1.0)),
            "count": a.events,
            "example": Value::Null,
        }));
    }
    let mut events_by_name: Vec<(&str, u64)> = by_name.into_iter().collect();
    events_by_name.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
    let volume = json!({
        "factor": i.config.anomaly_factor,
        "min_events": i.config.anomaly_min_events,
        "hours": i.hours.iter().map(|h| json!({"hour": time(h.h * 1000), "events": h.events, "violating": h.violating, "bots": h.bots})).collect::<Vec<_>>(),
        "by_event": events_by_name.iter().map(|(n, c)| json!({"event": n, "events": c})).collect::<Vec<_>>(),
        "anomalies": found.iter().map(|a| json!({"event": a.event, "hour": time(a.hour_ms), "events": a.events,
            "baseline": a.baseline, "ratio": a.ratio, "kind": a.kind})).collect::<Vec<_>>(),
        "last_complete_hour_anomalies": found.iter().filter(|a| a.hour_ms == last_complete).count(),
    });

    // Violations.
    let name_total = |name: &str| {
        events_by_name
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, c)| *c)
            .unwrap_or(0)
    };
    let mut by_kind: Vec<(String, u64)> = Vec::new();
    let violation_rows: Vec<Value> = i
        .violations
        .iter()
        .map(|v| {
            let (kind, field) = v.flag.split_once(':').unwrap_or((v.flag.as_str(), ""));
            match by_kind.iter_mut().find(|(k, _)| k == kind) {
                Some((_, n)) => *n += v.n,
                None => by_kind.push((kind.to_string(), v.n)),
            }
            let sh = share(v.n, name_total(&v.name));
            let ex = example(&v.example_id, v.example_ms, &v.example_json);
            problems.push(json!({
                "check": "violations",
                "title": format!("{}: {kind} {field} on {} of {} events", v.name, v.n, name_total(&v.name)),
                "score": sh, "count": v.n, "example": ex,
            }));
            json!({"event": v.name, "kind": kind, "field": field, "count": v.n, "share": sh, "example": ex})
        })
        .collect();
    by_kind.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    let violations = json!({
        "events": violating,
        "share": share(violating, total),
        "by_kind": by_kind.iter().map(|(k, n)| json!({"kind": k, "count": n})).collect::<Vec<_>>(),
        "by_event": violation_rows,
    });

    // Completeness.
    let completeness: Vec<Value> = i
        .completeness
        .iter()
        .map(|c| {
            let checked = name_total(&c.event);
            let m = i
                .missing
                .iter()
                .find(|m| m.name == c.event && m.flag == c.field);
            let missing = m.map(|m| m.n).unwrap_or(0);
            let present = if checked == 0 {
                1.0
            } else {
                round4(1.0 - missing as f64 / checked as f64)
            };
            let ex = m
                .map(|m| example(&m.example_id, m.example_ms, &m.example_json))
                .unwrap_or(Value::Null);
            let below = checked > 0 && present < c.min;
            if below {
                problems.push(json!({
                    "check": "completeness",
                    "title": format!("{}: {} present on {:.1}% of {} events (threshold {:.1}%)",
                        c.event, c.field, present * 100.0, checked, c.min * 100.0),
                    "score": round4(c.min - present), "count": missing, "example": ex,
                }));
            }
            json!({"event": c.event, "field": c.field, "min": c.min, "events": checked,
                   "missing": missing, "present": present, "below": below, "example": ex})
        })
        .collect();

    // Consistency.
    let sum = |f: fn(&OrderDayRow) -> u64| i.order_days.iter().map(f).sum::<u64>();
    let orders = sum(|d| d.orders);
    let one_side = sum(|d| d.browser_only) + sum(|d| d.backend_only);
    let mismatches = sum(|d| d.revenue_mismatches);
    let order_examples: Vec<Value> = i
        .order_examples
        .iter()
        .map(|e| {
            json!({"order_id": e.order_id, "day": e.day,
                "seen_by": match (e.browser, e.backend) { (1, 0) => "browser", (0, 1) => "backend", _ => "both" },
                "browser_revenue": round2(e.browser_revenue), "backend_revenue": round2(e.backend_revenue),
                "message_id": e.example_id})
        })
        .collect();
    let first_example = |pred: &dyn Fn(&OrderExampleRow) -> bool| {
        i.order_examples
            .iter()
            .position(pred)
            .map(|k| order_examples[k].clone())
            .unwrap_or(Value::Null)
    };
    if one_side > 0 {
        problems.push(json!({
            "check": "consistency",
            "title": format!("{one_side} of {orders} orders seen by the browser or the backend only"),
            "score": share(one_side, orders), "count": one_side,
            "example": first_example(&|e| e.browser != e.backend),
        }));
    }
    if mismatches > 0 {
        problems.push(json!({
            "check": "consistency",
            "title": format!("{mismatches} of {orders} orders with a different revenue in the browser and the backend"),
            "score": share(mismatches, orders), "count": mismatches,
            "example": first_example(&|e| e.browser == 1 && e.backend == 1),
        }));
    }
    let consistency = json!({
        "orders": orders,
        "both": sum(|d| d.both),
        "browser_only": sum(|d| d.browser_only),
        "backend_only": sum(|d| d.backend_only),
        "one_side_share": share(one_side, orders),
        "revenue_mismatches": mismatches,
        "revenue_mismatch_share": share(mismatches, orders),
        "days": i.order_days.iter().map(|d| json!({"day": d.day, "orders": d.orders, "both": d.both,
            "browser_only": d.browser_only, "backend_only": d.backend_only,
            "revenue_mismatches": d.revenue_mismatches,
            "browser_revenue": round2(d.browser_revenue), "backend_revenue": round2(d.backend_revenue),
            "revenue_difference": round2(d.backend_revenue - d.browser_revenue)})).collect::<Vec<_>>(),
        "examples": order_examples,
    });

    // Intake: the intake's counts, quarantine, stored duplicates, bots, clock skew.
    let mut rejected_by_reason: Vec<(String, u64)> = Vec::new();
    let (mut rejected, mut duplicates, mut rate_limited) = (0u64, 0u64, 0u64);
    let (mut visible, mut delay_ms, mut late) = (0u64, 0u64, 0u64);
    let mut intake_hours: Vec<(i64, [u64; 3])> = Vec::new();
    let mut fresh_hours: Vec<(i64, [u64; 3])> = Vec::new();
    fn slot(v: &mut Vec<(i64, [u64; 3])>, h: i64) -> &mut [u64; 3] {
        if v.last().map(|(x, _)| *x) != Some(h) {
            v.push((h, [0; 3]));
        }
        &mut v.last_mut().expect("pushed").1
    }
    use crate::store::quality::metric as m;
    for c in &i.counts {
        match c.metric.as_str() {
            m::REJECTED => {
                rejected += c.value;
                slot(&mut intake_hours, c.h)[0] += c.value;
                match rejected_by_reason.iter_mut().find(|(r, _)| *r == c.reason) {
                    Some((_, n)) => *n += c.value,
                    None => rejected_by_reason.push((c.reason.clone(), c.value)),
                }
            }
            m::DUPLICATE => {
                duplicates += c.value;
                slot(&mut intake_hours, c.h)[1] += c.value;
            }
            m::RATE_LIMITED => {
                rate_limited += c.value;
                slot(&mut intake_hours, c.h)[2] += c.value;
            }
            m::VISIBLE_ROWS => {
                visible += c.value;
                slot(&mut fresh_hours, c.h)[0] += c.value;
            }
            m::VISIBLE_DELAY_MS => {
                delay_ms += c.value;
                slot(&mut fresh_hours, c.h)[1] += c.value;
            }
            m::VISIBLE_LATE_60S => {
                late += c.value;
                slot(&mut fresh_hours, c.h)[2] += c.value;
            }
            _ => {}
        }
    }
    rejected_by_reason.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    let received = total + rejected + duplicates + rate_limited;
    if rejected > 0 {
        let (reason, n) = &rejected_by_reason[0];
        problems.push(json!({
            "check": "rejects",
            "title": format!("{rejected} events refused ({n} for {reason})"),
            "score": share(rejected, received), "count": rejected, "example": Value::Null,
        }));
    }
    let quarantined: u64 = i.quarantine.iter().map(|q| q.n).sum();
    let mut quarantine_by_reason: Vec<(String, u64, String)> = Vec::new();
    for q in &i.quarantine {
        match quarantine_by_reason
            .iter_mut()
            .find(|(r, _, _)| *r == q.reason)
        {
            Some((_, n, _)) => *n += q.n,
            None => quarantine_by_reason.push((q.reason.clone(), q.n, q.example_id.clone())),
        }
    }
    quarantine_by_reason.sort_by_key(|q| std::cmp::Reverse(q.1));
    if quarantined > 0 {
        let (reason, _, id) = &quarantine_by_reason[0];
        problems.push(json!({
            "check": "quarantine",
            "title": format!("{quarantined} rows quarantined (ClickHouse refused them: {reason})"),
            "score": share(quarantined, received).max(0.0001), "count": quarantined,
            "example": json!({"message_id": id}),
        }));
    }
    let stored_duplicates = total - unique.min(total);
    let intake = json!({
        "received": received,
        "rejected": rejected,
        "rejected_share": share(rejected, received),
        "rejected_by_reason": rejected_by_reason.iter().map(|(r, n)| json!({"reason": r, "count": n})).collect::<Vec<_>>(),
        "duplicates_dropped": duplicates,
        "duplicates_stored": stored_duplicates,
        "rate_limited": rate_limited,
        "quarantined": quarantined,
        "quarantine_by_reason": quarantine_by_reason.iter().map(|(r, n, id)| json!({"reason": r, "count": n, "example_message_id": id})).collect::<Vec<_>>(),
        "hours": intake_hours.iter().map(|(h, [r, d, l])| json!({"hour": time(h * 1000), "rejected": r, "duplicates_dropped": d, "rate_limited": l})).collect::<Vec<_>>(),
        "quarantine_hours": i.quarantine.iter().map(|q| json!({"hour": time(q.h * 1000), "reason": q.reason, "count": q.n})).collect::<Vec<_>>(),
    });
    let bot_share = share(bots, total);
    let clock = json!({
        "events": total,
        "corrected": corrected,
        "corrected_share": share(corrected, total),
        "mean_correction_ms": correction_ms.checked_div(corrected).unwrap_or(0),
        "max_correction_ms": max_correction_ms,
        "hours": i.hours.iter().map(|h| json!({"hour": time(h.h * 1000), "corrected": h.corrected,
            "mean_correction_ms": h.correction_ms.checked_div(h.corrected).unwrap_or(0)})).collect::<Vec<_>>(),
    });
    let bots_v = json!({"events": total, "bots": bots, "share": bot_share});
    let mean_delay_ms = delay_ms.checked_div(visible).unwrap_or(0);
    if late > 0 {
        problems.push(json!({
            "check": "freshness",
            "title": format!("{late} of {visible} events took over a minute to become visible"),
            "score": share(late, visible), "count": late, "example": Value::Null,
        }));
    }
    let freshness = json!({
        "visible": visible,
        "mean_delay_ms": mean_delay_ms,
        "late_60s": late,
        "late_share": share(late, visible),
        "hours": fresh_hours.iter().map(|(h, [n, d, l])| json!({"hour": time(h * 1000), "visible": n,
            "mean_delay_ms": d.checked_div(*n).unwrap_or(0), "late_60s": l})).collect::<Vec<_>>(),
    });

    // Worst first: the share of events a problem touches, then its count.
    problems.sort_by(|a, b| {
        b["score"]
            .as_f64()
            .unwrap_or(0.0)
            .total_cmp(&a["score"].as_f64().unwrap_or(0.0))
            .then(
                b["count"]
                    .as_u64()
                    .unwrap_or(0)
                    .cmp(&a["count"].as_u64().unwrap_or(0)),
            )
    });
    json!({
        "site": i.site,
        "since": time(i.since_ms),
        "until": time(i.now_ms),
        "events": total,
        "problems": problems,
        "volume": volume,
        "violations": violations,
        "completeness": completeness,
        "consistency": consistency,
        "intake": intake,
        "bots": bots_v,
        "clock": clock,
        "freshness": freshness,
    })
}

/// Computes every site's report (the last 2 hours) every `every` and sets the
/// `waymark_quality_*` gauges from it, until `stop` turns true.
pub async fn run_checks(
    st: QualityState,
    metrics: Arc<Metrics>,
    every: Duration,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    if every.is_zero() {
        return;
    }
    loop {
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = stop.changed() => return,
        }
        if !st.query.schema_ready() {
            continue;
        }
        for site in st.sites.iter() {
            let now = crate::clock::now_ms();
            match report(&st, site, now - 2 * HOUR_MS, now).await {
                Ok(r) => metrics.quality_report(site, &gauges(&r)),
                Err(e) => {
                    tracing::warn!(site, error = %e, "quality check failed; retrying at the next interval")
                }
            }
        }
    }
}

/// The report's figures that become gauges, by metric name suffix.
pub fn gauges(r: &Value) -> Vec<(&'static str, f64)> {
    let f = |p: &str| r.pointer(p).and_then(Value::as_f64).unwrap_or(0.0);
    vec![
        (
            "volume_anomalies",
            f("/volume/last_complete_hour_anomalies"),
        ),
        (
            "freshness_mean_seconds",
            f("/freshness/mean_delay_ms") / 1000.0,
        ),
        ("freshness_late_share", f("/freshness/late_share")),
        ("orders_one_side_share", f("/consistency/one_side_share")),
        (
            "orders_revenue_mismatch_share",
            f("/consistency/revenue_mismatch_share"),
        ),
        ("rejected_share", f("/intake/rejected_share")),
        ("bot_share", f("/bots/share")),
        ("clock_corrected_share", f("/clock/corrected_share")),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    const H: i64 = HOUR_MS;

    #[test]
    fn since_takes_a_time_or_a_duration_and_names_the_field() {
        let now = 1_764_000_000_000;
        assert_eq!(parse_since(None, now).unwrap(), now - 24 * H);
        assert_eq!(parse_since(Some("2h"), now).unwrap(), now - 2 * H);
        assert_eq!(
            parse_since(Some("2025-11-24T15:00:00Z"), now).unwrap(),
            now - H
        );
        for bad in ["soon", "40d", "2099-01-01T00:00:00Z"] {
            let e = parse_since(Some(bad), now).unwrap_err();
            assert!(e.to_string().starts_with("since:"), "{bad}: {e}");
        }
    }

    #[test]
    fn an_hour_beyond_the_factor_of_its_seven_day_average_is_an_anomaly() {
        let now: i64 = 1_764_000_000_000 + 10 * 60_000; // 16:10
        let this = now - now.rem_euclid(H); // 16:00, incomplete
        let last = this - H; // 15:00
        let mut c = HashMap::new();
        for d in 1..=7 {
            c.insert(("Product Viewed".to_string(), last - d * 24 * H), 30);
            c.insert(("Order Completed".to_string(), last - d * 24 * H), 10);
            c.insert(("rare".to_string(), last - d * 24 * H), 2);
            c.insert(("Product Viewed".to_string(), this - d * 24 * H), 30);
        }
        c.insert(("Product Viewed".to_string(), last), 3); // a drop
        c.insert(("Order Completed".to_string(), last), 15); // within 2x
        c.insert(("rare".to_string(), last), 50); // its average is under min_events
                                                  // The current hour has nothing yet: not judged.
        let a = anomalies(&c, last, now, 2.0, 5);
        assert_eq!(
            a,
            [Anomaly {
                event: "Product Viewed".into(),
                hour_ms: last,
                events: 3,
                baseline: 30.0,
                ratio: 0.1,
                kind: "drop",
            }]
        );
        c.insert(("Order Completed".to_string(), last), 21);
        let a = anomalies(&c, last, now, 2.0, 5);
        assert_eq!(a.len(), 2);
        assert_eq!(a[0].kind, "drop", "0.1 is further from 1 than 2.1");
        assert_eq!(
            (a[1].event.as_str(), a[1].kind),
            ("Order Completed", "spike")
        );
    }

    fn inputs<'a>(cfg: &'a QualityConfig, comp: &'a [Completeness]) -> Inputs<'a> {
        let now = 1_764_000_000_000;
        Inputs {
            site: "shop",
            since_ms: now - 2 * H,
            now_ms: now,
            config: cfg,
            completeness: comp,
            hours: vec![HourRow {
                h: (now - H) / 1000,
                events: 100,
                unique_events: 98,
                bots: 10,
                violating: 20,
                corrected: 4,
                correction_ms: 8_000,
                max_correction_ms: 5_000,
            }],
            names: vec![
                NameHourRow {
                    name: "Order Completed".into(),
                    h: (now - H) / 1000,
                    n: 40,
                },
                NameHourRow {
                    name: "page".into(),
                    h: (now - H) / 1000,
                    n: 60,
                },
            ],
            violations: vec![FlagRow {
                name: "Order Completed".into(),
                flag: "required_missing:properties.revenue".into(),
                n: 20,
                example_id: "m1".into(),
                example_ms: now - H,
                example_json: "{}".into(),
            }],
            missing: vec![FlagRow {
                name: "Order Completed".into(),
                flag: "properties.revenue".into(),
                n: 20,
                example_id: "m1".into(),
                example_ms: now - H,
                example_json: "{}".into(),
            }],
            order_days: vec![OrderDayRow {
                day: "2025-11-24".into(),
                orders: 40,
                both: 30,
                browser_only: 8,
                backend_only: 2,
                revenue_mismatches: 3,
                browser_revenue: 100.0,
                backend_revenue: 130.0,
            }],
            order_examples: vec![OrderExampleRow {
                order_id: "o-1".into(),
                day: "2025-11-24".into(),
                browser: 1,
                backend: 0,
                browser_revenue: 10.0,
                backend_revenue: 0.0,
                example_id: "m2".into(),
            }],
            counts: vec![
                CountRow {
                    h: (now - H) / 1000,
                    metric: "rejected".into(),
                    reason: "invalid_field:event".into(),
                    value: 5,
                },
                CountRow {
                    h: (now - H) / 1000,
                    metric: "duplicate".into(),
                    reason: "".into(),
                    value: 2,
                },
                CountRow {
                    h: (now - H) / 1000,
                    metric: "visible_rows".into(),
                    reason: "".into(),
                    value: 100,
                },
                CountRow {
                    h: (now - H) / 1000,
                    metric: "visible_delay_ms".into(),
                    reason: "".into(),
                    value: 150_000,
                },
                CountRow {
                    h: (now - H) / 1000,
                    metric: "visible_late_60s".into(),
                    reason: "".into(),
                    value: 1,
                },
            ],
            quarantine: vec![],
        }
    }

    #[test]
    fn the_report_adds_up_and_lists_the_worst_problem_first() {
        let cfg = QualityConfig::default();
        let comp = [Completeness {
            event: "Order Completed".into(),
            field: "properties.revenue".into(),
            min: 1.0,
        }];
        let r = assemble(inputs(&cfg, &comp));
        assert_eq!(r["events"], 100);
        assert_eq!(r["violations"]["share"], 0.2);
        assert_eq!(r["violations"]["by_event"][0]["share"], 0.5);
        assert_eq!(r["completeness"][0]["present"], 0.5);
        assert_eq!(r["completeness"][0]["below"], true);
        assert_eq!(r["consistency"]["one_side_share"], 0.25);
        assert_eq!(r["consistency"]["days"][0]["revenue_difference"], 30.0);
        assert_eq!(r["consistency"]["examples"][0]["seen_by"], "browser");
        assert_eq!(r["intake"]["received"], 107);
        assert_eq!(r["intake"]["duplicates_stored"], 2);
        assert_eq!(r["bots"]["share"], 0.1);
        assert_eq!(r["clock"]["mean_correction_ms"], 2000);
        assert_eq!(r["freshness"]["mean_delay_ms"], 1500);
        let problems = r["problems"].as_array().unwrap();
        let checks: Vec<&str> = problems
            .iter()
            .map(|p| p["check"].as_str().unwrap())
            .collect();
        // revenue missing on half the orders (0.5 both as a violation and as completeness
        // under its threshold), then orders seen by one side (0.25)...
        assert_eq!(&checks[..3], ["violations", "completeness", "consistency"]);
        assert_eq!(problems[0]["example"]["message_id"], "m1");
        let scores: Vec<f64> = problems
            .iter()
            .map(|p| p["score"].as_f64().unwrap())
            .collect();
        assert!(scores.windows(2).all(|w| w[0] >= w[1]), "{scores:?}");
        let g = gauges(&r);
        assert!(g.contains(&("orders_one_side_share", 0.25)));
        assert!(g.contains(&("freshness_mean_seconds", 1.5)));
    }
}
