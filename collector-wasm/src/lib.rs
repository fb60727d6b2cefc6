//! The Waymark tag: the tracking module the `js/` loader runs in the browser.
//!
//! The loader (hand-written JS, small) owns what is cheap in JS: DOM listeners, timers and the
//! network calls (`fetch` with `keepalive`, `sendBeacon`). It hands compact calls to the
//! exported functions (`exports.rs`), which own everything else ([`engine::Core`]): anonymous
//! and user ids, the 30-minute session, consent, event JSON in the protocol crate's wire format
//! (UUIDv7 `messageId`), batching, the retry queue in localStorage with backoff, and engaged
//! time.
//!
//! Size matters more than anything here (12 KB gzipped for wasm + JS): no serde, no
//! `core::fmt` (no `format!`, no `{}`), integers written by hand, no web-sys (four imports of
//! our own, `js/src/imports.js`), one `call` entry point, a small allocator (`heap.rs`), every
//! list of events one string ([`queue::Lines`]). Everything but the exports, the imports and
//! the allocator is plain Rust tested natively (`cargo test -p waymark-collector`).
//!
//! On wasm32 the crate is `no_std` with a panic handler that traps without formatting: with
//! `std`, its panic machinery keeps `core::fmt` (about 8 KB of wasm) alive behind every bounds
//! check. That is also why the tag takes the protocol crate without its `std` feature: then it
//! is `no_std` too and holds only the names and limits ([`wire`]); the tests use its validation
//! to check every batch the tag writes.

#![cfg_attr(all(target_arch = "wasm32", not(test)), no_std)]

extern crate alloc;

pub mod engine;
pub mod ids;
pub mod json;
pub mod policy;
pub mod queue;
pub mod time;
pub mod url;
pub mod wire;

#[cfg(target_arch = "wasm32")]
mod exports;
#[cfg(target_arch = "wasm32")]
mod heap;

#[cfg(test)]
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

/// Flags the loader passes to `exports::create`: it has storage for ids and the session,
/// storage for the retry queue, consent is required, or Global Privacy Control or Do Not Track
/// is on and the site asked to honour it.
pub const FLAG_IDS: u32 = 1;
pub const FLAG_QUEUE: u32 = 2;
pub const FLAG_REQUIRE_CONSENT: u32 = 4;
pub const FLAG_SIGNAL_OPT_OUT: u32 = 8;

// What the loader provides (`js/src/imports.js`, module `w`): storage, store 0 holding the ids
// and the session (cookies or localStorage), store 1 the retry queue (localStorage). They catch
// every error (a blocked or full storage reads as empty). Plain wasm imports taking a store
// number and `(pointer, length)` strings: no wasm-bindgen glue, no externref table.
#[cfg(target_arch = "wasm32")]
#[allow(unsafe_code)]
#[link(wasm_import_module = "w")]
extern "C" {
    /// Writes `[pointer, length]` of the value, allocated with `exports::m`, to `out`; leaves
    /// it zero when there is none.
    fn g(store: u32, key: *const u8, key_len: usize, out: *mut usize);
    fn s(store: u32, key: *const u8, key_len: usize, value: *const u8, value_len: usize);
    fn r(store: u32, key: *const u8, key_len: usize);
    /// Hands the loader the body of the batch `exports::next` is about to return the id of.
    fn b(body: *const u8, len: usize);
}

/// Hands the loader the body of the batch `exports::next` is about to return the id of.
#[cfg(target_arch = "wasm32")]
#[allow(unsafe_code)]
pub(crate) fn put_batch(body: &str) {
    // SAFETY: the loader only reads `len` bytes at `body` during the call.
    unsafe { b(body.as_ptr(), body.len()) }
}

/// One of the loader's stores, by number.
#[cfg(target_arch = "wasm32")]
pub struct Host(u32);

#[cfg(target_arch = "wasm32")]
#[allow(unsafe_code)]
impl Store for Host {
    fn get(&self, key: &str) -> Option<String> {
        let mut out = [0usize; 2];
        // SAFETY: the loader reads the key during the call and writes two words to `out`: a
        // block `exports::m` allocated for it and the UTF-8 it copied there (or leaves zeros).
        unsafe {
            g(self.0, key.as_ptr(), key.len(), out.as_mut_ptr());
            (out[0] != 0).then(|| exports::take(out[0] as *mut u8, out[1]))
        }
    }
    fn set(&self, key: &str, value: &str) {
        // SAFETY: the loader only reads the two strings during the call.
        unsafe { s(self.0, key.as_ptr(), key.len(), value.as_ptr(), value.len()) }
    }
    fn remove(&self, key: &str) {
        // SAFETY: as above.
        unsafe { r(self.0, key.as_ptr(), key.len()) }
    }
}

/// Operations of `exports::call`. One entry point with the arguments packed in one string keeps
/// the loader's glue to a few functions instead of one per command.
pub const OP_PAGE: u32 = 0;
pub const OP_TRACK: u32 = 1;
pub const OP_IDENTIFY: u32 = 2;
pub const OP_RESET: u32 = 3;
pub const OP_CONSENT: u32 = 4;
pub const OP_SIGNAL: u32 = 5;
pub const OP_PRODUCT: u32 = 6;

/// Separates the string arguments of `exports::call` (it cannot occur in them: the loader strips
/// control characters from the strings it passes).
pub const SEP: u8 = 1;

/// The first 16 [`SEP`]-separated parts of `s` (missing ones empty).
pub fn args(s: &str) -> [&str; 16] {
    let mut out = [""; 16];
    for (slot, part) in out.iter_mut().zip(url::parts(s, SEP)) {
        *slot = part;
    }
    out
}
