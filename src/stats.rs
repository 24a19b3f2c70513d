//! Counters shared by every part of the daemon, and their JSON / text snapshots.
//!
//! Relaxed atomics: each counter is independent and read only for reporting.

use std::fmt::Write as _;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering::Relaxed;

use prometheus_client::metrics::histogram::Histogram;
use serde::{Deserialize, Serialize};

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
    /// Pieces not written to the SSD tier: no room (what is left is pinned or being
    /// written), or the tier was shutting down.
    pub disk_writes_dropped: AtomicU64,
    pub disk_evictions: AtomicU64,
    pub disk_pinned_bytes: AtomicU64,
    /// Pieces queued for the SSD tier, not yet written.
    pub disk_queued: AtomicU64,
    /// Memory of the SSD tier's resident index, and the file versions it holds.
    pub disk_index_bytes: AtomicU64,
    pub disk_files: AtomicU64,
    pub source_reads: AtomicU64,
    pub source_bytes: AtomicU64,
    /// lstat/readdir/readlink/open calls on the source.
    pub source_meta_ops: AtomicU64,
    /// Those of them made in the background (revalidation, prefetch), no reader waiting.
    pub source_meta_ops_background: AtomicU64,
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
    /// Cache files hashed whole at a passthrough open: never checked since written, or
    /// changed since last checked.
    pub passthrough_checks: AtomicU64,
    /// Bytes and entries of the namespace's node table (inodes, names, listings).
    pub meta_bytes: AtomicU64,
    /// What the live entries take (what --meta-budget holds; meta_bytes is what is
    /// allocated, at least this), and the budget.
    pub meta_live_bytes: AtomicU64,
    pub meta_budget: AtomicU64,
    pub meta_entries: AtomicU64,
    /// Entries waiting for background revalidation.
    pub meta_revalidate_queued: AtomicU64,
    /// Where the cache lives, set once at start.
    pub cache_location: std::sync::OnceLock<CacheLocation>,
    /// How long reads through the daemon took, by the tier that served them.
    pub read_latency: ReadLatency,
}

/// The tier that served a read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Served {
    Ram,
    Disk,
    Source,
}

/// Latency histograms of reads (10 µs to ~10 s, by factors of 4).
#[derive(Debug)]
pub struct ReadLatency {
    ram: Histogram,
    disk: Histogram,
    source: Histogram,
}

fn latency_histogram() -> Histogram {
    Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(
        1e-5, 4.0, 11,
    ))
}

impl Default for ReadLatency {
    fn default() -> Self {
        ReadLatency {
            ram: latency_histogram(),
            disk: latency_histogram(),
            source: latency_histogram(),
        }
    }
}

impl ReadLatency {
    pub fn observe(&self, by: Served, took: std::time::Duration) {
        let h = match by {
            Served::Ram => &self.ram,
            Served::Disk => &self.disk,
            Served::Source => &self.source,
        };
        h.observe(took.as_secs_f64());
    }

    pub fn by_tier(&self) -> [(&'static str, &Histogram); 3] {
        [
            ("ram", &self.ram),
            ("disk", &self.disk),
            ("source", &self.source),
        ]
    }
}

/// Where the SSD tier lives: reported so an admin sees at once if a cache landed on a
/// network filesystem or in RAM.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct CacheLocation {
    pub dir: String,
    pub fs_type: String,
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
            0 => crate::clock::now_ms(),
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

    /// A consistent-enough copy of every counter (each read once), in the shape of the JSON.
    pub fn snapshot(&self, pid: u32, chunk_size: u64) -> Snapshot {
        let (rate, eta) = self.prefetch_rate();
        Snapshot {
            pid,
            chunk_size,
            ram: TierCounts {
                hits: get(&self.ram_hits),
                misses: get(&self.ram_misses),
                bytes: get(&self.ram_bytes),
                capacity: get(&self.ram_capacity),
            },
            disk: DiskCounts {
                tier: TierCounts {
                    hits: get(&self.disk_hits),
                    misses: get(&self.disk_misses),
                    bytes: get(&self.disk_bytes),
                    capacity: get(&self.disk_capacity),
                },
                corrupt: get(&self.disk_corrupt),
                writes: get(&self.disk_writes),
                write_errors: get(&self.disk_write_errors),
                writes_dropped: get(&self.disk_writes_dropped),
                evictions: get(&self.disk_evictions),
                pinned_bytes: get(&self.disk_pinned_bytes),
                index_bytes: get(&self.disk_index_bytes),
                files: get(&self.disk_files),
                queued: get(&self.disk_queued),
            },
            source: SourceCounts {
                reads: get(&self.source_reads),
                bytes: get(&self.source_bytes),
                meta_ops: get(&self.source_meta_ops),
                meta_ops_background: get(&self.source_meta_ops_background),
                errors: get(&self.source_errors),
            },
            readahead: ReadaheadCounts {
                chunks: get(&self.readahead_chunks),
            },
            prefetch: PrefetchCounts {
                state: self.prefetch_state().name().to_string(),
                files_done: get(&self.prefetch_files_done),
                files_total: get(&self.prefetch_files_total),
                bytes: get(&self.prefetch_bytes),
                bytes_total: get(&self.prefetch_bytes_total),
                errors: get(&self.prefetch_errors),
                rate_bytes_per_sec: rate,
                eta_secs: eta,
            },
            shard: ShardCounts {
                index: get(&self.shard_index),
                count: get(&self.shard_count),
                files: get(&self.shard_files),
                bytes: get(&self.shard_bytes),
                out_of_shard_opens: get(&self.out_of_shard_opens),
            },
            passthrough: PassthroughCounts {
                enabled: get(&self.passthrough_enabled) == 1,
                opens: get(&self.passthrough_opens),
                checks: get(&self.passthrough_checks),
            },
            meta: MetaCounts {
                bytes: get(&self.meta_bytes),
                live_bytes: get(&self.meta_live_bytes),
                budget: get(&self.meta_budget),
                entries: get(&self.meta_entries),
                revalidate_queued: get(&self.meta_revalidate_queued),
            },
            cache: self.cache_location.get().cloned().unwrap_or_default(),
        }
    }

    /// The stats document (`.bicache/stats.json`, `bicache stats --json`), one line.
    pub fn to_json(&self, pid: u32, chunk_size: u64) -> String {
        let mut s = serde_json::to_string(&self.snapshot(pid, chunk_size))
            .expect("counters always serialise");
        s.push('\n');
        s
    }

    /// The same for a person (`.bicache/stats.txt`, `bicache stats`).
    pub fn to_text(&self, chunk_size: u64) -> String {
        self.snapshot(0, chunk_size).to_text()
    }
}

/// Hit and miss counts of a tier (chunk look-ups), what it holds and its budget.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub struct TierCounts {
    pub hits: u64,
    pub misses: u64,
    pub bytes: u64,
    pub capacity: u64,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub struct DiskCounts {
    #[serde(flatten)]
    pub tier: TierCounts,
    pub corrupt: u64,
    pub writes: u64,
    pub write_errors: u64,
    pub writes_dropped: u64,
    pub evictions: u64,
    pub pinned_bytes: u64,
    pub index_bytes: u64,
    pub files: u64,
    pub queued: u64,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub struct SourceCounts {
    pub reads: u64,
    pub bytes: u64,
    pub meta_ops: u64,
    pub meta_ops_background: u64,
    pub errors: u64,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub struct ReadaheadCounts {
    pub chunks: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct PrefetchCounts {
    pub state: String,
    pub files_done: u64,
    pub files_total: u64,
    pub bytes: u64,
    pub bytes_total: u64,
    pub errors: u64,
    pub rate_bytes_per_sec: u64,
    /// Seconds left; u64::MAX while no rate is known yet.
    pub eta_secs: u64,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub struct ShardCounts {
    pub index: u64,
    pub count: u64,
    pub files: u64,
    pub bytes: u64,
    pub out_of_shard_opens: u64,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub struct PassthroughCounts {
    pub enabled: bool,
    pub opens: u64,
    /// Cache files hashed at open (see Stats::passthrough_checks).
    #[serde(default)]
    pub checks: u64,
}

/// Every counter at one moment, as `stats.json` shows it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Snapshot {
    pub pid: u32,
    pub chunk_size: u64,
    pub ram: TierCounts,
    pub disk: DiskCounts,
    pub source: SourceCounts,
    pub readahead: ReadaheadCounts,
    pub prefetch: PrefetchCounts,
    pub shard: ShardCounts,
    pub passthrough: PassthroughCounts,
    pub meta: MetaCounts,
    pub cache: CacheLocation,
}

/// The namespace's memory: bytes of its tables, entries (inodes) held.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub struct MetaCounts {
    pub bytes: u64,
    pub live_bytes: u64,
    pub budget: u64,
    pub entries: u64,
    pub revalidate_queued: u64,
}

fn hit_rate(t: &TierCounts) -> String {
    if t.hits + t.misses == 0 {
        "-".to_string()
    } else {
        format!("{:.1}%", 100.0 * t.hits as f64 / (t.hits + t.misses) as f64)
    }
}

impl Snapshot {
    pub fn to_text(&self) -> String {
        let (r, d, src, p, sh) = (
            &self.ram,
            &self.disk,
            &self.source,
            &self.prefetch,
            &self.shard,
        );
        let eta = if p.eta_secs == u64::MAX {
            "-".to_string()
        } else {
            format!("{} s", p.eta_secs)
        };
        let mut out = String::new();
        let mut line = |label: &str, text: String| {
            let _ = writeln!(out, "{label:<11} {text}");
        };
        line(
            "cache dir",
            format!("{} (on {})", self.cache.dir, self.cache.fs_type),
        );
        line("chunk size", human(self.chunk_size));
        line(
            "ram",
            format!(
                "{} / {} held, {} hits, {} misses (hit rate {})",
                human(r.bytes),
                human(r.capacity),
                r.hits,
                r.misses,
                hit_rate(r)
            ),
        );
        line(
            "disk",
            format!(
                "{} / {} held, {} hits, {} misses (hit rate {}), {} corrupt, {} write errors",
                human(d.tier.bytes),
                human(d.tier.capacity),
                d.tier.hits,
                d.tier.misses,
                hit_rate(&d.tier),
                d.corrupt,
                d.write_errors
            ),
        );
        line(
            "source",
            format!(
                "{} reads, {} pulled, {} metadata ops, {} errors",
                src.reads,
                human(src.bytes),
                src.meta_ops,
                src.errors
            ),
        );
        line(
            "prefetch",
            format!(
                "{}: {} / {} files, {} / {}, {}/s, ETA {eta}",
                p.state,
                p.files_done,
                p.files_total,
                human(p.bytes),
                human(p.bytes_total),
                human(p.rate_bytes_per_sec)
            ),
        );
        line(
            "shard",
            format!(
                "{} of {}: {} files, {}, {} out-of-shard opens",
                sh.index,
                sh.count,
                sh.files,
                human(sh.bytes),
                sh.out_of_shard_opens
            ),
        );
        line(
            "metadata",
            format!("{} entries, {}", self.meta.entries, human(self.meta.bytes)),
        );
        line(
            "passthrough",
            format!(
                "{}, {} opens, {} cache files checked at open",
                if self.passthrough.enabled {
                    "on"
                } else {
                    "off"
                },
                self.passthrough.opens,
                self.passthrough.checks
            ),
        );
        out
    }
}
