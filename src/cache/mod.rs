//! The chunk cache: `read(file, offset, len)` across the RAM tier, the SSD tier and the
//! source. Knows nothing of FUSE.
//!
//! One chunk's way in: RAM -> SSD (checked, promoted to RAM when whole) -> source
//! (single-flight: one fetch however many readers wait) -> RAM, and handed to the SSD
//! tier, which writes it off the read path. What is fetched follows the reader
//! (`readahead.rs`): whole chunks and a readahead window for streams and whole-file
//! readers, aligned units of a chunk for random readers.
//!
//! - `key.rs`: which bytes belong to which file version (golden-tested);
//! - `tier.rs`: what a tier is; `ram.rs` (+ `lru.rs`) and `disk/` are the two;
//! - `readahead.rs`: how much to fetch; the fetch threads (readahead for streams, the
//!   background fill of the span a random reader passes over) live here.

pub mod disk;
pub mod key;
mod lru;
pub mod ram;
pub mod readahead;
pub mod tier;

use std::collections::HashSet;
use std::io;
use std::ops::Range;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};
use std::sync::{Arc, Weak};
use std::thread::JoinHandle;

use parking_lot::{Mutex, RwLock};
use tracing::{debug, warn};

use crate::buf::Buf;
use crate::flight::SingleFlight;
use crate::source::{FileVersion, Source};
use crate::stats::{Served, Stats};
pub use key::{CachedFile, ChunkKey};
use ram::RamTier;
pub use readahead::Stream;
use readahead::{Advice, Fetch};
pub use tier::{BackingFile, Piece, Tier};

/// A chunk's bytes, shared between the RAM tier, waiting readers and the write-back queue.
pub type Chunk = Arc<Buf>;

/// Which chunks are kept for good (see `lru.rs` for why).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PinPolicy {
    /// Plain LRU.
    Off,
    /// Any chunk used in this mount, first come, while the pinned area has room (an
    /// unsharded dataset). What an earlier mount pinned is not pinned until used again,
    /// so a changed dataset never freezes the cache with dead versions.
    All,
    /// Chunks of the files in the pinned set (this shard's files).
    Set,
}

/// Share of a tier's budget that pinned chunks may take; the rest stays a plain LRU for
/// everything else (out-of-shard files, other jobs' reads).
pub const PIN_SHARE: f64 = 0.95;

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
pub enum Purpose {
    /// A reader waits for it: counted in hit rates.
    Read,
    /// Readahead for a sequential reader: it will be read from RAM soon.
    Readahead,
    /// Shard prefetch: destined for the SSD tier; kept in RAM only without one.
    Prefetch,
    /// The rest of a region a random reader is passing over: for the SSD tier, and for
    /// RAM only where it has room (the reader comes back to it, but at random, not soon).
    Fill,
}

/// Where a whole chunk fetched for some purpose goes in RAM.
enum RamAdmission {
    /// Inserted, evicting what was used least recently.
    Insert,
    /// Inserted only into free room.
    IfRoom,
    /// Not kept in RAM (the SSD tier keeps it).
    No,
}

impl Purpose {
    fn ram_admission(self, has_disk: bool) -> RamAdmission {
        match self {
            _ if !has_disk => RamAdmission::Insert,
            Purpose::Read | Purpose::Readahead => RamAdmission::Insert,
            Purpose::Fill => RamAdmission::IfRoom,
            Purpose::Prefetch => RamAdmission::No,
        }
    }
}

/// Work for a fetch thread: one chunk, fetched whole.
struct FetchJob {
    file: CachedFile,
    index: u64,
    purpose: Purpose,
    /// For a fill: the open it is for; the job is dropped once that open is released.
    open: Option<Weak<()>>,
}

/// Readahead jobs waiting for a fetch thread; more are dropped (a reader will ask anyway).
const READAHEAD_QUEUE: usize = 256;
/// Fill jobs queued at once, at most: a fill keeps the fetch threads busy but never takes
/// the queue from streams' readahead.
const FILL_QUEUED: u64 = 16;
/// A span is filled only if it takes at most 1/FILL_SHARE of the SSD tier's budget.
const FILL_SHARE: u64 = 4;

/// The part of the RAM budget the RAM tier itself may hold. Chunks in flight (being fetched,
/// queued for the SSD tier, being replied) and freed buffers kept for reuse (buf.rs) live
/// outside the tier but in the same memory, so they are set aside from the budget: resident
/// memory then follows the budget the user gave, not the budget plus the traffic
/// (measured: 2 GiB budget, 2,189 MiB peak RSS before).
fn ram_tier_bytes(budget: u64, chunk_size: u64, fetch_threads: usize) -> u64 {
    let in_flight = (disk::WRITE_QUEUE + fetch_threads + 16) as u64 * chunk_size
        + crate::buf::POOL_BYTES as u64;
    budget - in_flight.min(budget / 4)
}

/// Share of a tier's budget pinned chunks may take under a pinning policy.
pub fn pinned_share(capacity: u64, policy: PinPolicy) -> u64 {
    match policy {
        PinPolicy::Off => 0,
        _ => (capacity as f64 * PIN_SHARE) as u64,
    }
}

/// A flight is one fetch of one range of one chunk.
type FlightKey = (ChunkKey, usize, usize);

pub struct ChunkCache {
    chunk_size: u64,
    /// Units a random reader's fetch is rounded to (see `disk/layout.rs`).
    unit: u64,
    pin: PinPolicy,
    /// File keys whose chunks are pinned under `PinPolicy::Set`.
    pinned_files: RwLock<HashSet<u128>>,
    /// Readers currently waiting on the source: prefetch yields to them.
    readers_fetching: AtomicU64,
    max_window: u64,
    ram: RamTier,
    /// The SSD tier; None without one (`--disk 0`, or an unusable cache dir).
    disk: Option<Arc<disk::DiskTier>>,
    source: Arc<Source>,
    stats: Arc<Stats>,
    flights: SingleFlight<FlightKey, Result<Piece, i32>>,
    readahead_tx: Mutex<Option<SyncSender<FetchJob>>>,
    /// Fill jobs queued and not yet taken by a fetch thread.
    fills_queued: AtomicU64,
    threads: Mutex<Vec<JoinHandle<()>>>,
    shutting_down: AtomicBool,
}

impl ChunkCache {
    pub fn new(
        cfg: CacheConfig,
        disk: Option<disk::DiskTier>,
        source: Arc<Source>,
        stats: Arc<Stats>,
    ) -> Arc<ChunkCache> {
        let (ra_tx, ra_rx) = sync_channel::<FetchJob>(READAHEAD_QUEUE);
        // Without an SSD tier, RAM is the tier that pins.
        let ram_pinned = if disk.is_none() {
            pinned_share(cfg.ram_bytes, cfg.pin)
        } else {
            0
        };
        stats.ram_capacity.store(cfg.ram_bytes, Relaxed);
        let cache = Arc::new(ChunkCache {
            chunk_size: cfg.chunk_size,
            unit: disk::layout::unit(cfg.chunk_size),
            pin: cfg.pin,
            pinned_files: RwLock::new(HashSet::new()),
            readers_fetching: AtomicU64::new(0),
            max_window: (cfg.max_readahead / cfg.chunk_size).max(2),
            ram: RamTier::new(
                ram_tier_bytes(cfg.ram_bytes, cfg.chunk_size, cfg.fetch_threads),
                ram_pinned,
                cfg.chunk_size,
                stats.clone(),
            ),
            disk: disk.map(Arc::new),
            source,
            stats,
            flights: SingleFlight::new(),
            readahead_tx: Mutex::new(Some(ra_tx)),
            fills_queued: AtomicU64::new(0),
            threads: Mutex::new(Vec::new()),
            shutting_down: AtomicBool::new(false),
        });
        let ra_rx = Arc::new(Mutex::new(ra_rx));
        let mut threads = Vec::new();
        for i in 0..cfg.fetch_threads {
            let weak = Arc::downgrade(&cache);
            let rx = ra_rx.clone();
            match std::thread::Builder::new()
                .name(format!("bicache-fetch-{i}"))
                .spawn(move || readahead_loop(weak, rx))
            {
                Ok(t) => threads.push(t),
                // Fewer fetch threads only means less readahead.
                Err(e) => warn!("cannot start a fetch thread: {e}"),
            }
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

    pub fn pin_policy(&self) -> PinPolicy {
        self.pin
    }

    /// The cache's view of one version of a file (see `key.rs`).
    pub fn file(&self, version: FileVersion) -> CachedFile {
        CachedFile::new(version, self.chunk_size)
    }

    /// The tier that holds the most and pins: the SSD tier, else RAM.
    fn capacity_tier(&self) -> &dyn Tier {
        match &self.disk {
            Some(d) => d.as_ref(),
            None => &self.ram,
        }
    }

    /// Passthrough policy: the file the kernel may read directly for this open, checked;
    /// None to read through the daemon. A file held in RAM is served from RAM: measured
    /// faster than the kernel reading the SSD file (docs/TUNING.md).
    pub fn backing_file(&self, file: &CachedFile) -> Option<std::fs::File> {
        if file.size() == 0 || (file.is_small() && self.ram.contains(&file.chunk(0))) {
            return None;
        }
        let b = self.disk.as_ref()?.backing_file(file)?;
        if let Some(data) = b.verified_bytes {
            // Read anyway to check it: keep it where RAM is free, so the RAM tier warms up
            // even though passthrough reads bypass it.
            self.ram.insert_if_room(file.chunk(0), Arc::new(data));
        }
        // The reads that follow never reach the daemon: this open stands for a look-up of
        // each of the file's chunks, RAM misses and SSD hits like any chunk read from the
        // SSD.
        self.stats.ram_misses.fetch_add(file.chunks(), Relaxed);
        self.stats.disk_hits.fetch_add(file.chunks(), Relaxed);
        Some(b.file)
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
        let size = file.size();
        if offset >= size || len == 0 {
            return Ok(out(&[]));
        }
        let end = (offset + len as u64).min(size);
        let first = offset / self.chunk_size;
        let last = (end - 1) / self.chunk_size;
        let span = readahead::Span {
            offset,
            end,
            first,
            last,
            n_chunks: file.chunks(),
        };
        let advice = readahead::advise(stream, span, self.max_window, self.disk.is_some());
        self.queue_readahead(file, &advice);
        if advice.fetch == Fetch::Units {
            let u = self.unit;
            let touched = (end.div_ceil(u) - offset / u) * u;
            if let Some(region) = stream.note_random(span, touched, self.chunk_size) {
                self.queue_fill(file, stream, region);
            }
        }
        let cs = self.chunk_size;
        let range = |index: u64| {
            let base = index * cs;
            let a = offset.saturating_sub(base) as usize;
            let b = ((end - base) as usize).min(file.chunk_len(index));
            a..b
        };
        if first == last {
            // The common case: no copy, the reply is sliced straight out of the chunk.
            let want = range(first);
            let p = self.get(file, first, want.clone(), advice.fetch, Purpose::Read)?;
            return Ok(out(p.slice(&want)));
        }
        let mut buf = Vec::with_capacity((end - offset) as usize);
        for index in first..=last {
            let want = range(index);
            let p = self.get(file, index, want.clone(), advice.fetch, Purpose::Read)?;
            buf.extend_from_slice(p.slice(&want));
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

    /// Declares the files whose chunks are pinned (this shard), pins what the SSD tier
    /// already holds of them and unpins everything else it holds.
    pub fn set_pinned_files(&self, keys: HashSet<u128>) {
        if let Some(d) = &self.disk {
            d.repin(&|k| keys.contains(&k));
        }
        *self.pinned_files.write() = keys;
    }

    /// Adds a file to the pinned set (a prefetched file's current version).
    pub fn pin_file(&self, key: u128) {
        if self.pin == PinPolicy::Set {
            self.pinned_files.write().insert(key);
        }
    }

    /// Bytes the pinned area of the capacity tier can still take.
    pub fn pinned_room(&self) -> u64 {
        self.capacity_tier().pinned_room()
    }

    /// Budget of the capacity tier.
    pub fn capacity(&self) -> u64 {
        self.capacity_tier().capacity()
    }

    /// Whether the capacity tier holds chunk `index` of `file` whole.
    pub fn is_cached(&self, file: &CachedFile, index: u64) -> bool {
        self.capacity_tier().contains(file, index)
    }

    /// Whether RAM or the capacity tier holds chunk `index` whole: nothing to fetch.
    fn holds_whole(&self, file: &CachedFile, index: u64) -> bool {
        self.ram.contains(&file.chunk(index)) || self.is_cached(file, index)
    }

    /// Readers waiting on the source right now (prefetch yields to them).
    pub fn readers_fetching(&self) -> u64 {
        self.readers_fetching.load(Relaxed)
    }

    /// Fetches a whole chunk for the shard prefetch (into the SSD tier; RAM without one).
    pub fn prefetch_chunk(&self, file: &CachedFile, index: u64) -> io::Result<()> {
        let len = file.chunk_len(index);
        self.get(file, index, 0..len, Fetch::Whole, Purpose::Prefetch)
            .map(|_| ())
    }

    pub fn source(&self) -> &Arc<Source> {
        &self.source
    }

    /// Returns bytes `want` of chunk `index` from the fastest tier that has them.
    fn get(
        &self,
        file: &CachedFile,
        index: u64,
        want: Range<usize>,
        fetch: Fetch,
        purpose: Purpose,
    ) -> io::Result<Piece> {
        let count = purpose == Purpose::Read;
        let started = std::time::Instant::now();
        let key = file.chunk(index);
        if let Some(c) = self.ram.get(&key) {
            if count {
                self.stats.ram_hits.fetch_add(1, Relaxed);
                self.stats
                    .read_latency
                    .observe(Served::Ram, started.elapsed());
            }
            return Ok(Piece::whole(c));
        }
        if count {
            self.stats.ram_misses.fetch_add(1, Relaxed);
        }
        let chunk_len = file.chunk_len(index);
        let span = match fetch {
            Fetch::Whole => 0..chunk_len,
            Fetch::Units => {
                let u = self.unit as usize;
                (want.start / u * u)..(want.end.div_ceil(u) * u).min(chunk_len)
            }
        };
        let pin = self.pinned(file);
        let flight = (key, span.start, span.end);
        let disk_hits = self.stats.disk_hits.load(Relaxed);
        let result = self.flights.run(
            &flight,
            || {
                self.fetch_below_ram(file, index, &want, span.clone(), pin, count)
                    .map_err(|e| e.raw_os_error().unwrap_or(libc::EIO))
            },
            |r| {
                // Publish to RAM before leaving the flight, so a reader arriving now finds
                // it. Prefetched chunks go to the SSD tier only: they must not push
                // readers' data out of RAM.
                if let Ok(p) = r
                    && p.start == 0
                    && p.data.len() == chunk_len
                {
                    match purpose.ram_admission(self.disk.is_some()) {
                        RamAdmission::Insert => {
                            self.ram
                                .insert(key, p.data.clone(), pin && self.disk.is_none())
                        }
                        RamAdmission::IfRoom => self.ram.insert_if_room(key, p.data.clone()),
                        RamAdmission::No => {}
                    }
                }
            },
        );
        if count && matches!(result, Some((Ok(_), _))) {
            // Served by the SSD tier if its hits moved meanwhile (approximate under
            // concurrency, exact for the common case), else by the source.
            let by = if self.stats.disk_hits.load(Relaxed) > disk_hits {
                Served::Disk
            } else {
                Served::Source
            };
            self.stats.read_latency.observe(by, started.elapsed());
        }
        match result {
            Some((Ok(p), _)) if p.covers(&want) => Ok(p),
            // Another reader's flight did not cover this read: fetch what this one needs.
            Some((Ok(_), false)) => {
                let u = self.unit as usize;
                let span = (want.start / u * u)..(want.end.div_ceil(u) * u).min(chunk_len);
                self.fetch_below_ram(file, index, &want, span, pin, count)
            }
            Some((Ok(_), true)) => Err(io::Error::from_raw_os_error(libc::EIO)),
            Some((Err(code), _)) => Err(io::Error::from_raw_os_error(code)),
            None => Err(io::Error::from_raw_os_error(libc::EIO)),
        }
    }

    /// SSD tier, then the source. Run by one thread per missing range.
    fn fetch_below_ram(
        &self,
        file: &CachedFile,
        index: u64,
        want: &Range<usize>,
        span: Range<usize>,
        pin: bool,
        count: bool,
    ) -> io::Result<Piece> {
        if let Some(disk) = &self.disk {
            if let Some(p) = disk.get(file, index, want.clone()) {
                if count {
                    self.stats.disk_hits.fetch_add(1, Relaxed);
                }
                return Ok(p);
            }
            if count {
                self.stats.disk_misses.fetch_add(1, Relaxed);
            }
        }
        if count {
            self.readers_fetching.fetch_add(1, Relaxed);
        }
        let fetched = self.source.read_chunk(
            &file.version,
            index * self.chunk_size + span.start as u64,
            span.len(),
        );
        if count {
            self.readers_fetching.fetch_sub(1, Relaxed);
        }
        let data = fetched.inspect_err(|e| {
            self.stats.source_errors.fetch_add(1, Relaxed);
            if e.raw_os_error() == Some(libc::ESTALE) {
                warn!(path = %file.version.path.display(),
                      "the source no longer holds the version being read: stale");
            } else {
                debug!(path = %file.version.path.display(), "source read failed: {e}");
            }
        })?;
        let piece = Piece {
            data: Arc::new(data),
            start: span.start,
        };
        if let Some(disk) = &self.disk {
            disk.put(file, index, &piece, pin);
        }
        Ok(piece)
    }

    /// Queues the chunks ahead of a sequential reader for the fetch threads; those already
    /// in RAM are marked recently used instead, or a reader streaming through more than
    /// the RAM tier holds finds them evicted by the time it gets there (measured: 2 GiB of
    /// files, 2 GiB budget, 4 streams: most reads then came from the SSD on the reader's
    /// path).
    fn queue_readahead(&self, file: &CachedFile, advice: &Advice) {
        if advice.readahead.is_empty() {
            return;
        }
        let tx = self.readahead_tx.lock().clone();
        let Some(tx) = tx else { return };
        for index in advice.readahead.clone() {
            if self.ram.get(&file.chunk(index)).is_some() {
                continue;
            }
            let job = FetchJob {
                file: file.clone(),
                index,
                purpose: Purpose::Readahead,
                open: None,
            };
            match tx.try_send(job) {
                Ok(()) => {
                    self.stats.readahead_chunks.fetch_add(1, Relaxed);
                }
                Err(TrySendError::Full(_)) => break,
                Err(TrySendError::Disconnected(_)) => return,
            }
        }
    }

    /// Queues the chunks of the region a random reader is passing over, to be fetched
    /// whole in the background into the SSD tier, a few at a time from where the last
    /// call stopped (each chunk once per open). Only with an SSD tier, and only for a
    /// region that takes a small share of it (a bigger one would push the rest of the
    /// cache out for one pass).
    fn queue_fill(&self, file: &CachedFile, stream: &Stream, region: Range<u64>) {
        let Some(disk) = &self.disk else { return };
        let mut index = stream.fill_from().max(region.start);
        // Done already (every later read of the pass comes here), or too big to fill.
        if index >= region.end
            || (region.end - region.start) * self.chunk_size > disk.capacity() / FILL_SHARE
        {
            return;
        }
        let tx = self.readahead_tx.lock().clone();
        let Some(tx) = tx else { return };
        while index < region.end {
            if !self.holds_whole(file, index) {
                if self.fills_queued.load(Relaxed) >= FILL_QUEUED {
                    break;
                }
                let job = FetchJob {
                    file: file.clone(),
                    index,
                    purpose: Purpose::Fill,
                    open: Some(stream.open_token()),
                };
                self.fills_queued.fetch_add(1, Relaxed);
                if tx.try_send(job).is_err() {
                    self.fills_queued.fetch_sub(1, Relaxed);
                    break;
                }
                self.stats.readahead_chunks.fetch_add(1, Relaxed);
            }
            index += 1;
        }
        stream.fill_to(index);
    }

    pub fn is_shutting_down(&self) -> bool {
        self.shutting_down.load(Relaxed)
    }

    /// Stops background work and waits until every queued chunk reached the SSD tier.
    pub fn shutdown(&self) {
        self.shutting_down.store(true, Relaxed);
        self.readahead_tx.lock().take();
        let threads = std::mem::take(&mut *self.threads.lock());
        for t in threads {
            let _ = t.join();
        }
        if let Some(d) = &self.disk {
            d.shutdown();
        }
    }

    /// Waits until everything fetched so far is on the SSD tier.
    pub fn flush(&self) {
        if let Some(d) = &self.disk {
            d.flush();
        }
    }
}

fn readahead_loop(cache: Weak<ChunkCache>, rx: Arc<Mutex<Receiver<FetchJob>>>) {
    loop {
        let job = rx.lock().recv();
        let Ok(FetchJob {
            file,
            index,
            purpose,
            open,
        }) = job
        else {
            return;
        };
        let Some(cache) = cache.upgrade() else { return };
        if let Some(open) = open {
            cache.fills_queued.fetch_sub(1, Relaxed);
            // The reader is gone, or a read fetched the chunk meanwhile.
            if open.strong_count() == 0 || cache.holds_whole(&file, index) {
                continue;
            }
        }
        let len = file.chunk_len(index);
        if let Err(e) = cache.get(&file, index, 0..len, Fetch::Whole, purpose) {
            debug!(path = %file.version.path.display(), index, "readahead failed: {e}");
        }
    }
}
