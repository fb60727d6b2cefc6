//! The Waymark tag: the tracking module the `js/` loader runs in the browser.
//!
//! The loader (hand-written JS, small) owns what is cheap in JS: DOM listeners, timers and the
//! network calls (`fetch` with `keepalive`, `sendBeacon`). It hands compact calls to the
//! exported functions (`exports.rs`), which own everything else ([`engine::Core`]): anonymous
//! and user ids, the 30-minute session, consent, event JSON in the protocol crate's wire format
//! (UUIDv7 `messageId`), batching, the retry queue in localStorage with backoff, and engaged
//! time.
//!
//! The exports and imports go through wasm-bindgen. Storage goes through imports of the
//! loader's taking a store number (`Host`, built for wasm32 only), not web-sys's `Storage`: web-sys objects cost the
//! module wasm-bindgen's externref table and exception handling, 0.85 KB gzipped, more than
//! the 12 KB budget leaves (js/README.md, "Size").
//!
//! Size matters more than anything here (12 KB gzipped for wasm + JS): no serde, no
//! `core::fmt` (no `format!`, no `{}`), integers written by hand, two entry points (`create`
//! and one `call` for everything else), a small allocator (`heap.rs`), every list of events one
//! string ([`queue::Lines`]); what the browser does natively (times, the page and campaign
//! objects) the loader does. Everything but
//! the exports, the imports and the allocator is plain Rust tested natively (`cargo test -p
//! waymark-collector`).
//!
//! On wasm32 the crate is `no_std` with a panic handler that traps without formatting: with
//! `std`, its panic machinery keeps `core::fmt` (about 8 KB of wasm) alive behind every bounds
//! check. That is also why on wasm32 the tag takes the protocol crate without its `std` feature:
//! then it is `no_std` too and holds only the names and limits ([`wire`]). Natively it takes
//! `std` (for the time formatter), and the tests use its validation to check every batch the tag
//! writes.

#![cfg_attr(all(target_arch = "wasm32", not(test)), no_std)]

extern crate alloc;

pub mod engagement;
pub mod engine;
pub mod ids;
pub mod json;
pub mod queue;
pub mod retry;
pub mod scan;
pub mod session;
pub mod time;
pub mod wire;

#[cfg(target_arch = "wasm32")]
mod exports;
#[cfg(target_arch = "wasm32")]
mod heap;

#[cfg(all(test, not(target_arch = "wasm32")))]
mod engine_tests;

#[cfg(target_arch = "wasm32")]
use alloc::string::String;

#[cfg(target_arch = "wasm32")]
use crate::engine::Store;

#[cfg(all(target_arch = "wasm32", not(test)))]
#[panic_handler]
fn panic(_: &::core::panic::PanicInfo<'_>) -> ! {
    ::core::arch::wasm32::unreachable()
}

#[cfg(target_arch = "wasm32")]
#[global_allocator]
static ALLOCATOR: heap::Heap = heap::Heap::new();

/// Flags the loader passes to `exports::create`: it has storage for ids and the session
/// (store 0), storage for the retry queue (store 1), consent is required, or Global Privacy
/// Control or Do Not Track is on and the site asked to honour it.
pub const FLAG_IDS: u64 = 1;
pub const FLAG_QUEUE: u64 = 2;
pub const FLAG_REQUIRE_CONSENT: u64 = 4;
pub const FLAG_SIGNAL_OPT_OUT: u64 = 8;

// The loader's own imports (`js/src/imports.js`; the path is relative to the glue in
// `js/dist/pkg`, where esbuild resolves it).
#[cfg(target_arch = "wasm32")]
#[wasm_bindgen::prelude::wasm_bindgen(raw_module = "../../src/imports.js")]
extern "C" {
    // Storage: store 0 holds the ids and the session (cookies or localStorage), store 1 the
    // retry queue and the send in flight (localStorage, under keys of this tab's own). They catch every error (a blocked or full storage reads as
    // empty). Free functions taking a store number rather than JS objects: then neither the
    // wasm nor the glue needs an externref table.
    #[wasm_bindgen(js_name = g)]
    fn store_get(store: u32, key: &str) -> Option<String>;
    #[wasm_bindgen(js_name = s)]
    fn store_set(store: u32, key: &str, value: &str);
    #[wasm_bindgen(js_name = r)]
    fn store_remove(store: u32, key: &str);
    /// Hands the loader the body of the batch `exports::call` (`OP_NEXT`) is about to return
    /// the id of. (A `String` result would cost the wasm a shrinking copy and the glue a
    /// deferred free.)
    #[wasm_bindgen(js_name = b)]
    pub(crate) fn put_batch(body: &str);
    /// `new Date(ms).toISOString()` (see `time::rfc3339`).
    #[wasm_bindgen(js_name = t)]
    pub(crate) fn iso_time(ms: f64) -> String;
}

/// One of the loader's stores, by number.
#[cfg(target_arch = "wasm32")]
pub struct Host(u32);

#[cfg(target_arch = "wasm32")]
impl Store for Host {
    fn get(&self, key: &str) -> Option<String> {
        store_get(self.0, key)
    }
    fn set(&self, key: &str, value: &str) {
        store_set(self.0, key, value)
    }
    fn remove(&self, key: &str) {
        store_remove(self.0, key)
    }
}

/// Operations of `exports::call`. One entry point with the arguments packed in one string keeps
/// the glue (JS and wasm) to one function instead of one per command.
pub const OP_PAGE: u32 = 0;
pub const OP_TRACK: u32 = 1;
pub const OP_IDENTIFY: u32 = 2;
pub const OP_RESET: u32 = 3;
pub const OP_CONSENT: u32 = 4;
pub const OP_SIGNAL: u32 = 5;
pub const OP_PRODUCT: u32 = 6;
pub const OP_NEXT: u32 = 7;
pub const OP_DONE: u32 = 8;
pub const OP_ADOPT: u32 = 10;

/// Separates the string arguments of `exports::call` (it cannot occur in them: the loader strips
/// control characters from the strings it passes).
pub const SEP: u8 = 1;

/// The first 16 [`SEP`]-separated parts of `s` (missing ones empty).
pub fn args(s: &str) -> [&str; 16] {
    let mut out = [""; 16];
    for (slot, part) in out.iter_mut().zip(scan::parts(s, SEP)) {
        *slot = part;
    }
    out
}
