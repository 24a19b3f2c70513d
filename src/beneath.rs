//! Path resolution that cannot leave a directory: SOURCE, or the cache dir.
//!
//! Paths are relative to a root and resolved from a directory descriptor of that root,
//! never as strings: a user who can write somewhere in the dataset could otherwise swap a
//! folder for a symlink into a folder they may not enter, and read through the mount (run
//! as root) what they cannot read at the source.
//!
//! `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS)` (Linux 5.6+) refuses any symlink in
//! any component and any escape from the root in one call. Where it is missing, the same
//! rule is kept by walking component by component with `O_NOFOLLOW`. A symlink in the
//! dataset is still listed and read as a symlink (`readlink`); it is only never followed
//! by bicache itself: the kernel follows it in the reader's own context, with the reader's
//! own permissions.

use std::ffi::OsStr;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};

use nix::fcntl::{OFlag, OpenHow, ResolveFlag};
use nix::sys::stat::Mode;

/// Files created through a `Beneath` are private to their owner.
const CREATE_MODE: Mode = Mode::S_IRUSR.union(Mode::S_IWUSR);

/// Resolves relative paths beneath one root directory.
pub struct Beneath {
    root: OwnedFd,
    /// Cleared once openat2 turns out to be missing (ENOSYS): every later call walks.
    openat2: AtomicBool,
}

fn errno(code: i32) -> io::Error {
    io::Error::from_raw_os_error(code)
}

/// The components of a relative path, each a plain name. Anything else ("..", ".", an
/// absolute path, an empty name) is refused: the namespace never produces one, so one
/// seen here is a bug or an attack, not a path to try.
fn names(rel: &Path) -> io::Result<Vec<&OsStr>> {
    let mut out = Vec::new();
    for c in rel.components() {
        match c {
            Component::Normal(n) => out.push(n),
            _ => return Err(errno(libc::EINVAL)),
        }
    }
    Ok(out)
}

impl Beneath {
    /// Opens `root` (a directory, followed if it is a symlink: the user named it).
    pub fn open(root: &Path) -> io::Result<Beneath> {
        let fd = nix::fcntl::open(
            root,
            OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )?;
        Ok(Beneath {
            root: fd,
            openat2: AtomicBool::new(true),
        })
    }

    /// Resolves beneath an already open directory (e.g. the cache dir's descriptor).
    pub fn from_fd(root: OwnedFd) -> Beneath {
        Beneath {
            root,
            openat2: AtomicBool::new(true),
        }
    }

    /// Creates the directory `rel` and its missing parents (mode 0700), never following a
    /// symlink.
    pub fn mkdir_all(&self, rel: &Path) -> io::Result<()> {
        let parts = names(rel)?;
        let mut cur = PathBuf::new();
        for p in parts {
            cur.push(p);
            let (parent, name) = self.open_parent(&cur)?.expect("non-empty path");
            match nix::sys::stat::mkdirat(&parent, name, Mode::S_IRWXU) {
                Ok(()) | Err(nix::Error::EEXIST) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }

    /// Removes the file (not directory) `rel`; a symlink of that name is removed itself.
    pub fn unlink(&self, rel: &Path) -> io::Result<()> {
        let (parent, name) = self.open_parent(rel)?.ok_or_else(|| errno(libc::EINVAL))?;
        Ok(nix::unistd::unlinkat(
            &parent,
            name,
            nix::unistd::UnlinkatFlags::NoRemoveDir,
        )?)
    }

    /// Renames `from` to `to` (both beneath the root), replacing `to`.
    pub fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        let (fp, fname) = self.open_parent(from)?.ok_or_else(|| errno(libc::EINVAL))?;
        let (tp, tname) = self.open_parent(to)?.ok_or_else(|| errno(libc::EINVAL))?;
        Ok(nix::fcntl::renameat(&fp, fname, &tp, tname)?)
    }

    /// Like `open`, but with the component walk only (for tests of the fallback).
    #[cfg(test)]
    pub fn open_without_openat2(root: &Path) -> io::Result<Beneath> {
        let b = Beneath::open(root)?;
        b.openat2.store(false, Relaxed);
        Ok(b)
    }

    pub fn root(&self) -> BorrowedFd<'_> {
        self.root.as_fd()
    }

    /// Opens `rel` with `flags` (O_NOFOLLOW and O_CLOEXEC are always added; a file made by
    /// O_CREAT is 0600). "" is the root itself. A symlink in any component fails with ELOOP; a symlink as the last
    /// component too, unless `flags` has O_PATH (then the link itself is opened).
    pub fn open_at(&self, rel: &Path, flags: OFlag) -> io::Result<OwnedFd> {
        let flags = flags | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
        let parts = names(rel)?;
        if parts.is_empty() {
            return reopen(self.root.as_fd(), flags);
        }
        if self.openat2.load(Relaxed) {
            // RESOLVE_NO_SYMLINKS refuses a trailing symlink too (ELOOP); O_NOFOLLOW is
            // kept only where it changes that, for O_PATH (open the link itself). With
            // O_DIRECTORY it would turn ELOOP into ENOTDIR.
            let flags = if flags.contains(OFlag::O_DIRECTORY) {
                flags & !OFlag::O_NOFOLLOW
            } else {
                flags
            };
            // openat2 refuses a mode without O_CREAT.
            let mode = if flags.contains(OFlag::O_CREAT) {
                CREATE_MODE
            } else {
                Mode::empty()
            };
            let how = OpenHow::new().flags(flags).mode(mode).resolve(
                ResolveFlag::RESOLVE_BENEATH
                    | ResolveFlag::RESOLVE_NO_SYMLINKS
                    | ResolveFlag::RESOLVE_NO_MAGICLINKS,
            );
            match nix::fcntl::openat2(self.root.as_fd(), rel, how) {
                Ok(fd) => return Ok(fd),
                Err(nix::Error::ENOSYS) => self.openat2.store(false, Relaxed),
                // openat2 refuses a path whose resolution races a rename with EAGAIN;
                // the walk below is as safe and does not.
                Err(nix::Error::EAGAIN) => {}
                Err(e) => return Err(e.into()),
            }
        }
        self.walk(&parts, flags)
    }

    /// Opens the directory holding `rel` (O_PATH) and returns it with the last name.
    /// None for the root itself (it has no parent beneath the root).
    pub fn open_parent<'a>(&self, rel: &'a Path) -> io::Result<Option<(OwnedFd, &'a OsStr)>> {
        let parts = names(rel)?;
        let Some((last, dirs)) = parts.split_last() else {
            return Ok(None);
        };
        let dir_flags = OFlag::O_PATH | OFlag::O_DIRECTORY;
        let parent = match rel.parent() {
            Some(p) if !dirs.is_empty() => self.open_at(p, dir_flags)?,
            _ => reopen(self.root.as_fd(), dir_flags | OFlag::O_CLOEXEC)?,
        };
        Ok(Some((parent, last)))
    }

    /// The fallback: one `openat(O_NOFOLLOW)` per component, directories as O_PATH.
    fn walk(&self, parts: &[&OsStr], flags: OFlag) -> io::Result<OwnedFd> {
        let (last, dirs) = parts.split_last().expect("callers pass a non-empty path");
        let mut cur: Option<OwnedFd> = None;
        for d in dirs {
            let at = cur.as_ref().map_or(self.root.as_fd(), |f| f.as_fd());
            let next = nix::fcntl::openat(
                at,
                *d,
                OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
                Mode::empty(),
            )
            .map_err(|e| {
                // O_NOFOLLOW on a symlink with O_PATH|O_DIRECTORY reports ENOTDIR; say
                // what openat2 says for the same path.
                if e == nix::Error::ENOTDIR && is_symlink_at(at, d) {
                    errno(libc::ELOOP)
                } else {
                    e.into()
                }
            })?;
            cur = Some(next);
        }
        let at = cur.as_ref().map_or(self.root.as_fd(), |f| f.as_fd());
        nix::fcntl::openat(at, *last, flags, CREATE_MODE).map_err(|e| {
            if e == nix::Error::ENOTDIR && is_symlink_at(at, last) {
                errno(libc::ELOOP)
            } else {
                e.into()
            }
        })
    }
}

fn is_symlink_at(dir: BorrowedFd<'_>, name: &OsStr) -> bool {
    nix::sys::stat::fstatat(dir, name, nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW)
        .is_ok_and(|st| st.st_mode & libc::S_IFMT == libc::S_IFLNK)
}

/// Opens the object an O_PATH descriptor refers to afresh with other flags: the same
/// inode, with no path resolved again. A directory (the root, to list it) is opened as
/// its own "."; anything else through its `/proc/self/fd/N` link (a regular file a lookup
/// resolved, to read it).
pub fn reopen(fd: BorrowedFd<'_>, flags: OFlag) -> io::Result<OwnedFd> {
    let flags = (flags | OFlag::O_CLOEXEC) & !OFlag::O_NOFOLLOW;
    match nix::fcntl::openat(fd, ".", flags, Mode::empty()) {
        Err(nix::Error::ENOTDIR) => {
            use std::os::unix::ffi::OsStrExt;
            let path = proc_fd_path(fd);
            Ok(nix::fcntl::open(
                Path::new(OsStr::from_bytes(&path)),
                flags,
                Mode::empty(),
            )?)
        }
        r => Ok(r?),
    }
}

/// `/proc/self/fd/N` for a descriptor: a path the xattr calls (which have no *at form
/// before Linux 6.13) can use without resolving anything again.
pub fn proc_fd_path(fd: BorrowedFd<'_>) -> Vec<u8> {
    let mut p = b"/proc/self/fd/".to_vec();
    p.extend_from_slice(fd.as_raw_fd().to_string().as_bytes());
    p
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use std::os::unix::fs::symlink;

    fn tree() -> (tempfile::TempDir, std::path::PathBuf) {
        let t = tempfile::tempdir().unwrap();
        let root = t.path().join("root");
        fs::create_dir_all(root.join("a/b")).unwrap();
        fs::write(root.join("a/b/f"), b"inside").unwrap();
        fs::create_dir_all(t.path().join("outside")).unwrap();
        fs::write(t.path().join("outside/secret"), b"secret").unwrap();
        symlink(t.path().join("outside"), root.join("a/esc")).unwrap();
        symlink("b", root.join("a/rel")).unwrap();
        symlink("f", root.join("a/b/flink")).unwrap();
        (t, root)
    }

    fn read(fd: OwnedFd) -> Vec<u8> {
        let mut f = fs::File::from(fd);
        let mut out = Vec::new();
        std::io::Read::read_to_end(&mut f, &mut out).unwrap();
        out
    }

    fn check(b: &Beneath) {
        let fd = b.open_at(Path::new("a/b/f"), OFlag::O_RDONLY).unwrap();
        assert_eq!(read(fd), b"inside");
        for p in ["a/esc/secret", "a/rel/f", "a/b/flink"] {
            let e = b.open_at(Path::new(p), OFlag::O_RDONLY).unwrap_err();
            assert_eq!(e.raw_os_error(), Some(libc::ELOOP), "{p}: {e}");
        }
        for p in ["../outside/secret", "/etc/passwd", "a/../a/b/f", "."] {
            let e = b.open_at(Path::new(p), OFlag::O_RDONLY).unwrap_err();
            assert_eq!(e.raw_os_error(), Some(libc::EINVAL), "{p}: {e}");
        }
        // A symlink as the last component opens as itself with O_PATH.
        let fd = b.open_at(Path::new("a/esc"), OFlag::O_PATH).unwrap();
        let st = nix::sys::stat::fstat(&fd).unwrap();
        assert_eq!(st.st_mode & libc::S_IFMT, libc::S_IFLNK);
        // The root itself, and a parent split.
        let st = nix::sys::stat::fstat(b.open_at(Path::new(""), OFlag::O_PATH).unwrap()).unwrap();
        assert_eq!(st.st_mode & libc::S_IFMT, libc::S_IFDIR);
        let (dir, name) = b.open_parent(Path::new("a/b/f")).unwrap().unwrap();
        assert_eq!(name, "f");
        assert!(nix::sys::stat::fstatat(&dir, name, nix::fcntl::AtFlags::empty()).is_ok());
        assert!(b.open_parent(Path::new("")).unwrap().is_none());
        let e = b.open_parent(Path::new("a/esc/secret")).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::ELOOP));
    }

    #[test]
    fn nothing_resolves_outside_the_root_with_openat2() {
        let (_t, root) = tree();
        check(&Beneath::open(&root).unwrap());
    }

    #[test]
    fn nothing_resolves_outside_the_root_with_the_component_walk() {
        let (_t, root) = tree();
        check(&Beneath::open_without_openat2(&root).unwrap());
    }
}
