// Drives real headless Chromium through the demo shop for the end-to-end test
// (e2e/tests/pipeline.rs). Two phases, so the test can check the query API in between:
//
//   node e2e/browser/shoppers.mjs browse --shop URL --state DIR
//       visitor A (Lyon): views two products for different times, adds the second to the cart,
//       leaves; visitor B (Hamburg): views a product, adds it, checks out. A's browser state is
//       saved in DIR/a.json.
//   node e2e/browser/shoppers.mjs login --shop URL --state DIR
//       visitor A comes back with the saved state and logs in (identify).
//   node e2e/browser/shoppers.mjs email --shop URL --state DIR --link URL --gpc-link URL
//           --tampered URL --expired URL
//       the email test (e2e/tests/email.rs): reader C views p-103, then follows the tracked
//       --link (to p-100) and adds it to the cart; reader D, whose browser sends Sec-GPC: 1,
//       follows --gpc-link and views the product; reader E follows the tampered and the expired
//       links. Also prints `landed`: where each link's redirect ended.
//
// Prints one JSON line: { "sent": { "<messageId>": count, ... }, "batches": N } with every
// event id the browser sent to the edge intake (fetch and beacon alike).
import { existsSync } from 'node:fs';
import { createRequire } from 'node:module';
import path from 'node:path';
import { parseArgs } from 'node:util';
import { fileURLToPath } from 'node:url';

const REPO = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
const require = createRequire(path.join(REPO, 'js', 'package.json'));
const { chromium } = require('playwright-core');

const CHROMIUM = process.env.WAYMARK_CHROMIUM ?? '/usr/bin/chromium';
if (!existsSync(CHROMIUM)) {
  console.error(`${CHROMIUM} not found: install it with \`apt-get install -y chromium\` (or run cargo xtask test)`);
  process.exit(3);
}

export const LYON = { country: 'FR', region: 'Auvergne-Rhone-Alpes', regionCode: 'ARA', city: 'Lyon', postalCode: '69001', latitude: '45.76', longitude: '4.83', timezone: 'Europe/Paris', continent: 'EU', asn: 3215, colo: 'MRS' };
export const HAMBURG = { country: 'DE', region: 'Hamburg', regionCode: 'HH', city: 'Hamburg', postalCode: '20095', latitude: '53.55', longitude: '9.99', timezone: 'Europe/Berlin', continent: 'EU', asn: 3320, colo: 'HAM' };

const { values: args, positionals } = parseArgs({
  allowPositionals: true,
  options: {
    shop: { type: 'string' },
    state: { type: 'string' },
    link: { type: 'string' },
    'gpc-link': { type: 'string' },
    tampered: { type: 'string' },
    expired: { type: 'string' },
  },
});
const phase = positionals[0];
if (!args.shop || !args.state || !['browse', 'login', 'email'].includes(phase)) {
  console.error('usage: shoppers.mjs browse|login|email --shop URL --state DIR [email: --link URL --gpc-link URL --tampered URL --expired URL]');
  process.exit(2);
}
if (phase === 'email' && !(args.link && args['gpc-link'] && args.tampered && args.expired)) {
  console.error('shoppers.mjs email needs --link, --gpc-link, --tampered and --expired');
  process.exit(2);
}
const landed = {};

const sent = {};
let batches = 0;
// Events of the batches the edge answered with a 2xx.
const answered = [];

const isBatch = (req) => req.method() === 'POST' && new URL(req.url()).pathname.endsWith('/v1/batch');

function eventsOf(req) {
  try {
    return JSON.parse(req.postData() ?? '{}').batch ?? [];
  } catch (e) {
    console.error(`a batch that is not JSON: ${e}`);
    return [];
  }
}

function record(req) {
  if (!isBatch(req)) return;
  batches += 1;
  for (const e of eventsOf(req)) sent[e.messageId] = (sent[e.messageId] ?? 0) + 1;
}

async function answer(req) {
  if (!isBatch(req)) return;
  const res = await req.response();
  if (res?.ok()) answered.push(...eventsOf(req));
}

async function visitor(browser, cf, storageState, extraHTTPHeaders) {
  const context = await browser.newContext({ ...(storageState ? { storageState } : {}), ...(extraHTTPHeaders ? { extraHTTPHeaders } : {}) });
  await context.addCookies([{ name: 'waymark_demo_cf', value: encodeURIComponent(JSON.stringify(cf)), url: args.shop }]);
  context.on('request', record);
  context.on('requestfinished', answer);
  const page = await context.newPage();
  // Headless pages are not focused by default; a visitor's page is.
  const cdp = await context.newCDPSession(page);
  await cdp.send('Emulation.setFocusEmulationEnabled', { enabled: true });
  return { context, page };
}

/** Stays on the page for `ms`, moving the mouse now and then like a reader does. */
async function dwell(page, ms) {
  const end = Date.now() + ms;
  let y = 100;
  while (Date.now() < end) {
    y = y === 100 ? 200 : 100;
    await page.mouse.move(200, y);
    await page.waitForTimeout(Math.min(500, Math.max(0, end - Date.now())));
  }
}

/**
 * Waits (bounded) until the edge has answered a batch holding the page's last event (`pred`):
 * the tag sends its events in order, one batch at a time, so it has then sent what it held before
 * the page goes away.
 */
async function settle(what, pred, ms = 15_000) {
  const end = Date.now() + ms;
  while (!answered.some(pred)) {
    if (Date.now() > end) {
      throw new Error(`gave up after ${ms} ms waiting for the edge to answer ${what} (${batches} batches sent)`);
    }
    await new Promise((r) => setTimeout(r, 50));
  }
}

const track = (name) => (e) => e.type === 'track' && e.event === name;

const browser = await chromium.launch({
  executablePath: CHROMIUM,
  args: ['--headless=new', '--no-sandbox', '--disable-gpu', '--disable-dev-shm-usage', '--disable-background-networking', '--disable-component-update', '--disable-sync', '--no-first-run'],
});
try {
  const statePath = path.join(args.state, 'a.json');
  if (phase === 'browse') {
    const a = await visitor(browser, LYON);
    await a.page.goto(`${args.shop}/products/p-100`);
    await dwell(a.page, 7000);
    await a.page.goto(`${args.shop}/products/p-102`);
    await dwell(a.page, 2000);
    await a.page.click('#add-to-cart');
    await a.page.waitForSelector('#added', { state: 'visible' });
    await settle("A's Product Added", track('Product Added'));
    await a.page.goto(`${args.shop}/`);
    await settle("A's page view of /", (e) => e.type === 'page' && e.context?.page?.path === '/');
    await a.context.storageState({ path: statePath });
    await a.page.close({ runBeforeUnload: true });
    await a.context.close();

    const b = await visitor(browser, HAMBURG);
    await b.page.goto(`${args.shop}/products/p-101`);
    await dwell(b.page, 1500);
    await b.page.click('#add-to-cart');
    await b.page.waitForSelector('#added', { state: 'visible' });
    await b.page.goto(`${args.shop}/checkout`);
    await b.page.click('#place-order');
    await b.page.waitForSelector('#thanks', { state: 'visible' });
    await settle("B's Order Completed", track('Order Completed'));
    await b.page.close({ runBeforeUnload: true });
    await b.context.close();
  } else if (phase === 'email') {
    const viewed = (id) => (e) => track('Product Viewed')(e) && e.properties?.product_id === id;
    // C browses anonymously, then comes back through the email's link and adds to the cart.
    const c = await visitor(browser, LYON);
    await c.page.goto(`${args.shop}/products/p-103`);
    await dwell(c.page, 1500);
    await settle("C's view of p-103", viewed('p-103'));
    await c.page.goto(args.link);
    landed.link = c.page.url();
    await settle("C's view of p-100", viewed('p-100'));
    await c.page.click('#add-to-cart');
    await c.page.waitForSelector('#added', { state: 'visible' });
    await settle("C's Product Added", track('Product Added'));
    await c.page.close({ runBeforeUnload: true });
    await c.context.close();

    // D's browser sends Global Privacy Control.
    const d = await visitor(browser, HAMBURG, undefined, { 'sec-gpc': '1' });
    await d.page.goto(args['gpc-link']);
    landed.gpc = d.page.url();
    await settle("D's view of p-101", viewed('p-101'));
    await d.page.close({ runBeforeUnload: true });
    await d.context.close();

    // E follows a tampered and an expired link.
    const e = await visitor(browser, LYON);
    await e.page.goto(args.tampered);
    landed.tampered = e.page.url();
    await e.page.goto(args.expired);
    landed.expired = e.page.url();
    await e.page.close({ runBeforeUnload: true });
    await e.context.close();
  } else {
    const a = await visitor(browser, LYON, statePath);
    await a.page.goto(`${args.shop}/login`);
    await a.page.click('#login');
    await a.page.waitForSelector('#welcome', { state: 'visible' });
    await settle("A's identify", (e) => e.type === 'identify');
    await a.page.close({ runBeforeUnload: true });
    await a.context.close();
  }
} finally {
  await browser.close();
}
console.log(JSON.stringify({ sent, batches, landed }));
