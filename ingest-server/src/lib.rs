//! The Waymark ingest server (being built: see the ingest server issue).
