//! Byte scanning of text: splitting at an ASCII byte, and decimal numbers.
//!
//! Byte scanning only: `str::split`/`find` with `char` patterns pull the generic searchers into
//! the wasm. The loader parses the URL itself (`location.pathname`, `URLSearchParams`) and
//! writes the page and campaign objects (`JSON.stringify`), which the browser does natively and
//! for free.

/// `s` split at each byte `sep` (ASCII).
pub fn parts(s: &str, sep: u8) -> impl Iterator<Item = &str> {
    let mut rest = Some(s);
    core::iter::from_fn(move || {
        let r = rest?;
        match r.bytes().position(|b| b == sep) {
            Some(i) => {
                rest = r.get(i + 1..);
                r.get(..i)
            }
            None => {
                rest = None;
                Some(r)
            }
        }
    })
}

/// `s` split at the last byte `sep`.
pub fn rsplit_once(s: &str, sep: u8) -> Option<(&str, &str)> {
    let i = s.bytes().rposition(|b| b == sep)?;
    Some((s.get(..i)?, s.get(i + 1..)?))
}

/// A decimal `u64` (digits only).
pub fn parse_u64(s: &str) -> Option<u64> {
    // 19 digits always fit in a u64, and then no overflow check (128-bit multiply) is needed.
    if s.is_empty() || s.len() > 19 {
        return None;
    }
    s.bytes().try_fold(0u64, |n, b| {
        let d = b.wrapping_sub(b'0');
        (d < 10).then_some(n * 10 + u64::from(d))
    })
}

#[cfg(all(test, not(target_arch = "wasm32")))]
mod tests {
    use super::*;

    #[test]
    fn byte_splitting() {
        let v: std::vec::Vec<&str> = parts("a&b&&c", b'&').collect();
        assert_eq!(v, ["a", "b", "", "c"]);
        assert_eq!(parts("", b'&').collect::<std::vec::Vec<_>>(), [""]);
        assert_eq!(rsplit_once("a.b.c", b'.'), Some(("a.b", "c")));
        assert_eq!(rsplit_once("abc", b'.'), None);
        assert_eq!(parse_u64("0"), Some(0));
        assert_eq!(
            parse_u64("9999999999999999999"),
            Some(9_999_999_999_999_999_999)
        );
        assert_eq!(
            parse_u64("18446744073709551615"),
            None,
            "more than 19 digits"
        );
        assert_eq!(parse_u64(""), None);
        assert_eq!(parse_u64("1x"), None);
    }
}
