//! The work done on each tag request, as one pure function: [`process`].
//!
//! It takes the body, the few headers that matter, the JSON of `request.cf`, the configuration
//! and the clock, and returns the [`EdgeEnvelope`] to forward plus what to tell the tag. No I/O,
//! so it runs in host unit tests and in the native benchmark exactly as in the worker.

use serde::Serialize;
use serde_json::Value;
use waymark_protocol::edge::{truncate_ip, Client, EdgeEmail, EdgeEnvelope, IpMode};
use waymark_protocol::intake::{basic_user, query_write_key, IntakePath};
use waymark_protocol::privacy::{apply_gpc, gpc_signal, redact_event_in_place, UrlPolicy};
use waymark_protocol::time::format_rfc3339;
use waymark_protocol::{parse_batch, parse_single, BatchError, Event, Rejection};

use crate::bot::is_bot;
use crate::cf::read_cf;
use crate::config::Config;
use crate::email::Stitch;

pub use waymark_protocol::privacy::GPC_ID_PREFIX;

/// The parts of a tag request [`process`] reads.
#[derive(Debug, Clone, Copy, Default)]
pub struct RequestParts<'a> {
    pub body: &'a [u8],
    /// `User-Agent`.
    pub user_agent: Option<&'a str>,
    /// `CF-Connecting-IP`: the visitor's address as Cloudflare saw it.
    pub client_ip: Option<&'a str>,
    /// `Sec-GPC`.
    pub sec_gpc: Option<&'a str>,
    /// `Authorization`: Segment SDKs send the write key as the Basic user name.
    pub authorization: Option<&'a str>,
    /// The URL's query string: RudderStack's beacon delivery puts `writeKey` there.
    pub query: Option<&'a str>,
    /// What the path carries: a batch, or one event of a type (`/v1/t`, `/v1/track`, ...).
    pub kind: IntakePath,
    /// `Cookie`: only the email click's stitch marker is read from it (`crate::email::link`).
    pub cookie: Option<&'a str>,
}

/// A request whose body as a whole is refused; nothing in it goes on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProcessError {
    /// The protocol crate refused the body (too large, not JSON, no `batch`, ...).
    Batch(BatchError),
    /// Neither the body's `writeKey` nor a Basic `Authorization` names the site.
    MissingWriteKey,
}

impl ProcessError {
    /// The HTTP status for the tag: 413 for size, 400 for everything else (its fault, do not retry).
    pub fn status(&self) -> u16 {
        match self {
            ProcessError::Batch(e) if e.is_too_large() => 413,
            _ => 400,
        }
    }
    pub fn code(&self) -> &'static str {
        match self {
            ProcessError::Batch(e) => e.code(),
            ProcessError::MissingWriteKey => "missing_write_key",
        }
    }
    pub fn field(&self) -> &'static str {
        match self {
            ProcessError::Batch(e) => e.field(),
            ProcessError::MissingWriteKey => "writeKey",
        }
    }
}

impl std::fmt::Display for ProcessError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ProcessError::Batch(e) => e.fmt(f),
            ProcessError::MissingWriteKey => f.write_str(
                "writeKey: missing (put the site's write key in the body or as the Basic auth user)",
            ),
        }
    }
}

impl std::error::Error for ProcessError {}

/// The outcome of a body that was accepted as a whole.
#[derive(Debug, Clone, PartialEq)]
pub struct Processed {
    /// `None` when no event is left to forward.
    pub envelope: Option<EdgeEnvelope>,
    /// What the tag is told.
    pub summary: Summary,
    /// A stitch marker came with the request: the answer clears its cookie.
    pub clear_marker: bool,
}

/// The JSON answer to the tag for a body that was accepted as a whole.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Summary {
    /// Events that go on to the ingest server.
    pub accepted: usize,
    /// Events left out because they were invalid (listed in `rejections`).
    pub rejected: usize,
    /// Events left out because the request carried `Sec-GPC: 1` (see `GPC_MODE`).
    #[serde(skip_serializing_if = "is_zero")]
    pub gpc_dropped: usize,
    /// Every problem, by event index, field and reason.
    pub rejections: Vec<Rejection>,
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}

/// Validates a tag request and wraps its good events with what the edge knows.
pub fn process(
    req: &RequestParts<'_>,
    cf: &Value,
    cfg: &Config,
    now_ms: i64,
) -> Result<Processed, ProcessError> {
    let validated = match req.kind {
        IntakePath::Batch => parse_batch(req.body, now_ms),
        IntakePath::Single(kind) => parse_single(req.body, kind, now_ms),
    }
    .map_err(ProcessError::Batch)?;
    let write_key = validated
        .write_key
        .clone()
        .filter(|k| !k.is_empty())
        .or_else(|| req.authorization.and_then(basic_user))
        .or_else(|| req.query.and_then(query_write_key))
        .ok_or(ProcessError::MissingWriteKey)?;
    let rejected = validated.rejected_events();
    let mut events = validated.events;

    let gpc = gpc_signal(req.sec_gpc);
    let gpc_dropped = if gpc {
        apply_gpc(&mut events, cfg.gpc)
    } else {
        0
    };
    // The address never travels whole, also not inside an event (server-side SDKs set context.ip);
    // nor do the secrets in URLs (reset tokens, emails in query strings, mailto: targets).
    let urls = UrlPolicy {
        extra: &cfg.allowed_query_params,
    };
    for e in &mut events {
        scrub_context_ip(e, cfg.ip_mode);
        redact_event_in_place(e, &urls);
    }

    let facts = read_cf(cf);
    let user_agent = req.user_agent.map(str::trim).filter(|u| !u.is_empty());
    let client = Client {
        ip: req.client_ip.and_then(|ip| truncate_ip(ip, cfg.ip_mode)),
        user_agent: user_agent.map(str::to_string),
        gpc,
        bot_score: facts.bot_score,
        bot: is_bot(
            facts.bot_score,
            facts.verified_bot,
            user_agent,
            cfg.bot_score_threshold,
        ),
    };
    let summary = Summary {
        accepted: events.len(),
        rejected,
        gpc_dropped,
        rejections: validated.rejections,
    };
    let stitch = crate::email::link(req.cookie, &write_key, gpc, &events, cfg, now_ms);
    let (clear_marker, email) = match stitch {
        Stitch::None => (false, None),
        Stitch::Marker(link) => (
            true,
            link.map(|link| EdgeEmail {
                link: Some(link),
                ..EdgeEmail::default()
            }),
        ),
    };
    let envelope = (!events.is_empty()).then(|| EdgeEnvelope {
        write_key,
        received_at: format_rfc3339(now_ms),
        sent_at: validated.sent_at,
        geo: facts.geo,
        client,
        events,
        email,
    });
    Ok(Processed {
        envelope,
        summary,
        clear_marker,
    })
}

fn scrub_context_ip(e: &mut Event, mode: IpMode) {
    let Some(v) = e.context.get_mut("ip") else {
        return;
    };
    match v.as_str().and_then(|ip| truncate_ip(ip, mode)) {
        Some(t) => *v = Value::String(t),
        None => {
            e.context.remove("ip");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::GpcMode;
    use serde_json::json;
    use waymark_protocol::edge::Geo;
    use waymark_protocol::limits::MAX_ID_LEN;
    use waymark_protocol::EventType;

    const NOW: i64 = 1_795_000_000_000; // 2026-11-19
    const CHROME: &str = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36";

    fn event(i: usize) -> Value {
        json!({
            "type": "track", "event": "Product Viewed", "messageId": format!("m-{i}"),
            "anonymousId": "anon-1", "userId": "user-1",
            "timestamp": format_rfc3339(NOW - 5_000),
            "context": {"page": {"path": "/p/1"}, "ip": "203.0.113.77", "sessionId": "s-1"},
            "properties": {"product_id": "p-1", "price": 9.5}
        })
    }

    fn body(events: Vec<Value>) -> Vec<u8> {
        serde_json::to_vec(
            &json!({"batch": events, "writeKey": "wk_test", "sentAt": format_rfc3339(NOW - 1_000)}),
        )
        .unwrap()
    }

    fn parts(body: &[u8]) -> RequestParts<'_> {
        RequestParts {
            body,
            user_agent: Some(CHROME),
            client_ip: Some("203.0.113.77"),
            ..RequestParts::default()
        }
    }

    #[test]
    fn urls_leave_without_secrets() {
        let mut e = event(0);
        e["event"] = json!("$click");
        e["properties"] = json!({"kind": "link", "href": "mailto:jane@example.com"});
        e["context"]["page"] = json!({
            "url": "https://shop.example/reset?token=t0k3n&sku=9&utm_source=news",
            "search": "?token=t0k3n&sku=9&utm_source=news",
            "referrer": "https://mail.example/?u=jane@example.com"
        });
        let b = body(vec![e]);
        let cfg = Config {
            allowed_query_params: vec!["sku".into()],
            ..Config::default()
        };
        let p = process(&parts(&b), &json!({}), &cfg, NOW).unwrap();
        let ev = &p.envelope.unwrap().events[0];
        assert_eq!(
            ev.context_str(&["page", "url"]),
            Some("https://shop.example/reset?token=REDACTED&sku=9&utm_source=news")
        );
        assert_eq!(
            ev.context_str(&["page", "search"]),
            Some("?token=REDACTED&sku=9&utm_source=news")
        );
        assert_eq!(
            ev.context_str(&["page", "referrer"]),
            Some("https://mail.example/?u=REDACTED")
        );
        assert_eq!(ev.properties["href"], "mailto:");
    }

    #[test]
    fn good_events_go_on_with_geo_client_and_receive_time() {
        let b = body(vec![event(0), event(1)]);
        let cf = json!({"country": "NL", "city": "Amsterdam", "latitude": "52.37", "colo": "AMS", "asn": 1136});
        let p = process(&parts(&b), &cf, &Config::default(), NOW).unwrap();
        let env = p.envelope.unwrap();
        assert_eq!(env.write_key, "wk_test");
        assert_eq!(env.received_at, format_rfc3339(NOW));
        assert_eq!(env.sent_at, Some(format_rfc3339(NOW - 1_000)));
        assert_eq!(env.events.len(), 2);
        assert_eq!(
            env.geo,
            Geo {
                country: Some("NL".into()),
                city: Some("Amsterdam".into()),
                latitude: Some(52.37),
                colo: Some("AMS".into()),
                asn: Some(1136),
                ..Geo::default()
            }
        );
        assert_eq!(
            env.client,
            Client {
                ip: Some("203.0.113.0".into()),
                user_agent: Some(CHROME.into()),
                gpc: false,
                bot_score: None,
                bot: false,
            }
        );
        // context.ip is truncated too.
        assert_eq!(env.events[0].context["ip"], "203.0.113.0");
        assert_eq!(
            p.summary,
            Summary {
                accepted: 2,
                rejected: 0,
                gpc_dropped: 0,
                rejections: vec![]
            }
        );
    }

    #[test]
    fn bad_events_are_listed_back_and_the_rest_go_on() {
        let mut bad = event(1);
        bad.as_object_mut().unwrap().remove("messageId");
        let b = body(vec![event(0), bad, event(2)]);
        let p = process(&parts(&b), &Value::Null, &Config::default(), NOW).unwrap();
        assert_eq!(p.envelope.unwrap().events.len(), 2);
        assert_eq!(p.summary.accepted, 2);
        assert_eq!(p.summary.rejected, 1);
        assert_eq!(p.summary.rejections[0].index, Some(1));
        assert_eq!(p.summary.rejections[0].field, "messageId");
        let json = serde_json::to_value(&p.summary).unwrap();
        assert_eq!(json["rejections"][0]["field"], "messageId");
    }

    #[test]
    fn whole_body_problems_map_to_4xx_naming_why() {
        let cfg = Config::default();
        let cases: Vec<(Vec<u8>, u16, &str)> = vec![
            (b"{not json".to_vec(), 400, "invalid_json"),
            (b"[1,2]".to_vec(), 400, "not_an_object"),
            (b"{\"events\":[]}".to_vec(), 400, "missing_batch"),
            (
                vec![b' '; waymark_protocol::limits::MAX_BATCH_BYTES + 1],
                413,
                "body_too_large",
            ),
            (
                serde_json::to_vec(
                    &json!({"batch": (0..501).map(event).collect::<Vec<_>>(), "writeKey": "k"}),
                )
                .unwrap(),
                413,
                "too_many_events",
            ),
            (b"{\"batch\":[]}".to_vec(), 400, "missing_write_key"),
        ];
        for (b, status, code) in cases {
            let e = process(&parts(&b), &Value::Null, &cfg, NOW).unwrap_err();
            assert_eq!((e.status(), e.code()), (status, code), "{e}");
            assert!(
                e.to_string().starts_with(e.field()),
                "{e} names {}",
                e.field()
            );
        }
    }

    #[test]
    fn the_write_key_may_come_as_basic_auth() {
        let b = serde_json::to_vec(&json!({"batch": [event(0)]})).unwrap();
        let mut p = parts(&b);
        p.authorization = Some("Basic d2tfZnJvbV9hdXRoOg=="); // "wk_from_auth:"
        let env = process(&p, &Value::Null, &Config::default(), NOW)
            .unwrap()
            .envelope
            .unwrap();
        assert_eq!(env.write_key, "wk_from_auth");
        p.authorization = None;
        p.query = Some("writeKey=wk_from_query");
        let env = process(&p, &Value::Null, &Config::default(), NOW)
            .unwrap()
            .envelope
            .unwrap();
        assert_eq!(env.write_key, "wk_from_query");
    }

    #[test]
    fn a_single_event_path_takes_the_event_itself() {
        let mut ev = event(0);
        ev["writeKey"] = json!("wk_single");
        ev["sentAt"] = json!("2026-11-19T00:00:00.000Z");
        let b = serde_json::to_vec(&ev).unwrap();
        let mut p = parts(&b);
        p.kind = IntakePath::Single(EventType::Track);
        let out = process(&p, &Value::Null, &Config::default(), NOW).unwrap();
        let env = out.envelope.unwrap();
        assert_eq!(env.write_key, "wk_single");
        assert_eq!(env.events.len(), 1);
        assert_eq!(env.events[0].kind, EventType::Track);
        // The same body as a batch is refused as a whole: it has no `batch`.
        p.kind = IntakePath::Batch;
        assert!(process(&p, &Value::Null, &Config::default(), NOW).is_err());
    }

    #[test]
    fn ip_is_truncated_or_dropped_per_config() {
        let b = body(vec![event(0)]);
        let cfg = Config {
            ip_mode: IpMode::Drop,
            ..Config::default()
        };
        let env = process(&parts(&b), &Value::Null, &cfg, NOW)
            .unwrap()
            .envelope
            .unwrap();
        assert_eq!(env.client.ip, None);
        assert!(!env.events[0].context.contains_key("ip"));

        let mut p = parts(&b);
        p.client_ip = Some("2001:db8:85a3:8d3:1319:8a2e:370:7348");
        let env = process(&p, &Value::Null, &Config::default(), NOW)
            .unwrap()
            .envelope
            .unwrap();
        assert_eq!(env.client.ip.as_deref(), Some("2001:db8:85a3::"));
        p.client_ip = Some("garbage");
        let env = process(&p, &Value::Null, &Config::default(), NOW)
            .unwrap()
            .envelope
            .unwrap();
        assert_eq!(env.client.ip, None);
    }

    #[test]
    fn gpc_drops_ids_by_default_and_follows_config() {
        let alias = json!({"type": "alias", "messageId": "a-1", "userId": "u-1", "previousId": "anon-1",
                           "timestamp": format_rfc3339(NOW - 5_000)});
        let identify = json!({"type": "identify", "messageId": "i-1", "userId": "u-1",
                              "traits": {"email": "a@example.com"}, "timestamp": format_rfc3339(NOW - 5_000)});
        let mut no_session = event(1);
        no_session["context"] = json!({});
        let b = body(vec![event(0), alias, identify, no_session]);
        let mut p = parts(&b);
        p.sec_gpc = Some("1");

        let r = process(&p, &Value::Null, &Config::default(), NOW).unwrap();
        let env = r.envelope.unwrap();
        assert!(env.client.gpc);
        assert_eq!(
            env.events.len(),
            2,
            "alias and identify only tie ids together"
        );
        assert_eq!(
            env.events[0].anonymous_id.as_deref(),
            Some("gpc-s-1"),
            "session-scoped"
        );
        assert_eq!(env.events[0].user_id, None);
        assert_eq!(
            env.events[0].properties["product_id"], "p-1",
            "the event itself is kept"
        );
        assert_eq!(env.events[1].anonymous_id.as_deref(), Some("gpc-m-1"));
        assert_eq!(r.summary.gpc_dropped, 2);

        let cfg = Config {
            gpc: GpcMode::Keep,
            ..Config::default()
        };
        let env = process(&p, &Value::Null, &cfg, NOW)
            .unwrap()
            .envelope
            .unwrap();
        assert_eq!(env.events.len(), 4);
        assert_eq!(env.events[0].anonymous_id.as_deref(), Some("anon-1"));
        assert!(env.client.gpc);

        let cfg = Config {
            gpc: GpcMode::DropEvents,
            ..Config::default()
        };
        let r = process(&p, &Value::Null, &cfg, NOW).unwrap();
        assert_eq!((r.envelope, r.summary.gpc_dropped), (None, 4));

        // Sec-GPC other than "1" is no signal.
        p.sec_gpc = Some("0");
        let env = process(&p, &Value::Null, &Config::default(), NOW)
            .unwrap()
            .envelope
            .unwrap();
        assert!(!env.client.gpc);
        assert_eq!(env.events[0].user_id.as_deref(), Some("user-1"));
    }

    #[test]
    fn gpc_pseudonyms_stay_within_the_id_limit() {
        let long = "é".repeat(200); // 400 bytes
        let mut e = event(0);
        e["context"]["sessionId"] = long.into();
        let b = body(vec![e]);
        let mut p = parts(&b);
        p.sec_gpc = Some("1");
        let r = process(&p, &Value::Null, &Config::default(), NOW).unwrap();
        let id = r.envelope.unwrap().events[0].anonymous_id.clone().unwrap();
        assert!(id.len() <= MAX_ID_LEN && id.starts_with("gpc-é"), "{id}");
    }

    #[test]
    fn bots_are_flagged_not_dropped() {
        let b = body(vec![event(0)]);
        let cf = json!({"botManagement": {"score": 3}});
        let env = process(&parts(&b), &cf, &Config::default(), NOW)
            .unwrap()
            .envelope
            .unwrap();
        assert!(env.client.bot);
        assert_eq!(env.client.bot_score, Some(3));
        assert_eq!(env.events.len(), 1);

        let mut p = parts(&b);
        p.user_agent =
            Some("Mozilla/5.0 (compatible; bingbot/2.0; +http://www.bing.com/bingbot.htm)");
        let env = process(&p, &Value::Null, &Config::default(), NOW)
            .unwrap()
            .envelope
            .unwrap();
        assert!(env.client.bot);
        assert_eq!(env.client.bot_score, None);
    }

    #[test]
    fn an_empty_batch_forwards_nothing() {
        let b = body(vec![]);
        let p = process(&parts(&b), &Value::Null, &Config::default(), NOW).unwrap();
        assert_eq!(p.envelope, None);
        assert_eq!(p.summary.accepted, 0);
    }
}
