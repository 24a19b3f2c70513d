//! The cache dir: bicache's own folder, and nobody else's.
//!
//! A cache dir is often an existing scratch folder on a node many users share, and the
//! daemon often runs as root. So bicache writes only inside a folder it can show is its
//! own: one it created, an empty one it was given, or one already marked as a bicache
//! cache (`CACHEDIR.TAG` naming bicache). Given a folder that holds other files, it uses
//! its subfolder `bicache/` instead and touches nothing else. It refuses, with one line, a
//! folder (or any entry it uses in one) owned by another user, writable by group or others,
//! or a symlink. Everything inside is opened relative to a directory descriptor with
//! `O_NOFOLLOW`, so a symlink planted later is never followed. Nothing is ever chmod-ed,
//! and nothing bicache did not create is ever deleted.

pub mod fstype;
pub mod location;
pub mod share;

use std::ffi::OsStr;
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag};
use nix::sys::stat::Mode;

pub use fstype::{Class, FsType};

/// The mark of a bicache cache dir. The CACHEDIR.TAG convention also tells backup tools
/// to skip the folder.
pub const MARKER: &str = "CACHEDIR.TAG";
const MARKER_TEXT: &str = "Signature: 8a477f597d28d172789f06886806bc55\n\
    # This directory is a bicache cache: bicache created the files in it and may\n\
    # delete any of them. Keep nothing else here.\n";
/// The marker of cache dirs made before the marker existed (format 2 and older).
const LEGACY_FORMAT_FILE: &str = "FORMAT";
/// Where bicache keeps its cache when the folder it was given holds other files.
pub const SUBFOLDER: &str = "bicache";

fn euid() -> u32 {
    nix::unistd::geteuid().as_raw()
}

fn errno_msg(e: Errno) -> String {
    io::Error::from(e).to_string()
}

/// A directory bicache owns, open as a descriptor; every entry is reached through it.
#[derive(Debug)]
pub struct PrivateDir {
    path: PathBuf,
    fd: OwnedFd,
}

/// Why an entry of a private dir can't be used.
fn foreign(path: &Path, st: &libc::stat) -> Option<String> {
    let me = euid();
    if st.st_uid != me {
        return Some(format!(
            "{} is owned by uid {}, not by this user (uid {me}): another user made it",
            path.display(),
            st.st_uid
        ));
    }
    if st.st_mode & 0o022 != 0 {
        return Some(format!(
            "{} is writable by {} (mode {:o}): other users could plant files in it",
            path.display(),
            if st.st_mode & 0o002 != 0 {
                "everyone"
            } else {
                "its group"
            },
            st.st_mode & 0o7777
        ));
    }
    None
}

impl PrivateDir {
    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// Another handle on the same directory.
    pub fn try_clone(&self) -> io::Result<PrivateDir> {
        Ok(PrivateDir {
            path: self.path.clone(),
            fd: self.fd.try_clone()?,
        })
    }

    /// A duplicate of the directory's descriptor.
    pub fn try_clone_fd(&self) -> io::Result<OwnedFd> {
        self.fd.try_clone()
    }

    /// Opens a file in this dir, never following a symlink; with O_CREAT it is made 0600.
    /// An existing file must be a regular file of ours.
    pub fn open_file(&self, name: &str, flags: OFlag) -> io::Result<File> {
        let fd = nix::fcntl::openat(
            self.fd.as_fd(),
            name,
            flags | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC | OFlag::O_NONBLOCK,
            Mode::from_bits_truncate(0o600),
        )?;
        let st = nix::sys::stat::fstat(&fd)?;
        if st.st_mode & libc::S_IFMT != libc::S_IFREG || st.st_uid != euid() {
            return Err(io::Error::other(format!(
                "{} is not a regular file of this user",
                self.path.join(name).display()
            )));
        }
        Ok(File::from(fd))
    }

    /// Reads a whole small file of this dir (None if it does not exist).
    pub fn read(&self, name: &str) -> io::Result<Option<Vec<u8>>> {
        match self.open_file(name, OFlag::O_RDONLY) {
            Ok(mut f) => {
                let mut out = Vec::new();
                f.read_to_end(&mut out)?;
                Ok(Some(out))
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Replaces `name` with `data` atomically: written to a temporary name, synced, renamed.
    pub fn write_atomic(&self, name: &str, data: &[u8]) -> io::Result<()> {
        self.write_atomic_with(name, |w| w.write_all(data))
    }

    /// Replaces `name` with what `write` writes, atomically (a temporary name, synced,
    /// renamed), without holding the whole content in memory.
    pub fn write_atomic_with(
        &self,
        name: &str,
        write: impl FnOnce(&mut dyn Write) -> io::Result<()>,
    ) -> io::Result<()> {
        // Unique per call: two writers of one name (mounts starting together, threads)
        // must not rename each other's half-written file or find theirs gone.
        static WRITES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = WRITES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let tmp = format!(".{name}.tmp-{}.{n}", std::process::id());
        let result = (|| -> io::Result<()> {
            let f = self.open_file(&tmp, OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_TRUNC)?;
            let mut w = io::BufWriter::with_capacity(1 << 20, f);
            write(&mut w)?;
            let f = w.into_inner().map_err(|e| e.into_error())?;
            f.sync_data()?;
            self.rename(&tmp, name)
        })();
        if result.is_err() {
            let _ = self.remove_file(&tmp);
        }
        result
    }

    pub fn rename(&self, from: &str, to: &str) -> io::Result<()> {
        Ok(nix::fcntl::renameat(
            self.fd.as_fd(),
            from,
            self.fd.as_fd(),
            to,
        )?)
    }

    /// Removes a file bicache made here (a symlink of that name is removed as a link,
    /// never followed).
    pub fn remove_file(&self, name: impl AsRef<OsStr>) -> io::Result<()> {
        Ok(nix::unistd::unlinkat(
            self.fd.as_fd(),
            name.as_ref(),
            nix::unistd::UnlinkatFlags::NoRemoveDir,
        )?)
    }

    /// A subdirectory, created 0700 if missing. An existing one must be a real directory
    /// (not a symlink) of ours that others cannot write.
    pub fn subdir(&self, name: &str) -> io::Result<PrivateDir> {
        match nix::sys::stat::mkdirat(self.fd.as_fd(), name, Mode::S_IRWXU) {
            Ok(()) | Err(Errno::EEXIST) => {}
            Err(e) => return Err(e.into()),
        }
        let path = self.path.join(name);
        let fd = open_dir_nofollow(self.fd.as_fd(), Path::new(name))
            .map_err(|e| io::Error::other(format!("{}: {}", path.display(), errno_msg(e))))?;
        let st = nix::sys::stat::fstat(&fd)?;
        if let Some(why) = foreign(&path, &st) {
            return Err(io::Error::other(why));
        }
        Ok(PrivateDir { path, fd })
    }

    /// Whether an entry of this name exists (a symlink counts as existing).
    pub fn exists(&self, name: &str) -> bool {
        nix::sys::stat::fstatat(self.fd.as_fd(), name, AtFlags::AT_SYMLINK_NOFOLLOW).is_ok()
    }

    /// The names in this dir (without "." and "..").
    pub fn names(&self) -> io::Result<Vec<std::ffi::OsString>> {
        let fd = nix::fcntl::openat(
            self.fd.as_fd(),
            ".",
            OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )?;
        let mut dir = nix::dir::Dir::from_fd(fd)?;
        let mut out = Vec::new();
        for e in dir.iter() {
            let e = e?;
            let n = e.file_name().to_bytes();
            if n != b"." && n != b".." {
                out.push(OsStr::from_bytes(n).to_os_string());
            }
        }
        Ok(out)
    }
}

/// Opens a directory, refusing a symlink as the last component.
fn open_dir_nofollow(at: BorrowedFd<'_>, p: &Path) -> Result<OwnedFd, Errno> {
    nix::fcntl::openat(
        at,
        p,
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
}

/// The cache dir of one mount.
#[derive(Debug)]
pub struct CacheDir {
    dir: PrivateDir,
    fs: FsType,
    /// How it came to be bicache's (for the log).
    pub how: Claim,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Claim {
    /// Created by this mount.
    Created,
    /// Given empty, and marked.
    Adopted,
    /// Already marked as a bicache cache.
    Marked,
    /// Made by an earlier bicache that had no marker yet (format 2): marked now.
    Legacy,
}

impl std::ops::Deref for CacheDir {
    type Target = PrivateDir;
    fn deref(&self) -> &PrivateDir {
        &self.dir
    }
}

impl CacheDir {
    /// Takes `requested` as the cache dir, creating it (0700) if missing. A folder that
    /// holds other files is left as it is and its subfolder `bicache/` is used instead.
    /// Errors are one line naming the path.
    pub fn claim(requested: &Path) -> Result<CacheDir, String> {
        match Self::claim_exact(requested)? {
            Some(c) => Ok(c),
            None => {
                let sub = requested.join(SUBFOLDER);
                Self::claim_exact(&sub)?.ok_or_else(|| {
                    format!(
                        "--cache-dir {}: holds other files, and so does {}; give an empty \
                         folder or one of bicache's",
                        requested.display(),
                        sub.display()
                    )
                })
            }
        }
    }

    /// `requested` itself if it is or can become bicache's; None if it holds other files.
    fn claim_exact(requested: &Path) -> Result<Option<CacheDir>, String> {
        let bad = |why: String| format!("--cache-dir {}: {why}", requested.display());
        let mut created = false;
        let fd = match open_dir_nofollow(nix::fcntl::AT_FDCWD, requested) {
            Ok(fd) => fd,
            Err(Errno::ENOENT) => {
                std::fs::DirBuilder::new()
                    .recursive(true)
                    .mode_0700()
                    .create(requested)
                    .map_err(|e| bad(format!("cannot create: {e}")))?;
                created = true;
                open_dir_nofollow(nix::fcntl::AT_FDCWD, requested).map_err(|e| bad(errno_msg(e)))?
            }
            Err(Errno::ELOOP) | Err(Errno::ENOTDIR) if is_symlink(requested) => {
                return Err(bad(
                    "is a symlink; give the folder it points to (a symlink can be swapped \
                     by whoever owns it)"
                        .into(),
                ));
            }
            Err(Errno::ENOTDIR) => return Err(bad("not a directory".into())),
            Err(e) => return Err(bad(errno_msg(e))),
        };
        let st = nix::sys::stat::fstat(&fd).map_err(|e| bad(errno_msg(e)))?;
        if let Some(why) = foreign(requested, &st) {
            return Err(format!("--cache-dir: {why}; bicache will not use it"));
        }
        let fs = FsType::of_fd(&fd).map_err(|e| bad(e.to_string()))?;
        let dir = PrivateDir {
            path: requested.to_path_buf(),
            fd,
        };
        let bicache_mark = |text: &[u8]| text.windows(7).any(|w| w == b"bicache");
        let how = if created {
            Claim::Created
        } else {
            match dir.read(MARKER) {
                Ok(Some(text)) if bicache_mark(&text) => Claim::Marked,
                Ok(Some(_)) => return Ok(None),
                Err(e) => return Err(bad(format!("{MARKER}: {e}"))),
                Ok(None) => match dir.read(LEGACY_FORMAT_FILE) {
                    Ok(Some(t)) if t.starts_with(b"bicache-cache ") => Claim::Legacy,
                    _ => {
                        let names = dir.names().map_err(|e| bad(e.to_string()))?;
                        // Another bicache that just made the folder may have renamed its
                        // mark in since the read above: read it again.
                        if names.iter().any(|n| n == MARKER) {
                            return match dir.read(MARKER) {
                                Ok(Some(text)) if bicache_mark(&text) => Ok(Some(CacheDir {
                                    dir,
                                    fs,
                                    how: Claim::Marked,
                                })),
                                Ok(_) => Ok(None),
                                Err(e) => Err(bad(format!("{MARKER}: {e}"))),
                            };
                        }
                        // Or still be writing it: that folder is still empty of anything
                        // but bicache's.
                        let marker_tmp = format!(".{MARKER}.tmp-");
                        let ours = |n: &std::ffi::OsString| {
                            n.to_str()
                                .and_then(|n| n.strip_prefix(&marker_tmp))
                                .is_some_and(|t| t.bytes().all(|b| b.is_ascii_digit() || b == b'.'))
                        };
                        if !names.iter().all(ours) {
                            return Ok(None);
                        }
                        Claim::Adopted
                    }
                },
            }
        };
        if how != Claim::Marked {
            match dir.write_atomic(MARKER, MARKER_TEXT.as_bytes()) {
                Ok(()) => {}
                // A read-only cache dir is usable as no cache at all: the mount serves
                // from RAM and the source (and nobody can write there to confuse it).
                Err(e) if e.raw_os_error() == Some(libc::EROFS) => {}
                Err(e) => return Err(bad(format!("cannot write {MARKER}: {e}"))),
            }
        }
        Ok(Some(CacheDir { dir, fs, how }))
    }

    pub fn fs_type(&self) -> FsType {
        self.fs
    }

    /// Takes the cache dir's lock (`lock`, holding the owner's pid): one daemon per cache
    /// dir. Held until the returned file is closed. None on a read-only filesystem, where
    /// no daemon can write anything to contend for.
    pub fn lock(&self) -> Result<Option<File>, String> {
        let mut f = match self.open_file("lock", OFlag::O_RDWR | OFlag::O_CREAT) {
            Ok(f) => f,
            Err(e) if e.raw_os_error() == Some(libc::EROFS) => return Ok(None),
            Err(e) => return Err(format!("cannot open {}/lock: {e}", self.path().display())),
        };
        // Safety: flock on a descriptor we own; the lock goes with it when it is closed.
        let rc = unsafe {
            libc::flock(
                std::os::fd::AsRawFd::as_raw_fd(&f),
                libc::LOCK_EX | libc::LOCK_NB,
            )
        };
        match if rc == 0 { Ok(()) } else { Err(Errno::last()) } {
            Ok(()) => {
                let _ = f.set_len(0);
                let _ = writeln!(f, "{}", std::process::id());
                Ok(Some(f))
            }
            Err(Errno::EWOULDBLOCK) => {
                let owner = self.read("lock").ok().flatten().unwrap_or_default();
                Err(format!(
                    "--cache-dir {} is in use by another bicache daemon (pid {}); give each \
                     mount its own cache dir",
                    self.path().display(),
                    String::from_utf8_lossy(&owner).trim()
                ))
            }
            Err(e) => Err(format!(
                "cannot lock {}/lock: {} (does its filesystem, {}, support flock?); give a \
                 --cache-dir on a local disk",
                self.path().display(),
                errno_msg(e),
                self.fs.name()
            )),
        }
    }
}

fn is_symlink(p: &Path) -> bool {
    std::fs::symlink_metadata(p).is_ok_and(|m| m.file_type().is_symlink())
}

trait Mode0700 {
    fn mode_0700(&mut self) -> &mut Self;
}

impl Mode0700 for std::fs::DirBuilder {
    fn mode_0700(&mut self) -> &mut Self {
        use std::os::unix::fs::DirBuilderExt;
        self.mode(0o700)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use std::os::unix::fs::{PermissionsExt, symlink};

    fn mode(p: &Path) -> u32 {
        fs::symlink_metadata(p).unwrap().permissions().mode() & 0o7777
    }

    #[test]
    fn a_missing_folder_is_created_private_and_marked() {
        let t = tempfile::tempdir().unwrap();
        let d = t.path().join("a/b/cache");
        let c = CacheDir::claim(&d).unwrap();
        assert_eq!(c.how, Claim::Created);
        assert_eq!(c.path(), d);
        assert_eq!(mode(&d), 0o700);
        assert!(
            fs::read_to_string(d.join(MARKER))
                .unwrap()
                .contains("bicache")
        );
        drop(c);
        assert_eq!(CacheDir::claim(&d).unwrap().how, Claim::Marked);
    }

    #[test]
    fn mounts_claiming_a_new_folder_at_once_all_get_that_folder() {
        // Ranks of a job start together and claim the node's shared lists folder at the
        // same moment: one creates and marks it while the others look inside.
        for round in 0..1000 {
            let t = tempfile::tempdir().unwrap();
            let d = t.path().join("lists");
            let got: Vec<PathBuf> = std::thread::scope(|sc| {
                let hs: Vec<_> = (0..4)
                    .map(|_| sc.spawn(|| CacheDir::claim(&d).map(|c| c.path().to_path_buf())))
                    .collect();
                hs.into_iter().map(|h| h.join().unwrap().unwrap()).collect()
            });
            assert!(got.iter().all(|p| *p == d), "round {round}: {got:?}");
        }
    }

    #[test]
    fn a_folder_with_other_files_is_left_alone() {
        let t = tempfile::tempdir().unwrap();
        let d = t.path().join("scratch");
        fs::create_dir_all(d.join("tmp")).unwrap();
        fs::write(d.join("tmp/keep"), b"user data").unwrap();
        fs::set_permissions(&d, fs::Permissions::from_mode(0o755)).unwrap();
        let c = CacheDir::claim(&d).unwrap();
        assert_eq!(c.path(), d.join(SUBFOLDER));
        assert_eq!(mode(&d), 0o755, "the given folder was chmod-ed");
        assert_eq!(fs::read(d.join("tmp/keep")).unwrap(), b"user data");
        assert!(!d.join(MARKER).exists());
        // An empty folder is adopted as it is (mode untouched).
        let e = t.path().join("empty");
        fs::create_dir(&e).unwrap();
        fs::set_permissions(&e, fs::Permissions::from_mode(0o750)).unwrap();
        assert_eq!(CacheDir::claim(&e).unwrap().how, Claim::Adopted);
        assert_eq!(mode(&e), 0o750);
    }

    #[test]
    fn foreign_writable_and_symlinked_folders_are_refused() {
        let t = tempfile::tempdir().unwrap();
        let w = t.path().join("world");
        fs::create_dir(&w).unwrap();
        fs::set_permissions(&w, fs::Permissions::from_mode(0o777)).unwrap();
        let e = CacheDir::claim(&w).unwrap_err();
        assert!(
            e.contains("writable by everyone") && e.contains("world"),
            "{e}"
        );
        let real = t.path().join("real");
        fs::create_dir(&real).unwrap();
        symlink(&real, t.path().join("link")).unwrap();
        let e = CacheDir::claim(&t.path().join("link")).unwrap_err();
        assert!(e.contains("is a symlink"), "{e}");
        let f = t.path().join("file");
        fs::write(&f, b"x").unwrap();
        assert!(CacheDir::claim(&f).unwrap_err().contains("not a directory"));
    }

    #[test]
    fn entries_are_opened_without_following_symlinks() {
        let t = tempfile::tempdir().unwrap();
        let c = CacheDir::claim(&t.path().join("c")).unwrap();
        let victim = t.path().join("victim");
        fs::write(&victim, b"precious").unwrap();
        symlink(&victim, c.path().join("lock")).unwrap();
        assert!(c.lock().is_err());
        assert!(c.open_file("lock", OFlag::O_RDWR | OFlag::O_CREAT).is_err());
        symlink(t.path(), c.path().join("chunks")).unwrap();
        assert!(c.subdir("chunks").is_err());
        assert_eq!(fs::read(&victim).unwrap(), b"precious");
        c.remove_file("lock").unwrap();
        assert!(victim.exists(), "removing the link removed its target");
        let l = c.lock().unwrap();
        let e = c.lock().unwrap_err();
        assert!(e.contains("in use by another bicache daemon"), "{e}");
        drop(l);
    }
}
