//! Background prefetch of this mount's shard into the cache, in the plan's seeded order,
//! with a bounded number of threads so the shared filesystem isn't flooded.
//!
//! Per file: ask the source for the version it has now (the plan may come from a cached
//! walk) and pin that one, so readers (who see fresh attributes) hit what was prefetched;
//! skip chunks already cached; stop when the pinned area has no room (state `full`);
//! and yield to readers waiting on the source, so prefetch never delays them long.

use std::io;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize};
use std::sync::{Arc, Weak};

use tracing::{info, warn};

use crate::cache::{CachedFile, ChunkCache, PinPolicy, ram};
use crate::clock::now_ms;
use crate::size::human;
use crate::source::FileVersion;
use crate::stats::{PrefetchState, Stats};

/// What prefetching one file achieved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    /// Every chunk is cached (fetched now or already there).
    Cached,
    /// The pinned area is full: prefetch should stop.
    NoRoom,
}

/// Starts `threads` workers prefetching `files` in order. Returns at once; progress is in
/// the stats. Workers hold only a weak reference to the cache and end with it.
pub fn start(cache: &Arc<ChunkCache>, files: Vec<FileVersion>, threads: usize, stats: Arc<Stats>) {
    let total_bytes: u64 = files.iter().map(|f| f.size).sum();
    stats
        .prefetch_files_total
        .store(files.len() as u64, Relaxed);
    stats.prefetch_bytes_total.store(total_bytes, Relaxed);
    stats.prefetch_started_ms.store(now_ms(), Relaxed);
    stats.set_prefetch_state(PrefetchState::Running);
    info!(files = files.len(), bytes = %human(total_bytes), threads, "prefetching the shard");
    let job = Arc::new(Job {
        files,
        next: AtomicUsize::new(0),
        out_of_room: AtomicBool::new(false),
        running: AtomicUsize::new(threads),
        fetched_bytes: AtomicU64::new(0),
    });
    for i in 0..threads {
        let cache = Arc::downgrade(cache);
        let (job_w, stats_w) = (job.clone(), stats.clone());
        let spawned = std::thread::Builder::new()
            .name(format!("bicache-prefetch-{i}"))
            .spawn(move || {
                job_w.worker(&cache, &stats_w);
                // The last worker out records how the prefetch ended.
                if job_w.running.fetch_sub(1, Relaxed) == 1 {
                    finish(&stats_w, job_w.out_of_room.load(Relaxed));
                }
            });
        if let Err(e) = spawned {
            warn!("cannot start a prefetch thread: {e}");
            if job.running.fetch_sub(1, Relaxed) == 1 {
                finish(&stats, false);
            }
        }
    }
}

struct Job {
    files: Vec<FileVersion>,
    next: AtomicUsize,
    out_of_room: AtomicBool,
    running: AtomicUsize,
    /// Bytes prefetch has fetched (bounds prefetch under plain LRU).
    fetched_bytes: AtomicU64,
}

impl Job {
    fn worker(&self, cache: &Weak<ChunkCache>, stats: &Stats) {
        loop {
            if self.out_of_room.load(Relaxed) {
                return;
            }
            let i = self.next.fetch_add(1, Relaxed);
            let Some(file) = self.files.get(i) else {
                return;
            };
            let Some(cache) = cache.upgrade() else { return };
            if cache.is_shutting_down() {
                return;
            }
            match self.prefetch_file(&cache, file) {
                Ok(Outcome::Cached) => {}
                Ok(Outcome::NoRoom) => {
                    self.out_of_room.store(true, Relaxed);
                    info!(
                        done = stats.prefetch_files_done.load(Relaxed),
                        "the cache's pinned area is full: prefetch stops here; the rest of \
                         the shard is served through the LRU part"
                    );
                    return;
                }
                Err(e) => {
                    stats.prefetch_errors.fetch_add(1, Relaxed);
                    warn!(path = %file.path.display(), "prefetch failed: {e}");
                }
            }
            stats.prefetch_files_done.fetch_add(1, Relaxed);
            stats.prefetch_bytes.fetch_add(file.size, Relaxed);
        }
    }

    /// Fetches every chunk of `planned` not yet cached, into the capacity tier, pinned.
    fn prefetch_file(&self, cache: &ChunkCache, planned: &FileVersion) -> io::Result<Outcome> {
        let meta = cache.source().lstat(&planned.path)?;
        if !meta.is_file() {
            return Ok(Outcome::Cached);
        }
        let file: CachedFile = cache.file(FileVersion::of(planned.path.clone(), &meta));
        cache.pin_file(file.key);
        let missing: Vec<u64> = (0..file.chunks())
            .filter(|&i| !cache.is_cached(&file, i))
            .collect();
        if missing.is_empty() {
            return Ok(Outcome::Cached);
        }
        // Room for what is missing: in the pinned area when pinning, else in the capacity
        // tier as a whole (prefetching more than fits would only churn the LRU).
        let need: u64 = missing
            .iter()
            .map(|&i| file.chunk_len(i) as u64 + ram::CHUNK_OVERHEAD)
            .sum();
        let room = if cache.pin_policy() == PinPolicy::Off {
            cache
                .capacity()
                .saturating_sub(self.fetched_bytes.load(Relaxed))
        } else {
            cache.pinned_room()
        };
        if need > room {
            return Ok(Outcome::NoRoom);
        }
        self.fetched_bytes.fetch_add(need, Relaxed);
        for index in missing {
            for _ in 0..50 {
                if cache.readers_fetching() == 0 {
                    break;
                }
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
            cache.prefetch_chunk(&file, index)?;
        }
        Ok(Outcome::Cached)
    }
}

fn finish(stats: &Stats, out_of_room: bool) {
    stats.prefetch_finished_ms.store(now_ms(), Relaxed);
    stats.set_prefetch_state(if out_of_room {
        PrefetchState::Full
    } else {
        PrefetchState::Done
    });
    info!(
        files = stats.prefetch_files_done.load(Relaxed),
        bytes = %human(stats.prefetch_bytes.load(Relaxed)),
        "prefetch finished"
    );
}
