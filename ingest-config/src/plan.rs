//! A site's tracking plan and completeness thresholds: the data, as read from the config and
//! the plan file. Compiling the schemas and checking events is `crate::intake::quality`.
//!
//! A plan file is JSON:
//!
//! ```json
//! {
//!   "on_violation": "flag",
//!   "allow_unplanned": false,
//!   "track": {
//!     "Order Completed": { "properties": { "type": "object", "required": ["order_id", "revenue"] } }
//!   },
//!   "identify": { "traits": { "type": "object", "properties": { "email": { "format": "email" } } } }
//! }
//! ```
//!
//! Each entry holds up to three JSON Schemas (draft 2020-12, formats checked), one for each of
//! the event's `properties`, `traits` and `context` objects. `track` entries are keyed by event
//! name; `page`, `screen`, `identify`, `group` and `alias` have one entry each, or none (then
//! those calls are not checked).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// What a violation does to the event.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnViolation {
    /// Stored, with its violations listed in the `violations` column (the default).
    #[default]
    Flag,
    /// Refused, listed in the response's `rejected` like any invalid event.
    Reject,
}

/// The schemas for one kind of event.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rules {
    #[serde(default)]
    pub properties: Option<Value>,
    #[serde(default)]
    pub traits: Option<Value>,
    #[serde(default)]
    pub context: Option<Value>,
    #[serde(default, rename = "$comment")]
    pub comment: Option<String>,
}

impl Rules {
    /// (`properties` | `traits` | `context`, schema) for each schema given.
    pub fn schemas(&self) -> impl Iterator<Item = (&'static str, &Value)> {
        [
            ("properties", &self.properties),
            ("traits", &self.traits),
            ("context", &self.context),
        ]
        .into_iter()
        .filter_map(|(k, v)| v.as_ref().map(|v| (k, v)))
    }
}

/// A tracking plan file.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrackingPlan {
    #[serde(default)]
    pub on_violation: OnViolation,
    /// `track` events whose name has no entry are `unplanned_event` violations unless this is
    /// true.
    #[serde(default)]
    pub allow_unplanned: bool,
    #[serde(default)]
    pub track: BTreeMap<String, Rules>,
    #[serde(default)]
    pub page: Option<Rules>,
    #[serde(default)]
    pub screen: Option<Rules>,
    #[serde(default)]
    pub identify: Option<Rules>,
    #[serde(default)]
    pub group: Option<Rules>,
    #[serde(default)]
    pub alias: Option<Rules>,
    #[serde(default, rename = "$comment")]
    pub comment: Option<String>,
}

impl TrackingPlan {
    /// Reads and parses a plan file; the error names the file and the reason.
    pub fn read(path: &Path) -> Result<TrackingPlan, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("reading {}: {e}", path.display()))?;
        serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))
    }

    /// Every (where, schema) in the plan, `where` as a config-style path
    /// (`track."Order Completed".properties`), for compiling and for error messages.
    pub fn schemas(&self) -> Vec<(String, &Value)> {
        let mut out = Vec::new();
        for (name, rules) in &self.track {
            for (part, s) in rules.schemas() {
                out.push((format!("track.{name:?}.{part}"), s));
            }
        }
        for (kind, rules) in self.calls() {
            for (part, s) in rules.schemas() {
                out.push((format!("{kind}.{part}"), s));
            }
        }
        out
    }

    /// The entries for calls other than `track`: (`page`, rules) ...
    pub fn calls(&self) -> impl Iterator<Item = (&'static str, &Rules)> {
        [
            ("page", &self.page),
            ("screen", &self.screen),
            ("identify", &self.identify),
            ("group", &self.group),
            ("alias", &self.alias),
        ]
        .into_iter()
        .filter_map(|(k, v)| v.as_ref().map(|v| (k, v)))
    }
}

/// A critical field and the share of events that must carry it
/// (`[[sites.completeness]] event = "Order Completed", field = "properties.revenue", min = 1.0`).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Completeness {
    /// A `track` event's name, or a call type: `identify`, `page`, `screen`, `group`, `alias`.
    pub event: String,
    /// A path starting with `properties.`, `traits.` or `context.`; present means there and
    /// neither null nor an empty string.
    pub field: String,
    /// The share (0 to 1) below which the field counts as incomplete for alerts.
    #[serde(default = "Completeness::default_min")]
    pub min: f64,
}

impl Completeness {
    fn default_min() -> f64 {
        1.0
    }
}

/// Compiles one schema of a plan, with formats (`email`, `date-time`, `uri`...) checked.
pub fn compile(schema: &Value) -> Result<jsonschema::Validator, String> {
    jsonschema::options()
        .should_validate_formats(true)
        .build(schema)
        .map_err(|e| e.to_string())
}

/// Resolves a plan path as written in the config: relative paths are relative to the config
/// file's directory.
pub fn resolve(config_dir: Option<&Path>, plan: &Path) -> PathBuf {
    match config_dir {
        Some(dir) if plan.is_relative() => dir.join(plan),
        _ => plan.to_path_buf(),
    }
}
