//! `cargo xtask demo`: runs Waymark locally, everything on 127.0.0.1.
//!
//! Starts, in order: ClickHouse (data under `.waymark/clickhouse`, kept between runs), the
//! ingest server (spool under `.waymark/spool`), and the demo shop, whose `/wm/...` requests
//! go to the real edge worker running in workerd (Miniflare), which forwards signed batches to
//! the ingest server through a queue. Prints the URLs, a read key and curl commands; Ctrl-C
//! stops everything. `--traffic N` also sends N synthetic visitors through the shop.

use std::io::Read as _;
use std::path::Path;
use std::sync::mpsc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use waymark_ingest::config::plan::Completeness;
use waymark_ingest::config::{EmailConfig, EmailKey};
use waymark_testkit::config::{site, HumanDuration, IngestConfig};
use waymark_testkit::process::Proc;
use waymark_testkit::{ClickHouse, Stack};

/// Fixed ports so the printed URLs stay the same from run to run. Each can be overridden with
/// the environment variable named beside it.
const PORTS: [(&str, u16); 4] = [
    ("WAYMARK_DEMO_CLICKHOUSE_HTTP_PORT", 18123),
    ("WAYMARK_DEMO_CLICKHOUSE_TCP_PORT", 19000),
    ("WAYMARK_DEMO_INGEST_PORT", 18080),
    ("WAYMARK_DEMO_SHOP_PORT", 18000),
];

/// The demo site's id and write key.
pub const SITE: &str = "demo";
pub const WRITE_KEY: &str = "wk_demo";

/// Run Waymark locally, on 127.0.0.1; Ctrl-C stops everything.
///
/// ClickHouse (data under .waymark/, kept between runs), the ingest server, the edge worker in
/// workerd and a demo shop; N synthetic visitors on request. Prints the URLs, a read key and
/// curl commands.
#[derive(clap::Args, Debug)]
#[command(after_help = port_list())]
pub struct Args {
    /// Also send N synthetic visitors through the shop (page views, products, carts, orders,
    /// logins).
    #[arg(long, value_name = "N", default_value_t = 0)]
    traffic: usize,
}

fn port_list() -> String {
    let mut s = "Environment (the ports, all on 127.0.0.1):".to_string();
    for (var, default) in PORTS {
        s.push_str(&format!("\n  {var:<34} [default: {default}]"));
    }
    s
}

fn port(var: &str, default: u16) -> Result<u16> {
    match std::env::var(var) {
        Ok(v) => v
            .parse()
            .with_context(|| format!("{var}={v:?} is not a port number")),
        Err(_) => Ok(default),
    }
}

/// Stops a child, saying so.
fn stop(p: Proc) {
    let name = p.name().to_string();
    if p.stop() {
        println!("  stopped {name}");
    } else {
        println!("  killed {name} (it did not stop on SIGTERM in time)");
    }
}

/// A random hex token from the kernel, persisted in `file` so it survives restarts.
fn persistent_token(file: &Path, prefix: &str) -> Result<String> {
    if let Ok(s) = std::fs::read_to_string(file) {
        let s = s.trim().to_string();
        if !s.is_empty() {
            return Ok(s);
        }
    }
    let mut bytes = [0u8; 16];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .context("reading /dev/urandom")?;
    let token = format!(
        "{prefix}{}",
        bytes.iter().map(|b| format!("{b:02x}")).collect::<String>()
    );
    std::fs::write(file, &token).with_context(|| format!("writing {}", file.display()))?;
    Ok(token)
}

pub fn run(root: &Path, opts: &Args) -> Result<()> {
    let mut ports = Vec::new();
    for (var, default) in PORTS {
        let p = port(var, default)?;
        if std::net::TcpListener::bind(("127.0.0.1", p)).is_err() {
            bail!(
                "port {p} on 127.0.0.1 is in use (is another `cargo xtask demo` running?); \
                 stop it or choose another port with {var}"
            );
        }
        ports.push(p);
    }
    let [ch_http, ch_tcp, ingest_port, shop_port] = [ports[0], ports[1], ports[2], ports[3]];

    println!("==> installing what is missing (first run only)");
    let tools = crate::tools::ensure_all(root)?;
    println!("==> building the tag, the edge worker and the ingest server");
    crate::tag::build(root, &tools)?;
    crate::edge::build(root, &tools)?;
    let ingest_server = crate::server::build_debug(root)?;

    let state = root.join(".waymark");
    std::fs::create_dir_all(&state)?;
    let secret = persistent_token(&state.join("edge-secret"), "")?;
    let read_key = persistent_token(&state.join("read-key"), "rk_")?;
    let send_key = persistent_token(&state.join("send-key"), "sk_")?;
    let email_secret = persistent_token(&state.join("email-secret"), "")?;

    println!(
        "==> starting ClickHouse (data in {}), the ingest server, the edge worker (workerd) \
         and the demo shop",
        state.join("clickhouse").display()
    );
    let ch = ClickHouse::start_kept(&state.join("clickhouse"), ch_http, ch_tcp)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let shop_origin = format!("http://127.0.0.1:{shop_port}");
    // The demo site also tracks email: the platform's send key, and the key its links and
    // pixels are signed with (served by the edge worker under the shop's /wm prefix, which the
    // stack gives the same keys).
    let mut demo_site = site(SITE, WRITE_KEY, &[&shop_origin]);
    // Data quality: the shipped starter tracking plan, and two critical fields.
    demo_site.tracking_plan = Some(root.join("ingest-server/plans/segment-ecommerce.json"));
    demo_site.completeness = vec![
        Completeness {
            event: "Order Completed".into(),
            field: "properties.revenue".into(),
            min: 1.0,
        },
        Completeness {
            event: "identify".into(),
            field: "traits.email".into(),
            min: 0.95,
        },
    ];
    demo_site.send_keys = vec![send_key.clone()];
    demo_site.email = Some(EmailConfig {
        base_url: format!("{shop_origin}/wm"),
        home_url: format!("{shop_origin}/"),
        keys: vec![EmailKey {
            id: EMAIL_KEY_ID.into(),
            secret: email_secret.clone(),
        }],
        max_age: HumanDuration(Duration::from_secs(400 * 86_400)),
    });
    let config = IngestConfig::new()
        .port(ingest_port)
        .spool_max(1 << 30)
        .writer_max_age(Duration::from_secs(1))
        .edge_secret(&secret)
        .site(demo_site)
        .read_key(&read_key, &[SITE])
        .with(|c| {
            // A short cart delay, so the webhook below prints an abandoned cart soon after it
            // is left; the demo's read key may subscribe, and this server runs the triggers.
            c.query.cart_abandon_after =
                HumanDuration::parse(CART_ABANDON_AFTER).expect("CART_ABANDON_AFTER is a duration");
            c.query.read_keys[0].subscribe = true;
            c.triggers.evaluate = true;
            c.triggers.tick = HumanDuration(Duration::from_secs(5));
        });
    let stack = Stack::builder(&ingest_server, config)
        .clickhouse(ch, Some("waymark"))
        .dir(&state)
        .shop(&tools.node, root, shop_port)
        .start()
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let config = &stack.ingest.config_path;

    let (tx, rx) = mpsc::channel();
    ctrlc::set_handler(move || {
        let _ = tx.send(());
    })
    .context("installing the Ctrl-C handler")?;

    let shop_url = format!("http://127.0.0.1:{shop_port}");
    let api = format!("http://127.0.0.1:{ingest_port}");
    let hook = crate::webhook::start(0, &persistent_token(&state.join("hook-secret"), "")?)?;
    crate::webhook::subscribe(&api, &read_key, SITE, &hook, CART_ABANDON_AFTER)?;
    // Tracked links and pixels on the shop's own domain, under the edge worker's prefix.
    let email_base = format!("{shop_url}/wm");
    let email_key = waymark_protocol::email::SigningKey {
        id: EMAIL_KEY_ID.into(),
        secret: email_secret.as_bytes().to_vec(),
    };
    let email = crate::traffic::Email {
        site: SITE,
        base_url: &email_base,
        key: &email_key,
    };
    if opts.traffic > 0 {
        crate::traffic::drive(&shop_url, WRITE_KEY, opts.traffic, Some(&email))?;
    }
    // A demo reader's message: its pixel and a tracked link to a product, signed here the way
    // the email platform would (or through `POST /v1/email/links`, printed below).
    let demo_message = waymark_email::Message {
        recipient: waymark_email::Recipient {
            user_id: "reader@example.com".into(),
            email: "reader@example.com".into(),
        },
        campaign: "november-sale".into(),
        send_id: "demo-send-1".into(),
    };
    let tracked = waymark_email::track(
        &waymark_email::Signer {
            site: SITE,
            base_url: &email_base,
            key: &email_key,
            now_secs: waymark_ingest::clock::now_ms() as u64 / 1000,
        },
        &demo_message,
        &[format!("{shop_url}/products/p-102")],
    )
    .map_err(|e| anyhow::anyhow!("signing the demo reader's links: {e}"))?;

    println!();
    println!("Waymark demo is running (everything on 127.0.0.1):");
    println!("  shop          {shop_url}/            browse it: every page carries the tag");
    println!("  edge worker   {shop_url}/wm/...      (workerd, first-party prefix; geo injected as Berlin, DE)");
    println!(
        "  ingest + API  {api}/               (config {})",
        config.display()
    );
    println!("  ClickHouse    http://127.0.0.1:{ch_http}/  (native port {ch_tcp}; clickhouse-client --port {ch_tcp})");
    println!(
        "  data          {} (kept between runs; delete it to start afresh)",
        state.display()
    );
    println!(
        "  logs          {}/ingest.log, {}/shop.log",
        state.display(),
        state.display()
    );
    println!();
    println!("  read key      {read_key}");
    println!("  send key      {send_key}   (the email platform's, for /v1/email/*)");
    println!();
    println!("Try (after clicking around the shop, or with --traffic N):");
    println!(
        "  # who is in the cart-abandonment audience (added to cart, no order, in the last 24 h)"
    );
    println!(
        "  curl -s -H 'Authorization: Bearer {read_key}' -H 'Content-Type: application/json' \\\n    '{api}/v1/audiences/query?site={SITE}' \\\n    -d '{}'",
        CART_ABANDONED
    );
    println!("  # one of them: their recent products, cart, orders, geo");
    println!(
        "  curl -s -H 'Authorization: Bearer {read_key}' '{api}/v1/profiles/<id from above>?site={SITE}'"
    );
    println!("  # abandon a cart (add, do not order): {CART_ABANDON_AFTER} later the webhook {} prints it here", hook.url);
    println!("  # email: a demo reader's open pixel and tracked link (open the link in a browser:");
    println!("  # it lands on the shop, and the reader's profile shows the click under \"email\")");
    println!("  pixel   {}", tracked.pixel);
    println!("  link    {}", tracked.links[0].tracked);
    println!(
        "  curl -s -H 'Authorization: Bearer {send_key}' -H 'Content-Type: application/json' \\\n    '{api}/v1/email/links?site={SITE}' \\\n    -d '{{\"recipient\":{{\"email\":\"ada@example.com\"}},\"campaign\":\"november-sale\",\"send_id\":\"s1\",\"links\":[\"{shop_url}/products/p-100\"]}}'"
    );
    println!(
        "  curl -s -H 'Authorization: Bearer {read_key}' '{api}/v1/profiles/reader@example.com?site={SITE}'"
    );
    println!("  # data quality (the last tenth of --traffic met a broken release): violations, missing fields");
    println!(
        "  curl -s 'http://127.0.0.1:{ch_http}/' --data-binary \"SELECT arrayJoin(violations) AS v, count() FROM waymark.events GROUP BY v ORDER BY 2 DESC\""
    );
    println!("  curl -s '{api}/metrics' | grep '^waymark_quality_'");
    println!("  # the quality page, in a browser (it asks for the read key above)");
    println!("  {api}/quality?site={SITE}");
    println!();
    println!("Press Ctrl-C to stop everything.");
    let _ = rx.recv();
    println!("\nstopping ...");
    let Stack {
        shop, ingest, ch, ..
    } = stack;
    if let Some(shop) = shop {
        stop(shop);
    }
    stop(ingest.proc); // SIGTERM: stops accepting, flushes its spool to ClickHouse, exits
    drop(ch);
    println!("  stopped ClickHouse");
    Ok(())
}

/// The demo's abandonment delay: short, so the webhook fires while you watch.
const CART_ABANDON_AFTER: &str = "2m";

/// The audience query the demo prints: added to cart within 24 h, no order within 24 h.
pub const CART_ABANDONED: &str = r#"{"conditions":[{"type":"did","event":"Product Added","within":"24h"},{"type":"did_not","event":"Order Completed","within":"24h"}]}"#;

/// The id of the demo site's email signing key.
const EMAIL_KEY_ID: &str = "demo1";
