//! The only code that touches SOURCE: stat, list, readlink, xattrs, statfs and reads.
//!
//! Paths are relative to the source root ("" is the root) and resolved beneath a
//! descriptor of it (`beneath.rs`): no symlink is followed in any component. Every call
//! but `statfs` (answered for `df` on the mount) is counted in the stats (`source.meta_ops`, `source.reads`, `source.bytes`), so the
//! counters see everything bicache asks of the shared filesystem.
//!
//! Open descriptors are kept in a small LRU (never one per file of the dataset: the
//! process has a hard fd limit). Bytes read through a descriptor are handed out only once
//! an `fstat` made after the read shows the version the reader opened (size, mtime,
//! ctime, inode): the first read of a descriptor proves that it opened that version, and
//! each later read that nothing changed it meanwhile. So every byte handed out belongs to
//! that version, or the read fails.

pub mod walk;

use std::ffi::{CString, OsStr, OsString};
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::atomic::Ordering::{Acquire, Relaxed, Release};
use std::sync::{Arc, OnceLock};

use lru::LruCache;
use nix::fcntl::{AtFlags, OFlag};
use parking_lot::Mutex;

use crate::beneath::{self, Beneath};
use crate::buf::Buf;
use crate::stats::Stats;

thread_local! {
    /// Set on threads whose source operations no reader waits for (revalidation,
    /// prefetch): they are counted apart, as `source.meta_ops_background`.
    static BACKGROUND: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Marks the calling thread as doing background work (see `BACKGROUND`).
pub fn mark_background_thread() {
    BACKGROUND.set(true);
}

/// How many source files stay open between reads (bounded, far below the fd limit).
const OPEN_FILES: usize = 256;
/// How many files just stat-ed keep the O_PATH descriptor of their lookup, for a read
/// that follows (bounded like `OPEN_FILES`).
pub const LOOKED_UP: usize = 256;

/// What kind of entry a path is at the source.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    File,
    Dir,
    Symlink,
    Fifo,
    CharDev,
    BlockDev,
    Socket,
}

impl Kind {
    fn from_mode(mode: u32) -> Kind {
        match mode & libc::S_IFMT {
            libc::S_IFDIR => Kind::Dir,
            libc::S_IFLNK => Kind::Symlink,
            libc::S_IFIFO => Kind::Fifo,
            libc::S_IFCHR => Kind::CharDev,
            libc::S_IFBLK => Kind::BlockDev,
            libc::S_IFSOCK => Kind::Socket,
            _ => Kind::File,
        }
    }

    /// From a directory entry's d_type; None when the filesystem does not say.
    fn from_dtype(t: nix::dir::Type) -> Kind {
        use nix::dir::Type;
        match t {
            Type::Directory => Kind::Dir,
            Type::Symlink => Kind::Symlink,
            Type::Fifo => Kind::Fifo,
            Type::CharacterDevice => Kind::CharDev,
            Type::BlockDevice => Kind::BlockDev,
            Type::Socket => Kind::Socket,
            Type::File => Kind::File,
        }
    }
}

/// An entry's attributes as the source reported them (one `lstat`).
#[derive(Clone, Copy)]
pub struct Stat(libc::stat);

impl std::fmt::Debug for Stat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Stat")
            .field("kind", &self.kind())
            .field("size", &self.size())
            .field("ino", &self.ino())
            .field("mtime_ns", &self.mtime_ns())
            .finish()
    }
}

fn ns(secs: i64, nsecs: i64) -> i128 {
    secs as i128 * 1_000_000_000 + nsecs as i128
}

impl Stat {
    pub fn kind(&self) -> Kind {
        Kind::from_mode(self.0.st_mode)
    }
    pub fn is_file(&self) -> bool {
        self.kind() == Kind::File
    }
    pub fn size(&self) -> u64 {
        self.0.st_size as u64
    }
    pub fn blocks(&self) -> u64 {
        self.0.st_blocks as u64
    }
    /// Permission bits (including setuid, setgid, sticky).
    pub fn perm(&self) -> u16 {
        (self.0.st_mode & 0o7777) as u16
    }
    pub fn nlink(&self) -> u32 {
        self.0.st_nlink as u32
    }
    pub fn uid(&self) -> u32 {
        self.0.st_uid
    }
    pub fn gid(&self) -> u32 {
        self.0.st_gid
    }
    pub fn rdev(&self) -> u32 {
        self.0.st_rdev as u32
    }
    pub fn blksize(&self) -> u32 {
        self.0.st_blksize as u32
    }
    pub fn ino(&self) -> u64 {
        self.0.st_ino
    }
    pub fn dev(&self) -> u64 {
        self.0.st_dev
    }
    /// (seconds, nanoseconds) of the last access, modification and status change.
    pub fn atime(&self) -> (i64, u32) {
        (self.0.st_atime, self.0.st_atime_nsec as u32)
    }
    pub fn mtime(&self) -> (i64, u32) {
        (self.0.st_mtime, self.0.st_mtime_nsec as u32)
    }
    pub fn ctime(&self) -> (i64, u32) {
        (self.0.st_ctime, self.0.st_ctime_nsec as u32)
    }
    pub fn mtime_ns(&self) -> i128 {
        ns(self.0.st_mtime, self.0.st_mtime_nsec)
    }
    pub fn ctime_ns(&self) -> i128 {
        ns(self.0.st_ctime, self.0.st_ctime_nsec)
    }
}

/// One version of one regular file: what a reader's open pins, and what the cache keys
/// chunks by. A file replaced or rewritten at the source (rsync's rename, `cp` over it,
/// `tar x`) gets another ctime, and another inode when it is a new file, so its bytes are
/// never taken for this version's.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct FileVersion {
    pub path: PathBuf,
    pub size: u64,
    pub mtime_ns: i128,
    pub ctime_ns: i128,
    /// The source's inode number: checked while mounted, but not part of the cache key
    /// (some sources, FUSE ones among them, renumber inodes at every mount).
    pub ino: u64,
}

impl FileVersion {
    pub fn of(path: PathBuf, st: &Stat) -> FileVersion {
        FileVersion {
            path,
            size: st.size(),
            mtime_ns: st.mtime_ns(),
            ctime_ns: st.ctime_ns(),
            ino: st.ino(),
        }
    }

    /// A file known only by its path and size (a sized manifest's line), not stat-ed: no
    /// version a read could be checked against. Used for the partition only, which needs
    /// no more; what a mount serves or pins is stat-ed first (`walk::stat_listed`).
    pub fn listed(path: PathBuf, size: u64) -> FileVersion {
        FileVersion {
            path,
            size,
            mtime_ns: 0,
            ctime_ns: 0,
            ino: 0,
        }
    }

    /// Whether the bytes of the file `st` describes (an open descriptor's fstat) are still
    /// this version's: same inode, size and mtime, and the same ctime unless the file is
    /// no longer linked. A rewrite in place that restores the mtime (`cp -p` onto the file,
    /// `rsync --inplace`) changes the ctime; renaming over the file or deleting it changes
    /// the ctime too, but only by unlinking it, and an open descriptor keeps reading its
    /// bytes, so that replacement does not fail a reader of the old version.
    pub fn same_data(&self, st: &Stat) -> bool {
        st.is_file()
            && st.size() == self.size
            && st.mtime_ns() == self.mtime_ns
            && st.ino() == self.ino
            && (st.ctime_ns() == self.ctime_ns || st.nlink() == 0)
    }

    /// Whether `st` describes this very version.
    pub fn matches(&self, st: &Stat) -> bool {
        st.is_file()
            && st.size() == self.size
            && st.mtime_ns() == self.mtime_ns
            && st.ctime_ns() == self.ctime_ns
            && st.ino() == self.ino
    }
}

/// Sorts files by the bytes of their paths: the order every node agrees on.
pub fn sort_by_path(files: &mut [FileVersion]) {
    files.sort_unstable_by(|a, b| {
        a.path
            .as_os_str()
            .as_bytes()
            .cmp(b.path.as_os_str().as_bytes())
    });
}

/// A directory entry as the source lists it: name, type and inode number, no stat.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirEntry {
    pub name: OsString,
    /// None when the filesystem does not report types (d_type unknown): stat to know.
    pub kind: Option<Kind>,
    pub ino: u64,
}

/// An open source directory: its entries, and stats of names in it without resolving
/// the directory's path again.
pub struct SourceDir<'a> {
    source: &'a Source,
    fd: OwnedFd,
}

impl SourceDir<'_> {
    /// The entries (without "." and ".."), unsorted, as the source returns them.
    pub fn entries(&self) -> io::Result<Vec<DirEntry>> {
        // A duplicate shares the directory offset: start from the top each time.
        let dup = self.fd.try_clone()?;
        nix::unistd::lseek(&dup, 0, nix::unistd::Whence::SeekSet)?;
        let mut dir = nix::dir::Dir::from_fd(dup)?;
        let mut out = Vec::new();
        for e in dir.iter() {
            let e = e?;
            let name = e.file_name().to_bytes();
            if name == b"." || name == b".." {
                continue;
            }
            out.push(DirEntry {
                name: OsString::from_vec(name.to_vec()),
                kind: e.file_type().map(Kind::from_dtype),
                ino: e.ino(),
            });
        }
        Ok(out)
    }

    /// lstat of one entry of this directory.
    pub fn stat(&self, name: &OsStr) -> io::Result<Stat> {
        self.source.count_meta(1);
        fstatat(&self.fd, name)
    }
}

/// An open source file: opened once however many threads want it at the same moment.
/// A failed open is kept as its errno (io::Error is not Clone) and not reused.
type OpenSlot = Arc<OnceLock<Result<OpenFile, i32>>>;

/// A source descriptor, and whether it is known to have opened the version it is kept
/// for: from the start when it reopens the inode a lookup stat-ed as that version, else
/// once the `fstat` after its first read shows the whole version. That one call also
/// shows that nothing changed the file during the read, so a path-opened file read whole
/// costs one metadata request less than with a check before the read too.
struct OpenFile {
    file: File,
    proven: AtomicBool,
}

pub struct Source {
    root_path: PathBuf,
    beneath: Beneath,
    open_files: Mutex<LruCache<FileVersion, OpenSlot>>,
    /// O_PATH descriptors of regular files `lstat` resolved, by the version it saw. A
    /// reader's open of such a file reopens the descriptor instead of resolving the path
    /// again: over a network filesystem that saves a lookup per path component, and the
    /// inode is that version's by construction (TUNING.md: 9 -> 6 requests per cold file
    /// read over the benchmark's slow source).
    looked_up: Mutex<LruCache<FileVersion, OwnedFd>>,
    stats: Arc<Stats>,
    /// `--immutable`: the source promises not to change; reads skip the check after each
    /// read, except the first read of a path opened (which proves what it opened).
    immutable: bool,
}

fn errno(code: i32) -> io::Error {
    io::Error::from_raw_os_error(code)
}

fn fstat(fd: impl AsFd) -> io::Result<Stat> {
    Ok(Stat(nix::sys::stat::fstat(fd)?))
}

fn fstatat(dir: impl AsFd, name: &OsStr) -> io::Result<Stat> {
    Ok(Stat(nix::sys::stat::fstatat(
        dir,
        name,
        AtFlags::AT_SYMLINK_NOFOLLOW,
    )?))
}

impl Source {
    /// Opens SOURCE (a directory; the user may name it through a symlink).
    pub fn open(root: &Path, stats: Arc<Stats>, immutable: bool) -> io::Result<Source> {
        let beneath = Beneath::open(root)?;
        let st = fstat(beneath.root())?;
        if st.kind() != Kind::Dir {
            return Err(errno(libc::ENOTDIR));
        }
        Ok(Source {
            root_path: root.to_path_buf(),
            beneath,
            open_files: Mutex::new(LruCache::new(OPEN_FILES.try_into().unwrap())),
            looked_up: Mutex::new(LruCache::new(LOOKED_UP.try_into().unwrap())),
            stats,
            immutable,
        })
    }

    /// Opens SOURCE for a command, with one line naming the path if that fails.
    pub fn open_dataset(root: &Path, stats: Arc<Stats>, immutable: bool) -> Result<Source, String> {
        Source::open(root, stats, immutable).map_err(|e| match e.raw_os_error() {
            Some(libc::ENOENT) => format!("source '{}' does not exist", root.display()),
            Some(libc::ENOTDIR) => format!("source '{}' is not a directory", root.display()),
            _ => format!("cannot access source '{}': {e}", root.display()),
        })
    }

    /// The source root as the user gave it (for messages).
    pub fn root_path(&self) -> &Path {
        &self.root_path
    }

    fn count_meta(&self, n: u64) {
        self.stats.source_meta_ops.fetch_add(n, Relaxed);
        if BACKGROUND.get() {
            self.stats.source_meta_ops_background.fetch_add(n, Relaxed);
        }
    }

    /// lstat of `rel` ("" is the root).
    pub fn lstat(&self, rel: &Path) -> io::Result<Stat> {
        self.count_meta(1);
        if rel.as_os_str().is_empty() {
            return fstat(self.beneath.root());
        }
        // O_PATH opens a final symlink itself, as lstat would, and costs the source what
        // resolving the parent and a stat at it did.
        let fd = self.beneath.open_at(rel, OFlag::O_PATH)?;
        let st = fstat(&fd)?;
        if st.is_file() {
            let version = FileVersion::of(rel.to_path_buf(), &st);
            self.looked_up.lock().put(version, fd);
        }
        Ok(st)
    }

    /// Opens a directory for listing (one metadata operation).
    pub fn open_dir(&self, rel: &Path) -> io::Result<SourceDir<'_>> {
        self.count_meta(1);
        let fd = self.beneath.open_at(
            rel,
            OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NONBLOCK,
        )?;
        Ok(SourceDir { source: self, fd })
    }

    /// Opens a directory to stat names in (`SourceDir::stat`), not to list: `O_PATH`, so
    /// it needs only the search permission a path's lstat needs (one metadata operation).
    pub fn dir_for_stats(&self, rel: &Path) -> io::Result<SourceDir<'_>> {
        self.count_meta(1);
        let fd = self
            .beneath
            .open_at(rel, OFlag::O_PATH | OFlag::O_DIRECTORY)?;
        Ok(SourceDir { source: self, fd })
    }

    pub fn read_link(&self, rel: &Path) -> io::Result<PathBuf> {
        self.count_meta(1);
        let fd = self.beneath.open_at(rel, OFlag::O_PATH)?;
        let target = nix::fcntl::readlinkat(&fd, c"")?;
        Ok(PathBuf::from(target))
    }

    pub fn statfs(&self) -> io::Result<nix::sys::statvfs::Statvfs> {
        Ok(nix::sys::statvfs::fstatvfs(self.beneath.root())?)
    }

    /// The value of one extended attribute of `rel` (not following a final symlink).
    pub fn get_xattr(&self, rel: &Path, name: &OsStr) -> io::Result<Vec<u8>> {
        self.count_meta(1);
        let fd = self.beneath.open_at(rel, OFlag::O_PATH)?;
        let path = proc_path(&fd)?;
        let name = CString::new(name.as_bytes()).map_err(|_| errno(libc::EINVAL))?;
        xattr_call(|buf, len| unsafe {
            libc::getxattr(path.as_ptr(), name.as_ptr(), buf as *mut libc::c_void, len)
        })
    }

    /// The names of `rel`'s extended attributes, NUL-separated.
    pub fn list_xattr(&self, rel: &Path) -> io::Result<Vec<u8>> {
        self.count_meta(1);
        let fd = self.beneath.open_at(rel, OFlag::O_PATH)?;
        let path = proc_path(&fd)?;
        xattr_call(|buf, len| unsafe { libc::listxattr(path.as_ptr(), buf, len) })
    }

    /// Reads `len` bytes at `offset` of `file` (fewer only where the version ends), then
    /// tells the kernel to drop those source pages: the cache holds them now, twice would
    /// waste RAM. ESTALE when the source no longer holds this version, or changed during
    /// the read: no byte of another version is ever returned.
    pub fn read_chunk(&self, file: &FileVersion, offset: u64, len: usize) -> io::Result<Buf> {
        let slot = self.open_file(file);
        let handle = match slot.get() {
            Some(Ok(h)) => h,
            Some(Err(code)) => {
                // Don't remember failures: the next read asks the source again.
                self.forget(file, &slot);
                return Err(errno(*code));
            }
            None => unreachable!("open_file() initialises the slot"),
        };
        let want = (file.size.saturating_sub(offset) as usize).min(len);
        let mut data = Buf::for_read(want);
        let mut done = 0;
        while done < want {
            match handle.file.read_at(&mut data[done..], offset + done as u64) {
                Ok(0) => break,
                Ok(n) => done += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    // A descriptor that went bad (e.g. a stale NFS handle) must not be
                    // reused. One never proven may have opened something else (a FIFO
                    // or a folder swapped in): that is the version gone, not an I/O error.
                    self.forget(file, &slot);
                    if !handle.proven.load(Acquire) && !self.holds_version(handle, file) {
                        return Err(errno(libc::ESTALE));
                    }
                    return Err(e);
                }
            }
        }
        self.stats.source_reads.fetch_add(1, Relaxed);
        self.stats.source_bytes.fetch_add(done as u64, Relaxed);
        // Shorter than the version says, or changed while we read: the bytes may mix
        // versions. (A write updates mtime before it copies data, so a write that
        // overlapped this read shows in a check made after it.)
        let check = !self.immutable || !handle.proven.load(Acquire);
        if done < want || (check && !self.holds_version(handle, file)) {
            self.forget(file, &slot);
            return Err(errno(libc::ESTALE));
        }
        unsafe {
            libc::posix_fadvise(
                handle.file.as_raw_fd(),
                offset as libc::off_t,
                len as libc::off_t,
                libc::POSIX_FADV_DONTNEED,
            );
        }
        data.truncate(done);
        Ok(data)
    }

    /// Whether `handle` reads `file` as it is now (one `fstat`). Until some check has
    /// proven the descriptor opened that very version, all of it must match; after, a
    /// changed ctime is allowed once the file is unlinked (`same_data`), as rsync's rename
    /// over it does while its bytes live on in the descriptor.
    fn holds_version(&self, handle: &OpenFile, file: &FileVersion) -> bool {
        self.count_meta(1);
        let Ok(st) = fstat(&handle.file) else {
            return false;
        };
        let ok = file.same_data(&st) && (handle.proven.load(Acquire) || file.matches(&st));
        if ok {
            handle.proven.store(true, Release);
        }
        ok
    }

    fn forget(&self, file: &FileVersion, slot: &OpenSlot) {
        let mut open = self.open_files.lock();
        if open.peek(file).is_some_and(|s| Arc::ptr_eq(s, slot)) {
            open.pop(file);
        }
    }

    /// The open descriptor for a file version, opening it (once) if needed. It is kept
    /// only if the file opened is that version: a descriptor pins its inode, so a file
    /// replaced by rename afterwards is still read as the version it was.
    fn open_file(&self, file: &FileVersion) -> OpenSlot {
        let slot = {
            let mut open = self.open_files.lock();
            match open.get(file) {
                Some(s) => s.clone(),
                None => {
                    let s: OpenSlot = Arc::new(OnceLock::new());
                    open.put(file.clone(), s.clone());
                    s
                }
            }
        };
        slot.get_or_init(|| {
            self.count_meta(1);
            // O_NONBLOCK: a FIFO swapped in must not hang a FUSE thread in open() or
            // read() (which comes before the check that it is the file: `holds_version`).
            let flags = OFlag::O_RDONLY | OFlag::O_NONBLOCK | OFlag::O_NOCTTY;
            // The file the lookup resolved, if it is still at hand: the same inode,
            // without resolving its path again. If that reopen fails (no /proc, a stale
            // network handle), the path is resolved as if there were none.
            let looked_up = self.looked_up.lock().pop(file);
            let reopened = looked_up.and_then(|fd| beneath::reopen(fd.as_fd(), flags).ok());
            let proven = reopened.is_some();
            reopened
                .map_or_else(|| self.beneath.open_at(&file.path, flags), Ok)
                .map(|fd| OpenFile {
                    file: File::from(fd),
                    proven: AtomicBool::new(proven),
                })
                .map_err(|e| e.raw_os_error().unwrap_or(libc::EIO))
        });
        slot
    }
}

/// `/proc/self/fd/N` of an O_PATH descriptor, as a C string for the xattr calls.
fn proc_path(fd: &OwnedFd) -> io::Result<CString> {
    CString::new(beneath::proc_fd_path(fd.as_fd())).map_err(|_| errno(libc::EINVAL))
}

/// Runs a size-then-fetch xattr syscall pair, retrying if the value grew in between.
fn xattr_call(call: impl Fn(*mut libc::c_char, usize) -> isize) -> io::Result<Vec<u8>> {
    for _ in 0..4 {
        let len = call(std::ptr::null_mut(), 0);
        if len < 0 {
            return Err(io::Error::last_os_error());
        }
        let mut buf = vec![0u8; len as usize];
        let got = call(buf.as_mut_ptr() as *mut libc::c_char, buf.len());
        if got >= 0 {
            buf.truncate(got as usize);
            return Ok(buf);
        }
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::ERANGE) {
            return Err(e);
        }
    }
    Err(errno(libc::ERANGE))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    fn source(root: &Path) -> Source {
        Source::open(root, Arc::new(Stats::default()), false).unwrap()
    }

    #[test]
    fn reads_only_the_version_asked_for() {
        let t = tempfile::tempdir().unwrap();
        fs::write(t.path().join("f"), b"version one").unwrap();
        let src = source(t.path());
        let st = src.lstat(Path::new("f")).unwrap();
        let v1 = FileVersion::of("f".into(), &st);
        assert_eq!(&src.read_chunk(&v1, 0, 100).unwrap()[..], b"version one");
        // Replaced by rename: the open descriptor still reads version one.
        fs::write(t.path().join("tmp"), b"version two!").unwrap();
        fs::rename(t.path().join("tmp"), t.path().join("f")).unwrap();
        assert_eq!(&src.read_chunk(&v1, 8, 100).unwrap()[..], b"one");
        // Rewritten in place: refused, never a mix.
        let st2 = src.lstat(Path::new("f")).unwrap();
        let v2 = FileVersion::of("f".into(), &st2);
        assert_eq!(&src.read_chunk(&v2, 0, 100).unwrap()[..], b"version two!");
        fs::write(t.path().join("f"), b"version 3 is longer").unwrap();
        let e = src.read_chunk(&v2, 0, 100).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::ESTALE));
        // A version that is not there at all.
        let mut v4 = v2.clone();
        v4.size += 1;
        let e = src.read_chunk(&v4, 0, 10).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::ESTALE));
    }

    #[test]
    fn the_check_after_the_first_read_also_proves_what_was_opened() {
        let t = tempfile::tempdir().unwrap();
        fs::write(t.path().join("f"), b"version one").unwrap();
        for immutable in [false, true] {
            let stats = Arc::new(Stats::default());
            let src = Source::open(t.path(), stats.clone(), immutable).unwrap();
            let v = FileVersion::of("f".into(), &src.lstat(Path::new("f")).unwrap());
            // The path opened afresh, not the file the lookup resolved.
            src.looked_up.lock().clear();
            let ops = || stats.source_meta_ops.load(Relaxed);
            let before = ops();
            // Open and read whole: the open and one fstat, which checks both what was
            // opened and that it did not change during the read.
            assert_eq!(&src.read_chunk(&v, 0, 100).unwrap()[..], b"version one");
            assert_eq!(ops() - before, 2, "immutable {immutable}");
            // A later read: an fstat for the change check, none under --immutable.
            assert_eq!(&src.read_chunk(&v, 8, 100).unwrap()[..], b"one");
            assert_eq!(ops() - before, if immutable { 2 } else { 3 });
        }
        // Replaced by rename before the first read: the descriptor opened is of another
        // version, and what it read is refused, under --immutable too.
        for immutable in [false, true] {
            fs::write(t.path().join("f"), b"version one").unwrap();
            let src = Source::open(t.path(), Arc::new(Stats::default()), immutable).unwrap();
            let v = FileVersion::of("f".into(), &src.lstat(Path::new("f")).unwrap());
            src.looked_up.lock().clear();
            fs::write(t.path().join("tmp"), b"version two").unwrap();
            fs::rename(t.path().join("tmp"), t.path().join("f")).unwrap();
            let e = src.read_chunk(&v, 0, 100).unwrap_err();
            assert_eq!(
                e.raw_os_error(),
                Some(libc::ESTALE),
                "immutable {immutable}"
            );
        }
    }

    #[test]
    fn a_read_after_a_lookup_opens_the_file_the_lookup_resolved() {
        let t = tempfile::tempdir().unwrap();
        for immutable in [false, true] {
            let _ = fs::remove_dir_all(t.path().join("b"));
            fs::create_dir(t.path().join("a")).unwrap();
            fs::write(t.path().join("a/f"), b"the bytes").unwrap();
            let stats = Arc::new(Stats::default());
            let src = Source::open(t.path(), stats.clone(), immutable).unwrap();
            let v = FileVersion::of("a/f".into(), &src.lstat(Path::new("a/f")).unwrap());
            // Its folder renamed after the lookup: a path-based open would find nothing;
            // the descriptor of the lookup still reaches the same, unchanged file.
            fs::rename(t.path().join("a"), t.path().join("b")).unwrap();
            assert_eq!(&src.read_chunk(&v, 0, 100).unwrap()[..], b"the bytes");
            // lstat, open, and (but under --immutable: that inode is the version by
            // construction) the fstat after the read.
            let want = if immutable { 2 } else { 3 };
            assert_eq!(stats.source_meta_ops.load(Relaxed), want);
            // The descriptor is used once: the next open (after this one is dropped)
            // resolves the path again.
            src.open_files.lock().clear();
            let e = src.read_chunk(&v, 0, 100).unwrap_err();
            assert_eq!(e.raw_os_error(), Some(libc::ENOENT));
        }
        // Renamed over after the lookup (as rsync replaces a file): the open reads the
        // version looked up, whole, as a descriptor opened before the rename would.
        fs::write(t.path().join("f"), b"version one").unwrap();
        let src = source(t.path());
        let v = FileVersion::of("f".into(), &src.lstat(Path::new("f")).unwrap());
        fs::write(t.path().join("tmp"), b"version two").unwrap();
        fs::rename(t.path().join("tmp"), t.path().join("f")).unwrap();
        assert_eq!(&src.read_chunk(&v, 0, 100).unwrap()[..], b"version one");
        // Deleted, a FIFO in its place: the same (never the FIFO, never a hang).
        let v = FileVersion::of("f".into(), &src.lstat(Path::new("f")).unwrap());
        fs::remove_file(t.path().join("f")).unwrap();
        nix::unistd::mkfifo(&t.path().join("f"), nix::sys::stat::Mode::S_IRWXU).unwrap();
        assert_eq!(&src.read_chunk(&v, 0, 100).unwrap()[..], b"version two");
        // A kept descriptor that cannot be reopened (here: one of a symlink): the path is
        // opened instead.
        fs::create_dir(t.path().join("a")).unwrap();
        fs::write(t.path().join("a/f"), b"the bytes").unwrap();
        let src = source(t.path());
        let v = FileVersion::of("a/f".into(), &src.lstat(Path::new("a/f")).unwrap());
        std::os::unix::fs::symlink("f", t.path().join("a/l")).unwrap();
        let link = src
            .beneath
            .open_at(Path::new("a/l"), OFlag::O_PATH)
            .unwrap();
        assert!(beneath::reopen(link.as_fd(), OFlag::O_RDONLY).is_err());
        src.looked_up.lock().put(v.clone(), link);
        assert_eq!(&src.read_chunk(&v, 0, 100).unwrap()[..], b"the bytes");
        // A symlink is stat-ed as the link, and keeps nothing.
        src.looked_up.lock().clear();
        std::os::unix::fs::symlink("b/f", t.path().join("l")).unwrap();
        assert_eq!(src.lstat(Path::new("l")).unwrap().kind(), Kind::Symlink);
        assert_eq!(src.looked_up.lock().len(), 0);
    }

    #[test]
    fn a_fifo_in_place_of_a_file_fails_at_once() {
        let t = tempfile::tempdir().unwrap();
        fs::write(t.path().join("f"), b"data").unwrap();
        let src = source(t.path());
        let v = FileVersion::of("f".into(), &src.lstat(Path::new("f")).unwrap());
        // Not the descriptor of the lookup (the file it resolved): open the path anew.
        src.looked_up.lock().clear();
        fs::remove_file(t.path().join("f")).unwrap();
        nix::unistd::mkfifo(&t.path().join("f"), nix::sys::stat::Mode::S_IRWXU).unwrap();
        let e = src.read_chunk(&v, 0, 4).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::ESTALE));
        // A folder: its read fails (EISDIR) before any check; still the version gone.
        fs::remove_file(t.path().join("f")).unwrap();
        fs::create_dir(t.path().join("f")).unwrap();
        let e = src.read_chunk(&v, 0, 4).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::ESTALE));
    }

    #[test]
    fn lists_names_and_types_and_reads_links_and_xattrs() {
        let t = tempfile::tempdir().unwrap();
        fs::create_dir(t.path().join("d")).unwrap();
        fs::write(t.path().join("d/f"), b"x").unwrap();
        std::os::unix::fs::symlink("f", t.path().join("d/l")).unwrap();
        let src = source(t.path());
        let dir = src.open_dir(Path::new("d")).unwrap();
        let mut e = dir.entries().unwrap();
        e.sort_by(|a, b| a.name.cmp(&b.name));
        assert_eq!(e.len(), 2);
        assert_eq!(
            (e[0].name.as_os_str(), e[0].kind),
            (OsStr::new("f"), Some(Kind::File))
        );
        assert_eq!(e[1].kind, Some(Kind::Symlink));
        assert_eq!(dir.stat(OsStr::new("l")).unwrap().kind(), Kind::Symlink);
        assert_eq!(src.read_link(Path::new("d/l")).unwrap(), PathBuf::from("f"));
        assert_eq!(src.lstat(Path::new("")).unwrap().kind(), Kind::Dir);
        // A symlink inside the path is never followed.
        std::os::unix::fs::symlink("d", t.path().join("dl")).unwrap();
        let e = src.lstat(Path::new("dl/f")).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::ELOOP));
        // xattrs of a file through its descriptor (user.* may be unsupported: tmpfs ok).
        if xattr::set(&t.path().join("d/f"), "user.k", b"v") {
            assert_eq!(
                src.get_xattr(Path::new("d/f"), OsStr::new("user.k"))
                    .unwrap(),
                b"v"
            );
            assert!(
                src.list_xattr(Path::new("d/f"))
                    .unwrap()
                    .starts_with(b"user.k")
            );
        }
    }

    mod xattr {
        pub fn set(p: &std::path::Path, name: &str, v: &[u8]) -> bool {
            let p = std::ffi::CString::new(p.as_os_str().as_encoded_bytes()).unwrap();
            let n = std::ffi::CString::new(name).unwrap();
            unsafe { libc::setxattr(p.as_ptr(), n.as_ptr(), v.as_ptr().cast(), v.len(), 0) == 0 }
        }
    }
}
