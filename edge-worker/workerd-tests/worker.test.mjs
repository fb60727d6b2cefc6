// The built worker in workerd (Miniflare) against a recording stand-in for the ingest server's
// /v1/edge. The same worker against the real ingest server and ClickHouse is ingest.test.mjs.
import assert from 'node:assert/strict';
import http from 'node:http';
import { after, before, describe, test } from 'node:test';

import {
  CHROME_UA,
  DLQ,
  ORIGIN,
  PREFIX,
  batch,
  event,
  freePort,
  postBatch,
  queueClock,
  runId,
  startRecorder,
  startWorker,
  waitFor,
  wranglerConsumer,
} from './harness.mjs';

describe('direct forwarding (no queue bound)', () => {
  let rec;
  let mf;
  before(async () => {
    rec = await startRecorder();
    mf = await startWorker({ ingestUrl: rec.url });
  });
  after(async () => {
    await mf?.dispose();
    await rec?.stop();
  });

  test('a batch arrives signed, with the injected geo, a truncated IP and flags', async () => {
    const run = runId();
    const before = rec.accepted.length;
    const r = await postBatch(mf, batch(run, 3));
    assert.equal(r.status, 200, r.text);
    assert.deepEqual(
      { accepted: r.json.accepted, rejected: r.json.rejected, forwarded: r.json.forwarded },
      { accepted: 3, rejected: 0, forwarded: 'direct' },
    );
    assert.equal(r.res.headers.get('access-control-allow-origin'), ORIGIN);
    assert.equal(rec.accepted.length, before + 1, 'one signed request per batch');
    const fwd = rec.accepted.at(-1);
    assert.match(fwd.headers['x-waymark-signature'], /^v1=[0-9a-f]{64}$/);
    const [env] = fwd.body.envelopes;
    assert.equal(env.writeKey, 'wk_test');
    assert.deepEqual(env.geo, {
      country: 'DE',
      region: 'Berlin',
      regionCode: 'BE',
      city: 'Berlin',
      postalCode: '10115',
      latitude: 52.52,
      longitude: 13.405,
      timezone: 'Europe/Berlin',
      continent: 'EU',
      asn: 3320,
      colo: 'FRA',
    });
    assert.deepEqual(env.client, {
      ip: '203.0.113.0',
      userAgent: CHROME_UA,
      gpc: false,
      botScore: 87,
      bot: false,
    });
    assert.ok(Math.abs(Date.parse(env.receivedAt) - Date.now()) < 60_000, env.receivedAt);
    assert.deepEqual(
      env.events.map((e) => e.messageId),
      [0, 1, 2].map((i) => `${run}-${i}`),
    );
    assert.equal(env.events[0].anonymousId, 'anon-1');
  });

  test('missing cf fields are left out, IPv6 is cut to /48, bots and GPC are flagged', async () => {
    const r = await postBatch(mf, batch(runId(), 1), {
      // Miniflare fills fields left out of `cf` from its placeholder (Austin, DFW), so the missing
      // ones are sent as null, which the worker must treat the same as absent.
      cf: {
        country: 'US',
        region: null,
        regionCode: null,
        city: null,
        postalCode: null,
        latitude: null,
        longitude: null,
        timezone: null,
        continent: null,
        asn: null,
        colo: null,
        botManagement: { score: 2 },
      },
      headers: {
        'cf-connecting-ip': '2001:db8:85a3:8d3:1319:8a2e:370:7348',
        'sec-gpc': '1',
        'user-agent': 'Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)',
      },
    });
    assert.equal(r.status, 200, r.text);
    const [env] = rec.accepted.at(-1).body.envelopes;
    assert.equal(env.geo.country, 'US');
    for (const k of ['region', 'regionCode', 'city', 'postalCode', 'latitude', 'longitude', 'timezone', 'continent', 'asn', 'colo']) {
      assert.equal(env.geo[k], undefined, `geo.${k} should be absent, got ${JSON.stringify(env.geo)}`);
    }
    assert.equal(env.client.ip, '2001:db8:85a3::');
    assert.equal(env.client.bot, true);
    assert.equal(env.client.botScore, 2);
    assert.equal(env.client.gpc, true);
    assert.equal(env.events[0].anonymousId, 'gpc-s-1', 'GPC: the persistent id becomes a session-scoped pseudonym');
    assert.equal(env.events[0].userId, undefined);
    assert.equal(env.events[0].properties.product_id, 'p-1', 'but keeps the event');
  });

  test('IP_MODE=drop forwards no address at all', async () => {
    const dropping = await startWorker({ ingestUrl: rec.url, vars: { IP_MODE: 'drop' } });
    try {
      const run = runId();
      const body = JSON.stringify({ writeKey: 'wk_test', batch: [event(run, 0, { context: { ip: '198.51.100.23' } })] });
      const r = await postBatch(dropping, body);
      assert.equal(r.status, 200, r.text);
      const sent = JSON.stringify(rec.accepted.at(-1).body);
      assert.ok(sent.includes(`${run}-0`));
      assert.equal(rec.accepted.at(-1).body.envelopes[0].client.ip, undefined);
      assert.doesNotMatch(sent, /203\.0\.113|198\.51\.100/, 'neither the connecting IP nor context.ip');
    } finally {
      await dropping.dispose();
    }
  });

  test('invalid events are listed back, the good ones go on', async () => {
    const run = runId();
    const body = JSON.stringify({
      writeKey: 'wk_test',
      batch: [event(run, 0), { ...event(run, 1), messageId: undefined }, event(run, 2, { type: 'shout' })],
    });
    const r = await postBatch(mf, body);
    assert.equal(r.status, 200, r.text);
    assert.equal(r.json.accepted, 1);
    assert.equal(r.json.rejected, 2);
    const fields = r.json.rejections.map((x) => `${x.index}.${x.field}`);
    assert.ok(fields.includes('1.messageId'), JSON.stringify(r.json.rejections));
    assert.ok(fields.includes('2.type'), JSON.stringify(r.json.rejections));
    assert.deepEqual(
      rec.accepted.at(-1).body.envelopes[0].events.map((e) => e.messageId),
      [`${run}-0`],
    );
  });

  test('bad batches get the right 4xx naming why, and nothing is forwarded', async () => {
    const before = rec.accepted.length;
    const cases = [
      ['{"batch": [', 400, 'invalid_json', 'body'],
      ['[1, 2]', 400, 'not_an_object', 'body'],
      ['{"writeKey": "wk"}', 400, 'missing_batch', 'batch'],
      ['{"batch": {}, "writeKey": "wk"}', 400, 'batch_not_array', 'batch'],
      [JSON.stringify({ batch: [event('x', 0)] }), 400, 'missing_write_key', 'writeKey'],
      [JSON.stringify({ batch: [], writeKey: 'wk', sentAt: 'yesterday' }), 400, 'invalid_field', 'sentAt'],
      [JSON.stringify({ batch: Array.from({ length: 501 }, (_, i) => ({ i })), writeKey: 'wk' }), 413, 'too_many_events', 'batch'],
      ['x'.repeat(600 * 1024), 413, 'body_too_large', 'body'],
    ];
    for (const [body, status, code, field] of cases) {
      const r = await postBatch(mf, body);
      assert.equal(r.status, status, `${code}: ${r.text}`);
      assert.equal(r.json?.error?.code, code, r.text);
      assert.equal(r.json.error.field, field, r.text);
      assert.ok(r.json.error.reason.length > 0, r.text);
      assert.equal(r.res.headers.get('access-control-allow-origin'), ORIGIN, 'the tag can read why');
    }
    assert.equal(rec.accepted.length, before);
  });

  test('CORS preflight, refused origins and wrong methods', async () => {
    const pre = await mf.dispatchFetch(`http://shop.example${PREFIX}/v1/batch`, {
      method: 'OPTIONS',
      headers: { origin: ORIGIN, 'access-control-request-method': 'POST', 'access-control-request-headers': 'content-type' },
    });
    assert.equal(pre.status, 204);
    assert.equal(pre.headers.get('access-control-allow-origin'), ORIGIN);
    assert.match(pre.headers.get('access-control-allow-methods'), /POST/);
    assert.equal(pre.headers.get('access-control-allow-headers'), 'content-type');
    assert.ok(Number(pre.headers.get('access-control-max-age')) > 0);

    const get = await mf.dispatchFetch(`http://shop.example${PREFIX}/v1/batch`);
    assert.equal(get.status, 405);
    assert.match(get.headers.get('allow'), /POST/);
    await get.text();

    const nf = await mf.dispatchFetch(`http://shop.example/other/v1/batch`, { method: 'POST', body: '{}' });
    assert.equal(nf.status, 404);
    await nf.text();

    const strict = await startWorker({ ingestUrl: rec.url, vars: { ALLOWED_ORIGINS: 'https://only.example' } });
    try {
      const r = await postBatch(strict, batch(runId(), 1));
      assert.equal(r.status, 403, r.text);
      assert.equal(r.json.error.field, 'origin');
      const p = await strict.dispatchFetch(`http://shop.example${PREFIX}/v1/batch`, {
        method: 'OPTIONS',
        headers: { origin: ORIGIN, 'access-control-request-method': 'POST' },
      });
      assert.equal(p.status, 403);
      await p.text();
    } finally {
      await strict.dispose();
    }
  });

  test('when the ingest server is down the tag gets 503 with Retry-After, then succeeds', async () => {
    const run = runId();
    await rec.stop();
    try {
      const r = await postBatch(mf, batch(run, 2));
      assert.equal(r.status, 503, r.text);
      assert.ok(Number(r.res.headers.get('retry-after')) > 0);
      assert.match(r.res.headers.get('access-control-expose-headers'), /Retry-After/, 'the tag can read it cross-origin');
      assert.equal(r.json.error.code, 'unavailable');
    } finally {
      await rec.start();
    }
    rec.failNext(1);
    const r503 = await postBatch(mf, batch(run, 2));
    assert.equal(r503.status, 503, 'an ingest 5xx is passed back too');
    const ok = await postBatch(mf, batch(run, 2));
    assert.equal(ok.status, 200, ok.text);
    const ids = rec.events().map(({ e }) => e.messageId).filter((id) => id.startsWith(run));
    assert.deepEqual(ids, [`${run}-0`, `${run}-1`]);
  });

  test('a wrong secret is refused by the receiver, and the tag is told to retry', async () => {
    const wrong = await startWorker({ ingestUrl: rec.url, secret: 'not-the-secret' });
    try {
      const refusedBefore = rec.refused;
      const r = await postBatch(wrong, batch(runId(), 1));
      assert.equal(r.status, 503, r.text);
      assert.doesNotMatch(r.text, /127\.0\.0\.1/, 'internal addresses stay in the log');
      assert.equal(rec.refused, refusedBefore + 1);
      await waitFor('the refusal in the worker log', () => wrong.logs.some((l) => l.includes('answered 401')));
    } finally {
      await wrong.dispose();
    }
  });
});

// The queue tests run the broker on a clock they advance (`queueClock`): the worker asks for
// delays of 30 s to 30 min, and a day-long outage passes in seconds. The worker, its fetches and
// the receiver run in real time, so what is checked is what workerd really did.

/** The broker hands a batch to the consumer this long after a message became ready. */
const BATCH_MS = 200;
/** The schedule the worker should follow (src/consume.rs): 30 s doubling, at most 30 min. */
const backoffSecs = (attempts) => Math.min(30 * 2 ** (attempts - 1), 30 * 60);

/**
 * After a delivery that failed, checks that the message comes back `ms` later, not a millisecond
 * sooner: `count()` counts the deliveries seen so far. A message that becomes ready waits the
 * batch timeout before it is handed over, and the broker's fake time jumps to the end of each
 * advance before due timers run, so: up to `ms - 1` plus one batch timeout, anything that was
 * ready early has been delivered; one more batch timeout delivers the one ready at `ms`.
 */
async function expectRedeliveryAfter(clock, ms, count, what) {
  const before = count();
  await clock.advance(ms - 1);
  await clock.advance(BATCH_MS);
  assert.equal(count(), before, `${what}: delivered again before ${ms} ms`);
  await clock.advance(BATCH_MS);
  assert.equal(count(), before + 1, `${what}: not delivered again ${ms} ms later`);
}

/** A second worker consuming the dead-letter queue, POSTing each body to a local sink. */
async function deadLetterSink() {
  const bodies = [];
  const port = await freePort();
  const server = http.createServer((req, res) => {
    const chunks = [];
    req.on('data', (c) => chunks.push(c));
    req.on('end', () => {
      bodies.push(Buffer.concat(chunks).toString('utf8'));
      res.end('ok');
    });
  });
  await new Promise((resolve) => server.listen(port, '127.0.0.1', resolve));
  return {
    url: `http://127.0.0.1:${port}/`,
    bodies,
    async stop() {
      server.closeAllConnections();
      await new Promise((resolve) => server.close(resolve));
    },
  };
}

const idsOf = (rec, prefix) =>
  rec
    .events()
    .map(({ e }) => e.messageId)
    .filter((id) => id.startsWith(prefix));

function assertOnce(ids, want) {
  const counts = new Map();
  for (const id of ids) counts.set(id, (counts.get(id) ?? 0) + 1);
  assert.deepEqual([...counts.keys()].sort(), [...want].sort());
  for (const [id, n] of counts) assert.equal(n, 1, `${id} delivered ${n} times`);
}

describe('queue forwarding', () => {
  test('wrangler.toml allows 100 retries (Cloudflare\'s maximum), as these tests assume', () => {
    assert.deepEqual(wranglerConsumer(), { maxRetries: 100, retryDelay: 30 });
  });

  test('a 30-hour ingest outage: retried on the growing schedule, nothing in the dead-letter queue, every event delivered once after', async () => {
    const rec = await startRecorder();
    const dead = await deadLetterSink();
    const mf = await startWorker({ ingestUrl: rec.url, queue: true, deadLetterSink: dead.url });
    try {
      const clock = await queueClock(mf);
      await clock.start();
      const run = runId();
      // Down: every forward's connection is cut unanswered.
      rec.hangUp = true;
      const batches = 8;
      const per = 5;
      for (let b = 0; b < batches; b++) {
        const r = await postBatch(mf, batch(run, per, { from: b * per }));
        assert.equal(r.status, 200, r.text);
        assert.equal(r.json.forwarded, 'queue');
      }
      await clock.advance(BATCH_MS);
      assert.equal(rec.cut, 1, 'the first delivery: one request for the one write key');
      let attempts = 1;
      const outageMs = 30 * 60 * 60 * 1000;
      while (clock.elapsedMs < outageMs) {
        await expectRedeliveryAfter(clock, backoffSecs(attempts) * 1000, () => rec.cut, `after delivery ${attempts}`);
        attempts++;
      }
      // The old settings (10 retries 30 s apart) gave up after 11 deliveries and 5 minutes.
      assert.ok(attempts > 11, `${attempts} deliveries`);
      assert.ok(clock.elapsedMs >= outageMs);
      assert.equal(rec.accepted.length, 0);

      // Back up: the next scheduled delivery gets through.
      rec.hangUp = false;
      await expectRedeliveryAfter(clock, backoffSecs(attempts) * 1000, () => rec.tried.length, 'after the outage');
      const want = Array.from({ length: batches * per }, (_, i) => `${run}-${i}`);
      assertOnce(idsOf(rec, `${run}-`), want);
      assert.equal(rec.accepted.length, 1, 'one signed request carried all 8 queued batches');
      for (const { e, env } of rec.events()) {
        assert.equal(env.geo.city, 'Berlin', e.messageId);
        assert.equal(env.client.ip, '203.0.113.0', e.messageId);
      }
      // Acknowledged: a whole schedule step later nothing comes again, and nothing was dead-lettered.
      await clock.advance(30 * 60 * 1000 + BATCH_MS);
      await clock.advance(BATCH_MS);
      assert.equal(rec.tried.length, 1);
      assertOnce(idsOf(rec, `${run}-`), want);
      assert.deepEqual(dead.bodies, []);
    } finally {
      await mf.dispose();
      await rec.stop();
      await dead.stop();
    }
  });

  test('a 429 for one site leaves the other site\'s events delivered, and its Retry-After sets the wait', async () => {
    const rec = await startRecorder();
    const mf = await startWorker({ ingestUrl: rec.url, queue: true });
    try {
      const clock = await queueClock(mf);
      await clock.start();
      const run = runId();
      let limited = true;
      const busy = (fwd) => fwd.envelopes.some((env) => env.writeKey === 'wk_busy');
      // Like the ingest server: the whole request is refused when its site is over the limit.
      rec.rule = (fwd) => (limited && busy(fwd) ? { status: 429, headers: { 'retry-after': '600' } } : null);
      const a = await postBatch(mf, batch(`${run}-busy`, 3, { writeKey: 'wk_busy' }));
      const b = await postBatch(mf, batch(`${run}-calm`, 3, { writeKey: 'wk_calm' }));
      assert.equal(a.status, 200, a.text);
      assert.equal(b.status, 200, b.text);
      // Both batches in one delivery: one request per write key.
      await clock.advance(BATCH_MS);
      assert.equal(rec.tried.length, 2);
      for (const fwd of rec.tried) {
        assert.equal(new Set(fwd.envelopes.map((env) => env.writeKey)).size, 1, 'one site per request');
      }
      assertOnce(idsOf(rec, `${run}-calm-`), [0, 1, 2].map((i) => `${run}-calm-${i}`));
      assert.deepEqual(idsOf(rec, `${run}-busy-`), []);

      // Retry-After (600 s) is longer than the schedule's first step (30 s), so it decides.
      limited = false;
      await expectRedeliveryAfter(clock, 600_000, () => rec.tried.filter(busy).length, 'the rate-limited site');
      assertOnce(idsOf(rec, `${run}-busy-`), [0, 1, 2].map((i) => `${run}-busy-${i}`));
      // The other site's events were acknowledged the first time and never sent again.
      assert.equal(rec.tried.filter((f) => !busy(f)).length, 1);
      assertOnce(idsOf(rec, `${run}-calm-`), [0, 1, 2].map((i) => `${run}-calm-${i}`));
    } finally {
      await mf.dispose();
      await rec.stop();
    }
  });

  test('a request refused as a whole (400) is split, so one message the server cannot take holds up no other', async () => {
    const rec = await startRecorder();
    const mf = await startWorker({ ingestUrl: rec.url, queue: true });
    try {
      const clock = await queueClock(mf);
      await clock.start();
      const run = runId();
      const poisoned = (fwd) => fwd.envelopes.some((env) => env.events.some((e) => e.messageId.includes('-bad-')));
      rec.rule = (fwd) => (poisoned(fwd) ? { status: 400, body: '{"error":"invalid_json","field":"body"}' } : null);
      assert.equal((await postBatch(mf, batch(`${run}-ok`, 2))).status, 200);
      assert.equal((await postBatch(mf, batch(`${run}-bad`, 1))).status, 200);
      await clock.advance(BATCH_MS);
      // The group of both (400), then each message alone: the good one is stored.
      assert.equal(rec.tried.length, 3);
      assertOnce(idsOf(rec, `${run}-ok-`), [`${run}-ok-0`, `${run}-ok-1`]);
      // The refused one is kept and retried on the schedule (never dropped).
      await expectRedeliveryAfter(clock, backoffSecs(1) * 1000, () => rec.tried.length, 'the refused message');
      assert.ok(poisoned(rec.tried[3]));
      assert.deepEqual(idsOf(rec, `${run}-bad-`), []);
      await waitFor('the refusal explained in the log', () =>
        mf.logs.some((l) => l.includes('answered 400 to the whole request')),
      );
    } finally {
      await mf.dispose();
      await rec.stop();
    }
  });

  test('a batch the ingest server never takes reaches the dead-letter queue after 101 deliveries and 47.5 hours, intact', async () => {
    const rec = await startRecorder();
    rec.failNext(Number.MAX_SAFE_INTEGER); // the ingest server answers 503, always
    const dead = await deadLetterSink();
    const mf = await startWorker({ ingestUrl: rec.url, queue: true, deadLetterSink: dead.url });
    try {
      const clock = await queueClock(mf);
      await clock.start();
      const run = runId();
      const r = await postBatch(mf, batch(run, 3));
      assert.equal(r.status, 200, r.text);
      assert.equal(r.json.forwarded, 'queue');
      await clock.advance(BATCH_MS);
      const { maxRetries } = wranglerConsumer();
      for (let attempts = 1; attempts <= maxRetries; attempts++) {
        await expectRedeliveryAfter(clock, backoffSecs(attempts) * 1000, () => rec.failed, `after delivery ${attempts}`);
      }
      // Delivered once and retried 100 times, each refused; 171,090 s of waits in between.
      assert.equal(rec.failed, maxRetries + 1);
      assert.ok(clock.elapsedMs >= 171_090_000, `${clock.elapsedMs} ms`);
      await waitFor('the batch in the dead-letter queue', () => dead.bodies.length >= 1);
      assert.equal(dead.bodies.length, 1, dead.bodies.join('\n'));
      // The envelope as the edge built it: events, geo and client fields, ready to replay.
      const env = JSON.parse(dead.bodies[0]);
      assert.deepEqual(
        env.events.map((e) => e.messageId),
        [0, 1, 2].map((i) => `${run}-${i}`),
      );
      assert.equal(env.geo.city, 'Berlin');
      assert.equal(env.client.ip, '203.0.113.0');
      assert.equal(rec.accepted.length, 0);
    } finally {
      await mf.dispose();
      await rec.stop();
      await dead.stop();
    }
  });
});

describe('replaying the dead-letter queue (the worker consuming it too)', () => {
  /** An envelope as the edge builds it, taken from a normal delivery, with fresh message ids. */
  async function realEnvelope(mf, rec, clock, run) {
    const r = await postBatch(mf, batch(`${run}-template`, 2));
    assert.equal(r.status, 200, r.text);
    await clock.advance(BATCH_MS);
    const env = rec.accepted.at(-1).body.envelopes[0];
    return { ...env, events: env.events.map((e, i) => ({ ...e, messageId: `${run}-dead-${i}` })) };
  }

  test('a dead letter is forwarded to the ingest server', async () => {
    const rec = await startRecorder();
    const mf = await startWorker({ ingestUrl: rec.url, queue: true, replay: true });
    try {
      const clock = await queueClock(mf);
      await clock.start();
      const run = runId();
      const env = await realEnvelope(mf, rec, clock, run);
      const dl = await mf.getQueueProducer('DEAD_LETTERS');
      await dl.send(JSON.stringify(env), { contentType: 'text' });
      // The dead-letter queue's broker runs on real time: its batch timeout passes by itself.
      await waitFor('the dead letter at the ingest server', () => idsOf(rec, `${run}-dead-`).length >= 2);
      assertOnce(idsOf(rec, `${run}-dead-`), [`${run}-dead-0`, `${run}-dead-1`]);
      const fwd = rec.accepted.find((f) => f.body.envelopes.some((e) => e.events.some((x) => x.messageId === `${run}-dead-0`)));
      assert.equal(fwd.body.envelopes[0].geo.city, 'Berlin', 'geo and client facts as the edge saw them');
      assert.match(fwd.headers['x-waymark-signature'], /^v1=[0-9a-f]{64}$/, 'signed like any forward');
      await waitFor('the replay in the log', () =>
        mf.logs.some((l) => l.includes(`replaying 1 message(s) from the dead-letter queue ${DLQ}`)),
      );
    } finally {
      await mf.dispose();
      await rec.stop();
    }
  });

  test('a dead letter that still fails goes back on the main queue, never deleted', async () => {
    const rec = await startRecorder();
    // No retries on the dead-letter queue at all: a retry there would delete the message.
    const mf = await startWorker({ ingestUrl: rec.url, queue: true, replay: true, replayMaxRetries: 0 });
    try {
      const clock = await queueClock(mf);
      await clock.start();
      const run = runId();
      const env = await realEnvelope(mf, rec, clock, run);
      const triedBefore = rec.tried.length;
      rec.failNext(1);
      const dl = await mf.getQueueProducer('DEAD_LETTERS');
      await dl.send(JSON.stringify(env), { contentType: 'text' });
      await waitFor('the dead letter put back on the main queue', () =>
        mf.logs.some((l) => l.includes('put dead letter') && l.includes('back on WAYMARK_QUEUE (next delivery in 30 s)')),
      );
      assert.equal(rec.failed, 1);
      assert.equal(rec.tried.length, triedBefore + 1);
      // On the main queue, waiting the schedule's first step (the main queue's clock is the test's).
      await expectRedeliveryAfter(clock, backoffSecs(1) * 1000, () => rec.tried.length, 'the dead letter put back');
      assertOnce(idsOf(rec, `${run}-dead-`), [`${run}-dead-0`, `${run}-dead-1`]);
      // (With replayMaxRetries 0 a retry on the dead-letter queue would have deleted it: that it
      // arrived shows it went back to the main queue.)
    } finally {
      await mf.dispose();
      await rec.stop();
    }
  });
});
