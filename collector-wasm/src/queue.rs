//! The retry queue: events whose send failed, oldest first, capped by count and bytes.
//!
//! Stored (in localStorage when the tag may persist) as text: the first line is how many events
//! the caps have dropped so far, then one event's JSON per line. Event JSON never holds a raw
//! newline (the writer escapes them), so lines split cleanly.

use alloc::string::String;

use crate::json;

/// Most events kept for retry.
pub const MAX_EVENTS: usize = 1000;
/// Most bytes of event JSON kept for retry (localStorage holds about 5 M characters per origin).
pub const MAX_BYTES: usize = 256 * 1024;

/// A list of events, oldest first, in one string: each event's JSON followed by a newline.
/// Every list of events the tag keeps (held for consent, waiting, in flight, the retry queue)
/// is one of these rather than a `Vec<String>`: one allocation per list, and no vector growth,
/// draining and dropping code for the wasm to carry.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Lines {
    text: String,
    len: usize,
}

impl Lines {
    pub fn push(&mut self, event: &str) {
        json::put(&mut self.text, event);
        json::put(&mut self.text, "\n");
        self.len += 1;
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Bytes of event JSON (without the newlines).
    pub fn bytes(&self) -> usize {
        self.text.len() - self.len
    }

    pub fn iter(&self) -> impl Iterator<Item = &str> {
        crate::scan::parts(&self.text, b'\n').take(self.len)
    }

    /// Appends `other`'s events after these.
    pub fn append(&mut self, other: &Lines) {
        json::put(&mut self.text, &other.text);
        self.len += other.len;
    }

    /// Removes the first `n` events and returns them.
    pub fn take_front(&mut self, n: usize) -> Lines {
        let n = n.min(self.len);
        // The end of the `n`th line (a byte scan: cheaper in wasm than summing `iter()`).
        let mut end = 0;
        let mut lines = 0;
        for (i, b) in self.text.bytes().enumerate() {
            if lines == n {
                break;
            }
            if b == b'\n' {
                lines += 1;
                end = i + 1;
            }
        }
        // (Both halves copied with `get`, which cannot panic: `truncate` would bring its
        // assertion message and source path into the wasm's data.)
        let front = Lines {
            text: String::from(self.text.get(..end).unwrap_or_default()),
            len: n,
        };
        self.text = String::from(self.text.get(end..).unwrap_or_default());
        self.len -= n;
        front
    }
}

#[derive(Debug, Default, PartialEq, Eq)]
pub struct Queue {
    pub items: Lines,
    /// Events dropped by the caps and not yet reported in a batch.
    pub dropped: u64,
}

impl Queue {
    pub fn parse(s: &str) -> Queue {
        let mut lines = crate::scan::parts(s, b'\n');
        let dropped = lines.next().and_then(crate::scan::parse_u64).unwrap_or(0);
        let mut items = Lines::default();
        for l in lines.filter(|l| l.as_bytes().first() == Some(&b'{')) {
            items.push(l);
        }
        let mut q = Queue { items, dropped };
        q.cap();
        q
    }

    pub fn serialize(&self) -> String {
        let mut out = String::new();
        crate::json::uint(&mut out, self.dropped);
        for item in self.items.iter() {
            json::put(&mut out, "\n");
            json::put(&mut out, item);
        }
        out
    }

    /// Puts events back at the front (they are older than what is queued), then applies the caps.
    pub fn unshift(&mut self, events: Lines) {
        let rest = core::mem::replace(&mut self.items, events);
        self.items.append(&rest);
        self.cap();
    }

    /// Takes events from the front for one batch of at most `max_events` and `max_bytes`
    /// (always at least one event, so an oversized one cannot block the queue).
    pub fn take(&mut self, max_events: usize, max_bytes: usize) -> Lines {
        let n = fit(&self.items, max_events, max_bytes, true);
        self.items.take_front(n)
    }

    /// Drops the oldest events until both caps hold, counting them.
    fn cap(&mut self) {
        let mut bytes = self.items.bytes();
        let mut drop = 0;
        for e in self.items.iter() {
            if self.items.len() - drop <= MAX_EVENTS && bytes <= MAX_BYTES {
                break;
            }
            bytes -= e.len();
            drop += 1;
        }
        self.items.take_front(drop);
        self.dropped += drop as u64;
    }
}

/// How many leading events fit in one batch of at most `max_events` and `max_bytes` (each
/// event counted with one byte for its separator). `at_least_one`: the first event counts
/// even when it alone is larger, so an oversized one cannot block the queue.
pub fn fit(items: &Lines, max_events: usize, max_bytes: usize, at_least_one: bool) -> usize {
    let mut bytes = 0;
    let mut n = 0;
    for item in items.iter().take(max_events) {
        bytes += item.len() + 1;
        if bytes > max_bytes && (n > 0 || !at_least_one) {
            break;
        }
        n += 1;
    }
    n
}

#[cfg(all(test, not(target_arch = "wasm32")))]
mod tests {
    use super::*;
    use alloc::vec::Vec;

    fn lines<I: IntoIterator<Item = String>>(events: I) -> Lines {
        let mut l = Lines::default();
        for e in events {
            l.push(&e);
        }
        l
    }

    fn all(l: &Lines) -> Vec<String> {
        l.iter().map(String::from).collect()
    }

    fn ev(i: usize) -> String {
        let mut s = String::from("{\"n\":");
        crate::json::uint(&mut s, i as u64);
        s.push('}');
        s
    }

    #[test]
    fn round_trips_through_text() {
        let q = Queue {
            items: lines([ev(1), ev(2)]),
            dropped: 3,
        };
        assert_eq!(q.serialize(), "3\n{\"n\":1}\n{\"n\":2}");
        assert_eq!(Queue::parse(&q.serialize()), q);
        assert_eq!(Queue::parse(""), Queue::default());
        assert_eq!(
            Queue::parse("garbage\nnot json\n{}"),
            Queue {
                items: lines(["{}".into()]),
                dropped: 0
            }
        );
    }

    #[test]
    fn count_cap_drops_oldest_and_counts() {
        let mut q = Queue::default();
        q.unshift(lines((0..MAX_EVENTS).map(ev)));
        q.unshift(lines([ev(9999)]));
        // The re-queued event is the oldest, so it is the one dropped.
        assert_eq!(q.items.len(), MAX_EVENTS);
        assert_eq!(q.dropped, 1);
        assert_eq!(all(&q.items)[0], ev(0));
        q.unshift(lines((0..10).map(ev)));
        assert_eq!(q.dropped, 11);
        assert_eq!(all(&q.items)[0], ev(0));
        assert_eq!(q.items.len(), MAX_EVENTS);
    }

    #[test]
    fn byte_cap_drops_oldest() {
        let big = "x".repeat(MAX_BYTES / 4);
        let mut q = Queue::default();
        for i in 0..6 {
            let mut e = ev(i);
            e.push_str(&big);
            q.items.push(&e);
            let items = core::mem::take(&mut q.items);
            q.unshift(items);
        }
        assert!(q.items.iter().map(str::len).sum::<usize>() <= MAX_BYTES);
        assert_eq!(q.items.len(), 3);
        assert_eq!(q.dropped, 3);
        assert!(all(&q.items)[0].starts_with("{\"n\":3}"));
    }

    #[test]
    fn take_respects_batch_limits_but_always_makes_progress() {
        let mut q = Queue::default();
        q.unshift(lines((0..10).map(ev)));
        assert_eq!(q.take(3, 1000).len(), 3);
        assert_eq!(all(&q.take(100, 16)), [ev(3), ev(4)]);
        assert_eq!(all(&q.take(100, 1)), [ev(5)]);
        assert_eq!(q.items.len(), 4);
        // Without `at_least_one` (a batch that already holds events), nothing too large.
        assert_eq!(fit(&q.items, 100, 1, false), 0);
        assert_eq!(fit(&q.items, 100, 16, false), 2);
        assert_eq!(fit(&q.items, 1, 16, false), 1);
    }
}
