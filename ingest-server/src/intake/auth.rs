//! Who may send: write keys (constant-time lookup), each site's allowed origins, and the edge
//! worker's signature with its replay guard.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

use waymark_protocol::edge::{SignatureError, HEADER_SIGNATURE, HEADER_TIMESTAMP};

use super::error::ApiError;
use crate::config::SiteConfig;

/// Whether a site lets `origin` send from a browser.
pub fn origin_allowed(site: &SiteConfig, origin: &str) -> bool {
    site.allowed_origins.iter().any(|o| o == "*" || o == origin)
}

/// The 401 for a write key no site has.
pub fn unknown_key() -> ApiError {
    ApiError::Unauthorized {
        code: "invalid_write_key",
        field: "writeKey",
        message: "writeKey: not the write key of any site".into(),
    }
}

/// The 401 for a signature the edge check refused.
pub fn signature_error(e: SignatureError) -> ApiError {
    let (code, field) = match e {
        SignatureError::BadTimestamp => ("invalid_timestamp", HEADER_TIMESTAMP),
        SignatureError::OutsideWindow { .. } => ("outside_replay_window", HEADER_TIMESTAMP),
        SignatureError::Malformed => ("invalid_signature", HEADER_SIGNATURE),
        SignatureError::Mismatch => ("signature_mismatch", HEADER_SIGNATURE),
    };
    ApiError::Unauthorized {
        code,
        field,
        message: e.to_string(),
    }
}

/// Signature -> accepted at (unix seconds), plus the same in arrival order for eviction.
type Seen = (HashMap<String, i64>, VecDeque<(i64, String)>);

/// Signatures accepted recently, remembered for the replay window (bounded).
#[derive(Default)]
pub struct ReplayGuard {
    inner: Mutex<Seen>,
}

const REPLAY_MAX: usize = 1_000_000;

impl ReplayGuard {
    /// The form a signature is remembered in: [`verify`] accepts surrounding blanks and hex
    /// digits in either case, so `v1=AB..` and `v1=ab..` are the same signature.
    fn canonical(sig: &str) -> String {
        sig.trim().to_ascii_lowercase()
    }

    pub fn seen(&self, sig: &str) -> bool {
        self.inner
            .lock()
            .expect("replay lock")
            .0
            .contains_key(&Self::canonical(sig))
    }

    /// Claims a signature: false if it was already accepted (or is being handled right now).
    /// Checked and remembered under one lock, so two identical requests at once cannot both pass.
    pub fn claim(&self, sig: &str, now_secs: i64, window_secs: i64) -> bool {
        let sig = Self::canonical(sig);
        let mut g = self.inner.lock().expect("replay lock");
        if g.0.contains_key(&sig) {
            return false;
        }
        Self::insert(&mut g, sig, now_secs, window_secs);
        true
    }

    /// Gives a claim back when the request it covered was not accepted (so a retry may pass).
    pub fn release(&self, sig: &str) {
        self.inner
            .lock()
            .expect("replay lock")
            .0
            .remove(&Self::canonical(sig));
    }

    pub fn remember(&self, sig: &str, now_secs: i64, window_secs: i64) {
        let mut g = self.inner.lock().expect("replay lock");
        Self::insert(&mut g, Self::canonical(sig), now_secs, window_secs);
    }

    fn insert(g: &mut Seen, sig: String, now_secs: i64, window_secs: i64) {
        // Forget signatures whose timestamps can no longer pass the window check anyway.
        while let Some((t, _)) = g.1.front() {
            if *t + 2 * window_secs < now_secs || g.1.len() >= REPLAY_MAX {
                let (_, s) = g.1.pop_front().expect("front exists");
                g.0.remove(&s);
            } else {
                break;
            }
        }
        g.0.insert(sig.clone(), now_secs);
        g.1.push_back((now_secs, sig));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replay_guard_remembers_and_forgets() {
        let g = ReplayGuard::default();
        g.remember("a", 1000, 300);
        assert!(g.seen("a"));
        g.remember("b", 2000, 300);
        assert!(!g.seen("a"), "older than twice the window: forgotten");
        assert!(g.seen("b"));
    }

    #[test]
    fn a_claim_is_given_back_when_the_request_failed() {
        let g = ReplayGuard::default();
        assert!(g.claim("s", 1000, 300));
        assert!(!g.claim("s", 1001, 300), "a second claim is a replay");
        g.release("s");
        assert!(g.claim("s", 1002, 300), "a retry after a 503 passes");
    }

    #[test]
    fn a_signature_in_another_case_or_with_blanks_is_the_same_signature() {
        let g = ReplayGuard::default();
        assert!(g.claim("v1=abcdef0123", 1000, 300));
        assert!(!g.claim("v1=ABCDEF0123", 1000, 300));
        assert!(!g.claim("v1=ABCdef0123", 1000, 300));
        assert!(!g.claim(" v1=abcdef0123 ", 1000, 300));
        assert!(g.seen("V1=ABCDEF0123"));
    }

    #[test]
    fn of_identical_claims_at_once_exactly_one_passes() {
        let g = std::sync::Arc::new(ReplayGuard::default());
        for round in 0..50 {
            let sig = format!("v1={round:064x}");
            let barrier = std::sync::Arc::new(std::sync::Barrier::new(8));
            let passed: usize = (0..8)
                .map(|i| {
                    let (g, b, sig) = (g.clone(), barrier.clone(), sig.clone());
                    std::thread::spawn(move || {
                        let sig = if i % 2 == 0 { sig } else { sig.to_uppercase() };
                        b.wait();
                        usize::from(g.claim(&sig, 1000, 300))
                    })
                })
                .collect::<Vec<_>>()
                .into_iter()
                .map(|h| h.join().unwrap())
                .sum();
            assert_eq!(passed, 1, "round {round}");
        }
    }
}
