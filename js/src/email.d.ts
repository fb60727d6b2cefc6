/** One message to one recipient: what a tracked link or pixel carries besides its target. */
export interface EmailMessage {
  /** The site id (`[[sites]] id`). */
  site: string
  /** The recipient's user id on the site (empty when only the email is known). */
  userId?: string
  /** The recipient's email address (empty when only the user id is known). */
  email?: string
  campaign?: string
  /** The email platform's id for this one message to this one recipient. */
  sendId?: string
  /** Unix seconds; default now. */
  issuedAt?: number
}

export interface EmailClaims extends EmailMessage {
  /** The URL a click redirects to; absent for an open pixel. */
  target?: string
}

/** A site's signing key (`[sites.email] keys`): its id and secret (at least 16 bytes). */
export interface EmailSigningKey {
  id: string
  secret: string | Uint8Array
}

/** The token of `/e/c/<token>` or `/e/o/<token>.gif`; rejects naming the field on bad input. */
export function signEmailToken(claims: EmailClaims, key: EmailSigningKey): Promise<string>
/** `{baseUrl}/e/c/<token>` for `target`. */
export function trackedLink(baseUrl: string, message: EmailMessage, target: string, key: EmailSigningKey): Promise<string>
/** `{baseUrl}/e/o/<token>.gif`. */
export function pixelUrl(baseUrl: string, message: EmailMessage, key: EmailSigningKey): Promise<string>
/** Whether `url` may be a click target: an absolute http(s) URL without spaces or control characters. */
export function validTarget(url: string): boolean
