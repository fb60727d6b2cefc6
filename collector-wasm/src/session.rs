//! The visitor's session: its stored form, and when it times out.

use alloc::string::String;

use crate::json;

/// A session ends after this long without events or activity.
pub const SESSION_TIMEOUT_MS: u64 = 30 * 60 * 1000;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    pub id: String,
    /// Last event or activity, Unix ms.
    pub last: u64,
}

impl Session {
    /// Stored form: `<id>.<last>`.
    pub fn parse(s: &str) -> Option<Session> {
        let (id, last) = crate::scan::rsplit_once(s, b'.')?;
        let last = crate::scan::parse_u64(last)?;
        (!id.is_empty()).then(|| Session {
            id: id.into(),
            last,
        })
    }

    pub fn serialize(&self) -> String {
        let mut out = self.id.clone();
        json::put(&mut out, ".");
        crate::json::uint(&mut out, self.last);
        out
    }

    /// Whether the session has timed out at `now`.
    pub fn expired(&self, now: u64) -> bool {
        now.saturating_sub(self.last) >= SESSION_TIMEOUT_MS
    }
}

#[cfg(all(test, not(target_arch = "wasm32")))]
mod tests {
    use super::*;

    #[test]
    fn session_times_out_after_thirty_minutes() {
        let s = Session {
            id: "a.b".into(),
            last: 1000,
        };
        assert_eq!(Session::parse(&s.serialize()), Some(s.clone()));
        assert!(!s.expired(1000 + SESSION_TIMEOUT_MS - 1));
        assert!(s.expired(1000 + SESSION_TIMEOUT_MS));
        assert_eq!(Session::parse("nodot"), None);
        assert_eq!(Session::parse(".5"), None);
        assert_eq!(Session::parse("x.notanumber"), None);
    }
}
