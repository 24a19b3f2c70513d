//! SSD tier: one file per chunk under `<cache-dir>/chunks-v1/<xx>/`, byte-budgeted LRU.
//!
//! Format (version 1), little-endian, a 64-byte header then the chunk's bytes:
//!
//! | bytes  | field                                                  |
//! |--------|--------------------------------------------------------|
//! | 0..8   | magic `BICHUNK1`                                        |
//! | 8..12  | format version (1)                                     |
//! | 12..16 | data length                                            |
//! | 16..32 | file key (xxh3-128 of path, size, mtime, chunk size)   |
//! | 32..40 | chunk index                                            |
//! | 40..48 | reserved (0)                                           |
//! | 48..56 | xxh3-64 of the data                                    |
//! | 56..64 | xxh3-64 of bytes 0..56                                 |
//!
//! A chunk becomes visible only by `rename` of a complete temporary file, and every read
//! re-verifies the header and checksum, so a crash or a flipped bit can cost a refetch but
//! never a wrong byte. The file name repeats key, index and length so that the index is
//! rebuilt at mount from directory listings alone, without opening or stat-ing each file.

use std::ffi::OsStr;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
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

pub const FORMAT_VERSION: u32 = 1;
pub const HEADER_LEN: usize = 64;
const MAGIC: &[u8; 8] = b"BICHUNK1";
const CHUNK_DIR: &str = "chunks-v1";
const TMP_DIR: &str = "tmp";
const FORMAT_FILE: &str = "FORMAT";
const LOCK_FILE: &str = "lock";

pub fn encode_header(key: &ChunkKey, data: &[u8]) -> [u8; HEADER_LEN] {
    let mut h = [0u8; HEADER_LEN];
    h[0..8].copy_from_slice(MAGIC);
    h[8..12].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
    h[12..16].copy_from_slice(&(data.len() as u32).to_le_bytes());
    h[16..32].copy_from_slice(&key.file.to_le_bytes());
    h[32..40].copy_from_slice(&key.index.to_le_bytes());
    h[48..56].copy_from_slice(&xxh3_64(data).to_le_bytes());
    let hc = xxh3_64(&h[0..56]);
    h[56..64].copy_from_slice(&hc.to_le_bytes());
    h
}

/// Checks a header and the data that followed it against the chunk we expected.
pub fn verify(header: &[u8], key: &ChunkKey, data: &[u8]) -> Result<(), &'static str> {
    if header.len() != HEADER_LEN {
        return Err("short header");
    }
    if &header[0..8] != MAGIC {
        return Err("bad magic");
    }
    if xxh3_64(&header[0..56]).to_le_bytes() != header[56..64] {
        return Err("header checksum mismatch");
    }
    if u32::from_le_bytes(header[8..12].try_into().unwrap()) != FORMAT_VERSION {
        return Err("unknown format version");
    }
    if u32::from_le_bytes(header[12..16].try_into().unwrap()) as usize != data.len() {
        return Err("length mismatch");
    }
    if u128::from_le_bytes(header[16..32].try_into().unwrap()) != key.file
        || u64::from_le_bytes(header[32..40].try_into().unwrap()) != key.index
    {
        return Err("key mismatch");
    }
    if xxh3_64(data).to_le_bytes() != header[48..56] {
        return Err("data checksum mismatch");
    }
    Ok(())
}

fn file_name(key: &ChunkKey, len: usize) -> String {
    format!("{:032x}-{:x}-{:x}", key.file, key.index, len)
}

fn parse_file_name(name: &OsStr) -> Option<(ChunkKey, usize)> {
    let name = name.to_str()?;
    let mut parts = name.split('-');
    let file = u128::from_str_radix(parts.next().filter(|p| p.len() == 32)?, 16).ok()?;
    let index = u64::from_str_radix(parts.next()?, 16).ok()?;
    let len = usize::from_str_radix(parts.next()?, 16).ok()?;
    if parts.next().is_some() || len > (64 << 20) {
        return None;
    }
    Some((ChunkKey { file, index }, len))
}

struct Index {
    /// Chunks on disk; the cost of each is the bytes its file takes (header + data).
    lru: PinLru<ChunkKey, ()>,
    /// Space reserved by writes under way (not yet in `lru`).
    reserved: u64,
}

impl Index {
    fn used(&self) -> u64 {
        self.lru.bytes() + self.reserved
    }
}

/// Why the SSD tier could not be opened.
#[derive(Debug)]
pub enum OpenError {
    /// Another daemon owns the cache dir: mounting must fail.
    Locked(String),
    /// The cache dir can't be used (read-only, permissions...): run without an SSD tier.
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
    /// Holds the advisory lock that makes this daemon the cache dir's only owner.
    _lock: File,
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
        let lock = lock_cache_dir(dir)?;
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
        // Leftovers of writes cut short by a crash: never renamed, so never visible.
        let _ = fs::remove_dir_all(&tmp);
        mkdir(&tmp)?;

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
            _lock: lock,
        };
        tier.stats.disk_capacity.store(capacity, Relaxed);
        tier.rebuild_index();
        Ok(tier)
    }

    fn path_of(&self, key: &ChunkKey, len: usize) -> PathBuf {
        self.chunks
            .join(format!("{:02x}", key.file as u8))
            .join(file_name(key, len))
    }

    /// Lists the chunk files; the file names carry everything the index needs. Files that
    /// don't parse are garbage and removed; chunks beyond the budget (if it shrank) evicted.
    fn rebuild_index(&self) {
        let started = std::time::Instant::now();
        let mut found = Vec::new();
        for b in 0..256 {
            let sub = self.chunks.join(format!("{b:02x}"));
            let Ok(entries) = fs::read_dir(&sub) else {
                continue;
            };
            for e in entries.flatten() {
                match parse_file_name(&e.file_name()) {
                    Some((key, len)) if key.file as u8 == b as u8 => found.push((key, len)),
                    _ => {
                        let _ = fs::remove_file(e.path());
                    }
                }
            }
        }
        let mut over = Vec::new();
        {
            let mut idx = self.index.lock();
            for (key, len) in found {
                let size = (HEADER_LEN + len) as u64;
                if idx.used() + size > self.capacity {
                    over.push((key, len));
                    continue;
                }
                idx.lru.insert_unchecked(key, (), size, false);
            }
            self.stats.disk_bytes.store(idx.used(), Relaxed);
        }
        for (key, len) in &over {
            let _ = fs::remove_file(self.path_of(key, *len));
        }
        let idx = self.index.lock();
        info!(
            chunks = idx.lru.len(),
            bytes = idx.used(),
            evicted_over_budget = over.len(),
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
        // Marks the chunk recently used; a key not in the index is a plain miss.
        self.index.lock().lru.get(key)?;
        let path = self.path_of(key, len);
        let file = match File::open(&path) {
            Ok(f) => f,
            Err(e) => {
                // Evicted between the index look-up and the open: an ordinary miss.
                if e.kind() != io::ErrorKind::NotFound {
                    warn!(path = %path.display(), "SSD tier read failed: {e}");
                }
                self.forget(key, len, e.kind() != io::ErrorKind::NotFound);
                return None;
            }
        };
        let mut header = [0u8; HEADER_LEN];
        let mut data = Buf::zeroed(len);
        let mut extra = [0u8; 1];
        match preadv_exact(&file, &mut [&mut header, &mut data, &mut extra]) {
            Ok(n) if n == HEADER_LEN + len => match verify(&header, key, &data) {
                Ok(()) => Some(data),
                Err(why) => {
                    warn!(path = %path.display(), "corrupt chunk dropped: {why}");
                    self.forget(key, len, true);
                    None
                }
            },
            Ok(n) => {
                warn!(path = %path.display(), got = n, want = HEADER_LEN + len,
                      "corrupt chunk dropped: wrong file length");
                self.forget(key, len, true);
                None
            }
            Err(e) => {
                warn!(path = %path.display(), "SSD tier read failed, chunk dropped: {e}");
                self.forget(key, len, true);
                None
            }
        }
    }

    fn forget(&self, key: &ChunkKey, len: usize, corrupt: bool) {
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
        let _ = fs::remove_file(self.path_of(key, len));
    }

    /// Stores a chunk (called from the write-back thread, never on a reader's path).
    /// Space is reserved first, evicting least-recently-used unpinned chunks, so the bytes
    /// under the cache dir never exceed the budget by more than the writes under way.
    pub fn put(&self, key: &ChunkKey, data: &[u8], pin: bool) {
        let size = (HEADER_LEN + data.len()) as u64;
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
        let result = self.write_file(key, data);
        let mut idx = self.index.lock();
        idx.reserved -= size;
        match result {
            Ok(()) => {
                idx.lru.insert_unchecked(*key, (), size, pin);
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

    fn unlink_victims(&self, victims: Vec<(ChunkKey, (), u64)>) {
        for (k, _, size) in victims {
            let _ = fs::remove_file(self.path_of(&k, size as usize - HEADER_LEN));
            self.stats.disk_evictions.fetch_add(1, Relaxed);
        }
    }

    fn write_file(&self, key: &ChunkKey, data: &[u8]) -> io::Result<()> {
        let tmp = self
            .tmp
            .join(format!("{}.tmp", self.tmp_seq.fetch_add(1, Relaxed)));
        let result = (|| {
            let mut f = OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&tmp)?;
            let header = encode_header(key, data);
            f.write_all(&header)?;
            f.write_all(data)?;
            fs::rename(&tmp, self.path_of(key, data.len()))
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

/// Takes an exclusive advisory lock on `<dir>/lock`: one daemon per cache dir.
fn lock_cache_dir(dir: &Path) -> Result<File, OpenError> {
    let path = dir.join(LOCK_FILE);
    let mut f = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(&path)
        .map_err(|e| OpenError::Unusable(format!("cannot open {}: {e}", path.display())))?;
    let rc = unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc != 0 {
        let owner = fs::read_to_string(&path).unwrap_or_default();
        return Err(OpenError::Locked(format!(
            "--cache-dir {} is in use by another bicache daemon (pid {}); give each mount its \
             own cache dir",
            dir.display(),
            owner.trim()
        )));
    }
    let _ = f.set_len(0);
    let _ = writeln!(f, "{}", std::process::id());
    Ok(f)
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
                "cache dir {} has an unknown format; clearing it",
                dir.display()
            );
            let _ = fs::remove_dir_all(chunks);
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(format!("cannot read {}: {e}", path.display())),
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

    const GOLDEN_CHECKSUMS: &str = "fddc625c55e85595b65c5c34cbd9ba4d";

    #[test]
    fn golden_header_bytes() {
        // Pins format version 1: if this changes, bump FORMAT_VERSION.
        let key = ChunkKey {
            file: 0x0102_0304_0506_0708_090a_0b0c_0d0e_0f10,
            index: 3,
        };
        let h = encode_header(&key, b"hello");
        let hex: String = h.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(&hex[..32], "42494348554e4b310100000005000000");
        assert_eq!(
            &hex[32..96],
            "100f0e0d0c0b0a09080706050403020103000000000000000000000000000000",
        );
        assert_eq!(
            &hex[96..112],
            format!("{:016x}", xxh3_64(b"hello").swap_bytes())
        );
        // The whole header, checksums included: a change of hash function shows here too.
        assert_eq!(&hex[96..], GOLDEN_CHECKSUMS);
        assert!(verify(&h, &key, b"hello").is_ok());
    }

    #[test]
    fn verify_rejects_damage() {
        let key = ChunkKey { file: 9, index: 1 };
        let h = encode_header(&key, b"abcdef");
        assert_eq!(verify(&h, &key, b"abcdeF"), Err("data checksum mismatch"));
        assert_eq!(verify(&h, &key, b"abcde"), Err("length mismatch"));
        let other = ChunkKey { file: 9, index: 2 };
        assert_eq!(verify(&h, &other, b"abcdef"), Err("key mismatch"));
        for i in 0..HEADER_LEN {
            let mut bad = h;
            bad[i] ^= 0x40;
            assert!(verify(&bad, &key, b"abcdef").is_err(), "flip at {i}");
        }
    }

    #[test]
    fn file_names_round_trip_and_reject_garbage() {
        let key = ChunkKey {
            file: u128::MAX - 5,
            index: 77,
        };
        let name = file_name(&key, 4096);
        assert_eq!(parse_file_name(OsStr::new(&name)), Some((key, 4096)));
        for bad in ["", "x", "0-1-2", "zz", &format!("{name}-1"), "lock"] {
            assert_eq!(parse_file_name(OsStr::new(bad)), None, "{bad}");
        }
    }

    /// Property: arbitrary bytes as header and data never panic the verifier, and a valid
    /// chunk with any single byte changed (header or data) is always rejected.
    #[test]
    fn verify_is_total_and_catches_every_single_byte_change() {
        let mut state = 0x1234_5678_9abc_def0u64;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let key = ChunkKey { file: 77, index: 5 };
        for _ in 0..20_000 {
            let hl = (next() % 80) as usize;
            let dl = (next() % 64) as usize;
            let header: Vec<u8> = (0..hl).map(|_| next() as u8).collect();
            let data: Vec<u8> = (0..dl).map(|_| next() as u8).collect();
            assert!(verify(&header, &key, &data).is_err());
        }
        let data: Vec<u8> = (0..4096).map(|_| next() as u8).collect();
        let header = encode_header(&key, &data);
        for _ in 0..5_000 {
            let mut h = header;
            let mut d = data.clone();
            let pos = (next() % (HEADER_LEN + d.len()) as u64) as usize;
            let flip = (next() % 255 + 1) as u8;
            if pos < HEADER_LEN {
                h[pos] ^= flip;
            } else {
                d[pos - HEADER_LEN] ^= flip;
            }
            assert!(verify(&h, &key, &d).is_err(), "change at {pos} accepted");
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
