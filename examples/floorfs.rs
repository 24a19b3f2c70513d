//! floorfs: the least work a FUSE filesystem can do per file while it serves a local tree
//! read-only through FUSE passthrough. A benchmark baseline, not a product: what any
//! FUSE filesystem pays per file on this kernel and machine, so a gap between bicache and
//! native can be split into what bicache costs and what FUSE itself costs.
//!
//! ```text
//! floorfs SOURCE MOUNTPOINT [--threads N] [--no-open | --read-through]
//! ```
//!
//! * At start it walks SOURCE once into memory (names, attributes, parent links) and only
//!   then mounts, so no request ever waits on a stat: LOOKUP and GETATTR are answered from
//!   memory, valid for a day (the kernel asks once per name until it forgets it).
//! * OPEN opens the source file relative to its folder (one descriptor per folder, held
//!   from the start) and hands it to the kernel as the backing file (FUSE passthrough,
//!   Linux 6.9+, as root); every read then goes from the kernel to the source file without
//!   reaching this process. RELEASE drops the backing file. One backing id per inode
//!   while it is open, as the kernel requires.
//! * IOCTL answers ENOTTY (Python's `open()` asks TCGETS of every file); nothing else is
//!   implemented beyond listing folders.
//!
//! So per file opened after the kernel forgot it, the requests are LOOKUP, OPEN, IOCTL
//! (Python) and RELEASE, and the work in this process is one `openat` and the backing
//! registration: the floor under any FUSE filesystem that serves files by passthrough.
//!
//! `--no-open` measures the other design: OPEN answers ENOSYS, so the kernel stops sending
//! OPEN and RELEASE for good (`FUSE_NO_OPEN_SUPPORT`) and keeps file pages cached across
//! opens; each READ then opens the source file, reads it and closes it. Per file: LOOKUP,
//! IOCTL, and one READ per read-ahead window.
//!
//! `--read-through` is the floor under a cache's miss: OPEN opens the source file and
//! keeps its descriptor for the handle, each READ is one `pread` of it, nothing is cached
//! or checked. Over a slow source it shows what the FUSE hop in front of it costs a reader
//! whose every read misses (docs/TUNING.md, "The floor under a cold random read").
//!
//! Build: `cargo build --release --example floorfs`.

use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::fs::{self, File};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

mod common;

use clap::Parser;
use common::{attr, block_stop_signals, errno};
use fuser::{
    BackingId, Config, Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation,
    INodeNo, InitFlags, KernelConfig, LockOwner, MountOption, OpenAccMode, OpenFlags, ReplyAttr,
    ReplyData, ReplyDirectory, ReplyEmpty, ReplyEntry, ReplyOpen, Request, Session,
};
use parking_lot::Mutex;

/// How long the kernel may keep names and attributes: the tree does not change.
const TTL: Duration = Duration::from_secs(86_400);

#[derive(Parser, Debug)]
#[command(
    name = "floorfs",
    about = "Read-only FUSE passthrough with the least work per file (a benchmark floor)"
)]
struct Args {
    /// Directory to serve (read once into memory at start).
    source: PathBuf,
    /// Where to mount it (an existing directory).
    mountpoint: PathBuf,
    /// FUSE request threads.
    #[arg(long, value_name = "N", default_value_t = 8)]
    threads: usize,
    /// No OPEN/RELEASE requests (the kernel's zero-message open); reads go through this
    /// process instead of passthrough.
    #[arg(long, conflicts_with = "read_through")]
    no_open: bool,
    /// Reads go through this process from a descriptor opened per handle (no
    /// passthrough, no cache): the FUSE hop in front of the source alone.
    #[arg(long)]
    read_through: bool,
}

struct Node {
    parent: u64,
    name: OsString,
    attr: FileAttr,
    /// Folders: their entries (name -> inode) and an open descriptor (None beyond the
    /// descriptor budget: such a folder's files are opened by path from the root).
    children: HashMap<OsString, u64>,
    dir_fd: Option<OwnedFd>,
}

struct FloorFs {
    root: PathBuf,
    /// Index = inode number - 1.
    nodes: Vec<Node>,
    /// Open inodes: their backing file and how many handles share it.
    open: Mutex<HashMap<u64, (BackingId, u32)>>,
    no_open: bool,
    /// `--read-through`: the source descriptor of each open handle, by handle number.
    handles: Option<Mutex<HashMap<u64, Arc<File>>>>,
    next_handle: AtomicU64,
}

/// Folder descriptors held at most (the tree's files are never held open).
const DIR_FD_BUDGET: usize = 8_000;

fn open_dir(path: &std::path::Path) -> io::Result<OwnedFd> {
    let f = File::options()
        .read(true)
        .custom_flags(libc::O_DIRECTORY | libc::O_PATH)
        .open(path)?;
    Ok(f.into())
}

/// The whole tree, folder by folder (depth first): inode 1 is SOURCE.
fn walk(root: &std::path::Path) -> io::Result<Vec<Node>> {
    let meta = fs::metadata(root)?;
    let mut nodes = vec![Node {
        parent: 1,
        name: OsString::new(),
        attr: attr(1, &meta),
        children: HashMap::new(),
        dir_fd: Some(open_dir(root)?),
    }];
    let mut fds = 1;
    let mut queue = vec![(1u64, root.to_path_buf())];
    while let Some((dir_ino, dir_path)) = queue.pop() {
        let mut entries: Vec<_> = fs::read_dir(&dir_path)?.collect::<Result<_, _>>()?;
        entries.sort_by_key(|e| e.file_name());
        for e in entries {
            let m = fs::symlink_metadata(e.path())?;
            let ino = nodes.len() as u64 + 1;
            let is_dir = m.is_dir();
            let dir_fd = if is_dir && fds < DIR_FD_BUDGET {
                fds += 1;
                Some(open_dir(&e.path())?)
            } else {
                None
            };
            nodes.push(Node {
                parent: dir_ino,
                name: e.file_name(),
                attr: attr(ino, &m),
                children: HashMap::new(),
                dir_fd,
            });
            nodes[dir_ino as usize - 1]
                .children
                .insert(e.file_name(), ino);
            if is_dir {
                queue.push((ino, e.path()));
            }
        }
    }
    Ok(nodes)
}

impl FloorFs {
    fn node(&self, ino: INodeNo) -> Result<&Node, Errno> {
        self.nodes
            .get((ino.0 as usize).wrapping_sub(1))
            .ok_or(Errno::ENOENT)
    }

    /// The source file of `ino`, opened read-only: relative to its folder's descriptor,
    /// or by path from the root for a folder without one.
    fn open_source(&self, ino: u64) -> io::Result<File> {
        let node = &self.nodes[ino as usize - 1];
        let parent = &self.nodes[node.parent as usize - 1];
        if let Some(dir) = &parent.dir_fd {
            let name = std::ffi::CString::new(node.name.as_bytes())?;
            // SAFETY: a valid folder descriptor and a NUL-terminated name.
            let fd = unsafe {
                libc::openat(
                    dir.as_raw_fd(),
                    name.as_ptr(),
                    libc::O_RDONLY | libc::O_CLOEXEC | libc::O_NOFOLLOW,
                )
            };
            if fd < 0 {
                return Err(io::Error::last_os_error());
            }
            // SAFETY: a descriptor we own from here on.
            return Ok(unsafe { File::from_raw_fd(fd) });
        }
        let mut parts = vec![node.name.as_os_str()];
        let mut at = node.parent;
        while at != 1 {
            let n = &self.nodes[at as usize - 1];
            parts.push(n.name.as_os_str());
            at = n.parent;
        }
        let mut path = self.root.clone();
        path.extend(parts.iter().rev());
        File::open(path)
    }
}

impl Filesystem for FloorFs {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> io::Result<()> {
        if self.no_open || self.handles.is_some() {
            return Ok(());
        }
        let granted = config.add_capabilities(InitFlags::FUSE_PASSTHROUGH).is_ok()
            && config.set_max_stack_depth(1).is_ok();
        if !granted {
            return Err(io::Error::other("the kernel refused FUSE passthrough"));
        }
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let found = self
            .node(parent)
            .and_then(|p| p.children.get(name).copied().ok_or(Errno::ENOENT));
        match found {
            Ok(ino) => reply.entry(&TTL, &self.nodes[ino as usize - 1].attr, Generation(0)),
            Err(e) => reply.error(e),
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.node(ino) {
            Ok(n) => reply.attr(&TTL, &n.attr),
            Err(e) => reply.error(e),
        }
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        if self.no_open {
            return reply.error(Errno::ENOSYS);
        }
        if flags.acc_mode() != OpenAccMode::O_RDONLY {
            return reply.error(Errno::EROFS);
        }
        if self.node(ino).map(|n| n.attr.kind) != Ok(FileType::RegularFile) {
            return reply.error(Errno::EINVAL);
        }
        if let Some(handles) = &self.handles {
            return match self.open_source(ino.0) {
                Ok(f) => {
                    let fh = self.next_handle.fetch_add(1, Relaxed);
                    handles.lock().insert(fh, Arc::new(f));
                    reply.opened(FileHandle(fh), FopenFlags::FOPEN_NOFLUSH)
                }
                Err(e) => reply.error(errno(&e)),
            };
        }
        // An inode already open shares its backing file (the kernel wants one per inode).
        if let Some((backing, n)) = self.open.lock().get_mut(&ino.0) {
            *n += 1;
            return reply.opened_passthrough(FileHandle(ino.0), FopenFlags::FOPEN_NOFLUSH, backing);
        }
        // Opened and registered outside the lock, so opens of different files run in
        // parallel; if an open of the same inode got in first, its backing file is used and
        // this one is dropped (closed).
        let backing = match self.open_source(ino.0).and_then(|f| reply.open_backing(&f)) {
            Ok(b) => b,
            Err(e) => return reply.error(errno(&e)),
        };
        let mut open = self.open.lock();
        let (backing, n) = open.entry(ino.0).or_insert((backing, 0));
        *n += 1;
        reply.opened_passthrough(FileHandle(ino.0), FopenFlags::FOPEN_NOFLUSH, backing);
    }

    /// Only with `--no-open` or `--read-through` (passthrough reads never reach this
    /// process).
    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        if self.node(ino).map(|n| n.attr.kind) != Ok(FileType::RegularFile) {
            return reply.error(Errno::EINVAL);
        }
        let mut buf = vec![0u8; size as usize];
        let mut done = 0;
        let file = match &self.handles {
            Some(h) => h
                .lock()
                .get(&fh.0)
                .cloned()
                .ok_or_else(|| io::Error::from_raw_os_error(libc::EBADF)),
            None => self.open_source(ino.0).map(Arc::new),
        };
        let read = file.and_then(|f| {
            while done < buf.len() {
                match f.read_at(&mut buf[done..], offset + done as u64)? {
                    0 => break,
                    n => done += n,
                }
            }
            Ok(())
        });
        match read {
            Ok(()) => reply.data(&buf[..done]),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn release(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        if let Some(handles) = &self.handles {
            handles.lock().remove(&fh.0);
            return reply.ok();
        }
        let mut open = self.open.lock();
        if let Some((_, n)) = open.get_mut(&ino.0) {
            *n -= 1;
            if *n == 0 {
                // Dropping the BackingId closes it at the kernel.
                open.remove(&ino.0);
            }
        }
        reply.ok();
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        match self.node(ino) {
            Ok(n) if n.attr.kind == FileType::Directory => {
                reply.opened(FileHandle(0), FopenFlags::empty())
            }
            Ok(_) => reply.error(Errno::ENOTDIR),
            Err(e) => reply.error(e),
        }
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let node = match self.node(ino) {
            Ok(n) => n,
            Err(e) => return reply.error(e),
        };
        // Offsets: 1 ".", 2 "..", then the entries in inode order (stable for this mount).
        let mut kids: Vec<u64> = node.children.values().copied().collect();
        kids.sort_unstable();
        let dots = [(ino.0, "."), (node.parent, "..")];
        for (i, (child, name)) in dots.iter().enumerate().skip(offset as usize) {
            if reply.add(INodeNo(*child), i as u64 + 1, FileType::Directory, name) {
                return reply.ok();
            }
        }
        let start = (offset as usize).saturating_sub(2);
        for (i, child) in kids.iter().enumerate().skip(start) {
            let c = &self.nodes[*child as usize - 1];
            if reply.add(INodeNo(*child), i as u64 + 3, c.attr.kind, &c.name) {
                break;
            }
        }
        reply.ok();
    }

    fn ioctl(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _flags: fuser::IoctlFlags,
        _cmd: u32,
        _in_data: &[u8],
        _out_size: u32,
        reply: fuser::ReplyIoctl,
    ) {
        reply.error(Errno::ENOTTY)
    }
}

fn run(args: Args) -> Result<(), String> {
    let root = args
        .source
        .canonicalize()
        .map_err(|e| format!("{}: {e}", args.source.display()))?;
    let nodes = walk(&root).map_err(|e| format!("walking {}: {e}", root.display()))?;
    let count = nodes.len();
    let fs = FloorFs {
        root: root.clone(),
        nodes,
        open: Mutex::new(HashMap::new()),
        no_open: args.no_open,
        handles: args.read_through.then(|| Mutex::new(HashMap::new())),
        next_handle: AtomicU64::new(1),
    };

    let signals = block_stop_signals()?;

    let mut config = Config::default();
    config.mount_options = vec![
        MountOption::RO,
        MountOption::FSName(format!("floorfs:{}", root.display())),
        MountOption::Subtype("floorfs".into()),
        MountOption::DefaultPermissions,
        MountOption::NoAtime,
    ];
    config.n_threads = Some(args.threads);
    config.clone_fd = true;
    let mut session = Session::new(fs, &args.mountpoint, &config)
        .map_err(|e| format!("mount {}: {e}", args.mountpoint.display()))?;
    eprintln!(
        "floorfs: {} on {} ({count} entries, {} threads, {})",
        root.display(),
        args.mountpoint.display(),
        args.threads,
        if args.no_open {
            "no open"
        } else {
            "passthrough"
        }
    );
    let mut unmounter = session.unmount_callable();
    let mountpoint = args.mountpoint.clone();
    std::thread::spawn(move || {
        let Ok(sig) = signals.wait() else { return };
        eprintln!("floorfs: {sig}, unmounting");
        if unmounter.unmount().is_err() {
            let _ = nix::mount::umount2(&mountpoint, nix::mount::MntFlags::MNT_DETACH);
            std::process::exit(0);
        }
    });
    session.run().map_err(|e| format!("session: {e}"))
}

fn main() {
    if let Err(e) = run(Args::parse()) {
        eprintln!("floorfs: {e}");
        std::process::exit(1);
    }
}
