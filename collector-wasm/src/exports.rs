//! What the loader calls: free functions over the page's one tag, rather than an exported
//! class. A class costs a JS wrapper with a `FinalizationRegistry` in the glue and reference
//! counting in the wasm, for an object that lives as long as the page anyway.

#![allow(unsafe_code)] // `no_mangle` exports; strings handed over as (pointer, length)

use alloc::string::String;
use alloc::vec::Vec;
use core::cell::RefCell;

use crate::engine::{Config, Consent, Core, PageView};
use crate::{args, Host, FLAG_IDS, FLAG_QUEUE, FLAG_REQUIRE_CONSENT, FLAG_SIGNAL_OPT_OUT};
use crate::{OP_CONSENT, OP_IDENTIFY, OP_PAGE, OP_PRODUCT, OP_RESET, OP_SIGNAL, OP_TRACK};

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

/// Allocates `len` bytes for a string the loader copies in (UTF-8 from `TextEncoder`) and
/// passes to an export or returns from the `g` import; the wasm then owns it ([`take`]).
#[no_mangle]
pub extern "C" fn m(len: usize) -> *mut u8 {
    let mut v = Vec::<u8>::with_capacity(len);
    let p = v.as_mut_ptr();
    core::mem::forget(v);
    p
}

/// The string at `p`: `len` bytes of UTF-8 in a block [`m`] allocated for exactly `len`.
///
/// # Safety
/// `p` and `len` come from [`m`], filled by the loader with `TextEncoder` output.
pub(crate) unsafe fn take(p: *mut u8, len: usize) -> String {
    // SAFETY: see above: allocated by `Vec::with_capacity(len)`, valid UTF-8.
    unsafe { String::from_raw_parts(p, len, len) }
}

/// Creates the tag (once; later calls change nothing). Times are Unix milliseconds from
/// `Date.now()`. `cfg`: write key, user agent and locale, separated by U+0001. `flags`:
/// `FLAG_*`; without [`FLAG_IDS`] or [`FLAG_QUEUE`] that state is kept in memory only
/// (cookieless mode, blocked storage). `s0..s3`: random u32s from `crypto.getRandomValues`.
#[no_mangle]
#[allow(clippy::too_many_arguments)]
pub extern "C" fn create(
    cfg: *mut u8,
    cfg_len: usize,
    flags: u32,
    flush_interval_ms: u32,
    s0: u32,
    s1: u32,
    s2: u32,
    s3: u32,
    now: f64,
) {
    // SAFETY: the loader passes a string it copied in through `m`.
    let cfg = unsafe { take(cfg, cfg_len) };
    let Ok(mut tag) = TAG.0.try_borrow_mut() else {
        return;
    };
    if tag.is_some() {
        return;
    }
    let consent = if flags & FLAG_SIGNAL_OPT_OUT != 0 {
        Consent::Denied
    } else if flags & FLAG_REQUIRE_CONSENT != 0 {
        Consent::Pending
    } else {
        Consent::Granted
    };
    let ids = (flags & FLAG_IDS != 0).then_some(Host(0));
    let queue = (flags & FLAG_QUEUE != 0).then_some(Host(1));
    let [write_key, user_agent, locale, ..] = args(&cfg);
    let cfg = Config {
        write_key: String::from(write_key),
        consent,
        flush_interval_ms: u64::from(flush_interval_ms),
        user_agent: String::from(user_agent),
        locale: String::from(locale),
        seed: [s0, s1, s2, s3],
    };
    // The old value is `None` (checked above): forgetting it rather than dropping it spares the
    // wasm the drop code of a whole `Core`, which nothing else needs (the tag lives as long as
    // the page).
    core::mem::forget(tag.replace(Core::new(cfg, ids, queue, now as u64)));
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
/// Returns milliseconds until [`next`] has a batch, or -1.
#[no_mangle]
pub extern "C" fn call(op: u32, ts: f64, n: u32, x: f64, args: *mut u8, args_len: usize) -> f64 {
    // SAFETY: the loader passes a string it copied in through `m`.
    let args = unsafe { take(args, args_len) };
    let ts = ts as u64;
    let [a, b, c, d, e, f, g, h, u0, u1, u2, u3, u4, ..] = crate::args(&args);
    with(|core| {
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
        wake(core, ts)
    })
    .unwrap_or(-1.0)
}

/// The id of a batch to POST, its body handed over just before through the loader's `b`
/// import, or 0 for none. (Batch ids count from 1; they would wrap to 0 only after 2^32
/// batches.)
#[no_mangle]
pub extern "C" fn next(now: f64, force: bool) -> u32 {
    with(|core| {
        let body = core.next(now as u64, force);
        if body.is_empty() {
            return 0;
        }
        crate::put_batch(&body);
        core.last_id
    })
    .unwrap_or(0)
}

/// Outcome of batch `id`: HTTP status or 0 for a network error, and the `Retry-After` in ms
/// (0 when absent). Returns what [`call`] returns.
#[no_mangle]
pub extern "C" fn done(now: f64, id: u32, status: u32, retry_after_ms: f64) -> f64 {
    with(|core| {
        core.done(now as u64, id, status, retry_after_ms as u64);
        wake(core, now as u64)
    })
    .unwrap_or(-1.0)
}

fn wake(core: &Core<Host>, now: u64) -> f64 {
    core.wake(now).map_or(-1.0, |d| d as f64)
}
