//! The demo's webhook receiver: a small HTTP server on 127.0.0.1 that checks each trigger
//! delivery's signature and prints it, and the subscription that points the ingest server at it
//! (the shop's abandoned carts).

use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode};
use serde_json::{json, Value};
use waymark_protocol::edge::{verify, HEADER_SIGNATURE, HEADER_TIMESTAMP};

/// The subscription's name (a previous run's subscription with this name is replaced).
pub const NAME: &str = "demo: cart abandoned";

/// A running receiver (stops with the process).
pub struct Receiver {
    pub url: String,
    pub secret: String,
}

/// The audience: added to cart within 24 h, the last add older than `abandon_after`, and no
/// order within 24 h.
pub fn audience(abandon_after: &str) -> Value {
    json!({"conditions": [
        {"type": "did", "event": "Product Added", "within": "24h"},
        {"type": "did_not", "event": "Product Added", "within": abandon_after},
        {"type": "did_not", "event": "Order Completed", "within": "24h"}
    ]})
}

/// One line for a delivery, or why it was refused.
fn describe(secret: &str, headers: &HeaderMap, body: &[u8]) -> (StatusCode, String) {
    let h = |n: &str| {
        headers
            .get(n)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    if let Err(e) = verify(
        secret.as_bytes(),
        h(HEADER_TIMESTAMP),
        h(HEADER_SIGNATURE),
        body,
        now,
        300,
    ) {
        return (StatusCode::UNAUTHORIZED, format!("refused a delivery: {e}"));
    }
    let Ok(v) = serde_json::from_slice::<Value>(body) else {
        return (
            StatusCode::BAD_REQUEST,
            "refused a delivery: not JSON".into(),
        );
    };
    let mut line = format!(
        "{} {:?}: person {} (user {}) at {}, signature ok, idempotency-key {}",
        v["type"].as_str().unwrap_or("?"),
        v["subscription"]["name"].as_str().unwrap_or("?"),
        v["person"]["id"].as_str().unwrap_or("?"),
        v["person"]["user_id"].as_str().unwrap_or("-"),
        v["at"].as_str().unwrap_or("?"),
        h("idempotency-key"),
    );
    if let Some(email) = v["profile"]["traits"]["email"].as_str() {
        line.push_str(&format!("; email {email}"));
    }
    (StatusCode::OK, line)
}

/// Starts the receiver on `port` (0: any free port) and prints every delivery it gets.
pub fn start(port: u16, secret: &str) -> Result<Receiver> {
    let listener = std::net::TcpListener::bind(("127.0.0.1", port))
        .with_context(|| format!("binding the webhook receiver to 127.0.0.1:{port}"))?;
    listener.set_nonblocking(true)?;
    let addr = listener.local_addr()?;
    let key = Arc::new(secret.to_string());
    std::thread::Builder::new()
        .name("webhook".into())
        .spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a tokio runtime");
            rt.block_on(async move {
                let app = axum::Router::new().route(
                    "/hook",
                    axum::routing::post(move |headers: HeaderMap, body: Bytes| {
                        let key = key.clone();
                        async move {
                            let (status, line) = describe(&key, &headers, &body);
                            println!("  webhook  {line}");
                            status
                        }
                    }),
                );
                let listener = tokio::net::TcpListener::from_std(listener)
                    .expect("a tokio listener from a bound socket");
                let _ = axum::serve(listener, app).await;
            });
        })?;
    Ok(Receiver {
        url: format!("http://{addr}/hook"),
        secret: secret.to_string(),
    })
}

/// Registers the demo's subscription at `api` for `site`, replacing one a previous run left
/// (its receiver's port may have changed).
pub fn subscribe(
    api: &str,
    read_key: &str,
    site: &str,
    hook: &Receiver,
    abandon_after: &str,
) -> Result<()> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(30)))
        .build()
        .into();
    let auth = format!("Bearer {read_key}");
    let list_url = format!("{api}/v1/subscriptions?site={site}");
    let mut r = agent
        .get(&list_url)
        .header("authorization", &auth)
        .call()
        .context("listing subscriptions")?;
    let text = r.body_mut().read_to_string().unwrap_or_default();
    if r.status() != 200 {
        bail!("listing subscriptions: {} {text}", r.status());
    }
    let list: Value = serde_json::from_str(&text).context("the subscription list")?;
    for s in list["subscriptions"].as_array().into_iter().flatten() {
        if s["name"] == NAME {
            let id = s["id"].as_str().unwrap_or_default();
            agent
                .delete(&format!("{api}/v1/subscriptions/{id}?site={site}"))
                .header("authorization", &auth)
                .call()
                .context("removing the previous run's subscription")?;
        }
    }
    let body = json!({"name": NAME, "audience": audience(abandon_after), "url": hook.url,
                      "secret": hook.secret});
    let mut r = agent
        .post(&list_url)
        .header("authorization", &auth)
        .header("content-type", "application/json")
        .send(body.to_string())
        .context("registering the demo's subscription")?;
    let text = r.body_mut().read_to_string().unwrap_or_default();
    if r.status() != 201 {
        bail!("registering the demo's subscription: {} {text}", r.status());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deliveries_are_checked_and_described() {
        let body = br#"{"type":"entered","subscription":{"name":"c"},"person":{"id":"a1","user_id":null},"at":"t","profile":{"traits":{"email":"a@example.com"}}}"#;
        let ts = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64;
        let mut h = HeaderMap::new();
        h.insert(HEADER_TIMESTAMP, ts.to_string().parse().unwrap());
        h.insert(
            HEADER_SIGNATURE,
            waymark_protocol::edge::sign(b"0123456789abcdef", ts, body)
                .parse()
                .unwrap(),
        );
        let (status, line) = describe("0123456789abcdef", &h, body);
        assert_eq!(status, StatusCode::OK, "{line}");
        assert!(
            line.contains("entered") && line.contains("a1") && line.contains("a@example.com"),
            "{line}"
        );
        let (status, _) = describe("another-secret-0123", &h, body);
        assert_eq!(status, StatusCode::UNAUTHORIZED);
    }
}
