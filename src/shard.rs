//! Lazy sharding: the dataset's file list, a seeded balanced partition, sizing to the cache.
//!
//! Every node computes its own shard with no coordination, so the partition must be a pure
//! function of (file list, sizes, seed, K): the list is sorted by the bytes of its paths
//! before anything else, the shuffle is our own (SplitMix64 + Fisher–Yates, pinned by a
//! test), and every tie in the assignment is broken by a fixed rule.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::ffi::OsStr;
use std::fs::{self, Metadata};
use std::io::{self, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Condvar, Mutex};

use globset::{GlobBuilder, GlobSet, GlobSetBuilder};

use crate::CONTROL_DIR;
use crate::cli::{ShardArgs, ShardMode, ShardSize};
use crate::size::human;

/// Threads for the walk and the manifest's lstats. The work is latency-bound (one metadata
/// round trip per entry on a shared filesystem), not CPU-bound, so more threads than cores
/// pay off; a few are enough to hide most of the latency without flooding the server.
const META_THREADS: usize = 8;

/// Zarr metadata every reader of an array needs, whichever shard it reads.
const ZARR_METADATA: &[&str] = &[".zarray", ".zattrs", ".zgroup", ".zmetadata", "zarr.json"];

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

/// `--shard-size auto`: fit the shard to this much cache.
#[derive(Debug, Clone, PartialEq)]
pub struct Sizing {
    pub capacity: u64,
    pub min_files: u64,
    pub overflow: f64,
}

/// What one mount serves, with the numbers its log and `plan` report.
#[derive(Debug, Clone)]
pub struct Plan {
    /// This shard's files in seeded order (the prefetch order), after sizing.
    pub files: Vec<DatasetFile>,
    /// Files visible in every shard (zarr metadata, `--always-visible`), sorted by path;
    /// not partitioned and not counted below.
    pub always_visible: Vec<DatasetFile>,
    /// All partitioned files of the dataset (every shard's together).
    pub dataset_files: u64,
    pub dataset_bytes: u64,
    /// This shard's part of the partition, before sizing.
    pub part_files: u64,
    pub part_bytes: u64,
    /// Bytes of `files`, after sizing.
    pub shard_bytes: u64,
    /// Sizing dropped files from the part.
    pub cut: bool,
}

// ---------------------------------------------------------------------------
// Which shard: flags or the launcher's environment
// ---------------------------------------------------------------------------

/// The shard this process serves, or `None` for an unsharded mount. Explicit
/// `--shard-index/--shard-count` win; otherwise the numbers come from torchrun's variables,
/// or Slurm's when no torchrun variable is set (torchrun started by srun sees both, and its
/// own are the ones that describe the ranks).
pub fn resolve_shard(
    args: &ShardArgs,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Option<ShardId>, String> {
    match (args.shard_index, args.shard_count) {
        (Some(index), Some(count)) => {
            if count == 0 {
                return Err("--shard-count must be at least 1".into());
            }
            if index >= count {
                return Err(format!(
                    "--shard-index {index} must be less than --shard-count {count}"
                ));
            }
            return Ok(Some(ShardId {
                index,
                count,
                origin: "flags".into(),
            }));
        }
        (Some(_), None) => {
            return Err(
                "--shard-index needs --shard-count (give both, or neither to read \
                        them from the launcher's environment)"
                    .into(),
            );
        }
        (None, Some(_)) => {
            return Err(
                "--shard-count needs --shard-index (give both, or neither to read \
                        them from the launcher's environment)"
                    .into(),
            );
        }
        (None, None) => {}
    }
    if args.shard != ShardMode::Disk && (args.disks.is_some() || args.disk_index.is_some()) {
        // Silently ignoring them would hand this mount another shard than the user meant.
        return Err("--disks and --disk-index only apply to --shard disk".into());
    }
    match args.shard {
        ShardMode::None => Ok(None),
        ShardMode::Rank => rank_from_env(env).map(Some),
        ShardMode::Node => node_from_env(env, "node").map(Some),
        ShardMode::Disk => {
            let (disks, disk) = match (args.disks, args.disk_index) {
                (Some(d), Some(j)) => (d, j),
                _ => return Err("--shard disk needs --disks D and --disk-index J".into()),
            };
            if disks == 0 {
                return Err("--disks must be at least 1".into());
            }
            if disk >= disks {
                return Err(format!(
                    "--disk-index {disk} must be less than --disks {disks}"
                ));
            }
            let node = node_from_env(env, "disk")?;
            let index = node
                .index
                .checked_mul(disks)
                .and_then(|v| v.checked_add(disk));
            let count = node.count.checked_mul(disks);
            match (index, count) {
                (Some(index), Some(count)) => Ok(Some(ShardId {
                    index,
                    count,
                    origin: format!("{}, disk {disk} of {disks}", node.origin),
                })),
                _ => Err(format!(
                    "--shard disk: {} nodes x {disks} disks is too many shards",
                    node.count
                )),
            }
        }
    }
}

const HINT: &str = "give --shard-index I --shard-count K instead";

/// Looks up `names`; `Ok` with their values when all are set and numbers, else the problems.
fn env_numbers(
    env: &dyn Fn(&str) -> Option<String>,
    names: &[&str],
) -> Result<Vec<u64>, Vec<String>> {
    let mut values = Vec::new();
    let mut problems = Vec::new();
    for name in names {
        match env(name) {
            None => problems.push(format!("{name} is not set")),
            Some(v) => match v.trim().parse::<u64>() {
                Ok(n) => values.push(n),
                Err(_) => problems.push(format!("{name}='{}' is not a number", v.trim())),
            },
        }
    }
    if problems.is_empty() {
        Ok(values)
    } else {
        Err(problems)
    }
}

fn any_set(env: &dyn Fn(&str) -> Option<String>, names: &[&str]) -> bool {
    names.iter().any(|n| env(n).is_some())
}

/// Reads one launcher's (index, count) variables, checking index < count.
fn launcher_pair(
    env: &dyn Fn(&str) -> Option<String>,
    mode: &str,
    launcher: &str,
    names: [&str; 2],
) -> Result<ShardId, String> {
    let v = env_numbers(env, &names).map_err(|p| {
        format!(
            "--shard {mode}: incomplete {launcher} environment: {}; {HINT}",
            p.join(", ")
        )
    })?;
    let (index, count) = (v[0], v[1]);
    if index >= count {
        return Err(format!(
            "--shard {mode}: {}={index} is not below {}={count}; {HINT}",
            names[0], names[1]
        ));
    }
    Ok(ShardId {
        index,
        count,
        origin: format!("{launcher} {}={index} {}={count}", names[0], names[1]),
    })
}

fn rank_from_env(env: &dyn Fn(&str) -> Option<String>) -> Result<ShardId, String> {
    const TORCHRUN: [&str; 2] = ["RANK", "WORLD_SIZE"];
    const SLURM: [&str; 2] = ["SLURM_PROCID", "SLURM_NTASKS"];
    if any_set(env, &TORCHRUN) {
        launcher_pair(env, "rank", "torchrun", TORCHRUN)
    } else if any_set(env, &SLURM) {
        launcher_pair(env, "rank", "Slurm", SLURM)
    } else {
        Err(format!(
            "--shard rank: no launcher environment (neither torchrun's RANK/WORLD_SIZE nor \
             Slurm's SLURM_PROCID/SLURM_NTASKS is set); {HINT}"
        ))
    }
}

/// Node index and node count (for `node` and `disk`).
fn node_from_env(env: &dyn Fn(&str) -> Option<String>, mode: &str) -> Result<ShardId, String> {
    const TORCHRUN: [&str; 3] = ["GROUP_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE"];
    const SLURM: [&str; 2] = ["SLURM_NODEID", "SLURM_NNODES"];
    if any_set(env, &TORCHRUN) {
        let v = env_numbers(env, &TORCHRUN).map_err(|p| {
            format!(
                "--shard {mode}: incomplete torchrun environment: {}; {HINT}",
                p.join(", ")
            )
        })?;
        let (group, world, local) = (v[0], v[1], v[2]);
        if local == 0 || world % local != 0 {
            // Nodes with different numbers of ranks have no single node count to derive.
            return Err(format!(
                "--shard {mode}: WORLD_SIZE={world} is not a multiple of \
                 LOCAL_WORLD_SIZE={local}; {HINT}"
            ));
        }
        let nodes = world / local;
        if group >= nodes {
            return Err(format!(
                "--shard {mode}: GROUP_RANK={group} is not below the node count \
                 WORLD_SIZE/LOCAL_WORLD_SIZE={nodes}; {HINT}"
            ));
        }
        Ok(ShardId {
            index: group,
            count: nodes,
            origin: format!(
                "torchrun GROUP_RANK={group} WORLD_SIZE={world} LOCAL_WORLD_SIZE={local}"
            ),
        })
    } else if any_set(env, &SLURM) {
        launcher_pair(env, mode, "Slurm", SLURM)
    } else {
        Err(format!(
            "--shard {mode}: no launcher environment (neither torchrun's GROUP_RANK/\
             WORLD_SIZE/LOCAL_WORLD_SIZE nor Slurm's SLURM_NODEID/SLURM_NNODES is set); {HINT}"
        ))
    }
}

// ---------------------------------------------------------------------------
// The dataset's file list
// ---------------------------------------------------------------------------

/// Every regular file of the dataset, sorted by path: from `manifest` when given (each
/// listed path lstat-ed), else a parallel walk of `source` that does not follow symlinks.
/// With `cache_dir` the walk is kept in a file there and reused while the source root's
/// mtime is unchanged. That key sees files added or removed at the top level only: a
/// dataset that changes deeper down needs a manifest or a fresh cache dir. A trade made on
/// purpose: re-walking a large tree on a metadata-slow filesystem at every mount is what
/// this cache avoids, and datasets are normally written once.
pub fn list_dataset(
    source: &Path,
    manifest: Option<&Path>,
    cache_dir: Option<&Path>,
) -> Result<Vec<DatasetFile>, String> {
    let root = check_source(source)?;
    if let Some(m) = manifest {
        return read_manifest(source, m);
    }
    // The key is taken before the walk: a change during the walk then makes it stale.
    let key = WalkKey {
        source: fs::canonicalize(source).unwrap_or_else(|_| source.to_path_buf()),
        root_mtime_ns: mtime_ns(&root),
    };
    if let Some(dir) = cache_dir
        && let Some(files) = load_walk_cache(dir, &key)
    {
        return Ok(files);
    }
    let files = walk(source)?;
    if let Some(dir) = cache_dir
        && let Err(e) = store_walk_cache(dir, &key, &files)
    {
        // Only an optimisation: the next mount walks again.
        tracing::warn!("cannot keep the dataset listing in {}: {e}", dir.display());
    }
    Ok(files)
}

pub fn check_source(source: &Path) -> Result<Metadata, String> {
    match fs::metadata(source) {
        Ok(m) if m.is_dir() => Ok(m),
        Ok(_) => Err(format!("source '{}' is not a directory", source.display())),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            Err(format!("source '{}' does not exist", source.display()))
        }
        Err(e) => Err(format!("cannot access source '{}': {e}", source.display())),
    }
}

fn mtime_ns(m: &Metadata) -> i128 {
    m.mtime() as i128 * 1_000_000_000 + m.mtime_nsec() as i128
}

pub fn path_bytes(p: &Path) -> &[u8] {
    p.as_os_str().as_bytes()
}

fn sort_files(files: &mut [DatasetFile]) {
    files.sort_unstable_by(|a, b| path_bytes(&a.path).cmp(path_bytes(&b.path)));
}

/// Parallel walk: a few threads share a queue of directories still to list. A thread that
/// finds the queue empty waits while others are still listing (they may add more); the
/// walk ends when the queue is empty and nobody is busy, or at the first error.
fn walk(source: &Path) -> Result<Vec<DatasetFile>, String> {
    struct Queue {
        dirs: Vec<PathBuf>,
        busy: usize,
        error: Option<String>,
    }
    let queue = Mutex::new(Queue {
        dirs: vec![PathBuf::new()],
        busy: 0,
        error: None,
    });
    let cond = Condvar::new();
    let worker = || {
        let mut found = Vec::new();
        let mut subdirs = Vec::new();
        loop {
            let dir = {
                let mut q = queue.lock().unwrap_or_else(|p| p.into_inner());
                loop {
                    if q.error.is_some() || (q.dirs.is_empty() && q.busy == 0) {
                        cond.notify_all();
                        return found;
                    }
                    if let Some(d) = q.dirs.pop() {
                        q.busy += 1;
                        break d;
                    }
                    q = cond.wait(q).unwrap_or_else(|p| p.into_inner());
                }
            };
            // A panic here would leave `busy` raised and the other threads waiting forever;
            // as an error it ends the walk like any other.
            let res = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                scan_dir(source, &dir, &mut found, &mut subdirs)
            }))
            .unwrap_or_else(|_| {
                Err(format!(
                    "internal error while listing '{}'",
                    source.join(&dir).display()
                ))
            });
            let mut q = queue.lock().unwrap_or_else(|p| p.into_inner());
            q.busy -= 1;
            q.dirs.append(&mut subdirs);
            if let Err(e) = res {
                q.error.get_or_insert(e);
            }
            cond.notify_all();
        }
    };
    let parts: Vec<Vec<DatasetFile>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..META_THREADS).map(|_| s.spawn(worker)).collect();
        handles.into_iter().map(join_or_resume).collect()
    });
    if let Some(e) = queue.into_inner().unwrap_or_else(|p| p.into_inner()).error {
        return Err(e);
    }
    let mut files: Vec<DatasetFile> = parts.into_iter().flatten().collect();
    sort_files(&mut files);
    Ok(files)
}

/// Lists one directory. An unreadable directory is an error rather than skipped: a node
/// that silently saw fewer files would compute a different partition from the others.
/// An entry that vanished between readdir and lstat is just gone.
fn scan_dir(
    root: &Path,
    rel: &Path,
    files: &mut Vec<DatasetFile>,
    dirs: &mut Vec<PathBuf>,
) -> Result<(), String> {
    let full = root.join(rel);
    let cannot = |e: io::Error| format!("cannot list directory '{}': {e}", full.display());
    for entry in fs::read_dir(&full).map_err(cannot)? {
        let entry = entry.map_err(cannot)?;
        let name = entry.file_name();
        if rel.as_os_str().is_empty() && name == CONTROL_DIR {
            continue;
        }
        let child = rel.join(&name);
        let stat_err =
            |e: io::Error| format!("cannot lstat '{}': {e}", root.join(&child).display());
        let ft = match entry.file_type() {
            Ok(t) => t,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(stat_err(e)),
        };
        if ft.is_dir() {
            dirs.push(child);
        } else if ft.is_file() {
            // DirEntry::metadata does not follow symlinks (fstatat AT_SYMLINK_NOFOLLOW).
            match entry.metadata() {
                Ok(m) if m.is_file() => files.push(DatasetFile {
                    path: child,
                    size: m.len(),
                    mtime_ns: mtime_ns(&m),
                }),
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(stat_err(e)),
            }
        }
        // Symlinks, fifos, sockets and devices are not dataset files.
    }
    Ok(())
}

/// A thread's result; a panic is passed on, never turned into a silently shorter list.
fn join_or_resume<T>(h: std::thread::ScopedJoinHandle<'_, T>) -> T {
    h.join().unwrap_or_else(|p| std::panic::resume_unwind(p))
}

/// Runs `f` over `items` on a few threads; results in input order.
fn par_map<T: Sync, R: Send>(items: &[T], f: impl Fn(&T) -> R + Sync) -> Vec<R> {
    let next = AtomicUsize::new(0);
    let threads = META_THREADS.min(items.len()).max(1);
    let parts: Vec<Vec<(usize, R)>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|_| {
                s.spawn(|| {
                    let mut out = Vec::new();
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        let Some(item) = items.get(i) else { break };
                        out.push((i, f(item)));
                    }
                    out
                })
            })
            .collect();
        handles.into_iter().map(join_or_resume).collect()
    });
    let mut all: Vec<(usize, R)> = parts.into_iter().flatten().collect();
    all.sort_unstable_by_key(|(i, _)| *i);
    all.into_iter().map(|(_, r)| r).collect()
}

/// A manifest line's text for a message: one line, control characters escaped.
fn show(bytes: &[u8]) -> String {
    let mut out = String::new();
    for c in String::from_utf8_lossy(bytes).chars() {
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

/// A manifest path as a clean relative path ("./a//b" -> "a/b"), so that the same file
/// always sorts, and so lands in a shard, the same way.
fn normalize_rel(text: &[u8]) -> Result<PathBuf, &'static str> {
    let mut out = PathBuf::new();
    for c in Path::new(OsStr::from_bytes(text)).components() {
        match c {
            Component::Normal(n) => out.push(n),
            Component::CurDir => {}
            Component::ParentDir => return Err("'..' is not allowed (paths stay inside SOURCE)"),
            Component::RootDir | Component::Prefix(_) => {
                return Err("absolute path (give paths relative to SOURCE)");
            }
        }
    }
    if out.as_os_str().is_empty() {
        return Err("names SOURCE itself, not a file");
    }
    if out.components().next() == Some(Component::Normal(OsStr::new(CONTROL_DIR))) {
        return Err("'.bicache' at the top is reserved for the mount's control files");
    }
    Ok(out)
}

fn read_manifest(source: &Path, manifest: &Path) -> Result<Vec<DatasetFile>, String> {
    let data = fs::read(manifest)
        .map_err(|e| format!("cannot read manifest '{}': {e}", manifest.display()))?;
    let bad = |line: usize, text: &[u8], reason: &str| {
        format!(
            "manifest {} line {line}: '{}': {reason}",
            manifest.display(),
            show(text)
        )
    };
    let mut entries: Vec<(usize, &[u8], PathBuf)> = Vec::new();
    for (i, line) in data.split(|b| *b == b'\n').enumerate() {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.is_empty() || line[0] == b'#' {
            continue;
        }
        let rel = normalize_rel(line).map_err(|r| bad(i + 1, line, r))?;
        entries.push((i + 1, line, rel));
    }
    let stats = par_map(&entries, |(_, _, rel)| {
        fs::symlink_metadata(source.join(rel))
    });
    let mut files = Vec::with_capacity(entries.len());
    // Errors in line order, so the message names the first bad line whatever the threads did.
    for ((line, text, rel), st) in entries.into_iter().zip(stats) {
        match st {
            Ok(m) if m.is_file() => files.push(DatasetFile {
                path: rel,
                size: m.len(),
                mtime_ns: mtime_ns(&m),
            }),
            Ok(m) if m.is_dir() => return Err(bad(line, text, "is a directory, not a file")),
            Ok(m) if m.file_type().is_symlink() => {
                return Err(bad(
                    line,
                    text,
                    "is a symlink (symlinks are not followed: list the file it points to)",
                ));
            }
            Ok(_) => return Err(bad(line, text, "is not a regular file")),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(bad(line, text, "no such file in SOURCE"));
            }
            Err(e) => return Err(bad(line, text, &e.to_string())),
        }
    }
    sort_files(&mut files);
    // A file listed twice must not be counted (and assigned) twice.
    files.dedup_by(|a, b| a.path == b.path);
    Ok(files)
}

// ---------------------------------------------------------------------------
// The walk cache: walk-<hash of source>.txt in the cache dir
// ---------------------------------------------------------------------------
//
// Format (text, one record a line; paths percent-escaped so any byte string fits a line):
//   bicache-walk 1
//   source <escaped canonical source path>
//   mtime <source root mtime in ns>
//   <size> <mtime_ns> <escaped relative path>      (sorted by path bytes, no duplicates)
//   end <xxh3-64 of everything above, 16 hex digits>
// A file that is truncated, altered or written by another version fails the checks and is
// rebuilt. Nothing read from it sizes an allocation.

const WALK_MAGIC: &str = "bicache-walk 1";

struct WalkKey {
    source: PathBuf,
    root_mtime_ns: i128,
}

fn walk_cache_file(dir: &Path, key: &WalkKey) -> PathBuf {
    let h = xxhash_rust::xxh3::xxh3_64(path_bytes(&key.source));
    dir.join(format!("walk-{h:016x}.txt"))
}

fn escape_into(out: &mut Vec<u8>, bytes: &[u8]) {
    for &b in bytes {
        if b == b'%' || b < 0x20 || b == 0x7f {
            out.extend_from_slice(format!("%{b:02X}").as_bytes());
        } else {
            out.push(b);
        }
    }
}

fn unescape(s: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(s.len());
    let mut i = 0;
    while i < s.len() {
        if s[i] == b'%' {
            let hex = s.get(i + 1..i + 3)?;
            let hex = std::str::from_utf8(hex).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(s[i]);
            i += 1;
        }
    }
    Some(out)
}

fn encode_walk(key: &WalkKey, files: &[DatasetFile]) -> Vec<u8> {
    let mut out = Vec::with_capacity(64 + files.len() * 64);
    out.extend_from_slice(WALK_MAGIC.as_bytes());
    out.extend_from_slice(b"\nsource ");
    escape_into(&mut out, path_bytes(&key.source));
    out.extend_from_slice(format!("\nmtime {}\n", key.root_mtime_ns).as_bytes());
    for f in files {
        out.extend_from_slice(format!("{} {} ", f.size, f.mtime_ns).as_bytes());
        escape_into(&mut out, path_bytes(&f.path));
        out.push(b'\n');
    }
    let sum = xxhash_rust::xxh3::xxh3_64(&out);
    out.extend_from_slice(format!("end {sum:016x}\n").as_bytes());
    out
}

/// Parses a walk cache file; `None` for anything unexpected, including another key.
fn decode_walk(data: &[u8], key: &WalkKey) -> Option<Vec<DatasetFile>> {
    let body_end = data.strip_suffix(b"\n")?;
    let trailer_at = body_end.iter().rposition(|b| *b == b'\n')? + 1;
    let (body, trailer) = data.split_at(trailer_at);
    let sum = std::str::from_utf8(trailer.strip_prefix(b"end ")?.strip_suffix(b"\n")?).ok()?;
    if sum.len() != 16 || u64::from_str_radix(sum, 16).ok()? != xxhash_rust::xxh3::xxh3_64(body) {
        return None;
    }
    let mut lines = body.strip_suffix(b"\n")?.split(|b| *b == b'\n');
    if lines.next()? != WALK_MAGIC.as_bytes() {
        return None;
    }
    if unescape(lines.next()?.strip_prefix(b"source ")?)? != path_bytes(&key.source) {
        return None;
    }
    let mtime: i128 = std::str::from_utf8(lines.next()?.strip_prefix(b"mtime ")?)
        .ok()?
        .parse()
        .ok()?;
    if mtime != key.root_mtime_ns {
        return None;
    }
    let mut files: Vec<DatasetFile> = Vec::new();
    for line in lines {
        let mut parts = line.splitn(3, |b| *b == b' ');
        let size: u64 = std::str::from_utf8(parts.next()?).ok()?.parse().ok()?;
        let mtime_ns: i128 = std::str::from_utf8(parts.next()?).ok()?.parse().ok()?;
        let raw = unescape(parts.next()?)?;
        // Only what the walk itself could have produced: clean, relative, sorted, unique.
        let path = normalize_rel(&raw).ok()?;
        if path_bytes(&path) != raw.as_slice() {
            return None;
        }
        if let Some(prev) = files.last()
            && path_bytes(&prev.path) >= raw.as_slice()
        {
            return None;
        }
        files.push(DatasetFile {
            path,
            size,
            mtime_ns,
        });
    }
    Some(files)
}

fn load_walk_cache(dir: &Path, key: &WalkKey) -> Option<Vec<DatasetFile>> {
    let data = fs::read(walk_cache_file(dir, key)).ok()?;
    decode_walk(&data, key)
}

/// Written to a temporary name and renamed, so a reader sees the old file or the new one.
fn store_walk_cache(dir: &Path, key: &WalkKey, files: &[DatasetFile]) -> io::Result<()> {
    let dest = walk_cache_file(dir, key);
    let nonce = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let tmp = dir.join(format!(".walk-tmp-{}-{nonce:08x}", std::process::id()));
    let write = || -> io::Result<()> {
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(&encode_walk(key, files))?;
        f.sync_data()?;
        fs::rename(&tmp, &dest)
    };
    let res = write();
    if res.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    res
}

// ---------------------------------------------------------------------------
// The partition
// ---------------------------------------------------------------------------

/// SplitMix64 (Steele, Lea & Flood, 2014). Our own rather than a crate's: every node must
/// draw the bit-identical permutation, today and after any dependency upgrade, and no RNG
/// crate promises a stable stream for its shuffle across versions.
struct SplitMix64(u64);

impl SplitMix64 {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, n) for n > 0: Lemire's multiply-shift with rejection, so there is no
    /// modulo bias (and no division in the common case).
    fn below(&mut self, n: u64) -> u64 {
        let mut m = u128::from(self.next_u64()) * u128::from(n);
        if (m as u64) < n {
            let threshold = n.wrapping_neg() % n;
            while (m as u64) < threshold {
                m = u128::from(self.next_u64()) * u128::from(n);
            }
        }
        (m >> 64) as u64
    }
}

/// Fisher–Yates (Durstenfeld) shuffle driven by SplitMix64(seed).
fn seeded_shuffle<T>(items: &mut [T], seed: u64) {
    let mut rng = SplitMix64(seed);
    for i in (1..items.len()).rev() {
        let j = rng.below(i as u64 + 1) as usize;
        items.swap(i, j);
    }
}

/// Shard of each file of `sizes` (in order): each goes to the shard with the fewest bytes so
/// far; ties go to the shard with fewer files, then to the lowest index. The file-count
/// tie-break keeps empty files from all piling onto one shard. Taking files in a random
/// order keeps the shards random samples, and the greedy choice bounds the spread: no
/// shard ends more than one file above the mean.
fn assign(sizes: impl Iterator<Item = u64>, count: u64, n_files: usize) -> Vec<u64> {
    // Shards at or past the number of files never get one (the first n files go to shards
    // 0..n-1, one each), so the heap needs no more entries: a huge K allocates nothing.
    let live = count.min(n_files as u64);
    let mut heap: BinaryHeap<Reverse<(u64, u64, u64)>> =
        (0..live).map(|i| Reverse((0, 0, i))).collect();
    let mut out = Vec::with_capacity(n_files);
    for size in sizes {
        let Some(Reverse((bytes, files, index))) = heap.pop() else {
            break;
        };
        out.push(index);
        heap.push(Reverse((bytes.saturating_add(size), files + 1, index)));
    }
    out
}

/// Splits off the always-visible files, partitions the rest (`shard`, or everything when
/// `None`) in seeded order, and cuts this shard to `sizing` when given.
pub fn make_plan(
    files: Vec<DatasetFile>,
    visible: &AlwaysVisible,
    shard: Option<&ShardId>,
    seed: u64,
    sizing: Option<&Sizing>,
) -> Plan {
    let (mut always_visible, mut rest): (Vec<_>, Vec<_>) =
        files.into_iter().partition(|f| visible.matches(&f.path));
    sort_files(&mut always_visible);
    always_visible.dedup_by(|a, b| a.path == b.path);
    // Sorted first, so the caller's order (readdir order differs between nodes) never matters.
    sort_files(&mut rest);
    rest.dedup_by(|a, b| a.path == b.path);
    let dataset_files = rest.len() as u64;
    let dataset_bytes = sum_bytes(&rest);
    seeded_shuffle(&mut rest, seed);

    let part: Vec<DatasetFile> = match shard {
        None => rest,
        Some(s) => {
            let owners = assign(rest.iter().map(|f| f.size), s.count.max(1), rest.len());
            rest.into_iter()
                .zip(owners)
                .filter(|(_, owner)| *owner == s.index)
                .map(|(f, _)| f)
                .collect()
        }
    };
    let part_files = part.len() as u64;
    let part_bytes = sum_bytes(&part);

    let mut files = part;
    if let Some(sz) = sizing {
        let keep = sized_len(&files, sz);
        files.truncate(keep);
    }
    let shard_bytes = sum_bytes(&files);
    Plan {
        cut: (files.len() as u64) < part_files,
        files,
        always_visible,
        dataset_files,
        dataset_bytes,
        part_files,
        part_bytes,
        shard_bytes,
    }
}

fn sum_bytes(files: &[DatasetFile]) -> u64 {
    files.iter().fold(0u64, |a, f| a.saturating_add(f.size))
}

/// How many leading files (in seeded order) fit capacity × (1 + overflow), but at least
/// `min_files`. A prefix rather than a best fit: skipping large files to squeeze in small
/// ones would bias the shard towards small files; a prefix stays a random sample.
fn sized_len(files: &[DatasetFile], sz: &Sizing) -> usize {
    let factor = if sz.overflow.is_finite() && sz.overflow > 0.0 {
        1.0 + sz.overflow
    } else {
        1.0
    };
    // f64 -> u64 `as` saturates, so a huge product cannot wrap.
    let limit = (sz.capacity as f64 * factor).floor() as u64;
    let mut total = 0u64;
    let mut keep = 0;
    for f in files {
        match total.checked_add(f.size) {
            Some(t) if t <= limit => {
                total = t;
                keep += 1;
            }
            _ => break,
        }
    }
    let floor = usize::try_from(sz.min_files).unwrap_or(usize::MAX);
    keep.max(floor.min(files.len()))
}

/// The sizing `--shard-size auto` asks for, given the cache capacity the shard must fit;
/// `None` for `--shard-size full`. Checks `--overflow`.
/// `budget` is the capacity tier's budget (the SSD tier's, or RAM's without one); the
/// shard is fitted to the part of it that pinned chunks may take, less per-chunk
/// bookkeeping, so that `plan --capacity` and a mount with that budget agree.
pub fn sizing_for(args: &ShardArgs, budget: u64) -> Result<Option<Sizing>, String> {
    let capacity =
        (crate::cache::pinned_share(budget, crate::cache::PinPolicy::Set) as f64 * 0.99) as u64;
    if !args.overflow.is_finite() || args.overflow < 0.0 {
        return Err(format!(
            "invalid --overflow '{}': expected a fraction of at least 0 (0.1 = 10%)",
            args.overflow
        ));
    }
    Ok(match args.shard_size {
        ShardSize::Full => None,
        ShardSize::Auto => Some(Sizing {
            capacity,
            min_files: args.min_files,
            overflow: args.overflow,
        }),
    })
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
    use crate::cli::{Cli, Command};
    use clap::Parser;
    use std::collections::{HashMap, HashSet};

    fn shard_args(extra: &[&str]) -> ShardArgs {
        let argv = ["bicache", "plan", "/src"].iter().chain(extra);
        match Cli::try_parse_from(argv).expect("valid flags").command {
            Command::Plan(p) => p.shard,
            _ => unreachable!(),
        }
    }

    fn env_of(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| map.get(k).cloned()
    }

    fn resolve(extra: &[&str], env: &[(&str, &str)]) -> Result<Option<ShardId>, String> {
        resolve_shard(&shard_args(extra), &env_of(env))
    }

    fn file(path: &str, size: u64) -> DatasetFile {
        DatasetFile {
            path: PathBuf::from(path),
            size,
            mtime_ns: 0,
        }
    }

    fn no_globs() -> AlwaysVisible {
        AlwaysVisible::new(&[]).unwrap()
    }

    fn shard(index: u64, count: u64) -> ShardId {
        ShardId {
            index,
            count,
            origin: "test".into(),
        }
    }

    fn names(files: &[DatasetFile]) -> Vec<String> {
        files
            .iter()
            .map(|f| f.path.to_string_lossy().into_owned())
            .collect()
    }

    /// Deterministic sizes for synthetic datasets.
    fn dataset(n: usize, base: u64, spread: u64) -> Vec<DatasetFile> {
        let mut rng = SplitMix64(99);
        (0..n)
            .map(|i| {
                file(
                    &format!("d{}/f{i:06}", i % 17),
                    base + rng.below(spread + 1),
                )
            })
            .collect()
    }

    // --- the shuffle and the partition ------------------------------------------------

    #[test]
    fn splitmix64_matches_the_reference_stream() {
        // Published test vector of the reference implementation, seed 1234567.
        let mut r = SplitMix64(1234567);
        let got: Vec<u64> = (0..5).map(|_| r.next_u64()).collect();
        assert_eq!(
            got,
            [
                6457827717110365317,
                3203168211198807973,
                9817491932198370423,
                4593380528125082431,
                16408922859458223821
            ]
        );
    }

    #[test]
    fn below_is_in_range_and_covers_it() {
        let mut r = SplitMix64(5);
        let mut seen = [0u32; 7];
        for _ in 0..7000 {
            let v = r.below(7);
            assert!(v < 7);
            seen[v as usize] += 1;
        }
        assert!(seen.iter().all(|&c| c > 800), "{seen:?}");
        assert_eq!(r.below(1), 0);
    }

    /// Pins the exact partition of a tiny example (values cross-checked against an
    /// independent Python model of the algorithm). If this fails, the shuffle or the
    /// assignment changed: nodes running different versions would disagree on the shards.
    #[test]
    fn seed_stability_pinned() {
        let files: Vec<DatasetFile> = (0..10)
            .map(|i| file(&format!("f{i}"), 100 + 10 * i))
            .collect();
        let all = make_plan(files.clone(), &no_globs(), None, 42, None);
        assert_eq!(
            names(&all.files),
            ["f8", "f3", "f6", "f5", "f4", "f0", "f9", "f2", "f1", "f7"]
        );
        let shards: Vec<Vec<String>> = (0..3)
            .map(|i| {
                let s = shard(i, 3);
                names(&make_plan(files.clone(), &no_globs(), Some(&s), 42, None).files)
            })
            .collect();
        assert_eq!(
            shards,
            [
                vec!["f8", "f0", "f9"],
                vec!["f3", "f5", "f2", "f7"],
                vec!["f6", "f4", "f1"],
            ]
        );
    }

    fn check_partition(files: &[DatasetFile], k: u64, seed: u64) -> Vec<Plan> {
        let plans: Vec<Plan> = (0..k)
            .map(|i| make_plan(files.to_vec(), &no_globs(), Some(&shard(i, k)), seed, None))
            .collect();
        let mut seen = HashSet::new();
        for p in &plans {
            assert_eq!(p.files.len() as u64, p.part_files);
            assert_eq!(p.shard_bytes, p.part_bytes);
            assert!(!p.cut);
            assert_eq!(p.dataset_files, files.len() as u64);
            for f in &p.files {
                assert!(seen.insert(f.path.clone()), "{:?} in two shards", f.path);
            }
        }
        assert_eq!(seen.len(), files.len(), "shards must cover the dataset");
        plans
    }

    #[test]
    fn partition_is_disjoint_and_covers() {
        let files = dataset(1000, 1, 5000);
        for k in 1..=9 {
            for seed in [0, 7, u64::MAX] {
                check_partition(&files, k, seed);
            }
        }
        // More shards than files: the extra shards are empty, nothing is lost.
        check_partition(&dataset(5, 10, 10), 8, 3);
        check_partition(&[], 4, 3);
    }

    #[test]
    fn balanced_for_many_similar_files() {
        for (k, seed) in [(4, 7), (16, 1), (64, 2)] {
            let files = dataset(20_000, 900_000, 200_000);
            let largest = files.iter().map(|f| f.size).max().unwrap();
            let plans = check_partition(&files, k, seed);
            let total: u64 = plans.iter().map(|p| p.shard_bytes).sum();
            let mean = total as f64 / k as f64;
            let max = plans.iter().map(|p| p.shard_bytes).max().unwrap();
            assert!(
                max as f64 <= 1.01 * mean + largest as f64,
                "k={k}: max {max}, mean {mean}"
            );
        }
    }

    #[test]
    fn empty_files_are_spread_too() {
        let files: Vec<DatasetFile> = (0..100).map(|i| file(&format!("e{i}"), 0)).collect();
        for p in check_partition(&files, 4, 1) {
            assert_eq!(p.files.len(), 25);
        }
    }

    #[test]
    fn input_order_and_duplicates_do_not_matter() {
        let files = dataset(300, 1, 1000);
        let mut rev = files.clone();
        rev.reverse();
        rev.extend(files[..20].iter().cloned()); // listed twice
        let s = shard(1, 3);
        let a = make_plan(files, &no_globs(), Some(&s), 9, None);
        let b = make_plan(rev, &no_globs(), Some(&s), 9, None);
        assert_eq!(a.files, b.files);
        assert_eq!(a.dataset_files, b.dataset_files);
    }

    #[test]
    fn other_seed_other_shards() {
        let files = dataset(200, 1, 1000);
        let s = shard(0, 4);
        let a = make_plan(files.clone(), &no_globs(), Some(&s), 1, None);
        let b = make_plan(files, &no_globs(), Some(&s), 2, None);
        let sa: HashSet<_> = a.files.iter().map(|f| &f.path).collect();
        let sb: HashSet<_> = b.files.iter().map(|f| &f.path).collect();
        assert_ne!(sa, sb);
    }

    #[test]
    fn huge_shard_count_allocates_nothing() {
        let files = dataset(3, 1, 1);
        let p = make_plan(
            files.clone(),
            &no_globs(),
            Some(&shard(0, u64::MAX)),
            0,
            None,
        );
        assert_eq!(p.files.len(), 1);
        let p = make_plan(
            files,
            &no_globs(),
            Some(&shard(u64::MAX - 1, u64::MAX)),
            0,
            None,
        );
        assert!(p.files.is_empty());
    }

    #[test]
    fn always_visible_files_are_set_apart() {
        let mut files = dataset(50, 1, 10);
        for p in [
            "a/.zarray",
            "a/.zattrs",
            ".zgroup",
            "b/.zmetadata",
            "zarr.json",
        ] {
            files.push(file(p, 5));
        }
        files.push(file("meta/info.yaml", 3));
        files.push(file("meta/deep/x.yaml", 3));
        files.push(file("x/README.md", 3));
        let vis = AlwaysVisible::new(&["meta/*.yaml".to_string(), "README*".to_string()]).unwrap();
        let plans: Vec<Plan> = (0..2)
            .map(|i| make_plan(files.clone(), &vis, Some(&shard(i, 2)), 0, None))
            .collect();
        for p in &plans {
            assert_eq!(p.dataset_files, 51); // 50 + meta/deep/x.yaml (`*` stays in one dir)
            assert_eq!(
                names(&p.always_visible),
                [
                    ".zgroup",
                    "a/.zarray",
                    "a/.zattrs",
                    "b/.zmetadata",
                    "meta/info.yaml",
                    "x/README.md",
                    "zarr.json"
                ]
            );
        }
        assert_eq!(plans[0].files.len() + plans[1].files.len(), 51);
        assert!(
            AlwaysVisible::new(&["**/*.json".into()])
                .unwrap()
                .matches(Path::new("a/b/c.json"))
        );
        let e = AlwaysVisible::new(&["ok".into(), "bad[".into()])
            .err()
            .unwrap();
        assert!(e.contains("'bad['"), "{e}");
    }

    #[test]
    fn sizing_keeps_a_prefix_within_budget() {
        let files: Vec<DatasetFile> = (0..100).map(|i| file(&format!("f{i:03}"), 1000)).collect();
        let s = shard(0, 2);
        let full = make_plan(files.clone(), &no_globs(), Some(&s), 3, None);
        let sz = Sizing {
            capacity: 10_000,
            min_files: 0,
            overflow: 0.25,
        };
        let p = make_plan(files.clone(), &no_globs(), Some(&s), 3, Some(&sz));
        assert!(p.cut);
        assert_eq!(p.files.len(), 12); // 12 500 bytes allowed
        assert_eq!(p.shard_bytes, 12_000);
        assert_eq!(p.part_files, 50);
        assert_eq!(p.part_bytes, 50_000);
        assert_eq!(p.dataset_bytes, 100_000);
        assert_eq!(
            p.files[..],
            full.files[..12],
            "a prefix of the seeded order"
        );

        let tiny = Sizing {
            capacity: 10,
            min_files: 5,
            overflow: 0.0,
        };
        let p = make_plan(files.clone(), &no_globs(), Some(&s), 3, Some(&tiny));
        assert_eq!(p.files.len(), 5);
        assert!(p.cut);

        let roomy = Sizing {
            capacity: u64::MAX,
            min_files: 1000,
            overflow: f64::INFINITY,
        };
        let p = make_plan(files, &no_globs(), Some(&s), 3, Some(&roomy));
        assert_eq!(p.files.len(), 50);
        assert!(!p.cut);
        assert!(summary(&p, Some(&s), Some(&roomy)).starts_with("shard 0/2 (test): 50 of 100"));
    }

    #[test]
    fn summary_reports_the_cut() {
        let files: Vec<DatasetFile> = (0..40).map(|i| file(&format!("f{i}"), 1 << 20)).collect();
        let sz = Sizing {
            capacity: 5 << 20,
            min_files: 0,
            overflow: 0.1,
        };
        let s = shard(1, 4);
        let p = make_plan(files, &no_globs(), Some(&s), 0, Some(&sz));
        assert_eq!(
            summary(&p, Some(&s), Some(&sz)),
            "shard 1/4 (test): 5 of 40 files, 5.0 MiB of 40.0 MiB; cut to fit 5.0 MiB (+10%) \
             from 10 files, 10.0 MiB: the job covers about 50.0% of the dataset"
        );
    }

    // --- which shard ------------------------------------------------------------------

    fn id(index: u64, count: u64, origin: &str) -> Option<ShardId> {
        Some(ShardId {
            index,
            count,
            origin: origin.into(),
        })
    }

    #[test]
    fn flags_override_everything() {
        let torch = [("RANK", "3"), ("WORLD_SIZE", "8")];
        assert_eq!(resolve(&[], &torch), Ok(None));
        assert_eq!(
            resolve(&["--shard-index", "1", "--shard-count", "4"], &torch),
            Ok(id(1, 4, "flags"))
        );
        assert_eq!(
            resolve(
                &[
                    "--shard",
                    "rank",
                    "--shard-index",
                    "0",
                    "--shard-count",
                    "1"
                ],
                &torch
            ),
            Ok(id(0, 1, "flags"))
        );
        for (flags, needle) in [
            (
                &["--shard-index", "4", "--shard-count", "4"][..],
                "less than",
            ),
            (
                &["--shard-index", "0", "--shard-count", "0"][..],
                "at least 1",
            ),
            (&["--shard-index", "0"][..], "--shard-count"),
            (&["--shard-count", "2"][..], "--shard-index"),
        ] {
            let e = resolve(flags, &torch).unwrap_err();
            assert!(e.contains(needle), "{flags:?}: {e}");
        }
    }

    #[test]
    fn rank_from_torchrun_or_slurm() {
        let torch = [("RANK", "3"), ("WORLD_SIZE", "8"), ("LOCAL_RANK", "1")];
        assert_eq!(
            resolve(&["--shard", "rank"], &torch),
            Ok(id(3, 8, "torchrun RANK=3 WORLD_SIZE=8"))
        );
        let slurm = [("SLURM_PROCID", "5"), ("SLURM_NTASKS", "6")];
        assert_eq!(
            resolve(&["--shard", "rank"], &slurm),
            Ok(id(5, 6, "Slurm SLURM_PROCID=5 SLURM_NTASKS=6"))
        );
        // torchrun started by srun: torchrun's ranks are the real ones.
        let both = [torch[0], torch[1], slurm[0], slurm[1]];
        assert_eq!(
            resolve(&["--shard", "rank"], &both)
                .unwrap()
                .unwrap()
                .origin,
            "torchrun RANK=3 WORLD_SIZE=8"
        );
    }

    #[test]
    fn node_from_torchrun_or_slurm() {
        let torch = [
            ("GROUP_RANK", "1"),
            ("WORLD_SIZE", "8"),
            ("LOCAL_WORLD_SIZE", "4"),
            ("RANK", "6"),
        ];
        assert_eq!(
            resolve(&["--shard", "node"], &torch),
            Ok(id(
                1,
                2,
                "torchrun GROUP_RANK=1 WORLD_SIZE=8 LOCAL_WORLD_SIZE=4"
            ))
        );
        let slurm = [
            ("SLURM_NODEID", "2"),
            ("SLURM_NNODES", "3"),
            ("SLURM_PROCID", "9"),
        ];
        assert_eq!(
            resolve(&["--shard", "node"], &slurm),
            Ok(id(2, 3, "Slurm SLURM_NODEID=2 SLURM_NNODES=3"))
        );
    }

    #[test]
    fn disk_mode_multiplies_out() {
        let slurm = [("SLURM_NODEID", "2"), ("SLURM_NNODES", "3")];
        assert_eq!(
            resolve(
                &["--shard", "disk", "--disks", "4", "--disk-index", "1"],
                &slurm
            ),
            Ok(id(
                9,
                12,
                "Slurm SLURM_NODEID=2 SLURM_NNODES=3, disk 1 of 4"
            ))
        );
        let torch = [
            ("GROUP_RANK", "0"),
            ("WORLD_SIZE", "4"),
            ("LOCAL_WORLD_SIZE", "2"),
        ];
        assert_eq!(
            resolve(
                &["--shard", "disk", "--disks", "2", "--disk-index", "1"],
                &torch
            )
            .unwrap()
            .map(|s| (s.index, s.count)),
            Some((1, 4))
        );
        for (flags, needle) in [
            (&["--shard", "disk"][..], "--disks D and --disk-index J"),
            (&["--shard", "disk", "--disks", "2"][..], "--disk-index"),
            (
                &["--shard", "disk", "--disks", "2", "--disk-index", "2"][..],
                "less than",
            ),
            (
                &["--shard", "disk", "--disks", "0", "--disk-index", "0"][..],
                "at least 1",
            ),
            (
                &["--shard", "node", "--disks", "2", "--disk-index", "0"][..],
                "only apply",
            ),
        ] {
            let e = resolve(flags, &slurm).unwrap_err();
            assert!(e.contains(needle), "{flags:?}: {e}");
        }
        let big = [
            ("SLURM_NODEID", "1"),
            ("SLURM_NNODES", &*u64::MAX.to_string()),
        ];
        let e = resolve(
            &["--shard", "disk", "--disks", "2", "--disk-index", "0"],
            &big,
        );
        assert!(e.unwrap_err().contains("too many"));
    }

    /// Launcher variables of one case.
    type Env<'a> = &'a [(&'a str, &'a str)];

    #[test]
    fn env_errors_name_the_variables() {
        let cases: &[(&str, Env, &[&str])] = &[
            ("rank", &[], &["RANK", "SLURM_PROCID", "--shard-index"]),
            (
                "node",
                &[],
                &["GROUP_RANK", "SLURM_NODEID", "--shard-count"],
            ),
            ("rank", &[("RANK", "1")], &["WORLD_SIZE is not set"]),
            ("rank", &[("RANK", "x"), ("WORLD_SIZE", "2")], &["RANK='x'"]),
            (
                "rank",
                &[("RANK", "2"), ("WORLD_SIZE", "2")],
                &["RANK=2", "WORLD_SIZE=2"],
            ),
            (
                "rank",
                &[("SLURM_NTASKS", "2")],
                &["SLURM_PROCID is not set"],
            ),
            (
                "node",
                &[("WORLD_SIZE", "8")],
                &["GROUP_RANK", "LOCAL_WORLD_SIZE"],
            ),
            (
                "node",
                &[
                    ("GROUP_RANK", "0"),
                    ("WORLD_SIZE", "6"),
                    ("LOCAL_WORLD_SIZE", "4"),
                ],
                &["not a multiple"],
            ),
            (
                "node",
                &[
                    ("GROUP_RANK", "0"),
                    ("WORLD_SIZE", "6"),
                    ("LOCAL_WORLD_SIZE", "0"),
                ],
                &["LOCAL_WORLD_SIZE=0"],
            ),
            (
                "node",
                &[
                    ("GROUP_RANK", "3"),
                    ("WORLD_SIZE", "6"),
                    ("LOCAL_WORLD_SIZE", "2"),
                ],
                &["GROUP_RANK=3"],
            ),
            (
                "node",
                &[("SLURM_NODEID", "-1"), ("SLURM_NNODES", "2")],
                &["SLURM_NODEID='-1'"],
            ),
        ];
        for (mode, env, needles) in cases {
            let e = resolve(&["--shard", mode], env).unwrap_err();
            assert!(!e.contains('\n'), "one line: {e}");
            for n in *needles {
                assert!(e.contains(n), "{mode} {env:?}: {e:?} lacks {n:?}");
            }
        }
    }

    // --- the file list ----------------------------------------------------------------

    fn tree() -> (tempfile::TempDir, PathBuf) {
        let t = tempfile::tempdir().unwrap();
        let root = t.path().join("src");
        for (p, n) in [
            ("a/one", 10),
            ("a/b/two", 20),
            ("a/b/c/three", 30),
            ("top", 1),
            (".bicache/hidden", 5),
            ("x/.bicache", 6),
            ("z/.zarray", 2),
        ] {
            let full = root.join(p);
            fs::create_dir_all(full.parent().unwrap()).unwrap();
            fs::write(&full, vec![0u8; n]).unwrap();
        }
        fs::create_dir_all(root.join("empty/dir")).unwrap();
        std::os::unix::fs::symlink("top", root.join("link")).unwrap();
        std::os::unix::fs::symlink("a", root.join("dirlink")).unwrap();
        (t, root)
    }

    #[test]
    fn walk_lists_regular_files_only() {
        let (_t, root) = tree();
        let files = list_dataset(&root, None, None).unwrap();
        assert_eq!(
            names(&files),
            [
                "a/b/c/three",
                "a/b/two",
                "a/one",
                "top",
                "x/.bicache",
                "z/.zarray"
            ]
        );
        assert_eq!(files[0].size, 30);
        let m = fs::metadata(root.join("top")).unwrap();
        assert_eq!(files[3].mtime_ns, mtime_ns(&m));
        assert!(
            list_dataset(&root.join("top"), None, None)
                .unwrap_err()
                .contains("not a directory")
        );
        assert!(
            list_dataset(&root.join("nope"), None, None)
                .unwrap_err()
                .contains("does not exist")
        );
    }

    #[test]
    fn walk_cache_is_reused_and_rebuilt() {
        let (t, root) = tree();
        let cache = t.path().join("cache");
        fs::create_dir(&cache).unwrap();
        let first = list_dataset(&root, None, Some(&cache)).unwrap();
        let entries: Vec<_> = fs::read_dir(&cache)
            .unwrap()
            .map(|e| e.unwrap().path())
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
        assert_eq!(list_dataset(&root, None, Some(&cache)).unwrap(), first);

        // Damaged: ignored and rebuilt (now seeing the new file).
        let mut data = fs::read(cached).unwrap();
        let mid = data.len() / 2;
        data[mid] ^= 0x20;
        fs::write(cached, &data).unwrap();
        let again = list_dataset(&root, None, Some(&cache)).unwrap();
        assert_eq!(again.len(), first.len() + 1);

        // A top-level change moves the key.
        fs::write(root.join("added"), b"y").unwrap();
        let t0 = std::time::SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_000_000);
        fs::File::open(&root).unwrap().set_modified(t0).unwrap();
        assert_eq!(
            list_dataset(&root, None, Some(&cache)).unwrap().len(),
            first.len() + 2
        );

        // An unwritable cache dir only costs the cache.
        assert_eq!(
            list_dataset(&root, None, Some(&t.path().join("missing")))
                .unwrap()
                .len(),
            first.len() + 2
        );
    }

    fn mode_bits(p: &Path) -> u32 {
        use std::os::unix::fs::PermissionsExt;
        fs::metadata(p).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn walk_cache_parsing_is_defensive() {
        let key = WalkKey {
            source: PathBuf::from("/data/set"),
            root_mtime_ns: 123_456_789_012,
        };
        let files = vec![
            DatasetFile {
                path: PathBuf::from(OsStr::from_bytes(b"a/\xff bad\nname%")),
                size: 7,
                mtime_ns: -5,
            },
            file("b/c d", u64::MAX),
        ];
        let enc = encode_walk(&key, &files);
        assert_eq!(decode_walk(&enc, &key), Some(files.clone()));
        let other = WalkKey {
            source: key.source.clone(),
            root_mtime_ns: 1,
        };
        assert_eq!(decode_walk(&enc, &other), None);
        // Every truncation and every single-byte change is rejected, never a panic.
        for n in 0..enc.len() {
            assert_eq!(decode_walk(&enc[..n], &key), None, "truncated at {n}");
            for flip in [0x01u8, 0x80, 0xff] {
                let mut bad = enc.clone();
                bad[n] ^= flip;
                assert_eq!(decode_walk(&bad, &key), None, "byte {n} ^ {flip:#x}");
            }
        }
        // Well-formed checksums over bad content: still rejected.
        let forge = |body: &str| {
            let sum = xxhash_rust::xxh3::xxh3_64(body.as_bytes());
            format!("{body}end {sum:016x}\n").into_bytes()
        };
        let head = "bicache-walk 1\nsource /data/set\nmtime 123456789012\n";
        for body in [
            "1 1 ../x\n",
            "1 1 /abs\n",
            "1 1 b\n1 1 a\n",
            "1 1 a\n1 1 a\n",
            "1 1 a//b\n",
            "-1 1 a\n",
            "1 1\n",
            "1 1 %zz\n",
            "1 1 %4\n",
            "1 1 .bicache/x\n",
            "99999999999999999999999 1 a\n",
        ] {
            assert_eq!(
                decode_walk(&forge(&format!("{head}{body}")), &key),
                None,
                "{body:?}"
            );
        }
        assert_eq!(decode_walk(&forge(head), &key), Some(vec![]));
    }

    #[test]
    fn manifest_lists_and_checks() {
        let (t, root) = tree();
        let m = t.path().join("manifest.txt");
        fs::write(&m, "# comment\n\na/one\r\n./a/b//two\ntop\na/one\n").unwrap();
        let files = list_dataset(&root, Some(&m), None).unwrap();
        assert_eq!(names(&files), ["a/b/two", "a/one", "top"]);
        assert_eq!(files[0].size, 20);

        for (line, reason) in [
            ("/etc/passwd", "absolute"),
            ("a/../top", "'..'"),
            ("missing", "no such file"),
            ("a/b", "directory"),
            ("link", "symlink"),
            (".", "SOURCE itself"),
            (".bicache/hidden", "reserved"),
        ] {
            fs::write(&m, format!("top\n# c\n{line}\na/one\n")).unwrap();
            let e = list_dataset(&root, Some(&m), None).unwrap_err();
            let want = format!("manifest {} line 3: '{line}': ", m.display());
            assert!(e.starts_with(&want), "{e}");
            assert!(e.contains(reason), "{e}");
        }
        fs::write(&m, b"top\nbad\x01\xffname\n").unwrap();
        let e = list_dataset(&root, Some(&m), None).unwrap_err();
        assert!(e.contains("line 2: 'bad\\u{1}\u{fffd}name'"), "{e}");
        let e = list_dataset(&root, Some(&t.path().join("nope")), None).unwrap_err();
        assert!(e.contains("cannot read manifest"), "{e}");
    }
}
