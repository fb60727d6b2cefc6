// The demo shop's web server: serves the shop's pages and hands every request under the edge
// prefix (/wm/...) to the real edge worker running in workerd (Miniflare), exactly as a
// Cloudflare route on the shop's own domain would. Used by `cargo xtask demo` and the
// end-to-end test.
//
//   node demo/server.mjs --port 8000 --ingest http://127.0.0.1:8080 --secret S --write-key wk_demo
//       [--email-keys k1:SECRET --email-site demo --email-max-age 30days]
//
// With --email-keys (the worker's EMAIL_KEYS) the worker also serves the email pixel and click
// paths under the prefix for site --email-site, refused clicks going to the shop's home page.
//
// Geo: each request to the worker carries a `cf` object. By default it is the edge tests'
// BERLIN_CF (edge-worker/workerd-tests/harness.mjs); a request may bring its own as JSON in the
// `x-waymark-demo-cf` header or the `waymark_demo_cf` cookie (URL-encoded JSON; the end-to-end
// test sets it per browser context, and cookies travel with beacons too). The header is removed
// before the worker sees the request.
// Prints `shop listening on http://127.0.0.1:PORT` when ready.

import http from 'node:http';
import { parseArgs } from 'node:util';

import { BERLIN_CF, PREFIX, startWorker } from '../edge-worker/workerd-tests/harness.mjs';
import { renderPage } from './shop.mjs';

const { values: args } = parseArgs({
  options: {
    port: { type: 'string', default: '8000' },
    ingest: { type: 'string' },
    secret: { type: 'string' },
    'write-key': { type: 'string', default: 'wk_demo' },
    queue: { type: 'boolean', default: true },
    'email-keys': { type: 'string' },
    'email-site': { type: 'string', default: 'demo' },
    'email-max-age': { type: 'string' },
  },
});
for (const required of ['ingest', 'secret']) {
  if (!args[required]) {
    console.error(`demo/server.mjs: --${required} is required`);
    process.exit(2);
  }
}

const emailVars = args['email-keys']
  ? {
      EMAIL_KEYS: args['email-keys'],
      EMAIL_SITE: args['email-site'],
      EMAIL_WRITE_KEY: args['write-key'],
      // Where a refused token's click goes: this shop's home page.
      EMAIL_HOME_URL: `http://127.0.0.1:${args.port}/`,
      ...(args['email-max-age'] ? { EMAIL_MAX_AGE: args['email-max-age'] } : {}),
    }
  : {};
const mf = await startWorker({ ingestUrl: args.ingest, secret: args.secret, queue: args.queue, vars: emailVars });
const snippet = tagSnippet(args['write-key']);

/** The tag as a site embeds it: the inline stub, init, and the async loader. */
function tagSnippet(writeKey) {
  return `<script>
  window.waymark = window.waymark || function () { (waymark.q = waymark.q || []).push([Date.now(), arguments]) };
  waymark('init', { site: ${JSON.stringify(writeKey)}, endpoint: '${PREFIX}/v1/batch' });
</script>
<script type="module" async src="${PREFIX}/waymark.js"></script>`;
}

function demoCf(req) {
  try {
    if (req.headers['x-waymark-demo-cf']) return JSON.parse(req.headers['x-waymark-demo-cf']);
    const m = /(?:^|;\s*)waymark_demo_cf=([^;]+)/.exec(req.headers.cookie ?? '');
    if (m) return JSON.parse(decodeURIComponent(m[1]));
  } catch (e) {
    console.error(`ignoring a malformed demo cf value: ${e}`);
  }
  return BERLIN_CF;
}

async function toWorker(req, res, body) {
  const headers = new Headers();
  for (const [k, v] of Object.entries(req.headers)) {
    if (k === 'x-waymark-demo-cf' || k === 'host' || k === 'connection') continue;
    headers.set(k, Array.isArray(v) ? v.join(', ') : v);
  }
  const cf = demoCf(req);
  // What Cloudflare would add: the visitor's address.
  headers.set('cf-connecting-ip', req.socket.remoteAddress?.replace(/^::ffff:/, '') ?? '127.0.0.1');
  const url = `http://${req.headers.host ?? '127.0.0.1'}${req.url}`;
  const out = await mf.dispatchFetch(url, {
    method: req.method,
    headers,
    body: ['GET', 'HEAD'].includes(req.method) ? undefined : body,
    cf,
    redirect: 'manual',
  });
  const outHeaders = {};
  out.headers.forEach((v, k) => {
    outHeaders[k] = v;
  });
  res.writeHead(out.status, outHeaders);
  res.end(Buffer.from(await out.arrayBuffer()));
}

const server = http.createServer((req, res) => {
  const chunks = [];
  req.on('data', (c) => chunks.push(c));
  req.on('end', () => {
    const body = Buffer.concat(chunks);
    const path = new URL(req.url, 'http://x').pathname;
    if (path === PREFIX || path.startsWith(`${PREFIX}/`)) {
      toWorker(req, res, body).catch((e) => {
        console.error(`edge worker failed on ${req.method} ${req.url}: ${e?.stack ?? e}`);
        if (!res.headersSent) res.writeHead(502, { 'content-type': 'text/plain' });
        res.end('edge worker error');
      });
      return;
    }
    const html = req.method === 'GET' ? renderPage(path, { snippet }) : null;
    if (html === null) {
      res.writeHead(404, { 'content-type': 'text/plain' }).end('not found');
      return;
    }
    res.writeHead(200, { 'content-type': 'text/html; charset=utf-8', 'cache-control': 'no-store' }).end(html);
  });
});

server.listen(Number(args.port), '127.0.0.1', () => {
  console.log(`shop listening on http://127.0.0.1:${server.address().port}`);
});

async function shutdown() {
  server.close();
  server.closeAllConnections();
  await mf.dispose();
  process.exit(0);
}
process.on('SIGINT', shutdown);
process.on('SIGTERM', shutdown);
