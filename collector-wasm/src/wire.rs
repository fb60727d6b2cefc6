//! The protocol crate's names and limits the tag needs. The tag uses the protocol crate without
//! its `std` feature, where it is `no_std` and holds only constants, so nothing of serde or std
//! reaches the wasm.

pub use waymark_protocol::auto::MAX_ENGAGED_MS;
pub use waymark_protocol::limits::{
    MAX_EVENTS_PER_BATCH, MAX_EVENT_BYTES, MAX_ID_LEN, MAX_NAME_LEN,
};
pub use waymark_protocol::names::{ENGAGEMENT, PRODUCT_VIEWED};
