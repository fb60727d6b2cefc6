//! A bounded in-memory window of recently accepted message ids, per site. A duplicate inside the
//! window is acknowledged (the client did nothing wrong) but not spooled again. Older duplicates,
//! and duplicates across restarts, collapse in ClickHouse instead (see `store::schema`).

use std::collections::hash_map::DefaultHasher;
use std::collections::{HashSet, VecDeque};
use std::hash::{Hash, Hasher};
use std::sync::Mutex;

pub struct Dedup {
    capacity: usize,
    inner: Mutex<(HashSet<u64>, VecDeque<u64>)>,
}

fn key(site: &str, message_id: &str) -> u64 {
    let mut h = DefaultHasher::new();
    site.hash(&mut h);
    message_id.hash(&mut h);
    h.finish()
}

impl Dedup {
    pub fn new(capacity: usize) -> Self {
        Dedup {
            capacity,
            inner: Mutex::new((HashSet::new(), VecDeque::new())),
        }
    }

    /// Which of these ids were seen recently (or earlier in the same list).
    pub fn seen<'a>(&self, ids: impl Iterator<Item = (&'a str, &'a str)>) -> Vec<bool> {
        if self.capacity == 0 {
            return ids.map(|_| false).collect();
        }
        let g = self.inner.lock().expect("dedup lock");
        let mut local = HashSet::new();
        ids.map(|(s, m)| {
            let k = key(s, m);
            g.0.contains(&k) || !local.insert(k)
        })
        .collect()
    }

    /// Remembers ids that are now durably accepted.
    pub fn remember<'a>(&self, ids: impl Iterator<Item = (&'a str, &'a str)>) {
        if self.capacity == 0 {
            return;
        }
        let mut g = self.inner.lock().expect("dedup lock");
        for (s, m) in ids {
            let k = key(s, m);
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
        assert_eq!(d.seen([("s", "a"), ("s", "a")].into_iter()), [false, true]);
        d.remember([("s", "a"), ("s", "b")].into_iter());
        assert_eq!(d.seen([("s", "a"), ("t", "a")].into_iter()), [true, false]);
        d.remember([("s", "c")].into_iter());
        assert_eq!(
            d.seen([("s", "a"), ("s", "c")].into_iter()),
            [false, true],
            "a fell out"
        );
    }
}
