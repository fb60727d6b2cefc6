//! Triggers: the email platform is told, by a signed webhook, when a person enters or leaves
//! an audience.
//!
//! - [`subscription`]: `POST/GET /v1/subscriptions?site=`, `DELETE /v1/subscriptions/{id}`:
//!   an audience in the query API's language ([`crate::query::audience`]), a URL and a secret,
//!   stored in ClickHouse so every ingest server lists the same ones. Managed with read keys
//!   that have `subscribe = true`.
//! - [`eval`]: every `triggers.tick`, the persons touched since the last tick and those whose
//!   window just closed are evaluated against each subscription; who entered or left goes to
//!   the outbox (`trigger_deliveries`) with an idempotency key per (subscription, person,
//!   entry, kind).
//! - [`deliver`]: the outbox's deliveries are POSTed, signed like the edge's forwards
//!   (`waymark_protocol::edge::sign`: HMAC-SHA256 over `"<timestamp>.<body>"`), retried with
//!   exponential backoff, and after `triggers.max_attempts` kept as dead letters, listed by
//!   `GET /v1/subscriptions/dead_letters` and counted in `/metrics`.
//! - [`api`]: the handlers.
//!
//! - [`lease`]: of the servers with `triggers.evaluate = true` on one database, the holder of
//!   a lease row in ClickHouse evaluates and delivers; the others stand by and take over when
//!   it is released or expires. All serve the API.
//!
//! The tables are described in `crate::store::schema::triggers`.
//!
//! On a cluster (`[clickhouse] cluster`) the same code runs: the evaluator's bookkeeping
//! (subscriptions, memberships, outbox, state, lease) is one table replicated whole on every
//! ClickHouse server (`store::schema::triggers::WHOLE`), read from the server's own copy after
//! `sync`; a server taking the lease syncs them all before it evaluates or loads the outbox,
//! so it continues from everything the previous holder wrote. The events and the query state
//! stay sharded, and the candidates of a tick go to every shard with `GLOBAL IN`.

pub mod api;
pub mod deliver;
pub mod eval;
pub mod lease;
pub mod subscription;

use std::sync::Arc;

pub use deliver::Deliverer;
pub use eval::{Evaluator, Found, TickReport};
pub use lease::Lease;
pub use subscription::Subscription;

use crate::config::TriggersConfig;
use crate::metrics::Metrics;
use crate::query::QueryState;

/// One transition to deliver: a row of the outbox.
#[derive(Debug, Clone)]
pub struct Delivery {
    /// The idempotency key ([`eval::idempotency_key`]).
    pub key: String,
    pub site: String,
    pub sub_id: String,
    pub person: String,
    pub entry: u32,
    /// `entered` or `left`.
    pub kind: String,
    /// The JSON body sent (see the README's "Triggers").
    pub payload: String,
    /// When the evaluation found it.
    pub created_at_ms: i64,
    pub attempts: u32,
    pub next_at_ms: i64,
}

/// One row of the outbox (`trigger_deliveries`), written as RowBinary: typed, where rows
/// built as JSON text cost the server a `Value` tree per row and ClickHouse a JSON parse (on
/// `bench triggers` a tick writes hundreds of thousands).
#[derive(Debug, serde::Serialize, clickhouse::Row)]
pub(crate) struct OutboxRow {
    key: String,
    site: String,
    sub_id: String,
    person: String,
    entry: u32,
    kind: String,
    payload: String,
    created_at_ms: i64,
    state: String,
    attempts: u32,
    next_at_ms: i64,
    last_error: String,
    updated_at_ms: i64,
    version: u64,
}

/// The body of one delivery, in the README's order.
#[derive(serde::Serialize)]
struct Payload<'a> {
    id: &'a str,
    #[serde(rename = "type")]
    kind: &'a str,
    at: &'a str,
    site: &'a str,
    subscription: SubscriptionRef<'a>,
    person: PersonRef<'a>,
    entry: u32,
    profile: &'a serde_json::value::RawValue,
}

#[derive(serde::Serialize)]
struct SubscriptionRef<'a> {
    id: &'a str,
    name: &'a str,
}

#[derive(serde::Serialize)]
struct PersonRef<'a> {
    id: &'a str,
    user_id: Option<&'a str>,
}

impl Delivery {
    /// `profile` is the person's snapshot as JSON text, serialised once for all the
    /// subscriptions they enter or leave in one tick.
    fn new(
        sub: &Subscription,
        person: &str,
        user_id: &str,
        entry: u32,
        kind: &str,
        profile: &serde_json::value::RawValue,
        now_ms: i64,
    ) -> Delivery {
        let key = eval::idempotency_key(&sub.site, &sub.id, person, entry, kind);
        let at = waymark_protocol::time::format_rfc3339(now_ms);
        let payload = serde_json::to_string(&Payload {
            id: &key,
            kind,
            at: &at,
            site: &sub.site,
            subscription: SubscriptionRef {
                id: &sub.id,
                name: &sub.name,
            },
            person: PersonRef {
                id: person,
                user_id: (!user_id.is_empty()).then_some(user_id),
            },
            entry,
            profile,
        })
        .expect("a payload of strings and numbers serialises");
        Delivery {
            key,
            site: sub.site.clone(),
            sub_id: sub.id.clone(),
            person: person.to_string(),
            entry,
            kind: kind.to_string(),
            payload,
            created_at_ms: now_ms,
            attempts: 0,
            next_at_ms: now_ms,
        }
    }

    /// The outbox row for this delivery in `state`. A delivered or cancelled row leaves the
    /// payload out: only pending deliveries are sent and only dead letters are listed with
    /// theirs, and the outcome is the row a merge keeps.
    fn row(&self, state: &str, last_error: &str, version: u64) -> OutboxRow {
        let keep_payload = !matches!(state, "delivered" | "cancelled");
        OutboxRow {
            key: self.key.clone(),
            site: self.site.clone(),
            sub_id: self.sub_id.clone(),
            person: self.person.clone(),
            entry: self.entry,
            kind: self.kind.clone(),
            payload: if keep_payload {
                self.payload.clone()
            } else {
                String::new()
            },
            created_at_ms: self.created_at_ms,
            state: state.to_string(),
            attempts: self.attempts,
            next_at_ms: self.next_at_ms,
            last_error: last_error.to_string(),
            updated_at_ms: crate::clock::now_ms(),
            version,
        }
    }
}

/// How long [`sync`] waits for a table's replica to catch up.
const SYNC_TIMEOUT_SECS: u64 = 5;

/// On a cluster, makes this ClickHouse server's copies of `tables` (of
/// `store::schema::triggers::WHOLE`) hold every row any server had inserted when it is called:
/// `SYSTEM SYNC REPLICA` fetches what the table's replication log in ZooKeeper lists, so the
/// read that follows sees it. Nothing on one server.
///
/// Bounded by [`SYNC_TIMEOUT_SECS`]: a part only a stopped server holds cannot be fetched until
/// it is back. Then this is logged and the read goes on with this copy; what may be missing is
/// an insert of the last moments before that server stopped, and the outbox's idempotency keys
/// remain the guard against a transition sent twice.
pub(crate) async fn sync(st: &QueryState, tables: &[&str]) {
    if st.layout().cluster().is_none() {
        return;
    }
    for table in tables {
        let sql = format!("SYSTEM SYNC REPLICA {}.{table}", st.db());
        let done = st
            .clickhouse()
            .query_raw(&sql)
            .with_setting("receive_timeout", SYNC_TIMEOUT_SECS.to_string())
            .execute()
            .await;
        if let Err(e) = done {
            tracing::warn!(table, error = %e, "this server's copy of a trigger table could not catch up; reading it as it is");
        }
    }
}

/// The deliverer of a lease holder: its channel, its stop and its task.
struct Delivering {
    tx: tokio::sync::mpsc::UnboundedSender<Vec<Delivery>>,
    stop: tokio::sync::watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl Delivering {
    fn start(st: &QueryState, cfg: &TriggersConfig, metrics: &Arc<Metrics>) -> Delivering {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let (stop, stop_rx) = tokio::sync::watch::channel(false);
        let task =
            tokio::spawn(Deliverer::new(st.clone(), cfg.clone(), metrics.clone()).run(rx, stop_rx));
        Delivering { tx, stop, task }
    }

    /// Stops sending; deliveries in flight finish and their outcomes are written.
    async fn stop(self) {
        let _ = self.stop.send(true);
        drop(self.tx);
        let _ = self.task.await;
    }
}

/// Runs until `stop`: every `tick`, takes or renews the evaluator's lease ([`lease`]); while
/// this server holds it, evaluates and delivers, otherwise stands by. At stop, deliveries in
/// flight finish, their outcomes are written and the lease is released.
pub async fn run(
    st: QueryState,
    cfg: TriggersConfig,
    metrics: Arc<Metrics>,
    stop: tokio::sync::watch::Receiver<bool>,
) {
    let mut lease = lease::Lease::new(st.clone(), cfg.lease_duration());
    let mut evaluator = Evaluator::new(st.clone());
    let mut delivering: Option<Delivering> = None;
    let mut stop_eval = stop;
    let mut every = tokio::time::interval(cfg.tick.0);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = every.tick() => {}
            _ = stop_eval.changed() => break,
        }
        if !st.schema_ready() {
            continue;
        }
        let holding = match lease.acquire().await {
            Ok(h) => h,
            Err(e) => {
                tracing::warn!(error = %e, "the trigger lease could not be read or renewed");
                lease.held()
            }
        };
        metrics.trigger_lease(holding);
        if !holding {
            if let Some(d) = delivering.take() {
                tracing::info!("the trigger lease is held elsewhere; this server stands by");
                d.stop().await;
            }
            continue;
        }
        if delivering.is_none() {
            // Another server may have evaluated while this one did not hold the lease: on a
            // cluster, its last writes are fetched before they are read.
            evaluator.unclean();
            sync(&st, crate::store::schema::triggers::WHOLE).await;
        }
        let d = delivering.get_or_insert_with(|| {
            tracing::info!(holder = %lease.id(), "this server holds the trigger lease: evaluating and delivering");
            Delivering::start(&st, &cfg, &metrics)
        });
        let started = std::time::Instant::now();
        let found = match evaluator.find(crate::clock::now_ms()).await {
            Ok(f) => f,
            Err(e) => {
                tracing::warn!(error = %e, "trigger evaluation failed; the next tick covers the same persons");
                continue;
            }
        };
        // The lease again before writing: a tick longer than the lease must not write beside
        // a new holder.
        if !matches!(lease.acquire().await, Ok(true)) {
            evaluator.unclean();
            tracing::warn!("the trigger lease was lost during a tick; its findings are dropped (the next holder finds them again)");
            continue;
        }
        match evaluator.commit(found).await {
            Ok(report) => {
                let took = started.elapsed();
                metrics.trigger_tick(took.as_secs_f64(), report.candidates);
                if took > cfg.tick.0 {
                    // Deliveries wait for the tick: say where its time went.
                    tracing::warn!(
                        seconds = took.as_secs_f64(),
                        candidates = report.candidates,
                        deliveries = report.deliveries.len(),
                        parts = %report.timings,
                        "a trigger tick took longer than triggers.tick"
                    );
                }
                for d in &report.deliveries {
                    metrics.trigger_transition(&d.kind);
                }
                if !report.deliveries.is_empty() && d.tx.send(report.deliveries).is_err() {
                    break;
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "trigger evaluation failed; the next tick covers the same persons")
            }
        }
    }
    if let Some(d) = delivering.take() {
        d.stop().await;
    }
    if let Err(e) = lease.release().await {
        tracing::warn!(error = %e, "the trigger lease was not released; another server takes over when it expires");
    }
}
