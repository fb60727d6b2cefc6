//! Finding the intact records around damage.
//!
//! One search, `next_intact`, used by recovery (a whole segment in memory, [`walk`]) and by the
//! running reader ([`crate::SpoolReader`], a segment file read in bounded chunks), so both skip
//! exactly the same bytes and deliver exactly the same records. [`walk`] and [`detect`] are public for the fuzz stage of
//! `cargo xtask chaos`, which feeds them generated segments.

use std::borrow::Cow;
use std::fs::File;
use std::io;
use std::ops::Range;
use std::os::unix::fs::FileExt as _;

use super::record::{self, Decoded, Format};

/// Bytes searched per read while scanning for the next record.
const SCAN_CHUNK: u64 = 1 << 20;

/// Where a segment's bytes come from.
pub(crate) trait Source {
    /// The `len` bytes at `off`; the caller keeps them inside the segment.
    fn read_at(&self, off: u64, len: usize) -> io::Result<Cow<'_, [u8]>>;
}

impl Source for [u8] {
    fn read_at(&self, off: u64, len: usize) -> io::Result<Cow<'_, [u8]>> {
        let off = off as usize;
        self.get(off..off + len)
            .map(Cow::Borrowed)
            .ok_or_else(|| io::Error::from(io::ErrorKind::UnexpectedEof))
    }
}

/// A segment file, read with `pread`.
pub(crate) struct FileSource<'a>(pub &'a File);

impl Source for FileSource<'_> {
    fn read_at(&self, off: u64, len: usize) -> io::Result<Cow<'_, [u8]>> {
        let mut buf = vec![0u8; len];
        self.0.read_exact_at(&mut buf, off)?;
        Ok(Cow::Owned(buf))
    }
}

/// The size of the intact record at `off`, if one starts there and ends by `end`.
pub(crate) fn record_at<S: Source + ?Sized>(
    src: &S,
    format: Format,
    off: u64,
    end: u64,
) -> io::Result<Option<usize>> {
    let hl = format.header_len();
    if off + hl as u64 > end {
        return Ok(None);
    }
    let need = match format.decode(&src.read_at(off, hl)?) {
        Decoded::Record { size, .. } => return Ok(Some(size)),
        Decoded::Incomplete { need } => need,
        Decoded::Corrupt => return Ok(None),
    };
    if off + need as u64 > end {
        return Ok(None);
    }
    Ok(match format.decode(&src.read_at(off, need)?) {
        Decoded::Record { size, .. } => Some(size),
        _ => None,
    })
}

/// The first offset in `(from, end)` where an intact record of `format` starts: where a reader
/// that found no record at `from` picks up again. `None`: none before `end`.
///
/// v2 looks only at the sync marker's occurrences; v1, which has none, at every offset whose
/// header is plausible. Either way a candidate counts only once its checksums hold, so a payload
/// that happens to hold the marker does not fool it. Reads at most [`SCAN_CHUNK`] plus one
/// record at a time.
pub(crate) fn next_intact<S: Source + ?Sized>(
    src: &S,
    format: Format,
    from: u64,
    end: u64,
) -> io::Result<Option<u64>> {
    let hl = format.header_len() as u64;
    let mut at = from + 1;
    while at + hl <= end {
        // Candidates start in [at, scan_to); read a header's worth more so the last are whole.
        let scan_to = (at + SCAN_CHUNK).min(end + 1 - hl);
        let buf = src.read_at(at, (scan_to - at + hl - 1) as usize)?;
        let starts = (scan_to - at) as usize;
        let candidates: Box<dyn Iterator<Item = usize> + '_> = match format {
            Format::V2 => Box::new(
                memchr::memmem::find_iter(&buf, &record::MAGIC)
                    .take_while(move |&i| i < starts)
                    .filter(|&i| record::v2_plausible(&buf[i..])),
            ),
            Format::V1 => Box::new((0..starts).filter(|&i| record::v1_plausible(&buf[i..]))),
        };
        for i in candidates {
            let o = at + i as u64;
            if record_at(src, format, o, end)?.is_some() {
                return Ok(Some(o));
            }
        }
        at = scan_to;
    }
    Ok(None)
}

/// A segment as recovery sees it.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Walk {
    /// Byte ranges that are not intact records, in order. Each but perhaps the last is followed
    /// by an intact record; the last may run to the end of the segment.
    pub damaged: Vec<Range<u64>>,
    /// Intact records.
    pub records: u64,
}

/// Walks a whole segment: records one after another, and past each stretch of damage to the
/// next intact record.
pub fn walk(data: &[u8], format: Format) -> io::Result<Walk> {
    let end = data.len() as u64;
    let mut w = Walk::default();
    let mut off = 0u64;
    while off < end {
        if let Decoded::Record { size, .. } = format.decode(&data[off as usize..]) {
            off += size as u64;
            w.records += 1;
            continue;
        }
        let to = next_intact(data, format, off, end)?.unwrap_or(end);
        w.damaged.push(off..to);
        off = to;
    }
    Ok(w)
}

/// The format of a segment, from its bytes: v2 if it starts with the marker; v1 if it starts
/// with a v1 record; when its first record is damaged, whichever format finds an intact record
/// after it (v2 if neither does: then every byte is damage anyway).
pub fn detect(data: &[u8]) -> io::Result<Format> {
    if data.is_empty() || data.starts_with(&record::MAGIC) {
        return Ok(Format::V2);
    }
    if let Decoded::Record { .. } = record::decode_v1(data) {
        return Ok(Format::V1);
    }
    let end = data.len() as u64;
    if next_intact(data, Format::V2, 0, end)?.is_none()
        && next_intact(data, Format::V1, 0, end)?.is_some()
    {
        return Ok(Format::V1);
    }
    Ok(Format::V2)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn records(payloads: &[&[u8]]) -> (Vec<u8>, Vec<u64>) {
        let mut buf = Vec::new();
        let mut starts = Vec::new();
        for p in payloads {
            starts.push(buf.len() as u64);
            record::encode(&mut buf, 7, p);
        }
        (buf, starts)
    }

    #[test]
    fn walk_skips_a_damaged_record_and_keeps_the_rest() {
        let (mut data, starts) = records(&[b"a", b"bb", b"ccc", b"dddd"]);
        data[starts[1] as usize + 28] ^= 0xff;
        let w = walk(&data, Format::V2).unwrap();
        assert_eq!(w.records, 3);
        assert_eq!(w.damaged, vec![starts[1]..starts[2]]);
    }

    #[test]
    fn the_marker_inside_a_payload_does_not_fool_the_search() {
        // A payload holding a bare marker, then a whole header that holds (marker, length and
        // header checksum) over four bytes that are not the payload it vouches for.
        let mut fake = Vec::new();
        record::encode(&mut fake, 7, b"abcd");
        let n = fake.len();
        fake[n - 4..].copy_from_slice(b"wxyz");
        let mut trap = b"xx".to_vec();
        trap.extend_from_slice(&record::MAGIC);
        trap.extend_from_slice(&fake);
        let (mut data, starts) = records(&[b"first", &trap, b"last"]);
        assert!(record::v2_plausible(&data[starts[1] as usize + 38..]));
        // Damage the trap record's header: the search passes both markers in its payload
        // (the checksums fail) and lands on the record after it.
        data[starts[1] as usize + 9] ^= 1;
        let w = walk(&data, Format::V2).unwrap();
        assert_eq!(w.damaged, vec![starts[1]..starts[2]]);
        assert_eq!(w.records, 2);
    }

    #[test]
    fn the_file_search_finds_what_the_memory_search_finds_across_chunks() {
        // Records around the 1 MiB scan chunk boundary, damage at the start.
        let big = vec![b'z'; SCAN_CHUNK as usize - 40];
        let (mut data, starts) = records(&[b"a", &big, b"b", b"c"]);
        data[1] ^= 1;
        data[starts[1] as usize] ^= 1;
        let f = tempfile::tempfile().unwrap();
        f.write_all_at(&data, 0).unwrap();
        let end = data.len() as u64;
        let in_memory = next_intact(&data[..], Format::V2, 0, end).unwrap();
        assert_eq!(in_memory, Some(starts[2]));
        assert_eq!(
            next_intact(&FileSource(&f), Format::V2, 0, end).unwrap(),
            in_memory
        );
        // Bounded by `end`: a record that would end past it does not count.
        assert_eq!(
            next_intact(&FileSource(&f), Format::V2, 0, starts[3] + 5).unwrap(),
            Some(starts[2])
        );
        assert_eq!(
            next_intact(&FileSource(&f), Format::V2, starts[2], starts[3] + 5).unwrap(),
            None
        );
    }

    #[test]
    fn v1_segments_resync_too_and_formats_are_told_apart() {
        let mut v1 = Vec::new();
        let mut starts = Vec::new();
        for (i, p) in [&b"one"[..], b"two", b"three"].iter().enumerate() {
            starts.push(v1.len() as u64);
            record::encode_v1(&mut v1, 1_700_000_000_000 + i as u64, p);
        }
        assert_eq!(detect(&v1).unwrap(), Format::V1);
        // A segment of one old record: nothing after it to search for.
        assert_eq!(detect(&v1[..starts[1] as usize]).unwrap(), Format::V1);
        let mut damaged = v1.clone();
        damaged[2] ^= 0x40;
        assert_eq!(detect(&damaged).unwrap(), Format::V1);
        let w = walk(&damaged, Format::V1).unwrap();
        assert_eq!(w.damaged, vec![0..starts[1]]);
        assert_eq!(w.records, 2);
        let (mut v2, _) = records(&[b"a", b"b"]);
        assert_eq!(detect(&v2).unwrap(), Format::V2);
        v2[0] ^= 1;
        assert_eq!(detect(&v2).unwrap(), Format::V2);
        assert_eq!(detect(&[]).unwrap(), Format::V2);
    }
}
