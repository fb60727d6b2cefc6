//! The load of a chaos scenario: concurrent clients sending Segment batches with unique message
//! ids to the ingest server, paced, recording which batches were acknowledged (200).
//!
//! A client behaves as a careful SDK does: a 503 or 429 is retried after its `Retry-After`, a
//! connection error after a short growing pause; a batch counts as acknowledged only once a 200
//! says so. When the load stops, a client still retrying gets a grace period, then gives its
//! batch up (it was never acknowledged; if the server stored it anyway it shows up as "extra").

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use waymark_protocol::time::format_rfc3339;

/// The site, keys and names every scenario's server is configured with.
pub const SITE: &str = "chaos";
pub const WRITE_KEY: &str = "wk_chaos";
pub const READ_KEY: &str = "rk_chaos";

/// How the load is shaped.
#[derive(Clone)]
pub struct Shape {
    /// Prefix of every message id and visitor id of the scenario (letters and digits only).
    pub run: String,
    pub clients: usize,
    pub batch: usize,
    /// Batches per second, all clients together.
    pub rate: u32,
    /// Visitors the events are spread over.
    pub visitors: usize,
}

impl Shape {
    pub fn message_id(&self, client: usize, seq: u64, i: usize) -> String {
        format!("{}-{client}-{seq}-{i}", self.run)
    }

    pub fn visitor(&self, k: usize) -> String {
        format!("{}-v{k}", self.run)
    }

    fn visitor_of(&self, client: usize, seq: u64, i: usize) -> String {
        let k = (client * 7919 + seq as usize * 31 + i * 17) % self.visitors;
        self.visitor(k)
    }

    /// The body of batch `seq` of `client`: page views, product views, adds, clicks.
    pub fn body(&self, client: usize, seq: u64, now_ms: i64) -> String {
        let at = format_rfc3339(now_ms - 300);
        let events: Vec<String> = (0..self.batch)
            .map(|i| {
                let id = self.message_id(client, seq, i);
                let visitor = self.visitor_of(client, seq, i);
                let product = (seq as usize * 13 + i) % 200;
                let rest = match i % 5 {
                    0 | 1 => format!(r#""type":"page","name":"Product {product}""#),
                    2 => format!(
                        r#""type":"track","event":"Product Viewed","properties":{{"product_id":"p-{product}","price":19.9,"currency":"EUR"}}"#
                    ),
                    3 => format!(
                        r#""type":"track","event":"Product Added","properties":{{"product_id":"p-{product}","price":19.9,"quantity":1,"currency":"EUR"}}"#
                    ),
                    _ => r#""type":"track","event":"$click","properties":{"kind":"link","text":"More","href":"https://shop.example/c/shoes","outbound":false}"#.to_string(),
                };
                format!(
                    r#"{{"messageId":"{id}","anonymousId":"{visitor}","originalTimestamp":"{at}",{rest},"context":{{"page":{{"url":"https://shop.example/p/{product}?utm_source=news&utm_term=shoes","path":"/p/{product}","title":"Product {product}"}},"userAgent":"Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36","locale":"de-DE","sessionId":"{visitor}-s1"}}}}"#
                )
            })
            .collect();
        format!(
            r#"{{"writeKey":"{WRITE_KEY}","sentAt":"{}","batch":[{}]}}"#,
            format_rfc3339(now_ms),
            events.join(",")
        )
    }
}

/// What one client saw.
#[derive(Default, Debug)]
pub struct ClientStats {
    /// Sequence numbers of the batches answered 200.
    pub acked: Vec<u64>,
    pub attempts: u64,
    pub connection_errors: u64,
    pub status_503: u64,
    pub status_429: u64,
    /// 503/429 answers that carried a `Retry-After`.
    pub retry_after: u64,
    /// Other statuses (never expected: the batches are valid), with the first body.
    pub unexpected: Vec<(u16, String)>,
    /// 200 answers that listed rejected events (never expected either).
    pub partial: u64,
    /// Batches given up when the load stopped (never acknowledged).
    pub abandoned: u64,
}

impl ClientStats {
    fn merge(&mut self, o: ClientStats) {
        self.attempts += o.attempts;
        self.connection_errors += o.connection_errors;
        self.status_503 += o.status_503;
        self.status_429 += o.status_429;
        self.retry_after += o.retry_after;
        self.unexpected.extend(o.unexpected);
        self.partial += o.partial;
        self.abandoned += o.abandoned;
    }
}

/// Live counters, for progress and for scenarios that wait for something to happen.
#[derive(Default)]
pub struct Live {
    pub acked_batches: AtomicU64,
    pub overloaded: AtomicU64,
    pub connection_errors: AtomicU64,
}

pub struct Load {
    shape: Shape,
    stop: Arc<AtomicBool>,
    /// When a stopped client gives up its batch (ms after `started`).
    give_up_at: Arc<AtomicU64>,
    started: Instant,
    pub live: Arc<Live>,
    threads: Vec<JoinHandle<ClientStats>>,
}

/// What the load did, all clients together.
pub struct Outcome {
    pub stats: ClientStats,
    /// Every acknowledged message id.
    pub acked: Vec<String>,
    pub secs: f64,
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(30)))
        .timeout_connect(Some(Duration::from_secs(2)))
        .build()
        .into()
}

impl Load {
    /// Starts the clients against `url` (`http://127.0.0.1:PORT/v1/batch`).
    pub fn start(shape: &Shape, url: &str) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let give_up_at = Arc::new(AtomicU64::new(u64::MAX));
        let live = Arc::new(Live::default());
        let started = Instant::now();
        let interval = Duration::from_secs_f64(shape.clients as f64 / shape.rate.max(1) as f64);
        let threads = (0..shape.clients)
            .map(|c| {
                let (shape, url, stop, give_up_at, live) = (
                    shape.clone(),
                    url.to_string(),
                    stop.clone(),
                    give_up_at.clone(),
                    live.clone(),
                );
                std::thread::spawn(move || {
                    client(
                        c,
                        &shape,
                        &url,
                        interval,
                        started,
                        &stop,
                        &give_up_at,
                        &live,
                    )
                })
            })
            .collect();
        Load {
            shape: shape.clone(),
            stop,
            give_up_at,
            started,
            live,
            threads,
        }
    }

    /// Stops sending new batches; a client still retrying one gets `grace`, then gives it up.
    pub fn stop(self, grace: Duration) -> Outcome {
        let give_up = self.started.elapsed() + grace;
        self.give_up_at
            .store(give_up.as_millis() as u64, Ordering::SeqCst);
        self.stop.store(true, Ordering::SeqCst);
        let mut stats = ClientStats::default();
        let mut acked = Vec::new();
        for (c, t) in self.threads.into_iter().enumerate() {
            let s = t.join().unwrap_or_else(|_| ClientStats {
                unexpected: vec![(0, format!("client {c} panicked"))],
                ..ClientStats::default()
            });
            for &seq in &s.acked {
                for i in 0..self.shape.batch {
                    acked.push(self.shape.message_id(c, seq, i));
                }
            }
            stats.acked.extend(&s.acked);
            stats.merge(s);
        }
        Outcome {
            stats,
            acked,
            secs: self.started.elapsed().as_secs_f64(),
        }
    }
}

/// Sleeps up to `d`, waking early once the batch is to be given up.
fn pause(d: Duration, started: Instant, stop: &AtomicBool, give_up_at: &AtomicU64) -> bool {
    let until = Instant::now() + d;
    while Instant::now() < until {
        if stop.load(Ordering::SeqCst)
            && started.elapsed().as_millis() as u64 >= give_up_at.load(Ordering::SeqCst)
        {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20).min(until - Instant::now()));
    }
    true
}

#[allow(clippy::too_many_arguments)]
fn client(
    c: usize,
    shape: &Shape,
    url: &str,
    interval: Duration,
    started: Instant,
    stop: &AtomicBool,
    give_up_at: &AtomicU64,
    live: &Live,
) -> ClientStats {
    let agent = agent();
    let mut s = ClientStats::default();
    // Clients start spread over one interval so they do not send in lockstep.
    let mut next = started + interval.mul_f64(c as f64 / shape.clients as f64);
    let mut seq = 0u64;
    'batches: while !stop.load(Ordering::SeqCst) {
        let now = Instant::now();
        if next > now {
            std::thread::sleep((next - now).min(Duration::from_millis(50)));
            continue;
        }
        // Paced, without bursting to catch up after a stall.
        next = (next + interval).max(now);
        let body = shape.body(c, seq, waymark_ingest::clock::now_ms());
        let mut backoff = Duration::from_millis(100);
        loop {
            s.attempts += 1;
            let r = agent
                .post(url)
                .header("content-type", "application/json")
                .send(body.as_str());
            match r {
                Ok(mut resp) => {
                    let status = resp.status().as_u16();
                    let retry_after = resp
                        .headers()
                        .get("retry-after")
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| v.trim().parse::<u64>().ok());
                    let text = resp.body_mut().read_to_string().unwrap_or_default();
                    match status {
                        200 => {
                            let rejected = serde_json::from_str::<serde_json::Value>(&text)
                                .ok()
                                .and_then(|v| v["rejected"].as_array().map(Vec::len))
                                .unwrap_or(0);
                            if rejected > 0 {
                                s.partial += 1;
                            }
                            s.acked.push(seq);
                            live.acked_batches.fetch_add(1, Ordering::Relaxed);
                            break;
                        }
                        503 | 429 => {
                            if status == 503 {
                                s.status_503 += 1;
                            } else {
                                s.status_429 += 1;
                            }
                            live.overloaded.fetch_add(1, Ordering::Relaxed);
                            if retry_after.is_some() {
                                s.retry_after += 1;
                            }
                            let wait = Duration::from_secs(retry_after.unwrap_or(1).clamp(1, 30));
                            if !pause(wait, started, stop, give_up_at) {
                                s.abandoned += 1;
                                break 'batches;
                            }
                        }
                        other => {
                            if s.unexpected.len() < 3 {
                                s.unexpected.push((other, text.chars().take(300).collect()));
                            }
                            break;
                        }
                    }
                }
                Err(_) => {
                    s.connection_errors += 1;
                    live.connection_errors.fetch_add(1, Ordering::Relaxed);
                    if !pause(backoff, started, stop, give_up_at) {
                        s.abandoned += 1;
                        break 'batches;
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(1));
                }
            }
            if stop.load(Ordering::SeqCst)
                && started.elapsed().as_millis() as u64 >= give_up_at.load(Ordering::SeqCst)
            {
                s.abandoned += 1;
                break 'batches;
            }
        }
        seq += 1;
    }
    s
}
