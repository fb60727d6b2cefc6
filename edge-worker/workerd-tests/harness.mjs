// Shared helpers for the worker tests: the built worker in workerd (Miniflare), a recording
// HTTP server standing in for the ingest server's /v1/edge, signing, bounded waiting, and a
// clock for the queue that the tests advance instead of waiting.
import { createHmac, randomUUID, timingSafeEqual } from 'node:crypto';
import { existsSync, readFileSync } from 'node:fs';
import http from 'node:http';
import net from 'node:net';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

import { Miniflare, QUEUES_PLUGIN_NAME, _enableControlEndpoints } from 'miniflare';

// Miniflare's queue broker keeps its delays on timers that its own tests replace with a fake
// clock ("control endpoints": enableFakeTimers, advanceFakeTime, waitForFakeTasks). Turning them
// on must happen before any Miniflare starts; it only adds those operations to Miniflare's
// internal objects. This is an underscored export of the pinned miniflare 4.20260426.0: if an
// upgrade drops it, `queueClock` fails saying so.
if (typeof _enableControlEndpoints !== 'function') {
  throw new Error('this miniflare has no _enableControlEndpoints(): the queue tests cannot advance time');
}
_enableControlEndpoints();

export const EDGE_DIR = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
export const REPO = path.resolve(EDGE_DIR, '..');
export const BUILD = path.join(EDGE_DIR, 'build');
export const PREFIX = '/wm';
export const QUEUE = 'waymark-events';
export const DLQ = 'waymark-events-dlq';
export const ORIGIN = 'https://shop.example';

export const CHROME_UA =
  'Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36';

/** The built worker must exist; saying how to build it is the whole message. */
export function requireBuild() {
  for (const f of ['index.js', 'index_bg.wasm']) {
    if (!existsSync(path.join(BUILD, f))) {
      throw new Error(
        `${path.join(BUILD, f)} is missing: build the worker first with \`cargo xtask test\` ` +
          '(stage "edge build"), or in edge-worker/: WASM_BINDGEN_BIN=... WASM_OPT_BIN=... ' +
          'ESBUILD_BIN=... worker-build --profile wasm-release',
      );
    }
  }
}

/** The main queue consumer's retry settings in wrangler.toml (the first [[queues.consumers]]). */
export function wranglerConsumer() {
  const toml = readFileSync(path.join(EDGE_DIR, 'wrangler.toml'), 'utf8');
  const block = toml.split('[[queues.consumers]]')[1] ?? '';
  const num = (key) => {
    const m = new RegExp(`^${key}\\s*=\\s*(\\d+)`, 'm').exec(block);
    if (!m) throw new Error(`wrangler.toml: no ${key} in the first [[queues.consumers]]`);
    return Number(m[1]);
  };
  return { maxRetries: num('max_retries'), retryDelay: num('retry_delay') };
}

/**
 * Starts the built worker in workerd.
 * - `ingestUrl`: INGEST_URL; `secret`: EDGE_SECRET.
 * - `queue`: bind WAYMARK_QUEUE (producer and consumer) when true; otherwise batches are
 *   forwarded directly.
 * - `vars`: more variables (IP_MODE, GPC_MODE, ALLOWED_ORIGINS ...).
 * - `maxRetries`, `retryDelay`: the main consumer's, as in wrangler.toml unless given.
 * - `deadLetterSink`: a URL; when set, a second worker consumes the dead-letter queue and POSTs
 *   each message body there, so a test can see what landed in it.
 * - `replay`: the edge worker consumes the dead-letter queue too (its replay mode), with
 *   `replayMaxRetries`; it also gets a producer binding `DEAD_LETTERS` for the test to put
 *   messages there (`mf.getQueueProducer('DEAD_LETTERS')`).
 */
export async function startWorker({
  ingestUrl,
  secret = 'test-secret',
  queue = false,
  vars = {},
  maxRetries = wranglerConsumer().maxRetries,
  retryDelay = wranglerConsumer().retryDelay,
  deadLetterSink,
  replay = false,
  replayMaxRetries = 100,
} = {}) {
  requireBuild();
  const options = {
    modules: true,
    modulesRoot: BUILD,
    scriptPath: path.join(BUILD, 'index.js'),
    modulesRules: [{ type: 'CompiledWasm', include: ['**/*.wasm'] }],
    compatibilityDate: '2026-04-26',
    // Never fetch Cloudflare's cf.json from the internet; requests carry their own `cf`.
    cf: false,
    bindings: { WAYMARK_PREFIX: PREFIX, EDGE_SECRET: secret, ...vars },
  };
  if (ingestUrl) options.bindings.INGEST_URL = ingestUrl;
  if (queue) {
    options.queueProducers = { WAYMARK_QUEUE: QUEUE };
    options.queueConsumers = {
      [QUEUE]: {
        maxBatchSize: 10,
        maxBatchTimeout: 0.2,
        // The worker asks for its own delay on every retry; `retryDelay` is the fallback.
        maxRetries,
        retryDelay,
        deadLetterQueue: DLQ,
      },
    };
    if (replay) {
      options.queueProducers.DEAD_LETTERS = DLQ;
      options.queueConsumers[DLQ] = { maxBatchSize: 10, maxBatchTimeout: 0.2, maxRetries: replayMaxRetries, retryDelay };
    }
  }
  // The worker's console output, kept for assertions (and echoed, as Miniflare does by default).
  const logs = [];
  options.handleRuntimeStdio = (stdout, stderr) => {
    for (const stream of [stdout, stderr]) {
      let rest = '';
      stream.on('data', (chunk) => {
        const lines = (rest + chunk.toString('utf8')).split('\n');
        rest = lines.pop();
        for (const line of lines) {
          logs.push(line);
          process.stdout.write(`${line}\n`);
        }
      });
    }
  };
  let mfOptions = options;
  if (deadLetterSink) {
    const { cf, handleRuntimeStdio, ...edge } = options;
    const dlq = {
      name: 'dead-letters',
      modules: true,
      compatibilityDate: options.compatibilityDate,
      bindings: { SINK: deadLetterSink },
      queueConsumers: { [DLQ]: { maxBatchSize: 10, maxBatchTimeout: 0.2 } },
      script: `export default {
  async queue(batch, env) {
    for (const m of batch.messages) {
      await fetch(env.SINK, { method: 'POST', body: typeof m.body === 'string' ? m.body : JSON.stringify(m.body) });
      m.ack();
    }
  },
};`,
    };
    // The edge worker first: it is the one `dispatchFetch` reaches.
    mfOptions = { cf, handleRuntimeStdio, workers: [{ name: 'edge', ...edge }, dlq] };
  }
  const mf = new Miniflare(mfOptions);
  await mf.ready;
  mf.logs = logs;
  return mf;
}

export function sign(secret, ts, body) {
  return 'v1=' + createHmac('sha256', secret).update(`${ts}.`).update(body).digest('hex');
}

function verify(secret, ts, sig, body) {
  if (!ts || !sig) return false;
  const want = Buffer.from(sign(secret, ts, body));
  const got = Buffer.from(sig);
  return want.length === got.length && timingSafeEqual(want, got);
}

/** A free loopback port (bound and released). */
export async function freePort() {
  return new Promise((resolve, reject) => {
    const s = net.createServer();
    s.once('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const { port } = s.address();
      s.close(() => resolve(port));
    });
  });
}

/**
 * A recording stand-in for the ingest server's POST /v1/edge, checking the signature like the
 * real one (401 on a bad one). `failNext(n)` answers the next n requests with 503; `stop()` and
 * `start()` take the port down and up (connection refused in between); with `hangUp` set every
 * request's connection is cut unanswered, counted in `cut`. `rule`, when set, is
 * called with each correctly signed forward and may return `{ status, headers, body }` to answer
 * instead of accepting it (a rate limit for one write key, say); `tried` lists every correctly
 * signed forward that came in, answered or not.
 */
export async function startRecorder({ secret = 'test-secret', port } = {}) {
  port ??= await freePort();
  const rec = {
    port,
    url: `http://127.0.0.1:${port}`,
    accepted: [], // parsed EdgeForward bodies, with their headers
    refused: 0,
    failed: 0,
    failing: 0,
    rule: null,
    tried: [],
    hangUp: false,
    cut: 0,
    server: null,
    failNext(n) {
      this.failing = n;
    },
    events() {
      return this.accepted.flatMap((f) => f.body.envelopes.flatMap((env) => env.events.map((e) => ({ env, e }))));
    },
    async start() {
      const server = http.createServer((req, res) => {
        if (rec.hangUp) {
          // Down without a word: the connection is cut as the request arrives.
          rec.cut++;
          req.socket.destroy();
          return;
        }
        const chunks = [];
        req.on('data', (c) => chunks.push(c));
        req.on('end', () => {
          const body = Buffer.concat(chunks);
          if (req.method !== 'POST' || req.url !== '/v1/edge') {
            res.writeHead(404).end();
            return;
          }
          if (!verify(secret, req.headers['x-waymark-timestamp'], req.headers['x-waymark-signature'], body)) {
            rec.refused++;
            res.writeHead(401, { 'content-type': 'application/json' }).end('{"error":"bad signature"}');
            return;
          }
          const fwd = JSON.parse(body.toString('utf8'));
          rec.tried.push(fwd);
          const ruled = rec.rule?.(fwd);
          if (ruled) {
            res.writeHead(ruled.status, { 'content-type': 'application/json', ...(ruled.headers ?? {}) });
            res.end(ruled.body ?? JSON.stringify({ error: `answered ${ruled.status} by the test` }));
            return;
          }
          if (rec.failing > 0) {
            rec.failing--;
            rec.failed++;
            res.writeHead(503, { 'retry-after': '1' }).end('{"error":"overloaded"}');
            return;
          }
          rec.accepted.push({ headers: req.headers, body: fwd });
          res.writeHead(200, { 'content-type': 'application/json' }).end('{"ok":true}');
        });
      });
      await new Promise((resolve, reject) => {
        server.once('error', reject);
        server.listen(port, '127.0.0.1', resolve);
      });
      rec.server = server;
    },
    async stop() {
      if (!rec.server) return;
      const s = rec.server;
      rec.server = null;
      s.closeAllConnections();
      await new Promise((resolve) => s.close(resolve));
    },
  };
  await rec.start();
  return rec;
}

/** Polls `check` until it returns a truthy value; fails after `timeoutMs` saying what it waited for. */
export async function waitFor(what, check, { timeoutMs = 30_000, everyMs = 100 } = {}) {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const v = await check();
    if (v) return v;
    if (Date.now() > deadline) throw new Error(`gave up after ${timeoutMs} ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, everyMs));
  }
}

/**
 * The clock of one queue's broker in Miniflare, advanced by the test. Once `start()`ed, the
 * broker's delays (batch timeouts, retry delays, delayed sends) only pass when the test calls
 * `advance(ms)`, which returns after the deliveries that became due have been handed to the
 * consumer and answered. Everything else (the worker, fetches, the ingest server) runs in real
 * time.
 */
export async function queueClock(mf, queue = QUEUE) {
  const ns = await mf._getInternalDurableObjectNamespace(QUEUES_PLUGIN_NAME, 'queues:queue', 'QueueBrokerObject');
  const stub = ns.get(ns.idFromName(queue));
  const op = async (name, ...args) => {
    const res = await stub.fetch('http://placeholder/', { cf: { miniflare: { controlOp: { name, args } } } });
    const text = await res.text();
    if (!res.ok) throw new Error(`queue ${queue}: control op ${name} answered ${res.status}: ${text}`);
    return text;
  };
  const clock = {
    /** Fake milliseconds advanced since `start()`. */
    elapsedMs: 0,
    async start() {
      await op('enableFakeTimers', Date.now());
    },
    async advance(ms) {
      await op('advanceFakeTime', ms);
      await op('waitForFakeTasks');
      clock.elapsedMs += ms;
    },
  };
  return clock;
}

/** A tag-like event; `i` makes its messageId unique within `run`. */
export function event(run, i, extra = {}) {
  return {
    type: 'track',
    event: 'Product Viewed',
    messageId: `${run}-${i}`,
    anonymousId: 'anon-1',
    userId: 'user-1',
    timestamp: new Date(Date.now() - 2000).toISOString(),
    context: {
      page: { url: 'https://shop.example/p/1', path: '/p/1', title: 'P1' },
      library: { name: 'waymark.js', version: '0.1.0' },
      sessionId: 's-1',
    },
    properties: { product_id: 'p-1', price: 9.5, currency: 'EUR' },
    ...extra,
  };
}

export function batch(run, n, { writeKey = 'wk_test', from = 0 } = {}) {
  return JSON.stringify({
    batch: Array.from({ length: n }, (_, i) => event(run, from + i)),
    writeKey,
    sentAt: new Date().toISOString(),
  });
}

export const runId = () => randomUUID().slice(0, 8);

/** The cf object a request in Berlin on a Bot Management zone would carry. */
export const BERLIN_CF = {
  country: 'DE',
  region: 'Berlin',
  regionCode: 'BE',
  city: 'Berlin',
  postalCode: '10115',
  latitude: '52.52000',
  longitude: '13.40500',
  timezone: 'Europe/Berlin',
  continent: 'EU',
  asn: 3320,
  colo: 'FRA',
  botManagement: { score: 87, verifiedBot: false },
};

export async function postBatch(mf, body, { cf = BERLIN_CF, headers = {} } = {}) {
  const res = await mf.dispatchFetch(`http://shop.example${PREFIX}/v1/batch`, {
    method: 'POST',
    body,
    cf,
    headers: {
      'content-type': 'text/plain',
      'user-agent': CHROME_UA,
      'cf-connecting-ip': '203.0.113.77',
      origin: ORIGIN,
      ...headers,
    },
  });
  const text = await res.text();
  let json = null;
  try {
    json = JSON.parse(text);
  } catch {
    // left null: the assertion that needs it will say so
  }
  return { res, status: res.status, json, text };
}
