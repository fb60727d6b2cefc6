//! Property tests of the pure edge logic: whatever a client or Cloudflare sends, nothing panics,
//! nothing whole about the IP leaves, splitting for the queue loses and repeats nothing, and
//! grouping a delivery by write key sends every message exactly once, with its own site only.

use proptest::prelude::*;
use serde_json::{json, Value};
use waymark_edge::cf::read_cf;
use waymark_edge::config::Config;
use waymark_edge::consume::{group_by_key, retry_delay_secs, MAX_DELAY_SECS};
use waymark_edge::forward::queue_messages;
use waymark_edge::process::{process, RequestParts};
use waymark_protocol::edge::{Client, EdgeEnvelope, Geo};
use waymark_protocol::{Event, EventType};

const NOW: i64 = 1_795_000_000_000;

fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(Value::from),
        "[ -~]{0,40}".prop_map(Value::from),
    ];
    leaf.prop_recursive(3, 32, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::from),
            prop::collection::btree_map(
                prop_oneof![
                    Just("country".to_string()),
                    Just("latitude".to_string()),
                    Just("asn".to_string()),
                    Just("botManagement".to_string()),
                    Just("score".to_string()),
                    Just("colo".to_string()),
                    "[a-z]{1,8}",
                ],
                inner,
                0..6
            )
            .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

proptest! {
    #[test]
    fn any_cf_object_is_read_without_panicking_and_within_range(cf in json_value()) {
        let f = read_cf(&cf);
        if let Some(lat) = f.geo.latitude { prop_assert!(lat.abs() <= 90.0); }
        if let Some(lon) = f.geo.longitude { prop_assert!(lon.abs() <= 180.0); }
        if let Some(s) = f.bot_score { prop_assert!((1..=99).contains(&s)); }
    }

    #[test]
    fn any_body_is_answered_without_panicking(body in prop::collection::vec(any::<u8>(), 0..512),
                                             ip in "[0-9a-f:.]{0,45}") {
        let parts = RequestParts { body: &body, client_ip: Some(&ip), ..RequestParts::default() };
        let _ = process(&parts, &Value::Null, &Config::default(), NOW);
    }

    #[test]
    fn the_whole_address_never_leaves(a in any::<[u8; 4]>(), seg in any::<[u16; 8]>(), v6 in any::<bool>()) {
        let ip = if v6 {
            std::net::IpAddr::from(seg).to_string()
        } else {
            std::net::IpAddr::from(a).to_string()
        };
        let body = serde_json::to_vec(&json!({"writeKey": "wk", "batch": [{
            "type": "page", "messageId": "m-1", "anonymousId": "a", "context": {"ip": ip.clone()},
            "timestamp": waymark_protocol::time::format_rfc3339(NOW - 1_000)
        }]})).unwrap();
        let parts = RequestParts { body: &body, client_ip: Some(&ip), ..RequestParts::default() };
        let env = process(&parts, &Value::Null, &Config::default(), NOW).unwrap().envelope.unwrap();
        let out = serde_json::to_string(&env).unwrap();
        let host_bits_set = if v6 { seg[3..].iter().any(|s| *s != 0) } else { a[3] != 0 };
        if host_bits_set {
            prop_assert!(!out.contains(&format!("\"{ip}\"")), "{ip} left whole: {out}");
        }
    }

}

proptest! {
    // Fewer, smaller cases: each one serialises up to a few hundred KB.
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn queue_splitting_keeps_every_event_once(sizes in prop::collection::vec(0usize..12_000, 1..30),
                                             max in 20_000usize..120_000) {
        let env = EdgeEnvelope {
            write_key: "wk".into(),
            received_at: "2026-11-29T01:00:00.000Z".into(),
            sent_at: None,
            geo: Geo { city: Some("Berlin".into()), ..Geo::default() },
            client: Client::default(),
            email: None,
            events: sizes.iter().enumerate().map(|(i, n)| {
                let mut e = Event::new(EventType::Track, format!("m-{i}"));
                e.properties.insert("pad".into(), "x".repeat(*n).into());
                e
            }).collect(),
        };
        let msgs = queue_messages(&env, max);
        let mut ids = Vec::new();
        for m in &msgs {
            let part: EdgeEnvelope = serde_json::from_str(m).unwrap();
            prop_assert!(m.len() <= max || part.events.len() == 1, "{} bytes with {} events", m.len(), part.events.len());
            prop_assert_eq!(&part.geo, &env.geo);
            ids.extend(part.events.into_iter().map(|e| e.message_id));
        }
        let want: Vec<String> = (0..sizes.len()).map(|i| format!("m-{i}")).collect();
        prop_assert_eq!(ids, want);
    }
}

proptest! {
    #[test]
    fn grouping_by_write_key_covers_every_message_once(keys in prop::collection::vec("k[0-3]", 0..40)) {
        let groups = group_by_key(keys.iter().map(String::as_str));
        let mut seen: Vec<usize> = groups.iter().flatten().copied().collect();
        seen.sort_unstable();
        prop_assert_eq!(seen, (0..keys.len()).collect::<Vec<_>>());
        let mut group_keys = Vec::new();
        for g in &groups {
            prop_assert!(!g.is_empty());
            prop_assert!(g.windows(2).all(|w| w[0] < w[1]), "positions ascending: {:?}", g);
            prop_assert!(g.iter().all(|&i| keys[i] == keys[g[0]]), "one key per group: {:?}", g);
            group_keys.push(&keys[g[0]]);
        }
        let distinct: std::collections::BTreeSet<_> = keys.iter().collect();
        prop_assert_eq!(group_keys.len(), distinct.len(), "one group per key");
    }

    #[test]
    fn a_retry_delay_is_never_shorter_than_asked_nor_longer_than_allowed(attempts in any::<u32>(),
                                                                        retry_after in proptest::option::of(any::<u32>())) {
        let d = retry_delay_secs(attempts, retry_after);
        prop_assert!((30..=MAX_DELAY_SECS).contains(&d), "{}", d);
        if let Some(ra) = retry_after {
            prop_assert!(d >= ra.min(MAX_DELAY_SECS));
        }
    }
}
