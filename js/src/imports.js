// What the wasm module imports, through its glue (collector-wasm/src/lib.rs).
//
// Storage: store 0 holds the ids and the session, store 1 the retry queue, each `{g(key),
// s(key, value), r(key)}` set by the loader, or missing. Nothing here throws: a blocked or full
// storage reads as empty.
export const stores = []
export function g(i, k) {
  try {
    return stores[i].g(k)
  } catch (e) {}
}
export function s(i, k, v) {
  try {
    stores[i].s(k, v)
  } catch (e) {}
}
export function r(i, k) {
  try {
    stores[i].r(k)
  } catch (e) {}
}

// The body of the batch `next` has just returned the id of (a string argument costs the glue
// less than a string result).
export let batch = ''
export function b(body) {
  batch = body
}
