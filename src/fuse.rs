//! The fuser adapter: kernel requests in, replies out. It holds no policy: every answer
//! comes from `vfs.rs`; this file translates types, negotiates the kernel's capabilities
//! at init, refuses every write-type operation with EROFS, and answers ioctl, lseek and
//! poll as a local file would (fuser's defaults log a warning per request).

use std::ffi::OsStr;
use std::io;
use std::time::{SystemTime, UNIX_EPOCH};

use fuser::{
    AccessFlags, BackingId, Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags,
    Generation, INodeNo, InitFlags, KernelConfig, LockOwner, OpenAccMode, OpenFlags, ReplyAttr,
    ReplyData, ReplyDirectory, ReplyEmpty, ReplyEntry, ReplyOpen, ReplyStatfs, ReplyXattr, Request,
};
use tracing::{debug, info};

use crate::source::Kind;
use crate::vfs::{Attr, Reply, Vfs};

pub struct BicacheFs {
    vfs: Vfs<BackingId>,
    /// Kernel stack depth to ask for passthrough with (None: passthrough off).
    passthrough_depth: Option<u32>,
}

impl BicacheFs {
    pub fn new(vfs: Vfs<BackingId>, passthrough_depth: Option<u32>) -> BicacheFs {
        BicacheFs {
            vfs,
            passthrough_depth,
        }
    }
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

fn entry(reply: ReplyEntry, r: io::Result<Reply>) {
    match r {
        Ok(r) => reply.entry(&r.ttl, &fuse_attr(&r.attr), Generation(0)),
        Err(e) => reply.error(errno(&e)),
    }
}

fn empty(reply: ReplyEmpty, r: io::Result<()>) {
    match r {
        Ok(()) => reply.ok(),
        Err(e) => reply.error(errno(&e)),
    }
}

fn xattr_reply(reply: ReplyXattr, value: io::Result<Vec<u8>>, size: u32) {
    match value {
        Err(e) => reply.error(errno(&e)),
        Ok(v) if size == 0 => reply.size(v.len() as u32),
        Ok(v) if v.len() > size as usize => reply.error(Errno::ERANGE),
        Ok(v) => reply.data(&v),
    }
}

/// Every write-type operation: EROFS, nothing changes. The mount is also flagged `ro`, so
/// the kernel refuses most of these before they get here.
macro_rules! read_only {
    ($( $name:ident ( $($arg:ident : $ty:ty),* ) -> $reply:ty ; )*) => {
        $(
            fn $name(&self, _req: &Request, $($arg: $ty,)* reply: $reply) {
                $( let _ = $arg; )*
                debug!(concat!("refused ", stringify!($name), ": read-only"));
                reply.error(Errno::EROFS)
            }
        )*
    };
}

impl Filesystem for BicacheFs {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> io::Result<()> {
        let wanted = [
            // POSIX ACLs of the source are enforced by the kernel (with
            // default_permissions it checks them from the ACL xattrs we pass through).
            InitFlags::FUSE_POSIX_ACL,
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
            self.vfs.set_passthrough(granted);
        }
        Ok(())
    }

    fn destroy(&mut self) {
        // Every chunk fetched must reach the SSD tier before the daemon goes.
        self.vfs.shutdown();
        info!("unmounted; write-back queue flushed");
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        entry(reply, self.vfs.lookup(parent.0, name))
    }

    fn forget(&self, _req: &Request, ino: INodeNo, nlookup: u64) {
        self.vfs.forget(ino.0, nlookup);
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.vfs.getattr(ino.0, fh.map(|f| f.0)) {
            Ok(r) => reply.attr(&r.ttl, &fuse_attr(&r.attr)),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        match self.vfs.readlink(ino.0) {
            Ok(target) => reply.data(target.as_os_str().as_encoded_bytes()),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let writes = flags.acc_mode() != OpenAccMode::O_RDONLY
            || flags.0 & (libc::O_TRUNC | libc::O_CREAT) != 0;
        let opened = self
            .vfs
            .open(ino.0, writes, |file| reply.open_backing(file));
        let o = match opened {
            Ok(o) => o,
            Err(e) => return reply.error(errno(&e)),
        };
        // Nothing is ever written, so close needs no FLUSH round trip.
        let mut f = FopenFlags::FOPEN_NOFLUSH;
        if let Some(backing) = &o.passthrough {
            return reply.opened_passthrough(FileHandle(o.fh), f, backing);
        }
        if o.keep_cache {
            f |= FopenFlags::FOPEN_KEEP_CACHE;
        }
        if o.direct_io {
            f = FopenFlags::FOPEN_DIRECT_IO;
        }
        reply.opened(FileHandle(o.fh), f);
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
        // The reply is sent from inside the cache's callback: no copy of the bytes.
        let mut reply = Some(reply);
        let sent = self.vfs.read(fh.0, offset, size, |bytes| {
            if let Some(r) = reply.take() {
                r.data(bytes)
            }
        });
        if let (Err(e), Some(r)) = (sent, reply.take()) {
            r.error(errno(&e));
        }
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        self.vfs.release(fh.0);
        reply.ok();
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        match self.vfs.opendir(ino.0) {
            Ok(fh) => reply.opened(FileHandle(fh), FopenFlags::empty()),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let r = self.vfs.readdir(ino.0, fh.0, offset, |next, item| {
            reply.add(INodeNo(item.ino), next, file_type(item.kind), &item.name)
        });
        match r {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn releasedir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        self.vfs.releasedir(fh.0);
        reply.ok();
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        match self.vfs.statfs() {
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
        xattr_reply(reply, self.vfs.getxattr(ino.0, name), size)
    }

    fn listxattr(&self, _req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        xattr_reply(reply, self.vfs.listxattr(ino.0), size)
    }

    fn access(&self, _req: &Request, _ino: INodeNo, mask: AccessFlags, reply: ReplyEmpty) {
        empty(reply, self.vfs.access(mask.contains(AccessFlags::W_OK)))
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

    /// No ioctl is supported, as on a plain file: ENOTTY, what a local filesystem answers.
    /// Python's open() asks TCGETS (isatty) of every file; fuser's default would answer
    /// ENOSYS and log a warning line per open (400 MB of log per 1.28 M-file epoch).
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

    /// Nothing to sync on a read-only mount (fuser's default logs a warning).
    fn fsyncdir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        reply.ok()
    }

    /// ENOSYS: the kernel then answers poll() itself (always ready), as for a local file,
    /// and stops asking; fuser's default would also log a warning.
    fn poll(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _ph: fuser::PollNotifier,
        _events: fuser::PollEvents,
        _flags: fuser::PollFlags,
        reply: fuser::ReplyPoll,
    ) {
        reply.error(Errno::ENOSYS)
    }

    /// SEEK_DATA/SEEK_HOLE: ENOSYS makes the kernel answer them itself (the file is one
    /// extent of data) from then on; without it fuser logs a warning.
    fn lseek(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _offset: i64,
        _whence: i32,
        reply: fuser::ReplyLseek,
    ) {
        reply.error(Errno::ENOSYS)
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

    read_only! {
        setattr(_ino: INodeNo, _mode: Option<u32>, _uid: Option<u32>, _gid: Option<u32>,
                _size: Option<u64>, _atime: Option<fuser::TimeOrNow>,
                _mtime: Option<fuser::TimeOrNow>, _ctime: Option<SystemTime>,
                _fh: Option<FileHandle>, _crtime: Option<SystemTime>,
                _chgtime: Option<SystemTime>, _bkuptime: Option<SystemTime>,
                _flags: Option<fuser::BsdFileFlags>) -> ReplyAttr;
        mknod(_parent: INodeNo, _name: &OsStr, _mode: u32, _umask: u32, _rdev: u32) -> ReplyEntry;
        mkdir(_parent: INodeNo, _name: &OsStr, _mode: u32, _umask: u32) -> ReplyEntry;
        unlink(_parent: INodeNo, _name: &OsStr) -> ReplyEmpty;
        rmdir(_parent: INodeNo, _name: &OsStr) -> ReplyEmpty;
        symlink(_parent: INodeNo, _link_name: &OsStr, _target: &std::path::Path) -> ReplyEntry;
        rename(_parent: INodeNo, _name: &OsStr, _newparent: INodeNo, _newname: &OsStr,
               _flags: fuser::RenameFlags) -> ReplyEmpty;
        link(_ino: INodeNo, _newparent: INodeNo, _newname: &OsStr) -> ReplyEntry;
        write(_ino: INodeNo, _fh: FileHandle, _offset: u64, _data: &[u8],
              _write_flags: fuser::WriteFlags, _flags: OpenFlags,
              _lock_owner: Option<LockOwner>) -> fuser::ReplyWrite;
        setxattr(_ino: INodeNo, _name: &OsStr, _value: &[u8], _flags: i32, _position: u32) -> ReplyEmpty;
        removexattr(_ino: INodeNo, _name: &OsStr) -> ReplyEmpty;
        create(_parent: INodeNo, _name: &OsStr, _mode: u32, _umask: u32, _flags: i32) -> fuser::ReplyCreate;
        fallocate(_ino: INodeNo, _fh: FileHandle, _offset: u64, _length: u64, _mode: i32) -> ReplyEmpty;
        copy_file_range(_ino_in: INodeNo, _fh_in: FileHandle, _offset_in: u64, _ino_out: INodeNo,
                        _fh_out: FileHandle, _offset_out: u64, _len: u64,
                        _flags: fuser::CopyFileRangeFlags) -> fuser::ReplyWrite;
    }
}
