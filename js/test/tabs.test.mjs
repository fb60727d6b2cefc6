// Two tabs of one site sharing localStorage: each keeps its own retry queue and send in flight
// (`wm_q.<tab>`, `wm_f.<tab>`), a tab that is gone leaves them to another, and no event is lost
// or sent twice. Counts are of sends: every batch request the collector received, whatever its
// answer (`srv.sends`), not only the accepted ones.
import { test, before, after, afterEach } from 'node:test'
import assert from 'node:assert/strict'
import { launch, collector, html, newPage, addPage, setVisibility, until, queues } from './harness.mjs'

let browser, srv
before(async () => {
  browser = await launch()
  srv = await collector()
})
after(async () => {
  await browser?.close()
  await srv?.close()
})
afterEach(() => {
  srv.down = false
})

const ofSite = (site) => (e) => e._batch.body.writeKey == site
const named = (re) => (e) => re.test(e.event || '')
// The events stored under each key, by name.
const names = (q) => Object.fromEntries(Object.entries(q).map(([k, evs]) => [k, evs.map((e) => e.event || e.type)]))

// Every send of the events matching `pred` carried a distinct messageId, `n` of them.
function assertSentOnce(pred, n) {
  const sends = srv.sends(pred)
  assert.equal(sends.size, n, `distinct events sent: ${[...sends.keys()]}`)
  for (const [id, k] of sends) assert.equal(k, 1, `messageId ${id} sent ${k} times`)
}

// The Web Locks held on the page's origin, by name.
const locks = (page) => page.evaluate(async () => (await navigator.locks.query()).held.map((l) => l.name))

test('two tabs queue offline and both come back: every event is sent once', async () => {
  srv.pages.set('/two', html({ init: { site: 'two', flushInterval: 20 } }))
  const { page: a, context, errors } = await newPage(browser)
  const { page: b } = await addPage(context, errors)
  await a.goto(`${srv.origin}/two`)
  await b.goto(`${srv.origin}/two`)
  await srv.waitFor((e) => e.filter(ofSite('two')).length == 2, 'both page views')
  await context.setOffline(true)
  // Interleaved: both tabs write their queues over the same moments.
  for (let i = 0; i < 5; i++) {
    await Promise.all([a.evaluate((i) => waymark('track', 'A ' + i), i), b.evaluate((i) => waymark('track', 'B ' + i), i)])
  }
  const stored = await until(async () => {
    const q = await queues(a)
    return Object.values(q).flat().length == 10 && q
  }, 'ten events in localStorage')
  // One key per tab, each with its own tab's events.
  const keys = Object.keys(stored).sort()
  assert.equal(keys.length, 2, JSON.stringify(names(stored)))
  assert.ok(keys.every((k) => /^wm_q[0-9.e-]+$/.test(k)), keys.join())
  const byTab = Object.values(names(stored)).map((n) => n.join()).sort()
  assert.deepEqual(byTab, ['A 0,A 1,A 2,A 3,A 4', 'B 0,B 1,B 2,B 3,B 4'])
  assert.equal(srv.sends(named(/^[AB] /)).size, 0, 'nothing reached the collector offline')

  await context.setOffline(false)
  await srv.waitFor((e) => e.filter(named(/^[AB] /)).length >= 10, 'the ten queued events')
  // Each tab sends one batch at a time, queue first: once a later event of each tab has
  // arrived, nothing older is still on its way.
  await Promise.all([a.evaluate(() => waymark('track', 'Sync A')), b.evaluate(() => waymark('track', 'Sync B'))])
  await srv.waitFor((e) => e.filter(named(/^Sync [AB]$/)).length == 2, 'an event after the queues from each tab')
  assertSentOnce(named(/^[AB] /), 10)
  const ids = Object.values(stored).flat().map((e) => e.messageId).sort()
  assert.deepEqual([...srv.sends(named(/^[AB] /)).keys()].sort(), ids)
  assert.deepEqual(await queues(a), {})
  assert.deepEqual(errors, [])
  await context.close()
})

test('a tab closed while offline: the other sends its events when back online', async () => {
  // The closing tab never flushes on its own: what it tracked is still in memory when it
  // closes, and goes to storage then (a beacon would be lost offline). The collector is down
  // as well as the browser offline: closing a page ends DevTools' network emulation for it, and
  // its last milliseconds see the network back; what it sends then must not arrive.
  srv.pages.set('/closing', html({ init: { site: 'gone', flushInterval: 600000 } }))
  srv.pages.set('/staying', html({ init: { site: 'gone', flushInterval: 20 } }))
  const { page: a, context, errors } = await newPage(browser)
  const { page: b } = await addPage(context, errors)
  await a.goto(`${srv.origin}/closing`)
  await b.goto(`${srv.origin}/staying`)
  await srv.waitFor((e) => e.some(ofSite('gone')), "the staying tab's page view")
  await a.waitForFunction(() => window.waymark && !window.waymark.q)
  await context.setOffline(true)
  srv.down = true
  await a.evaluate(() => {
    for (let i = 0; i < 5; i++) waymark('track', 'Closing ' + i)
  })
  await b.evaluate(() => waymark('track', 'Staying'))
  const mine = Object.keys(await until(async () => Object.values(await queues(b)).flat().length == 1 && (await queues(b)), "the staying tab's queue"))
  await a.close()
  // The closed tab's events, its page view first, under its own keys (its queue, or a send it
  // started as it closed); its lock is gone with it.
  const gone = await until(async () => {
    const q = await queues(b)
    const evs = Object.keys(q).filter((k) => !mine.includes(k)).flatMap((k) => q[k])
    return evs.filter(named(/^Closing/)).length == 5 && evs
  }, "the closed tab's events in storage")
  assert.deepEqual(gone.filter((e) => e.event != '$engagement').map((e) => e.event || e.type), ['page', 'Closing 0', 'Closing 1', 'Closing 2', 'Closing 3', 'Closing 4'])
  const tabs = Object.keys(await queues(b)).filter((k) => !mine.includes(k)).map((k) => 'wm' + k.slice(4))
  await until(async () => !(await locks(b)).some((l) => tabs.includes(l)), "the closed tab's lock to go")
  assert.equal(srv.sends((e, body) => body.writeKey == 'gone' && e.event != null).size, 0, 'nothing arrived')

  srv.down = false
  await context.setOffline(false)
  const ids = new Set(gone.map((e) => e.messageId))
  await srv.waitFor((e) => e.filter((x) => ids.has(x.messageId)).length >= ids.size && e.some(named(/^Staying$/)), 'both tabs\u2019 events')
  await b.evaluate(() => waymark('track', 'Sync gone'))
  await srv.waitFor((e) => e.some(named(/^Sync gone$/)), 'an event after the queues')
  assertSentOnce((e) => ids.has(e.messageId), ids.size)
  assertSentOnce((e, body) => body.writeKey == 'gone', ids.size + 3) // and B's page view, Staying, Sync
  assert.deepEqual(await queues(b), {})
  assert.deepEqual(errors, [])
  await context.close()
})

test('a send in flight in a hidden tab is not sent again by a tab opened meanwhile', async () => {
  srv.pages.set('/hidden', html({ init: { site: 'hid', flushInterval: 20 } }))
  const { page: a, context, errors } = await newPage(browser)
  await a.goto(`${srv.origin}/hidden`)
  await srv.waitFor((e) => e.some(ofSite('hid')), 'the page view')
  srv.hold('hid')
  await a.evaluate(() => waymark('track', 'In flight'))
  await until(() => srv.held.length == 1, 'the send held open')
  await setVisibility(a, 'hidden')
  const kept = names(await queues(a))
  const [key] = Object.keys(kept)
  assert.deepEqual(kept, { [key]: ['In flight'] })
  assert.match(key, /^wm_f[0-9.e-]+$/)
  // The hidden tab is still there, waiting for its answer: it holds its lock.
  await until(async () => (await locks(a)).includes('wm' + key.slice(4)), "the hidden tab's lock")

  const { page: b } = await addPage(context, errors)
  await b.goto(`${srv.origin}/hidden`)
  await srv.waitFor((e) => e.filter(ofSite('hid')).filter((x) => x.type == 'page').length == 2, 'the new tab\u2019s page view')
  await b.evaluate(() => waymark('track', 'Sync hid'))
  await srv.waitFor((e) => e.some(named(/^Sync hid$/)), 'the new tab\u2019s event')
  assert.deepEqual(names(await queues(b)), kept, 'left to the hidden tab')
  srv.release(200)
  await until(async () => !Object.keys(await queues(a)).length, 'the hidden tab to drop its copy once answered')
  await a.evaluate(() => waymark('track', 'Sync hid 2'))
  await srv.waitFor((e) => e.some(named(/^Sync hid 2$/)), 'the hidden tab\u2019s next event')
  assertSentOnce(named(/^In flight$/), 1)
  assert.equal(srv.events('hid').filter(named(/^In flight$/)).length, 1)
  await until(async () => !(await locks(a)).length, 'no lock once nothing is stored')
  assert.deepEqual(errors, [])
  await context.close()
})

test('two tabs gone with sends in flight: the next page sends both, none is lost', async () => {
  // Two write keys on one origin, so that the collector can hold one send of each.
  srv.pages.set('/fly-a', html({ init: { site: 'fly-a', flushInterval: 20 } }))
  srv.pages.set('/fly-b', html({ init: { site: 'fly-b', flushInterval: 20 } }))
  srv.pages.set('/plain', '<!doctype html><title>no tag</title>')
  const { page: a, context, errors } = await newPage(browser)
  const { page: b } = await addPage(context, errors)
  await a.goto(`${srv.origin}/fly-a`)
  await b.goto(`${srv.origin}/fly-b`)
  await srv.waitFor((e) => e.some(ofSite('fly-a')) && e.some(ofSite('fly-b')), 'both page views')
  srv.hold('fly-a')
  await a.evaluate(() => waymark('track', 'Flight A'))
  await until(() => srv.held.length == 1, "tab A's send held open")
  srv.hold('fly-b')
  await b.evaluate(() => waymark('track', 'Flight B'))
  await until(() => srv.held.length == 2, "tab B's send held open")
  await setVisibility(a, 'hidden')
  await setVisibility(b, 'hidden')
  await until(async () => Object.values(names(await queues(a))).sort().join('|') == 'Flight A|Flight B', 'both sends in flight kept')
  await a.close()
  await b.close()
  srv.release(503) // the answers reach no page
  // A page of the origin without the tag: to see both locks gone before the tag loads again.
  const { page: plain } = await addPage(context, errors)
  await plain.goto(`${srv.origin}/plain`)
  await until(async () => !(await locks(plain)).length, 'the closed tabs\u2019 locks to go')
  assert.equal(Object.keys(await queues(plain)).length, 2)

  await plain.goto(`${srv.origin}/fly-a`)
  await srv.waitFor((e) => e.filter(named(/^Flight /)).length == 2, 'both sends again')
  await plain.evaluate(() => waymark('track', 'Sync fly'))
  await srv.waitFor((e) => e.some(named(/^Sync fly$/)), 'an event after them')
  // Sent twice each: once by its tab (refused, or answered to no one: the tag cannot know
  // which), once by the next page, with the same messageId. Accepted once.
  const sends = srv.sends(named(/^Flight /))
  assert.equal(sends.size, 2)
  for (const [id, k] of sends) assert.equal(k, 2, `messageId ${id} sent ${k} times`)
  assert.equal(srv.events().filter(named(/^Flight /)).length, 2)
  assert.deepEqual(await queues(plain), {})
  assert.deepEqual(errors, [])
  await context.close()
})

test('keys left by a page gone between two writes, and by the tag before per-tab keys: each event sent once', async () => {
  srv.pages.set('/left', html({ init: { site: 'left', flushInterval: 20 } }))
  srv.pages.set('/plain-left', '<!doctype html><title>no tag</title>')
  const { page, context, errors } = await newPage(browser)
  await page.goto(`${srv.origin}/plain-left`)
  const ev = (name, id) =>
    JSON.stringify({ type: 'track', messageId: id, anonymousId: 'a-1', event: name, originalTimestamp: new Date().toISOString(), properties: {} })
  const twice = ev('Left twice', '01a22a00-0000-7000-8000-000000000001')
  const once = ev('Left once', '01a22a00-0000-7000-8000-000000000002')
  const legacy = ev('Legacy', '01a22a00-0000-7000-8000-000000000003')
  // A page that wrote its send in flight, then went away before it removed the same events from
  // its queue; and the queue of a tag that kept one `wm_q` for all tabs.
  await page.evaluate(
    ([twice, once, legacy]) => {
      localStorage.setItem('wm_q0.25', `0\n${twice}\n${once}`)
      localStorage.setItem('wm_f0.25', `0\n${twice}`)
      localStorage.setItem('wm_q', `0\n${legacy}`)
    },
    [twice, once, legacy],
  )
  await page.goto(`${srv.origin}/left`)
  await srv.waitFor((e) => e.filter(named(/^(Left|Legacy)/)).length >= 3, 'the events left behind')
  await page.evaluate(() => waymark('track', 'Sync left'))
  await srv.waitFor((e) => e.some(named(/^Sync left$/)), 'an event after them')
  assertSentOnce(named(/^(Left|Legacy)/), 3)
  assert.deepEqual(await queues(page), {})
  assert.deepEqual(errors, [])
  await context.close()
})
