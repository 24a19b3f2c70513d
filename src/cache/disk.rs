//! SSD tier: one file per chunk under `<cache-dir>/chunks-v2/<xx>/`, byte-budgeted LRU.
//!
//! Format (version 2): a chunk file holds exactly the chunk's bytes, nothing else, and is
//! named `<file key, 32 hex>-<chunk index, hex>-<length, hex>-<xxh3-64 of the data, 16 hex>`.
//! The file key is the xxh3-128 of path, size, mtime and chunk size (`ChunkCache::file`).
//!
//! Keeping the bytes at their natural offsets is what lets the kernel read a file held
//! whole in one chunk straight from its cache file (FUSE passthrough, see `fs.rs`); the
//! name carries what a header would. A chunk becomes visible only by `rename` of a
//! complete temporary file, and every read through the daemon re-checks length and
//! checksum against the name, so a crash or a flipped bit can cost a refetch but never a
//! wrong byte. A copy of another chunk's file under this name fails the checksum too.
//! The index is rebuilt at mount from directory listings alone, without opening or
//! stat-ing each file.

use std::ffi::OsStr;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::atomic::{AtomicBool, AtomicU64};

use parking_lot::Mutex;
use tracing::{info, warn};
use xxhash_rust::xxh3::xxh3_64;

use super::ChunkKey;
use super::lru::PinLru;
use crate::buf::Buf;
use crate::stats::Stats;

pub const FORMAT_VERSION: u32 = 2;
const CHUNK_DIR: &str = "chunks-v2";
/// Chunk directories of earlier formats, removed when the format changes.
const OLD_CHUNK_DIRS: &[&str] = &["chunks-v1"];
const TMP_DIR: &str = "tmp";
const FORMAT_FILE: &str = "FORMAT";

/// Checks a chunk's bytes against the length and checksum its file name promises.
pub fn verify(entry: &Entry, data: &[u8]) -> Result<(), &'static str> {
    if data.len() != entry.len {
        return Err("wrong length");
    }
    if xxh3_64(data) != entry.sum {
        return Err("data checksum mismatch");
    }
    Ok(())
}

fn file_name(key: &ChunkKey, entry: &Entry) -> String {
    format!(
        "{:032x}-{:x}-{:x}-{:016x}",
        key.file, key.index, entry.len, entry.sum
    )
}

fn parse_file_name(name: &OsStr) -> Option<(ChunkKey, Entry)> {
    let name = name.to_str()?;
    let mut parts = name.split('-');
    let file = u128::from_str_radix(parts.next().filter(|p| p.len() == 32)?, 16).ok()?;
    let index = u64::from_str_radix(parts.next()?, 16).ok()?;
    let len = usize::from_str_radix(parts.next()?, 16).ok()?;
    let sum = u64::from_str_radix(parts.next().filter(|p| p.len() == 16)?, 16).ok()?;
    if parts.next().is_some() || len > (64 << 20) {
        return None;
    }
    Some((ChunkKey { file, index }, Entry::new(len, sum)))
}

/// What the index knows of one chunk file: its name's promises, and whether this daemon
/// has checked the file for passthrough (and which file it checked).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry {
    len: usize,
    sum: u64,
    verified: Option<FileStamp>,
}

impl Entry {
    fn new(len: usize, sum: u64) -> Entry {
        Entry {
            len,
            sum,
            verified: None,
        }
    }
}

/// Identifies one state of one file: any write to it changes the ctime, and a replaced
/// file has another inode. Used to skip re-hashing a passthrough file checked before.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FileStamp {
    dev: u64,
    ino: u64,
    ctime: i64,
    ctime_nsec: i64,
}

impl FileStamp {
    fn of(m: &fs::Metadata) -> FileStamp {
        FileStamp {
            dev: m.dev(),
            ino: m.ino(),
            ctime: m.ctime(),
            ctime_nsec: m.ctime_nsec(),
        }
    }
}

struct Index {
    /// Chunks on disk; the cost of each is its length.
    lru: PinLru<ChunkKey, Entry>,
    /// Space reserved by writes under way (not yet in `lru`).
    reserved: u64,
}

impl Index {
    fn used(&self) -> u64 {
        self.lru.bytes() + self.reserved
    }
}

/// Why the SSD tier could not be opened: the cache dir can't be used (read-only,
/// permissions...), so the mount runs without an SSD tier.
#[derive(Debug)]
pub enum OpenError {
    Unusable(String),
}

pub struct DiskTier {
    chunks: PathBuf,
    tmp: PathBuf,
    capacity: u64,
    index: Mutex<Index>,
    stats: Arc<Stats>,
    tmp_seq: AtomicU64,
    /// Set after a failed write, cleared by the next good one: one warning per episode.
    failing: AtomicBool,
}

impl DiskTier {
    /// Opens (or creates) the SSD tier in `dir`, taking its lock and rebuilding the index.
    /// `pinned_capacity`: how much of the budget pinned chunks may take (0 = no pinning).
    pub fn open(
        dir: &Path,
        capacity: u64,
        pinned_capacity: u64,
        stats: Arc<Stats>,
    ) -> Result<DiskTier, OpenError> {
        let chunks = dir.join(CHUNK_DIR);
        let tmp = dir.join(TMP_DIR);
        check_format(dir, &chunks).map_err(OpenError::Unusable)?;
        let mkdir = |p: &Path| {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(p)
                .map_err(|e| OpenError::Unusable(format!("cannot create {}: {e}", p.display())))
        };
        mkdir(&chunks)?;
        for b in 0..256 {
            mkdir(&chunks.join(format!("{b:02x}")))?;
        }
        mkdir(&tmp)?;
        // Leftovers of writes cut short by a crash: never renamed, so never visible. Only
        // our own names go; anything else is not bicache's to delete.
        if let Ok(rd) = fs::read_dir(&tmp) {
            for e in rd.flatten() {
                let name = e.file_name();
                let ours = name
                    .to_str()
                    .and_then(|n| n.strip_suffix(".tmp"))
                    .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()));
                if ours {
                    let _ = fs::remove_file(e.path());
                }
            }
        }

        let tier = DiskTier {
            chunks,
            tmp,
            capacity,
            index: Mutex::new(Index {
                lru: PinLru::new(capacity, pinned_capacity),
                reserved: 0,
            }),
            stats,
            tmp_seq: AtomicU64::new(0),
            failing: AtomicBool::new(false),
        };
        tier.stats.disk_capacity.store(capacity, Relaxed);
        tier.rebuild_index();
        Ok(tier)
    }

    fn path_of(&self, key: &ChunkKey, entry: &Entry) -> PathBuf {
        self.chunks
            .join(format!("{:02x}", key.file as u8))
            .join(file_name(key, entry))
    }

    /// Lists the chunk files; the file names carry everything the index needs. Files that
    /// don't parse are garbage and removed; chunks beyond the budget (if it shrank) evicted.
    fn rebuild_index(&self) {
        let started = std::time::Instant::now();
        let mut found = Vec::new();
        let mut unknown = 0u64;
        for b in 0..256 {
            let sub = self.chunks.join(format!("{b:02x}"));
            let Ok(entries) = fs::read_dir(&sub) else {
                continue;
            };
            for e in entries.flatten() {
                match parse_file_name(&e.file_name()) {
                    Some((key, entry)) if key.file as u8 == b as u8 => found.push((key, entry)),
                    // Not a name bicache writes: not bicache's to delete.
                    _ => unknown += 1,
                }
            }
        }
        let mut over = Vec::new();
        {
            let mut idx = self.index.lock();
            for (key, entry) in found {
                let size = entry.len as u64;
                if idx.used() + size > self.capacity {
                    over.push((key, entry));
                    continue;
                }
                idx.lru.insert_unchecked(key, entry, size, false);
            }
            self.stats.disk_bytes.store(idx.used(), Relaxed);
        }
        for (key, entry) in &over {
            let _ = fs::remove_file(self.path_of(key, entry));
        }
        let idx = self.index.lock();
        info!(
            chunks = idx.lru.len(),
            bytes = idx.used(),
            evicted_over_budget = over.len(),
            unknown_files_left_alone = unknown,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "SSD tier index rebuilt"
        );
    }

    pub fn capacity(&self) -> u64 {
        self.capacity
    }

    pub fn contains(&self, key: &ChunkKey) -> bool {
        self.index.lock().lru.contains(key)
    }

    /// Bytes the pinned area may still take.
    pub fn pinned_room(&self) -> u64 {
        let idx = self.index.lock();
        idx.lru.pinned_capacity() - idx.lru.pinned_bytes()
    }

    /// Pins chunks already on disk (found at mount) whose file is in the pinned set.
    pub fn repin(&self, should_pin: impl Fn(&ChunkKey) -> bool) -> u64 {
        let moved = self.index.lock().lru.repin(should_pin);
        self.stats.disk_pinned_bytes.fetch_add(moved, Relaxed);
        moved
    }

    /// Reads and verifies a chunk of `len` bytes. Anything wrong with the file drops it
    /// from the tier (counted as corrupt) and reports a miss.
    pub fn get(&self, key: &ChunkKey, len: usize) -> Option<Buf> {
        let entry = self.lookup(key, len)?;
        let path = self.path_of(key, &entry);
        let file = self.open_chunk(key, &entry, &path)?;
        self.read_verified(key, &entry, &path, &file)
    }

    /// Opens a chunk's file for the kernel to read directly (FUSE passthrough). Its bytes
    /// are hashed on the first open and again whenever the file changed since (another
    /// inode or ctime), so a damaged file is dropped here like in `get`, before any reader
    /// could see it.
    /// The bytes come along when they were read for that check.
    pub fn open_for_passthrough(&self, key: &ChunkKey, len: usize) -> Option<(File, Option<Buf>)> {
        let entry = self.lookup(key, len)?;
        let path = self.path_of(key, &entry);
        let file = self.open_chunk(key, &entry, &path)?;
        let stamp = match file.metadata() {
            Ok(m) if m.len() == len as u64 => FileStamp::of(&m),
            Ok(m) => {
                warn!(path = %path.display(), got = m.len(), want = len,
                      "corrupt chunk dropped: wrong file length");
                self.forget(key, &entry, true);
                return None;
            }
            Err(e) => {
                warn!(path = %path.display(), "SSD tier stat failed, chunk dropped: {e}");
                self.forget(key, &entry, true);
                return None;
            }
        };
        if entry.verified == Some(stamp) {
            return Some((file, None));
        }
        let data = self.read_verified(key, &entry, &path, &file)?;
        if let Some(e) = self.index.lock().lru.get_mut(key) {
            e.verified = Some(stamp);
        }
        Some((file, Some(data)))
    }

    /// The index entry of a chunk of `len` bytes, marked recently used. A key not in the
    /// index is a plain miss.
    fn lookup(&self, key: &ChunkKey, len: usize) -> Option<Entry> {
        let entry = *self.index.lock().lru.get(key)?;
        if entry.len != len {
            // Cannot happen for the key's own file version; treat it as damage.
            self.forget(key, &entry, true);
            return None;
        }
        Some(entry)
    }

    fn open_chunk(&self, key: &ChunkKey, entry: &Entry, path: &Path) -> Option<File> {
        match File::open(path) {
            Ok(f) => Some(f),
            Err(e) => {
                // Evicted between the index look-up and the open: an ordinary miss.
                if e.kind() != io::ErrorKind::NotFound {
                    warn!(path = %path.display(), "SSD tier read failed: {e}");
                }
                self.forget(key, entry, e.kind() != io::ErrorKind::NotFound);
                None
            }
        }
    }

    fn read_verified(
        &self,
        key: &ChunkKey,
        entry: &Entry,
        path: &Path,
        file: &File,
    ) -> Option<Buf> {
        let mut data = Buf::for_read(entry.len);
        // One byte more than expected: a file that grew is as wrong as one that shrank.
        let mut extra = [0u8; 1];
        let why = match preadv_exact(file, &mut [&mut data, &mut extra]) {
            Ok(n) if n == entry.len => match verify(entry, &data) {
                Ok(()) => return Some(data),
                Err(why) => why.to_string(),
            },
            Ok(n) => format!("wrong file length {n}, want {}", entry.len),
            Err(e) => format!("read failed: {e}"),
        };
        warn!(path = %path.display(), "corrupt chunk dropped: {why}");
        self.forget(key, entry, true);
        None
    }

    fn forget(&self, key: &ChunkKey, entry: &Entry, corrupt: bool) {
        {
            let mut idx = self.index.lock();
            if idx.lru.remove(key).is_some() {
                self.stats.disk_bytes.store(idx.used(), Relaxed);
                self.stats
                    .disk_pinned_bytes
                    .store(idx.lru.pinned_bytes(), Relaxed);
            }
        }
        if corrupt {
            self.stats.disk_corrupt.fetch_add(1, Relaxed);
        }
        let _ = fs::remove_file(self.path_of(key, entry));
    }

    /// Stores a chunk (called from the write-back thread, never on a reader's path).
    /// Space is reserved first, evicting least-recently-used unpinned chunks, so the bytes
    /// under the cache dir never exceed the budget by more than the writes under way.
    pub fn put(&self, key: &ChunkKey, data: &[u8], pin: bool) {
        let size = data.len() as u64;
        let mut victims = Vec::new();
        {
            let mut idx = self.index.lock();
            if idx.lru.contains(key) {
                return;
            }
            let reserved = idx.reserved;
            if !idx.lru.make_room(size + reserved, &mut victims) {
                // Everything left is pinned or reserved by writes under way.
                drop(idx);
                self.unlink_victims(victims);
                return;
            }
            idx.reserved += size;
            self.stats.disk_bytes.store(idx.used(), Relaxed);
        }
        self.unlink_victims(victims);
        let entry = Entry::new(data.len(), xxh3_64(data));
        let result = self.write_file(key, &entry, data);
        let mut idx = self.index.lock();
        idx.reserved -= size;
        match result {
            Ok(()) => {
                idx.lru.insert_unchecked(*key, entry, size, pin);
                self.stats.disk_bytes.store(idx.used(), Relaxed);
                self.stats
                    .disk_pinned_bytes
                    .store(idx.lru.pinned_bytes(), Relaxed);
                drop(idx);
                self.stats.disk_writes.fetch_add(1, Relaxed);
                if self.failing.swap(false, Relaxed) {
                    info!("SSD tier writes succeed again");
                }
            }
            Err(e) => {
                self.stats.disk_bytes.store(idx.used(), Relaxed);
                drop(idx);
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

    fn unlink_victims(&self, victims: Vec<(ChunkKey, Entry, u64)>) {
        for (k, entry, _) in victims {
            let _ = fs::remove_file(self.path_of(&k, &entry));
            self.stats.disk_evictions.fetch_add(1, Relaxed);
        }
    }

    fn write_file(&self, key: &ChunkKey, entry: &Entry, data: &[u8]) -> io::Result<()> {
        let tmp = self
            .tmp
            .join(format!("{}.tmp", self.tmp_seq.fetch_add(1, Relaxed)));
        let result = (|| {
            let mut f = OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&tmp)?;
            f.write_all(data)?;
            fs::rename(&tmp, self.path_of(key, entry))
        })();
        if result.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        result
    }
}

/// preadv at offset 0 into several buffers until they are full or the file ends.
fn preadv_exact(file: &File, bufs: &mut [&mut [u8]]) -> io::Result<usize> {
    let total: usize = bufs.iter().map(|b| b.len()).sum();
    let mut done = 0usize;
    loop {
        // Build iovecs for what is still unfilled.
        let mut skip = done;
        let mut iov = Vec::with_capacity(bufs.len());
        for b in bufs.iter_mut() {
            if skip >= b.len() {
                skip -= b.len();
                continue;
            }
            iov.push(libc::iovec {
                iov_base: b[skip..].as_mut_ptr() as *mut libc::c_void,
                iov_len: b.len() - skip,
            });
            skip = 0;
        }
        if iov.is_empty() {
            return Ok(done);
        }
        let n = unsafe {
            libc::preadv(
                file.as_raw_fd(),
                iov.as_ptr(),
                iov.len() as libc::c_int,
                done as libc::off_t,
            )
        };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        if n == 0 {
            return Ok(done);
        }
        done += n as usize;
        if done >= total {
            return Ok(done);
        }
    }
}

/// The cache dir records its format version; an unknown one is cleared, never misread.
fn check_format(dir: &Path, chunks: &Path) -> Result<(), String> {
    let path = dir.join(FORMAT_FILE);
    let want = format!("bicache-cache {FORMAT_VERSION}\n");
    match fs::read_to_string(&path) {
        Ok(s) if s == want => return Ok(()),
        Ok(s) => {
            warn!(
                found = s.trim(),
                "cache dir {} has another format version; clearing it",
                dir.display()
            );
            let _ = fs::remove_dir_all(chunks);
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(format!("cannot read {}: {e}", path.display())),
    }
    // Chunks of an earlier format are never read again: free their space.
    for old in OLD_CHUNK_DIRS {
        let _ = fs::remove_dir_all(dir.join(old));
    }
    let mut f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&path)
        .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    f.write_all(want.as_bytes())
        .map_err(|e| format!("cannot write {}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn golden_file_name() {
        // Pins format version 2: if this changes, bump FORMAT_VERSION.
        let key = ChunkKey {
            file: 0x0102_0304_0506_0708_090a_0b0c_0d0e_0f10,
            index: 3,
        };
        let entry = Entry::new(5, xxh3_64(b"hello"));
        // The checksum too: a change of hash function shows here.
        assert_eq!(
            file_name(&key, &entry),
            "0102030405060708090a0b0c0d0e0f10-3-5-9555e8555c62dcfd"
        );
        assert!(verify(&entry, b"hello").is_ok());
    }

    #[test]
    fn verify_rejects_damage() {
        let entry = Entry::new(6, xxh3_64(b"abcdef"));
        assert_eq!(verify(&entry, b"abcdeF"), Err("data checksum mismatch"));
        assert_eq!(verify(&entry, b"abcde"), Err("wrong length"));
        assert_eq!(verify(&entry, b"abcdefg"), Err("wrong length"));
    }

    #[test]
    fn file_names_round_trip_and_reject_garbage() {
        let key = ChunkKey {
            file: u128::MAX - 5,
            index: 77,
        };
        let entry = Entry::new(4096, u64::MAX - 9);
        let name = file_name(&key, &entry);
        assert_eq!(parse_file_name(OsStr::new(&name)), Some((key, entry)));
        let short_sum = name.rsplit_once('-').unwrap().0.to_string() + "-abc";
        for bad in [
            "",
            "x",
            "0-1-2",
            "zz",
            &format!("{name}-1"),
            "lock",
            &short_sum,
            // A version 1 name (no checksum).
            "0102030405060708090a0b0c0d0e0f10-3-5",
        ] {
            assert_eq!(parse_file_name(OsStr::new(bad)), None, "{bad}");
        }
    }

    /// Property: a chunk with any single byte changed, or any length changed, is rejected.
    #[test]
    fn verify_catches_every_single_byte_change() {
        let mut state = 0x1234_5678_9abc_def0u64;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let data: Vec<u8> = (0..4096).map(|_| next() as u8).collect();
        let entry = Entry::new(data.len(), xxh3_64(&data));
        for _ in 0..20_000 {
            let mut d = data.clone();
            let pos = (next() % d.len() as u64) as usize;
            d[pos] ^= (next() % 255 + 1) as u8;
            assert!(verify(&entry, &d).is_err(), "change at {pos} accepted");
            let cut = (next() % d.len() as u64) as usize;
            assert!(
                verify(&entry, &data[..cut]).is_err(),
                "cut at {cut} accepted"
            );
        }
    }

    /// Property: no file name, however odd, panics the index rebuild's parser.
    #[test]
    fn file_name_parser_is_total() {
        let alphabet: Vec<char> = "0123456789abcdefABCDEF-xz_.\u{e9}".chars().collect();
        let mut state = 99u64;
        for _ in 0..50_000 {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let len = (state >> 58) as usize + 30;
            let name: String = (0..len)
                .map(|i| alphabet[((state >> (i % 50)) as usize + i) % alphabet.len()])
                .collect();
            let _ = parse_file_name(OsStr::new(&name));
        }
    }
}
