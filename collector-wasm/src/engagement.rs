//! Engaged time of a page view: time visible and focused with recent activity, from the signals
//! the loader reports.

use alloc::string::String;

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
