//! The Waymark ingest server: durable, Segment-compatible intake into ClickHouse.
//!
//! # The life of an event
//!
//! 1. **Tag.** The browser tag (`collector-wasm/`, loaded by `js/`) builds Segment-shaped events
//!    (`page`, `track`, `identify`...) with a `messageId`, the client's `originalTimestamp` and
//!    `sentAt`, and `context` (page, campaign, session id, user agent), and sends them in batches.
//! 2. **Edge.** The Cloudflare worker (`edge-worker/`) validates the batch with the shared
//!    `waymark-protocol` crate, adds what only it sees (geo, truncated IP, bot verdict, GPC) as an
//!    `EdgeEnvelope`, and forwards envelopes to `POST /v1/edge`, HMAC-signed with a timestamp.
//!    Server-side senders and Segment SDKs skip the edge and call `POST /v1/batch` (or
//!    `/v1/track`...) directly with a write key.
//! 3. **Intake** ([`intake`], under the thin handlers of [`http`]). The handler checks the body
//!    size (gzip capped on the decompressed size) and hands the request to the admit pipeline:
//!    the write key (or the signature and replay window) and the origin ([`intake::auth`]);
//!    every event validated with the protocol crate (bad events are listed as rejections, good
//!    ones go on); each enriched into a [`store::row::EventRow`] ([`intake::enrich`]: clock
//!    skew, user agent, bot flag, UTM, session, geo; the raw IP never kept; URLs without
//!    secrets, `waymark_protocol::privacy`); events of deleted people dropped
//!    ([`store::suppress`]); the site's rate
//!    limit ([`intake::ratelimit`]); duplicates seen recently dropped ([`intake::dedup`]); and
//!    the rows appended as one record to the [`spool`].
//! 4. **Acknowledgement.** The spool's group commit writes and fsyncs the record together with
//!    every other request waiting at that moment; only then does the handler answer 200 with
//!    `{"accepted": N, "rejected": [...]}`. A full spool answers 503 with `Retry-After`.
//! 5. **ClickHouse** ([`store`]). The writer task reads the spool from its checkpoint, inserts
//!    large batches (by rows, bytes or age) over HTTP in RowBinary into `events` (and the links
//!    it carries into `identities`), and moves the checkpoint only once ClickHouse confirmed the
//!    insert; whole spool segments behind it are deleted. While ClickHouse cannot take rows
//!    (down, auth, disk, a missing column...) they stay in the spool, retried with capped
//!    backoff, and `/readyz` names the cause; only rows ClickHouse refuses while it takes a
//!    known-good probe row are bisected out into `quarantine`
//!    ([`store::delivery`]), from which `ingest-server quarantine replay` sends them again.
//!    On restart, whatever the checkpoint had not passed is replayed; duplicates from that, or
//!    from client retries, collapse in the ReplacingMergeTree (see [`store::schema`]).
//! 6. **Query** ([`query`]). The query API reads the pre-aggregated tables (their DDL is in
//!    [`store::schema::query`], with every other migration) for profiles, event history and
//!    audiences, resolving ids with an in-memory identity index that the writer feeds through
//!    [`store::IdentityFeed`].
//!    The data quality report ([`query::quality`]: `GET /v1/quality`, the `/quality` page)
//!    reads `events`, `quarantine` and `quality_hourly`, where the intake's refusals and dropped
//!    duplicates are counted per site and hour ([`store::quality`]).
//! 7. **Imports and identity** ([`intake::import`], [`identity`]). `POST /v1/import` (and the
//!    `ingest-server import` CLI over it) streams NDJSON history through the same admit
//!    pipeline, a chunk at a time, keeping each event's own time (`source = import`); identify
//!    traits' emails and phones become identifier links ([`intake::identifiers`]), and a merge
//!    pass links user ids that share one, so a customer is one person everywhere.
//! 8. **Triggers** ([`triggers`]). Every few seconds the persons whose rows were inserted
//!    since the last tick, and those whose audience window just closed, are evaluated against
//!    each subscription; who entered or left is written to an outbox in ClickHouse and POSTed,
//!    signed, to the subscription's webhook.
//!
//! # Layers
//!
//! Modules only point down: each uses the ones listed before it, never one after it, so no
//! module imports one that imports it back. From the bottom:
//!
//! 1. [`clock`], [`config`], [`keys`], [`metrics`]: the time, the settings (every section,
//!    `[query]` included; the `waymark-ingest-config` crate, re-exported as `config`),
//!    constant-time key lookup, the Prometheus registry. They use no other module of the
//!    crate.
//! 2. [`store::row`]: the rows of `events`, `identities` and `quarantine`; a leaf (it uses no
//!    other module of the crate), so the spool can encode them.
//! 3. [`spool`]: the durable buffer (its `rows` payloads are `store::row` rows).
//! 4. [`store`]: every migration, the ClickHouse client, the writer that moves the spool into
//!    ClickHouse, quarantine and replay. It feeds the identity index through the
//!    [`store::IdentityFeed`] trait, defined here and implemented above.
//! 5. [`intake`]: the admit pipeline (auth, rate limit, dedup, enrichment, hand-off to the spool).
//! 6. [`query`]: the read API, reading ClickHouse through [`store`]'s client and schema status.
//! 7. [`privacy`]: deleting and exporting a person (admin keys), and retention; it reads
//!    through [`query`]'s state and builds SQL with its escaping, and fills the suppression
//!    list ([`store::suppress`]) that [`intake`] and the writer honour.
//! 8. [`triggers`]: audience subscriptions, their incremental evaluation and the webhook
//!    deliveries, over [`query`]'s audience language and state, with [`store`]'s tables.
//! 9. [`identity`]: merging user ids that share an identifier, unmerging (admin keys, through
//!    [`privacy`]) and near-match suggestions, over [`query`]'s state and [`store`]'s tables.
//! 10. [`http`]: thin handlers over [`intake`], [`query`], [`privacy`], [`triggers`] and
//!     [`identity`], `/readyz` and `/metrics`, the accept loop; and this file's [`serve`], which
//!     wires them together.
//!
//! Checked with `grep -rhv '^\s*//' src/<module> | grep -o 'crate::[a-z_]*' | sort -u` (code
//! lines, not comments) per module: `clock`, `config`, `keys`, `metrics`, `store/row.rs`: none;
//! `spool`: `store` (its `row` only); `store`: `clock config metrics spool`; `intake`:
//! `clock config keys metrics spool store`; `query`: `clock config keys metrics store`;
//! `privacy`: `clock config keys query store`; `triggers`: `clock config metrics query store`;
//! `identity`: `clock config privacy query store`;
//! `http`: `clock config identity intake metrics privacy query spool store triggers`.

pub mod clock;
/// The settings: the `waymark-ingest-config` crate (its own crate so the test stack can build
/// configs from the same types; see its top doc).
pub use waymark_ingest_config as config;
pub mod http;
pub mod identity;
pub mod intake;
pub mod keys;
pub mod metrics;
pub mod privacy;
pub mod query;
pub mod spool;
pub mod store;
pub mod triggers;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

pub use config::Config;
pub use http::{app, AppState};

use spool::{Spool, SpoolError};
use store::writer::{Writer, WriterSettings};
use store::ClickHouseSink;

/// Why the server could not start or run.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("opening the spool at {dir}: {source}")]
    Spool { dir: String, source: SpoolError },
    #[error("serving HTTP: {0}")]
    Io(#[from] std::io::Error),
}

/// How long shutdown waits for the writer to flush the spool to ClickHouse. What is not flushed
/// by then stays in the spool and is replayed at the next start.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(30);

/// How long start-up waits for the first migration attempt before serving anyway.
const MIGRATION_WAIT: Duration = Duration::from_secs(10);

/// The size at which a spool segment is sealed: small enough that consumed data is freed
/// promptly, large enough to keep file counts low.
fn segment_bytes(max: u64) -> u64 {
    (max / 16).clamp(256 << 10, 64 << 20)
}

/// Applies the schema migrations, retrying with backoff while ClickHouse is unreachable, until
/// they succeed or the server stops.
async fn apply_migrations(
    sink: Arc<ClickHouseSink>,
    metrics: Arc<metrics::Metrics>,
    mut stop: tokio::sync::watch::Receiver<bool>,
    first_try: tokio::sync::oneshot::Sender<()>,
) {
    use store::Sink as _;
    let mut delay = Duration::from_secs(1);
    let mut first_try = Some(first_try);
    loop {
        let result = sink.prepare().await;
        if let Some(tx) = first_try.take() {
            let _ = tx.send(());
        }
        match result {
            Ok(()) => {
                metrics.clickhouse_up.set(1.0);
                tracing::info!("ClickHouse schema ready");
                return;
            }
            Err(e) => {
                metrics.clickhouse_up.set(0.0);
                tracing::warn!(error = %e, retry_in_s = delay.as_secs(), "ClickHouse schema not applied yet; accepting into the spool and retrying");
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = stop.changed() => return,
        }
        delay = (delay * 2).min(Duration::from_secs(30));
    }
}

/// Runs the server on `listener` until `shutdown` resolves, then stops accepting, lets requests
/// in flight finish, flushes the spool to ClickHouse (bounded), and returns.
pub async fn serve(
    config: Config,
    listener: tokio::net::TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    let dir = config.spool.dir.clone();
    let max = config.spool.max_bytes.0;
    let (spool, recovery) =
        tokio::task::spawn_blocking(move || Spool::open(&dir, max, segment_bytes(max)))
            .await
            .map_err(|e| ServeError::Io(std::io::Error::other(e)))?
            .map_err(|source| ServeError::Spool {
                dir: config.spool.dir.display().to_string(),
                source,
            })?;
    tracing::info!(
        dir = %config.spool.dir.display(),
        segments = recovery.segments,
        replay_bytes = recovery.pending_bytes,
        torn_bytes = recovery.torn_bytes,
        damaged_ranges = recovery.damaged_ranges,
        damaged_bytes = recovery.damaged_bytes,
        "spool opened"
    );

    let metrics = Arc::new(metrics::Metrics::default());
    let schema = Arc::new(store::SchemaStatus::default());
    // The identity index: filled by the writer as it inserts links and by a background
    // refresh from ClickHouse (links from other servers; on a cluster by insert time, from
    // every shard); the query API resolves ids with it (`query::identity`).
    let identities = (!config.query.identity_refresh.0.is_zero()).then(|| {
        Arc::new(query::identity::IdentityIndex::new(
            config.query.identity_max_links,
        ))
    });
    // Ids of deleted people: the intake and the sink drop their late events.
    let suppressions = Arc::new(store::suppress::Suppressions::default());
    let sink = Arc::new(
        ClickHouseSink::new(&config.clickhouse, schema.clone())
            .with_identities(identities.clone())
            .with_suppressions(suppressions.clone()),
    );
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    // Migrations run in the background, however long a backfill takes: intake goes on into the
    // spool meanwhile, the writer waits for them (its own `prepare` queues behind this one),
    // and the query API answers 503 until they are done.
    let (first_try_tx, first_try) = tokio::sync::oneshot::channel();
    let migrations = tokio::spawn(apply_migrations(
        sink.clone(),
        metrics.clone(),
        stop_rx.clone(),
        first_try_tx,
    ));
    // Usually that is quick: wait for the first attempt (bounded) so the query API is ready
    // when the server says it listens; a long backfill goes on in the background.
    if tokio::time::timeout(MIGRATION_WAIT, first_try)
        .await
        .is_err()
    {
        tracing::info!(
            schema = %schema.describe(),
            "ClickHouse migrations still running; serving meanwhile (the query API answers 503 until they finish)"
        );
    }
    let quality_sink = sink.clone();
    let writer = Writer::new(
        spool.clone(),
        sink,
        metrics.clone(),
        WriterSettings::from(&config.writer),
        stop_rx.clone(),
    );
    let writer = tokio::spawn(writer.run());

    let query = query::QueryState::with_metrics(
        &config.query,
        &config.clickhouse,
        schema.clone(),
        identities.clone(),
        metrics.clone(),
    );
    // The recorder keeps histogram samples until they are folded into buckets: fold them every
    // few seconds whether or not anyone scrapes `/metrics`.
    let upkeep = {
        let metrics = metrics.clone();
        tokio::spawn(async move {
            let mut every = tokio::time::interval(Duration::from_secs(5));
            loop {
                every.tick().await;
                metrics.upkeep();
            }
        })
    };
    let identity_refresh = identities
        .clone()
        .map(|ix| tokio::spawn(ix.run(query.clone(), config.query.identity_refresh.0)));
    // Triggers: the evaluator and deliverer, on the server that holds the lease among those
    // configured to run them (`triggers::lease`).
    let triggers = config.triggers.evaluate.then(|| {
        tokio::spawn(triggers::run(
            query.clone(),
            config.triggers.clone(),
            metrics.clone(),
            stop_rx.clone(),
        ))
    });
    // The suppression list from ClickHouse (deletions made by any server), once the schema is
    // ready and then every `REFRESH`.
    let suppression_refresh = {
        let (list, schema) = (suppressions.clone(), schema.clone());
        let client = store::client(&config.clickhouse);
        let db = config.clickhouse.database.clone();
        tokio::spawn(async move {
            loop {
                if schema.is_ready() {
                    if let Err(e) = list.load(&client, &db).await {
                        tracing::warn!(error = %e, "reading the suppression list failed; retrying");
                    }
                    tokio::time::sleep(store::suppress::REFRESH).await;
                } else {
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            }
        })
    };
    let retention = tokio::spawn(privacy::retention::schedule(
        query.clone(),
        store::client(&config.clickhouse),
        config.sites.clone(),
        config.privacy.retention_check.0,
    ));
    let http_config = config.http.clone();
    let quality_config = config.quality.clone();
    let state = AppState::with_suppressions(
        config,
        spool.clone(),
        metrics,
        schema,
        identities,
        suppressions,
    );
    // Rejects and dropped duplicates per site and hour, into ClickHouse every `quality.flush`.
    let quality_flusher = tokio::spawn(store::quality::run_flusher(
        state.intake().hourly.clone(),
        quality_sink,
        quality_config.flush.0,
        stop_rx.clone(),
    ));
    // The quality report's gauges, for every site every `quality.check_interval`.
    let quality_checks = tokio::spawn(query::quality::run_checks(
        query::quality::QualityState::new(query.clone(), state.config()),
        state.intake().metrics.clone(),
        quality_config.check_interval.0,
        stop_rx.clone(),
    ));
    let (router, identity) = http::app_parts(state, query);
    // Merging user ids that share an identifier (`identity`).
    let merging = tokio::spawn(identity::run(identity));
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(%addr, "serving");
    }
    http::conn::serve(listener, router, &http_config, shutdown).await?;

    tracing::info!(
        pending_bytes = spool.pending_bytes(),
        "stopped accepting; flushing the spool to ClickHouse"
    );
    let _ = stop_tx.send(true);
    migrations.abort();
    upkeep.abort();
    suppression_refresh.abort();
    retention.abort();
    merging.abort();
    quality_checks.abort();
    if let Some(t) = identity_refresh {
        t.abort();
    }
    if let Some(t) = triggers {
        // Deliveries in flight finish (each bounded by triggers.timeout) and their outcomes
        // are written, so the next start does not send them again.
        if tokio::time::timeout(FLUSH_TIMEOUT, t).await.is_err() {
            tracing::warn!("trigger deliveries did not stop in time; unrecorded outcomes are sent again at the next start");
        }
    }
    if tokio::time::timeout(FLUSH_TIMEOUT, quality_flusher)
        .await
        .is_err()
    {
        tracing::warn!("the last quality counts were not flushed in time");
    }
    match tokio::time::timeout(FLUSH_TIMEOUT, writer).await {
        Ok(_) => tracing::info!(left_in_spool = spool.pending_bytes(), "writer stopped"),
        Err(_) => tracing::warn!(
            left_in_spool = spool.pending_bytes(),
            "flush timed out; the rest is replayed at the next start"
        ),
    }
    Ok(())
}
