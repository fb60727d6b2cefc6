//! Reading Cloudflare's per-request data (`request.cf`) defensively.
//!
//! Any field may be missing, `null`, or of an unexpected type (a local `wrangler dev` fills in
//! placeholders, a zone without Bot Management has no `botManagement`, latitude and longitude
//! arrive as strings). A field that cannot be read is left out; it never fails the request.

use serde_json::Value;
use waymark_protocol::edge::Geo;

/// Longest string we keep from `cf`; longer values are not what Cloudflare sends and are dropped.
const MAX_CF_STRING: usize = 128;

/// What the edge learns from `request.cf`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CfFacts {
    pub geo: Geo,
    /// `botManagement.score`, 1 (automated) to 99 (human), when the zone has Bot Management.
    pub bot_score: Option<u8>,
    /// Cloudflare recognised a verified bot (`botManagement.verifiedBot` or `verifiedBotCategory`).
    pub verified_bot: bool,
}

fn string(cf: &Value, key: &str) -> Option<String> {
    let s = cf.get(key)?.as_str()?.trim();
    (!s.is_empty() && s.len() <= MAX_CF_STRING).then(|| s.to_string())
}

/// A number that may arrive as a JSON number or as a string (`"30.27130"`).
fn number(cf: &Value, key: &str) -> Option<f64> {
    let v = cf.get(key)?;
    let n = match v {
        Value::Number(n) => n.as_f64()?,
        Value::String(s) => s.trim().parse::<f64>().ok()?,
        _ => return None,
    };
    n.is_finite().then_some(n)
}

fn in_range(n: Option<f64>, limit: f64) -> Option<f64> {
    n.filter(|v| v.abs() <= limit)
}

/// Extracts the facts from the JSON of `request.cf` (`Value::Null` when there is none).
pub fn read_cf(cf: &Value) -> CfFacts {
    if !cf.is_object() {
        return CfFacts::default();
    }
    let geo = Geo {
        country: string(cf, "country"),
        region: string(cf, "region"),
        region_code: string(cf, "regionCode"),
        city: string(cf, "city"),
        postal_code: string(cf, "postalCode"),
        latitude: in_range(number(cf, "latitude"), 90.0),
        longitude: in_range(number(cf, "longitude"), 180.0),
        timezone: string(cf, "timezone"),
        continent: string(cf, "continent"),
        asn: number(cf, "asn")
            .filter(|n| n.fract() == 0.0 && *n >= 0.0 && *n <= u32::MAX as f64)
            .map(|n| n as u32),
        colo: string(cf, "colo"),
    };
    let bm = cf.get("botManagement").filter(|b| b.is_object());
    let bot_score = bm
        .and_then(|b| number(b, "score"))
        .filter(|s| s.fract() == 0.0 && (1.0..=99.0).contains(s))
        .map(|s| s as u8);
    let verified_bot = bm
        .and_then(|b| b.get("verifiedBot"))
        .and_then(Value::as_bool)
        .unwrap_or(false)
        || string(cf, "verifiedBotCategory").is_some();
    CfFacts {
        geo,
        bot_score,
        verified_bot,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_full_cf_object_is_read() {
        let cf = json!({
            "country": "DE", "region": "Berlin", "regionCode": "BE", "city": "Berlin",
            "postalCode": "10115", "latitude": "52.52000", "longitude": "13.40500",
            "timezone": "Europe/Berlin", "continent": "EU", "asn": 3320, "colo": "FRA",
            "botManagement": { "score": 12, "verifiedBot": false },
            "httpProtocol": "HTTP/2", "tlsVersion": "TLSv1.3"
        });
        let f = read_cf(&cf);
        assert_eq!(
            f.geo,
            Geo {
                country: Some("DE".into()),
                region: Some("Berlin".into()),
                region_code: Some("BE".into()),
                city: Some("Berlin".into()),
                postal_code: Some("10115".into()),
                latitude: Some(52.52),
                longitude: Some(13.405),
                timezone: Some("Europe/Berlin".into()),
                continent: Some("EU".into()),
                asn: Some(3320),
                colo: Some("FRA".into()),
            }
        );
        assert_eq!(f.bot_score, Some(12));
        assert!(!f.verified_bot);
    }

    #[test]
    fn missing_and_odd_fields_are_left_out() {
        assert_eq!(read_cf(&Value::Null), CfFacts::default());
        assert_eq!(read_cf(&json!("cf")), CfFacts::default());
        assert_eq!(read_cf(&json!({})), CfFacts::default());
        // Only some fields, some of the wrong type or out of range.
        let f = read_cf(&json!({
            "country": "FR", "city": null, "region": 12, "latitude": "north",
            "longitude": 200.0, "asn": "64496", "colo": "", "postalCode": "x".repeat(500),
            "botManagement": { "score": "abc" }, "timezone": ["Europe/Paris"]
        }));
        assert_eq!(
            f.geo,
            Geo {
                country: Some("FR".into()),
                asn: Some(64496),
                ..Geo::default()
            }
        );
        assert_eq!(f.bot_score, None);
        assert!(!f.verified_bot);
        // A colo alone (what a cf object without geo looks like).
        assert_eq!(
            read_cf(&json!({"colo": "DFW"})).geo.colo.as_deref(),
            Some("DFW")
        );
        // Negative or fractional ASNs and out-of-range scores are not kept.
        let f = read_cf(&json!({"asn": -1, "botManagement": {"score": 0}}));
        assert_eq!((f.geo.asn, f.bot_score), (None, None));
        assert_eq!(read_cf(&json!({"asn": 1.5})).geo.asn, None);
    }

    #[test]
    fn verified_bots_are_recognised() {
        assert!(read_cf(&json!({"botManagement": {"score": 1, "verifiedBot": true}})).verified_bot);
        assert!(read_cf(&json!({"verifiedBotCategory": "Search Engine Crawler"})).verified_bot);
        assert!(!read_cf(&json!({"verifiedBotCategory": ""})).verified_bot);
    }
}
