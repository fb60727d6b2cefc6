//! The real Segment-family clients against the whole stack: each one, driven by
//! `e2e/clients/drive.mjs`, makes identify, track, page, screen, group and alias calls, once
//! straight to the ingest server and (browser clients) once through the edge worker under the
//! shop's `/wm` prefix. Then what Waymark stored is compared, field by field, with what the
//! client sent, and every event must be stored exactly once although the first delivery was
//! answered 503 and sent again.
//!
//! Needs what `cargo xtask test` prepares (stage "sdk clients"): the npm packages of
//! `e2e/clients/` and the Python SDK in a virtualenv (`WAYMARK_CLIENTS_PYTHON`), besides what
//! the end-to-end stack needs.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Command;

use serde_json::{json, Map, Value};
use waymark_e2e::{repo_root, require, wait_for, Stack, SITE, WRITE_KEY};
use waymark_testkit::free_port;

/// Which clients run where: (client, through the edge?).
const RUNS: &[(&str, bool)] = &[
    ("analytics-next-event", false),
    ("analytics-next-batching", false),
    ("analytics-next-event", true),
    ("analytics-next-batching", true),
    ("rudder-js", false),
    ("rudder-js", true),
    ("rudder-node", false),
    ("rudder-python", false),
    ("segment-node", false),
    ("segment-python", false),
];

/// The columns compared, as the test reads them back.
const COLUMNS: &str = "message_id, type, event, name, anonymous_id, user_id, previous_id, \
    group_id, toUnixTimestamp(client_time) AS client_secs, sent_at_ms, source, page_url, \
    page_path, page_title, page_referrer, page_search, user_agent, locale, library_name, \
    library_version, properties, traits, context, site";

#[test]
fn segment_family_clients_store_what_they_send() {
    let root = repo_root();
    let clients = root.join("e2e/clients");
    require(
        &clients.join("node_modules/@segment/analytics-next"),
        "run `npm ci` in e2e/clients/ (cargo xtask test, stage \"sdk clients\", does)",
    );
    let python = std::env::var_os("WAYMARK_CLIENTS_PYTHON").map(PathBuf::from);
    let python = python.unwrap_or_else(|| {
        panic!(
            "WAYMARK_CLIENTS_PYTHON is not set: it names the python of a virtualenv with \
             e2e/clients/requirements.txt installed (cargo xtask test, stage \"sdk clients\", \
             makes one)"
        )
    });
    let chromium = std::env::var("WAYMARK_CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    let page_port = free_port();
    let stack = Stack::start_with("1h", &[format!("http://127.0.0.1:{page_port}")]);

    let mut report = Vec::new();
    let mut failures = Vec::new();
    for &(client, via_edge) in RUNS {
        let target = if via_edge {
            format!("{}/wm", stack.shop_url)
        } else {
            stack.ingest_url.clone()
        };
        let route = if via_edge { "edge" } else { "ingest" };
        let out = Command::new("node")
            .arg(clients.join("drive.mjs"))
            .args([
                "--client",
                client,
                "--target",
                &target,
                "--write-key",
                WRITE_KEY,
            ])
            .args([
                "--page-port",
                &page_port.to_string(),
                "--chromium",
                &chromium,
            ])
            .arg("--python")
            .arg(&python)
            .current_dir(&clients)
            .output()
            .expect("running node e2e/clients/drive.mjs");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{client} via {route}: drive.mjs failed ({}):\n{stdout}\n{}\ningest log:\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr),
            stack.ingest_log(30)
        );
        let run: Value = serde_json::from_str(stdout.lines().last().unwrap_or_default())
            .unwrap_or_else(|e| panic!("{client}: drive.mjs printed {stdout:?}: {e}"));
        let problems = check_run(&stack, &run, via_edge);
        let sent = run["sent"].as_array().map_or(0, Vec::len);
        let retried = run["faulted"].as_array().map_or(0, Vec::len);
        let paths: std::collections::BTreeSet<&str> = run["requests"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|r| r["method"] == "POST")
            .filter_map(|r| r["path"].as_str())
            .map(|p| p.split('?').next().unwrap_or(p))
            .collect();
        report.push(format!(
            "{client:<24} via {route:<6} {sent} events sent, {retried} sent twice (first answer 503), \
             stored once each: {}; paths {paths:?}",
            if problems.is_empty() { "yes, every field as sent" } else { "NO" }
        ));
        failures.extend(
            problems
                .into_iter()
                .map(|p| format!("{client} via {route}: {p}")),
        );
    }
    println!("\nSegment-family clients against Waymark:");
    for line in &report {
        println!("  {line}");
    }
    assert!(
        failures.is_empty(),
        "{} problem(s):\n{}",
        failures.len(),
        failures.join("\n")
    );
}

/// Waits until every event the client sent is stored, then compares each with what was sent.
fn check_run(stack: &Stack, run: &Value, via_edge: bool) -> Vec<String> {
    let sent: Vec<&Value> = run["sent"].as_array().expect("sent").iter().collect();
    let ids: Vec<String> = sent
        .iter()
        .map(|s| {
            s["event"]["messageId"]
                .as_str()
                .expect("messageId")
                .to_string()
        })
        .collect();
    let list = ids
        .iter()
        .map(|id| format!("'{}'", id.replace('\\', "\\\\").replace('\'', "\\'")))
        .collect::<Vec<_>>()
        .join(",");
    let count_sql = format!("SELECT count() FROM {{db}}.events WHERE message_id IN ({list})");
    // Through the edge the events travel a queue first: allow for it.
    wait_for("the clients' events in ClickHouse", 60, || {
        let n: usize = stack.sql(&count_sql).trim().parse().unwrap_or(0);
        (n >= ids.len()).then_some(())
    });
    let rows = stack.sql(&format!(
        "SELECT {COLUMNS} FROM {{db}}.events WHERE message_id IN ({list}) FORMAT JSONEachRow"
    ));
    let mut stored: BTreeMap<String, Vec<Value>> = BTreeMap::new();
    for line in rows.lines().filter(|l| !l.trim().is_empty()) {
        let row: Value = serde_json::from_str(line).expect("JSONEachRow");
        stored
            .entry(row["message_id"].as_str().unwrap_or_default().to_string())
            .or_default()
            .push(row);
    }
    let mut problems = Vec::new();
    for s in sent {
        let ev = &s["event"];
        let id = ev["messageId"].as_str().unwrap_or_default();
        let kind = ev["type"].as_str().unwrap_or_default();
        let rows = stored.get(id).map(Vec::as_slice).unwrap_or_default();
        if rows.len() != 1 {
            problems.push(format!("{kind} {id}: stored {} times", rows.len()));
            continue;
        }
        for (column, want, got) in compare(ev, &s["batch"], &rows[0], via_edge) {
            problems.push(format!(
                "{kind} {id}: {column} stored as {got} but sent as {want}"
            ));
        }
    }
    // The identity links: identify and alias calls stitch ids together.
    for s in run["sent"].as_array().into_iter().flatten() {
        let ev = &s["event"];
        let user = ev["userId"].as_str().unwrap_or_default();
        let other = match ev["type"].as_str() {
            Some("alias") => ev["previousId"].as_str(),
            Some("identify") => ev["anonymousId"].as_str(),
            _ => None,
        };
        let Some(other) = other.filter(|o| !o.is_empty() && !user.is_empty()) else {
            continue;
        };
        let n = stack.sql(&format!(
            "SELECT count() FROM {{db}}.identities WHERE site = '{SITE}' AND user_id = '{user}' \
             AND anonymous_id = '{other}'"
        ));
        if n.trim() == "0" {
            problems.push(format!(
                "{}: no identity link {other} -> {user}",
                ev["type"]
            ));
        }
    }
    problems
}

fn text(v: &Value) -> String {
    v.as_str().unwrap_or_default().to_string()
}

fn object(v: &Value) -> Value {
    match v {
        Value::Object(_) => v.clone(),
        _ => Value::Object(Map::new()),
    }
}

/// Milliseconds since the epoch of an RFC 3339 time, with any fraction and offset.
fn rfc3339_ms(s: &str) -> Option<i64> {
    waymark_protocol::time::parse_rfc3339(s)
}

/// (column, sent, stored) for every column that differs from what the client sent.
fn compare(ev: &Value, batch: &Value, row: &Value, via_edge: bool) -> Vec<(String, Value, Value)> {
    let ctx = object(&ev["context"]);
    let page = &ctx["page"];
    let kind = text(&ev["type"]);
    // Segment puts an identify's traits at the top; RudderStack's SDKs in `context.traits`.
    let traits = match &ev["traits"] {
        Value::Object(_) => ev["traits"].clone(),
        _ if kind == "identify" => object(&ctx["traits"]),
        _ => json!({}),
    };
    let mut stored_ctx = ctx.clone();
    if let Value::Object(m) = &mut stored_ctx {
        // Never stored: the raw address.
        m.remove("ip");
    }
    let client_ms = ev["timestamp"]
        .as_str()
        .or(ev["originalTimestamp"].as_str())
        .and_then(rfc3339_ms);
    let sent_ms = ev["sentAt"]
        .as_str()
        .or(batch["sentAt"].as_str())
        .and_then(rfc3339_ms)
        .unwrap_or(0);
    let mut want: Vec<(&str, Value)> = vec![
        ("site", json!(SITE)),
        ("type", json!(kind)),
        ("event", json!(text(&ev["event"]))),
        ("name", json!(text(&ev["name"]))),
        ("anonymous_id", json!(text(&ev["anonymousId"]))),
        ("user_id", json!(text(&ev["userId"]))),
        ("previous_id", json!(text(&ev["previousId"]))),
        ("group_id", json!(text(&ev["groupId"]))),
        ("sent_at_ms", json!(sent_ms)),
        ("source", json!(if via_edge { "edge" } else { "api" })),
        ("page_url", json!(text(&page["url"]))),
        ("page_path", json!(text(&page["path"]))),
        ("page_title", json!(text(&page["title"]))),
        ("page_referrer", json!(text(&page["referrer"]))),
        ("page_search", json!(text(&page["search"]))),
        ("locale", json!(text(&ctx["locale"]))),
        ("library_name", json!(text(&ctx["library"]["name"]))),
        ("library_version", json!(text(&ctx["library"]["version"]))),
        ("properties", object(&ev["properties"])),
        ("traits", traits),
        ("context", stored_ctx),
    ];
    if let Some(ms) = client_ms {
        want.push(("client_secs", json!(ms.div_euclid(1000))));
    }
    if let Some(ua) = ctx["userAgent"].as_str() {
        want.push(("user_agent", json!(ua)));
    }
    let mut out = Vec::new();
    for (column, expected) in want {
        let mut got = row[column].clone();
        // JSON columns compare as JSON; 64-bit integers arrive quoted.
        if matches!(column, "properties" | "traits" | "context") {
            got = serde_json::from_str(got.as_str().unwrap_or("null")).unwrap_or(Value::Null);
        } else if let (Value::Number(_), Some(s)) = (&expected, got.as_str()) {
            got = s.parse::<i64>().map(Value::from).unwrap_or(got);
        }
        if got != expected {
            out.push((column.to_string(), expected, got));
        }
    }
    out
}
