//! Damaged byte ranges: copied to `damaged/`, counted, logged, and remembered so that readers
//! skip them.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, Read as _, Seek as _, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

/// The directory, inside the spool's, that holds copies of damaged ranges.
pub const DAMAGED_DIR: &str = "damaged";

/// Damage found since the spool was opened (recovery included).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DamageCounts {
    /// Ranges between intact records, or at the end of a sealed segment: skipped, left in place.
    /// Acknowledged records in them may have been lost.
    pub inside_ranges: u64,
    pub inside_bytes: u64,
    /// The end of the last segment at start-up, after its last intact record: cut off. A write
    /// torn by a crash (never acknowledged), or damage to its last records.
    pub tail_ranges: u64,
    pub tail_bytes: u64,
}

/// Where a damaged range lies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// Between intact records, or at the end of a sealed segment.
    Inside,
    /// The end of the last segment at start-up. `incomplete`: it is the start of a record whose
    /// header holds but whose bytes stop early, the mark of a write cut short.
    Tail { incomplete: bool },
}

pub(crate) struct Damage {
    /// The spool directory.
    dir: PathBuf,
    /// Global start -> end of the damaged ranges readers skip.
    known: Mutex<BTreeMap<u64, u64>>,
    inside_ranges: AtomicU64,
    inside_bytes: AtomicU64,
    tail_ranges: AtomicU64,
    tail_bytes: AtomicU64,
}

/// The name of the copy of `[off, off + len)` of a segment: the segment file's name, the offset
/// in it and the length, so an operator can find the bytes in a copy of the segment.
pub(crate) fn copy_name(segment: &Path, off: u64, len: u64, kind: Kind) -> String {
    let seg = segment
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tail = if matches!(kind, Kind::Tail { .. }) {
        "-tail"
    } else {
        ""
    };
    format!("{seg}-offset-{off}-len-{len}{tail}.bin")
}

impl Damage {
    pub(crate) fn new(dir: &Path) -> Self {
        Damage {
            dir: dir.to_path_buf(),
            known: Mutex::default(),
            inside_ranges: AtomicU64::new(0),
            inside_bytes: AtomicU64::new(0),
            tail_ranges: AtomicU64::new(0),
            tail_bytes: AtomicU64::new(0),
        }
    }

    /// Where a reader at `pos` continues if `pos` lies in a known damaged range.
    pub(crate) fn skip_to(&self, pos: u64) -> Option<u64> {
        let known = self.known.lock().expect("damage lock");
        known
            .range(..=pos)
            .next_back()
            .map(|(_, &end)| end)
            .filter(|&end| end > pos)
    }

    /// Forgets ranges wholly before `pos` (consumed).
    pub(crate) fn forget_before(&self, pos: u64) {
        self.known
            .lock()
            .expect("damage lock")
            .retain(|_, end| *end > pos);
    }

    pub(crate) fn counts(&self) -> DamageCounts {
        let n = |a: &AtomicU64| a.load(Ordering::Relaxed);
        DamageCounts {
            inside_ranges: n(&self.inside_ranges),
            inside_bytes: n(&self.inside_bytes),
            tail_ranges: n(&self.tail_ranges),
            tail_bytes: n(&self.tail_bytes),
        }
    }

    /// Reports that `[off, off + len)` of the segment starting at global position `seg_start`
    /// holds no intact record: copies the bytes to `damaged/`, counts and logs them. An inside
    /// range is remembered so readers skip it; so is a tail whose copy failed, which must then
    /// stay in place. Returns whether the copy is durable (only then may a tail be cut off).
    pub(crate) fn report(&self, seg_start: u64, off: u64, len: u64, kind: Kind) -> bool {
        let segment = super::segment_path(&self.dir, seg_start);
        let copy = self
            .dir
            .join(DAMAGED_DIR)
            .join(copy_name(&segment, off, len, kind));
        let copied = copy_range(&segment, off, len, &copy);
        let (ranges, bytes) = match kind {
            Kind::Inside => (&self.inside_ranges, &self.inside_bytes),
            Kind::Tail { .. } => (&self.tail_ranges, &self.tail_bytes),
        };
        ranges.fetch_add(1, Ordering::Relaxed);
        bytes.fetch_add(len, Ordering::Relaxed);
        let start = seg_start + off;
        if kind == Kind::Inside || copied.is_err() {
            self.known
                .lock()
                .expect("damage lock")
                .insert(start, start + len);
        }
        let seg = segment.display();
        let copy = copy.display();
        match kind {
            Kind::Inside => tracing::error!(
                segment = %seg, offset = off, bytes = len, position = start, copy = %copy,
                "spool bytes that are not intact records: acknowledged events in them may have \
                 been lost; skipped (left in the segment), and every intact record after them \
                 is delivered"
            ),
            Kind::Tail { incomplete: true } => tracing::warn!(
                segment = %seg, offset = off, bytes = len, position = start, copy = %copy,
                "the last spool segment ends in a record cut short: a write interrupted by a \
                 crash, never acknowledged; cut off"
            ),
            Kind::Tail { incomplete: false } => tracing::error!(
                segment = %seg, offset = off, bytes = len, position = start, copy = %copy,
                "the last spool segment ends in bytes that are not an intact record: a write \
                 torn by a crash (never acknowledged) or damage to its last records \
                 (acknowledged events in them may have been lost); cut off"
            ),
        }
        match copied {
            Ok(()) => true,
            Err(e) => {
                tracing::error!(
                    segment = %seg, offset = off, bytes = len, copy = %copy, error = %e,
                    "could not copy damaged spool bytes; they stay in the segment (skipped) \
                     until it is consumed"
                );
                false
            }
        }
    }
}

/// Copies `[off, off + len)` of `src` to `dst` durably (temporary file, fsync, rename, fsync of
/// the directory).
fn copy_range(src: &Path, off: u64, len: u64, dst: &Path) -> io::Result<()> {
    let dir = dst.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let mut f = File::open(src)?;
    f.seek(SeekFrom::Start(off))?;
    let tmp = dst.with_extension("tmp");
    let mut out = File::create(&tmp)?;
    let n = io::copy(&mut f.take(len), &mut out)?;
    if n != len {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            format!(
                "{} ends {n} bytes after offset {off}, not {len}",
                src.display()
            ),
        ));
    }
    out.sync_all()?;
    std::fs::rename(&tmp, dst)?;
    File::open(dir)?.sync_all()
}
