//! Spool tests, including a model-based property test: random appends, commits, torn writes
//! (a crash in the middle of a write) and reopenings must always give back exactly the
//! acknowledged, not-yet-committed records, in order.

use std::collections::VecDeque;
use std::fs::OpenOptions;
use std::io::Write as _;

use proptest::prelude::*;

use super::*;

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn read_all(spool: &Spool) -> Vec<Record> {
    drain(&mut spool.reader(), 1 << 20)
}

/// Everything `r` reads from where it is, `max` bytes at a time.
fn drain(r: &mut SpoolReader, max: usize) -> Vec<Record> {
    let mut out = Vec::new();
    loop {
        let got = r.read(max).unwrap();
        if got.is_empty() {
            return out;
        }
        out.extend(got);
    }
}

fn last_segment(dir: &Path) -> PathBuf {
    let mut segs: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().and_then(|e| e.to_str()) == Some(SEGMENT_EXT))
        .collect();
    segs.sort();
    segs.pop().unwrap()
}

#[test]
fn append_read_commit_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let rt = rt();
    let (spool, rec) = Spool::open(dir.path(), 1 << 20, 256).unwrap();
    assert_eq!(rec, Recovery::default());
    let mut ends = Vec::new();
    for i in 0..50u32 {
        ends.push(
            rt.block_on(spool.append(format!("record {i}").into_bytes()))
                .unwrap(),
        );
    }
    let all = read_all(&spool);
    assert_eq!(all.len(), 50);
    assert_eq!(all[7].payload, &b"record 7"[..]);
    assert_eq!(all.iter().map(|r| r.end).collect::<Vec<_>>(), ends);
    let segments_before = std::fs::read_dir(dir.path()).unwrap().count();
    spool.commit(all[29].end).unwrap();
    assert!(
        std::fs::read_dir(dir.path()).unwrap().count() < segments_before,
        "consumed sealed segments are deleted"
    );
    let used = spool.used_bytes();
    drop(spool);
    let (spool, rec) = Spool::open(dir.path(), 1 << 20, 256).unwrap();
    let again = read_all(&spool);
    assert_eq!(again.len(), 20);
    assert_eq!(again[0].payload, &b"record 30"[..]);
    assert_eq!(rec.torn_bytes, 0);
    assert!(spool.used_bytes() <= used);
}

#[test]
fn cap_refuses_with_full_and_frees_on_commit() {
    let dir = tempfile::tempdir().unwrap();
    let rt = rt();
    let (spool, _) = Spool::open(dir.path(), 1000, 300).unwrap();
    let mut n = 0;
    let err = loop {
        match rt.block_on(spool.append(vec![b'x'; 100])) {
            Ok(_) => n += 1,
            Err(e) => break e,
        }
    };
    assert!(matches!(err, SpoolError::Full { .. }), "{err}");
    assert_eq!(n, 1000 / record::encoded_len(100));
    let all = read_all(&spool);
    spool.commit(all.last().unwrap().end).unwrap();
    // Sealed segments are gone; there is room again.
    rt.block_on(spool.append(vec![b'y'; 100])).unwrap();
}

#[test]
fn concurrent_appends_share_fsyncs_and_all_land() {
    let dir = tempfile::tempdir().unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let (spool, _) = Spool::open(dir.path(), 64 << 20, 1 << 20).unwrap();
    rt.block_on(async {
        let mut tasks = Vec::new();
        for t in 0..32 {
            let s = spool.clone();
            tasks.push(tokio::spawn(async move {
                for i in 0..20 {
                    s.append(format!("{t}-{i}").into_bytes()).await.unwrap();
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
    });
    let all = read_all(&spool);
    assert_eq!(all.len(), 640);
    let mut seen: Vec<String> = all
        .iter()
        .map(|r| String::from_utf8(r.payload.to_vec()).unwrap())
        .collect();
    seen.sort();
    seen.dedup();
    assert_eq!(seen.len(), 640);
}

/// Segment files on disk, by start position.
fn segments(dir: &Path) -> Vec<(u64, PathBuf)> {
    let mut segs: Vec<(u64, PathBuf)> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().and_then(|e| e.to_str()) == Some(SEGMENT_EXT))
        .map(|p| {
            let start = p.file_stem().unwrap().to_str().unwrap().parse().unwrap();
            (start, p)
        })
        .collect();
    segs.sort();
    segs
}

/// XORs the byte at `off` of `path` with `mask`.
fn flip(path: &Path, off: u64, mask: u8) {
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap();
    let mut b = [0u8];
    f.read_exact_at(&mut b, off).unwrap();
    f.write_all_at(&[b[0] ^ mask], off).unwrap();
}

/// A copy in `damaged/`, read back with what its name says.
#[derive(Debug)]
struct Copy {
    segment: u64,
    offset: u64,
    tail: bool,
    bytes: Vec<u8>,
}

impl Copy {
    fn range(&self) -> std::ops::Range<u64> {
        self.segment + self.offset..self.segment + self.offset + self.bytes.len() as u64
    }
}

fn damaged_copies(dir: &Path) -> Vec<Copy> {
    let d = dir.join(DAMAGED_DIR);
    if !d.exists() {
        return Vec::new();
    }
    let mut out: Vec<Copy> = std::fs::read_dir(&d)
        .unwrap()
        .map(|e| {
            let path = e.unwrap().path();
            let name = path.file_name().unwrap().to_str().unwrap().to_owned();
            let stem = name
                .strip_suffix(".bin")
                .unwrap_or_else(|| panic!("{name}: only finished copies are left"));
            let (stem, tail) = match stem.strip_suffix("-tail") {
                Some(s) => (s, true),
                None => (stem, false),
            };
            let (segment, rest) = stem.split_once(".wal-offset-").unwrap();
            let (offset, len) = rest.split_once("-len-").unwrap();
            let bytes = std::fs::read(&path).unwrap();
            assert_eq!(bytes.len(), len.parse::<usize>().unwrap(), "{name}");
            Copy {
                segment: segment.parse().unwrap(),
                offset: offset.parse().unwrap(),
                tail,
                bytes,
            }
        })
        .collect();
    out.sort_by_key(|c| c.range().start);
    out
}

fn payloads(records: &[Record]) -> Vec<Vec<u8>> {
    records.iter().map(|r| r.payload.to_vec()).collect()
}

#[test]
fn a_flip_in_a_sealed_segments_middle_record_keeps_the_records_after_it() {
    let dir = tempfile::tempdir().unwrap();
    let rt = rt();
    let (spool, _) = Spool::open(dir.path(), 1 << 20, 200).unwrap();
    let sent: Vec<Vec<u8>> = (0..10u8).map(|i| vec![i; 40]).collect();
    let ends: Vec<u64> = sent
        .iter()
        .map(|p| rt.block_on(spool.append(p.clone())).unwrap())
        .collect();
    drop(spool);
    let segs = segments(dir.path());
    assert!(segs.len() >= 3, "{segs:?}");
    let (first, path) = &segs[0];
    let in_first = ends.iter().filter(|&&e| e <= segs[1].0).count();
    assert!(in_first >= 3);
    let victim = in_first / 2;
    let size = record::encoded_len(40);
    let (start, end) = (ends[victim] - size, ends[victim]);
    flip(path, start - first + 40, 0x20);
    let on_disk = std::fs::read(path).unwrap();

    let (spool, rec) = Spool::open(dir.path(), 1 << 20, 200).unwrap();
    assert_eq!(
        (rec.damaged_ranges, rec.damaged_bytes, rec.torn_bytes),
        (1, size, 0)
    );
    assert_eq!(
        std::fs::read(path).unwrap(),
        on_disk,
        "a sealed segment is left as it is"
    );
    let got = read_all(&spool);
    let mut want = sent.clone();
    want.remove(victim);
    assert_eq!(payloads(&got), want);
    let mut want_ends = ends.clone();
    want_ends.remove(victim);
    assert_eq!(got.iter().map(|r| r.end).collect::<Vec<_>>(), want_ends);
    let copies = damaged_copies(dir.path());
    assert_eq!(copies.len(), 1);
    assert_eq!((copies[0].segment, copies[0].tail), (*first, false));
    assert_eq!(copies[0].range(), start..end);
    assert_eq!(
        copies[0].bytes,
        on_disk[(start - first) as usize..(end - first) as usize]
    );
    let counts = DamageCounts {
        inside_ranges: 1,
        inside_bytes: size,
        ..DamageCounts::default()
    };
    assert_eq!(spool.damage(), counts);
    // Read again from the checkpoint: the range is skipped, not counted twice.
    assert_eq!(payloads(&read_all(&spool)), want);
    assert_eq!(spool.damage(), counts);
    // Consuming everything frees the segment as usual.
    spool.commit(got.last().unwrap().end).unwrap();
    assert!(!path.exists());
}

#[test]
fn a_torn_tail_in_the_active_segment_is_copied_then_cut() {
    let dir = tempfile::tempdir().unwrap();
    let rt = rt();
    {
        let (spool, _) = Spool::open(dir.path(), 1 << 20, 1 << 20).unwrap();
        for i in 0..3u8 {
            rt.block_on(spool.append(vec![i; 10])).unwrap();
        }
    }
    let (_, active) = segments(dir.path()).pop().unwrap();
    let intact = std::fs::metadata(&active).unwrap().len();
    // A crash in the middle of a write: a whole header and part of the payload.
    let mut torn = Vec::new();
    record::encode(&mut torn, 1, &[9; 30]);
    torn.truncate(40);
    OpenOptions::new()
        .append(true)
        .open(&active)
        .unwrap()
        .write_all(&torn)
        .unwrap();
    let (spool, rec) = Spool::open(dir.path(), 1 << 20, 1 << 20).unwrap();
    assert_eq!((rec.torn_bytes, rec.damaged_ranges), (40, 0));
    assert_eq!(std::fs::metadata(&active).unwrap().len(), intact);
    let copies = damaged_copies(dir.path());
    assert_eq!(copies.len(), 1);
    assert!(copies[0].tail);
    assert_eq!(copies[0].offset, intact);
    assert_eq!(copies[0].bytes, torn);
    assert_eq!(
        payloads(&read_all(&spool)),
        vec![vec![0; 10], vec![1; 10], vec![2; 10]]
    );
    assert_eq!(
        spool.damage(),
        DamageCounts {
            tail_ranges: 1,
            tail_bytes: 40,
            ..DamageCounts::default()
        }
    );

    // Damage to the last record of the active segment looks the same from the disk: cut too,
    // after the copy, with the records before it kept.
    rt.block_on(spool.append(vec![3; 10])).unwrap();
    drop(spool);
    let (_, active) = segments(dir.path()).pop().unwrap();
    let len = std::fs::metadata(&active).unwrap().len();
    flip(&active, len - 1, 0xff);
    let (spool, rec) = Spool::open(dir.path(), 1 << 20, 1 << 20).unwrap();
    assert_eq!(rec.torn_bytes, record::encoded_len(10));
    assert_eq!(std::fs::metadata(&active).unwrap().len(), 0);
    assert_eq!(payloads(&read_all(&spool)).len(), 3);
    assert_eq!(damaged_copies(dir.path()).len(), 2);
}

#[test]
fn when_damaged_cannot_be_written_the_bytes_stay_and_delivery_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let rt = rt();
    let (spool, _) = Spool::open(dir.path(), 1 << 20, 1 << 20).unwrap();
    for i in 0..4u8 {
        rt.block_on(spool.append(vec![i; 10])).unwrap();
    }
    drop(spool);
    // A file where the directory should go: every copy fails.
    std::fs::write(dir.path().join(DAMAGED_DIR), b"in the way").unwrap();
    let (_, active) = segments(dir.path()).pop().unwrap();
    flip(&active, record::encoded_len(10) + 30, 0x08);
    let mut torn = Vec::new();
    record::encode(&mut torn, 1, &[9; 30]);
    torn.truncate(35);
    OpenOptions::new()
        .append(true)
        .open(&active)
        .unwrap()
        .write_all(&torn)
        .unwrap();
    let len = std::fs::metadata(&active).unwrap().len();
    let (spool, rec) = Spool::open(dir.path(), 1 << 20, 1 << 20).unwrap();
    assert_eq!((rec.damaged_ranges, rec.torn_bytes), (1, 35));
    assert_eq!(
        std::fs::metadata(&active).unwrap().len(),
        len,
        "a tail that could not be copied is not cut off"
    );
    assert_eq!(
        payloads(&read_all(&spool)),
        vec![vec![0; 10], vec![2; 10], vec![3; 10]]
    );
    rt.block_on(spool.append(b"later".to_vec())).unwrap();
    assert_eq!(payloads(&read_all(&spool)).len(), 4);
    assert_eq!(spool.damage().tail_bytes, 35);
}

#[test]
fn payloads_holding_the_marker_do_not_confuse_resync() {
    // A bare marker, then a header that holds (marker, length, header checksum) over bytes that
    // are not the payload it vouches for.
    let mut trap = b"x".to_vec();
    trap.extend_from_slice(&record::MAGIC);
    let mut fake = Vec::new();
    record::encode(&mut fake, 1, b"phantom");
    let n = fake.len();
    fake[n - 7..].copy_from_slice(b"PHANTOM");
    trap.extend_from_slice(&fake);
    trap.extend_from_slice(&record::MAGIC);
    let sent: Vec<Vec<u8>> = vec![
        b"a".to_vec(),
        trap.clone(),
        b"b".to_vec(),
        trap.clone(),
        b"c".to_vec(),
    ];
    for reopen in [true, false] {
        let dir = tempfile::tempdir().unwrap();
        let rt = rt();
        let (spool, _) = Spool::open(dir.path(), 1 << 20, 1 << 20).unwrap();
        let ends: Vec<u64> = sent
            .iter()
            .map(|p| rt.block_on(spool.append(p.clone())).unwrap())
            .collect();
        let (seg, path) = segments(dir.path()).pop().unwrap();
        // Damage the record before the first trap (the search must land on the trap's own
        // header, not a marker inside it) and the second trap's header (the search must pass
        // both markers inside it and land on "c").
        let start = |i: usize| ends[i] - record::encoded_len(sent[i].len()) - seg;
        flip(&path, start(0) + 8, 1);
        flip(&path, start(3) + 8, 1);
        let spool = if reopen {
            drop(spool);
            Spool::open(dir.path(), 1 << 20, 1 << 20).unwrap().0
        } else {
            spool
        };
        let got = read_all(&spool);
        assert_eq!(
            payloads(&got),
            vec![trap.clone(), b"b".to_vec(), b"c".to_vec()],
            "reopen: {reopen}"
        );
        let copies = damaged_copies(dir.path());
        let ranges: Vec<_> = copies.iter().map(Copy::range).collect();
        assert_eq!(
            ranges,
            vec![
                seg + start(0)..seg + start(1),
                seg + start(3)..seg + start(4)
            ]
        );
    }
}

#[test]
fn the_reader_skips_damage_it_meets_while_running() {
    let dir = tempfile::tempdir().unwrap();
    let rt = rt();
    let (spool, _) = Spool::open(dir.path(), 1 << 20, 300).unwrap();
    let sent: Vec<Vec<u8>> = (0..12u8).map(|i| vec![i; 50]).collect();
    let ends: Vec<u64> = sent
        .iter()
        .map(|p| rt.block_on(spool.append(p.clone())).unwrap())
        .collect();
    let segs = segments(dir.path());
    assert!(segs.len() >= 3);
    let size = record::encoded_len(50);
    let locate = |i: usize| {
        let start = ends[i] - size;
        let (s, p) = segs.iter().rev().find(|(s, _)| *s <= start).unwrap();
        (p.clone(), start - s)
    };
    // One record in a sealed segment, and the active segment's last record: the reader is
    // past neither yet.
    let (p, off) = locate(2);
    flip(&p, off + 50, 0x01);
    let (p, off) = locate(11);
    flip(&p, off, 0x80);
    let mut reader = spool.reader();
    // Small reads: damage is met at the start of a read and in the middle of one.
    let got = drain(&mut reader, 100);
    let mut want = sent.clone();
    want.remove(11);
    want.remove(2);
    assert_eq!(payloads(&got), want);
    assert_eq!(reader.position(), spool.committed());
    let counts = DamageCounts {
        inside_ranges: 2,
        inside_bytes: 2 * size,
        ..DamageCounts::default()
    };
    assert_eq!(spool.damage(), counts);
    assert_eq!(damaged_copies(dir.path()).len(), 2);
    // A new reader skips what the first one found, without counting it again, and records
    // appended after the damage are delivered.
    rt.block_on(spool.append(b"after".to_vec())).unwrap();
    want.push(b"after".to_vec());
    assert_eq!(payloads(&read_all(&spool)), want);
    assert_eq!(spool.damage(), counts);
    // Read again from a position seen earlier, as the writer reads a batch back for its
    // insert: the same records from there on, the damage skipped and not counted again.
    let got = drain(&mut spool.reader_at(ends[1]), 100);
    assert_eq!(payloads(&got), want[2..]);
    assert_eq!(spool.damage(), counts);
}

/// Two segments and a checkpoint exactly as the previous version wrote them (the bytes of its
/// encoder, `record::encode_v1`): records "old record 0".."old record 4", the first consumed.
fn write_v1_spool(dir: &Path) {
    let hex = |s: &str| -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    };
    std::fs::write(
        segment_path(dir, 0),
        hex(
            "0c00000067758e9b0068e5cf8b0100006f6c64207265636f726420300c000000b77eee89016\
             8e5cf8b0100006f6c64207265636f726420310c000000c7624ebf0268e5cf8b0100006f6c6420\
             7265636f72642032",
        ),
    )
    .unwrap();
    std::fs::write(
        segment_path(dir, 84),
        hex(
            "0c000000993f6e636468e5cf8b0100006f6c64207265636f726420330c0000007c916d986568\
             e5cf8b0100006f6c64207265636f72642034",
        ),
    )
    .unwrap();
    write_checkpoint(dir, 28).unwrap();
    // The bytes are what the old encoder makes.
    for (start, first_ms, range) in [(0, 1_700_000_000_000, 0..3), (84, 1_700_000_000_100, 3..5)] {
        let mut again = Vec::new();
        for (k, i) in range.enumerate() {
            let p = format!("old record {i}");
            record::encode_v1(&mut again, first_ms + k as u64, p.as_bytes());
        }
        assert_eq!(std::fs::read(segment_path(dir, start)).unwrap(), again);
    }
}

#[test]
fn a_spool_written_by_the_previous_version_is_recovered() {
    let dir = tempfile::tempdir().unwrap();
    write_v1_spool(dir.path());
    let rt = rt();
    let old: Vec<Vec<u8>> = (1..5)
        .map(|i| format!("old record {i}").into_bytes())
        .collect();
    let (spool, rec) = Spool::open(dir.path(), 1 << 20, 1 << 20).unwrap();
    assert_eq!(rec.pending_bytes, 140 - 28);
    assert_eq!((rec.torn_bytes, rec.damaged_ranges), (0, 0));
    let got = read_all(&spool);
    assert_eq!(payloads(&got), old);
    assert_eq!(
        got.iter().map(|r| r.end).collect::<Vec<_>>(),
        vec![56, 84, 112, 140]
    );
    assert_eq!(got[0].appended_ms, 1_700_000_000_001);
    // New records go to a new-format segment after the old ones.
    assert_eq!(
        rt.block_on(spool.append(b"new".to_vec())).unwrap(),
        140 + 31
    );
    drop(spool);
    let (spool, _) = Spool::open(dir.path(), 1 << 20, 1 << 20).unwrap();
    let mut want = old.clone();
    want.push(b"new".to_vec());
    assert_eq!(payloads(&read_all(&spool)), want);
    spool.commit(140).unwrap();
    assert!(!segment_path(dir.path(), 0).exists());
    assert_eq!(payloads(&read_all(&spool)), vec![b"new".to_vec()]);

    // Damage in an old sealed segment: the records after it are found without a marker.
    let dir = tempfile::tempdir().unwrap();
    write_v1_spool(dir.path());
    flip(&segment_path(dir.path(), 0), 28 + 20, 0x04);
    let (spool, rec) = Spool::open(dir.path(), 1 << 20, 1 << 20).unwrap();
    assert_eq!((rec.damaged_ranges, rec.damaged_bytes), (1, 28));
    let mut want = old.clone();
    want.remove(0);
    assert_eq!(payloads(&read_all(&spool)), want);
    let copies = damaged_copies(dir.path());
    assert_eq!(copies.len(), 1);
    assert_eq!(copies[0].range(), 28..56);
}

#[derive(Debug, Clone)]
enum Op {
    Append(Vec<u8>),
    /// Commit the first `n` of the records currently readable.
    Commit(usize),
    /// Crash in the middle of a write: garbage or a partial record at the tail, then reopen.
    CrashTorn(Vec<u8>),
    /// Clean restart.
    Reopen,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => proptest::collection::vec(any::<u8>(), 0..300).prop_map(Op::Append),
        2 => (0usize..8).prop_map(Op::Commit),
        1 => proptest::collection::vec(any::<u8>(), 1..40).prop_map(Op::CrashTorn),
        1 => Just(Op::Reopen),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn model_acknowledged_records_survive_crashes(ops in proptest::collection::vec(op(), 1..40), seg in 64u64..2048) {
        let dir = tempfile::tempdir().unwrap();
        let rt = rt();
        let (mut spool, _) = Spool::open(dir.path(), 1 << 24, seg).unwrap();
        // The model: acknowledged payloads not yet committed, in order.
        let mut model: VecDeque<Vec<u8>> = VecDeque::new();
        for op in ops {
            match op {
                Op::Append(p) => {
                    rt.block_on(spool.append(p.clone())).unwrap();
                    model.push_back(p);
                }
                Op::Commit(n) => {
                    let all = read_all(&spool);
                    prop_assert_eq!(all.len(), model.len());
                    let n = n.min(all.len());
                    if n > 0 {
                        spool.commit(all[n - 1].end).unwrap();
                        for _ in 0..n { model.pop_front(); }
                    }
                }
                Op::CrashTorn(garbage) => {
                    drop(spool);
                    // Give the appender thread a moment to drop its file: it exits when the
                    // channel closes; the write below works either way on Unix.
                    let mut f = OpenOptions::new().append(true).open(last_segment(dir.path())).unwrap();
                    // Half a real header, then garbage: what a torn write leaves.
                    let mut rec = Vec::new();
                    record::encode(&mut rec, 1, &garbage);
                    f.write_all(&rec[..rec.len() - 1]).unwrap();
                    drop(f);
                    let (s, r) = Spool::open(dir.path(), 1 << 24, seg).unwrap();
                    prop_assert!(r.torn_bytes > 0);
                    spool = s;
                }
                Op::Reopen => {
                    drop(spool);
                    let (s, r) = Spool::open(dir.path(), 1 << 24, seg).unwrap();
                    prop_assert_eq!(r.torn_bytes, 0);
                    spool = s;
                }
            }
            let got: Vec<Vec<u8>> = read_all(&spool).into_iter().map(|r| r.payload.to_vec()).collect();
            prop_assert_eq!(&got, &model.iter().cloned().collect::<Vec<_>>());
        }
    }
}

/// A payload, sometimes holding the sync marker.
fn payload() -> impl Strategy<Value = Vec<u8>> {
    (
        proptest::collection::vec(any::<u8>(), 0..120),
        any::<bool>(),
        any::<prop::sample::Index>(),
    )
        .prop_map(|(mut p, marker, at)| {
            if marker {
                let at = at.index(p.len() + 1);
                p.splice(at..at, record::MAGIC);
            }
            p
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    /// Records across several segments, some consumed; then bytes flipped anywhere on disk and,
    /// when the spool is reopened, the active segment's end cut off (a torn write). Every record
    /// the damage did not touch is delivered exactly once, in order, by recovery or by the
    /// running reader; `damaged/` holds exactly the damaged bytes, and nothing else.
    #[test]
    fn damage_anywhere_loses_only_the_records_it_touched(
        sent in proptest::collection::vec(payload(), 4..32),
        seg in 150u64..1200,
        consumed in 0usize..6,
        flips in proptest::collection::vec((any::<prop::sample::Index>(), 1u8..=255), 1..4),
        cut in proptest::option::of(1u64..200),
        reopen in any::<bool>(),
    ) {
        let dir = tempfile::tempdir().unwrap();
        let rt = rt();
        let (spool, _) = Spool::open(dir.path(), 1 << 24, seg).unwrap();
        let ends: Vec<u64> = sent
            .iter()
            .map(|p| rt.block_on(spool.append(p.clone())).unwrap())
            .collect();
        let starts: Vec<u64> = sent
            .iter()
            .zip(&ends)
            .map(|(p, e)| e - record::encoded_len(p.len()))
            .collect();
        let consumed = consumed.min(sent.len() - 1);
        let checkpoint = if consumed > 0 { ends[consumed - 1] } else { 0 };
        spool.commit(checkpoint).unwrap();

        // The damage, on the segments still on disk.
        let segs = segments(dir.path());
        let total: u64 = segs.iter().map(|(_, p)| std::fs::metadata(p).unwrap().len()).sum();
        prop_assume!(total > 0);
        let mut damaged_at = Vec::new();
        for (i, mask) in &flips {
            let mut k = i.index(total as usize) as u64;
            for (s, p) in &segs {
                let len = std::fs::metadata(p).unwrap().len();
                if k < len {
                    flip(p, k, *mask);
                    damaged_at.push(s + k);
                    break;
                }
                k -= len;
            }
        }
        let (last_start, last_path) = segs.last().unwrap().clone();
        let mut lost_from = u64::MAX;
        if let (Some(cut), true) = (cut, reopen) {
            let len = std::fs::metadata(&last_path).unwrap().len();
            let keep = len.saturating_sub(cut);
            OpenOptions::new().write(true).open(&last_path).unwrap().set_len(keep).unwrap();
            lost_from = last_start + keep;
        }
        // What is on disk now, by global position.
        let disk: Vec<(u64, Vec<u8>)> =
            segs.iter().map(|(s, p)| (*s, std::fs::read(p).unwrap())).collect();
        let byte_at = |pos: u64| {
            disk.iter()
                .find(|(s, d)| *s <= pos && pos < s + d.len() as u64)
                .map(|(s, d)| d[(pos - s) as usize])
        };

        let touched = |i: usize| {
            ends[i] > lost_from || damaged_at.iter().any(|&d| starts[i] <= d && d < ends[i])
        };
        let (spool, rec) = if reopen {
            drop(spool);
            let (s, r) = Spool::open(dir.path(), 1 << 24, seg).unwrap();
            (s, Some(r))
        } else {
            (spool, None)
        };
        let got = read_all(&spool);
        let want: Vec<usize> = (consumed..sent.len()).filter(|&i| !touched(i)).collect();
        prop_assert_eq!(
            got.iter().map(|r| (r.payload.to_vec(), r.end)).collect::<Vec<_>>(),
            want.iter().map(|&i| (sent[i].clone(), ends[i])).collect::<Vec<_>>()
        );

        // damaged/ holds the bytes of every touched record after the checkpoint, as they are on
        // disk, and no byte of an intact record.
        let copies = damaged_copies(dir.path());
        for c in &copies {
            for (k, b) in c.bytes.iter().enumerate() {
                prop_assert_eq!(Some(*b), byte_at(c.range().start + k as u64));
            }
            for &i in &want {
                prop_assert!(c.range().end <= starts[i] || ends[i] <= c.range().start,
                    "copy {:?} overlaps intact record {}", c.range(), i);
            }
            let last_end = last_start + disk.last().unwrap().1.len() as u64;
            // Only the end of the last segment is a tail (when a cut emptied it, the segment
            // before it is sealed: damage at its end is inside the log).
            prop_assert_eq!(c.tail, reopen && c.segment == last_start && c.range().end == last_end);
        }
        for w in copies.windows(2) {
            prop_assert!(w[0].range().end <= w[1].range().start);
        }
        for i in (consumed..sent.len()).filter(|&i| touched(i)) {
            let on_disk = starts[i]..ends[i].min(lost_from);
            if on_disk.is_empty() {
                continue;
            }
            prop_assert!(
                copies.iter().any(|c| c.range().start <= on_disk.start && on_disk.end <= c.range().end),
                "record {} at {:?} is damaged but not copied: {:?}", i, on_disk, copies.iter().map(Copy::range).collect::<Vec<_>>()
            );
        }
        let counts = spool.damage();
        let bytes = |tail: bool| copies.iter().filter(|c| c.tail == tail).map(|c| c.bytes.len() as u64).sum::<u64>();
        let ranges = |tail: bool| copies.iter().filter(|c| c.tail == tail).count() as u64;
        prop_assert_eq!(counts, DamageCounts {
            inside_ranges: ranges(false),
            inside_bytes: bytes(false),
            tail_ranges: ranges(true),
            tail_bytes: bytes(true),
        });
        if let Some(rec) = rec {
            prop_assert_eq!((rec.damaged_ranges, rec.damaged_bytes, rec.torn_bytes), (ranges(false), bytes(false), bytes(true)));
            // No sealed segment is shortened.
            for (s, p) in &segs[..segs.len() - 1] {
                if p.exists() {
                    let before = &disk.iter().find(|(d, _)| d == s).unwrap().1;
                    prop_assert_eq!(&std::fs::read(p).unwrap(), before);
                }
            }
        }
        // Read again: the same records, the damage not counted twice.
        prop_assert_eq!(payloads(&read_all(&spool)), payloads(&got));
        prop_assert_eq!(spool.damage(), counts);
    }
}
