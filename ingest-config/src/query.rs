//! `[query]`: the read API's settings (read keys, cart, engagement, RFM, cache, identity index).

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{ByteSize, HumanDuration};

/// `[query]` settings.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct QueryConfig {
    /// `[[query.read_keys]] key = "...", sites = ["shop"]`.
    pub read_keys: Vec<ReadKey>,
    /// A cart is abandoned when its last add is older than this with no order after it.
    pub cart_abandon_after: HumanDuration,
    pub engagement: EngagementConfig,
    /// How long a profile or event page is served from the in-process cache (0 = no cache).
    pub cache_ttl: HumanDuration,
    /// Entries the cache holds at most.
    pub cache_entries: usize,
    /// Bytes (of answers' JSON) the cache holds at most.
    pub cache_max_bytes: ByteSize,
    /// How many recently viewed products a profile lists.
    pub recent_products: usize,
    /// How often the in-memory identity index reads new links from ClickHouse (0 = no index:
    /// every id is resolved in ClickHouse). See `query::identity`.
    pub identity_refresh: HumanDuration,
    /// Links the identity index holds at most; beyond, it turns itself off.
    pub identity_max_links: usize,
    pub rfm: RfmConfig,
}

impl Default for QueryConfig {
    fn default() -> Self {
        QueryConfig {
            read_keys: Vec::new(),
            cart_abandon_after: HumanDuration(Duration::from_secs(3600)),
            engagement: EngagementConfig::default(),
            cache_ttl: HumanDuration(Duration::from_secs(5)),
            cache_entries: 10_000,
            cache_max_bytes: ByteSize(64 << 20),
            recent_products: 10,
            identity_refresh: HumanDuration(Duration::from_secs(1)),
            identity_max_links: 1_000_000,
            rfm: RfmConfig::default(),
        }
    }
}

/// One read key and the sites it may read.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReadKey {
    pub key: String,
    pub sites: Vec<String>,
    /// Whether the key may also manage audience subscriptions (`/v1/subscriptions`, see
    /// `crate::triggers`) on its sites. Off by default: a key handed to a reporting tool
    /// should not register webhooks.
    #[serde(default)]
    pub subscribe: bool,
}

/// Engaged time over 30 days below `medium` is "short", below `long` "medium", else "long".
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EngagementConfig {
    pub medium: HumanDuration,
    pub long: HumanDuration,
}

impl Default for EngagementConfig {
    fn default() -> Self {
        EngagementConfig {
            medium: HumanDuration(Duration::from_secs(60)),
            long: HumanDuration(Duration::from_secs(600)),
        }
    }
}

/// RFM: scores come from the site's own quintiles, recomputed every `refresh`, over the orders
/// of the last `lookback`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RfmConfig {
    pub refresh: HumanDuration,
    pub lookback: HumanDuration,
}

impl Default for RfmConfig {
    fn default() -> Self {
        RfmConfig {
            refresh: HumanDuration(Duration::from_secs(300)),
            lookback: HumanDuration(Duration::from_secs(365 * 86_400)),
        }
    }
}

impl QueryConfig {
    /// Checks values that parse but make no sense; errors name the key.
    pub fn validate(&self) -> Result<(), String> {
        for (i, k) in self.read_keys.iter().enumerate() {
            if k.key.is_empty() {
                return Err(format!("query.read_keys[{i}].key: must not be empty"));
            }
            if k.sites.is_empty() {
                return Err(format!(
                    "query.read_keys[{i}].sites: must list at least one site"
                ));
            }
            if self.read_keys[..i].iter().any(|o| o.key == k.key) {
                return Err(format!(
                    "query.read_keys[{i}].key: the same key is listed twice"
                ));
            }
        }
        if self.engagement.medium.0 > self.engagement.long.0 {
            return Err(
                "query.engagement.medium: must not be longer than query.engagement.long".into(),
            );
        }
        if self.rfm.refresh.0.is_zero() {
            return Err("query.rfm.refresh: must be positive".into());
        }
        if !self.identity_refresh.0.is_zero() && self.identity_max_links == 0 {
            return Err(
                "query.identity_max_links: must be positive (to resolve every id in \
                 ClickHouse instead, set query.identity_refresh = \"0s\")"
                    .into(),
            );
        }
        Ok(())
    }
}
