//! The Waymark edge worker: runs on the site's own domain (Cloudflare Workers), so the tag is
//! first-party.
//!
//! A tag request's life here:
//!
//! 1. [`http::route`] picks the route under the configured prefix (the tag's files, or the batch
//!    intake with CORS and preflight).
//! 2. [`process::process`] validates the batch with the protocol crate, reads geo and bot facts
//!    from `request.cf` ([`cf`]), truncates or drops the IP, applies `Sec-GPC`, flags bots
//!    ([`bot`]) and stamps the receive time, giving one `EdgeEnvelope`.
//! 3. With a Queue bound (`WAYMARK_QUEUE`) the envelope is enqueued and the tag is answered at
//!    once; the queue consumer POSTs every delivered batch to the ingest server as one signed
//!    request per write key ([`forward`]), to the first of the ingest servers that takes it
//!    ([`failover`]: the next on no answer or a 5xx), acknowledges what was stored and asks Queues to
//!    deliver the rest again after a growing delay that outlasts a day-long outage
//!    ([`consume`]); a batch from the dead-letter queue is replayed the same way. Without a
//!    queue the fetch handler forwards directly and answers 503 when it cannot, so the tag
//!    retries.
//!
//! 4. The email endpoints ([`email`]): the open pixel and the click redirect, verified and
//!    classified here and sent on after the answer; a person's click leaves a marker cookie that
//!    the next batch turns into an identity link.
//!
//! Everything but the thin layer over the Workers runtime in `runtime.rs` (the entry points, the
//! queue and the outbound fetches) is pure and tested on the host.

pub mod assets;
pub mod bot;
pub mod cf;
pub mod config;
pub mod consume;
pub mod email;
pub mod failover;
pub mod forward;
pub mod http;
pub mod process;

mod runtime;
