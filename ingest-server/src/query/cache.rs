//! A short in-process cache of query answers.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

/// A short in-process cache of answers, keyed by site and request.
pub(super) struct Cache {
    pub(super) ttl: Duration,
    pub(super) max: usize,
    pub(super) map: Mutex<HashMap<String, (Instant, Arc<Value>)>>,
}

impl Cache {
    pub(super) fn get(&self, key: &str) -> Option<Arc<Value>> {
        if self.ttl.is_zero() {
            return None;
        }
        let map = self.map.lock().expect("cache lock");
        map.get(key)
            .filter(|(at, _)| at.elapsed() < self.ttl)
            .map(|(_, v)| v.clone())
    }

    pub(super) fn put(&self, key: String, value: Arc<Value>) {
        if self.ttl.is_zero() || self.max == 0 {
            return;
        }
        let mut map = self.map.lock().expect("cache lock");
        if map.len() >= self.max {
            map.retain(|_, (at, _)| at.elapsed() < self.ttl);
            if map.len() >= self.max {
                map.clear();
            }
        }
        map.insert(key, (Instant::now(), value));
    }
}
