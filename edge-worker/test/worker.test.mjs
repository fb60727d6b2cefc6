// The built worker in workerd (Miniflare) against a recording stand-in for the ingest server's
// /v1/edge. The same worker against the real ingest server and ClickHouse is ingest.test.mjs.
import assert from 'node:assert/strict';
import http from 'node:http';
import { after, before, describe, test } from 'node:test';

import {
  CHROME_UA,
  ORIGIN,
  PREFIX,
  batch,
  event,
  freePort,
  postBatch,
  runId,
  startRecorder,
  startWorker,
  waitFor,
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

describe('queue forwarding', () => {
  test('every event is delivered exactly once across an ingest outage', async () => {
    const rec = await startRecorder();
    const mf = await startWorker({ ingestUrl: rec.url, queue: true });
    try {
      const run = runId();
      // Down: connection refused.
      await rec.stop();
      const batches = 8;
      const per = 5;
      for (let b = 0; b < batches; b++) {
        const r = await postBatch(mf, batch(run, per, { from: b * per }));
        assert.equal(r.status, 200, r.text);
        assert.equal(r.json.forwarded, 'queue');
      }
      // Let the consumer fail against the closed port, then come back answering 503 a few
      // times before it recovers.
      await waitFor('a failed forward while the receiver is down', () =>
        mf.logs.some((l) => l.includes('forward failed, Queues will redeliver') && l.includes('Network connection lost')),
      );
      rec.failNext(2);
      await rec.start();
      const want = batches * per;
      await waitFor(`${want} events at the receiver`, () => rec.events().filter(({ e }) => e.messageId.startsWith(run)).length >= want, {
        timeoutMs: 60_000,
      });
      // A last batch sent after everything arrived: once it is in, anything redelivered would be too.
      const r = await postBatch(mf, batch(`${run}-last`, 1));
      assert.equal(r.status, 200);
      await waitFor('the last batch', () => rec.events().some(({ e }) => e.messageId === `${run}-last-0`), { timeoutMs: 30_000 });

      const seen = new Map();
      for (const { e, env } of rec.events()) {
        if (!e.messageId.startsWith(`${run}-`) || e.messageId.startsWith(`${run}-last`)) continue;
        seen.set(e.messageId, (seen.get(e.messageId) ?? 0) + 1);
        assert.equal(env.geo.city, 'Berlin');
        assert.equal(env.client.ip, '203.0.113.0');
      }
      assert.equal(seen.size, want);
      for (const [id, n] of seen) assert.equal(n, 1, `${id} delivered ${n} times`);
      assert.ok(rec.failed >= 2, `the receiver answered 503 ${rec.failed} times`);
      // One signed request carried several queued batches.
      assert.ok(rec.accepted.some((f) => f.body.envelopes.length > 1), 'batches are combined per delivery');
    } finally {
      await mf.dispose();
      await rec.stop();
    }
  });

  test('a batch that is never accepted ends in the dead-letter queue, intact', async () => {
    const rec = await startRecorder();
    rec.failNext(Number.MAX_SAFE_INTEGER); // the ingest server answers 503, always
    // What the dead-letter queue's consumer (a second worker) hands on.
    const dead = [];
    const port = await freePort();
    const sink = http.createServer((req, res) => {
      const chunks = [];
      req.on('data', (c) => chunks.push(c));
      req.on('end', () => {
        dead.push(Buffer.concat(chunks).toString('utf8'));
        res.end('ok');
      });
    });
    await new Promise((resolve) => sink.listen(port, '127.0.0.1', resolve));
    const mf = await startWorker({
      ingestUrl: rec.url,
      queue: true,
      maxRetries: 2,
      deadLetterSink: `http://127.0.0.1:${port}/`,
    });
    try {
      const run = runId();
      const r = await postBatch(mf, batch(run, 3));
      assert.equal(r.status, 200, r.text);
      assert.equal(r.json.forwarded, 'queue');
      await waitFor('the batch in the dead-letter queue', () => dead.length >= 1, { timeoutMs: 30_000 });
      assert.equal(dead.length, 1, dead.join('\n'));
      // The envelope as the edge built it: events, geo and client fields, ready to replay.
      const env = JSON.parse(dead[0]);
      assert.deepEqual(
        env.events.map((e) => e.messageId),
        [0, 1, 2].map((i) => `${run}-${i}`),
      );
      assert.equal(env.geo.city, 'Berlin');
      assert.equal(env.client.ip, '203.0.113.0');
      // Delivered once and retried twice, each refused; nothing accepted.
      assert.equal(rec.failed, 3);
      assert.equal(rec.accepted.length, 0);
    } finally {
      await mf.dispose();
      await rec.stop();
      sink.closeAllConnections();
      await new Promise((resolve) => sink.close(resolve));
    }
  });
});
