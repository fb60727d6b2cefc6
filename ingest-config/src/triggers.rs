//! `[triggers]`: audience subscriptions pushed to webhooks (`crate::triggers`).

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::HumanDuration;

/// The most deliveries one POST may carry (`triggers.batch`).
pub const MAX_BATCH: usize = 1000;

/// `[triggers]` settings.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TriggersConfig {
    /// Whether this server may evaluate subscriptions and deliver to their webhooks. Every
    /// server serves the subscription API; of the servers with `evaluate = true` on one
    /// database, the holder of a lease in ClickHouse evaluates and delivers, the others stand
    /// by (see the README's "Triggers" section).
    pub evaluate: bool,
    /// How long the evaluator's lease lasts without a renewal (renewed every tick): how soon a
    /// standby server takes over from one that stopped without releasing it. At least three
    /// ticks: a shorter value is raised to that ([`TriggersConfig::lease_duration`]).
    pub lease: HumanDuration,
    /// How often persons touched since the last tick, and windows that just closed, are
    /// evaluated.
    pub tick: HumanDuration,
    /// Attempts per delivery before it becomes a dead letter.
    pub max_attempts: u32,
    /// The wait after the first failed attempt; it doubles per attempt up to `max_backoff`.
    pub backoff: HumanDuration,
    pub max_backoff: HumanDuration,
    /// How long one webhook POST may take.
    pub timeout: HumanDuration,
    /// Webhook POSTs in flight at once.
    pub concurrency: usize,
    /// Deliveries per POST: 1 sends each alone (the body is the delivery); above 1, up to this
    /// many deliveries of one subscription due at once go in one POST as
    /// `{"deliveries": [...]}` (see the README's "Triggers").
    pub batch: usize,
    /// Subscriptions per site at most.
    pub max_subscriptions: usize,
}

impl Default for TriggersConfig {
    fn default() -> Self {
        TriggersConfig {
            evaluate: false,
            tick: HumanDuration(Duration::from_secs(10)),
            lease: HumanDuration(Duration::from_secs(30)),
            max_attempts: 12,
            backoff: HumanDuration(Duration::from_secs(2)),
            max_backoff: HumanDuration(Duration::from_secs(600)),
            timeout: HumanDuration(Duration::from_secs(10)),
            concurrency: 128,
            batch: 1,
            max_subscriptions: 1000,
        }
    }
}

impl TriggersConfig {
    /// The lease in effect: `lease`, and at least three ticks (the holder renews it every tick).
    pub fn lease_duration(&self) -> Duration {
        self.lease.0.max(self.tick.0 * 3)
    }

    /// Checks values that parse but make no sense; errors name the key.
    pub fn validate(&self) -> Result<(), String> {
        for (key, d) in [
            ("triggers.tick", self.tick.0),
            ("triggers.backoff", self.backoff.0),
            ("triggers.timeout", self.timeout.0),
        ] {
            if d.is_zero() {
                return Err(format!("{key}: must be more than 0s"));
            }
        }
        if self.tick.0 > Duration::from_secs(50) {
            return Err(
                "triggers.tick: must be at most 50s (deliveries are due within 60 s)".into(),
            );
        }
        if self.lease.0 < Duration::from_secs(6) {
            return Err(
                "triggers.lease: must be at least 6s (the lease is taken with a 2 s wait and renewed with 2 s to spare)"
                    .into(),
            );
        }
        if self.max_backoff.0 < self.backoff.0 {
            return Err("triggers.max_backoff: must not be shorter than triggers.backoff".into());
        }
        if self.max_attempts == 0 || self.max_attempts > 100 {
            return Err("triggers.max_attempts: must be 1 to 100".into());
        }
        if self.concurrency == 0 {
            return Err("triggers.concurrency: must be at least 1".into());
        }
        if self.batch == 0 || self.batch > MAX_BATCH {
            return Err(format!("triggers.batch: must be 1 to {MAX_BATCH}"));
        }
        if self.max_subscriptions == 0 {
            return Err("triggers.max_subscriptions: must be at least 1".into());
        }
        Ok(())
    }
}
