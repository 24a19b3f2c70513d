//! The filesystem's decisions, without FUSE: what each request answers, which open reads
//! through the daemon and which the kernel reads straight from a cache file, the control
//! files, and the handles. `fuse.rs` only translates kernel requests into these calls, so
//! every decision here is unit-tested without a mount.
//!
//! Open policy, in order: writes are refused (EROFS); the namespace gives the version the
//! inode stands for (ESTALE when its name now holds another version: the kernel then looks
//! it up again); `--shard-strict` refuses another shard's file (EACCES); the kernel's page
//! cache is kept (one inode is one version, so its pages can never be another version's);
//! and the first open of an inode chooses passthrough when the whole file is verified on
//! the SSD tier, every later open of the inode sharing that choice until all are released
//! (the kernel refuses mixed modes on one inode with EIO).

use std::collections::HashMap;
use std::ffi::OsStr;
use std::fs::File;
use std::io;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, SystemTime};

use parking_lot::{Mutex, RwLock};
use tracing::warn;

use crate::CONTROL_DIR;
use crate::cache::{CachedFile, ChunkCache, Stream};
use crate::meta::{Entry, Listed, Namespace, NodeAttr, ROOT_INO};
use crate::source::Kind;
use crate::stats::Stats;

pub const CONTROL_DIR_INO: u64 = 2;
const STATS_JSON_INO: u64 = 3;
const STATS_TXT_INO: u64 = 4;
const SHARD_TXT_INO: u64 = 5;
const CONTROL_FILES: &[(&str, u64)] = &[
    ("stats.json", STATS_JSON_INO),
    ("stats.txt", STATS_TXT_INO),
    ("shard.txt", SHARD_TXT_INO),
];
/// The control files' attributes are not cached by the kernel: their size is that of
/// the document being read (below), which changes with the counters.
const CONTROL_FILE_TTL: Duration = Duration::ZERO;
const CONTROL_DIR_TTL: Duration = Duration::from_secs(1);

fn errno(code: i32) -> io::Error {
    io::Error::from_raw_os_error(code)
}

/// Attributes as the kernel is to see them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Attr {
    pub ino: u64,
    pub kind: Kind,
    pub size: u64,
    pub blocks: u64,
    pub atime: SystemTime,
    pub mtime: SystemTime,
    pub ctime: SystemTime,
    pub perm: u16,
    pub nlink: u32,
    pub uid: u32,
    pub gid: u32,
    pub rdev: u32,
    pub blksize: u32,
}

/// A reply to lookup or getattr: attributes and how long the kernel may keep them.
#[derive(Debug, Clone, Copy)]
pub struct Reply {
    pub attr: Attr,
    pub ttl: Duration,
}

fn attr_of(e: &Entry) -> Attr {
    let a: &NodeAttr = &e.attr;
    Attr {
        ino: e.ino,
        kind: e.kind,
        size: a.size,
        blocks: a.blocks,
        atime: NodeAttr::time(a.atime()),
        mtime: NodeAttr::time(a.mtime()),
        ctime: NodeAttr::time(a.ctime()),
        perm: a.perm,
        nlink: a.nlink,
        uid: a.uid,
        gid: a.gid,
        rdev: 0,
        blksize: a.blksize(),
    }
}

/// How an open is served.
#[derive(Debug)]
pub struct Opened<B> {
    pub fh: u64,
    /// Keep the kernel's page cache of the inode.
    pub keep_cache: bool,
    /// Every read goes to the daemon, uncached (the control files).
    pub direct_io: bool,
    /// The kernel reads the cache file behind this token directly (FUSE passthrough).
    pub passthrough: Option<Arc<B>>,
}

/// A readdir entry.
#[derive(Debug, Clone)]
pub struct DirItem {
    pub name: std::ffi::OsString,
    pub kind: Kind,
    /// d_ino: the source's inode number (never 0).
    pub ino: u64,
}

enum Handle {
    File {
        ino: u64,
        file: CachedFile,
        stream: Stream,
    },
    Dir(Vec<DirItem>),
    /// A snapshot taken at open, so a reader sees one consistent document.
    Control(Vec<u8>),
}

/// How the kernel reads one inode while it is open.
struct InodeIo<B> {
    /// Opens not yet released. Counted from our reply to RELEASE, which comes after the
    /// kernel let go, so this never undercounts the kernel's own count.
    opens: u64,
    /// Set while the inode is open in passthrough; dropped (unregistered) at last release.
    backing: Option<Arc<B>>,
}

/// Whether FUSE passthrough may be tried, and where it stands.
pub struct Passthrough {
    /// The kernel granted it at init (and the SSD tier exists, and `--passthrough on`).
    enabled: std::sync::atomic::AtomicBool,
}

pub struct Vfs<B = ()> {
    ns: Namespace,
    cache: Arc<ChunkCache>,
    stats: Arc<Stats>,
    handles: RwLock<HashMap<u64, Arc<Handle>>>,
    next_fh: AtomicU64,
    io_modes: Mutex<HashMap<u64, InodeIo<B>>>,
    passthrough: Passthrough,
    /// This shard's relative paths (for `.bicache/shard.txt`), in plan order.
    shard_paths: Arc<Vec<PathBuf>>,
    /// `--shard-strict`: opening another shard's file fails with EACCES.
    shard_strict: bool,
    mounted_at: SystemTime,
    uid: u32,
    gid: u32,
}

/// Errors of registering a passthrough backing file that mean it can never work on this
/// mount (not root, kernel without support, cache filesystem not allowed): passthrough
/// is then off for good. Any other error costs only that one open its passthrough.
fn passthrough_impossible(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EPERM) | Some(libc::ENOTTY) | Some(libc::EINVAL) | Some(libc::EOPNOTSUPP)
    )
}

impl<B: Send + Sync + 'static> Vfs<B> {
    pub fn new(
        ns: Namespace,
        cache: Arc<ChunkCache>,
        stats: Arc<Stats>,
        shard_paths: Arc<Vec<PathBuf>>,
        shard_strict: bool,
    ) -> Vfs<B> {
        Vfs {
            ns,
            cache,
            stats,
            handles: RwLock::new(HashMap::new()),
            next_fh: AtomicU64::new(1),
            io_modes: Mutex::new(HashMap::new()),
            passthrough: Passthrough {
                enabled: std::sync::atomic::AtomicBool::new(false),
            },
            shard_paths,
            shard_strict,
            mounted_at: SystemTime::now(),
            uid: nix::unistd::geteuid().as_raw(),
            gid: nix::unistd::getegid().as_raw(),
        }
    }

    /// Whether passthrough is in use (the kernel granted it at init).
    pub fn set_passthrough(&self, on: bool) {
        self.passthrough.enabled.store(on, Relaxed);
        self.stats.passthrough_enabled.store(on as u64, Relaxed);
    }

    pub fn passthrough_enabled(&self) -> bool {
        self.passthrough.enabled.load(Relaxed)
    }

    pub fn cache(&self) -> &Arc<ChunkCache> {
        &self.cache
    }

    fn is_control(ino: u64) -> bool {
        (CONTROL_DIR_INO..=SHARD_TXT_INO).contains(&ino)
    }

    /// A control file's size is its document's length: the document an open handle
    /// holds when asked through it (fstat), else a fresh one. The true size matters:
    /// sendfile and copy_file_range (`shutil.copy`) stop at it.
    fn control_size(&self, ino: u64, fh: Option<u64>) -> u64 {
        if ino == CONTROL_DIR_INO {
            return 0;
        }
        if let Some(h) = fh.and_then(|fh| self.handle(fh))
            && let Handle::Control(doc) = &*h
        {
            return doc.len() as u64;
        }
        self.control_snapshot(ino).len() as u64
    }

    fn control_attr(&self, ino: u64, fh: Option<u64>) -> Attr {
        let dir = ino == CONTROL_DIR_INO;
        Attr {
            ino,
            kind: if dir { Kind::Dir } else { Kind::File },
            size: self.control_size(ino, fh),
            blocks: 0,
            atime: self.mounted_at,
            mtime: self.mounted_at,
            ctime: self.mounted_at,
            // Counters are dataset-level and readable by whoever may use the mount; the
            // shard's file list is the mounting user's alone (it names files other users
            // may not be allowed to see under --allow-other).
            perm: match ino {
                CONTROL_DIR_INO => 0o555,
                SHARD_TXT_INO => 0o400,
                _ => 0o444,
            },
            nlink: if dir { 2 } else { 1 },
            uid: self.uid,
            gid: self.gid,
            rdev: 0,
            blksize: 4096,
        }
    }

    fn control_reply(&self, ino: u64, fh: Option<u64>) -> Reply {
        Reply {
            attr: self.control_attr(ino, fh),
            ttl: if ino == CONTROL_DIR_INO {
                CONTROL_DIR_TTL
            } else {
                CONTROL_FILE_TTL
            },
        }
    }

    fn reply(&self, e: &Entry) -> Reply {
        Reply {
            attr: attr_of(e),
            ttl: self.ns.kernel_ttl(e),
        }
    }

    pub fn lookup(&self, parent: u64, name: &OsStr) -> io::Result<Reply> {
        if parent == ROOT_INO && name == CONTROL_DIR {
            return Ok(self.control_reply(CONTROL_DIR_INO, None));
        }
        if parent == CONTROL_DIR_INO {
            return match CONTROL_FILES.iter().find(|(n, _)| name == *n) {
                Some((_, ino)) => Ok(self.control_reply(*ino, None)),
                None => Err(errno(libc::ENOENT)),
            };
        }
        self.ns.lookup(parent, name).map(|e| self.reply(&e))
    }

    pub fn forget(&self, ino: u64, count: u64) {
        if !Self::is_control(ino) {
            self.ns.forget(ino, count);
        }
    }

    /// Attributes of `ino`; `fh` when asked through an open file (fstat).
    pub fn getattr(&self, ino: u64, fh: Option<u64>) -> io::Result<Reply> {
        if Self::is_control(ino) {
            return Ok(self.control_reply(ino, fh));
        }
        self.ns.getattr(ino, fh.is_some()).map(|e| self.reply(&e))
    }

    pub fn readlink(&self, ino: u64) -> io::Result<PathBuf> {
        self.ns.read_link(ino)
    }

    /// Opens a file for reading. `register` makes a cache file the kernel's backing file
    /// for passthrough (the adapter's job: it needs the kernel connection).
    pub fn open(
        &self,
        ino: u64,
        writes: bool,
        register: impl FnOnce(&File) -> io::Result<B>,
    ) -> io::Result<Opened<B>> {
        if writes {
            return Err(errno(libc::EROFS));
        }
        if Self::is_control(ino) {
            if ino == CONTROL_DIR_INO {
                return Err(errno(libc::EISDIR));
            }
            let fh = self.add_handle(Handle::Control(self.control_snapshot(ino)));
            // Direct I/O: the document's length is only known once it is generated.
            return Ok(Opened {
                fh,
                keep_cache: false,
                direct_io: true,
                passthrough: None,
            });
        }
        let version = self.ns.open_file(ino)?;
        if self.ns.in_shard(ino) == Some(false) {
            self.stats.out_of_shard_opens.fetch_add(1, Relaxed);
            if self.shard_strict {
                self.ns.close_file(ino);
                return Err(errno(libc::EACCES));
            }
        }
        let file = self.cache.file(version);
        let passthrough = self.choose_io(ino, &file, register);
        let fh = self.add_handle(Handle::File {
            ino,
            file,
            stream: Stream::default(),
        });
        Ok(Opened {
            fh,
            keep_cache: passthrough.is_none(),
            direct_io: false,
            passthrough,
        })
    }

    /// Decides how the kernel reads this open and counts it. Only an inode with no open
    /// chooses; others share its choice. The lock is held across the registration, so a
    /// concurrent open can never pick the other mode in between.
    fn choose_io(
        &self,
        ino: u64,
        file: &CachedFile,
        register: impl FnOnce(&File) -> io::Result<B>,
    ) -> Option<Arc<B>> {
        let first_open = !self.io_modes.lock().contains_key(&ino);
        // The SSD file is checked (maybe read and hashed) before taking the lock.
        let candidate = if first_open && self.passthrough_enabled() {
            self.cache.backing_file(file)
        } else {
            None
        };
        let mut modes = self.io_modes.lock();
        let io = modes.entry(ino).or_insert(InodeIo {
            opens: 0,
            backing: None,
        });
        io.opens += 1;
        if io.opens > 1 {
            // Another open raced ahead or is still open: share its mode.
            if io.backing.is_some() {
                self.stats.passthrough_opens.fetch_add(1, Relaxed);
            }
            return io.backing.clone();
        }
        let cache_file = candidate?;
        match register(&cache_file) {
            Ok(token) => {
                let token = Arc::new(token);
                io.backing = Some(token.clone());
                self.stats.passthrough_opens.fetch_add(1, Relaxed);
                Some(token)
            }
            Err(e) if passthrough_impossible(&e) => {
                if self.passthrough.enabled.swap(false, Relaxed) {
                    self.stats.passthrough_enabled.store(0, Relaxed);
                    warn!("FUSE passthrough unavailable ({e}); every read goes through the daemon");
                }
                None
            }
            Err(e) => {
                warn!("passthrough for one open failed ({e}); it reads through the daemon");
                None
            }
        }
    }

    fn add_handle(&self, h: Handle) -> u64 {
        let fh = self.next_fh.fetch_add(1, Relaxed);
        self.handles.write().insert(fh, Arc::new(h));
        fh
    }

    fn handle(&self, fh: u64) -> Option<Arc<Handle>> {
        self.handles.read().get(&fh).cloned()
    }

    /// Reads up to `size` bytes at `offset` and hands them to `out` (once).
    pub fn read<R>(
        &self,
        fh: u64,
        offset: u64,
        size: u32,
        out: impl FnOnce(&[u8]) -> R,
    ) -> io::Result<R> {
        let h = self.handle(fh).ok_or_else(|| errno(libc::EBADF))?;
        match &*h {
            Handle::File { file, stream, .. } => self.cache.read(file, offset, size, stream, out),
            Handle::Control(doc) => {
                let start = (offset as usize).min(doc.len());
                let end = (start + size as usize).min(doc.len());
                Ok(out(&doc[start..end]))
            }
            Handle::Dir(_) => Err(errno(libc::EISDIR)),
        }
    }

    pub fn release(&self, fh: u64) {
        let removed = self.handles.write().remove(&fh);
        if let Some(h) = removed
            && let Handle::File { ino, .. } = *h
        {
            let mut modes = self.io_modes.lock();
            if let Some(io) = modes.get_mut(&ino) {
                io.opens = io.opens.saturating_sub(1);
                if io.opens == 0 {
                    // Drops the last reference: the backing file is unregistered.
                    modes.remove(&ino);
                }
            }
            drop(modes);
            self.ns.close_file(ino);
        }
    }

    pub fn opendir(&self, ino: u64) -> io::Result<u64> {
        let items = if ino == CONTROL_DIR_INO {
            CONTROL_FILES
                .iter()
                .map(|(n, i)| DirItem {
                    name: n.into(),
                    kind: Kind::File,
                    ino: *i,
                })
                .collect()
        } else {
            self.ns
                .list(ino)?
                .into_iter()
                .map(|l: Listed| DirItem {
                    name: l.name,
                    kind: l.kind,
                    // Never 0: some readers skip entries with d_ino 0.
                    ino: l.src_ino.max(1),
                })
                .collect()
        };
        Ok(self.add_handle(Handle::Dir(items)))
    }

    /// Entries of an open directory from `offset` on, as (next offset, item): offsets 1
    /// and 2 are "." and "..", entries follow, each offset naming the next entry to send.
    pub fn readdir(
        &self,
        ino: u64,
        fh: u64,
        offset: u64,
        mut add: impl FnMut(u64, &DirItem) -> bool,
    ) -> io::Result<()> {
        let h = self.handle(fh).ok_or_else(|| errno(libc::EBADF))?;
        let Handle::Dir(items) = &*h else {
            return Err(errno(libc::ENOTDIR));
        };
        let mut next = offset;
        while next < 2 {
            let dot = DirItem {
                name: if next == 0 { ".".into() } else { "..".into() },
                kind: Kind::Dir,
                ino,
            };
            if add(next + 1, &dot) {
                return Ok(());
            }
            next += 1;
        }
        for (i, e) in items.iter().enumerate().skip((next - 2) as usize) {
            if add(i as u64 + 3, e) {
                break;
            }
        }
        Ok(())
    }

    pub fn releasedir(&self, fh: u64) {
        self.handles.write().remove(&fh);
    }

    pub fn statfs(&self) -> io::Result<nix::sys::statvfs::Statvfs> {
        self.ns.statfs()
    }

    pub fn getxattr(&self, ino: u64, name: &OsStr) -> io::Result<Vec<u8>> {
        if Self::is_control(ino) {
            return Err(errno(libc::ENODATA));
        }
        self.ns.get_xattr(ino, name)
    }

    pub fn listxattr(&self, ino: u64) -> io::Result<Vec<u8>> {
        if Self::is_control(ino) {
            return Ok(Vec::new());
        }
        self.ns.list_xattr(ino)
    }

    /// Permission bits are checked by the kernel (default_permissions); only writing
    /// needs an answer here.
    pub fn access(&self, write: bool) -> io::Result<()> {
        if write {
            Err(errno(libc::EROFS))
        } else {
            Ok(())
        }
    }

    /// Stops background work, waits until every queued chunk reached the SSD tier, and
    /// keeps the namespace for the next mount.
    pub fn shutdown(&self) {
        self.cache.shutdown();
        self.ns.shutdown();
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
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::disk::{Budget, DiskTier};
    use crate::cache::{CacheConfig, PinPolicy};
    use crate::cachedir::CacheDir;
    use crate::meta::ShardView;
    use crate::size::SizeSpec;
    use crate::source::Source;
    use std::sync::atomic::AtomicUsize;

    struct World {
        _t: tempfile::TempDir,
        vfs: Vfs<u32>,
        stats: Arc<Stats>,
        big: Vec<u8>,
    }

    /// A source with a small file and a file of several chunks, a namespace, a cache with
    /// an SSD tier: everything below FUSE, no mount.
    fn world(view: Option<ShardView>, strict: bool) -> World {
        let t = tempfile::tempdir().unwrap();
        let src = t.path().join("src");
        std::fs::create_dir_all(src.join("d")).unwrap();
        std::fs::write(src.join("d/small"), b"small file").unwrap();
        let big: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 251) as u8).collect();
        std::fs::write(src.join("d/big"), &big).unwrap();
        let stats = Arc::new(Stats::default());
        let source = Arc::new(Source::open(&src, stats.clone(), false).unwrap());
        let dir = CacheDir::claim(&t.path().join("cache")).unwrap();
        let budget = Budget {
            spec: SizeSpec::Bytes(64 << 20),
            pinned_share: 0.95,
        };
        let disk = DiskTier::open(&dir, budget, 64 << 10, stats.clone()).unwrap();
        let cache = ChunkCache::new(
            CacheConfig {
                chunk_size: 64 << 10,
                ram_bytes: 4 << 20,
                fetch_threads: 2,
                max_readahead: 1 << 20,
                pin: PinPolicy::All,
            },
            Some(disk),
            source.clone(),
            stats.clone(),
        );
        let opts = crate::meta::Options {
            ttl: Some(Duration::from_secs(600)),
            revalidate_rate: 0.0,
            budget: 1 << 30,
        };
        let ns = Namespace::new(source, opts, view, stats.clone());
        let vfs = Vfs::new(ns, cache, stats.clone(), Arc::new(vec![]), strict);
        World {
            _t: t,
            vfs,
            stats,
            big,
        }
    }

    fn ino(w: &World, path: &str) -> u64 {
        let mut at = ROOT_INO;
        for part in path.split('/') {
            at = w.vfs.lookup(at, OsStr::new(part)).unwrap().attr.ino;
        }
        at
    }

    fn read_all(w: &World, fh: u64, len: usize) -> Vec<u8> {
        let mut out = Vec::new();
        while out.len() < len {
            let got = w
                .vfs
                .read(fh, out.len() as u64, 128 << 10, |b| b.to_vec())
                .unwrap();
            if got.is_empty() {
                break;
            }
            out.extend_from_slice(&got);
        }
        out
    }

    fn no_register(_: &File) -> io::Result<u32> {
        panic!("passthrough was not to be tried")
    }

    #[test]
    fn writes_are_refused_and_control_files_are_read_directly() {
        let w = world(None, false);
        let f = ino(&w, "d/small");
        let e = w.vfs.open(f, true, no_register).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EROFS));
        assert_eq!(
            w.vfs.access(true).unwrap_err().raw_os_error(),
            Some(libc::EROFS)
        );
        let dir = w.vfs.lookup(ROOT_INO, OsStr::new(CONTROL_DIR)).unwrap();
        assert_eq!(dir.attr.kind, Kind::Dir);
        let stats = w
            .vfs
            .lookup(dir.attr.ino, OsStr::new("stats.json"))
            .unwrap();
        let o = w.vfs.open(stats.attr.ino, false, no_register).unwrap();
        assert!(o.direct_io && !o.keep_cache && o.passthrough.is_none());
        let doc = read_all(&w, o.fh, 1 << 20);
        assert!(
            doc.starts_with(b"{\"pid\""),
            "{}",
            String::from_utf8_lossy(&doc)
        );
        // Its size (uncached) is that of the document the handle reads (sendfile stops
        // there), and a fresh document's by path.
        let through_fh = w.vfs.getattr(stats.attr.ino, Some(o.fh)).unwrap();
        assert_eq!(through_fh.attr.size, doc.len() as u64);
        assert_eq!(through_fh.ttl, Duration::ZERO);
        assert!(stats.attr.size > 100, "{}", stats.attr.size);
        let shard = w.vfs.lookup(dir.attr.ino, OsStr::new("shard.txt")).unwrap();
        assert_eq!(
            shard.attr.perm, 0o400,
            "the shard list is the mounter's alone"
        );
        // The root listing does not show the control dir.
        let root = w.vfs.opendir(ROOT_INO).unwrap();
        let mut names = Vec::new();
        w.vfs
            .readdir(ROOT_INO, root, 0, |_, item| {
                names.push(item.name.clone());
                false
            })
            .unwrap();
        assert_eq!(names, [".", "..", "d"]);
    }

    #[test]
    fn an_open_reads_its_version_and_keeps_the_page_cache() {
        let w = world(None, false);
        let f = ino(&w, "d/big");
        let o = w.vfs.open(f, false, no_register).unwrap();
        assert!(
            o.keep_cache && !o.direct_io,
            "one inode is one version: keep its pages"
        );
        assert_eq!(read_all(&w, o.fh, w.big.len()), w.big);
        w.vfs.release(o.fh);
        assert_eq!(
            w.vfs
                .read(o.fh, 0, 10, |b| b.len())
                .unwrap_err()
                .raw_os_error(),
            Some(libc::EBADF)
        );
    }

    /// Fills the SSD tier with the big file through the daemon, then turns passthrough on.
    fn cached_big(w: &World) -> u64 {
        let f = ino(w, "d/big");
        let o = w.vfs.open(f, false, no_register).unwrap();
        read_all(w, o.fh, w.big.len());
        w.vfs.release(o.fh);
        w.vfs.cache().flush();
        w.vfs.set_passthrough(true);
        f
    }

    #[test]
    fn passthrough_is_chosen_by_the_first_open_and_shared_by_the_others() {
        let w = world(None, false);
        let f = cached_big(&w);
        let calls = AtomicUsize::new(0);
        let register = |_: &File| {
            calls.fetch_add(1, Relaxed);
            Ok(7u32)
        };
        let a = w.vfs.open(f, false, register).unwrap();
        assert_eq!(a.passthrough.as_deref(), Some(&7));
        // Opened while the first is open: the same backing file, not registered again.
        let b = w.vfs.open(f, false, |_: &File| Ok(8u32)).unwrap();
        assert_eq!(b.passthrough.as_deref(), Some(&7));
        assert_eq!(calls.load(Relaxed), 1);
        w.vfs.release(a.fh);
        w.vfs.release(b.fh);
        // All released: the next open chooses afresh.
        let c = w.vfs.open(f, false, |_: &File| Ok(9u32)).unwrap();
        assert_eq!(c.passthrough.as_deref(), Some(&9));
        assert_eq!(w.stats.passthrough_opens.load(Relaxed), 3);
    }

    #[test]
    fn a_daemon_mode_open_keeps_later_opens_out_of_passthrough() {
        let w = world(None, false);
        let f = ino(&w, "d/big");
        // Opened before the file is cached: read through the daemon...
        let a = w.vfs.open(f, false, no_register).unwrap();
        read_all(&w, a.fh, w.big.len());
        w.vfs.cache().flush();
        w.vfs.set_passthrough(true);
        // ...so a second open of the inode, though the file is now complete, shares it.
        let b = w.vfs.open(f, false, no_register).unwrap();
        assert!(b.passthrough.is_none());
    }

    #[test]
    fn a_refused_registration_turns_passthrough_off_only_if_it_can_never_work() {
        let w = world(None, false);
        let f = cached_big(&w);
        let o = w
            .vfs
            .open(f, false, |_: &File| {
                Err(io::Error::from_raw_os_error(libc::EMFILE))
            })
            .unwrap();
        assert!(o.passthrough.is_none());
        assert!(
            w.vfs.passthrough_enabled(),
            "a transient error turned passthrough off"
        );
        w.vfs.release(o.fh);
        let o = w
            .vfs
            .open(f, false, |_: &File| {
                Err(io::Error::from_raw_os_error(libc::EPERM))
            })
            .unwrap();
        assert!(o.passthrough.is_none());
        assert!(!w.vfs.passthrough_enabled());
        assert_eq!(w.stats.passthrough_enabled.load(Relaxed), 0);
    }

    #[test]
    fn shard_strict_refuses_other_shards_files() {
        let view = |strict| {
            let members = [crate::meta::path_hash(b"d/small")].into_iter().collect();
            world(
                Some(ShardView {
                    members,
                    restrict: true,
                }),
                strict,
            )
        };
        let w = view(true);
        assert!(w.vfs.open(ino(&w, "d/small"), false, no_register).is_ok());
        let e = w
            .vfs
            .open(ino(&w, "d/big"), false, no_register)
            .unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EACCES));
        assert_eq!(w.stats.out_of_shard_opens.load(Relaxed), 1);
        // Without --shard-strict it is served, and counted; the listing hides it.
        let w = view(false);
        assert!(w.vfs.open(ino(&w, "d/big"), false, no_register).is_ok());
        let d = ino(&w, "d");
        let fh = w.vfs.opendir(d).unwrap();
        let mut names = Vec::new();
        w.vfs
            .readdir(d, fh, 2, |_, item| {
                names.push(item.name.clone());
                false
            })
            .unwrap();
        assert_eq!(names, ["small"]);
    }
}
