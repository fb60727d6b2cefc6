// The tag's files served by the built worker: versioned names, long cache lifetimes, content types.
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { existsSync, readdirSync, readFileSync, statSync } from 'node:fs';
import path from 'node:path';
import { after, before, test } from 'node:test';

import { EDGE_DIR, PREFIX, REPO, startWorker } from './harness.mjs';

const REAL = path.join(REPO, 'js', 'dist');
const PLACEHOLDER = path.join(EDGE_DIR, 'workerd-tests', 'placeholder-tag');

// Top-level files only, like the worker's build.rs (dist/pkg/ is the tag's intermediate output).
function files(dir) {
  return readdirSync(dir).filter(
    (n) => !statSync(path.join(dir, n)).isDirectory() && /\.(m?js|wasm|map|json)$/.test(n),
  );
}

// The real tag when it has been built; the labelled placeholder otherwise (xtask bundles the same).
const realBuilt = existsSync(REAL) && files(REAL).length > 0;
const SOURCE = realBuilt ? REAL : PLACEHOLDER;

let mf;
before(async () => {
  mf = await startWorker({});
});
after(async () => mf?.dispose());

test('the manifest lists every tag file under a content-hashed version', async (t) => {
  if (!realBuilt) t.diagnostic(`js/dist is not built: checking the PLACEHOLDER files in ${PLACEHOLDER}`);
  const res = await mf.dispatchFetch(`http://shop.example${PREFIX}/tag.json`);
  assert.equal(res.status, 200);
  assert.match(res.headers.get('cache-control'), /max-age=300\b/);
  const m = await res.json();
  assert.match(m.version, /^[0-9a-f]{12}$/);
  assert.deepEqual(Object.keys(m.files).sort(), files(SOURCE).sort(), `the worker bundles ${SOURCE}`);
  for (const [name, url] of Object.entries(m.files)) {
    assert.equal(url, `${PREFIX}/t/${m.version}/${name}`);
  }
  assert.ok(Object.keys(m.files).some((n) => n.endsWith('.js')), 'a loader');
  assert.ok(Object.keys(m.files).some((n) => n.endsWith('.wasm')), 'a wasm module');
});

test('each file is served byte for byte with its type and cache lifetime', async () => {
  const m = await (await mf.dispatchFetch(`http://shop.example${PREFIX}/tag.json`)).json();
  for (const [name, url] of Object.entries(m.files)) {
    const want = readFileSync(path.join(SOURCE, name));
    const res = await mf.dispatchFetch(`http://shop.example${url}`);
    assert.equal(res.status, 200, url);
    const got = Buffer.from(await res.arrayBuffer());
    assert.equal(createHash('sha256').update(got).digest('hex'), createHash('sha256').update(want).digest('hex'), url);
    const type = res.headers.get('content-type');
    if (name.endsWith('.wasm')) assert.equal(type, 'application/wasm');
    else if (/\.m?js$/.test(name)) assert.equal(type, 'text/javascript; charset=utf-8');
    assert.equal(res.headers.get('cache-control'), 'public, max-age=31536000, immutable');
    assert.equal(res.headers.get('x-content-type-options'), 'nosniff');
    const etag = res.headers.get('etag');
    assert.ok(etag, 'an ETag');

    const again = await mf.dispatchFetch(`http://shop.example${url}`, { headers: { 'if-none-match': etag } });
    assert.equal(again.status, 304);
    await again.arrayBuffer();

    const stable = await mf.dispatchFetch(`http://shop.example${PREFIX}/${name}`);
    assert.equal(stable.status, 200);
    assert.match(stable.headers.get('cache-control'), /max-age=300\b/);
    assert.equal(Buffer.from(await stable.arrayBuffer()).length, want.length);

    const old = await mf.dispatchFetch(`http://shop.example${PREFIX}/t/000000000000/${name}`, { redirect: 'manual' });
    assert.equal(old.status, 302, 'an old version points at the current one');
    assert.equal(old.headers.get('location'), url);
    await old.arrayBuffer();

    const head = await mf.dispatchFetch(`http://shop.example${url}`, { method: 'HEAD' });
    assert.equal(head.status, 200);
    assert.equal(head.headers.get('content-type'), type);
  }
  const missing = await mf.dispatchFetch(`http://shop.example${PREFIX}/t/${m.version}/nope.js`);
  assert.equal(missing.status, 404);
  await missing.arrayBuffer();
});
