//! The Waymark tag (being built: see the tag issue).
