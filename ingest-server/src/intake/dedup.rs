//! A bounded in-memory window of recently accepted message ids, per site. A duplicate inside the
//! window is acknowledged (the client did nothing wrong) but not spooled again. Older duplicates,
//! and duplicates across restarts, collapse in ClickHouse instead (see `store::schema`).
//!
//! An id is kept as one 64-bit hash of (site, message id), computed once per event: by
//! `foldhash`'s quality hasher with a seed drawn when the window is made (clients choose message
//! ids, so the hash must not be predictable), and the set hashes that number again only with
//! `foldhash`'s fast hasher. The earlier SipHash-twice cost 4 % of the server's CPU in
//! `cargo xtask bench ingest`.

use std::collections::{HashSet, VecDeque};
use std::hash::{BuildHasher, Hash, Hasher};
use std::sync::Mutex;

type Set = HashSet<u64, foldhash::fast::RandomState>;

pub struct Dedup {
    capacity: usize,
    seed: foldhash::quality::RandomState,
    inner: Mutex<(Set, VecDeque<u64>)>,
}

/// The window's key for each (site, message id), to pass to [`Dedup::seen`] and
/// [`Dedup::remember`].
pub struct Keys(Vec<u64>);

impl Dedup {
    pub fn new(capacity: usize) -> Self {
        Dedup {
            capacity,
            seed: foldhash::quality::RandomState::default(),
            inner: Mutex::new((Set::default(), VecDeque::new())),
        }
    }

    /// The keys of these ids (the hashing happens here, outside the lock).
    pub fn keys<'a>(&self, ids: impl Iterator<Item = (&'a str, &'a str)>) -> Keys {
        Keys(
            ids.map(|(site, message_id)| {
                let mut h = self.seed.build_hasher();
                site.hash(&mut h);
                message_id.hash(&mut h);
                h.finish()
            })
            .collect(),
        )
    }

    /// Which of these ids were seen recently (or earlier in the same list).
    pub fn seen(&self, keys: &Keys) -> Vec<bool> {
        if self.capacity == 0 {
            return vec![false; keys.0.len()];
        }
        let g = self.inner.lock().expect("dedup lock");
        let mut local = Set::default();
        keys.0
            .iter()
            .map(|k| g.0.contains(k) || !local.insert(*k))
            .collect()
    }

    /// Remembers ids that are now durably accepted: `keys` but those `duplicates` (the answer of
    /// [`Dedup::seen`]) marks.
    pub fn remember(&self, keys: &Keys, duplicates: &[bool]) {
        if self.capacity == 0 {
            return;
        }
        let mut g = self.inner.lock().expect("dedup lock");
        for (i, &k) in keys.0.iter().enumerate() {
            if duplicates[i] {
                continue;
            }
            if g.0.insert(k) {
                g.1.push_back(k);
                if g.1.len() > self.capacity {
                    if let Some(old) = g.1.pop_front() {
                        g.0.remove(&old);
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn window_is_bounded_and_per_site() {
        let d = Dedup::new(2);
        let k = |ids: &[(&str, &str)]| d.keys(ids.iter().copied());
        assert_eq!(d.seen(&k(&[("s", "a"), ("s", "a")])), [false, true]);
        d.remember(&k(&[("s", "a"), ("s", "b")]), &[false, false]);
        assert_eq!(d.seen(&k(&[("s", "a"), ("t", "a")])), [true, false]);
        d.remember(&k(&[("s", "c")]), &[false]);
        assert_eq!(
            d.seen(&k(&[("s", "a"), ("s", "c")])),
            [false, true],
            "a fell out"
        );
    }

    #[test]
    fn duplicates_are_not_remembered_again() {
        let d = Dedup::new(10);
        let keys = d.keys([("s", "a"), ("s", "b")].into_iter());
        d.remember(&keys, &[true, false]);
        assert_eq!(d.seen(&keys), [false, true]);
    }

    #[test]
    fn site_and_id_do_not_run_together() {
        let d = Dedup::new(10);
        d.remember(&d.keys([("ab", "c")].into_iter()), &[false]);
        assert_eq!(d.seen(&d.keys([("a", "bc")].into_iter())), [false]);
    }
}
