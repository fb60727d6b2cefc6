//! The Waymark tag: the tracking module the `js/` loader runs in the browser.
//!
//! The loader (hand-written JS, small) owns what is cheap in JS: DOM listeners, timers and the
//! network calls (`fetch` with `keepalive`, `sendBeacon`). It hands compact calls to [`Tag`],
//! which owns everything else ([`engine::Core`]): anonymous and user ids, the 30-minute session,
//! consent, event JSON in the protocol crate's wire format (UUIDv7 `messageId`), batching, the
//! retry queue in localStorage with backoff, and engaged time.
//!
//! Size matters more than anything here (12 KB gzipped for wasm + JS): no serde, no
//! `core::fmt` (no `format!`, no `{}`), integers written by hand, no web-sys (three storage
//! imports of our own), one `call` entry point, a small allocator. Everything but [`Tag`] and the
//! storage adapter is plain Rust tested natively (`cargo test -p waymark-collector`).
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

#[cfg(test)]
mod engine_tests;

use alloc::boxed::Box;
use alloc::string::String;

use wasm_bindgen::prelude::*;

use crate::engine::{Config, Consent, Core, PageView, Store};

#[cfg(all(target_arch = "wasm32", not(test)))]
#[panic_handler]
fn panic(_: &::core::panic::PanicInfo<'_>) -> ! {
    ::core::arch::wasm32::unreachable()
}

#[cfg(target_arch = "wasm32")]
#[global_allocator]
static ALLOCATOR: lol_alloc::LockedAllocator<lol_alloc::FreeListAllocator> =
    lol_alloc::LockedAllocator::new(lol_alloc::FreeListAllocator::new());

/// Flags the loader passes to [`Tag::new`].
pub const FLAG_REQUIRE_CONSENT: u32 = 4;
/// Global Privacy Control or Do Not Track is on and the site asked to honour it.
pub const FLAG_SIGNAL_OPT_OUT: u32 = 8;

#[wasm_bindgen]
extern "C" {
    /// Storage the loader provides: `{g(key), s(key, value), r(key)}` over localStorage or
    /// first-party cookies. The loader's methods catch every error (a blocked or full storage
    /// reads as empty). Declared here rather than through web-sys: web-sys brings js-sys, whose
    /// exported closure and futures shims stay in the wasm and glue whether used or not
    /// (js/README.md, "Size").
    pub type JsStore;
    #[wasm_bindgen(method, js_name = g)]
    fn get(this: &JsStore, key: &str) -> Option<String>;
    #[wasm_bindgen(method, js_name = s)]
    fn set(this: &JsStore, key: &str, value: &str);
    #[wasm_bindgen(method, js_name = r)]
    fn remove(this: &JsStore, key: &str);
}

struct Host(JsStore);

impl Store for Host {
    fn get(&self, key: &str) -> Option<String> {
        self.0.get(key)
    }
    fn set(&self, key: &str, value: &str) {
        self.0.set(key, value);
    }
    fn remove(&self, key: &str) {
        self.0.remove(key);
    }
}

/// Operations of [`Tag::call`]. One entry point with the arguments packed in one string keeps
/// the wasm-bindgen glue (JS and wasm) to a few functions instead of one per command.
pub const OP_PAGE: u32 = 0;
pub const OP_TRACK: u32 = 1;
pub const OP_IDENTIFY: u32 = 2;
pub const OP_RESET: u32 = 3;
pub const OP_CONSENT: u32 = 4;
pub const OP_SIGNAL: u32 = 5;
pub const OP_PRODUCT: u32 = 6;

/// Separates the string arguments of [`Tag::call`] (it cannot occur in them: the loader strips
/// control characters from the strings it passes).
pub const SEP: u8 = 1;

/// The tag, as the loader sees it. Times are Unix milliseconds from `Date.now()`.
#[wasm_bindgen]
pub struct Tag(Core);

#[wasm_bindgen]
impl Tag {
    /// `cfg`: write key, user agent and locale, separated by U+0001. `ids`: where ids and the
    /// session live (cookies or localStorage), `queue`: where the retry queue lives
    /// (localStorage); `null` for none (cookieless mode, blocked storage). `s0..s3`: random
    /// u32s from `crypto.getRandomValues`.
    #[wasm_bindgen(constructor)]
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        cfg: &str,
        flags: u32,
        flush_interval_ms: u32,
        ids: Option<JsStore>,
        queue: Option<JsStore>,
        s0: u32,
        s1: u32,
        s2: u32,
        s3: u32,
        now: f64,
    ) -> Tag {
        let consent = if flags & FLAG_SIGNAL_OPT_OUT != 0 {
            Consent::Denied
        } else if flags & FLAG_REQUIRE_CONSENT != 0 {
            Consent::Pending
        } else {
            Consent::Granted
        };
        let ids = ids.map(|s| Box::new(Host(s)) as Box<dyn Store>);
        let queue = queue.map(|s| Box::new(Host(s)) as Box<dyn Store>);
        let [write_key, user_agent, locale, ..] = args(cfg);
        let cfg = Config {
            write_key: String::from(write_key),
            consent,
            flush_interval_ms: u64::from(flush_interval_ms),
            user_agent: String::from(user_agent),
            locale: String::from(locale),
            seed: [s0, s1, s2, s3],
        };
        Tag(Core::new(cfg, ids, queue, now as u64))
    }

    /// Runs command `op` at time `ts`:
    /// - `OP_PAGE`: `args` href, path, search, title, referrer, name, properties JSON, product
    ///   id, then `utm_source`, `utm_medium`, `utm_campaign`, `utm_term`, `utm_content`; `n` bit 0
    ///   visible, bit 1 focused.
    /// - `OP_TRACK`: `args` name, properties JSON, product id (for `Product Viewed`).
    /// - `OP_IDENTIFY`: `args` user id, traits JSON.
    /// - `OP_RESET`; `OP_CONSENT`: `n` 1 granted, 0 denied.
    /// - `OP_SIGNAL`: `n` 0 activity, 1 visible, 2 hidden, 3 focus, 4 blur, 5 scroll depth `x`
    ///   percent, 6 leave (report engagement), 7 back online.
    /// - `OP_PRODUCT`: `args` the product id of the current page view.
    ///
    /// Returns milliseconds until [`Tag::next`] has a batch, or -1.
    pub fn call(&mut self, op: u32, ts: f64, n: u32, x: f64, args: &str) -> f64 {
        let ts = ts as u64;
        let [a, b, c, d, e, f, g, h, u0, u1, u2, u3, u4, ..] = crate::args(args);
        let core = &mut self.0;
        match op {
            OP_PAGE => {
                let page = PageView {
                    href: a,
                    path: b,
                    search: c,
                    title: d,
                    referrer: e,
                    name: f,
                    props: g,
                    product: h,
                    utm: [u0, u1, u2, u3, u4],
                };
                core.page(ts, &page, n & 1 != 0, n & 2 != 0)
            }
            OP_TRACK => core.track(ts, a, b, c),
            OP_IDENTIFY => core.identify(ts, a, b),
            OP_RESET => core.reset(ts),
            OP_CONSENT => core.consent(ts, n != 0),
            OP_SIGNAL => core.signal(ts, n, x as u32),
            OP_PRODUCT => core.product(a),
            _ => {}
        }
        self.wake(ts)
    }

    /// A batch to POST, as `<id><body>` (the body starts at the first `{`), or "".
    pub fn next(&mut self, now: f64, force: bool) -> String {
        let body = self.0.next(now as u64, force);
        if body.is_empty() {
            return body;
        }
        let mut out = String::with_capacity(body.len() + 10);
        json::uint(&mut out, u64::from(self.0.last_id));
        json::put(&mut out, &body);
        out
    }

    /// Outcome of batch `id`: HTTP status or 0 for a network error, and the `Retry-After` in
    /// ms (0 when absent). Returns what [`Tag::call`] returns.
    pub fn done(&mut self, now: f64, id: u32, status: u32, retry_after_ms: f64) -> f64 {
        self.0.done(now as u64, id, status, retry_after_ms as u64);
        self.wake(now as u64)
    }
}

impl Tag {
    fn wake(&self, now: u64) -> f64 {
        self.0.wake(now).map_or(-1.0, |d| d as f64)
    }
}

/// The first 16 [`SEP`]-separated parts of `s` (missing ones empty).
pub fn args(s: &str) -> [&str; 16] {
    let mut out = [""; 16];
    for (slot, part) in out.iter_mut().zip(url::parts(s, SEP)) {
        *slot = part;
    }
    out
}
