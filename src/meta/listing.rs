//! Directory listings from the source's own entries: names, types and inode numbers, no
//! stat per entry; one readdir per folder however many readers ask at once.

use std::collections::HashSet;
use std::ffi::OsStr;
use std::io;
use std::os::unix::ffi::OsStrExt;

use super::table::{Idx, ROOT};
use super::{Freshness, Inner, Listed, errno, idx_of, path_hash};
use crate::CONTROL_DIR;
use crate::source::{DirEntry as SourceEntry, Kind, Stat};

impl Inner {
    /// A directory's entries as readdir shows them, sorted by name: under
    /// `--shard-view restrict`, regular files of other shards are left out (they still
    /// open by name). The source entry `.bicache` at the top is hidden by the control dir.
    pub(super) fn list(&self, ino: u64) -> io::Result<Vec<Listed>> {
        let i = idx_of(ino).ok_or_else(|| errno(libc::ESTALE))?;
        // The budget may drop the listing between making it and reading it: make it again.
        let t = loop {
            self.ensure_listing(i)?;
            let t = self.table.read();
            t.get(i).ok_or_else(|| errno(libc::ESTALE))?;
            if t.listing(i).is_some() {
                break t;
            }
        };
        let (children, _) = t.listing(i).expect("checked under this read guard");
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
                src_ino: n.attr.src_ino,
            });
        }
        Ok(out)
    }

    /// Makes sure `dir` has a listing: a fresh one, or a stale one while it is revalidated
    /// in the background. One readdir at the source however many readers ask at once.
    fn ensure_listing(&self, dir: Idx) -> io::Result<()> {
        {
            let t = self.table.read();
            let n = t.get(dir).ok_or_else(|| errno(libc::ESTALE))?;
            if n.kind != Kind::Dir {
                return Err(errno(libc::ENOTDIR));
            }
            if let Some((_, at)) = t.listing(dir) {
                match self.freshness(true, at) {
                    Freshness::Fresh => return Ok(()),
                    Freshness::Stale => {
                        drop(t);
                        self.queue.push(&mut self.table.write(), dir);
                        return Ok(());
                    }
                    Freshness::Ask => {}
                }
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

    /// Reads `dir` at the source and makes it the listing. Entries whose inode changed
    /// behind their name (a file replaced by rename) get new nodes; names gone no longer
    /// lead anywhere.
    pub(super) fn fetch_listing(&self, dir: Idx) -> io::Result<()> {
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
                    let known = n.has_attr() || n.attr.src_ino != 0;
                    if n.kind != kind || (known && n.attr.src_ino != e.ino) {
                        self.replace(&mut t, old, kind)
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
        let listed: HashSet<Idx> = children.iter().copied().collect();
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
        t.cache(dir);
        for g in gone {
            if t.get(g).is_some_and(|n| !n.superseded()) {
                let name = t.name(g).to_vec();
                t.supersede(g);
                self.queue.hint(dir, name);
            }
        }
        self.publish_counts(&t);
        Ok(())
    }
}
