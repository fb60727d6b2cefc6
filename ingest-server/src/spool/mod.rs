//! The spool: the durable buffer between "200 OK" and "ClickHouse has it".
//!
//! The log itself (segments, record formats, checksums, group commit and fsync, the cap,
//! the checkpoint, recovery past damage, `damaged/`) is the `waymark-spool` crate, which knows
//! nothing of events; its top doc is the design note. It is re-exported here, so
//! `crate::spool::{Spool, SpoolError, record, resync, ...}` name the crate's items. What a
//! record's payload holds, the enriched rows of one request, is this server's business: see
//! [`rows`].

pub mod rows;

pub use waymark_spool::{
    damaged, record, resync, DamageCounts, Record, Recovery, Spool, SpoolError, SpoolReader,
    DAMAGED_DIR,
};
