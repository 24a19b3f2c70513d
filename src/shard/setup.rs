//! A mount's shard: the dataset listed (walk, walk cache or manifest), the plan made, the
//! shard's files pinned in the cache, and the view the namespace shows.

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;

use tracing::{info, warn};

use super::{AlwaysVisible, ShardId, list_dataset, make_plan, sizing_for, summary};
use crate::cache::{ChunkCache, PinPolicy};
use crate::cachedir::PrivateDir;
use crate::cli::ShardArgs;
use crate::meta::{ShardView, path_hash};
use crate::source::{FileVersion, Source, walk};
use crate::stats::Stats;

/// What sharding gives the rest of the daemon.
pub struct ShardSetup {
    pub view: Option<ShardView>,
    /// This shard's relative paths, for `.bicache/shard.txt`.
    pub paths: Arc<Vec<std::path::PathBuf>>,
    /// Files to prefetch, in plan order (empty: no prefetch).
    pub prefetch: Vec<FileVersion>,
}

/// What a mount asks of sharding (from its checked configuration).
pub struct MountShard<'a> {
    pub args: &'a ShardArgs,
    /// This mount's shard; None: the whole dataset.
    pub id: Option<&'a ShardId>,
    pub prefetch: bool,
    pub pin: PinPolicy,
    /// Where the dataset list is kept when no folder is shared by the node's mounts.
    pub cache_dir: &'a PrivateDir,
}

/// Lists the dataset and plans this mount's shard (only when sharding or prefetch asks for
/// it: the walk costs metadata operations on the shared filesystem), pins its files.
pub fn for_mount(
    cfg: &MountShard,
    source: &Source,
    cache: &ChunkCache,
    stats: &Stats,
) -> Result<ShardSetup, String> {
    let sa = cfg.args;
    if cfg.id.is_none() && !cfg.prefetch {
        stats.shard_count.store(1, Relaxed);
        return Ok(ShardSetup {
            view: None,
            paths: Arc::new(Vec::new()),
            prefetch: Vec::new(),
        });
    }
    let started = std::time::Instant::now();
    // Lists are kept where all of this user's mounts on the node see them (else in this
    // mount's cache dir).
    let shared = crate::cachedir::location::node_shared_dir("lists")
        .and_then(|p| crate::cachedir::CacheDir::claim(&p).ok());
    let keep: &crate::cachedir::PrivateDir = match &shared {
        Some(d) => d,
        None => cfg.cache_dir,
    };
    let dataset = list_dataset(source, sa.manifest.as_deref(), Some(keep))?;
    info!(
        files = dataset.files.len(),
        elapsed_ms = started.elapsed().as_millis() as u64,
        "dataset listed"
    );
    let visible = AlwaysVisible::new(&sa.always_visible)?;
    // The shard is fitted to the capacity tier (the SSD tier, RAM without one).
    let sizing = sizing_for(sa, cache.capacity())?;
    let mut plan = make_plan(dataset.files, &visible, cfg.id, sa.seed, sizing.as_ref());
    if dataset.sized_manifest
        && let Some(m) = sa.manifest.as_deref()
    {
        // Only this shard's files are stat-ed: the rest of the dataset costs the shared
        // filesystem nothing at this mount.
        let (files, resized) = walk::stat_listed(source, m, std::mem::take(&mut plan.files))?;
        plan.files = files;
        if resized > 0 {
            warn!(
                "{resized} of this shard's {} files have another size in SOURCE than \
                 manifest {} gives; the shards were computed from the manifest's sizes",
                plan.files.len(),
                m.display()
            );
        }
    }
    let line = summary(&plan, cfg.id, sizing.as_ref());
    if plan.cut {
        warn!("{line}");
    } else {
        info!("{line}");
    }
    if let Some(id) = cfg.id {
        stats.shard_index.store(id.index, Relaxed);
        stats.shard_count.store(id.count, Relaxed);
    } else {
        stats.shard_count.store(1, Relaxed);
    }
    stats.shard_files.store(plan.files.len() as u64, Relaxed);
    stats.shard_bytes.store(plan.shard_bytes, Relaxed);

    if cfg.pin == PinPolicy::Set {
        cache.set_pinned_files(
            plan.files
                .iter()
                .map(|f| cache.file(f.clone()).key)
                .collect(),
        );
    }
    let mut newline_names = plan.files.iter().filter(|f| walk::holds_newline(&f.path));
    if let Some(first) = newline_names.next() {
        warn!(
            "{} of this shard's file names hold a newline (the first: '{}'): \
             .bicache/shard.txt lists one path a line and cannot show them apart; \
             `bicache plan --null` with the same options lists them as they are",
            1 + newline_names.count(),
            walk::show(first.path.as_os_str().as_encoded_bytes())
        );
    }
    let view = cfg.id.map(|_| ShardView {
        members: plan
            .files
            .iter()
            .chain(plan.always_visible.iter())
            .map(|f| path_hash(f.path.as_os_str().as_encoded_bytes()))
            .collect(),
        restrict: sa.shard_view == crate::cli::ShardView::Restrict,
    });
    Ok(ShardSetup {
        view,
        paths: Arc::new(plan.files.iter().map(|f| f.path.clone()).collect()),
        prefetch: if cfg.prefetch { plan.files } else { Vec::new() },
    })
}
