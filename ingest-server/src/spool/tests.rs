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
    let mut r = spool.reader();
    let mut out = Vec::new();
    loop {
        let got = r.read(1 << 20).unwrap();
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
    assert_eq!(all[7].payload, b"record 7");
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
    assert_eq!(again[0].payload, b"record 30");
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
    assert_eq!(n, 1000 / 116);
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
        .map(|r| String::from_utf8(r.payload.clone()).unwrap())
        .collect();
    seen.sort();
    seen.dedup();
    assert_eq!(seen.len(), 640);
}

#[test]
fn a_flipped_byte_in_the_tail_is_cut_at_recovery() {
    let dir = tempfile::tempdir().unwrap();
    let rt = rt();
    {
        let (spool, _) = Spool::open(dir.path(), 1 << 20, 1 << 20).unwrap();
        for i in 0..3u8 {
            rt.block_on(spool.append(vec![i; 10])).unwrap();
        }
    }
    let seg = last_segment(dir.path());
    // The last segment is the fresh empty one; damage the one before.
    let mut segs: Vec<PathBuf> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().and_then(|e| e.to_str()) == Some(SEGMENT_EXT))
        .filter(|p| std::fs::metadata(p).unwrap().len() > 0)
        .collect();
    segs.sort();
    let target = segs.pop().unwrap_or(seg);
    let mut data = std::fs::read(&target).unwrap();
    let n = data.len();
    data[n - 1] ^= 0xff;
    std::fs::write(&target, data).unwrap();
    let (spool, rec) = Spool::open(dir.path(), 1 << 20, 1 << 20).unwrap();
    assert_eq!(rec.torn_bytes, 26);
    let all = read_all(&spool);
    assert_eq!(all.len(), 2);
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
            let got: Vec<Vec<u8>> = read_all(&spool).into_iter().map(|r| r.payload).collect();
            prop_assert_eq!(&got, &model.iter().cloned().collect::<Vec<_>>());
        }
    }
}
