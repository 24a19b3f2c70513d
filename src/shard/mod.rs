//! Lazy sharding: the dataset's file list, a seeded balanced partition, sizing to the cache.
//!
//! - `launcher.rs`: which shard this mount serves (flags or torchrun/Slurm variables);
//! - `partition.rs`: the seeded shuffle, the balanced assignment, sizing to the cache;
//! - `walk_cache.rs`: the file list kept between mounts;
//! - here: the file list itself (walk or manifest, through `Source`), what every shard
//!   shows (`AlwaysVisible`), and the one-line summary.

mod launcher;
mod partition;
pub mod setup;
pub mod walk_cache;

use std::ffi::OsStr;
use std::fs;
use std::io;
use std::path::Path;

use globset::{GlobBuilder, GlobSet, GlobSetBuilder};

pub use launcher::{ShardId, resolve_shard};
pub use partition::{Plan, Sizing, make_plan, sizing_for};

use crate::cachedir::PrivateDir;
use crate::size::human;
use crate::source::{FileVersion, Source, walk};
use walk_cache::WalkKey;

/// Zarr metadata every reader of an array needs, whichever shard it reads.
const ZARR_METADATA: &[&str] = &[".zarray", ".zattrs", ".zgroup", ".zmetadata", "zarr.json"];

/// Files every reader needs (zarr metadata, user globs): never partitioned.
#[derive(Debug, Clone)]
pub struct AlwaysVisible {
    user: GlobSet,
}

impl AlwaysVisible {
    /// The zarr metadata names plus `globs`. In a glob `*` and `?` stay within one path
    /// component and `**` spans directories (as in a shell or .gitignore), so `meta/*`
    /// means the files directly in `meta/`.
    pub fn new(globs: &[String]) -> Result<AlwaysVisible, String> {
        let mut set = GlobSetBuilder::new();
        for g in globs {
            let glob = GlobBuilder::new(g)
                .literal_separator(true)
                .build()
                .map_err(|e| format!("invalid --always-visible glob '{g}': {}", e.kind()))?;
            set.add(glob);
        }
        let user = set
            .build()
            .map_err(|e| format!("invalid --always-visible globs: {e}"))?;
        Ok(AlwaysVisible { user })
    }

    /// True when the file's name or its whole relative path is always visible.
    pub fn matches(&self, rel: &Path) -> bool {
        let name = rel.file_name().unwrap_or(rel.as_os_str());
        ZARR_METADATA.iter().any(|m| name == OsStr::new(m))
            || self.user.is_match(Path::new(name))
            || self.user.is_match(rel)
    }
}

/// The dataset's file list (`list_dataset`).
pub struct Dataset {
    /// Every regular file, sorted by path.
    pub files: Vec<FileVersion>,
    /// The list is a sized manifest's (`walk::SIZED_HEADER`): paths and sizes, no
    /// versions; what a mount serves must be stat-ed (`walk::stat_listed`).
    pub sized_manifest: bool,
}

/// Every regular file of the dataset, sorted by path: from `manifest` when given (each
/// listed path lstat-ed, unless the manifest gives sizes), else a parallel walk of the
/// source that does not follow symlinks.
///
/// With `shared` the list is kept in a file there and reused: a walk while the source
/// root's mtime is unchanged, a manifest's check while the manifest is. Mounts that share
/// the folder (all of a user's mounts on a node: every rank of a job) take turns under a
/// lock, so the node walks the dataset once, not once per rank. The walk's key sees files
/// added or removed at the top level only: a dataset that changes deeper down needs a
/// manifest. A trade made on purpose: re-walking a large tree on a metadata-slow
/// filesystem at every mount is what this cache avoids, and datasets are normally written
/// once. (Prefetch and reads always ask the source for each file's current version.)
pub fn list_dataset(
    source: &Source,
    manifest: Option<&Path>,
    shared: Option<&PrivateDir>,
) -> Result<Dataset, String> {
    let canonical =
        fs::canonicalize(source.root_path()).unwrap_or_else(|_| source.root_path().to_path_buf());
    let manifest = match manifest {
        Some(m) => Some((
            m,
            fs::read(m).map_err(|e| format!("cannot read manifest '{}': {e}", m.display()))?,
        )),
        None => None,
    };
    let sized_manifest = manifest.as_ref().is_some_and(|(_, b)| walk::is_sized(b));
    let key = match &manifest {
        Some((_, bytes)) => WalkKey {
            source: canonical,
            root_mtime_ns: xxhash_rust::xxh3::xxh3_64(bytes) as i128,
            what: "manifest",
        },
        None => {
            // The key is taken before the walk: a change during the walk makes it stale.
            let root = source.lstat(Path::new("")).map_err(|e| {
                format!(
                    "cannot access source '{}': {e}",
                    source.root_path().display()
                )
            })?;
            WalkKey {
                source: canonical,
                root_mtime_ns: root.mtime_ns(),
                what: "walk",
            }
        }
    };
    let compute = || match &manifest {
        Some((m, bytes)) => walk::read_manifest(source, m, bytes),
        None => walk::walk(source),
    };
    let dataset = |files| Dataset {
        files,
        sized_manifest,
    };
    // A sized manifest costs the source nothing to list: no list worth keeping.
    let Some(dir) = shared.filter(|_| !sized_manifest) else {
        return compute().map(dataset);
    };
    // Another mount walking the same source: wait for its result rather than walk too.
    let _turn = take_turn(dir, &key);
    if let Some(files) = load_walk_cache(dir, &key) {
        return Ok(dataset(files));
    }
    let files = compute()?;
    if let Err(e) = store_walk_cache(dir, &key, &files) {
        // Only an optimisation: the next mount walks again.
        tracing::warn!(
            "cannot keep the dataset listing in {}: {e}",
            dir.path().display()
        );
    }
    Ok(dataset(files))
}

/// Holds the lock of one list (`<name>.lock`), waiting for a mount that has it. No lock
/// (an error) only costs the sharing.
fn take_turn(dir: &PrivateDir, key: &WalkKey) -> Option<std::fs::File> {
    let name = format!("{}.lock", key.file_name());
    let f = dir
        .open_file(
            &name,
            nix::fcntl::OFlag::O_RDWR | nix::fcntl::OFlag::O_CREAT,
        )
        .ok()?;
    let fd = std::os::fd::AsRawFd::as_raw_fd(&f);
    // Safety: flock on a descriptor we own; released when it is closed.
    if unsafe { libc::flock(fd, libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        tracing::info!("another mount is listing this dataset: waiting for its list");
        if unsafe { libc::flock(fd, libc::LOCK_EX) } != 0 {
            return None;
        }
    }
    Some(f)
}

fn load_walk_cache(dir: &PrivateDir, key: &WalkKey) -> Option<Vec<FileVersion>> {
    let data = dir.read(&key.file_name()).ok()??;
    walk_cache::decode(&data, key)
}

/// Written to a temporary name and renamed, so a reader sees the old file or the new one.
fn store_walk_cache(dir: &PrivateDir, key: &WalkKey, files: &[FileVersion]) -> io::Result<()> {
    dir.write_atomic(&key.file_name(), &walk_cache::encode(key, files))
}

fn percent(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        100.0
    } else {
        part as f64 * 100.0 / whole as f64
    }
}

/// One line describing a plan, for `plan`'s stderr and the mount's log.
pub fn summary(plan: &Plan, shard: Option<&ShardId>, sizing: Option<&Sizing>) -> String {
    let mut s = match shard {
        Some(id) => format!(
            "shard {}/{} ({}): {} of {} files, {} of {}",
            id.index,
            id.count,
            id.origin,
            plan.files.len(),
            plan.dataset_files,
            human(plan.shard_bytes),
            human(plan.dataset_bytes)
        ),
        None => format!(
            "no sharding: {} of {} files, {} of {}",
            plan.files.len(),
            plan.dataset_files,
            human(plan.shard_bytes),
            human(plan.dataset_bytes)
        ),
    };
    if let (true, Some(sz)) = (plan.cut, sizing) {
        let over = if sz.overflow > 0.0 {
            format!(" (+{}%)", (sz.overflow * 100.0 * 10.0).round() / 10.0)
        } else {
            String::new()
        };
        // Every shard is cut alike, so this shard's kept share is the job's coverage.
        let coverage = if shard.is_some() {
            "the job covers about"
        } else {
            "covers"
        };
        s.push_str(&format!(
            "; cut to fit {}{over} from {} files, {}: {coverage} {:.1}% of the dataset",
            human(sz.capacity),
            plan.part_files,
            human(plan.part_bytes),
            percent(plan.shard_bytes, plan.part_bytes)
        ));
    }
    match plan.always_visible.len() {
        0 => {}
        1 => s.push_str("; 1 always-visible file (in every shard, not listed)"),
        n => s.push_str(&format!(
            "; {n} always-visible files (in every shard, not listed)"
        )),
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;
    use std::sync::Arc;

    fn tree() -> (tempfile::TempDir, PathBuf) {
        let t = tempfile::tempdir().unwrap();
        let root = t.path().join("src");
        for (p, n) in [("a/one", 10), ("a/b/two", 20), ("top", 1)] {
            let full = root.join(p);
            fs::create_dir_all(full.parent().unwrap()).unwrap();
            fs::write(&full, vec![0u8; n]).unwrap();
        }
        (t, root)
    }

    fn list(root: &Path, cache: Option<&PrivateDir>) -> Result<Vec<FileVersion>, String> {
        let src = Source::open(root, Arc::new(crate::stats::Stats::default()), false).unwrap();
        list_dataset(&src, None, cache).map(|d| d.files)
    }

    #[test]
    fn walk_cache_is_reused_and_rebuilt() {
        let (t, root) = tree();
        let dir = crate::cachedir::CacheDir::claim(&t.path().join("cache")).unwrap();
        let cache: &PrivateDir = &dir;
        let first = list(&root, Some(cache)).unwrap();
        let entries: Vec<_> = fs::read_dir(cache.path())
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.to_string_lossy().ends_with(".txt"))
            .collect();
        assert_eq!(entries.len(), 1, "{entries:?}");
        let cached = &entries[0];
        assert!(
            cached
                .file_name()
                .unwrap()
                .to_str()
                .unwrap()
                .starts_with("walk-")
        );
        assert_eq!(mode_bits(cached), 0o600);

        // Same key: the cached list is used even though a deep file was added.
        fs::write(root.join("a/b/new"), b"x").unwrap();
        assert_eq!(list(&root, Some(cache)).unwrap(), first);

        // Damaged: ignored and rebuilt (now seeing the new file).
        let mut data = fs::read(cached).unwrap();
        let mid = data.len() / 2;
        data[mid] ^= 0x20;
        fs::write(cached, &data).unwrap();
        let again = list(&root, Some(cache)).unwrap();
        assert_eq!(again.len(), first.len() + 1);

        // A top-level change moves the key.
        fs::write(root.join("added"), b"y").unwrap();
        let t0 = std::time::SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_000_000);
        fs::File::open(&root).unwrap().set_modified(t0).unwrap();
        assert_eq!(list(&root, Some(cache)).unwrap().len(), first.len() + 2);

        // A cache dir that can't be written (here: deleted) only costs the cache.
        let gone = crate::cachedir::CacheDir::claim(&t.path().join("gone")).unwrap();
        fs::remove_dir_all(gone.path()).unwrap();
        assert_eq!(list(&root, Some(&gone)).unwrap().len(), first.len() + 2);
    }

    #[test]
    fn a_sized_manifest_keeps_no_list_and_stats_nothing() {
        let (t, root) = tree();
        let dir = crate::cachedir::CacheDir::claim(&t.path().join("cache")).unwrap();
        let m = t.path().join("manifest.tsv");
        fs::write(&m, b"# bicache-manifest: size path\n5\ttop\n6\tnot/there\n").unwrap();
        let stats = Arc::new(crate::stats::Stats::default());
        let src = Source::open(&root, stats.clone(), false).unwrap();
        let before = stats
            .source_meta_ops
            .load(std::sync::atomic::Ordering::Relaxed);
        let d = list_dataset(&src, Some(&m), Some(&dir)).unwrap();
        assert!(d.sized_manifest);
        let sizes: Vec<_> = d.files.iter().map(|f| (f.path.clone(), f.size)).collect();
        assert_eq!(sizes, [("not/there".into(), 6), ("top".into(), 5)]);
        assert_eq!(
            stats
                .source_meta_ops
                .load(std::sync::atomic::Ordering::Relaxed),
            before
        );
        let kept: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .filter(|n| n.to_string_lossy().starts_with("manifest-"))
            .collect();
        assert!(kept.is_empty(), "{kept:?}");
    }

    fn mode_bits(p: &Path) -> u32 {
        use std::os::unix::fs::PermissionsExt;
        fs::metadata(p).unwrap().permissions().mode() & 0o777
    }
}
