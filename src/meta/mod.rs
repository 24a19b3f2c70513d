//! The namespace: what the mount shows of SOURCE, with inode numbers, attributes and
//! listings. Knows nothing of FUSE.
//!
//! - One inode is one version (`lookup.rs`): a file, symlink or other non-directory that
//!   changes at the source gets a new inode number for its name; the old inode lives on,
//!   frozen, for the handles and kernel references that have it. So the kernel's
//!   per-inode state (page cache, passthrough backing file) always belongs to the one
//!   version every open of that inode reads.
//! - Listings come from the source's own directory entries (`listing.rs`): names, types
//!   and inode numbers, no stat per entry; one readdir per folder however many ask.
//! - Past the metadata TTL, what is known is served at once while it is revalidated in
//!   the background at a bounded rate (`revalidate.rs`): epochs longer than the TTL cost
//!   the shared filesystem `--revalidate-rate` operations a second, not a stat per file.
//! - Memory is counted and bounded (`table.rs`): nodes the kernel forgot stay as cache
//!   until `--meta-budget` needs the room, least recently used first, and the kernel is
//!   asked to forget what only it holds.
//! - What is known survives a remount (`persist.rs`), so a job's start does not re-stat
//!   the dataset.

mod attr;
mod listing;
mod lookup;
mod persist;
mod revalidate;
pub mod table;

use std::ffi::{OsStr, OsString};
use std::io;
use std::os::unix::ffi::OsStringExt;
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use parking_lot::{Mutex, RwLock};

use crate::flight::SingleFlight;
use crate::source::{Kind, Source};
use crate::stats::Stats;
use table::{Attr, Idx, ROOT, Table};

pub use table::Attr as NodeAttr;

pub const ROOT_INO: u64 = 1;
/// Inode numbers below this are the control files' (see `vfs.rs`).
pub const FIRST_DATA_INO: u64 = 16;

fn errno(code: i32) -> io::Error {
    io::Error::from_raw_os_error(code)
}

pub fn ino_of(idx: Idx) -> u64 {
    if idx == ROOT {
        ROOT_INO
    } else {
        idx as u64 + FIRST_DATA_INO - 1
    }
}

fn idx_of(ino: u64) -> Option<Idx> {
    match ino {
        ROOT_INO => Some(ROOT),
        i if i >= FIRST_DATA_INO && i - (FIRST_DATA_INO - 1) < table::NONE as u64 => {
            Some((i - (FIRST_DATA_INO - 1)) as Idx)
        }
        _ => None,
    }
}

/// An entry as the adapter replies it: inode number, kind and attributes.
#[derive(Debug, Clone, Copy)]
pub struct Entry {
    pub ino: u64,
    pub kind: Kind,
    pub attr: Attr,
    /// When the attributes were fetched (table time, 0 = unknown).
    attr_at: u32,
}

/// One entry of a directory as readdir shows it.
#[derive(Debug, Clone)]
pub struct Listed {
    pub name: OsString,
    pub kind: Kind,
    /// The source's inode number (what `ls -i` shows, and st_ino).
    pub src_ino: u64,
}

/// A sharded mount's view of the dataset.
pub struct ShardView {
    /// Hashes of the relative paths of this shard's files and of the always-visible ones
    /// (8 bytes a file, not a copy of each path).
    pub members: std::collections::HashSet<u64>,
    /// Hide other shards' files from directory listings. Directories always stay
    /// visible: an ImageFolder-style class scan must find the same classes on every rank.
    pub restrict: bool,
}

/// The hash a shard member is known by.
pub fn path_hash(path: &[u8]) -> u64 {
    xxhash_rust::xxh3::xxh3_64(path)
}

/// How the namespace treats what it knows.
pub struct Options {
    /// None: trust cached metadata forever (`--immutable`).
    pub ttl: Option<Duration>,
    /// Source metadata operations a second for revalidating what is past its TTL in the
    /// background; 0: revalidate in the foreground instead (each request past the TTL
    /// waits for the source).
    pub revalidate_rate: f64,
    /// Bytes the node table may hold before the least recently used are dropped.
    pub budget: u64,
}

/// Tells the kernel a name no longer leads to the inode it had (the adapter's job: it
/// has the kernel connection). Called from the namespace's own thread only.
pub type KernelHint = Box<dyn Fn(u64, &OsStr) + Send + Sync>;

pub(crate) struct Inner {
    source: Arc<Source>,
    table: RwLock<Table>,
    opts: Options,
    view: Option<ShardView>,
    started: Instant,
    listings: SingleFlight<Idx, Result<(), i32>>,
    stats: Arc<Stats>,
    /// Per folder: lookups of listed entries without attributes (for stat-ahead).
    stat_misses: Mutex<std::collections::HashMap<Idx, u32>>,
    queue: revalidate::Queue,
    hint: Arc<OnceLock<KernelHint>>,
    stop: AtomicBool,
}

pub struct Namespace {
    inner: Arc<Inner>,
    worker: Mutex<Option<JoinHandle<()>>>,
    /// Where what is known is kept at shutdown, for the next mount.
    keep: Mutex<Option<crate::cachedir::PrivateDir>>,
}

impl Namespace {
    pub fn new(
        source: Arc<Source>,
        opts: Options,
        view: Option<ShardView>,
        stats: Arc<Stats>,
    ) -> Namespace {
        stats.meta_budget.store(opts.budget, Relaxed);
        let inner = Arc::new(Inner {
            source,
            table: RwLock::new(Table::new()),
            opts,
            view,
            started: Instant::now(),
            listings: SingleFlight::new(),
            stats,
            stat_misses: Default::default(),
            queue: revalidate::Queue::default(),
            hint: Arc::new(OnceLock::new()),
            stop: AtomicBool::new(false),
        });
        let mut inner = inner;
        let weak = Arc::downgrade(&inner);
        let worker = std::thread::Builder::new()
            .name("bicache-meta".into())
            .spawn(move || revalidate::worker(weak))
            .ok();
        if worker.is_none() {
            // The closure (and its weak reference) is gone with the failed spawn.
            if let Some(i) = Arc::get_mut(&mut inner) {
                i.opts.revalidate_rate = 0.0;
            }
            tracing::warn!(
                "cannot start the metadata thread: entries past the TTL are revalidated in \
                 the foreground, and the metadata budget is not enforced"
            );
        }
        Namespace {
            inner,
            worker: Mutex::new(worker),
            keep: Mutex::new(None),
        }
    }

    /// Keep what is known in `dir` at shutdown.
    pub fn keep_in(&self, dir: crate::cachedir::PrivateDir) {
        *self.keep.lock() = Some(dir);
    }

    /// Where the adapter puts its way of telling the kernel about changed names.
    pub fn kernel_hint_slot(&self) -> Arc<OnceLock<KernelHint>> {
        self.inner.hint.clone()
    }

    /// How long the kernel may keep `e`'s attributes and entry: what is left of the TTL
    /// since they were fetched, so the kernel never keeps them past it (a change is then
    /// seen within the bound of revalidate.rs, not one TTL later still). A stale entry
    /// served while being revalidated gets a second (at most the TTL).
    pub fn kernel_ttl(&self, e: &Entry) -> Duration {
        let Some(ttl) = self.inner.opts.ttl else {
            // "Forever" for the kernel: a year is far beyond any job and safe from overflow.
            return Duration::from_secs(365 * 24 * 3600);
        };
        let age = Duration::from_millis(self.inner.now().saturating_sub(e.attr_at) as u64 * 100);
        let floor = ttl.min(Duration::from_secs(1));
        if e.attr_at == 0 {
            return floor;
        }
        ttl.saturating_sub(age).max(floor)
    }

    pub fn lookup(&self, parent: u64, name: &OsStr) -> io::Result<Entry> {
        self.inner.lookup(parent, name)
    }

    pub fn forget(&self, ino: u64, count: u64) {
        if let Some(i) = idx_of(ino) {
            let mut t = self.inner.table.write();
            t.forget(i, count);
            self.inner.publish_counts(&t);
        }
    }

    pub fn getattr(&self, ino: u64, with_handle: bool) -> io::Result<Entry> {
        self.inner.getattr(ino, with_handle)
    }

    pub fn open_file(&self, ino: u64) -> io::Result<crate::source::FileVersion> {
        self.inner.open_file(ino)
    }

    pub fn close_file(&self, ino: u64) {
        if let Some(i) = idx_of(ino) {
            let mut t = self.inner.table.write();
            t.unhold(i);
            self.inner.publish_counts(&t);
        }
    }

    /// Whether a path belongs to this mount's shard (None: the mount is not sharded).
    pub fn in_shard(&self, ino: u64) -> Option<bool> {
        let view = self.inner.view.as_ref()?;
        let i = idx_of(ino)?;
        let path = self.inner.table.read().path(i)?;
        Some(view.members.contains(&path_hash(&path)))
    }

    pub fn list(&self, ino: u64) -> io::Result<Vec<Listed>> {
        self.inner.list(ino)
    }

    pub fn read_link(&self, ino: u64) -> io::Result<PathBuf> {
        let path = self.inner.path_of_ino(ino)?;
        self.inner.source.read_link(&path)
    }

    pub fn statfs(&self) -> io::Result<nix::sys::statvfs::Statvfs> {
        self.inner.source.statfs()
    }

    pub fn get_xattr(&self, ino: u64, name: &OsStr) -> io::Result<Vec<u8>> {
        let path = self.inner.path_of_ino(ino)?;
        self.inner.source.get_xattr(&path, name)
    }

    pub fn list_xattr(&self, ino: u64) -> io::Result<Vec<u8>> {
        let path = self.inner.path_of_ino(ino)?;
        self.inner.source.list_xattr(&path)
    }

    /// (bytes, entries) held by the table.
    pub fn counts(&self) -> (u64, u64) {
        let t = self.inner.table.read();
        (t.bytes(), t.live() as u64)
    }

    /// Loads what an earlier mount knew (see `persist.rs`; only under `--immutable`);
    /// returns the entries loaded.
    pub fn load(&self, dir: &crate::cachedir::PrivateDir) -> usize {
        if self.inner.opts.ttl.is_some() {
            return 0;
        }
        persist::load(&self.inner, dir)
    }

    /// Keeps what this mount knows for the next one.
    pub fn save(&self, dir: &crate::cachedir::PrivateDir) {
        persist::save(&self.inner, dir)
    }

    /// Stops the metadata thread, and keeps what is known (once).
    pub fn shutdown(&self) {
        self.inner.stop.store(true, Relaxed);
        self.inner.queue.wake();
        if let Some(t) = self.worker.lock().take() {
            let _ = t.join();
        }
        if let Some(dir) = self.keep.lock().take() {
            self.save(&dir);
        }
    }
}

impl Drop for Namespace {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// How what is known of a node stands against the TTL.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Freshness {
    Fresh,
    /// Past the TTL, served while revalidated in the background.
    Stale,
    /// Unknown, or past the TTL with revalidation in the foreground: ask the source now.
    Ask,
}

impl Inner {
    /// The namespace's clock: tenths of a second since mount, from 1 (0 means "never").
    fn now(&self) -> u32 {
        (self.started.elapsed().as_millis() / 100) as u32 + 1
    }

    /// Whether something fetched at `at` is still within the metadata TTL.
    fn fresh(&self, at: u32) -> bool {
        at != 0
            && match self.opts.ttl {
                None => true,
                Some(ttl) => {
                    Duration::from_millis(self.now().saturating_sub(at) as u64 * 100) < ttl
                }
            }
    }

    fn freshness(&self, known: bool, at: u32) -> Freshness {
        if !known || at == 0 {
            Freshness::Ask
        } else if self.fresh(at) {
            Freshness::Fresh
        } else if self.opts.revalidate_rate > 0.0 {
            Freshness::Stale
        } else {
            Freshness::Ask
        }
    }

    fn publish_counts(&self, t: &Table) {
        self.stats.meta_bytes.store(t.bytes(), Relaxed);
        self.stats.meta_live_bytes.store(t.live_bytes(), Relaxed);
        self.stats.meta_entries.store(t.live() as u64, Relaxed);
    }

    fn path_of(&self, t: &Table, idx: Idx) -> io::Result<PathBuf> {
        t.path(idx)
            .map(|b| PathBuf::from(OsString::from_vec(b)))
            .ok_or_else(|| errno(libc::ESTALE))
    }

    fn path_of_ino(&self, ino: u64) -> io::Result<PathBuf> {
        let i = idx_of(ino).ok_or_else(|| errno(libc::ESTALE))?;
        self.path_of(&self.table.read(), i)
    }

    fn entry(t: &Table, idx: Idx) -> Option<Entry> {
        let n = t.get(idx)?;
        Some(Entry {
            ino: ino_of(idx),
            kind: n.kind,
            attr: n.attr,
            attr_at: n.attr_at,
        })
    }
}

#[cfg(test)]
mod tests;
