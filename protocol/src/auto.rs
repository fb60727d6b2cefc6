//! Properties of Waymark's automatic events ([`crate::names`]). The intake checks them; these
//! types document them and let Rust code build or read them.

#[cfg(feature = "std")]
use serde::{Deserialize, Serialize};

/// `properties` of a [`crate::names::CLICK`] event. No form field values are ever collected.
#[cfg(feature = "std")]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClickProps {
    /// `"link"`, `"button"` or `"element"` (an element marked `data-waymark-event`).
    pub kind: String,
    /// The element's visible text, whitespace-collapsed and trimmed to 100 characters.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    /// The link target, for links.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub href: Option<String>,
    /// The element's `id` attribute.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// Whether the link leads to another host.
    #[serde(default)]
    pub outbound: bool,
    /// The value of `data-waymark-event`, for marked elements.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

/// The kinds a [`ClickProps::kind`] may take.
pub const CLICK_KINDS: &[&str] = &["link", "button", "element"];

/// `properties` of a [`crate::names::ENGAGEMENT`] event.
#[cfg(feature = "std")]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EngagementProps {
    /// Milliseconds the page was visible and focused with the visitor active in the last 30 s.
    pub engaged_ms: u64,
    /// Deepest point scrolled, as a percentage of the page height (0 to 100).
    pub scroll_depth: u8,
    /// The product the page was about, so engaged time can be attributed to it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub product_id: Option<String>,
}

/// The largest [`EngagementProps::engaged_ms`] accepted: one day.
pub const MAX_ENGAGED_MS: u64 = 24 * 60 * 60 * 1000;
