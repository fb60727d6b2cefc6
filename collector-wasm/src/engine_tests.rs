//! The tag's logic end to end, natively: the JSON it sends is checked with the intake's own
//! validation (`waymark_protocol::parse_batch`).

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;

use serde_json::Value;
use waymark_protocol::parse_batch;

use crate::engagement::{SIG_HIDDEN, SIG_VISIBLE};
use crate::engine::*;
use crate::queue::Queue;

const T0: u64 = 1_764_378_000_000;

/// A localStorage: one map, shared by every clone. `.1` is what the loader's store for the
/// retry queue adds to its keys (the tab's id, `.<tab>`: js/src/imports.js); empty otherwise.
/// `.2`: message ids that must be in some stored value after every write (see `watch`).
#[derive(Clone, Default)]
struct Mem(
    Rc<RefCell<BTreeMap<String, String>>>,
    String,
    Rc<RefCell<Vec<String>>>,
);

impl Store for Mem {
    fn get(&self, key: &str) -> Option<String> {
        self.0.borrow().get(&(key.to_string() + &self.1)).cloned()
    }
    fn set(&self, key: &str, value: &str) {
        self.0
            .borrow_mut()
            .insert(key.to_string() + &self.1, value.into());
        self.check(key);
    }
    fn remove(&self, key: &str) {
        self.0.borrow_mut().remove(&(key.to_string() + &self.1));
        self.check(key);
    }
}

impl Mem {
    /// From now on, every write must leave each of `ids` stored somewhere (`&[]`: stop).
    fn watch(&self, ids: &[String]) {
        *self.2.borrow_mut() = ids.to_vec();
    }

    fn check(&self, key: &str) {
        let map = self.0.borrow();
        for id in self.2.borrow().iter() {
            assert!(
                map.values().any(|v| v.contains(id.as_str())),
                "{id} is nowhere in storage after a write of {key}: {:?}",
                map.keys()
            );
        }
    }

    fn keys(&self) -> Vec<String> {
        self.0.borrow().keys().cloned().collect()
    }

    /// The same storage as tab `id` sees it through the queue's store.
    fn tab(&self, id: &str) -> Mem {
        Mem(self.0.clone(), format!(".{id}"), self.2.clone())
    }

    /// What the loader's `adopt` does when tab `id` is gone: every queue key of that tab (`""`:
    /// the keys without a tab, `wm_q` and `wm_f`) into `c`'s queue, the key removed only if `c`
    /// took it. Returns how many keys were taken.
    fn adopt_from(&self, id: &str, c: &mut Core<Mem>) -> usize {
        let suffix = if id.is_empty() {
            String::new()
        } else {
            format!(".{id}")
        };
        let keys: Vec<String> = self
            .keys()
            .into_iter()
            .filter(|k| (k.starts_with("wm_q") || k.starts_with("wm_f")) && k[4..] == suffix)
            .collect();
        let mut taken = 0;
        for k in keys {
            let text = self.0.borrow().get(&k).cloned().unwrap();
            if c.adopt(&text) {
                self.0.borrow_mut().remove(&k);
                taken += 1;
            }
        }
        taken
    }
}

fn core_with(store: &Mem, consent: Consent, now: u64) -> Core<Mem> {
    core_in(store, store.clone(), consent, now, [1, 2, 3, 4])
}

/// A page in tab `id` (its own queue keys, its own random seed), sharing `store`.
fn tab_core(store: &Mem, id: &str, seed: u32, now: u64) -> Core<Mem> {
    core_in(store, store.tab(id), Consent::Granted, now, [seed, 2, 3, 4])
}

fn core_in(ids: &Mem, queue: Mem, consent: Consent, now: u64, seed: [u32; 4]) -> Core<Mem> {
    let cfg = Config {
        write_key: "site-key".into(),
        consent,
        flush_interval_ms: 1000,
        user_agent: "UA/1".into(),
        locale: "en-GB".into(),
        seed,
    };
    Core::new(cfg, Some(ids.clone()), Some(queue), now)
}

fn page(c: &mut Core<Mem>, ts: u64, href: &str) {
    let path = href.trim_start_matches("https://shop.test");
    let page = serde_json::json!({
        "url": href, "path": path, "title": "Title", "referrer": "https://ref.test/"
    })
    .to_string();
    let p = PageView {
        page: &page,
        ..PageView::default()
    };
    c.page(ts, &p, true, true);
}

/// Sends what is due at `now` and returns the parsed, validated batch.
fn send(c: &mut Core<Mem>, now: u64) -> Option<(u32, Value)> {
    let body = c.next(now, false);
    if body.is_empty() {
        return None;
    }
    let v = parse_batch(body.as_bytes(), now as i64).expect("batch parses");
    assert!(v.rejections.is_empty(), "{:?}", v.rejections);
    assert_eq!(v.write_key.as_deref(), Some("site-key"));
    Some((c.last_id, serde_json::from_str(&body).unwrap()))
}

fn events(batch: &Value) -> Vec<Value> {
    batch["batch"].as_array().unwrap().clone()
}

fn ids(batch: &Value) -> Vec<String> {
    events(batch)
        .iter()
        .map(|e| e["messageId"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn a_page_view_is_a_valid_segment_event_with_page_and_campaign_context() {
    let store = Mem::default();
    let mut c = core_with(&store, Consent::Granted, T0);
    // What the loader writes with `JSON.stringify`.
    let page_json = serde_json::json!({
        "url": "https://shop.test/p/1?utm_source=mail&utm_campaign=bf#top",
        "path": "/p/1",
        "search": "?utm_source=mail&utm_campaign=bf",
        "title": "Shoe \"1\"",
        "referrer": "https://ref.test/",
    })
    .to_string();
    let p = PageView {
        page: &page_json,
        campaign: r#"{"source":"mail","name":"bf"}"#,
        name: "Product",
        props: r#"{"a":1}"#,
        product: "",
    };
    c.page(T0, &p, true, true);
    assert_eq!(c.wake(T0), Some(1000));
    assert_eq!(
        c.next(T0 + 10, false),
        "",
        "not due before the flush interval"
    );
    let (_, b) = send(&mut c, T0 + 1000).unwrap();
    let ev = &events(&b)[0];
    assert_eq!(ev["type"], "page");
    assert_eq!(ev["name"], "Product");
    assert_eq!(ev["properties"], serde_json::json!({"a": 1}));
    assert_eq!(ev["originalTimestamp"], "2025-11-29T01:00:00.000Z");
    let ctx = &ev["context"];
    assert_eq!(ctx["page"]["path"], "/p/1");
    assert_eq!(ctx["page"]["search"], "?utm_source=mail&utm_campaign=bf");
    assert_eq!(ctx["page"]["title"], "Shoe \"1\"");
    assert_eq!(ctx["page"]["referrer"], "https://ref.test/");
    assert_eq!(
        ctx["campaign"],
        serde_json::json!({"source": "mail", "name": "bf"})
    );
    assert_eq!(ctx["library"]["name"], "waymark.js");
    assert_eq!(ctx["userAgent"], "UA/1");
    assert_eq!(ctx["locale"], "en-GB");
    assert!(ctx["sessionId"].is_string());
    assert_eq!(b["sentAt"], "2025-11-29T01:00:01.000Z");
    // The campaign is kept for the session: a later page without UTM still carries it.
    page(&mut c, T0 + 5000, "https://shop.test/cart");
    c.done(T0 + 1001, 1, 200, 0);
    let (_, b) = send(&mut c, T0 + 7000).unwrap();
    assert_eq!(events(&b)[0]["context"]["campaign"]["source"], "mail");
}

#[test]
fn events_keep_their_order_and_twenty_flush_at_once() {
    let store = Mem::default();
    let mut c = core_with(&store, Consent::Granted, T0);
    for i in 0..25u64 {
        c.track(T0 + i, "Step", r#"{"i":1}"#, "");
    }
    assert_eq!(c.wake(T0 + 30), Some(0));
    let (id, b) = send(&mut c, T0 + 30).unwrap();
    let ids = ids(&b);
    assert_eq!(ids.len(), 25);
    let mut sorted = ids.clone();
    sorted.sort();
    assert_eq!(ids, sorted, "UUIDv7 message ids follow event order");
    assert_eq!(c.wake(T0 + 31), None, "waits for the answer");
    c.done(T0 + 40, id, 204, 0);
    assert_eq!(c.wake(T0 + 41), None);
    assert_eq!(c.pending(), (0, 0, 0));
}

#[test]
fn network_errors_are_queued_in_storage_retried_with_backoff_and_sent_once() {
    let store = Mem::default();
    let mut c = core_with(&store, Consent::Granted, T0);
    c.track(T0, "A", "", "");
    c.track(T0, "B", "", "");
    let (id, b) = send(&mut c, T0 + 1000).unwrap();
    let sent = ids(&b);
    c.done(T0 + 1100, id, 0, 0);
    assert!(
        store.get(KEY_QUEUE).unwrap().lines().count() == 3,
        "dropped count + 2 events"
    );
    let wait = c.wake(T0 + 1100).unwrap();
    assert!((500..=1000).contains(&wait), "{wait}");
    assert_eq!(c.next(T0 + 1100, false), "", "backing off");
    // A second page finds the queue (once it is the first page's orphan: `adopt_from` below)
    // and sends it right away.
    let mut c2 = tab_core(&store, "2", 9, T0 + 1200);
    assert_eq!(c2.wake(T0 + 1200), None);
    assert_eq!(store.adopt_from("", &mut c2), 1);
    assert_eq!(store.keys(), ["wm_aid", "wm_q.2", "wm_ses"]);
    assert_eq!(c2.wake(T0 + 1200), Some(0));
    let (id2, b2) = send(&mut c2, T0 + 1200).unwrap();
    assert_eq!(ids(&b2), sent);
    assert_eq!(
        store.tab("2").get(KEY_QUEUE),
        None,
        "claimed while in flight"
    );
    c2.done(T0 + 1300, id2, 200, 0);
    assert_eq!(store.keys(), ["wm_aid", "wm_ses"]);
    assert_eq!(c2.wake(T0 + 1300), None);
    // The first page has nothing left to resend.
    assert_eq!(c.next(T0 + 100_000, false), "");
}

#[test]
fn two_tabs_offline_keep_their_own_queues_and_send_every_event_once() {
    let store = Mem::default();
    let mut a = tab_core(&store, "a", 1, T0);
    let mut b = tab_core(&store, "b", 2, T0);
    let mut tracked = std::collections::BTreeSet::new();
    // Offline: both tabs' sends fail, interleaved, each into its own key.
    for round in 0..3u64 {
        for c in [&mut a, &mut b] {
            let now = T0 + 10_000 * round;
            c.track(now, "Offline", "", "");
            c.signal(now, SIG_ONLINE, 0);
            let (id, body) = send(c, now + 1000).unwrap();
            tracked.extend(ids(&body));
            c.done(now + 1000, id, 0, 0);
        }
    }
    assert_eq!(store.keys(), ["wm_aid", "wm_q.a", "wm_q.b", "wm_ses"]);
    assert_eq!(a.pending(), (0, 0, 3));
    assert_eq!(b.pending(), (0, 0, 3));
    // Tab b goes away before the network is back; tab a adopts its queue, then sends it all.
    drop(b);
    assert_eq!(store.adopt_from("b", &mut a), 1);
    let mut delivered = Vec::new();
    let mut now = T0 + 100_000;
    a.signal(now, SIG_ONLINE, 0);
    while let Some((id, body)) = send(&mut a, now) {
        delivered.extend(ids(&body));
        a.done(now, id, 200, 0);
        now += 1;
    }
    assert_eq!(store.keys(), ["wm_aid", "wm_ses"]);
    assert_eq!(tracked.len(), 6);
    delivered.sort();
    assert_eq!(delivered, Vec::from_iter(tracked), "every event once");
}

#[test]
fn a_send_from_the_queue_stays_in_storage_until_it_is_answered() {
    let store = Mem::default();
    let mut c = tab_core(&store, "a", 1, T0);
    c.track(T0, "A", "", "");
    c.track(T0, "B", "", "");
    let (id, b) = send(&mut c, T0 + 1000).unwrap();
    let queued = ids(&b);
    c.done(T0 + 1000, id, 0, 0);
    // From here on, at every write, each of the two events is in storage (queue or in flight):
    // a page can go away between any two writes.
    store.watch(&queued);
    let tab = store.tab("a");
    c.signal(T0 + 2000, SIG_ONLINE, 0);
    let (id, b) = send(&mut c, T0 + 2000).unwrap();
    assert_eq!(ids(&b), queued);
    assert_eq!(tab.get(KEY_QUEUE), None, "taken from the queue");
    assert!(tab.get(KEY_INFLIGHT).is_some(), "kept while in flight");
    c.done(T0 + 2100, id, 503, 0);
    assert!(tab.get(KEY_QUEUE).is_some(), "back in the queue");
    assert_eq!(tab.get(KEY_INFLIGHT), None);
    c.signal(T0 + 3000, SIG_ONLINE, 0);
    let (id, _) = send(&mut c, T0 + 3000).unwrap();
    // Hidden while it is in flight, with a new event: the send in flight is stored whole.
    c.track(T0 + 3001, "C", "", "");
    let _beacon = c.next(T0 + 3002, true);
    assert_eq!(Queue::parse(&tab.get(KEY_INFLIGHT).unwrap()).items.len(), 2);
    store.watch(&[]);
    c.done(T0 + 3100, id, 200, 0);
    assert_eq!(store.keys(), ["wm_aid", "wm_ses"]);
}

#[test]
fn a_queue_is_adopted_only_with_consent() {
    let store = Mem::default();
    let mut gone = tab_core(&store, "g", 1, T0);
    gone.track(T0, "Queued", "", "");
    let (id, _) = send(&mut gone, T0 + 1000).unwrap();
    gone.done(T0 + 1000, id, 503, 0);
    drop(gone);
    let queued = store.tab("g").get(KEY_QUEUE).unwrap();
    let mut pending = core_in(&store, store.tab("p"), Consent::Pending, T0, [2; 4]);
    assert!(
        !pending.adopt(&queued),
        "pending: not taken (nothing would be stored)"
    );
    assert_eq!(store.adopt_from("g", &mut pending), 0);
    assert_eq!(store.tab("g").get(KEY_QUEUE), Some(queued.clone()));
    assert_eq!(store.tab("p").get(KEY_QUEUE), None);
    pending.consent(T0 + 1, true);
    assert_eq!(store.adopt_from("g", &mut pending), 1);
    let (_, b) = send(&mut pending, T0 + 2).unwrap();
    assert_eq!(events(&b)[0]["event"], "Queued");
}

#[test]
fn server_errors_back_off_exponentially_honour_retry_after_and_4xx_is_final() {
    let store = Mem::default();
    let mut c = core_with(&store, Consent::Granted, T0);
    c.track(T0, "A", "", "");
    let mut now = T0 + 1000;
    let mut prev_wait = 0;
    for attempt in 1..=5u32 {
        let (id, _) = send(&mut c, now).unwrap();
        c.done(now, id, 503, 0);
        let wait = c.wake(now).unwrap();
        let exp = 1000u64 << (attempt - 1);
        assert!(wait >= exp / 2 && wait <= exp, "attempt {attempt}: {wait}");
        assert!(attempt == 1 || wait > prev_wait / 2);
        prev_wait = wait;
        now += wait;
    }
    let (id, _) = send(&mut c, now).unwrap();
    c.done(now, id, 429, 120_000);
    assert_eq!(c.wake(now), Some(120_000));
    now += 120_000;
    let (id, _) = send(&mut c, now).unwrap();
    c.done(now, id, 400, 0);
    assert_eq!(c.wake(now), None, "a 400 is not retried");
    assert_eq!(c.pending(), (0, 0, 0));
}

#[test]
fn consent_pending_holds_events_in_memory_then_sends_them_with_their_timestamps() {
    let store = Mem::default();
    let mut c = core_with(&store, Consent::Pending, T0);
    page(&mut c, T0, "https://shop.test/");
    c.track(T0 + 5, "Clicked", "", "");
    assert!(store.keys().is_empty(), "nothing stored before consent");
    assert_eq!(c.wake(T0 + 10_000), None);
    assert_eq!(c.next(T0 + 10_000, true), "");
    c.consent(T0 + 60_000, true);
    let (_, b) = send(&mut c, T0 + 61_000).unwrap();
    let evs = events(&b);
    assert_eq!(evs.len(), 2);
    assert_eq!(evs[0]["originalTimestamp"], "2025-11-29T01:00:00.000Z");
    assert_eq!(evs[1]["originalTimestamp"], "2025-11-29T01:00:00.005Z");
    assert!(store.get(KEY_ANON).is_some(), "ids stored once granted");
}

#[test]
fn consent_denied_discards_sends_nothing_and_clears_storage() {
    let store = Mem::default();
    let mut c = core_with(&store, Consent::Granted, T0);
    page(&mut c, T0, "https://shop.test/");
    assert!(store.get(KEY_ANON).is_some());
    c.consent(T0 + 1, false);
    c.track(T0 + 2, "After", "", "");
    assert_eq!(c.next(T0 + 10_000, false), "");
    assert_eq!(c.next(T0 + 10_000, true), "");
    assert_eq!(c.wake(T0 + 10_000), None);
    assert!(store.keys().is_empty(), "{:?}", store.keys());
}

#[test]
fn without_storage_everything_still_works_in_memory() {
    let cfg = Config {
        write_key: "site-key".into(),
        consent: Consent::Granted,
        flush_interval_ms: 0,
        user_agent: String::new(),
        locale: String::new(),
        seed: [0; 4],
    };
    let mut c = Core::<Mem>::new(cfg, None, None, T0);
    page(&mut c, T0, "https://shop.test/");
    let (id, _) = send(&mut c, T0).unwrap();
    c.done(T0, id, 0, 0);
    assert_eq!(c.pending(), (0, 0, 1), "queued in memory");
    let wait = c.wake(T0).unwrap();
    let (id, b) = send(&mut c, T0 + wait).unwrap();
    assert_eq!(events(&b).len(), 1);
    c.done(T0 + wait, id, 200, 0);
    assert_eq!(c.pending(), (0, 0, 0));
}

#[test]
fn the_session_times_out_after_thirty_idle_minutes_and_ids_persist() {
    let store = Mem::default();
    let mut c = core_with(&store, Consent::Granted, T0);
    c.track(T0, "A", "", "");
    c.track(T0 + 29 * 60_000, "B", "", "");
    c.track(T0 + 60 * 60_000, "C", "", "");
    let (_, b) = send(&mut c, T0 + 60 * 60_000 + 1000).unwrap();
    let s: Vec<_> = events(&b)
        .iter()
        .map(|e| e["context"]["sessionId"].clone())
        .collect();
    assert_eq!(s[0], s[1]);
    assert_ne!(s[1], s[2]);
    // A new page within the session continues it, with the same anonymous id.
    let anon = events(&b)[0]["anonymousId"].clone();
    let mut c2 = core_with(&store, Consent::Granted, T0 + 61 * 60_000);
    c2.track(T0 + 61 * 60_000, "D", "", "");
    let (_, b2) = send(&mut c2, T0 + 62 * 60_000).unwrap();
    assert_eq!(events(&b2)[0]["context"]["sessionId"], s[2]);
    assert_eq!(events(&b2)[0]["anonymousId"], anon);
}

#[test]
fn identify_sets_the_user_and_reset_forgets_everyone() {
    let store = Mem::default();
    let mut c = core_with(&store, Consent::Granted, T0);
    c.identify(T0, "user-7", r#"{"email":"a@b.test"}"#);
    c.track(T0 + 1, "A", "", "");
    c.reset(T0 + 2);
    c.track(T0 + 3, "B", "", "");
    let (_, b) = send(&mut c, T0 + 2000).unwrap();
    let evs = events(&b);
    assert_eq!(evs[0]["type"], "identify");
    assert_eq!(evs[0]["traits"]["email"], "a@b.test");
    assert_eq!(evs[1]["userId"], "user-7");
    assert!(evs[2].get("userId").is_none());
    assert_ne!(evs[1]["anonymousId"], evs[2]["anonymousId"]);
    assert_ne!(
        evs[1]["context"]["sessionId"],
        evs[2]["context"]["sessionId"]
    );
    assert_eq!(store.get(KEY_USER), None);
}

#[test]
fn engagement_is_reported_per_page_view_with_scroll_and_product() {
    let store = Mem::default();
    let mut c = core_with(&store, Consent::Granted, T0);
    page(&mut c, T0, "https://shop.test/p/9");
    c.track(
        T0 + 10,
        "Product Viewed",
        r#"{"product_id":"sku-9"}"#,
        "sku-9",
    );
    c.signal(T0 + 4_000, SIG_SCROLL, 40);
    c.signal(T0 + 5_000, SIG_HIDDEN, 0);
    c.signal(T0 + 9_000, SIG_VISIBLE, 0);
    c.signal(T0 + 9_500, SIG_SCROLL, 250);
    page(&mut c, T0 + 10_000, "https://shop.test/cart"); // route change
    c.signal(T0 + 12_000, SIG_LEAVE, 0);
    c.signal(T0 + 12_000, SIG_LEAVE, 0); // nothing new to report
    let (_, b) = send(&mut c, T0 + 20_000).unwrap();
    let evs = events(&b);
    let eng: Vec<_> = evs.iter().filter(|e| e["event"] == "$engagement").collect();
    assert_eq!(eng.len(), 2);
    assert_eq!(
        eng[0]["properties"],
        serde_json::json!({"engaged_ms": 6000, "scroll_depth": 100, "product_id": "sku-9"})
    );
    assert_eq!(eng[0]["context"]["page"]["path"], "/p/9");
    assert_eq!(
        eng[1]["properties"],
        serde_json::json!({"engaged_ms": 2000, "scroll_depth": 0})
    );
    assert_eq!(eng[1]["context"]["page"]["path"], "/cart");
}

#[test]
fn page_hide_takes_everything_unsent_even_while_a_send_is_in_flight() {
    let store = Mem::default();
    let mut c = core_with(&store, Consent::Granted, T0);
    c.track(T0, "A", "", "");
    let (id, _) = send(&mut c, T0 + 1000).unwrap();
    c.track(T0 + 1001, "B", "", "");
    assert_eq!(c.next(T0 + 5000, false), "", "one ordinary send at a time");
    let forced = c.next(T0 + 5000, true);
    assert!(forced.contains("\"event\":\"B\""));
    let beacon_id = c.last_id;
    assert_eq!(c.next(T0 + 5000, true), "");
    c.done(T0 + 5001, beacon_id, 200, 0);
    c.done(T0 + 5002, id, 200, 0);
    assert_eq!(c.pending(), (0, 0, 0));
}

#[test]
fn a_send_in_flight_at_page_hide_stays_in_storage_until_it_is_answered() {
    let store = Mem::default();
    let mut c = core_with(&store, Consent::Granted, T0);
    c.track(T0, "A", "", "");
    let (id, _) = send(&mut c, T0 + 1000).unwrap();
    assert_eq!(
        store.get(KEY_INFLIGHT),
        None,
        "nothing written for an ordinary send"
    );
    c.track(T0 + 1001, "B", "", "");
    let _beacon = c.next(T0 + 2000, true);
    let saved = store.get(KEY_INFLIGHT).expect("the send in flight is kept");
    assert!(saved.contains("\"event\":\"A\"") && !saved.contains("\"event\":\"B\""));
    c.done(T0 + 2001, c.last_id, 200, 0);
    assert!(
        store.get(KEY_INFLIGHT).is_some(),
        "the beacon's answer is not the send's"
    );
    // The page was only hidden: the send is answered, and nothing is kept or sent again.
    c.done(T0 + 2002, id, 200, 0);
    assert_eq!(store.get(KEY_INFLIGHT), None);
    assert_eq!(store.get(KEY_QUEUE), None);
    // Hidden again with nothing in flight: nothing is kept.
    c.track(T0 + 3000, "C", "", "");
    let _ = c.next(T0 + 3001, true);
    assert_eq!(store.get(KEY_INFLIGHT), None);
}

#[test]
fn a_send_a_page_left_in_flight_is_sent_again_by_the_next_page() {
    let store = Mem::default();
    let mut c = core_with(&store, Consent::Granted, T0);
    c.track(T0, "A", "", "");
    c.track(T0, "B", "", "");
    let (_, b) = send(&mut c, T0 + 1000).unwrap();
    let in_flight = ids(&b);
    let _beacon = c.next(T0 + 1001, true);
    drop(c); // the page went away before its send was answered (it may or may not have arrived)
    let mut c2 = tab_core(&store, "2", 9, T0 + 5000);
    assert_eq!(store.adopt_from("", &mut c2), 1);
    assert_eq!(store.get(KEY_INFLIGHT), None, "moved into the retry queue");
    let (id2, b2) = send(&mut c2, T0 + 5000).unwrap();
    assert_eq!(
        ids(&b2),
        in_flight,
        "the same events, with the same messageIds"
    );
    c2.done(T0 + 5100, id2, 200, 0);
    assert_eq!(store.keys(), ["wm_aid", "wm_ses"]);
}

#[test]
fn oversized_events_are_dropped_and_counted_in_the_next_batch() {
    let store = Mem::default();
    let mut c = core_with(&store, Consent::Granted, T0);
    let big = format!("{{\"x\":\"{}\"}}", "y".repeat(40_000));
    c.track(T0, "Big", &big, "");
    c.track(T0, "Small", "", "");
    let (_, b) = send(&mut c, T0 + 1000).unwrap();
    assert_eq!(events(&b).len(), 1);
    assert_eq!(b["droppedEvents"], 1);
}

#[test]
fn long_names_are_cut_to_the_protocol_limit() {
    let store = Mem::default();
    let mut c = core_with(&store, Consent::Granted, T0);
    c.track(T0, &"é".repeat(150), "", "");
    let (_, b) = send(&mut c, T0 + 1000).unwrap();
    assert_eq!(events(&b)[0]["event"].as_str().unwrap().len(), 200);
}

#[test]
fn call_arguments_are_split_on_u0001() {
    let a = crate::args("a\u{1}b\u{1}\u{1}d");
    assert_eq!(a[..5], ["a", "b", "", "d", ""]);
    assert_eq!(crate::args(""), [""; 16]);
    assert_eq!(crate::args("1\u{1}2\u{1}3\u{1}4\u{1}5\u{1}6\u{1}7")[6], "7");
}

#[test]
fn a_memory_queue_larger_than_one_batch_is_sent_in_full() {
    let cfg = Config {
        write_key: "site-key".into(),
        consent: Consent::Granted,
        flush_interval_ms: 0,
        user_agent: String::new(),
        locale: String::new(),
        seed: [5; 4],
    };
    let mut c = Core::<Mem>::new(cfg, None, None, T0);
    for i in 0..250u64 {
        c.track(T0 + i, "Many", "", "");
    }
    let mut now = T0 + 1000;
    let mut sent = Vec::new();
    // Everything fails once (page-hide sends ignore the backoff), so it all goes through the
    // memory retry queue, which is then bigger than one batch.
    loop {
        let body = c.next(now, true);
        if body.is_empty() {
            break;
        }
        let b: Value = serde_json::from_str(&body).unwrap();
        sent.extend(ids(&b));
        c.done(now, c.last_id, 0, 0);
    }
    assert_eq!(sent.len(), 250);
    assert_eq!(c.pending(), (0, 0, 250));
    let mut delivered = Vec::new();
    for _ in 0..20 {
        now += c.wake(now).unwrap_or(0);
        let Some((id, b)) = send(&mut c, now) else {
            break;
        };
        delivered.extend(ids(&b));
        c.done(now, id, 200, 0);
    }
    delivered.sort();
    sent.sort();
    assert_eq!(delivered, sent, "every queued event once");
    assert_eq!(c.pending(), (0, 0, 0));
}
