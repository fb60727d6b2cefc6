//! Enrichment: a validated event plus what the server (or the edge) knows about its request
//! becomes an [`EventRow`]. Pure functions, unit-tested here.
//!
//! - time: the protocol crate's clock-skew rule; `client_time` keeps what the client said;
//! - user agent: `woothee` (maintained, no regex compile at start) into browser / OS / device type,
//!   with a small cache because a site sees few distinct agents;
//! - bot: the edge's verdict or a crawler user agent; kept, flagged, never dropped;
//! - session id, page and UTM fields from `context` (UTM from the page query when the campaign
//!   object is absent);
//! - geo from the edge envelope;
//! - IP: truncated or dropped per site; `context.ip` is removed from the stored context;
//! - URLs: `page_url`, `page_search`, `page_referrer` and `$click.href` (and the same fields in
//!   the stored context and properties) without secrets, per the site's allow-list
//!   (`waymark_protocol::privacy`); the edge did the same before forwarding, this covers direct
//!   requests and an edge with an older or different list.

use std::collections::HashMap;
use std::sync::Mutex;

use serde_json::{Map, Value};
use waymark_protocol::edge::{truncate_ip, Client, Geo, IpMode};
use waymark_protocol::names;
use waymark_protocol::privacy::{redact_event, UrlPolicy};
use waymark_protocol::skew::{self, SkewRule};
use waymark_protocol::time::parse_rfc3339;
use waymark_protocol::Event;

use crate::store::row::EventRow;

/// Where a request came from and what is known about it.
pub struct RequestFacts<'a> {
    pub site: &'a str,
    pub ip_mode: IpMode,
    pub received_at_ms: i64,
    pub batch_sent_at: Option<&'a str>,
    /// `"api"` (Segment endpoints) or `"edge"`.
    pub source: &'static str,
    /// The peer address for direct requests (used when `context.ip` is absent).
    pub peer_ip: Option<String>,
    pub geo: Option<&'a Geo>,
    pub client: Option<&'a Client>,
    /// The site's query-parameter allow-list for stored URLs.
    pub urls: UrlPolicy<'a>,
    /// A direct request carried `Sec-GPC: 1` (the edge reports it in `client.gpc`).
    pub gpc: bool,
    /// The request's own address (`client.ip`, else `peer_ip`) as stored, worked out once for
    /// all its events by the private `RequestFacts::request_ip`; start it empty (`Default::default()`).
    pub request_ip: std::cell::OnceCell<String>,
}

impl RequestFacts<'_> {
    /// The request's own address (`client.ip`, else `peer_ip`) truncated or dropped per the
    /// site's `ip` setting; parsed and written once per request, not once per event.
    fn request_ip(&self) -> &str {
        self.request_ip.get_or_init(|| {
            self.client
                .and_then(|c| c.ip.as_deref())
                .or(self.peer_ip.as_deref())
                .and_then(|ip| truncate_ip(ip, self.ip_mode))
                .unwrap_or_default()
        })
    }
}

/// Parsed user agent.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UaInfo {
    pub browser: String,
    pub browser_version: String,
    pub os: String,
    pub os_version: String,
    pub device_type: String,
    pub crawler: bool,
}

/// A bounded cache in front of the user-agent parser.
pub struct UaParser {
    parser: woothee::parser::Parser,
    /// `foldhash` (seeded per process) rather than SipHash: agents are long, and hashing each
    /// event's was a visible part of enrichment's CPU.
    cache: Mutex<HashMap<String, UaInfo, foldhash::quality::RandomState>>,
}

const UA_CACHE_MAX: usize = 10_000;

impl Default for UaParser {
    fn default() -> Self {
        UaParser {
            parser: woothee::parser::Parser::new(),
            cache: Mutex::new(HashMap::default()),
        }
    }
}

impl UaParser {
    pub fn parse(&self, ua: &str) -> UaInfo {
        if ua.is_empty() {
            return UaInfo::default();
        }
        if let Some(hit) = self.cache.lock().expect("ua cache").get(ua) {
            return hit.clone();
        }
        let info = match self.parser.parse(ua) {
            Some(r) => {
                let known = |s: &str| {
                    if s == "UNKNOWN" {
                        String::new()
                    } else {
                        s.to_string()
                    }
                };
                let device_type = match r.category {
                    "pc" => "desktop",
                    "smartphone" if matches!(r.os, "iPad") || ua.contains("Tablet") => "tablet",
                    "smartphone" | "mobilephone" => "mobile",
                    "appliance" => "appliance",
                    "crawler" => "bot",
                    _ => "other",
                };
                UaInfo {
                    browser: known(r.name),
                    browser_version: known(r.version),
                    os: known(r.os),
                    os_version: known(&r.os_version),
                    device_type: device_type.into(),
                    crawler: r.category == "crawler",
                }
            }
            None => UaInfo {
                device_type: "other".into(),
                ..UaInfo::default()
            },
        };
        let mut cache = self.cache.lock().expect("ua cache");
        if cache.len() >= UA_CACHE_MAX {
            cache.clear();
        }
        cache.insert(ua.to_string(), info.clone());
        info
    }
}

/// A string, or a number written as a string (ids and session ids come both ways).
fn text(v: Option<&Value>) -> String {
    match v {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Number(n)) => n.to_string(),
        _ => String::new(),
    }
}

fn number(v: Option<&Value>) -> Option<f64> {
    match v? {
        Value::Number(n) => n.as_f64().filter(|f| f.is_finite()),
        Value::String(s) => s.trim().parse::<f64>().ok().filter(|f| f.is_finite()),
        _ => None,
    }
}

/// The campaign object's key and the query parameter of each UTM field, in the order
/// [`utm_params`] answers.
const UTM: [(&str, &str); 5] = [
    ("source", "utm_source"),
    ("medium", "utm_medium"),
    ("name", "utm_campaign"),
    ("term", "utm_term"),
    ("content", "utm_content"),
];

/// The [`UTM`] parameters of a URL or query string (`?a=b&utm_source=x`), percent-decoding
/// lightly; the first of each name counts, an absent one is empty.
fn utm_params(query: &str) -> [String; 5] {
    let mut out: [String; 5] = Default::default();
    let mut found = [false; 5];
    let q = query.split_once('?').map(|(_, q)| q).unwrap_or(query);
    let q = q.split('#').next().unwrap_or("");
    for pair in q.split('&') {
        if let Some((k, v)) = pair.split_once('=') {
            if let Some(i) = UTM.iter().position(|(_, p)| *p == k) {
                if !found[i] {
                    found[i] = true;
                    out[i] = percent_decode(v);
                }
            }
        }
    }
    out
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < b.len() => {
                let hex = |c: u8| (c as char).to_digit(16);
                match (hex(b[i + 1]), hex(b[i + 2])) {
                    (Some(h), Some(l)) => {
                        out.push((h * 16 + l) as u8);
                        i += 2;
                    }
                    _ => out.push(b'%'),
                }
            }
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn rule_name(r: SkewRule) -> &'static str {
    match r {
        SkewRule::Corrected => "corrected",
        SkewRule::NegativeOffset => "negative_offset",
        SkewRule::Explicit => "explicit",
        SkewRule::Uncorrected => "uncorrected",
        SkewRule::Received => "received",
        SkewRule::ClampedFuture => "clamped_future",
    }
}

/// A JSON object as text, without copying it first.
fn json_text(m: &Map<String, Value>) -> String {
    serde_json::to_string(m).unwrap_or_else(|_| "{}".into())
}

/// Seconds for a DateTime column, clamped to its range (1970 .. 2106).
/// The last second every ClickHouse release can show in a `DateTime`: 2105-12-31 23:59:59 UTC.
/// The column holds a UInt32, but older releases (18.16) compute dates from a table that ends
/// with 2105 and show later seconds wrapped around to 1970 (`9999-12-31` became
/// `1970-01-01 06:28:15`).
const MAX_DATETIME_SECS: i64 = 4_291_747_199;

/// A `DateTime` column's value for `ms`: clamped to what the column can show, never wrapped.
pub(crate) fn datetime(ms: i64) -> u32 {
    ms.div_euclid(1000).clamp(0, MAX_DATETIME_SECS) as u32
}

/// Builds the row for one validated event.
pub fn to_row(ev: &Event, facts: &RequestFacts<'_>, ua: &UaParser) -> EventRow {
    // A copy only when a URL has something to hide.
    let redacted = redact_event(ev, &facts.urls);
    let ev = redacted.as_ref().unwrap_or(ev);
    let corrected = skew::correct(facts.received_at_ms, ev, facts.batch_sent_at).unwrap_or(
        // Validation already refused events that are too old; this is only a fallback.
        skew::Corrected {
            timestamp_ms: facts.received_at_ms,
            rule: SkewRule::Received,
        },
    );
    let parse = |s: &Option<String>| s.as_deref().and_then(parse_rfc3339);
    let client_ms = parse(&ev.timestamp)
        .or_else(|| parse(&ev.original_timestamp))
        .unwrap_or(corrected.timestamp_ms);
    let sent_ms = parse(&ev.sent_at)
        .or_else(|| facts.batch_sent_at.and_then(parse_rfc3339))
        .unwrap_or(0);

    let ctx = &ev.context;
    let props = &ev.properties;
    let user_agent = facts
        .client
        .and_then(|c| c.user_agent.clone())
        .unwrap_or_else(|| text(ctx.get("userAgent")));
    let ua_info = ua.parse(&user_agent);
    let edge_bot = facts.client.map(|c| c.bot).unwrap_or(false);

    // `client.ip` (the edge's), else the event's `context.ip`, else the peer's address.
    let ip = match ctx.get("ip").and_then(Value::as_str) {
        Some(own) if facts.client.and_then(|c| c.ip.as_ref()).is_none() => {
            truncate_ip(own, facts.ip_mode).unwrap_or_default()
        }
        _ => facts.request_ip().to_string(),
    };

    // Each object looked up once (a BTreeMap search per key otherwise).
    let object = |k: &str| ctx.get(k).and_then(Value::as_object);
    let (page_obj, campaign) = (object("page"), object("campaign"));
    let page = |k: &str| text(page_obj.and_then(|o| o.get(k)));
    let page_search = page("search");
    let page_url = page("url");
    // The page query is read once, and only when the campaign object lacks a field.
    let mut from_query: Option<[String; 5]> = None;
    let mut utm = |i: usize| {
        let v = text(campaign.and_then(|o| o.get(UTM[i].0)));
        if !v.is_empty() {
            return v;
        }
        let q = from_query.get_or_insert_with(|| {
            utm_params(if page_search.is_empty() {
                &page_url
            } else {
                &page_search
            })
        });
        std::mem::take(&mut q[i])
    };
    let utm_source = utm(0);
    let utm_medium = utm(1);
    let utm_campaign = utm(2);
    let utm_term = utm(3);
    let utm_content = utm(4);

    let is_engagement = ev.event.as_deref() == Some(names::ENGAGEMENT);
    let is_product_event = ev
        .event
        .as_deref()
        .is_some_and(|e| e.starts_with("Product "));
    let geo = facts.geo;
    let g = |f: fn(&Geo) -> &Option<String>| geo.and_then(|g| f(g).clone()).unwrap_or_default();

    // The stored context never holds the raw IP.
    let stored_ctx = if ctx.contains_key("ip") {
        let mut c = ctx.clone();
        c.remove("ip");
        json_text(&c)
    } else {
        json_text(ctx)
    };

    EventRow {
        site: facts.site.to_string(),
        visitor_id: ev
            .anonymous_id
            .clone()
            .or_else(|| ev.user_id.clone())
            .unwrap_or_default(),
        message_id: ev.message_id.clone(),
        kind: ev.kind.as_str().to_string(),
        event: ev.event.clone().unwrap_or_default(),
        name: ev.name.clone().unwrap_or_default(),
        anonymous_id: ev.anonymous_id.clone().unwrap_or_default(),
        user_id: ev.user_id.clone().unwrap_or_default(),
        previous_id: ev.previous_id.clone().unwrap_or_default(),
        group_id: ev.group_id.clone().unwrap_or_default(),
        timestamp: datetime(corrected.timestamp_ms),
        timestamp_ms: corrected.timestamp_ms,
        skew_rule: rule_name(corrected.rule).to_string(),
        client_time: datetime(client_ms),
        received_at_ms: facts.received_at_ms,
        sent_at_ms: sent_ms,
        source: facts.source.to_string(),
        session_id: text(ctx.get("sessionId")),
        page_url: page_url.clone(),
        page_path: page("path"),
        page_title: page("title"),
        page_referrer: page("referrer"),
        page_search: page_search.clone(),
        utm_source,
        utm_medium,
        utm_campaign,
        utm_term,
        utm_content,
        user_agent,
        browser: ua_info.browser,
        browser_version: ua_info.browser_version,
        os: ua_info.os,
        os_version: ua_info.os_version,
        device_type: ua_info.device_type,
        is_bot: u8::from(edge_bot || ua_info.crawler),
        bot_score: facts.client.and_then(|c| c.bot_score),
        ip,
        locale: text(ctx.get("locale")),
        library_name: text(object("library").and_then(|o| o.get("name"))),
        library_version: text(object("library").and_then(|o| o.get("version"))),
        country: g(|g| &g.country),
        region: g(|g| &g.region),
        region_code: g(|g| &g.region_code),
        city: g(|g| &g.city),
        postal_code: g(|g| &g.postal_code),
        geo_timezone: g(|g| &g.timezone),
        continent: g(|g| &g.continent),
        colo: g(|g| &g.colo),
        latitude: geo.and_then(|g| g.latitude),
        longitude: geo.and_then(|g| g.longitude),
        asn: geo.and_then(|g| g.asn),
        gpc: u8::from(facts.gpc || facts.client.is_some_and(|c| c.gpc)),
        product_id: text(props.get("product_id")),
        product_name: if is_product_event {
            text(props.get("name"))
        } else {
            String::new()
        },
        price: number(props.get("price")),
        quantity: number(props.get("quantity")),
        currency: text(props.get("currency")),
        order_id: text(props.get("order_id")),
        revenue: number(props.get("revenue")).or_else(|| number(props.get("total"))),
        engaged_ms: if is_engagement {
            number(props.get("engaged_ms"))
                .map(|f| f.max(0.0) as u64)
                .unwrap_or(0)
        } else {
            0
        },
        scroll_depth: if is_engagement {
            number(props.get("scroll_depth"))
                .map(|f| f.clamp(0.0, 100.0) as u8)
                .unwrap_or(0)
        } else {
            0
        },
        properties: json_text(props),
        traits: json_text(&ev.traits),
        context: stored_ctx,
        violations: Vec::new(),
        missing: Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use waymark_protocol::EventType;

    const RECEIVED: i64 = 1_800_000_000_000;

    fn facts<'a>(geo: Option<&'a Geo>, client: Option<&'a Client>) -> RequestFacts<'a> {
        RequestFacts {
            site: "shop",
            ip_mode: IpMode::Truncate,
            received_at_ms: RECEIVED,
            batch_sent_at: None,
            source: "api",
            peer_ip: Some("198.51.100.23".into()),
            geo,
            client,
            urls: UrlPolicy::default(),
            gpc: false,
            request_ip: Default::default(),
        }
    }

    fn event(v: serde_json::Value) -> Event {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn page_view_fields_utm_ua_and_ip() {
        let ev = event(json!({
            "type": "page", "messageId": "m1", "anonymousId": "a1", "name": "Home",
            "originalTimestamp": "2027-01-15T08:00:00.000Z", "sentAt": "2027-01-15T08:00:01.000Z",
            "context": {
                "ip": "203.0.113.77",
                "sessionId": 1700000000,
                "userAgent": "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0.0.0 Safari/537.36",
                "page": {"url": "https://shop.example/?utm_source=news&utm_medium=email&utm_campaign=spring%20sale", "path": "/", "title": "Shop"},
                "library": {"name": "waymark.js", "version": "0.1.0"}
            }
        }));
        let r = to_row(&ev, &facts(None, None), &UaParser::default());
        assert_eq!(r.site, "shop");
        assert_eq!(r.visitor_id, "a1");
        assert_eq!(r.kind, "page");
        assert_eq!(r.name, "Home");
        assert_eq!(r.timestamp_ms, RECEIVED - 1000);
        assert_eq!(r.skew_rule, "corrected");
        assert_eq!(
            r.client_time as i64,
            parse_rfc3339("2027-01-15T08:00:00Z").unwrap() / 1000
        );
        assert_eq!(r.session_id, "1700000000");
        assert_eq!(r.utm_source, "news");
        assert_eq!(r.utm_medium, "email");
        assert_eq!(r.utm_campaign, "spring sale");
        assert_eq!(r.browser, "Chrome");
        assert_eq!(r.os, "Windows 10");
        assert_eq!(r.device_type, "desktop");
        assert_eq!(r.is_bot, 0);
        assert_eq!(
            r.ip, "203.0.113.0",
            "context.ip wins over the peer, truncated"
        );
        assert!(
            !r.context.contains("203.0.113.77"),
            "raw ip must not be stored: {}",
            r.context
        );
        assert_eq!(r.library_name, "waymark.js");
    }

    #[test]
    fn the_address_is_the_edges_else_the_events_else_the_peers() {
        let with_ip = event(
            json!({"type": "track", "messageId": "m1", "anonymousId": "a",
            "event": "x", "context": {"ip": "203.0.113.77"}}),
        );
        let without = event(
            json!({"type": "track", "messageId": "m2", "anonymousId": "a",
            "event": "x"}),
        );
        let ua = UaParser::default();
        // One request's facts for both events, in both orders: the peer's address is worked
        // out once and does not stand in for an event's own.
        let f = facts(None, None);
        let ips: Vec<String> = [&without, &with_ip, &without]
            .map(|ev| to_row(ev, &f, &ua).ip)
            .into();
        assert_eq!(ips, ["198.51.100.0", "203.0.113.0", "198.51.100.0"]);
        let client = Client {
            ip: Some("192.0.2.9".into()),
            ..Client::default()
        };
        let f = facts(None, Some(&client));
        assert_eq!(to_row(&with_ip, &f, &ua).ip, "192.0.2.0");
        assert_eq!(to_row(&without, &f, &ua).ip, "192.0.2.0");
        let mut f = facts(None, None);
        f.ip_mode = IpMode::Drop;
        assert_eq!(to_row(&with_ip, &f, &ua).ip, "");
        assert_eq!(to_row(&without, &f, &ua).ip, "");
    }

    #[test]
    fn edge_facts_geo_bot_and_drop_ip() {
        let ev = event(json!({"type": "track", "messageId": "m2", "userId": "u1",
            "event": "$engagement", "properties": {"engaged_ms": 5300, "scroll_depth": 80, "product_id": "p9"}}));
        let geo = Geo {
            country: Some("DE".into()),
            city: Some("Berlin".into()),
            latitude: Some(52.5),
            asn: Some(3320),
            ..Geo::default()
        };
        let client = Client {
            ip: Some("203.0.113.0".into()),
            user_agent: Some("Googlebot/2.1 (+http://www.google.com/bot.html)".into()),
            gpc: true,
            bot_score: Some(2),
            bot: false,
        };
        let mut f = facts(Some(&geo), Some(&client));
        f.ip_mode = IpMode::Drop;
        f.source = "edge";
        let r = to_row(&ev, &f, &UaParser::default());
        assert_eq!(r.visitor_id, "u1");
        assert_eq!(r.country, "DE");
        assert_eq!(r.city, "Berlin");
        assert_eq!(r.latitude, Some(52.5));
        assert_eq!(r.asn, Some(3320));
        assert_eq!(r.is_bot, 1, "crawler user agent flags a bot");
        assert_eq!(r.bot_score, Some(2));
        assert_eq!(r.gpc, 1);
        assert_eq!(r.ip, "", "site setting drop");
        assert_eq!(r.engaged_ms, 5300);
        assert_eq!(r.scroll_depth, 80);
        assert_eq!(r.product_id, "p9");
        assert_eq!(r.skew_rule, "received");
    }

    #[test]
    fn order_fields() {
        let mut ev = Event::new(EventType::Track, "m3");
        ev.anonymous_id = Some("a".into());
        ev.event = Some(names::ORDER_COMPLETED.into());
        ev.properties = json!({"order_id": 1234, "total": "99.5", "currency": "EUR"})
            .as_object()
            .unwrap()
            .clone();
        let r = to_row(&ev, &facts(None, None), &UaParser::default());
        assert_eq!(r.order_id, "1234");
        assert_eq!(r.revenue, Some(99.5));
        assert_eq!(r.currency, "EUR");
        assert_eq!(r.ip, "198.51.100.0", "peer address, truncated");
    }

    #[test]
    fn stored_urls_lose_their_secrets() {
        let ev = event(json!({
            "type": "page", "messageId": "m4", "anonymousId": "a1",
            "context": {"page": {
                "url": "https://shop.example/reset?token=s3cr3t&sku=1&utm_source=jane%40example.com",
                "search": "?token=s3cr3t&sku=1&utm_source=jane%40example.com",
                "referrer": "https://mail.example/?u=jane@example.com"}}
        }));
        let extra = ["sku".to_string()];
        let mut f = facts(None, None);
        f.urls = UrlPolicy { extra: &extra };
        let r = to_row(&ev, &f, &UaParser::default());
        assert_eq!(
            r.page_url,
            "https://shop.example/reset?token=REDACTED&sku=1&utm_source=REDACTED"
        );
        assert_eq!(r.page_search, "?token=REDACTED&sku=1&utm_source=REDACTED");
        assert_eq!(r.page_referrer, "https://mail.example/?u=REDACTED");
        assert_eq!(r.utm_source, "REDACTED", "UTM fields read the redacted URL");
        for secret in ["s3cr3t", "jane"] {
            assert!(!r.context.contains(secret), "{}", r.context);
        }
    }

    #[test]
    fn percent_decoding() {
        assert_eq!(percent_decode("a%20b+c%"), "a b c%");
        assert_eq!(utm_params("x=1&utm_term=t%C3%A9")[3], "té");
    }

    #[test]
    fn utm_params_take_the_first_of_each_and_stop_at_the_fragment() {
        let p =
            utm_params("https://s.example/p?utm_source=a&utm_source=b&utm_medium=m#utm_campaign=c");
        assert_eq!(p, ["a", "m", "", "", ""].map(String::from));
        let p = utm_params("?utm_content=x&utm_term=y&utm_campaign=z");
        assert_eq!(p, ["", "", "z", "y", "x"].map(String::from));
    }

    #[test]
    fn campaign_fields_win_over_the_query_field_by_field() {
        let ev = event(json!({
            "type": "page", "messageId": "m1", "anonymousId": "a1",
            "context": {
                "campaign": {"source": "crm", "name": ""},
                "page": {"url": "https://s.example/?utm_source=q&utm_campaign=spring&utm_term=t"}
            }
        }));
        let r = to_row(&ev, &facts(None, None), &UaParser::default());
        assert_eq!(
            [
                r.utm_source,
                r.utm_medium,
                r.utm_campaign,
                r.utm_term,
                r.utm_content
            ],
            ["crm", "", "spring", "t", ""].map(String::from)
        );
    }

    #[test]
    fn datetimes_are_clamped_to_what_the_column_shows_never_wrapped() {
        // 9999-12-31T23:59:59Z, 2106-02-07T06:28:16Z (one past u32::MAX), before 1970.
        assert_eq!(datetime(253_402_300_799_000) as i64, MAX_DATETIME_SECS);
        assert_eq!(datetime(4_294_967_296_000) as i64, MAX_DATETIME_SECS);
        assert_eq!(datetime(-1), 0);
        assert_eq!(datetime(1_795_000_000_123), 1_795_000_000);
        assert_eq!(
            waymark_protocol::time::format_rfc3339(MAX_DATETIME_SECS * 1000),
            "2105-12-31T23:59:59.000Z"
        );
    }
}
