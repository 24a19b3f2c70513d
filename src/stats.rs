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
    pub disk_pinned_bytes: AtomicU64,
    pub source_reads: AtomicU64,
    pub source_bytes: AtomicU64,
    /// lstat/readdir/readlink/open calls on the source.
    pub source_meta_ops: AtomicU64,
    pub source_errors: AtomicU64,
    pub readahead_chunks: AtomicU64,
    pub prefetch_files_done: AtomicU64,
    pub prefetch_files_total: AtomicU64,
    pub prefetch_bytes: AtomicU64,
    pub prefetch_bytes_total: AtomicU64,
    pub prefetch_errors: AtomicU64,
    pub prefetch_started_ms: AtomicU64,
    pub prefetch_finished_ms: AtomicU64,
    prefetch_state: AtomicU64,
    pub shard_index: AtomicU64,
    pub shard_count: AtomicU64,
    pub shard_files: AtomicU64,
    pub shard_bytes: AtomicU64,
    /// Opens of files outside this mount's shard (served, or refused under --shard-strict).
    pub out_of_shard_opens: AtomicU64,
    /// 1 while FUSE passthrough is in use: set at init if the kernel grants it, cleared
    /// for good if registering a backing file fails. fs.rs decides opens by it.
    pub passthrough_enabled: AtomicU64,
    /// Opens served by FUSE passthrough (their reads never reach the daemon).
    pub passthrough_opens: AtomicU64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PrefetchState {
    Off = 0,
    Running = 1,
    /// Every file of the shard is cached.
    Done = 2,
    /// Stopped early: the pinned area of the cache is full.
    Full = 3,
}

impl PrefetchState {
    pub fn name(self) -> &'static str {
        match self {
            PrefetchState::Off => "off",
            PrefetchState::Running => "running",
            PrefetchState::Done => "done",
            PrefetchState::Full => "full",
        }
    }
}

fn get(c: &AtomicU64) -> u64 {
    c.load(Relaxed)
}

impl Stats {
    pub fn set_prefetch_state(&self, s: PrefetchState) {
        self.prefetch_state.store(s as u64, Relaxed);
    }

    pub fn prefetch_state(&self) -> PrefetchState {
        match self.prefetch_state.load(Relaxed) {
            1 => PrefetchState::Running,
            2 => PrefetchState::Done,
            3 => PrefetchState::Full,
            _ => PrefetchState::Off,
        }
    }

    /// (bytes per second, seconds left) of the prefetch so far.
    fn prefetch_rate(&self) -> (u64, u64) {
        let started = get(&self.prefetch_started_ms);
        if started == 0 {
            return (0, 0);
        }
        let end = match get(&self.prefetch_finished_ms) {
            0 => crate::prefetch::now_ms(),
            t => t,
        };
        let secs = (end.saturating_sub(started) as f64 / 1000.0).max(0.001);
        let done = get(&self.prefetch_bytes);
        let rate = done as f64 / secs;
        let left = get(&self.prefetch_bytes_total).saturating_sub(done);
        let eta = if self.prefetch_state() != PrefetchState::Running {
            0
        } else if rate > 0.0 {
            (left as f64 / rate).ceil() as u64
        } else {
            u64::MAX
        };
        (rate as u64, eta)
    }

    pub fn to_json(&self, pid: u32, chunk_size: u64) -> String {
        let (rate, eta) = self.prefetch_rate();
        let mut s = String::with_capacity(1024);
        let _ = writeln!(
            s,
            "{{\"pid\":{pid},\"chunk_size\":{chunk_size},\
             \"ram\":{{\"hits\":{},\"misses\":{},\"bytes\":{},\"capacity\":{}}},\
             \"disk\":{{\"hits\":{},\"misses\":{},\"bytes\":{},\"capacity\":{},\"corrupt\":{},\
             \"writes\":{},\"write_errors\":{},\"writes_dropped\":{},\"evictions\":{},\
             \"pinned_bytes\":{}}},\
             \"source\":{{\"reads\":{},\"bytes\":{},\"meta_ops\":{},\"errors\":{}}},\
             \"readahead\":{{\"chunks\":{}}},\
             \"prefetch\":{{\"state\":\"{}\",\"files_done\":{},\"files_total\":{},\"bytes\":{},\
             \"bytes_total\":{},\"errors\":{},\"rate_bytes_per_sec\":{},\"eta_secs\":{}}},\
             \"shard\":{{\"index\":{},\"count\":{},\"files\":{},\"bytes\":{},\
             \"out_of_shard_opens\":{}}},\
             \"passthrough\":{{\"enabled\":{},\"opens\":{}}}}}",
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
            get(&self.disk_pinned_bytes),
            get(&self.source_reads),
            get(&self.source_bytes),
            get(&self.source_meta_ops),
            get(&self.source_errors),
            get(&self.readahead_chunks),
            self.prefetch_state().name(),
            get(&self.prefetch_files_done),
            get(&self.prefetch_files_total),
            get(&self.prefetch_bytes),
            get(&self.prefetch_bytes_total),
            get(&self.prefetch_errors),
            rate,
            eta,
            get(&self.shard_index),
            get(&self.shard_count),
            get(&self.shard_files),
            get(&self.shard_bytes),
            get(&self.out_of_shard_opens),
            get(&self.passthrough_enabled) == 1,
            get(&self.passthrough_opens),
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
        let (pf_rate, eta) = self.prefetch_rate();
        format!(
            "chunk size  {}\n\
             ram         {} / {} held, {rh} hits, {rm} misses (hit rate {})\n\
             disk        {} / {} held, {dh} hits, {dm} misses (hit rate {}), {} corrupt, {} write errors\n\
             source      {} reads, {} pulled, {} metadata ops, {} errors\n\
             prefetch    {}: {} / {} files, {} / {}, {}/s, ETA {}\n\
             shard       {} of {}: {} files, {}, {} out-of-shard opens\n\
             passthrough {}, {} opens\n",
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
            self.prefetch_state().name(),
            get(&self.prefetch_files_done),
            get(&self.prefetch_files_total),
            human(get(&self.prefetch_bytes)),
            human(get(&self.prefetch_bytes_total)),
            human(pf_rate),
            if eta == u64::MAX {
                "-".to_string()
            } else {
                format!("{eta} s")
            },
            get(&self.shard_index),
            get(&self.shard_count),
            get(&self.shard_files),
            human(get(&self.shard_bytes)),
            get(&self.out_of_shard_opens),
            if get(&self.passthrough_enabled) == 1 {
                "on"
            } else {
                "off"
            },
            get(&self.passthrough_opens),
        )
    }
}
