//! `POST /v1/audiences/query?site=`: who matches a set of conditions (all must hold).
//!
//! ```json
//! {"conditions": [
//!    {"type": "did", "event": "Product Added", "within": "24h", "min_count": 1,
//!     "where": [{"property": "product_id", "op": "eq", "value": "p1"}]},
//!    {"type": "did_not", "event": "Order Completed", "within": "24h"},
//!    {"type": "last_seen_within", "within": "7d"},
//!    {"type": "geo", "field": "country", "op": "eq", "value": "DE"},
//!    {"type": "trait", "name": "plan", "op": "eq", "value": "pro"},
//!    {"type": "email", "action": "clicked", "campaign": "november", "within": "7d"}],
//!  "limit": 100, "cursor": null}
//! ```
//!
//! `email` is a `did` on the recipient's `$email_open` or `$email_click` events (`action`
//! `"opened"` or `"clicked"`, optional `campaign`), counting people's opens and clicks only
//! unless `"people_only": false` (machine opens and scanner clicks too).
//!
//! Members are people: anonymous ids linked to a user count as that user. `event` is a track
//! event name, or `$page`, `$identify`, `$screen`, `$alias`, `$group` for the other types.
//!
//! # Safety of the generated SQL
//!
//! The query is parsed into [`Condition`]s first; anything unknown is a 400 naming the field.
//! Identifiers come only from `match`es in this file (geo fields, operators); every value
//! (event names, property and trait names and values, the site, the cursor) enters the SQL as a
//! [`lit`] escaped literal or a [`num`] number. The test `query_audience` sends hostile strings in
//! every field and checks the answers and the tables.
//!
//! # Plan
//!
//! Per visitor: `uniqExact(message_id)` counts of each `did` / `did_not` condition from
//! `q_events_by_name` (the event's rows in its time range only, counted per message id so a
//! duplicate insert counts once), plus last seen, geo and traits from `q_visitor`; then grouped
//! per person through the anonymous-id index; then filtered. When the query has a positive `did`,
//! `q_visitor` is read only for the visitors of people who did it.

use axum::body::{Body, Bytes};
use axum::extract::{Query, State};
use axum::http::{header, HeaderMap, HeaderValue};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{json, Map, Value};

use super::sql::{hex, int, lit, lit_list, num, parse_within, unhex};
use super::{now_ms, time_or_null, QueryError, QueryState};

/// Default and largest page sizes.
pub const DEFAULT_LIMIT: usize = 100;
pub const MAX_LIMIT: usize = 10_000;
/// Conditions per query, filters per condition, values per `in`.
const MAX_CONDITIONS: usize = 20;
const MAX_FILTERS: usize = 10;
const MAX_IN: usize = 100;
const MAX_STR: usize = 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Eq,
    Neq,
    Contains,
    Gt,
    Gte,
    Lt,
    Lte,
    In,
}

impl Op {
    fn parse(v: &Value, field: &str) -> Result<Op, QueryError> {
        Ok(match v.as_str() {
            Some("eq") => Op::Eq,
            Some("neq") => Op::Neq,
            Some("contains") => Op::Contains,
            Some("gt") => Op::Gt,
            Some("gte") => Op::Gte,
            Some("lt") => Op::Lt,
            Some("lte") => Op::Lte,
            Some("in") => Op::In,
            _ => {
                return Err(QueryError::bad(
                    field,
                    "must be one of eq, neq, contains, gt, gte, lt, lte, in",
                ))
            }
        })
    }

    fn sql(self) -> &'static str {
        match self {
            Op::Eq => "=",
            Op::Neq => "!=",
            Op::Gt => ">",
            Op::Gte => ">=",
            Op::Lt => "<",
            Op::Lte => "<=",
            Op::Contains | Op::In => unreachable!("handled separately"),
        }
    }
}

/// A comparison on a value extracted from JSON or a geo field.
#[derive(Debug, Clone, PartialEq)]
pub struct Filter {
    pub key: String,
    pub op: Op,
    pub value: Value,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GeoField {
    Country,
    Region,
    City,
    Timezone,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Condition {
    Did {
        event: String,
        within_ms: Option<i64>,
        min_count: u64,
        filters: Vec<Filter>,
    },
    DidNot {
        event: String,
        within_ms: Option<i64>,
        filters: Vec<Filter>,
    },
    LastSeenWithin {
        within_ms: i64,
    },
    Geo {
        field: GeoField,
        op: Op,
        value: Value,
    },
    Trait(Filter),
}

#[derive(Debug, Clone, PartialEq)]
pub struct AudienceQuery {
    pub conditions: Vec<Condition>,
    pub limit: usize,
    /// The last member of the previous page.
    pub after: Option<String>,
}

fn obj<'a>(v: &'a Value, field: &str) -> Result<&'a Map<String, Value>, QueryError> {
    v.as_object()
        .ok_or_else(|| QueryError::bad(field, "must be a JSON object"))
}

fn only_keys(o: &Map<String, Value>, field: &str, allowed: &[&str]) -> Result<(), QueryError> {
    for k in o.keys() {
        if !allowed.contains(&k.as_str()) {
            return Err(QueryError::bad(
                format!("{field}.{k}"),
                format!("unknown field; expected one of {}", allowed.join(", ")),
            ));
        }
    }
    Ok(())
}

fn string(o: &Map<String, Value>, key: &str, field: &str) -> Result<String, QueryError> {
    let f = format!("{field}.{key}");
    let s = o
        .get(key)
        .ok_or_else(|| QueryError::bad(&f, "missing"))?
        .as_str()
        .ok_or_else(|| QueryError::bad(&f, "must be a string"))?;
    if s.is_empty() || s.len() > MAX_STR {
        return Err(QueryError::bad(&f, format!("must be 1 to {MAX_STR} bytes")));
    }
    Ok(s.to_string())
}

fn within(o: &Map<String, Value>, field: &str) -> Result<Option<i64>, QueryError> {
    match o.get("within") {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => parse_within(s)
            .map(Some)
            .map_err(|m| QueryError::bad(format!("{field}.within"), m)),
        Some(_) => Err(QueryError::bad(
            format!("{field}.within"),
            "must be a duration string such as \"24h\"",
        )),
    }
}

/// Checks a comparison's value against its operator.
fn value(
    o: &Map<String, Value>,
    op: Op,
    field: &str,
    strings_only: bool,
) -> Result<Value, QueryError> {
    let f = format!("{field}.value");
    let v = o
        .get("value")
        .ok_or_else(|| QueryError::bad(&f, "missing"))?;
    let check_str = |s: &str| {
        if s.len() > MAX_STR {
            Err(QueryError::bad(
                &f,
                format!("strings must be at most {MAX_STR} bytes"),
            ))
        } else {
            Ok(())
        }
    };
    match (op, v) {
        (Op::In, Value::Array(items)) => {
            if items.is_empty() || items.len() > MAX_IN {
                return Err(QueryError::bad(
                    &f,
                    format!("`in` takes 1 to {MAX_IN} strings"),
                ));
            }
            for it in items {
                check_str(
                    it.as_str()
                        .ok_or_else(|| QueryError::bad(&f, "`in` takes strings"))?,
                )?;
            }
        }
        (Op::In, _) => return Err(QueryError::bad(&f, "`in` takes an array of strings")),
        (Op::Contains, Value::String(s)) => check_str(s)?,
        (Op::Contains, _) => return Err(QueryError::bad(&f, "`contains` takes a string")),
        (Op::Eq | Op::Neq, Value::String(s)) => check_str(s)?,
        (Op::Eq | Op::Neq, Value::Bool(_)) if !strings_only => {}
        (_, Value::Number(n)) if !strings_only => {
            if n.as_f64().and_then(num).is_none() {
                return Err(QueryError::bad(&f, "must be a finite number"));
            }
        }
        (Op::Gt | Op::Gte | Op::Lt | Op::Lte, _) if !strings_only => {
            return Err(QueryError::bad(&f, "comparisons take a number"))
        }
        _ if strings_only => {
            return Err(QueryError::bad(
                &f,
                "must be a string (or an array of strings for `in`)",
            ))
        }
        _ => return Err(QueryError::bad(&f, "must be a string, number or boolean")),
    }
    Ok(v.clone())
}

fn filter(v: &Value, field: &str, key_name: &str) -> Result<Filter, QueryError> {
    let o = obj(v, field)?;
    let allowed: &[&str] = if key_name == "property" {
        &["property", "op", "value"]
    } else {
        &["type", "name", "op", "value"]
    };
    only_keys(o, field, allowed)?;
    let key = string(o, key_name, field)?;
    let op = Op::parse(o.get("op").unwrap_or(&Value::Null), &format!("{field}.op"))?;
    let value = value(o, op, field, false)?;
    Ok(Filter { key, op, value })
}

fn filters(o: &Map<String, Value>, field: &str) -> Result<Vec<Filter>, QueryError> {
    match o.get("where") {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::Array(items)) => {
            if items.len() > MAX_FILTERS {
                return Err(QueryError::bad(
                    format!("{field}.where"),
                    format!("at most {MAX_FILTERS} filters"),
                ));
            }
            items
                .iter()
                .enumerate()
                .map(|(i, it)| filter(it, &format!("{field}.where[{i}]"), "property"))
                .collect()
        }
        Some(_) => Err(QueryError::bad(
            format!("{field}.where"),
            "must be an array of filters",
        )),
    }
}

/// Parses and checks a query body; every error names the field.
pub fn parse(body: &[u8]) -> Result<AudienceQuery, QueryError> {
    let v: Value = serde_json::from_slice(body)
        .map_err(|e| QueryError::bad("body", format!("not JSON: {e}")))?;
    let o = obj(&v, "body")?;
    only_keys(o, "body", &["conditions", "limit", "cursor"])?;
    let conds = o
        .get("conditions")
        .ok_or_else(|| QueryError::bad("conditions", "missing"))?
        .as_array()
        .ok_or_else(|| QueryError::bad("conditions", "must be an array"))?;
    if conds.is_empty() || conds.len() > MAX_CONDITIONS {
        return Err(QueryError::bad(
            "conditions",
            format!("must hold 1 to {MAX_CONDITIONS} conditions"),
        ));
    }
    let mut conditions = Vec::new();
    for (i, c) in conds.iter().enumerate() {
        let field = format!("conditions[{i}]");
        let co = obj(c, &field)?;
        let kind = co
            .get("type")
            .and_then(Value::as_str)
            .ok_or_else(|| QueryError::bad(format!("{field}.type"), "missing"))?;
        conditions.push(match kind {
            "did" => {
                only_keys(
                    co,
                    &field,
                    &["type", "event", "within", "min_count", "where"],
                )?;
                let min_count = match co.get("min_count") {
                    None | Some(Value::Null) => 1,
                    Some(v) => v
                        .as_u64()
                        .filter(|n| (1..=1_000_000).contains(n))
                        .ok_or_else(|| {
                            QueryError::bad(
                                format!("{field}.min_count"),
                                "must be a whole number from 1 to 1000000",
                            )
                        })?,
                };
                Condition::Did {
                    event: string(co, "event", &field)?,
                    within_ms: within(co, &field)?,
                    min_count,
                    filters: filters(co, &field)?,
                }
            }
            "did_not" => {
                only_keys(co, &field, &["type", "event", "within", "where"])?;
                Condition::DidNot {
                    event: string(co, "event", &field)?,
                    within_ms: within(co, &field)?,
                    filters: filters(co, &field)?,
                }
            }
            "email" => {
                // Sugar for a `did` on the recipient's `$email_open` / `$email_click` events
                // (`crate::intake::email`), people only unless asked otherwise.
                only_keys(
                    co,
                    &field,
                    &["type", "action", "campaign", "within", "people_only"],
                )?;
                let event = match co.get("action").and_then(Value::as_str) {
                    Some("opened") => "$email_open",
                    Some("clicked") => "$email_click",
                    _ => {
                        return Err(QueryError::bad(
                            format!("{field}.action"),
                            "must be \"opened\" or \"clicked\"",
                        ))
                    }
                };
                let mut filters = Vec::new();
                if co.contains_key("campaign") {
                    filters.push(Filter {
                        key: "campaign".into(),
                        op: Op::Eq,
                        value: Value::String(string(co, "campaign", &field)?),
                    });
                }
                let people_only = match co.get("people_only") {
                    None | Some(Value::Null) => true,
                    Some(Value::Bool(b)) => *b,
                    Some(_) => {
                        return Err(QueryError::bad(
                            format!("{field}.people_only"),
                            "must be true or false",
                        ))
                    }
                };
                if people_only {
                    filters.push(Filter {
                        key: "class".into(),
                        op: Op::Eq,
                        value: Value::String("human".into()),
                    });
                }
                Condition::Did {
                    event: event.into(),
                    within_ms: within(co, &field)?,
                    min_count: 1,
                    filters,
                }
            }
            "last_seen_within" => {
                only_keys(co, &field, &["type", "within"])?;
                Condition::LastSeenWithin {
                    within_ms: within(co, &field)?
                        .ok_or_else(|| QueryError::bad(format!("{field}.within"), "missing"))?,
                }
            }
            "geo" => {
                only_keys(co, &field, &["type", "field", "op", "value"])?;
                let gf = match co.get("field").and_then(Value::as_str) {
                    Some("country") => GeoField::Country,
                    Some("region") => GeoField::Region,
                    Some("city") => GeoField::City,
                    Some("timezone") => GeoField::Timezone,
                    _ => {
                        return Err(QueryError::bad(
                            format!("{field}.field"),
                            "must be one of country, region, city, timezone",
                        ))
                    }
                };
                let op = Op::parse(co.get("op").unwrap_or(&Value::Null), &format!("{field}.op"))?;
                if !matches!(op, Op::Eq | Op::Neq | Op::Contains | Op::In) {
                    return Err(QueryError::bad(
                        format!("{field}.op"),
                        "geo takes eq, neq, contains or in",
                    ));
                }
                Condition::Geo {
                    field: gf,
                    op,
                    value: value(co, op, &field, true)?,
                }
            }
            "trait" => Condition::Trait(filter(c, &field, "name")?),
            _ => {
                return Err(QueryError::bad(
                    format!("{field}.type"),
                    "must be one of did, did_not, last_seen_within, geo, trait",
                ))
            }
        });
    }
    let limit = match o.get("limit") {
        None | Some(Value::Null) => DEFAULT_LIMIT,
        Some(v) => v
            .as_u64()
            .filter(|n| (1..=MAX_LIMIT as u64).contains(n))
            .ok_or_else(|| {
                QueryError::bad(
                    "limit",
                    format!("must be a whole number from 1 to {MAX_LIMIT}"),
                )
            })? as usize,
    };
    let after = match o.get("cursor") {
        None | Some(Value::Null) => None,
        Some(Value::String(c)) => Some(
            unhex(c)
                .ok_or_else(|| QueryError::bad("cursor", "not a cursor from a previous page"))?,
        ),
        Some(_) => return Err(QueryError::bad("cursor", "must be a string")),
    };
    Ok(AudienceQuery {
        conditions,
        limit,
        after,
    })
}

/// SQL for one comparison on a value pulled out of the JSON column `col` (a fixed name).
fn json_cmp(col: &str, f: &Filter) -> String {
    let k = lit(&f.key);
    let s = format!("visitParamExtractString({col}, {k})");
    match (&f.op, &f.value) {
        (Op::In, Value::Array(items)) => {
            format!(
                "{s} IN {}",
                lit_list(items.iter().filter_map(Value::as_str))
            )
        }
        (Op::Contains, Value::String(v)) => format!("position({s}, {}) > 0", lit(v)),
        (op, Value::String(v)) => format!("{s} {} {}", op.sql(), lit(v)),
        (op, Value::Bool(b)) => format!(
            "(visitParamHas({col}, {k}) AND visitParamExtractBool({col}, {k}) {} {})",
            op.sql(),
            u8::from(*b)
        ),
        (op, Value::Number(n)) => format!(
            "(visitParamHas({col}, {k}) AND visitParamExtractFloat({col}, {k}) {} {})",
            op.sql(),
            n.as_f64().and_then(num).unwrap_or_else(|| "0".into())
        ),
        // `value` rejected every other shape.
        _ => "0".into(),
    }
}

fn geo_cmp(field: GeoField, op: Op, v: &Value) -> String {
    let col = match field {
        GeoField::Country => "geo.1",
        GeoField::Region => "geo.2",
        GeoField::City => "geo.3",
        GeoField::Timezone => "geo.4",
    };
    match (op, v) {
        (Op::In, Value::Array(items)) => format!(
            "{col} IN {}",
            lit_list(items.iter().filter_map(Value::as_str))
        ),
        (Op::Contains, Value::String(s)) => format!("position({col}, {}) > 0", lit(s)),
        (op, Value::String(s)) => format!("{col} {} {}", op.sql(), lit(s)),
        _ => "0".into(),
    }
}

/// The condition on `q_events_by_name` rows for a did / did_not.
fn event_cond(event: &str, within_ms: Option<i64>, filters: &[Filter], now: i64) -> String {
    let mut c = format!("event = {}", lit(event));
    if let Some(w) = within_ms {
        let since = now - w;
        // The DateTime bound uses the sorting key; the millisecond bound makes it exact.
        c.push_str(&format!(
            " AND timestamp >= toDateTime({}) AND timestamp_ms >= {}",
            int(since.div_euclid(1000)),
            int(since)
        ));
    }
    for f in filters {
        c.push_str(" AND ");
        c.push_str(&json_cmp("properties", f));
    }
    format!("({c})")
}

/// Compiles a query to one SELECT over the site's data. `page`: apply the cursor and limit.
pub fn compile(db: &str, site: &str, q: &AudienceQuery, now: i64, page: bool) -> String {
    compile_in(db, site, &[q], now, Mode::Filter { page })
}

/// Several audiences of one site at once, for the triggers (`crate::triggers`): every person
/// with `matches`, an array of 0/1 flags, one per query in order. With a `scope` (a membership
/// test written after a visitor id column: `IN (SELECT ...)`, or on a cluster `GLOBAL IN
/// (SELECT ...)` when the subquery reads a table of this server only; its visitor ids must hold
/// every visitor of each person it touches), every person of those visitors is returned,
/// matching or not, and only their rows are read; without one, the persons who match at least
/// one query.
///
/// One statement for all of a site's subscriptions reads each candidate's rows once, where a
/// statement per subscription read them once per subscription (100 subscriptions: 100 reads).
/// A `did` needing at most one occurrence and every `did_not` are counted with `countIf`
/// (duplicates of a message id cannot turn a zero into a one), the others with
/// `uniqExactIf(message_id)` as in [`compile`].
pub fn compile_flags(
    db: &str,
    site: &str,
    qs: &[&AudienceQuery],
    now: i64,
    scope: Option<&str>,
) -> String {
    compile_in(db, site, qs, now, Mode::Flags { scope })
}

#[derive(Clone, Copy)]
enum Mode<'a> {
    /// One query; the matching persons (`page`: the cursor and limit applied).
    Filter { page: bool },
    /// Several queries; `matches` flags.
    Flags { scope: Option<&'a str> },
}

fn compile_in(db: &str, site: &str, qs: &[&AudienceQuery], now: i64, mode: Mode<'_>) -> String {
    let s = lit(site);
    let scope = match mode {
        Mode::Flags { scope } => scope,
        Mode::Filter { .. } => None,
    };
    let flags = matches!(mode, Mode::Flags { .. });
    // Distinct event conditions over all queries: (sql, largest min count, a positive did).
    let mut counts: Vec<(String, u64, bool)> = Vec::new();
    let mut count_of = |sql: String, min: u64, did: bool| -> usize {
        if let Some(i) = counts.iter().position(|(c, _, _)| *c == sql) {
            counts[i].1 = counts[i].1.max(min);
            counts[i].2 |= did;
            i
        } else {
            counts.push((sql, min, did));
            counts.len() - 1
        }
    };
    // Per query, its conditions on the per-person columns.
    let mut wheres: Vec<Vec<String>> = Vec::new();
    for q in qs {
        let mut where_ = Vec::new();
        let mut tail = Vec::new();
        for c in &q.conditions {
            match c {
                Condition::Did {
                    event,
                    within_ms,
                    min_count,
                    filters,
                } => {
                    let i = count_of(
                        event_cond(event, *within_ms, filters, now),
                        *min_count,
                        true,
                    );
                    tail.push(format!("c{i} >= {min_count}"));
                }
                Condition::DidNot {
                    event,
                    within_ms,
                    filters,
                } => {
                    let i = count_of(event_cond(event, *within_ms, filters, now), 0, false);
                    tail.push(format!("c{i} = 0"));
                }
                Condition::LastSeenWithin { within_ms } => {
                    where_.push(format!("last_seen >= {}", int(now - within_ms)));
                }
                Condition::Geo { field, op, value } => where_.push(geo_cmp(*field, *op, value)),
                Condition::Trait(f) => where_.push(json_cmp("traits.1", f)),
            }
        }
        where_.extend(tail);
        if let Mode::Filter { page: true } = mode {
            if let Some(after) = &q.after {
                where_.push(format!("person > {}", lit(after)));
            }
        }
        wheres.push(where_);
    }

    // Both sides of the join are aliased: current releases refuse a joined subquery without
    // one (`joined_subquery_requires_alias`, code 206); 18.16 takes either.
    // Column names change at each level (x_ in the union, v_ per visitor, plain per person) so
    // no alias shadows a column it aggregates.
    let zero_counts: String = (0..counts.len())
        .map(|i| format!("toUInt64(0) AS x_c{i}, "))
        .collect();
    let v_counts: String = (0..counts.len())
        .map(|i| format!("sum(x_c{i}) AS v_c{i}, "))
        .collect();
    let p_counts: String = (0..counts.len())
        .map(|i| format!("sum(v_c{i}) AS c{i}, "))
        .collect();
    let in_scope = scope
        .map(|sc| format!(" AND visitor_id {sc}"))
        .unwrap_or_default();
    // The events counted: by name and time from `q_events_by_name`; in a scope, the scope's
    // visitors' rows from `q_history` (sorted by visitor), so a few candidates read a few
    // granules rather than every row of the event in the window. Its `event` is the key
    // `q_events_by_name` has (`$page` for a page view...), named `event` again outside.
    let source = match scope {
        None => format!("{db}.q_events_by_name WHERE site = {s}"),
        Some(sc) => format!(
            "(SELECT visitor_id, message_id, timestamp, timestamp_ms, properties,
    if(type = 'track', name_or_event, concat('$', type)) AS event
  FROM (SELECT visitor_id, message_id, timestamp, timestamp_ms, properties, type,
      event AS name_or_event
    FROM {db}.q_history WHERE site = {s} AND visitor_id {sc})) WHERE 1"
        ),
    };
    let events_part = if counts.is_empty() {
        String::new()
    } else {
        let cols: String = counts
            .iter()
            .enumerate()
            .map(|(i, (c, min, _))| {
                if flags && *min <= 1 {
                    format!("toUInt64(countIf({c})) AS x_c{i}, ")
                } else {
                    format!("uniqExactIf(message_id, {c}) AS x_c{i}, ")
                }
            })
            .collect();
        let any: Vec<&str> = counts.iter().map(|(c, _, _)| c.as_str()).collect();
        format!(
            "SELECT visitor_id, {cols}toInt64(0) AS x_ls, ('', '', '', '', toInt64(0)) AS x_geo,
    ('', toInt64(0)) AS x_traits, '' AS x_uid
FROM {source} AND ({})
GROUP BY visitor_id
UNION ALL
",
            any.join(" OR ")
        )
    };
    // With a positive `did`, only the people who did it can match: read their visitors' state.
    // In a scope, its visitors only (every one of them is returned, matching or not).
    let candidates = if scope.is_some() {
        in_scope.clone()
    } else if flags {
        String::new()
    } else {
        counts
        .iter()
        .find(|(_, _, did)| *did)
        .map(|(c, _, _)| {
            let did = format!("(SELECT visitor_id FROM {db}.q_events_by_name WHERE site = {s} AND {c})");
            let users = format!("(SELECT user_id FROM {db}.q_ident_by_anon WHERE site = {s} AND anonymous_id IN {did})");
            format!(
                " AND (visitor_id IN {did} OR visitor_id IN {users} OR visitor_id IN
    (SELECT anonymous_id FROM {db}.identities WHERE site = {s} AND (user_id IN {did} OR user_id IN {users})))"
            )
        })
        .unwrap_or_default()
    };
    let all = |w: &Vec<String>| {
        if w.is_empty() {
            "1".to_string()
        } else {
            w.join("\n  AND ")
        }
    };
    let (matches, where_sql) = match mode {
        Mode::Flags { scope } => {
            let each: Vec<String> = wheres
                .iter()
                .map(|w| format!("toUInt8({})", all(w)))
                .collect();
            let filter = if scope.is_none() {
                "WHERE has(matches, 1)".to_string()
            } else {
                String::new()
            };
            (format!(", [{}] AS matches", each.join(",\n  ")), filter)
        }
        Mode::Filter { .. } if wheres[0].is_empty() => (String::new(), String::new()),
        Mode::Filter { .. } => (String::new(), format!("WHERE {}", all(&wheres[0]))),
    };
    let ident_scope = scope
        .map(|sc| format!(" AND anonymous_id {sc}"))
        .unwrap_or_default();
    let limit = match mode {
        Mode::Filter { page: true } => format!("LIMIT {}", qs[0].limit + 1),
        _ => String::new(),
    };
    format!(
        "SELECT person, user_id, last_seen, geo, traits{matches} FROM (
  SELECT if(uid = '', visitor_id, uid) AS person, {p_counts}max(v_ls) AS last_seen,
    argMax(v_geo, v_geo.5) AS geo, argMax(v_traits, v_traits.2) AS traits,
    max(if(uid != '', uid, v_uid)) AS user_id
  FROM (
    SELECT visitor_id, {v_counts}max(x_ls) AS v_ls, argMax(x_geo, x_geo.5) AS v_geo,
      argMax(x_traits, x_traits.2) AS v_traits, max(x_uid) AS v_uid
    FROM (
{events_part}SELECT visitor_id, {zero_counts}maxMerge(last_seen) AS x_ls, argMaxIfMerge(geo) AS x_geo,
    argMaxIfMerge(traits) AS x_traits, argMaxIfMerge(user_id) AS x_uid
FROM {db}.q_visitor WHERE site = {s}{candidates}
GROUP BY visitor_id
    )
    GROUP BY visitor_id
  ) AS v
  ANY LEFT JOIN (SELECT anonymous_id AS visitor_id, argMax(user_id, linked_at) AS uid
    FROM {db}.q_ident_by_anon WHERE site = {s}{ident_scope} GROUP BY anonymous_id) AS i USING visitor_id
  GROUP BY person
)
{where_sql}
ORDER BY person
{limit}"
    )
}

#[derive(Debug, Deserialize)]
pub struct MemberRow {
    pub person: String,
    pub user_id: String,
    pub last_seen: i64,
    pub geo: (String, String, String, String, i64),
    pub traits: (String, i64),
}

/// A member's JSON (`id`, `user_id`, `last_seen`, `geo`, `traits`).
pub fn member(r: MemberRow) -> Value {
    let traits: Value = if r.traits.1 > 0 {
        serde_json::from_str(&r.traits.0).unwrap_or_else(|_| json!({}))
    } else {
        json!({})
    };
    let s = |v: &str| {
        if v.is_empty() {
            Value::Null
        } else {
            Value::String(v.to_string())
        }
    };
    json!({
        "id": r.person,
        "user_id": s(&r.user_id),
        "last_seen": time_or_null(r.last_seen),
        "geo": {"country": s(&r.geo.0), "region": s(&r.geo.1), "city": s(&r.geo.2), "timezone": s(&r.geo.3)},
        "traits": traits,
    })
}

#[derive(Debug, Deserialize)]
pub struct SiteParam {
    pub site: Option<String>,
}

/// Largest query body.
const MAX_BODY: usize = 64 * 1024;

pub async fn handler(
    State(st): State<QueryState>,
    Query(p): Query<SiteParam>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let run = async {
        let site = st.authorize(&headers, p.site.as_deref())?;
        if body.len() > MAX_BODY {
            return Err(QueryError::bad(
                "body",
                format!("larger than {MAX_BODY} bytes"),
            ));
        }
        let q = parse(&body)?;
        let ndjson = headers
            .get(header::ACCEPT)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|a| a.contains("application/x-ndjson"));
        if ndjson {
            return stream(&st, &site, &q);
        }
        let sql = compile(st.db(), &site, &q, now_ms(), true);
        let mut rows: Vec<MemberRow> = st.fetch(&sql).await?;
        let more = rows.len() > q.limit;
        rows.truncate(q.limit);
        let next = if more {
            rows.last()
                .map(|r| Value::String(hex(&r.person)))
                .unwrap_or(Value::Null)
        } else {
            Value::Null
        };
        let members: Vec<Value> = rows.into_iter().map(member).collect();
        Ok(axum::Json(
            json!({"site": site, "count": members.len(), "members": members, "next_cursor": next}),
        )
        .into_response())
    };
    match run.await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    }
}

/// The whole audience as NDJSON, one member per line, read from ClickHouse as it streams.
/// A failure after the first line ends the stream with an `{"error": ...}` line.
fn stream(st: &QueryState, site: &str, q: &AudienceQuery) -> Result<Response, QueryError> {
    let sql = compile(st.db(), site, q, now_ms(), false);
    let cursor = st.select(&sql)?;
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(16);
    tokio::spawn(async move {
        let mut cursor = cursor;
        let mut pending: Vec<u8> = Vec::new();
        // Chunks from ClickHouse are cut anywhere: keep the tail until its newline arrives.
        loop {
            let chunk = match cursor.next().await {
                Ok(Some(c)) => c,
                Ok(None) => break,
                Err(e) => {
                    let err = json!({"error": "unavailable", "message": format!("the database failed: {e}")});
                    let _ = tx.send(Ok(Bytes::from(format!("{err}\n")))).await;
                    return;
                }
            };
            pending.extend_from_slice(&chunk);
            let Some(end) = pending.iter().rposition(|b| *b == b'\n') else {
                continue;
            };
            let mut out = String::new();
            for line in pending[..end]
                .split(|b| *b == b'\n')
                .filter(|l| !l.is_empty())
            {
                out.push_str(&member_line(line));
            }
            pending.drain(..=end);
            if tx.send(Ok(Bytes::from(out))).await.is_err() {
                return; // the client went away
            }
        }
        if !pending.is_empty() {
            let _ = tx.send(Ok(Bytes::from(member_line(&pending)))).await;
        }
    });
    let body = Body::from_stream(tokio_stream(rx));
    let mut resp = Response::new(body);
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/x-ndjson"),
    );
    Ok(resp)
}

/// One NDJSON line for one `JSONEachRow` row.
fn member_line(line: &[u8]) -> String {
    match serde_json::from_slice::<MemberRow>(line) {
        Ok(r) => format!("{}\n", member(r)),
        Err(e) => format!(
            "{}\n",
            json!({"error": "unavailable", "message": format!("unexpected answer from ClickHouse: {e}")})
        ),
    }
}

fn tokio_stream(
    mut rx: tokio::sync::mpsc::Receiver<Result<Bytes, std::io::Error>>,
) -> impl futures::Stream<Item = Result<Bytes, std::io::Error>> {
    futures::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_email_condition_is_a_did_on_the_recipients_events() {
        let q = parse(
            br#"{"conditions": [{"type": "email", "action": "clicked", "campaign": "nov", "within": "7d"}]}"#,
        )
        .unwrap();
        let Condition::Did {
            event,
            filters,
            within_ms,
            ..
        } = &q.conditions[0]
        else {
            panic!("{q:?}")
        };
        assert_eq!(event, "$email_click");
        assert_eq!(*within_ms, Some(7 * 86_400_000));
        let keys: Vec<&str> = filters.iter().map(|f| f.key.as_str()).collect();
        assert_eq!(keys, ["campaign", "class"]);
        let all = parse(
            br#"{"conditions": [{"type": "email", "action": "opened", "people_only": false}]}"#,
        )
        .unwrap();
        assert!(matches!(&all.conditions[0], Condition::Did { filters, .. } if filters.is_empty()));
        for (body, field) in [
            (
                &br#"{"conditions": [{"type": "email", "action": "read"}]}"#[..],
                "conditions[0].action",
            ),
            (
                br#"{"conditions": [{"type": "email", "action": "opened", "people_only": 1}]}"#,
                "conditions[0].people_only",
            ),
        ] {
            let e = parse(body).unwrap_err().to_string();
            assert!(e.contains(field), "{e}");
        }
    }

    #[test]
    fn parses_the_documented_example() {
        let q = parse(
            br#"{"conditions": [
            {"type": "did", "event": "Product Added", "within": "24h", "min_count": 1,
             "where": [{"property": "product_id", "op": "eq", "value": "p1"}]},
            {"type": "did_not", "event": "Order Completed", "within": "24h"},
            {"type": "last_seen_within", "within": "7d"},
            {"type": "geo", "field": "country", "op": "eq", "value": "DE"},
            {"type": "trait", "name": "plan", "op": "eq", "value": "pro"}], "limit": 10}"#,
        )
        .unwrap();
        assert_eq!(q.conditions.len(), 5);
        assert_eq!(q.limit, 10);
        let sql = compile("db", "shop", &q, 1_800_000_000_000, true);
        assert!(sql.contains("c0 >= 1") && sql.contains("c1 = 0"), "{sql}");
    }

    #[test]
    fn errors_name_the_field() {
        let cases: &[(&[u8], &str)] = &[
            (b"nope", "body"),
            (br#"{"conditions": []}"#, "conditions"),
            (br#"{"conditions": [{"type": "did"}]}"#, "conditions[0].event"),
            (br#"{"conditions": [{"type": "did", "event": "x", "within": "3 parsecs"}]}"#, "conditions[0].within"),
            (br#"{"conditions": [{"type": "geo", "field": "country; DROP", "op": "eq", "value": "x"}]}"#, "conditions[0].field"),
            (br#"{"conditions": [{"type": "geo", "field": "city", "op": "gt", "value": "x"}]}"#, "conditions[0].op"),
            (br#"{"conditions": [{"type": "trait", "name": "a", "op": "lt", "value": "x"}]}"#, "conditions[0].value"),
            (br#"{"conditions": [{"type": "did", "event": "x", "where": [{"property": "p", "op": "eq"}]}]}"#, "conditions[0].where[0].value"),
            (br#"{"conditions": [{"type": "did", "event": "x", "bogus": 1}]}"#, "conditions[0].bogus"),
            (br#"{"conditions": [{"type": "did", "event": "x"}], "cursor": "zz"}"#, "cursor"),
            (br#"{"conditions": [{"type": "did", "event": "x"}], "limit": 0}"#, "limit"),
            (br#"{"conditions": [{"type": "teleport"}]}"#, "conditions[0].type"),
        ];
        for (body, field) in cases {
            match parse(body) {
                Err(QueryError::BadRequest { field: f, .. }) => {
                    assert_eq!(&f, field, "{}", String::from_utf8_lossy(body))
                }
                other => panic!("{}: {other:?}", String::from_utf8_lossy(body)),
            }
        }
    }
}
