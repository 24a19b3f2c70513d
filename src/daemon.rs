//! Process life of a mount: fork into the background, report readiness through a pipe
//! (the parent exits 0 only once the mount is live), logging, signals, clean unmount.

use std::fs::OpenOptions;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::Path;
use std::sync::Arc;

use fuser::{Config, MountOption, SessionACL};
use nix::sys::signal::{SigSet, Signal};
use tracing::{error, info, warn};
use tracing_subscriber::EnvFilter;

use crate::cache::disk::{Budget, DiskTier};
use crate::cache::{CacheConfig, ChunkCache, PIN_SHARE, PinPolicy, Tier};
use crate::config::MountConfig;
use crate::fuse::BicacheFs;
use crate::logfile::{CappedLog, LogHome};
use crate::meta::{Namespace, Options as NamespaceOptions};
use crate::prefetch;
use crate::size::{SizeSpec, human};
use crate::source::Source;
use crate::stats::Stats;
use crate::vfs::Vfs;

/// The daemon's log in the cache dir, unless `--log-file` says otherwise.
pub const LOG_FILE: &str = "bicache.log";

/// Runs `bicache mount`. Returns the process exit code.
pub fn mount(cfg: MountConfig) -> i32 {
    if cfg.foreground {
        init_logging(&cfg, true);
        return match serve(&cfg, None) {
            Ok(()) => 0,
            Err(msg) => {
                error!("{msg}");
                eprintln!("bicache: {msg}");
                1
            }
        };
    }
    let (read_end, write_end) = match nix::unistd::pipe() {
        Ok(p) => p,
        Err(e) => {
            eprintln!("bicache: cannot create a pipe: {e}");
            return 1;
        }
    };
    // Safety: no threads exist yet (nothing before this point spawns any).
    match unsafe { nix::unistd::fork() } {
        Err(e) => {
            eprintln!("bicache: cannot fork: {e}");
            1
        }
        Ok(nix::unistd::ForkResult::Parent { .. }) => {
            drop(write_end);
            wait_for_child(read_end)
        }
        Ok(nix::unistd::ForkResult::Child) => {
            drop(read_end);
            let _ = nix::unistd::setsid();
            let _ = std::env::set_current_dir("/");
            detach_stdio();
            init_logging(&cfg, false);
            let mut ready = Some(std::fs::File::from(write_end));
            let code = match serve(&cfg, Some(&mut ready)) {
                Ok(()) => 0,
                Err(msg) => {
                    error!("{msg}");
                    if let Some(mut pipe) = ready.take() {
                        let _ = writeln!(pipe, "error: {msg}");
                    }
                    1
                }
            };
            std::process::exit(code);
        }
    }
}

/// The parent's side: one line from the child says how the mount went.
fn wait_for_child(read_end: OwnedFd) -> i32 {
    let mut msg = String::new();
    let _ = std::fs::File::from(read_end).read_to_string(&mut msg);
    let msg = msg.trim();
    if msg == "ok" {
        0
    } else if let Some(err) = msg.strip_prefix("error: ") {
        eprintln!("bicache: {err}");
        1
    } else {
        eprintln!("bicache: the daemon exited during start-up (see its log file)");
        1
    }
}

fn detach_stdio() {
    if let Ok(null) = OpenOptions::new().read(true).write(true).open("/dev/null") {
        for fd in 0..3 {
            unsafe { libc::dup2(null.as_raw_fd(), fd) };
        }
    }
}

fn init_logging(cfg: &MountConfig, foreground: bool) {
    // fuser warns at every unmount made from outside (its own second unmount finds nothing
    // to do): not worth a WARN line in every log.
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("info,fuser::session=error"));
    // The default log is in the cache dir, opened through its descriptor (never a symlink).
    let file = match &cfg.log_file {
        Some(p) => crate::config::open_log_file(p)
            .ok()
            .map(|f| (f, LogHome::UserFile)),
        None if !foreground => cfg
            .cache_dir
            .open_file(
                LOG_FILE,
                nix::fcntl::OFlag::O_WRONLY
                    | nix::fcntl::OFlag::O_APPEND
                    | nix::fcntl::OFlag::O_CREAT,
            )
            .ok()
            .and_then(|f| {
                let dir = cfg.cache_dir.try_clone().ok()?;
                let name = LOG_FILE.to_string();
                Some((f, LogHome::CacheDir { dir, name }))
            }),
        None => None,
    };
    match file {
        Some((file, home)) => tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_ansi(false)
            .with_writer(std::sync::Mutex::new(CappedLog::new(
                file,
                home,
                cfg.log_max_size,
            )))
            .init(),
        None => tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .init(),
    }
}

/// Builds the cache, mounts, reports readiness, serves until unmounted or signalled.
fn serve(cfg: &MountConfig, ready: Option<&mut Option<std::fs::File>>) -> Result<(), String> {
    // Chunk buffers must go back to the OS when freed, so the daemon's resident memory
    // follows the RAM budget instead of the allocator's high-water mark.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 64 * 1024);
        libc::mallopt(libc::M_ARENA_MAX, 4);
    }
    crate::buf::set_huge_pages(cfg.huge_pages);
    // Block the signals we handle before any thread starts, so all threads inherit the mask
    // and only the signal thread receives them.
    let mut signals = SigSet::empty();
    for s in [Signal::SIGINT, Signal::SIGTERM, Signal::SIGHUP] {
        signals.add(s);
    }
    signals
        .thread_block()
        .map_err(|e| format!("cannot block signals: {e}"))?;

    for w in &cfg.warnings {
        warn!("{w}");
    }
    for n in &cfg.notes {
        info!("{n}");
    }
    // One daemon per cache dir, whether or not it has an SSD tier (the log and the walk
    // cache live there too).
    let _lock = cfg.cache_dir.lock()?;
    info!(
        source = %cfg.source.display(),
        mountpoint = %cfg.mountpoint.display(),
        cache_dir = %cfg.cache_dir.path().display(),
        cache_fs = %cfg.cache_dir.fs_type().name(),
        ram = %human(cfg.ram_bytes),
        disk = %match cfg.disk {
            SizeSpec::Bytes(b) => human(b),
            SizeSpec::Percent(p) => format!("{p}%"),
        },
        chunk = %human(cfg.chunk_size),
        "starting"
    );

    let stats = Arc::new(Stats::default());
    let _ = stats.cache_location.set(crate::stats::CacheLocation {
        dir: cfg.cache_dir.path().display().to_string(),
        fs_type: cfg.cache_dir.fs_type().name(),
    });
    if let Some(addr) = cfg.metrics {
        crate::metrics::serve(addr, stats.clone(), cfg.chunk_size)?;
    }
    let source = Arc::new(Source::open_dataset(
        &cfg.source,
        stats.clone(),
        cfg.metadata_ttl.is_none(),
    )?);
    let disk = if cfg.disk != SizeSpec::Bytes(0) {
        let budget = Budget {
            spec: cfg.disk,
            pinned_share: if cfg.pin == PinPolicy::Off {
                0.0
            } else {
                PIN_SHARE
            },
        };
        match DiskTier::open(&cfg.cache_dir, budget, cfg.chunk_size, stats.clone()) {
            Ok(d) => {
                warn_if_larger_than_disk(cfg, d.capacity());
                Some(d)
            }
            Err(msg) => {
                warn!("SSD tier disabled, serving from RAM and the source: {msg}");
                None
            }
        }
    } else {
        None
    };
    let cache = ChunkCache::new(
        CacheConfig {
            chunk_size: cfg.chunk_size,
            ram_bytes: cfg.ram_bytes,
            fetch_threads: cfg.fetch_threads,
            max_readahead: 32 << 20,
            pin: cfg.pin,
        },
        disk,
        source.clone(),
        stats.clone(),
    );
    let has_disk = cache.has_disk();
    let wanted = crate::shard::setup::MountShard {
        args: &cfg.shard_args,
        id: cfg.shard.as_ref(),
        prefetch: cfg.prefetch,
        pin: cfg.pin,
        cache_dir: &cfg.cache_dir,
    };
    let shard = crate::shard::setup::for_mount(&wanted, &source, &cache, &stats)?;
    let ns = Namespace::new(
        source,
        NamespaceOptions {
            ttl: cfg.metadata_ttl,
            revalidate_rate: cfg.revalidate_rate,
            budget: cfg.meta_budget,
        },
        shard.view,
        stats.clone(),
    );
    // What the last mount knew: no re-stat of the dataset at a job's start.
    ns.load(&cfg.cache_dir);
    ns.keep_in(cfg.cache_dir.try_clone().map_err(|e| e.to_string())?);
    let hint_slot = ns.kernel_hint_slot();
    let passthrough_depth =
        (cfg.passthrough && has_disk).then(|| cfg.cache_dir.fs_type().passthrough_stack_depth());
    let vfs = Vfs::new(
        ns,
        cache.clone(),
        stats.clone(),
        shard.paths,
        cfg.shard_args.shard_strict,
    );
    let fs = BicacheFs::new(vfs, passthrough_depth);

    let mut config = Config::default();
    config.mount_options = vec![
        MountOption::RO,
        MountOption::FSName(format!("bicache:{}", cfg.source.display())),
        MountOption::Subtype("bicache".into()),
        MountOption::DefaultPermissions,
        MountOption::NoDev,
        MountOption::NoSuid,
        MountOption::NoAtime,
    ];
    config.acl = if cfg.allow_other {
        SessionACL::All
    } else {
        SessionACL::Owner
    };
    config.n_threads = Some(cfg.fuse_threads);
    config.clone_fd = true;

    let mut session = fuser::Session::new(fs, &cfg.mountpoint, &config)
        .map_err(|e| format!("cannot mount at {}: {e}", cfg.mountpoint.display()))?;
    let notifier = session.notifier();
    let _ = hint_slot.set(Box::new(move |parent, name| {
        // A name that no longer leads where it did: the kernel drops its entry and looks
        // the name up again (or forgets the inode, for the metadata budget).
        let _ = notifier.inval_entry(fuser::INodeNo(parent), name);
    }));
    raise_kernel_readahead(&cfg.mountpoint, cfg.chunk_size);
    let mut unmounter = session.unmount_callable();
    std::thread::Builder::new()
        .name("bicache-signals".into())
        .spawn(move || {
            if let Ok(sig) = signals.wait() {
                info!("{sig:?} received, unmounting");
                if let Err(e) = unmounter.unmount() {
                    error!("unmount failed: {e}");
                }
            }
        })
        .map_err(|e| format!("cannot start signal thread: {e}"))?;

    info!("mounted");
    if !shard.prefetch.is_empty() {
        prefetch::start(&cache, shard.prefetch, cfg.prefetch_threads, stats.clone());
    }
    if let Some(slot) = ready
        && let Some(mut pipe) = slot.take()
    {
        let _ = writeln!(pipe, "ok");
    }
    let result = session.run();
    // destroy() normally flushed already; this covers a session that ended with an error.
    cache.shutdown();
    match result {
        Ok(()) => {
            info!("exiting");
            Ok(())
        }
        Err(e) => {
            // The kernel ending the connection at unmount is the normal way out.
            info!("session ended: {e}");
            Ok(())
        }
    }
}

/// A budget larger than the filesystem is accepted (the contract), with a warning: a full
/// disk then degrades to RAM and source reads. So are budgets of several mounts on one
/// disk that together exceed it.
fn warn_if_larger_than_disk(cfg: &MountConfig, capacity: u64) {
    let Ok(st) = nix::sys::statvfs::fstatvfs(cfg.cache_dir.fd()) else {
        return;
    };
    let total = st.blocks() * st.fragment_size();
    if capacity > total {
        warn!(
            "--disk {} is larger than the filesystem holding {} ({}); a full disk \
             degrades to RAM and source reads",
            human(capacity),
            cfg.cache_dir.path().display(),
            human(total)
        );
        return;
    }
    let Ok(own) = nix::sys::stat::fstat(cfg.cache_dir.fd()) else {
        return;
    };
    let others = crate::cachedir::share::other_caches_on(own.st_dev, cfg.cache_dir.path());
    let sum: u64 = others.iter().map(|(_, c)| c).sum::<u64>() + capacity;
    if !others.is_empty() && sum > total {
        let list: Vec<String> = others
            .iter()
            .map(|(d, c)| format!("{} ({})", d.display(), human(*c)))
            .collect();
        let msg = format!(
            "the SSD budgets of {} bicache mounts on this disk add up to {}, more than its {}: \
             {} and this one ({}); when the disk fills each falls back to RAM and the source. \
             Give each mount a share (e.g. --disk {}%)",
            others.len() + 1,
            human(sum),
            human(total),
            list.join(", "),
            human(capacity),
            (90 / (others.len() + 1)).max(1)
        );
        warn!("{msg}");
    }
}

/// The kernel offers FUSE 128 KiB of readahead and so splits reads into 128 KiB requests.
/// Root may raise it per mount (the mount's backing-device info): one request per chunk
/// means fewer round trips per file. Without the right to, the default stays.
/// (The device is read from mountinfo: a stat of the mountpoint would wait for the session,
/// which is not serving yet.)
fn raise_kernel_readahead(mountpoint: &Path, chunk_size: u64) {
    let Some(dev) = crate::mountinfo::bicache_mount_at(mountpoint).map(|m| m.device) else {
        return;
    };
    let path = format!("/sys/class/bdi/{dev}/read_ahead_kb");
    let kb = (chunk_size / 1024).clamp(128, 4096);
    match std::fs::write(&path, kb.to_string()) {
        Ok(()) => info!(read_ahead_kb = kb, "kernel readahead raised"),
        Err(e) => info!("kernel readahead left at its default ({path}: {e})"),
    }
}
