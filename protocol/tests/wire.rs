//! The wire format, checked from outside the crate: payloads in the shapes real SDKs send,
//! snapshots of the JSON we produce, every rejection reason, and properties that must hold for
//! any input.

use proptest::prelude::*;
use serde_json::{json, Map, Value};
use waymark_protocol::auto::{ClickProps, EngagementProps};
use waymark_protocol::edge::{Client, EdgeEnvelope, EdgeForward, Geo};
use waymark_protocol::limits::*;
use waymark_protocol::{names, parse_batch, parse_single, BatchError, Event, EventType};

/// 2026-11-28T10:15:05Z, a few seconds after the payload fixtures were "sent".
const RECEIVED: i64 = 1_764_324_905_000;

fn body(v: &Value) -> Vec<u8> {
    serde_json::to_vec(v).unwrap()
}

fn rejections(v: &Value) -> Vec<String> {
    parse_batch(&body(v), RECEIVED)
        .unwrap()
        .rejections
        .iter()
        .map(ToString::to_string)
        .collect()
}

#[test]
fn payloads_from_segment_sdks_are_accepted_whole() {
    for (name, file, n) in [
        (
            "analytics-python",
            include_str!("payloads/analytics-python.json"),
            2,
        ),
        (
            "analytics-node",
            include_str!("payloads/analytics-node.json"),
            2,
        ),
        (
            "analytics.js",
            include_str!("payloads/analytics-js.json"),
            2,
        ),
    ] {
        let v = parse_batch(file.as_bytes(), RECEIVED).unwrap();
        assert_eq!(v.rejections, vec![], "{name}");
        assert_eq!(v.events.len(), n, "{name}");
    }
    let node = parse_batch(
        include_str!("payloads/analytics-node.json").as_bytes(),
        RECEIVED,
    )
    .unwrap();
    assert_eq!(node.write_key.as_deref(), Some("wk_shop"));
    assert_eq!(
        node.events[0].event.as_deref(),
        Some(names::ORDER_COMPLETED)
    );
    assert_eq!(node.events[1].kind, EventType::Page);
    let js = parse_batch(
        include_str!("payloads/analytics-js.json").as_bytes(),
        RECEIVED,
    )
    .unwrap();
    assert_eq!(
        js.events[0].context_str(&["campaign", "source"]),
        Some("news")
    );
}

#[test]
fn every_problem_is_reported_with_index_field_and_reason() {
    let v = json!({"batch": [
        {"type": "track", "event": "ok", "messageId": "m0", "anonymousId": "a"},
        {"type": "track", "anonymousId": "a"},
        {"type": "bogus", "messageId": 7, "userId": ""},
        {"type": "track", "messageId": "m3", "anonymousId": "a", "event": "x",
         "timestamp": "yesterday", "properties": [1, 2]},
        "not an object",
        {"type": "alias", "messageId": "m5", "userId": "u"},
        {"type": "group", "messageId": "m6", "userId": "u"},
        {"type": "identify", "messageId": "m7"},
    ]});
    let r = rejections(&v);
    assert_eq!(
        r,
        vec![
            "batch[1].messageId: missing",
            "batch[1].event: missing: a track call needs an event name",
            "batch[2].type: must be one of track, identify, page, screen, alias, group",
            "batch[2].messageId: must be a string",
            "batch[2].userId: must not be empty",
            "batch[3].timestamp: not an RFC 3339 date-time",
            "batch[3].properties: must be an object",
            "batch[4].: must be a JSON object",
            "batch[5].previousId: missing: an alias call needs a previousId",
            "batch[6].groupId: missing: a group call needs a groupId",
            "batch[7].userId: missing: an event needs a userId or an anonymousId",
        ]
    );
    let ok = parse_batch(&body(&v), RECEIVED).unwrap();
    assert_eq!(ok.events.len(), 1, "the one good event is kept");
    assert_eq!(ok.events[0].message_id, "m0");
    assert_eq!(ok.rejected_events(), 7);
}

#[test]
fn limits_are_enforced_and_named() {
    let ev = |extra: Value| {
        let mut e = json!({"type": "track", "event": "e", "messageId": "m", "anonymousId": "a"});
        for (k, v) in extra.as_object().unwrap() {
            e[k] = v.clone();
        }
        json!({ "batch": [e] })
    };
    let long_id = "x".repeat(MAX_ID_LEN + 1);
    assert_eq!(
        rejections(&ev(json!({"userId": long_id}))),
        vec![format!("batch[0].userId: longer than {MAX_ID_LEN} bytes")]
    );
    let long_name = "n".repeat(MAX_NAME_LEN + 1);
    assert_eq!(
        rejections(&ev(json!({"event": long_name}))),
        vec![format!("batch[0].event: longer than {MAX_NAME_LEN} bytes")]
    );
    let long_string = "s".repeat(MAX_STRING_LEN + 1);
    assert_eq!(
        rejections(&ev(json!({"properties": {"a": {"b": long_string}}}))),
        vec![format!(
            "batch[0].properties.a.b: string longer than {MAX_STRING_LEN} bytes"
        )]
    );
    let mut deep = json!(1);
    for _ in 0..=MAX_DEPTH {
        deep = json!({ "d": deep });
    }
    assert_eq!(
        rejections(&ev(json!({ "properties": deep }))),
        vec![format!(
            "batch[0].properties.d.d.d.d.d.d.d.d: nested deeper than {MAX_DEPTH} levels"
        )]
    );
    let many: Map<String, Value> = (0..=MAX_PROPERTIES)
        .map(|i| (format!("k{i}"), json!(i)))
        .collect();
    assert_eq!(
        rejections(&ev(json!({ "traits": many }))),
        vec![format!("batch[0].traits: more than {MAX_PROPERTIES} keys")]
    );
    let big: Map<String, Value> = (0..40)
        .map(|i| (format!("k{i}"), json!("v".repeat(1000))))
        .collect();
    let r = rejections(&ev(json!({ "properties": big })));
    assert_eq!(r.len(), 1);
    assert!(
        r[0].starts_with("batch[0].: event is ")
            && r[0].ends_with(&format!("more than the limit of {MAX_EVENT_BYTES}")),
        "{r:?}"
    );
    assert_eq!(
        rejections(&ev(json!({"timestamp": "2020-01-01T00:00:00Z"}))),
        vec!["batch[0].timestamp: more than 365 days before the event was received"]
    );
}

#[test]
fn whole_body_problems_fail_the_request() {
    let too_big = vec![b' '; MAX_BATCH_BYTES + 1];
    let e = parse_batch(&too_big, RECEIVED).unwrap_err();
    assert!(e.is_too_large());
    assert_eq!(
        e.to_string(),
        format!(
            "body: {} bytes is more than the limit of {MAX_BATCH_BYTES}",
            MAX_BATCH_BYTES + 1
        )
    );

    let e = parse_batch(b"{\"batch\": [", RECEIVED).unwrap_err();
    assert_eq!(e.code(), "invalid_json");
    assert!(
        e.to_string()
            .starts_with("body: not valid JSON: EOF while parsing"),
        "{e}"
    );
    assert_eq!(
        parse_batch(b"[1]", RECEIVED).unwrap_err(),
        BatchError::NotAnObject
    );
    assert_eq!(
        parse_batch(b"{}", RECEIVED).unwrap_err(),
        BatchError::MissingBatch
    );
    assert_eq!(
        parse_batch(b"{\"batch\": {}}", RECEIVED).unwrap_err(),
        BatchError::BatchNotArray
    );
    let e = parse_batch(br#"{"batch": [], "sentAt": "noon"}"#, RECEIVED).unwrap_err();
    assert_eq!(e.to_string(), "sentAt: not an RFC 3339 date-time");
    let e = parse_batch(br#"{"batch": [], "writeKey": 5}"#, RECEIVED).unwrap_err();
    assert_eq!(e.to_string(), "writeKey: must be a string");
    let many = json!({ "batch": vec![json!({}); MAX_EVENTS_PER_BATCH + 1] });
    let e = parse_batch(&body(&many), RECEIVED).unwrap_err();
    assert!(e.is_too_large());
    assert_eq!(
        e.to_string(),
        format!(
            "batch: {} events is more than the limit of {MAX_EVENTS_PER_BATCH}",
            MAX_EVENTS_PER_BATCH + 1
        )
    );
}

#[test]
fn single_event_endpoints_imply_the_type() {
    let b = br#"{"event": "Signed Up", "userId": "u", "messageId": "m", "writeKey": "wk"}"#;
    let v = parse_single(b, EventType::Track, RECEIVED).unwrap();
    assert_eq!(v.events[0].kind, EventType::Track);
    assert_eq!(v.write_key.as_deref(), Some("wk"));
    let b = br#"{"type": "page", "event": "x", "userId": "u", "messageId": "m"}"#;
    let v = parse_single(b, EventType::Track, RECEIVED).unwrap();
    assert_eq!(
        v.rejections[0].to_string(),
        "batch[0].type: must be \"track\" on this endpoint"
    );
}

#[test]
fn reserved_events_have_typed_properties() {
    let ev = |name: &str, props: Value| json!({"batch": [{"type": "track", "event": name, "messageId": "m", "anonymousId": "a", "properties": props}]});
    assert!(rejections(&ev(
        names::CLICK,
        json!({"kind": "link", "href": "/x", "outbound": false})
    ))
    .is_empty());
    assert_eq!(
        rejections(&ev(
            names::CLICK,
            json!({"kind": "input", "outbound": "yes"})
        )),
        vec![
            "batch[0].properties.kind: must be one of link, button, element",
            "batch[0].properties.outbound: must be true or false"
        ]
    );
    assert!(rejections(&ev(
        names::ENGAGEMENT,
        json!({"engaged_ms": 1200, "scroll_depth": 80, "product_id": "p1"})
    ))
    .is_empty());
    assert_eq!(
        rejections(&ev(names::ENGAGEMENT, json!({"engaged_ms": -5, "scroll_depth": 101}))),
        vec![
            "batch[0].properties.engaged_ms: must be a whole number of milliseconds from 0 to 86400000",
            "batch[0].properties.scroll_depth: must be a whole percentage from 0 to 100"
        ]
    );
    assert_eq!(
        rejections(&ev("$pageleave", json!({}))),
        vec!["batch[0].event: names starting with \"$\" are reserved; known: $click, $engagement"]
    );
    // The typed structs produce what validation accepts.
    let click = serde_json::to_value(ClickProps {
        kind: "button".into(),
        text: Some("Buy".into()),
        href: None,
        id: Some("buy".into()),
        outbound: false,
        name: None,
    })
    .unwrap();
    assert!(rejections(&ev(names::CLICK, click)).is_empty());
    let eng = serde_json::to_value(EngagementProps {
        engaged_ms: 5000,
        scroll_depth: 40,
        product_id: None,
    })
    .unwrap();
    assert!(rejections(&ev(names::ENGAGEMENT, eng)).is_empty());
}

fn sample_event() -> Event {
    let mut e = Event::new(EventType::Track, "0193a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b");
    e.anonymous_id = Some("anon-1".into());
    e.event = Some(names::PRODUCT_ADDED.into());
    e.original_timestamp = Some("2026-11-28T10:15:00.000Z".into());
    e.sent_at = Some("2026-11-28T10:15:01.500Z".into());
    e.context =
        json!({"page": {"url": "https://shop.example/p/7", "path": "/p/7", "title": "Shoe"},
                       "sessionId": "s-1", "library": {"name": "waymark.js", "version": "0.1.0"}})
        .as_object()
        .unwrap()
        .clone();
    e.properties = json!({"product_id": "p-7", "price": 79.5, "quantity": 1})
        .as_object()
        .unwrap()
        .clone();
    e
}

#[test]
fn snapshot_of_an_event() {
    insta::assert_json_snapshot!("event", sample_event());
}

#[test]
fn snapshot_of_an_edge_forward() {
    let fwd = EdgeForward {
        envelopes: vec![EdgeEnvelope {
            write_key: "wk_shop".into(),
            received_at: "2026-11-28T10:15:02.000Z".into(),
            sent_at: Some("2026-11-28T10:15:01.900Z".into()),
            geo: Geo {
                country: Some("DE".into()),
                region: Some("Berlin".into()),
                region_code: Some("BE".into()),
                city: Some("Berlin".into()),
                postal_code: Some("10115".into()),
                latitude: Some(52.52),
                longitude: Some(13.405),
                timezone: Some("Europe/Berlin".into()),
                continent: Some("EU".into()),
                asn: Some(3320),
                colo: Some("FRA".into()),
            },
            client: Client {
                ip: Some("203.0.113.0".into()),
                user_agent: Some("Mozilla/5.0".into()),
                gpc: false,
                bot_score: Some(87),
                bot: false,
            },
            email: None,
            events: vec![sample_event()],
        }],
    };
    insta::assert_json_snapshot!("edge_forward", fwd);
}

#[test]
fn snapshot_of_rejections() {
    let v = json!({"batch": [{"type": "track", "anonymousId": "a", "event": "$nope"}]});
    let r = parse_batch(&body(&v), RECEIVED).unwrap().rejections;
    insta::assert_json_snapshot!("rejections", r);
}

fn arb_string() -> impl Strategy<Value = String> {
    "[a-zA-Z0-9][a-zA-Z0-9 _\\-éü€]{0,29}"
}

fn arb_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        arb_string().prop_map(Value::String),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map("[a-z_]{1,12}", inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

fn arb_map() -> impl Strategy<Value = Map<String, Value>> {
    prop::collection::btree_map("[a-z_]{1,12}", arb_json(), 0..5)
        .prop_map(|m| m.into_iter().collect())
}

prop_compose! {
    fn arb_event()(kind in prop::sample::select(EventType::ALL.to_vec()),
                   message_id in arb_string(),
                   anonymous_id in proptest::option::of(arb_string()),
                   user_id in arb_string(),
                   name in arb_string(),
                   other_id in arb_string(),
                   ms in RECEIVED - 300 * 86_400_000..RECEIVED,
                   context in arb_map(),
                   properties in arb_map(),
                   traits in arb_map()) -> Event {
        let mut e = Event::new(kind, message_id);
        e.anonymous_id = anonymous_id;
        e.user_id = Some(user_id);
        match kind {
            EventType::Track => e.event = Some(name),
            EventType::Page | EventType::Screen => e.name = Some(name),
            EventType::Alias => e.previous_id = Some(other_id),
            EventType::Group => e.group_id = Some(other_id),
            EventType::Identify => {}
        }
        e.timestamp = Some(waymark_protocol::time::format_rfc3339(ms));
        e.context = context;
        e.properties = properties;
        e.traits = traits;
        e
    }
}

proptest! {
    #[test]
    fn serialise_then_parse_round_trips(events in prop::collection::vec(arb_event(), 0..8)) {
        let batch = waymark_protocol::Batch { batch: events.clone(), sent_at: None, write_key: Some("wk".into()) };
        let bytes = serde_json::to_vec(&batch).unwrap();
        let v = parse_batch(&bytes, RECEIVED).unwrap();
        prop_assert_eq!(v.rejections, vec![]);
        prop_assert_eq!(v.events, events);
        // and the serde path agrees with the validating parser
        let back: waymark_protocol::Batch = serde_json::from_slice(&bytes).unwrap();
        prop_assert_eq!(back, batch);
    }

    #[test]
    fn validation_never_panics_on_arbitrary_bytes(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        let _ = parse_batch(&bytes, RECEIVED);
        let _ = parse_single(&bytes, EventType::Track, RECEIVED);
    }

    #[test]
    fn validation_never_panics_on_arbitrary_json(events in prop::collection::vec(arb_json(), 0..6),
                                                 sent_at in proptest::option::of(arb_json())) {
        let mut b = json!({ "batch": events });
        if let Some(s) = sent_at { b["sentAt"] = s; }
        if let Ok(v) = parse_batch(&body(&b), RECEIVED) {
            // every input event is either accepted or named in a rejection
            let named: std::collections::BTreeSet<usize> = v.rejections.iter().filter_map(|r| r.index).collect();
            prop_assert_eq!(v.events.len() + named.len(), b["batch"].as_array().unwrap().len());
        }
    }
}
