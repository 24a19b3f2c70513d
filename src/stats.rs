//! Counters shared by every part of the daemon, and their JSON / text snapshots.
//!
//! Relaxed atomics: each counter is independent and read only for reporting.

use std::fmt::Write;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering::Relaxed;

use crate::size::human;

#[derive(Default)]
pub struct Stats {
    pub ram_hits: AtomicU64,
    pub ram_misses: AtomicU64,
    pub ram_bytes: AtomicU64,
    pub ram_capacity: AtomicU64,
    pub disk_hits: AtomicU64,
    pub disk_misses: AtomicU64,
    pub disk_bytes: AtomicU64,
    pub disk_capacity: AtomicU64,
    /// Chunks found damaged on the SSD tier (bad checksum, short, wrong key) and dropped.
    pub disk_corrupt: AtomicU64,
    pub disk_writes: AtomicU64,
    pub disk_write_errors: AtomicU64,
    /// Chunks not written to the SSD tier because the write-back queue was full.
    pub disk_writes_dropped: AtomicU64,
    pub disk_evictions: AtomicU64,
    pub source_reads: AtomicU64,
    pub source_bytes: AtomicU64,
    /// lstat/readdir/readlink/open calls on the source.
    pub source_meta_ops: AtomicU64,
    pub source_errors: AtomicU64,
    pub readahead_chunks: AtomicU64,
    pub prefetch_files_done: AtomicU64,
    pub prefetch_files_total: AtomicU64,
    pub prefetch_bytes: AtomicU64,
}

fn get(c: &AtomicU64) -> u64 {
    c.load(Relaxed)
}

impl Stats {
    pub fn to_json(&self, pid: u32, chunk_size: u64) -> String {
        let mut s = String::with_capacity(1024);
        let _ = write!(
            s,
            "{{\"pid\":{pid},\"chunk_size\":{chunk_size},\
             \"ram\":{{\"hits\":{},\"misses\":{},\"bytes\":{},\"capacity\":{}}},\
             \"disk\":{{\"hits\":{},\"misses\":{},\"bytes\":{},\"capacity\":{},\"corrupt\":{},\
             \"writes\":{},\"write_errors\":{},\"writes_dropped\":{},\"evictions\":{}}},\
             \"source\":{{\"reads\":{},\"bytes\":{},\"meta_ops\":{},\"errors\":{}}},\
             \"readahead\":{{\"chunks\":{}}},\
             \"prefetch\":{{\"files_done\":{},\"files_total\":{},\"bytes\":{}}}}}\n",
            get(&self.ram_hits),
            get(&self.ram_misses),
            get(&self.ram_bytes),
            get(&self.ram_capacity),
            get(&self.disk_hits),
            get(&self.disk_misses),
            get(&self.disk_bytes),
            get(&self.disk_capacity),
            get(&self.disk_corrupt),
            get(&self.disk_writes),
            get(&self.disk_write_errors),
            get(&self.disk_writes_dropped),
            get(&self.disk_evictions),
            get(&self.source_reads),
            get(&self.source_bytes),
            get(&self.source_meta_ops),
            get(&self.source_errors),
            get(&self.readahead_chunks),
            get(&self.prefetch_files_done),
            get(&self.prefetch_files_total),
            get(&self.prefetch_bytes),
        );
        s
    }

    pub fn to_text(&self, chunk_size: u64) -> String {
        let rate = |hits: u64, misses: u64| {
            if hits + misses == 0 {
                "-".to_string()
            } else {
                format!("{:.1}%", 100.0 * hits as f64 / (hits + misses) as f64)
            }
        };
        let (rh, rm) = (get(&self.ram_hits), get(&self.ram_misses));
        let (dh, dm) = (get(&self.disk_hits), get(&self.disk_misses));
        format!(
            "chunk size  {}\n\
             ram         {} / {} held, {rh} hits, {rm} misses (hit rate {})\n\
             disk        {} / {} held, {dh} hits, {dm} misses (hit rate {}), {} corrupt, {} write errors\n\
             source      {} reads, {} pulled, {} metadata ops, {} errors\n\
             prefetch    {} / {} files, {}\n",
            human(chunk_size),
            human(get(&self.ram_bytes)),
            human(get(&self.ram_capacity)),
            rate(rh, rm),
            human(get(&self.disk_bytes)),
            human(get(&self.disk_capacity)),
            rate(dh, dm),
            get(&self.disk_corrupt),
            get(&self.disk_write_errors),
            get(&self.source_reads),
            human(get(&self.source_bytes)),
            get(&self.source_meta_ops),
            get(&self.source_errors),
            get(&self.prefetch_files_done),
            get(&self.prefetch_files_total),
            human(get(&self.prefetch_bytes)),
        )
    }
}
