//! The namespace: what the mount shows of SOURCE, with inode numbers, attributes and
//! listings cached for the metadata TTL (forever under `--immutable`). Knows nothing of
//! FUSE.
//!
//! One inode is one version. A file, symlink or other non-directory that changes at the
//! source (another inode, size, mtime or ctime) gets a new inode number for its name; the
//! old inode lives on, frozen, for the handles and kernel references that have it. So the
//! kernel's per-inode state (page cache, passthrough backing file) always belongs to the
//! one version every open of that inode reads, and an open never sees two versions.
//!
//! Listings come from the source's own directory entries (names, types, inode numbers):
//! no stat per entry. Attributes are fetched on lookup; a reader that stats many entries
//! of a listed folder (`ls -l`) gets the rest fetched in parallel.

pub mod table;

use std::ffi::{OsStr, OsString};
use std::io;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use parking_lot::RwLock;

use crate::CONTROL_DIR;
use crate::flight::SingleFlight;
use crate::source::{DirEntry as SourceEntry, FileVersion, Kind, Source, Stat};
use crate::stats::Stats;
use table::{Attr, HAS_ATTR, Idx, ROOT, Table};

pub use table::Attr as NodeAttr;

pub const ROOT_INO: u64 = 1;
/// Inode numbers below this are the control files' (see `vfs.rs`).
pub const FIRST_DATA_INO: u64 = 16;
/// Threads that stat a folder's entries at once for a reader stat-ing them all.
const STAT_THREADS: usize = 8;
/// Lookups of listed entries without attributes in one folder before the rest of the
/// folder is stat-ed in parallel (the reader is stat-ing them all, as `ls -l` does).
const STAT_AHEAD_AFTER: u32 = 4;

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

pub struct Namespace {
    source: Arc<Source>,
    table: RwLock<Table>,
    /// None: trust cached metadata forever.
    ttl: Option<Duration>,
    view: Option<ShardView>,
    started: Instant,
    listings: SingleFlight<Idx, Result<(), i32>>,
    stats: Arc<Stats>,
    /// Per folder: lookups of listed entries without attributes (for stat-ahead).
    stat_misses: parking_lot::Mutex<std::collections::HashMap<Idx, u32>>,
}

impl Namespace {
    pub fn new(
        source: Arc<Source>,
        ttl: Option<Duration>,
        view: Option<ShardView>,
        stats: Arc<Stats>,
    ) -> Namespace {
        Namespace {
            source,
            table: RwLock::new(Table::new()),
            ttl,
            view,
            started: Instant::now(),
            listings: SingleFlight::new(),
            stats,
            stat_misses: Default::default(),
        }
    }

    /// The namespace's clock: tenths of a second since mount, from 1 (0 means "never").
    fn now(&self) -> u32 {
        (self.started.elapsed().as_millis() / 100) as u32 + 1
    }

    /// Whether something fetched at `at` is still within the metadata TTL.
    fn fresh(&self, at: u32) -> bool {
        at != 0
            && match self.ttl {
                None => true,
                Some(ttl) => {
                    Duration::from_millis(self.now().saturating_sub(at) as u64 * 100) < ttl
                }
            }
    }

    /// The TTL to give the kernel for attributes and entries.
    pub fn kernel_ttl(&self) -> Duration {
        // "Forever" for the kernel: a year is far beyond any job and safe from overflow.
        self.ttl.unwrap_or(Duration::from_secs(365 * 24 * 3600))
    }

    fn publish_counts(&self, t: &Table) {
        self.stats.meta_bytes.store(t.bytes(), Relaxed);
        self.stats.meta_entries.store(t.live() as u64, Relaxed);
    }

    fn path_of(&self, t: &Table, idx: Idx) -> io::Result<PathBuf> {
        t.path(idx)
            .map(|b| PathBuf::from(OsString::from_vec(b)))
            .ok_or_else(|| errno(libc::ESTALE))
    }

    fn entry(t: &Table, idx: Idx) -> Option<Entry> {
        let n = t.get(idx)?;
        Some(Entry {
            ino: ino_of(idx),
            kind: n.kind,
            attr: n.attr,
        })
    }

    /// Records what the source said of `idx`'s name: same version, updated in place;
    /// another version (or kind), a new node for the name. Returns the current node.
    fn store_stat(&self, t: &mut Table, parent: Idx, name: &[u8], st: &Stat) -> Idx {
        let attr = Attr::of(st);
        let kind = st.kind();
        let now = self.now();
        let idx = match t.child(parent, name) {
            Some(old) => {
                let n = t.get(old).expect("indexed nodes are live");
                // A folder keeps its node while it is the same folder (inode); anything
                // else while it is the same version.
                let same = n.kind == kind
                    && (!n.has_attr()
                        || if kind == Kind::Dir {
                            n.attr.src_ino == attr.src_ino
                        } else {
                            n.attr.same_version(&attr)
                        });
                if same {
                    old
                } else {
                    t.supersede(old);
                    t.insert_child(parent, name, kind)
                }
            }
            None => t.insert_child(parent, name, kind),
        };
        let n = t.get_mut(idx).expect("just made");
        n.attr = attr;
        n.attr_at = now;
        n.flags |= HAS_ATTR;
        idx
    }

    fn root_attr(&self) -> io::Result<()> {
        let st = self.source.lstat(std::path::Path::new(""))?;
        let mut t = self.table.write();
        let now = self.now();
        let n = t.get_mut(ROOT).expect("the root is always there");
        n.attr = Attr::of(&st);
        n.attr_at = now;
        n.flags |= HAS_ATTR;
        Ok(())
    }

    /// Looks `name` up in the directory `parent`. A successful answer is a kernel
    /// reference (released by `forget`); a failed one leaves nothing behind.
    pub fn lookup(&self, parent: u64, name: &OsStr) -> io::Result<Entry> {
        let p = idx_of(parent).ok_or_else(|| errno(libc::ESTALE))?;
        let nb = name.as_bytes();
        if nb.is_empty() || nb == b"." || nb == b".." || nb.contains(&b'/') {
            return Err(errno(libc::ENOENT));
        }
        if nb.len() > 255 {
            return Err(errno(libc::ENAMETOOLONG));
        }
        if p == ROOT && nb == CONTROL_DIR.as_bytes() {
            // Hidden by the control dir (answered by vfs.rs before it gets here).
            return Err(errno(libc::ENOENT));
        }
        let parent_path = {
            let t = self.table.read();
            let pn = t.get(p).ok_or_else(|| errno(libc::ESTALE))?;
            if pn.kind != Kind::Dir {
                return Err(errno(libc::ENOTDIR));
            }
            if let Some(c) = t.child(p, nb) {
                let n = t.get(c).expect("indexed nodes are live");
                if n.has_attr() && self.fresh(n.attr_at) {
                    drop(t);
                    let mut t = self.table.write();
                    t.add_lookup(c);
                    return Self::entry(&t, c).ok_or_else(|| errno(libc::ESTALE));
                }
            } else if let Some((_, at)) = t.listing(p)
                && self.fresh(at)
            {
                // A fresh listing without the name: it is not there.
                return Err(errno(libc::ENOENT));
            }
            self.path_of(&t, p)?
        };
        if self.stat_ahead_wanted(p, nb) {
            self.stat_listed(p);
            let t = self.table.read();
            if let Some(c) = t.child(p, nb)
                && t.get(c)
                    .is_some_and(|n| n.has_attr() && self.fresh(n.attr_at))
            {
                drop(t);
                let mut t = self.table.write();
                t.add_lookup(c);
                return Self::entry(&t, c).ok_or_else(|| errno(libc::ESTALE));
            }
        }
        let st = self.source.lstat(&parent_path.join(name))?;
        let mut t = self.table.write();
        if t.get(p).is_none() {
            return Err(errno(libc::ESTALE));
        }
        let c = self.store_stat(&mut t, p, nb, &st);
        t.add_lookup(c);
        self.publish_counts(&t);
        Self::entry(&t, c).ok_or_else(|| errno(libc::ESTALE))
    }

    /// Whether this lookup is of a listed entry without attributes, in a folder where
    /// that has happened often enough to stat the rest at once.
    fn stat_ahead_wanted(&self, p: Idx, name: &[u8]) -> bool {
        {
            let t = self.table.read();
            match t.listed(p, name) {
                Some(c) if !t.get(c).is_some_and(|n| n.has_attr()) => {}
                _ => return false,
            }
        }
        let mut misses = self.stat_misses.lock();
        let m = misses.entry(p).or_insert(0);
        *m += 1;
        if *m == STAT_AHEAD_AFTER {
            misses.remove(&p);
            return true;
        }
        false
    }

    /// Stats every listed entry of `dir` that has no attributes yet, in parallel.
    fn stat_listed(&self, dir: Idx) {
        let (path, names) = {
            let t = self.table.read();
            let Some((children, _)) = t.listing(dir) else {
                return;
            };
            let names: Vec<Vec<u8>> = children
                .iter()
                .filter(|&&c| !t.get(c).is_some_and(|n| n.has_attr()))
                .map(|&c| t.name(c).to_vec())
                .collect();
            match self.path_of(&t, dir) {
                Ok(p) => (p, names),
                Err(_) => return,
            }
        };
        let Ok(d) = self.source.open_dir(&path) else {
            return;
        };
        let next = std::sync::atomic::AtomicUsize::new(0);
        let stats: Vec<(Vec<u8>, io::Result<Stat>)> = crate::workers::run(STAT_THREADS, || {
            let mut out = Vec::new();
            loop {
                let k = next.fetch_add(1, Relaxed);
                let Some(n) = names.get(k) else { break };
                out.push((n.clone(), d.stat(OsStr::from_bytes(n))));
            }
            out
        })
        .into_iter()
        .flatten()
        .collect();
        let mut t = self.table.write();
        if t.get(dir).is_none() {
            return;
        }
        for (name, st) in stats {
            if let Ok(st) = st {
                self.store_stat(&mut t, dir, &name, &st);
            }
        }
        self.publish_counts(&t);
    }

    pub fn forget(&self, ino: u64, count: u64) {
        if let Some(i) = idx_of(ino) {
            let mut t = self.table.write();
            t.forget(i, count);
            self.publish_counts(&t);
        }
    }

    /// Attributes of an inode. An inode whose name now holds another version answers
    /// ESTALE to a path-based stat (the kernel then looks the name up again), and its own
    /// frozen attributes to an fstat of an open file (`with_handle`).
    pub fn getattr(&self, ino: u64, with_handle: bool) -> io::Result<Entry> {
        let i = idx_of(ino).ok_or_else(|| errno(libc::ESTALE))?;
        let (parent, name) = {
            let t = self.table.read();
            let n = t.get(i).ok_or_else(|| errno(libc::ESTALE))?;
            if n.superseded() {
                return if with_handle {
                    Self::entry(&t, i).ok_or_else(|| errno(libc::ESTALE))
                } else {
                    Err(errno(libc::ESTALE))
                };
            }
            if n.has_attr() && self.fresh(n.attr_at) {
                return Self::entry(&t, i).ok_or_else(|| errno(libc::ESTALE));
            }
            (n.parent(), t.name(i).to_vec())
        };
        if i == ROOT {
            self.root_attr()?;
            let t = self.table.read();
            return Self::entry(&t, ROOT).ok_or_else(|| errno(libc::ESTALE));
        }
        self.refresh(i, parent, &name, with_handle)
    }

    /// Asks the source about node `i` (named `name` in `parent`) again.
    fn refresh(&self, i: Idx, parent: Idx, name: &[u8], with_handle: bool) -> io::Result<Entry> {
        let path = {
            let t = self.table.read();
            self.path_of(&t, i)?
        };
        let st = self.source.lstat(&path);
        let mut t = self.table.write();
        let st = match st {
            Ok(st) => st,
            Err(e) => {
                if e.raw_os_error() == Some(libc::ENOENT) {
                    // Gone at the source: the name no longer leads here.
                    t.supersede(i);
                    if with_handle && t.get(i).is_some() {
                        return Self::entry(&t, i).ok_or_else(|| errno(libc::ESTALE));
                    }
                }
                return Err(e);
            }
        };
        if t.get(i).is_none() {
            return Err(errno(libc::ESTALE));
        }
        let now_idx = self.store_stat(&mut t, parent, name, &st);
        self.publish_counts(&t);
        if now_idx == i {
            Self::entry(&t, i).ok_or_else(|| errno(libc::ESTALE))
        } else if with_handle {
            Self::entry(&t, i).ok_or_else(|| errno(libc::ESTALE))
        } else {
            Err(errno(libc::ESTALE))
        }
    }

    /// The version a new open of `ino` reads, checked against the metadata TTL; the node
    /// is held until `close_file`. ESTALE when the name now holds another version (the
    /// kernel then looks it up again and opens the new inode).
    pub fn open_file(&self, ino: u64) -> io::Result<FileVersion> {
        let e = self.getattr(ino, false)?;
        match e.kind {
            Kind::File => {}
            Kind::Dir => return Err(errno(libc::EISDIR)),
            _ => return Err(errno(libc::EINVAL)),
        }
        let i = idx_of(ino).ok_or_else(|| errno(libc::ESTALE))?;
        let mut t = self.table.write();
        let n = t.get(i).ok_or_else(|| errno(libc::ESTALE))?;
        if n.superseded() {
            return Err(errno(libc::ESTALE));
        }
        let attr = n.attr;
        let path = self.path_of(&t, i)?;
        t.hold(i);
        Ok(FileVersion {
            path,
            size: attr.size,
            mtime_ns: attr.mtime_ns(),
            ctime_ns: attr.ctime_ns(),
            ino: attr.src_ino,
        })
    }

    /// An open of `ino` (by `open_file`) was released.
    pub fn close_file(&self, ino: u64) {
        if let Some(i) = idx_of(ino) {
            let mut t = self.table.write();
            t.unhold(i);
            self.publish_counts(&t);
        }
    }

    /// Whether a path belongs to this mount's shard (None: the mount is not sharded).
    pub fn in_shard(&self, ino: u64) -> Option<bool> {
        let view = self.view.as_ref()?;
        let i = idx_of(ino)?;
        let path = self.table.read().path(i)?;
        Some(view.members.contains(&path_hash(&path)))
    }

    /// A directory's entries as readdir shows them, sorted by name: under
    /// `--shard-view restrict`, regular files of other shards are left out (they still
    /// open by name). The source entry `.bicache` at the top is hidden by the control dir.
    pub fn list(&self, ino: u64) -> io::Result<Vec<Listed>> {
        let i = idx_of(ino).ok_or_else(|| errno(libc::ESTALE))?;
        self.ensure_listing(i)?;
        let t = self.table.read();
        let (children, _) = t.listing(i).ok_or_else(|| errno(libc::ESTALE))?;
        let restrict = self.view.as_ref().filter(|v| v.restrict);
        let prefix = match restrict {
            Some(_) => {
                let mut p = t.path(i).ok_or_else(|| errno(libc::ESTALE))?;
                if !p.is_empty() {
                    p.push(b'/');
                }
                p
            }
            None => Vec::new(),
        };
        let mut out = Vec::with_capacity(children.len());
        let mut full = prefix.clone();
        for &c in children {
            let Some(n) = t.get(c) else { continue };
            let name = t.name(c);
            if i == ROOT && name == CONTROL_DIR.as_bytes() {
                continue;
            }
            if let Some(v) = restrict
                && n.kind == Kind::File
            {
                full.truncate(prefix.len());
                full.extend_from_slice(name);
                if !v.members.contains(&path_hash(&full)) {
                    continue;
                }
            }
            out.push(Listed {
                name: OsStr::from_bytes(name).to_os_string(),
                kind: n.kind,
                src_ino: if n.has_attr() { n.attr.src_ino } else { 0 },
            });
        }
        Ok(out)
    }

    /// Makes sure `dir` has a fresh listing: one readdir at the source however many
    /// readers ask at once.
    fn ensure_listing(&self, dir: Idx) -> io::Result<()> {
        {
            let t = self.table.read();
            let n = t.get(dir).ok_or_else(|| errno(libc::ESTALE))?;
            if n.kind != Kind::Dir {
                return Err(errno(libc::ENOTDIR));
            }
            if let Some((_, at)) = t.listing(dir)
                && self.fresh(at)
            {
                return Ok(());
            }
        }
        let fetch = || {
            self.fetch_listing(dir)
                .map_err(|e| e.raw_os_error().unwrap_or(libc::EIO))
        };
        match self.listings.run(&dir, fetch, |_| {}) {
            Some((Ok(()), _)) => Ok(()),
            Some((Err(code), _)) => Err(errno(code)),
            None => Err(errno(libc::EIO)),
        }
    }

    fn fetch_listing(&self, dir: Idx) -> io::Result<()> {
        let path = {
            let t = self.table.read();
            self.path_of(&t, dir)?
        };
        let d = self.source.open_dir(&path)?;
        let mut entries: Vec<SourceEntry> = d.entries()?;
        // The filesystem did not give every type: ask for those only.
        let mut unknown: Vec<(usize, Stat)> = Vec::new();
        for (k, e) in entries.iter().enumerate() {
            if e.kind.is_none() {
                match d.stat(&e.name) {
                    Ok(st) => unknown.push((k, st)),
                    Err(err) if err.raw_os_error() == Some(libc::ENOENT) => {}
                    Err(err) => return Err(err),
                }
            }
        }
        let mut t = self.table.write();
        if t.get(dir).is_none() {
            return Err(errno(libc::ESTALE));
        }
        for (k, st) in &unknown {
            entries[*k].kind = Some(st.kind());
        }
        let mut children = Vec::with_capacity(entries.len());
        for e in &entries {
            let Some(kind) = e.kind else { continue };
            let nb = e.name.as_bytes();
            if nb.len() > 255 {
                continue;
            }
            let c = match t.child(dir, nb) {
                Some(old) => {
                    let n = t.get(old).expect("indexed nodes are live");
                    // Another kind, or (for a non-directory) another inode behind the
                    // name: a replaced entry (rsync's rename) gets a new node.
                    let known = n.has_attr() || n.attr.src_ino != 0;
                    let replaced = n.kind != kind || (known && n.attr.src_ino != e.ino);
                    if replaced {
                        t.supersede(old);
                        t.insert_child(dir, nb, kind)
                    } else {
                        old
                    }
                }
                None => t.insert_child(dir, nb, kind),
            };
            // The inode number is known from the listing, before any stat.
            if let Some(n) = t.get_mut(c)
                && !n.has_attr()
            {
                n.attr.src_ino = e.ino;
            }
            children.push(c);
        }
        for (k, st) in unknown {
            let nb = entries[k].name.as_bytes();
            if nb.len() <= 255 {
                self.store_stat(&mut t, dir, nb, &st);
            }
        }
        // Names gone from the folder no longer lead anywhere.
        let listed: std::collections::HashSet<Idx> = children.iter().copied().collect();
        let gone: Vec<Idx> = t
            .listing(dir)
            .map(|(old, _)| {
                old.iter()
                    .copied()
                    .filter(|c| !listed.contains(c))
                    .collect()
            })
            .unwrap_or_default();
        let now = self.now();
        t.set_listing(dir, children, now);
        for g in gone {
            t.supersede(g);
        }
        self.publish_counts(&t);
        Ok(())
    }

    pub fn read_link(&self, ino: u64) -> io::Result<PathBuf> {
        let i = idx_of(ino).ok_or_else(|| errno(libc::ESTALE))?;
        let path = self.path_of(&self.table.read(), i)?;
        self.source.read_link(&path)
    }

    pub fn statfs(&self) -> io::Result<nix::sys::statvfs::Statvfs> {
        self.source.statfs()
    }

    pub fn get_xattr(&self, ino: u64, name: &OsStr) -> io::Result<Vec<u8>> {
        let i = idx_of(ino).ok_or_else(|| errno(libc::ESTALE))?;
        let path = self.path_of(&self.table.read(), i)?;
        self.source.get_xattr(&path, name)
    }

    pub fn list_xattr(&self, ino: u64) -> io::Result<Vec<u8>> {
        let i = idx_of(ino).ok_or_else(|| errno(libc::ESTALE))?;
        let path = self.path_of(&self.table.read(), i)?;
        self.source.list_xattr(&path)
    }

    /// (bytes, entries) held by the table.
    pub fn counts(&self) -> (u64, u64) {
        let t = self.table.read();
        (t.bytes(), t.live() as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    fn ns(root: &std::path::Path, ttl: Option<Duration>) -> (Namespace, Arc<Stats>) {
        let stats = Arc::new(Stats::default());
        let src = Arc::new(Source::open(root, stats.clone(), false).unwrap());
        (Namespace::new(src, ttl, None, stats.clone()), stats)
    }

    #[test]
    fn a_replaced_file_gets_a_new_inode_and_the_old_one_stays_frozen() {
        let t = tempfile::tempdir().unwrap();
        fs::write(t.path().join("f"), b"one").unwrap();
        let (n, _) = ns(t.path(), Some(Duration::ZERO));
        let a = n.lookup(ROOT_INO, OsStr::new("f")).unwrap();
        let v = n.open_file(a.ino).unwrap();
        assert_eq!(v.size, 3);
        fs::write(t.path().join("tmp"), b"second").unwrap();
        fs::rename(t.path().join("tmp"), t.path().join("f")).unwrap();
        // The open inode: stale for a path stat, frozen for fstat, refused for a new open.
        assert_eq!(
            n.getattr(a.ino, false).unwrap_err().raw_os_error(),
            Some(libc::ESTALE)
        );
        assert_eq!(n.getattr(a.ino, true).unwrap().attr.size, 3);
        assert_eq!(
            n.open_file(a.ino).unwrap_err().raw_os_error(),
            Some(libc::ESTALE)
        );
        let b = n.lookup(ROOT_INO, OsStr::new("f")).unwrap();
        assert_ne!(a.ino, b.ino);
        assert_eq!(b.attr.size, 6);
        n.close_file(a.ino);
        n.forget(a.ino, 1);
        assert!(
            n.getattr(a.ino, true).is_err(),
            "forgotten and closed: gone"
        );
    }

    #[test]
    fn failed_lookups_leave_nothing_and_forgets_free() {
        let t = tempfile::tempdir().unwrap();
        fs::create_dir(t.path().join("d")).unwrap();
        for i in 0..100 {
            fs::write(t.path().join(format!("d/f{i}")), b"x").unwrap();
        }
        let (n, stats) = ns(t.path(), None);
        let d = n.lookup(ROOT_INO, OsStr::new("d")).unwrap();
        for i in 0..1000 {
            assert!(n.lookup(d.ino, OsStr::new(&format!("missing{i}"))).is_err());
        }
        assert_eq!(n.counts().1, 2, "failed lookups allocated nodes");
        let inos: Vec<u64> = (0..100)
            .map(|i| n.lookup(d.ino, OsStr::new(&format!("f{i}"))).unwrap().ino)
            .collect();
        assert_eq!(n.counts().1, 102);
        assert_eq!(stats.meta_entries.load(Relaxed), 102);
        for ino in inos {
            n.forget(ino, 1);
        }
        n.forget(d.ino, 1);
        assert_eq!(n.counts().1, 1);
    }

    #[test]
    fn listings_need_no_stat_and_answer_negative_lookups() {
        let t = tempfile::tempdir().unwrap();
        for i in 0..50 {
            fs::write(t.path().join(format!("f{i:02}")), b"x").unwrap();
        }
        fs::create_dir(t.path().join("sub")).unwrap();
        let (n, stats) = ns(t.path(), None);
        let before = stats.source_meta_ops.load(Relaxed);
        let l = n.list(ROOT_INO).unwrap();
        assert_eq!(l.len(), 51);
        assert_eq!(l[0].name, "f00");
        assert_eq!(l[50].kind, Kind::Dir);
        assert_eq!(
            stats.source_meta_ops.load(Relaxed) - before,
            1,
            "one readdir, no stats"
        );
        let before = stats.source_meta_ops.load(Relaxed);
        assert!(n.lookup(ROOT_INO, OsStr::new("nope")).is_err());
        assert_eq!(
            stats.source_meta_ops.load(Relaxed),
            before,
            "answered from the listing"
        );
        // A reader stat-ing many entries gets the rest fetched together.
        for i in 0..10 {
            n.lookup(ROOT_INO, OsStr::new(&format!("f{i:02}"))).unwrap();
        }
        let ops = stats.source_meta_ops.load(Relaxed) - before;
        assert!(ops <= 3 + 1 + 50, "{ops}");
        let before = stats.source_meta_ops.load(Relaxed);
        for i in 10..50 {
            n.lookup(ROOT_INO, OsStr::new(&format!("f{i:02}"))).unwrap();
        }
        assert_eq!(
            stats.source_meta_ops.load(Relaxed),
            before,
            "stat-ahead fetched them"
        );
    }
}
