//! bicache: a read-only FUSE overlay caching a slow dataset directory in RAM and on local SSD.
//!
//! The crate is a library with a thin binary (`main.rs`). Everything below the FUSE adapter
//! (`fuse.rs`) is plain Rust that unit tests drive without a mount. The module map and the
//! path of one read are in `docs/ARCHITECTURE.md`.

pub mod beneath;
pub mod buf;
pub mod cache;
pub mod cachedir;
pub mod cli;
pub mod clock;
pub mod commands;
pub mod config;
pub mod daemon;
pub mod flight;
pub mod fuse;
pub mod logfile;
pub mod meta;
pub mod metrics;
pub mod mountinfo;
pub mod prefetch;
pub mod shard;
pub mod size;
pub mod source;
pub mod stats;
pub mod vfs;
pub mod workers;

/// The mount's control directory at its root (`stats.json`, `stats.txt`, `shard.txt`). A
/// source entry of that name at the top level is hidden by it and never part of the dataset.
pub const CONTROL_DIR: &str = ".bicache";
