//! When the tag sends a failed batch again: which answers are retried, and the backoff between
//! attempts (with jitter, honouring a capped `Retry-After`).

/// First retry delay.
pub const BACKOFF_BASE_MS: u64 = 1000;
/// Longest retry delay from backoff alone.
pub const BACKOFF_MAX_MS: u64 = 5 * 60 * 1000;
/// Longest `Retry-After` honoured (a server asking for more is capped, not obeyed for days).
pub const RETRY_AFTER_MAX_MS: u64 = 60 * 60 * 1000;

/// Delay before retry number `attempt` (1 for the first retry): exponential with "equal jitter"
/// (half fixed, half random, so clients that failed together spread out), and never sooner than
/// the server's `Retry-After`.
pub fn backoff_ms(attempt: u32, retry_after_ms: u64, random: u32) -> u64 {
    let exp = (BACKOFF_BASE_MS << attempt.saturating_sub(1).min(20)).min(BACKOFF_MAX_MS);
    let half = exp / 2;
    let jittered = half + u64::from(random) % (half + 1);
    jittered.max(retry_after_ms.min(RETRY_AFTER_MAX_MS))
}

/// Whether a response status is worth retrying: network error (0), 429 and 5xx.
pub fn retryable(status: u32) -> bool {
    status == 0 || status == 429 || (500..600).contains(&status)
}

#[cfg(all(test, not(target_arch = "wasm32")))]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_with_jitter_and_caps() {
        for attempt in 1..30 {
            let exp = (1000u64 << (attempt - 1).min(20)).min(BACKOFF_MAX_MS);
            for r in [0, 1, 12345, u32::MAX] {
                let d = backoff_ms(attempt, 0, r);
                assert!(d >= exp / 2 && d <= exp, "attempt {attempt}: {d}");
            }
        }
        assert_ne!(backoff_ms(5, 0, 1), backoff_ms(5, 0, 7777));
        assert_eq!(backoff_ms(1, 0, 0), 500);
    }

    #[test]
    fn retry_after_is_honoured_but_capped() {
        assert_eq!(backoff_ms(1, 120_000, 0), 120_000);
        assert_eq!(backoff_ms(1, u64::MAX, 0), RETRY_AFTER_MAX_MS);
        assert!(backoff_ms(8, 10, 0) >= 64_000);
    }

    #[test]
    fn what_is_retried() {
        for s in [0, 429, 500, 502, 503, 599] {
            assert!(retryable(s), "{s}");
        }
        for s in [200, 204, 301, 400, 401, 403, 404, 413, 422, 600] {
            assert!(!retryable(s), "{s}");
        }
    }
}
