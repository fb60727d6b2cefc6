//! The Workers runtime side: turns requests into [`crate::process`] calls and [`Reply`]s into
//! responses, talks to the queue and the ingest server. Kept thin; the decisions are elsewhere.

use serde_json::Value;
use waymark_protocol::edge::EdgeEnvelope;
use waymark_protocol::intake::IntakePath;
use waymark_protocol::limits::MAX_BATCH_BYTES;
use worker::{
    console_error, console_warn, event, js_sys, wasm_bindgen::JsValue, web_sys, AbortSignal,
    Context, Date, Env, Fetch, Headers, MessageBatch, MessageBuilder, MessageExt, Method, Queue,
    QueueContentType, RawMessage, Request, RequestInit, Response, Result,
};

use crate::config::{vars, Config};
use crate::forward::{
    forward_body, queue_messages, signature_headers, EDGE_PATH, MAX_QUEUE_MESSAGE_BYTES,
};
use crate::http::{self, Body, Cors, Reply, Route};
use crate::process::{process, RequestParts};

/// How long a forward to the ingest server may take before it counts as failed.
const FORWARD_TIMEOUT_MS: u32 = 10_000;

fn config(env: &Env) -> std::result::Result<Config, crate::config::ConfigError> {
    Config::from_vars(|name| env.var(name).ok().map(|v| v.to_string()))
}

fn respond(reply: Reply) -> Result<Response> {
    let headers = Headers::new();
    for (name, value) in &reply.headers {
        headers.append(name, value)?;
    }
    let resp = match reply.body {
        Body::Empty => Response::empty()?,
        Body::Json(s) => Response::ok(s)?,
        Body::Static(b) => Response::from_bytes(b.to_vec())?,
    };
    Ok(resp.with_status(reply.status).with_headers(headers))
}

/// `request.cf` as JSON (`Null` when absent), read field by field later by [`crate::cf`].
fn cf_json(req: &Request) -> Value {
    let Ok(cf) = js_sys::Reflect::get(req.inner(), &JsValue::from_str("cf")) else {
        return Value::Null;
    };
    if cf.is_undefined() || cf.is_null() {
        return Value::Null;
    }
    js_sys::JSON::stringify(&cf)
        .ok()
        .and_then(|s| s.as_string())
        .and_then(|s| serde_json::from_str(&s).ok())
        .unwrap_or(Value::Null)
}

fn now_ms() -> i64 {
    Date::now().as_millis() as i64
}

#[event(fetch)]
async fn fetch(req: Request, env: Env, _ctx: Context) -> Result<Response> {
    let cfg = match config(&env) {
        Ok(c) => c,
        Err(e) => return respond(http::misconfigured(&e)),
    };
    let path = req.path();
    let method = req.method();
    let reply = match http::route(&path, &cfg.prefix) {
        Route::Intake(kind) => match method {
            Method::Options => {
                let origin = req.headers().get("origin")?;
                let asked = req.headers().get("access-control-request-headers")?;
                http::preflight(&http::cors(origin.as_deref(), &cfg), asked.as_deref())
            }
            Method::Post => intake(req, kind, &env, &cfg).await?,
            _ => http::method_not_allowed("POST, OPTIONS"),
        },
        route => match method {
            Method::Get | Method::Head => {
                let inm = req.headers().get("if-none-match")?;
                let mut r = http::serve_static(route, &cfg.prefix, inm.as_deref());
                if method == Method::Head {
                    r.body = Body::Empty;
                }
                r
            }
            _ if route == Route::NotFound => http::not_found(),
            _ => http::method_not_allowed("GET, HEAD"),
        },
    };
    respond(reply)
}

async fn intake(mut req: Request, kind: IntakePath, env: &Env, cfg: &Config) -> Result<Reply> {
    let headers = req.headers();
    let cors = http::cors(headers.get("origin")?.as_deref(), cfg);
    if let Cors::Refused(o) = &cors {
        return Ok(http::origin_refused(o));
    }
    // Refuse an announced oversized body before reading it.
    if let Some(len) = headers
        .get("content-length")?
        .and_then(|l| l.trim().parse::<usize>().ok())
    {
        if len > MAX_BATCH_BYTES {
            return Ok(http::too_large(len, MAX_BATCH_BYTES, &cors));
        }
    }
    let user_agent = headers.get("user-agent")?;
    let client_ip = headers.get("cf-connecting-ip")?;
    let sec_gpc = headers.get("sec-gpc")?;
    let authorization = headers.get("authorization")?;
    let cf = cf_json(&req);
    let query = req.url()?.query().map(str::to_string);
    let body = req.bytes().await?;
    let parts = RequestParts {
        body: &body,
        user_agent: user_agent.as_deref(),
        client_ip: client_ip.as_deref(),
        sec_gpc: sec_gpc.as_deref(),
        authorization: authorization.as_deref(),
        query: query.as_deref(),
        kind,
    };
    let processed = match process(&parts, &cf, cfg, now_ms()) {
        Ok(p) => p,
        Err(e) => return Ok(http::refused(&e, &cors)),
    };
    let queue = env.queue(vars::QUEUE).ok();
    let queued = queue.is_some();
    if let Some(envelope) = processed.envelope {
        let sent = match &queue {
            Some(q) => enqueue(q, &envelope).await,
            None => forward(env, cfg, vec![envelope]).await,
        };
        if let Err(reason) = sent {
            // The details (internal URLs, the ingest server's words) go to the log, not the client.
            console_error!("waymark edge: could not hand on a batch: {reason}");
            let public = if queued {
                "the event queue is unavailable; send the batch again later"
            } else {
                "the ingest server is unavailable; send the batch again later"
            };
            return Ok(http::unavailable(public, &cors));
        }
    }
    Ok(http::accepted(&processed.summary, queued, &cors))
}

/// Sends the envelope as JSON text (typed text, not a JS object: see TOOLCHAIN.md on `Value`s).
async fn enqueue(q: &Queue, envelope: &EdgeEnvelope) -> std::result::Result<(), String> {
    for msg in queue_messages(envelope, MAX_QUEUE_MESSAGE_BYTES) {
        let m = MessageBuilder::new(msg)
            .content_type(QueueContentType::Text)
            .build();
        q.send(m)
            .await
            .map_err(|e| format!("queue {}: send failed: {e}", vars::QUEUE))?;
    }
    Ok(())
}

/// One signed `POST {INGEST_URL}/v1/edge` with every envelope; `Err` names what went wrong.
async fn forward(
    env: &Env,
    cfg: &Config,
    envelopes: Vec<EdgeEnvelope>,
) -> std::result::Result<(), String> {
    let base = cfg
        .ingest_url
        .as_deref()
        .ok_or_else(|| format!("{}: not set, nowhere to forward to", vars::INGEST_URL))?;
    let secret = env
        .secret(vars::EDGE_SECRET)
        .map(|s| s.to_string())
        .map_err(|_| format!("{}: the Worker secret is not set", vars::EDGE_SECRET))?;
    let body = forward_body(envelopes);
    let headers = Headers::new();
    let _ = headers.set("content-type", "application/json");
    for (name, value) in signature_headers(secret.as_bytes(), now_ms() / 1000, &body) {
        let _ = headers.set(name, &value);
    }
    let mut init = RequestInit::new();
    init.with_method(Method::Post)
        .with_headers(headers)
        .with_body(Some(js_sys::Uint8Array::from(body.as_slice()).into()));
    let url = format!("{base}{EDGE_PATH}");
    let request = Request::new_with_init(&url, &init).map_err(|e| format!("{url}: {e}"))?;
    let signal = AbortSignal::from(web_sys::AbortSignal::timeout_with_u32(FORWARD_TIMEOUT_MS));
    let mut resp = Fetch::Request(request)
        .send_with_signal(&signal)
        .await
        .map_err(|e| format!("{url}: {e}"))?;
    let status = resp.status_code();
    let text = resp.text().await.unwrap_or_default();
    if (200..300).contains(&status) {
        // Events the ingest server refused (an unknown write key, say) are its decision, not a
        // delivery failure; make them visible in `wrangler tail`.
        let rejected = serde_json::from_str::<Value>(&text)
            .ok()
            .and_then(|v| v.get("rejected").and_then(Value::as_array).map(Vec::len))
            .unwrap_or(0);
        if rejected > 0 {
            console_warn!(
                "waymark edge: the ingest server refused {rejected} event(s): {}",
                text.chars().take(500).collect::<String>()
            );
        }
        return Ok(());
    }
    Err(format!(
        "{url} answered {status}: {}",
        text.chars().take(300).collect::<String>()
    ))
}

/// The queue consumer: one signed forward per delivered batch. On failure every message is
/// retried, so Queues redelivers it (and after `max_retries` moves it to the dead-letter queue).
#[event(queue)]
async fn consume(batch: MessageBatch<String>, env: Env, _ctx: Context) -> Result<()> {
    let messages: Vec<RawMessage> = batch.raw_iter().collect();
    let cfg = match config(&env) {
        Ok(c) => c,
        Err(e) => {
            console_error!("waymark edge: {e}; retrying the batch");
            batch.retry_all();
            return Ok(());
        }
    };
    let mut envelopes = Vec::with_capacity(messages.len());
    let mut good = Vec::with_capacity(messages.len());
    for m in messages {
        // Read each body on its own: one foreign or damaged message must not hold up the rest.
        let parsed = match m.body().as_string() {
            Some(text) => serde_json::from_str::<EdgeEnvelope>(&text).map_err(|e| e.to_string()),
            None => Err("the body is not text".to_string()),
        };
        match parsed {
            Ok(e) => {
                envelopes.push(e);
                good.push(m);
            }
            Err(e) => {
                // Not ours or damaged: never dropped silently; retries end in the dead-letter queue.
                console_error!(
                    "waymark edge: queue message {} is not an envelope: {e}",
                    m.id()
                );
                m.retry();
            }
        }
    }
    if envelopes.is_empty() {
        return Ok(());
    }
    match forward(&env, &cfg, envelopes).await {
        Ok(()) => good.iter().for_each(|m| m.ack()),
        Err(reason) => {
            console_error!("waymark edge: forward failed, Queues will redeliver: {reason}");
            good.iter().for_each(|m| m.retry());
        }
    }
    Ok(())
}
