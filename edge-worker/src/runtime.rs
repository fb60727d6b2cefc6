//! The Workers runtime side: turns requests into [`crate::process`] calls and [`Reply`]s into
//! responses, talks to the queue and the ingest server. Kept thin; the decisions are elsewhere.

use serde_json::Value;
use waymark_protocol::edge::EdgeEnvelope;
use waymark_protocol::email::{stitch, Kind};
use waymark_protocol::intake::IntakePath;
use waymark_protocol::limits::MAX_BATCH_BYTES;
use worker::wasm_bindgen::JsCast;
use worker::worker_sys::{Message as MessageSys, MessageBatch as MessageBatchSys};
use worker::{
    console_error, console_log, console_warn, event, js_sys, wasm_bindgen::JsValue, web_sys,
    AbortSignal, Context, Date, Env, Fetch, Headers, MessageBuilder, Method, Queue,
    QueueContentType, Request, RequestInit, Response, Result,
};

use crate::config::{vars, Config};
use crate::consume::{
    group_by_key, is_dead_letter_queue, judge, parse_retry_after, retry_delay_secs, Answer, Verdict,
};
use crate::failover::Failover;
use crate::forward::{
    forward_body, queue_messages, signature_headers, EDGE_PATH, MAX_QUEUE_MESSAGE_BYTES,
};
use crate::http::{self, Body, Cors, Reply, Route};
use crate::process::{process, RequestParts};

/// How long a forward to the ingest server may take before it counts as failed.
const FORWARD_TIMEOUT_MS: u32 = 10_000;

fn config(env: &Env) -> std::result::Result<Config, crate::config::ConfigError> {
    // Secrets (EDGE_SECRET, EMAIL_KEYS) and vars are both strings on `env`.
    Config::from_vars(|name| {
        env.var(name)
            .or_else(|_| env.secret(name))
            .ok()
            .map(|v| v.to_string())
    })
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
async fn fetch(req: Request, env: Env, ctx: Context) -> Result<Response> {
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
        Route::Email(kind, token) => match (kind, method) {
            (Kind::Open, Method::Get) | (Kind::Click, Method::Get | Method::Head) => {
                email_hit(&req, kind, token, env.clone(), cfg.clone(), &ctx)?
            }
            (Kind::Open, _) => http::method_not_allowed("GET"),
            (Kind::Click, _) => http::method_not_allowed("GET, HEAD"),
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

/// A pixel fetch or a click: answered at once; the event (or a refused token's reason) goes
/// on after the answer, through the queue like every batch (`ctx.wait_until`).
fn email_hit(
    req: &Request,
    kind: Kind,
    token: &str,
    env: Env,
    cfg: Config,
    ctx: &Context,
) -> Result<Reply> {
    let headers = req.headers();
    let user_agent = headers.get("user-agent")?;
    let client_ip = headers.get("cf-connecting-ip")?;
    let secure = req.url()?.scheme() == "https";
    let method = req.method();
    let parts = crate::email::EmailRequest {
        kind,
        token,
        method: method.as_ref(),
        user_agent: user_agent.as_deref(),
        client_ip: client_ip.as_deref(),
        secure,
    };
    let Some(out) = crate::email::hit(
        &parts,
        &cf_json(req),
        &cfg,
        crate::email::bursts(),
        now_ms(),
    ) else {
        return Ok(http::not_found());
    };
    if let Some(envelope) = out.envelope {
        let verdict = out.verdict;
        ctx.wait_until(async move {
            let sent = match env.queue(vars::QUEUE) {
                Ok(q) => enqueue(&q, &envelope).await,
                Err(_) => forward(&env, &cfg, vec![envelope]).await,
            };
            if let Err(reason) = sent {
                console_error!("waymark edge: could not hand on an email {verdict}: {reason}");
            }
        });
    }
    Ok(out.reply)
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
    let cookie = headers.get("cookie")?;
    let secure = req.url()?.scheme() == "https";
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
        cookie: cookie.as_deref(),
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
    let reply = http::accepted(&processed.summary, queued, &cors);
    Ok(if processed.clear_marker {
        reply.header("set-cookie", stitch::clear_cookie(secure))
    } else {
        reply
    })
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

/// Where forwards go (the ingest servers, in the order they are tried) and the key they are
/// signed with.
struct Target {
    urls: Vec<String>,
    secret: String,
}

fn target(env: &Env, cfg: &Config) -> std::result::Result<Target, String> {
    if cfg.ingest_urls.is_empty() {
        return Err(format!(
            "{} (or {}): not set, nowhere to forward to",
            vars::INGEST_URL,
            vars::INGEST_URLS
        ));
    }
    let secret = env
        .secret(vars::EDGE_SECRET)
        .map(|s| s.to_string())
        .map_err(|_| format!("{}: the Worker secret is not set", vars::EDGE_SECRET))?;
    Ok(Target {
        urls: cfg
            .ingest_urls
            .iter()
            .map(|base| format!("{base}{EDGE_PATH}"))
            .collect(),
        secret,
    })
}

/// One signed `POST {url}` of `body` (an `EdgeForward`), signed afresh: the answer, and a line
/// for the log saying what came back.
async fn post(url: &str, secret: &str, body: &[u8]) -> (Answer, String) {
    let headers = Headers::new();
    let _ = headers.set("content-type", "application/json");
    for (name, value) in signature_headers(secret.as_bytes(), now_ms() / 1000, body) {
        let _ = headers.set(name, &value);
    }
    let mut init = RequestInit::new();
    init.with_method(Method::Post)
        .with_headers(headers)
        .with_body(Some(js_sys::Uint8Array::from(body).into()));
    let request = match Request::new_with_init(url, &init) {
        Ok(r) => r,
        Err(e) => return (Answer::NoAnswer, format!("{url}: {e}")),
    };
    let signal = AbortSignal::from(web_sys::AbortSignal::timeout_with_u32(FORWARD_TIMEOUT_MS));
    let mut resp = match Fetch::Request(request).send_with_signal(&signal).await {
        Ok(r) => r,
        Err(e) => return (Answer::NoAnswer, format!("{url}: {e}")),
    };
    let status = resp.status_code();
    let retry_after_secs = resp
        .headers()
        .get("retry-after")
        .ok()
        .flatten()
        .and_then(|v| parse_retry_after(&v, now_ms()));
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
    }
    let answer = Answer::Status {
        status: status as u16,
        retry_after_secs,
    };
    let detail = format!(
        "{url} answered {status}{}: {}",
        retry_after_secs
            .map(|s| format!(" (Retry-After {s} s)"))
            .unwrap_or_default(),
        text.chars().take(300).collect::<String>()
    );
    (answer, detail)
}

/// Sends `envelopes` as one forward to the ingest servers, moving on to the next server while
/// the answer is the server's failure ([`crate::failover`]): the verdict, and what each server
/// tried answered, for the log.
async fn send(
    t: &Target,
    failover: &mut Failover,
    envelopes: Vec<EdgeEnvelope>,
) -> (Verdict, String) {
    let body = forward_body(envelopes);
    let mut details = Vec::new();
    loop {
        let url = &t.urls[failover.server()];
        let (answer, detail) = post(url, &t.secret, &body).await;
        let verdict = judge(answer);
        let done = failover.record(verdict);
        if done.is_none() {
            console_warn!(
                "waymark edge: {detail}; failing over to {}",
                t.urls[failover.server()]
            );
        }
        details.push(detail);
        if let Some(v) = done {
            return (v, details.join("; then "));
        }
    }
}

/// The direct path (no queue bound): one forward, failing over between the ingest servers;
/// `Err` names what went wrong.
async fn forward(
    env: &Env,
    cfg: &Config,
    envelopes: Vec<EdgeEnvelope>,
) -> std::result::Result<(), String> {
    let t = target(env, cfg)?;
    match send(&t, &mut Failover::new(t.urls.len()), envelopes).await {
        (Verdict::Delivered, _) => Ok(()),
        (_, detail) => Err(detail),
    }
}

// The queue handler is exported by hand rather than with `#[event(queue)]`: worker 0.8.7's
// message types do not expose `attempts`, which the retry schedule is computed from, so the
// consumer works on the runtime's message objects directly. This is what the macro generates,
// minus the conversion.
mod queue_export {
    use worker::wasm_bindgen::prelude::wasm_bindgen;
    use worker::wasm_bindgen::JsValue;

    #[wasm_bindgen(
        wasm_bindgen = ::worker::wasm_bindgen,
        wasm_bindgen_futures = ::worker::wasm_bindgen_futures,
        js_sys = ::worker::js_sys
    )]
    pub async fn queue(
        batch: worker::worker_sys::MessageBatch,
        env: worker::Env,
        _ctx: worker::worker_sys::Context,
    ) -> Result<JsValue, JsValue> {
        super::consume(batch, env).await;
        Ok(JsValue::UNDEFINED)
    }
}

/// One delivered message: the runtime's object, its delivery number and its body.
struct Delivered {
    msg: MessageSys,
    id: String,
    attempts: u32,
    /// The body when it is text (every message this worker sends), else empty.
    body: String,
    is_text: bool,
}

impl Delivered {
    fn read(msg: MessageSys) -> (Self, std::result::Result<EdgeEnvelope, String>) {
        let id = msg.id().map(String::from).unwrap_or_default();
        // `attempts` is 1 on the first delivery. Every workerd since 2023 has it; if it were
        // missing the schedule would stay at its first step, so say so.
        let attempts = js_sys::Reflect::get(&msg, &JsValue::from_str("attempts"))
            .ok()
            .and_then(|v| v.as_f64())
            .map(|a| a.clamp(1.0, u32::MAX as f64) as u32);
        if attempts.is_none() {
            console_warn!("waymark edge: queue message {id}: no `attempts` field; counted as the first delivery");
        }
        let body = msg.body().ok().and_then(|b| b.as_string());
        let parsed = match &body {
            Some(text) => serde_json::from_str::<EdgeEnvelope>(text).map_err(|e| e.to_string()),
            None => Err("the body is not text".to_string()),
        };
        let d = Delivered {
            msg,
            id,
            attempts: attempts.unwrap_or(1),
            is_text: body.is_some(),
            body: body.unwrap_or_default(),
        };
        (d, parsed)
    }

    fn ack(&self) {
        if let Err(e) = self.msg.ack() {
            console_error!("waymark edge: queue message {}: ack failed: {e:?}", self.id);
        }
    }

    /// Redelivery after the schedule's delay (or `Retry-After`, when longer).
    fn retry(&self, retry_after_secs: Option<u32>) {
        let delay = retry_delay_secs(self.attempts, retry_after_secs);
        let opts = js_sys::Object::new();
        let _ = js_sys::Reflect::set(
            &opts,
            &JsValue::from_str("delaySeconds"),
            &JsValue::from(delay),
        );
        if let Err(e) = self.msg.retry(opts.into()) {
            // Not acknowledged either, so Queues delivers it again after `retry_delay`.
            console_error!(
                "waymark edge: queue message {}: retry failed: {e:?}",
                self.id
            );
        }
    }
}

/// What happens to messages that were not stored.
enum Redeliver<'a> {
    /// Ask Queues to deliver them again (counts towards `max_retries`).
    Retry,
    /// A replay from the dead-letter queue: put them back on the main queue with the same delay
    /// and acknowledge them here, so the dead-letter queue's own retry limit never deletes one.
    /// Falls back to a retry here if the send fails.
    PutBack(&'a Queue),
}

impl Redeliver<'_> {
    async fn apply(&self, d: &Delivered, retry_after_secs: Option<u32>) {
        match self {
            Redeliver::Retry => d.retry(retry_after_secs),
            Redeliver::PutBack(q) => {
                let delay = retry_delay_secs(d.attempts, retry_after_secs);
                let m = MessageBuilder::new(d.body.clone())
                    .content_type(QueueContentType::Text)
                    .delay_seconds(delay)
                    .build();
                match q.send(m).await {
                    Ok(()) => {
                        d.ack();
                        console_log!(
                            "waymark edge: put dead letter {} back on {} (next delivery in {delay} s)",
                            d.id,
                            vars::QUEUE
                        );
                    }
                    Err(e) => {
                        console_error!(
                            "waymark edge: could not put dead letter {} back on {}: {e}; retrying it where it is",
                            d.id,
                            vars::QUEUE
                        );
                        d.retry(retry_after_secs);
                    }
                }
            }
        }
    }
}

/// The queue consumer. A delivery is split by write key and each group forwarded as its own
/// signed request; a group is acknowledged only on a 2xx, and every other message is delivered
/// again after a growing delay (see [`crate::consume`] for the answers, the schedule and the
/// limits). A batch from the dead-letter queue is replayed the same way.
async fn consume(batch: MessageBatchSys, env: Env) {
    let queue_name = batch.queue().map(String::from).unwrap_or_default();
    let replay = is_dead_letter_queue(&queue_name);
    let main_queue = if replay {
        env.queue(vars::QUEUE).ok()
    } else {
        None
    };
    let redeliver = match &main_queue {
        Some(q) => Redeliver::PutBack(q),
        None => {
            if replay {
                console_warn!(
                    "waymark edge: replaying {queue_name} without a {} binding: what still fails is retried where it is, and deleted after that queue's max_retries",
                    vars::QUEUE
                );
            }
            Redeliver::Retry
        }
    };
    let raw: Vec<MessageSys> = match batch.messages() {
        Ok(a) => a.iter().map(|v| v.unchecked_into::<MessageSys>()).collect(),
        Err(e) => {
            console_error!("waymark edge: queue {queue_name}: cannot read the batch: {e:?}; Queues will deliver it again");
            return;
        }
    };
    let mut messages = Vec::with_capacity(raw.len());
    let mut envelopes = Vec::with_capacity(raw.len());
    for m in raw {
        let (d, parsed) = Delivered::read(m);
        match parsed {
            Ok(e) => {
                messages.push(d);
                envelopes.push(e);
            }
            Err(e) => {
                // Not ours or damaged: never dropped silently. Retries end in the dead-letter
                // queue; a replay puts a text one back on the main queue like any other. (One
                // that is not even text was not sent by this worker, and is retried where it is,
                // since putting it back would not keep its body.)
                console_error!(
                    "waymark edge: queue message {} on {queue_name} is not an envelope: {e}",
                    d.id
                );
                if d.is_text {
                    redeliver.apply(&d, None).await;
                } else {
                    d.retry(None);
                }
            }
        }
    }
    if messages.is_empty() {
        return;
    }
    if replay {
        console_log!(
            "waymark edge: replaying {} message(s) from the dead-letter queue {queue_name}",
            messages.len()
        );
    }
    let target = match config(&env)
        .map_err(|e| e.to_string())
        .and_then(|cfg| target(&env, &cfg))
    {
        Ok(t) => t,
        Err(e) => {
            console_error!("waymark edge: {e}; the queued events are kept and retried");
            for d in &messages {
                redeliver.apply(d, None).await;
            }
            return;
        }
    };

    let groups = group_by_key(envelopes.iter().map(|e| e.write_key.as_str()));
    // Which ingest server the next request goes to; each delivery starts at the first.
    let mut failover = Failover::new(target.urls.len());
    // A failure of every server (or one that says the configuration is wrong), once seen,
    // stands for the groups not yet sent.
    let mut server_down: Option<Verdict> = None;
    // Groups to send; a refused group of several comes back as one group per message.
    let mut pending: std::collections::VecDeque<Vec<usize>> = groups.into();
    while let Some(group) = pending.pop_front() {
        let (verdict, detail) = match server_down {
            Some(v) => (v, None),
            None => {
                let batch: Vec<EdgeEnvelope> =
                    group.iter().map(|&i| envelopes[i].clone()).collect();
                let (verdict, detail) = send(&target, &mut failover, batch).await;
                (verdict, Some(detail))
            }
        };
        match verdict {
            Verdict::Delivered => group.iter().for_each(|&i| messages[i].ack()),
            Verdict::Failed {
                failure,
                retry_after_secs,
            } => {
                let split = failure.split_group(group.len());
                if let Some(detail) = &detail {
                    let next = if split {
                        "sending each of them on its own"
                    } else {
                        "Queues will redeliver them"
                    };
                    console_error!(
                        "waymark edge: forward failed for {} message(s) of write key {:?}, {next}: {}; {detail}",
                        group.len(),
                        envelopes[group[0]].write_key,
                        failure.explain()
                    );
                }
                if split {
                    for &i in group.iter().rev() {
                        pending.push_front(vec![i]);
                    }
                    continue;
                }
                if failure.server_wide() {
                    server_down = Some(verdict);
                }
                for &i in &group {
                    redeliver.apply(&messages[i], retry_after_secs).await;
                }
            }
        }
    }
}
