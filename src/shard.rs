//! Lazy sharding: the dataset's file list, a seeded balanced partition, sizing to the cache.
//! (Interface stub: being implemented.)

use std::path::{Path, PathBuf};

use crate::cli::{PlanArgs, ShardArgs};

/// One regular file of the dataset, relative to SOURCE.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DatasetFile {
    pub path: PathBuf,
    pub size: u64,
    pub mtime_ns: i128,
}

/// Which shard a mount serves, and where the numbers came from (for the log).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShardId {
    pub index: u64,
    pub count: u64,
    pub origin: String,
}

/// Files every reader needs (zarr metadata, user globs): never partitioned.
pub struct AlwaysVisible {}

impl AlwaysVisible {
    pub fn new(_globs: &[String]) -> Result<AlwaysVisible, String> {
        todo!()
    }
    pub fn matches(&self, _rel: &Path) -> bool {
        todo!()
    }
}

pub struct Sizing {
    pub capacity: u64,
    pub min_files: u64,
    pub overflow: f64,
}

pub struct Plan {
    /// This shard's files in seeded order (the prefetch order).
    pub files: Vec<DatasetFile>,
    pub always_visible: Vec<DatasetFile>,
    pub dataset_files: u64,
    pub dataset_bytes: u64,
    pub part_files: u64,
    pub part_bytes: u64,
    pub shard_bytes: u64,
    pub cut: bool,
}

pub fn resolve_shard(
    _args: &ShardArgs,
    _env: &dyn Fn(&str) -> Option<String>,
) -> Result<Option<ShardId>, String> {
    todo!()
}

pub fn list_dataset(
    _source: &Path,
    _manifest: Option<&Path>,
    _cache_dir: Option<&Path>,
) -> Result<Vec<DatasetFile>, String> {
    todo!()
}

pub fn make_plan(
    _files: Vec<DatasetFile>,
    _visible: &AlwaysVisible,
    _shard: Option<&ShardId>,
    _seed: u64,
    _sizing: Option<&Sizing>,
) -> Plan {
    todo!()
}

pub fn run_plan(_args: &PlanArgs) -> Result<(), String> {
    todo!()
}
