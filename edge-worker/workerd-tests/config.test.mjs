// wrangler.toml's settings are ones the worker accepts, and a bad one is refused by name.
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { test } from 'node:test';

import { EDGE_DIR, PREFIX, startWorker } from './harness.mjs';

/** `[vars]` of wrangler.toml: simple `KEY = "value"` lines, which is all that section holds. */
function wranglerVars() {
  const toml = readFileSync(path.join(EDGE_DIR, 'wrangler.toml'), 'utf8');
  const vars = {};
  let inVars = false;
  for (const line of toml.split('\n')) {
    const t = line.trim();
    if (t.startsWith('[')) inVars = t === '[vars]';
    else if (inVars && t && !t.startsWith('#')) {
      const m = /^([A-Z_]+)\s*=\s*"([^"]*)"$/.exec(t);
      assert.ok(m, `unexpected line in [vars]: ${t}`);
      vars[m[1]] = m[2];
    }
  }
  return { toml, vars };
}

test('the [vars] in wrangler.toml are accepted by the worker', async () => {
  const { toml, vars } = wranglerVars();
  for (const k of ['WAYMARK_PREFIX', 'INGEST_URL', 'IP_MODE', 'GPC_MODE', 'ALLOWED_ORIGINS', 'BOT_SCORE_THRESHOLD']) {
    assert.ok(k in vars, `${k} is documented in wrangler.toml`);
  }
  assert.match(toml, /binding = "WAYMARK_QUEUE"/, 'the producer binding the worker looks for');
  assert.match(toml, /dead_letter_queue = "/, 'a dead-letter queue');
  const mf = await startWorker({ vars });
  try {
    const res = await mf.dispatchFetch(`http://shop.example${vars.WAYMARK_PREFIX}/tag.json`);
    assert.equal(res.status, 200, await res.text());
  } finally {
    await mf.dispose();
  }
});

test('a variable the worker cannot use is answered with 500 naming it', async () => {
  for (const [k, v] of [
    ['IP_MODE', 'keep'],
    ['GPC_MODE', 'sometimes'],
    ['INGEST_URL', 'ingest.example.com'],
    ['ALLOWED_ORIGINS', 'https://a.example/path'],
  ]) {
    const mf = await startWorker({ vars: { [k]: v } });
    try {
      const res = await mf.dispatchFetch(`http://shop.example${PREFIX}/v1/batch`, { method: 'POST', body: '{}' });
      assert.equal(res.status, 500);
      const body = await res.json();
      assert.equal(body.error.field, k);
      assert.match(body.error.reason, new RegExp(`^${k}: `));
    } finally {
      await mf.dispose();
    }
  }
});
