//! A short in-process cache of query answers (profiles, event pages), bounded by the bytes the
//! answers take (`quick_cache` with a weigher), each answer served for at most `cache_ttl`.
//!
//! An entry weighs its answer's JSON length plus its key, and at least
//! `cache_max_bytes / cache_entries`, so the cache also never holds more than `cache_entries`
//! answers. `cache_ttl = "0s"` or `cache_entries = 0` turns it off.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;

/// When an answer was cached, the answer, and its weight (computed once, at insertion).
type Entry = (Instant, Arc<Value>, u64);

#[derive(Clone)]
struct Weight;

impl quick_cache::Weighter<String, Entry> for Weight {
    fn weight(&self, _key: &String, v: &Entry) -> u64 {
        v.2
    }
}

pub(super) struct Cache {
    ttl: Duration,
    /// The least an entry weighs (so the entry bound holds too).
    min_weight: u64,
    /// None when the cache is off.
    map: Option<quick_cache::sync::Cache<String, Entry, Weight>>,
}

/// Counts the bytes a value serialises to, without keeping them.
struct Len(u64);

impl std::io::Write for Len {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0 += buf.len() as u64;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Cache {
    pub(super) fn new(ttl: Duration, max_entries: usize, max_bytes: u64) -> Self {
        let on = !ttl.is_zero() && max_entries > 0 && max_bytes > 0;
        Cache {
            ttl,
            min_weight: (max_bytes / max_entries.max(1) as u64).max(1),
            map: on.then(|| {
                quick_cache::sync::Cache::with_weighter(max_entries.min(1 << 20), max_bytes, Weight)
            }),
        }
    }

    /// The answer for `key`, if it was cached less than `ttl` ago.
    pub(super) fn get(&self, key: &str) -> Option<Arc<Value>> {
        let map = self.map.as_ref()?;
        let (at, v, _) = map.get(key)?;
        if at.elapsed() < self.ttl {
            Some(v)
        } else {
            map.remove(key);
            None
        }
    }

    pub(super) fn put(&self, key: String, value: Arc<Value>) {
        let Some(map) = &self.map else { return };
        let mut len = Len(key.len() as u64);
        serde_json::to_writer(&mut len, &*value).expect("a Value serialises");
        map.insert(key, (Instant::now(), value, len.0.max(self.min_weight)));
    }

    /// Forgets every answer (a person was deleted: no answer of theirs may be served again).
    pub(super) fn clear(&self) {
        if let Some(map) = &self.map {
            map.clear();
        }
    }

    #[cfg(test)]
    fn weight(&self) -> u64 {
        self.map.as_ref().map_or(0, |m| m.weight())
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.map.as_ref().map_or(0, |m| m.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(bytes: usize) -> Arc<Value> {
        Arc::new(Value::String("x".repeat(bytes)))
    }

    #[test]
    fn stays_within_its_bytes_and_its_entries() {
        let c = Cache::new(Duration::from_secs(60), 1_000, 100_000);
        for i in 0..200 {
            c.put(format!("k{i}"), answer(10_000));
        }
        assert!(c.weight() <= 100_000, "{}", c.weight());
        assert!(c.len() < 20, "{}", c.len());
        let c = Cache::new(Duration::from_secs(60), 10, 1 << 30);
        for i in 0..200 {
            c.put(format!("k{i}"), answer(10));
        }
        assert!(c.len() <= 10, "{}", c.len());
    }

    #[test]
    fn answers_expire_after_the_ttl_and_0s_is_off() {
        let c = Cache::new(Duration::from_millis(50), 10, 1 << 20);
        c.put("k".into(), answer(3));
        assert_eq!(c.get("k").as_deref(), Some(&*answer(3)));
        let deadline = Instant::now() + Duration::from_secs(5);
        while c.get("k").is_some() {
            assert!(Instant::now() < deadline, "never expired");
            std::thread::sleep(Duration::from_millis(10));
        }
        let off = Cache::new(Duration::ZERO, 10, 1 << 20);
        off.put("k".into(), answer(3));
        assert!(off.get("k").is_none());
        let off = Cache::new(Duration::from_secs(5), 0, 1 << 20);
        off.put("k".into(), answer(3));
        assert!(off.get("k").is_none());
    }
}
