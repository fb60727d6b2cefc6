//! `GET /v1/profiles/{id}/events?site=&limit=&before=&type=&name=`: a person's events, newest
//! first, across every visitor id of the resolved identity.
//!
//! Pages are keyed by `(timestamp_ms, message_id)`: `next_before` is an opaque cursor for the
//! last event of the page; passing it as `before` continues strictly after it. `before` also
//! accepts an RFC 3339 time. An event inserted twice and not yet merged is listed once, at the
//! later of its times, on exactly one page (keys are grouped by message id before paging). The
//! read is limited to the person's `(site, visitor_id)` key ranges of `q_history` (a copy of the
//! listed columns sorted by visitor and time, in small granules: see `store::schema::query`).

use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{json, Value};

use super::profile::{check_id, for_person, visitor_filter, Identity};
use super::sql::{hex, int, lit, unhex};
use super::{time_or_null, QueryError, QueryState};

/// Default and largest page sizes.
pub const DEFAULT_LIMIT: usize = 50;
pub const MAX_LIMIT: usize = 1000;

/// The event types a `type` filter accepts.
const TYPES: &[&str] = &["track", "page", "identify", "screen", "alias", "group"];

#[derive(Debug, Deserialize)]
pub struct Params {
    pub site: Option<String>,
    pub limit: Option<String>,
    pub before: Option<String>,
    #[serde(rename = "type")]
    pub kind: Option<String>,
    pub name: Option<String>,
}

pub async fn handler(
    State(st): State<QueryState>,
    Path(id): Path<String>,
    Query(p): Query<Params>,
    headers: HeaderMap,
) -> Response {
    let run = async {
        let site = st.authorize(&headers, p.site.as_deref())?;
        check_id(&id)?;
        let key = format!(
            "events\n{site}\n{id}\n{:?}\n{:?}\n{:?}\n{:?}",
            p.limit, p.before, p.kind, p.name
        );
        if let Some(hit) = st.cached(&key) {
            return Ok(hit);
        }
        let v = Arc::new(history(&st, &site, &id, &p).await?);
        st.remember(key, v.clone());
        Ok::<_, QueryError>(v)
    };
    match run.await {
        Ok(v) => super::json_response(v),
        Err(e) => e.into_response(),
    }
}

/// Where a page starts: strictly before this `(timestamp_ms, message_id)`.
#[derive(Debug, PartialEq)]
struct Before {
    ts: i64,
    message_id: Option<String>,
}

fn parse_before(s: &str) -> Result<Before, QueryError> {
    if let Some(ms) = waymark_protocol::time::parse_rfc3339(s) {
        return Ok(Before {
            ts: ms,
            message_id: None,
        });
    }
    let bad = || {
        QueryError::bad(
            "before",
            "expected the `next_before` cursor of a previous page or an RFC 3339 time",
        )
    };
    let text = unhex(s).ok_or_else(bad)?;
    let (ts, mid) = text.split_once('\n').ok_or_else(bad)?;
    Ok(Before {
        ts: ts.parse().map_err(|_| bad())?,
        message_id: Some(mid.to_string()),
    })
}

#[derive(Debug, Deserialize)]
struct Row {
    message_id: String,
    #[serde(rename = "type")]
    kind: String,
    event: String,
    name: String,
    timestamp_ms: i64,
    session_id: String,
    page_url: String,
    page_title: String,
    product_id: String,
    properties: String,
}

async fn history(st: &QueryState, site: &str, id: &str, p: &Params) -> Result<Value, QueryError> {
    let limit = match p.limit.as_deref() {
        None => DEFAULT_LIMIT,
        Some(l) => l
            .parse::<usize>()
            .ok()
            .filter(|n| (1..=MAX_LIMIT).contains(n))
            .ok_or_else(|| {
                QueryError::bad(
                    "limit",
                    format!("must be a whole number from 1 to {MAX_LIMIT}"),
                )
            })?,
    };
    let mut conds = Vec::new();
    let mut cursor = None;
    if let Some(t) = p.kind.as_deref() {
        let t = TYPES.iter().find(|k| **k == t).ok_or_else(|| {
            QueryError::bad("type", format!("must be one of {}", TYPES.join(", ")))
        })?;
        conds.push(format!("type = {}", lit(t)));
    }
    if let Some(n) = p.name.as_deref() {
        if n.len() > waymark_protocol::limits::MAX_NAME_LEN {
            return Err(QueryError::bad("name", "too long"));
        }
        conds.push(format!("(event = {0} OR name = {0})", lit(n)));
    }
    if let Some(b) = p.before.as_deref() {
        let b = parse_before(b)?;
        cursor = Some(match b.message_id {
            Some(m) => format!(
                "HAVING ts < {t} OR (ts = {t} AND message_id < {m})",
                t = int(b.ts),
                m = lit(&m)
            ),
            None => format!("HAVING ts < {}", int(b.ts)),
        });
    }
    let (conds, cursor) = (&conds, cursor.as_deref());
    for_person(st, site, id, |ident| {
        Box::pin(async move { page(st, site, id, &ident, limit, conds, cursor, p).await })
    })
    .await
}

/// One page of the history of the person `ident`.
#[allow(clippy::too_many_arguments)]
async fn page(
    st: &QueryState,
    site: &str,
    id: &str,
    ident: &Identity,
    limit: usize,
    conds: &[String],
    cursor: Option<&str>,
    p: &Params,
) -> Result<Value, QueryError> {
    let db = st.db();
    let visitors = visitor_filter(site, ident);
    let mut filter = visitors.clone();
    for c in conds {
        filter.push_str(" AND ");
        filter.push_str(c);
    }
    // Two steps in one statement: the page's keys from narrow columns, then the wide columns
    // for those rows only (a busy visitor's whole history is never read wide). The keys are
    // grouped by message id first, so a not-yet-merged duplicate (a retry may carry another
    // corrected time) is one event with one time (the later) on every page. One row more than
    // asked tells whether another page exists. The key set is the PREWHERE, so only the rows
    // it selects are read wide (ClickHouse's own PREWHERE choice is off for lookups; this
    // statement measured 4.5 ms of server CPU against 6.8 ms with the defaults).
    let sql = format!(
        "SELECT message_id, type, event, name, timestamp_ms, session_id, page_url, page_title,
    product_id, properties
FROM {db}.q_history
PREWHERE (timestamp_ms, message_id) IN (
    SELECT ts, message_id FROM (
        SELECT message_id, max(timestamp_ms) AS ts FROM {db}.q_history WHERE {filter}
        GROUP BY message_id {having}
        ORDER BY ts DESC, message_id DESC LIMIT {n}))
WHERE {visitors}
ORDER BY timestamp_ms DESC, message_id DESC LIMIT 1 BY message_id",
        having = cursor.unwrap_or_default(),
        n = limit + 1
    );
    let mut rows: Vec<Row> = st.lookup(&sql).await?;
    if rows.is_empty() && p.before.is_none() && p.kind.is_none() && p.name.is_none() {
        return Err(QueryError::NotFound(format!(
            "id: no visitor or user {id:?} on site {site:?}"
        )));
    }
    let more = rows.len() > limit;
    rows.truncate(limit);
    let next = if more {
        rows.last()
            .map(|r| Value::String(hex(&format!("{}\n{}", r.timestamp_ms, r.message_id))))
            .unwrap_or(Value::Null)
    } else {
        Value::Null
    };
    let events: Vec<Value> = rows
        .into_iter()
        .map(|r| {
            let props: Value = serde_json::from_str(&r.properties).unwrap_or_else(|_| json!({}));
            json!({
                "message_id": r.message_id,
                "type": r.kind,
                "event": opt(r.event),
                "name": opt(r.name),
                "timestamp": time_or_null(r.timestamp_ms),
                "session_id": opt(r.session_id),
                "page": if r.page_url.is_empty() && r.page_title.is_empty() { Value::Null }
                        else { json!({"url": r.page_url, "title": r.page_title}) },
                "product_id": opt(r.product_id),
                "properties": props,
            })
        })
        .collect();
    Ok(json!({
        "id": ident.user_id.clone().unwrap_or_else(|| id.to_string()),
        "site": site,
        "events": events,
        "next_before": next,
    }))
}

fn opt(s: String) -> Value {
    if s.is_empty() {
        Value::Null
    } else {
        Value::String(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn before_accepts_cursor_or_time() {
        let c = hex("1700000000123\nmsg-'1");
        assert_eq!(
            parse_before(&c).unwrap(),
            Before {
                ts: 1_700_000_000_123,
                message_id: Some("msg-'1".into())
            }
        );
        assert_eq!(
            parse_before("2023-11-14T22:13:20Z").unwrap().message_id,
            None
        );
        assert!(parse_before("nonsense").is_err());
        assert!(parse_before(&hex("x\ny")).is_err());
    }
}
