// Loads the data quality page in real headless Chromium for e2e/tests/quality_page.rs:
//
//   node e2e/browser/quality_page.mjs --url URL --key KEY --out PNG
//
// Opens URL (`GET /quality?site=...`: the key form), types the read key, submits (the key goes
// in the POST body), waits for the report, and saves a full-page screenshot to PNG. Prints one
// JSON line: { status, url, errors: [...console errors, page errors, failed requests],
// requests: [...every URL the page loaded], svgs: N, figures: [{ q, v, fmt, text }] } where each
// figure is an element with `data-q` (its JSON pointer in GET /v1/quality) and `data-v`.
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
const { values: args } = parseArgs({
  options: { url: { type: 'string' }, key: { type: 'string' }, out: { type: 'string' } },
});
if (!args.url || !args.key || !args.out) {
  console.error('usage: quality_page.mjs --url URL --key KEY --out PNG');
  process.exit(2);
}

const browser = await chromium.launch({
  executablePath: CHROMIUM,
  args: ['--headless=new', '--no-sandbox', '--disable-gpu', '--disable-dev-shm-usage', '--disable-background-networking', '--disable-component-update', '--disable-sync', '--no-first-run'],
});
try {
  const page = await browser.newPage({ viewport: { width: 1280, height: 900 } });
  const errors = [];
  const requests = [];
  page.on('console', (m) => {
    if (m.type() === 'error') errors.push(`console: ${m.text()}`);
  });
  page.on('pageerror', (e) => errors.push(`page error: ${e.message}`));
  page.on('requestfailed', (r) => errors.push(`request failed: ${r.url()} ${r.failure()?.errorText ?? ''}`));
  page.on('request', (r) => requests.push(r.url()));
  await page.goto(args.url);
  await page.fill('input[name=key]', args.key);
  const [response] = await Promise.all([page.waitForNavigation(), page.click('button[type=submit]')]);
  await page.waitForSelector('#problems', { timeout: 15_000 });
  const figures = await page.$$eval('[data-q]', (els) =>
    els.map((e) => ({ q: e.dataset.q, v: e.dataset.v, fmt: e.dataset.fmt, text: e.textContent })),
  );
  const svgs = await page.$$eval('svg', (s) => s.length);
  await page.screenshot({ path: args.out, fullPage: true });
  console.log(JSON.stringify({ status: response?.status() ?? 0, url: page.url(), errors, requests, svgs, figures }));
} finally {
  await browser.close();
}
