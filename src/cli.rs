//! Command-line definitions. Values that need the machine to interpret (sizes, paths) are
//! kept as strings here and checked in `config.rs`, so every bad value gets one clear line.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(
    name = "bicache",
    version,
    about = "Read-only FUSE overlay that caches a slow dataset directory in RAM and on local SSD"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Mount SOURCE read-only at MOUNTPOINT with a RAM + local-SSD chunk cache.
    Mount(Box<MountArgs>),
    /// Unmount a bicache mount (fusermount3 -u works too).
    Unmount { mountpoint: PathBuf },
    /// Print the live counters of a running mount, once or (--watch) as a live view.
    Stats {
        mountpoint: PathBuf,
        #[command(flatten)]
        opts: StatsArgs,
    },
    /// Print this shard's relative paths, one a line (no mount needed).
    Plan(PlanArgs),
    /// Print a sized manifest of SOURCE (`SIZE<TAB>PATH` per file): made once, given to
    /// every node as --manifest, it spares each mount a stat of every file.
    Manifest { source: PathBuf },
    /// Wait until a mount's shard prefetch has finished, with a progress bar.
    Warm {
        mountpoint: PathBuf,
        /// No progress bar; just wait.
        #[arg(long)]
        quiet: bool,
    },
}

/// Options of `bicache stats`.
#[derive(Args, Debug, Clone, Default)]
pub struct StatsArgs {
    /// Print the raw JSON document (with --watch: one document a line, every interval).
    #[arg(long)]
    pub json: bool,
    /// Keep watching: redraw a live view (rates between samples, hit rates, prefetch
    /// progress, errors) every --interval; one line per sample when stdout is not a
    /// terminal. Ctrl-C ends it (exit 0); exits non-zero when the mount goes away.
    #[arg(long)]
    pub watch: bool,
    /// With --watch: seconds between samples, 0.1 to 3600 (fractions allowed).
    /// [default: 1]
    #[arg(long, value_name = "SECS", allow_hyphen_values = true)]
    pub interval: Option<String>,
}

#[derive(Args, Debug, Clone)]
pub struct PlanArgs {
    /// The dataset directory.
    pub source: PathBuf,
    #[command(flatten)]
    pub shard: ShardArgs,
    /// Cache capacity that `--shard-size auto` fits the shard to (as `mount` would
    /// compute it from --disk, or --ram when --disk is 0).
    #[arg(long, value_name = "SIZE")]
    pub capacity: Option<String>,
    /// End each path with a NUL byte instead of a newline, for `xargs -0`: the one form
    /// in which a file name holding a newline reads back as it is.
    #[arg(short = '0', long)]
    pub null: bool,
}

#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShardMode {
    None,
    Rank,
    Node,
    Disk,
}

#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShardView {
    /// Directory listings show only this shard's files (and always-visible ones).
    Restrict,
    /// Listings show the whole dataset.
    All,
}

#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShardSize {
    /// The shard is this mount's whole part of the partition.
    Full,
    /// Cut the shard to fit the cache capacity (x (1 + --overflow), at least --min-files).
    Auto,
}

/// Lazy sharding: which slice of the dataset this mount serves. Shared by `mount` and `plan`.
#[derive(Args, Debug, Clone)]
pub struct ShardArgs {
    /// Which group this mount serves; index and count come from the launcher's environment
    /// (torchrun or Slurm) unless --shard-index/--shard-count are given.
    #[arg(long, value_enum, default_value = "none")]
    pub shard: ShardMode,
    /// Explicit shard index I (with --shard-count; overrides the environment).
    #[arg(long, value_name = "I")]
    pub shard_index: Option<u64>,
    /// Explicit shard count K (with --shard-index).
    #[arg(long, value_name = "K")]
    pub shard_count: Option<u64>,
    /// `--shard disk`: local disks per node, one mount per disk.
    #[arg(long, value_name = "D")]
    pub disks: Option<u64>,
    /// `--shard disk`: this mount's disk, 0..D-1.
    #[arg(long, value_name = "J")]
    pub disk_index: Option<u64>,
    /// Seed of the shuffle that the partition is drawn from.
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub seed: u64,
    /// File listing the dataset's relative paths, one a line (default: walk SOURCE); with
    /// the first line `# bicache-manifest: size path`, `SIZE<TAB>PATH` lines (no stat of
    /// the dataset: only this shard's files are stat-ed).
    #[arg(long, value_name = "FILE")]
    pub manifest: Option<PathBuf>,
    /// restrict: listings show only this shard; all: everything.
    #[arg(long, value_enum, default_value = "restrict")]
    pub shard_view: ShardView,
    /// Files visible in every shard and never partitioned (besides zarr metadata).
    /// Matched against the file name and the relative path. Repeatable.
    #[arg(long, value_name = "GLOB")]
    pub always_visible: Vec<String>,
    /// Opening a file outside this shard fails with EACCES instead of being served.
    #[arg(long)]
    pub shard_strict: bool,
    /// full: the shard is the whole part; auto: fit it to the cache.
    #[arg(long, value_enum, default_value = "full")]
    pub shard_size: ShardSize,
    /// With --shard-size auto: keep at least this many files.
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub min_files: u64,
    /// With --shard-size auto: let the shard exceed the cache by this fraction (0.1 = 10%).
    #[arg(long, value_name = "F", default_value_t = 0.0)]
    pub overflow: f64,
}

#[derive(Args, Debug, Clone)]
pub struct MountArgs {
    /// The dataset directory to overlay (typically on a slow shared filesystem).
    pub source: PathBuf,
    /// Where the read-only view appears (an existing empty directory).
    pub mountpoint: PathBuf,
    /// Local-SSD tier directory, created 0700 if missing.
    /// [default: $XDG_CACHE_HOME/bicache/<hash of SOURCE>, or ~/.cache/...]
    #[arg(long, value_name = "DIR")]
    pub cache_dir: Option<PathBuf>,
    /// RAM tier budget: bytes with a unit (512MiB, 4G, 1.5GB) or a share of MemAvailable (25%).
    #[arg(
        long,
        value_name = "SIZE",
        default_value = "25%",
        allow_hyphen_values = true
    )]
    pub ram: String,
    /// SSD tier budget: bytes, or a share of the free space under the cache dir (50%).
    /// 0 disables the SSD tier.
    #[arg(
        long,
        value_name = "SIZE",
        default_value = "50%",
        allow_hyphen_values = true
    )]
    pub disk: String,
    /// Caching unit.
    #[arg(
        long,
        value_name = "SIZE",
        default_value = "1MiB",
        allow_hyphen_values = true
    )]
    pub chunk_size: String,
    /// Ask for transparent huge pages for chunk buffers (fewer page faults when the RAM
    /// tier fills). Off: they never get huge pages, whatever the system's THP setting (e.g.
    /// to keep memory compaction stalls off the read path on a fragmented node).
    #[arg(long, value_enum, value_name = "on|off", default_value = "on")]
    pub huge_pages: OnOff,
    /// Stay attached and log to stderr; SIGINT/SIGTERM unmount cleanly.
    #[arg(long)]
    pub foreground: bool,
    /// Serve the stats as Prometheus/OpenMetrics text on http://ADDR/metrics (HOST:PORT,
    /// or a port alone for 127.0.0.1). Dataset-level counters only.
    #[arg(long, value_name = "ADDR")]
    pub metrics: Option<String>,
    /// Daemon log file [default: <cache-dir>/bicache.log]. Filter with RUST_LOG (default info).
    #[arg(long, value_name = "FILE")]
    pub log_file: Option<PathBuf>,
    /// Largest the log may grow (0: no limit). The default log in the cache dir is then
    /// rotated once, to bicache.log.1; a --log-file stops at the size with one line saying so.
    #[arg(long, value_name = "SIZE", default_value = "64MiB")]
    pub log_max_size: String,
    /// Seconds that attributes and listings are trusted before the source is asked again.
    /// Longer than a typical epoch, so each epoch doesn't re-stat every file of the dataset.
    #[arg(
        long,
        value_name = "SECONDS",
        default_value = "600",
        allow_hyphen_values = true
    )]
    pub metadata_ttl: String,
    /// The dataset never changes while mounted: trust metadata forever (fastest).
    #[arg(long)]
    pub immutable: bool,
    /// Source metadata operations a second for revalidating, in the background, what is
    /// past --metadata-ttl (served meanwhile). 0: revalidate in the foreground instead.
    #[arg(
        long,
        value_name = "OPS",
        default_value = "200",
        allow_hyphen_values = true
    )]
    pub revalidate_rate: String,
    /// Memory for metadata (inodes, names, listings); past it the least recently used
    /// entries are dropped and fetched again when needed. About 140 bytes a file.
    #[arg(
        long,
        value_name = "SIZE",
        default_value = "1GiB",
        allow_hyphen_values = true
    )]
    pub meta_budget: String,
    /// Let other users use the mount; the source's permission bits are then enforced.
    #[arg(long)]
    pub allow_other: bool,
    /// FUSE request threads.
    #[arg(long, value_name = "N", default_value_t = 8)]
    pub fuse_threads: usize,
    /// Background threads fetching chunks ahead of readers (readahead, random-pass fill).
    #[arg(long, value_name = "N", default_value_t = 8)]
    pub fetch_threads: usize,
    #[command(flatten)]
    pub shard: ShardArgs,
    /// Threads prefetching the shard (bounded so the shared filesystem isn't flooded).
    #[arg(long, value_name = "N", default_value_t = 2)]
    pub prefetch_threads: usize,
    /// Prefetch the shard in the background: on by default for sharded mounts, off for
    /// `--shard none` (where the "shard" is the whole dataset).
    #[arg(long, value_name = "on|off")]
    pub prefetch: Option<OnOff>,
    /// Let the kernel read files held whole on the SSD tier straight from their cache
    /// files (FUSE passthrough: Linux 6.9+, as root). Off: every read goes through the daemon.
    #[arg(long, value_enum, value_name = "on|off", default_value = "on")]
    pub passthrough: OnOff,
    /// pin: chunks of the shard (of the dataset, unsharded) are kept while they fit, so
    /// random-order epochs get the best possible hit rate; lru: plain LRU for other patterns.
    #[arg(long, value_enum, default_value = "pin")]
    pub cache_policy: CachePolicy,
}

#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnOff {
    On,
    Off,
}

#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum CachePolicy {
    Pin,
    Lru,
}
