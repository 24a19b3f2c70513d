//! Turns `MountArgs` into a checked `MountConfig`: every path and size is validated here,
//! before anything is forked or mounted, so bad input fails fast with one line.

use std::fs;
use std::io;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};
use std::time::Duration;

use crate::cache::PinPolicy;
use crate::cli::{CachePolicy, MountArgs, OnOff, ShardArgs};
use crate::shard::{AlwaysVisible, ShardId, resolve_shard};
use crate::size::{SizeSpec, human, parse_size};

/// Largest chunk we accept: one FUSE reply is assembled from whole chunks in memory.
pub const MAX_CHUNK_SIZE: u64 = 64 << 20;
pub const MIN_CHUNK_SIZE: u64 = 4 << 10;

#[derive(Debug, Clone)]
pub struct MountConfig {
    pub source: PathBuf,
    pub mountpoint: PathBuf,
    pub cache_dir: PathBuf,
    pub ram_bytes: u64,
    pub disk_bytes: u64,
    pub chunk_size: u64,
    pub foreground: bool,
    pub log_file: Option<PathBuf>,
    /// None = trust forever (`--immutable`).
    pub metadata_ttl: Option<Duration>,
    pub allow_other: bool,
    pub fuse_threads: usize,
    pub fetch_threads: usize,
    /// Messages worth a warning once logging is up (e.g. a budget larger than the disk).
    pub warnings: Vec<String>,
    pub shard_args: ShardArgs,
    /// None: `--shard none` (the whole dataset is this mount's).
    pub shard: Option<ShardId>,
    pub prefetch: bool,
    pub prefetch_threads: usize,
    pub pin: PinPolicy,
    pub passthrough: bool,
}

/// A user error: printed as one line, exit status 2.
#[derive(Debug)]
pub struct ConfigError(pub String);

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

fn fail<T>(msg: String) -> Result<T, ConfigError> {
    Err(ConfigError(msg))
}

impl MountConfig {
    pub fn from_args(args: &MountArgs) -> Result<MountConfig, ConfigError> {
        let mut warnings = Vec::new();
        // Sizes first: they need no filesystem access and are the commonest typo.
        let ram = parse_size(&args.ram, true).or_else(|e| fail(format!("--ram: {e}")))?;
        let disk = parse_size(&args.disk, true).or_else(|e| fail(format!("--disk: {e}")))?;
        let chunk_size = match parse_size(&args.chunk_size, false) {
            Ok(SizeSpec::Bytes(b)) if (MIN_CHUNK_SIZE..=MAX_CHUNK_SIZE).contains(&b) => b,
            Ok(_) => {
                return fail(format!(
                    "--chunk-size: invalid size '{}': must be between 4KiB and 64MiB",
                    args.chunk_size
                ));
            }
            Err(e) => return fail(format!("--chunk-size: {e}")),
        };
        if !args.metadata_ttl.is_finite() || args.metadata_ttl < 0.0 {
            return fail(format!(
                "--metadata-ttl: invalid value '{}': expected seconds >= 0",
                args.metadata_ttl
            ));
        }
        thread_count("--fuse-threads", args.fuse_threads, 256)?;
        thread_count("--fetch-threads", args.fetch_threads, 256)?;
        thread_count("--prefetch-threads", args.prefetch_threads, 64)?;
        let sa = &args.shard;
        if !sa.overflow.is_finite() || sa.overflow < 0.0 {
            return fail(format!(
                "--overflow: invalid value '{}': expected a fraction >= 0",
                sa.overflow
            ));
        }
        AlwaysVisible::new(&sa.always_visible).map_err(ConfigError)?;
        let shard = resolve_shard(sa, &|k| std::env::var(k).ok()).map_err(ConfigError)?;
        if let Some(m) = &sa.manifest
            && !m.is_file()
        {
            return fail(format!("--manifest {}: not a readable file", m.display()));
        }

        let source = existing_dir(&args.source, "source")?;
        let mountpoint = mountpoint_dir(&args.mountpoint)?;
        if mountpoint == source {
            return fail(format!(
                "mountpoint {} is the source itself; mount somewhere else",
                args.mountpoint.display()
            ));
        }
        if mountpoint.starts_with(&source) {
            return fail(format!(
                "mountpoint {} is inside the source {}; mount somewhere else",
                args.mountpoint.display(),
                source.display()
            ));
        }
        if source.starts_with(&mountpoint) {
            return fail(format!(
                "source {} is inside the mountpoint {}; the mount would hide it",
                args.source.display(),
                mountpoint.display()
            ));
        }

        let cache_dir = match &args.cache_dir {
            Some(dir) => absolute_lexical(dir).or_else(|e| {
                fail(format!(
                    "--cache-dir: cannot resolve {}: {e}",
                    dir.display()
                ))
            })?,
            None => default_cache_dir(&source),
        };
        let cache_resolved = resolve_through_existing(&cache_dir);
        for (what, root) in [("source", &source), ("mountpoint", &mountpoint)] {
            if cache_resolved.starts_with(root) {
                return fail(format!(
                    "--cache-dir {} is inside the {what} {}; put it on local disk elsewhere",
                    cache_dir.display(),
                    root.display()
                ));
            }
        }

        let ram_bytes = ram.resolve(mem_available());
        let disk_bytes = if disk == SizeSpec::Bytes(0) {
            0
        } else {
            create_private_dir(&cache_dir)?;
            let (free, total) = fs_space(&cache_dir).or_else(|e| {
                fail(format!(
                    "--cache-dir: cannot read free space of {}: {e}",
                    cache_dir.display()
                ))
            })?;
            let bytes = disk.resolve(free);
            if bytes > total {
                warnings.push(format!(
                    "--disk {} ({}) is larger than the filesystem holding {} ({}); a full disk \
                     degrades to RAM and source reads",
                    args.disk,
                    human(bytes),
                    cache_dir.display(),
                    human(total)
                ));
            }
            bytes
        };
        // The lock file and log live in the cache dir even without an SSD tier.
        create_private_dir(&cache_dir)?;

        Ok(MountConfig {
            source,
            mountpoint,
            cache_dir,
            ram_bytes,
            disk_bytes,
            chunk_size,
            foreground: args.foreground,
            log_file: args.log_file.clone(),
            metadata_ttl: if args.immutable {
                None
            } else {
                Some(Duration::from_secs_f64(args.metadata_ttl))
            },
            allow_other: args.allow_other,
            fuse_threads: args.fuse_threads,
            fetch_threads: args.fetch_threads,
            warnings,
            shard_args: args.shard.clone(),
            prefetch: match args.prefetch {
                Some(OnOff::On) => true,
                Some(OnOff::Off) => false,
                None => shard.is_some(),
            },
            prefetch_threads: args.prefetch_threads,
            pin: match (args.cache_policy, &shard) {
                (CachePolicy::Lru, _) => PinPolicy::Off,
                (CachePolicy::Pin, Some(_)) => PinPolicy::Set,
                (CachePolicy::Pin, None) => PinPolicy::All,
            },
            passthrough: args.passthrough == OnOff::On,
            shard,
        })
    }
}

fn thread_count(flag: &str, n: usize, max: usize) -> Result<(), ConfigError> {
    if n == 0 || n > max {
        return fail(format!("{flag}: invalid value '{n}': expected 1..{max}"));
    }
    Ok(())
}

fn existing_dir(path: &Path, what: &str) -> Result<PathBuf, ConfigError> {
    let meta = fs::metadata(path)
        .or_else(|e| fail(format!("{what} {}: {}", path.display(), io_reason(&e))))?;
    if !meta.is_dir() {
        return fail(format!("{what} {}: not a directory", path.display()));
    }
    fs::canonicalize(path)
        .or_else(|e| fail(format!("{what} {}: {}", path.display(), io_reason(&e))))
}

/// The mountpoint must be a directory; one left dead by a killed daemon
/// ("Transport endpoint is not connected", or "Software caused connection abort" when the
/// kernel aborted the connection) is detached so the new mount can take its place.
fn mountpoint_dir(path: &Path) -> Result<PathBuf, ConfigError> {
    if let Err(e) = fs::metadata(path)
        && matches!(e.raw_os_error(), Some(libc::ENOTCONN | libc::ECONNABORTED))
    {
        crate::mountinfo::detach_dead_mount(path).or_else(|err| {
            fail(format!(
                "mountpoint {} is a dead FUSE mount and could not be detached ({err}); run: \
                 fusermount3 -uz {}",
                path.display(),
                path.display()
            ))
        })?;
    }
    existing_dir(path, "mountpoint")
}

fn io_reason(e: &io::Error) -> String {
    match e.kind() {
        io::ErrorKind::NotFound => "does not exist".to_string(),
        _ => e.to_string(),
    }
}

fn absolute_lexical(path: &Path) -> io::Result<PathBuf> {
    let abs = std::path::absolute(path)?;
    let mut out = PathBuf::new();
    for c in abs.components() {
        match c {
            Component::ParentDir => {
                out.pop();
            }
            Component::CurDir => {}
            other => out.push(other),
        }
    }
    Ok(out)
}

/// Canonicalises the longest existing prefix (resolving symlinks) and appends the rest, so a
/// cache dir that does not exist yet is still compared against the source correctly.
fn resolve_through_existing(path: &Path) -> PathBuf {
    let mut existing = path.to_path_buf();
    let mut rest = Vec::new();
    loop {
        if let Ok(c) = fs::canonicalize(&existing) {
            let mut out = c;
            for r in rest.iter().rev() {
                out.push(r);
            }
            return out;
        }
        match (
            existing.file_name().map(|n| n.to_owned()),
            existing.parent(),
        ) {
            (Some(name), Some(parent)) => {
                rest.push(name);
                existing = parent.to_path_buf();
            }
            _ => return path.to_path_buf(),
        }
    }
}

fn default_cache_dir(source: &Path) -> PathBuf {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .filter(|p| p.is_absolute())
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(|| PathBuf::from("/var/tmp"));
    // One cache dir per source: each has one owning daemon (see the lock in cache/disk.rs).
    let tag = xxhash_rust::xxh3::xxh3_64(source.as_os_str().as_encoded_bytes());
    base.join("bicache").join(format!("{tag:016x}"))
}

/// Creates DIR (and parents) with mode 0700; an existing dir is left as it is.
pub fn create_private_dir(dir: &Path) -> Result<(), ConfigError> {
    match fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
    {
        Ok(()) => {}
        Err(e) => {
            return fail(format!(
                "--cache-dir {}: cannot create: {}",
                dir.display(),
                io_reason(&e)
            ));
        }
    }
    let meta = fs::metadata(dir)
        .or_else(|e| fail(format!("--cache-dir {}: {}", dir.display(), io_reason(&e))))?;
    if !meta.is_dir() {
        return fail(format!("--cache-dir {}: not a directory", dir.display()));
    }
    // recursive(true) applies the mode only to dirs it made; the leaf must be private anyway.
    if meta.permissions().mode() & 0o077 != 0 {
        let _ = fs::set_permissions(dir, fs::Permissions::from_mode(0o700));
    }
    Ok(())
}

/// MemAvailable from /proc/meminfo, in bytes (falls back to 1 GiB if unreadable).
pub fn mem_available() -> u64 {
    fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("MemAvailable:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<u64>().ok())
        })
        .map(|kb| kb * 1024)
        .unwrap_or(1 << 30)
}

/// (bytes available to unprivileged users, total bytes) of the filesystem holding `dir`.
pub fn fs_space(dir: &Path) -> io::Result<(u64, u64)> {
    let st = nix::sys::statvfs::statvfs(dir).map_err(io::Error::from)?;
    let frag = st.fragment_size() as u64;
    Ok((
        st.blocks_available() as u64 * frag,
        st.blocks() as u64 * frag,
    ))
}
