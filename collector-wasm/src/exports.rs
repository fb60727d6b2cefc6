//! What the loader calls: free functions over the page's one tag, rather than an exported
//! class. A class costs a JS wrapper with a `FinalizationRegistry` in the glue and reference
//! counting in the wasm, for an object that lives as long as the page anyway.

use alloc::string::String;
use core::cell::RefCell;

use wasm_bindgen::prelude::*;

use crate::engine::{Config, Consent, Core, PageView};
use crate::scan::parse_u64;
use crate::{args, Host, FLAG_IDS, FLAG_QUEUE, FLAG_REQUIRE_CONSENT, FLAG_SIGNAL_OPT_OUT};
use crate::{OP_ADOPT, OP_CONSENT, OP_DONE, OP_IDENTIFY, OP_NEXT, OP_PAGE, OP_PRODUCT, OP_RESET};
use crate::{OP_SIGNAL, OP_TRACK};

struct Global(RefCell<Option<Core<Host>>>);

// SAFETY: the tag is built for wasm32 without the `atomics` feature (this module is compiled
// for wasm32 only): there is one thread, so the static is never shared between threads.
#[allow(unsafe_code)]
unsafe impl Sync for Global {}

static TAG: Global = Global(RefCell::new(None));

/// Runs `f` on the tag; `None` before [`create`] (or if re-entered, which cannot happen:
/// nothing the tag calls calls back into the module). Never panics.
fn with<R>(f: impl FnOnce(&mut Core<Host>) -> R) -> Option<R> {
    TAG.0.try_borrow_mut().ok()?.as_mut().map(f)
}

/// Creates the tag (once; later calls change nothing). `cfg`: write key, user agent, locale,
/// then in decimal `FLAG_*`, the flush interval in ms, four random u32s from
/// `crypto.getRandomValues` and the time (Unix ms, `Date.now()`), separated by U+0001 (numbers
/// in the one string rather than as arguments: less glue). Without [`FLAG_IDS`] or
/// [`FLAG_QUEUE`] that state is kept in memory only (cookieless mode, blocked storage).
#[wasm_bindgen]
pub fn create(cfg: &str) {
    let mut tag = match TAG.0.try_borrow_mut() {
        Ok(tag) if tag.is_none() => tag,
        _ => return,
    };
    let [write_key, user_agent, locale, flags, flush, s0, s1, s2, s3, now, ..] = args(cfg);
    let num = |s: &str| parse_u64(s).unwrap_or(0);
    let flags = num(flags);
    let ids = (flags & FLAG_IDS != 0).then_some(Host(0));
    let queue = (flags & FLAG_QUEUE != 0).then_some(Host(1));
    let consent = if flags & FLAG_SIGNAL_OPT_OUT != 0 {
        Consent::Denied
    } else if flags & FLAG_REQUIRE_CONSENT != 0 {
        Consent::Pending
    } else {
        Consent::Granted
    };
    let cfg = Config {
        write_key: String::from(write_key),
        consent,
        flush_interval_ms: num(flush),
        user_agent: String::from(user_agent),
        locale: String::from(locale),
        seed: [
            num(s0) as u32,
            num(s1) as u32,
            num(s2) as u32,
            num(s3) as u32,
        ],
    };
    // The old value is `None` (checked above): forgetting it rather than dropping it spares the
    // wasm the drop code of a whole `Core`, which nothing else needs (the tag lives as long as
    // the page).
    let core = Core::new(cfg, ids, queue, num(now));
    core::mem::forget(tag.replace(core));
}

/// Runs command `op` at time `ts`:
/// - `OP_PAGE`: `args` the page JSON, the campaign JSON, name, properties JSON, product id
///   (see [`PageView`]); `n` bit 0 visible, bit 1 focused.
/// - `OP_TRACK`: `args` name, properties JSON, product id (for `Product Viewed`).
/// - `OP_IDENTIFY`: `args` user id, traits JSON.
/// - `OP_RESET`; `OP_CONSENT`: `n` 1 granted, 0 denied.
/// - `OP_SIGNAL`: `n` 0 activity, 1 visible, 2 hidden, 3 focus, 4 blur, 5 scroll depth `x`
///   percent, 6 leave (report engagement), 7 back online.
/// - `OP_PRODUCT`: `args` the product id of the current page view.
/// - `OP_NEXT`: a batch to POST, `n` 1 when forced (the page is being hidden or left:
///   everything not yet sent). Returns its id, its body handed over just before through the
///   loader's `b` import, or 0 for none. (Batch ids count from 1; they would wrap to 0 only
///   after 2^32 batches.)
/// - `OP_DONE`: outcome of batch `n`: HTTP status `m` or 0 for a network error, and the
///   `Retry-After` in ms `x` (0 when absent).
/// - `OP_ADOPT`: `args` what a tab that is gone left under one of its keys (its retry queue or
///   its send in flight), into this tab's queue (see [`Core::adopt`]); returns -2 when it is
///   not taken (consent pending), and the loader then leaves the key.
///
/// Returns milliseconds until `OP_NEXT` has a batch, or -1 (any other op, such as 9, does
/// nothing but answer that). One entry point for everything keeps the glue, JS and wasm, to
/// one function.
#[wasm_bindgen]
pub fn call(op: u32, ts: f64, n: u32, m: u32, x: f64, args: &str) -> f64 {
    let ts = ts as u64;
    let [a, b, c, d, e, ..] = crate::args(args);
    with(|core| {
        match op {
            OP_PAGE => {
                let page = PageView {
                    page: a,
                    campaign: b,
                    name: c,
                    props: d,
                    product: e,
                };
                core.page(ts, &page, n & 1 != 0, n & 2 != 0)
            }
            OP_TRACK => core.track(ts, a, b, c),
            OP_IDENTIFY => core.identify(ts, a, b),
            OP_RESET => core.reset(ts),
            OP_CONSENT => core.consent(ts, n != 0),
            OP_SIGNAL => core.signal(ts, n, x as u32),
            OP_PRODUCT => core.product(a),
            OP_NEXT => {
                let body = core.next(ts, n != 0);
                if body.is_empty() {
                    return 0.0;
                }
                crate::put_batch(&body);
                return f64::from(core.last_id);
            }
            OP_DONE => core.done(ts, n, m, x as u64),
            // (Runs in the guard: when the events were taken, the answer is the usual one.)
            OP_ADOPT if !core.adopt(a) => return -2.0,
            _ => {}
        }
        core.wake(ts).map_or(-1.0, |d| d as f64)
    })
    .unwrap_or(-1.0)
}
