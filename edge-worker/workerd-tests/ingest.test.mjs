// The built worker in workerd forwarding to the REAL ingest server (target/debug/ingest-server)
// with a private real ClickHouse: what arrives in the events table is what the edge saw.
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';

import { batch, event, postBatch, queueClock, runId, startWorker, waitFor } from './harness.mjs';
import { startClickHouse, startIngest } from './services.mjs';

const SECRET = 'edge-secret-for-tests';
const WRITE_KEY = 'wk_edge_test';

describe('worker -> real ingest server -> ClickHouse', () => {
  let ch;
  let n = 0;
  const database = () => `edge_test_${process.pid}_${n++}`;
  before(async () => {
    ch = await startClickHouse();
  });
  after(async () => ch?.stop());

  async function rowsFor(db, run) {
    return ch.rows(`SELECT * FROM ${db}.events WHERE message_id LIKE '${run}-%' ORDER BY message_id`);
  }

  test('events arrive with the injected geo, the truncated IP and the flags', async () => {
    const db = database();
    const ingest = await startIngest({ clickhouse: ch, database: db, secret: SECRET, writeKey: WRITE_KEY });
    const mf = await startWorker({ ingestUrl: ingest.url, secret: SECRET });
    try {
      const run = runId();
      const plain = await postBatch(mf, batch(run, 3, { writeKey: WRITE_KEY }));
      assert.equal(plain.status, 200, plain.text);
      assert.equal(plain.json.accepted, 3);
      const flagged = await postBatch(
        mf,
        JSON.stringify({ writeKey: WRITE_KEY, batch: [event(run, 9)] }),
        {
          cf: { country: 'JP', city: 'Tokyo', region: null, regionCode: null, postalCode: null, latitude: null,
                longitude: null, timezone: 'Asia/Tokyo', continent: 'AS', asn: 2516, colo: 'NRT', botManagement: { score: 4 } },
          headers: { 'cf-connecting-ip': '2001:db8:85a3:8d3:1319:8a2e:370:7348', 'sec-gpc': '1' },
        },
      );
      assert.equal(flagged.status, 200, flagged.text);

      const rows = await waitFor('4 rows in ClickHouse', async () => {
        const r = await rowsFor(db, run);
        return r.length >= 4 && r;
      });
      assert.equal(rows.length, 4);
      const [a, , , gpc] = rows;
      assert.equal(a.source, 'edge');
      assert.equal(a.site, 'shop');
      assert.deepEqual(
        [a.country, a.region, a.region_code, a.city, a.postal_code, a.geo_timezone, a.continent, a.colo],
        ['DE', 'Berlin', 'BE', 'Berlin', '10115', 'Europe/Berlin', 'EU', 'FRA'],
      );
      assert.equal(Number(a.latitude), 52.52);
      assert.equal(Number(a.longitude), 13.405);
      assert.equal(Number(a.asn), 3320);
      assert.equal(a.ip, '203.0.113.0', 'IPv4 cut to /24');
      assert.equal(Number(a.is_bot), 0);
      assert.equal(Number(a.bot_score), 87);
      assert.equal(Number(a.gpc), 0);
      assert.equal(a.anonymous_id, 'anon-1');
      assert.equal(a.user_id, 'user-1');
      assert.equal(a.product_id, 'p-1');
      assert.ok(Number(a.received_at_ms) > Date.now() - 120_000, 'the edge receive time is stamped');

      assert.equal(gpc.message_id, `${run}-9`);
      assert.deepEqual([gpc.country, gpc.city, gpc.region, gpc.postal_code, gpc.colo], ['JP', 'Tokyo', '', '', 'NRT']);
      assert.equal(gpc.latitude, null);
      assert.equal(gpc.ip, '2001:db8:85a3::', 'IPv6 cut to /48');
      assert.equal(Number(gpc.is_bot), 1);
      assert.equal(Number(gpc.bot_score), 4);
      assert.equal(Number(gpc.gpc), 1);
      assert.equal(gpc.user_id, '', 'GPC: no user id');
      assert.equal(gpc.anonymous_id, 'gpc-s-1', 'GPC: a session-scoped pseudonym only');
    } finally {
      await mf.dispose();
      await ingest.dispose();
    }
  });

  test('a wrong secret is refused by the ingest server and nothing is stored', async () => {
    const db = database();
    const ingest = await startIngest({ clickhouse: ch, database: db, secret: SECRET, writeKey: WRITE_KEY });
    const wrong = await startWorker({ ingestUrl: ingest.url, secret: 'not-the-secret' });
    const right = await startWorker({ ingestUrl: ingest.url, secret: SECRET });
    try {
      const run = runId();
      const r = await postBatch(wrong, batch(run, 2, { writeKey: WRITE_KEY }));
      assert.equal(r.status, 503, r.text);
      await waitFor('the ingest server\'s refusal in the worker log', () =>
        wrong.logs.some((l) => l.includes('answered 401') && l.includes('x-waymark-signature')),
      );
      // The same events through a correctly configured worker do arrive, so the table exists and
      // the absence above is the refusal, not a delay.
      const ok = await postBatch(right, batch(`${run}-ok`, 1, { writeKey: WRITE_KEY }));
      assert.equal(ok.status, 200, ok.text);
      await waitFor('the correctly signed event', async () => (await rowsFor(db, `${run}-ok`)).length === 1);
      const refused = (await rowsFor(db, run)).filter((x) => !x.message_id.startsWith(`${run}-ok`));
      assert.deepEqual(refused, []);
    } finally {
      await wrong.dispose();
      await right.dispose();
      await ingest.dispose();
    }
  });

  test('bad batches get the right 4xx and reach nothing', async () => {
    const db = database();
    const ingest = await startIngest({ clickhouse: ch, database: db, secret: SECRET, writeKey: WRITE_KEY });
    const mf = await startWorker({ ingestUrl: ingest.url, secret: SECRET });
    try {
      const run = runId();
      const notJson = await postBatch(mf, `{"writeKey":"${WRITE_KEY}","batch":[`);
      assert.equal(notJson.status, 400);
      assert.equal(notJson.json.error.code, 'invalid_json');
      const big = await postBatch(mf, JSON.stringify({ writeKey: WRITE_KEY, batch: [event(run, 0, { properties: { pad: 'x'.repeat(600 * 1024) } })] }));
      assert.equal(big.status, 413);
      assert.equal(big.json.error.field, 'body');
      const mixed = await postBatch(mf, JSON.stringify({ writeKey: WRITE_KEY, batch: [event(run, 1), { ...event(run, 2), anonymousId: undefined, userId: undefined }] }));
      assert.equal(mixed.status, 200, mixed.text);
      assert.equal(mixed.json.accepted, 1);
      assert.equal(mixed.json.rejections[0].index, 1);
      const rows = await waitFor('the one good event', async () => {
        const r = await rowsFor(db, run);
        return r.length >= 1 && r;
      });
      assert.deepEqual(rows.map((x) => x.message_id), [`${run}-1`]);

      // A write key no site has: only the ingest server knows; the worker logs its refusal.
      const unknown = await postBatch(mf, batch(`${run}-unknown`, 2, { writeKey: 'wk_nobody' }));
      assert.equal(unknown.status, 200, unknown.text);
      await waitFor('the refusal in the worker log', () =>
        mf.logs.some((l) => l.includes('the ingest server refused 2 event(s)') && l.includes('writeKey')),
      );
      assert.deepEqual(await rowsFor(db, `${run}-unknown`), []);
    } finally {
      await mf.dispose();
      await ingest.dispose();
    }
  });

  test('through the queue every event is stored exactly once across a 6-hour ingest outage (queue time advanced)', async () => {
    const db = database();
    const ingest = await startIngest({ clickhouse: ch, database: db, secret: SECRET, writeKey: WRITE_KEY });
    const mf = await startWorker({ ingestUrl: ingest.url, secret: SECRET, queue: true });
    try {
      // The broker's delays pass when the test says (see queueClock); the servers run in real time.
      const clock = await queueClock(mf);
      await clock.start();
      const BATCH_MS = 200;
      const run = runId();
      const batches = 8;
      const per = 5;
      // One batch while up, then the server goes down and more batches come in.
      const first = await postBatch(mf, batch(run, per, { writeKey: WRITE_KEY }));
      assert.equal(first.status, 200, first.text);
      assert.equal(first.json.forwarded, 'queue');
      await clock.advance(BATCH_MS);
      await waitFor('the first batch in ClickHouse', async () => (await rowsFor(db, run)).length === per);
      await ingest.stop();
      for (let b = 1; b < batches; b++) {
        const r = await postBatch(mf, batch(run, per, { writeKey: WRITE_KEY, from: b * per }));
        assert.equal(r.status, 200, 'the tag is answered at once while the ingest server is down');
      }
      // Six hours of deliveries against the closed port, on the worker's schedule (30 s doubling
      // up to 30 min), each failing and retried.
      await clock.advance(BATCH_MS);
      let attempts = 1;
      while (clock.elapsedMs < 6 * 60 * 60 * 1000) {
        await clock.advance(Math.min(30 * 2 ** (attempts - 1), 1800) * 1000);
        await clock.advance(BATCH_MS);
        attempts++;
      }
      const failed = () => mf.logs.filter((l) => l.includes('forward failed for') && l.includes('Queues will redeliver them') && l.includes(ingest.url)).length;
      await waitFor(`${attempts} failed forwards in the worker log`, () => failed() >= attempts);
      assert.equal(failed(), attempts, 'one request per delivery (one write key)');
      await ingest.start();
      await clock.advance(1800 * 1000);
      await clock.advance(BATCH_MS);
      const want = batches * per;
      await waitFor(`${want} events in ClickHouse`, async () => (await rowsFor(db, run)).length >= want, { timeoutMs: 90_000 });
      // A last batch after everything arrived: once it is stored, a redelivery would have been too.
      const last = await postBatch(mf, batch(`${run}-last`, 1, { writeKey: WRITE_KEY }));
      assert.equal(last.status, 200);
      await clock.advance(BATCH_MS);
      await waitFor('the last batch', async () => (await rowsFor(db, `${run}-last`)).length === 1, { timeoutMs: 30_000 });

      const counts = await ch.rows(
        `SELECT message_id, count() AS n FROM ${db}.events WHERE message_id LIKE '${run}-%' ` +
          `AND message_id NOT LIKE '${run}-last-%' GROUP BY message_id ORDER BY message_id`,
      );
      assert.equal(counts.length, want, 'every event arrived');
      for (const c of counts) assert.equal(Number(c.n), 1, `${c.message_id} stored ${c.n} times`);
    } finally {
      await mf.dispose();
      await ingest.dispose();
    }
  });
});
