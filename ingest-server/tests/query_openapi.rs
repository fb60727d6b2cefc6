//! `GET /openapi.json` describes what the endpoints really answer: live responses of every
//! endpoint and status are checked against the document's schemas (closed objects, so an
//! undocumented field fails), and the request bodies we send against the request schema.

mod query_support;

use axum::http::StatusCode;
use query_support::*;
use serde_json::{json, Value};

/// A small OpenAPI 3.0 schema checker: `$ref`, `type`, `nullable`, `properties`, `required`,
/// `additionalProperties: false`, `items`, `enum`, `oneOf`, `minimum`, `maximum`, `minItems`,
/// `maxItems`, `format: date-time`.
fn check(doc: &Value, schema: &Value, v: &Value, path: &str, errs: &mut Vec<String>) {
    if let Some(r) = schema.get("$ref").and_then(Value::as_str) {
        let name = r.strip_prefix("#/components/schemas/").expect("local ref");
        let target = &doc["components"]["schemas"][name];
        assert!(!target.is_null(), "dangling $ref {r}");
        return check(doc, target, v, path, errs);
    }
    if v.is_null() {
        if schema.get("nullable") != Some(&json!(true)) && schema.get("type").is_some() {
            errs.push(format!("{path}: null but not nullable"));
        }
        return;
    }
    if let Some(options) = schema.get("oneOf").and_then(Value::as_array) {
        let ok = options
            .iter()
            .filter(|o| {
                let mut e = Vec::new();
                check(doc, o, v, path, &mut e);
                e.is_empty()
            })
            .count();
        if ok != 1 {
            errs.push(format!("{path}: matches {ok} of the oneOf schemas: {v}"));
        }
        return;
    }
    if let Some(values) = schema.get("enum").and_then(Value::as_array) {
        if !values.contains(v) {
            errs.push(format!("{path}: {v} not in {values:?}"));
        }
    }
    let ty = schema.get("type").and_then(Value::as_str);
    let ok = match ty {
        None => true,
        Some("object") => v.is_object(),
        Some("array") => v.is_array(),
        Some("string") => v.is_string(),
        Some("integer") => v.is_i64() || v.is_u64(),
        Some("number") => v.is_number(),
        Some("boolean") => v.is_boolean(),
        Some(other) => panic!("unknown type {other}"),
    };
    if !ok {
        errs.push(format!("{path}: {v} is not a {}", ty.unwrap()));
        return;
    }
    if let Some(n) = v.as_f64() {
        if let Some(min) = schema.get("minimum").and_then(Value::as_f64) {
            if n < min {
                errs.push(format!("{path}: {n} < minimum {min}"));
            }
        }
        if let Some(max) = schema.get("maximum").and_then(Value::as_f64) {
            if n > max {
                errs.push(format!("{path}: {n} > maximum {max}"));
            }
        }
    }
    if schema.get("format") == Some(&json!("date-time"))
        && waymark_protocol::time::parse_rfc3339(v.as_str().unwrap()).is_none()
    {
        errs.push(format!("{path}: {v} is not a date-time"));
    }
    if let Some(o) = v.as_object() {
        let props = schema.get("properties").and_then(Value::as_object);
        for r in schema
            .get("required")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let r = r.as_str().unwrap();
            assert!(
                props.is_some_and(|p| p.contains_key(r)),
                "schema at {path} requires undescribed {r}"
            );
            if !o.contains_key(r) {
                errs.push(format!("{path}.{r}: missing"));
            }
        }
        for (k, val) in o {
            match props.and_then(|p| p.get(k)) {
                Some(s) => check(doc, s, val, &format!("{path}.{k}"), errs),
                None if schema.get("additionalProperties") == Some(&json!(false)) => {
                    errs.push(format!("{path}.{k}: not in the schema"))
                }
                None => {}
            }
        }
    }
    if let Some(items) = v.as_array() {
        if let Some(min) = schema.get("minItems").and_then(Value::as_u64) {
            if (items.len() as u64) < min {
                errs.push(format!("{path}: fewer than {min} items"));
            }
        }
        if let Some(max) = schema.get("maxItems").and_then(Value::as_u64) {
            if items.len() as u64 > max {
                errs.push(format!("{path}: more than {max} items"));
            }
        }
        if let Some(s) = schema.get("items") {
            for (i, it) in items.iter().enumerate() {
                check(doc, s, it, &format!("{path}[{i}]"), errs);
            }
        }
    }
}

fn assert_valid(doc: &Value, schema: &Value, v: &Value, what: &str) {
    let mut errs = Vec::new();
    check(doc, schema, v, "$", &mut errs);
    assert!(
        errs.is_empty(),
        "{what} does not match the OpenAPI document:\n{}\n{v:#}",
        errs.join("\n")
    );
}

/// The schema the document gives for `status` / `content_type` of an operation.
fn response_schema<'a>(
    doc: &'a Value,
    path: &str,
    method: &str,
    status: StatusCode,
    ct: &str,
) -> &'a Value {
    let op = &doc["paths"][path][method];
    assert!(!op.is_null(), "{method} {path} is not documented");
    let resp = &op["responses"][status.as_str()];
    assert!(
        !resp.is_null(),
        "{method} {path} answered {status}, which is not documented"
    );
    let schema = &resp["content"][ct]["schema"];
    assert!(
        !schema.is_null(),
        "{method} {path} {status}: content type {ct} not documented"
    );
    schema
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_responses_match_the_openapi_document() {
    let db = Db::new().await;
    let now = now_ms();
    seed(&db, now).await;
    let st = db.state(&[]);

    // No key needed for the document itself.
    let a = call(&st, "GET", "/openapi.json", None, None, None).await;
    assert_eq!(a.status, StatusCode::OK);
    let doc = a.json();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    let mut exercised = std::collections::BTreeSet::new();

    let mut checked = 0;
    let mut expect = |path: &'static str, method: &'static str, a: &Answer, what: &str| {
        let ct = a.content_type.split(';').next().unwrap().trim().to_string();
        let schema = response_schema(&doc, path, method, a.status, &ct).clone();
        if ct == "application/x-ndjson" {
            assert!(!a.text.is_empty(), "{what}: empty stream");
            for line in a.text.lines() {
                assert_valid(&doc, &schema, &serde_json::from_str(line).unwrap(), what);
            }
        } else {
            assert_valid(&doc, &schema, &a.json(), what);
        }
        exercised.insert(format!("{method} {path}"));
        checked += 1;
    };

    let profile = "/v1/profiles/{id}";
    let events = "/v1/profiles/{id}/events";
    let audiences = "/v1/audiences/query";
    // Profiles with every field filled (alice) and with the nullable ones empty.
    for id in ["alice", "a1", "c1", "d1", "bob"] {
        let a = get(&st, &format!("/v1/profiles/{id}?site=shop"), SHOP_KEY).await;
        assert_eq!(a.status, StatusCode::OK);
        expect(profile, "get", &a, id);
    }
    expect(
        profile,
        "get",
        &get(&st, "/v1/profiles/zed?site=shop", SHOP_KEY).await,
        "404",
    );
    expect(
        profile,
        "get",
        &get(&st, "/v1/profiles/alice?site=other", SHOP_KEY).await,
        "403",
    );
    expect(
        profile,
        "get",
        &call(&st, "GET", "/v1/profiles/alice?site=shop", None, None, None).await,
        "401",
    );
    expect(
        profile,
        "get",
        &get(&st, "/v1/profiles/alice", SHOP_KEY).await,
        "400",
    );

    let a = get(&st, "/v1/profiles/alice/events?site=shop&limit=3", SHOP_KEY).await;
    assert_eq!(a.status, StatusCode::OK);
    expect(events, "get", &a, "events page");
    let a = get(&st, "/v1/profiles/alice/events?site=shop", SHOP_KEY).await;
    expect(events, "get", &a, "all events");
    expect(
        events,
        "get",
        &get(
            &st,
            "/v1/profiles/alice/events?site=shop&limit=-1",
            SHOP_KEY,
        )
        .await,
        "400",
    );
    expect(
        events,
        "get",
        &get(&st, "/v1/profiles/zed/events?site=shop", SHOP_KEY).await,
        "404",
    );

    let request = doc["components"]["schemas"]["AudienceQuery"].clone();
    let queries = [
        json!({"conditions": [
            {"type": "did", "event": "Product Added", "within": "24h", "min_count": 1,
             "where": [{"property": "product_id", "op": "in", "value": ["p1", "p3"]}]},
            {"type": "did_not", "event": "Order Completed", "within": "24h"},
            {"type": "last_seen_within", "within": "7d"},
            {"type": "geo", "field": "country", "op": "neq", "value": "US"}], "limit": 1}),
        json!({"conditions": [{"type": "trait", "name": "plan", "op": "eq", "value": "enterprise"}]}),
        json!({"conditions": [{"type": "did_not", "event": "Product Added"}], "cursor": null}),
    ];
    for q in &queries {
        assert_valid(&doc, &request, q, "request body");
        let a = post(
            &st,
            "/v1/audiences/query?site=shop",
            SHOP_KEY,
            &q.to_string(),
        )
        .await;
        assert_eq!(a.status, StatusCode::OK, "{}", a.text);
        assert!(!a.json()["members"].as_array().unwrap().is_empty());
        expect(audiences, "post", &a, "audience page");
        let a = call(
            &st,
            "POST",
            "/v1/audiences/query?site=shop",
            Some(SHOP_KEY),
            Some(&q.to_string()),
            Some("application/x-ndjson"),
        )
        .await;
        expect(audiences, "post", &a, "audience stream");
    }
    let first = post(
        &st,
        "/v1/audiences/query?site=shop",
        SHOP_KEY,
        &queries[0].to_string(),
    )
    .await
    .json();
    assert!(first["next_cursor"].is_string(), "limit 1 gives a cursor");
    expect(
        audiences,
        "post",
        &post(&st, "/v1/audiences/query?site=shop", SHOP_KEY, "{}").await,
        "400",
    );
    expect(
        audiences,
        "post",
        &post(&st, "/v1/audiences/query?site=shop", "nope", "{}").await,
        "401",
    );

    // Subscriptions, and a dead letter written as the deliverer writes one.
    let sub_req = json!({"name": "cart", "url": "https://platform.example/hook",
        "secret": "0123456789abcdef",
        "audience": {"conditions": [{"type": "did", "event": "Product Added", "within": "1h"}]}});
    assert_valid(
        &doc,
        &doc["components"]["schemas"]["SubscriptionRequest"],
        &sub_req,
        "subscription request",
    );
    let subs = "/v1/subscriptions";
    let created = post(
        &st,
        "/v1/subscriptions?site=shop",
        BOTH_KEY,
        &sub_req.to_string(),
    )
    .await;
    expect(subs, "post", &created, "201");
    let id = created.json()["id"].as_str().unwrap().to_string();
    let no_subscribe = post(
        &st,
        "/v1/subscriptions?site=shop",
        SHOP_KEY,
        &sub_req.to_string(),
    )
    .await;
    expect(subs, "post", &no_subscribe, "403");
    expect(
        subs,
        "post",
        &post(&st, "/v1/subscriptions?site=shop", BOTH_KEY, "{}").await,
        "400",
    );
    expect(
        subs,
        "post",
        &post(&st, "/v1/subscriptions?site=shop", "nope", "{}").await,
        "401",
    );
    let list = get(&st, "/v1/subscriptions?site=shop", BOTH_KEY).await;
    assert_eq!(list.json()["subscriptions"][0]["id"], id.as_str());
    expect(subs, "get", &list, "subscription list");
    let payload = json!({"id": "k1", "type": "entered", "at": time(now), "site": "shop",
        "subscription": {"id": id, "name": "cart"}, "person": {"id": "alice", "user_id": "alice"},
        "entry": 1, "profile": {"id": "alice"}});
    let row = json!({"key": "k1", "site": "shop", "sub_id": id, "person": "alice", "entry": 1,
        "kind": "entered", "payload": payload.to_string(), "created_at_ms": now, "state": "dead",
        "attempts": 12, "next_at_ms": now, "last_error": "the webhook answered 500",
        "updated_at_ms": now, "version": 1_000_000});
    sql(&format!(
        "INSERT INTO {}.trigger_deliveries FORMAT JSONEachRow {row}",
        db.name
    ));
    let dead = get(&st, "/v1/subscriptions/dead_letters?site=shop", BOTH_KEY).await;
    assert_eq!(dead.json()["count"], 1, "{}", dead.text);
    expect(
        "/v1/subscriptions/dead_letters",
        "get",
        &dead,
        "dead letters",
    );
    let remove = format!("/v1/subscriptions/{id}?site=shop");
    for status in ["200", "404"] {
        let a = call(&st, "DELETE", &remove, Some(BOTH_KEY), None, None).await;
        assert_eq!(a.status.as_str(), status, "{}", a.text);
        expect("/v1/subscriptions/{id}", "delete", &a, status);
    }

    // Privacy (admin key): export, delete, the deletion's state.
    let export = "/v1/persons/{id}/export";
    let a = get(&st, "/v1/persons/alice/export?site=shop", ADMIN_KEY).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text);
    assert!(a.text.lines().count() > 1);
    expect(export, "get", &a, "export");
    for (uri, key, status) in [
        ("/v1/persons/zed/export?site=shop", ADMIN_KEY, "404"),
        ("/v1/persons/alice/export?site=shop", SHOP_KEY, "401"),
        ("/v1/persons/alice/export?site=other", ADMIN_KEY, "403"),
        ("/v1/persons/alice/export", ADMIN_KEY, "400"),
    ] {
        let a = get(&st, uri, key).await;
        assert_eq!(a.status.as_str(), status, "{uri}: {}", a.text);
        expect(export, "get", &a, uri);
    }
    let person = "/v1/persons/{id}";
    let a = call(
        &st,
        "DELETE",
        "/v1/persons/alice?site=shop",
        Some(SHOP_KEY),
        None,
        None,
    )
    .await;
    assert_eq!(
        a.status,
        StatusCode::UNAUTHORIZED,
        "a read key cannot delete"
    );
    expect(person, "delete", &a, "delete with a read key");
    let a = call(
        &st,
        "DELETE",
        "/v1/persons/nobody-here?site=shop",
        Some(ADMIN_KEY),
        None,
        None,
    )
    .await;
    assert_eq!(a.status, StatusCode::ACCEPTED, "{}", a.text);
    expect(person, "delete", &a, "delete");
    let job = a.json()["job"].as_str().unwrap().to_string();
    let deletions = "/v1/deletions/{job}";
    let a = get(&st, &format!("/v1/deletions/{job}?site=shop"), ADMIN_KEY).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text);
    expect(deletions, "get", &a, "deletion state");
    let a = get(&st, "/v1/deletions/nope?site=shop", ADMIN_KEY).await;
    assert_eq!(a.status, StatusCode::NOT_FOUND, "{}", a.text);
    expect(deletions, "get", &a, "no such job");

    // Identity: near-match suggestions (a read key), unmerge (an admin key).
    let suggestions = "/v1/identity/suggestions";
    let a = get(&st, "/v1/identity/suggestions?site=shop", SHOP_KEY).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text);
    expect(suggestions, "get", &a, "suggestions");
    let unmerge = "/v1/persons/{id}/unmerge";
    let a = call(
        &st,
        "POST",
        "/v1/persons/alice/unmerge?site=shop",
        Some(ADMIN_KEY),
        None,
        None,
    )
    .await;
    assert_eq!(a.status, StatusCode::NOT_FOUND, "{}", a.text);
    expect(unmerge, "post", &a, "unmerge of someone not merged");
    let a = call(
        &st,
        "POST",
        "/v1/persons/alice/unmerge?site=shop",
        Some(SHOP_KEY),
        None,
        None,
    )
    .await;
    assert_eq!(a.status, StatusCode::UNAUTHORIZED, "{}", a.text);
    expect(unmerge, "post", &a, "unmerge with a read key");
    let quality = "/v1/quality";
    let a = get(&st, "/v1/quality?site=shop&since=30d", SHOP_KEY).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text);
    expect(quality, "get", &a, "quality report");
    let a = get(&st, "/v1/quality?site=shop&since=soon", SHOP_KEY).await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST, "{}", a.text);
    expect(quality, "get", &a, "quality: bad since");

    // Every documented operation of the query API was exercised (the email endpoints are not
    // on the query router: `the_email_endpoints_are_described` checks them).
    for (path, item) in doc["paths"].as_object().unwrap() {
        for method in item.as_object().unwrap().keys() {
            // `/v1/import` is on the intake's router: `the_import_report_is_described`.
            if path == "/openapi.json"
                || path == "/v1/import"
                || EMAIL_PATHS.contains(&path.as_str())
            {
                continue;
            }
            assert!(
                exercised.contains(&format!("{method} {path}")),
                "{method} {path} not checked"
            );
        }
    }
    assert!(checked >= 20);
}

/// `POST /v1/import`'s answer (its live answers are checked in `tests/import.rs`): a real
/// report matches the documented schema, and the endpoint takes write or send keys.
#[test]
fn the_import_report_is_described() {
    let doc = waymark_ingest::query::openapi::document();
    let op = &doc["paths"]["/v1/import"]["post"];
    assert_eq!(op["security"], json!([{"writeKey": []}, {"sendKey": []}]));
    let report = waymark_ingest::intake::import::ImportReport {
        lines: 3,
        accepted: 1,
        rejected_lines: 1,
        rejected: vec![waymark_ingest::intake::import::LineRejection {
            line: 3,
            field: "type".into(),
            reason: "missing".into(),
        }],
        suppressed: 0,
        acknowledged_lines: 3,
        error: Some("stopped".into()),
    };
    let mut errs = Vec::new();
    let schema = json!({"$ref": "#/components/schemas/ImportReport"});
    check(
        &doc,
        &schema,
        &serde_json::to_value(&report).unwrap(),
        "report",
        &mut errs,
    );
    assert!(errs.is_empty(), "{errs:?}");
}

/// The email endpoints' paths in the document.
const EMAIL_PATHS: [&str; 4] = [
    "/v1/email/links",
    "/v1/email/rewrite",
    "/e/o/{token}.gif",
    "/e/c/{token}",
];

/// The email endpoints are described: each path and method, who may call it, and schemas that
/// the real answers (built by the functions the handlers call) and request bodies match.
#[test]
fn the_email_endpoints_are_described() {
    let doc = waymark_ingest::query::openapi::document();
    let described: Vec<&str> = doc["paths"]
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .filter(|p| p.starts_with("/v1/email/") || p.starts_with("/e/"))
        .collect();
    assert_eq!(described.len(), EMAIL_PATHS.len(), "{described:?}");
    for (path, method, security) in [
        ("/v1/email/links", "post", json!([{"sendKey": []}])),
        ("/v1/email/rewrite", "post", json!([{"sendKey": []}])),
        ("/e/o/{token}.gif", "get", json!([])),
        ("/e/c/{token}", "get", json!([])),
        ("/e/c/{token}", "head", json!([])),
    ] {
        let op = &doc["paths"][path][method];
        assert!(op.is_object(), "{method} {path} is not documented");
        assert_eq!(op["security"], security, "{method} {path}");
    }
    assert_eq!(
        doc["components"]["securitySchemes"]["sendKey"]["scheme"],
        "bearer"
    );
    let redirect = &doc["paths"]["/e/c/{token}"]["get"]["responses"]["302"];
    assert!(redirect["headers"]["Location"].is_object());
    assert!(
        doc["paths"]["/e/o/{token}.gif"]["get"]["responses"]["200"]["content"]["image/gif"]
            .is_object()
    );

    let key = waymark_protocol::email::SigningKey {
        id: "k1".into(),
        secret: b"an-email-signing-secret-0123456789".to_vec(),
    };
    let signer = waymark_email::Signer {
        site: "shop",
        base_url: "https://shop.example.com/wm",
        key: &key,
        now_secs: 1_800_000_000,
    };
    let message = waymark_email::Message {
        recipient: waymark_email::Recipient {
            user_id: "u-1".into(),
            email: "ada@example.com".into(),
        },
        campaign: "november".into(),
        send_id: "snd-1".into(),
    };
    let tracked = waymark_email::track(
        &signer,
        &message,
        &["https://shop.example.com/sale".to_string()],
    )
    .unwrap();
    let schema = |name: &str| json!({"$ref": format!("#/components/schemas/{name}")});
    assert_valid(
        &doc,
        &schema("EmailLinks"),
        &serde_json::to_value(&tracked).unwrap(),
        "the answer of /v1/email/links",
    );
    let rewritten = waymark_email::rewrite_html(
        &signer,
        &message,
        r#"<html><body><a href="https://shop.example.com/">Shop</a><a href="mailto:x@y">Mail</a></body></html>"#,
    )
    .unwrap();
    assert_valid(
        &doc,
        &schema("EmailRewritten"),
        &serde_json::to_value(&rewritten).unwrap(),
        "the answer of /v1/email/rewrite",
    );
    // The request bodies the README shows.
    assert_valid(
        &doc,
        &schema("EmailLinksRequest"),
        &json!({"recipient": {"user_id": "u-1842", "email": "ada@example.com"}, "campaign": "november",
                "send_id": "snd_01", "links": ["https://shop.example.com/sale"]}),
        "a links request",
    );
    assert_valid(
        &doc,
        &schema("EmailRewriteRequest"),
        &json!({"recipient": {"email": "ada@example.com"}, "campaign": "november", "html": "<html>...</html>"}),
        "a rewrite request",
    );
}
