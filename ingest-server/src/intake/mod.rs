//! The admit pipeline: what happens to a request's events between the HTTP handler and the
//! spool, in the order it happens.
//!
//! 1. [`auth`]: the write key (constant-time lookup), the site's allowed origins, or the edge
//!    worker's signature and its replay guard;
//! 2. validation by the protocol crate ([`segment`] for Segment-shaped requests, [`edge`] for
//!    signed forwards): bad events become rejections, good ones go on;
//! 3. [`enrich`]: each event becomes an [`EventRow`] (clock skew, user agent, bot flag, UTM,
//!    session, geo; the raw IP never kept);
//! 4. [`Intake::admit`]: the site's rate limit ([`ratelimit`]), then recent duplicates dropped
//!    ([`dedup`]), then the rows appended to the spool as one record, answered once fsynced.
//!
//! Nothing here knows HTTP beyond the error it answers with ([`error::ApiError`]); the
//! handlers in `crate::http` read requests and call in.

pub mod auth;
pub mod dedup;
pub mod edge;
pub mod email;
pub mod enrich;
pub mod error;
pub mod identifiers;
pub mod import;
pub mod quality;
pub mod ratelimit;
pub mod segment;

use std::sync::Arc;

use serde::Serialize;
use waymark_protocol::Rejection;

pub use error::ApiError;

use crate::config::{Config, SiteConfig};
use crate::keys::Keys;
use crate::metrics::Metrics;
use crate::spool::{Spool, SpoolError};
use crate::store::quality::{metric, HourlyCounts};
use crate::store::row::EventRow;
use crate::store::suppress::Suppressions;
use dedup::Dedup;
use enrich::UaParser;
use ratelimit::RateLimiter;

/// The 200 body.
#[derive(Debug, Serialize)]
pub struct Accepted {
    pub accepted: usize,
    pub rejected: Vec<Rejection>,
    /// Events left out because their person was deleted (on the suppression list).
    #[serde(skip_serializing_if = "is_zero")]
    pub suppressed: usize,
    /// Events left out because the request carried `Sec-GPC: 1` and the site's `gpc` is
    /// `drop-events` (or `drop-ids`, for `identify` and `alias`).
    #[serde(skip_serializing_if = "is_zero")]
    pub gpc_dropped: usize,
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}

/// Seconds a client should wait when the spool is full: long enough for the writer to drain.
const RETRY_AFTER_SECS: u64 = 5;

/// Everything the admit pipeline holds.
pub struct Intake {
    pub config: Config,
    /// write key -> index into `config.sites`, compared in constant time
    keys: Keys<usize>,
    pub spool: Spool,
    pub metrics: Arc<Metrics>,
    dedup: Dedup,
    pub ua: UaParser,
    limiter: RateLimiter,
    pub replay: auth::ReplayGuard,
    /// send key -> index into `config.sites`, compared in constant time
    send_keys: Keys<usize>,
    pub email_bursts: email::ClickBursts,
    /// Ids of deleted people whose late events are dropped (`crate::store::suppress`).
    pub suppressions: Arc<Suppressions>,
    /// Tracking plans and critical fields, by site.
    pub quality: quality::Quality,
    /// Rejects, dropped duplicates and rate-limited events per site and hour, until the
    /// flusher adds them to ClickHouse (`crate::store::quality`).
    pub hourly: Arc<HourlyCounts>,
}

impl Intake {
    pub fn new(
        config: Config,
        spool: Spool,
        metrics: Arc<Metrics>,
        suppressions: Arc<Suppressions>,
    ) -> Self {
        let keys = Keys::new(
            config
                .sites
                .iter()
                .enumerate()
                .flat_map(|(i, s)| s.write_keys.iter().map(move |k| (k.clone(), i))),
        );
        Intake {
            dedup: Dedup::new(config.dedup.capacity),
            keys,
            spool,
            metrics,
            ua: UaParser::default(),
            limiter: RateLimiter::new(&config.sites),
            replay: auth::ReplayGuard::default(),
            send_keys: Keys::new(
                config
                    .sites
                    .iter()
                    .enumerate()
                    .flat_map(|(i, s)| s.send_keys.iter().map(move |k| (k.clone(), i))),
            ),
            email_bursts: email::ClickBursts::default(),
            suppressions,
            quality: quality::Quality::new(&config),
            hourly: Arc::default(),
            config,
        }
        .with_quality_thresholds()
    }

    fn with_quality_thresholds(self) -> Self {
        for site in &self.config.sites {
            for c in &site.completeness {
                self.metrics
                    .quality_threshold(&site.id, &c.event, &c.field, c.min);
            }
        }
        self
    }

    /// Checks a request's valid events (in batch order, `rejections` naming the others by
    /// position) against `site`'s tracking plan and critical fields, and returns each kept
    /// event's verdict, in order. Under a rejecting plan, an event with a violation is taken
    /// out of `events` and listed in `rejections` (sorted by position again). `positions` is
    /// each event's position in the batch when the caller removed events after validation
    /// (Global Privacy Control); `None` derives them from `rejections`. A site without checks
    /// costs nothing: the answer is empty.
    pub fn check_quality(
        &self,
        site: &str,
        positions: Option<Vec<usize>>,
        events: &mut Vec<waymark_protocol::Event>,
        rejections: &mut Vec<Rejection>,
    ) -> Vec<quality::Verdict> {
        let Some(q) = self.quality.site(site) else {
            return Vec::new();
        };
        let positions =
            positions.unwrap_or_else(|| quality::batch_positions(events.len(), rejections));
        let mut tally = quality::Tally::new(site, q);
        let mut verdicts = Vec::with_capacity(events.len());
        let mut refused = Vec::new();
        for (i, ev) in events.iter_mut().enumerate() {
            let v = q.check(ev);
            tally.add(ev, &v);
            if q.rejects() && !v.violations.is_empty() {
                rejections.push(quality::rejection(positions[i], &v.violations));
                refused.push(i);
            } else {
                verdicts.push(v);
            }
        }
        self.metrics.quality_checked(site, events.len() as u64);
        tally.record(&self.metrics);
        if !refused.is_empty() {
            let mut i = 0;
            events.retain(|_| {
                let keep = refused.binary_search(&i).is_err();
                i += 1;
                keep
            });
            rejections.sort_by_key(|r| r.index);
        }
        verdicts
    }

    /// Counts a site's refused events by reason in `quality_hourly` (one lock per request).
    pub fn count_rejections(&self, site: &str, rejections: &[Rejection]) {
        if rejections.is_empty() {
            return;
        }
        let mut reasons: Vec<(String, u64)> = Vec::new();
        for r in rejections {
            let label = rejection_label(r);
            match reasons.iter_mut().find(|(l, _)| *l == label) {
                Some((_, n)) => *n += 1,
                None => reasons.push((label, 1)),
            }
        }
        self.hourly.add_all(
            site,
            crate::clock::now_ms(),
            reasons
                .iter()
                .map(|(l, n)| (metric::REJECTED, l.as_str(), *n)),
        );
    }

    /// The site that owns an email send key.
    pub fn site_for_send_key(&self, key: &str) -> Option<&SiteConfig> {
        self.send_keys.find(key).map(|&i| &self.config.sites[i])
    }

    /// The site that owns a write key.
    pub fn site_for_key(&self, key: &str) -> Option<&SiteConfig> {
        self.keys.find(key).map(|&i| &self.config.sites[i])
    }

    /// Drops the rows of deleted people (the suppression list), then [`Intake::admit`]s the
    /// rest; the number dropped.
    pub async fn admit_unsuppressed(
        &self,
        rows: Vec<EventRow>,
        source: &str,
    ) -> Result<usize, ApiError> {
        let now = crate::clock::now_ms().div_euclid(1000) as u32;
        let (rows, dropped) = match self.suppressions.filter(&rows, now) {
            Some(kept) => {
                let dropped = rows.len() - kept.len();
                (kept, dropped)
            }
            None => (rows, 0),
        };
        if !rows.is_empty() {
            self.admit(rows, source).await?;
        }
        Ok(dropped)
    }

    /// Checks the sites' rate limits, drops recent duplicates, spools the rest as one record, and
    /// returns once it is fsynced.
    pub async fn admit(&self, rows: Vec<EventRow>, source: &str) -> Result<(), ApiError> {
        // The limit counts what the client sent (duplicates included) and is checked before
        // anything is written; tokens go back if the spool then refuses.
        let counts: Vec<(String, u64)> = count_by_site(rows.iter())
            .into_iter()
            .map(|(s, n)| (s.to_string(), n))
            .collect();
        let counts: Vec<(&str, u64)> = counts.iter().map(|(s, n)| (s.as_str(), *n)).collect();
        if let Err(l) = self.limiter.take(&counts) {
            let now = crate::clock::now_ms();
            for (site, n) in &counts {
                self.hourly.add(site, now, metric::RATE_LIMITED, "", *n);
            }
            return Err(ApiError::RateLimited {
                retry_after_secs: l.retry_after_secs,
                message: format!(
                    "rate_limit: site {:?} is over its limit of {} events/s (burst {}); retry in {} s",
                    l.site, l.events_per_second, l.burst, l.retry_after_secs
                ),
            });
        }
        let r = self.drop_duplicates_and_append(rows, source).await;
        if r.is_err() {
            self.limiter.give_back(&counts);
        }
        r
    }

    /// Drops the rows whose message id was admitted recently, appends the rest to the spool as
    /// one record (answered once fsynced), and only then remembers their ids.
    async fn drop_duplicates_and_append(
        &self,
        rows: Vec<EventRow>,
        source: &str,
    ) -> Result<(), ApiError> {
        let keys = self.dedup.keys(
            rows.iter()
                .map(|r| (r.site.as_str(), r.message_id.as_str())),
        );
        let seen = self.dedup.seen(&keys);
        let before = rows.len();
        if seen.iter().any(|s| *s) {
            let dropped: Vec<&EventRow> = rows
                .iter()
                .zip(&seen)
                .filter(|(_, s)| **s)
                .map(|(r, _)| r)
                .collect();
            let now = crate::clock::now_ms();
            for (site, n) in count_by_site(dropped.into_iter()) {
                self.hourly.add(site, now, metric::DUPLICATE, "", n);
            }
        }
        let rows: Vec<EventRow> = rows
            .into_iter()
            .zip(&seen)
            .filter(|(_, s)| !**s)
            .map(|(r, _)| r)
            .collect();
        self.metrics
            .duplicates_dropped
            .increment((before - rows.len()) as u64);

        if rows.is_empty() {
            return Ok(());
        }
        let payload = crate::spool::rows::encode(&rows);
        match self.spool.append(payload).await {
            Ok(_) => {
                self.dedup.remember(&keys, &seen);
                self.metrics.accepted(source, rows.len() as u64);
                Ok(())
            }
            Err(SpoolError::Full { used, max }) => {
                self.metrics.spool_full.increment(1);
                Err(ApiError::Overloaded {
                    code: "spool_full",
                    retry_after_secs: RETRY_AFTER_SECS,
                    message: format!(
                        "the server's buffer is full ({used} of {max} bytes) while it waits for its database; retry later"
                    ),
                })
            }
            Err(e) => Err(ApiError::Overloaded {
                code: "spool_unavailable",
                retry_after_secs: RETRY_AFTER_SECS,
                message: format!("cannot store events durably right now: {e}"),
            }),
        }
    }
}

/// The `quality_hourly` reason of a refused event: `plan:<kind>` for a tracking plan's
/// refusal, else `invalid_field:<top-level field>` (as in `waymark_rejected_total`: paths can
/// hold client-chosen property names, and reasons must stay few).
fn rejection_label(r: &Rejection) -> String {
    if let Some(rest) = r.reason.strip_prefix("tracking plan: ") {
        let kind: String = rest
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        return format!("plan:{kind}");
    }
    let top = r.field.split(['.', '[']).next().unwrap_or("");
    format!("invalid_field:{top}")
}

/// Events per site in `rows` (rows of one site are usually adjacent).
fn count_by_site<'a>(rows: impl Iterator<Item = &'a EventRow>) -> Vec<(&'a str, u64)> {
    let mut counts: Vec<(&str, u64)> = Vec::new();
    for r in rows {
        match counts.iter_mut().find(|(s, _)| *s == r.site) {
            Some((_, n)) => *n += 1,
            None => counts.push((&r.site, 1)),
        }
    }
    counts
}
