//! The on-disk records. A segment holds records of one format, never both.
//!
//! **v2**, written by this version: a 28-byte header, then the payload.
//!
//! ```text
//! offset  field        type     what
//! 0       magic        8 bytes  ff 57 4d 53 59 4e 43 fe ("\xffWMSYNC\xfe"), the sync marker
//! 8       len          u32 LE   payload length
//! 12      appended_ms  u64 LE   when the appender wrote it (unix ms)
//! 20      payload_crc  u32 LE   CRC-32 (IEEE) of the payload
//! 24      header_crc   u32 LE   CRC-32 (IEEE) of bytes 8..24
//! 28      payload      len bytes
//! ```
//!
//! The marker lets a reader that met damage scan forward to the next record (see
//! [`super::resync`]). The header checksum is checked before anything in the header is
//! believed: a flipped length is caught without reading the megabytes it claims, and a false
//! marker (the magic occurring inside a payload) costs one 16-byte checksum to reject. The
//! payload checksum then vouches for the payload. The magic holds `0xff` and `0xfe`, which never
//! occur in UTF-8, so no text in a payload carries it (binary payload bytes can: the checksums
//! decide).
//!
//! **v1**, written by earlier versions and still read, so a spool left by an older server
//! replays after an upgrade: `len: u32 LE | crc: u32 LE | appended_ms: u64 LE | payload`, `crc`
//! over `appended_ms` and the payload. It has no marker; after damage a reader tries each
//! following offset whose header is plausible (see [`v1_plausible`]) and checks its checksum.
//! A segment's format is told by its first bytes: a v2 segment starts with the magic, whose
//! fourth byte (`S`, 0x53) a v1 segment cannot have there (its first bytes are a length of at
//! most [`MAX_PAYLOAD`], whose top byte is at most 0x04).

/// The sync marker at the start of every v2 record.
pub const MAGIC: [u8; 8] = *b"\xffWMSYNC\xfe";

/// Bytes before the payload of a v2 record.
pub const HEADER_LEN: usize = 28;

/// Bytes before the payload of a v1 record.
pub const V1_HEADER_LEN: usize = 16;

/// Anything longer is corruption, not data (requests are capped far below this).
pub const MAX_PAYLOAD: usize = 64 << 20;

/// The `appended_ms` a v1 record can plausibly hold (2020-01-01 to 2100-01-01): resync in a v1
/// segment only checksums candidates inside it, so that scanning past damage stays cheap.
const V1_PLAUSIBLE_MS: std::ops::Range<u64> = 1_577_836_800_000..4_102_444_800_000;

/// A segment's record format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// Earlier versions: no sync marker.
    V1,
    /// This version: sync marker and header checksum.
    V2,
}

impl Format {
    /// Bytes before the payload.
    pub fn header_len(self) -> usize {
        match self {
            Format::V1 => V1_HEADER_LEN,
            Format::V2 => HEADER_LEN,
        }
    }

    /// Decodes the record at the start of `buf`.
    pub fn decode(self, buf: &[u8]) -> Decoded<'_> {
        match self {
            Format::V1 => decode_v1(buf),
            Format::V2 => decode(buf),
        }
    }
}

/// Appends one v2 record to `out`.
pub fn encode(out: &mut Vec<u8>, appended_ms: u64, payload: &[u8]) {
    let at = out.len();
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(&appended_ms.to_le_bytes());
    out.extend_from_slice(&crc32fast::hash(payload).to_le_bytes());
    let header_crc = crc32fast::hash(&out[at + 8..at + 24]);
    out.extend_from_slice(&header_crc.to_le_bytes());
    out.extend_from_slice(payload);
}

/// The encoded (v2) size of a payload of `len` bytes.
pub fn encoded_len(len: usize) -> u64 {
    (HEADER_LEN + len) as u64
}

/// What a decoder found at the start of a buffer.
#[derive(Debug, PartialEq, Eq)]
pub enum Decoded<'a> {
    /// A whole, checksummed record of `size` bytes (header included).
    Record {
        appended_ms: u64,
        payload: &'a [u8],
        size: usize,
    },
    /// The buffer ends inside what may be a record; `need` bytes would complete it (header
    /// included). For v2, `need` beyond the header is only given once the header checksum held.
    Incomplete { need: usize },
    /// The bytes here are not a record (no marker, a bad checksum or an absurd length).
    Corrupt,
}

/// The v2 header at the start of `h` (at least [`HEADER_LEN`] bytes): `(len, appended_ms,
/// payload_crc)` if the marker and the header checksum hold and the length is sane.
fn v2_header(h: &[u8]) -> Option<(usize, u64, u32)> {
    let le32 = |i: usize| u32::from_le_bytes(h[i..i + 4].try_into().expect("4 bytes"));
    if h[..8] != MAGIC || crc32fast::hash(&h[8..24]) != le32(24) {
        return None;
    }
    let len = le32(8) as usize;
    let appended_ms = u64::from_le_bytes(h[12..20].try_into().expect("8 bytes"));
    (len <= MAX_PAYLOAD).then_some((len, appended_ms, le32(20)))
}

/// Decodes the v2 record at the start of `buf`.
pub fn decode(buf: &[u8]) -> Decoded<'_> {
    if buf.len() < HEADER_LEN {
        // A torn write can end inside a header; anything else this short is not a record.
        let n = buf.len().min(MAGIC.len());
        return if buf[..n] == MAGIC[..n] {
            Decoded::Incomplete { need: HEADER_LEN }
        } else {
            Decoded::Corrupt
        };
    }
    let Some((len, appended_ms, payload_crc)) = v2_header(buf) else {
        return Decoded::Corrupt;
    };
    let size = HEADER_LEN + len;
    if buf.len() < size {
        return Decoded::Incomplete { need: size };
    }
    let payload = &buf[HEADER_LEN..size];
    if crc32fast::hash(payload) != payload_crc {
        return Decoded::Corrupt;
    }
    Decoded::Record {
        appended_ms,
        payload,
        size,
    }
}

/// Decodes the v1 record at the start of `buf`.
pub fn decode_v1(buf: &[u8]) -> Decoded<'_> {
    if buf.len() < V1_HEADER_LEN {
        return Decoded::Incomplete {
            need: V1_HEADER_LEN,
        };
    }
    let len = u32::from_le_bytes(buf[0..4].try_into().expect("4 bytes")) as usize;
    if len > MAX_PAYLOAD {
        return Decoded::Corrupt;
    }
    let size = V1_HEADER_LEN + len;
    if buf.len() < size {
        return Decoded::Incomplete { need: size };
    }
    let crc = u32::from_le_bytes(buf[4..8].try_into().expect("4 bytes"));
    if crc32fast::hash(&buf[8..size]) != crc {
        return Decoded::Corrupt;
    }
    Decoded::Record {
        appended_ms: u64::from_le_bytes(buf[8..16].try_into().expect("8 bytes")),
        payload: &buf[V1_HEADER_LEN..size],
        size,
    }
}

/// Whether a v2 record can start at the start of `h` (at least [`HEADER_LEN`] bytes): the
/// marker and the header checksum hold. Cheap; the payload checksum is still to be checked.
pub fn v2_plausible(h: &[u8]) -> bool {
    v2_header(h).is_some()
}

/// Whether a v1 record can start at the start of `h` (at least [`V1_HEADER_LEN`] bytes): a sane
/// length and a plausible time. Cheap; the checksum is still to be checked.
pub fn v1_plausible(h: &[u8]) -> bool {
    let len = u32::from_le_bytes(h[0..4].try_into().expect("4 bytes")) as usize;
    let ms = u64::from_le_bytes(h[8..16].try_into().expect("8 bytes"));
    len <= MAX_PAYLOAD && V1_PLAUSIBLE_MS.contains(&ms)
}

/// Appends one v1 record, as earlier versions wrote them: tests and the fuzz stage
/// (`cargo xtask fuzz`) build old spools with it; the spool only reads this format.
pub fn encode_v1(out: &mut Vec<u8>, appended_ms: u64, payload: &[u8]) {
    let mut h = crc32fast::Hasher::new();
    h.update(&appended_ms.to_le_bytes());
    h.update(payload);
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(&h.finalize().to_le_bytes());
    out.extend_from_slice(&appended_ms.to_le_bytes());
    out.extend_from_slice(payload);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_damage() {
        let mut buf = Vec::new();
        encode(&mut buf, 42, b"hello");
        assert_eq!(buf.len() as u64, encoded_len(5));
        assert_eq!(buf[..8], MAGIC);
        assert_eq!(
            decode(&buf),
            Decoded::Record {
                appended_ms: 42,
                payload: b"hello",
                size: buf.len()
            }
        );
        assert_eq!(
            decode(&buf[..buf.len() - 1]),
            Decoded::Incomplete { need: buf.len() }
        );
        assert_eq!(decode(&buf[..3]), Decoded::Incomplete { need: HEADER_LEN });
        assert_eq!(decode(b"\x00\x01"), Decoded::Corrupt);
        // Every single flipped byte, header or payload, is caught.
        for i in 0..buf.len() {
            let mut flipped = buf.clone();
            flipped[i] ^= 0x10;
            assert_eq!(decode(&flipped), Decoded::Corrupt, "flip at {i}");
        }
        // A length past the cap with a header checksum to match is still refused.
        let mut huge = buf.clone();
        huge[8..12].copy_from_slice(&(MAX_PAYLOAD as u32 + 1).to_le_bytes());
        let crc = crc32fast::hash(&huge[8..24]);
        huge[24..28].copy_from_slice(&crc.to_le_bytes());
        assert_eq!(decode(&huge), Decoded::Corrupt);
    }

    /// Bytes the previous version's encoder wrote (captured from it): they still decode.
    #[test]
    fn v1_records_of_earlier_versions_still_decode() {
        let old: &[u8] = &[
            0x0c, 0x00, 0x00, 0x00, 0x67, 0x75, 0x8e, 0x9b, 0x00, 0x68, 0xe5, 0xcf, 0x8b, 0x01,
            0x00, 0x00, b'o', b'l', b'd', b' ', b'r', b'e', b'c', b'o', b'r', b'd', b' ', b'0',
        ];
        assert_eq!(
            Format::V1.decode(old),
            Decoded::Record {
                appended_ms: 1_700_000_000_000,
                payload: b"old record 0",
                size: old.len()
            }
        );
        let mut again = Vec::new();
        encode_v1(&mut again, 1_700_000_000_000, b"old record 0");
        assert_eq!(again, old);
        assert!(v1_plausible(old));
        // A v1 segment can never start with the v2 marker.
        assert!(MAGIC[3] > (MAX_PAYLOAD >> 24) as u8);
        let mut flipped = old.to_vec();
        flipped[20] ^= 1;
        assert_eq!(decode_v1(&flipped), Decoded::Corrupt);
    }
}
