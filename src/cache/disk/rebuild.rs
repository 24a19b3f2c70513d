//! Opening the SSD tier: the format check (an earlier format is cleared, never misread),
//! the index rebuilt from file names and the large files' `.idx` (no small file is opened
//! or stat-ed), the recency of each file read back, the budget resolved, and what no
//! longer fits evicted, oldest use first.

use std::collections::HashMap;
use std::fs::File;
use std::io::Read;
use std::path::Path;
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

/// Clears what an earlier format left (bicache's own folders only) and records format 3.
fn check_format(dir: &PrivateDir) -> Result<Option<String>, String> {
    let found = dir
        .read(layout::FORMAT_FILE)
        .map_err(|e| format!("cannot read {}/FORMAT: {e}", dir.path().display()))?;
    let mut note = None;
    match found.as_deref() {
        Some(f) if f == layout::FORMAT.as_bytes() => return Ok(None),
        Some(f) => {
            let f = String::from_utf8_lossy(f).trim().to_string();
            note = Some(format!(
                "cache dir {} had format '{f}': cleared (this bicache reads format 3)",
                dir.path().display()
            ));
            if f.starts_with("bicache-cache ") {
                dir.remove_tree(layout::FILES_DIR)
                    .map_err(|e| e.to_string())?;
            }
        }
        None => {}
    }
    for old in layout::OLD_FORMAT_DIRS {
        dir.remove_tree(old)
            .map_err(|e| format!("cannot clear {}/{old}: {e}", dir.path().display()))?;
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
            Some(Name::Small { key, len, sum }) => out.small.push(Entry {
                key,
                shape: Shape::Small { len, sum },
                charged: on_disk(len as u64),
                last_use: 0,
                flags: 0,
            }),
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

/// Reads a large file's `.idx`; None if it is not a valid index of that key (then both
/// files go). A torn tail (a crash while appending) is cut off.
fn load_large(files: &Beneath, key: u128) -> Option<Entry> {
    let rel = Path::new("").join(super::index_path(key));
    let fd = files
        .open_at(&rel, OFlag::O_RDWR | OFlag::O_NONBLOCK)
        .ok()?;
    let mut f = File::from(fd);
    let mut bytes = Vec::new();
    f.read_to_end(&mut bytes).ok()?;
    let h = layout::decode_header(&bytes)?;
    if h.key != key || h.unit == 0 || h.chunk_size == 0 {
        return None;
    }
    let (records, good) = layout::decode_records(&bytes[layout::IDX_HEADER..]);
    let idx_len = (layout::IDX_HEADER + good) as u64;
    if idx_len < bytes.len() as u64 {
        let _ = f.set_len(idx_len);
    }
    let mut l = Large {
        size: h.size,
        idx_len,
        ..Default::default()
    };
    let chunks = h.size.div_ceil(h.chunk_size as u64);
    for r in records {
        if (r.chunk as u64) < chunks && r.first as u32 + r.units as u32 <= 64 {
            l.apply(r);
        }
    }
    let charged = l.data_bytes(h.unit as u64, h.chunk_size as u64) + on_disk(idx_len);
    Some(Entry {
        key,
        shape: Shape::Large(Box::new(l)),
        charged,
        last_use: 0,
        flags: 0,
    })
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
    for &k in data.union(&idx) {
        match (data.contains(&k) && idx.contains(&k))
            .then(|| load_large(&beneath, k))
            .flatten()
        {
            Some(e) => entries.push(e),
            None => {
                // One without the other, or an index that is not one: bicache's own
                // leftovers, never served.
                let _ = beneath.unlink(&super::index_path(k));
                let _ = beneath.unlink(&super::data_path(k));
                dropped += 1;
            }
        }
    }
    let held: u64 = entries.iter().map(|e| e.charged).sum();
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
        let by_key: HashMap<u128, u32> = r.into_iter().collect();
        for (k, t) in by_key {
            if index.contains(k) {
                index.set_recency(k, t);
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
        stamps: Mutex::new(HashMap::new()),
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
         (oldest use first; {} with a known last use), {} leftovers dropped, {} unknown files \
         left alone",
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
        found.unknown
    );
    Ok((inner, report))
}
