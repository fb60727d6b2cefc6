//! What the edge worker adds to a batch, and how it signs what it forwards.
//!
//! The edge validates a tag's batch, wraps the good events in an [`EdgeEnvelope`] with the geo
//! and client facts it alone can see, and forwards one or more envelopes as an [`EdgeForward`]
//! to the ingest server's `/v1/edge`, signed:
//!
//! ```text
//! x-waymark-timestamp: <unix seconds>
//! x-waymark-signature: v1=<hex HMAC-SHA256(secret, "<timestamp>.<body>")>
//! ```
//!
//! The ingest server refuses a bad signature, and a timestamp outside its replay window, so a
//! captured request cannot be replayed later.

use serde::{Deserialize, Serialize};

use crate::event::Event;

/// Header carrying the signing time, Unix seconds.
pub const HEADER_TIMESTAMP: &str = "x-waymark-timestamp";
/// Header carrying `v1=<hex signature>`.
pub const HEADER_SIGNATURE: &str = "x-waymark-signature";

/// Where the request came from, as Cloudflare saw it. Every field may be missing.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Geo {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub country: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region_code: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub city: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub postal_code: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latitude: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub longitude: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timezone: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub continent: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub asn: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub colo: Option<String>,
}

/// Facts about the sending client.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Client {
    /// Already truncated (IPv4 /24, IPv6 /48) or absent; never the whole address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_agent: Option<String>,
    /// The request carried `Sec-GPC: 1`.
    #[serde(default)]
    pub gpc: bool,
    /// Cloudflare's bot score (1 = surely a bot, 99 = surely human), when the zone has it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bot_score: Option<u8>,
    /// The edge's verdict: flagged as a bot (kept, not dropped).
    #[serde(default)]
    pub bot: bool,
}

/// One tag request's good events with what the edge knows about it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EdgeEnvelope {
    /// The site's write key from the batch.
    pub write_key: String,
    /// When the edge received the request, RFC 3339 (the `receivedAt` of clock-skew correction).
    pub received_at: String,
    /// The batch-level `sentAt`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sent_at: Option<String>,
    #[serde(default)]
    pub geo: Geo,
    #[serde(default)]
    pub client: Client,
    pub events: Vec<Event>,
    /// What the edge learnt from email tokens and markers (absent for a plain batch).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email: Option<EdgeEmail>,
}

/// The email side of an envelope (see `crate::email`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EdgeEmail {
    /// The envelope's events are `$email_open` / `$email_click` events the edge made itself
    /// from verified tokens: names no tag may send, admitted only from a signed forward.
    #[serde(default)]
    pub hits: bool,
    /// A pixel or click token the edge refused, by reason (`bad_signature`, `expired`, ...),
    /// for the ingest server's count; the envelope then has no events.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refused: Option<String>,
    /// A verified stitch marker came with this batch: link its browser to the recipient.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub link: Option<EmailLink>,
}

/// An identity link from an email click's marker (`identities.source_type = "email_click"`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EmailLink {
    /// The recipient (user id, else email address).
    pub user_id: String,
    /// The batch's anonymous id.
    pub anonymous_id: String,
    #[serde(default)]
    pub campaign: String,
    #[serde(default)]
    pub send_id: String,
    /// When the marker was issued (the click), Unix seconds.
    pub clicked_at: u64,
}

/// The body of a signed `POST /v1/edge`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EdgeForward {
    pub envelopes: Vec<EdgeEnvelope>,
}

/// What to do with a client's IP address (the edge's `IP_MODE`, the ingest server's per-site
/// `ip`). The default keeps the network.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum IpMode {
    /// Keep nothing.
    Drop,
    /// Keep the network: IPv4 /24, IPv6 /48.
    #[default]
    Truncate,
}

/// Applies `mode` to an address; `None` for [`IpMode::Drop`] or a string that is not an address.
pub fn truncate_ip(ip: &str, mode: IpMode) -> Option<String> {
    if mode == IpMode::Drop {
        return None;
    }
    match ip.trim().parse::<std::net::IpAddr>().ok()? {
        std::net::IpAddr::V4(v4) => {
            let [a, b, c, _] = v4.octets();
            Some(std::net::Ipv4Addr::new(a, b, c, 0).to_string())
        }
        std::net::IpAddr::V6(v6) => {
            let s = v6.segments();
            Some(std::net::Ipv6Addr::new(s[0], s[1], s[2], 0, 0, 0, 0, 0).to_string())
        }
    }
}

#[cfg(feature = "validate")]
pub use signing::{sign, verify, SignatureError};

#[cfg(feature = "validate")]
mod signing {
    use hmac::{Hmac, Mac};
    use sha2::Sha256;

    type HmacSha256 = Hmac<Sha256>;

    /// Why a signed request was refused.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub enum SignatureError {
        /// The timestamp header is absent or not a number.
        BadTimestamp,
        /// The timestamp is further from now than the replay window allows.
        OutsideWindow { skew_secs: i64, window_secs: i64 },
        /// The signature header is absent or malformed.
        Malformed,
        /// The signature does not match (wrong secret, or the body was changed).
        Mismatch,
    }

    impl std::fmt::Display for SignatureError {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            match self {
                SignatureError::BadTimestamp => {
                    f.write_str("x-waymark-timestamp: missing or not Unix seconds")
                }
                SignatureError::OutsideWindow {
                    skew_secs,
                    window_secs,
                } => write!(
                    f,
                    "x-waymark-timestamp: {skew_secs} s from now, outside the replay window of {window_secs} s"
                ),
                SignatureError::Malformed => {
                    f.write_str("x-waymark-signature: missing or not \"v1=<hex>\"")
                }
                SignatureError::Mismatch => {
                    f.write_str("x-waymark-signature: does not match the body and timestamp")
                }
            }
        }
    }

    impl std::error::Error for SignatureError {}

    fn mac(secret: &[u8], timestamp: &str, body: &[u8]) -> HmacSha256 {
        let mut m = HmacSha256::new_from_slice(secret).expect("HMAC takes keys of any length");
        m.update(timestamp.as_bytes());
        m.update(b".");
        m.update(body);
        m
    }

    /// The `x-waymark-signature` value for `body` signed at `timestamp_secs`.
    pub fn sign(secret: &[u8], timestamp_secs: i64, body: &[u8]) -> String {
        let tag = mac(secret, &timestamp_secs.to_string(), body)
            .finalize()
            .into_bytes();
        format!("v1={}", hex::encode(tag))
    }

    /// Checks a request's headers against its body. Compares in constant time.
    pub fn verify(
        secret: &[u8],
        timestamp: &str,
        signature: &str,
        body: &[u8],
        now_secs: i64,
        window_secs: i64,
    ) -> Result<(), SignatureError> {
        let ts: i64 = timestamp
            .trim()
            .parse()
            .map_err(|_| SignatureError::BadTimestamp)?;
        let skew = now_secs.saturating_sub(ts);
        if skew.abs() > window_secs {
            return Err(SignatureError::OutsideWindow {
                skew_secs: skew,
                window_secs,
            });
        }
        let hex_sig = signature
            .trim()
            .strip_prefix("v1=")
            .ok_or(SignatureError::Malformed)?;
        let raw = hex::decode(hex_sig).map_err(|_| SignatureError::Malformed)?;
        mac(secret, timestamp.trim(), body)
            .verify_slice(&raw)
            .map_err(|_| SignatureError::Mismatch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ips_are_truncated_or_dropped() {
        assert_eq!(
            truncate_ip("203.0.113.77", IpMode::Truncate).as_deref(),
            Some("203.0.113.0")
        );
        assert_eq!(
            truncate_ip("2001:db8:85a3:8d3:1319:8a2e:370:7348", IpMode::Truncate).as_deref(),
            Some("2001:db8:85a3::")
        );
        assert_eq!(truncate_ip("203.0.113.77", IpMode::Drop), None);
        assert_eq!(truncate_ip("not an ip", IpMode::Truncate), None);
    }

    #[cfg(feature = "validate")]
    #[test]
    fn signatures_verify_and_refuse() {
        let body = br#"{"envelopes":[]}"#;
        let now = 1_800_000_000;
        let sig = sign(b"s3cret", now, body);
        assert!(sig.starts_with("v1=") && sig.len() == 3 + 64);
        assert_eq!(
            verify(b"s3cret", &now.to_string(), &sig, body, now + 10, 300),
            Ok(())
        );
        assert_eq!(
            verify(b"wrong", &now.to_string(), &sig, body, now, 300),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(
            verify(b"s3cret", &now.to_string(), &sig, b"{}", now, 300),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(
            verify(b"s3cret", &(now + 1).to_string(), &sig, body, now, 300),
            Err(SignatureError::Mismatch),
            "the timestamp is signed too"
        );
        assert!(matches!(
            verify(b"s3cret", &now.to_string(), &sig, body, now + 301, 300),
            Err(SignatureError::OutsideWindow { skew_secs: 301, .. })
        ));
        assert_eq!(
            verify(b"s3cret", "soon", &sig, body, now, 300),
            Err(SignatureError::BadTimestamp)
        );
        assert_eq!(
            verify(b"s3cret", &now.to_string(), "deadbeef", body, now, 300),
            Err(SignatureError::Malformed)
        );
    }
}
