// Drives one real Segment-family client against a Waymark intake and prints, as one JSON line,
// everything the client sent. e2e/tests/clients.rs runs it and compares what Waymark stored
// with what was sent, field by field.
//
//   node e2e/clients/drive.mjs --client NAME --target URL --write-key KEY
//        [--page-port P] [--chromium PATH] [--python PATH]
//
// Clients (pinned in package.json and requirements.txt):
//   analytics-next-event     @segment/analytics-next in Chromium, one request per event (/v1/t ...)
//   analytics-next-batching  the same with deliveryStrategy "batching" (/v1/b)
//   rudder-js                @rudderstack/analytics-js (bundled plugins, no CDN) in Chromium
//   rudder-node              @rudderstack/rudder-sdk-node (gzip, /v1/batch)
//   rudder-python            rudder-sdk-python, run with --python
//   segment-node             @segment/analytics-node (/v1/batch)
//   segment-python           segment-analytics-python, run with --python
//
// Each client makes the six calls: identify, track, page, screen, group, alias. The client talks
// to a recording proxy on a loopback port, which forwards every request to --target (the ingest
// server's origin, or the shop's origin plus the edge prefix) and relays the answer, CORS
// headers included. The first request carrying events is forwarded and then answered 503, so the
// client sends it again: Waymark must store those events once. Browser pages are served from a
// third origin (--page-port), so every request is cross-origin, preflights included.

import { spawn } from 'node:child_process';
import http from 'node:http';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import zlib from 'node:zlib';

const HERE = path.dirname(fileURLToPath(import.meta.url));
const CALLS = ['identify', 'track', 'page', 'screen', 'group', 'alias'];
const TIMEOUT_MS = 90_000;

const { values: args } = parseArgs({
  options: {
    client: { type: 'string' },
    target: { type: 'string' },
    'write-key': { type: 'string' },
    'page-port': { type: 'string', default: '0' },
    chromium: { type: 'string', default: process.env.WAYMARK_CHROMIUM ?? '/usr/bin/chromium' },
    python: { type: 'string' },
  },
});
for (const required of ['client', 'target', 'write-key']) {
  if (!args[required]) fail(`--${required} is required`);
}
const TARGET = args.target.replace(/\/$/, '');
const WRITE_KEY = args['write-key'];

function fail(message) {
  console.error(`drive.mjs: ${message}`);
  process.exit(2);
}

function log(message) {
  console.error(`[drive ${args.client}] ${message}`);
}

/** What one client call sends, the same for every client (ids are made per run). */
function script(run) {
  const user = `user-${run}`;
  return {
    user,
    previousId: `old-${run}`,
    traits: { email: `ada+${run}@example.com`, name: 'Ada Lovelace', plan: 'pro', logins: 3 },
    track: { event: 'Product Added', properties: { product_id: 'sku-1', name: 'Shoe', price: 89.5, quantity: 2, currency: 'EUR', tags: ['a', 'b'] } },
    page: { category: 'Shop', name: 'Home', properties: { title: 'Waymark test shop', path: '/compat' } },
    screen: { category: 'App', name: 'Cart', properties: { items: 1 } },
    group: { id: `org-${run}`, traits: { name: 'Analytical Engines', employees: 12 } },
  };
}

// ---------------------------------------------------------------------------------------------
// The recording proxy.

function decodeBody(buf, encoding) {
  if (!buf.length) return null;
  const raw = /gzip/i.test(encoding ?? '') ? zlib.gunzipSync(buf) : buf;
  try {
    return JSON.parse(raw.toString('utf8'));
  } catch {
    return null;
  }
}

/** The events a request body carries: a batch's items, or the body itself for one event. */
function eventsOf(body) {
  if (!body || typeof body !== 'object') return [];
  if (Array.isArray(body.batch)) return body.batch;
  if (typeof body.type === 'string' && body.messageId) return [body];
  return [];
}

function startProxy() {
  const requests = [];
  const sent = new Map(); // messageId -> { event, batch: {sentAt, writeKey}, path }
  const delivered = new Set(); // messageIds the client was told 2xx for
  let faulted = null; // messageIds of the request answered 503
  const server = http.createServer((req, res) => {
    const chunks = [];
    req.on('data', (c) => chunks.push(c));
    req.on('end', async () => {
      const buf = Buffer.concat(chunks);
      const headers = {};
      for (const [k, v] of Object.entries(req.headers)) {
        if (['host', 'connection', 'content-length', 'keep-alive'].includes(k)) continue;
        headers[k] = Array.isArray(v) ? v.join(', ') : v;
      }
      const record = {
        method: req.method,
        path: req.url,
        contentType: req.headers['content-type'] ?? null,
        contentEncoding: req.headers['content-encoding'] ?? null,
        authorization: (req.headers.authorization ?? '').split(' ')[0] || null,
        origin: req.headers.origin ?? null,
      };
      let body = null;
      let events = [];
      if (req.method === 'POST') {
        try {
          body = decodeBody(buf, req.headers['content-encoding']);
        } catch (e) {
          log(`cannot decode a body: ${e}`);
        }
        events = eventsOf(body);
        record.writeKeyInBody = typeof body?.writeKey === 'string';
        record.messageIds = events.map((e) => e.messageId);
      }
      let out;
      try {
        out = await fetch(`${TARGET}${req.url}`, {
          method: req.method,
          headers,
          body: ['GET', 'HEAD'].includes(req.method) ? undefined : buf,
          redirect: 'manual',
        });
      } catch (e) {
        record.status = 502;
        requests.push(record);
        res.writeHead(502, { 'content-type': 'text/plain' }).end(`proxy: ${e}`);
        return;
      }
      const outBody = Buffer.from(await out.arrayBuffer());
      record.targetStatus = out.status;
      const outHeaders = {};
      out.headers.forEach((v, k) => {
        if (!['content-encoding', 'content-length', 'transfer-encoding', 'connection'].includes(k)) outHeaders[k] = v;
      });
      for (const e of events) {
        if (!sent.has(e.messageId)) {
          sent.set(e.messageId, {
            event: e,
            batch: { sentAt: body.batch ? body.sentAt ?? null : null, writeKey: body.writeKey ?? null },
            path: req.url,
          });
        }
      }
      if (events.length && faulted === null && out.status < 300) {
        // Waymark has these events; the client is told it failed and must send them again.
        faulted = events.map((e) => e.messageId);
        record.status = 503;
        record.injected = true;
        requests.push(record);
        res.writeHead(503, { ...outHeaders, 'content-type': 'application/json' });
        res.end('{"error":{"code":"injected","field":"proxy","reason":"the test proxy refuses the first delivery"}}');
        return;
      }
      record.status = out.status;
      if (out.status >= 300 && req.method === 'POST') {
        record.answer = outBody.toString('utf8').slice(0, 500);
      }
      if (out.status < 300) events.forEach((e) => delivered.add(e.messageId));
      requests.push(record);
      res.writeHead(out.status, outHeaders).end(outBody);
    });
  });
  return new Promise((resolve) => {
    server.listen(0, '127.0.0.1', () => {
      resolve({
        url: `http://127.0.0.1:${server.address().port}`,
        requests,
        sent,
        delivered,
        faulted: () => faulted,
        close: () => {
          server.closeAllConnections();
          server.close();
        },
      });
    });
  });
}

/** Polls until every call was delivered, the faulted request included, or fails (bounded). */
async function waitDelivered(proxy, what, expected = CALLS.length) {
  const deadline = Date.now() + TIMEOUT_MS;
  for (;;) {
    const faulted = proxy.faulted();
    const done =
      proxy.sent.size >= expected &&
      [...proxy.sent.keys()].every((id) => proxy.delivered.has(id)) &&
      faulted !== null;
    if (done) return;
    if (Date.now() > deadline) {
      throw new Error(
        `${what}: after ${TIMEOUT_MS / 1000} s, ${proxy.sent.size} of ${expected} events sent, ` +
          `${proxy.delivered.size} delivered; requests: ${JSON.stringify(proxy.requests)}`,
      );
    }
    await new Promise((r) => setTimeout(r, 100));
  }
}

// ---------------------------------------------------------------------------------------------
// Browser clients.

const ENTRIES = {
  // analytics.js 2.0 as a site bundles it; settings given inline (no Segment CDN here).
  segment: `
import { AnalyticsBrowser } from '@segment/analytics-next';
window.runClient = async (cfg) => {
  const segment = { apiKey: cfg.writeKey, apiHost: cfg.apiHost, protocol: 'http' };
  if (cfg.batching) segment.deliveryStrategy = { strategy: 'batching', config: { size: 3, timeout: 300 } };
  const [analytics] = await AnalyticsBrowser.load(
    { writeKey: cfg.writeKey, cdnSettings: { integrations: { 'Segment.io': segment } } },
    { integrations: { 'Segment.io': segment } },
  );
  const s = cfg.script;
  await analytics.identify(s.user, s.traits);
  await analytics.track(s.track.event, s.track.properties);
  await analytics.page(s.page.category, s.page.name, s.page.properties);
  await analytics.screen(s.screen.category, s.screen.name, s.screen.properties);
  await analytics.group(s.group.id, s.group.traits);
  await analytics.alias(s.user, s.previousId);
  return analytics.user().anonymousId();
};`,
  // RudderStack's JavaScript SDK v3 with its plugins bundled: no CDN for plugins or config.
  rudder: `
import { RudderAnalytics } from '@rudderstack/analytics-js/bundled';
window.runClient = (cfg) => new Promise((resolve) => {
  const ra = new RudderAnalytics();
  ra.load(cfg.writeKey, cfg.dataPlaneUrl, {
    getSourceConfig: () => ({ source: { id: 'waymark-compat', name: 'waymark-compat', workspaceId: 'w', enabled: true, config: {}, destinations: [] } }),
    destinationsQueueOptions: {},
    queueOptions: { minRetryDelay: 200, maxRetryDelay: 1000 },
    plugins: ['XhrQueue'],
    polyfillIfRequired: false,
    sendAdblockPage: false,
    onLoaded: (a) => {
      const s = cfg.script;
      a.identify(s.user, s.traits);
      a.track(s.track.event, s.track.properties);
      a.page(s.page.category, s.page.name, s.page.properties);
      // The JavaScript SDK has no screen call (it is for apps).
      a.group(s.group.id, s.group.traits);
      a.alias(s.user, s.previousId);
      resolve(a.getAnonymousId());
    },
  });
});`,
};

async function bundle(kind) {
  const esbuild = await import('esbuild');
  const out = await esbuild.build({
    stdin: { contents: ENTRIES[kind], resolveDir: HERE, loader: 'js' },
    bundle: true,
    format: 'iife',
    platform: 'browser',
    write: false,
    logLevel: 'error',
  });
  return out.outputFiles[0].text;
}

async function runBrowser(kind, proxy, options) {
  const js = await bundle(kind);
  const page = http.createServer((req, res) => {
    if (req.url === '/client.js') {
      res.writeHead(200, { 'content-type': 'text/javascript' }).end(js);
    } else {
      res
        .writeHead(200, { 'content-type': 'text/html; charset=utf-8' })
        .end('<!doctype html><title>Waymark test shop</title><script src="/client.js"></script><p>compat</p>');
    }
  });
  await new Promise((r) => page.listen(Number(args['page-port']), '127.0.0.1', r));
  const pageUrl = `http://127.0.0.1:${page.address().port}/compat?utm_source=newsletter`;
  const { chromium } = await import('playwright-core');
  const browser = await chromium.launch({
    executablePath: args.chromium,
    args: [
      '--headless=new', '--no-sandbox', '--disable-gpu', '--disable-dev-shm-usage',
      '--disable-background-networking', '--disable-component-update', '--disable-sync', '--no-first-run',
    ],
  });
  const errors = [];
  try {
    const ctx = await browser.newContext();
    const tab = await ctx.newPage();
    tab.on('pageerror', (e) => errors.push(String(e)));
    tab.on('console', (m) => {
      if (m.type() === 'error') errors.push(m.text());
    });
    await tab.goto(pageUrl);
    const host = proxy.url.replace(/^http:\/\//, '');
    const anonymousId = await tab.evaluate(
      (cfg) => window.runClient(cfg),
      {
        writeKey: WRITE_KEY,
        apiHost: `${host}/v1`,
        dataPlaneUrl: proxy.url,
        batching: options.batching ?? false,
        script: script(options.run),
      },
    );
    await waitDelivered(proxy, kind, options.expected);
    return { anonymousId, pageUrl, browserErrors: errors };
  } finally {
    await browser.close();
    page.close();
  }
}

// ---------------------------------------------------------------------------------------------
// Server clients.

async function runRudderNode(proxy, run) {
  const { default: Analytics } = await import('@rudderstack/rudder-sdk-node');
  const client = new Analytics(WRITE_KEY, {
    dataPlaneUrl: proxy.url,
    flushAt: 3,
    flushInterval: 200,
    logLevel: 'error',
    retryCount: 5,
    axiosRetryConfig: { retryDelay: () => 200 },
  });
  const s = script(run);
  client.identify({ userId: s.user, traits: s.traits });
  client.track({ userId: s.user, event: s.track.event, properties: s.track.properties });
  client.page({ userId: s.user, category: s.page.category, name: s.page.name, properties: s.page.properties });
  client.screen({ userId: s.user, name: s.screen.name, properties: s.screen.properties });
  client.group({ userId: s.user, groupId: s.group.id, traits: s.group.traits });
  client.alias({ userId: s.user, previousId: s.previousId });
  await new Promise((resolve) => client.flush(resolve));
  await waitDelivered(proxy, 'rudder-node');
  return {};
}

async function runSegmentNode(proxy, run) {
  const { Analytics } = await import('@segment/analytics-node');
  const analytics = new Analytics({ writeKey: WRITE_KEY, host: proxy.url, flushAt: 3, flushInterval: 200 });
  analytics.on('error', (e) => log(`analytics-node reported: ${e?.code ?? e}`));
  const s = script(run);
  analytics.identify({ userId: s.user, traits: s.traits });
  analytics.track({ userId: s.user, event: s.track.event, properties: s.track.properties });
  analytics.page({ userId: s.user, category: s.page.category, name: s.page.name, properties: s.page.properties });
  analytics.screen({ userId: s.user, name: s.screen.name, properties: s.screen.properties });
  analytics.group({ userId: s.user, groupId: s.group.id, traits: s.group.traits });
  analytics.alias({ userId: s.user, previousId: s.previousId });
  await analytics.closeAndFlush({ timeout: TIMEOUT_MS });
  await waitDelivered(proxy, 'segment-node');
  return {};
}

/** `sdk`: `rudder` or `segment` (see python_client.py). */
async function runPython(sdk, proxy, run) {
  if (!args.python) fail(`--python is required for ${sdk}-python`);
  const child = spawn(args.python, [path.join(HERE, 'python_client.py')], {
    env: { ...process.env, SDK: sdk, DATA_PLANE_URL: proxy.url, WRITE_KEY, SCRIPT: JSON.stringify(script(run)) },
    stdio: ['ignore', 'inherit', 'inherit'],
  });
  const code = await new Promise((r) => child.on('exit', r));
  if (code !== 0) throw new Error(`python_client.py (${sdk}) exited with ${code}`);
  await waitDelivered(proxy, `${sdk}-python`);
  return {};
}

// ---------------------------------------------------------------------------------------------

const run = `${args.client}-${Date.now().toString(36)}`;
const proxy = await startProxy();
let extra;
try {
  switch (args.client) {
    case 'analytics-next-event':
      extra = await runBrowser('segment', proxy, { run });
      break;
    case 'analytics-next-batching':
      extra = await runBrowser('segment', proxy, { run, batching: true });
      break;
    case 'rudder-js':
      // Five calls: the JavaScript SDK has no screen().
      extra = await runBrowser('rudder', proxy, { run, expected: 5 });
      break;
    case 'rudder-node':
      extra = await runRudderNode(proxy, run);
      break;
    case 'rudder-python':
      extra = await runPython('rudder', proxy, run);
      break;
    case 'segment-node':
      extra = await runSegmentNode(proxy, run);
      break;
    case 'segment-python':
      extra = await runPython('segment', proxy, run);
      break;
    default:
      fail(`unknown client ${args.client}`);
  }
} catch (e) {
  proxy.close();
  console.error(`drive.mjs ${args.client}: ${e?.stack ?? e}`);
  process.exit(1);
}
proxy.close();
console.log(
  JSON.stringify({
    client: args.client,
    run,
    ...extra,
    faulted: proxy.faulted(),
    requests: proxy.requests,
    sent: [...proxy.sent.values()],
  }),
);
process.exit(0);
