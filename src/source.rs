//! The only code that touches SOURCE: lstat, readdir, readlink, xattrs, statfs and pread.
//!
//! Paths are relative to the source root ("" is the root). Open descriptors are kept in a
//! small LRU (never one per file of the dataset: the process has a hard fd limit).

use std::ffi::{CString, OsStr, OsString};
use std::fs::{self, File, Metadata};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, OnceLock};

use lru::LruCache;
use parking_lot::Mutex;

use crate::buf::Buf;
use crate::stats::Stats;

/// How many source files stay open between reads (bounded, far below the fd limit).
const OPEN_FILES: usize = 256;

/// What the cache must know to fetch a file's bytes and to check it is still the same file.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct FileVersion {
    pub path: PathBuf,
    pub size: u64,
    pub mtime_ns: i128,
}

/// An open source file: opened once however many threads want it at the same moment.
/// A failed open is kept as its errno (io::Error is not Clone) and not reused.
type OpenSlot = Arc<OnceLock<Result<OpenFile, i32>>>;

struct OpenFile {
    file: File,
    /// Whether the file, as opened, is the expected version (size and mtime).
    matches: bool,
}

pub struct Source {
    root: PathBuf,
    open_files: Mutex<LruCache<FileVersion, OpenSlot>>,
    stats: Arc<Stats>,
}

/// A chunk as read from the source, and whether the file matched the expected version.
pub struct Fetched {
    pub data: Buf,
    pub version_matches: bool,
}

pub fn mtime_ns(meta: &Metadata) -> i128 {
    meta.mtime() as i128 * 1_000_000_000 + meta.mtime_nsec() as i128
}

impl Source {
    pub fn new(root: PathBuf, stats: Arc<Stats>) -> Source {
        Source {
            root,
            open_files: Mutex::new(LruCache::new(OPEN_FILES.try_into().unwrap())),
            stats,
        }
    }

    fn full(&self, rel: &Path) -> PathBuf {
        if rel.as_os_str().is_empty() {
            self.root.clone()
        } else {
            self.root.join(rel)
        }
    }

    pub fn lstat(&self, rel: &Path) -> io::Result<Metadata> {
        self.stats.source_meta_ops.fetch_add(1, Relaxed);
        fs::symlink_metadata(self.full(rel))
    }

    /// Names in a directory (without "." and ".."), unsorted, as the source returns them.
    pub fn list_dir(&self, rel: &Path) -> io::Result<Vec<OsString>> {
        self.stats.source_meta_ops.fetch_add(1, Relaxed);
        fs::read_dir(self.full(rel))?
            .map(|e| e.map(|e| e.file_name()))
            .collect()
    }

    pub fn read_link(&self, rel: &Path) -> io::Result<PathBuf> {
        self.stats.source_meta_ops.fetch_add(1, Relaxed);
        fs::read_link(self.full(rel))
    }

    pub fn statfs(&self) -> io::Result<nix::sys::statvfs::Statvfs> {
        nix::sys::statvfs::statvfs(&self.root).map_err(io::Error::from)
    }

    /// lgetxattr: the value, or with `size_only` just its length.
    pub fn get_xattr(&self, rel: &Path, name: &OsStr) -> io::Result<Vec<u8>> {
        let path = cstring(&self.full(rel))?;
        let name = CString::new(name.as_bytes()).map_err(|_| errno(libc::EINVAL))?;
        xattr_call(|buf, len| unsafe {
            libc::lgetxattr(path.as_ptr(), name.as_ptr(), buf as *mut libc::c_void, len)
        })
    }

    /// llistxattr: NUL-separated names.
    pub fn list_xattr(&self, rel: &Path) -> io::Result<Vec<u8>> {
        let path = cstring(&self.full(rel))?;
        xattr_call(|buf, len| unsafe { libc::llistxattr(path.as_ptr(), buf, len) })
    }

    /// Reads `len` bytes at `offset` of `file` (fewer only at end of file), then tells the
    /// kernel to drop those source pages: the cache holds them now, twice would waste RAM.
    pub fn read_chunk(&self, file: &FileVersion, offset: u64, len: usize) -> io::Result<Fetched> {
        let slot = self.open(file);
        let handle = match slot.get() {
            Some(Ok(h)) => h,
            Some(Err(code)) => {
                // Don't remember failures: the next read asks the source again.
                self.forget(file, &slot);
                return Err(errno(*code));
            }
            None => unreachable!("open() initialises the slot"),
        };
        let mut data = Buf::for_read(len);
        let mut done = 0;
        while done < len {
            match handle.file.read_at(&mut data[done..], offset + done as u64) {
                Ok(0) => break,
                Ok(n) => done += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    // A descriptor that went bad (e.g. a stale NFS handle) must not be reused.
                    self.forget(file, &slot);
                    return Err(e);
                }
            }
        }
        data.truncate(done);
        self.stats.source_reads.fetch_add(1, Relaxed);
        self.stats.source_bytes.fetch_add(done as u64, Relaxed);
        unsafe {
            libc::posix_fadvise(
                handle.file.as_raw_fd(),
                offset as libc::off_t,
                len as libc::off_t,
                libc::POSIX_FADV_DONTNEED,
            );
        }
        Ok(Fetched {
            data,
            version_matches: handle.matches,
        })
    }

    fn forget(&self, file: &FileVersion, slot: &OpenSlot) {
        let mut open = self.open_files.lock();
        if open.peek(file).is_some_and(|s| Arc::ptr_eq(s, slot)) {
            open.pop(file);
        }
    }

    /// The open descriptor for a file version, opening it (once) if needed. The version is
    /// checked with one fstat at open, not at every read: a file rewritten in place while
    /// open is caught at the next open, after the metadata TTL.
    fn open(&self, file: &FileVersion) -> OpenSlot {
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
            self.stats.source_meta_ops.fetch_add(2, Relaxed);
            let open = || -> io::Result<OpenFile> {
                let f = fs::OpenOptions::new()
                    .read(true)
                    .custom_flags(libc::O_NOFOLLOW | libc::O_NOCTTY)
                    .open(self.full(&file.path))?;
                let meta = f.metadata()?;
                Ok(OpenFile {
                    matches: meta.len() == file.size && mtime_ns(&meta) == file.mtime_ns,
                    file: f,
                })
            };
            open().map_err(|e| e.raw_os_error().unwrap_or(libc::EIO))
        });
        slot
    }
}

fn errno(code: i32) -> io::Error {
    io::Error::from_raw_os_error(code)
}

fn cstring(path: &Path) -> io::Result<CString> {
    CString::new(path.as_os_str().as_bytes()).map_err(|_| errno(libc::EINVAL))
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
