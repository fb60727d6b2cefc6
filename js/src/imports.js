// What the wasm module imports besides web-sys, through its glue (collector-wasm/src/lib.rs).
//
// The body of the batch `next` has just returned the id of (a string argument costs the glue
// less than a string result).
export let batch = ''
export function b(body) {
  batch = body
}

// Times for the event JSON, formatted by the browser (collector-wasm/src/time.rs).
export function t(ms) {
  return new Date(ms).toISOString()
}
