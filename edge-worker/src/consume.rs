//! The queue consumer's decisions, kept out of `runtime.rs` so they are tested on the host: how
//! a delivered batch becomes signed requests, what the ingest server's answer means, and how long
//! a message waits before Queues delivers it again.
//!
//! # One request per write key
//!
//! The ingest server answers per request, and a site over its rate limit makes it refuse the
//! whole request (429). A delivery is therefore split by write key ([`group_by_key`]) and each
//! group is its own signed request: the groups that succeed are acknowledged, and only the
//! refused group's messages are retried.
//!
//! # What an answer means ([`judge`], [`Failure`])
//!
//! | answer | meaning | what the consumer does |
//! |---|---|---|
//! | 2xx | stored durably (events the server refused are listed in the body and logged) | ack |
//! | 429 | this site is over its rate limit | retry this group, `max(backoff, Retry-After)` |
//! | 503 | the server cannot store anything now (spool full) | retry, `max(backoff, Retry-After)` |
//! | no answer, 408, other 5xx | the server is down or failing | retry with backoff |
//! | 401, 403, 404, 405 | operator error: `EDGE_SECRET` differs from `[edge] secret`, the clocks differ by more than the replay window, the server has no `[edge]`, or `INGEST_URL` is wrong | retry with backoff, logged as an error; never dropped, since the fix is configuration and the events are fine |
//! | other 4xx (400, 413, 415) | the whole request was refused: the ingest server validates each event and answers 200 with per-event rejections, so this is a mismatch between the edge and the server (version, `[edge] max_body`) or one message it cannot read | a group of several messages is sent again one message per request, so one such message cannot hold up the others; a single message is retried with backoff (and after `max_retries` kept in the dead-letter queue) |
//!
//! A failure that concerns the whole server (everything but 429 and the last row) is not
//! repeated for every group of the delivery: the groups not yet sent are retried without being
//! sent ([`Failure::server_wide`]). Nothing is ever acknowledged without a 2xx.
//!
//! # The retry schedule ([`backoff_secs`], [`retry_delay_secs`])
//!
//! Cloudflare Queues limits (developers.cloudflare.com/queues/platform/limits, checked November
//! 2026): at most **100 retries** per message (`max_retries`), a retry delay (`delaySeconds`) of
//! at most **12 hours (43,200 s)**, and a message is deleted once it is older than its queue's
//! retention period (**4 days** by default; 60 s to 14 days on Workers Paid; a fixed 24 hours on
//! Workers Free, which is why the README asks for a paid plan and a longer retention).
//!
//! A message whose delivery number `attempts` (1 on the first delivery) failed waits
//! `min(30 s * 2^(attempts - 1), 30 min)` before the next delivery. With `max_retries = 100`
//! (`wrangler.toml`) there are 100 such waits before the 101st failure moves it to the
//! dead-letter queue:
//!
//! ```text
//!   30 + 60 + 120 + 240 + 480 + 960   =   1,890 s   (attempts 1 to 6)
//!   94 * 1,800                        = 169,200 s   (attempts 7 to 100)
//!   total                             = 171,090 s = 47 h 31 min 30 s
//! ```
//!
//! That outlasts a 24-hour ingest outage with almost a day to spare, and stays below the default
//! 4-day retention, so an undeliverable message reaches the dead-letter queue (from where it can
//! be replayed) instead of expiring. Once the ingest server is back, a waiting message goes out
//! within 30 minutes. `Retry-After` can only lengthen a wait (the larger of the two is used, at
//! most 12 hours). The test `the_schedule_outlasts_a_day_and_ends_before_retention` checks this
//! arithmetic against `wrangler.toml`.
//!
//! No jitter: the schedule is a promise (the 24-hour bound above), and randomness would have to
//! be subtracted from it or make it a probability. The herd that jitter guards against does not
//! form here: messages enqueued during an outage keep the phase of their arrival times, so the
//! backlog comes back spread over a cap interval anyway; the messages of one delivery come back
//! together and go out again as one request per site, which is fewer requests, not more; and an
//! overloaded server says how long to wait with `Retry-After`, which is honoured.

/// Seconds before the first redelivery; doubled with every failed delivery.
pub const BASE_DELAY_SECS: u32 = 30;

/// The longest wait the schedule itself asks for (30 minutes): how long a message can lag behind
/// the ingest server's recovery.
pub const MAX_BACKOFF_SECS: u32 = 30 * 60;

/// Cloudflare's upper bound on `delaySeconds` when retrying (12 hours).
pub const MAX_DELAY_SECS: u32 = 12 * 60 * 60;

/// `max_retries` in `wrangler.toml`, Cloudflare's maximum (a test checks they agree).
pub const MAX_RETRIES: u32 = 100;
const _: () = assert!(MAX_RETRIES <= 100, "Cloudflare allows at most 100 retries");

/// A dead-letter queue's name ends with this; a batch from such a queue is a replay
/// ([`is_dead_letter_queue`]).
pub const DEAD_LETTER_SUFFIX: &str = "-dlq";

/// The schedule's wait after delivery number `attempts` failed (1-based; 0 is taken as 1).
pub fn backoff_secs(attempts: u32) -> u32 {
    let doublings = attempts.saturating_sub(1).min(31);
    BASE_DELAY_SECS
        .saturating_mul(1u32 << doublings)
        .min(MAX_BACKOFF_SECS)
}

/// The delay to ask Queues for: the schedule's, or the server's `Retry-After` when that is
/// longer, never more than Cloudflare allows.
pub fn retry_delay_secs(attempts: u32, retry_after_secs: Option<u32>) -> u32 {
    backoff_secs(attempts)
        .max(retry_after_secs.unwrap_or(0))
        .min(MAX_DELAY_SECS)
}

/// Reads a `Retry-After` value: delta-seconds, or an HTTP date (a date in the past is 0).
/// `None` when it is neither, which leaves the schedule's delay alone.
pub fn parse_retry_after(value: &str, now_ms: i64) -> Option<u32> {
    let value = value.trim();
    if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) {
        // A huge number of seconds is still "wait as long as you may".
        return Some(
            value
                .parse::<u64>()
                .map_or(u32::MAX, |s| u32::try_from(s).unwrap_or(u32::MAX)),
        );
    }
    let at = httpdate::parse_http_date(value).ok()?;
    let at_ms = at
        .duration_since(std::time::UNIX_EPOCH)
        .ok()?
        .as_millis()
        .min(i64::MAX as u128) as i64;
    let secs = (at_ms.saturating_sub(now_ms).max(0) + 999) / 1000;
    Some(u32::try_from(secs).unwrap_or(u32::MAX))
}

/// What came back from one signed request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    /// The ingest server (or something in front of it) answered with this status.
    Status {
        status: u16,
        /// Its `Retry-After`, in seconds from now, when it sent one we could read.
        retry_after_secs: Option<u32>,
    },
    /// No answer: connection refused or lost, DNS, TLS, or the forward timeout.
    NoAnswer,
}

/// Why a request was not accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// No answer at all.
    Unreachable,
    /// 503, 408 or another 5xx: the server cannot take requests now.
    Unavailable(u16),
    /// 429: this write key's site is over its rate limit; other sites are not affected.
    RateLimited,
    /// 401, 403, 404, 405: the secret, the clock, `[edge]` or `INGEST_URL` needs fixing.
    Misconfigured(u16),
    /// Another 4xx: this request as a whole was refused.
    Refused(u16),
}

impl Failure {
    /// Whether every request to the server would fail the same way just now, so the rest of
    /// the delivery is retried without being sent.
    pub fn server_wide(self) -> bool {
        !matches!(self, Failure::RateLimited | Failure::Refused(_))
    }

    /// Whether a group of several messages should be sent again one message per request, to
    /// find the one the server cannot take.
    pub fn split_group(self, group_len: usize) -> bool {
        matches!(self, Failure::Refused(_)) && group_len > 1
    }

    /// One line for the log, saying what the operator can do.
    pub fn explain(self) -> String {
        match self {
            Failure::Unreachable => "no answer from the ingest server (down, unreachable or slower than the forward timeout)".into(),
            Failure::Unavailable(s) => format!("the ingest server answered {s}: it cannot store events now"),
            Failure::RateLimited => "the ingest server answered 429: this site is over its rate limit".into(),
            Failure::Misconfigured(s) => format!(
                "the ingest server answered {s}: a configuration error (EDGE_SECRET must equal the server's [edge] secret, clocks within its replay_window, [edge] enabled, INGEST_URL right); the events are kept and retried until it is fixed"
            ),
            Failure::Refused(s) => format!(
                "the ingest server answered {s} to the whole request (the edge and the server disagree on the forward format or size)"
            ),
        }
    }
}

/// The verdict on one request, for every message it carried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Stored: acknowledge the messages.
    Delivered,
    /// Not stored: the messages must be delivered again.
    Failed {
        failure: Failure,
        retry_after_secs: Option<u32>,
    },
}

/// Reads an answer; see the table at the top of this module.
pub fn judge(answer: Answer) -> Verdict {
    let (status, retry_after_secs) = match answer {
        Answer::NoAnswer => {
            return Verdict::Failed {
                failure: Failure::Unreachable,
                retry_after_secs: None,
            }
        }
        Answer::Status {
            status,
            retry_after_secs,
        } => (status, retry_after_secs),
    };
    let failure = match status {
        200..=299 => return Verdict::Delivered,
        429 => Failure::RateLimited,
        401 | 403 | 404 | 405 => Failure::Misconfigured(status),
        408 => Failure::Unavailable(status),
        400..=499 => Failure::Refused(status),
        // 1xx and 3xx are not answers a POST to /v1/edge should get (redirects are followed by
        // fetch): count them with the server errors.
        _ => Failure::Unavailable(status),
    };
    // Retry-After means something only where the server uses it (429, 503); elsewhere the
    // schedule alone decides.
    let retry_after_secs = match failure {
        Failure::RateLimited | Failure::Unavailable(503) => retry_after_secs,
        _ => None,
    };
    Verdict::Failed {
        failure,
        retry_after_secs,
    }
}

/// Groups positions by equal key: `["a", "b", "a"]` gives `[[0, 2], [1]]`, groups in the order
/// their keys first appear, positions ascending.
pub fn group_by_key<'a>(keys: impl IntoIterator<Item = &'a str>) -> Vec<Vec<usize>> {
    let mut groups: Vec<(&'a str, Vec<usize>)> = Vec::new();
    for (i, k) in keys.into_iter().enumerate() {
        match groups.iter_mut().find(|(g, _)| *g == k) {
            Some((_, members)) => members.push(i),
            None => groups.push((k, vec![i])),
        }
    }
    groups.into_iter().map(|(_, m)| m).collect()
}

/// Whether a batch from queue `name` is a replay of dead letters: the consumer then forwards it
/// the same way, and puts what still fails back on the main queue instead of retrying it where
/// it is (see the README, "Replaying the dead-letter queue").
pub fn is_dead_letter_queue(name: &str) -> bool {
    name.len() > DEAD_LETTER_SUFFIX.len() && name.ends_with(DEAD_LETTER_SUFFIX)
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: u64 = 24 * 60 * 60;

    /// `max_retries` and `retry_delay` of the consumer of `queue` in wrangler.toml.
    fn wrangler_consumer(queue: &str) -> toml::Table {
        let doc: toml::Table = include_str!("../wrangler.toml")
            .parse()
            .expect("wrangler.toml");
        doc["queues"]["consumers"]
            .as_array()
            .expect("[[queues.consumers]]")
            .iter()
            .map(|c| c.as_table().expect("a consumer table").clone())
            .find(|c| c["queue"].as_str() == Some(queue))
            .unwrap_or_else(|| panic!("wrangler.toml has no consumer for {queue}"))
    }

    #[test]
    fn the_schedule_doubles_from_30_seconds_up_to_30_minutes() {
        let first: Vec<u32> = (1..=8).map(backoff_secs).collect();
        assert_eq!(first, [30, 60, 120, 240, 480, 960, 1800, 1800]);
        assert_eq!(
            backoff_secs(0),
            30,
            "attempts is 1-based; 0 counts as the first"
        );
        assert_eq!(backoff_secs(100), MAX_BACKOFF_SECS);
        assert_eq!(backoff_secs(u32::MAX), MAX_BACKOFF_SECS, "no overflow");
    }

    #[test]
    fn the_schedule_outlasts_a_day_and_ends_before_retention() {
        let consumer = wrangler_consumer("waymark-events");
        let max_retries = consumer["max_retries"].as_integer().expect("max_retries");
        assert_eq!(max_retries, i64::from(MAX_RETRIES));
        assert_eq!(
            consumer["dead_letter_queue"].as_str(),
            Some("waymark-events-dlq")
        );
        // One wait after each of the first `max_retries` failed deliveries; the next failure
        // goes to the dead-letter queue.
        let waits: u64 = (1..=MAX_RETRIES).map(|a| u64::from(backoff_secs(a))).sum();
        assert_eq!(waits, 171_090, "30+60+...+960 = 1,890, then 94 * 1,800");
        assert!(
            waits >= DAY,
            "a 24-hour outage must not reach the dead-letter queue"
        );
        assert!(
            waits < 4 * DAY,
            "messages must reach the dead-letter queue before the default 4-day retention deletes them"
        );
        // Every wait is one Cloudflare accepts.
        assert!((1..=MAX_RETRIES).all(|a| retry_delay_secs(a, Some(u32::MAX)) <= MAX_DELAY_SECS));
    }

    #[test]
    fn the_old_settings_gave_up_after_five_minutes() {
        // What this replaces, for the record: 10 retries 30 s apart.
        let old: u64 = (1..=10).map(|_| 30u64).sum();
        assert_eq!(old, 300);
        let new_first_ten: u64 = (1..=10).map(|a| u64::from(backoff_secs(a))).sum();
        assert!(new_first_ten > old);
    }

    #[test]
    fn retry_after_lengthens_the_wait_but_never_shortens_it() {
        assert_eq!(retry_delay_secs(1, Some(120)), 120, "server asks for more");
        assert_eq!(retry_delay_secs(5, Some(5)), 480, "schedule asks for more");
        assert_eq!(retry_delay_secs(1, None), 30);
        assert_eq!(
            retry_delay_secs(1, Some(86_400)),
            MAX_DELAY_SECS,
            "at most 12 hours"
        );
    }

    #[test]
    fn retry_after_is_read_as_seconds_or_a_date() {
        let now = 1_794_000_000_000; // 2026-11-06T...Z in ms
        assert_eq!(parse_retry_after("5", now), Some(5));
        assert_eq!(parse_retry_after(" 120 ", now), Some(120));
        assert_eq!(parse_retry_after("0", now), Some(0));
        assert_eq!(
            parse_retry_after("99999999999999999999", now),
            Some(u32::MAX)
        );
        let in_90s = httpdate::fmt_http_date(
            std::time::UNIX_EPOCH + std::time::Duration::from_millis(now as u64 + 90_000),
        );
        assert_eq!(parse_retry_after(&in_90s, now), Some(90));
        assert_eq!(
            parse_retry_after("Thu, 01 Jan 1970 00:00:00 GMT", now),
            Some(0),
            "a date in the past: no extra wait"
        );
        for bad in ["", "soon", "-5", "1.5", "Tue, 31 Feb 2026 99:00:00 GMT"] {
            assert_eq!(parse_retry_after(bad, now), None, "{bad:?}");
        }
    }

    fn status(s: u16) -> Answer {
        Answer::Status {
            status: s,
            retry_after_secs: Some(7),
        }
    }

    fn failure(a: Answer) -> (Failure, Option<u32>) {
        match judge(a) {
            Verdict::Failed {
                failure,
                retry_after_secs,
            } => (failure, retry_after_secs),
            Verdict::Delivered => panic!("{a:?} judged delivered"),
        }
    }

    #[test]
    fn only_2xx_is_delivered() {
        assert_eq!(judge(status(200)), Verdict::Delivered);
        assert_eq!(judge(status(204)), Verdict::Delivered);
        for s in [100, 301, 400, 401, 429, 500, 503] {
            assert_ne!(judge(status(s)), Verdict::Delivered, "{s}");
        }
        assert_ne!(judge(Answer::NoAnswer), Verdict::Delivered);
    }

    #[test]
    fn answers_are_classified_and_retry_after_kept_only_where_it_is_meant() {
        assert_eq!(failure(status(429)), (Failure::RateLimited, Some(7)));
        assert_eq!(failure(status(503)), (Failure::Unavailable(503), Some(7)));
        assert_eq!(failure(status(500)), (Failure::Unavailable(500), None));
        assert_eq!(failure(status(408)), (Failure::Unavailable(408), None));
        assert_eq!(failure(Answer::NoAnswer), (Failure::Unreachable, None));
        for s in [401, 403, 404, 405] {
            assert_eq!(failure(status(s)), (Failure::Misconfigured(s), None));
        }
        for s in [400, 413, 415, 422] {
            assert_eq!(failure(status(s)), (Failure::Refused(s), None));
        }
    }

    #[test]
    fn only_a_rate_limit_or_a_refused_request_lets_the_other_groups_go_on() {
        assert!(!Failure::RateLimited.server_wide());
        assert!(!Failure::Refused(400).server_wide());
        for f in [
            Failure::Unreachable,
            Failure::Unavailable(503),
            Failure::Misconfigured(401),
        ] {
            assert!(f.server_wide(), "{f:?}");
        }
    }

    #[test]
    fn a_refused_group_of_several_is_split_a_single_message_is_retried() {
        assert!(Failure::Refused(400).split_group(2));
        assert!(!Failure::Refused(400).split_group(1));
        assert!(
            !Failure::RateLimited.split_group(5),
            "429 is about the site, not a message"
        );
        assert!(!Failure::Misconfigured(401).split_group(5));
    }

    #[test]
    fn the_operator_is_told_what_to_fix() {
        let m = Failure::Misconfigured(401).explain();
        assert!(m.contains("EDGE_SECRET") && m.contains("401"), "{m}");
        assert!(Failure::RateLimited.explain().contains("429"));
    }

    #[test]
    fn groups_keep_first_appearance_order() {
        assert_eq!(
            group_by_key(["a", "b", "a", "c", "b"]),
            vec![vec![0, 2], vec![1, 4], vec![3]]
        );
        assert_eq!(group_by_key([]), Vec::<Vec<usize>>::new());
        assert_eq!(group_by_key(["x"; 3]), vec![vec![0, 1, 2]]);
    }

    #[test]
    fn dead_letter_queues_are_recognised_by_name() {
        assert!(is_dead_letter_queue("waymark-events-dlq"));
        assert!(!is_dead_letter_queue("waymark-events"));
        assert!(!is_dead_letter_queue("-dlq"));
        assert!(!is_dead_letter_queue("waymark-dlq-events"));
    }
}
