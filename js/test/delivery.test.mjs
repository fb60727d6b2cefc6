// How the tag delivers: beacon on hide, the persistent retry queue, consent, storage modes and a
// hostile host page. Real headless Chromium against a recording collector.
import { test, before, after } from 'node:test'
import assert from 'node:assert/strict'
import { launch, collector, html, newPage, setVisibility, until, queues } from './harness.mjs'

let browser, srv
before(async () => {
  browser = await launch()
  srv = await collector()
})
after(async () => {
  await browser?.close()
  await srv?.close()
})

const ofSite = (site) => (e) => e._batch.body.writeKey == site
const count = (ids) => ids.reduce((m, id) => m.set(id, (m.get(id) || 0) + 1), new Map())

test('page hide sends what is pending with sendBeacon', async () => {
  srv.pages.set('/beacon', html({ init: { site: 'bcn', flushInterval: 600000 } }))
  const { page, context, errors } = await newPage(browser)
  await page.addInitScript(() => {
    const orig = navigator.sendBeacon.bind(navigator)
    window.__beacons = []
    navigator.sendBeacon = (url, body) => {
      const ok = orig(url, body)
      window.__beacons.push({ url, ok, body: String(body) })
      return ok
    }
  })
  await page.goto(`${srv.origin}/beacon`)
  await page.evaluate(() => waymark('track', 'Before hide', { x: 1 }))
  // The flush interval is 10 minutes: only the hide can send these now.
  await page.waitForFunction(() => window.waymark && !window.waymark.q)
  await setVisibility(page, 'hidden')
  const evs = (await srv.waitFor((e) => e.some((x) => x.event == 'Before hide'), 'the beacon')).filter(ofSite('bcn'))
  const beacons = await page.evaluate(() => window.__beacons)
  assert.ok(beacons.length >= 1 && beacons.every((b) => b.ok), JSON.stringify(beacons))
  assert.ok(beacons.some((b) => b.body.includes('Before hide')))
  const ev = evs.find((x) => x.event == 'Before hide')
  assert.equal(ev._batch.headers['sec-fetch-mode'], 'no-cors', 'a beacon, not a fetch')
  assert.equal(ev._batch.headers['content-type'], 'text/plain;charset=UTF-8')
  assert.deepEqual(
    evs.map((e) => e.event || e.type),
    ['page', 'Before hide', '$engagement'],
  )
  assert.deepEqual(errors, [])
  await context.close()
})

test('offline, then online: the persistent queue is delivered exactly once', async () => {
  srv.pages.set('/offline', html({ init: { site: 'off', flushInterval: 20 } }))
  const { page, context, errors } = await newPage(browser)
  await page.goto(`${srv.origin}/offline`)
  await srv.waitFor((e) => e.some(ofSite('off')), 'the page view')
  await context.setOffline(true)
  await page.evaluate(() => {
    for (let i = 0; i < 5; i++) waymark('track', 'Offline ' + i, { i })
  })
  // The failed send lands in localStorage, under this tab's own key (first line: dropped
  // count, then one event per line).
  const q = await until(async () => {
    const q = await queues(page)
    return Object.values(q).flat().length == 5 && q
  }, 'the queue in localStorage')
  assert.match(Object.keys(q).join(), /^wm_q[0-9.e-]+$/)
  const stored = Object.values(q)[0].map((e) => e.messageId)
  assert.equal(srv.events().filter((e) => e.event?.startsWith('Offline')).length, 0)
  await context.setOffline(false)
  await srv.waitFor((e) => e.filter((x) => x.event?.startsWith('Offline')).length >= 5, 'the queued events')
  await until(async () => !Object.keys(await queues(page)).length, 'an empty queue')
  // A reload must not send them again: the next page's first batch would carry them.
  await page.reload()
  await srv.waitFor((e) => e.filter(ofSite('off')).filter((x) => x.type == 'page').length == 2, 'the second page view')
  await page.evaluate(() => waymark('track', 'Sync'))
  await srv.waitFor((e) => e.some((x) => x.event == 'Sync'), 'the event after the reload')
  const seen = count(srv.events().filter(ofSite('off')).map((e) => e.messageId))
  for (const id of stored) assert.equal(seen.get(id), 1, `messageId ${id} delivered once`)
  for (const [id, n] of seen) assert.equal(n, 1, `messageId ${id} seen ${n} times`)
  assert.deepEqual(errors, [])
  await context.close()
})

test('a send in flight when the page goes away, failing after, is sent again by the next page', async () => {
  srv.pages.set('/inflight', html({ init: { site: 'infl', flushInterval: 20 } }))
  const { page, context, errors } = await newPage(browser)
  await page.goto(`${srv.origin}/inflight`)
  await srv.waitFor((e) => e.some(ofSite('infl')), 'the page view')
  srv.hold('infl')
  await page.evaluate(() => waymark('track', 'In flight'))
  await until(() => srv.held.length, 'the send held open')
  assert.equal(srv.held.length, 1, 'one send is held open')
  assert.ok(srv.held[0].data.includes('In flight'), srv.held[0].data)
  // Hidden, then gone, with the send still unanswered: its events stay in localStorage.
  await setVisibility(page, 'hidden')
  const kept = await queues(page)
  const key = Object.keys(kept)[0]
  assert.match(key, /^wm_f[0-9.e-]+$/)
  assert.deepEqual(
    kept[key].map((e) => e.event),
    ['In flight'],
  )
  const id = kept[key][0].messageId
  await page.goto('about:blank')
  srv.release(503) // the answer reaches no page
  // The next page of the site sends them again, with the same messageId, exactly once.
  await page.goto(`${srv.origin}/inflight`)
  await srv.waitFor((e) => e.some((x) => x.event == 'In flight'), 'the event sent again')
  await until(async () => !Object.keys(await queues(page)).length, 'an empty queue')
  const again = srv.events().filter((x) => x.event == 'In flight')
  assert.deepEqual(
    again.map((x) => x.messageId),
    [id],
  )
  assert.deepEqual(errors, [])
  await context.close()
})

test('5xx and 429 are retried (honouring Retry-After), other 4xx are not', async () => {
  srv.pages.set('/retry', html({ init: { site: 'rty', flushInterval: 20 } }))
  const { page, context, errors } = await newPage(browser)
  srv.responses.push(503, [429, '3'])
  const from = srv.answered.length
  await page.goto(`${srv.origin}/retry`)
  // Rejected twice (not recorded), then accepted after backoff.
  const evs = await srv.waitFor((e) => e.some(ofSite('rty')), 'the retried page view', 15000)
  assert.equal(srv.responses.length, 0)
  const [first, second, third] = srv.answered.slice(from)
  assert.deepEqual([first.status, second.status, third.status], [503, 429, 200])
  // The backoff after the second failure is 1-2 s; Retry-After asked for 3 s.
  assert.ok(third.at - second.at >= 3000, `retried after ${third.at - second.at} ms`)
  assert.equal(evs.filter(ofSite('rty')).length, 1)
  srv.responses.push(400)
  await page.evaluate(() => waymark('track', 'Refused'))
  await until(() => !srv.responses.length, 'the 400 answered')
  await page.evaluate(() => waymark('track', 'Accepted'))
  await srv.waitFor((e) => e.some((x) => x.event == 'Accepted'), 'the next event')
  assert.ok(!srv.events().some((x) => x.event == 'Refused'), 'a 400 is not retried')
  assert.deepEqual(await queues(page), {})
  assert.deepEqual(errors, [])
  await context.close()
})

test('consent: pending holds events, granted sends them with original times, denied sends nothing', async () => {
  srv.pages.set('/consent-yes', html({ init: { site: 'cyes', consent: 'pending', flushInterval: 20 } }))
  srv.pages.set('/consent-no', html({ init: { site: 'cno', consent: 'pending', flushInterval: 20 } }))
  srv.pages.set('/control', html({ init: { site: 'ctl', flushInterval: 20 } }))
  const { page, context, errors } = await newPage(browser)

  await page.goto(`${srv.origin}/consent-no`)
  await page.evaluate(() => waymark('track', 'Held'))
  assert.deepEqual(await page.evaluate(() => [document.cookie, localStorage.length]), ['', 0], 'nothing stored while pending')
  await page.evaluate(() => waymark('consent', 'denied'))
  await page.evaluate(() => waymark('track', 'After denial'))
  await setVisibility(page, 'hidden')
  // A control page on the same collector: once its event arrives, anything sent before it has too.
  await page.goto(`${srv.origin}/control`)
  await srv.waitFor((e) => e.some(ofSite('ctl')), 'the control page view')
  assert.equal(srv.events().filter(ofSite('cno')).length, 0, 'denied: nothing sent')
  // The test's sites share one origin, so one localStorage: a control send still in flight when
  // the page goes is adopted by the next page and sent again under its site (at least once, by
  // design). Leave only once the control page has its answer.
  await until(async () => Object.keys(await queues(page)).length == 0, 'the control send answered')

  await page.goto(`${srv.origin}/consent-yes`)
  await page.evaluate(() => waymark('track', 'Before consent'))
  const before = Date.now()
  // Consent comes later than the event, on the page's clock: a time stamped at consent would
  // be after `before`.
  await until(() => page.evaluate((t) => Date.now() > t, before), 'the page clock past the event')
  await page.evaluate(() => waymark('consent', 'granted'))
  const evs = (await srv.waitFor((e) => e.filter(ofSite('cyes')).length >= 2, 'the held events')).filter(ofSite('cyes'))
  assert.deepEqual(
    evs.map((e) => e.event || e.type),
    ['page', 'Before consent'],
  )
  assert.ok(Date.parse(evs[1].originalTimestamp) <= before, 'original timestamp kept')
  assert.ok(await page.evaluate(() => localStorage.getItem('wm_aid')), 'ids stored once granted')
  assert.deepEqual(errors, [])
  await context.close()
})

test('Global Privacy Control is honoured when configured', async () => {
  srv.pages.set('/gpc', html({ init: { site: 'gpc', honorSignals: true, flushInterval: 20 } }))
  srv.pages.set('/gpc-control', html({ init: { site: 'gpcctl', flushInterval: 20 } }))
  const { page, context } = await newPage(browser)
  await page.addInitScript(() => Object.defineProperty(navigator, 'globalPrivacyControl', { get: () => true }))
  await page.goto(`${srv.origin}/gpc`)
  await page.evaluate(() => waymark('track', 'Opted out'))
  await setVisibility(page, 'hidden')
  await page.goto(`${srv.origin}/gpc-control`)
  await srv.waitFor((e) => e.some(ofSite('gpcctl')), 'the control page view')
  assert.equal(srv.events().filter(ofSite('gpc')).length, 0)
  await context.close()
})

test('cookieless mode writes no cookie and no storage; cookie mode keeps the id', async () => {
  srv.pages.set('/cookieless', html({ init: { site: 'nock', storage: 'none', flushInterval: 20 } }))
  const { page, context, errors } = await newPage(browser)
  await page.goto(`${srv.origin}/cookieless`)
  await page.evaluate(() => waymark('identify', 'u-1'))
  await page.evaluate(() => waymark('track', 'No storage'))
  const evs = (await srv.waitFor((e) => e.filter(ofSite('nock')).length >= 3, 'three events')).filter(ofSite('nock'))
  assert.ok(evs.every((e) => e.anonymousId))
  assert.deepEqual(
    await page.evaluate(() => [document.cookie, localStorage.length, sessionStorage.length]),
    ['', 0, 0],
  )
  assert.deepEqual((await context.cookies()).length, 0)
  await context.close()

  srv.pages.set('/cookie', html({ init: { site: 'ck', storage: 'cookie', flushInterval: 20 } }))
  const c2 = await newPage(browser)
  await c2.page.goto(`${srv.origin}/cookie`)
  await srv.waitFor((e) => e.some(ofSite('ck')), 'the page view')
  await c2.page.reload()
  const pv = (await srv.waitFor((e) => e.filter(ofSite('ck')).length >= 2, 'two page views')).filter(ofSite('ck'))
  const cookies = await c2.context.cookies()
  const aid = cookies.find((c) => c.name == 'wm_aid')
  assert.ok(aid, JSON.stringify(cookies))
  assert.equal(aid.sameSite, 'Lax')
  assert.equal(pv[0].anonymousId, pv[1].anonymousId)
  assert.equal(pv[0].anonymousId, decodeURIComponent(aid.value))
  assert.equal(await c2.page.evaluate(() => localStorage.getItem('wm_aid')), null, 'ids in the cookie only')
  assert.deepEqual(errors.concat(c2.errors), [])
  await c2.context.close()
})

test('a hostile host page (no localStorage, broken sendBeacon) keeps working', async () => {
  const body = `<button id="b">Go</button><script type="module">window.__after = true</script>`
  srv.pages.set('/hostile', html({ init: { site: 'hst', flushInterval: 600000 }, body }))
  const { page, context, errors } = await newPage(browser)
  await page.addInitScript(() => {
    Object.defineProperty(window, 'localStorage', {
      get() {
        throw new DOMException('blocked by policy', 'SecurityError')
      },
    })
    navigator.sendBeacon = () => {
      throw new Error('beacon blocked')
    }
    window.__errors = []
    window.addEventListener('error', (e) => window.__errors.push(String(e.message)))
    window.addEventListener('unhandledrejection', (e) => window.__errors.push(String(e.reason)))
  })
  await page.goto(`${srv.origin}/hostile`)
  await page.click('#b')
  await page.evaluate(() => waymark('track', 'Still here', { ok: true }))
  await page.waitForFunction(() => window.waymark && !window.waymark.q)
  // Hide: sendBeacon throws, so the tag falls back to fetch with keepalive.
  await setVisibility(page, 'hidden')
  const evs = (await srv.waitFor((e) => e.filter(ofSite('hst')).length >= 3, 'three events')).filter(ofSite('hst'))
  assert.deepEqual(
    evs.map((e) => e.event || e.type),
    ['page', '$click', 'Still here', '$engagement'],
  )
  assert.equal(evs[2]._batch.headers['sec-fetch-mode'], 'cors', 'sent by fetch')
  assert.equal(await page.evaluate(() => window.__after), true)
  assert.deepEqual(await page.evaluate(() => window.__errors), [])
  assert.deepEqual(errors, [])
  await context.close()
})
