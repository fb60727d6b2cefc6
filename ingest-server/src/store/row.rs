//! The rows written to ClickHouse. The same [`EventRow`] is what a spool record holds (binary,
//! see `spool::rows`; the JSON of earlier versions still reads, missing fields defaulted).
//! Field order is the column order of the `INSERT`.

use serde::{Deserialize, Serialize};

/// One row of the `events` table (see `schema.rs` for what each column means).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, clickhouse::Row)]
#[serde(default)]
pub struct EventRow {
    pub site: String,
    pub visitor_id: String,
    pub message_id: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub event: String,
    pub name: String,
    pub anonymous_id: String,
    pub user_id: String,
    pub previous_id: String,
    pub group_id: String,
    /// DateTime: skew-corrected, seconds.
    pub timestamp: u32,
    pub timestamp_ms: i64,
    pub skew_rule: String,
    /// DateTime: as the client sent it; the partition key.
    pub client_time: u32,
    pub received_at_ms: i64,
    pub sent_at_ms: i64,
    pub source: String,
    pub session_id: String,
    pub page_url: String,
    pub page_path: String,
    pub page_title: String,
    pub page_referrer: String,
    pub page_search: String,
    pub utm_source: String,
    pub utm_medium: String,
    pub utm_campaign: String,
    pub utm_term: String,
    pub utm_content: String,
    pub user_agent: String,
    pub browser: String,
    pub browser_version: String,
    pub os: String,
    pub os_version: String,
    pub device_type: String,
    pub is_bot: u8,
    pub bot_score: Option<u8>,
    pub ip: String,
    pub locale: String,
    pub library_name: String,
    pub library_version: String,
    pub country: String,
    pub region: String,
    pub region_code: String,
    pub city: String,
    pub postal_code: String,
    pub geo_timezone: String,
    pub continent: String,
    pub colo: String,
    pub latitude: Option<f64>,
    pub longitude: Option<f64>,
    pub asn: Option<u32>,
    pub gpc: u8,
    pub product_id: String,
    pub product_name: String,
    pub price: Option<f64>,
    pub quantity: Option<f64>,
    pub currency: String,
    pub order_id: String,
    pub revenue: Option<f64>,
    pub engaged_ms: u64,
    pub scroll_depth: u8,
    pub properties: String,
    pub traits: String,
    pub context: String,
    /// Tracking plan violations, `kind:field` (see `intake::quality`).
    pub violations: Vec<String>,
    /// Critical fields the event lacks (`[[sites.completeness]]`).
    pub missing: Vec<String>,
}

/// One row of the `identities` table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, clickhouse::Row)]
pub struct IdentityRow {
    pub site: String,
    pub user_id: String,
    pub anonymous_id: String,
    /// DateTime.
    pub linked_at: u32,
    pub message_id: String,
    pub source_type: String,
}

/// One row of the `quarantine` table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, clickhouse::Row)]
pub struct QuarantineRow {
    /// DateTime.
    pub quarantined_at: u32,
    pub site: String,
    pub message_id: String,
    pub reason: String,
    /// The row as JSON.
    pub row: String,
}

/// The `type` of a row that is only an identity link, made by the intake rather than sent by a
/// client (an email click's stitch, `crate::intake::email::link_row`): the writer puts it in
/// `identities`, with its `source` as the link's `source_type`, and never in `events`.
pub const LINK_ROW: &str = "$link";

/// The pseudo anonymous id prefixes of identifier links (`crate::intake::identifiers`): an
/// email or phone number linked to a user id, never a device.
pub const EMAIL_PREFIX: &str = "$email:";
pub const PHONE_PREFIX: &str = "$phone:";
/// The `source_type` prefix of identifier links (`identifier:import`...).
pub const IDENTIFIER_SOURCE: &str = "identifier:";
/// The `source_type` of a link made by merging two user ids (`crate::identity`): the merged user
/// id as `anonymous_id`, the person's user id as `user_id`.
pub const MERGE_SOURCE: &str = "merge";
/// The `source_type` of a link that moves a merged user's device to the person.
pub const MERGE_DEVICE_SOURCE: &str = "merge_device";

/// Whether an id in `identities` is an identifier rather than an anonymous id.
pub fn is_identifier(id: &str) -> bool {
    id.starts_with(EMAIL_PREFIX) || id.starts_with(PHONE_PREFIX)
}

/// The identity links an event carries: anonymous id <-> user id, and alias previousId -> userId.
/// Reads only fields of `crate::spool::rows::Keys`: the writer fills no others before it calls
/// this (`ClickHouseSink::insert_payloads`); a new field read here must be added there.
pub fn identity_links(row: &EventRow) -> Vec<IdentityRow> {
    let mut out = Vec::new();
    if row.user_id.is_empty() {
        return out;
    }
    let link = |anon: &str| IdentityRow {
        site: row.site.clone(),
        user_id: row.user_id.clone(),
        anonymous_id: anon.to_string(),
        linked_at: row.timestamp,
        message_id: row.message_id.clone(),
        source_type: if row.kind == LINK_ROW {
            row.source.clone()
        } else {
            row.kind.clone()
        },
    };
    if !row.anonymous_id.is_empty() {
        out.push(link(&row.anonymous_id));
    }
    if row.kind == "alias" && !row.previous_id.is_empty() && row.previous_id != row.anonymous_id {
        out.push(link(&row.previous_id));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn links_come_from_both_ids_and_alias() {
        let mut r = EventRow {
            site: "s".into(),
            kind: "identify".into(),
            anonymous_id: "a1".into(),
            user_id: "u1".into(),
            ..EventRow::default()
        };
        assert_eq!(identity_links(&r).len(), 1);
        r.kind = "alias".into();
        r.previous_id = "a0".into();
        let l = identity_links(&r);
        assert_eq!(l.len(), 2);
        assert_eq!(l[1].anonymous_id, "a0");
        r.user_id.clear();
        assert!(identity_links(&r).is_empty());
        let stitch = EventRow {
            kind: LINK_ROW.into(),
            source: "email_click".into(),
            anonymous_id: "a1".into(),
            user_id: "u1".into(),
            ..EventRow::default()
        };
        assert_eq!(identity_links(&stitch)[0].source_type, "email_click");
    }

    #[test]
    fn old_spool_records_still_read() {
        let r: EventRow =
            serde_json::from_str(r#"{"site":"s","message_id":"m","type":"track"}"#).unwrap();
        assert_eq!(r.kind, "track");
        assert_eq!(r.bot_score, None);
    }
}
