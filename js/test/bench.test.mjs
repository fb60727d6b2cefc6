// Benchmark (prints, does not assert a time): main-thread time per captured event in Chromium.
import { test, before, after } from 'node:test'
import assert from 'node:assert/strict'
import { launch, collector, html, newPage } from './harness.mjs'

let browser, srv
before(async () => {
  browser = await launch()
  srv = await collector()
})
after(async () => {
  await browser?.close()
  await srv?.close()
})

test('benchmark: main-thread time per captured event', async () => {
  const TRACKS = 2000
  const CLICKS = 500
  srv.pages.set('/bench', html({ init: { site: 'bench', flushInterval: 20 }, body: '<button id="b">Add to cart</button>' }))
  const { page, context, cdp, errors } = await newPage(browser)
  await page.goto(`${srv.origin}/bench`)
  await srv.waitFor((e) => e.some((x) => x._batch.body.writeKey == 'bench'), 'the page view')
  await cdp.send('Performance.enable')
  const metric = async (name) => (await cdp.send('Performance.getMetrics')).metrics.find((m) => m.name == name).value
  const task0 = await metric('TaskDuration')
  const r = await page.evaluate(
    ([tracks, clicks]) => {
      const t0 = performance.now()
      for (let i = 0; i < tracks; i++) waymark('track', 'Bench', { i, sku: 'sku-' + (i % 50), price: 9.5 })
      const t1 = performance.now()
      const b = document.getElementById('b')
      for (let i = 0; i < clicks; i++) b.click()
      const t2 = performance.now()
      return { track: t1 - t0, click: t2 - t1 }
    },
    [TRACKS, CLICKS],
  )
  const evs = await srv.waitFor(
    (e) => e.filter((x) => x._batch.body.writeKey == 'bench' && x.type == 'track').length >= TRACKS + CLICKS,
    'every benchmark event',
    60000,
  )
  const task1 = await metric('TaskDuration')
  const mine = evs.filter((x) => x._batch.body.writeKey == 'bench')
  assert.equal(new Set(mine.map((e) => e.messageId)).size, mine.length, 'unique message ids')
  const us = (ms, n) => ((ms * 1000) / n).toFixed(1)
  console.log(
    `tag benchmark (Chromium, main thread): track() ${us(r.track, TRACKS)} us/event, ` +
      `click capture ${us(r.click, CLICKS)} us/event, ` +
      `all main-thread work incl. batching and sending ${us((task1 - task0) * 1000, TRACKS + CLICKS)} us/event ` +
      `(target <= 50 us; ${TRACKS} tracks, ${CLICKS} clicks)`,
  )
  assert.deepEqual(errors, [])
  await context.close()
})
