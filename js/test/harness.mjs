// Test harness for the tag in real headless Chromium: a recording collector on 127.0.0.1 that
// also serves the built tag (js/dist) and the test pages, and a browser launcher.
import { createServer } from 'node:http'
import { readFileSync, existsSync } from 'node:fs'
import { fileURLToPath } from 'node:url'
import { dirname, join } from 'node:path'
import { chromium } from 'playwright-core'

const here = dirname(fileURLToPath(import.meta.url))
const dist = join(here, '..', 'dist')

export const CHROMIUM = process.env.WAYMARK_CHROMIUM || '/usr/bin/chromium'
export const ARGS = [
  '--headless=new',
  '--no-sandbox',
  '--disable-gpu',
  '--disable-dev-shm-usage',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
  '--no-first-run',
]

export async function launch() {
  if (!existsSync(CHROMIUM)) {
    throw new Error(`Chromium not found at ${CHROMIUM}: install with apt-get install chromium`)
  }
  return chromium.launch({ executablePath: CHROMIUM, args: ARGS, headless: true })
}

/**
 * The inline stub and init call, then the tag as an async module script.
 * `before`: script run between the stub and the tag (calls queued before load);
 * `delay`: ms the server holds the tag back.
 */
export function html({ init = {}, body = '', before = '', head = '', delay = 0, title = 'Test page' } = {}) {
  const cfg = JSON.stringify({ site: 'test-site', endpoint: '/v1/batch', ...init })
  return `<!doctype html><html><head><meta charset="utf-8"><title>${title}</title>${head}
<script>window.waymark=window.waymark||function(){(waymark.q=waymark.q||[]).push([Date.now(),arguments])};waymark('init',${cfg});</script>
<script>${before}</script>
<script type="module" async src="/waymark.js?delay=${delay}"></script>
</head><body>${body}</body></html>`
}

/**
 * The recording collector. `pages`: path -> HTML. `responses`: statuses (or [status,
 * retryAfter]) for the next batches, in order, then 200. `hold(site)`: the next batch of that
 * site is kept open until `release(status)` answers it (by site, so that a late request of an
 * earlier test cannot take its place). `batches` holds the accepted (2xx) batches, `sent` the
 * body of every batch request, whatever its answer (held ones too). `down = true`: batch
 * requests fail as if the collector could not be reached.
 */
export async function collector() {
  const pages = new Map()
  const batches = [] // { body, headers, at }
  const sent = [] // raw body of every batch request
  const responses = []
  const answered = [] // { status, at } for every batch request
  const held = [] // { res, data, headers } waiting for `release`
  let holdSite = null
  const record = (status, data, headers) => {
    if (status >= 300) return
    try {
      batches.push({ body: JSON.parse(data), headers, at: Date.now() })
    } catch (e) {
      batches.push({ body: null, raw: data, headers, at: Date.now() })
    }
  }
  const server = createServer((req, res) => {
    const url = new URL(req.url, 'http://x')
    if (req.method == 'POST' && url.pathname == '/v1/batch') {
      // Down: as if unreachable (the connection is dropped, nothing read or recorded).
      if (srv.down) return req.socket.destroy()
      let data = ''
      req.on('data', (c) => (data += c))
      req.on('end', () => {
        sent.push(data)
        if (holdSite != null && data.includes(`"writeKey":${JSON.stringify(holdSite)}`)) {
          holdSite = null
          answered.push({ status: 'held', at: Date.now() })
          held.push({ res, data, headers: req.headers })
          return
        }
        const [status, retryAfter] = [].concat(responses.length ? responses.shift() : 200)
        answered.push({ status, at: Date.now() })
        record(status, data, req.headers)
        const headers = { 'content-type': 'application/json', 'access-control-allow-origin': '*' }
        if (retryAfter) headers['retry-after'] = retryAfter
        res.writeHead(status, headers)
        res.end('{}')
      })
      return
    }
    if (url.pathname == '/waymark.js' || url.pathname == '/waymark.wasm') {
      const file = join(dist, url.pathname.slice(1))
      const type = url.pathname.endsWith('.js') ? 'text/javascript' : 'application/wasm'
      const send = () => {
        res.writeHead(200, { 'content-type': type, 'cache-control': 'no-store' })
        res.end(readFileSync(file))
      }
      const delay = +url.searchParams.get('delay') || 0
      return delay ? setTimeout(send, delay) : send()
    }
    const page = pages.get(url.pathname)
    if (page != null) {
      res.writeHead(200, { 'content-type': 'text/html; charset=utf-8' })
      return res.end(page)
    }
    res.writeHead(404)
    res.end()
  })
  await new Promise((r) => server.listen(0, '127.0.0.1', r))
  const origin = `http://127.0.0.1:${server.address().port}`
  const srv = {
    down: false,
    origin,
    pages,
    batches,
    sent,
    responses,
    answered,
    held,
    hold(site) {
      holdSite = site
    },
    /** Answers every held request with `status` (recorded only if it is a success). */
    release(status) {
      for (const { res, data, headers } of held.splice(0)) {
        record(status, data, headers)
        res.writeHead(status, { 'content-type': 'application/json', 'access-control-allow-origin': '*' })
        res.end('{}')
      }
    },
    /** Every event received, in arrival order, with its batch. */
    events(site) {
      return batches
        .filter((b) => b.body && (!site || b.body.writeKey == site))
        .flatMap((b) => b.body.batch.map((e) => ({ ...e, _batch: b })))
    },
    /**
     * How many requests carried each messageId (answered or not), for the events matching
     * `pred(event, batch)`.
     */
    sends(pred = () => true) {
      const n = new Map()
      for (const data of sent) {
        let body = { batch: [] }
        try {
          body = JSON.parse(data)
        } catch (e) {}
        for (const e of body.batch) if (pred(e, body)) n.set(e.messageId, (n.get(e.messageId) || 0) + 1)
      }
      return n
    },
    /** Waits (bounded) until `pred(events)` holds; returns the events. */
    async waitFor(pred, what, ms = 10000) {
      const end = Date.now() + ms
      for (;;) {
        const evs = this.events()
        if (pred(evs)) return evs
        if (Date.now() > end) {
          throw new Error(`timed out waiting for ${what}; received: ${JSON.stringify(evs.map((e) => e.event || e.type))}`)
        }
        await new Promise((r) => setTimeout(r, 25))
      }
    },
    close: () => new Promise((r) => server.close(r)),
  }
  return srv
}

/** A fresh context and page, focused (headless windows are not, by default). */
export async function newPage(browser, opts = {}) {
  const context = await browser.newContext(opts)
  const errors = []
  return { context, errors, ...(await addPage(context, errors)) }
}

/** Another page (tab) in `context`, focused; its page errors go to `errors`. */
export async function addPage(context, errors) {
  const page = await context.newPage()
  page.on('pageerror', (e) => errors.push(e))
  const cdp = await context.newCDPSession(page)
  await cdp.send('Emulation.setFocusEmulationEnabled', { enabled: true })
  return { page, cdp }
}

/** Polls `f` (async) until it returns a truthy value, which it returns; bounded. */
export async function until(f, what, ms = 10000) {
  const end = Date.now() + ms
  for (;;) {
    const v = await f()
    if (v) return v
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`)
    await new Promise((r) => setTimeout(r, 25))
  }
}

/**
 * The tag's retry queues and sends in flight in the page's localStorage: key (`wm_q.<tab>`,
 * `wm_f.<tab>`) -> the events stored there.
 */
export function queues(page) {
  return page.evaluate(() =>
    Object.fromEntries(
      Object.keys(localStorage)
        .filter((k) => /^wm_[qf]/.test(k))
        .map((k) => [k, localStorage.getItem(k).split('\n').slice(1).map((l) => JSON.parse(l))]),
    ),
  )
}

/** Page Visibility emulation: sets document.visibilityState and fires visibilitychange. */
export async function setVisibility(page, state) {
  await page.evaluate((state) => {
    Object.defineProperty(document, 'visibilityState', { configurable: true, get: () => state })
    Object.defineProperty(document, 'hidden', { configurable: true, get: () => state == 'hidden' })
    document.dispatchEvent(new Event('visibilitychange'))
  }, state)
}

export const UUID7 = /^[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/
