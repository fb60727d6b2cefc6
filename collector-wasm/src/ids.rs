//! Ids: UUIDv7 message and session ids (time-ordered, so the server can dedup and sort), UUIDv4
//! anonymous ids (no first-seen time inside), from a xoshiro128++ generator seeded once with
//! `crypto.getRandomValues` by the loader.

use alloc::string::String;

use crate::json;

/// xoshiro128++: small, fast and good enough for the random bits of ids and jitter.
pub struct Rng {
    s: [u32; 4],
}

impl Rng {
    pub fn new(seed: [u32; 4]) -> Rng {
        // An all-zero state never leaves zero; mix in constants so every seed works.
        let [a, b, c, d] = seed;
        Rng {
            s: [
                a ^ 0x9e37_79b9,
                b ^ 0x85eb_ca6b,
                c ^ 0xc2b2_ae35,
                d ^ 0x27d4_eb2f,
            ],
        }
    }

    pub fn next_u32(&mut self) -> u32 {
        let s = &mut self.s;
        let result = s[0].wrapping_add(s[3]).rotate_left(7).wrapping_add(s[0]);
        let t = s[1] << 9;
        s[2] ^= s[0];
        s[3] ^= s[1];
        s[1] ^= s[2];
        s[0] ^= s[3];
        s[2] ^= t;
        s[3] = s[3].rotate_left(11);
        result
    }
}

/// Makes ids. UUIDv7s from one `Ids` are strictly increasing, even within one millisecond
/// (RFC 9562 section 6.2, method 1: a 12-bit counter in `rand_a`, seeded randomly each ms).
pub struct Ids {
    pub rng: Rng,
    last_ms: u64,
    counter: u16,
}

impl Ids {
    pub fn new(seed: [u32; 4]) -> Ids {
        Ids {
            rng: Rng::new(seed),
            last_ms: 0,
            counter: 0,
        }
    }

    /// A new UUIDv7 for time `ms` (Unix milliseconds).
    pub fn v7(&mut self, ms: u64) -> String {
        let mut ms = ms.min((1 << 48) - 1);
        if ms <= self.last_ms {
            ms = self.last_ms;
            self.counter += 1;
            if self.counter > 0xfff {
                ms += 1;
                self.counter = (self.rng.next_u32() & 0x7ff) as u16;
            }
        } else {
            self.counter = (self.rng.next_u32() & 0x7ff) as u16;
        }
        self.last_ms = ms;
        let mut b = [0u8; 16];
        for (i, byte) in b.iter_mut().take(6).enumerate() {
            *byte = (ms >> (40 - 8 * i)) as u8;
        }
        b[6] = 0x70 | (self.counter >> 8) as u8;
        b[7] = self.counter as u8;
        self.fill(&mut b[8..]);
        b[8] = 0x80 | (b[8] & 0x3f);
        format(&b)
    }

    /// A new random UUIDv4.
    pub fn v4(&mut self) -> String {
        let mut b = [0u8; 16];
        self.fill(&mut b);
        b[6] = 0x40 | (b[6] & 0x0f);
        b[8] = 0x80 | (b[8] & 0x3f);
        format(&b)
    }

    fn fill(&mut self, out: &mut [u8]) {
        // Little-endian bytes of one random u32 per four bytes (indexing, not `to_le_bytes`
        // and chunks: their iterators cost the wasm more).
        let mut r = 0;
        for (i, o) in out.iter_mut().enumerate() {
            if i % 4 == 0 {
                r = self.rng.next_u32();
            }
            *o = (r >> (8 * (i % 4))) as u8;
        }
    }
}

fn format(b: &[u8; 16]) -> String {
    let mut s = String::with_capacity(36);
    for (i, byte) in b.iter().enumerate() {
        if matches!(i, 4 | 6 | 8 | 10) {
            json::put(&mut s, "-");
        }
        json::put_digit(&mut s, byte >> 4);
        json::put_digit(&mut s, byte & 15);
    }
    s
}

#[cfg(all(test, not(target_arch = "wasm32")))]
mod tests {
    use super::*;

    #[test]
    fn v7_has_version_variant_and_time() {
        let mut ids = Ids::new([1, 2, 3, 4]);
        let ms = 1_764_378_123_456u64;
        let id = ids.v7(ms);
        let u = uuid::Uuid::parse_str(&id).unwrap();
        assert_eq!(u.get_version_num(), 7);
        assert_eq!(u.get_variant(), uuid::Variant::RFC4122);
        let (secs, nanos) = u.get_timestamp().unwrap().to_unix();
        assert_eq!(secs * 1000 + u64::from(nanos / 1_000_000), ms);
    }

    #[test]
    fn v7_is_strictly_increasing_within_a_millisecond_and_when_the_clock_goes_back() {
        let mut ids = Ids::new([9, 9, 9, 9]);
        let mut prev = ids.v7(1000);
        for i in 0..10_000u64 {
            // Same millisecond many times (forces counter overflow), and a clock jumping back.
            let ms = if i % 3 == 0 { 999 } else { 1000 + i / 5000 };
            let id = ids.v7(ms);
            assert!(id > prev, "{id} <= {prev}");
            prev = id;
        }
    }

    #[test]
    fn v4_is_random_and_well_formed() {
        let mut ids = Ids::new([0, 0, 0, 0]);
        let a = ids.v4();
        let b = ids.v4();
        assert_ne!(a, b);
        let u = uuid::Uuid::parse_str(&a).unwrap();
        assert_eq!(u.get_version_num(), 4);
        assert_eq!(u.get_variant(), uuid::Variant::RFC4122);
    }

    #[test]
    fn different_seeds_give_different_ids() {
        assert_ne!(Ids::new([1, 0, 0, 0]).v4(), Ids::new([2, 0, 0, 0]).v4());
    }
}
