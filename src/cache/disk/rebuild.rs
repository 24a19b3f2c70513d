//! Opening the SSD tier: the format check (an earlier format is cleared, never misread),
//! the index rebuilt from file names and the large files' `.idx` (no small file is opened
//! or stat-ed), the recency of each file read back, the budget resolved, and what no
//! longer fits evicted, oldest use first.

use std::fs::File;
use std::io::Read;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::time::Instant;

use lru::LruCache;
use nix::fcntl::OFlag;
use parking_lot::Mutex;
use tracing::warn;

use super::index::{Entry, Index, Large, Shape, on_disk};
use super::layout::{self, Name};
use super::{Budget, Inner, OPEN_WRITERS};
use crate::beneath::Beneath;
use crate::cachedir::PrivateDir;
use crate::size::{SizeSpec, human};
use crate::stats::Stats;

/// Threads listing bucket folders at mount.
const SCAN_THREADS: usize = 4;

fn is_hex2(n: &std::ffi::OsStr) -> bool {
    let b = n.as_encoded_bytes();
    b.len() == 2
        && b.iter()
            .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase())
}

/// A name bicache gives cache files in every format: a 32-hex-digit key first.
fn named_like_ours(n: &std::ffi::OsStr) -> bool {
    let b = n.as_encoded_bytes();
    b.len() >= 32
        && b[..32]
            .iter()
            .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase())
}

/// Removes the cache files of folder `name` (in its two-hex-digit bucket folders, at any
/// depth), and the folders left empty; anything else is not bicache's and stays.
/// Returns how many entries were left.
fn clear_ours(dir: &PrivateDir, name: &str) -> Result<u64, String> {
    if !dir.exists(name) {
        return Ok(0);
    }
    let sub = dir
        .subdir(name)
        .map_err(|e| format!("cannot clear {}/{name}: {e}", dir.path().display()))?;
    let mut left = 0;
    for n in sub.names().unwrap_or_default() {
        if is_hex2(&n) {
            // A bucket that is not a real folder of ours (a symlink, say) is left alone.
            left += clear_ours(&sub, &n.to_string_lossy()).unwrap_or(1);
        } else if named_like_ours(&n) || n.as_encoded_bytes().ends_with(b".tmp") {
            sub.remove_file(&n)
                .map_err(|e| format!("cannot clear {}: {e}", sub.path().join(&n).display()))?;
        } else {
            left += 1;
        }
    }
    if left == 0 {
        let _ = nix::unistd::unlinkat(dir.fd(), name, nix::unistd::UnlinkatFlags::RemoveDir);
    }
    Ok(left)
}

/// Clears what another format left (its cache files only: a name bicache never writes
/// is not bicache's to delete) and records format 3.
fn check_format(dir: &PrivateDir) -> Result<Option<String>, String> {
    let found = dir
        .read(layout::FORMAT_FILE)
        .map_err(|e| format!("cannot read {}/FORMAT: {e}", dir.path().display()))?;
    let mut note = None;
    match found.as_deref() {
        Some(f) if f == layout::FORMAT.as_bytes() => return Ok(None),
        Some(f) => {
            let f = String::from_utf8_lossy(f).trim().to_string();
            if f.starts_with("bicache-cache ") {
                let left = clear_ours(dir, layout::FILES_DIR)?;
                note = Some(format!(
                    "cache dir {} had format '{f}': its cache files cleared{} (this bicache \
                     reads format 3)",
                    dir.path().display(),
                    if left > 0 {
                        format!(", {left} entries bicache did not name left in files/")
                    } else {
                        String::new()
                    }
                ));
            } else {
                // Damaged: what is in files/ is still checked as format 3 (names carry
                // checksums, indexes are checksummed), so nothing needs deleting.
                note = Some(format!(
                    "cache dir {}: FORMAT unreadable ('{f}'): rewritten; its files are checked \
                     as format 3",
                    dir.path().display()
                ));
            }
        }
        None => {}
    }
    for old in layout::OLD_FORMAT_DIRS {
        clear_ours(dir, old)?;
    }
    dir.write_atomic(layout::FORMAT_FILE, layout::FORMAT.as_bytes())
        .map_err(|e| format!("cannot write {}/FORMAT: {e}", dir.path().display()))?;
    Ok(note)
}

/// What one bucket folder holds.
#[derive(Default)]
struct Found {
    small: Vec<Entry>,
    /// Keys with a `.data`, and with an `.idx`.
    data: Vec<u128>,
    idx: Vec<u128>,
    unknown: u64,
}

fn scan_bucket(dir: &PrivateDir, out: &mut Found) {
    let Ok(names) = dir.names() else { return };
    for n in names {
        match layout::parse_name(n.as_encoded_bytes()) {
            Some(Name::Small { key, len, sum }) => out.small.push(Entry::new(
                key,
                Shape::Small { len, sum },
                on_disk(len as u64),
            )),
            Some(Name::Data(k)) => out.data.push(k),
            Some(Name::Index(k)) => out.idx.push(k),
            // Not a name bicache writes: not bicache's to delete.
            None => out.unknown += 1,
        }
    }
}

fn scan(files: &PrivateDir) -> Found {
    let tops: Vec<_> = files
        .names()
        .unwrap_or_default()
        .into_iter()
        .filter(|n| is_hex2(n))
        .collect();
    let next = AtomicU64::new(0);
    let parts: Vec<Found> = crate::workers::run(SCAN_THREADS, || {
        let mut found = Found::default();
        loop {
            let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed) as usize;
            let Some(top) = tops.get(i) else { break };
            let Ok(top) = files.subdir(&top.to_string_lossy()) else {
                continue;
            };
            for sub in top.names().unwrap_or_default() {
                if is_hex2(&sub)
                    && let Ok(b) = top.subdir(&sub.to_string_lossy())
                {
                    scan_bucket(&b, &mut found);
                }
            }
        }
        found
    });
    let mut all = Found::default();
    for mut p in parts {
        all.small.append(&mut p.small);
        all.data.append(&mut p.data);
        all.idx.append(&mut p.idx);
        all.unknown += p.unknown;
    }
    all
}

/// Most chunks a large file may have (16 TiB at 1 MiB chunks): a bound on the memory a
/// damaged or forged `.idx` can make the index take.
const MAX_CHUNKS: u64 = 1 << 24;

/// Why a large file's pair of files cannot be used (both then go).
#[derive(Debug, PartialEq, Eq)]
enum Unusable {
    /// A creation cut short by a crash: no header yet, or a header and an empty `.data`
    /// with no record. Nothing was ever recorded, so nothing is lost: bicache's leftover.
    CutShort,
    /// Not a valid index of that key for this chunk size, or disagreeing with its `.data`.
    Damaged,
}

/// Reads a large file's `.idx`. A torn tail (a crash while appending) is cut off. Nothing
/// in the file is trusted to size an allocation.
fn load_large(files: &Beneath, key: u128, chunk_size: u64) -> Result<Entry, Unusable> {
    use Unusable::{CutShort, Damaged};
    let regular_len = |f: &File| {
        f.metadata()
            .ok()
            .filter(|m| m.file_type().is_file())
            .map(|m| m.len())
    };
    let data = File::from(
        files
            .open_at(&super::data_path(key), OFlag::O_RDONLY | OFlag::O_NONBLOCK)
            .map_err(|_| Damaged)?,
    );
    let data_len = regular_len(&data).ok_or(Damaged)?;
    let mut f = File::from(
        files
            .open_at(&super::index_path(key), OFlag::O_RDWR | OFlag::O_NONBLOCK)
            .map_err(|_| Damaged)?,
    );
    let chunks = data_len.div_ceil(chunk_size);
    let units = layout::units_per_chunk(chunk_size) as u64;
    // Records are appended once per range written; a chunk is rewritten only after it
    // was dropped, so a few per unit is already generous.
    let max_idx = layout::IDX_HEADER as u64 + chunks * units * 4 * layout::IDX_RECORD as u64;
    let idx_file_len = regular_len(&f).ok_or(Damaged)?;
    if idx_file_len < layout::IDX_HEADER as u64 {
        // Made, but killed before its header was written (`write.rs::writer_for`).
        return Err(CutShort);
    }
    if chunks > MAX_CHUNKS || idx_file_len > max_idx {
        return Err(Damaged);
    }
    let mut bytes = Vec::new();
    f.read_to_end(&mut bytes).map_err(|_| Damaged)?;
    let h = layout::decode_header(&bytes).ok_or(Damaged)?;
    if h.key != key
        || h.chunk_size as u64 != chunk_size
        || h.unit as u64 != layout::unit(chunk_size)
    {
        return Err(Damaged);
    }
    let (records, good) = layout::decode_records(&bytes[layout::IDX_HEADER..]);
    if h.size != data_len {
        // The header is written before the `.data` is given its length: killed between
        // the two, the `.data` is empty and nothing was recorded.
        let cut_short = data_len == 0 && records.is_empty();
        return Err(if cut_short { CutShort } else { Damaged });
    }
    let idx_len = (layout::IDX_HEADER + good) as u64;
    if idx_len < bytes.len() as u64 {
        let _ = f.set_len(idx_len);
    }
    let mut l = Large {
        size: h.size,
        idx_len,
        ..Default::default()
    };
    for r in records {
        if (r.chunk as u64) < chunks && r.first as u64 + r.units as u64 <= units {
            l.apply(r);
        }
    }
    let charged = l.data_bytes(h.unit as u64, chunk_size) + on_disk(idx_len);
    Ok(Entry::new(key, Shape::Large(Box::new(l)), charged))
}

/// Opens the tier's files and rebuilds its state; returns a one-line report for the log.
pub fn open(
    dir: &PrivateDir,
    budget: Budget,
    chunk_size: u64,
    stats: Arc<Stats>,
) -> Result<(Inner, String), String> {
    let started = Instant::now();
    let cleared = check_format(dir)?;
    let files = dir
        .subdir(layout::FILES_DIR)
        .map_err(|e| format!("cannot open the SSD tier's folder: {e}"))?;
    let tmp = dir
        .subdir(layout::TMP_DIR)
        .map_err(|e| format!("cannot open the SSD tier's tmp folder: {e}"))?;
    // Leftovers of writes cut short by a crash: never renamed, so never visible. Only our
    // own names go.
    for n in tmp.names().unwrap_or_default() {
        let ours = n
            .to_str()
            .and_then(|n| n.strip_suffix(".tmp"))
            .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()));
        if ours {
            let _ = tmp.remove_file(&n);
        }
    }
    let found = scan(&files);
    let beneath = Beneath::from_fd(files.try_clone_fd().map_err(|e| e.to_string())?);
    let mut entries = found.small;
    let data: std::collections::HashSet<u128> = found.data.iter().copied().collect();
    let idx: std::collections::HashSet<u128> = found.idx.iter().copied().collect();
    let mut dropped = 0u64;
    let mut damaged = 0u64;
    for &k in data.union(&idx) {
        // One without the other is a write cut short (bicache's own leftover); both
        // present but disagreeing is damage. Neither is ever served.
        let loaded = if data.contains(&k) && idx.contains(&k) {
            load_large(&beneath, k, chunk_size)
        } else {
            Err(Unusable::CutShort)
        };
        match loaded {
            Ok(e) => entries.push(e),
            Err(why) => {
                let _ = beneath.unlink(&super::index_path(k));
                let _ = beneath.unlink(&super::data_path(k));
                match why {
                    Unusable::CutShort => dropped += 1,
                    Unusable::Damaged => damaged += 1,
                }
            }
        }
    }
    stats
        .disk_corrupt
        .fetch_add(damaged, std::sync::atomic::Ordering::Relaxed);
    let held: u64 = entries.iter().map(|e| e.charged()).sum();
    let free = nix::sys::statvfs::fstatvfs(files.fd())
        .map(|s| s.blocks_available() * s.fragment_size())
        .unwrap_or(0);
    // What the cache already holds is available to it: a remount with the same flags keeps
    // its cache instead of shrinking it each time.
    let capacity = match budget.spec {
        SizeSpec::Bytes(b) => b,
        SizeSpec::Percent(_) => budget.spec.resolve(free.saturating_add(held)),
    };
    let mut index = Index::new(capacity, (capacity as f64 * budget.pinned_share) as u64);
    let n_files = entries.len();
    for e in entries {
        index.insert(e, false);
    }
    let mut recency_known = 0;
    if let Ok(Some(b)) = dir.read(layout::RECENCY_FILE)
        && let Some(r) = layout::decode_recency(&b)
    {
        for rec in &r {
            if index.set_recency(rec) {
                recency_known += 1;
            }
        }
    }
    let over = index.over_budget();
    let unit = layout::unit(chunk_size);
    let inner = Inner {
        files: beneath,
        tmp,
        root: dir.try_clone().map_err(|e| e.to_string())?,
        chunk_size,
        unit,
        index: Mutex::new(index),
        writers: Mutex::new(LruCache::new(OPEN_WRITERS.try_into().expect("non-zero"))),
        stats,
        tmp_seq: AtomicU64::new(0),
        failing: AtomicBool::new(false),
        memory_measured: Mutex::new(None),
    };
    for v in &over {
        inner.unlink(v);
    }
    {
        let ix = inner.index.lock();
        inner
            .stats
            .disk_capacity
            .store(ix.capacity, std::sync::atomic::Ordering::Relaxed);
        inner.publish(&ix);
    }
    if let Some(c) = cleared {
        warn!("{c}");
    }
    let report = format!(
        "SSD tier ready in {} ms: {} files, {} held, budget {} ({}), {} evicted to fit \
         (oldest use first; {} with a known last use), {} leftovers dropped, {} damaged dropped \
         (counted as corrupt), {} unknown files left alone",
        started.elapsed().as_millis(),
        n_files - over.len(),
        human(inner.index.lock().used()),
        human(capacity),
        match budget.spec {
            SizeSpec::Bytes(_) => "as given".to_string(),
            SizeSpec::Percent(p) => format!("{p}% of the {} free + held", human(free + held)),
        },
        over.len(),
        recency_known,
        dropped,
        damaged,
        found.unknown
    );
    Ok((inner, report))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;
    use std::path::Path;

    #[test]
    fn a_format_change_clears_cache_files_only() {
        let t = tempfile::tempdir().unwrap();
        let dir = crate::cachedir::CacheDir::claim(&t.path().join("c")).unwrap();
        let root = dir.path().to_path_buf();
        let victim = t.path().join("victim");
        std::fs::write(&victim, b"precious").unwrap();
        let bucket = root.join("files/ab/cd");
        std::fs::create_dir_all(&bucket).unwrap();
        let ours = format!("{:032x}-10-{:016x}", 7u128, 9u64);
        std::fs::write(bucket.join(&ours), b"x").unwrap();
        std::fs::write(bucket.join(format!("{:032x}.data", 7u128)), b"x").unwrap();
        std::fs::write(bucket.join("notes.txt"), b"the user's").unwrap();
        symlink(&victim, bucket.join(format!("{:032x}.idx", 8u128))).unwrap();
        symlink(t.path(), root.join("files/ef")).unwrap();
        std::fs::write(root.join("FORMAT"), b"bicache-cache 9\n").unwrap();
        let note = check_format(&dir).unwrap().unwrap();
        assert!(
            note.contains("format 'bicache-cache 9'") && note.contains("2 entries"),
            "{note}"
        );
        let mut left: Vec<_> = std::fs::read_dir(&bucket)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        left.sort();
        assert_eq!(left, ["notes.txt"]);
        assert_eq!(std::fs::read(&victim).unwrap(), b"precious");
        assert!(
            std::fs::symlink_metadata(root.join("files/ef"))
                .unwrap()
                .is_symlink()
        );
        assert!(check_format(&dir).unwrap().is_none(), "format 3 now");
    }
    use crate::cache::disk::layout::{IdxHeader, Record, encode_header, encode_record};

    const CHUNK: u64 = 1 << 20;

    /// A `.data` of `data_len` bytes (sparse) and an `.idx` of `header` and `records`.
    fn large(dir: &Path, key: u128, data_len: u64, header: IdxHeader, records: &[Record]) {
        let b = dir.join(layout::bucket(key));
        std::fs::create_dir_all(&b).unwrap();
        File::create(b.join(layout::data_name(key)))
            .unwrap()
            .set_len(data_len)
            .unwrap();
        let mut idx = encode_header(&header).to_vec();
        for r in records {
            idx.extend_from_slice(&encode_record(r));
        }
        std::fs::write(b.join(layout::index_name(key)), idx).unwrap();
    }

    #[test]
    fn an_idx_is_loaded_only_if_it_agrees_with_its_data_and_the_mount() {
        let t = tempfile::tempdir().unwrap();
        let files = Beneath::open(t.path()).unwrap();
        let unit = layout::unit(CHUNK) as u32;
        let header = |key, size, chunk_size| IdxHeader {
            key,
            size,
            chunk_size,
            unit,
        };
        let far = Record {
            chunk: u32::MAX - 1,
            first: 0,
            units: 1,
            sum: 0,
        };
        let first = Record { chunk: 0, ..far };
        // Good: loaded, with its one record.
        large(
            t.path(),
            1,
            3 * CHUNK,
            header(1, 3 * CHUNK, CHUNK as u32),
            &[first],
        );
        let e = load_large(&files, 1, CHUNK).expect("a good index");
        let Shape::Large(l) = e.shape else { panic!() };
        assert_eq!((l.size, l.masks.len()), (3 * CHUNK, 1));
        // A header claiming 2^62 bytes with a record near chunk 2^32 (would allocate
        // 32 GiB of masks if trusted): the .data says otherwise.
        large(
            t.path(),
            2,
            3 * CHUNK,
            header(2, 1 << 62, CHUNK as u32),
            &[far],
        );
        assert_eq!(load_large(&files, 2, CHUNK).err(), Some(Unusable::Damaged));
        // Another chunk size than the mount's: not this mount's to read.
        large(t.path(), 3, 3 * CHUNK, header(3, 3 * CHUNK, 4096), &[first]);
        assert_eq!(load_large(&files, 3, CHUNK).err(), Some(Unusable::Damaged));
        // A record beyond the file's chunks is ignored, not allocated for.
        large(
            t.path(),
            4,
            3 * CHUNK,
            header(4, 3 * CHUNK, CHUNK as u32),
            &[far],
        );
        let Shape::Large(l) = load_large(&files, 4, CHUNK).unwrap().shape else {
            panic!()
        };
        assert!(l.masks.is_empty());
        // A .data of more chunks than an index may hold: refused before reading it.
        let small_chunks = IdxHeader {
            unit: layout::unit(4096) as u32,
            ..header(5, (MAX_CHUNKS + 1) * 4096, 4096)
        };
        large(t.path(), 5, (MAX_CHUNKS + 1) * 4096, small_chunks, &[]);
        assert_eq!(load_large(&files, 5, 4096).err(), Some(Unusable::Damaged));
        // Creations cut short by a kill: bicache's leftovers, not damage.
        large(t.path(), 6, 0, header(6, 3 * CHUNK, CHUNK as u32), &[]);
        assert_eq!(load_large(&files, 6, CHUNK).err(), Some(Unusable::CutShort));
        let b = t.path().join(layout::bucket(7));
        std::fs::create_dir_all(&b).unwrap();
        File::create(b.join(layout::data_name(7))).unwrap();
        File::create(b.join(layout::index_name(7))).unwrap();
        assert_eq!(load_large(&files, 7, CHUNK).err(), Some(Unusable::CutShort));
        // But an empty .data under a header with records is damage: bytes were recorded.
        large(t.path(), 8, 0, header(8, 3 * CHUNK, CHUNK as u32), &[first]);
        assert_eq!(load_large(&files, 8, CHUNK).err(), Some(Unusable::Damaged));
    }
}
