// Several ingest servers (INGEST_URLS): the built worker in workerd moves to the next server on
// no answer and 5xx, and stays on a 429 or another 4xx (src/failover.rs has the rules). First
// against recording stand-ins, then through the queue into two REAL ingest servers sharing one
// ClickHouse database, one of them down.
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';

import { batch, postBatch, runId, startRecorder, startWorker, waitFor } from './harness.mjs';
import { startClickHouse, startIngest } from './services.mjs';

const SECRET = 'edge-secret-for-tests';
const WRITE_KEY = 'wk_edge_test';

describe('failover between ingest servers (direct path, stand-ins)', () => {
  test('a down or failing first server: the batch goes to the next; a 429 or 4xx stays', async () => {
    const first = await startRecorder();
    const second = await startRecorder();
    await first.stop(); // connection refused
    const mf = await startWorker({ vars: { INGEST_URLS: `${first.url}, ${second.url}/` } });
    try {
      const run = runId();
      const ids = () => second.events().map(({ e }) => e.messageId);

      const down = await postBatch(mf, batch(`${run}-down`, 2));
      assert.equal(down.status, 200, down.text);
      assert.deepEqual(ids(), [`${run}-down-0`, `${run}-down-1`]);
      await waitFor('the failover in the worker log', () =>
        mf.logs.some((l) => l.includes(`${first.url}/v1/edge`) && l.includes(`failing over to ${second.url}/v1/edge`)),
      );

      await first.start();
      for (const status of [500, 502, 503]) {
        first.rule = () => ({ status, headers: status === 503 ? { 'retry-after': '30' } : {} });
        const r = await postBatch(mf, batch(`${run}-${status}`, 1));
        assert.equal(r.status, 200, `${status}: ${r.text}`);
        assert.ok(ids().includes(`${run}-${status}-0`), `after ${status} the second server has the event`);
      }
      assert.equal(first.tried.length, 3, 'the first server was asked each time');

      // Not failover reasons: the site's rate limit and a refused request. The tag is told to
      // send again (503 on the direct path); the second server never sees them.
      const before = second.tried.length;
      for (const status of [429, 400, 401]) {
        first.rule = () => ({ status, headers: { 'retry-after': '30' } });
        const r = await postBatch(mf, batch(`${run}-${status}`, 1));
        assert.equal(r.status, 503, `${status}: ${r.text}`);
      }
      assert.equal(second.tried.length, before, 'nothing went to the second server');

      // Both up: the first in the list takes everything.
      first.rule = null;
      const up = await postBatch(mf, batch(`${run}-up`, 1));
      assert.equal(up.status, 200, up.text);
      assert.deepEqual(first.events().map(({ e }) => e.messageId), [`${run}-up-0`]);
      assert.equal(second.tried.length, before);
    } finally {
      await mf.dispose();
      await first.stop();
      await second.stop();
    }
  });

  test('INGEST_URL alone still works, and both set is a configuration error naming them', async () => {
    const rec = await startRecorder();
    const one = await startWorker({ ingestUrl: rec.url });
    const both = await startWorker({ ingestUrl: rec.url, vars: { INGEST_URLS: rec.url } });
    try {
      const run = runId();
      assert.equal((await postBatch(one, batch(run, 1))).status, 200);
      assert.equal(rec.events().length, 1);
      const bad = await postBatch(both, batch(`${run}-both`, 1));
      assert.equal(bad.status, 500, bad.text);
      assert.match(bad.text, /INGEST_URLS: set either INGEST_URL or INGEST_URLS, not both/);
    } finally {
      await one.dispose();
      await both.dispose();
      await rec.stop();
    }
  });
});

describe('failover through the queue into two real ingest servers', () => {
  let ch;
  before(async () => {
    ch = await startClickHouse();
  });
  after(async () => ch?.stop());

  test('with one of two ingest servers down every event is stored exactly once', async () => {
    const db = `edge_failover_${process.pid}`;
    // One after the other, each migrated before the next starts: two servers migrating a fresh
    // database at once can leave `events` missing for a while (see the closing note of the
    // session that found it), and the counts below read `events`.
    const migrated = (s) =>
      waitFor(`${s.url} to report its schema migrated`, async () => {
        try {
          return (await (await fetch(`${s.url}/readyz`)).text()).includes('"schema":"ok"');
        } catch {
          return false;
        }
      }, { timeoutMs: 60_000 });
    const a = await startIngest({ clickhouse: ch, database: db, secret: SECRET, writeKey: WRITE_KEY });
    await migrated(a);
    const b = await startIngest({ clickhouse: ch, database: db, secret: SECRET, writeKey: WRITE_KEY });
    await migrated(b);
    const mf = await startWorker({ queue: true, secret: SECRET, vars: { INGEST_URLS: `${a.url},${b.url}` } });
    const count = async (run) =>
      ch.rows(`SELECT message_id, count() AS n FROM ${db}.events WHERE message_id LIKE '${run}-%' GROUP BY message_id`);
    try {
      const run = runId();
      const per = 5;
      // The first server down: everything goes to the second.
      await a.stop();
      for (let i = 0; i < 4; i++) {
        const r = await postBatch(mf, batch(`${run}-a-down`, per, { writeKey: WRITE_KEY, from: i * per }));
        assert.equal(r.status, 200, r.text);
        assert.equal(r.json.forwarded, 'queue');
      }
      await waitFor('20 events stored through the second server', async () => (await count(`${run}-a-down`)).length === 4 * per, {
        timeoutMs: 60_000,
      });
      assert.ok(
        mf.logs.some((l) => l.includes(`${a.url}/v1/edge`) && l.includes(`failing over to ${b.url}/v1/edge`)),
        'the worker says it failed over',
      );
      // The other way round: the first back, the second down. Nothing needs to fail over.
      await a.start();
      await b.stop();
      for (let i = 0; i < 2; i++) {
        const r = await postBatch(mf, batch(`${run}-b-down`, per, { writeKey: WRITE_KEY, from: i * per }));
        assert.equal(r.status, 200, r.text);
      }
      await waitFor('10 events stored through the first server', async () => (await count(`${run}-b-down`)).length === 2 * per, {
        timeoutMs: 60_000,
      });
      const counts = await count(run);
      assert.equal(counts.length, 6 * per, 'every event arrived');
      for (const c of counts) assert.equal(Number(c.n), 1, `${c.message_id} stored ${c.n} times`);
      assert.ok(!mf.logs.some((l) => l.includes('forward failed for')), 'no delivery failed as a whole');
    } finally {
      await mf.dispose();
      await a.dispose();
      await b.dispose();
    }
  });
});
