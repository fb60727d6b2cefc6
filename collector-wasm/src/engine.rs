//! The tag's logic, free of the browser: identity, sessions, consent, event JSON, batching and
//! the retry queue. The wasm wrapper in `lib.rs` hands it timestamps and strings from the loader,
//! and storage through [`Store`]; the unit tests drive it the same way with a memory store.
//!
//! Delivery is pull-based: the loader asks [`Core::wake`] when to come back, then [`Core::next`]
//! for a batch body to send, and reports the outcome with [`Core::done`]. At most one ordinary
//! send is in flight; `next(.., force = true)` (page hide) takes everything not yet sent at once
//! for `sendBeacon`.

use alloc::string::String;
use alloc::vec::Vec;

use crate::engagement::{self, Engagement};
use crate::ids::Ids;
use crate::json;
use crate::queue::{self, Lines, Queue};
use crate::retry;
use crate::session::Session;
use crate::time::rfc3339;
use crate::wire::{
    self as names, MAX_ENGAGED_MS, MAX_EVENTS_PER_BATCH, MAX_EVENT_BYTES, MAX_ID_LEN, MAX_NAME_LEN,
};

/// The library name and version in `context.library`.
pub const LIBRARY: &str = "waymark.js";
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
/// `context.library` as JSON (one constant: fewer calls than writing it piece by piece).
const LIBRARY_JSON: &str = concat!(
    "\"library\":{\"name\":\"waymark.js\",\"version\":\"",
    env!("CARGO_PKG_VERSION"),
    "\"}"
);

/// Largest batch body. `sendBeacon` and `fetch(.., {keepalive})` share a 64 KiB quota for
/// everything in flight, and an ordinary send may overlap a page-hide beacon: half each.
pub const MAX_SEND_BYTES: usize = 30 * 1024;
/// Events per batch (below the protocol's limit, to keep one batch within the quota).
pub const MAX_SEND_EVENTS: usize = if MAX_EVENTS_PER_BATCH < 100 {
    MAX_EVENTS_PER_BATCH
} else {
    100
};
/// A batch is sent as soon as this many events wait, without waiting for the flush interval.
pub const FLUSH_AT: usize = 20;
/// Most events held in memory while consent is pending.
pub const MAX_HELD: usize = queue::MAX_EVENTS;
/// Session state is written at most this often (the timeout is 30 minutes).
const SESSION_SAVE_MS: u64 = 5000;

pub const KEY_ANON: &str = "wm_aid";
pub const KEY_USER: &str = "wm_uid";
pub const KEY_SESSION: &str = "wm_ses";
pub const KEY_CAMPAIGN: &str = "wm_cmp";
/// The retry queue. Each tab (each page load) has its own: the loader's store for it adds the
/// tab's id to the key (`wm_q<tab>`, js/src/imports.js), so that two tabs never overwrite
/// each other's events; a tab that is gone leaves its keys for another to [`Core::adopt`].
pub const KEY_QUEUE: &str = "wm_q";
/// The ordinary batch in flight, in the queue's format, while it is unanswered: its events from
/// the retry queue from the moment they leave it, all of it once the page is hidden. A page that
/// goes away first leaves it for another page to adopt and send again (a duplicate at worst,
/// which the server drops by `messageId`). Per tab, like [`KEY_QUEUE`].
pub const KEY_INFLIGHT: &str = "wm_f";

/// Where the tag keeps state between pages: a cookie jar or localStorage. Implementations
/// swallow every error (a full or blocked storage is the same as none).
pub trait Store {
    fn get(&self, key: &str) -> Option<String>;
    fn set(&self, key: &str, value: &str);
    fn remove(&self, key: &str);
}

/// What the loader reports about a page view.
#[derive(Debug, Clone, Copy, Default)]
pub struct PageView<'a> {
    /// `context.page`: a JSON object with `url`, `path`, `search`, `title` and `referrer` as
    /// `location` and `document` have them, empty members left out (the loader's
    /// `JSON.stringify`, native and free in the browser).
    pub page: &'a str,
    /// `context.campaign`: a JSON object with what is set of `source`, `medium`, `name`, `term`
    /// and `content` (from `utm_source`, `utm_medium`, `utm_campaign`, `utm_term` and
    /// `utm_content`), or empty or `{}` when none is.
    pub campaign: &'a str,
    /// `page(name)`, for named page views.
    pub name: &'a str,
    /// Properties JSON object, or empty.
    pub props: &'a str,
    /// `data-waymark-product` of the page, or empty.
    pub product: &'a str,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Consent {
    Granted,
    /// Events are built and held in memory, nothing is stored or sent.
    Pending,
    /// Nothing is stored or sent.
    Denied,
}

pub struct Config {
    pub write_key: String,
    pub consent: Consent,
    pub flush_interval_ms: u64,
    pub user_agent: String,
    pub locale: String,
    pub seed: [u32; 4],
}

pub struct Core<S: Store> {
    /// Anonymous id, user id, session, campaign. `None`: cookieless, or no storage.
    ids_store: Option<S>,
    /// The retry queue. `None`: kept in memory (`mem_queue`).
    queue_store: Option<S>,
    write_key: String,
    /// `"library":{..},"userAgent":..,"locale":..`, written once.
    context_tail: String,
    ids: Ids,
    anon: String,
    user: String,
    session: Session,
    session_saved: u64,
    /// JSON object for `context.campaign`, or empty.
    campaign: String,
    /// JSON object for `context.page`.
    page: String,
    page_started: bool,
    pub consent: Consent,
    held: Lines,
    buffer: Lines,
    buffer_since: u64,
    mem_queue: Queue,
    /// Events in the retry queue, as last seen.
    queued: usize,
    retry_at: u64,
    attempts: u32,
    /// Batches sent and not yet answered: (id, events, forced).
    inflight: Vec<(u32, Lines, bool)>,
    /// The id of the batch saved under [`KEY_INFLIGHT`] (0: none).
    saved_inflight: u32,
    pub last_id: u32,
    engage: Engagement,
    flush_interval_ms: u64,
}

impl<S: Store> Core<S> {
    pub fn new(cfg: Config, ids_store: Option<S>, queue_store: Option<S>, now: u64) -> Core<S> {
        let mut ids = Ids::new(cfg.seed);
        let get = |k: &str| {
            ids_store
                .as_ref()
                .and_then(|s| s.get(k))
                .unwrap_or_default()
        };
        let mut anon = get(KEY_ANON);
        if anon.is_empty() || anon.len() > MAX_ID_LEN {
            anon = ids.v4();
        }
        let user = get(KEY_USER);
        let mut campaign = get(KEY_CAMPAIGN);
        let session = match Session::parse(&get(KEY_SESSION)) {
            Some(s) if !s.expired(now) => s,
            _ => {
                campaign.clear();
                Session {
                    id: ids.v7(now),
                    last: now,
                }
            }
        };
        let mut context_tail = String::from(LIBRARY_JSON);
        let mut first = false;
        json::opt_str(&mut context_tail, &mut first, "userAgent", &cfg.user_agent);
        json::opt_str(&mut context_tail, &mut first, "locale", &cfg.locale);
        let mut core = Core {
            ids_store,
            queue_store,
            write_key: cfg.write_key,
            context_tail,
            ids,
            anon,
            user,
            session,
            session_saved: 0,
            campaign,
            page: String::from("{}"),
            page_started: false,
            consent: cfg.consent,
            held: Lines::default(),
            buffer: Lines::default(),
            buffer_since: 0,
            mem_queue: Queue::default(),
            // A new page's queue is empty: its keys are its own (see `KEY_QUEUE`); what earlier
            // pages left comes in through `adopt`.
            queued: 0,
            retry_at: 0,
            attempts: 0,
            inflight: Vec::new(),
            saved_inflight: 0,
            last_id: 0,
            engage: Engagement::default(),
            flush_interval_ms: cfg.flush_interval_ms,
        };
        core.save_ids();
        core
    }

    /// Takes over what another tab left in storage: its retry queue or its send in flight (both
    /// in the queue's format), into this tab's queue, dropped count included. The loader calls
    /// this for the keys of tabs that are gone. Returns whether their key may go: while consent
    /// is pending nothing is stored, so nothing is taken and the key stays; denied, the events
    /// are discarded and the key goes.
    pub fn adopt(&mut self, text: &str) -> bool {
        if self.consent == Consent::Granted {
            let other = Queue::parse(text);
            let mut q = self.load_queue();
            q.dropped += other.dropped;
            q.unshift(other.items);
            self.save_queue(q);
        }
        self.consent != Consent::Pending
    }

    // ---- the API calls ----------------------------------------------------------------------

    /// A page view. Reports engagement of the previous page view first (SPA route change).
    pub fn page(&mut self, ts: u64, p: &PageView<'_>, visible: bool, focused: bool) {
        self.leave(ts);
        self.touch(ts);
        let PageView {
            page,
            campaign,
            name,
            props,
            product,
        } = *p;
        self.page = String::from(json::object(page));
        // (A campaign is kept for the session: a page view without one leaves it.)
        if json::object(campaign).len() > 2 {
            self.campaign = String::from(campaign);
            self.save_ids();
        }
        self.engage = Engagement::start(ts, visible, focused);
        self.engage.product = String::from(product);
        self.page_started = true;
        let ev = self.event(ts, "page", "name", name, "properties", props);
        self.emit(ts, ev);
    }

    pub fn track(&mut self, ts: u64, name: &str, props: &str, product: &str) {
        if name.is_empty() {
            return;
        }
        if name == names::PRODUCT_VIEWED && !product.is_empty() {
            self.engage.product = String::from(product);
        }
        let ev = self.event(ts, "track", "event", name, "properties", props);
        self.emit(ts, ev);
    }

    pub fn identify(&mut self, ts: u64, user: &str, traits: &str) {
        if user.len() > MAX_ID_LEN {
            return;
        }
        if !user.is_empty() {
            self.user = String::from(user);
            self.save_ids();
        }
        let ev = self.event(ts, "identify", "", "", "traits", traits);
        self.emit(ts, ev);
    }

    /// Forgets the visitor: a new anonymous id and session, no user id.
    pub fn reset(&mut self, ts: u64) {
        self.user.clear();
        self.campaign.clear();
        self.anon = self.ids.v4();
        self.session = Session {
            id: self.ids.v7(ts),
            last: ts,
        };
        self.session_saved = 0;
        self.save_ids();
    }

    pub fn consent(&mut self, now: u64, granted: bool) {
        if granted {
            self.consent = Consent::Granted;
            self.session_saved = 0;
            self.save_ids();
            let held = core::mem::take(&mut self.held);
            if !held.is_empty() {
                if self.buffer.is_empty() {
                    self.buffer_since = now;
                }
                self.buffer.append(&held);
            }
        } else {
            self.consent = Consent::Denied;
            self.held = Lines::default();
            self.buffer = Lines::default();
            self.mem_queue = Queue::default();
            self.queued = 0;
            if let Some(s) = &self.ids_store {
                s.remove(KEY_ANON);
                s.remove(KEY_USER);
                s.remove(KEY_SESSION);
                s.remove(KEY_CAMPAIGN);
            }
            if let Some(s) = &self.queue_store {
                s.remove(KEY_QUEUE);
                s.remove(KEY_INFLIGHT);
            }
        }
    }

    /// Visibility, focus and activity signals, scroll depth, and "the page is going away".
    pub fn signal(&mut self, ts: u64, sig: u32, n: u32) {
        match sig {
            SIG_SCROLL => {
                self.engage.scroll_depth = self.engage.scroll_depth.max(n.min(100) as u8);
                self.engage.signal(ts, engagement::SIG_ACTIVITY);
            }
            SIG_LEAVE => self.leave(ts),
            // The network is back: retry now rather than at the end of the backoff.
            SIG_ONLINE => self.retry_at = 0,
            _ => self.engage.signal(ts, sig),
        }
        if sig == engagement::SIG_ACTIVITY || sig == SIG_SCROLL {
            self.touch(ts);
        }
    }

    /// Sets the product of the current page view (from a `data-waymark-product` attribute).
    pub fn product(&mut self, product: &str) {
        if !product.is_empty() {
            self.engage.product = String::from(product);
        }
    }

    /// Sends `$engagement` for the current page view if there is unreported engaged time.
    fn leave(&mut self, ts: u64) {
        if !self.page_started {
            return;
        }
        let ms = self.engage.take(ts).min(MAX_ENGAGED_MS);
        if ms == 0 {
            return;
        }
        let mut p = String::from("{\"engaged_ms\":");
        json::uint(&mut p, ms);
        json::put(&mut p, ",\"scroll_depth\":");
        json::uint(&mut p, u64::from(self.engage.scroll_depth));
        let mut first = false;
        json::opt_str(&mut p, &mut first, "product_id", &self.engage.product);
        json::put(&mut p, "}");
        let ev = self.event(ts, "track", "event", names::ENGAGEMENT, "properties", &p);
        self.emit(ts, ev);
    }

    // ---- events -----------------------------------------------------------------------------

    /// Starts a new session when the last one timed out; records activity.
    fn touch(&mut self, ts: u64) {
        if self.session.expired(ts) {
            self.session = Session {
                id: self.ids.v7(ts),
                last: ts,
            };
            self.campaign.clear();
            self.session_saved = 0;
        }
        self.session.last = self.session.last.max(ts);
        if self.session.last.saturating_sub(self.session_saved) >= SESSION_SAVE_MS {
            self.save_ids();
        }
    }

    fn event(
        &mut self,
        ts: u64,
        kind: &str,
        name_field: &str,
        name: &str,
        body_field: &str,
        body: &str,
    ) -> String {
        self.touch(ts);
        let mut e = String::with_capacity(512 + body.len());
        json::put(&mut e, "{\"type\":\"");
        json::put(&mut e, kind);
        json::put(&mut e, "\",\"messageId\":\"");
        json::put(&mut e, &self.ids.v7(ts));
        // (The anonymous id is never empty: `new` and `reset` make one.)
        json::put(&mut e, "\",\"anonymousId\":");
        json::string(&mut e, &self.anon);
        let mut first = false;
        json::opt_str(&mut e, &mut first, "userId", &self.user);
        if !name_field.is_empty() {
            json::opt_str(&mut e, &mut first, name_field, truncate(name, MAX_NAME_LEN));
        }
        json::put(&mut e, ",\"originalTimestamp\":\"");
        rfc3339(&mut e, ts);
        json::put(&mut e, "\",\"context\":{");
        json::put(&mut e, &self.context_tail);
        json::put(&mut e, ",\"sessionId\":");
        json::string(&mut e, &self.session.id);
        json::put(&mut e, ",\"page\":");
        json::put(&mut e, &self.page);
        if !self.campaign.is_empty() {
            json::put(&mut e, ",\"campaign\":");
            json::put(&mut e, &self.campaign);
        }
        json::put(&mut e, "},\"");
        json::put(&mut e, body_field);
        json::put(&mut e, "\":");
        json::put(&mut e, json::object(body));
        json::put(&mut e, "}");
        e
    }

    fn emit(&mut self, now: u64, ev: String) {
        if ev.len() > MAX_EVENT_BYTES {
            self.add_dropped(1);
            return;
        }
        match self.consent {
            Consent::Denied => {}
            Consent::Pending => {
                if self.held.len() < MAX_HELD {
                    self.held.push(&ev);
                }
            }
            Consent::Granted => {
                if self.buffer.is_empty() {
                    self.buffer_since = now;
                }
                self.buffer.push(&ev);
            }
        }
    }

    // ---- delivery ---------------------------------------------------------------------------

    fn busy(&self) -> bool {
        self.inflight.iter().any(|(_, _, forced)| !forced)
    }

    /// Milliseconds until [`Core::next`] has something to send, or `None` for "nothing to do
    /// until the next call".
    pub fn wake(&self, now: u64) -> Option<u64> {
        if self.consent != Consent::Granted || self.busy() {
            return None;
        }
        let mut due: Option<u64> = None;
        if self.queued > 0 {
            due = Some(self.retry_at);
        }
        if !self.buffer.is_empty() {
            let t = if self.buffer.len() >= FLUSH_AT {
                0
            } else {
                self.buffer_since + self.flush_interval_ms
            };
            let t = t.max(self.retry_at);
            due = Some(due.map_or(t, |d| d.min(t)));
        }
        due.map(|d| d.saturating_sub(now))
    }

    /// The next batch body to send, or an empty string. `force`: the page is being hidden or
    /// left; everything not yet tried goes now (for `sendBeacon`), whatever else is in flight.
    pub fn next(&mut self, now: u64, force: bool) -> String {
        if self.consent != Consent::Granted {
            return String::new();
        }
        let mut items = Lines::default();
        if force {
            // The page may go away before the ordinary send in flight is answered: keep its
            // events in storage until it is.
            if let Some((id, sent, _)) = self.inflight.iter().find(|(_, _, forced)| !forced) {
                self.saved_inflight = *id;
                self.store_inflight(sent);
            }
        } else {
            if self.busy() || self.retry_at > now {
                return String::new();
            }
            if self.queued > 0 {
                let mut q = self.load_queue();
                items = q.take(MAX_SEND_EVENTS, MAX_SEND_BYTES);
                // Events from the retry queue stay in storage while they are in flight: a page
                // can go away at any moment, also without being hidden first. (Stored there
                // before they leave the queue: a page that goes away in between leaves them
                // twice rather than not at all.)
                if !items.is_empty() {
                    self.saved_inflight = self.last_id.wrapping_add(1);
                    self.store_inflight(&items);
                }
                self.save_queue(q);
            }
            let due = self.buffer.len() >= FLUSH_AT
                || now >= self.buffer_since + self.flush_interval_ms
                || !items.is_empty();
            if !due {
                return String::new();
            }
        }
        let bytes = items.bytes() + items.len();
        // With events from the retry queue already in, only what fits (possibly nothing): the
        // rest waits for the next batch.
        let n = queue::fit(
            &self.buffer,
            MAX_SEND_EVENTS - items.len(),
            MAX_SEND_BYTES.saturating_sub(bytes),
            items.is_empty(),
        );
        items.append(&self.buffer.take_front(n));
        if items.is_empty() {
            return String::new();
        }
        let dropped = self.take_dropped();
        self.last_id = self.last_id.wrapping_add(1);
        let mut body = String::with_capacity(bytes + 200);
        json::put(&mut body, "{\"batch\":[");
        for (i, item) in items.iter().enumerate() {
            if i > 0 {
                json::put(&mut body, ",");
            }
            json::put(&mut body, item);
        }
        json::put(&mut body, "],\"sentAt\":\"");
        rfc3339(&mut body, now);
        json::put(&mut body, "\",\"writeKey\":");
        json::string(&mut body, &self.write_key);
        if dropped > 0 {
            json::put(&mut body, ",\"droppedEvents\":");
            json::uint(&mut body, dropped);
        }
        json::put(&mut body, "}");
        self.inflight.push((self.last_id, items, force));
        body
    }

    /// Stores events of the ordinary send in flight (`saved_inflight`) under [`KEY_INFLIGHT`],
    /// until it is answered.
    fn store_inflight(&self, items: &Lines) {
        if let Some(s) = &self.queue_store {
            let q = Queue {
                items: items.clone(),
                dropped: 0,
            };
            s.set(KEY_INFLIGHT, &q.serialize());
        }
    }

    /// The outcome of batch `id`: an HTTP status, or 0 for a network error; `retry_after_ms`
    /// from a `Retry-After` header (0 when absent).
    pub fn done(&mut self, now: u64, id: u32, status: u32, retry_after_ms: u64) {
        let Some(pos) = self.inflight.iter().position(|(i, _, _)| *i == id) else {
            return;
        };
        let (_, items, _) = self.inflight.swap_remove(pos);
        if (200..300).contains(&status) {
            self.attempts = 0;
            self.retry_at = 0;
        } else if retry::retryable(status) {
            self.attempts = self.attempts.saturating_add(1);
            let r = self.ids.rng.next_u32();
            self.retry_at = now + retry::backoff_ms(self.attempts, retry_after_ms, r);
            if self.consent == Consent::Granted {
                let mut q = self.load_queue();
                q.unshift(items);
                self.save_queue(q);
            }
        }
        // Any other status: the server refused the batch for good; retrying cannot help.
        // (The stored copy goes last: a page that goes away in between leaves the events
        // twice rather than not at all.)
        if id == self.saved_inflight {
            self.saved_inflight = 0;
            if let Some(s) = &self.queue_store {
                s.remove(KEY_INFLIGHT);
            }
        }
    }

    /// The count of events the caps dropped, reset to zero (it goes out with the next batch).
    fn take_dropped(&mut self) -> u64 {
        let mut q = self.load_queue();
        let dropped = core::mem::take(&mut q.dropped);
        if dropped > 0 || self.queue_store.is_none() {
            // (The memory queue was moved out by `load_queue` and must go back in any case.)
            self.save_queue(q);
        }
        dropped
    }

    fn add_dropped(&mut self, n: u64) {
        let mut q = self.load_queue();
        q.dropped += n;
        self.save_queue(q);
    }

    fn load_queue(&mut self) -> Queue {
        match &self.queue_store {
            Some(s) => s
                .get(KEY_QUEUE)
                .map(|v| Queue::parse(&v))
                .unwrap_or_default(),
            None => core::mem::take(&mut self.mem_queue),
        }
    }

    fn save_queue(&mut self, q: Queue) {
        self.queued = q.items.len();
        match &self.queue_store {
            Some(s) if self.consent == Consent::Granted => {
                if q.items.is_empty() && q.dropped == 0 {
                    s.remove(KEY_QUEUE);
                } else {
                    s.set(KEY_QUEUE, &q.serialize());
                }
            }
            Some(_) => {}
            None => self.mem_queue = q,
        }
    }

    fn save_ids(&mut self) {
        if self.consent != Consent::Granted {
            return;
        }
        let Some(s) = &self.ids_store else {
            return;
        };
        s.set(KEY_ANON, &self.anon);
        set_or_remove(s, KEY_USER, &self.user);
        set_or_remove(s, KEY_CAMPAIGN, &self.campaign);
        s.set(KEY_SESSION, &self.session.serialize());
        self.session_saved = self.session.last;
    }

    /// For tests: what is waiting to be sent.
    pub fn pending(&self) -> (usize, usize, usize) {
        (self.held.len(), self.buffer.len(), self.queued)
    }
}

/// Signals beyond [`engagement`]'s.
pub const SIG_SCROLL: u32 = 5;
pub const SIG_LEAVE: u32 = 6;
pub const SIG_ONLINE: u32 = 7;

/// Stores `v` under `k`, or removes `k` when `v` is empty.
fn set_or_remove<S: Store>(s: &S, k: &str, v: &str) {
    if v.is_empty() {
        s.remove(k);
    } else {
        s.set(k, v);
    }
}

/// `s` cut to at most `max` bytes at a character boundary.
fn truncate(s: &str, max: usize) -> &str {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s.get(..end).unwrap_or_default()
}
