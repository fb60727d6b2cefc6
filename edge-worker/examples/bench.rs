//! The edge worker's CPU cost per tag request, measured natively (`cargo xtask bench edge` runs
//! this in release mode): `process` on a 20-event batch plus turning the envelope into queue
//! messages, and the consumer's side (one signed forward of 10 envelopes); then an email click
//! redirect and an open pixel (`email::hit`: verify the token, classify, the marker cookie,
//! the event's envelope and its queue message), printed against the batch measured in the
//! same run as the reference. Prints; asserts nothing.
//!
//! CPU time comes from `/proc/thread-self/schedstat` (time this thread ran), so time spent
//! waiting for a core on a busy machine is not counted; wall time is printed beside it.

use std::hint::black_box;
use std::time::Instant;

use serde_json::{json, Value};
use waymark_edge::config::{Config, EmailSettings};
use waymark_edge::email::{hit, EmailRequest};
use waymark_edge::forward::{
    forward_body, queue_messages, signature_headers, MAX_QUEUE_MESSAGE_BYTES,
};
use waymark_edge::process::{process, RequestParts};
use waymark_protocol::email::classify::ClickBursts;
use waymark_protocol::email::{self as wire, Claims, Kind, SigningKey};
use waymark_protocol::time::format_rfc3339;

const EVENTS: usize = 20;
const ITERATIONS: usize = 3_000;

/// Nanoseconds this thread has run on a CPU, when the kernel says.
fn thread_cpu_ns() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
    s.split_whitespace().next()?.parse().ok()
}

/// A realistic tag batch: page views, clicks, product views, engagement, an order.
fn body(now_ms: i64) -> Vec<u8> {
    let ctx = json!({
        "page": {"url": "https://shop.example/products/trail-shoe-42?utm_source=news", "path": "/products/trail-shoe-42",
                 "title": "Trail shoe 42 - Shop", "referrer": "https://www.google.com/", "search": "?utm_source=news"},
        "campaign": {"source": "news", "medium": "email", "name": "november"},
        "userAgent": "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36",
        "locale": "de-DE", "library": {"name": "waymark.js", "version": "0.1.0"}, "sessionId": "s-6f1c2a"
    });
    let events: Vec<Value> = (0..EVENTS)
        .map(|i| {
            let ts = format_rfc3339(now_ms - 60_000 + i as i64 * 1_000);
            let (kind, name, props) = match i % 5 {
                0 => ("page", None, json!({})),
                1 => ("track", Some("$click"), json!({"kind": "link", "text": "Add to cart", "href": "/cart", "outbound": false})),
                2 => ("track", Some("Product Viewed"), json!({"product_id": "p-42", "name": "Trail shoe", "price": 89.9, "currency": "EUR"})),
                3 => ("track", Some("$engagement"), json!({"engaged_ms": 15_400, "scroll_depth": 70, "product_id": "p-42"})),
                _ => ("track", Some("Order Completed"), json!({"order_id": "o-1", "revenue": 89.9, "currency": "EUR",
                        "products": [{"product_id": "p-42", "price": 89.9, "quantity": 1}]})),
            };
            let mut e = json!({"type": kind, "messageId": format!("m-{i:04}-9b2f6c1e"), "anonymousId": "a-2c7e1f90",
                               "timestamp": ts, "context": ctx, "properties": props});
            if let Some(n) = name {
                e["event"] = n.into();
            }
            e
        })
        .collect();
    serde_json::to_vec(&json!({"batch": events, "writeKey": "wk_live_3f9a", "sentAt": format_rfc3339(now_ms - 500)}))
        .expect("serialises")
}

/// Prints the figures; returns the CPU (else wall) microseconds per call.
fn measure(label: &str, iterations: usize, mut f: impl FnMut()) -> f64 {
    for _ in 0..iterations / 10 {
        f();
    }
    let cpu0 = thread_cpu_ns();
    let wall0 = Instant::now();
    let mut samples = Vec::with_capacity(iterations);
    for _ in 0..iterations {
        let t = Instant::now();
        f();
        samples.push(t.elapsed().as_nanos() as u64);
    }
    let wall = wall0.elapsed().as_nanos() as f64 / iterations as f64;
    samples.sort_unstable();
    let p = |q: f64| samples[((samples.len() - 1) as f64 * q) as usize] as f64 / 1_000.0;
    let cpu_us = match (cpu0, thread_cpu_ns()) {
        (Some(a), Some(b)) => Some((b - a) as f64 / iterations as f64 / 1_000.0),
        _ => None,
    };
    let cpu = match cpu_us {
        Some(us) => format!("{us:.1} µs CPU"),
        None => "CPU time unavailable".to_string(),
    };
    println!(
        "{label}: {cpu} per call; wall mean {:.1} µs, p50 {:.1} µs, p99 {:.1} µs ({iterations} calls)",
        wall / 1_000.0,
        p(0.5),
        p(0.99)
    );
    cpu_us.unwrap_or(wall / 1_000.0)
}

fn req<'a>(kind: Kind, token: &'a str) -> EmailRequest<'a> {
    EmailRequest {
        kind,
        token,
        method: "GET",
        user_agent: Some(
            "Mozilla/5.0 (iPhone; CPU iPhone OS 18_1 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/18.1 Mobile/15E148 Safari/604.1",
        ),
        client_ip: Some("203.0.113.77"),
        secure: true,
    }
}

/// The email endpoints' work per request, with `reference_us` (the batch) beside it.
fn email(now_ms: i64, cf: &Value, reference_us: f64) {
    let key = SigningKey {
        id: "k1".into(),
        secret: b"bench-email-secret-0123456789abcdef".to_vec(),
    };
    let cfg = Config {
        email: Some(EmailSettings {
            site: "shop".into(),
            write_key: "wk_live_3f9a".into(),
            home_url: "https://shop.example/".into(),
            keys: vec![key.clone()],
            max_age_secs: 400 * 86_400,
        }),
        ..Config::default()
    };
    let claims = |target: Option<&str>| Claims {
        site: "shop".into(),
        user_id: "u-1842".into(),
        email: "ada@example.com".into(),
        campaign: "november-sale".into(),
        send_id: "snd_01HZY3QK".into(),
        issued_at: (now_ms / 1000) as u64 - 3_600,
        target: target.map(str::to_string),
    };
    let click = wire::sign(
        &claims(Some(
            "https://shop.example/products/trail-shoe-42?utm_source=email&utm_campaign=november",
        )),
        &key,
    )
    .expect("signs");
    let open = wire::sign(&claims(None), &key).expect("signs");
    let bursts = ClickBursts::default();
    // Each call a second later than the last, so the burst window holds what a real message's
    // clicks leave in it (one link), not thousands of clicks within one second.
    let mut tick = 0;
    let mut run = |kind, token: &str| {
        tick += 1_001;
        let o = hit(
            &req(kind, token),
            black_box(cf),
            &cfg,
            &bursts,
            now_ms + tick,
        )
        .expect("on");
        let env = o.envelope.expect("an event");
        black_box((o.reply, queue_messages(&env, MAX_QUEUE_MESSAGE_BYTES)));
    };
    let check = hit(&req(Kind::Click, &click), cf, &cfg, &bursts, now_ms).expect("on");
    assert_eq!(check.verdict, "human", "the benchmark click is a person's");
    let click_us = measure(
        "email click redirect (verify + classify + marker cookie + event + queue message)",
        ITERATIONS,
        || run(Kind::Click, &click),
    );
    let open_us = measure(
        "email open pixel (verify + classify + event + queue message)",
        ITERATIONS,
        || run(Kind::Open, &open),
    );
    println!(
        "email: {click_us:.1} µs CPU per click redirect ({:.2}x the 20-event batch), {open_us:.1} µs per open ({:.2}x); target < 1000 µs each, the pixel answered before any forwarding",
        click_us / reference_us,
        open_us / reference_us,
    );
}

fn main() {
    let now_ms = 1_795_000_000_000;
    let cfg = Config::default();
    let body = body(now_ms);
    let cf = json!({"country": "DE", "region": "Berlin", "regionCode": "BE", "city": "Berlin", "postalCode": "10115",
                    "latitude": "52.52000", "longitude": "13.40500", "timezone": "Europe/Berlin", "continent": "EU",
                    "asn": 3320, "colo": "FRA", "botManagement": {"score": 87}});
    let ua = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36";
    let parts = RequestParts {
        body: &body,
        user_agent: Some(ua),
        client_ip: Some("203.0.113.77"),
        ..RequestParts::default()
    };
    let check = process(&parts, &cf, &cfg, now_ms).expect("the benchmark batch is valid");
    let envelope = check.envelope.expect("events");
    assert_eq!(
        envelope.events.len(),
        EVENTS,
        "every benchmark event passes validation: {:?}",
        check.summary.rejections
    );
    println!(
        "edge bench: one tag request of {EVENTS} events, {} bytes of JSON",
        body.len()
    );

    let reference_us = measure(
        "fetch handler work (validate + geo + envelope + queue message)",
        ITERATIONS,
        || {
            let p = process(black_box(&parts), black_box(&cf), &cfg, now_ms).expect("valid");
            let msgs = queue_messages(
                p.envelope.as_ref().expect("events"),
                MAX_QUEUE_MESSAGE_BYTES,
            );
            black_box(msgs);
        },
    );
    measure("  of which process() alone", ITERATIONS, || {
        black_box(process(black_box(&parts), black_box(&cf), &cfg, now_ms).expect("valid"));
    });
    let ten: Vec<_> = (0..10).map(|_| envelope.clone()).collect();
    let msgs: Vec<String> = ten
        .iter()
        .flat_map(|e| queue_messages(e, MAX_QUEUE_MESSAGE_BYTES))
        .collect();
    measure(
        "queue consumer work per delivery of 10 batches (parse + body + sign)",
        ITERATIONS / 5,
        || {
            let envs: Vec<_> = msgs
                .iter()
                .map(|m| {
                    serde_json::from_str::<waymark_protocol::edge::EdgeEnvelope>(m)
                        .expect("envelope")
                })
                .collect();
            let body = forward_body(envs);
            black_box(signature_headers(b"secret", now_ms / 1000, &body));
        },
    );
    println!("target: <= 1000 µs per 20-event batch (Cloudflare's free plan allows 10 ms CPU per request)");
    email(now_ms, &cf, reference_us);
}
