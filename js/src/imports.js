// The wasm module's glue (collector-wasm/src/lib.rs, `exports.rs`): plain exports, imports from
// module `w`, strings passed as (pointer, length) of UTF-8 in its memory.
//
// Storage: store 0 holds the ids and the session, store 1 the retry queue, each `{g(key),
// s(key, value), r(key)}` set by the loader, or missing. Nothing here throws: a blocked or full
// storage reads as empty.
export const stores = []
export let x // the module's exports
export let batch = '' // the body of the batch `next` has just returned the id of
const enc = new TextEncoder()
const dec = new TextDecoder('utf-8', { ignoreBOM: true })
const mem = () => new Uint8Array(x.memory.buffer)
const str = (p, n) => dec.decode(mem().subarray(p, p + n))
// Copies `v` into a block the module allocates (`m`) and then owns: [pointer, length].
export const put = (v) => {
  const a = enc.encode(v)
  const p = x.m(a.length)
  mem().set(a, p)
  return [p, a.length]
}
const store = (f) => (i, p, n, ...v) => {
  try {
    return f(stores[i], str(p, n), ...v)
  } catch (e) {}
}
export const imports = {
  w: {
    g: store((t, k, o) => {
      const v = t.g(k)
      if (v != null) {
        const a = put(v)
        new Uint32Array(x.memory.buffer, o, 2).set(a)
      }
    }),
    s: store((t, k, p, n) => t.s(k, str(p, n))),
    r: store((t, k) => t.r(k)),
    b: (p, n) => (batch = str(p, n)),
  },
}
export const bind = (e) => (x = e)
