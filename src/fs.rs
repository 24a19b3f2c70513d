//! The fuser adapter: kernel requests in, replies out. Policy lives elsewhere: the
//! namespace in `tree`, bytes in `cache`. This file only translates and keeps handles.
//!
//! Control files live in `/.bicache/` (stats.json, stats.txt). Lookup by name works, but
//! the root listing omits the directory so dataset walkers never see it.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fuser::{
    AccessFlags, BackingId, Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags,
    Generation, INodeNo, InitFlags, KernelConfig, LockOwner, OpenAccMode, OpenFlags, ReplyAttr,
    ReplyData, ReplyDirectory, ReplyDirectoryPlus, ReplyEmpty, ReplyEntry, ReplyOpen, ReplyStatfs,
    ReplyXattr, Request,
};
use parking_lot::{Mutex, RwLock};
use tracing::{debug, info, warn};

use crate::cache::{CachedFile, ChunkCache, Stream};
use crate::stats::Stats;
use crate::tree::{Attr, DirEntry, Kind, ROOT_INO, Tree};

pub use crate::CONTROL_DIR;
const CONTROL_DIR_INO: u64 = 2;
const STATS_JSON_INO: u64 = 3;
const STATS_TXT_INO: u64 = 4;
const SHARD_TXT_INO: u64 = 5;
const CONTROL_FILES: &[(&str, u64)] = &[
    ("stats.json", STATS_JSON_INO),
    ("stats.txt", STATS_TXT_INO),
    ("shard.txt", SHARD_TXT_INO),
];

enum Handle {
    File {
        file: CachedFile,
        stream: Stream,
    },
    Dir(Arc<Vec<DirEntry>>),
    /// A snapshot taken at open, so a reader sees one consistent document.
    Control(Vec<u8>),
}

/// How the kernel reads one inode while it is open. The kernel insists that all opens of
/// an inode agree: either all through the daemon (page-cached) or all passthrough to one
/// and the same backing file. An open that breaks the rule fails with EIO.
#[derive(Default)]
struct InodeIo {
    /// Opens not yet released. Counted from our reply to the RELEASE request, which comes
    /// after the kernel let go, so this never undercounts the kernel's own count.
    opens: u64,
    /// Set while the inode is open in passthrough; closed when the last open is released.
    backing: Option<Arc<BackingId>>,
}

pub struct BicacheFs {
    tree: Tree,
    cache: Arc<ChunkCache>,
    stats: Arc<Stats>,
    handles: RwLock<HashMap<u64, Arc<Handle>>>,
    next_fh: AtomicU64,
    /// Version last opened per inode: an unchanged file keeps the kernel's page cache.
    opened_versions: Mutex<HashMap<u64, (u64, i128)>>,
    mounted_at: SystemTime,
    uid: u32,
    gid: u32,
    /// This shard's relative paths (for `.bicache/shard.txt`), in plan order.
    shard_paths: Arc<Vec<std::path::PathBuf>>,
    /// `--shard-strict`: opening another shard's file fails with EACCES.
    shard_strict: bool,
    /// Kernel stack depth to ask for passthrough with (None: passthrough off).
    passthrough_depth: Option<u32>,
    io_modes: Mutex<HashMap<u64, InodeIo>>,
}

fn errno(e: &io::Error) -> Errno {
    Errno::from_i32(e.raw_os_error().unwrap_or(libc::EIO))
}

fn file_type(kind: Kind) -> FileType {
    match kind {
        Kind::File => FileType::RegularFile,
        Kind::Dir => FileType::Directory,
        Kind::Symlink => FileType::Symlink,
        Kind::Fifo => FileType::NamedPipe,
        Kind::CharDev => FileType::CharDevice,
        Kind::BlockDev => FileType::BlockDevice,
        Kind::Socket => FileType::Socket,
    }
}

fn fuse_attr(a: &Attr) -> FileAttr {
    FileAttr {
        ino: INodeNo(a.ino),
        size: a.size,
        blocks: a.blocks,
        atime: a.atime,
        mtime: a.mtime,
        ctime: a.ctime,
        crtime: UNIX_EPOCH,
        kind: file_type(a.kind),
        perm: a.perm,
        nlink: a.nlink,
        uid: a.uid,
        gid: a.gid,
        rdev: a.rdev,
        blksize: a.blksize,
        flags: 0,
    }
}

/// Fixed TTL for the control files: their attributes never change.
const CONTROL_TTL: Duration = Duration::from_secs(1);

impl BicacheFs {
    pub fn new(
        tree: Tree,
        cache: Arc<ChunkCache>,
        stats: Arc<Stats>,
        shard_paths: Arc<Vec<std::path::PathBuf>>,
        shard_strict: bool,
        passthrough_depth: Option<u32>,
    ) -> BicacheFs {
        BicacheFs {
            tree,
            cache,
            stats,
            handles: RwLock::new(HashMap::new()),
            next_fh: AtomicU64::new(1),
            opened_versions: Mutex::new(HashMap::new()),
            mounted_at: SystemTime::now(),
            uid: unsafe { libc::geteuid() },
            gid: unsafe { libc::getegid() },
            shard_paths,
            shard_strict,
            passthrough_depth,
            io_modes: Mutex::new(HashMap::new()),
        }
    }

    fn control_attr(&self, ino: u64) -> FileAttr {
        let dir = ino == CONTROL_DIR_INO;
        FileAttr {
            ino: INodeNo(ino),
            size: 0,
            blocks: 0,
            atime: self.mounted_at,
            mtime: self.mounted_at,
            ctime: self.mounted_at,
            crtime: self.mounted_at,
            kind: if dir {
                FileType::Directory
            } else {
                FileType::RegularFile
            },
            perm: if dir { 0o555 } else { 0o444 },
            nlink: if dir { 2 } else { 1 },
            uid: self.uid,
            gid: self.gid,
            rdev: 0,
            blksize: 4096,
            flags: 0,
        }
    }

    fn is_control(ino: u64) -> bool {
        (CONTROL_DIR_INO..=SHARD_TXT_INO).contains(&ino)
    }

    fn add_handle(&self, h: Handle) -> u64 {
        let fh = self.next_fh.fetch_add(1, Relaxed);
        self.handles.write().insert(fh, Arc::new(h));
        fh
    }

    fn handle(&self, fh: FileHandle) -> Option<Arc<Handle>> {
        self.handles.read().get(&fh.0).cloned()
    }

    /// Decides how the kernel reads this open of a regular file and counts the open:
    /// Some(backing) for passthrough, None for reads through the daemon.
    fn backing_for_open(
        &self,
        ino: u64,
        file: &CachedFile,
        reply: &ReplyOpen,
    ) -> Option<Arc<BackingId>> {
        // An inode already open keeps its mode (the kernel's rule); only a first open
        // chooses. The SSD file is checked outside the lock: that may read and hash it.
        // (An inode's entry goes when its last open is released.)
        let first_open = !self.io_modes.lock().contains_key(&ino);
        // Whether passthrough is in use: granted by the kernel at init, dropped for good if
        // registering a backing file fails (not root, unsupported cache filesystem).
        let enabled = self.stats.passthrough_enabled.load(Relaxed) == 1;
        let candidate = if first_open && enabled {
            self.cache.whole_file_on_disk(file)
        } else {
            None
        };
        let mut modes = self.io_modes.lock();
        let io = modes.entry(ino).or_default();
        io.opens += 1;
        if io.opens > 1 {
            // Another open raced ahead or is still open: share its mode. A passthrough open
            // serves the version first opened until every open of the inode is released.
            if io.backing.is_some() {
                self.stats.passthrough_opens.fetch_add(1, Relaxed);
            }
            return io.backing.clone();
        }
        let cache_file = candidate?;
        match reply.open_backing(&cache_file) {
            Ok(id) => {
                let id = Arc::new(id);
                io.backing = Some(id.clone());
                self.stats.passthrough_opens.fetch_add(1, Relaxed);
                Some(id)
            }
            Err(e) => {
                if self.stats.passthrough_enabled.swap(0, Relaxed) == 1 {
                    warn!("FUSE passthrough unavailable ({e}); every read goes through the daemon");
                }
                None
            }
        }
    }

    fn control_snapshot(&self, ino: u64) -> Vec<u8> {
        let chunk = self.cache.chunk_size();
        match ino {
            STATS_JSON_INO => self.stats.to_json(std::process::id(), chunk).into_bytes(),
            SHARD_TXT_INO => {
                let mut out = Vec::new();
                for p in self.shard_paths.iter() {
                    out.extend_from_slice(p.as_os_str().as_encoded_bytes());
                    out.push(b'\n');
                }
                out
            }
            _ => self.stats.to_text(chunk).into_bytes(),
        }
    }

    fn write_refused<T>(&self, what: &str, reply: impl FnOnce(Errno) -> T) -> T {
        debug!("refused {what}: read-only");
        reply(Errno::EROFS)
    }
}

impl Filesystem for BicacheFs {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> io::Result<()> {
        let wanted = [
            InitFlags::FUSE_DO_READDIRPLUS,
            InitFlags::FUSE_READDIRPLUS_AUTO,
            InitFlags::FUSE_PARALLEL_DIROPS,
            InitFlags::FUSE_AUTO_INVAL_DATA,
            InitFlags::FUSE_CACHE_SYMLINKS,
            InitFlags::FUSE_ASYNC_READ,
        ];
        for flag in wanted {
            if config.add_capabilities(flag).is_err() {
                info!("kernel lacks FUSE capability {flag:?}");
            }
        }
        // Let the kernel read ahead as far as it likes and keep many reads in flight.
        let _ = config
            .set_max_readahead(1 << 20)
            .or_else(|max| config.set_max_readahead(max));
        let _ = config.set_max_background(64);
        let _ = config.set_congestion_threshold(48);
        if let Some(depth) = self.passthrough_depth {
            let granted = config.add_capabilities(InitFlags::FUSE_PASSTHROUGH).is_ok()
                && config.set_max_stack_depth(depth).is_ok();
            if !granted {
                info!("kernel lacks FUSE passthrough; every read goes through the daemon");
            }
            self.stats
                .passthrough_enabled
                .store(granted as u64, Relaxed);
        }
        Ok(())
    }

    fn destroy(&mut self) {
        // Every chunk fetched must reach the SSD tier before the daemon goes.
        self.cache.shutdown();
        info!("unmounted; write-back queue flushed");
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        if parent.0 == ROOT_INO && name == CONTROL_DIR {
            return reply.entry(
                &CONTROL_TTL,
                &self.control_attr(CONTROL_DIR_INO),
                Generation(0),
            );
        }
        if parent.0 == CONTROL_DIR_INO {
            return match CONTROL_FILES.iter().find(|(n, _)| name == *n) {
                Some((_, ino)) => {
                    reply.entry(&CONTROL_TTL, &self.control_attr(*ino), Generation(0))
                }
                None => reply.error(Errno::ENOENT),
            };
        }
        match self.tree.lookup(parent.0, name) {
            Ok(attr) => reply.entry(&self.tree.kernel_ttl(), &fuse_attr(&attr), Generation(0)),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        if Self::is_control(ino.0) {
            return reply.attr(&CONTROL_TTL, &self.control_attr(ino.0));
        }
        match self.tree.getattr(ino.0) {
            Ok(attr) => reply.attr(&self.tree.kernel_ttl(), &fuse_attr(&attr)),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        match self.tree.read_link(ino.0) {
            Ok(target) => reply.data(target.as_os_str().as_encoded_bytes()),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        if flags.acc_mode() != OpenAccMode::O_RDONLY
            || flags.0 & (libc::O_TRUNC | libc::O_CREAT) != 0
        {
            return self.write_refused("open for writing", |e| reply.error(e));
        }
        if Self::is_control(ino.0) {
            if ino.0 == CONTROL_DIR_INO {
                return reply.error(Errno::EISDIR);
            }
            let fh = self.add_handle(Handle::Control(self.control_snapshot(ino.0)));
            // Direct I/O: the document's length is only known once it is generated.
            return reply.opened(FileHandle(fh), FopenFlags::FOPEN_DIRECT_IO);
        }
        let (version, _attr) = match self.tree.file_version(ino.0) {
            Ok(v) => v,
            Err(e) => return reply.error(errno(&e)),
        };
        if self.tree.in_shard(ino.0) == Some(false) {
            self.stats.out_of_shard_opens.fetch_add(1, Relaxed);
            if self.shard_strict {
                return reply.error(Errno::EACCES);
            }
        }
        let id = (version.size, version.mtime_ns);
        let unchanged = self.opened_versions.lock().insert(ino.0, id) == Some(id);
        let file = self.cache.file(version);
        let backing = self.backing_for_open(ino.0, &file, &reply);
        let fh = self.add_handle(Handle::File {
            file,
            stream: Stream::default(),
        });
        // Nothing is ever written, so close needs no FLUSH round trip.
        if let Some(backing) = backing {
            return reply.opened_passthrough(FileHandle(fh), FopenFlags::FOPEN_NOFLUSH, &backing);
        }
        // The kernel's page cache is the fastest tier: keep it while the file is unchanged.
        let flags = if unchanged {
            FopenFlags::FOPEN_KEEP_CACHE | FopenFlags::FOPEN_NOFLUSH
        } else {
            FopenFlags::FOPEN_NOFLUSH
        };
        reply.opened(FileHandle(fh), flags);
    }

    fn read(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let Some(handle) = self.handle(fh) else {
            return reply.error(Errno::EBADF);
        };
        match &*handle {
            Handle::File { file, stream } => {
                // The reply is sent from inside the cache's callback: no copy of the bytes.
                let mut reply = Some(reply);
                let sent = self.cache.read(file, offset, size, stream, |bytes| {
                    if let Some(r) = reply.take() {
                        r.data(bytes)
                    }
                });
                if let (Err(e), Some(r)) = (sent, reply.take()) {
                    r.error(errno(&e));
                }
            }
            Handle::Control(doc) => {
                let start = (offset as usize).min(doc.len());
                let end = (start + size as usize).min(doc.len());
                reply.data(&doc[start..end]);
            }
            Handle::Dir(_) => reply.error(Errno::EISDIR),
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
        let removed = self.handles.write().remove(&fh.0);
        if let Some(h) = removed
            && matches!(*h, Handle::File { .. })
        {
            let mut modes = self.io_modes.lock();
            if let Some(io) = modes.get_mut(&ino.0) {
                io.opens = io.opens.saturating_sub(1);
                if io.opens == 0 {
                    // Drops the last reference: the backing file is unregistered.
                    modes.remove(&ino.0);
                }
            }
        }
        reply.ok();
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        let listing = if ino.0 == CONTROL_DIR_INO {
            Arc::new(
                CONTROL_FILES
                    .iter()
                    .map(|(n, i)| DirEntry {
                        name: n.into(),
                        ino: *i,
                        kind: Kind::File,
                    })
                    .collect(),
            )
        } else {
            match self.tree.list_visible(ino.0) {
                Ok(l) => l,
                Err(e) => return reply.error(errno(&e)),
            }
        };
        let fh = self.add_handle(Handle::Dir(listing));
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
        let Some(handle) = self.handle(fh) else {
            return reply.error(Errno::EBADF);
        };
        let Handle::Dir(entries) = &*handle else {
            return reply.error(Errno::ENOTDIR);
        };
        // Offsets: 1 = ".", 2 = "..", 3.. = entries; each names the next entry to send.
        let mut next = offset;
        while next < 2 {
            let (name, ino) = if next == 0 {
                (".", ino.0)
            } else {
                ("..", ino.0)
            };
            if reply.add(INodeNo(ino), next + 1, FileType::Directory, name) {
                return reply.ok();
            }
            next += 1;
        }
        for (i, e) in entries.iter().enumerate().skip((next - 2) as usize) {
            if reply.add(INodeNo(e.ino), i as u64 + 3, file_type(e.kind), &e.name) {
                break;
            }
        }
        reply.ok();
    }

    fn readdirplus(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectoryPlus,
    ) {
        let Some(handle) = self.handle(fh) else {
            return reply.error(Errno::EBADF);
        };
        let Handle::Dir(entries) = &*handle else {
            return reply.error(Errno::ENOTDIR);
        };
        let ttl = self.tree.kernel_ttl();
        let mut next = offset;
        while next < 2 {
            let attr = if Self::is_control(ino.0) {
                Ok(self.control_attr(ino.0))
            } else {
                self.tree.getattr(ino.0).map(|a| fuse_attr(&a))
            };
            let attr = match attr {
                Ok(a) => a,
                Err(e) => return reply.error(errno(&e)),
            };
            let name = if next == 0 { "." } else { ".." };
            // "." and ".." carry no lookup reference: zero TTL keeps the kernel from caching.
            if reply.add(
                INodeNo(ino.0),
                next + 1,
                name,
                &Duration::ZERO,
                &attr,
                Generation(0),
            ) {
                return reply.ok();
            }
            next += 1;
        }
        for (i, e) in entries.iter().enumerate().skip((next - 2) as usize) {
            let attr = if Self::is_control(e.ino) {
                self.control_attr(e.ino)
            } else {
                match self.tree.cached_attr(e.ino) {
                    Some(a) => fuse_attr(&a),
                    None => match self.tree.getattr(e.ino) {
                        Ok(a) => fuse_attr(&a),
                        Err(_) => continue,
                    },
                }
            };
            let ttl = if Self::is_control(e.ino) {
                CONTROL_TTL
            } else {
                ttl
            };
            if reply.add(
                INodeNo(e.ino),
                i as u64 + 3,
                &e.name,
                &ttl,
                &attr,
                Generation(0),
            ) {
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
        self.handles.write().remove(&fh.0);
        reply.ok();
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        match self.tree.statfs() {
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
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn getxattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        if Self::is_control(ino.0) {
            return reply.error(Errno::NO_XATTR);
        }
        match self.tree.get_xattr(ino.0, name) {
            Ok(v) => xattr_reply(reply, &v, size),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn listxattr(&self, _req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        if Self::is_control(ino.0) {
            return xattr_reply(reply, &[], size);
        }
        match self.tree.list_xattr(ino.0) {
            Ok(v) => xattr_reply(reply, &v, size),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn access(&self, _req: &Request, _ino: INodeNo, mask: AccessFlags, reply: ReplyEmpty) {
        // Permission bits are checked by the kernel (default_permissions); only writing
        // needs an answer here.
        if mask.contains(AccessFlags::W_OK) {
            reply.error(Errno::EROFS)
        } else {
            reply.ok()
        }
    }

    // Every write-type operation: EROFS, nothing changes. The mount is also flagged `ro`,
    // so the kernel refuses most of these before they get here.
    fn setattr(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _mode: Option<u32>,
        _uid: Option<u32>,
        _gid: Option<u32>,
        _size: Option<u64>,
        _atime: Option<fuser::TimeOrNow>,
        _mtime: Option<fuser::TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        self.write_refused("setattr", |e| reply.error(e))
    }

    fn mknod(
        &self,
        _req: &Request,
        _parent: INodeNo,
        _name: &OsStr,
        _mode: u32,
        _umask: u32,
        _rdev: u32,
        reply: ReplyEntry,
    ) {
        self.write_refused("mknod", |e| reply.error(e))
    }

    fn mkdir(
        &self,
        _req: &Request,
        _parent: INodeNo,
        _name: &OsStr,
        _mode: u32,
        _umask: u32,
        reply: ReplyEntry,
    ) {
        self.write_refused("mkdir", |e| reply.error(e))
    }

    fn unlink(&self, _req: &Request, _parent: INodeNo, _name: &OsStr, reply: ReplyEmpty) {
        self.write_refused("unlink", |e| reply.error(e))
    }

    fn rmdir(&self, _req: &Request, _parent: INodeNo, _name: &OsStr, reply: ReplyEmpty) {
        self.write_refused("rmdir", |e| reply.error(e))
    }

    fn symlink(
        &self,
        _req: &Request,
        _parent: INodeNo,
        _link_name: &OsStr,
        _target: &std::path::Path,
        reply: ReplyEntry,
    ) {
        self.write_refused("symlink", |e| reply.error(e))
    }

    fn rename(
        &self,
        _req: &Request,
        _parent: INodeNo,
        _name: &OsStr,
        _newparent: INodeNo,
        _newname: &OsStr,
        _flags: fuser::RenameFlags,
        reply: ReplyEmpty,
    ) {
        self.write_refused("rename", |e| reply.error(e))
    }

    fn link(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _newparent: INodeNo,
        _newname: &OsStr,
        reply: ReplyEntry,
    ) {
        self.write_refused("link", |e| reply.error(e))
    }

    fn write(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _offset: u64,
        _data: &[u8],
        _write_flags: fuser::WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: fuser::ReplyWrite,
    ) {
        self.write_refused("write", |e| reply.error(e))
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        reply.ok()
    }

    fn fsync(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        reply.ok()
    }

    fn setxattr(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _name: &OsStr,
        _value: &[u8],
        _flags: i32,
        _position: u32,
        reply: ReplyEmpty,
    ) {
        self.write_refused("setxattr", |e| reply.error(e))
    }

    fn removexattr(&self, _req: &Request, _ino: INodeNo, _name: &OsStr, reply: ReplyEmpty) {
        self.write_refused("removexattr", |e| reply.error(e))
    }

    fn create(
        &self,
        _req: &Request,
        _parent: INodeNo,
        _name: &OsStr,
        _mode: u32,
        _umask: u32,
        _flags: i32,
        reply: fuser::ReplyCreate,
    ) {
        self.write_refused("create", |e| reply.error(e))
    }

    fn fallocate(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _offset: u64,
        _length: u64,
        _mode: i32,
        reply: ReplyEmpty,
    ) {
        self.write_refused("fallocate", |e| reply.error(e))
    }

    fn copy_file_range(
        &self,
        _req: &Request,
        _ino_in: INodeNo,
        _fh_in: FileHandle,
        _offset_in: u64,
        _ino_out: INodeNo,
        _fh_out: FileHandle,
        _offset_out: u64,
        _len: u64,
        _flags: fuser::CopyFileRangeFlags,
        reply: fuser::ReplyWrite,
    ) {
        self.write_refused("copy_file_range", |e| reply.error(e))
    }
}

fn xattr_reply(reply: ReplyXattr, value: &[u8], size: u32) {
    if size == 0 {
        reply.size(value.len() as u32)
    } else if value.len() > size as usize {
        reply.error(Errno::ERANGE)
    } else {
        reply.data(value)
    }
}
