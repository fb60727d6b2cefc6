//! Input generation for the fuzz stage: valid inputs built from a seeded generator, then
//! mutated at the byte level (bit flips, inserted and deleted ranges, splices, dictionary tokens,
//! deep nesting, long runs, invalid UTF-8) or at the JSON level (a node replaced by a huge number,
//! a deep array, a long string, another type; keys removed or added), plus plain random bytes.
//!
//! Everything comes from one `SmallRng`, so a seed gives the same inputs in the same order: a
//! crash that takes the whole process down (a stack overflow is not a panic) is found again by
//! running with the seed it printed.

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Map, Value};
use waymark_protocol::limits::MAX_EVENTS_PER_BATCH;
use waymark_protocol::time::format_rfc3339;

/// Inputs are kept below this (the intake's cap is 512 KiB; some inputs go past it on purpose).
pub const MAX_INPUT: usize = 1 << 20;

/// Byte sequences worth inserting: JSON structure, escapes that are not valid Unicode, numbers
/// at and past every limit, invalid UTF-8, the spool's sync marker, and the field names the
/// parsers look for.
const TOKENS: &[&[u8]] = &[
    b"{",
    b"}",
    b"[",
    b"]",
    b"\"",
    b"\\",
    b",",
    b":",
    b"null",
    b"true",
    b"false",
    b"-0",
    b"0.0000000000000000000000001",
    b"1e308",
    b"1e309",
    b"-1e309",
    b"1e-400",
    b"18446744073709551615",
    b"18446744073709551616",
    b"-9223372036854775809",
    b"340282366920938463463374607431768211456",
    b"\"\\u0000\"",
    b"\"\\ud800\"",
    b"\"\\udc00\\ud800\"",
    b"\"\\ud83d\\ude00\"",
    b"\\u",
    b"\\uZZZZ",
    b"\xff",
    b"\xfe",
    b"\xc0\x80",
    b"\xed\xa0\x80",
    b"\xf4\x90\x80\x80",
    b"\xe2\x82",
    b"\x00",
    b"\xffWMSYNC\xfe",
    b"\x1f\x8b\x08\x00",
    b"\"messageId\"",
    b"\"anonymousId\"",
    b"\"userId\"",
    b"\"batch\"",
    b"\"writeKey\"",
    b"\"sentAt\"",
    b"\"timestamp\"",
    b"\"originalTimestamp\"",
    b"\"type\"",
    b"\"context\"",
    b"\"properties\"",
    b"\"traits\"",
    b"\"envelopes\"",
    b"\"events\"",
    b"\"receivedAt\"",
    b"\"__proto__\"",
    b"\"9999-12-31T23:59:59Z\"",
    b"\"0000-01-01T00:00:00Z\"",
    b"\"2026-02-30T25:61:61.9999999999+99:99\"",
    b"\"+275760-09-13T00:00:00Z\"",
    b"'; DROP TABLE events; --",
];

/// Times worth trying where a date-time is expected.
const ODD_TIMES: &[&str] = &[
    "9999-12-31T23:59:59Z",
    "1970-01-01T00:00:00Z",
    "1969-12-31T23:59:59.999Z",
    "2026-13-01T00:00:00Z",
    "2026-02-29T00:00:00Z",
    "2026-11-30T23:59:60Z",
    "2026-11-30T12:00:00+25:00",
    "2026-11-30T12:00:00.123456789123Z",
    "2026-11-30",
    "12:00:00",
    "",
    "now",
    "-000001-01-01T00:00:00Z",
    "+275760-09-13T00:00:00Z",
];

/// Strings worth trying where text is expected.
const ODD_STRINGS: &[&str] = &[
    "",
    " ",
    "\u{0}",
    "\u{feff}",
    "\u{202e}evil",
    "e\u{301}",
    "😀",
    "𝕎𝕒𝕪𝕞𝕒𝕣𝕜",
    "a.b.c",
    "$click",
    "$engagement",
    "../../etc/passwd",
    "'; DROP TABLE events; --",
    "\\",
    "\"",
    "\r\n",
    "%00",
    "null",
];

/// The seeded generator.
pub struct Gen {
    pub rng: SmallRng,
    counter: u64,
}

impl Gen {
    pub fn new(seed: u64) -> Gen {
        Gen {
            rng: SmallRng::seed_from_u64(seed),
            counter: 0,
        }
    }

    /// A uniform index below `n` (`n` > 0).
    pub fn below(&mut self, n: usize) -> usize {
        self.rng.random_range(0..n)
    }

    pub fn chance(&mut self, p: f64) -> bool {
        self.rng.random_bool(p)
    }

    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }

    pub fn u64(&mut self) -> u64 {
        self.rng.random()
    }

    /// A fresh id, unique within the run.
    pub fn id(&mut self, prefix: &str) -> String {
        self.counter += 1;
        format!("{prefix}-{:x}-{}", self.rng.random::<u32>(), self.counter)
    }

    /// Random bytes: usually short, sometimes past the intake's 512 KiB cap.
    pub fn random_bytes(&mut self) -> Vec<u8> {
        let len = match self.below(20) {
            0 => self.below(MAX_INPUT - 1024) + 512 * 1024 - 4096,
            1..=3 => self.below(64 * 1024),
            _ => self.below(2048),
        };
        let mut v = vec![0u8; len];
        self.rng.fill(&mut v[..]);
        v
    }

    /// Text: words, odd strings, or a long run (around the 8 KiB string limit, or far past it).
    pub fn text(&mut self) -> String {
        match self.below(12) {
            0 => self.pick(ODD_STRINGS).to_string(),
            1 => self.long_text(),
            2 => {
                let n = self.below(40);
                (0..n)
                    .map(|_| char::from_u32(self.rng.random_range(0..0x11_0000)).unwrap_or('?'))
                    .collect()
            }
            _ => {
                let words = ["shoe", "cart", "Product", "Viewed", "blue", "42", "ä", "→"];
                let n = 1 + self.below(4);
                (0..n)
                    .map(|_| *self.pick(&words))
                    .collect::<Vec<_>>()
                    .join(" ")
            }
        }
    }

    /// Text around a length limit (names 200 bytes, ids 256, strings 8 KiB, or far past),
    /// ASCII or of multibyte characters, offset so that a limit can fall inside a character.
    pub fn long_text(&mut self) -> String {
        let target = *self.pick(&[199usize, 200, 201, 255, 256, 257, 8191, 8192, 8193, 70_000]);
        let unit = *self.pick(&["x", "ä", "→", "😀", "e\u{301}"]);
        let mut s = "x".repeat(self.below(4));
        while s.len() < target {
            s.push_str(unit);
        }
        s
    }

    /// A date-time: valid and recent most of the time, odd otherwise.
    pub fn time(&mut self, now_ms: i64) -> Value {
        match self.below(10) {
            0 => Value::String(self.pick(ODD_TIMES).to_string()),
            1 => json!(now_ms),
            2 => Value::String(format_rfc3339(
                now_ms - self.rng.random_range(0..400 * 86_400_000i64),
            )),
            3 => Value::String(format_rfc3339(
                now_ms + self.rng.random_range(0..10 * 86_400_000i64),
            )),
            _ => Value::String(format_rfc3339(
                now_ms - self.rng.random_range(0..3_600_000i64),
            )),
        }
    }

    /// A scalar or small structure of any JSON type, including extremes.
    pub fn scalar(&mut self) -> Value {
        match self.below(12) {
            0 => Value::Null,
            1 => json!(self.chance(0.5)),
            2 => json!(self.rng.random::<i64>()),
            3 => json!(u64::MAX),
            4 => json!(f64::MAX),
            5 => json!(-0.0),
            6 => json!(self.rng.random::<f64>() * 1e6),
            7 => json!([]),
            8 => json!({}),
            9 => json!(self.rng.random_range(0..100_000)),
            _ => Value::String(self.text()),
        }
    }

    /// Properties or traits: a few keys, sometimes nested (the limit is 8 levels).
    pub fn object(&mut self, depth: usize) -> Value {
        let mut m = Map::new();
        let n = self.below(if depth == 0 { 8 } else { 4 });
        for _ in 0..n {
            let key = match self.below(6) {
                0 => self.text(),
                1 => "product_id".to_string(),
                2 => "price".to_string(),
                _ => format!("k{}", self.below(50)),
            };
            let v = if depth < 9 && self.chance(0.2) {
                self.object(depth + 1)
            } else if self.chance(0.1) {
                Value::Array((0..self.below(5)).map(|_| self.scalar()).collect())
            } else {
                self.scalar()
            };
            m.insert(key, v);
        }
        Value::Object(m)
    }

    /// A valid-looking Segment event of any type (with a few odd fields now and then).
    pub fn event(&mut self, now_ms: i64) -> Value {
        let kinds = ["track", "page", "identify", "screen", "alias", "group"];
        let kind = *self.pick(&kinds);
        let mut e = json!({
            "type": kind,
            "messageId": self.id("m"),
            "anonymousId": self.id("anon"),
        });
        let o = e.as_object_mut().expect("an object");
        if self.chance(0.3) {
            o.insert("userId".into(), json!(self.id("user")));
        }
        if self.chance(0.1) {
            o.remove("anonymousId");
        }
        match kind {
            "track" => {
                let name = match self.below(6) {
                    0 => "$click".to_string(),
                    1 => "$engagement".to_string(),
                    2 => "Order Completed".to_string(),
                    3 => "Product Added".to_string(),
                    _ => self.text(),
                };
                o.insert("event".into(), json!(name));
            }
            "page" | "screen" => {
                o.insert("name".into(), json!(self.text()));
            }
            "alias" => {
                o.insert("previousId".into(), json!(self.id("old")));
                o.insert("userId".into(), json!(self.id("user")));
            }
            "group" => {
                o.insert("groupId".into(), json!(self.id("g")));
            }
            _ => {}
        }
        let t = self.time(now_ms);
        let key = if self.chance(0.5) {
            "timestamp"
        } else {
            "originalTimestamp"
        };
        o.insert(key.into(), t);
        if self.chance(0.2) {
            o.insert("sentAt".into(), self.time(now_ms));
        }
        let props = self.object(0);
        o.insert("properties".into(), props);
        if self.chance(0.3) {
            o.insert("traits".into(), self.object(0));
        }
        o.insert(
            "context".into(),
            json!({
                "page": {"url": "https://shop.example/p/1?utm_source=news", "path": "/p/1", "title": self.text(), "referrer": ""},
                "userAgent": "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36",
                "locale": "de-DE",
                "sessionId": self.id("s"),
                "campaign": {"source": "news", "medium": "email"},
                "library": {"name": "waymark.js", "version": "0.1.0"},
            }),
        );
        e
    }

    /// A Segment batch of 0 to 30 events.
    pub fn batch(&mut self, now_ms: i64) -> Value {
        self.batch_of(now_ms, 30)
    }

    /// A Segment batch of 0 to `max` events.
    pub fn batch_of(&mut self, now_ms: i64, max: usize) -> Value {
        let n = self.below(max + 1);
        let events: Vec<Value> = (0..n).map(|_| self.event(now_ms)).collect();
        let mut b = json!({"batch": events, "writeKey": "wk_fuzz"});
        if self.chance(0.8) {
            b["sentAt"] = self.time(now_ms);
        }
        b
    }

    /// Batches at the event-count limit and one past it, of small events (cheap to mutate).
    pub fn limit_batches(&mut self) -> Vec<Value> {
        [MAX_EVENTS_PER_BATCH, MAX_EVENTS_PER_BATCH + 1]
            .into_iter()
            .map(|n| {
                let events: Vec<Value> = (0..n)
                    .map(|i| json!({"type": "track", "event": "e", "messageId": format!("m{i}"), "anonymousId": "a"}))
                    .collect();
                json!({"batch": events, "writeKey": "wk_fuzz"})
            })
            .collect()
    }

    /// Mutates a JSON value in place: one node, chosen by walking down at random.
    pub fn mutate_json(&mut self, v: &mut Value) {
        let stop = self.chance(0.3);
        match v {
            Value::Object(m) if !m.is_empty() && !stop => {
                match self.below(8) {
                    0 => {
                        let k = m.keys().nth(self.below(m.len())).cloned();
                        if let Some(k) = k {
                            m.remove(&k);
                        }
                    }
                    1 => {
                        let k = self.text();
                        let val = self.scalar();
                        m.insert(k, val);
                    }
                    _ => {
                        let i = self.below(m.len());
                        if let Some((_, child)) = m.iter_mut().nth(i) {
                            self.mutate_json(child);
                        }
                    }
                }
                return;
            }
            Value::Array(a) if !a.is_empty() && !stop => {
                match self.below(6) {
                    0 => {
                        let i = self.below(a.len());
                        a.remove(i);
                    }
                    1 => {
                        let i = self.below(a.len());
                        let dup = a[i].clone();
                        a.push(dup);
                    }
                    _ => {
                        let i = self.below(a.len());
                        self.mutate_json(&mut a[i]);
                    }
                }
                return;
            }
            _ => {}
        }
        *v = match self.below(8) {
            0 => {
                // Deep nesting: past every limit (serde_json's 128, the validator's 8).
                let depth = *self.pick(&[9usize, 10, 127, 128, 129, 300]);
                let mut x = json!(1);
                for _ in 0..depth {
                    x = if self.chance(0.5) {
                        json!([x])
                    } else {
                        json!({ "a": x })
                    };
                }
                x
            }
            1 => Value::String(self.long_text()),
            2 => self.object(0),
            3 => Value::Array((0..self.below(600)).map(|_| json!(1)).collect()),
            _ => self.scalar(),
        };
    }

    /// One byte-level mutation of `data`; `others` are inputs to splice from.
    pub fn mutate_bytes(&mut self, data: &mut Vec<u8>, others: &[Vec<u8>]) {
        let len = data.len();
        let at = if len == 0 { 0 } else { self.below(len + 1) };
        match self.below(13) {
            0 if len > 0 => {
                let i = self.below(len);
                data[i] ^= 1 << self.below(8);
            }
            1 if len > 0 => {
                let i = self.below(len);
                data[i] = *self.pick(&[
                    0x00u8, 0xff, 0x7f, 0x80, 0xc0, 0xed, b'"', b'\\', b'{', b'}', b'[', b']',
                    b',', b':', b'0', b'-', b'e',
                ]);
            }
            2 => {
                let n = 1 + self.below(16);
                let bytes: Vec<u8> = (0..n).map(|_| self.rng.random()).collect();
                data.splice(at..at, bytes);
            }
            3 => {
                let tok = self.pick(TOKENS).to_vec();
                data.splice(at..at, tok);
            }
            4 if len > 0 => {
                let n = 1 + self.below((len - at.min(len - 1)).min(64));
                let from = at.min(len - 1);
                data.drain(from..(from + n).min(len));
            }
            5 if len > 0 => {
                let from = self.below(len);
                let n = 1 + self.below((len - from).min(256));
                let chunk = data[from..from + n].to_vec();
                data.splice(at..at, chunk);
            }
            6 if !others.is_empty() => {
                let o = self.pick(others);
                if !o.is_empty() {
                    let from = self.below(o.len());
                    let n = 1 + self.below((o.len() - from).min(512));
                    let chunk = o[from..from + n].to_vec();
                    data.splice(at..at, chunk);
                }
            }
            7 => data.truncate(at),
            8 => {
                let depth = *self.pick(&[64usize, 129, 10_000, 100_000]);
                let open: &[u8] = if self.chance(0.5) { b"[" } else { b"{\"a\":" };
                let chunk = open.repeat(depth);
                data.splice(at..at, chunk);
            }
            9 if len > 0 => {
                // A long run of one byte (a huge number or string once inside quotes).
                let b = *self.pick(&[b'9', b'a', b' ', 0xff]);
                let n = *self.pick(&[100usize, 8_200, 70_000]);
                data.splice(at..at, std::iter::repeat_n(b, n));
            }
            10 if len > 4 => {
                // Overwrite four bytes with an extreme little-endian integer (lengths, counts).
                let i = self.below(len - 3);
                let v = *self.pick(&[0u32, 1, 0x7fff_ffff, 0xffff_ffff, 64 << 20, (64 << 20) + 1]);
                data[i..i + 4].copy_from_slice(&v.to_le_bytes());
            }
            _ if len > 0 => {
                let i = self.below(len);
                data[i] = self.rng.random();
            }
            _ => data.push(self.rng.random()),
        }
        data.truncate(MAX_INPUT);
    }

    /// An input derived from a JSON seed by JSON-level mutations only (sometimes followed by
    /// one byte-level mutation): for code that is only ever handed parsed JSON.
    pub fn input_json(&mut self, seeds: &[Vec<u8>]) -> Vec<u8> {
        let seed = self.pick(seeds);
        let Ok(mut v) = serde_json::from_slice::<Value>(seed) else {
            return seed.clone();
        };
        for _ in 0..1 + self.below(3) {
            self.mutate_json(&mut v);
        }
        let mut out = serde_json::to_vec(&v).expect("a Value serialises");
        if self.chance(0.1) {
            self.mutate_bytes(&mut out, seeds);
        }
        out
    }

    /// An input derived from `seeds`: mostly seeds with stacked byte mutations, some JSON-level
    /// mutations (when the seed is JSON), some plain random bytes.
    pub fn input(&mut self, seeds: &[Vec<u8>]) -> Vec<u8> {
        let roll = self.below(100);
        if roll < 8 || seeds.is_empty() {
            return self.random_bytes();
        }
        let seed = self.pick(seeds).clone();
        if roll < 50 {
            if let Ok(mut v) = serde_json::from_slice::<Value>(&seed) {
                for _ in 0..1 + self.below(3) {
                    self.mutate_json(&mut v);
                }
                let mut out = serde_json::to_vec(&v).expect("a Value serialises");
                if self.chance(0.3) {
                    self.mutate_bytes(&mut out, seeds);
                }
                return out;
            }
        }
        let mut out = seed;
        if roll >= 97 {
            return out; // the seed itself now and then: the valid path must keep working
        }
        for _ in 0..1 + self.below(4) {
            self.mutate_bytes(&mut out, seeds);
        }
        out
    }
}
