//! Limits on what the intake accepts. Every one is enforced by [`crate::validate`] and named in
//! the rejection it causes. They follow Segment's published limits where Segment has one, so an
//! SDK that works against Segment works here.

/// Largest accepted request body, in bytes, after decompression (Segment: 500 KB).
pub const MAX_BATCH_BYTES: usize = 512 * 1024;

/// Most events in one batch.
pub const MAX_EVENTS_PER_BATCH: usize = 500;

/// Largest single event, in bytes of its JSON text (Segment: 32 KB).
pub const MAX_EVENT_BYTES: usize = 32 * 1024;

/// Longest event name (`event` of a track, `name` of a page or screen) and longest object key.
pub const MAX_NAME_LEN: usize = 200;

/// Longest id: `messageId`, `anonymousId`, `userId`, `previousId`, `groupId`.
pub const MAX_ID_LEN: usize = 256;

/// Most keys in one of `properties`, `traits` or `context`, counting nested objects' keys too.
pub const MAX_PROPERTIES: usize = 300;

/// Deepest nesting of objects and arrays inside `properties`, `traits` or `context`
/// (`{"a": {"b": 1}}` has depth 2).
pub const MAX_DEPTH: usize = 8;

/// Longest string value anywhere in an event, in bytes.
pub const MAX_STRING_LEN: usize = 8 * 1024;

/// Oldest accepted event: its corrected timestamp may be at most this long before it was
/// received (365 days). Older events are rejected, not clamped: they are imports gone wrong.
pub const MAX_PAST_MS: i64 = 365 * 24 * 60 * 60 * 1000;

/// How far after its receipt an event's time may lie before it is clamped to the receive time.
/// Zero: nothing can have happened after we received it, so any later time is a fast clock.
pub const MAX_FUTURE_MS: i64 = 0;
