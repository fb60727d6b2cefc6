//! Identifiers from traits: an identify's `traits.email` and `traits.phone`, normalised per the
//! site's `[sites.identity]`, become identity links of their own, so that two user ids sharing
//! one can be merged into one person (`crate::identity`).
//!
//! An identifier is stored in `identities` as a link from a pseudo anonymous id (`$email:` or
//! `$phone:` and the normalised value) to the user id, with `source_type`
//! `identifier:<source>` (`api`, `edge`, `import`): the same table, the same writer path, the
//! same deletion (`crate::privacy` finds and deletes them with the person's other links), and
//! nothing a client sends can pass for one (clients cannot write a `source_type` that starts
//! with `identifier:`; the merge pass reads only those).
//!
//! - email: trimmed and lower-cased; `ada+news@` folded to `ada@` when `email_plus` is on; dots
//!   of a Gmail address's local part dropped when `email_gmail_dots` is on. Something without
//!   exactly one `@` and a dot in the domain is no email.
//! - phone: E.164 through `phonenumber` (the site's `phone_region` for numbers without `+`);
//!   an invalid number is no identifier.

use serde_json::{Map, Value};

use crate::config::identity::IdentityConfig;
use crate::store::row::{EventRow, LINK_ROW};

pub use crate::store::row::{
    is_identifier, EMAIL_PREFIX, IDENTIFIER_SOURCE as SOURCE_PREFIX, PHONE_PREFIX,
};

/// A normalised email, or `None` when `raw` is not one.
pub fn normalize_email(raw: &str, cfg: &IdentityConfig) -> Option<String> {
    let e = raw.trim().to_lowercase();
    let (local, domain) = e.split_once('@')?;
    if local.is_empty()
        || domain.contains('@')
        || !domain.contains('.')
        || domain.starts_with('.')
        || domain.ends_with('.')
        || e.chars().any(char::is_whitespace)
    {
        return None;
    }
    let mut local = local.to_string();
    if cfg.email_plus {
        if let Some((base, _)) = local.split_once('+') {
            if !base.is_empty() {
                local = base.to_string();
            }
        }
    }
    if cfg.email_gmail_dots && matches!(domain, "gmail.com" | "googlemail.com") {
        local.retain(|c| c != '.');
        if local.is_empty() {
            return None;
        }
    }
    Some(format!("{local}@{domain}"))
}

/// A phone number in E.164 (`+4930123456`), or `None` when `raw` is not a valid number (a
/// number without `+` needs the site's `phone_region`).
pub fn normalize_phone(raw: &str, cfg: &IdentityConfig) -> Option<String> {
    let raw = raw.trim();
    if raw.is_empty() {
        return None;
    }
    let region = match &cfg.phone_region {
        Some(r) => Some(r.parse::<phonenumber::country::Id>().ok()?),
        None if raw.starts_with('+') => None,
        None => return None,
    };
    let n = phonenumber::parse(region, raw).ok()?;
    if !phonenumber::is_valid(&n) {
        return None;
    }
    Some(n.format().mode(phonenumber::Mode::E164).to_string())
}

/// The identifiers (`$email:...`, `$phone:...`) in a user's traits.
pub fn from_traits(traits: &Map<String, Value>, cfg: &IdentityConfig) -> Vec<String> {
    let mut out = Vec::new();
    if let Some(Value::String(e)) = traits.get("email") {
        if let Some(e) = normalize_email(e, cfg) {
            out.push(format!("{EMAIL_PREFIX}{e}"));
        }
    }
    let phone = match traits.get("phone") {
        Some(Value::String(p)) => Some(p.clone()),
        Some(Value::Number(n)) => Some(n.to_string()),
        _ => None,
    };
    if let Some(p) = phone.and_then(|p| normalize_phone(&p, cfg)) {
        out.push(format!("{PHONE_PREFIX}{p}"));
    }
    out
}

/// The link rows for `row`'s identifiers (an identify with a user id and traits; none
/// otherwise). `source` is where the event came from (`api`, `edge`, `import`).
pub fn link_rows(
    row: &EventRow,
    traits: &Map<String, Value>,
    cfg: &IdentityConfig,
) -> Vec<EventRow> {
    if row.kind != "identify" || row.user_id.is_empty() || traits.is_empty() {
        return Vec::new();
    }
    from_traits(traits, cfg)
        .into_iter()
        .map(|ident| {
            let kind = if ident.starts_with(EMAIL_PREFIX) {
                "email"
            } else {
                "phone"
            };
            EventRow {
                site: row.site.clone(),
                visitor_id: ident.clone(),
                // One link per (event, identifier kind): a retry of the event is a duplicate.
                message_id: format!("{}:{kind}", row.message_id),
                kind: LINK_ROW.to_string(),
                anonymous_id: ident,
                user_id: row.user_id.clone(),
                timestamp: row.timestamp,
                timestamp_ms: row.timestamp_ms,
                client_time: row.client_time,
                received_at_ms: row.received_at_ms,
                sent_at_ms: row.sent_at_ms,
                source: format!("{SOURCE_PREFIX}{}", row.source),
                ..EventRow::default()
            }
        })
        .collect()
}

/// The identifier link rows of a request's rows, `events` being the events they were made
/// from, in the same order.
pub fn links_of(
    rows: &[EventRow],
    events: &[waymark_protocol::Event],
    cfg: &IdentityConfig,
) -> Vec<EventRow> {
    rows.iter()
        .zip(events)
        .flat_map(|(r, ev)| link_rows(r, &ev.traits, cfg))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn cfg(plus: bool, dots: bool, region: Option<&str>) -> IdentityConfig {
        IdentityConfig {
            email_plus: plus,
            email_gmail_dots: dots,
            phone_region: region.map(str::to_string),
            ..IdentityConfig::default()
        }
    }

    #[test]
    fn emails_are_trimmed_and_lower_cased_and_folded_only_when_asked() {
        let off = cfg(false, false, None);
        assert_eq!(
            normalize_email(" Ada@Example.COM ", &off).as_deref(),
            Some("ada@example.com")
        );
        assert_eq!(
            normalize_email("ada+news@example.com", &off).as_deref(),
            Some("ada+news@example.com")
        );
        assert_eq!(
            normalize_email("a.d.a@gmail.com", &off).as_deref(),
            Some("a.d.a@gmail.com")
        );
        let on = cfg(true, true, None);
        assert_eq!(
            normalize_email("Ada+News@Example.com", &on).as_deref(),
            Some("ada@example.com")
        );
        assert_eq!(
            normalize_email("A.D.A+x@GMail.com", &on).as_deref(),
            Some("ada@gmail.com")
        );
        assert_eq!(
            normalize_email("a.d.a@example.com", &on).as_deref(),
            Some("a.d.a@example.com"),
            "dots fold at Gmail only"
        );
        for bad in [
            "",
            "ada",
            "ada@",
            "@example.com",
            "a@b@c.com",
            "ada@example",
            "a da@x.com",
        ] {
            assert_eq!(normalize_email(bad, &on), None, "{bad:?}");
        }
    }

    #[test]
    fn phones_become_e164_with_the_sites_region() {
        let de = cfg(false, false, Some("DE"));
        assert_eq!(
            normalize_phone("030 901820", &de).as_deref(),
            Some("+4930901820")
        );
        assert_eq!(
            normalize_phone("+1 415-555-2671", &de).as_deref(),
            Some("+14155552671")
        );
        let none = cfg(false, false, None);
        assert_eq!(normalize_phone("030 901820", &none), None);
        assert_eq!(
            normalize_phone("+49 30 901820", &none).as_deref(),
            Some("+4930901820")
        );
        assert_eq!(normalize_phone("12", &de), None);
    }

    #[test]
    fn identify_traits_become_link_rows() {
        let row = EventRow {
            site: "s".into(),
            kind: "identify".into(),
            user_id: "c1".into(),
            message_id: "m1".into(),
            source: "import".into(),
            ..EventRow::default()
        };
        let traits = json!({"email": " Ada@Example.com", "phone": "+49 30 901820"});
        let rows = link_rows(
            &row,
            traits.as_object().unwrap(),
            &IdentityConfig::default(),
        );
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0].anonymous_id, "$email:ada@example.com");
        assert_eq!(rows[0].message_id, "m1:email");
        assert_eq!(rows[0].source, "identifier:import");
        assert_eq!(rows[1].anonymous_id, "$phone:+4930901820");
        let track = EventRow {
            kind: "track".into(),
            ..row
        };
        assert!(link_rows(
            &track,
            traits.as_object().unwrap(),
            &IdentityConfig::default()
        )
        .is_empty());
    }
}
