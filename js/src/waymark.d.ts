// Types for the Waymark tag (`import { waymark } from '@waymark/tag'`). The same commands work
// through the inline stub: `window.waymark('track', 'Signed Up', { plan: 'pro' })`.

export type Properties = Record<string, unknown>

export interface InitOptions {
  /** The site's write key; sent as `writeKey` with every batch. */
  site: string
  /** Where batches are POSTed (`text/plain`, Segment batch JSON). Default `/v1/batch`. */
  endpoint?: string
  /**
   * Where the anonymous id, user id and session live: `'localStorage'` (default), `'cookie'`
   * (first-party, one year, SameSite=Lax) or `'none'` (cookieless: nothing is written anywhere,
   * ids last for the page only). The retry queue uses localStorage unless `'none'`.
   */
  storage?: 'localStorage' | 'cookie' | 'none'
  /** Cookie domain for `storage: 'cookie'` (e.g. `.example.com`); default the page's host. */
  cookieDomain?: string
  /**
   * `'pending'`: build events but hold them in memory, storing nothing, until
   * `waymark('consent', 'granted')` sends them (with their original timestamps) or
   * `waymark('consent', 'denied')` discards them. Default: granted.
   */
  consent?: 'granted' | 'pending'
  /** Treat Global Privacy Control or Do Not Track as consent denied. Default false. */
  honorSignals?: boolean
  /** Milliseconds events wait to be batched. Default 1000. */
  flushInterval?: number
  /** Send the initial page view on init. Default true. */
  pageview?: boolean
  /** Capture SPA route changes, clicks, engaged time and scroll depth. Default true. */
  autocapture?: boolean
}

export interface Waymark {
  (command: 'init', options: InitOptions): void
  /** A custom event. `Product Viewed` with `product_id` attributes engaged time to the product. */
  (command: 'track', event: string, properties?: Properties): void
  (command: 'identify', userId: string, traits?: Properties): void
  (command: 'identify', traits: Properties): void
  /** A page view (sent automatically on load and on SPA route changes). */
  (command: 'page', name?: string, properties?: Properties): void
  (command: 'page', properties: Properties): void
  (command: 'consent', state: 'granted' | 'denied'): void
  /** Forget the user: new anonymous id and session, no user id. */
  (command: 'reset'): void
}

export declare const waymark: Waymark
export default waymark

declare global {
  interface Window {
    waymark: Waymark & { q?: Array<[number, IArguments]> }
  }
}
