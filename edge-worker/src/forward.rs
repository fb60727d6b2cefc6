//! Getting envelopes to the ingest server: queue messages and the signed `POST /v1/edge`.

use waymark_protocol::edge::{sign, EdgeEnvelope, EdgeForward, HEADER_SIGNATURE, HEADER_TIMESTAMP};

/// Cloudflare Queues take messages of at most 128 KB; stay below with room for its framing.
/// A batch may be up to 512 KiB, so a large one becomes several messages.
pub const MAX_QUEUE_MESSAGE_BYTES: usize = 120_000;

/// The path the ingest server takes signed envelopes on.
pub const EDGE_PATH: &str = "/v1/edge";

/// Serialises an envelope as queue messages (JSON text), each at most `max_bytes` unless a single
/// event is larger (events are at most 32 KiB, so that cannot happen with the default limit).
/// Every message is a complete envelope with the same geo and client facts and some of the events.
pub fn queue_messages(env: &EdgeEnvelope, max_bytes: usize) -> Vec<String> {
    let whole = to_json(env);
    if whole.len() <= max_bytes || env.events.len() <= 1 {
        return vec![whole];
    }
    let empty = EdgeEnvelope {
        events: Vec::new(),
        ..env.clone()
    };
    let overhead = to_json(&empty).len();
    let mut out = Vec::new();
    let mut chunk = empty.clone();
    let mut size = overhead;
    for e in &env.events {
        let n = serde_json::to_vec(e).map(|v| v.len()).unwrap_or(0) + 1;
        if !chunk.events.is_empty() && size + n > max_bytes {
            out.push(to_json(&chunk));
            chunk.events.clear();
            size = overhead;
        }
        chunk.events.push(e.clone());
        size += n;
    }
    if !chunk.events.is_empty() {
        out.push(to_json(&chunk));
    }
    out
}

fn to_json(env: &EdgeEnvelope) -> String {
    // Serialising plain structs with string keys cannot fail.
    serde_json::to_string(env).expect("an envelope serialises")
}

/// The body of one forward: `{"envelopes": [...]}`.
pub fn forward_body(envelopes: Vec<EdgeEnvelope>) -> Vec<u8> {
    serde_json::to_vec(&EdgeForward { envelopes }).expect("a forward serialises")
}

/// The two signature headers for `body` sent at `now_secs`.
pub fn signature_headers(secret: &[u8], now_secs: i64, body: &[u8]) -> [(&'static str, String); 2] {
    [
        (HEADER_TIMESTAMP, now_secs.to_string()),
        (HEADER_SIGNATURE, sign(secret, now_secs, body)),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use waymark_protocol::edge::{verify, Client, Geo};
    use waymark_protocol::{Event, EventType};

    fn envelope(n: usize, prop_bytes: usize) -> EdgeEnvelope {
        EdgeEnvelope {
            write_key: "wk".into(),
            received_at: "2026-11-29T01:00:00.000Z".into(),
            sent_at: None,
            geo: Geo {
                country: Some("DE".into()),
                ..Geo::default()
            },
            client: Client {
                ip: Some("203.0.113.0".into()),
                ..Client::default()
            },
            email: None,
            events: (0..n)
                .map(|i| {
                    let mut e = Event::new(EventType::Track, format!("m-{i}"));
                    e.anonymous_id = Some("a".into());
                    e.event = Some("Clicked".into());
                    e.properties
                        .insert("pad".into(), "x".repeat(prop_bytes).into());
                    e
                })
                .collect(),
        }
    }

    #[test]
    fn a_small_envelope_is_one_message() {
        let env = envelope(20, 100);
        let msgs = queue_messages(&env, MAX_QUEUE_MESSAGE_BYTES);
        assert_eq!(msgs.len(), 1);
        assert_eq!(serde_json::from_str::<EdgeEnvelope>(&msgs[0]).unwrap(), env);
    }

    #[test]
    fn a_large_envelope_is_split_without_losing_or_repeating_events() {
        let env = envelope(40, 10_000); // about 400 KB
        let msgs = queue_messages(&env, MAX_QUEUE_MESSAGE_BYTES);
        assert!(msgs.len() >= 4, "{} messages", msgs.len());
        let mut ids = Vec::new();
        for m in &msgs {
            assert!(m.len() <= MAX_QUEUE_MESSAGE_BYTES, "{} bytes", m.len());
            let part: EdgeEnvelope = serde_json::from_str(m).unwrap();
            assert_eq!(
                (&part.geo, &part.client, &part.write_key),
                (&env.geo, &env.client, &env.write_key)
            );
            ids.extend(part.events.into_iter().map(|e| e.message_id));
        }
        let want: Vec<String> = env.events.iter().map(|e| e.message_id.clone()).collect();
        assert_eq!(ids, want);
    }

    #[test]
    fn forwards_are_signed_so_the_ingest_server_can_verify() {
        let body = forward_body(vec![envelope(2, 10)]);
        let parsed: EdgeForward = serde_json::from_slice(&body).unwrap();
        assert_eq!(parsed.envelopes.len(), 1);
        let [(th, ts), (sh, sig)] = signature_headers(b"secret", 1_800_000_000, &body);
        assert_eq!((th, sh), (HEADER_TIMESTAMP, HEADER_SIGNATURE));
        assert_eq!(
            verify(b"secret", &ts, &sig, &body, 1_800_000_005, 300),
            Ok(())
        );
        assert!(verify(b"other", &ts, &sig, &body, 1_800_000_005, 300).is_err());
    }
}
