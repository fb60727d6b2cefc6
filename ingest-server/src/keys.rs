//! Secret look-ups (write keys, read keys) that take the same time whatever key is presented:
//! every known key is compared, as a SHA-256 digest (so lengths do not show either), with
//! `subtle`'s constant-time equality, and the loop never stops early. A site has a handful of
//! keys, so comparing them all costs less than hashing one.

use sha2::{Digest as _, Sha256};
use subtle::ConstantTimeEq as _;

/// Known keys, each with what it grants.
#[derive(Debug, Clone)]
pub struct Keys<T> {
    entries: Vec<([u8; 32], T)>,
}

fn digest(key: &str) -> [u8; 32] {
    Sha256::digest(key.as_bytes()).into()
}

impl<T> Keys<T> {
    pub fn new(keys: impl IntoIterator<Item = (String, T)>) -> Self {
        Keys {
            entries: keys.into_iter().map(|(k, v)| (digest(&k), v)).collect(),
        }
    }

    /// What `presented` grants, if it is a known key.
    pub fn find(&self, presented: &str) -> Option<&T> {
        let d = digest(presented);
        let mut found = None;
        for (k, v) in &self.entries {
            if bool::from(k.ct_eq(&d)) {
                found = Some(v);
            }
        }
        found
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_keys_are_found_and_others_are_not() {
        let keys = Keys::new([("wk_a".to_string(), 1), ("wk_b".to_string(), 2)]);
        assert_eq!(keys.find("wk_a"), Some(&1));
        assert_eq!(keys.find("wk_b"), Some(&2));
        assert_eq!(keys.find("wk_"), None);
        assert_eq!(keys.find("wk_a "), None);
        assert_eq!(keys.find(""), None);
    }
}
