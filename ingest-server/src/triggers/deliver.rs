//! The deliverer: sends the outbox's pending deliveries to their subscriptions' webhooks,
//! signed, retried with backoff, and records each outcome in `trigger_deliveries`.
//!
//! The outbox lives in ClickHouse, so nothing pending is lost with the server: at start the
//! deliverer loads every delivery whose latest row is `pending`; afterwards the evaluator hands
//! it the ones it writes. A delivery is sent, then its outcome written (`delivered`, or
//! `pending` with the next attempt's time, or `dead` after `triggers.max_attempts`). Outcomes
//! that cannot be written yet are kept and written again before anything else is sent, so a
//! delivered key is never sent twice by a running server. The one window left is a crash after
//! the webhook answered 2xx and before the outcome reached ClickHouse: that delivery is sent
//! again after the restart with the same `Idempotency-Key`, which is why the receiver must
//! deduplicate by it (see the README's "Triggers").

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt as _;
use serde::Deserialize;
use waymark_protocol::edge::{sign, HEADER_SIGNATURE, HEADER_TIMESTAMP};

use super::subscription::{self, Subscription};
use super::Delivery;
use crate::clock::now_ms;
use crate::config::TriggersConfig;
use crate::metrics::Metrics;
use crate::query::{QueryError, QueryState};

/// The header carrying the delivery's idempotency key.
pub const HEADER_IDEMPOTENCY_KEY: &str = "idempotency-key";

/// How often due deliveries are looked for when nothing new arrives.
const POLL: Duration = Duration::from_millis(200);

/// The wait before attempt `attempts + 1`: `backoff * 2^(attempts - 1)`, at most `max`.
pub fn backoff(cfg: &TriggersConfig, attempts: u32) -> Duration {
    let factor = 1u32 << attempts.saturating_sub(1).min(20);
    cfg.backoff.0.saturating_mul(factor).min(cfg.max_backoff.0)
}

#[derive(Deserialize)]
struct PendingRow {
    key: String,
    site: String,
    sub_id: String,
    person: String,
    entry: u32,
    kind: String,
    payload: String,
    created_at_ms: i64,
    attempts: u32,
    next_at_ms: i64,
}

/// Sends deliveries.
pub struct Deliverer {
    st: QueryState,
    cfg: TriggersConfig,
    metrics: Arc<Metrics>,
    http: reqwest::Client,
    queue: Vec<Delivery>,
    /// Outcome rows not yet written to ClickHouse.
    unwritten: Vec<super::OutboxRow>,
    subs: HashMap<(String, String), Subscription>,
}

impl Deliverer {
    pub fn new(st: QueryState, cfg: TriggersConfig, metrics: Arc<Metrics>) -> Self {
        let http = reqwest::Client::builder()
            .timeout(cfg.timeout.0)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .expect("an HTTP client with a timeout builds");
        Deliverer {
            st,
            cfg,
            metrics,
            http,
            queue: Vec::new(),
            unwritten: Vec::new(),
            subs: HashMap::new(),
        }
    }

    /// Loads every pending delivery from the outbox (at start).
    pub async fn load(&mut self) -> Result<usize, QueryError> {
        let rows: Vec<PendingRow> = self
            .st
            .fetch(&format!(
                "SELECT key, any(site) AS site, any(sub_id) AS sub_id, any(person) AS person,
    any(entry) AS entry, any(kind) AS kind, any(payload) AS payload,
    min(created_at_ms) AS created_at_ms, argMax(attempts, version) AS attempts,
    argMax(next_at_ms, version) AS next_at_ms
FROM {}.trigger_deliveries
GROUP BY key
HAVING argMax(state, version) = 'pending'",
                self.st.db()
            ))
            .await?;
        let n = rows.len();
        let known: std::collections::HashSet<String> =
            self.queue.iter().map(|d| d.key.clone()).collect();
        for r in rows {
            if known.contains(&r.key) {
                continue;
            }
            self.queue.push(Delivery {
                key: r.key,
                site: r.site,
                sub_id: r.sub_id,
                person: r.person,
                entry: r.entry,
                kind: r.kind,
                payload: r.payload,
                created_at_ms: r.created_at_ms,
                attempts: r.attempts,
                next_at_ms: r.next_at_ms,
            });
        }
        self.metrics.trigger_pending(self.queue.len());
        Ok(n)
    }

    /// Adds deliveries the evaluator wrote to the outbox.
    pub fn push(&mut self, new: impl IntoIterator<Item = Delivery>) {
        self.queue.extend(new);
        self.metrics.trigger_pending(self.queue.len());
    }

    /// Deliveries waiting (due or not).
    pub fn pending(&self) -> usize {
        self.queue.len()
    }

    async fn refresh_subs(&mut self) -> Result<(), QueryError> {
        self.subs = subscription::list(&self.st, None)
            .await?
            .into_iter()
            .map(|s| ((s.site.clone(), s.id.clone()), s))
            .collect();
        Ok(())
    }

    async fn write_outcomes(&mut self) -> Result<(), QueryError> {
        if self.unwritten.is_empty() {
            return Ok(());
        }
        self.st
            .insert_rows("trigger_deliveries", &self.unwritten)
            .await?;
        self.unwritten.clear();
        Ok(())
    }

    /// Sends every due delivery once and records the outcomes; returns how many were sent.
    pub async fn round(&mut self) -> Result<usize, QueryError> {
        // Outcomes first: until they are in ClickHouse, nothing new goes out.
        self.write_outcomes().await?;
        let now = now_ms();
        let (due, later): (Vec<Delivery>, Vec<Delivery>) =
            self.queue.drain(..).partition(|d| d.next_at_ms <= now);
        self.queue = later;
        if due.is_empty() {
            return Ok(0);
        }
        if due
            .iter()
            .any(|d| !self.subs.contains_key(&(d.site.clone(), d.sub_id.clone())))
        {
            if let Err(e) = self.refresh_subs().await {
                self.queue.extend(due);
                return Err(e);
            }
        }
        let sent = due.len();
        let http = &self.http;
        let subs = &self.subs;
        let batch = self.cfg.batch;
        let results: Vec<(Vec<Delivery>, Outcome)> = futures::stream::iter(posts(due, batch))
            .map(|ds| async move {
                let outcome = match subs.get(&(ds[0].site.clone(), ds[0].sub_id.clone())) {
                    None => Outcome::Cancelled,
                    Some(sub) => send(http, sub, &ds, batch).await,
                };
                (ds, outcome)
            })
            .buffer_unordered(self.cfg.concurrency)
            .collect()
            .await;
        let results = results
            .into_iter()
            .flat_map(|(ds, outcome)| ds.into_iter().map(move |d| (d, outcome.clone())));
        let now = now_ms();
        for (mut d, outcome) in results {
            d.attempts += 1;
            let row = match outcome {
                Outcome::Delivered => {
                    self.metrics.trigger_delivery("delivered");
                    self.metrics
                        .trigger_latency((now - d.created_at_ms).max(0) as f64 / 1000.0);
                    d.row("delivered", "", crate::store::schema::triggers::TERMINAL)
                }
                Outcome::Cancelled => {
                    self.metrics.trigger_delivery("cancelled");
                    d.row(
                        "cancelled",
                        "the subscription was removed",
                        crate::store::schema::triggers::TERMINAL,
                    )
                }
                Outcome::Failed(why) if d.attempts >= self.cfg.max_attempts => {
                    self.metrics.trigger_delivery("dead");
                    tracing::warn!(key = %d.key, url_error = %why, attempts = d.attempts, "trigger delivery is a dead letter");
                    d.row("dead", &why, crate::store::schema::triggers::TERMINAL)
                }
                Outcome::Failed(why) => {
                    self.metrics.trigger_delivery("failed");
                    d.next_at_ms = now + backoff(&self.cfg, d.attempts).as_millis() as i64;
                    let row = d.row("pending", &why, u64::from(d.attempts));
                    self.queue.push(d);
                    row
                }
            };
            self.unwritten.push(row);
        }
        self.metrics.trigger_pending(self.queue.len());
        self.write_outcomes().await?;
        Ok(sent)
    }

    /// Runs until `stop`: loads the outbox, then takes new deliveries from `rx` and sends what
    /// is due. At stop, deliveries in flight finish and their outcomes are written.
    pub async fn run(
        mut self,
        mut rx: tokio::sync::mpsc::UnboundedReceiver<Vec<Delivery>>,
        mut stop: tokio::sync::watch::Receiver<bool>,
    ) {
        let mut delay = Duration::from_secs(1);
        loop {
            match self.load().await {
                Ok(n) => {
                    tracing::info!(pending = n, "trigger outbox loaded");
                    break;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot load the trigger outbox yet; retrying");
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = stop.changed() => return,
            }
            delay = (delay * 2).min(Duration::from_secs(30));
        }
        let mut failing_since: Option<Instant> = None;
        loop {
            while let Ok(batch) = rx.try_recv() {
                self.push(batch);
            }
            match self.round().await {
                Ok(_) => failing_since = None,
                Err(e) => {
                    if failing_since.is_none() {
                        tracing::warn!(error = %e, "trigger deliveries: ClickHouse failed; retrying");
                    }
                    failing_since.get_or_insert_with(Instant::now);
                }
            }
            let wait = if failing_since.is_some() {
                Duration::from_secs(1)
            } else {
                POLL
            };
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                batch = rx.recv() => {
                    if let Some(b) = batch { self.push(b) }
                }
                _ = stop.changed() => {
                    if let Err(e) = self.write_outcomes().await {
                        tracing::warn!(error = %e, "trigger delivery outcomes not written at stop; those deliveries are sent again at the next start");
                    }
                    return;
                }
            }
        }
    }
}

#[derive(Clone)]
enum Outcome {
    Delivered,
    Failed(String),
    Cancelled,
}

/// The POSTs that carry `due`: one per delivery when `batch` is 1, else up to `batch`
/// deliveries of one subscription each, in the order they came.
fn posts(due: Vec<Delivery>, batch: usize) -> Vec<Vec<Delivery>> {
    if batch <= 1 {
        return due.into_iter().map(|d| vec![d]).collect();
    }
    let mut open: HashMap<(String, String), usize> = HashMap::new();
    let mut out: Vec<Vec<Delivery>> = Vec::new();
    for d in due {
        let sub = (d.site.clone(), d.sub_id.clone());
        match open.get(&sub) {
            Some(&i) if out[i].len() < batch => out[i].push(d),
            _ => {
                open.insert(sub, out.len());
                out.push(vec![d]);
            }
        }
    }
    out
}

/// The body of one POST: the delivery itself, or `{"deliveries": [...]}` for a batch (built
/// from the stored payloads, which are JSON already).
fn body(ds: &[Delivery], batch: usize) -> String {
    if batch <= 1 {
        return ds.first().map(|d| d.payload.clone()).unwrap_or_default();
    }
    let mut b = String::with_capacity(ds.iter().map(|d| d.payload.len() + 1).sum::<usize>() + 20);
    b.push_str("{\"deliveries\":[");
    for (i, d) in ds.iter().enumerate() {
        if i > 0 {
            b.push(',');
        }
        b.push_str(&d.payload);
    }
    b.push_str("]}");
    b
}

/// One signed POST of `ds` (one delivery, or a batch of one subscription's). The
/// `Idempotency-Key` header is the delivery's key; a batch carries each key as its delivery's
/// `id` instead (a retried batch may be grouped differently).
async fn send(
    http: &reqwest::Client,
    sub: &Subscription,
    ds: &[Delivery],
    batch: usize,
) -> Outcome {
    let ts = now_ms() / 1000;
    let payload = body(ds, batch);
    let signature = sign(sub.secret.as_bytes(), ts, payload.as_bytes());
    let mut request = http
        .post(&sub.url)
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .header(HEADER_TIMESTAMP, ts.to_string())
        .header(HEADER_SIGNATURE, signature)
        .header(reqwest::header::USER_AGENT, "waymark-triggers/1");
    if batch <= 1 {
        if let Some(d) = ds.first() {
            request = request.header(HEADER_IDEMPOTENCY_KEY, &d.key);
        }
    }
    match request.body(payload).send().await {
        Ok(r) if r.status().is_success() => Outcome::Delivered,
        Ok(r) => Outcome::Failed(format!("the webhook answered {}", r.status())),
        Err(e) => Outcome::Failed(format!("the webhook could not be reached: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::HumanDuration;

    fn delivery(sub: &str, n: u32) -> Delivery {
        Delivery {
            key: format!("k{sub}{n}"),
            site: "shop".into(),
            sub_id: sub.into(),
            person: format!("p{n}"),
            entry: 1,
            kind: "entered".into(),
            payload: format!("{{\"id\":\"k{sub}{n}\"}}"),
            created_at_ms: 0,
            attempts: 0,
            next_at_ms: 0,
        }
    }

    #[test]
    fn a_batch_holds_one_subscriptions_deliveries_in_order_up_to_its_size() {
        let due = vec![
            delivery("a", 1),
            delivery("b", 1),
            delivery("a", 2),
            delivery("a", 3),
            delivery("b", 2),
        ];
        let keys = |ps: Vec<Vec<Delivery>>| -> Vec<Vec<String>> {
            ps.into_iter()
                .map(|p| p.into_iter().map(|d| d.key).collect())
                .collect()
        };
        assert_eq!(
            keys(posts(due.clone(), 2)),
            [vec!["ka1", "ka2"], vec!["kb1", "kb2"], vec!["ka3"]]
        );
        assert_eq!(keys(posts(due.clone(), 1)).len(), 5);
        assert_eq!(body(&due[..1], 1), r#"{"id":"ka1"}"#);
        let b: serde_json::Value = serde_json::from_str(&body(&due[..2], 10)).unwrap();
        assert_eq!(
            b,
            serde_json::json!({"deliveries": [{"id": "ka1"}, {"id": "kb1"}]})
        );
    }

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let cfg = TriggersConfig {
            backoff: HumanDuration(Duration::from_secs(2)),
            max_backoff: HumanDuration(Duration::from_secs(60)),
            ..TriggersConfig::default()
        };
        let waits: Vec<u64> = (1..=7).map(|a| backoff(&cfg, a).as_secs()).collect();
        assert_eq!(waits, [2, 4, 8, 16, 32, 60, 60]);
        assert_eq!(backoff(&cfg, 200).as_secs(), 60);
    }
}
