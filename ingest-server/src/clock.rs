//! The wall clock, in one place: every "now" of the server (receipt times, replay windows,
//! writer health, the query API's windows) is read here. The protocol crate has no clock of its
//! own (it does no I/O; callers pass it the time).

use std::time::{SystemTime, UNIX_EPOCH};

/// Milliseconds since the Unix epoch (0 if the system clock is before it).
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// [`now_ms`] as an unsigned count, for fields kept as `u64`.
pub fn now_ms_u64() -> u64 {
    now_ms().max(0) as u64
}

#[cfg(test)]
mod tests {
    #[test]
    fn is_after_2020_and_moves_forward() {
        let a = super::now_ms();
        assert!(a > 1_577_836_800_000, "{a}");
        assert!(super::now_ms_u64() >= a as u64);
    }
}
