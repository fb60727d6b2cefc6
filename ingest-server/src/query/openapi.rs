//! `GET /openapi.json`: the OpenAPI 3 description of the query API, the email endpoints
//! (`crate::http::email`), the import (`crate::http::import`) and identity endpoints
//! (`crate::identity`). The test `query_openapi` checks live responses of every query
//! endpoint, and the email endpoints' real answer types, against these schemas (objects are
//! closed with `additionalProperties: false`, so a field added to a response without being
//! described here fails it).

use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};

pub async fn handler() -> Response {
    axum::Json(document()).into_response()
}

fn nullable(mut v: Value) -> Value {
    v["nullable"] = json!(true);
    v
}

fn obj(required: &[&str], props: Value) -> Value {
    json!({"type": "object", "additionalProperties": false, "required": required, "properties": props})
}

fn time() -> Value {
    json!({"type": "string", "format": "date-time"})
}

fn string() -> Value {
    json!({"type": "string"})
}

fn int() -> Value {
    json!({"type": "integer", "minimum": 0})
}

fn number() -> Value {
    json!({"type": "number"})
}

fn score() -> Value {
    json!({"type": "integer", "minimum": 1, "maximum": 5, "nullable": true})
}

fn counts() -> Value {
    obj(
        &["sessions", "page_views", "events"],
        json!({"sessions": int(), "page_views": int(), "events": int()}),
    )
}

/// Free-form JSON object (traits, properties).
fn free() -> Value {
    json!({"type": "object", "additionalProperties": true})
}

fn error_responses() -> Value {
    let r = |d: &str| json!({"description": d, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}});
    json!({
        "400": r("A parameter or the body is wrong; `field` names it."),
        "401": r("No read key, or an unknown one."),
        "403": r("The read key may not read this site (or, for `/v1/subscriptions`, has no `subscribe = true`)."),
        "503": r("ClickHouse failed or did not answer; retry after `Retry-After` seconds."),
    })
}

fn site_param() -> Value {
    json!({"name": "site", "in": "query", "required": true, "schema": {"type": "string"},
           "description": "The site to read; the read key must list it."})
}

fn id_param() -> Value {
    json!({"name": "id", "in": "path", "required": true, "schema": {"type": "string", "minLength": 1, "maxLength": 256},
           "description": "A user id or an anonymous id; an anonymous id linked to a user resolves to that user."})
}

fn with_errors(mut responses: Value, not_found: bool) -> Value {
    for (k, v) in error_responses().as_object().expect("object") {
        responses[k] = v.clone();
    }
    if not_found {
        responses["404"] = json!({"description": "No visitor or user with this id on this site.",
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}});
    }
    responses
}

/// The document.
pub fn document() -> Value {
    let product = obj(
        &["product_id", "name", "last_viewed", "views", "engaged_ms"],
        json!({"product_id": string(), "name": nullable(string()), "last_viewed": nullable(time()),
               "views": int(), "engaged_ms": int()}),
    );
    let cart_line = obj(
        &[
            "product_id",
            "name",
            "price",
            "quantity",
            "currency",
            "added_at",
        ],
        json!({"product_id": string(), "name": nullable(string()), "price": number(), "quantity": number(),
               "currency": nullable(string()), "added_at": nullable(time())}),
    );
    let profile = obj(
        &[
            "id",
            "site",
            "user_id",
            "anonymous_ids",
            "ids",
            "identifiers",
            "first_seen",
            "last_seen",
            "last_page",
            "counts",
            "engagement",
            "recently_viewed",
            "products_by_attention",
            "cart",
            "orders",
            "rfm",
            "geo",
            "device",
            "traits",
            "traits_at",
            "email",
        ],
        json!({
            "id": {"type": "string", "description": "The user id when known, else the anonymous id."},
            "site": string(),
            "user_id": nullable(string()),
            "anonymous_ids": {"type": "array", "items": string(), "description": "Anonymous ids linked to the user."},
            "ids": {"type": "array", "description": "Every id of the person and where it came from: the user id (`source: user`), user ids merged into it (`type: user_id`, `source: merge`, `merged_into`), anonymous ids with the call that linked them (`identify`, `track`, `email_click`, `merge_device`...).",
                "items": obj(&["id", "type", "source"], json!({"id": string(), "type": {"type": "string", "enum": ["user_id", "anonymous_id"]},
                    "source": string(), "merged_into": string(), "user_id": string(), "linked_at": nullable(time())}))},
            "identifiers": {"type": "array", "description": "Normalised identifiers from identify traits, with the user id they came with and their source (`api`, `edge`, `import`).",
                "items": obj(&["type", "value", "user_id", "source", "seen_at"], json!({"type": {"type": "string", "enum": ["email", "phone"]},
                    "value": string(), "user_id": string(), "source": string(), "seen_at": nullable(time())}))},
            "first_seen": nullable(time()),
            "last_seen": nullable(time()),
            "last_page": nullable(obj(&["url", "title", "time"], json!({"url": string(), "title": string(), "time": nullable(time())}))),
            "counts": obj(&["last_7_days", "last_30_days"], json!({"last_7_days": counts(), "last_30_days": counts()})),
            "engagement": obj(&["engaged_ms_30_days", "bucket"], json!({
                "engaged_ms_30_days": int(),
                "bucket": {"type": "string", "enum": ["short", "medium", "long"]}})),
            "recently_viewed": {"type": "array", "items": product, "description": "Most recent first."},
            "products_by_attention": {"type": "array", "items": product, "description": "The viewed products with engaged time, most engaged time first (then most views): what the visitor looked at longest."},
            "cart": obj(&["products", "last_added_at", "abandoned"], json!({
                "products": {"type": "array", "items": cart_line},
                "last_added_at": nullable(time()),
                "abandoned": {"type": "boolean", "description": "The last add is older than `cart_abandon_after` and no order followed it."}})),
            "orders": obj(&["count", "revenue", "currency", "last_order_at", "average_order_value"], json!({
                "count": int(), "revenue": number(), "currency": nullable(string()),
                "last_order_at": nullable(time()), "average_order_value": number()})),
            "rfm": obj(&["recency_days", "frequency", "monetary", "r_score", "f_score", "m_score", "site_customers"], json!({
                "recency_days": nullable(int()), "frequency": int(), "monetary": number(),
                "r_score": score(), "f_score": score(), "m_score": score(), "site_customers": int()})),
            "geo": nullable(obj(&["country", "region", "city", "timezone", "time"], json!({
                "country": string(), "region": nullable(string()), "city": nullable(string()),
                "timezone": nullable(string()), "time": nullable(time())}))),
            "device": nullable(obj(&["type", "browser", "os", "time"], json!({
                "type": string(), "browser": nullable(string()), "os": nullable(string()), "time": nullable(time())}))),
            "traits": free(),
            "traits_at": nullable(time()),
            "email": obj(&["human_opens", "machine_opens", "human_clicks", "scanner_clicks", "last_open_at", "last_click_at", "campaigns"], json!({
                "human_opens": int(), "machine_opens": int(), "human_clicks": int(), "scanner_clicks": int(),
                "last_open_at": nullable(time()), "last_click_at": nullable(time()),
                "campaigns": {"type": "array", "description": "The last 10 campaigns a person opened or clicked, most recent first.",
                    "items": obj(&["campaign", "opened_at", "clicked_at"], json!({
                        "campaign": string(), "opened_at": nullable(time()), "clicked_at": nullable(time())}))}})),
        }),
    );
    let event = obj(
        &[
            "message_id",
            "type",
            "event",
            "name",
            "timestamp",
            "session_id",
            "page",
            "product_id",
            "properties",
        ],
        json!({
            "message_id": string(),
            "type": {"type": "string", "enum": ["track", "page", "identify", "screen", "alias", "group"]},
            "event": nullable(string()), "name": nullable(string()), "timestamp": nullable(time()),
            "session_id": nullable(string()),
            "page": nullable(obj(&["url", "title"], json!({"url": string(), "title": string()}))),
            "product_id": nullable(string()), "properties": free(),
        }),
    );
    let events_page = obj(
        &["id", "site", "events", "next_before"],
        json!({"id": string(), "site": string(), "events": {"type": "array", "items": {"$ref": "#/components/schemas/Event"}},
               "next_before": {"type": "string", "nullable": true, "description": "Pass as `before` for the next page; null on the last page."}}),
    );
    let member = obj(
        &["id", "user_id", "last_seen", "geo", "traits"],
        json!({"id": string(), "user_id": nullable(string()), "last_seen": nullable(time()),
               "geo": obj(&["country", "region", "city", "timezone"], json!({
                   "country": nullable(string()), "region": nullable(string()), "city": nullable(string()), "timezone": nullable(string())})),
               "traits": free()}),
    );
    let audience_page = obj(
        &["site", "count", "members", "next_cursor"],
        json!({"site": string(), "count": int(), "members": {"type": "array", "items": {"$ref": "#/components/schemas/AudienceMember"}},
               "next_cursor": {"type": "string", "nullable": true, "description": "Pass as `cursor` for the next page; null on the last page."}}),
    );
    let filter = |key: &str| {
        json!({"type": "object", "additionalProperties": false, "required": [key, "op", "value"], "properties": {
            key: string(),
            "op": {"type": "string", "enum": ["eq", "neq", "contains", "gt", "gte", "lt", "lte", "in"]},
            "value": {"oneOf": [string(), number(), {"type": "boolean"}, {"type": "array", "items": string()}]}}})
    };
    let within = json!({"type": "string", "pattern": "^[0-9]+[smhdw]$", "example": "24h"});
    let condition = json!({"oneOf": [
        {"type": "object", "additionalProperties": false, "required": ["type", "event"], "properties": {
            "type": {"type": "string", "enum": ["did"]}, "event": string(), "within": within,
            "min_count": {"type": "integer", "minimum": 1}, "where": {"type": "array", "items": filter("property")}}},
        {"type": "object", "additionalProperties": false, "required": ["type", "event"], "properties": {
            "type": {"type": "string", "enum": ["did_not"]}, "event": string(), "within": within,
            "where": {"type": "array", "items": filter("property")}}},
        {"type": "object", "additionalProperties": false, "required": ["type", "within"], "properties": {
            "type": {"type": "string", "enum": ["last_seen_within"]}, "within": within}},
        {"type": "object", "additionalProperties": false, "required": ["type", "action"], "properties": {
            "type": {"type": "string", "enum": ["email"]},
            "action": {"type": "string", "enum": ["opened", "clicked"]},
            "campaign": string(), "within": within,
            "people_only": {"type": "boolean", "default": true, "description": "Count people's opens and clicks only (not machine opens or scanner clicks)."}}},
        {"type": "object", "additionalProperties": false, "required": ["type", "field", "op", "value"], "properties": {
            "type": {"type": "string", "enum": ["geo"]},
            "field": {"type": "string", "enum": ["country", "region", "city", "timezone"]},
            "op": {"type": "string", "enum": ["eq", "neq", "contains", "in"]},
            "value": {"oneOf": [string(), {"type": "array", "items": string()}]}}},
        {"type": "object", "additionalProperties": false, "required": ["type", "name", "op", "value"], "properties": {
            "type": {"type": "string", "enum": ["trait"]}, "name": string(),
            "op": {"type": "string", "enum": ["eq", "neq", "contains", "gt", "gte", "lt", "lte", "in"]},
            "value": {"oneOf": [string(), number(), {"type": "boolean"}, {"type": "array", "items": string()}]}}},
    ]});
    let audience_query = json!({"type": "object", "additionalProperties": false, "required": ["conditions"], "properties": {
        "conditions": {"type": "array", "minItems": 1, "maxItems": 20, "items": condition,
            "description": "All must hold. `event` is a track event name, or `$page`, `$identify`, `$screen`, `$alias`, `$group`."},
        "limit": {"type": "integer", "minimum": 1, "maximum": 10000, "default": 100},
        "cursor": {"type": "string", "nullable": true}}});
    let subscription_request = json!({"type": "object", "additionalProperties": false,
        "required": ["name", "audience", "url", "secret"], "properties": {
            "name": {"type": "string", "minLength": 1, "maxLength": 200},
            "audience": {"type": "object", "additionalProperties": false, "required": ["conditions"], "properties": {
                "conditions": {"type": "array", "minItems": 1, "maxItems": 20, "items": condition.clone(),
                    "description": "The audience language of `/v1/audiences/query`: all must hold."}}},
            "url": {"type": "string", "description": "Where deliveries are POSTed (https://, or http:// e.g. inside a private network)."},
            "secret": {"type": "string", "minLength": 16, "maxLength": 256, "description": "Signs every delivery (HMAC-SHA256); never returned."}}});
    let subscription = obj(
        &["id", "name", "audience", "url", "created_at"],
        json!({"id": string(), "name": string(), "audience": free(), "url": string(), "created_at": time()}),
    );
    let subscription_list = obj(
        &["site", "subscriptions"],
        json!({"site": string(), "subscriptions": {"type": "array", "items": {"$ref": "#/components/schemas/Subscription"}}}),
    );
    let delivery = json!({"type": "object", "additionalProperties": false,
        "required": ["id", "type", "at", "site", "subscription", "person", "entry", "profile"],
        "description": "The body POSTed to a subscription's URL, with headers `x-waymark-timestamp` (Unix seconds), `x-waymark-signature: v1=<hex HMAC-SHA256(secret, \"<timestamp>.<body>\")>` and `idempotency-key` (= `id`).",
        "properties": {
            "id": {"type": "string", "description": "The idempotency key: the same for every attempt of this (subscription, person, entry, type)."},
            "type": {"type": "string", "enum": ["entered", "left"]},
            "at": {"type": "string", "format": "date-time", "description": "The evaluation that found the change."},
            "site": string(),
            "subscription": obj(&["id", "name"], json!({"id": string(), "name": string()})),
            "person": obj(&["id", "user_id"], json!({"id": string(), "user_id": nullable(string())})),
            "entry": {"type": "integer", "minimum": 0, "description": "How many times the person entered this audience, this time included (a `left` carries the entry it ends)."},
            "profile": {"type": "object", "additionalProperties": true, "description": "The person as the evaluation read them: the fields of an `AudienceMember` (id, user_id, last_seen, geo, traits); `{\"id\", \"merged\": true}` on the `left` of an anonymous id that now belongs to a user. The whole profile is `GET /v1/profiles/{id}`."}}});
    let dead_letters = obj(
        &["site", "count", "dead_letters"],
        json!({"site": string(), "count": int(), "dead_letters": {"type": "array", "items": obj(
            &["id", "subscription_id", "person", "type", "attempts", "last_error", "failed_at", "payload"],
            json!({"id": string(), "subscription_id": string(), "person": string(),
                   "type": {"type": "string", "enum": ["entered", "left"]}, "attempts": int(),
                   "last_error": string(), "failed_at": time(),
                   "payload": {"$ref": "#/components/schemas/TriggerDelivery"}}))}}),
    );
    let hour_series = |fields: Value| {
        let mut props = fields;
        props["hour"] = time();
        let keys: Vec<String> = props.as_object().unwrap().keys().cloned().collect();
        let keys: Vec<&str> = keys.iter().map(String::as_str).collect();
        json!({"type": "array", "items": obj(&keys, props)})
    };
    let share = json!({"type": "number", "minimum": 0, "maximum": 1});
    let example = nullable(json!({"type": "object", "additionalProperties": true,
        "description": "An event with the problem: `message_id`, `timestamp` and `data` (its properties, or traits for identify, cut at 300 bytes); for an order `order_id`, `seen_by`, both revenues and a `message_id`."}));
    let quality = obj(
        &[
            "site",
            "since",
            "until",
            "events",
            "problems",
            "volume",
            "violations",
            "completeness",
            "consistency",
            "intake",
            "bots",
            "clock",
            "freshness",
        ],
        json!({
            "site": string(), "since": time(), "until": time(),
            "events": {"type": "integer", "minimum": 0, "description": "Events stored in the window (by their skew-corrected time)."},
            "problems": {"type": "array", "description": "What is wrong, worst first: by `score`, the share of the events concerned (for a volume anomaly, how far the hour is from its 7-day average).",
                "items": obj(&["check", "title", "score", "count", "example"], json!({
                    "check": {"type": "string", "enum": ["volume", "violations", "completeness", "consistency", "rejects", "quarantine", "freshness"]},
                    "title": string(), "score": share.clone(), "count": int(), "example": example.clone()}))},
            "volume": obj(&["factor", "min_events", "hours", "by_event", "anomalies", "last_complete_hour_anomalies"], json!({
                "factor": number(), "min_events": int(),
                "hours": hour_series(json!({"events": int(), "violating": int(), "bots": int()})),
                "by_event": {"type": "array", "items": obj(&["event", "events"], json!({"event": string(), "events": int()}))},
                "anomalies": {"type": "array", "description": "Event names whose count in a complete hour is over `factor` times, or under 1/`factor` of, the same hour's average over the 7 days before (hours whose average is under `min_events` are not judged); furthest first.",
                    "items": obj(&["event", "hour", "events", "baseline", "ratio", "kind"], json!({
                        "event": string(), "hour": time(), "events": int(), "baseline": number(), "ratio": number(),
                        "kind": {"type": "string", "enum": ["drop", "spike"]}}))},
                "last_complete_hour_anomalies": int()})),
            "violations": obj(&["events", "share", "by_kind", "by_event"], json!({
                "events": int(), "share": share.clone(),
                "by_kind": {"type": "array", "items": obj(&["kind", "count"], json!({"kind": string(), "count": int()}))},
                "by_event": {"type": "array", "items": obj(&["event", "kind", "field", "count", "share", "example"], json!({
                    "event": string(), "kind": string(), "field": string(), "count": int(), "share": share.clone(), "example": example.clone()}))}})),
            "completeness": {"type": "array", "description": "Each `[[sites.completeness]]` field against its threshold.",
                "items": obj(&["event", "field", "min", "events", "missing", "present", "below", "example"], json!({
                    "event": string(), "field": string(), "min": share.clone(), "events": int(), "missing": int(),
                    "present": share.clone(), "below": {"type": "boolean"}, "example": example.clone()}))},
            "consistency": obj(&["orders", "both", "browser_only", "backend_only", "one_side_share", "revenue_mismatches", "revenue_mismatch_share", "days", "examples"], json!({
                "orders": {"type": "integer", "minimum": 0, "description": "Distinct `order_id`s of `Order Completed`. The browser's side came through the edge worker or from the Waymark tag (`context.library.name = waymark.js`); the backend's is every other direct call."},
                "both": int(), "browser_only": int(), "backend_only": int(), "one_side_share": share.clone(),
                "revenue_mismatches": int(), "revenue_mismatch_share": share.clone(),
                "days": {"type": "array", "items": obj(&["day", "orders", "both", "browser_only", "backend_only", "revenue_mismatches", "browser_revenue", "backend_revenue", "revenue_difference"], json!({
                    "day": {"type": "string", "format": "date"}, "orders": int(), "both": int(), "browser_only": int(), "backend_only": int(),
                    "revenue_mismatches": int(), "browser_revenue": number(), "backend_revenue": number(),
                    "revenue_difference": {"type": "number", "description": "Backend revenue minus browser revenue."}}))},
                "examples": {"type": "array", "items": obj(&["order_id", "day", "seen_by", "browser_revenue", "backend_revenue", "message_id"], json!({
                    "order_id": string(), "day": string(), "seen_by": {"type": "string", "enum": ["browser", "backend", "both"]},
                    "browser_revenue": number(), "backend_revenue": number(), "message_id": string()}))}})),
            "intake": obj(&["received", "rejected", "rejected_share", "rejected_by_reason", "duplicates_dropped", "duplicates_stored", "rate_limited", "quarantined", "quarantine_by_reason", "hours", "quarantine_hours"], json!({
                "received": int(), "rejected": int(), "rejected_share": share.clone(),
                "rejected_by_reason": {"type": "array", "items": obj(&["reason", "count"], json!({"reason": {"type": "string", "description": "`invalid_field:<top-level field>` or `plan:<violation kind>`."}, "count": int()}))},
                "duplicates_dropped": {"type": "integer", "minimum": 0, "description": "Events dropped at intake as a recent duplicate of the same message id."},
                "duplicates_stored": {"type": "integer", "minimum": 0, "description": "Rows stored twice and not yet merged by ClickHouse."},
                "rate_limited": int(), "quarantined": int(),
                "quarantine_by_reason": {"type": "array", "items": obj(&["reason", "count", "example_message_id"], json!({"reason": string(), "count": int(), "example_message_id": string()}))},
                "hours": hour_series(json!({"rejected": int(), "duplicates_dropped": int(), "rate_limited": int()})),
                "quarantine_hours": hour_series(json!({"reason": string(), "count": int()}))})),
            "bots": obj(&["events", "bots", "share"], json!({"events": int(), "bots": int(), "share": share.clone()})),
            "clock": obj(&["events", "corrected", "corrected_share", "mean_correction_ms", "max_correction_ms", "hours"], json!({
                "events": int(), "corrected": {"type": "integer", "minimum": 0, "description": "Events whose time the clock-skew rule moved by a second or more."},
                "corrected_share": share.clone(), "mean_correction_ms": int(), "max_correction_ms": int(),
                "hours": hour_series(json!({"corrected": int(), "mean_correction_ms": int()}))})),
            "freshness": obj(&["visible", "mean_delay_ms", "late_60s", "late_share", "hours"], json!({
                "visible": {"type": "integer", "minimum": 0, "description": "Rows inserted into ClickHouse in the window."},
                "mean_delay_ms": {"type": "integer", "minimum": 0, "description": "Mean time from the intake's receipt (answered right after) to the ClickHouse insert (whole seconds of the server's clock)."},
                "late_60s": int(), "late_share": share.clone(),
                "hours": hour_series(json!({"visible": int(), "mean_delay_ms": int(), "late_60s": int()}))})),
        }),
    );
    let error = obj(
        &["error", "message", "field"],
        json!({"error": {"type": "string", "description": "Machine-readable reason."},
               "message": string(), "field": nullable(string())}),
    );

    let admin = json!([{"adminKey": []}]);
    let admin_errors = |mut responses: Value, not_found: &str| {
        let r = |d: &str| json!({"description": d, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}});
        responses["400"] = r("A parameter is wrong; `field` names it.");
        responses["401"] = r(
            "No admin key, or a key that is not one (read and write keys cannot delete or export).",
        );
        responses["403"] = r("The admin key does not cover this site.");
        responses["404"] = r(not_found);
        responses["503"] =
            r("ClickHouse failed or did not answer; retry after `Retry-After` seconds.");
        responses
    };
    let admin_site = json!({"name": "site", "in": "query", "required": true, "schema": {"type": "string"},
        "description": "The site; the admin key must list it."});
    let person_id = json!({"name": "id", "in": "path", "required": true, "schema": {"type": "string", "minLength": 1},
        "description": "Any id of the person (user id or anonymous id); every id linked to it is included."});
    let deletion = obj(
        &["job", "site", "ids", "status", "status_url"],
        json!({"job": string(), "site": string(),
               "ids": {"type": "integer", "minimum": 1, "description": "Ids of the person found through the identity links (the given one included); all are suppressed and deleted."},
               "status": {"type": "string", "enum": ["running"]},
               "status_url": string()}),
    );
    let deletion_status = obj(
        &[
            "job",
            "site",
            "requested_at",
            "status",
            "statements",
            "mutations_done",
            "parts_to_do",
            "pending_tables",
        ],
        json!({"job": string(), "site": string(), "requested_at": string(),
               "status": {"type": "string", "enum": ["running", "done"], "description": "`done` once ClickHouse finished every delete of the job (system.mutations)."},
               "statements": int(), "mutations_done": int(), "parts_to_do": int(),
               "pending_tables": {"type": "array", "items": string()}}),
    );
    let export_line = json!({"type": "object", "additionalProperties": true, "required": ["record"],
        "description": "One stored row: `record` is `event` (every column of `events`) or `identity` (a link: site, user_id, anonymous_id, linked_at, message_id, source_type).",
        "properties": {"record": {"type": "string", "enum": ["event", "identity"]}}});
    let recipient = json!({"type": "object", "additionalProperties": false,
        "description": "Who the message goes to: a user id, an email address, or both (at least one).",
        "properties": {"user_id": string(), "email": string()}});
    let message_props = |extra: (&str, Value)| {
        let mut props = json!({
            "recipient": recipient.clone(),
            "campaign": {"type": "string", "description": "The campaign, for the profile and audiences."},
            "send_id": {"type": "string", "description": "The platform's id of this one message to this one recipient."},
        });
        props[extra.0] = extra.1;
        props
    };
    let email_links_request = json!({"type": "object", "additionalProperties": false,
        "required": ["recipient", "links"],
        "properties": message_props(("links", json!({"type": "array", "maxItems": 1000,
            "items": {"type": "string", "description": "An absolute http(s) URL (at most 4096 bytes)."}})))});
    let email_links = obj(
        &["pixel", "links"],
        json!({"pixel": {"type": "string", "description": "The open pixel's URL: `{base_url}/e/o/<token>.gif`."},
               "links": {"type": "array", "items": obj(&["url", "tracked"], json!({
                   "url": string(),
                   "tracked": {"type": "string", "description": "`{base_url}/e/c/<token>`: redirects to `url`."}}))}}),
    );
    let email_rewrite_request = json!({"type": "object", "additionalProperties": false,
        "required": ["recipient", "html"],
        "properties": message_props(("html", json!({"type": "string", "description": "The email's HTML, at most 2 MiB."})))});
    let email_rewritten = obj(
        &["html", "tracked", "skipped"],
        json!({"html": {"type": "string", "description": "Every `<a href>` to an http(s) URL tracked, the pixel added."},
               "tracked": int(), "skipped": {"type": "integer", "minimum": 0,
                   "description": "Links left alone: mailto:, tel:, anchors, relative, `data-waymark-skip`."}}),
    );
    let token_param = |description: &str| {
        json!({"name": "token", "in": "path", "required": true,
               "schema": {"type": "string", "pattern": "^[A-Za-z0-9_-]+$", "maxLength": 8192},
               "description": description})
    };
    let email_errors = |ok: Value| {
        let mut r = ok;
        let e = |d: &str| json!({"description": d, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}});
        r["400"] = e("The body is wrong; `field` names it (`recipient`, `links`, `html`, ...).");
        r["401"] = e("No send key, or an unknown one.");
        r["403"] = e("The send key belongs to another site than `site`.");
        r["413"] = e("The body is too large.");
        r
    };
    let send_site_param = json!({"name": "site", "in": "query", "required": false, "schema": {"type": "string"},
        "description": "The site; optional, the send key names it (when given, it must be that key's site)."});

    let unmerge_path = json!({"post": {
        "summary": "Undo the merges of a person's id",
        "description": "A merged user id leaves its person; a person's own user id lets every id merged into it go. The merge links are deleted (the answer waits for ClickHouse), the undo is recorded in `merges`, and an id set apart is never merged automatically again.",
        "security": admin, "parameters": [person_id.clone(), admin_site.clone()],
        "responses": admin_errors(json!({"200": {"description": "The merges undone.",
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Unmerged"}}}}}), "The id is not merged with anyone on this site."),
    }});
    let suggestions_path = json!({"get": {
        "summary": "Near matches to confirm: different people with the same name and postcode",
        "description": "Never merged automatically. Pairs are scored by the Jaro-Winkler similarity of their emails (1 when neither has one), best first, at most 500.",
        "parameters": [site_param()],
        "responses": with_errors(json!({"200": {"description": "The pairs.",
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Suggestions"}}}}}), false),
    }});
    let import_path = json!({"post": {
        "summary": "Bulk import: NDJSON in the Segment shape, streamed, of any size",
        "description": "Authenticated with the site's write key (HTTP Basic user name, over TLS) or a send key (Bearer). Events keep their own timestamp however old (`source = import`); a line without `messageId` gets one derived from the site and the line, so importing the same lines again stores nothing twice. Bad lines are listed by line and field and never stop the rest. `Content-Encoding: gzip` allowed.",
        "security": [{"writeKey": []}, {"sendKey": []}],
        "parameters": [{"name": "site", "in": "query", "required": true, "schema": string(), "description": "The site; must be the key's."}],
        "requestBody": {"required": true, "content": {"application/x-ndjson": {"schema": free()}}},
        "responses": {
            "200": {"description": "Every line was read.", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ImportReport"}}}},
            "400": {"description": "A bad parameter (`field` names it), or the body broke off (then the import report, with `error`; resume after `acknowledged_lines`).", "content": {"application/json": {"schema": {"oneOf": [{"$ref": "#/components/schemas/Error"}, {"$ref": "#/components/schemas/ImportReport"}]}}}},
            "401": {"description": "No key, or not a key of any site.", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}},
            "403": {"description": "The key belongs to another site.", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}},
            "415": {"description": "A Content-Encoding other than gzip.", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}},
            "503": {"description": "The spool stayed full: the import report, with `error`; resume after `acknowledged_lines`.", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ImportReport"}}}},
        },
    }});
    let unmerged = obj(
        &["site", "unmerged"],
        json!({"site": string(), "unmerged": {"type": "array",
                    "items": obj(&["id", "from", "identifier"], json!({"id": string(), "from": string(), "identifier": string()}))}}),
    );
    let suggestions = obj(
        &["site", "suggestions"],
        json!({"site": string(), "suggestions": {"type": "array",
                    "items": obj(&["score", "reason", "a", "b"], json!({"score": {"type": "number", "minimum": 0, "maximum": 1}, "reason": string(),
                        "a": {"$ref": "#/components/schemas/SuggestedUser"}, "b": {"$ref": "#/components/schemas/SuggestedUser"}}))}}),
    );
    let suggested_user = obj(
        &["user_id", "person", "email"],
        json!({"user_id": string(), "person": string(), "email": string()}),
    );
    let import_report = obj(
        &[
            "lines",
            "accepted",
            "rejected_lines",
            "rejected",
            "suppressed",
            "acknowledged_lines",
        ],
        json!({
                    "lines": int(), "accepted": int(), "rejected_lines": int(), "suppressed": int(), "acknowledged_lines": int(),
                    "rejected": {"type": "array", "items": obj(&["line", "field", "reason"], json!({"line": int(), "field": string(), "reason": string()}))},
                    "error": string()}),
    );

    json!({
        "openapi": "3.0.3",
        "info": {
            "title": "Waymark query API",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "Recency profiles, event history and audiences for email platforms. Every `/v1/` call needs `Authorization: Bearer <read key>`; a key reads only the sites it lists. Windows of 7 and 30 days are whole days, today included. The email endpoints: `/v1/email/links` and `/v1/email/rewrite` take the site's send key instead (`sites.send_keys`); `/e/o/{token}.gif` and `/e/c/{token}` are the readers' (no key: the token is signed), served here and under the edge worker's prefix."
        },
        "components": {
            "securitySchemes": {
                "readKey": {"type": "http", "scheme": "bearer"},
                "sendKey": {"type": "http", "scheme": "bearer", "description": "A send key of the site (`[[sites]] send_keys`), never a write or read key."},
                "adminKey": {"type": "http", "scheme": "bearer", "description": "An admin key ([[privacy.admin_keys]]): its own scope, for deleting and exporting people."},
                "writeKey": {"type": "http", "scheme": "basic", "description": "The site's write key as the HTTP Basic user name (no password)."},
            },
            "schemas": {
                "Profile": profile, "Event": event, "EventsPage": events_page,
                "AudienceQuery": audience_query, "AudienceMember": member, "AudiencePage": audience_page,
                "EmailLinksRequest": email_links_request, "EmailLinks": email_links,
                "EmailRewriteRequest": email_rewrite_request, "EmailRewritten": email_rewritten,
                "Error": error, "Deletion": deletion, "DeletionStatus": deletion_status,
                "ExportLine": export_line,
                "SubscriptionRequest": subscription_request, "Subscription": subscription,
                "SubscriptionList": subscription_list, "TriggerDelivery": delivery,
                "DeadLetters": dead_letters, "QualityReport": quality,
                    "Unmerged": unmerged, "Suggestions": suggestions, "SuggestedUser": suggested_user,
                "ImportReport": import_report,
            }
        },
        "security": [{"readKey": []}],
        "paths": {
            "/v1/profiles/{id}": {"get": {
                "summary": "A person's profile",
                "parameters": [id_param(), site_param()],
                "responses": with_errors(json!({"200": {"description": "The profile.",
                    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Profile"}}}}}), true),
            }},
            "/v1/profiles/{id}/events": {"get": {
                "summary": "A person's events, newest first",
                "parameters": [id_param(), site_param(),
                    {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": 1000, "default": 50}},
                    {"name": "before", "in": "query", "schema": {"type": "string"}, "description": "`next_before` of the previous page, or an RFC 3339 time."},
                    {"name": "type", "in": "query", "schema": {"type": "string", "enum": ["track", "page", "identify", "screen", "alias", "group"]}},
                    {"name": "name", "in": "query", "schema": {"type": "string"}, "description": "Track event name or page name."}],
                "responses": with_errors(json!({"200": {"description": "A page of events.",
                    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/EventsPage"}}}}}), true),
            }},
            "/v1/audiences/query": {"post": {
                "summary": "People matching every condition",
                "parameters": [site_param()],
                "requestBody": {"required": true, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/AudienceQuery"}}}},
                "responses": with_errors(json!({"200": {"description": "A page of members, or with `Accept: application/x-ndjson` the whole audience, one member per line.",
                    "content": {
                        "application/json": {"schema": {"$ref": "#/components/schemas/AudiencePage"}},
                        "application/x-ndjson": {"schema": {"$ref": "#/components/schemas/AudienceMember"}}}}}), false),
            }},
            "/v1/subscriptions": {
                "post": {
                    "summary": "Register a webhook told when a person enters or leaves an audience",
                    "description": "Needs a read key with `subscribe = true`. Within 60 s of the event that makes a person match (or stop matching, windows included), a signed `TriggerDelivery` is POSTed to `url` (or, with the server's `[triggers] batch` above 1, up to that many of one subscription as `{\"deliveries\": [TriggerDelivery, ...]}`, signed as a whole: deduplicate by each `id`); retried with backoff, then kept as a dead letter. The audience as it is when the subscription is first evaluated is its starting point: people who already match are not notified.",
                    "parameters": [site_param()],
                    "requestBody": {"required": true, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/SubscriptionRequest"}}}},
                    "responses": with_errors(json!({"201": {"description": "Registered (the secret is not returned).",
                        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Subscription"}}}}}), false),
                },
                "get": {
                    "summary": "The site's subscriptions",
                    "parameters": [site_param()],
                    "responses": with_errors(json!({"200": {"description": "Oldest first.",
                        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/SubscriptionList"}}}}}), false),
                },
            },
            "/v1/subscriptions/{id}": {"delete": {
                "summary": "Remove a subscription (its pending deliveries are cancelled)",
                "parameters": [site_param(), {"name": "id", "in": "path", "required": true, "schema": string()}],
                "responses": with_errors(json!({
                    "200": {"description": "Removed.", "content": {"application/json": {"schema": obj(&["deleted"], json!({"deleted": string()}))}}},
                    "404": {"description": "No such subscription on this site.", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}}), false),
            }},
            "/v1/subscriptions/dead_letters": {"get": {
                "summary": "Deliveries given up on after `triggers.max_attempts`, newest first",
                "parameters": [site_param(), {"name": "limit", "in": "query", "required": false, "schema": {"type": "integer", "minimum": 1, "maximum": 1000, "default": 100}}],
                "responses": with_errors(json!({"200": {"description": "Dead letters with their last error and payload.",
                    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/DeadLetters"}}}}}), false),
            }},
            "/v1/persons/{id}": {"delete": {
                "summary": "Delete a person (GDPR Art. 17)",
                "description": "Finds every id of the person through the identity links, puts them on the suppression list (late events are dropped), and deletes their rows from events, identities, quarantine and every query table. Answers at once; poll `status_url`.",
                "security": admin, "parameters": [person_id, admin_site],
                "responses": admin_errors(json!({"202": {"description": "The deletion job.",
                    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Deletion"}}}}}), "Not used."),
            }},
            "/v1/deletions/{job}": {"get": {
                "summary": "Whether a deletion is finished",
                "security": admin,
                "parameters": [{"name": "job", "in": "path", "required": true, "schema": {"type": "string"}}, admin_site],
                "responses": admin_errors(json!({"200": {"description": "The job's state.",
                    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/DeletionStatus"}}}}}), "No such job on this site."),
            }},
            "/v1/persons/{id}/export": {"get": {
                "summary": "Export a person's data (GDPR Art. 15 and 20)",
                "security": admin, "parameters": [person_id, admin_site],
                "responses": admin_errors(json!({"200": {"description": "NDJSON, streamed: every stored event, then every identity link, of the person.",
                    "content": {"application/x-ndjson": {"schema": {"$ref": "#/components/schemas/ExportLine"}}}}}), "Nothing stored for this id on this site."),
            }},
            "/v1/persons/{id}/unmerge": unmerge_path,
            "/v1/identity/suggestions": suggestions_path,
            "/v1/import": import_path,
            "/v1/email/links": {"post": {
                "summary": "Tracked links and the open pixel for one recipient's message",
                "security": [{"sendKey": []}],
                "parameters": [send_site_param.clone()],
                "requestBody": {"required": true, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/EmailLinksRequest"}}}},
                "responses": email_errors(json!({"200": {"description": "The pixel and each link's tracked URL, in the order given.",
                    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/EmailLinks"}}}}})),
            }},
            "/v1/email/rewrite": {"post": {
                "summary": "An email's HTML with every link tracked and the pixel added",
                "security": [{"sendKey": []}],
                "parameters": [send_site_param],
                "requestBody": {"required": true, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/EmailRewriteRequest"}}}},
                "responses": email_errors(json!({"200": {"description": "The rewritten HTML.",
                    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/EmailRewritten"}}}}})),
            }},
            "/e/o/{token}.gif": {"get": {
                "summary": "An email's open pixel: records `$email_open` (human, machine or unknown)",
                "security": [],
                "parameters": [token_param("The pixel's signed token.")],
                "responses": {"200": {"description": "A 43-byte transparent GIF with no-cache headers, whatever the token (a refused one is counted in `waymark_email_tokens_refused_total`).",
                    "content": {"image/gif": {"schema": {"type": "string", "format": "binary"}}}}},
            }},
            "/e/c/{token}": {
                "get": {
                    "summary": "A tracked link: records `$email_click` (human or scanner) and redirects",
                    "security": [],
                    "parameters": [token_param("The link's signed token; it carries the target.")],
                    "responses": {
                        "302": {"description": "To the signed target; to the site's `home_url` when the token is refused (tampered, expired, unknown key), never to the target it claims. A person's click also sets the `wm_email` stitch marker cookie.",
                            "headers": {"Location": {"schema": {"type": "string"}}, "Set-Cookie": {"schema": {"type": "string"}}}},
                        "404": {"description": "The token names no site of this server: nowhere safe to send the reader.",
                            "content": {"text/plain": {"schema": {"type": "string"}}}},
                    },
                },
                "head": {
                    "summary": "A tracked link fetched with HEAD (a scanner): recorded as a scanner click",
                    "security": [],
                    "parameters": [token_param("The link's signed token.")],
                    "responses": {
                        "302": {"description": "As for GET.", "headers": {"Location": {"schema": {"type": "string"}}}},
                        "404": {"description": "As for GET."},
                    },
                },
            },
            "/v1/quality": {"get": {
                "summary": "The site's data quality report",
                "description": "Tracking plan violations, critical fields against their thresholds, browser and backend orders matched by order id, volume per event name against the same hour of the last 7 days, refused and duplicate events, quarantine, bots, clock skew and ack-to-visible freshness, with the worst problems first. `GET /quality?site=` shows the same as a page (the read key in a form, never in the URL).",
                "parameters": [site_param(),
                    {"name": "since", "in": "query", "schema": {"type": "string", "default": "24h"},
                     "description": "The window's start: an RFC 3339 time or a duration before now (`6h`, `7d`); at most 31 days."}],
                "responses": with_errors(json!({"200": {"description": "The report.",
                    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/QualityReport"}}}}}), false),
            }},
            "/openapi.json": {"get": {
                "summary": "This document", "security": [],
                "responses": {"200": {"description": "OpenAPI 3 document.", "content": {"application/json": {"schema": {"type": "object"}}}}},
            }},
        }
    })
}
