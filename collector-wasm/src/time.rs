//! RFC 3339 timestamps (`2026-11-29T01:02:03.456Z`) from Unix milliseconds.
//!
//! In the browser the loader formats them (`Date.prototype.toISOString`, the same format; the
//! browser does it natively, and the wasm is 0.2 KB smaller gzipped without the calendar code).
//! Elsewhere (the unit tests) the protocol crate's formatter does it.

use alloc::string::String;

use crate::json;

/// Appends the UTC time `ms` (milliseconds since 1970) as RFC 3339 with milliseconds and a `Z`.
#[cfg(target_arch = "wasm32")]
pub fn rfc3339(out: &mut String, ms: u64) {
    // (Clamped to the last time a JS `Date` holds, so `toISOString` cannot throw.)
    json::put(out, &crate::iso_time(ms.min(8_640_000_000_000_000) as f64));
}

/// Appends the UTC time `ms` (milliseconds since 1970) as RFC 3339 with milliseconds and a `Z`:
/// the protocol crate's formatter, the one the intake's own times use.
#[cfg(not(target_arch = "wasm32"))]
pub fn rfc3339(out: &mut String, ms: u64) {
    let ms = i64::try_from(ms).unwrap_or(i64::MAX);
    json::put(out, &waymark_protocol::time::format_rfc3339(ms));
}

#[cfg(all(test, not(target_arch = "wasm32")))]
mod tests {
    use super::*;

    #[test]
    fn formats_with_milliseconds_and_z() {
        let mut o = String::new();
        rfc3339(&mut o, 1_764_378_123_456);
        assert_eq!(o, "2025-11-29T01:02:03.456Z");
    }
}
