//! Sizes and durations in human units (`"64MiB"`, `"5s"`).

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Deserializer};

/// A size in bytes, written as `"64MiB"`, `"1GB"`, `"512"` or a bare integer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ByteSize(pub u64);

/// A duration written as `"5s"`, `"250ms"`, `"5m"`, `"1h"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HumanDuration(pub Duration);

impl ByteSize {
    pub fn parse(s: &str) -> Result<Self, String> {
        let s = s.trim();
        let split = s
            .find(|c: char| !c.is_ascii_digit() && c != '.')
            .unwrap_or(s.len());
        let (num, unit) = (s[..split].trim(), s[split..].trim());
        let n: f64 = num
            .parse()
            .map_err(|_| format!("{s:?} is not a size (expected e.g. \"64MiB\")"))?;
        let mult: u64 = match unit.to_ascii_lowercase().as_str() {
            "" | "b" => 1,
            "kb" | "k" => 1_000,
            "mb" | "m" => 1_000_000,
            "gb" | "g" => 1_000_000_000,
            "kib" => 1 << 10,
            "mib" => 1 << 20,
            "gib" => 1 << 30,
            "tib" => 1 << 40,
            _ => {
                return Err(format!(
                    "{s:?}: unknown size unit {unit:?} (use B, KB, MB, GB, KiB, MiB, GiB)"
                ))
            }
        };
        if !n.is_finite() || n < 0.0 {
            return Err(format!("{s:?} is not a size"));
        }
        Ok(ByteSize((n * mult as f64) as u64))
    }
}

impl HumanDuration {
    pub fn parse(s: &str) -> Result<Self, String> {
        let s = s.trim();
        let split = s
            .find(|c: char| !c.is_ascii_digit() && c != '.')
            .unwrap_or(s.len());
        let (num, unit) = (s[..split].trim(), s[split..].trim());
        let n: f64 = num
            .parse()
            .map_err(|_| format!("{s:?} is not a duration (expected e.g. \"5s\")"))?;
        let secs = match unit {
            "ms" => n / 1000.0,
            "s" => n,
            "m" | "min" => n * 60.0,
            "h" => n * 3600.0,
            "" => return Err(format!("{s:?}: a duration needs a unit (ms, s, m, h)")),
            _ => {
                return Err(format!(
                    "{s:?}: unknown duration unit {unit:?} (use ms, s, m, h)"
                ))
            }
        };
        if !secs.is_finite() || secs < 0.0 {
            return Err(format!("{s:?} is not a duration"));
        }
        Ok(HumanDuration(Duration::from_secs_f64(secs)))
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
        let s = String::deserialize(d)?;
        HumanDuration::parse(&s).map_err(serde::de::Error::custom)
    }
}

impl fmt::Display for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} bytes", self.0)
    }
}
