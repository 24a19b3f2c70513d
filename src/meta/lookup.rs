//! Lookups, attributes and opens: one inode per version, stale-while-revalidate past the
//! TTL, and stat-ahead for readers that stat a whole listed folder (`ls -l`).

use std::ffi::OsStr;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::atomic::Ordering::Relaxed;

use super::table::{Attr, HAS_ATTR, Idx, ROOT, Table};
use super::{Entry, Freshness, Inner, errno, idx_of};
use crate::CONTROL_DIR;
use crate::source::{FileVersion, Kind, Stat};

/// Threads that stat a folder's entries at once for a reader stat-ing them all.
const STAT_THREADS: usize = 8;
/// Lookups of listed entries without attributes in one folder before the rest of the
/// folder is stat-ed in parallel (the reader is stat-ing them all, as `ls -l` does).
const STAT_AHEAD_AFTER: u32 = 4;

impl Inner {
    /// Records what the source said of `name` in `parent`: the same version is updated in
    /// place; another version (or kind) gets a new node, the old one superseded (and the
    /// kernel told, if it may know the old one). Returns the current node.
    pub(super) fn store_stat(&self, t: &mut Table, parent: Idx, name: &[u8], st: &Stat) -> Idx {
        let attr = Attr::of(st);
        let kind = st.kind();
        let now = self.now();
        let idx = match t.child(parent, name) {
            Some(old) => {
                let n = t.get(old).expect("indexed nodes are live");
                // A folder keeps its node while it is the same folder (inode); anything
                // else while it is the same version.
                let known = n.has_attr() || n.attr.src_ino != 0;
                let same = n.kind == kind
                    && (!known
                        || if kind == Kind::Dir || !n.has_attr() {
                            n.attr.src_ino == attr.src_ino
                        } else {
                            n.attr.same_version(&attr)
                        });
                if same {
                    old
                } else {
                    self.replace(t, old, kind)
                }
            }
            None => t.insert_child(parent, name, kind),
        };
        self.finish_stat(t, idx, attr, now)
    }

    fn finish_stat(&self, t: &mut Table, idx: Idx, attr: Attr, now: u32) -> Idx {
        let n = t.get_mut(idx).expect("just made");
        n.attr = attr;
        n.attr_at = now;
        n.flags |= HAS_ATTR;
        t.cache(idx);
        idx
    }

    /// Supersedes `old` and makes a new node of `kind` for its name; the kernel is told
    /// the name moved on.
    pub(super) fn replace(&self, t: &mut Table, old: Idx, kind: Kind) -> Idx {
        let parent = t.get(old).expect("live").parent();
        let name = t.name(old).to_vec();
        t.supersede(old);
        self.queue.hint(parent, name.clone());
        t.insert_child(parent, &name, kind)
    }

    fn root_attr(&self) -> io::Result<()> {
        let st = self.source.lstat(Path::new(""))?;
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
    pub(super) fn lookup(&self, parent: u64, name: &OsStr) -> io::Result<Entry> {
        // A known node the kernel holds no reference to can be trimmed by the budget
        // between reading the table and marking it used; that is a miss, not ESTALE,
        // so look again (the next pass stats it at the source).
        loop {
            if let Some(e) = self.lookup_once(parent, name)? {
                return Ok(e);
            }
        }
    }

    /// One pass of `lookup`; `None` when the node it found was trimmed meanwhile.
    fn lookup_once(&self, parent: u64, name: &OsStr) -> io::Result<Option<Entry>> {
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
                let state = self.freshness(n.has_attr(), n.attr_at);
                if state != Freshness::Ask {
                    drop(t);
                    return Ok(self.answer(p, nb, c, state == Freshness::Stale));
                }
            } else if let Some((_, at)) = t.listing(p) {
                // A known listing without the name: it is not there (a stale listing is
                // revalidated in the background, and a name added since is seen then).
                match self.freshness(true, at) {
                    Freshness::Fresh => return Err(errno(libc::ENOENT)),
                    Freshness::Stale => {
                        drop(t);
                        self.queue.push(&mut self.table.write(), p);
                        return Err(errno(libc::ENOENT));
                    }
                    Freshness::Ask => {}
                }
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
                return Ok(self.answer(p, nb, c, false));
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
        Inner::entry(&t, c)
            .map(Some)
            .ok_or_else(|| errno(libc::ESTALE))
    }

    /// A lookup answered from what is known: a kernel reference, the node marked used,
    /// and queued for revalidation if stale. `None` if the node was trimmed since it
    /// was found (its slot may even hold another name by now).
    fn answer(&self, p: Idx, name: &[u8], c: Idx, stale: bool) -> Option<Entry> {
        let mut t = self.table.write();
        if t.child(p, name) != Some(c) {
            return None;
        }
        t.add_lookup(c);
        t.cache(c);
        if stale {
            self.queue.push(&mut t, c);
        }
        Inner::entry(&t, c)
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

    /// Attributes of an inode. An inode whose name now holds another version answers
    /// ESTALE to a path-based stat (the kernel then looks the name up again), and its own
    /// frozen attributes to an fstat of an open file (`with_handle`).
    pub(super) fn getattr(&self, ino: u64, with_handle: bool) -> io::Result<Entry> {
        let i = idx_of(ino).ok_or_else(|| errno(libc::ESTALE))?;
        let (parent, name) = {
            let t = self.table.read();
            let n = t.get(i).ok_or_else(|| errno(libc::ESTALE))?;
            if n.superseded() {
                return if with_handle {
                    Inner::entry(&t, i).ok_or_else(|| errno(libc::ESTALE))
                } else {
                    Err(errno(libc::ESTALE))
                };
            }
            match self.freshness(n.has_attr(), n.attr_at) {
                Freshness::Fresh => return Inner::entry(&t, i).ok_or_else(|| errno(libc::ESTALE)),
                Freshness::Stale => {
                    drop(t);
                    let mut t = self.table.write();
                    self.queue.push(&mut t, i);
                    return Inner::entry(&t, i).ok_or_else(|| errno(libc::ESTALE));
                }
                Freshness::Ask => {}
            }
            (n.parent(), t.name(i).to_vec())
        };
        if i == ROOT {
            self.root_attr()?;
            let t = self.table.read();
            return Inner::entry(&t, ROOT).ok_or_else(|| errno(libc::ESTALE));
        }
        self.refresh(i, parent, &name, with_handle)
    }

    /// Asks the source about node `i` (named `name` in `parent`) again. Returns its entry,
    /// or ESTALE if the name now leads elsewhere (for a path-based request).
    pub(super) fn refresh(
        &self,
        i: Idx,
        parent: Idx,
        name: &[u8],
        with_handle: bool,
    ) -> io::Result<Entry> {
        let path = {
            let t = self.table.read();
            self.path_of(&t, i)?
        };
        let st = self.source.lstat(&path);
        let mut t = self.table.write();
        let st = match st {
            Ok(st) => st,
            Err(e) => {
                if e.raw_os_error() == Some(libc::ENOENT) && t.get(i).is_some() {
                    // Gone at the source: the name no longer leads here.
                    t.supersede(i);
                    self.queue.hint(parent, name.to_vec());
                    if with_handle && t.get(i).is_some() {
                        return Inner::entry(&t, i).ok_or_else(|| errno(libc::ESTALE));
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
        if now_idx == i || with_handle {
            Inner::entry(&t, i).ok_or_else(|| errno(libc::ESTALE))
        } else {
            Err(errno(libc::ESTALE))
        }
    }

    /// The version a new open of `ino` reads; the node is held until `close_file`.
    /// ESTALE when the name now holds another version (the kernel then looks it up again
    /// and opens the new inode).
    pub(super) fn open_file(&self, ino: u64) -> io::Result<FileVersion> {
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
        t.cache(i);
        Ok(FileVersion {
            path,
            size: attr.size,
            mtime_ns: attr.mtime_ns(),
            ctime_ns: attr.ctime_ns(),
            ino: attr.src_ino,
        })
    }
}
