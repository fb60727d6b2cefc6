// What the wasm module imports, through its glue (collector-wasm/src/lib.rs).
//
// Storage: store 0 holds the ids and the session, store 1 the retry queue: `localStorage`, or
// a cookie jar with the same `getItem`/`setItem`/`removeItem`, set by the loader, or missing.
// Nothing here throws: a blocked or full storage reads as empty.
//
// Store 1 (`wm_q` the retry queue, `wm_f` the send in flight) is this tab's own: its keys get
// the tab's id, a random number drawn per page load (`wm_q0.5488...`), so that two tabs never
// overwrite each other's events (localStorage has no compare-and-set). While it has keys there,
// the tab holds the Web Lock `wm<tab>`, which the browser frees when the page is gone: a free
// lock tells another tab that the keys are orphans it may adopt (`adopt` in waymark.js). Only
// while it has keys: a held lock keeps a page out of the back/forward cache. Store 2 is the
// same localStorage with its keys as they are, for the keys of other tabs.
export const stores = []
export const tab = Math.random()
export const noop = () => {}
const own = new Set() // this tab's keys in store 1
let free // ends this tab's lock

export function g(i, k) {
  try {
    return stores[i].getItem(i == 1 ? k + tab : k)
  } catch (e) {}
}
export function s(i, k, v) {
  try {
    if (i) {
      // Asked for before the first key is written (and so, almost surely, granted before
      // another tab can see that key); granted after the keys are gone, released at once.
      own.size || navigator.locks?.request('wm' + tab, () => own.size && new Promise((r) => (free = r))).catch(noop)
      own.add(k)
    }
    stores[i].setItem(i ? k + tab : k, v)
  } catch (e) {}
}
export function r(i, k) {
  try {
    stores[i].removeItem(i == 1 ? k + tab : k)
    // (`free` is not set yet if the lock is still to be granted: it throws, here harmlessly.)
    if (i == 1 && own.delete(k) && !own.size) free()
  } catch (e) {}
}

// The body of the batch `call` (op 7) has just returned the id of (a string argument costs
// the glue less than a string result).
export let batch = ''
export function b(body) {
  batch = body
}

// Times for the event JSON, formatted by the browser (collector-wasm/src/time.rs).
export function t(ms) {
  return new Date(ms).toISOString()
}
