//! Data quality at intake: each valid event checked against its site's tracking plan (JSON
//! Schemas compiled once, at start) and its critical fields (completeness).
//!
//! What an event gets, on its row:
//! - `violations`: `kind:field` for each way it breaks the plan, `kind` one of
//!   `unplanned_event` (a `track` name the plan does not list; field `event`),
//!   `required_missing`, `type_mismatch`, `additional_property` and `format` (any other value
//!   rule: format, pattern, enum, range, length). `field` is the path in the event,
//!   `properties.products.0.price`. With `on_violation = "reject"` such an event is refused
//!   instead, listed in the answer's `rejected` with the same kind and field.
//! - `missing`: each critical field (`[[sites.completeness]]`) it lacks, so those events can be
//!   found and enriched later.
//!
//! Both are counted per request into `waymark_quality_*` metrics (see `crate::metrics`).

use std::collections::HashMap;

use jsonschema::error::ValidationErrorKind;
use jsonschema::paths::LocationSegment;
use jsonschema::Validator;
use serde_json::{Map, Value};
use waymark_protocol::{Event, EventType, Rejection};

use crate::config::plan::{self, Completeness, OnViolation, Rules};
use crate::config::{Config, SiteConfig};
use crate::metrics::Metrics;

/// The compiled schemas of one plan entry.
#[derive(Default)]
struct Compiled {
    properties: Option<Validator>,
    traits: Option<Validator>,
    context: Option<Validator>,
}

impl Compiled {
    fn new(rules: &Rules) -> Result<Compiled, String> {
        let c = |s: &Option<Value>| s.as_ref().map(plan::compile).transpose();
        Ok(Compiled {
            properties: c(&rules.properties)?,
            traits: c(&rules.traits)?,
            context: c(&rules.context)?,
        })
    }
}

/// One site's checks.
pub struct SiteQuality {
    on_violation: OnViolation,
    allow_unplanned: bool,
    /// None: the site has no plan (only completeness is checked).
    track: Option<HashMap<String, Compiled>>,
    calls: HashMap<&'static str, Compiled>,
    critical: Vec<Completeness>,
}

/// What the checks found in one event.
#[derive(Debug, Default, PartialEq)]
pub struct Verdict {
    /// `kind:field`, in the order found.
    pub violations: Vec<String>,
    /// The critical fields the event lacks.
    pub missing: Vec<String>,
}

/// Every site's checks, by site id.
#[derive(Default)]
pub struct Quality {
    sites: HashMap<String, SiteQuality>,
}

impl Quality {
    /// Compiles the plans of `config` (read and checked by `Config::load`; a schema that does
    /// not compile here was refused there, so it is only logged and skipped).
    pub fn new(config: &Config) -> Quality {
        let sites = config
            .sites
            .iter()
            .filter(|s| s.plan.is_some() || !s.completeness.is_empty())
            .map(|s| (s.id.clone(), SiteQuality::new(s)))
            .collect();
        Quality { sites }
    }

    /// The checks of `site`, if it has any.
    pub fn site(&self, site: &str) -> Option<&SiteQuality> {
        self.sites.get(site)
    }
}

impl SiteQuality {
    fn new(site: &SiteConfig) -> SiteQuality {
        let compile = |name: &str, rules: &Rules| match Compiled::new(rules) {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(site = %site.id, entry = name, error = %e, "tracking plan schema skipped");
                Compiled::default()
            }
        };
        let plan = site.plan.as_ref();
        SiteQuality {
            on_violation: plan.map(|p| p.on_violation).unwrap_or_default(),
            allow_unplanned: plan.is_some_and(|p| p.allow_unplanned),
            track: plan.map(|p| {
                p.track
                    .iter()
                    .map(|(name, r)| (name.clone(), compile(name, r)))
                    .collect()
            }),
            calls: plan
                .map(|p| p.calls().map(|(k, r)| (k, compile(k, r))).collect())
                .unwrap_or_default(),
            critical: site.completeness.clone(),
        }
    }

    /// Whether a violation refuses the event (else it is stored, flagged).
    pub fn rejects(&self) -> bool {
        self.on_violation == OnViolation::Reject
    }

    /// Checks one event. The event's objects are moved into JSON values for the schema and
    /// moved back (no copy).
    pub fn check(&self, ev: &mut Event) -> Verdict {
        let mut v = Verdict::default();
        let name = event_name(ev);
        for c in &self.critical {
            if c.event == name && !present(ev, &c.field) {
                v.missing.push(c.field.clone());
            }
        }
        let Some(track) = &self.track else {
            return v;
        };
        let compiled = match ev.kind {
            // Waymark's own events ($engagement, $click, $email_open...) are checked by the
            // wire format, not by the site's plan.
            EventType::Track if name.starts_with('$') => None,
            EventType::Track => {
                let c = track.get(name);
                if c.is_none() && !self.allow_unplanned {
                    v.violations.push("unplanned_event:event".into());
                }
                c
            }
            kind => self.calls.get(kind.as_str()),
        };
        if let Some(c) = compiled {
            for (part, validator, map) in [
                ("properties", &c.properties, &mut ev.properties),
                ("traits", &c.traits, &mut ev.traits),
                ("context", &c.context, &mut ev.context),
            ] {
                if let Some(validator) = validator {
                    check_object(validator, part, map, &mut v.violations);
                }
            }
        }
        v
    }

    /// The completeness checks that apply to events named `name`: (field, min).
    pub fn critical_for<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a Completeness> {
        self.critical.iter().filter(move |c| c.event == name)
    }
}

/// The name plans and completeness key an event by: a `track` event's name, else its type.
pub fn event_name(ev: &Event) -> &str {
    match ev.kind {
        EventType::Track => ev.event.as_deref().unwrap_or(""),
        kind => kind.as_str(),
    }
}

/// Validates `map` as the object `part` of the event, pushing `kind:field` for each error.
fn check_object(
    validator: &Validator,
    part: &str,
    map: &mut Map<String, Value>,
    out: &mut Vec<String>,
) {
    let value = Value::Object(std::mem::take(map));
    if !validator.is_valid(&value) {
        for e in validator.iter_errors(&value) {
            let mut field = part.to_string();
            for seg in e.instance_path() {
                field.push('.');
                match seg {
                    LocationSegment::Property(p) => field.push_str(&p),
                    LocationSegment::Index(i) => field.push_str(&i.to_string()),
                }
            }
            match e.kind() {
                ValidationErrorKind::Required { property } => {
                    let p = property
                        .as_str()
                        .map_or_else(|| property.to_string(), str::to_string);
                    out.push(format!("required_missing:{field}.{p}"));
                }
                ValidationErrorKind::Type { .. } => out.push(format!("type_mismatch:{field}")),
                ValidationErrorKind::AdditionalProperties { unexpected }
                | ValidationErrorKind::UnevaluatedProperties { unexpected } => {
                    for p in unexpected {
                        out.push(format!("additional_property:{field}.{p}"));
                    }
                }
                _ => out.push(format!("format:{field}")),
            }
        }
    }
    if let Value::Object(m) = value {
        *map = m;
    }
}

/// Whether the dotted `field` (`properties.revenue`) is in the event, neither null nor "".
fn present(ev: &Event, field: &str) -> bool {
    let mut parts = field.split('.');
    let mut cur = match parts.next() {
        Some("properties") => &ev.properties,
        Some("traits") => &ev.traits,
        Some("context") => &ev.context,
        _ => return false,
    };
    let mut parts = parts.peekable();
    while let Some(key) = parts.next() {
        let Some(v) = cur.get(key) else {
            return false;
        };
        if parts.peek().is_none() {
            return !(v.is_null() || v.as_str() == Some(""));
        }
        match v.as_object() {
            Some(m) => cur = m,
            None => return false,
        }
    }
    false
}

/// The rejection for an event a rejecting plan refuses: its first violation.
pub fn rejection(index: usize, violations: &[String]) -> Rejection {
    let first = violations.first().map(String::as_str).unwrap_or("");
    let (kind, field) = first.split_once(':').unwrap_or((first, ""));
    Rejection {
        index: Some(index),
        field: field.to_string(),
        reason: format!(
            "tracking plan: {kind}{}",
            if violations.len() > 1 {
                format!(
                    " (and {} more: {})",
                    violations.len() - 1,
                    violations[1..].join(", ")
                )
            } else {
                String::new()
            }
        ),
    }
}

/// The batch positions of the events that passed validation: `0..` without the indices of
/// `rejections` (the events are in batch order).
pub fn batch_positions(valid: usize, rejections: &[Rejection]) -> Vec<usize> {
    let mut rejected: Vec<usize> = rejections.iter().filter_map(|r| r.index).collect();
    rejected.sort_unstable();
    rejected.dedup();
    let mut out = Vec::with_capacity(valid);
    let mut i = 0;
    let mut r = rejected.iter().peekable();
    while out.len() < valid {
        while r.next_if(|&&x| x < i).is_some() {}
        if r.peek() == Some(&&i) {
            r.next();
        } else {
            out.push(i);
        }
        i += 1;
    }
    out
}

/// Counts one request's checks into the metrics: for each event name, how many were checked,
/// their violations by kind, and per critical field how many were checked and lacked it.
pub struct Tally<'a> {
    site: &'a str,
    q: &'a SiteQuality,
    /// (event, kind) -> n; kind "" = events checked.
    violations: HashMap<(String, String), u64>,
    /// (event, field) -> (checked, missing)
    fields: HashMap<(String, String), (u64, u64)>,
}

impl<'a> Tally<'a> {
    pub fn new(site: &'a str, q: &'a SiteQuality) -> Tally<'a> {
        Tally {
            site,
            q,
            violations: HashMap::new(),
            fields: HashMap::new(),
        }
    }

    /// Adds one checked event.
    pub fn add(&mut self, ev: &Event, v: &Verdict) {
        let name = event_name(ev);
        // Unplanned names are not labels (a client could make them without bound).
        let planned = !v
            .violations
            .iter()
            .any(|x| x.starts_with("unplanned_event:"));
        let label = if planned { name } else { "$unplanned" };
        for x in &v.violations {
            let kind = x.split_once(':').map_or(x.as_str(), |(k, _)| k);
            *self
                .violations
                .entry((label.to_string(), kind.to_string()))
                .or_default() += 1;
        }
        for c in self.q.critical_for(name) {
            let e = self
                .fields
                .entry((name.to_string(), c.field.clone()))
                .or_default();
            e.0 += 1;
            if v.missing.contains(&c.field) {
                e.1 += 1;
            }
        }
    }

    /// Records the counts.
    pub fn record(self, metrics: &Metrics) {
        for ((event, kind), n) in self.violations {
            metrics.quality_violations(self.site, &event, &kind, n);
        }
        for ((event, field), (checked, missing)) in self.fields {
            metrics.quality_field(self.site, &event, &field, checked, missing);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::plan::TrackingPlan;
    use serde_json::json;

    fn site(plan: Value, completeness: Vec<Completeness>) -> SiteQuality {
        let plan: TrackingPlan = serde_json::from_value(plan).unwrap();
        SiteQuality::new(&SiteConfig {
            plan: Some(plan),
            completeness,
            ..crate::config::Config::from_toml("[[sites]]\nid = \"s\"\nwrite_keys = [\"k\"]\n")
                .unwrap()
                .sites
                .remove(0)
        })
    }

    fn track(name: &str, properties: Value) -> Event {
        let mut e = Event::new(EventType::Track, "m1");
        e.event = Some(name.into());
        e.properties = properties.as_object().unwrap().clone();
        e
    }

    fn order_plan() -> Value {
        json!({
            "track": {
                "Order Completed": {"properties": {
                    "type": "object",
                    "required": ["order_id", "revenue"],
                    "properties": {
                        "order_id": {"type": "string"},
                        "revenue": {"type": "number", "minimum": 0},
                        "products": {"type": "array", "items": {"type": "object", "properties": {"price": {"type": "number"}}}}
                    },
                    "additionalProperties": false
                }}
            },
            "identify": {"traits": {"type": "object", "properties": {"email": {"type": "string", "format": "email"}}}}
        })
    }

    #[test]
    fn each_kind_of_violation_names_its_field() {
        let q = site(order_plan(), vec![]);
        let mut ok = track(
            "Order Completed",
            json!({"order_id": "o1", "revenue": 10.5}),
        );
        assert_eq!(q.check(&mut ok), Verdict::default());
        assert_eq!(
            ok.properties["revenue"],
            json!(10.5),
            "properties are put back"
        );

        let mut bad = track(
            "Order Completed",
            json!({"order_id": 7, "products": [{"price": "9"}], "coupon": "X", "revenue": -1}),
        );
        let v = q.check(&mut bad);
        let mut got = v.violations.clone();
        got.sort();
        assert_eq!(
            got,
            [
                "additional_property:properties.coupon",
                "format:properties.revenue",
                "type_mismatch:properties.order_id",
                "type_mismatch:properties.products.0.price",
            ]
        );
        let mut missing = track("Order Completed", json!({"order_id": "o1"}));
        assert_eq!(
            q.check(&mut missing).violations,
            ["required_missing:properties.revenue"]
        );
        assert_eq!(
            q.check(&mut track("Order Complete", json!({}))).violations,
            ["unplanned_event:event"]
        );
        let mut id = Event::new(EventType::Identify, "m2");
        id.traits = json!({"email": "not an address"})
            .as_object()
            .unwrap()
            .clone();
        assert_eq!(q.check(&mut id).violations, ["format:traits.email"]);
        // No entry for page: not checked.
        assert_eq!(
            q.check(&mut Event::new(EventType::Page, "m3")),
            Verdict::default()
        );
    }

    #[test]
    fn unplanned_events_can_be_allowed_and_completeness_works_without_a_plan() {
        let mut plan = order_plan();
        plan["allow_unplanned"] = json!(true);
        let q = site(plan, vec![]);
        assert_eq!(
            q.check(&mut track("Anything", json!({}))),
            Verdict::default()
        );

        let crit = |event: &str, field: &str| Completeness {
            event: event.into(),
            field: field.into(),
            min: 0.95,
        };
        let mut cfg = crate::config::Config::from_toml("[[sites]]\nid = \"s\"\n").unwrap();
        cfg.sites[0].completeness = vec![
            crit("identify", "traits.email"),
            crit("Order Completed", "properties.revenue"),
        ];
        let q = SiteQuality::new(&cfg.sites[0]);
        let mut id = Event::new(EventType::Identify, "m");
        id.traits = json!({"email": ""}).as_object().unwrap().clone();
        assert_eq!(q.check(&mut id).missing, ["traits.email"]);
        id.traits = json!({"email": "a@b.co"}).as_object().unwrap().clone();
        assert!(q.check(&mut id).missing.is_empty());
        let mut o = track("Order Completed", json!({"revenue": null}));
        assert_eq!(q.check(&mut o).missing, ["properties.revenue"]);
        assert!(
            q.check(&mut o).violations.is_empty(),
            "no plan, no violations"
        );
    }

    #[test]
    fn the_starter_plan_compiles_and_takes_a_spec_order() {
        let path =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("plans/segment-ecommerce.json");
        let plan = TrackingPlan::read(&path).unwrap();
        for (at, schema) in plan.schemas() {
            plan::compile(schema).unwrap_or_else(|e| panic!("{at}: {e}"));
        }
        let q = site(
            serde_json::to_value(
                std::fs::read_to_string(&path)
                    .unwrap()
                    .parse::<Value>()
                    .unwrap(),
            )
            .unwrap(),
            vec![],
        );
        let mut order = track(
            "Order Completed",
            json!({"order_id": "o1", "revenue": 25.0, "currency": "EUR", "products": [{"product_id": "p1", "price": 25.0, "quantity": 1}]}),
        );
        assert_eq!(q.check(&mut order), Verdict::default());
        let mut broken = track(
            "Order Completed",
            json!({"order_id": "o1", "currency": "euro"}),
        );
        let mut got = q.check(&mut broken).violations;
        got.sort();
        assert_eq!(
            got,
            [
                "format:properties.currency",
                "required_missing:properties.revenue"
            ]
        );
        assert_eq!(
            q.check(&mut track("$engagement", json!({"engaged_ms": 5}))),
            Verdict::default()
        );
    }

    #[test]
    fn positions_skip_rejected_events() {
        let r = |i| Rejection {
            index: Some(i),
            field: "x".into(),
            reason: "y".into(),
        };
        assert_eq!(batch_positions(3, &[]), [0, 1, 2]);
        assert_eq!(batch_positions(3, &[r(1), r(1), r(3)]), [0, 2, 4]);
        assert_eq!(batch_positions(2, &[r(0)]), [1, 2]);
        let j = rejection(
            4,
            &[
                "required_missing:properties.revenue".into(),
                "format:traits.email".into(),
            ],
        );
        assert_eq!(j.index, Some(4));
        assert_eq!(j.field, "properties.revenue");
        assert!(j.reason.contains("required_missing") && j.reason.contains("1 more"));
    }
}
