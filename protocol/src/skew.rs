//! Clock-skew correction: turning the time a client says into the time it was.
//!
//! A browser's clock can be minutes or years off. What the client's clock measures well is how
//! long ago the event happened relative to when it sent it, so (as Segment does):
//!
//! ```text
//! timestamp = receivedAt - (sentAt - originalTimestamp)
//! ```
//!
//! The rules, in order:
//! 1. `originalTimestamp` and `sentAt` (the event's own, else the batch's) both present: apply the
//!    formula. If `sentAt` is before `originalTimestamp` (a clock that jumped back), the event is
//!    taken to have happened at receipt ([`SkewRule::NegativeOffset`]).
//! 2. Else an explicit `timestamp`: used as given ([`SkewRule::Explicit`]); servers and imports
//!    set it deliberately.
//! 3. Else `originalTimestamp` alone: used as given, uncorrected ([`SkewRule::Uncorrected`]).
//! 4. Else nothing usable: the receive time ([`SkewRule::Received`]).
//!
//! Then the clamps: a time after receipt (plus [`MAX_FUTURE_MS`]) becomes the receive time
//! ([`SkewRule::ClampedFuture`]); a time more than [`MAX_PAST_MS`] before receipt is an error
//! ([`TooOld`]), which validation turns into a rejection of that event.
//!
//! A time that does not parse is treated as absent here; validation rejects it before.

use crate::event::Event;
use crate::limits::{MAX_FUTURE_MS, MAX_PAST_MS};
use crate::time::parse_rfc3339;

/// Which rule produced a corrected timestamp (for metrics, and so tests can say why).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SkewRule {
    Corrected,
    NegativeOffset,
    Explicit,
    Uncorrected,
    Received,
    ClampedFuture,
}

/// A corrected event time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Corrected {
    /// Unix milliseconds, server time.
    pub timestamp_ms: i64,
    pub rule: SkewRule,
}

/// The event's time lies more than [`MAX_PAST_MS`] before its receipt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TooOld {
    /// The time the rules produced, Unix milliseconds.
    pub timestamp_ms: i64,
    /// The field the time came from.
    pub field: &'static str,
}

/// Applies the rules above. `batch_sent_at` is the batch-level `sentAt`, if any.
pub fn correct(
    received_at_ms: i64,
    event: &Event,
    batch_sent_at: Option<&str>,
) -> Result<Corrected, TooOld> {
    let parse = |s: &Option<String>| s.as_deref().and_then(parse_rfc3339);
    let original = parse(&event.original_timestamp);
    let sent = parse(&event.sent_at).or_else(|| batch_sent_at.and_then(parse_rfc3339));
    let explicit = parse(&event.timestamp);
    let (ts, rule, field) = match (original, sent, explicit) {
        (Some(o), Some(s), _) if s >= o => (
            received_at_ms.saturating_sub(s - o),
            SkewRule::Corrected,
            "originalTimestamp",
        ),
        (Some(_), Some(_), _) => (received_at_ms, SkewRule::NegativeOffset, "sentAt"),
        (_, _, Some(t)) => (t, SkewRule::Explicit, "timestamp"),
        (Some(o), None, None) => (o, SkewRule::Uncorrected, "originalTimestamp"),
        (None, _, None) => (received_at_ms, SkewRule::Received, "timestamp"),
    };
    if ts > received_at_ms.saturating_add(MAX_FUTURE_MS) {
        return Ok(Corrected {
            timestamp_ms: received_at_ms,
            rule: SkewRule::ClampedFuture,
        });
    }
    if ts < received_at_ms.saturating_sub(MAX_PAST_MS) {
        return Err(TooOld {
            timestamp_ms: ts,
            field,
        });
    }
    Ok(Corrected {
        timestamp_ms: ts,
        rule,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::EventType;
    use crate::time::format_rfc3339;

    const RECEIVED: i64 = 1_800_000_000_000;
    const DAY: i64 = 86_400_000;

    fn ev(original: Option<i64>, sent: Option<i64>, explicit: Option<i64>) -> Event {
        let mut e = Event::new(EventType::Track, "m");
        e.original_timestamp = original.map(format_rfc3339);
        e.sent_at = sent.map(format_rfc3339);
        e.timestamp = explicit.map(format_rfc3339);
        e
    }

    #[test]
    fn a_clock_an_hour_fast_is_corrected() {
        let hour = 3_600_000;
        // The client's clock is one hour ahead; the event happened 5 s before sending.
        let e = ev(Some(RECEIVED + hour - 5000), Some(RECEIVED + hour), None);
        let c = correct(RECEIVED, &e, None).unwrap();
        assert_eq!(c.timestamp_ms, RECEIVED - 5000);
        assert_eq!(c.rule, SkewRule::Corrected);
    }

    #[test]
    fn a_clock_years_slow_is_corrected_too() {
        let years = 3 * 365 * DAY;
        let e = ev(
            Some(RECEIVED - years - 60_000),
            Some(RECEIVED - years),
            None,
        );
        assert_eq!(
            correct(RECEIVED, &e, None).unwrap().timestamp_ms,
            RECEIVED - 60_000
        );
    }

    #[test]
    fn the_batch_sent_at_is_used_when_the_event_has_none() {
        let e = ev(Some(1000), None, None);
        let c = correct(RECEIVED, &e, Some(&format_rfc3339(3000))).unwrap();
        assert_eq!(c.timestamp_ms, RECEIVED - 2000);
        assert_eq!(c.rule, SkewRule::Corrected);
    }

    #[test]
    fn sent_before_it_happened_means_now() {
        let e = ev(Some(RECEIVED), Some(RECEIVED - 10), None);
        let c = correct(RECEIVED, &e, None).unwrap();
        assert_eq!(
            (c.timestamp_ms, c.rule),
            (RECEIVED, SkewRule::NegativeOffset)
        );
    }

    #[test]
    fn an_explicit_timestamp_is_used_as_given() {
        let e = ev(None, Some(RECEIVED), Some(RECEIVED - 2 * DAY));
        let c = correct(RECEIVED, &e, None).unwrap();
        assert_eq!(
            (c.timestamp_ms, c.rule),
            (RECEIVED - 2 * DAY, SkewRule::Explicit)
        );
    }

    #[test]
    fn original_timestamp_wins_over_timestamp_when_sent_at_is_known() {
        let e = ev(Some(100), Some(200), Some(RECEIVED - DAY));
        assert_eq!(
            correct(RECEIVED, &e, None).unwrap().timestamp_ms,
            RECEIVED - 100
        );
    }

    #[test]
    fn no_time_at_all_is_the_receive_time() {
        let c = correct(RECEIVED, &ev(None, None, None), None).unwrap();
        assert_eq!((c.timestamp_ms, c.rule), (RECEIVED, SkewRule::Received));
        let c = correct(RECEIVED, &ev(Some(RECEIVED - 7), None, None), None).unwrap();
        assert_eq!(
            (c.timestamp_ms, c.rule),
            (RECEIVED - 7, SkewRule::Uncorrected)
        );
    }

    #[test]
    fn future_times_are_clamped_to_receipt() {
        let e = ev(None, None, Some(RECEIVED + 1));
        let c = correct(RECEIVED, &e, None).unwrap();
        assert_eq!(
            (c.timestamp_ms, c.rule),
            (RECEIVED, SkewRule::ClampedFuture)
        );
    }

    #[test]
    fn very_old_times_are_refused() {
        let e = ev(None, None, Some(RECEIVED - MAX_PAST_MS - 1));
        let err = correct(RECEIVED, &e, None).unwrap_err();
        assert_eq!(err.field, "timestamp");
        // exactly at the edge is still fine
        let e = ev(None, None, Some(RECEIVED - MAX_PAST_MS));
        assert!(correct(RECEIVED, &e, None).is_ok());
        // a corrected time can be too old as well (queued offline for over a year)
        let e = ev(Some(0), Some(MAX_PAST_MS + 1), None);
        assert_eq!(
            correct(RECEIVED, &e, None).unwrap_err().field,
            "originalTimestamp"
        );
    }

    proptest::proptest! {
        #[test]
        fn never_after_receipt(o in proptest::option::of(0i64..4_000_000_000_000),
                               s in proptest::option::of(0i64..4_000_000_000_000),
                               t in proptest::option::of(0i64..4_000_000_000_000)) {
            if let Ok(c) = correct(RECEIVED, &ev(o, s, t), None) {
                proptest::prop_assert!(c.timestamp_ms <= RECEIVED);
                proptest::prop_assert!(c.timestamp_ms >= RECEIVED - MAX_PAST_MS);
            }
        }
    }
}
