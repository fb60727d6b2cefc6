//! Event names with a meaning to Waymark.
//!
//! Names starting with [`RESERVED_PREFIX`] belong to Waymark: the intake accepts only the ones
//! listed here, with the properties typed in [`crate::auto`]. The ecommerce names follow
//! Segment's ecommerce spec, so existing instrumentation feeds the query API unchanged.

/// Prefix of Waymark's own automatic events.
pub const RESERVED_PREFIX: &str = "$";

/// A click on a link, a button or an element marked `data-waymark-event`. Properties:
/// [`crate::auto::ClickProps`].
pub const CLICK: &str = "$click";

/// Engaged time and scroll depth of one page view, sent when the visitor leaves, hides the page
/// or changes route. Properties: [`crate::auto::EngagementProps`].
pub const ENGAGEMENT: &str = "$engagement";

/// Every reserved name the intake accepts.
pub const RESERVED: &[&str] = &[CLICK, ENGAGEMENT];

/// Segment ecommerce spec names the query API reads.
pub const PRODUCT_VIEWED: &str = "Product Viewed";
pub const PRODUCT_ADDED: &str = "Product Added";
pub const PRODUCT_REMOVED: &str = "Product Removed";
pub const CHECKOUT_STARTED: &str = "Checkout Started";
pub const ORDER_COMPLETED: &str = "Order Completed";
