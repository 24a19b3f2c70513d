//! SSD tier: the cached bytes of each file version in a file of their own, at their
//! natural offsets (`layout.rs`), so a complete file can be a FUSE passthrough backing file
//! whatever its size. A byte-budgeted CLOCK index (`index.rs`), rebuilt at mount from file
//! names and the large files' `.idx` (`rebuild.rs`), says what is present.
//!
//! Every read through the daemon is checked against the checksum of the range it falls in,
//! and a backing file is hashed whole before the kernel may read it (again whenever the
//! file changed since: another inode or ctime). Damage of any kind drops the file and
//! costs a refetch, never a wrong byte. Writes happen on the tier's own thread, off the
//! read path, behind a bounded queue whose back-pressure bounds its memory (`write.rs`).

mod index;
pub mod layout;
mod rebuild;
mod write;

use std::fs::File;
use std::io;
use std::ops::Range;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::mpsc::{SyncSender, sync_channel};
use std::thread::JoinHandle;

use lru::LruCache;
use nix::fcntl::OFlag;
use parking_lot::Mutex;
use tracing::{info, warn};
use xxhash_rust::xxh3::xxh3_64;

use super::key::CachedFile;
use super::tier::{BackingFile, Piece, Tier};
use crate::beneath::Beneath;
use crate::buf::Buf;
use crate::cachedir::PrivateDir;
use crate::size::SizeSpec;
use crate::stats::Stats;
use index::{Entry, Index, Shape, unit_mask};
use layout::Record;
use write::{Job, LargeFiles, Pending, Work, unpend, write_back_loop};

/// Write-back queue depth in jobs: bounds memory held by chunks waiting for the SSD.
pub const WRITE_QUEUE: usize = 32;
/// Large files kept open for writing between chunks (the writer fills few at a time).
const OPEN_WRITERS: usize = 64;

/// Fingerprint of one state of one file: any write to it changes the ctime, and a
/// replaced file has another inode. A cache file in the state it was written or checked in
/// needs no new check. Never 0 (0 is "unknown"); 32 bits, as it is kept in every index
/// entry: a change that kept the fingerprint would need a ctime chosen to collide, which
/// only root (setting the clock) could try.
fn stamp_of(m: &std::fs::Metadata) -> u32 {
    let mut b = [0u8; 32];
    b[..8].copy_from_slice(&m.dev().to_le_bytes());
    b[8..16].copy_from_slice(&m.ino().to_le_bytes());
    b[16..24].copy_from_slice(&m.ctime().to_le_bytes());
    b[24..].copy_from_slice(&m.ctime_nsec().to_le_bytes());
    (xxh3_64(&b) as u32).max(1)
}

pub struct Inner {
    /// `<cache-dir>/files`, every path beneath resolved without symlinks.
    files: Beneath,
    tmp: PrivateDir,
    root: PrivateDir,
    chunk_size: u64,
    unit: u64,
    index: Mutex<Index>,
    writers: Mutex<LruCache<u128, Arc<LargeFiles>>>,
    stats: Arc<Stats>,
    tmp_seq: AtomicU64,
    /// Set after a failed write, cleared by the next good one: one warning per episode.
    failing: AtomicBool,
    /// When `disk.index_bytes` was last measured (a walk of the whole index).
    memory_measured: Mutex<Option<std::time::Instant>>,
}

pub struct DiskTier {
    inner: Arc<Inner>,
    /// Pieces queued for writing, still in memory: a reader who comes for one before it
    /// is written (its RAM copy evicted meanwhile) gets it here, not from the source.
    pending: Arc<Pending>,
    tx: Mutex<Option<SyncSender<Work>>>,
    writer: Mutex<Option<JoinHandle<()>>>,
}

/// The SSD budget as given: bytes, or a share of what the cache may use of its disk.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Budget {
    pub spec: SizeSpec,
    /// Share of the budget that pinned files may take.
    pub pinned_share: f64,
}

fn small_path(key: u128, len: u32, sum: u64) -> PathBuf {
    layout::bucket(key).join(layout::small_name(key, len, sum))
}

fn data_path(key: u128) -> PathBuf {
    layout::bucket(key).join(layout::data_name(key))
}

fn index_path(key: u128) -> PathBuf {
    layout::bucket(key).join(layout::index_name(key))
}

/// Fills `buf` from `file` at `offset` (short only at end of file).
fn pread_full(file: &File, buf: &mut [u8], offset: u64) -> io::Result<usize> {
    let mut done = 0;
    while done < buf.len() {
        match file.read_at(&mut buf[done..], offset + done as u64) {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(done)
}

impl DiskTier {
    /// Opens (or creates) the SSD tier in `dir`: clears an earlier format, rebuilds the
    /// index, resolves the budget (a percentage counts what the cache already holds as
    /// available to it) and evicts, oldest use first, what no longer fits.
    pub fn open(
        dir: &PrivateDir,
        budget: Budget,
        chunk_size: u64,
        stats: Arc<Stats>,
    ) -> Result<DiskTier, String> {
        let (inner, report) = rebuild::open(dir, budget, chunk_size, stats)?;
        info!("{report}");
        let inner = Arc::new(inner);
        let (tx, rx) = sync_channel::<Work>(WRITE_QUEUE);
        let weak = Arc::downgrade(&inner);
        let pending: Arc<Pending> = Default::default();
        let pending_w = pending.clone();
        let writer = std::thread::Builder::new()
            .name("bicache-writeback".into())
            .spawn(move || write_back_loop(weak, rx, pending_w))
            .map_err(|e| format!("cannot start the write-back thread: {e}"))?;
        Ok(DiskTier {
            inner,
            pending,
            tx: Mutex::new(Some(tx)),
            writer: Mutex::new(Some(writer)),
        })
    }

    pub fn bytes(&self) -> u64 {
        self.inner.index.lock().used()
    }

    /// Stops the writer after it wrote everything queued, and keeps the recency file.
    pub fn shutdown(&self) {
        self.tx.lock().take();
        if let Some(t) = self.writer.lock().take() {
            let _ = t.join();
        }
        self.inner.save_recency();
    }
}

impl Drop for DiskTier {
    fn drop(&mut self) {
        self.shutdown();
    }
}

impl Tier for DiskTier {
    fn name(&self) -> &'static str {
        "disk"
    }

    fn get(&self, file: &CachedFile, index: u64, want: Range<usize>) -> Option<Piece> {
        let queued = self.pending.lock().get(&(file.key, index)).and_then(|ps| {
            ps.iter()
                .find(|(start, d)| *start <= want.start && want.end <= start + d.len())
                .map(|(start, d)| Piece {
                    data: d.clone(),
                    start: *start,
                })
        });
        queued.or_else(|| self.inner.read(file, index, want))
    }

    fn contains(&self, file: &CachedFile, index: u64) -> bool {
        let ix = self.inner.index.lock();
        match ix.get(file.key).map(|e| &e.shape) {
            Some(Shape::Small { len, .. }) => *len as u64 == file.size(),
            Some(Shape::Large(l)) => l
                .masks
                .get(index as usize)
                .is_some_and(|&m| m == self.inner.full_mask(file, index)),
            None => false,
        }
    }

    fn put(&self, file: &CachedFile, index: u64, piece: &Piece, pin: bool) {
        let job = Job {
            key: file.key,
            size: file.size(),
            chunk: index,
            start: piece.start,
            data: piece.data.clone(),
            pin,
        };
        let tx = self.tx.lock().clone();
        if let Some(tx) = tx {
            self.inner.stats.disk_queued.fetch_add(1, Relaxed);
            self.pending
                .lock()
                .entry((file.key, index))
                .or_default()
                .push((piece.start, piece.data.clone()));
            // Blocking when full is the back-pressure that bounds the queue's memory.
            if tx.send(Work::Write(job)).is_err() {
                unpend(&self.pending, file.key, index, &piece.data);
                self.inner.stats.disk_queued.fetch_sub(1, Relaxed);
                self.inner.stats.disk_writes_dropped.fetch_add(1, Relaxed);
            }
        }
    }

    fn capacity(&self) -> u64 {
        self.inner.index.lock().capacity
    }

    fn pinned_room(&self) -> u64 {
        self.inner.index.lock().pinned_room()
    }

    fn backing_file(&self, file: &CachedFile) -> Option<BackingFile> {
        self.inner.backing_file(file)
    }

    fn repin(&self, should_pin: &dyn Fn(u128) -> bool) {
        let mut ix = self.inner.index.lock();
        ix.repin(should_pin);
        self.inner.publish(&ix);
    }

    fn flush(&self) {
        let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
        let tx = self.tx.lock().clone();
        if let Some(tx) = tx
            && tx.send(Work::Flush(done_tx)).is_ok()
        {
            // Err: the writer stopped (shutdown), having written all it had.
            let _ = done_rx.recv();
        }
    }
}

impl Inner {
    fn publish(&self, ix: &Index) {
        self.stats.disk_bytes.store(ix.used(), Relaxed);
        self.stats
            .disk_pinned_bytes
            .store(ix.pinned_bytes(), Relaxed);
        // Measuring the index's memory walks all of it: at most once a second, or every
        // write would cost O(files) (measured: 330 writes/s at 700,000 files).
        let mut measured = self.memory_measured.lock();
        if measured.is_none_or(|t| t.elapsed() >= std::time::Duration::from_secs(1)) {
            self.stats.disk_index_bytes.store(ix.memory(), Relaxed);
            *measured = Some(std::time::Instant::now());
        }
        self.stats.disk_files.store(ix.len() as u64, Relaxed);
    }

    /// The mask of a complete chunk.
    fn full_mask(&self, file: &CachedFile, index: u64) -> u64 {
        let units = (file.chunk_len(index) as u64).div_ceil(self.unit) as u32;
        unit_mask(0, units)
    }

    /// Drops a file from the tier: counted as corrupt if it was damage.
    fn forget(&self, key: u128, corrupt: bool) {
        let removed = {
            let mut ix = self.index.lock();
            let e = ix.remove(key);
            self.publish(&ix);
            e
        };
        self.writers.lock().pop(&key);
        if let Some(e) = removed {
            self.unlink(&e);
        }
        if corrupt {
            self.stats.disk_corrupt.fetch_add(1, Relaxed);
        }
    }

    fn unlink(&self, e: &Entry) {
        match &e.shape {
            Shape::Small { len, sum } => {
                let _ = self.files.unlink(&small_path(e.key, *len, *sum));
            }
            Shape::Large(_) => {
                let _ = self.files.unlink(&index_path(e.key));
                let _ = self.files.unlink(&data_path(e.key));
            }
        }
    }

    fn read(&self, file: &CachedFile, index: u64, want: Range<usize>) -> Option<Piece> {
        if file.is_small() {
            let (len, sum) = match self.index.lock().touch(file.key).map(|e| e.shape.clone()) {
                Some(Shape::Small { len, sum }) => (len, sum),
                Some(Shape::Large(_)) | None => return None,
            };
            if len as u64 != file.size() {
                // Cannot happen for the key's own version; treat it as damage.
                self.forget(file.key, true);
                return None;
            }
            let f = self.open_cached(file.key, &small_path(file.key, len, sum))?;
            return self
                .read_small(file.key, &f, len, sum)
                .map(|b| Piece::whole(Arc::new(b)));
        }
        // Which records cover the range, taken under the lock; read and checked outside.
        let (records, full) = {
            let mut ix = self.index.lock();
            let e = ix.touch(file.key)?;
            let Shape::Large(l) = &e.shape else {
                return None;
            };
            let (u0, u1) = (
                (want.start as u64 / self.unit) as u32,
                (want.end as u64).div_ceil(self.unit) as u32,
            );
            let need = unit_mask(u0, u1 - u0);
            let mask = *l.masks.get(index as usize)?;
            if mask & need != need {
                return None;
            }
            let recs: Vec<Record> = l
                .chunk_records(index as u32)
                .iter()
                .filter(|r| (r.first as u32) < u1 && r.first as u32 + r.units as u32 > u0)
                .copied()
                .collect();
            (recs, mask == self.full_mask(file, index))
        };
        let f = self.open_cached(file.key, &data_path(file.key))?;
        let chunk_len = file.chunk_len(index);
        // Read the whole chunk when it is all there (it can then be kept in RAM).
        let (a, b) = if full {
            (0, chunk_len)
        } else {
            let a = records.first()?.first as usize * self.unit as usize;
            let last = records.last()?;
            let b =
                ((last.first as usize + last.units as usize) * self.unit as usize).min(chunk_len);
            (a, b)
        };
        let base = index * file.chunk_size;
        let mut buf = Buf::for_read(b - a);
        match pread_full(&f, &mut buf, base + a as u64) {
            Ok(n) if n == b - a => {}
            Ok(n) => return self.damaged(file.key, &format!("short read {n} of {}", b - a)),
            Err(e) => return self.damaged(file.key, &format!("read failed: {e}")),
        }
        let all = if full {
            self.index
                .lock()
                .get(file.key)
                .and_then(|e| match &e.shape {
                    Shape::Large(l) => Some(l.chunk_records(index as u32).to_vec()),
                    _ => None,
                })?
        } else {
            records
        };
        for r in &all {
            let rs = r.first as usize * self.unit as usize;
            let re = ((r.first as usize + r.units as usize) * self.unit as usize).min(chunk_len);
            if rs < a || re > b || xxh3_64(&buf[rs - a..re - a]) != r.sum {
                return self.damaged(file.key, "data checksum mismatch");
            }
        }
        Some(Piece {
            data: Arc::new(buf),
            start: a,
        })
    }

    fn damaged(&self, key: u128, why: &str) -> Option<Piece> {
        warn!(key = %format!("{key:032x}"), "corrupt cache file dropped: {why}");
        self.forget(key, true);
        None
    }

    /// Opens a cached file; a missing one (evicted meanwhile) is a plain miss.
    fn open_cached(&self, key: u128, rel: &Path) -> Option<File> {
        match self.files.open_at(rel, OFlag::O_RDONLY | OFlag::O_NONBLOCK) {
            Ok(fd) => Some(File::from(fd)),
            Err(e) => {
                let missing = e.kind() == io::ErrorKind::NotFound;
                if !missing {
                    warn!(path = %rel.display(), "SSD tier open failed: {e}");
                }
                self.forget(key, !missing);
                None
            }
        }
    }

    /// Reads a small file whole (and one byte more, to see a file that grew), checked.
    fn read_small(&self, key: u128, f: &File, len: u32, sum: u64) -> Option<Buf> {
        let mut data = Buf::for_read(len as usize + 1);
        let why = match pread_full(f, &mut data, 0) {
            Ok(n) if n == len as usize => {
                data.truncate(n);
                if xxh3_64(&data) == sum {
                    return Some(data);
                }
                "data checksum mismatch".to_string()
            }
            Ok(n) => format!("wrong file length {n}, want {len}"),
            Err(e) => format!("read failed: {e}"),
        };
        self.damaged(key, &why);
        None
    }

    /// A complete file for the kernel to read directly, hashed whole unless this very
    /// file (device, inode, ctime) was written or checked before, in this mount or an
    /// earlier one.
    fn backing_file(&self, file: &CachedFile) -> Option<BackingFile> {
        let (shape, known) = self
            .index
            .lock()
            .touch(file.key)
            .map(|e| (e.shape.clone(), e.stamp))?;
        let (rel, records) = match &shape {
            Shape::Small { len, sum } if *len as u64 == file.size() => {
                (small_path(file.key, *len, *sum), None)
            }
            Shape::Large(l) if l.complete(file.chunks(), |c| self.full_mask(file, c)) => {
                (data_path(file.key), Some(l.records.clone()))
            }
            _ => return None,
        };
        let f = self.open_cached(file.key, &rel)?;
        let meta = match f.metadata() {
            Ok(m) if m.len() == file.size() => m,
            Ok(m) => {
                self.damaged(file.key, &format!("wrong file length {}", m.len()));
                return None;
            }
            Err(e) => {
                self.damaged(file.key, &format!("stat failed: {e}"));
                return None;
            }
        };
        let stamp = stamp_of(&meta);
        if known == stamp {
            return Some(BackingFile {
                file: f,
                verified_bytes: None,
            });
        }
        self.stats.passthrough_checks.fetch_add(1, Relaxed);
        let verified_bytes = match (&shape, records) {
            (Shape::Small { len, sum }, _) => Some(self.read_small(file.key, &f, *len, *sum)?),
            (_, Some(records)) => {
                self.verify_large(file, &f, &records)?;
                None
            }
            _ => return None,
        };
        self.index.lock().update(file.key, |e| e.stamp = stamp);
        Some(BackingFile {
            file: f,
            verified_bytes,
        })
    }

    /// Hashes every record of a large file.
    fn verify_large(&self, file: &CachedFile, f: &File, records: &[Record]) -> Option<()> {
        let mut buf = Buf::for_read(file.chunk_size as usize);
        for r in records {
            let chunk_len = file.chunk_len(r.chunk as u64);
            let rs = r.first as usize * self.unit as usize;
            let re = ((r.first as usize + r.units as usize) * self.unit as usize).min(chunk_len);
            let at = r.chunk as u64 * file.chunk_size + rs as u64;
            let got = pread_full(f, &mut buf[..re - rs], at).ok()?;
            if got != re - rs || xxh3_64(&buf[..re - rs]) != r.sum {
                self.damaged(file.key, "data checksum mismatch");
                return None;
            }
        }
        Some(())
    }

    fn save_recency(&self) {
        let r = self.index.lock().recency();
        if let Err(e) = self
            .root
            .write_atomic(layout::RECENCY_FILE, &layout::encode_recency(&r))
        {
            warn!("cannot save the SSD tier's recency: {e}");
        }
    }
}
