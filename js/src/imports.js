// What the wasm module imports, through its glue (collector-wasm/src/lib.rs).
//
// Storage: store 0 holds the ids and the session, store 1 the retry queue: `localStorage`, or
// a cookie jar with the same `getItem`/`setItem`/`removeItem`, set by the loader, or missing.
// Nothing here throws: a blocked or full storage reads as empty.
export const stores = []
export function g(i, k) {
  try {
    return stores[i].getItem(k)
  } catch (e) {}
}
export function s(i, k, v) {
  try {
    stores[i].setItem(k, v)
  } catch (e) {}
}
export function r(i, k) {
  try {
    stores[i].removeItem(k)
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
