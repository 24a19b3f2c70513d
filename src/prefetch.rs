//! Background prefetch of this mount's shard into the cache, in the plan's seeded order,
//! with a bounded number of threads so the shared filesystem isn't flooded.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::atomic::{AtomicBool, AtomicUsize};
use std::sync::{Arc, Weak};

use tracing::{info, warn};

use crate::cache::{CachedFile, ChunkCache, PrefetchOutcome};
use crate::clock::now_ms;
use crate::size::human;
use crate::stats::{PrefetchState, Stats};

/// Starts `threads` workers prefetching `files` in order. Returns at once; progress is in
/// the stats. Workers hold only a weak reference to the cache and end with it.
pub fn start(cache: &Arc<ChunkCache>, files: Vec<CachedFile>, threads: usize, stats: Arc<Stats>) {
    let total_bytes: u64 = files.iter().map(|f| f.version.size).sum();
    stats
        .prefetch_files_total
        .store(files.len() as u64, Relaxed);
    stats.prefetch_bytes_total.store(total_bytes, Relaxed);
    stats.prefetch_started_ms.store(now_ms(), Relaxed);
    stats.set_prefetch_state(PrefetchState::Running);
    info!(files = files.len(), bytes = %human(total_bytes), threads, "prefetching the shard");
    let files = Arc::new(files);
    let next = Arc::new(AtomicUsize::new(0));
    let out_of_room = Arc::new(AtomicBool::new(false));
    let running = Arc::new(AtomicUsize::new(threads));
    for i in 0..threads {
        let cache = Arc::downgrade(cache);
        let (files, next, out_of_room) = (files.clone(), next.clone(), out_of_room.clone());
        let (stats_w, running_w) = (stats.clone(), running.clone());
        let spawned = std::thread::Builder::new()
            .name(format!("bicache-prefetch-{i}"))
            .spawn(move || {
                worker(&cache, &files, &next, &stats_w, &out_of_room);
                // The last worker out records how the prefetch ended.
                if running_w.fetch_sub(1, Relaxed) == 1 {
                    finish(&stats_w, out_of_room.load(Relaxed));
                }
            });
        if let Err(e) = spawned {
            warn!("cannot start a prefetch thread: {e}");
            if running.fetch_sub(1, Relaxed) == 1 {
                finish(&stats, false);
            }
        }
    }
}

fn worker(
    cache: &Weak<ChunkCache>,
    files: &[CachedFile],
    next: &AtomicUsize,
    stats: &Stats,
    out_of_room: &AtomicBool,
) {
    loop {
        if out_of_room.load(Relaxed) {
            return;
        }
        let i = next.fetch_add(1, Relaxed);
        let Some(file) = files.get(i) else { return };
        let Some(cache) = cache.upgrade() else { return };
        if cache.is_shutting_down() {
            return;
        }
        match cache.prefetch_file(file) {
            Ok(PrefetchOutcome::Cached) => {}
            Ok(PrefetchOutcome::NoRoom) => {
                out_of_room.store(true, Relaxed);
                info!(
                    done = stats.prefetch_files_done.load(Relaxed),
                    "the cache's pinned area is full: prefetch stops here; the rest of the \
                     shard is served through the LRU part"
                );
                return;
            }
            Err(e) => {
                stats.prefetch_errors.fetch_add(1, Relaxed);
                warn!(path = %file.version.path.display(), "prefetch failed: {e}");
            }
        }
        stats.prefetch_files_done.fetch_add(1, Relaxed);
        stats.prefetch_bytes.fetch_add(file.version.size, Relaxed);
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
