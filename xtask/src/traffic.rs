//! Synthetic visitors for `cargo xtask demo --traffic N`: each one browses the demo shop the way
//! the tag would report it (page views, product views with engaged time, clicks, some carts,
//! some orders, some logins), sent as tag batches through the edge worker's first-party intake.
//! The last tenth of the visitors come after a broken release of the shop: its add-to-cart
//! event is misspelled (`Product Add`) and its orders lack `revenue`, so the data quality checks
//! have something real to show. With [`Email`], some visitors are also readers of the demo
//! campaign: their mail client (or a
//! machine on its behalf) fetches the open pixel, and some click a tracked link (a person, or a
//! link scanner), through the tracking endpoints, as a mail reader would.

use std::io::Write as _;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use waymark_ingest::clock::now_ms;

/// A small deterministic generator (xorshift64*), seeded from the clock.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
    fn hex(&mut self, len: usize) -> String {
        let mut s = String::with_capacity(len);
        while s.len() < len {
            s.push_str(&format!("{:016x}", self.next()));
        }
        s.truncate(len);
        s
    }
}

/// The demo shop's catalogue (the same as demo/shop.mjs).
const PRODUCTS: &[(&str, &str, f64)] = &[
    ("p-100", "Trail Runner Shoe", 89.0),
    ("p-101", "Merino Running Tee", 45.0),
    ("p-102", "Waterproof Shell Jacket", 149.0),
    ("p-103", "Running Socks (3 pack)", 18.5),
    ("p-104", "Hydration Vest", 72.0),
    ("p-105", "Thermal Tights", 59.0),
];

/// Browsers the visitors use (a desktop and a phone or two), so profiles show devices.
const USER_AGENTS: &[&str] = &[
    "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_5 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.5 Mobile/15E148 Safari/604.1",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64; rv:132.0) Gecko/20100101 Firefox/132.0",
    "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Mobile Safari/537.36",
];

fn rfc3339(ms: i64) -> String {
    waymark_protocol::time::format_rfc3339(ms)
}

fn json_str(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

struct Visitor {
    anon: String,
    session: String,
    user: Option<String>,
    events: Vec<String>,
    clock: i64,
    seq: u32,
}

impl Visitor {
    fn event(&mut self, rng: &mut Rng, kind: &str, body: &str, path: &str, title: &str) {
        self.clock += 2_000 + rng.below(20_000) as i64;
        self.seq += 1;
        let user = self
            .user
            .as_ref()
            .map(|u| format!(r#","userId":{}"#, json_str(u)))
            .unwrap_or_default();
        self.events.push(format!(
            r#"{{"type":"{kind}","messageId":"traffic-{}-{}","anonymousId":"{}"{user},"originalTimestamp":"{}",{body}"context":{{"sessionId":"{}","page":{{"url":"http://127.0.0.1/{path}","path":"/{path}","title":{}}},"library":{{"name":"waymark-traffic","version":"0.1.0"}}}}}}"#,
            self.anon,
            self.seq,
            self.anon,
            rfc3339(self.clock),
            self.session,
            json_str(title),
        ));
    }
}

/// The demo site's email tracking: where its endpoints are and the key tokens are signed with.
pub struct Email<'a> {
    pub site: &'a str,
    /// The tracking endpoints' base (`{base_url}/e/o/...`, `{base_url}/e/c/...`).
    pub base_url: &'a str,
    pub key: &'a waymark_protocol::email::SigningKey,
}

/// The User-Agents of mail clients and of the machines that fetch for them: Apple Mail Privacy
/// Protection's bare agent and Gmail's image proxy are machines; the rest are people.
const MAIL_AGENTS: &[&str] = &[
    "Mozilla/5.0",
    "Mozilla/5.0 (Windows NT 5.1; rv:11.0) Gecko Firefox/11.0 (via ggpht.com GoogleImageProxy)",
    "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Thunderbird/128.5.0",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_5 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Mobile/15E148",
];

/// A link scanner's agent (Mimecast URL Protect).
const SCANNER_AGENT: &str = "Mozilla/5.0 (compatible; Mimecast URL Protect)";

/// What the email part of a run did, for the progress line.
#[derive(Default)]
struct Mailed {
    sent: usize,
    opens: usize,
    clicks: usize,
    scans: usize,
}

/// One reader's message of the demo campaign, sent `sent_ms` ago-ish: the pixel fetched
/// (maybe by a machine), maybe a scanner's and a person's click on the product link.
fn read_email(
    agent: &ureq::Agent,
    rng: &mut Rng,
    e: &Email<'_>,
    reader: &str,
    target: &str,
    sent_ms: i64,
    done: &mut Mailed,
) -> Result<()> {
    let signer = waymark_email::Signer {
        site: e.site,
        base_url: e.base_url,
        key: e.key,
        now_secs: (sent_ms / 1000) as u64,
    };
    let message = waymark_email::Message {
        recipient: waymark_email::Recipient {
            user_id: reader.to_string(),
            email: reader.to_string(),
        },
        campaign: "november-sale".into(),
        send_id: format!("send-{}", rng.hex(8)),
    };
    let tracked = waymark_email::track(&signer, &message, &[target.to_string()])
        .map_err(|e| anyhow::anyhow!("signing the demo email: {e}"))?;
    done.sent += 1;
    let fetch = |method: &str, url: &str, ua: &str, want: u16| -> Result<()> {
        let res = match method {
            "HEAD" => agent.head(url).header("user-agent", ua).call(),
            _ => agent.get(url).header("user-agent", ua).call(),
        }
        .with_context(|| format!("{method} {url}"))?;
        let status = res.status().as_u16();
        if status != want {
            bail!("{method} {url} answered {status}, expected {want}");
        }
        Ok(())
    };
    if rng.chance(70) {
        let ua = MAIL_AGENTS[rng.below(MAIL_AGENTS.len() as u64) as usize];
        fetch("GET", &tracked.pixel, ua, 200)?;
        done.opens += 1;
    }
    let link = &tracked.links[0].tracked;
    if rng.chance(15) {
        let method = if rng.chance(50) { "HEAD" } else { "GET" };
        fetch(method, link, SCANNER_AGENT, 302)?;
        done.scans += 1;
    }
    if rng.chance(35) {
        let ua = USER_AGENTS[rng.below(USER_AGENTS.len() as u64) as usize];
        fetch("GET", link, ua, 302)?;
        done.clicks += 1;
    }
    Ok(())
}

/// Sends `n` visitors through `shop`'s edge intake, showing progress; with `email`, some of
/// the visitors who log in were sent the demo campaign first.
pub fn drive(shop: &str, write_key: &str, n: usize, mail: Option<&Email<'_>>) -> Result<()> {
    let mut rng = Rng(now_ms() as u64 | 1);
    let url = format!("{shop}/wm/v1/batch");
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(Duration::from_secs(10)))
        .http_status_as_error(false)
        .max_redirects(0)
        .max_redirects_will_error(false)
        .build()
        .into();
    let (mut carts, mut orders, mut logins, mut sent) = (0, 0, 0, 0usize);
    let mut mailed = Mailed::default();
    // Visitors from here on meet the broken release (see the module doc).
    let broken_from = n - n / 10;
    for i in 0..n {
        let broken = i >= broken_from;
        let mut v = Visitor {
            anon: rng.hex(16),
            session: rng.hex(12),
            user: None,
            events: Vec::new(),
            // Visitors arrive spread over the last two days (the last one in the last minutes).
            clock: now_ms() - 3_600_000 - rng.below(2 * 86_400_000) as i64,
            seq: 0,
        };
        v.event(&mut rng, "page", r#""name":"Home","#, "", "Waymark Outdoor");
        let views = 1 + rng.below(4);
        let mut last = PRODUCTS[0];
        for _ in 0..views {
            // popular products first: a skewed pick
            let p = PRODUCTS[(rng.below(PRODUCTS.len() as u64) * rng.below(PRODUCTS.len() as u64)
                / PRODUCTS.len() as u64) as usize];
            last = p;
            let path = format!("products/{}", p.0);
            v.event(
                &mut rng,
                "page",
                &format!(r#""name":{},"#, json_str(p.1)),
                &path,
                p.1,
            );
            let props = format!(
                r#""event":"Product Viewed","properties":{{"product_id":"{}","name":{},"price":{},"currency":"EUR"}},"#,
                p.0,
                json_str(p.1),
                p.2
            );
            v.event(&mut rng, "track", &props, &path, p.1);
            let engaged = 3_000 + rng.below(90_000);
            let props = format!(
                r#""event":"$engagement","properties":{{"engaged_ms":{engaged},"scroll_depth":{},"product_id":"{}"}},"#,
                rng.below(101),
                p.0
            );
            v.event(&mut rng, "track", &props, &path, p.1);
        }
        if rng.chance(20) {
            logins += 1;
            let email = format!("visitor{}@example.com", rng.hex(6));
            v.user = Some(email.clone());
            let traits = format!(
                r#""traits":{{"email":{},"name":"Demo Visitor"}},"#,
                json_str(&email)
            );
            v.event(&mut rng, "identify", &traits, "login", "Log in");
            if let Some(e) = mail {
                if rng.chance(80) {
                    // Sent a few hours before this visit; the link leads to the last product.
                    let sent_ms = v.clock - 3_600_000 - rng.below(6 * 3_600_000) as i64;
                    let target = format!("{shop}/products/{}", last.0);
                    read_email(&agent, &mut rng, e, &email, &target, sent_ms, &mut mailed)?;
                }
            }
        }
        if rng.chance(40) {
            carts += 1;
            let path = format!("products/{}", last.0);
            let props = format!(
                r#""event":"{}","properties":{{"product_id":"{}","name":{},"price":{},"quantity":1,"currency":"EUR"}},"#,
                if broken {
                    "Product Add"
                } else {
                    "Product Added"
                },
                last.0,
                json_str(last.1),
                last.2
            );
            v.event(&mut rng, "track", &props, &path, last.1);
            if rng.chance(35) {
                orders += 1;
                let revenue = if broken {
                    String::new()
                } else {
                    format!(r#""revenue":{},"#, last.2)
                };
                let props = format!(
                    r#""event":"Order Completed","properties":{{"order_id":"o-{}",{revenue}"currency":"EUR","products":[{{"product_id":"{}","price":{},"quantity":1}}]}},"#,
                    rng.hex(8),
                    last.0,
                    last.2
                );
                v.event(&mut rng, "track", &props, "checkout", "Checkout");
            }
        }
        let body = format!(
            r#"{{"batch":[{}],"sentAt":"{}","writeKey":{}}}"#,
            v.events.join(","),
            // Sent now: the clock-skew rule then places each event at its own time.
            rfc3339(now_ms()),
            json_str(write_key)
        );
        let mut res = agent
            .post(&url)
            .header("content-type", "text/plain")
            .header("user-agent", USER_AGENTS[i % USER_AGENTS.len()])
            .send(body.as_bytes())
            .with_context(|| format!("sending visitor {i} to {url}"))?;
        let status = res.status().as_u16();
        if status != 200 {
            let text = res.body_mut().read_to_string().unwrap_or_default();
            bail!("the edge answered {status} for visitor {i}: {text}");
        }
        sent += v.events.len();
        let done = i + 1;
        let width = 30;
        let filled = done * width / n;
        let mail_line = if mail.is_some() {
            format!(
                "; {} emails: {} opens, {} clicks, {} scanner hits",
                mailed.sent, mailed.opens, mailed.clicks, mailed.scans
            )
        } else {
            String::new()
        };
        print!(
            "\r  traffic [{}{}] {done}/{n} visitors, {sent} events ({carts} carts, {orders} orders, {logins} logins{mail_line})",
            "#".repeat(filled),
            ".".repeat(width - filled)
        );
        flush();
    }
    println!();
    if n / 10 > 0 {
        println!(
            "  (visitors {} to {n} met a broken release: `Product Add` instead of `Product Added`, orders without revenue)",
            broken_from + 1
        );
    }
    Ok(())
}

/// Flushes stdout (the progress line is written without a newline).
fn flush() {
    let _ = std::io::stdout().flush();
}
