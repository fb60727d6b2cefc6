//! The event and batch types, in the shape of the Segment HTTP Tracking API.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// The kind of an event (`type` on the wire).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EventType {
    /// Something the visitor did: `event` names it.
    Track,
    /// Who the visitor is: `userId` and `traits`.
    Identify,
    /// A page view on the web.
    Page,
    /// A screen view in an app.
    Screen,
    /// Links `previousId` to `userId`.
    Alias,
    /// Puts the user in a group (`groupId`).
    Group,
}

impl EventType {
    /// Every type, in wire spelling order.
    pub const ALL: [EventType; 6] = [
        EventType::Track,
        EventType::Identify,
        EventType::Page,
        EventType::Screen,
        EventType::Alias,
        EventType::Group,
    ];

    /// The wire spelling: `"track"`, `"identify"`, ...
    pub fn as_str(self) -> &'static str {
        match self {
            EventType::Track => "track",
            EventType::Identify => "identify",
            EventType::Page => "page",
            EventType::Screen => "screen",
            EventType::Alias => "alias",
            EventType::Group => "group",
        }
    }

    /// Parses the wire spelling.
    pub fn parse(s: &str) -> Option<EventType> {
        EventType::ALL.into_iter().find(|t| t.as_str() == s)
    }
}

fn map_is_empty(m: &Map<String, Value>) -> bool {
    m.is_empty()
}

/// One event, as validated. Field names on the wire are Segment's (camelCase).
///
/// Fields Segment SDKs send that Waymark does not use (`integrations`, `_metadata`, `channel`,
/// `version`...) are accepted and ignored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Event {
    #[serde(rename = "type")]
    pub kind: EventType,
    /// The client's unique id for this event; the ingest server deduplicates on it.
    pub message_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub anonymous_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_id: Option<String>,
    /// The name of a `track` event.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event: Option<String>,
    /// The name of a `page` or `screen`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The old id of an `alias`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_id: Option<String>,
    /// The group of a `group` call.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group_id: Option<String>,
    /// When it happened, if the sender says so explicitly (used as given: imports, servers).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timestamp: Option<String>,
    /// When it happened by the client's clock, corrected for skew with `sentAt` (see [`crate::skew`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub original_timestamp: Option<String>,
    /// When the client sent it, by the client's clock. May also be given once for the batch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sent_at: Option<String>,
    #[serde(default, skip_serializing_if = "map_is_empty")]
    pub context: Map<String, Value>,
    #[serde(default, skip_serializing_if = "map_is_empty")]
    pub properties: Map<String, Value>,
    #[serde(default, skip_serializing_if = "map_is_empty")]
    pub traits: Map<String, Value>,
}

impl Event {
    /// An event of `kind` with only a message id; fill in the rest.
    pub fn new(kind: EventType, message_id: impl Into<String>) -> Event {
        Event {
            kind,
            message_id: message_id.into(),
            anonymous_id: None,
            user_id: None,
            event: None,
            name: None,
            previous_id: None,
            group_id: None,
            timestamp: None,
            original_timestamp: None,
            sent_at: None,
            context: Map::new(),
            properties: Map::new(),
            traits: Map::new(),
        }
    }

    /// A string inside `context` by path, e.g. `context_str(&["page", "url"])`.
    pub fn context_str(&self, path: &[&str]) -> Option<&str> {
        let (last, init) = path.split_last()?;
        let mut obj = &self.context;
        for key in init {
            obj = obj.get(*key)?.as_object()?;
        }
        obj.get(*last)?.as_str()
    }
}

/// A batch as the Segment `/v1/batch` endpoint takes it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Batch {
    pub batch: Vec<Event>,
    /// When the client sent the batch, by its own clock.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sent_at: Option<String>,
    /// The site's write key, for senders that cannot set HTTP Basic auth (beacons).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub write_key: Option<String>,
}
