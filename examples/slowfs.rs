//! slowfs: a read-only FUSE passthrough of a local directory that behaves like a slow
//! shared filesystem, for benchmarking bicache against a "network" source.
//!
//! ```text
//! slowfs SOURCE MOUNTPOINT [--latency-ms F] [--bandwidth-mbps F] [--meta-latency-ms F]
//!        [--attr-ttl SECS] [--stats-file PATH] [--threads N]
//! ```
//!
//! * Every read request sleeps `--latency-ms`, then waits for its turn on one shared pacing
//!   clock, so the bytes served by all requests together never exceed `--bandwidth-mbps`
//!   (MB = 10^6 bytes). Requests overlap their latency (multi-threaded session), like a
//!   network filesystem with several requests in flight.
//! * Metadata requests (lookup, getattr, opendir, readdir, open, readlink, statfs) sleep
//!   `--meta-latency-ms` (default: the read latency).
//! * Nothing is cached by the kernel: zero entry/attribute TTLs and `FOPEN_DIRECT_IO`, so
//!   every access really reaches this process and is counted. `--attr-ttl SECS` lets the
//!   kernel keep names and attributes that long instead, as an NFS client's attribute cache
//!   does (`acregmin`, 3 s by default): a `stat` or `fstat` within it costs no request.
//!   File data is never cached.
//! * `--stats-file` receives `{"reads":N,"bytes":N,"meta":N}` every 0.5 s and at exit.
//! * Runs in the foreground; SIGINT/SIGTERM or an external unmount end it.
//!
//! Build: `cargo build --release --example slowfs`.

use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::fs::{self, File, Metadata};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

mod common;

use clap::Parser;
use common::{attr, block_stop_signals, errno, file_type};
use fuser::{
    Config, Errno, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo, KernelConfig,
    MountOption, OpenAccMode, OpenFlags, ReplyAttr, ReplyData, ReplyDirectory, ReplyEmpty,
    ReplyEntry, ReplyOpen, ReplyStatfs, Request, Session,
};
use parking_lot::{Mutex, RwLock};

/// Largest read request served (the kernel never asks for more than its max_pages).
const MAX_READ: u32 = 16 << 20;

#[derive(Parser, Debug)]
#[command(
    name = "slowfs",
    about = "Read-only FUSE passthrough that simulates a slow shared filesystem"
)]
struct Args {
    /// Directory to serve.
    source: PathBuf,
    /// Where to mount it (an existing directory).
    mountpoint: PathBuf,
    /// Latency added to every read request, in milliseconds.
    #[arg(long, value_name = "MS", default_value_t = 1.0)]
    latency_ms: f64,
    /// Total read bandwidth over all requests, in MB/s (10^6 bytes); 0 = unlimited.
    #[arg(long, value_name = "MB/S", default_value_t = 200.0)]
    bandwidth_mbps: f64,
    /// Latency added to every metadata request [default: --latency-ms].
    #[arg(long, value_name = "MS")]
    meta_latency_ms: Option<f64>,
    /// Write {"reads":N,"bytes":N,"meta":N} here every 0.5 s and at exit.
    #[arg(long, value_name = "PATH")]
    stats_file: Option<PathBuf>,
    /// How long the kernel may keep names and attributes, in seconds (0: every lookup
    /// and stat reaches slowfs).
    #[arg(long, value_name = "SECS", default_value_t = 0.0)]
    attr_ttl: f64,
    /// FUSE request threads (concurrent requests overlap their latency).
    #[arg(long, value_name = "N", default_value_t = 8)]
    threads: usize,
}

/// Request counters, shared with the stats writer.
#[derive(Default)]
struct Counters {
    reads: AtomicU64,
    bytes: AtomicU64,
    meta: AtomicU64,
}

impl Counters {
    fn json(&self) -> String {
        format!(
            "{{\"reads\":{},\"bytes\":{},\"meta\":{}}}\n",
            self.reads.load(Relaxed),
            self.bytes.load(Relaxed),
            self.meta.load(Relaxed)
        )
    }

    /// Replaces the file atomically so a reader never sees half a document.
    fn write_to(&self, path: &Path) -> io::Result<()> {
        let mut tmp = path.as_os_str().to_owned();
        tmp.push(".tmp");
        fs::write(&tmp, self.json())?;
        fs::rename(&tmp, path)
    }
}

/// A shared pacing clock: each read reserves the next `len / rate` seconds of the link,
/// so concurrent readers share the bandwidth instead of each getting all of it. An idle
/// link accumulates no credit (no bursts above the rate).
struct Link {
    bytes_per_sec: f64,
    free_at: Mutex<Instant>,
}

impl Link {
    fn new(mbps: f64) -> Link {
        Link {
            bytes_per_sec: mbps * 1e6,
            free_at: Mutex::new(Instant::now()),
        }
    }

    /// Blocks until `len` bytes have had their turn on the link.
    fn transfer(&self, len: usize) {
        if self.bytes_per_sec <= 0.0 || len == 0 {
            return;
        }
        let cost = Duration::from_secs_f64(len as f64 / self.bytes_per_sec);
        let done = {
            let mut free_at = self.free_at.lock();
            let start = (*free_at).max(Instant::now());
            *free_at = start + cost;
            *free_at
        };
        sleep_until(done);
    }
}

fn sleep_until(t: Instant) {
    let now = Instant::now();
    if t > now {
        std::thread::sleep(t - now);
    }
}

/// Path <-> inode table. Inode numbers are stable for the life of the mount; one number
/// per path (hard links get one inode per name).
struct Inodes {
    /// `paths[ino - 1]` is the path relative to the source root ("" = root).
    paths: Vec<PathBuf>,
    by_path: HashMap<PathBuf, u64>,
}

impl Inodes {
    fn new() -> Inodes {
        let root = PathBuf::new();
        Inodes {
            paths: vec![root.clone()],
            by_path: HashMap::from([(root, INodeNo::ROOT.0)]),
        }
    }

    fn path(&self, ino: u64) -> Option<PathBuf> {
        let idx = usize::try_from(ino.checked_sub(1)?).ok()?;
        self.paths.get(idx).cloned()
    }
}

struct DirEntry {
    ino: u64,
    kind: FileType,
    name: OsString,
}

struct SlowFs {
    root: PathBuf,
    latency: Duration,
    meta_latency: Duration,
    /// Entry and attribute TTL of every reply (`--attr-ttl`).
    attr_ttl: Duration,
    link: Link,
    counters: Arc<Counters>,
    inodes: RwLock<Inodes>,
    /// Directory listings snapshotted at opendir, by handle.
    dirs: Mutex<HashMap<u64, Arc<Vec<DirEntry>>>>,
    next_fh: AtomicU64,
}

impl SlowFs {
    fn full(&self, rel: &Path) -> PathBuf {
        if rel.as_os_str().is_empty() {
            self.root.clone()
        } else {
            self.root.join(rel)
        }
    }

    /// Counts a metadata request and charges its latency.
    fn meta_op(&self) {
        self.counters.meta.fetch_add(1, Relaxed);
        std::thread::sleep(self.meta_latency);
    }

    fn path(&self, ino: INodeNo) -> Result<PathBuf, Errno> {
        self.inodes.read().path(ino.0).ok_or(Errno::ENOENT)
    }

    fn ino_for(&self, rel: &Path) -> u64 {
        if let Some(&ino) = self.inodes.read().by_path.get(rel) {
            return ino;
        }
        let mut inodes = self.inodes.write();
        if let Some(&ino) = inodes.by_path.get(rel) {
            return ino;
        }
        inodes.paths.push(rel.to_path_buf());
        let ino = inodes.paths.len() as u64;
        inodes.by_path.insert(rel.to_path_buf(), ino);
        ino
    }

    fn lstat(&self, rel: &Path) -> Result<Metadata, Errno> {
        fs::symlink_metadata(self.full(rel)).map_err(|e| errno(&e))
    }

    /// Reads up to `size` bytes at `offset`: the source file is opened for this request
    /// only, so the number of descriptors never depends on the size of the dataset.
    fn pread(&self, rel: &Path, offset: u64, size: u32) -> io::Result<Vec<u8>> {
        let file = File::options()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW)
            .open(self.full(rel))?;
        let mut buf = vec![0u8; size.min(MAX_READ) as usize];
        let mut done = 0;
        while done < buf.len() {
            match file.read_at(&mut buf[done..], offset + done as u64) {
                Ok(0) => break,
                Ok(n) => done += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        buf.truncate(done);
        Ok(buf)
    }
}

impl Filesystem for SlowFs {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> io::Result<()> {
        // Let a client keep many requests in flight; the link still caps the total.
        let _ = config.set_max_background(64);
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        self.meta_op();
        let rel = match self.path(parent) {
            Ok(p) => p.join(name),
            Err(e) => return reply.error(e),
        };
        match self.lstat(&rel) {
            Ok(m) => reply.entry(&self.attr_ttl, &attr(self.ino_for(&rel), &m), Generation(0)),
            Err(e) => reply.error(e),
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        self.meta_op();
        match self.path(ino).and_then(|p| self.lstat(&p)) {
            Ok(m) => reply.attr(&self.attr_ttl, &attr(ino.0, &m)),
            Err(e) => reply.error(e),
        }
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        self.meta_op();
        match self
            .path(ino)
            .and_then(|p| fs::read_link(self.full(&p)).map_err(|e| errno(&e)))
        {
            Ok(target) => reply.data(target.as_os_str().as_bytes()),
            Err(e) => reply.error(e),
        }
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        self.meta_op();
        if flags.acc_mode() != OpenAccMode::O_RDONLY
            || flags.0 & (libc::O_TRUNC | libc::O_CREAT) != 0
        {
            return reply.error(Errno::EROFS);
        }
        match self.path(ino).and_then(|p| self.lstat(&p)) {
            Ok(m) if m.is_dir() => reply.error(Errno::EISDIR),
            // Direct I/O: no page cache, every read() reaches us.
            Ok(_) => reply.opened(FileHandle(0), FopenFlags::FOPEN_DIRECT_IO),
            Err(e) => reply.error(e),
        }
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<fuser::LockOwner>,
        reply: ReplyData,
    ) {
        let started = Instant::now();
        let rel = match self.path(ino) {
            Ok(p) => p,
            Err(e) => return reply.error(e),
        };
        match self.pread(&rel, offset, size) {
            Ok(data) => {
                // Round trip first, then the bytes take their turn on the shared link.
                sleep_until(started + self.latency);
                self.link.transfer(data.len());
                self.counters.reads.fetch_add(1, Relaxed);
                self.counters.bytes.fetch_add(data.len() as u64, Relaxed);
                reply.data(&data);
            }
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        self.meta_op();
        let rel = match self.path(ino) {
            Ok(p) => p,
            Err(e) => return reply.error(e),
        };
        let listing = match fs::read_dir(self.full(&rel)) {
            Ok(it) => it,
            Err(e) => return reply.error(errno(&e)),
        };
        let mut entries = Vec::new();
        for entry in listing {
            let Ok(entry) = entry else { continue };
            let Ok(ft) = entry.file_type() else { continue };
            let name = entry.file_name();
            entries.push(DirEntry {
                ino: self.ino_for(&rel.join(&name)),
                kind: file_type(ft),
                name,
            });
        }
        let fh = self.next_fh.fetch_add(1, Relaxed);
        self.dirs.lock().insert(fh, Arc::new(entries));
        reply.opened(FileHandle(fh), FopenFlags::empty());
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        self.meta_op();
        let Some(entries) = self.dirs.lock().get(&fh.0).cloned() else {
            return reply.error(Errno::EBADF);
        };
        // Offsets: 1 = ".", 2 = "..", 3.. = entries; each names the next entry to send.
        let dots = [(ino.0, "."), (ino.0, "..")];
        for (i, (dot_ino, name)) in dots.iter().enumerate().skip(offset as usize) {
            if reply.add(INodeNo(*dot_ino), i as u64 + 1, FileType::Directory, name) {
                return reply.ok();
            }
        }
        let skip = (offset as usize).saturating_sub(2);
        for (i, e) in entries.iter().enumerate().skip(skip) {
            if reply.add(INodeNo(e.ino), i as u64 + 3, e.kind, &e.name) {
                break;
            }
        }
        reply.ok();
    }

    fn releasedir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        self.dirs.lock().remove(&fh.0);
        reply.ok();
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        self.meta_op();
        match nix::sys::statvfs::statvfs(&self.root) {
            Ok(s) => reply.statfs(
                s.blocks(),
                s.blocks_free(),
                s.blocks_available(),
                s.files(),
                s.files_free(),
                s.block_size() as u32,
                s.name_max() as u32,
                s.fragment_size() as u32,
            ),
            Err(e) => reply.error(Errno::from_i32(e as i32)),
        }
    }
}

fn validate(args: &Args) -> Result<(), String> {
    let finite = |v: f64| v.is_finite() && v >= 0.0;
    if !finite(args.latency_ms) || !args.meta_latency_ms.is_none_or(finite) {
        return Err("latencies must be finite and >= 0".into());
    }
    if !finite(args.bandwidth_mbps) {
        return Err("--bandwidth-mbps must be finite and >= 0".into());
    }
    if !finite(args.attr_ttl) || args.attr_ttl > 1e6 {
        return Err("--attr-ttl must be 0..=1000000 seconds".into());
    }
    if !(1..=256).contains(&args.threads) {
        return Err("--threads must be 1..=256".into());
    }
    if !args.source.is_dir() {
        return Err(format!("{}: not a directory", args.source.display()));
    }
    Ok(())
}

fn run(args: Args) -> Result<(), String> {
    validate(&args)?;
    let root =
        fs::canonicalize(&args.source).map_err(|e| format!("{}: {e}", args.source.display()))?;
    let counters = Arc::new(Counters::default());
    let fs = SlowFs {
        root: root.clone(),
        latency: Duration::from_secs_f64(args.latency_ms / 1e3),
        meta_latency: Duration::from_secs_f64(
            args.meta_latency_ms.unwrap_or(args.latency_ms) / 1e3,
        ),
        attr_ttl: Duration::from_secs_f64(args.attr_ttl),
        link: Link::new(args.bandwidth_mbps),
        counters: counters.clone(),
        inodes: RwLock::new(Inodes::new()),
        dirs: Mutex::new(HashMap::new()),
        next_fh: AtomicU64::new(1),
    };

    let signals = block_stop_signals()?;

    let mut config = Config::default();
    config.mount_options = vec![
        MountOption::RO,
        MountOption::FSName(format!("slowfs:{}", root.display())),
        MountOption::Subtype("slowfs".into()),
    ];
    config.n_threads = Some(args.threads);
    config.clone_fd = true;
    let mut session = Session::new(fs, &args.mountpoint, &config)
        .map_err(|e| format!("mount {}: {e}", args.mountpoint.display()))?;
    eprintln!(
        "slowfs: {} on {} (latency {} ms, meta latency {} ms, {} MB/s, {} threads)",
        root.display(),
        args.mountpoint.display(),
        args.latency_ms,
        args.meta_latency_ms.unwrap_or(args.latency_ms),
        args.bandwidth_mbps,
        args.threads
    );

    let stop = Arc::new(AtomicBool::new(false));
    let writer = args.stats_file.clone().map(|path| {
        let (counters, stop) = (counters.clone(), stop.clone());
        std::thread::spawn(move || {
            while !stop.load(Relaxed) {
                if let Err(e) = counters.write_to(&path) {
                    eprintln!("slowfs: {}: {e}", path.display());
                }
                std::thread::sleep(Duration::from_millis(500));
            }
        })
    });

    let mut unmounter = session.unmount_callable();
    let mountpoint = args.mountpoint.clone();
    let final_stats = (counters.clone(), args.stats_file.clone());
    std::thread::spawn(move || {
        let Ok(sig) = signals.wait() else { return };
        eprintln!("slowfs: {sig}, unmounting");
        if let Err(e) = unmounter.unmount() {
            // Busy (e.g. a client still holds files open): detach the mount and go; the
            // remaining clients see the connection end, as with a crashed server.
            eprintln!("slowfs: unmount: {e}; detaching");
            let _ = nix::mount::umount2(&mountpoint, nix::mount::MntFlags::MNT_DETACH);
            if let (counters, Some(path)) = &final_stats {
                let _ = counters.write_to(path);
            }
            std::process::exit(0);
        }
    });

    // Returns once the filesystem is unmounted (signal above, or an external umount).
    let result = session.run();
    stop.store(true, Relaxed);
    if let Some(w) = writer {
        let _ = w.join();
    }
    if let Some(path) = &args.stats_file {
        counters
            .write_to(path)
            .map_err(|e| format!("{}: {e}", path.display()))?;
    }
    eprintln!("slowfs: exit, served {}", counters.json().trim_end());
    result.map_err(|e| format!("session: {e}"))
}

fn main() {
    if let Err(e) = run(Args::parse()) {
        eprintln!("slowfs: {e}");
        std::process::exit(1);
    }
}
