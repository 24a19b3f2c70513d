//! SSD tier: the cached bytes of each file version in a file of their own, at their
//! natural offsets (`layout.rs`), so a complete file can be a FUSE passthrough backing file
//! whatever its size. A byte-budgeted CLOCK index (`index.rs`), rebuilt at mount from file
//! names and the large files' `.idx` (`rebuild.rs`), says what is present.
//!
//! Every read through the daemon is checked against the checksum of the range it falls in,
//! and a backing file is hashed whole before the kernel may read it (again whenever the
//! file changed since: another inode or ctime). Damage of any kind drops the file and
//! costs a refetch, never a wrong byte. Writes happen on the tier's own thread, off the
//! read path, behind a bounded queue whose back-pressure bounds its memory.

mod index;
pub mod layout;
mod rebuild;

use std::collections::HashMap;
use std::fs::File;
use std::io;
use std::ops::Range;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::sync::{Arc, Weak};
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
use index::{Entry, Index, Large, Shape, on_disk, unit_mask};
use layout::{IdxHeader, Record};

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

/// The open files of a large file being filled: its data and its index.
struct LargeFiles {
    data: File,
    idx: File,
}

/// A piece of a file on its way to the SSD.
struct Job {
    key: u128,
    size: u64,
    chunk: u64,
    start: usize,
    data: Arc<Buf>,
    pin: bool,
}

/// What the write-back thread is sent: pieces to write, or a flush marker answered once
/// everything queued before it is written.
enum Work {
    Write(Job),
    Flush(std::sync::mpsc::Sender<()>),
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

/// Pieces queued for the SSD, by (file key, chunk).
type Pending = Mutex<HashMap<(u128, u64), Vec<(usize, Arc<Buf>)>>>;

fn unpend(pending: &Pending, key: u128, chunk: u64, data: &Arc<Buf>) {
    let mut p = pending.lock();
    if let Some(list) = p.get_mut(&(key, chunk)) {
        list.retain(|(_, d)| !Arc::ptr_eq(d, data));
        if list.is_empty() {
            p.remove(&(key, chunk));
        }
    }
}

fn write_back_loop(inner: Weak<Inner>, rx: Receiver<Work>, pending: Arc<Pending>) {
    while let Ok(first) = rx.recv() {
        let mut work = vec![first];
        while work.len() < WRITE_QUEUE {
            match rx.try_recv() {
                Ok(w) => work.push(w),
                Err(_) => break,
            }
        }
        let Some(inner) = inner.upgrade() else { return };
        let mut jobs = Vec::with_capacity(work.len());
        let mut flushed = Vec::new();
        for w in work {
            match w {
                Work::Write(j) => jobs.push(j),
                Work::Flush(done) => flushed.push(done),
            }
        }
        let n = jobs.len() as u64;
        let done: Vec<(u128, u64, Arc<Buf>)> = jobs
            .iter()
            .map(|j| (j.key, j.chunk, j.data.clone()))
            .collect();
        inner.write_batch(jobs);
        for (key, chunk, data) in done {
            unpend(&pending, key, chunk, &data);
        }
        inner.stats.disk_queued.fetch_sub(n, Relaxed);
        // Everything sent before these markers is written now.
        for f in flushed {
            let _ = f.send(());
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

    /// Writes what the queue gave: each piece in place, then the data synced once per
    /// file, then the records that make the ranges count as present.
    fn write_batch(&self, jobs: Vec<Job>) {
        let mut pending = Vec::new();
        for job in jobs {
            if job.size <= self.chunk_size {
                let result = self.write_small(&job);
                self.note(result);
                continue;
            }
            // A large file's piece counts once its record is written, below.
            match self.write_large_data(&job) {
                Ok(Some((r, files))) => pending.push((job, r, files)),
                Ok(None) => {}
                Err(e) => self.note(Err(e)),
            }
        }
        let mut synced: Vec<u128> = Vec::new();
        for (job, r, files) in pending {
            let result = (|| -> io::Result<bool> {
                if !synced.contains(&job.key) {
                    files.data.sync_data()?;
                    synced.push(job.key);
                }
                let rec = layout::encode_record(&r);
                let at = files.idx.metadata()?.len();
                files.idx.write_all_at(&rec, at)?;
                let mut ix = self.index.lock();
                let unit = self.unit;
                let chunk_size = self.chunk_size;
                let ok = ix.update(job.key, |e| {
                    if let Shape::Large(l) = &mut e.shape {
                        l.apply(r);
                        l.idx_len = at + layout::IDX_RECORD as u64;
                        let charged = l.data_bytes(unit, chunk_size) + on_disk(l.idx_len);
                        e.set_charged(charged);
                    }
                });
                ix.reserved = ix.reserved.saturating_sub(pending_charge(job.data.len()));
                if !ok {
                    // Evicted while being written: undo what was written.
                    drop(ix);
                    self.forget(job.key, false);
                } else {
                    if job.pin {
                        ix.pin(job.key);
                    }
                    self.publish(&ix);
                }
                Ok(ok)
            })();
            self.note(result);
        }
    }

    /// Counts a write: Ok(true) written, Ok(false) nothing was (already there, or no
    /// room: counted where refused), Err failed.
    fn note(&self, result: io::Result<bool>) {
        match result {
            Ok(written) => {
                if written {
                    self.stats.disk_writes.fetch_add(1, Relaxed);
                }
                if self.failing.swap(false, Relaxed) {
                    info!("SSD tier writes succeed again");
                }
            }
            Err(e) => {
                self.stats.disk_write_errors.fetch_add(1, Relaxed);
                if !self.failing.swap(true, Relaxed) {
                    warn!(
                        "SSD tier write failed ({e}); serving from RAM and the source until \
                         writes succeed again"
                    );
                }
            }
        }
    }

    /// Room for `bytes` more, evicting by CLOCK (never `protect`). False: no room (all
    /// that is left is pinned or being written): the write is dropped.
    fn reserve(&self, bytes: u64, protect: u128) -> bool {
        let victims = {
            let mut ix = self.index.lock();
            match ix.make_room(bytes, protect) {
                Ok(v) => {
                    ix.reserved += bytes;
                    self.publish(&ix);
                    Ok(v)
                }
                Err(v) => {
                    self.publish(&ix);
                    Err(v)
                }
            }
        };
        let (ok, victims) = match victims {
            Ok(v) => (true, v),
            Err(v) => {
                self.stats.disk_writes_dropped.fetch_add(1, Relaxed);
                (false, v)
            }
        };
        for v in &victims {
            self.writers.lock().pop(&v.key);
            self.unlink(v);
            self.stats.disk_evictions.fetch_add(1, Relaxed);
        }
        ok
    }

    fn unreserve(&self, bytes: u64) {
        let mut ix = self.index.lock();
        ix.reserved = ix.reserved.saturating_sub(bytes);
        self.publish(&ix);
    }

    /// A small file: written to tmp/ and renamed into place, so it is never seen partial.
    /// True if written; false if there was nothing to write or no room.
    fn write_small(&self, job: &Job) -> io::Result<bool> {
        if job.start != 0 || job.data.len() as u64 != job.size || job.size == 0 {
            return Ok(false);
        }
        if self.index.lock().contains(job.key) {
            return Ok(false);
        }
        let charge = on_disk(job.size);
        if !self.reserve(charge, job.key) {
            return Ok(false);
        }
        let len = job.size as u32;
        let sum = xxh3_64(&job.data);
        let tmp = format!("{}.tmp", self.tmp_seq.fetch_add(1, Relaxed));
        let dest = small_path(job.key, len, sum);
        let result = (|| -> io::Result<u32> {
            let f = self
                .tmp
                .open_file(&tmp, OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL)?;
            f.write_all_at(&job.data, 0)?;
            self.files.mkdir_all(&layout::bucket(job.key))?;
            let (bucket, name) = self
                .files
                .open_parent(&dest)?
                .ok_or_else(|| io::Error::from_raw_os_error(libc::EINVAL))?;
            nix::fcntl::renameat(self.tmp.fd(), tmp.as_str(), &bucket, name)?;
            // Stamped after the rename (which changes the ctime): these bytes are known
            // good, so its first passthrough open needs no re-hash.
            Ok(stamp_of(&f.metadata()?))
        })();
        if result.is_err() {
            let _ = self.tmp.remove_file(&tmp);
        }
        let mut ix = self.index.lock();
        ix.reserved = ix.reserved.saturating_sub(charge);
        if let Ok(stamp) = result {
            let mut e = Entry::new(job.key, Shape::Small { len, sum }, charge);
            e.last_use = index::minutes_now();
            e.stamp = stamp;
            ix.insert(e, job.pin);
        }
        self.publish(&ix);
        result.map(|_| true)
    }

    /// A piece of a large file written in place (not yet counted as present).
    fn write_large_data(&self, job: &Job) -> io::Result<Option<(Record, Arc<LargeFiles>)>> {
        let chunk_len =
            (job.size.saturating_sub(job.chunk * self.chunk_size)).min(self.chunk_size) as usize;
        let (start, end) = (job.start, job.start + job.data.len());
        if end > chunk_len
            || start % self.unit as usize != 0
            || (end % self.unit as usize != 0 && end != chunk_len)
        {
            return Ok(None);
        }
        let first = (start as u64 / self.unit) as u32;
        let units = ((end - start) as u64).div_ceil(self.unit) as u32;
        let want = unit_mask(first, units);
        let (exists, present) = {
            let ix = self.index.lock();
            match ix.get(job.key).map(|e| &e.shape) {
                Some(Shape::Large(l)) => {
                    (true, l.masks.get(job.chunk as usize).copied().unwrap_or(0))
                }
                Some(Shape::Small { .. }) => return Ok(None),
                None => (false, 0),
            }
        };
        if present & want == want {
            return Ok(None);
        }
        let charge = on_disk((end - start) as u64) + if exists { 0 } else { 4096 };
        if !self.reserve(charge, job.key) {
            return Ok(None);
        }
        let files = match self.writer_for(job, exists) {
            Ok(f) => f,
            Err(e) => {
                self.unreserve(charge);
                return Err(e);
            }
        };
        if let Err(e) = files
            .data
            .write_all_at(&job.data, job.chunk * self.chunk_size + start as u64)
        {
            self.unreserve(charge);
            return Err(e);
        }
        let sum = xxh3_64(&job.data);
        Ok(Some((
            Record {
                chunk: job.chunk as u32,
                first: first as u8,
                units: units as u8,
                sum,
            },
            files,
        )))
    }

    /// The open (data, index) files of a large file, created (with the index header and
    /// an index entry) if new.
    fn writer_for(&self, job: &Job, exists: bool) -> io::Result<Arc<LargeFiles>> {
        if let Some(w) = self.writers.lock().get(&job.key) {
            return Ok(w.clone());
        }
        self.files.mkdir_all(&layout::bucket(job.key))?;
        let rw = OFlag::O_RDWR | OFlag::O_CREAT;
        let data = File::from(self.files.open_at(&data_path(job.key), rw)?);
        let idx = File::from(self.files.open_at(&index_path(job.key), rw)?);
        if !exists || idx.metadata()?.len() < layout::IDX_HEADER as u64 {
            // A new file: header first, then the data file at its full (sparse) length, so
            // a backing file of it has the right size from the start.
            idx.set_len(0)?;
            idx.write_all_at(
                &layout::encode_header(&IdxHeader {
                    key: job.key,
                    size: job.size,
                    chunk_size: self.chunk_size as u32,
                    unit: self.unit as u32,
                }),
                0,
            )?;
            data.set_len(job.size)?;
            let mut ix = self.index.lock();
            if !ix.contains(job.key) {
                let mut e = Entry::new(
                    job.key,
                    Shape::Large(Box::new(Large {
                        size: job.size,
                        idx_len: layout::IDX_HEADER as u64,
                        ..Default::default()
                    })),
                    4096,
                );
                e.last_use = index::minutes_now();
                ix.insert(e, false);
                ix.reserved = ix.reserved.saturating_sub(4096);
            }
        }
        let w = Arc::new(LargeFiles { data, idx });
        self.writers.lock().put(job.key, w.clone());
        Ok(w)
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

/// What a large piece was charged when reserved (its data; the index header is charged
/// once, when the file is made).
fn pending_charge(len: usize) -> u64 {
    on_disk(len as u64)
}
