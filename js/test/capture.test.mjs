// What the tag captures, in real headless Chromium against a recording collector.
import { test, before, after } from 'node:test'
import assert from 'node:assert/strict'
import { launch, collector, html, newPage, setVisibility, UUID7 } from './harness.mjs'

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

test('initial page view: Segment batch as text/plain with page, campaign and ids', async () => {
  srv.pages.set('/landing', html({ init: { site: 'pv' }, title: 'Landing' }))
  const { page, context, errors } = await newPage(browser)
  await page.goto(`${srv.origin}/landing?utm_source=news&utm_medium=email&utm_campaign=bf#x`)
  const evs = await srv.waitFor((e) => e.some(ofSite('pv')), 'the page view')
  const ev = evs.find(ofSite('pv'))
  const b = ev._batch
  assert.equal(b.headers['content-type'], 'text/plain;charset=UTF-8')
  assert.equal(b.body.writeKey, 'pv')
  assert.ok(Date.parse(b.body.sentAt) > 0)
  assert.equal(ev.type, 'page')
  assert.match(ev.messageId, UUID7)
  assert.match(ev.anonymousId, /^[0-9a-f-]{36}$/)
  assert.ok(Date.parse(ev.originalTimestamp) <= Date.parse(b.body.sentAt))
  assert.equal(ev.context.page.path, '/landing')
  assert.equal(ev.context.page.search, '?utm_source=news&utm_medium=email&utm_campaign=bf')
  assert.equal(ev.context.page.title, 'Landing')
  assert.equal(ev.context.page.url, `${srv.origin}/landing?utm_source=news&utm_medium=email&utm_campaign=bf#x`)
  assert.deepEqual(ev.context.campaign, { source: 'news', medium: 'email', name: 'bf' })
  assert.equal(ev.context.library.name, 'waymark.js')
  assert.ok(ev.context.sessionId)
  assert.ok(ev.context.userAgent.includes('Chrome'))
  assert.deepEqual(errors, [])
  await context.close()
})

test('SPA navigation: pushState, replaceState and popstate each send a page view', async () => {
  srv.pages.set('/spa/a', html({ init: { site: 'spa', flushInterval: 50 } }))
  const { page, context, errors } = await newPage(browser)
  await page.goto(`${srv.origin}/spa/a`)
  const pages = () => srv.events().filter(ofSite('spa')).filter((e) => e.type == 'page')
  await srv.waitFor(() => pages().length == 1, 'the first page view')
  await page.evaluate(() => history.pushState({}, '', '/spa/b'))
  await srv.waitFor(() => pages().length == 2, 'the pushState page view')
  await page.evaluate(() => {
    document.title = 'C'
    history.replaceState({}, '', '/spa/c?utm_source=spa')
  })
  await srv.waitFor(() => pages().length == 3, 'the replaceState page view')
  await page.evaluate(() => history.replaceState({ same: 1 }, '', '/spa/c?utm_source=spa#hash'))
  await page.evaluate(() => history.pushState({}, '', '/spa/d'))
  await srv.waitFor(() => pages().length == 4, 'the second pushState page view')
  await page.evaluate(() => history.back())
  await srv.waitFor(() => pages().length == 5, 'the popstate page view')
  const p = pages()
  assert.deepEqual(
    p.map((e) => e.context.page.path),
    ['/spa/a', '/spa/b', '/spa/c', '/spa/d', '/spa/c'],
  )
  assert.equal(p[1].context.page.referrer, `${srv.origin}/spa/a`)
  assert.equal(p[2].context.page.title, 'C')
  // UTM kept for the session, on later pages without it.
  assert.equal(p[3].context.campaign.source, 'spa')
  assert.equal(new Set(p.map((e) => e.context.sessionId)).size, 1)
  assert.deepEqual(errors, [])
  await context.close()
})

test('clicks on links, buttons and marked elements, never form values', async () => {
  const body = `
    <a id="home" href="/clicks#top">  Home
       page </a>
    <a id="out" href="https://elsewhere.test/x">Elsewhere</a>
    <button id="buy"><span>Buy now</span></button>
    <div data-waymark-event="Hero CTA" id="hero">Start free</div>
    <form onsubmit="return false"><input id="secret" type="text" value="secret-value"><input id="go" type="submit" value="secret-label"></form>
    <p id="plain">plain text</p>
    <script>document.getElementById('out').addEventListener('click', e => e.preventDefault())</script>`
  srv.pages.set('/clicks', html({ init: { site: 'clk', flushInterval: 50 }, body }))
  const { page, context, errors } = await newPage(browser)
  await page.goto(`${srv.origin}/clicks`)
  for (const sel of ['#home', '#out', '#buy span', '#hero', '#secret', '#go', '#plain']) {
    await page.click(sel)
  }
  const clicks = () => srv.events().filter(ofSite('clk')).filter((e) => e.event == '$click')
  await srv.waitFor(() => clicks().length >= 5, 'five clicks')
  const props = clicks().map((e) => e.properties)
  assert.deepEqual(props, [
    { kind: 'link', text: 'Home page', href: `${srv.origin}/clicks#top`, outbound: false, id: 'home' },
    { kind: 'link', text: 'Elsewhere', href: 'https://elsewhere.test/x', outbound: true, id: 'out' },
    { kind: 'button', text: 'Buy now', id: 'buy' },
    { kind: 'element', text: 'Start free', id: 'hero', name: 'Hero CTA' },
    { kind: 'button', id: 'go' },
  ])
  const all = JSON.stringify(srv.batches.map((b) => b.body))
  assert.ok(!all.includes('secret-value') && !all.includes('secret-label'), 'no form values sent')
  assert.deepEqual(errors, [])
  await context.close()
})

test('calls made before the tag loads arrive in order with their original timestamps', async () => {
  const before = `
    waymark('track', 'First', { n: 1 });
    waymark('identify', 'user-42', { plan: 'pro' });
    waymark('track', 'Second', { n: 2 });
    window.__queued = waymark.q.map(c => c[0]);`
  srv.pages.set('/preload', html({ init: { site: 'pre' }, before, delay: 400 }))
  const { page, context, errors } = await newPage(browser)
  await page.goto(`${srv.origin}/preload`)
  const evs = (await srv.waitFor((e) => e.filter(ofSite('pre')).length >= 4, 'four events')).filter(ofSite('pre'))
  const queued = await page.evaluate(() => window.__queued)
  assert.deepEqual(
    evs.map((e) => e.event || e.type),
    ['page', 'First', 'identify', 'Second'],
  )
  // init (the page view), track, identify, track: each with the time the stub recorded.
  assert.deepEqual(
    evs.map((e) => Date.parse(e.originalTimestamp)),
    queued,
  )
  assert.ok(Date.parse(evs[0]._batch.body.sentAt) - queued[0] >= 400, 'sent after the delayed load')
  assert.equal(evs[3].userId, 'user-42')
  assert.deepEqual(evs[2].traits, { plan: 'pro' })
  const ids = evs.map((e) => e.messageId)
  assert.deepEqual([...ids].sort(), ids, 'UUIDv7 ids follow call order')
  assert.deepEqual(errors, [])
  await context.close()
})

test('engaged time counts only visible time (Page Visibility emulation, fake clock)', async () => {
  srv.pages.set('/engaged', html({ init: { site: 'eng', flushInterval: 60000 } }))
  const { page, context, errors } = await newPage(browser)
  const t0 = Date.parse('2026-01-01T00:00:00Z')
  await page.clock.install({ time: t0 })
  await page.goto(`${srv.origin}/engaged`)
  await page.waitForFunction(() => window.waymark && !window.waymark.q)
  await page.clock.pauseAt(t0 + 60_000)
  const eng = () => srv.events().filter(ofSite('eng')).filter((e) => e.event == '$engagement')
  // Hide once to report (and reset) whatever the load took, then measure exact periods.
  await setVisibility(page, 'hidden')
  await srv.waitFor(() => eng().length == 1, 'the first engagement')
  await setVisibility(page, 'visible')
  await page.clock.runFor(4_000) // visible: counts
  await setVisibility(page, 'hidden')
  await srv.waitFor(() => eng().length == 2, 'the second engagement')
  await page.clock.runFor(20_000) // hidden: does not count
  await setVisibility(page, 'visible')
  await page.clock.runFor(3_000) // visible again
  await setVisibility(page, 'hidden')
  await srv.waitFor(() => eng().length == 3, 'the third engagement')
  const [, second, third] = eng()
  assert.equal(second.properties.engaged_ms, 4000)
  assert.equal(third.properties.engaged_ms, 3000, 'the 20 s hidden are excluded')
  // Idle: after 30 s without activity, time stops counting.
  await setVisibility(page, 'visible')
  await page.clock.runFor(45_000)
  await setVisibility(page, 'hidden')
  await srv.waitFor(() => eng().length == 4, 'the fourth engagement')
  assert.equal(eng()[3].properties.engaged_ms, 30000, 'only 30 s after the last activity count')
  assert.deepEqual(errors, [])
  await context.close()
})

test('scroll depth and product attribution ride on $engagement', async () => {
  const body = `<div data-waymark-product="sku-1" style="height:4000px">Shoe</div>`
  srv.pages.set('/product/1', html({ init: { site: 'scr', flushInterval: 50 }, body }))
  const { page, context, errors } = await newPage(browser, { viewport: { width: 800, height: 800 } })
  await page.goto(`${srv.origin}/product/1`)
  const eng = () => srv.events().filter(ofSite('scr')).filter((e) => e.event == '$engagement')
  await srv.waitFor((e) => e.some(ofSite('scr')), 'the page view')
  // Resolves on the scroll event itself: the tag's listener on `window` was added first (at
  // init, before the page view above), so it has seen the event by then.
  await page.evaluate(
    () =>
      new Promise((r) => {
        addEventListener('scroll', r, { once: true })
        scrollTo(0, 1600 - (document.documentElement.scrollHeight - 4000))
      }),
  )
  await setVisibility(page, 'hidden')
  await srv.waitFor(() => eng().length == 1, 'the engagement')
  const p = eng()[0].properties
  assert.equal(p.product_id, 'sku-1')
  assert.ok(p.scroll_depth >= 59 && p.scroll_depth <= 61, `scroll depth ${p.scroll_depth}`)
  assert.ok(p.engaged_ms > 0)
  // SPA to another product announced with track('Product Viewed').
  await setVisibility(page, 'visible')
  await page.evaluate(() => {
    document.querySelector('[data-waymark-product]').remove()
    history.pushState({}, '', '/product/2')
    waymark('track', 'Product Viewed', { product_id: 'sku-2', name: 'Hat', price: 12 })
  })
  // The tag has taken the route change (its page view is sent) before the page is hidden.
  const product2 = (e) => ofSite('scr')(e) && e.type == 'page' && e.context.page.path == '/product/2'
  await srv.waitFor((e) => e.some(product2), 'the page view of /product/2')
  await setVisibility(page, 'hidden')
  await srv.waitFor(() => eng().some((e) => e.properties.product_id == 'sku-2'), 'engagement for sku-2')
  const viewed = srv.events().filter(ofSite('scr')).find((e) => e.event == 'Product Viewed')
  assert.deepEqual(viewed.properties, { product_id: 'sku-2', name: 'Hat', price: 12 })
  assert.deepEqual(errors, [])
  await context.close()
})
