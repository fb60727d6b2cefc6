//! Waymark's wire format: the one definition shared by the tag, the edge worker and the ingest
//! server.
//!
//! - [`event`]: the event and batch types. The format is a superset of the Segment HTTP Tracking
//!   API batch (`{"batch": [...], "sentAt": ...}`), so Segment and RudderStack SDKs and the
//!   Waymark tag share one intake.
//! - [`validate`]: parses a body and checks every event against [`limits`], returning the good
//!   events and a list of every problem found (`batch[3].messageId: missing`).
//! - [`skew`]: the clock-skew rule that turns a client's clock into server time.
//! - [`names`] and [`auto`]: the reserved `$`-prefixed events the tag sends and their properties.
//! - [`intake`]: the paths Segment-family clients send to, and where they put the write key.
//! - [`edge`]: what the edge worker adds (geo, client) and how it signs what it forwards.
//! - [`email`]: the signed tokens of tracked email links and open pixels.
//! - [`privacy`]: what is kept of URLs (secrets redacted) and what `Sec-GPC: 1` does.
//!
//! No I/O here; everything builds for `wasm32-unknown-unknown` as well as natively. Features:
//! `validate` (default) brings parsing, validation and signing; `std` the types, time and
//! clock-skew functions; with neither the crate is `no_std` and holds only [`limits`], [`names`]
//! and the constants of [`auto`], which is what the size-constrained tag uses.

#![cfg_attr(not(feature = "std"), no_std)]

pub mod auto;
#[cfg(feature = "std")]
pub mod edge;
#[cfg(feature = "validate")]
pub mod email;
#[cfg(feature = "std")]
pub mod event;
#[cfg(feature = "validate")]
pub mod intake;
pub mod limits;
pub mod names;
#[cfg(feature = "validate")]
pub mod privacy;
#[cfg(feature = "std")]
pub mod skew;
#[cfg(feature = "std")]
pub mod time;
#[cfg(feature = "validate")]
pub mod validate;

#[cfg(feature = "std")]
pub use event::{Batch, Event, EventType};
#[cfg(feature = "validate")]
pub use validate::{
    check_import_event, parse_batch, parse_events, parse_single, BatchError, Rejection, Validated,
};
