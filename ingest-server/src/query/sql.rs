//! Building SQL safely. Values only ever enter a statement through [`lit`] (a string literal in
//! which every byte outside printable ASCII, and every quote and backslash, is written as a
//! `\xHH` escape, so no input can end the literal), [`num`] (a finite float in exponent form) or
//! [`int`]; identifiers only ever come from `match`es over fixed names in the code.

use std::fmt::Write as _;

/// A ClickHouse string literal holding exactly the bytes of `s`.
pub fn lit(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('\'');
    for &b in s.as_bytes() {
        if (0x20..0x7f).contains(&b) && b != b'\'' && b != b'\\' {
            out.push(b as char);
        } else {
            let _ = write!(out, "\\x{b:02X}");
        }
    }
    out.push('\'');
    out
}

/// `('a', 'b', ...)`: a tuple of literals for `IN`. Never empty: an empty list gives `('')`
/// only if the caller allows it, so callers check for emptiness first.
pub fn lit_list<'a>(items: impl IntoIterator<Item = &'a str>) -> String {
    let parts: Vec<String> = items.into_iter().map(lit).collect();
    format!("({})", parts.join(", "))
}

/// A finite number as a Float64 literal (`1.5e0`); `None` for NaN or infinity.
pub fn num(v: f64) -> Option<String> {
    v.is_finite().then(|| format!("{v:e}"))
}

/// An integer literal.
pub fn int(v: i64) -> String {
    v.to_string()
}

/// A duration written as `"30m"`, `"24h"`, `"7d"`, `"2w"`, `"90s"`, in milliseconds.
pub fn parse_within(s: &str) -> Result<i64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (n, unit) = t.split_at(split);
    let n: i64 = n
        .parse()
        .map_err(|_| format!("{s:?} is not a duration (expected e.g. \"24h\", \"7d\")"))?;
    let unit_ms: i64 = match unit {
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        "w" => 7 * 86_400_000,
        _ => return Err(format!("{s:?}: unknown unit (use s, m, h, d or w)")),
    };
    let ms = n.saturating_mul(unit_ms);
    if n <= 0 || ms > 10 * 366 * 86_400_000 {
        return Err(format!("{s:?}: must be positive and at most 10 years"));
    }
    Ok(ms)
}

/// Hex of the bytes of `s` (cursors are opaque hex strings).
pub fn hex(s: &str) -> String {
    s.bytes()
        .fold(String::with_capacity(s.len() * 2), |mut o, b| {
            let _ = write!(o, "{b:02x}");
            o
        })
}

/// The inverse of [`hex()`].
pub fn unhex(s: &str) -> Option<String> {
    if !s.len().is_multiple_of(2) || s.len() > 4096 {
        return None;
    }
    let bytes: Option<Vec<u8>> = (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect();
    String::from_utf8(bytes?).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn literals_cannot_be_escaped_from() {
        assert_eq!(lit("abc"), "'abc'");
        assert_eq!(lit("a'b"), "'a\\x27b'");
        assert_eq!(lit("a\\"), "'a\\x5C'");
        assert_eq!(lit("\0\n"), "'\\x00\\x0A'");
        assert_eq!(lit("é"), "'\\xC3\\xA9'");
        let hostile = "'; DROP TABLE events; --\\' \u{0}";
        let l = lit(hostile);
        assert_eq!(l.matches('\'').count(), 2, "only the enclosing quotes: {l}");
        assert!(!l.contains('\\') || l.matches("\\x").count() == l.matches('\\').count());
    }

    #[test]
    fn numbers_and_durations() {
        assert_eq!(num(1.5).unwrap(), "1.5e0");
        assert_eq!(num(-2e300).unwrap(), "-2e300");
        assert!(num(f64::NAN).is_none());
        assert_eq!(parse_within("24h").unwrap(), 86_400_000);
        assert_eq!(parse_within("7d").unwrap(), 7 * 86_400_000);
        assert!(parse_within("7").is_err());
        assert!(parse_within("0d").is_err());
        assert!(parse_within("-1d").is_err());
        assert!(parse_within("99999999w").is_err());
    }

    #[test]
    fn hex_round_trips() {
        assert_eq!(unhex(&hex("a'é")).unwrap(), "a'é");
        assert!(unhex("zz").is_none());
        assert!(unhex("abc").is_none());
    }
}
