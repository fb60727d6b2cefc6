// Signing tracked email links and open pixels without a round trip to Waymark: the same token
// as `waymark_protocol::email::token::sign` (Rust) and `POST /v1/email/links`, made with Web
// Crypto (browsers, Workers, Deno, Node >= 20). Not part of the tag: import it from
// `@waymark/tag/email` on the email platform's side, with the site's signing key (never in a
// page). The format is documented in protocol/src/email/token.rs; both sides check the shared
// vectors in protocol/data/email-token-vectors.json.
//
//   import { trackedLink, pixelUrl } from '@waymark/tag/email'
//   const key = { id: 'k1', secret: process.env.WAYMARK_EMAIL_SECRET }
//   const msg = { site: 'shop', userId: 'u-1842', email: 'ada@example.com',
//                 campaign: 'november-sale', sendId: 'snd_01HZY3' }
//   await trackedLink('https://shop.example.com/wm', msg, 'https://shop.example.com/p/42', key)
//   await pixelUrl('https://shop.example.com/wm', msg, key)

const VERSION = 1
const DOMAIN = 'waymark-email-v1'
const MAC_LEN = 16
const MAX_FIELD_LEN = 512
const MAX_TARGET_LEN = 4096

const utf8 = new TextEncoder()

function invalid(field, reason) {
  const e = new Error(`${field}: ${reason}`)
  e.field = field
  return e
}

/** Whether `url` may be a click target: an absolute http(s) URL, no spaces or controls. */
export function validTarget(url) {
  if (typeof url !== 'string') return false
  const lower = url.slice(0, 8).toLowerCase()
  let rest
  if (lower.startsWith('https://')) rest = url.slice(8)
  else if (lower.startsWith('http://')) rest = url.slice(7)
  else return false
  return (
    rest.length > 0 &&
    !rest.startsWith('/') &&
    utf8.encode(url).length <= MAX_TARGET_LEN &&
    // eslint-disable-next-line no-control-regex
    !/[\s\u0000-\u001f\u007f-\u009f]/u.test(url)
  )
}

function varint(out, n) {
  if (!Number.isSafeInteger(n) || n < 0) throw invalid('issuedAt', 'must be whole Unix seconds')
  do {
    let b = n % 128
    n = Math.floor(n / 128)
    if (n > 0) b |= 0x80
    out.push(b)
  } while (n > 0)
}

function str(out, s) {
  const bytes = utf8.encode(s)
  varint(out, bytes.length)
  for (const b of bytes) out.push(b)
}

function base64url(bytes) {
  let bin = ''
  for (const b of bytes) bin += String.fromCharCode(b)
  return btoa(bin).replace(/\+/g, '-').replace(/\//g, '_').replace(/=+$/, '')
}

/**
 * Signs one token. `claims`: `{ site, userId, email, campaign, sendId, issuedAt, target }`
 * (`issuedAt`: Unix seconds, default now; `target`: the link's URL, absent for a pixel).
 * `key`: `{ id, secret }` (the site's `[sites.email] keys` entry; the secret as a string or
 * bytes, at least 16 bytes). Resolves to the base64url token; throws naming the field.
 */
export async function signEmailToken(claims, key) {
  const c = {
    site: claims.site ?? '',
    userId: claims.userId ?? '',
    email: claims.email ?? '',
    campaign: claims.campaign ?? '',
    sendId: claims.sendId ?? '',
    issuedAt: claims.issuedAt ?? Math.floor(Date.now() / 1000),
    target: claims.target,
  }
  const secret = typeof key.secret === 'string' ? utf8.encode(key.secret) : new Uint8Array(key.secret)
  for (const [field, v] of [
    ['site', c.site],
    ['recipient.user_id', c.userId],
    ['recipient.email', c.email],
    ['campaign', c.campaign],
    ['send_id', c.sendId],
    ['key id', key.id],
  ]) {
    if (typeof v !== 'string') throw invalid(field, 'must be a string')
    if (utf8.encode(v).length > MAX_FIELD_LEN) throw invalid(field, 'longer than 512 bytes')
  }
  if (!c.site) throw invalid('site', 'missing')
  if (!c.userId && !c.email) throw invalid('recipient', 'needs a user_id or an email')
  if (secret.length < 16) throw invalid('key secret', 'shorter than 16 bytes')
  if (c.target !== undefined && c.target !== null && !validTarget(c.target)) {
    throw invalid('links', 'a link must be an absolute http(s) URL of at most 4096 bytes')
  }
  const click = c.target !== undefined && c.target !== null
  const payload = [VERSION, click ? 0x63 : 0x6f]
  str(payload, key.id)
  varint(payload, c.issuedAt)
  for (const s of [c.site, c.userId, c.email, c.campaign, c.sendId]) str(payload, s)
  if (click) str(payload, c.target)
  const body = new Uint8Array(payload)
  const hmacKey = await crypto.subtle.importKey('raw', secret, { name: 'HMAC', hash: 'SHA-256' }, false, ['sign'])
  const domain = utf8.encode(DOMAIN)
  const input = new Uint8Array(domain.length + body.length)
  input.set(domain, 0)
  input.set(body, domain.length)
  const mac = new Uint8Array(await crypto.subtle.sign('HMAC', hmacKey, input)).slice(0, MAC_LEN)
  const token = new Uint8Array(body.length + MAC_LEN)
  token.set(body, 0)
  token.set(mac, body.length)
  return base64url(token)
}

function base(baseUrl) {
  return String(baseUrl).replace(/\/+$/, '')
}

/** The tracked URL of `target` for one message (`{prefix}/e/c/<token>`). */
export async function trackedLink(baseUrl, message, target, key) {
  return `${base(baseUrl)}/e/c/${await signEmailToken({ ...message, target }, key)}`
}

/** The open pixel's URL for one message (`{prefix}/e/o/<token>.gif`). */
export async function pixelUrl(baseUrl, message, key) {
  return `${base(baseUrl)}/e/o/${await signEmailToken({ ...message, target: undefined }, key)}.gif`
}
