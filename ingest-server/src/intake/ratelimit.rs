//! Per-site rate limiting: a token bucket on events per second with a burst.
//!
//! Each configured site with a `rate_limit` gets one bucket holding up to `burst` tokens, refilled
//! continuously at `events_per_second`. A request takes one token per event it carries, all or
//! nothing: if the bucket cannot cover the whole request, nothing is taken, nothing is stored, and
//! the client gets 429 with `Retry-After` (the time until enough tokens have accumulated). The
//! check runs before the spool append, so a refused request costs no disk.
//!
//! A request larger than `burst` could never fit, so it is let through when the bucket is full and
//! leaves the bucket in debt (negative); the next requests wait for the debt to be repaid. The
//! average rate is therefore still `events_per_second`.
//!
//! Several ingest servers share a site's limit by splitting it (`rate_limit.servers`): each
//! enforces `events_per_second / servers` with `burst / servers`, and they share no state. A
//! shared counter (in ClickHouse, or a store the servers would need besides it) would put a
//! round trip or a new dependency on every request; an even split is exact behind a load
//! balancer that spreads requests evenly, which is what one puts in front of stateless servers.
//!
//! Sites without a `rate_limit` are unlimited: the spool cap (503 + Retry-After) is the server's
//! own overload protection, and a guessed default would refuse a legitimately busy site; a limit
//! is a per-site policy the operator opts into.
//!
//! Written by hand rather than with a rate-limiting crate (`governor`) for its refund rule: a
//! request's tokens are taken for every site it touches at once, before the spool append, and
//! given back when the append then fails (spool full or failing), so a client told 503 and
//! retrying is not also charged for the attempt that stored nothing. `governor` has no way to
//! give cells back, and refuses outright a request larger than its burst (`check_n` answers
//! "insufficient capacity") where this bucket lets it through into debt; both rules would need
//! a second bucket beside it. The bucket itself is forty lines.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::config::{RateLimitConfig, SiteConfig};

/// One site's bucket.
#[derive(Debug)]
struct Bucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
}

impl Bucket {
    /// This server's share of the site's limit (`servers`: see [`RateLimitConfig::servers`]).
    fn new(cfg: &RateLimitConfig, now: Instant) -> Self {
        let servers = f64::from(cfg.servers.max(1));
        let burst = (cfg.burst as f64 / servers).floor().max(1.0);
        Bucket {
            rate: cfg.events_per_second / servers,
            burst,
            tokens: burst,
            last: now,
        }
    }

    fn refill(&mut self, now: Instant) {
        let dt = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + dt * self.rate).min(self.burst);
        self.last = now;
    }

    /// Takes `n` tokens, or says how long until it could.
    fn take(&mut self, n: u64, now: Instant) -> Result<(), Duration> {
        self.refill(now);
        let n = n as f64;
        // A request above the burst needs a full bucket and leaves it in debt.
        let need = n.min(self.burst);
        if self.tokens >= need {
            self.tokens -= n;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((need - self.tokens) / self.rate))
        }
    }

    fn give_back(&mut self, n: u64) {
        self.tokens = (self.tokens + n as f64).min(self.burst);
    }
}

/// Why a request was refused.
#[derive(Debug, Clone, PartialEq)]
pub struct Limited {
    pub site: String,
    pub events_per_second: f64,
    pub burst: u64,
    /// Whole seconds, at least 1 (the `Retry-After` value).
    pub retry_after_secs: u64,
}

/// All sites' buckets, keyed by site id.
#[derive(Debug, Default)]
pub struct RateLimiter {
    buckets: HashMap<String, Mutex<Bucket>>,
}

impl RateLimiter {
    pub fn new(sites: &[SiteConfig]) -> Self {
        let now = Instant::now();
        RateLimiter {
            buckets: sites
                .iter()
                .filter_map(|s| {
                    let cfg = s.rate_limit.as_ref()?;
                    Some((s.id.clone(), Mutex::new(Bucket::new(cfg, now))))
                })
                .collect(),
        }
    }

    /// Takes tokens for every `(site, events)` pair, all or nothing: when one site is over its
    /// limit, the tokens already taken for the others are given back.
    pub fn take(&self, counts: &[(&str, u64)]) -> Result<(), Limited> {
        self.take_at(counts, Instant::now())
    }

    fn take_at(&self, counts: &[(&str, u64)], now: Instant) -> Result<(), Limited> {
        for (i, (site, n)) in counts.iter().enumerate() {
            let Some(b) = self.buckets.get(*site) else {
                continue;
            };
            let mut b = b.lock().expect("rate limiter lock");
            if let Err(wait) = b.take(*n, now) {
                let limited = Limited {
                    site: site.to_string(),
                    events_per_second: b.rate,
                    burst: b.burst as u64,
                    retry_after_secs: wait.as_secs_f64().ceil().max(1.0) as u64,
                };
                drop(b);
                self.give_back(&counts[..i]);
                return Err(limited);
            }
        }
        Ok(())
    }

    /// Returns tokens taken by [`take`](Self::take) for a request that was not stored after all
    /// (spool full or failing), so a retry is not charged twice.
    pub fn give_back(&self, counts: &[(&str, u64)]) {
        for (site, n) in counts {
            if let Some(b) = self.buckets.get(*site) {
                b.lock().expect("rate limiter lock").give_back(*n);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limiter(rate: f64, burst: u64) -> RateLimiter {
        limiter_on(rate, burst, 1)
    }

    fn limiter_on(rate: f64, burst: u64, servers: u32) -> RateLimiter {
        let site = |id: &str, rl: Option<RateLimitConfig>| SiteConfig {
            id: id.into(),
            write_keys: vec![],
            allowed_origins: vec![],
            ip: Default::default(),
            rate_limit: rl,
            send_keys: vec![],
            email: None,
            allowed_query_params: vec![],
            gpc: Default::default(),
            retention: None,
            tracking_plan: None,
            plan: None,
            completeness: vec![],
            identity: Default::default(),
        };
        RateLimiter::new(&[
            site(
                "a",
                Some(RateLimitConfig {
                    events_per_second: rate,
                    burst,
                    servers,
                }),
            ),
            site("free", None),
        ])
    }

    #[test]
    fn a_limit_shared_by_servers_is_split_between_them() {
        // 10/s with a burst of 20 across two servers: 5/s and 10 here.
        let l = limiter_on(10.0, 20, 2);
        let t0 = Instant::now();
        assert!(l.take_at(&[("a", 10)], t0).is_ok());
        assert!(l.take_at(&[("a", 1)], t0).is_err());
        assert!(l.take_at(&[("a", 5)], t0 + Duration::from_secs(1)).is_ok());
        assert!(l.take_at(&[("a", 1)], t0 + Duration::from_secs(1)).is_err());
        // A burst smaller than the servers still lets one event through on each.
        let l = limiter_on(1.0, 1, 4);
        assert!(l.take_at(&[("a", 1)], t0).is_ok());
    }

    #[test]
    fn burst_then_refill_at_the_rate() {
        let l = limiter(10.0, 20);
        let t0 = Instant::now();
        assert!(l.take_at(&[("a", 15)], t0).is_ok());
        let e = l.take_at(&[("a", 10)], t0).unwrap_err();
        // 5 left, 10 needed: 0.5 s at 10/s, rounded up to whole seconds.
        assert_eq!(e.retry_after_secs, 1);
        assert_eq!(e.site, "a");
        assert!(
            l.take_at(&[("a", 5)], t0).is_ok(),
            "the refusal took nothing"
        );
        assert!(l.take_at(&[("a", 1)], t0).is_err());
        assert!(l.take_at(&[("a", 10)], t0 + Duration::from_secs(1)).is_ok());
        // Refill never exceeds the burst.
        let later = t0 + Duration::from_secs(3600);
        assert!(l.take_at(&[("a", 20)], later).is_ok());
        assert!(l.take_at(&[("a", 1)], later).is_err());
    }

    #[test]
    fn retry_after_covers_the_wait() {
        let l = limiter(2.0, 10);
        let t0 = Instant::now();
        l.take_at(&[("a", 10)], t0).unwrap();
        let e = l.take_at(&[("a", 7)], t0).unwrap_err();
        assert_eq!(e.retry_after_secs, 4, "7 tokens at 2/s = 3.5 s, rounded up");
        assert!(l
            .take_at(&[("a", 7)], t0 + Duration::from_millis(3500))
            .is_ok());
    }

    #[test]
    fn oversized_request_needs_a_full_bucket_and_leaves_debt() {
        let l = limiter(10.0, 20);
        let t0 = Instant::now();
        assert!(
            l.take_at(&[("a", 50)], t0).is_ok(),
            "full bucket: let through"
        );
        // 30 tokens of debt: 3 s to get back to zero, 3.1 s for one event.
        assert!(l.take_at(&[("a", 1)], t0 + Duration::from_secs(3)).is_err());
        assert!(l
            .take_at(&[("a", 1)], t0 + Duration::from_millis(3200))
            .is_ok());
    }

    #[test]
    fn unlimited_sites_and_all_or_nothing_across_sites() {
        let l = limiter(1.0, 5);
        let t0 = Instant::now();
        assert!(l.take_at(&[("free", 1_000_000)], t0).is_ok());
        assert!(l.take_at(&[("unknown", 1_000_000)], t0).is_ok());
        l.take_at(&[("a", 3)], t0).unwrap();
        // "a" is taken first, then the second entry for "a" fails: the first is given back.
        assert!(l.take_at(&[("a", 2), ("a", 1)], t0).is_err());
        assert!(l.take_at(&[("a", 2)], t0).is_ok(), "2 tokens were left");
        l.give_back(&[("a", 2)]);
        assert!(l.take_at(&[("a", 2)], t0).is_ok(), "given back");
    }
}
