// The email endpoints of the built worker in workerd (Miniflare): the open pixel and the click
// redirect under the prefix, verified with the site's keys (EMAIL_KEYS), classified (agents,
// HEAD, the network from request.cf), sent on through the queue after the answer, refused
// tokens sent home and reported for counting; and a person's click marker turned into an
// identity link by the next batch, never under GPC.
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';

import { signEmailToken } from '../../js/src/email.js';
import { BERLIN_CF, CHROME_UA, PREFIX, batch, postBatch, runId, startRecorder, startWorker, waitFor } from './harness.mjs';

const KEY = { id: 'k1', secret: 'an-email-signing-secret-of-32-bytes!' };
const HOME = 'https://shop.example/';
const TARGET = 'https://shop.example/p/42?utm_source=email';
const EMAIL_VARS = {
  EMAIL_KEYS: `${KEY.id}:${KEY.secret}`,
  EMAIL_SITE: 'shop',
  EMAIL_WRITE_KEY: 'wk_test',
  EMAIL_HOME_URL: HOME,
  EMAIL_MAX_AGE: '30days',
};

const hourAgo = () => Math.floor(Date.now() / 1000) - 3600;

function message(run, extra = {}) {
  return { site: 'shop', userId: `u-${run}`, email: 'ada@example.com', campaign: 'nov', sendId: `snd-${run}`, issuedAt: hourAgo(), ...extra };
}

async function hit(mf, path, { method = 'GET', ua = CHROME_UA, cf = BERLIN_CF, headers = {} } = {}) {
  const res = await mf.dispatchFetch(`https://shop.example${PREFIX}${path}`, {
    method,
    cf,
    redirect: 'manual',
    headers: { 'user-agent': ua, 'cf-connecting-ip': '203.0.113.77', ...headers },
  });
  const body = Buffer.from(await res.arrayBuffer());
  return { res, status: res.status, body };
}

/** Forwarded envelopes whose email part matches `pick`. */
function emailEnvelopes(rec, pick) {
  return rec.accepted.flatMap((f) => f.body.envelopes).filter((env) => env.email && pick(env));
}

/** `emailEnvelopes`, or `null` while there are none (for `waitFor`). */
function someEnvelopes(rec, pick) {
  const found = emailEnvelopes(rec, pick);
  return found.length > 0 ? found : null;
}

describe('email endpoints, through the queue', () => {
  let rec;
  let mf;
  before(async () => {
    rec = await startRecorder();
    mf = await startWorker({ ingestUrl: rec.url, queue: true, vars: EMAIL_VARS });
  });
  after(async () => {
    await mf?.dispose();
    await rec?.stop();
  });

  test('a person clicks: redirect with a marker, the click goes on, the next batch links the browser', async () => {
    const run = runId();
    const token = await signEmailToken({ ...message(run), target: TARGET }, KEY);
    const click = await hit(mf, `/e/c/${token}`);
    assert.equal(click.status, 302);
    assert.equal(click.res.headers.get('location'), TARGET);
    assert.equal(click.res.headers.get('cache-control'), 'no-store');
    const cookie = click.res.headers.get('set-cookie');
    assert.match(cookie, /^wm_email=[A-Za-z0-9_-]+; Path=\/; Max-Age=300; HttpOnly; SameSite=Lax; Secure$/);

    const [env] = await waitFor('the forwarded click', () =>
      someEnvelopes(rec, (e) => e.events.some((ev) => ev.userId === `u-${run}`)),
    );
    assert.equal(env.writeKey, 'wk_test');
    assert.equal(env.email.hits, true);
    assert.equal(env.geo.asn, 3320);
    const [ev] = env.events;
    assert.equal(ev.event, '$email_click');
    assert.deepEqual(
      { class: ev.properties.class, url: ev.properties.url, campaign: ev.properties.campaign, send_id: ev.properties.send_id },
      { class: 'human', url: TARGET, campaign: 'nov', send_id: `snd-${run}` },
    );

    // The landing page's first batch brings the marker back.
    const anon = `anon-${run}`;
    const body = JSON.parse(batch(run, 2));
    body.batch.forEach((e) => {
      e.anonymousId = anon;
      delete e.userId;
    });
    const r = await postBatch(mf, JSON.stringify(body), { headers: { cookie: `other=1; ${cookie.split(';')[0]}` } });
    assert.equal(r.status, 200, r.text);
    assert.match(r.res.headers.get('set-cookie') ?? '', /^wm_email=; Path=\/; Max-Age=0/);
    const [linked] = await waitFor('the batch with its link', () =>
      someEnvelopes(rec, (e) => e.email.link?.anonymousId === anon),
    );
    assert.deepEqual(linked.email.link, {
      userId: `u-${run}`,
      anonymousId: anon,
      campaign: 'nov',
      sendId: `snd-${run}`,
      clickedAt: linked.email.link.clickedAt,
    });
    assert.ok(Math.abs(linked.email.link.clickedAt - Date.now() / 1000) < 120);
    assert.equal(linked.events.length, 2, 'the batch itself goes on unchanged');
  });

  test('under GPC the marker is cleared and no link is made', async () => {
    const run = runId();
    const token = await signEmailToken({ ...message(run), target: TARGET }, KEY);
    const cookie = (await hit(mf, `/e/c/${token}`)).res.headers.get('set-cookie').split(';')[0];
    const before = rec.accepted.length;
    const r = await postBatch(mf, batch(run, 1), { headers: { cookie, 'sec-gpc': '1' } });
    assert.equal(r.status, 200, r.text);
    assert.match(r.res.headers.get('set-cookie') ?? '', /Max-Age=0/);
    await waitFor('the GPC batch forwarded', () =>
      rec.accepted.slice(before).some((f) => f.body.envelopes.some((e) => e.events.some((ev) => ev.messageId === `${run}-0`))),
    );
    const envs = rec.accepted.slice(before).flatMap((f) => f.body.envelopes);
    assert.ok(!envs.some((e) => e.email?.link), JSON.stringify(envs.map((e) => e.email)));
  });

  test('the pixel is answered at once with the GIF, and the open goes on classified', async () => {
    const run = runId();
    const token = await signEmailToken(message(run), KEY);
    const open = await hit(mf, `/e/o/${token}.gif`);
    assert.equal(open.status, 200);
    assert.equal(open.res.headers.get('content-type'), 'image/gif');
    assert.match(open.res.headers.get('cache-control'), /no-store/);
    assert.equal(open.body.length, 43);
    assert.equal(open.res.headers.get('set-cookie'), null);
    // Apple Mail Privacy Protection fetches with a bare agent.
    const proxy = await hit(mf, `/e/o/${token}.gif`, { ua: 'Mozilla/5.0' });
    assert.equal(proxy.status, 200);
    const opens = await waitFor('both opens', () => {
      const evs = emailEnvelopes(rec, () => true)
        .flatMap((e) => e.events)
        .filter((ev) => ev.userId === `u-${run}`);
      return evs.length === 2 && evs;
    });
    assert.deepEqual(opens.map((ev) => [ev.event, ev.properties.class]).sort(), [
      ['$email_open', 'human'],
      ['$email_open', 'machine'],
    ]);
  });

  test('scanners (HEAD, a scanner network) are redirected, recorded as scanners, and leave no marker', async () => {
    const run = runId();
    const token = await signEmailToken({ ...message(run), target: TARGET }, KEY);
    const head = await hit(mf, `/e/c/${token}`, { method: 'HEAD' });
    const mimecast = await hit(mf, `/e/c/${token}`, { cf: { ...BERLIN_CF, asn: 30031 } });
    for (const h of [head, mimecast]) {
      assert.equal(h.status, 302);
      assert.equal(h.res.headers.get('location'), TARGET);
      assert.equal(h.res.headers.get('set-cookie'), null);
    }
    const clicks = await waitFor('both scanner clicks', () => {
      const evs = emailEnvelopes(rec, () => true)
        .flatMap((e) => e.events)
        .filter((ev) => ev.userId === `u-${run}`);
      return evs.length === 2 && evs;
    });
    assert.deepEqual(
      clicks.map((ev) => ev.properties.class),
      ['scanner', 'scanner'],
    );
    assert.ok(clicks.some((ev) => /Mimecast/.test(ev.properties.reason)), JSON.stringify(clicks.map((ev) => ev.properties.reason)));
  });

  test('a tampered or expired token goes to the home page, never its target, and is reported', async () => {
    const run = runId();
    const good = await signEmailToken({ ...message(run), target: TARGET }, KEY);
    // A character inside the MAC (the last 22 characters), not the last one, whose spare bits
    // would make the token malformed rather than wrongly signed.
    const i = good.length - 5;
    const tampered = good.slice(0, i) + (good[i] === 'A' ? 'B' : 'A') + good.slice(i + 1);
    const expired = await signEmailToken({ ...message(run), issuedAt: hourAgo() - 31 * 86_400, target: TARGET }, KEY);
    const before = emailEnvelopes(rec, (e) => e.email.refused).length;
    for (const t of [tampered, expired]) {
      const r = await hit(mf, `/e/c/${t}`);
      assert.equal(r.status, 302);
      assert.equal(r.res.headers.get('location'), HOME);
      assert.equal(r.res.headers.get('set-cookie'), null);
    }
    const bad = await hit(mf, `/e/o/${tampered}.gif`);
    assert.equal(bad.status, 200, 'a refused pixel is still the pixel');
    assert.equal(bad.body.length, 43);
    const refused = await waitFor('three refusals reported', () => {
      const r = emailEnvelopes(rec, (e) => e.email.refused).slice(before);
      return r.length >= 3 && r;
    });
    assert.deepEqual(refused.map((e) => e.email.refused).sort(), ['bad_signature', 'bad_signature', 'expired']);
    assert.ok(refused.every((e) => e.events.length === 0));
  });
});

describe('email endpoints without EMAIL_KEYS', () => {
  let mf;
  before(async () => {
    mf = await startWorker({});
  });
  after(async () => {
    await mf?.dispose();
  });

  test('are not found', async () => {
    const token = await signEmailToken({ ...message('x'), target: TARGET }, KEY);
    assert.equal((await hit(mf, `/e/c/${token}`)).status, 404);
    assert.equal((await hit(mf, `/e/o/${token}.gif`)).status, 404);
  });
});
