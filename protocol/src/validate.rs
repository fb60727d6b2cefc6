//! Parsing and validation of request bodies.
//!
//! [`parse_batch`] and [`parse_single`] never stop at the first problem: a body that is JSON
//! yields every good event plus one [`Rejection`] per problem in the bad ones, each naming the
//! event's index, the field and the reason (`batch[3].messageId: missing`). An event with any
//! problem is left out whole. Only problems with the body itself (too large, not JSON, no batch)
//! fail the request, as a [`BatchError`].

use serde::Serialize;
use serde_json::value::RawValue;
use serde_json::{Map, Value};

use crate::auto::{CLICK_KINDS, MAX_ENGAGED_MS};
use crate::event::{Event, EventType};
use crate::limits::*;
use crate::names;
use crate::skew;
use crate::time::parse_rfc3339;

/// One problem with one event (or with a batch-level field when `index` is `None`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Rejection {
    /// Position of the event in the batch.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub index: Option<usize>,
    /// The field, as a path inside the event: `messageId`, `properties.scroll_depth`.
    pub field: String,
    /// Why, in words: `missing`, `must be a string`, `longer than 256 bytes`.
    pub reason: String,
}

impl std::fmt::Display for Rejection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.index {
            Some(i) => write!(f, "batch[{i}].{}: {}", self.field, self.reason),
            None => write!(f, "{}: {}", self.field, self.reason),
        }
    }
}

/// A problem with the body as a whole: nothing in it is accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BatchError {
    /// The body is larger than [`MAX_BATCH_BYTES`].
    TooLarge { bytes: usize, limit: usize },
    /// The body is not JSON; the message says where.
    NotJson(String),
    /// The body is JSON but not an object.
    NotAnObject,
    /// A batch body without a `batch` field.
    MissingBatch,
    /// `batch` is there but is not an array.
    BatchNotArray,
    /// More than [`MAX_EVENTS_PER_BATCH`] events.
    TooManyEvents { count: usize, limit: usize },
    /// A batch-level field (`sentAt`, `writeKey`) is malformed.
    BadField { field: &'static str, reason: String },
}

impl BatchError {
    /// A stable machine-readable code for the error.
    pub fn code(&self) -> &'static str {
        match self {
            BatchError::TooLarge { .. } => "body_too_large",
            BatchError::NotJson(_) => "invalid_json",
            BatchError::NotAnObject => "not_an_object",
            BatchError::MissingBatch => "missing_batch",
            BatchError::BatchNotArray => "batch_not_array",
            BatchError::TooManyEvents { .. } => "too_many_events",
            BatchError::BadField { .. } => "invalid_field",
        }
    }

    /// The field at fault (`body` when it is the body as a whole).
    pub fn field(&self) -> &'static str {
        match self {
            BatchError::TooLarge { .. } | BatchError::NotJson(_) | BatchError::NotAnObject => {
                "body"
            }
            BatchError::MissingBatch | BatchError::BatchNotArray => "batch",
            BatchError::TooManyEvents { .. } => "batch",
            BatchError::BadField { field, .. } => field,
        }
    }

    /// True for the errors an HTTP server answers with 413.
    pub fn is_too_large(&self) -> bool {
        matches!(
            self,
            BatchError::TooLarge { .. } | BatchError::TooManyEvents { .. }
        )
    }
}

impl std::fmt::Display for BatchError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BatchError::TooLarge { bytes, limit } => {
                write!(f, "body: {bytes} bytes is more than the limit of {limit}")
            }
            BatchError::NotJson(e) => write!(f, "body: not valid JSON: {e}"),
            BatchError::NotAnObject => f.write_str("body: must be a JSON object"),
            BatchError::MissingBatch => f.write_str("batch: missing"),
            BatchError::BatchNotArray => f.write_str("batch: must be an array of events"),
            BatchError::TooManyEvents { count, limit } => {
                write!(f, "batch: {count} events is more than the limit of {limit}")
            }
            BatchError::BadField { field, reason } => write!(f, "{field}: {reason}"),
        }
    }
}

impl std::error::Error for BatchError {}

/// The outcome of parsing a body that was JSON.
#[derive(Debug, Clone, PartialEq)]
pub struct Validated {
    /// The events that passed every check, in batch order.
    pub events: Vec<Event>,
    /// Every problem found in the others.
    pub rejections: Vec<Rejection>,
    /// The batch-level `sentAt`.
    pub sent_at: Option<String>,
    /// The batch-level `writeKey`.
    pub write_key: Option<String>,
}

impl Validated {
    /// How many events were left out (an event may have several rejections).
    pub fn rejected_events(&self) -> usize {
        let mut idx: Vec<usize> = self.rejections.iter().filter_map(|r| r.index).collect();
        idx.dedup();
        idx.len()
    }
}

/// Parses a `/v1/batch` body. `received_at_ms` is the server's receive time, for the
/// timestamp window.
pub fn parse_batch(body: &[u8], received_at_ms: i64) -> Result<Validated, BatchError> {
    check_size(body)?;
    // One pass over the body for a well-formed batch; anything unusual (duplicate keys, no
    // array under `batch`, not JSON) takes the general path below, which says what is wrong.
    if let Some(fast) = fast_body(body) {
        let sent_at = batch_string(fast.sent_at, "sentAt", true)?;
        let write_key = batch_string(fast.write_key, "writeKey", false)?;
        return check_items(&fast.batch, sent_at, write_key, received_at_ms);
    }
    let top = parse_object(body)?;
    let sent_at = batch_string(top.get("sentAt").copied(), "sentAt", true)?;
    let write_key = batch_string(top.get("writeKey").copied(), "writeKey", false)?;
    let raw = top.get("batch").ok_or(BatchError::MissingBatch)?;
    let items: Vec<&RawValue> =
        serde_json::from_str(raw.get()).map_err(|_| BatchError::BatchNotArray)?;
    check_items(&items, sent_at, write_key, received_at_ms)
}

/// A batch body read in one pass: its events split out unparsed, its batch-level fields raw.
#[derive(serde::Deserialize)]
struct FastBody<'a> {
    #[serde(borrow)]
    batch: Vec<&'a RawValue>,
    #[serde(rename = "sentAt", borrow, default)]
    sent_at: Option<&'a RawValue>,
    #[serde(rename = "writeKey", borrow, default)]
    write_key: Option<&'a RawValue>,
}

/// The body as a [`FastBody`], or `None` when it is anything but a JSON object with an array
/// under `batch` and no key twice (the general path then reads it, with the same outcome for
/// the bodies read here; a struct also reads from an array, hence the first-byte check).
fn fast_body(body: &[u8]) -> Option<FastBody<'_>> {
    if body.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return None;
    }
    serde_json::from_slice(body).ok()
}

/// Validates events that were already split out of their batch (the edge worker's envelopes
/// carry them as raw JSON): the same checks and rejections as [`parse_batch`] on
/// `{"batch": events, "sentAt": sent_at}`, without re-wrapping and re-reading the batch. The
/// size limit applies to the events' JSON.
pub fn parse_events(
    events: &[&RawValue],
    sent_at: Option<&str>,
    received_at_ms: i64,
) -> Result<Validated, BatchError> {
    let bytes = events.iter().map(|e| e.get().len() + 1).sum::<usize>() + 1;
    if bytes > MAX_BATCH_BYTES {
        return Err(BatchError::TooLarge {
            bytes,
            limit: MAX_BATCH_BYTES,
        });
    }
    if let Some(s) = sent_at {
        if parse_rfc3339(s).is_none() {
            return Err(BatchError::BadField {
                field: "sentAt",
                reason: "not an RFC 3339 date-time".into(),
            });
        }
    }
    check_items(events, sent_at.map(str::to_owned), None, received_at_ms)
}

fn check_items(
    items: &[&RawValue],
    sent_at: Option<String>,
    write_key: Option<String>,
    received_at_ms: i64,
) -> Result<Validated, BatchError> {
    if items.len() > MAX_EVENTS_PER_BATCH {
        return Err(BatchError::TooManyEvents {
            count: items.len(),
            limit: MAX_EVENTS_PER_BATCH,
        });
    }
    let mut out = Validated {
        events: Vec::with_capacity(items.len()),
        rejections: Vec::new(),
        sent_at,
        write_key,
    };
    for (i, item) in items.iter().enumerate() {
        check_one(i, item, None, received_at_ms, &mut out);
    }
    Ok(out)
}

/// Parses the body of a single-event endpoint (`/v1/track`, `/v1/page`, ...): one event whose
/// type is given by the endpoint. Its rejections carry index 0.
pub fn parse_single(
    body: &[u8],
    kind: EventType,
    received_at_ms: i64,
) -> Result<Validated, BatchError> {
    check_size(body)?;
    let top = parse_object(body)?;
    let sent_at = batch_string(top.get("sentAt").copied(), "sentAt", true)?;
    let write_key = batch_string(top.get("writeKey").copied(), "writeKey", false)?;
    let raw: &RawValue =
        serde_json::from_slice(body).map_err(|e| BatchError::NotJson(e.to_string()))?;
    let mut out = Validated {
        events: Vec::with_capacity(1),
        rejections: Vec::new(),
        sent_at: None,
        write_key,
    };
    check_one(0, raw, Some(kind), received_at_ms, &mut out);
    // A single event's sentAt is its own; leave it on the event and not on the batch.
    let _ = sent_at;
    Ok(out)
}

fn check_size(body: &[u8]) -> Result<(), BatchError> {
    if body.len() > MAX_BATCH_BYTES {
        return Err(BatchError::TooLarge {
            bytes: body.len(),
            limit: MAX_BATCH_BYTES,
        });
    }
    Ok(())
}

/// The top-level fields of a body, their values borrowed from it unparsed.
type RawObject<'a> = std::collections::BTreeMap<String, &'a RawValue>;

fn parse_object(body: &[u8]) -> Result<RawObject<'_>, BatchError> {
    // One pass over the body in the common case. Only when that fails does the two-step parse
    // run, to tell "not JSON" (with serde's position) from "JSON but not an object".
    if let Ok(obj) = serde_json::from_slice::<RawObject<'_>>(body) {
        return Ok(obj);
    }
    let v: &RawValue =
        serde_json::from_slice(body).map_err(|e| BatchError::NotJson(e.to_string()))?;
    serde_json::from_str::<RawObject<'_>>(v.get()).map_err(|_| BatchError::NotAnObject)
}

fn batch_string(
    raw: Option<&RawValue>,
    field: &'static str,
    is_time: bool,
) -> Result<Option<String>, BatchError> {
    let Some(raw) = raw else {
        return Ok(None);
    };
    let v: Value =
        serde_json::from_str(raw.get()).map_err(|e| BatchError::NotJson(e.to_string()))?;
    match v {
        Value::Null => Ok(None),
        Value::String(s) => {
            if is_time && parse_rfc3339(&s).is_none() {
                return Err(BatchError::BadField {
                    field,
                    reason: "not an RFC 3339 date-time".into(),
                });
            }
            Ok(Some(s))
        }
        _ => Err(BatchError::BadField {
            field,
            reason: "must be a string".into(),
        }),
    }
}

/// Collects the problems of one event.
struct Problems<'a> {
    index: usize,
    out: &'a mut Vec<Rejection>,
    found: bool,
}

impl Problems<'_> {
    /// Whether a problem with `field` was already reported for this event.
    fn has(&self, field: &str) -> bool {
        self.out
            .iter()
            .any(|r| r.index == Some(self.index) && r.field == field)
    }

    fn add(&mut self, field: impl Into<String>, reason: impl Into<String>) {
        self.found = true;
        self.out.push(Rejection {
            index: Some(self.index),
            field: field.into(),
            reason: reason.into(),
        });
    }
}

fn check_one(
    index: usize,
    raw: &RawValue,
    implied: Option<EventType>,
    received_at_ms: i64,
    out: &mut Validated,
) {
    let Validated {
        events,
        rejections,
        sent_at,
        ..
    } = out;
    let mut p = Problems {
        index,
        out: rejections,
        found: false,
    };
    let bytes = raw.get().len();
    if bytes > MAX_EVENT_BYTES {
        p.add(
            "",
            format!("event is {bytes} bytes, more than the limit of {MAX_EVENT_BYTES}"),
        );
        return;
    }
    // A well-formed event reads straight into its fields (no map of the top level to build
    // and take apart); anything else, e.g. a number as `userId` or a key given twice, is read
    // as a `Value` first. Both then go through the same checks.
    if raw.get().trim_start().starts_with('{') {
        if let Ok(mut fast) = serde_json::from_str::<FastEvent>(raw.get()) {
            check_event_fields(
                p,
                &mut fast,
                implied,
                Some(received_at_ms),
                sent_at.as_deref(),
                events,
            );
            return;
        }
    }
    let value: Value = match serde_json::from_str(raw.get()) {
        Ok(v) => v,
        Err(e) => {
            p.add("", format!("not valid JSON: {e}"));
            return;
        }
    };
    check_event_value(
        p,
        value,
        implied,
        Some(received_at_ms),
        sent_at.as_deref(),
        events,
    );
}

/// The top-level fields of an event whose known fields have the types they should (strings,
/// objects or null) and appear once; unknown fields are skipped. What a field holds is checked
/// by [`check_event_fields`] exactly as for an event read as a `Value`.
#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct FastEvent {
    #[serde(rename = "type", default)]
    kind: Option<String>,
    #[serde(default)]
    message_id: Option<String>,
    #[serde(default)]
    anonymous_id: Option<String>,
    #[serde(default)]
    user_id: Option<String>,
    #[serde(default)]
    previous_id: Option<String>,
    #[serde(default)]
    group_id: Option<String>,
    #[serde(default)]
    event: Option<String>,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    timestamp: Option<String>,
    #[serde(default)]
    original_timestamp: Option<String>,
    #[serde(default)]
    sent_at: Option<String>,
    #[serde(default)]
    context: Option<Map<String, Value>>,
    #[serde(default)]
    properties: Option<Map<String, Value>>,
    #[serde(default)]
    traits: Option<Map<String, Value>>,
}

/// Where an event's top-level fields come from: the map of an event read as a `Value`, or a
/// [`FastEvent`]. Each field is taken once, as the `Value` it is on the wire (`None` when
/// absent or null).
trait EventFields {
    fn take(&mut self, field: &str) -> Option<Value>;
}

impl EventFields for Map<String, Value> {
    fn take(&mut self, field: &str) -> Option<Value> {
        self.remove(field)
    }
}

impl EventFields for FastEvent {
    fn take(&mut self, field: &str) -> Option<Value> {
        let s = |v: &mut Option<String>| v.take().map(Value::String);
        let o = |v: &mut Option<Map<String, Value>>| v.take().map(Value::Object);
        match field {
            "type" => s(&mut self.kind),
            "messageId" => s(&mut self.message_id),
            "anonymousId" => s(&mut self.anonymous_id),
            "userId" => s(&mut self.user_id),
            "previousId" => s(&mut self.previous_id),
            "groupId" => s(&mut self.group_id),
            "event" => s(&mut self.event),
            "name" => s(&mut self.name),
            "timestamp" => s(&mut self.timestamp),
            "originalTimestamp" => s(&mut self.original_timestamp),
            "sentAt" => s(&mut self.sent_at),
            "context" => o(&mut self.context),
            "properties" => o(&mut self.properties),
            "traits" => o(&mut self.traits),
            _ => None,
        }
    }
}

/// Validates one event of a bulk import (`POST /v1/import`), already parsed: the same checks
/// as [`parse_batch`] makes of each event, except the window in the past (imports carry years
/// of history; their time is taken as it is). Its rejections carry `index`.
pub fn check_import_event(index: usize, value: Value, out: &mut Validated) {
    let p = Problems {
        index,
        out: &mut out.rejections,
        found: false,
    };
    check_event_value(p, value, None, None, None, &mut out.events);
}

/// The checks of one event; `received_at_ms` is `None` for imports (no window in the past).
fn check_event_value(
    mut p: Problems<'_>,
    value: Value,
    implied: Option<EventType>,
    received_at_ms: Option<i64>,
    batch_sent_at: Option<&str>,
    events: &mut Vec<Event>,
) {
    let Value::Object(mut obj) = value else {
        p.add("", "must be a JSON object");
        return;
    };
    check_event_fields(p, &mut obj, implied, received_at_ms, batch_sent_at, events);
}

/// The checks of one event's fields (from either [`EventFields`] source).
fn check_event_fields(
    mut p: Problems<'_>,
    obj: &mut impl EventFields,
    implied: Option<EventType>,
    received_at_ms: Option<i64>,
    batch_sent_at: Option<&str>,
    events: &mut Vec<Event>,
) {
    let ty = obj.take("type");
    let kind = match (ty.as_ref(), implied) {
        (None | Some(Value::Null), Some(k)) => Some(k),
        (None | Some(Value::Null), None) => {
            p.add("type", "missing");
            None
        }
        (Some(Value::String(s)), implied) => match (EventType::parse(s), implied) {
            (Some(k), None) => Some(k),
            (Some(k), Some(i)) if k == i => Some(k),
            (Some(_), Some(i)) => {
                p.add(
                    "type",
                    format!("must be \"{}\" on this endpoint", i.as_str()),
                );
                None
            }
            (None, _) => {
                p.add(
                    "type",
                    "must be one of track, identify, page, screen, alias, group",
                );
                None
            }
        },
        (Some(_), _) => {
            p.add("type", "must be a string");
            None
        }
    };

    let message_id = take_id(&mut p, obj, "messageId", true);
    let anonymous_id = take_id(&mut p, obj, "anonymousId", false);
    let user_id = take_id(&mut p, obj, "userId", false);
    let previous_id = take_id(&mut p, obj, "previousId", false);
    let group_id = take_id(&mut p, obj, "groupId", false);
    if anonymous_id.is_none() && user_id.is_none() && !p.has("anonymousId") && !p.has("userId") {
        p.add(
            "userId",
            "missing: an event needs a userId or an anonymousId",
        );
    }
    let event = take_name(&mut p, obj, "event");
    let name = take_name(&mut p, obj, "name");
    let timestamp = take_time(&mut p, obj, "timestamp");
    let original_timestamp = take_time(&mut p, obj, "originalTimestamp");
    let sent_at = take_time(&mut p, obj, "sentAt");
    let context = take_object(&mut p, obj, "context");
    let properties = take_object(&mut p, obj, "properties");
    let mut traits = take_object(&mut p, obj, "traits");
    // Segment's SDKs put an identify's traits at the top; RudderStack's only in `context.traits`.
    if traits.is_empty() && kind == Some(EventType::Identify) {
        if let Some(Value::Object(t)) = context.get("traits") {
            traits = t.clone();
        }
    }

    match kind {
        Some(EventType::Track) => match &event {
            None if !p.has("event") => p.add("event", "missing: a track call needs an event name"),
            Some(e) if e.starts_with(names::RESERVED_PREFIX) => {
                check_reserved(&mut p, e, &properties)
            }
            _ => {}
        },
        Some(EventType::Alias) if previous_id.is_none() && !p.has("previousId") => {
            p.add("previousId", "missing: an alias call needs a previousId");
        }
        Some(EventType::Group) if group_id.is_none() && !p.has("groupId") => {
            p.add("groupId", "missing: a group call needs a groupId");
        }
        _ => {}
    }

    if p.found {
        return;
    }
    let (Some(kind), Some(message_id)) = (kind, message_id) else {
        return;
    };
    let ev = Event {
        kind,
        message_id,
        anonymous_id,
        user_id,
        event,
        name,
        previous_id,
        group_id,
        timestamp,
        original_timestamp,
        sent_at,
        context,
        properties,
        traits,
    };
    if let Some(received_at_ms) = received_at_ms {
        if let Err(old) = skew::correct(received_at_ms, &ev, batch_sent_at) {
            p.add(
                old.field,
                format!(
                    "more than {} days before the event was received",
                    MAX_PAST_MS / 86_400_000
                ),
            );
            return;
        }
    }
    events.push(ev);
}

fn take_id(
    p: &mut Problems<'_>,
    obj: &mut impl EventFields,
    field: &str,
    required: bool,
) -> Option<String> {
    let s = match obj.take(field) {
        None | Some(Value::Null) => {
            if required {
                p.add(field, "missing");
            }
            return None;
        }
        Some(Value::String(s)) => s,
        // Some SDKs send numeric user ids; they are ids all the same.
        Some(Value::Number(n)) if field != "messageId" => n.to_string(),
        Some(_) => {
            p.add(field, "must be a string");
            return None;
        }
    };
    if s.is_empty() {
        p.add(field, "must not be empty");
        return None;
    }
    if s.len() > MAX_ID_LEN {
        p.add(field, format!("longer than {MAX_ID_LEN} bytes"));
        return None;
    }
    Some(s)
}

fn take_name(p: &mut Problems<'_>, obj: &mut impl EventFields, field: &str) -> Option<String> {
    match obj.take(field) {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) if s.trim().is_empty() => {
            p.add(field, "must not be empty");
            None
        }
        Some(Value::String(s)) if s.len() > MAX_NAME_LEN => {
            p.add(field, format!("longer than {MAX_NAME_LEN} bytes"));
            None
        }
        Some(Value::String(s)) => Some(s),
        Some(_) => {
            p.add(field, "must be a string");
            None
        }
    }
}

fn take_time(p: &mut Problems<'_>, obj: &mut impl EventFields, field: &str) -> Option<String> {
    match obj.take(field) {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) if parse_rfc3339(&s).is_some() => Some(s),
        Some(Value::String(_)) => {
            p.add(field, "not an RFC 3339 date-time");
            None
        }
        Some(_) => {
            p.add(field, "must be a string holding an RFC 3339 date-time");
            None
        }
    }
}

fn take_object(
    p: &mut Problems<'_>,
    obj: &mut impl EventFields,
    field: &str,
) -> Map<String, Value> {
    match obj.take(field) {
        None | Some(Value::Null) => Map::new(),
        Some(Value::Object(m)) => {
            let mut keys = 0usize;
            let mut path = String::with_capacity(64);
            path.push_str(field);
            if check_tree(p, &mut path, &m, 1, &mut keys) {
                m
            } else {
                Map::new()
            }
        }
        Some(_) => {
            p.add(field, "must be an object");
            Map::new()
        }
    }
}

/// Checks depth, key count, key and string lengths. Reports the first problem in the tree and
/// returns whether it is fine.
///
/// `path` is one buffer, extended and cut back while walking (no string per key); it names the
/// place of a problem (`properties.items[2].name`).
fn check_tree(
    p: &mut Problems<'_>,
    path: &mut String,
    m: &Map<String, Value>,
    depth: usize,
    keys: &mut usize,
) -> bool {
    if depth > MAX_DEPTH {
        p.add(
            path.as_str(),
            format!("nested deeper than {MAX_DEPTH} levels"),
        );
        return false;
    }
    for (k, v) in m {
        *keys += 1;
        if *keys > MAX_PROPERTIES {
            let root = path.split('.').next().unwrap_or(path);
            p.add(root, format!("more than {MAX_PROPERTIES} keys"));
            return false;
        }
        if k.len() > MAX_NAME_LEN {
            p.add(
                path.as_str(),
                format!("a key is longer than {MAX_NAME_LEN} bytes"),
            );
            return false;
        }
        let len = path.len();
        path.push('.');
        path.push_str(k);
        let ok = check_value(p, path, v, depth, keys);
        path.truncate(len);
        if !ok {
            return false;
        }
    }
    true
}

fn check_value(
    p: &mut Problems<'_>,
    path: &mut String,
    v: &Value,
    depth: usize,
    keys: &mut usize,
) -> bool {
    match v {
        Value::String(s) if s.len() > MAX_STRING_LEN => {
            p.add(
                path.as_str(),
                format!("string longer than {MAX_STRING_LEN} bytes"),
            );
            false
        }
        Value::Object(m) => check_tree(p, path, m, depth + 1, keys),
        Value::Array(a) => {
            if depth + 1 > MAX_DEPTH {
                p.add(
                    path.as_str(),
                    format!("nested deeper than {MAX_DEPTH} levels"),
                );
                return false;
            }
            let len = path.len();
            for (i, x) in a.iter().enumerate() {
                use core::fmt::Write as _;
                let _ = write!(path, "[{i}]");
                let ok = check_value(p, path, x, depth + 1, keys);
                path.truncate(len);
                if !ok {
                    return false;
                }
            }
            true
        }
        _ => true,
    }
}

/// Reserved `$` events: only the known names, with their typed properties.
fn check_reserved(p: &mut Problems<'_>, name: &str, props: &Map<String, Value>) {
    match name {
        names::CLICK => {
            match props.get("kind") {
                Some(Value::String(k)) if CLICK_KINDS.contains(&k.as_str()) => {}
                None => p.add("properties.kind", "missing"),
                Some(_) => p.add("properties.kind", "must be one of link, button, element"),
            }
            for f in ["text", "href", "id", "name"] {
                if !matches!(props.get(f), None | Some(Value::Null | Value::String(_))) {
                    p.add(format!("properties.{f}"), "must be a string");
                }
            }
            if !matches!(props.get("outbound"), None | Some(Value::Bool(_))) {
                p.add("properties.outbound", "must be true or false");
            }
        }
        names::ENGAGEMENT => {
            match props.get("engaged_ms").map(Value::as_u64) {
                Some(Some(ms)) if ms <= MAX_ENGAGED_MS => {}
                None => p.add("properties.engaged_ms", "missing"),
                Some(_) => p.add(
                    "properties.engaged_ms",
                    format!("must be a whole number of milliseconds from 0 to {MAX_ENGAGED_MS}"),
                ),
            }
            match props.get("scroll_depth").map(Value::as_u64) {
                None | Some(Some(0..=100)) => {}
                Some(_) => p.add(
                    "properties.scroll_depth",
                    "must be a whole percentage from 0 to 100",
                ),
            }
            if !matches!(
                props.get("product_id"),
                None | Some(Value::Null | Value::String(_))
            ) {
                p.add("properties.product_id", "must be a string");
            }
        }
        _ => p.add(
            "event",
            format!(
                "names starting with \"{}\" are reserved; known: {}",
                names::RESERVED_PREFIX,
                names::RESERVED.join(", ")
            ),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RECEIVED: i64 = 1_764_324_905_000;

    /// The typed read of well-formed events ([`FastEvent`]) and the `Value` read give the same
    /// events and the same rejections, whichever one an event takes.
    #[test]
    fn the_fast_read_and_the_value_read_agree() {
        let events = [
            r#"{"type":"track","messageId":"m1","anonymousId":"a","event":"E","originalTimestamp":"2025-11-28T10:15:00.000Z","properties":{"x":1},"context":{"page":{"url":"https://a.example/"}},"integrations":{"All":true}}"#,
            r#"{"type":"identify","messageId":"m2","userId":"u","context":{"traits":{"email":"a@b.example"}}}"#,
            r#"{"type":"track","messageId":"","anonymousId":"a","event":" "}"#,
            r#"{"type":"track","messageId":"m3","anonymousId":"a","event":"$click","properties":{"kind":"nope"}}"#,
            r#"{"type":"alias","messageId":"m4","userId":"u","timestamp":"yesterday"}"#,
            r#"{"type":"page","messageId":"m5","anonymousId":"a","originalTimestamp":"2001-01-01T00:00:00Z"}"#,
            r#"{"type":null,"messageId":"m6","anonymousId":null,"userId":"u","context":null}"#,
            r#"{"type":"group","messageId":"m7","userId":"u","properties":{"a":{"b":{"c":{"d":{"e":{"f":{"g":1}}}}}}}}"#,
            r#"{"type":"screen","messageId":"m8","anonymousId":"a","name":"S"}"#,
        ];
        for (i, e) in events.iter().enumerate() {
            let raw: &RawValue = serde_json::from_str(e).unwrap();
            let mut fast = Validated {
                events: Vec::new(),
                rejections: Vec::new(),
                sent_at: None,
                write_key: None,
            };
            let mut slow = fast.clone();
            check_one(i, raw, None, RECEIVED, &mut fast);
            let p = Problems {
                index: i,
                out: &mut slow.rejections,
                found: false,
            };
            let v: Value = serde_json::from_str(e).unwrap();
            check_event_value(p, v, None, Some(RECEIVED), None, &mut slow.events);
            assert!(
                serde_json::from_str::<FastEvent>(e).is_ok(),
                "event {i} should take the typed read"
            );
            assert_eq!(fast, slow, "event {i}: {e}");
        }
    }

    #[test]
    fn parse_events_matches_parse_batch_on_the_same_events() {
        let events = [
            r#"{"type":"track","messageId":"m1","anonymousId":"a","event":"E","originalTimestamp":"2025-11-28T10:15:00.000Z"}"#,
            r#"{"type":"track","messageId":"m2","anonymousId":"a","event":42}"#,
            r#"[1]"#,
            r#"{"type":"page","messageId":"m3","userId":7,"name":"Home"}"#,
        ];
        let sent_at = "2025-11-28T10:15:04.000Z";
        let body = format!(r#"{{"batch":[{}],"sentAt":"{sent_at}"}}"#, events.join(","));
        let whole = parse_batch(body.as_bytes(), RECEIVED).unwrap();
        let raws: Vec<Box<RawValue>> = events
            .iter()
            .map(|e| RawValue::from_string(e.to_string()).unwrap())
            .collect();
        let refs: Vec<&RawValue> = raws.iter().map(|r| &**r).collect();
        let split = parse_events(&refs, Some(sent_at), RECEIVED).unwrap();
        assert_eq!(split, whole);
        assert_eq!(split.events.len(), 2);
        assert_eq!(split.rejected_events(), 2);

        let e = parse_events(&refs, Some("yesterday"), RECEIVED).unwrap_err();
        assert_eq!(e.to_string(), "sentAt: not an RFC 3339 date-time");
        let many: Vec<&RawValue> = std::iter::repeat_n(refs[0], MAX_EVENTS_PER_BATCH + 1).collect();
        assert!(parse_events(&many, None, RECEIVED)
            .unwrap_err()
            .is_too_large());
    }

    #[test]
    fn whole_body_errors_are_classified_as_before() {
        assert_eq!(
            parse_batch(b"[1, 2]", RECEIVED).unwrap_err(),
            BatchError::NotAnObject
        );
        assert!(matches!(
            parse_batch(b"{\"batch\": [", RECEIVED).unwrap_err(),
            BatchError::NotJson(_)
        ));
        assert_eq!(
            parse_batch(b"{\"batch\": 1}", RECEIVED).unwrap_err(),
            BatchError::BatchNotArray
        );
    }

    #[test]
    fn an_identify_with_traits_only_in_the_context_keeps_them_as_traits() {
        let body = br#"{"batch":[
            {"type":"identify","messageId":"r1","userId":"u","context":{"traits":{"email":"a@b.c"}}},
            {"type":"identify","messageId":"r2","userId":"u","traits":{"plan":"pro"},"context":{"traits":{"email":"a@b.c"}}},
            {"type":"track","messageId":"r3","userId":"u","event":"E","context":{"traits":{"email":"a@b.c"}}}
        ]}"#;
        let v = parse_batch(body, RECEIVED).unwrap();
        let traits: Vec<String> = v
            .events
            .iter()
            .map(|e| Value::Object(e.traits.clone()).to_string())
            .collect();
        assert_eq!(
            traits,
            [r#"{"email":"a@b.c"}"#, r#"{"plan":"pro"}"#, "{}"],
            "RudderStack's identify traits are the identify's; a track's context traits stay context"
        );
        assert!(
            v.events[0].context.contains_key("traits"),
            "the context is kept as sent"
        );
    }
}
