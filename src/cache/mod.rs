//! The chunk cache: `read(file, offset, len)` across the RAM tier, the SSD tier and the
//! source. Knows nothing of FUSE.
//!
//! One chunk's way in: RAM -> SSD (verified, promoted to RAM) -> source (single-flight:
//! one fetch however many readers wait) -> RAM, and queued for the SSD tier off the
//! read path. A sequential reader also gets the next chunks fetched in the background.

pub mod disk;
mod lru;
pub mod ram;

use std::collections::{HashMap, HashSet};
use std::io;

use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};
use std::sync::{Arc, Weak};
use std::thread::JoinHandle;

use parking_lot::{Condvar, Mutex, RwLock};
use tracing::{debug, warn};
use xxhash_rust::xxh3::Xxh3;

use crate::buf::Buf;
use crate::source::{FileVersion, Source};
use crate::stats::Stats;
use disk::DiskTier;
use ram::RamTier;

/// A chunk's bytes, shared between the RAM tier, waiting readers and the write-back queue.
pub type Chunk = Arc<Buf>;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ChunkKey {
    /// Identity of one version of one file (see `FileVersion::key`).
    pub file: u128,
    pub index: u64,
}

impl ChunkKey {
    fn shard_hash(&self) -> u64 {
        (self.file as u64) ^ (self.index.wrapping_mul(0x9E37_79B9_7F4A_7C15))
    }
}

/// A file as the cache sees it: the version it was opened at and that version's key.
#[derive(Debug, Clone)]
pub struct CachedFile {
    pub version: FileVersion,
    key: u128,
}

/// Per open file handle: detects sequential reading and how far ahead it was fetched.
#[derive(Default)]
pub struct Stream {
    /// Last chunk index read + 1 (0 = nothing yet).
    next_chunk: AtomicU64,
    /// Readahead window in chunks; 0 = not (yet) sequential.
    window: AtomicU64,
    /// Chunks below this index were already queued for readahead.
    queued_until: AtomicU64,
}

/// Which chunks are kept for good (see `lru.rs` for why).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PinPolicy {
    /// Plain LRU.
    Off,
    /// Any chunk, first come, while the pinned area has room (an unsharded dataset).
    All,
    /// Chunks of the files in the pinned set (this shard's files).
    Set,
}

/// Share of a tier's budget that pinned chunks may take; the rest stays a plain LRU for
/// everything else (out-of-shard files, metadata, other jobs' reads).
const PIN_SHARE: f64 = 0.95;

pub struct CacheConfig {
    pub chunk_size: u64,
    pub ram_bytes: u64,
    pub fetch_threads: usize,
    /// Largest readahead window, in bytes.
    pub max_readahead: u64,
    pub pin: PinPolicy,
}

/// Why a chunk is wanted: decides counting, RAM admission and priority.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Purpose {
    /// A reader waits for it: counted in hit rates.
    Read,
    /// Readahead for a sequential reader: it will be read from RAM soon.
    Readahead,
    /// Shard prefetch: destined for the SSD tier; kept in RAM only without one.
    Prefetch,
}

/// What prefetching one file achieved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PrefetchOutcome {
    /// Every chunk is cached (fetched now or already there).
    Cached,
    /// The pinned area is full: prefetch should stop.
    NoRoom,
}

/// Write-back queue depth in chunks: bounds memory held by chunks waiting for the SSD.
const WRITE_QUEUE: usize = 32;
/// Readahead jobs waiting for a fetch thread; more are dropped (a reader will ask anyway).
const READAHEAD_QUEUE: usize = 256;
const INFLIGHT_SHARDS: usize = 16;

/// The part of the RAM budget the RAM tier itself may hold. Chunks in flight (being fetched,
/// queued for the SSD tier, being replied) and freed buffers kept for reuse (buf.rs) live
/// outside the tier but in the same memory, so they are set aside from the budget: resident
/// memory then follows the budget the user gave, not the budget plus the traffic
/// (measured: 2 GiB budget, 2,189 MiB peak RSS before).
fn ram_tier_bytes(budget: u64, chunk_size: u64, fetch_threads: usize) -> u64 {
    let in_flight =
        (WRITE_QUEUE + fetch_threads + 16) as u64 * chunk_size + crate::buf::POOL_BYTES as u64;
    budget - in_flight.min(budget / 4)
}

/// A chunk on its way to the SSD tier, and whether it is to be pinned there.
type WriteJob = (ChunkKey, Chunk, bool);

/// Share of a tier's budget pinned chunks may take under a pinning policy.
pub fn pinned_share(capacity: u64, policy: PinPolicy) -> u64 {
    match policy {
        PinPolicy::Off => 0,
        _ => (capacity as f64 * PIN_SHARE) as u64,
    }
}

/// Chunks being fetched, each with the flight its waiters wait on.
type FlightMap = HashMap<ChunkKey, Arc<Flight>>;

struct Flight {
    done: Mutex<Option<Result<Chunk, i32>>>,
    cond: Condvar,
}

pub struct ChunkCache {
    chunk_size: u64,
    pin: PinPolicy,
    /// File keys whose chunks are pinned under `PinPolicy::Set`.
    pinned_files: RwLock<HashSet<u128>>,
    /// Readers currently waiting on the source: prefetch yields to them.
    readers_fetching: AtomicU64,
    /// Bytes prefetch has fetched (bounds prefetch under plain LRU).
    prefetched_bytes: AtomicU64,
    ram_capacity: u64,
    max_window: u64,
    ram: RamTier,
    disk: Option<DiskTier>,
    source: Arc<Source>,
    stats: Arc<Stats>,
    inflight: Box<[Mutex<FlightMap>]>,
    write_tx: Mutex<Option<SyncSender<WriteJob>>>,
    readahead_tx: Mutex<Option<SyncSender<(CachedFile, u64)>>>,
    threads: Mutex<Vec<JoinHandle<()>>>,
    shutting_down: std::sync::atomic::AtomicBool,
}

impl ChunkCache {
    pub fn new(
        cfg: CacheConfig,
        disk: Option<DiskTier>,
        source: Arc<Source>,
        stats: Arc<Stats>,
    ) -> Arc<ChunkCache> {
        let (write_tx, write_rx) = sync_channel::<WriteJob>(WRITE_QUEUE);
        let (ra_tx, ra_rx) = sync_channel::<(CachedFile, u64)>(READAHEAD_QUEUE);
        let ram_pinned = if cfg.pin != PinPolicy::Off && disk.is_none() {
            (cfg.ram_bytes as f64 * PIN_SHARE) as u64
        } else {
            0
        };
        stats.ram_capacity.store(cfg.ram_bytes, Relaxed);
        let cache = Arc::new(ChunkCache {
            chunk_size: cfg.chunk_size,
            pin: cfg.pin,
            pinned_files: RwLock::new(HashSet::new()),
            readers_fetching: AtomicU64::new(0),
            prefetched_bytes: AtomicU64::new(0),
            ram_capacity: cfg.ram_bytes,
            max_window: (cfg.max_readahead / cfg.chunk_size).max(2),
            ram: RamTier::new(
                ram_tier_bytes(cfg.ram_bytes, cfg.chunk_size, cfg.fetch_threads),
                ram_pinned,
                cfg.chunk_size,
                stats.clone(),
            ),
            disk,
            source,
            stats,
            inflight: (0..INFLIGHT_SHARDS)
                .map(|_| Mutex::new(HashMap::new()))
                .collect(),
            write_tx: Mutex::new(Some(write_tx)),
            readahead_tx: Mutex::new(Some(ra_tx)),
            threads: Mutex::new(Vec::new()),
            shutting_down: std::sync::atomic::AtomicBool::new(false),
        });
        let mut threads = Vec::new();
        // The writer holds only a weak reference, so dropping the cache ends it.
        let weak = Arc::downgrade(&cache);
        threads.push(
            std::thread::Builder::new()
                .name("bicache-writeback".into())
                .spawn(move || write_back_loop(weak, write_rx))
                .expect("spawn write-back thread"),
        );
        let ra_rx = Arc::new(Mutex::new(ra_rx));
        for i in 0..cfg.fetch_threads {
            let weak = Arc::downgrade(&cache);
            let rx = ra_rx.clone();
            threads.push(
                std::thread::Builder::new()
                    .name(format!("bicache-fetch-{i}"))
                    .spawn(move || readahead_loop(weak, rx))
                    .expect("spawn fetch thread"),
            );
        }
        *cache.threads.lock() = threads;
        cache
    }

    pub fn has_disk(&self) -> bool {
        self.disk.is_some()
    }

    pub fn chunk_size(&self) -> u64 {
        self.chunk_size
    }

    /// The cache's view of one version of a file. The key covers path, size, mtime and
    /// chunk size, so a changed source file can never hit chunks of its old version.
    pub fn file(&self, version: FileVersion) -> CachedFile {
        let mut h = Xxh3::new();
        h.update(version.path.as_os_str().as_encoded_bytes());
        h.update(&[0]);
        h.update(&version.size.to_le_bytes());
        h.update(&version.mtime_ns.to_le_bytes());
        h.update(&version.ctime_ns.to_le_bytes());
        h.update(&self.chunk_size.to_le_bytes());
        CachedFile {
            key: h.digest128(),
            version,
        }
    }

    /// The SSD tier's file of a file held whole in one chunk, verified, for the kernel to
    /// read directly (FUSE passthrough). None when the file spans several chunks, is empty,
    /// is in the RAM tier, or is not (or no longer) on the SSD tier: such files are read
    /// through `read`.
    pub fn whole_file_on_disk(&self, file: &CachedFile) -> Option<std::fs::File> {
        let size = file.version.size;
        if size == 0 || size > self.chunk_size {
            return None;
        }
        let key = ChunkKey {
            file: file.key,
            index: 0,
        };
        // Measured: served from the RAM tier through the daemon beats the kernel reading
        // the SSD file (docs/TUNING.md), so passthrough is for what RAM doesn't hold.
        if self.ram.contains(&key) {
            return None;
        }
        let (f, read) = self
            .disk
            .as_ref()?
            .open_for_passthrough(&key, size as usize)?;
        if let Some(data) = read {
            // Read anyway to check it (first open after a mount): keep it where RAM is
            // free, so the RAM tier warms up even though passthrough reads bypass it.
            self.ram.insert_if_room(key, Arc::new(data));
        }
        // The reads that follow never reach the daemon: this open is the file's one chunk
        // lookup, a RAM miss and an SSD hit like any other read served from the SSD.
        self.stats.ram_misses.fetch_add(1, Relaxed);
        self.stats.disk_hits.fetch_add(1, Relaxed);
        Some(f)
    }

    fn chunk_len(&self, file: &CachedFile, index: u64) -> usize {
        let start = index * self.chunk_size;
        (file.version.size.saturating_sub(start)).min(self.chunk_size) as usize
    }

    /// Reads up to `len` bytes at `offset` and hands them to `out` (once, contiguous).
    pub fn read<R>(
        &self,
        file: &CachedFile,
        offset: u64,
        len: u32,
        stream: &Stream,
        out: impl FnOnce(&[u8]) -> R,
    ) -> io::Result<R> {
        let size = file.version.size;
        if offset >= size || len == 0 {
            return Ok(out(&[]));
        }
        let end = (offset + len as u64).min(size);
        let first = offset / self.chunk_size;
        let last = (end - 1) / self.chunk_size;
        self.advance_stream(file, stream, first, last);
        if first == last {
            // The common case: no copy, the reply is sliced straight out of the chunk.
            let chunk = self.get_chunk(file, first, Purpose::Read)?;
            let base = first * self.chunk_size;
            let a = (offset - base) as usize;
            let b = ((end - base) as usize).min(chunk.len());
            return Ok(out(&chunk[a.min(b)..b]));
        }
        let mut buf = Vec::with_capacity((end - offset) as usize);
        for index in first..=last {
            let chunk = self.get_chunk(file, index, Purpose::Read)?;
            let base = index * self.chunk_size;
            let a = offset.saturating_sub(base) as usize;
            let b = ((end - base) as usize).min(chunk.len());
            if a < b {
                buf.extend_from_slice(&chunk[a..b]);
            }
        }
        Ok(out(&buf))
    }

    /// Whether chunks of this file are to be pinned.
    fn pinned(&self, file: &CachedFile) -> bool {
        match self.pin {
            PinPolicy::Off => false,
            PinPolicy::All => true,
            PinPolicy::Set => self.pinned_files.read().contains(&file.key),
        }
    }

    /// Declares the files whose chunks are pinned (this shard) and pins what the SSD
    /// tier already holds of them.
    pub fn set_pinned_files(&self, files: &[CachedFile]) {
        let set: HashSet<u128> = files.iter().map(|f| f.key).collect();
        if let Some(disk) = &self.disk {
            disk.repin(|k| set.contains(&k.file));
        }
        *self.pinned_files.write() = set;
    }

    /// Re-pins chunks found on disk at mount when every chunk is eligible.
    pub fn repin_all(&self) {
        if let Some(disk) = &self.disk {
            disk.repin(|_| true);
        }
    }

    /// Budget of the capacity tier (SSD, else RAM).
    fn capacity(&self) -> u64 {
        match &self.disk {
            Some(d) => d.capacity(),
            None => self.ram_capacity,
        }
    }

    /// Bytes the pinned area of the capacity tier (SSD, else RAM) can still take.
    pub fn pinned_room(&self) -> u64 {
        match &self.disk {
            Some(d) => d.pinned_room(),
            None => self.ram.pinned_room(),
        }
    }

    /// Fetches every chunk of `file` not yet cached, into the SSD tier (RAM without one),
    /// pinned. Yields to readers waiting on the source, so prefetch never delays them long.
    pub fn prefetch_file(&self, planned: &CachedFile) -> io::Result<PrefetchOutcome> {
        // The plan may come from a cached walk: fetch the version the source has now, and
        // pin that one, so readers (who see fresh attributes) hit what was prefetched.
        let meta = self.source.lstat(&planned.version.path)?;
        if !meta.is_file() {
            return Ok(PrefetchOutcome::Cached);
        }
        let fresh = self.file(FileVersion::of(planned.version.path.clone(), &meta));
        if fresh.key != planned.key && self.pin == PinPolicy::Set {
            self.pinned_files.write().insert(fresh.key);
        }
        let file = &fresh;
        let missing: Vec<u64> = (0..file.version.size.div_ceil(self.chunk_size))
            .filter(|&index| {
                let key = ChunkKey {
                    file: file.key,
                    index,
                };
                match &self.disk {
                    Some(d) => !d.contains(&key),
                    None => !self.ram.contains(&key),
                }
            })
            .collect();
        if missing.is_empty() {
            return Ok(PrefetchOutcome::Cached);
        }
        // Room for what is missing: in the pinned area when pinning, else in the capacity
        // tier as a whole (prefetching more than fits would only churn the LRU).
        let per_chunk = ram::CHUNK_OVERHEAD;
        let need = missing
            .iter()
            .map(|&i| self.chunk_len(file, i) as u64 + per_chunk)
            .sum::<u64>();
        let room = if self.pin == PinPolicy::Off {
            self.capacity()
                .saturating_sub(self.prefetched_bytes.load(Relaxed))
        } else {
            self.pinned_room()
        };
        if need > room {
            return Ok(PrefetchOutcome::NoRoom);
        }
        self.prefetched_bytes.fetch_add(need, Relaxed);
        for index in missing {
            for _ in 0..50 {
                if self.readers_fetching.load(Relaxed) == 0 {
                    break;
                }
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
            self.get_chunk(file, index, Purpose::Prefetch)?;
        }
        Ok(PrefetchOutcome::Cached)
    }

    /// Returns one chunk from the fastest tier that has it.
    fn get_chunk(&self, file: &CachedFile, index: u64, purpose: Purpose) -> io::Result<Chunk> {
        let count = purpose == Purpose::Read;
        let key = ChunkKey {
            file: file.key,
            index,
        };
        if let Some(c) = self.ram.get(&key) {
            if count {
                self.stats.ram_hits.fetch_add(1, Relaxed);
            }
            return Ok(c);
        }
        if count {
            self.stats.ram_misses.fetch_add(1, Relaxed);
        }
        let shard = &self.inflight[(key.shard_hash() % INFLIGHT_SHARDS as u64) as usize];
        let (flight, leader) = {
            let mut map = shard.lock();
            match map.get(&key) {
                Some(f) => (f.clone(), false),
                None => {
                    let f = Arc::new(Flight {
                        done: Mutex::new(None),
                        cond: Condvar::new(),
                    });
                    map.insert(key, f.clone());
                    (f, true)
                }
            }
        };
        if !leader {
            let mut done = flight.done.lock();
            while done.is_none() {
                flight.cond.wait(&mut done);
            }
            return done.clone().unwrap().map_err(io::Error::from_raw_os_error);
        }
        if count {
            self.readers_fetching.fetch_add(1, Relaxed);
        }
        let pin = self.pinned(file);
        let result = self.fetch_below_ram(file, key, pin, count);
        if count {
            self.readers_fetching.fetch_sub(1, Relaxed);
        }
        // Publish to RAM before leaving the flight, so a reader arriving now finds it.
        // Prefetched chunks go to the SSD tier only: they must not push readers' data out.
        if let Ok((c, true)) = &result
            && (purpose != Purpose::Prefetch || self.disk.is_none())
        {
            self.ram.insert(key, c.clone(), pin && self.disk.is_none());
        }
        let result = result.map(|(c, _)| c);
        shard.lock().remove(&key);
        *flight.done.lock() = Some(
            result
                .as_ref()
                .map(Clone::clone)
                .map_err(|e| e.raw_os_error().unwrap_or(libc::EIO)),
        );
        flight.cond.notify_all();
        result
    }

    /// SSD tier, then the source. Run by exactly one thread per missing chunk.
    /// The flag says whether the chunk may be cached (it is of the expected version).
    fn fetch_below_ram(
        &self,
        file: &CachedFile,
        key: ChunkKey,
        pin: bool,
        count: bool,
    ) -> io::Result<(Chunk, bool)> {
        let len = self.chunk_len(file, key.index);
        if let Some(disk) = &self.disk
            && let Some(data) = disk.get(&key, len)
        {
            if count {
                self.stats.disk_hits.fetch_add(1, Relaxed);
            }
            return Ok((Arc::new(data), true));
        }
        if count && self.disk.is_some() {
            self.stats.disk_misses.fetch_add(1, Relaxed);
        }
        let data = self
            .source
            .read_chunk(&file.version, key.index * self.chunk_size, len)
            .inspect_err(|e| {
                self.stats.source_errors.fetch_add(1, Relaxed);
                if e.raw_os_error() == Some(libc::ESTALE) {
                    warn!(path = %file.version.path.display(),
                          "the source no longer holds the version being read: stale");
                } else {
                    debug!(path = %file.version.path.display(), "source read failed: {e}");
                }
            })?;
        let chunk = Arc::new(data);
        if self.disk.is_some() {
            self.queue_write((key, chunk.clone(), pin));
        }
        Ok((chunk, true))
    }

    fn queue_write(&self, job: WriteJob) {
        let tx = self.write_tx.lock().clone();
        if let Some(tx) = tx {
            // Blocking when full is the back-pressure that bounds the queue's memory.
            if tx.send(job).is_err() {
                self.stats.disk_writes_dropped.fetch_add(1, Relaxed);
            }
        }
    }

    /// Readahead policy: a reader whose first chunk follows its previous one is sequential;
    /// its window doubles (up to `max_window`) and chunks ahead are queued for the fetchers.
    fn advance_stream(&self, file: &CachedFile, stream: &Stream, first: u64, last: u64) {
        let prev_next = stream.next_chunk.swap(last + 1, Relaxed);
        let sequential = prev_next > 0 && (first + 1 == prev_next || first == prev_next);
        let window = if sequential {
            let w = (stream.window.load(Relaxed) * 2).clamp(2, self.max_window);
            stream.window.store(w, Relaxed);
            w
        } else {
            stream.window.store(0, Relaxed);
            stream.queued_until.store(0, Relaxed);
            return;
        };
        let n_chunks = file.version.size.div_ceil(self.chunk_size);
        let from = stream.queued_until.load(Relaxed).max(last + 1);
        let to = (last + 1 + window).min(n_chunks);
        if from >= to {
            return;
        }
        stream.queued_until.store(to, Relaxed);
        let tx = self.readahead_tx.lock().clone();
        let Some(tx) = tx else { return };
        for index in from..to {
            let key = ChunkKey {
                file: file.key,
                index,
            };
            // In RAM already: mark it recently used instead, or a reader streaming through
            // more than the RAM tier holds finds it evicted by the time it gets there
            // (measured: 2 GiB of files, 2 GiB budget, 4 streams: most reads then came
            // from the SSD on the reader's path).
            if self.ram.get(&key).is_some() {
                continue;
            }
            match tx.try_send((file.clone(), index)) {
                Ok(()) => {
                    self.stats.readahead_chunks.fetch_add(1, Relaxed);
                }
                Err(TrySendError::Full(_)) => break,
                Err(TrySendError::Disconnected(_)) => return,
            }
        }
    }

    pub fn is_shutting_down(&self) -> bool {
        self.shutting_down.load(Relaxed)
    }

    /// Stops background work and waits until every queued chunk reached the SSD tier.
    pub fn shutdown(&self) {
        self.shutting_down.store(true, Relaxed);
        self.readahead_tx.lock().take();
        self.write_tx.lock().take();
        let threads = std::mem::take(&mut *self.threads.lock());
        for t in threads {
            let _ = t.join();
        }
    }
}

fn write_back_loop(cache: Weak<ChunkCache>, rx: Receiver<WriteJob>) {
    while let Ok((key, chunk, pin)) = rx.recv() {
        let Some(cache) = cache.upgrade() else { return };
        if let Some(disk) = &cache.disk {
            disk.put(&key, &chunk, pin);
        }
    }
}

fn readahead_loop(cache: Weak<ChunkCache>, rx: Arc<Mutex<Receiver<(CachedFile, u64)>>>) {
    loop {
        let job = rx.lock().recv();
        let Ok((file, index)) = job else { return };
        let Some(cache) = cache.upgrade() else { return };
        if let Err(e) = cache.get_chunk(&file, index, Purpose::Readahead) {
            debug!(path = %file.version.path.display(), index, "readahead failed: {e}");
        }
    }
}
