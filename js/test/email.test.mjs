// The npm signing function (src/email.js) against the vectors the Rust protocol crate checks
// too (protocol/data/email-token-vectors.json), and its refusals.
import assert from 'node:assert/strict'
import { readFileSync } from 'node:fs'
import { test } from 'node:test'

import { pixelUrl, signEmailToken, trackedLink, validTarget } from '../src/email.js'

const vectors = JSON.parse(
  readFileSync(new URL('../../protocol/data/email-token-vectors.json', import.meta.url), 'utf8'),
).vectors

test('every shared vector signs to its token', async () => {
  assert.ok(vectors.length >= 4)
  for (const v of vectors) {
    assert.equal(await signEmailToken(v.claims, v.key), v.token, v.name)
  }
})

test('links and pixels are built on the base URL', async () => {
  const [click] = vectors
  const { target, ...message } = click.claims
  assert.equal(await trackedLink('https://shop.example.com/wm/', message, target, click.key), `https://shop.example.com/wm/e/c/${click.token}`)
  const open = await pixelUrl('https://shop.example.com/wm', message, click.key)
  assert.match(open, /^https:\/\/shop\.example\.com\/wm\/e\/o\/[A-Za-z0-9_-]+\.gif$/)
  assert.notEqual(open, `https://shop.example.com/wm/e/o/${click.token}.gif`)
})

test('what must not be signed is refused, naming the field', async () => {
  const key = { id: 'k1', secret: 'secret-of-k1-0123456789' }
  const ok = { site: 'shop', userId: 'u', issuedAt: 1 }
  for (const bad of ['javascript:alert(1)', '/relative', '//evil.example', 'https://', 'https://a b']) {
    assert.equal(validTarget(bad), false, bad)
    await assert.rejects(signEmailToken({ ...ok, target: bad }, key), /^Error: links: /, bad)
  }
  await assert.rejects(signEmailToken({ ...ok, userId: '' }, key), /recipient: needs a user_id or an email/)
  await assert.rejects(signEmailToken({ ...ok, site: '' }, key), /site: missing/)
  await assert.rejects(signEmailToken(ok, { id: 'k', secret: 'short' }), /key secret: shorter than 16 bytes/)
  await assert.rejects(signEmailToken({ ...ok, campaign: 'x'.repeat(513) }, key), /campaign: longer than 512 bytes/)
})
