//! The SSD tier's write-back: one thread takes pieces from a bounded queue, writes each in
//! place (a small file whole, under a temporary name, then renamed; a large file's range
//! into its `.data`), syncs each file once per batch, and only then appends the `.idx`
//! records that make the ranges count as present, so a crash leaves nothing unverified.

use std::collections::HashMap;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::mpsc::Receiver;
use std::sync::{Arc, Weak};

use nix::fcntl::OFlag;
use parking_lot::Mutex;
use tracing::{info, warn};
use xxhash_rust::xxh3::xxh3_64;

use super::index::{self, Entry, Large, Shape, on_disk, unit_mask};
use super::layout::{self, IdxHeader, Record};
use super::{Inner, WRITE_QUEUE, data_path, index_path, small_path, stamp_of};
use crate::buf::Buf;

/// The open files of a large file being filled: its data and its index.
pub(super) struct LargeFiles {
    data: File,
    idx: File,
}

/// A piece of a file on its way to the SSD.
pub(super) struct Job {
    pub(super) key: u128,
    pub(super) size: u64,
    pub(super) chunk: u64,
    pub(super) start: usize,
    pub(super) data: Arc<Buf>,
    pub(super) pin: bool,
}

/// What the write-back thread is sent: pieces to write, or a flush marker answered once
/// everything queued before it is written.
pub(super) enum Work {
    Write(Job),
    Flush(std::sync::mpsc::Sender<()>),
}

/// Pieces queued for the SSD, by (file key, chunk).
pub(super) type Pending = Mutex<HashMap<(u128, u64), Vec<(usize, Arc<Buf>)>>>;

pub(super) fn unpend(pending: &Pending, key: u128, chunk: u64, data: &Arc<Buf>) {
    let mut p = pending.lock();
    if let Some(list) = p.get_mut(&(key, chunk)) {
        list.retain(|(_, d)| !Arc::ptr_eq(d, data));
        if list.is_empty() {
            p.remove(&(key, chunk));
        }
    }
}

pub(super) fn write_back_loop(inner: Weak<Inner>, rx: Receiver<Work>, pending: Arc<Pending>) {
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
    /// Writes what the queue gave: each piece in place, then the data synced once per
    /// file, then the records that make the ranges count as present.
    pub(super) fn write_batch(&self, jobs: Vec<Job>) {
        let mut pending = Vec::new();
        // Per large file in this batch: whether its data file was still as bicache last
        // left it (its stamp) before this batch's first write to it. Only then does the
        // stamp follow this batch's writes, so a file bicache filled itself needs no
        // re-hash at its first passthrough open, and any other change is hashed there.
        let mut custody: HashMap<u128, bool> = HashMap::new();
        for job in jobs {
            if job.size <= self.chunk_size {
                let result = self.write_small(&job);
                self.note(result);
                continue;
            }
            // A large file's piece counts once its record is written, below.
            match self.write_large_data(&job, &mut custody) {
                Ok(Some((r, files))) => pending.push((job, r, files)),
                Ok(None) => {}
                Err(e) => self.note(Err(e)),
            }
        }
        let mut synced: Vec<u128> = Vec::new();
        for (job, r, files) in pending {
            let result = (|| -> io::Result<bool> {
                let mut stamp = None;
                if !synced.contains(&job.key) {
                    files.data.sync_data()?;
                    synced.push(job.key);
                    if custody.get(&job.key) == Some(&true) {
                        stamp = Some(stamp_of(&files.data.metadata()?));
                    }
                }
                let rec = layout::encode_record(&r);
                let at = files.idx.metadata()?.len();
                files.idx.write_all_at(&rec, at)?;
                let mut ix = self.index.lock();
                let unit = self.unit;
                let chunk_size = self.chunk_size;
                let ok = ix.update(job.key, |e| {
                    if let Some(stamp) = stamp {
                        e.stamp = stamp;
                    }
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
    fn write_large_data(
        &self,
        job: &Job,
        custody: &mut HashMap<u128, bool>,
    ) -> io::Result<Option<(Record, Arc<LargeFiles>)>> {
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
        custody.entry(job.key).or_insert_with(|| {
            files.data.metadata().is_ok_and(|m| {
                let stamp = stamp_of(&m);
                let ix = self.index.lock();
                ix.get(job.key).is_some_and(|e| e.stamp == stamp)
            })
        });
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
            let stamp = stamp_of(&data.metadata()?);
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
                // Made by bicache just now, holding nothing yet: the custody chain starts.
                e.stamp = stamp;
                ix.insert(e, false);
                ix.reserved = ix.reserved.saturating_sub(4096);
            }
        }
        let w = Arc::new(LargeFiles { data, idx });
        self.writers.lock().put(job.key, w.clone());
        Ok(w)
    }
}

/// What a large piece was charged when reserved (its data; the index header is charged
/// once, when the file is made).
pub(super) fn pending_charge(len: usize) -> u64 {
    on_disk(len as u64)
}
