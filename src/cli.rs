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
    Mount(MountArgs),
    /// Unmount a bicache mount (fusermount3 -u works too).
    Unmount { mountpoint: PathBuf },
    /// Print the live counters of a running mount.
    Stats {
        mountpoint: PathBuf,
        /// Print the raw JSON document.
        #[arg(long)]
        json: bool,
    },
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
    /// Stay attached and log to stderr; SIGINT/SIGTERM unmount cleanly.
    #[arg(long)]
    pub foreground: bool,
    /// Daemon log file [default: <cache-dir>/bicache.log]. Filter with RUST_LOG (default info).
    #[arg(long, value_name = "FILE")]
    pub log_file: Option<PathBuf>,
    /// Seconds that attributes and listings are trusted before the source is asked again.
    #[arg(long, value_name = "SECONDS", default_value_t = 30.0)]
    pub metadata_ttl: f64,
    /// The dataset never changes while mounted: trust metadata forever (fastest).
    #[arg(long)]
    pub immutable: bool,
    /// Let other users use the mount; the source's permission bits are then enforced.
    #[arg(long)]
    pub allow_other: bool,
    /// FUSE request threads.
    #[arg(long, value_name = "N", default_value_t = 8)]
    pub fuse_threads: usize,
    /// Background threads fetching from the source (readahead and write-back use them).
    #[arg(long, value_name = "N", default_value_t = 8)]
    pub fetch_threads: usize,
}
