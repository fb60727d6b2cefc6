//! The on-disk record: `len: u32 LE | crc: u32 LE | appended_ms: u64 LE | payload[len]`.
//! `crc` is CRC-32 (IEEE) over the `appended_ms` bytes and the payload, so a torn or flipped
//! record is recognised and never handed to the writer.

/// Bytes before the payload.
pub const HEADER_LEN: usize = 16;

/// Anything longer is corruption, not data (requests are capped far below this).
pub const MAX_PAYLOAD: usize = 64 << 20;

/// Appends one encoded record to `out`.
pub fn encode(out: &mut Vec<u8>, appended_ms: u64, payload: &[u8]) {
    let mut h = crc32fast::Hasher::new();
    h.update(&appended_ms.to_le_bytes());
    h.update(payload);
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(&h.finalize().to_le_bytes());
    out.extend_from_slice(&appended_ms.to_le_bytes());
    out.extend_from_slice(payload);
}

/// The encoded size of a payload of `len` bytes.
pub fn encoded_len(len: usize) -> u64 {
    (HEADER_LEN + len) as u64
}

/// What [`decode`] found at the start of a buffer.
#[derive(Debug, PartialEq, Eq)]
pub enum Decoded<'a> {
    /// A whole, checksummed record of `size` bytes (header included).
    Record {
        appended_ms: u64,
        payload: &'a [u8],
        size: usize,
    },
    /// The buffer ends inside a record; `need` bytes would complete it (header included).
    Incomplete { need: usize },
    /// The bytes here are not a record (bad checksum or absurd length).
    Corrupt,
}

/// Decodes the record at the start of `buf`.
pub fn decode(buf: &[u8]) -> Decoded<'_> {
    if buf.len() < HEADER_LEN {
        return Decoded::Incomplete { need: HEADER_LEN };
    }
    let len = u32::from_le_bytes(buf[0..4].try_into().expect("4 bytes")) as usize;
    if len > MAX_PAYLOAD {
        return Decoded::Corrupt;
    }
    let size = HEADER_LEN + len;
    if buf.len() < size {
        return Decoded::Incomplete { need: size };
    }
    let crc = u32::from_le_bytes(buf[4..8].try_into().expect("4 bytes"));
    let mut h = crc32fast::Hasher::new();
    h.update(&buf[8..size]);
    if h.finalize() != crc {
        return Decoded::Corrupt;
    }
    Decoded::Record {
        appended_ms: u64::from_le_bytes(buf[8..16].try_into().expect("8 bytes")),
        payload: &buf[HEADER_LEN..size],
        size,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_damage() {
        let mut buf = Vec::new();
        encode(&mut buf, 42, b"hello");
        assert_eq!(buf.len() as u64, encoded_len(5));
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
        let mut flipped = buf.clone();
        *flipped.last_mut().unwrap() ^= 1;
        assert_eq!(decode(&flipped), Decoded::Corrupt);
        let mut huge = buf.clone();
        huge[3] = 0xff;
        assert_eq!(decode(&huge), Decoded::Corrupt);
    }
}
