//! A durable, checksummed log of byte records on disk: Waymark's spool, the buffer between
//! "200 OK" and "ClickHouse has it".
//!
//! # What it is
//!
//! An append-only log of opaque byte records in one directory. [`Spool::append`] returns once its
//! record is fsynced. A [`SpoolReader`] reads records back in order from the checkpoint, and
//! [`Spool::commit`] durably moves the checkpoint once the consumer has stored what it read, then
//! deletes the segments behind it. An append that would take the backlog past the cap fails at
//! once with [`SpoolError::Full`]: it neither waits nor drops. [`Spool::open`] recovers the
//! directory: every intact record is kept, past any damage, and damaged bytes are copied to
//! `damaged/`.
//!
//! It knows nothing of events. The ingest server (`waymark-ingest`, its `spool` module) puts the
//! enriched rows of one request in each record and decodes them again; here a record is bytes.
//! It is a crate of its own so that this boundary holds by construction, and so that the log's
//! tests (the model-based property tests, damage anywhere on disk, spools of earlier versions)
//! run alone: `cargo test -p waymark-spool`. The shape follows Vector's disk buffer
//! (`lib/vector-buffers`, `variants/disk_v2`).
//!
//! ```no_run
//! # async fn example() -> Result<(), waymark_spool::SpoolError> {
//! use waymark_spool::Spool;
//!
//! // A 64 MiB cap; segments sealed at 1 MiB.
//! let (spool, _recovery) = Spool::open("/var/lib/app/spool".as_ref(), 64 << 20, 1 << 20)?;
//! spool.append(b"one record".to_vec()).await?; // on disk once this returns
//! let mut reader = spool.reader();
//! for record in reader.read(1 << 20)? {
//!     // Store `record.payload` somewhere durable...
//!     let _ = record.payload;
//! }
//! spool.commit(reader.position())?; // ...then let the spool forget it.
//! # Ok(())
//! # }
//! ```
//!
//! **What it reports.** No metrics of its own: the owner samples [`Spool::disk_bytes`],
//! [`Spool::pending_bytes`], [`Spool::used_bytes`], [`Spool::max_bytes`],
//! [`Spool::oldest_pending_ms`] (which the consumer keeps with [`Spool::set_oldest_pending_ms`])
//! and [`Spool::damage`], and publishes them (the ingest server as the `waymark_spool_*`
//! metrics). Write failures and damage are also logged through `tracing`.
//!
//! # Design note
//!
//! **Layout.** A directory of append-only segment files named by the global byte position of
//! their first record (`00000000000000012345.wal`), plus a `checkpoint` file. Positions are
//! global and only grow, so "everything before position P" is a simple comparison across
//! segments and restarts.
//!
//! **Records.** `magic[8] | len: u32 | appended_ms: u64 | payload_crc: u32 | header_crc: u32 |
//! payload` (see [`record`]): 28 bytes before the payload, 12 more than the `len | crc |
//! appended_ms` records of earlier versions, which are still read (a segment holds one format;
//! its first bytes tell which). The magic is a sync marker: after damage a reader scans forward
//! for it and trusts a candidate only once its header checksum and payload checksum hold (see
//! [`resync`]). A record is durable entirely or not at all: nothing half-written. The ingest
//! server puts all accepted rows of one HTTP request in one record, so a request is stored whole;
//! the payload's own format is the server's (its `spool::rows`). Here payloads are opaque bytes.
//!
//! **Group commit.** One appender thread owns the active segment. Callers of [`Spool::append`]
//! send it their record and wait; the thread takes everything queued (up to 16 MiB), writes it
//! with one `write`, calls `fdatasync` once, then publishes the new committed position and
//! answers every waiter. The ingest server answers 200 only after that answer, so an
//! acknowledged event is on disk, and a thousand concurrent requests cost one fsync, not a
//! thousand. A failed write is truncated away and every waiter gets an error ([`SpoolError::Io`];
//! the server answers 503), never a false yes.
//!
//! **Cap.** The cap bounds the backlog: bytes appended or queued but not yet committed by the
//! consumer. An append reserves its size first; past `max_bytes` it fails with
//! [`SpoolError::Full`] at once (the server answers 503 + Retry-After); a commit releases what
//! it consumed. Disk use is the backlog plus at most the consumed part of the active segment.
//! Memory stays bounded too: readers read records back from the files (page cache) in bounded
//! chunks.
//!
//! **Reading and the checkpoint.** The consumer (the ingest server's ClickHouse writer) reads
//! records in `[checkpoint, committed)`. Only after it stored them (ClickHouse confirmed the
//! insert) does it call [`Spool::commit`], which writes the new position to `checkpoint.tmp`,
//! fsyncs it, renames it over `checkpoint`, fsyncs the directory, and then deletes the sealed
//! segments that lie wholly before it. A crash between storing and checkpoint replays the
//! records: delivery is at least once, and the consumer makes a replay harmless (the server's
//! events table collapses such duplicates: same sorting key, ReplacingMergeTree).
//!
//! **Recovery** ([`Spool::open`]). Read the checkpoint; walk every segment record by record,
//! checking each one's checksums. Bytes that are not an intact record are a damaged range: the
//! walk scans past them to the next intact record (next marker whose checksums hold) and goes
//! on, so every intact record after damage is kept and replayed. Each damaged range after the
//! checkpoint is copied to `damaged/<segment>-offset-<o>-len-<n>.bin`, counted
//! ([`Spool::damage`]; the server's `waymark_spool_damaged_*` metrics) and logged:
//! - inside the log (between intact records, or at the end of a sealed segment) it stays where
//!   it is and is skipped; a sealed segment is never shortened. The log says what it is:
//!   acknowledged records in those bytes may have been lost.
//! - at the end of the last segment, after its last intact record, it may be a write torn by a
//!   crash (never acknowledged) or damage to the last records; it is cut off once copied (left
//!   in place and skipped if the copy fails). Only the last segment was being written, so only
//!   its end is treated so.
//!
//! Then delete segments wholly before the checkpoint and start a fresh active segment after the
//! last byte. The consumer replays everything from the checkpoint on. Its reader
//! ([`SpoolReader::read`]) skips the ranges recovery found, and resyncs with the same search if
//! it meets new damage (copied and counted the same way): damage never stops or stalls delivery.
//! Copies in `damaged/` are not counted against the cap and are never deleted by the spool.

pub mod damaged;
pub mod record;
pub mod resync;

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::Write as _;
use std::os::unix::fs::FileExt as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use tokio::sync::{oneshot, watch};

use damaged::{Damage, Kind};
pub use damaged::{DamageCounts, DAMAGED_DIR};
use record::{Decoded, Format};

const CHECKPOINT: &str = "checkpoint";
const SEGMENT_EXT: &str = "wal";
/// Most bytes one group commit writes before it fsyncs.
const GROUP_MAX_BYTES: usize = 16 << 20;

/// Why an append or a spool operation failed.
#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    /// The cap is reached: the caller should refuse for now (the ingest server answers 503 with
    /// Retry-After).
    #[error("the spool is full ({used} of {max} bytes)")]
    Full { used: u64, max: u64 },
    /// Disk trouble; the record is not stored.
    #[error("spool I/O error: {0}")]
    Io(String),
    /// The appender thread is gone (shutting down).
    #[error("the spool is closed")]
    Closed,
}

fn io_err(what: &str, path: &Path, e: std::io::Error) -> SpoolError {
    SpoolError::Io(format!("{what} {}: {e}", path.display()))
}

/// What [`Spool::open`] found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Recovery {
    /// Segments found on disk.
    pub segments: usize,
    /// Bytes of records after the checkpoint, waiting to be read again by the consumer.
    pub pending_bytes: u64,
    /// Bytes at the end of the last segment after its last intact record: a write torn by a
    /// crash, or damage to its last records. Copied to `damaged/`, then cut off (left in place
    /// and skipped if the copy failed).
    pub torn_bytes: u64,
    /// Ranges of bytes between intact records or at the end of a sealed segment that are not
    /// intact records (copied to `damaged/`, skipped, left in place).
    pub damaged_ranges: u64,
    /// Bytes in those ranges.
    pub damaged_bytes: u64,
}

/// `len` bytes of `file` from `offset`, into `spare`'s buffer when nothing holds a view of it
/// any more, and without zeroing it first (`read_to_end` reads a `File` into a `Vec`'s spare
/// capacity). Issue 20's profile: the writer's reads, up to `max_bytes` each into a fresh
/// zeroed buffer, cost 3.6 % of the server's CPU in `memset` and 6 % in the kernel zeroing the
/// fresh pages. Moves the handle's own position, which nothing else here uses: every other
/// read is positional.
fn read_chunk(
    file: &File,
    offset: u64,
    len: usize,
    spare: Option<Bytes>,
) -> std::io::Result<Bytes> {
    use std::io::{Read as _, Seek as _};
    let mut f = file;
    f.seek(std::io::SeekFrom::Start(offset))?;
    let mut buf = spare
        .and_then(|b| b.try_into_mut().ok())
        .map(Vec::from)
        .unwrap_or_default();
    buf.clear();
    buf.reserve(len);
    f.take(len as u64).read_to_end(&mut buf)?;
    if buf.len() < len {
        return Err(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            format!("{} of {len} bytes at offset {offset}", buf.len()),
        ));
    }
    Ok(Bytes::from(buf))
}

/// One record read back from the spool.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// The position just past this record: commit this to consume it.
    pub end: u64,
    pub appended_ms: u64,
    /// A view into the chunk read from disk: records read together share one buffer, so
    /// reading copies nothing per record (issue 20: the copies and the fresh pages they
    /// faulted in were 5 % of the server's CPU under load).
    pub payload: Bytes,
}

struct AppendReq {
    payload: Vec<u8>,
    reply: oneshot::Sender<Result<u64, SpoolError>>,
}

struct Shared {
    dir: PathBuf,
    max_bytes: u64,
    /// Backlog: bytes after the checkpoint plus bytes reserved by queued appends.
    used: AtomicU64,
    /// Segment start -> its length and record format. The last entry is the active segment.
    segments: Mutex<BTreeMap<u64, Seg>>,
    /// Durable checkpoint (consumed up to here).
    checkpoint: Mutex<u64>,
    /// Position just past the last fsynced record.
    committed: watch::Sender<u64>,
    /// Appended-at time of the oldest record the writer has not committed, 0 if none known.
    oldest_pending_ms: AtomicU64,
    /// Damaged ranges found, and where readers skip them.
    damage: Damage,
}

#[derive(Debug, Clone, Copy)]
struct Seg {
    len: u64,
    format: Format,
}

/// A handle to the spool; cheap to clone.
#[derive(Clone)]
pub struct Spool {
    shared: Arc<Shared>,
    tx: mpsc::Sender<AppendReq>,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn segment_path(dir: &Path, start: u64) -> PathBuf {
    dir.join(format!("{start:020}.{SEGMENT_EXT}"))
}

fn sync_dir(dir: &Path) -> Result<(), SpoolError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| io_err("syncing directory", dir, e))
}

fn read_checkpoint(dir: &Path) -> Result<Option<u64>, SpoolError> {
    let path = dir.join(CHECKPOINT);
    match std::fs::read(&path) {
        Ok(b) if b.len() == 12 => {
            let pos = u64::from_le_bytes(b[0..8].try_into().expect("8 bytes"));
            let crc = u32::from_le_bytes(b[8..12].try_into().expect("4 bytes"));
            if crc32fast::hash(&b[0..8]) == crc {
                Ok(Some(pos))
            } else {
                Err(SpoolError::Io(format!(
                    "{} has a bad checksum; refusing to guess where to resume",
                    path.display()
                )))
            }
        }
        Ok(_) => Err(SpoolError::Io(format!(
            "{} is not 12 bytes; refusing to guess where to resume",
            path.display()
        ))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io_err("reading", &path, e)),
    }
}

fn write_checkpoint(dir: &Path, pos: u64) -> Result<(), SpoolError> {
    let tmp = dir.join("checkpoint.tmp");
    let mut b = pos.to_le_bytes().to_vec();
    b.extend_from_slice(&crc32fast::hash(&b).to_le_bytes());
    let mut f = File::create(&tmp).map_err(|e| io_err("creating", &tmp, e))?;
    f.write_all(&b).map_err(|e| io_err("writing", &tmp, e))?;
    f.sync_all().map_err(|e| io_err("syncing", &tmp, e))?;
    std::fs::rename(&tmp, dir.join(CHECKPOINT)).map_err(|e| io_err("renaming", &tmp, e))?;
    sync_dir(dir)
}

impl Spool {
    /// Opens (or creates) the spool in `dir`, recovers it, and starts the appender thread.
    /// `segment_bytes` is the size at which the active segment is sealed and a new one begun.
    pub fn open(
        dir: &Path,
        max_bytes: u64,
        segment_bytes: u64,
    ) -> Result<(Spool, Recovery), SpoolError> {
        std::fs::create_dir_all(dir).map_err(|e| io_err("creating", dir, e))?;
        let checkpoint = read_checkpoint(dir)?;
        let mut found: BTreeMap<u64, u64> = BTreeMap::new();
        let entries = std::fs::read_dir(dir).map_err(|e| io_err("listing", dir, e))?;
        for entry in entries {
            let entry = entry.map_err(|e| io_err("listing", dir, e))?;
            let path = entry.path();
            if path.extension().and_then(|e| e.to_str()) != Some(SEGMENT_EXT) {
                continue;
            }
            let Some(start) = path
                .file_stem()
                .and_then(|s| s.to_str())
                .and_then(|s| s.parse::<u64>().ok())
            else {
                continue;
            };
            found.insert(start, 0);
        }
        let mut rec = Recovery {
            segments: found.len(),
            ..Recovery::default()
        };
        let checkpoint = checkpoint.unwrap_or_else(|| found.keys().next().copied().unwrap_or(0));
        let last = found.keys().next_back().copied();
        let damage = Damage::new(dir);
        let mut segments = BTreeMap::new();
        let mut end = checkpoint;
        for &start in found.keys() {
            let path = segment_path(dir, start);
            let data = std::fs::read(&path).map_err(|e| io_err("reading", &path, e))?;
            let scan = |e: std::io::Error| io_err("scanning", &path, e);
            let format = resync::detect(&data).map_err(scan)?;
            let walk = resync::walk(&data, format).map_err(scan)?;
            let mut len = data.len() as u64;
            for r in walk.damaged {
                if start + r.end <= checkpoint {
                    // Consumed: the consumer stored whatever these bytes were.
                    continue;
                }
                // Only the last segment was being written when the process stopped: only its
                // end can be a torn write, and only that is cut off. Damage anywhere else is
                // skipped where it lies; no sealed segment is ever shortened.
                if Some(start) == last && r.end == len {
                    let incomplete = matches!(
                        format.decode(&data[r.start as usize..]),
                        Decoded::Incomplete { .. }
                    );
                    let kind = Kind::Tail { incomplete };
                    rec.torn_bytes += r.end - r.start;
                    // Cut off once copied; if the copy failed it stays, and readers skip it.
                    if damage.report(start, r.start, r.end - r.start, kind) {
                        let f = OpenOptions::new()
                            .write(true)
                            .open(&path)
                            .map_err(|e| io_err("opening", &path, e))?;
                        f.set_len(r.start)
                            .map_err(|e| io_err("truncating", &path, e))?;
                        f.sync_all().map_err(|e| io_err("syncing", &path, e))?;
                        len = r.start;
                    }
                } else {
                    damage.report(start, r.start, r.end - r.start, Kind::Inside);
                    rec.damaged_ranges += 1;
                    rec.damaged_bytes += r.end - r.start;
                }
            }
            if start + len <= checkpoint || len == 0 {
                std::fs::remove_file(&path).map_err(|e| io_err("removing", &path, e))?;
                continue;
            }
            end = end.max(start + len);
            segments.insert(start, Seg { len, format });
        }
        rec.pending_bytes = segments
            .iter()
            .map(|(&s, seg)| (s + seg.len).saturating_sub(checkpoint.max(s)))
            .sum();
        // A fresh active segment after everything that exists.
        let active_path = segment_path(dir, end);
        let active = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&active_path)
            .map_err(|e| io_err("creating", &active_path, e))?;
        segments.insert(
            end,
            Seg {
                len: 0,
                format: Format::V2,
            },
        );
        sync_dir(dir)?;
        let used = rec.pending_bytes;
        let (committed, _) = watch::channel(end);
        let shared = Arc::new(Shared {
            dir: dir.to_path_buf(),
            max_bytes,
            used: AtomicU64::new(used),
            segments: Mutex::new(segments),
            checkpoint: Mutex::new(checkpoint),
            committed,
            oldest_pending_ms: AtomicU64::new(0),
            damage,
        });
        let (tx, rx) = mpsc::channel();
        let s = shared.clone();
        std::thread::Builder::new()
            .name("spool-appender".into())
            .spawn(move || appender(s, rx, active, end, segment_bytes.max(1)))
            .map_err(|e| SpoolError::Io(format!("starting the appender thread: {e}")))?;
        Ok((Spool { shared, tx }, rec))
    }

    /// Appends one record and returns once it is fsynced (with the position just past it).
    pub async fn append(&self, payload: Vec<u8>) -> Result<u64, SpoolError> {
        let need = record::encoded_len(payload.len());
        let before = self.shared.used.fetch_add(need, Ordering::SeqCst);
        if before + need > self.shared.max_bytes {
            self.shared.used.fetch_sub(need, Ordering::SeqCst);
            return Err(SpoolError::Full {
                used: before,
                max: self.shared.max_bytes,
            });
        }
        let (reply, rx) = oneshot::channel();
        if self.tx.send(AppendReq { payload, reply }).is_err() {
            self.shared.used.fetch_sub(need, Ordering::SeqCst);
            return Err(SpoolError::Closed);
        }
        rx.await.unwrap_or(Err(SpoolError::Closed))
    }

    /// Whether an append of `bytes` would currently fit under the cap.
    pub fn has_room(&self, bytes: u64) -> bool {
        self.shared.used.load(Ordering::SeqCst) + bytes <= self.shared.max_bytes
    }

    /// Watches the committed (fsynced) end position.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.shared.committed.subscribe()
    }

    /// The committed end position now.
    pub fn committed(&self) -> u64 {
        *self.shared.committed.borrow()
    }

    /// The durable checkpoint: everything before it is stored by the consumer.
    pub fn checkpoint(&self) -> u64 {
        *self.shared.checkpoint.lock().expect("checkpoint lock")
    }

    /// The backlog the cap applies to: unconfirmed bytes plus bytes queued for writing.
    pub fn used_bytes(&self) -> u64 {
        self.shared.used.load(Ordering::SeqCst)
    }

    /// Bytes in segment files on disk.
    pub fn disk_bytes(&self) -> u64 {
        self.shared
            .segments
            .lock()
            .expect("segments lock")
            .values()
            .map(|seg| seg.len)
            .sum()
    }

    /// The cap.
    pub fn max_bytes(&self) -> u64 {
        self.shared.max_bytes
    }

    /// Bytes appended (fsynced) but not yet committed by the consumer.
    pub fn pending_bytes(&self) -> u64 {
        self.committed().saturating_sub(self.checkpoint())
    }

    /// Appended-at time (unix ms) of the oldest record the consumer has not committed, if known
    /// (see [`Spool::set_oldest_pending_ms`]).
    pub fn oldest_pending_ms(&self) -> Option<u64> {
        match self.shared.oldest_pending_ms.load(Ordering::Relaxed) {
            0 => None,
            t => Some(t),
        }
    }

    /// Sets what [`Spool::oldest_pending_ms`] reports: the consumer knows which records it has
    /// read but not yet committed (`None`: none).
    pub fn set_oldest_pending_ms(&self, t: Option<u64>) {
        self.shared
            .oldest_pending_ms
            .store(t.unwrap_or(0), Ordering::Relaxed);
    }

    /// Damaged ranges found since the spool was opened, at recovery or when read back.
    pub fn damage(&self) -> DamageCounts {
        self.shared.damage.counts()
    }

    /// The spool directory.
    pub fn dir(&self) -> &Path {
        &self.shared.dir
    }

    /// Checks the directory is writable (for `/readyz`).
    pub fn probe_writable(&self) -> Result<(), SpoolError> {
        let p = self.shared.dir.join(".probe");
        std::fs::write(&p, b"ok").map_err(|e| io_err("writing", &p, e))?;
        std::fs::remove_file(&p).map_err(|e| io_err("removing", &p, e))
    }

    /// Records that everything before `pos` is safely stored by the consumer: durably moves the
    /// checkpoint, then deletes the sealed segments that lie wholly before it.
    pub fn commit(&self, pos: u64) -> Result<(), SpoolError> {
        {
            let mut cp = self.shared.checkpoint.lock().expect("checkpoint lock");
            if pos <= *cp {
                return Ok(());
            }
            write_checkpoint(&self.shared.dir, pos)?;
            let consumed = pos - *cp;
            let _ = self
                .shared
                .used
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |u| {
                    Some(u.saturating_sub(consumed))
                });
            *cp = pos;
        }
        self.shared.damage.forget_before(pos);
        let doomed: Vec<u64> = {
            let segs = self.shared.segments.lock().expect("segments lock");
            let last = segs.keys().next_back().copied();
            segs.iter()
                .filter(|(&s, seg)| Some(s) != last && s + seg.len <= pos)
                .map(|(&s, _)| s)
                .collect()
        };
        let mut removed = false;
        for start in doomed {
            let path = segment_path(&self.shared.dir, start);
            match std::fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(io_err("removing", &path, e)),
            }
            self.shared
                .segments
                .lock()
                .expect("segments lock")
                .remove(&start);
            removed = true;
        }
        if removed {
            sync_dir(&self.shared.dir)?;
        }
        Ok(())
    }

    /// A reader starting at the checkpoint.
    pub fn reader(&self) -> SpoolReader {
        self.reader_at(self.checkpoint())
    }

    /// A reader from `pos` on: a [`SpoolReader::position`] or a [`Record::end`] seen earlier,
    /// not yet committed. A consumer that keeps positions instead of payloads reads the same
    /// records again this way, in the same order, damage skipped the same.
    pub fn reader_at(&self, pos: u64) -> SpoolReader {
        SpoolReader {
            spool: self.clone(),
            pos,
            file: None,
            last: None,
        }
    }
}

fn appender(
    shared: Arc<Shared>,
    rx: mpsc::Receiver<AppendReq>,
    mut file: File,
    mut start: u64,
    segment_bytes: u64,
) {
    let mut len: u64 = 0;
    let mut buf = Vec::with_capacity(1 << 20);
    while let Ok(first) = rx.recv() {
        let mut group = vec![first];
        let mut bytes = group[0].payload.len();
        while bytes < GROUP_MAX_BYTES {
            match rx.try_recv() {
                Ok(r) => {
                    bytes += r.payload.len();
                    group.push(r);
                }
                Err(_) => break,
            }
        }
        // Seal the active segment once it is big enough; the next one starts at its end.
        if len >= segment_bytes {
            let next = start + len;
            let path = segment_path(&shared.dir, next);
            let opened = OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)
                .map_err(|e| io_err("creating", &path, e))
                .and_then(|f| sync_dir(&shared.dir).map(|()| f));
            match opened {
                Ok(f) => {
                    file = f;
                    start = next;
                    len = 0;
                    shared.segments.lock().expect("segments lock").insert(
                        start,
                        Seg {
                            len: 0,
                            format: Format::V2,
                        },
                    );
                }
                Err(e) => {
                    tracing::error!(error = %e, "cannot start a new spool segment");
                    fail_group(&shared, group, &e);
                    continue;
                }
            }
        }
        buf.clear();
        let now = now_ms();
        let mut ends = Vec::with_capacity(group.len());
        for r in &group {
            record::encode(&mut buf, now, &r.payload);
            ends.push(start + len + buf.len() as u64);
        }
        let path = segment_path(&shared.dir, start);
        let result = file
            .write_all(&buf)
            .and_then(|()| file.sync_data())
            .map_err(|e| io_err("writing", &path, e));
        match result {
            Ok(()) => {
                len += buf.len() as u64;
                shared.segments.lock().expect("segments lock").insert(
                    start,
                    Seg {
                        len,
                        format: Format::V2,
                    },
                );
                shared.committed.send_replace(start + len);
                for (r, end) in group.into_iter().zip(ends) {
                    let _ = r.reply.send(Ok(end));
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "spool write failed; answering 503");
                // Cut back to the last good record so the segment stays well-formed.
                let _ = file.set_len(len).and_then(|()| file.sync_data());
                fail_group(&shared, group, &e);
            }
        }
    }
}

fn fail_group(shared: &Shared, group: Vec<AppendReq>, e: &SpoolError) {
    for r in group {
        shared
            .used
            .fetch_sub(record::encoded_len(r.payload.len()), Ordering::SeqCst);
        let _ = r.reply.send(Err(SpoolError::Io(e.to_string())));
    }
}

/// Reads committed records in order, from the checkpoint on.
pub struct SpoolReader {
    spool: Spool,
    pos: u64,
    file: Option<(u64, File)>,
    /// The last chunk read: its buffer is read into again once no record holds a view of it.
    last: Option<Bytes>,
}

impl SpoolReader {
    /// The position of the next record to read.
    pub fn position(&self) -> u64 {
        self.pos
    }

    /// Reads whole records from the current position up to the committed end, stopping once
    /// about `max_bytes` are read (always at least one record when one is available).
    ///
    /// Bytes that are not an intact record are skipped to the next intact record, found the
    /// way recovery finds it (`resync::next_intact`); damage met here for the first time is
    /// copied to `damaged/` and counted. Damage never stops or stalls the reading.
    pub fn read(&mut self, max_bytes: usize) -> Result<Vec<Record>, SpoolError> {
        let mut out = Vec::new();
        let mut total = 0usize;
        loop {
            let committed = self.spool.committed();
            if self.pos >= committed || total >= max_bytes {
                return Ok(out);
            }
            if let Some(end) = self.spool.shared.damage.skip_to(self.pos) {
                self.pos = end;
                continue;
            }
            // The segment holding `pos`, or the next one after a gap.
            let (start, seg, is_last) = {
                let segs = self.spool.shared.segments.lock().expect("segments lock");
                let last = segs.keys().next_back().copied();
                let found = segs
                    .range(..=self.pos)
                    .next_back()
                    .filter(|(&s, seg)| self.pos < s + seg.len)
                    .or_else(|| segs.range(self.pos + 1..).next())
                    .map(|(&s, &seg)| (s, seg, Some(s) == last));
                match found {
                    Some(f) => f,
                    None => return Ok(out),
                }
            };
            if self.pos < start {
                self.pos = start;
            }
            let seg_end = (start + seg.len).min(committed);
            if self.pos >= seg_end {
                if is_last {
                    return Ok(out);
                }
                self.pos = start + seg.len;
                continue;
            }
            if self.file.as_ref().map(|(s, _)| *s) != Some(start) {
                let path = segment_path(&self.spool.shared.dir, start);
                let f = File::open(&path).map_err(|e| io_err("opening", &path, e))?;
                self.file = Some((start, f));
            }
            let (_, file) = self.file.as_ref().expect("just opened");
            let read_err = |e: std::io::Error| {
                io_err("reading", &segment_path(&self.spool.shared.dir, start), e)
            };
            let want = ((seg_end - self.pos) as usize)
                .min((max_bytes - total).max(seg.format.header_len()));
            let chunk =
                read_chunk(file, self.pos - start, want, self.last.take()).map_err(read_err)?;
            self.last = Some(chunk.clone());
            let mut off = 0usize;
            let mut need = None;
            loop {
                match seg.format.decode(&chunk[off..]) {
                    Decoded::Record {
                        appended_ms,
                        payload,
                        size,
                    } => {
                        off += size;
                        out.push(Record {
                            end: self.pos + off as u64,
                            appended_ms,
                            payload: chunk.slice_ref(payload),
                        });
                    }
                    Decoded::Incomplete { need: n } => {
                        need = Some(n);
                        break;
                    }
                    Decoded::Corrupt => break,
                }
            }
            if off > 0 {
                // Whatever stopped the chunk is looked at from its own position next.
                self.pos += off as u64;
                total += off;
                continue;
            }
            // No record decoded at `pos`. One larger than the chunk: read exactly it.
            if let Some(need) = need.filter(|&n| self.pos + n as u64 <= seg_end) {
                let mut whole = vec![0u8; need];
                file.read_exact_at(&mut whole, self.pos - start)
                    .map_err(read_err)?;
                let whole = Bytes::from(whole);
                if let Decoded::Record {
                    appended_ms,
                    payload,
                    size,
                } = seg.format.decode(&whole)
                {
                    self.pos += size as u64;
                    total += size;
                    out.push(Record {
                        end: self.pos,
                        appended_ms,
                        payload: whole.slice_ref(payload),
                    });
                    continue;
                }
            }
            // Damage under committed data: on to the next intact record, as recovery does.
            let from = self.pos - start;
            let limit = seg_end - start;
            let next = resync::next_intact(&resync::FileSource(file), seg.format, from, limit)
                .map_err(read_err)?
                .unwrap_or(limit);
            self.spool
                .shared
                .damage
                .report(start, from, next - from, Kind::Inside);
            self.pos = start + next;
        }
    }
}

#[cfg(test)]
mod tests;
