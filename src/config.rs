//! Turns `MountArgs` into a checked `MountConfig`: every path and size is validated here,
//! before anything is forked or mounted, so bad input fails fast with one line.

use std::fs;
use std::io;
use std::path::{Component, Path, PathBuf};
use std::time::Duration;

use crate::cache::PinPolicy;
use crate::cachedir::{CacheDir, Class, location};
use crate::cli::{CachePolicy, MountArgs, OnOff, ShardArgs};
use crate::shard::{AlwaysVisible, ShardId, resolve_shard};
use crate::size::{SizeSpec, parse_size};

/// Largest chunk we accept: one FUSE reply is assembled from whole chunks in memory.
pub const MAX_CHUNK_SIZE: u64 = 64 << 20;
pub const MIN_CHUNK_SIZE: u64 = 4 << 10;
/// The longest `--metadata-ttl` (a year).
pub const MAX_TTL_SECS: f64 = 365.0 * 24.0 * 3600.0;

#[derive(Debug)]
pub struct MountConfig {
    pub source: PathBuf,
    pub mountpoint: PathBuf,
    /// The folder bicache owns (maybe a `bicache/` subfolder of the one given).
    pub cache_dir: CacheDir,
    pub ram_bytes: u64,
    /// The SSD budget as given (`Bytes(0)`: no SSD tier). A percentage is resolved by the
    /// tier once it knows what it already holds (docs/RELIABILITY.md, budgets).
    pub disk: SizeSpec,
    pub chunk_size: u64,
    pub foreground: bool,
    pub log_file: Option<PathBuf>,
    /// `--log-max-size` in bytes; 0: no limit.
    pub log_max_size: u64,
    /// None = trust forever (`--immutable`).
    pub metadata_ttl: Option<Duration>,
    /// Background revalidation rate (ops/s; 0 = in the foreground).
    pub revalidate_rate: f64,
    pub meta_budget: u64,
    /// `--metrics`: where to serve Prometheus text.
    pub metrics: Option<std::net::SocketAddr>,
    pub allow_other: bool,
    pub fuse_threads: usize,
    pub fetch_threads: usize,
    /// Messages worth a warning once logging is up (e.g. a budget larger than the disk).
    pub warnings: Vec<String>,
    /// Messages worth an info line once logging is up (e.g. where the cache went).
    pub notes: Vec<String>,
    pub shard_args: ShardArgs,
    /// None: `--shard none` (the whole dataset is this mount's).
    pub shard: Option<ShardId>,
    pub prefetch: bool,
    pub prefetch_threads: usize,
    pub pin: PinPolicy,
    pub passthrough: bool,
    /// Chunk buffers ask for transparent huge pages (`buf::set_huge_pages`).
    pub huge_pages: bool,
}

/// A user error: printed as one line, exit status 2.
#[derive(Debug)]
pub struct ConfigError(pub String);

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Opens a `--log-file` for appending. A daemon often runs as root and a log often goes to a
/// shared folder such as /tmp, so a symlink planted at that name is not followed, and a
/// new log is private (0600).
pub fn open_log_file(p: &Path) -> io::Result<fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(p)
}

fn fail<T>(msg: String) -> Result<T, ConfigError> {
    Err(ConfigError(msg))
}

impl MountConfig {
    pub fn from_args(args: &MountArgs) -> Result<MountConfig, ConfigError> {
        let mut warnings = Vec::new();
        let mut notes = Vec::new();
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
        let ttl_secs = match args.metadata_ttl.trim().parse::<f64>() {
            Ok(v) if v.is_finite() && v >= 0.0 => v,
            _ => {
                return fail(format!(
                    "--metadata-ttl: invalid value '{}': expected seconds >= 0",
                    args.metadata_ttl
                ));
            }
        };
        // Beyond a year a TTL means "forever": say so rather than overflow a clock.
        if ttl_secs > MAX_TTL_SECS {
            return fail(format!(
                "--metadata-ttl: '{}' seconds is more than a year; give --immutable to trust \
                 metadata forever",
                args.metadata_ttl
            ));
        }
        let revalidate_rate = match args.revalidate_rate.trim().parse::<f64>() {
            Ok(v) if v.is_finite() && (0.0..=1e6).contains(&v) => v,
            _ => {
                return fail(format!(
                    "--revalidate-rate: invalid value '{}': expected operations a second, \
                     0 to 1000000",
                    args.revalidate_rate
                ));
            }
        };
        let meta_budget = match parse_size(&args.meta_budget, false) {
            Ok(SizeSpec::Bytes(b)) if b >= 1 << 20 => b,
            Ok(_) => {
                return fail(format!(
                    "--meta-budget: invalid size '{}': at least 1MiB",
                    args.meta_budget
                ));
            }
            Err(e) => return fail(format!("--meta-budget: {e}")),
        };
        let log_max_size = match parse_size(&args.log_max_size, false) {
            Ok(SizeSpec::Bytes(b)) if b == 0 || b >= 64 << 10 => b,
            Ok(_) => {
                return fail(format!(
                    "--log-max-size: invalid size '{}': 0 (no limit) or at least 64KiB",
                    args.log_max_size
                ));
            }
            Err(e) => return fail(format!("--log-max-size: {e}")),
        };
        let metrics = match &args.metrics {
            Some(a) => Some(crate::metrics::parse_addr(a).map_err(ConfigError)?),
            None => None,
        };
        if let Some(p) = &args.log_file {
            open_log_file(p)
                .or_else(|e| fail(format!("--log-file: cannot open {}: {e}", p.display())))?;
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

        let (requested, explicit) = match &args.cache_dir {
            Some(dir) => (
                absolute_lexical(dir).or_else(|e| {
                    fail(format!(
                        "--cache-dir: cannot resolve {}: {e}",
                        dir.display()
                    ))
                })?,
                true,
            ),
            None => {
                let choice = location::default_cache_dir(&source, &|k| std::env::var_os(k))
                    .map_err(ConfigError)?;
                for s in &choice.skipped {
                    warnings.push(format!("default cache dir: passed over {s}"));
                }
                if let Some(w) = &choice.warning {
                    warnings.push(w.clone());
                }
                notes.push(format!(
                    "default cache dir {}: {}",
                    choice.path.display(),
                    choice.why
                ));
                (choice.path, false)
            }
        };
        let cache_resolved = resolve_through_existing(&requested);
        for (what, root) in [("source", &source), ("mountpoint", &mountpoint)] {
            if cache_resolved.starts_with(root) {
                return fail(format!(
                    "--cache-dir {} is inside the {what} {}; put it on local disk elsewhere",
                    requested.display(),
                    root.display()
                ));
            }
            // bicache owns everything in its cache dir: the dataset cannot live there.
            if root.starts_with(&cache_resolved) {
                return fail(format!(
                    "the {what} {} is inside --cache-dir {}; give a cache dir of its own",
                    root.display(),
                    requested.display()
                ));
            }
        }
        let cache_dir = CacheDir::claim(&requested).map_err(ConfigError)?;
        if cache_dir.path() != requested {
            notes.push(format!(
                "{} holds other files: the cache lives in {}",
                requested.display(),
                cache_dir.path().display()
            ));
        }
        let fs_type = cache_dir.fs_type();
        if explicit && fs_type.class() == Class::Remote {
            let msg = format!(
                "--cache-dir {} is on {}, a network or FUSE filesystem: every cached read goes \
                 over the network again. Use a node-local disk for the cache.",
                cache_dir.path().display(),
                fs_type.name()
            );
            eprintln!("bicache: WARNING: {msg}");
            warnings.push(msg);
        }

        let ram_bytes = ram.resolve(mem_available());

        Ok(MountConfig {
            source,
            mountpoint,
            cache_dir,
            ram_bytes,
            disk,
            chunk_size,
            foreground: args.foreground,
            log_file: args.log_file.clone(),
            log_max_size,
            metadata_ttl: if args.immutable {
                None
            } else {
                Some(Duration::from_secs_f64(ttl_secs))
            },
            revalidate_rate,
            meta_budget,
            metrics,
            allow_other: args.allow_other,
            fuse_threads: args.fuse_threads,
            fetch_threads: args.fetch_threads,
            warnings,
            notes,
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
            huge_pages: args.huge_pages == OnOff::On,
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
