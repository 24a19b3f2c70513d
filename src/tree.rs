//! The namespace: inode numbers <-> relative paths, attributes and directory listings
//! cached for the metadata TTL (forever under `--immutable`). Knows nothing of FUSE.
//!
//! Inode numbers are handed out on first sight of a path and never reused while mounted,
//! so they stay stable for as long as the kernel may remember them.

use std::collections::{HashMap, HashSet};
use std::ffi::{OsStr, OsString};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use parking_lot::RwLock;

pub use crate::source::Kind;
use crate::source::{FileVersion, Source, SourceDir, Stat};

pub const ROOT_INO: u64 = 1;
/// Threads that stat a large directory's entries at once.
const LIST_THREADS: usize = 8;
/// Inodes below this are reserved for the control files (see fs.rs).
pub const FIRST_DATA_INO: u64 = 16;

/// The attributes mirrored from the source.
#[derive(Debug, Clone)]
pub struct Attr {
    pub ino: u64,
    pub kind: Kind,
    pub size: u64,
    pub blocks: u64,
    pub perm: u16,
    pub nlink: u32,
    pub uid: u32,
    pub gid: u32,
    pub rdev: u32,
    pub blksize: u32,
    pub atime: SystemTime,
    pub mtime: SystemTime,
    pub ctime: SystemTime,
    pub mtime_ns: i128,
    pub ctime_ns: i128,
    /// The source's inode number.
    pub src_ino: u64,
}

#[derive(Debug, Clone)]
pub struct DirEntry {
    pub name: OsString,
    pub ino: u64,
    pub kind: Kind,
}

struct Node {
    path: PathBuf,
    attr: Option<(Attr, Instant)>,
    listing: Option<(Arc<Vec<DirEntry>>, Instant)>,
}

struct Nodes {
    by_ino: HashMap<u64, Node>,
    by_path: HashMap<PathBuf, u64>,
    next_ino: u64,
}

pub struct Tree {
    source: Arc<Source>,
    nodes: RwLock<Nodes>,
    /// None: trust cached metadata forever.
    ttl: Option<Duration>,
    view: Option<ShardView>,
}

/// A sharded mount's view of the dataset.
pub struct ShardView {
    /// Relative paths of this shard's files and of the always-visible ones.
    pub members: HashSet<PathBuf>,
    /// Hide other shards' files from directory listings. Directories always stay
    /// visible: an ImageFolder-style class scan must find the same classes on every rank.
    pub restrict: bool,
}

fn time((secs, nsecs): (i64, u32)) -> SystemTime {
    if secs >= 0 {
        UNIX_EPOCH + Duration::new(secs as u64, nsecs)
    } else {
        UNIX_EPOCH - Duration::from_secs(secs.unsigned_abs()) + Duration::from_nanos(nsecs as u64)
    }
}

fn attr_from(ino: u64, st: &Stat) -> Attr {
    Attr {
        ino,
        kind: st.kind(),
        size: st.size(),
        blocks: st.blocks(),
        perm: st.perm(),
        nlink: st.nlink(),
        uid: st.uid(),
        gid: st.gid(),
        rdev: st.rdev(),
        blksize: st.blksize(),
        atime: time(st.atime()),
        mtime: time(st.mtime()),
        ctime: time(st.ctime()),
        mtime_ns: st.mtime_ns(),
        ctime_ns: st.ctime_ns(),
        src_ino: st.ino(),
    }
}

impl Tree {
    pub fn new(source: Arc<Source>, ttl: Option<Duration>, view: Option<ShardView>) -> Tree {
        let mut by_ino = HashMap::new();
        let mut by_path = HashMap::new();
        by_ino.insert(
            ROOT_INO,
            Node {
                path: PathBuf::new(),
                attr: None,
                listing: None,
            },
        );
        by_path.insert(PathBuf::new(), ROOT_INO);
        Tree {
            source,
            nodes: RwLock::new(Nodes {
                by_ino,
                by_path,
                next_ino: FIRST_DATA_INO,
            }),
            ttl,
            view,
        }
    }

    /// Whether a path belongs to this mount's shard (None: the mount is not sharded).
    pub fn in_shard(&self, ino: u64) -> Option<bool> {
        let view = self.view.as_ref()?;
        let path = self.path_of(ino)?;
        Some(view.members.contains(&path))
    }

    /// A directory's entries as readdir shows them: under `--shard-view restrict`,
    /// regular files of other shards are left out (they still open by name).
    pub fn list_visible(&self, ino: u64) -> io::Result<Arc<Vec<DirEntry>>> {
        let all = self.list(ino)?;
        let Some(view) = self.view.as_ref().filter(|v| v.restrict) else {
            return Ok(all);
        };
        let Some(dir) = self.path_of(ino) else {
            return Ok(all);
        };
        Ok(Arc::new(
            all.iter()
                .filter(|e| e.kind != Kind::File || view.members.contains(&dir.join(&e.name)))
                .cloned()
                .collect(),
        ))
    }

    fn fresh(&self, at: Instant) -> bool {
        match self.ttl {
            None => true,
            Some(ttl) => at.elapsed() < ttl,
        }
    }

    /// The TTL to give the kernel for attributes and entries.
    pub fn kernel_ttl(&self) -> Duration {
        // "Forever" for the kernel: a year is far beyond any job and safe from overflow.
        self.ttl.unwrap_or(Duration::from_secs(365 * 24 * 3600))
    }

    pub fn path_of(&self, ino: u64) -> Option<PathBuf> {
        self.nodes.read().by_ino.get(&ino).map(|n| n.path.clone())
    }

    fn ino_for(&self, path: &Path) -> u64 {
        if let Some(&ino) = self.nodes.read().by_path.get(path) {
            return ino;
        }
        let mut nodes = self.nodes.write();
        if let Some(&ino) = nodes.by_path.get(path) {
            return ino;
        }
        let ino = nodes.next_ino;
        nodes.next_ino += 1;
        nodes.by_path.insert(path.to_path_buf(), ino);
        nodes.by_ino.insert(
            ino,
            Node {
                path: path.to_path_buf(),
                attr: None,
                listing: None,
            },
        );
        ino
    }

    fn store_attr(&self, ino: u64, attr: &Attr) {
        if let Some(n) = self.nodes.write().by_ino.get_mut(&ino) {
            n.attr = Some((attr.clone(), Instant::now()));
        }
    }

    /// Attributes of an inode, from the cache while fresh, else from the source.
    pub fn getattr(&self, ino: u64) -> io::Result<Attr> {
        let path = {
            let nodes = self.nodes.read();
            let node = nodes
                .by_ino
                .get(&ino)
                .ok_or_else(|| io::Error::from_raw_os_error(libc::ESTALE))?;
            if let Some((attr, at)) = &node.attr
                && self.fresh(*at)
            {
                return Ok(attr.clone());
            }
            node.path.clone()
        };
        self.refresh(ino, &path)
    }

    /// Asks the source and caches the answer.
    fn refresh(&self, ino: u64, path: &Path) -> io::Result<Attr> {
        let meta = self.source.lstat(path)?;
        let attr = attr_from(ino, &meta);
        self.store_attr(ino, &attr);
        Ok(attr)
    }

    pub fn lookup(&self, parent: u64, name: &OsStr) -> io::Result<Attr> {
        let parent_path = self
            .path_of(parent)
            .ok_or_else(|| io::Error::from_raw_os_error(libc::ESTALE))?;
        if name.is_empty() || name == "." || name == ".." || name.as_encoded_bytes().contains(&b'/')
        {
            return Err(io::Error::from_raw_os_error(libc::ENOENT));
        }
        let path = parent_path.join(name);
        // A fresh listing of the parent that lacks the name answers ENOENT without the source.
        if let Some(listing) = self.cached_listing(parent)
            && !listing.iter().any(|e| e.name == name)
        {
            return Err(io::Error::from_raw_os_error(libc::ENOENT));
        }
        let ino = self.ino_for(&path);
        self.getattr(ino)
    }

    fn cached_listing(&self, ino: u64) -> Option<Arc<Vec<DirEntry>>> {
        let nodes = self.nodes.read();
        let (listing, at) = nodes.by_ino.get(&ino)?.listing.as_ref()?;
        self.fresh(*at).then(|| listing.clone())
    }

    /// A directory's entries (sorted by name, for stable offsets), cached for the TTL.
    /// Each entry's attributes are fetched too and cached, so the `stat` that nearly
    /// every walker does next is answered without the source.
    pub fn list(&self, ino: u64) -> io::Result<Arc<Vec<DirEntry>>> {
        if let Some(l) = self.cached_listing(ino) {
            return Ok(l);
        }
        let path = self
            .path_of(ino)
            .ok_or_else(|| io::Error::from_raw_os_error(libc::ESTALE))?;
        let dir = self.source.open_dir(&path)?;
        let mut names: Vec<OsString> = dir.entries()?.into_iter().map(|e| e.name).collect();
        names.sort();
        // The entries' lstats overlap: on a shared filesystem each one is a round trip,
        // and a class folder of thousands of files would otherwise cost them in series.
        let metas = lstat_all(&dir, &names);
        let mut entries = Vec::with_capacity(names.len());
        for (name, meta) in names.into_iter().zip(metas) {
            let child_ino = self.ino_for(&path.join(&name));
            match meta {
                Ok(meta) => {
                    let attr = attr_from(child_ino, &meta);
                    self.store_attr(child_ino, &attr);
                    entries.push(DirEntry {
                        name,
                        ino: child_ino,
                        kind: attr.kind,
                    });
                }
                // Deleted between readdir and lstat: it is gone, leave it out.
                Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {}
                Err(e) => return Err(e),
            }
        }
        let listing = Arc::new(entries);
        if let Some(n) = self.nodes.write().by_ino.get_mut(&ino) {
            n.listing = Some((listing.clone(), Instant::now()));
        }
        Ok(listing)
    }

    /// The cached attributes of an entry just listed (for readdirplus).
    pub fn cached_attr(&self, ino: u64) -> Option<Attr> {
        let nodes = self.nodes.read();
        nodes
            .by_ino
            .get(&ino)?
            .attr
            .as_ref()
            .map(|(a, _)| a.clone())
    }

    pub fn read_link(&self, ino: u64) -> io::Result<PathBuf> {
        let path = self
            .path_of(ino)
            .ok_or_else(|| io::Error::from_raw_os_error(libc::ESTALE))?;
        self.source.read_link(&path)
    }

    /// The version of a regular file to serve from now on (attributes per the TTL).
    pub fn file_version(&self, ino: u64) -> io::Result<(FileVersion, Attr)> {
        let attr = self.getattr(ino)?;
        if attr.kind != Kind::File {
            return Err(io::Error::from_raw_os_error(if attr.kind == Kind::Dir {
                libc::EISDIR
            } else {
                libc::EINVAL
            }));
        }
        let path = self
            .path_of(ino)
            .ok_or_else(|| io::Error::from_raw_os_error(libc::ESTALE))?;
        Ok((
            FileVersion {
                path,
                size: attr.size,
                mtime_ns: attr.mtime_ns,
                ctime_ns: attr.ctime_ns,
                ino: attr.src_ino,
            },
            attr,
        ))
    }

    pub fn statfs(&self) -> io::Result<nix::sys::statvfs::Statvfs> {
        self.source.statfs()
    }

    pub fn get_xattr(&self, ino: u64, name: &OsStr) -> io::Result<Vec<u8>> {
        let path = self
            .path_of(ino)
            .ok_or_else(|| io::Error::from_raw_os_error(libc::ESTALE))?;
        self.source.get_xattr(&path, name)
    }

    pub fn list_xattr(&self, ino: u64) -> io::Result<Vec<u8>> {
        let path = self
            .path_of(ino)
            .ok_or_else(|| io::Error::from_raw_os_error(libc::ESTALE))?;
        self.source.list_xattr(&path)
    }
}

/// lstat of every name in `dir`, in order, on up to LIST_THREADS threads.
fn lstat_all(dir: &SourceDir<'_>, names: &[OsString]) -> Vec<io::Result<Stat>> {
    let one = |name: &OsString| dir.stat(name);
    if names.len() < 64 {
        return names.iter().map(one).collect();
    }
    let per = names.len().div_ceil(LIST_THREADS);
    std::thread::scope(|scope| {
        let parts: Vec<_> = names
            .chunks(per)
            .map(|part| scope.spawn(move || part.iter().map(one).collect::<Vec<_>>()))
            .collect();
        parts
            .into_iter()
            .flat_map(|h| h.join().expect("lstat thread panicked"))
            .collect()
    })
}
