//! The Waymark edge worker (being built: see the edge worker issue).
