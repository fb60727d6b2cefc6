//! The evaluator's lease: of the servers with `triggers.evaluate = true` on one database, one
//! at a time evaluates and delivers.
//!
//! The lease is a row of `trigger_lease` (ReplacingMergeTree by `version`, migration 121):
//! `(holder, expires_at, version)`, read with `argMax(..., version)`. Times are ClickHouse's
//! `now()`, one clock for every server. Each tick a server reads the lease and
//!
//! - if another server holds it and it has not expired, stays idle (no evaluation, no
//!   deliveries);
//! - if it holds it with at least [`MARGIN_SECS`] left, *renews* it: writes a row with a later
//!   expiry and a higher version and reads it back. No other server writes meanwhile: they read
//!   a lease that has not expired;
//! - otherwise (free, released, expired, or its own lease too close to expiry) *takes* it:
//!   writes its row with a version above every one it read plus a random part, waits
//!   `SETTLE`, and reads back. Two servers that took it at once both see both rows after the
//!   wait, and `argMax(holder, version)` names the same winner for both; the other stays idle.
//!   The wait must cover the time between a server's read of a free lease and its write
//!   becoming visible (milliseconds on one server).
//!
//! On a cluster, `trigger_lease` is replicated whole on every server and each server reads
//! its own ClickHouse server's copy after `SYSTEM SYNC REPLICA` (`super::sync`): an insert
//! confirmed to any server is in the table's replication log in ZooKeeper, and the sync fetches
//! everything the log lists before the read. So a read sees every lease write confirmed
//! before it started, as on one server, and the argument above holds unchanged: two servers
//! that both saw a free lease both wrote within `SETTLE` of their reads, and after the wait
//! each one's read follows both writes. Reading a sharded table through `Distributed` instead
//! could answer from a replica that had not yet fetched the last write, and a standby would
//! take a lease still held.
//!
//! The holder evaluates only with a lease it renewed at the start of the tick and renews again
//! before it writes the tick's transitions (a tick longer than the lease could otherwise write
//! beside a new holder). A holder that cannot reach ClickHouse stops delivering once its lease
//! has passed by its own clock. At shutdown it releases the lease, so the next server takes
//! over at its next tick instead of after the expiry.
//!
//! What remains: a server paused (a stalled VM) longer than the lease between its last renewal
//! and the outbox write could write transitions another holder also wrote. The outbox's
//! idempotency keys are the guard there: the same transition has the same key, whichever
//! server found it, and the receiver deduplicates by it (see the README's "Triggers").

use std::time::{Duration, Instant};

use serde::Deserialize;

use crate::query::sql::{int, lit};
use crate::query::{QueryError, QueryState};

/// The lease's name (one lease per database: every site is evaluated by its holder).
const NAME: &str = "evaluator";

/// A holder renews (no wait) only with this much of its lease left; less, and it takes it
/// again as if it were free.
pub const MARGIN_SECS: i64 = 2;

/// Versions advance by this per write; the random part of a version is below it.
const STEP: u64 = 1_000_000;

/// The wait between writing a taken lease and reading it back.
const SETTLE: Duration = Duration::from_secs(2);

#[derive(Debug, Deserialize)]
struct LeaseRow {
    holder: String,
    expires_at: i64,
    version: u64,
    now: i64,
}

/// This server's view of the lease.
pub struct Lease {
    st: QueryState,
    /// This server's holder id (random per process).
    id: String,
    ttl_secs: i64,
    settle: Duration,
    /// Until when this server may act on the lease, by its own clock (the start of the
    /// successful write plus the lease, less the margin).
    held_until: Option<Instant>,
}

impl Lease {
    pub fn new(st: QueryState, ttl: Duration) -> Self {
        Lease {
            st,
            id: uuid::Uuid::new_v4().to_string(),
            ttl_secs: ttl.as_secs().max(1) as i64,
            settle: SETTLE,
            held_until: None,
        }
    }

    /// This server's holder id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Whether the lease was held at the last [`acquire`](Self::acquire) and has not passed
    /// since, by this server's clock.
    pub fn held(&self) -> bool {
        self.held_until.is_some_and(|t| Instant::now() < t)
    }

    async fn read(&self) -> Result<LeaseRow, QueryError> {
        // On a cluster, this server's copy first fetches every other server's writes.
        super::sync(&self.st, &["trigger_lease"]).await;
        // An empty table answers one row of defaults: holder '' (free).
        let rows: Vec<LeaseRow> = self
            .st
            .fetch(&format!(
                "SELECT argMax(h, v) AS holder, argMax(e, v) AS expires_at, max(v) AS version,
    any(toInt64(now())) AS now
FROM (SELECT holder AS h, expires_at AS e, version AS v
  FROM {db}.trigger_lease WHERE name = {name}
  UNION ALL SELECT '', toInt64(0), toUInt64(0))",
                db = self.st.db(),
                name = lit(NAME)
            ))
            .await?;
        rows.into_iter().next().ok_or_else(|| {
            QueryError::Unavailable("reading the trigger lease answered nothing".into())
        })
    }

    async fn write(&self, holder: &str, ttl_secs: i64, version: u64) -> Result<(), QueryError> {
        self.st
            .execute(&format!(
                "INSERT INTO {db}.trigger_lease (name, holder, expires_at, version)
SELECT {n}, {h}, toInt64(now()) + {ttl}, {v}",
                db = self.st.db(),
                n = lit(NAME),
                h = lit(holder),
                ttl = int(ttl_secs),
                v = version
            ))
            .await
    }

    /// Takes or renews the lease; whether this server holds it now.
    pub async fn acquire(&mut self) -> Result<bool, QueryError> {
        let started = Instant::now();
        let cur = self.read().await?;
        let mine = cur.holder == self.id;
        if !mine && !cur.holder.is_empty() && cur.expires_at > cur.now {
            self.held_until = None;
            return Ok(false);
        }
        let renew = mine && cur.expires_at - cur.now >= MARGIN_SECS;
        // Above every version read; the random part orders two servers that read the same one.
        let salt = (uuid::Uuid::new_v4().as_u128() % STEP as u128) as u64;
        let version = (cur.version / STEP + 1) * STEP + salt;
        self.write(&self.id, self.ttl_secs, version).await?;
        if !renew {
            tokio::time::sleep(self.settle).await;
        }
        let back = self.read().await?;
        if back.holder == self.id && back.expires_at > back.now {
            let secs = (self.ttl_secs - MARGIN_SECS).max(0) as u64;
            self.held_until = Some(started + Duration::from_secs(secs));
            Ok(true)
        } else {
            self.held_until = None;
            Ok(false)
        }
    }

    /// Gives the lease up (at shutdown) if this server holds it, so another takes it at its
    /// next tick.
    pub async fn release(&mut self) -> Result<(), QueryError> {
        if self.held_until.take().is_none() {
            return Ok(());
        }
        let cur = self.read().await?;
        if cur.holder == self.id {
            self.write("", 0, (cur.version / STEP + 1) * STEP).await?;
        }
        Ok(())
    }
}
