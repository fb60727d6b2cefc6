//! A JSON writer small enough for the tag: strings, unsigned integers and booleans, written by
//! hand so no `core::fmt` (and no float formatting) ends up in the wasm.

use alloc::string::String;

/// Appends `s`. Not inlined on purpose: `String::push_str` inlines its growth path at every
/// call site, which adds up to kilobytes of wasm.
#[inline(never)]
pub fn put(out: &mut String, s: &str) {
    out.push_str(s);
}

/// Appends the lowercase hex digit for `n` (0 to 15; anything else is skipped). Through a
/// table rather than `String::push(char)`, whose UTF-8 encoder is a few hundred bytes of wasm.
#[inline(never)]
pub fn put_digit(out: &mut String, n: u8) {
    let i = usize::from(n);
    put(out, "0123456789abcdef".get(i..i + 1).unwrap_or_default());
}

/// Appends `s` as a quoted JSON string. Control characters go out as `\u00XX` (also `\n`:
/// one rule is less code than a table of short escapes).
pub fn string(out: &mut String, s: &str) {
    put(out, "\"");
    let mut start = 0;
    for (i, b) in s.bytes().enumerate() {
        if b >= 0x20 && b != b'"' && b != b'\\' {
            continue;
        }
        put(out, s.get(start..i).unwrap_or_default());
        if b < 0x20 {
            put(out, "\\u00");
            put_digit(out, b >> 4);
            put_digit(out, b & 15);
            start = i + 1;
        } else {
            // A backslash before the quote or backslash, which goes out with the next run.
            put(out, "\\");
            start = i;
        }
    }
    put(out, s.get(start..).unwrap_or_default());
    put(out, "\"");
}

/// Appends an unsigned integer in decimal.
pub fn uint(out: &mut String, mut n: u64) {
    let mut buf = [0u8; 20];
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = (n % 10) as u8;
        n /= 10;
        if n == 0 || i == 0 {
            break;
        }
    }
    for &d in buf.get(i..).unwrap_or_default() {
        put_digit(out, d);
    }
}

/// `s` if it is a JSON object, or `{}`: for objects the loader wrote with `JSON.stringify`
/// (properties, traits, the page context), whose output only needs telling from nothing or a
/// non-object. (Byte checks: `char` patterns pull a UTF-8 encoder into the wasm.)
pub fn object(s: &str) -> &str {
    if s.as_bytes().first() == Some(&b'{') && s.as_bytes().last() == Some(&b'}') {
        s
    } else {
        "{}"
    }
}

/// Appends `,"key":` (or `"key":` for the first member, when `first` is set; then clears it).
pub fn key(out: &mut String, first: &mut bool, k: &str) {
    if !*first {
        put(out, ",");
    }
    *first = false;
    put(out, "\"");
    put(out, k);
    put(out, "\":");
}

/// Appends a string member, or nothing when `v` is empty.
pub fn opt_str(out: &mut String, first: &mut bool, k: &str, v: &str) {
    if !v.is_empty() {
        key(out, first, k);
        string(out, v);
    }
}

#[cfg(all(test, not(target_arch = "wasm32")))]
mod tests {
    use super::*;

    fn s(v: &str) -> String {
        let mut o = String::new();
        string(&mut o, v);
        o
    }

    #[test]
    fn strings_are_escaped_like_json() {
        for v in [
            "",
            "plain",
            "q\"uote",
            "back\\slash",
            "nl\nx\r\t",
            "\u{1}\u{1f}",
            "é ☃ 😀",
        ] {
            let back: std::string::String = serde_json::from_str(&s(v)).unwrap();
            assert_eq!(back, v);
        }
        assert_eq!(s("a\u{1}"), "\"a\\u0001\"");
    }

    #[test]
    fn integers_are_decimal() {
        for n in [0u64, 7, 10, 99, 1234567890, u64::MAX] {
            let mut o = String::new();
            uint(&mut o, n);
            assert_eq!(o, n.to_string());
        }
    }

    #[test]
    fn objects_are_told_from_anything_else() {
        assert_eq!(object(r#"{"a":1}"#), r#"{"a":1}"#);
        for v in ["", "null", "[1]", "\"s\"", "{", "}"] {
            assert_eq!(object(v), "{}", "{v}");
        }
    }

    #[test]
    fn members_are_comma_separated() {
        let mut o = String::from("{");
        let mut first = true;
        opt_str(&mut o, &mut first, "a", "x");
        opt_str(&mut o, &mut first, "skip", "");
        key(&mut o, &mut first, "b");
        uint(&mut o, 2);
        o.push('}');
        assert_eq!(o, r#"{"a":"x","b":2}"#);
    }
}
