//! Small timing rules: retry backoff, the session timeout, engaged time.

use alloc::string::String;

use crate::json;

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

/// A session ends after this long without events or activity.
pub const SESSION_TIMEOUT_MS: u64 = 30 * 60 * 1000;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    pub id: String,
    /// Last event or activity, Unix ms.
    pub last: u64,
}

impl Session {
    /// Stored form: `<id>.<last>`.
    pub fn parse(s: &str) -> Option<Session> {
        let (id, last) = crate::url::rsplit_once(s, b'.')?;
        let last = crate::url::parse_u64(last)?;
        (!id.is_empty()).then(|| Session {
            id: id.into(),
            last,
        })
    }

    pub fn serialize(&self) -> String {
        let mut out = self.id.clone();
        json::put(&mut out, ".");
        crate::json::uint(&mut out, self.last);
        out
    }

    /// Whether the session has timed out at `now`.
    pub fn expired(&self, now: u64) -> bool {
        now.saturating_sub(self.last) >= SESSION_TIMEOUT_MS
    }
}

/// Activity older than this no longer counts as engaged.
pub const ACTIVE_WINDOW_MS: u64 = 30_000;

/// Engaged time of one page view: time visible and focused with activity in the last 30 s.
#[derive(Debug, Clone, Default)]
pub struct Engagement {
    pub visible: bool,
    pub focused: bool,
    pub last_activity: u64,
    /// Time up to which engaged time has been counted.
    mark: u64,
    /// Engaged ms not yet reported.
    pub engaged_ms: u64,
    /// Deepest scroll, percent, this page view.
    pub scroll_depth: u8,
    /// The product this page view is about.
    pub product: String,
}

/// What the loader reports.
pub const SIG_ACTIVITY: u32 = 0;
pub const SIG_VISIBLE: u32 = 1;
pub const SIG_HIDDEN: u32 = 2;
pub const SIG_FOCUS: u32 = 3;
pub const SIG_BLUR: u32 = 4;

impl Engagement {
    /// A new page view at `now` (counts as activity).
    pub fn start(now: u64, visible: bool, focused: bool) -> Engagement {
        Engagement {
            visible,
            focused,
            last_activity: now,
            mark: now,
            ..Engagement::default()
        }
    }

    /// Counts engaged time up to `now`.
    pub fn accrue(&mut self, now: u64) {
        if self.visible && self.focused {
            let end = now.min(self.last_activity + ACTIVE_WINDOW_MS);
            self.engaged_ms += end.saturating_sub(self.mark);
        }
        self.mark = self.mark.max(now);
    }

    pub fn signal(&mut self, now: u64, sig: u32) {
        self.accrue(now);
        match sig {
            SIG_VISIBLE => self.visible = true,
            SIG_HIDDEN => self.visible = false,
            SIG_FOCUS => self.focused = true,
            SIG_BLUR => self.focused = false,
            _ => {}
        }
        if sig != SIG_HIDDEN && sig != SIG_BLUR {
            self.last_activity = self.last_activity.max(now);
        }
    }

    /// Engaged ms since the last report, and resets the count.
    pub fn take(&mut self, now: u64) -> u64 {
        self.accrue(now);
        core::mem::take(&mut self.engaged_ms)
    }
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

    #[test]
    fn session_times_out_after_thirty_minutes() {
        let s = Session {
            id: "a.b".into(),
            last: 1000,
        };
        assert_eq!(Session::parse(&s.serialize()), Some(s.clone()));
        assert!(!s.expired(1000 + SESSION_TIMEOUT_MS - 1));
        assert!(s.expired(1000 + SESSION_TIMEOUT_MS));
        assert_eq!(Session::parse("nodot"), None);
        assert_eq!(Session::parse(".5"), None);
        assert_eq!(Session::parse("x.notanumber"), None);
    }

    #[test]
    fn engaged_time_excludes_hidden_blurred_and_idle_time() {
        let mut e = Engagement::start(0, true, true);
        e.signal(5_000, SIG_HIDDEN); // 5 s engaged
        e.signal(15_000, SIG_VISIBLE); // 10 s hidden: not counted, and showing is activity
        e.signal(18_000, SIG_BLUR); // 3 s
        e.signal(20_000, SIG_FOCUS); // 2 s blurred
        assert_eq!(e.take(21_000), 9_000);
        // Idle: only the 30 s after the last activity count.
        assert_eq!(e.take(100_000), 29_000);
        e.signal(100_000, SIG_ACTIVITY);
        assert_eq!(e.take(110_000), 10_000);
        assert_eq!(e.take(110_000), 0);
    }

    #[test]
    fn hidden_start_counts_nothing_until_shown() {
        let mut e = Engagement::start(0, false, true);
        e.signal(60_000, SIG_VISIBLE);
        assert_eq!(e.take(61_000), 1_000);
    }
}
