//! Where the cache goes when `--cache-dir` is not given: on this node's own disk, never
//! on a network filesystem (which would put every "local" read back on the shared link),
//! and in RAM (tmpfs) only when nothing else is there.
//!
//! Candidates, first usable wins: `$SLURM_TMPDIR`, `$TMPDIR` (a job's node-local scratch
//! on most clusters), `$XDG_CACHE_HOME` or `~/.cache` (a workstation's home), node-local
//! scratch disks (`/local*`, `/scratch*`, `/lscratch*`, `/localscratch*`, `/mnt/local*`),
//! then `/var/tmp` and `/tmp`. A candidate is usable when it is a directory this user may
//! write and its filesystem is a local disk. In folders other users share, the cache goes
//! in a private `bicache-<uid>/` folder (refused if someone else made it); in the user's
//! own cache folder, in `bicache/`. Under either, one folder per source.

use std::ffi::OsString;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use super::fstype::{Class, FsType};

/// The default cache dir, why it was chosen, and what was passed over.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Choice {
    pub path: PathBuf,
    pub why: String,
    /// Candidates passed over, and why (for the log).
    pub skipped: Vec<String>,
    /// Set when the choice is a poor one (tmpfs).
    pub warning: Option<String>,
}

/// A place the cache may go: a base folder, and whether other users share it.
struct Candidate {
    base: PathBuf,
    origin: String,
    shared: bool,
}

fn candidates(env: &dyn Fn(&str) -> Option<OsString>, top: &[PathBuf]) -> Vec<Candidate> {
    let mut out = Vec::new();
    let abs = |v: Option<OsString>| v.map(PathBuf::from).filter(|p| p.is_absolute());
    for var in ["SLURM_TMPDIR", "TMPDIR"] {
        if let Some(p) = abs(env(var)) {
            out.push(Candidate {
                base: p,
                origin: format!("${var}"),
                shared: true,
            });
        }
    }
    if let Some(p) = abs(env("XDG_CACHE_HOME")) {
        out.push(Candidate {
            base: p,
            origin: "$XDG_CACHE_HOME".into(),
            shared: false,
        });
    }
    if let Some(h) = abs(env("HOME")) {
        out.push(Candidate {
            base: h.join(".cache"),
            origin: "~/.cache".into(),
            shared: false,
        });
    }
    const PREFIXES: &[&str] = &["local", "scratch", "lscratch", "localscratch"];
    let mut scratch: Vec<PathBuf> = top
        .iter()
        .filter(|p| {
            let name = p.file_name().map(|n| n.to_string_lossy().into_owned());
            let under_mnt = p.parent() == Some(Path::new("/mnt"));
            name.is_some_and(|n| {
                PREFIXES.iter().any(|pre| n.starts_with(pre))
                    && (!under_mnt || n.starts_with("local"))
            })
        })
        .cloned()
        .collect();
    scratch.sort();
    for p in scratch {
        out.push(Candidate {
            origin: "a node-local scratch disk".into(),
            base: p,
            shared: true,
        });
    }
    for p in ["/var/tmp", "/tmp"] {
        out.push(Candidate {
            base: PathBuf::from(p),
            origin: p.into(),
            shared: true,
        });
    }
    out
}

/// Top-level folders that may be scratch disks: `/<name>` and `/mnt/<name>`.
fn top_level_dirs() -> Vec<PathBuf> {
    let mut out = Vec::new();
    for root in ["/", "/mnt"] {
        if let Ok(rd) = std::fs::read_dir(root) {
            out.extend(rd.flatten().map(|e| e.path()).filter(|p| p.is_dir()));
        }
    }
    out
}

fn writable_dir(p: &Path) -> bool {
    p.is_dir()
        && nix::unistd::access(
            p,
            nix::unistd::AccessFlags::W_OK | nix::unistd::AccessFlags::X_OK,
        )
        .is_ok()
}

/// The cache dir for `source` when none is given.
pub fn default_cache_dir(
    source: &Path,
    env: &dyn Fn(&str) -> Option<OsString>,
) -> Result<Choice, String> {
    choose(source, env, &top_level_dirs())
}

/// A folder of this user's on the node-local disk the default cache would use, shared by
/// all of the user's mounts on the node whatever their cache dirs (e.g. the dataset walks
/// every rank of a job would otherwise repeat). None if there is no such disk.
pub fn node_shared_dir(name: &str) -> Option<PathBuf> {
    let env = |k: &str| std::env::var_os(k);
    let c = choose(Path::new("/"), &env, &top_level_dirs()).ok()?;
    // `choose` names a folder for a source under the private folder: take its parent.
    Some(c.path.parent()?.join(name))
}

fn choose(
    source: &Path,
    env: &dyn Fn(&str) -> Option<OsString>,
    top: &[PathBuf],
) -> Result<Choice, String> {
    let uid = nix::unistd::geteuid().as_raw();
    // One cache dir per source: each has one owning daemon (the lock).
    let tag = format!(
        "{:016x}",
        xxhash_rust::xxh3::xxh3_64(source.as_os_str().as_encoded_bytes())
    );
    let mut skipped = Vec::new();
    let mut in_memory: Option<(Candidate, PathBuf)> = None;
    for c in candidates(env, top) {
        let what = format!("{} ({})", c.base.display(), c.origin);
        if !writable_dir(&c.base) {
            // Only worth a word when it was asked for by name.
            if c.origin.starts_with('$') {
                skipped.push(format!("{what}: not a writable directory"));
            }
            continue;
        }
        let class = match FsType::of_path(&c.base) {
            Ok(t) if t.class() == Class::Remote => {
                skipped.push(format!("{what}: on {}, a network filesystem", t.name()));
                continue;
            }
            Ok(t) => t.class(),
            Err(e) => {
                skipped.push(format!("{what}: {e}"));
                continue;
            }
        };
        let private = if c.shared {
            c.base.join(format!("bicache-{uid}"))
        } else {
            c.base.join("bicache")
        };
        // A private folder someone else made first is not ours to use.
        if let Ok(m) = std::fs::symlink_metadata(&private)
            && (m.uid() != uid || m.mode() & 0o022 != 0 || !m.is_dir())
        {
            skipped.push(format!(
                "{what}: {} exists and is not this user's private folder",
                private.display()
            ));
            continue;
        }
        if class == Class::Memory {
            if in_memory.is_none() {
                in_memory = Some((c, private));
            }
            continue;
        }
        return Ok(Choice {
            path: private.join(&tag),
            why: format!("{} is on a local disk", what),
            skipped,
            warning: None,
        });
    }
    match in_memory {
        Some((c, private)) => Ok(Choice {
            path: private.join(&tag),
            why: format!("{} ({})", c.base.display(), c.origin),
            warning: Some(format!(
                "the default cache dir {} is on tmpfs, in RAM: the SSD tier then competes \
                 with the RAM tier for memory; give --cache-dir on a local disk",
                c.base.display()
            )),
            skipped,
        }),
        None => Err(format!(
            "no node-local disk found for the cache ({}); give --cache-dir DIR on a local disk",
            if skipped.is_empty() {
                "no candidate folder is writable".to_string()
            } else {
                skipped.join("; ")
            }
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env(pairs: &[(&str, &Path)]) -> impl Fn(&str) -> Option<OsString> {
        let m: HashMap<String, OsString> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.as_os_str().to_os_string()))
            .collect();
        move |k| m.get(k).cloned()
    }

    #[test]
    fn prefers_the_jobs_tmpdir_then_the_users_cache_and_skips_fuse() {
        let t = tempfile::tempdir().unwrap();
        let tmpdir = t.path().join("job");
        let home = t.path().join("home");
        std::fs::create_dir_all(&tmpdir).unwrap();
        std::fs::create_dir_all(home.join(".cache")).unwrap();
        let uid = nix::unistd::geteuid().as_raw();
        let c = choose(
            Path::new("/data"),
            &env(&[("TMPDIR", &tmpdir), ("HOME", &home)]),
            &[],
        )
        .unwrap();
        assert!(
            c.path.starts_with(tmpdir.join(format!("bicache-{uid}"))),
            "{c:?}"
        );
        let c = choose(Path::new("/data"), &env(&[("HOME", &home)]), &[]).unwrap();
        assert!(c.path.starts_with(home.join(".cache/bicache")), "{c:?}");
        // Another source, another folder.
        let d = choose(Path::new("/other"), &env(&[("HOME", &home)]), &[]).unwrap();
        assert_ne!(c.path, d.path);
        // A TMPDIR that does not exist is passed over, with a word.
        let c = choose(
            Path::new("/data"),
            &env(&[("TMPDIR", &t.path().join("nope")), ("HOME", &home)]),
            &[],
        )
        .unwrap();
        assert!(c.skipped.iter().any(|s| s.contains("nope")), "{c:?}");
        // /proc is not a writable disk; /var/tmp or /tmp always remain on this machine.
        let c = choose(Path::new("/data"), &env(&[]), &[PathBuf::from("/proc")]).unwrap();
        assert!(
            c.path.starts_with("/var/tmp") || c.path.starts_with("/tmp"),
            "{c:?}"
        );
    }

    #[test]
    fn a_private_folder_made_by_someone_else_is_skipped() {
        let t = tempfile::tempdir().unwrap();
        let shared = t.path().join("shared");
        std::fs::create_dir_all(&shared).unwrap();
        let uid = nix::unistd::geteuid().as_raw();
        let squat = shared.join(format!("bicache-{uid}"));
        std::fs::create_dir(&squat).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&squat, std::fs::Permissions::from_mode(0o777)).unwrap();
        let c = choose(Path::new("/data"), &env(&[("TMPDIR", &shared)]), &[]).unwrap();
        assert!(!c.path.starts_with(&shared), "{c:?}");
        assert!(
            c.skipped.iter().any(|s| s.contains("not this user's")),
            "{c:?}"
        );
    }
}
