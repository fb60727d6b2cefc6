//! Sizes and durations in human units (`"64MiB"`, `"5s"`, `"30d"`): parsed by `bytesize` and
//! `humantime` (through `humantime-serde` in the file), kept in newtypes so every setting says
//! which it is.

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A size in bytes, written as `"64MiB"`, `"1GB"`, `"512"` or a bare integer (decimal units are
/// powers of 1000, binary ones of 1024).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ByteSize(pub u64);

/// A duration written as `"5s"`, `"250ms"`, `"5m"`, `"1h"`, `"30d"` (any unit `humantime` reads,
/// combinations like `"1h 30m"` too).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HumanDuration(pub Duration);

impl ByteSize {
    pub fn parse(s: &str) -> Result<Self, String> {
        s.trim()
            .parse::<bytesize::ByteSize>()
            .map(|b| ByteSize(b.as_u64()))
            .map_err(|e| format!("{s:?} is not a size (expected e.g. \"64MiB\"): {e}"))
    }
}

impl HumanDuration {
    pub fn parse(s: &str) -> Result<Self, String> {
        humantime::parse_duration(s.trim())
            .map(HumanDuration)
            .map_err(|e| format!("{s:?} is not a duration (expected e.g. \"5s\", \"30d\"): {e}"))
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            N(u64),
            S(String),
        }
        match Raw::deserialize(d)? {
            Raw::N(n) => Ok(ByteSize(n)),
            Raw::S(s) => ByteSize::parse(&s).map_err(serde::de::Error::custom),
        }
    }
}

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        humantime_serde::deserialize(d).map(HumanDuration)
    }
}

/// Written as a whole number of bytes, which reads back exactly.
impl Serialize for ByteSize {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(self.0)
    }
}

/// Written in `humantime`'s words (`"1m 40s"`), which read back exactly.
impl Serialize for HumanDuration {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        humantime_serde::serialize(&self.0, s)
    }
}

impl fmt::Display for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} bytes", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn existing_values_keep_working_and_days_are_accepted() {
        for (s, d) in [
            ("5s", Duration::from_secs(5)),
            ("100ms", Duration::from_millis(100)),
            ("0s", Duration::ZERO),
            ("5m", Duration::from_secs(300)),
            ("8760h", Duration::from_secs(365 * 86_400)),
            ("30d", Duration::from_secs(30 * 86_400)),
        ] {
            assert_eq!(HumanDuration::parse(s).unwrap().0, d, "{s}");
        }
        for (s, n) in [
            ("64MiB", 64 << 20),
            ("1GiB", 1 << 30),
            ("32MiB", 32 << 20),
            ("8MiB", 8 << 20),
            ("256KiB", 256 << 10),
            ("1KB", 1000),
            ("10MB", 10_000_000),
        ] {
            assert_eq!(ByteSize::parse(s).unwrap().0, n, "{s}");
        }
    }

    #[test]
    fn a_bad_value_in_the_file_names_its_key_and_the_value() {
        #[derive(Debug, Deserialize)]
        #[allow(dead_code)]
        struct S {
            max_age: Option<HumanDuration>,
            max_bytes: Option<ByteSize>,
        }
        let e = toml::from_str::<S>("max_age = \"30 fortnights\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("max_age") && e.contains("fortnights"), "{e}");
        let e = toml::from_str::<S>("max_bytes = \"12 parsecs\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("max_bytes") && e.contains("parsecs"), "{e}");
    }
}
