//! The tag's files, bundled into the worker at build time by `build.rs` (see there).

/// One bundled file.
#[derive(Debug)]
pub struct Asset {
    /// Path relative to the tag's `dist/` directory, e.g. `waymark.js`.
    pub name: &'static str,
    pub content_type: &'static str,
    /// A strong ETag (quoted), from the file's SHA-256.
    pub etag: &'static str,
    pub bytes: &'static [u8],
}

include!(concat!(env!("OUT_DIR"), "/assets.rs"));

pub fn find(name: &str) -> Option<&'static Asset> {
    FILES.iter().find(|a| a.name == name)
}
