// The Waymark tag loader: an ES module, loaded by a one-line async script tag (after the inline
// stub in snippet.html) or imported from npm. It owns what is cheap in JS (DOM listeners, timers,
// fetch and sendBeacon, storage access) and hands compact calls to the wasm module, which owns
// ids, sessions, consent, event JSON, batching and the retry queue (collector-wasm/).
//
// Nothing here may throw into the host page: every entry point is wrapped, storage adapters
// swallow their errors (imports.js), and a missing or broken API (localStorage, sendBeacon,
// fetch) degrades to the next best thing.
//
// The glue is wasm-bindgen's (`--target bundler`, built into dist/pkg): it exports `create` and
// `call`, the functions the wasm module imports, and `__wbg_set_wasm`; imports.js has the
// module's own imports (storage, the batch body, times).
import * as glue from '../dist/pkg/waymark_collector_bg.js'
import { batch, g, noop, r, stores, tab } from './imports.js'

const { create, call: tagCall } = glue

const w = globalThis
const d = w.document
const nav = w.navigator || {}
const loc = w.location
const now = Date.now
const CLICKABLE = 'a,button,[data-waymark-event],input[type=submit],input[type=button]'
// `call` operations (collector-wasm/src/lib.rs, `OP_*`), written as numbers with a comment:
// esbuild keeps named constants as variables. 0 page, 1 track, 2 identify, 3 reset, 4 consent,
// 5 signal, 6 product, 7 next batch, 8 batch done, 10 adopt another tab's queue.

let tag // init ran
let ready // the wasm module is instantiated
let queue = [] // [ts, command, args] before ready, or before init
let endpoint
let timer
let lastActive = 0
let lastUrl = ''
let referrer = d ? d.referrer : ''
let scrolled = 0

const safe = (f) => (...a) => {
  try {
    return f(...a)
  } catch (e) {}
}
const json = (o) => {
  try {
    return o && typeof o == 'object' ? JSON.stringify(o) : ''
  } catch (e) {
    return ''
  }
}
// Storage for the wasm module (`imports.js` catches what these throw): `localStorage` itself
// when it works, ...
function localStore() {
  try {
    const s = w.localStorage
    s.setItem('wm_t', '1')
    s.removeItem('wm_t')
    return s
  } catch (e) {
    return null
  }
}

// ... or first-party cookies behind the same three methods.
function cookieStore(domain) {
  const attrs = ';path=/;samesite=lax' + (domain ? ';domain=' + domain : '') + (loc.protocol == 'https:' ? ';secure' : '')
  return {
    getItem: (k) => {
      const m = d.cookie.match('(?:^|; *)' + k + '=([^;]*)')
      return m ? decodeURIComponent(m[1]) : null
    },
    setItem: (k, v) => (d.cookie = k + '=' + encodeURIComponent(v) + attrs + ';max-age=31536000'),
    removeItem: (k) => (d.cookie = k + '=' + attrs + ';max-age=0'),
  }
}

// ---- delivery ------------------------------------------------------------------------------

// `wait`: ms until the wasm module has a batch to send (-1: nothing to do). One timer at a
// time, moved only when something is due sooner (not one setTimeout per event).
let due = Infinity
function schedule(wait) {
  const at = now() + wait
  if (wait < 0 || (timer && at >= due)) return
  clearTimeout(timer)
  due = at
  timer = setTimeout(
    safe(() => {
      timer = 0
      due = Infinity
      pump()
    }),
    wait,
  )
}

// Commands to the wasm module; string arguments are joined with U+0001. (A number argument
// left undefined arrives as 0: the glue passes NaN, which an i32 parameter takes as 0 and Rust's
// `as` casts turn into 0; so do negative numbers for the unsigned ones.)
function call(op, ts, n, v, ...args) {
  schedule(tagCall(op, ts, n, 0, v, args.map((a) => String(a).replace(/\x01/g, '')).join('\x01')))
}
const signal = (n, x) => call(5 /* SIGNAL */, now(), n, x)

// Sends one batch; `force`: everything not yet sent, now, the page is being hidden or left.
function pump(force) {
  force || adopt()
  let id
  while ((id = tagCall(7 /* NEXT */, now(), force, 0, 0, '')) > 0) {
    send(batch, id, force)
    if (!force) return
  }
  // Nothing sent: ask when to come back (operation 9 does nothing but answer that).
  schedule(tagCall(9, now(), 0, 0, 0, ''))
}

const done = safe((id, status, retryAfter) => {
  const ms = retryAfter && (+retryAfter >= 0 ? retryAfter * 1000 : Date.parse(retryAfter) - now())
  schedule(tagCall(8 /* DONE */, now(), id, status, ms, ''))
})

function send(body, id, beacon) {
  // Offline (as far as the browser knows): into the retry queue now, rather than into a beacon
  // that would be lost, or a fetch whose failure a closing page would not see.
  if (nav.onLine == 0) return done(id, 0)
  if (beacon) {
    try {
      if (nav.sendBeacon(endpoint, body)) return done(id, 200)
    } catch (e) {}
  }
  try {
    // A string body goes as text/plain: a "simple" request, no CORS preflight. `keepalive`
    // (to outlive the page) shares a 64 KiB quota with beacons that frees up only some time
    // after each request ends: large batches sent while the page is visible go without it.
    // Cookies go only to a same-origin endpoint (the edge prefix or the ingest server on the
    // site's own domain), which reads nothing from them but an email click's stitch marker;
    // a cross-origin endpoint gets none.
    const keepalive = beacon || body.length < 16384
    fetch(endpoint, { method: 'POST', body, keepalive, credentials: 'same-origin' }).then(
      (r) => done(id, r.status, r.headers.get('retry-after')),
      () => done(id, 0),
    )
  } catch (e) {
    done(id, 0)
  }
}

// Takes over the retry queues and sends in flight of tabs that are gone (`wm_q<tab>`,
// `wm_f<tab>`; `wm_q`, `wm_f` from tags before per-tab keys): both keys of such a tab are read
// (store 2: localStorage with its keys as they are) into this tab's queue (`OP_ADOPT`), then
// removed; while consent is pending they stay; denied, their events are dropped and they are
// removed. A tab holds the Web Lock `wm<tab>` while it has keys (imports.js), so when this tab
// gets that lock the other is gone, and no third tab is taking the same keys meanwhile. Run on
// load, when the browser is back online, on consent and before each ordinary send. Without Web
// Locks (plain http, old browsers) there is no telling whether a tab is gone: keys are taken on
// load only (`load`), and an event a tab still had in flight may then be sent twice (the server
// drops it by messageId).
function adopt(load) {
  // (`for in` over localStorage: its keys, and its methods' names, which do not match.)
  for (const k in stores[2]) {
    const id = k.slice(4)
    // Both keys of the tab at once, each event once: a page that went away between two writes
    // can have left the same events under both. (A missing key reads as a line `null`, which
    // the module skips like any line that is not an event.)
    const q = 'wm_q' + id
    const f = 'wm_f' + id
    const take = (lock) => {
      const v = lock && [...new Set((g(2, q) + '\n' + g(2, f)).split('\n'))].join('\n')
      if (v && tagCall(10 /* ADOPT */, now(), 0, 0, 0, v) > -2) r(2, q), r(2, f), pump()
    }
    if (/^wm_[qf]/.test(k) && id != tab) {
      nav.locks ? nav.locks.request('wm' + id, { ifAvailable: true }, take).catch(noop) : take(load)
    }
  }
}

// ---- page views, engagement, clicks ---------------------------------------------------------

function page(ts, name, props) {
  lastUrl = loc.href
  const el = d.querySelector('[data-waymark-product]')
  const state = (d.visibilityState == 'hidden' ? 0 : 1) | (d.hasFocus() ? 2 : 0)
  // `context.page` and `context.campaign` (from the UTM parameters), empty members left out.
  const ctx = { url: lastUrl, path: loc.pathname, search: loc.search, title: d.title, referrer }
  const utm = {}
  const q = new URLSearchParams(loc.search)
  for (const k of ['source', 'medium', 'campaign', 'term', 'content']) utm[k == 'campaign' ? 'name' : k] = q.get('utm_' + k)
  for (const o of [ctx, utm]) for (const k in o) if (!o[k]) delete o[k]
  call(
    0 /* PAGE */,
    ts,
    state,
    0,
    JSON.stringify(ctx),
    JSON.stringify(utm),
    name || '',
    json(props),
    el ? el.getAttribute('data-waymark-product') : '',
  )
  referrer = lastUrl
  scrolled = 0
  scroll()
}

function route() {
  const ts = now()
  // Let the app update the title first.
  setTimeout(
    safe(() => {
      if (loc.href.split('#')[0] != lastUrl.split('#')[0]) page(ts)
    }),
  )
}

function scroll() {
  const h = Math.max(d.documentElement.scrollHeight, d.body ? d.body.scrollHeight : 0)
  const pct = h ? Math.min(100, Math.round(((w.scrollY + w.innerHeight) / h) * 100)) : 100
  if (pct > scrolled) signal(5, (scrolled = pct))
}

function leave() {
  // A product rendered after the page view (SPA) still gets its engaged time.
  const el = d.querySelector('[data-waymark-product]')
  if (el) call(6 /* PRODUCT */, now(), 0, 0, el.getAttribute('data-waymark-product'))
  signal(6)
  pump(true)
}

function click(e) {
  const el = e.target && e.target.closest && e.target.closest(CLICKABLE)
  if (!el) return
  const name = el.getAttribute('data-waymark-event')
  const link = el.tagName == 'A'
  const p = { kind: name != null ? 'element' : link ? 'link' : 'button' }
  // Never form field values: an input's text is its value, so inputs send none.
  if (el.tagName != 'INPUT') {
    const text = (el.textContent || '').replace(/\s+/g, ' ').trim().slice(0, 100)
    if (text) p.text = text
  }
  if (link && el.href) {
    p.href = el.href
    p.outbound = el.host != loc.host
  }
  if (el.id) p.id = el.id
  if (name) p.name = name
  call(1 /* TRACK */, now(), 0, 0, '$click', JSON.stringify(p), '')
}

function listen(target, type, f, opts) {
  target.addEventListener(type, safe(f), opts)
}

function autocapture() {
  for (const m of ['pushState', 'replaceState']) {
    const orig = history[m]
    history[m] = function () {
      const r = orig.apply(this, arguments)
      safe(route)()
      return r
    }
  }
  listen(w, 'popstate', route)
  listen(d, 'click', click, true)
  listen(d, 'visibilitychange', () => {
    if (d.visibilityState == 'hidden') {
      signal(2)
      leave()
    } else signal(1)
  })
  listen(w, 'pagehide', leave)
  listen(w, 'focus', () => signal(3))
  listen(w, 'blur', () => signal(4))
  listen(w, 'online', () => {
    signal(7)
    adopt()
  })
  listen(w, 'scroll', scroll, { passive: true })
  const active = () => {
    const t = now()
    if (t - lastActive > 1000) call(5 /* SIGNAL */, (lastActive = t), 0)
  }
  for (const t of ['mousemove', 'keydown', 'pointerdown', 'touchstart', 'wheel']) {
    listen(w, t, active, { passive: true, capture: true })
  }
}

// ---- the API --------------------------------------------------------------------------------

const api = {
  init(ts, o) {
    if (tag) return
    o = o || {}
    endpoint = o.endpoint || '/v1/batch'
    const cookieless = o.storage == 'none'
    const ls = cookieless ? null : localStore()
    const ids = cookieless ? null : o.storage == 'cookie' ? cookieStore(o.cookieDomain) : ls
    const optOut = o.honorSignals && (nav.globalPrivacyControl || nav.doNotTrack == '1' || w.doNotTrack == '1')
    // (Every browser with WebAssembly has it, on plain http too.)
    const seed = crypto.getRandomValues(new Uint32Array(4))
    stores[0] = ids
    stores[1] = stores[2] = ls
    create(
      [
        // (`join` writes undefined as an empty string.)
        o.site,
        nav.userAgent,
        nav.language,
        (ids ? 1 : 0) | (ls ? 2 : 0) | (o.consent == 'pending' ? 4 : 0) | (optOut ? 8 : 0),
        o.flushInterval >= 0 ? o.flushInterval | 0 : 1000,
        ...seed,
        ts,
      ].join('\x01'),
    )
    tag = 1
    // Connects this page to the browser's lock manager now, so that a lock it asks for later
    // is not held up behind that (imports.js, `s`).
    nav.locks?.query().catch(noop)
    adopt(1)
    if (o.autocapture !== false) autocapture()
    if (o.pageview !== false) page(ts)
  },
  track(ts, name, props) {
    const pid = props && props.product_id
    call(1 /* TRACK */, ts, 0, 0, name || '', json(props), name == 'Product Viewed' && pid != null ? pid : '')
  },
  identify(ts, id, traits) {
    if (id && typeof id == 'object') [id, traits] = ['', id]
    call(2 /* IDENTIFY */, ts, 0, 0, id == null ? '' : id, json(traits))
  },
  page(ts, name, props) {
    if (name && typeof name == 'object') [name, props] = ['', name]
    page(ts, name, props)
  },
  consent(ts, v) {
    call(4 /* CONSENT */, ts, v == 'granted' ? 1 : 0)
    adopt()
  },
  reset(ts) {
    call(3 /* RESET */, ts)
  },
}

function run(ts, cmd, args) {
  if (!tag && cmd != 'init') return queue.push([ts, cmd, args])
  const f = api[cmd]
  if (f) f(ts, ...args)
  if (cmd == 'init' && tag) replay()
}

// Runs the calls queued so far, in order.
function replay() {
  const calls = queue
  queue = []
  for (const [t, c, a] of calls) safe(run)(t, c, a)
}

/** `waymark('init', {...})`, `waymark('track', name, props)`, ... (see waymark.d.ts). */
export function waymark(cmd, ...args) {
  const ts = now()
  if (ready) safe(run)(ts, cmd, args)
  else queue.push([ts, cmd, args])
}

// Calls queued by the inline stub, in order, with their original timestamps.
const stub = w.waymark
if (stub && stub.q) for (const [t, a] of stub.q) queue.push([t, a[0], [].slice.call(a, 1)])
if (d) {
  w.waymark = waymark
  // Instantiated here with the glue as its imports (what wasm-bindgen's bundler output does
  // through a bundler's wasm import): no loader code from the glue.
  fetch(new URL('waymark.wasm', import.meta.url))
    .then((r) => r.arrayBuffer())
    .then((b) => WebAssembly.instantiate(b, { './waymark_collector_bg.js': glue }))
    .then(
    safe(({ instance }) => {
      glue.__wbg_set_wasm(instance.exports)
      instance.exports.__wbindgen_start()
      ready = true
      replay()
    }),
    noop,
  )
}

export default waymark
