//! The cache dir is bicache's and nobody else's: a folder holding other files keeps every
//! one of them, a folder made by another user (with planted symlinks) is refused and
//! nothing outside it changes, the source may not live inside it, and the default goes on
//! a node-local disk, never a network or FUSE filesystem (docs/SECURITY.md).

mod common;

use std::ffi::{OsStr, OsString};
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt, symlink};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::*;

/// Every entry under `root` with what must not change: content, mode, owner, mtime,
/// symlink target.
fn fingerprint(root: &Path) -> Vec<(PathBuf, u32, u32, i64, i64, Vec<u8>)> {
    let mut out = Vec::new();
    let me = fs::symlink_metadata(root).unwrap();
    out.push((
        PathBuf::new(),
        me.mode(),
        me.uid(),
        me.mtime(),
        me.mtime_nsec(),
        vec![],
    ));
    for (rel, m) in walk(root) {
        let p = root.join(&rel);
        let content = if m.is_file() {
            fs::read(&p).unwrap()
        } else if m.file_type().is_symlink() {
            fs::read_link(&p)
                .unwrap()
                .into_os_string()
                .into_encoded_bytes()
        } else {
            vec![]
        };
        out.push((rel, m.mode(), m.uid(), m.mtime(), m.mtime_nsec(), content));
    }
    out
}

#[test]
fn a_cache_dir_holding_other_files_keeps_every_one_unchanged() {
    if !fuse_or_skip() {
        return;
    }
    let s = Scratch::new();
    let data = s.file("data.bin", 3 << 20, 7);
    // A typical scratch folder: a tmp/ with files, a log, odd modes.
    let scratch = s.base.join("scratch");
    fs::create_dir_all(scratch.join("tmp/sub")).unwrap();
    fs::write(scratch.join("tmp/job.out"), b"results").unwrap();
    fs::write(scratch.join("tmp/sub/x"), b"more").unwrap();
    fs::write(scratch.join("lock"), b"someone else's lock").unwrap();
    fs::write(scratch.join("bicache.log"), b"not bicache's log").unwrap();
    fs::set_permissions(
        scratch.join("tmp/job.out"),
        fs::Permissions::from_mode(0o640),
    )
    .unwrap();
    fs::set_permissions(&scratch, fs::Permissions::from_mode(0o755)).unwrap();
    let before = fingerprint(&scratch);

    let mut m = Mount::new(
        &s.src,
        &scratch,
        &["--disk", "64MiB", "--chunk-size", "256KiB"],
    );
    assert_file_eq(&m.path("data.bin"), &data, "data.bin");
    let st = m.settle();
    assert_eq!(
        st["cache"]["dir"].as_str().unwrap(),
        scratch.join("bicache").to_str().unwrap(),
        "{st}"
    );
    m.remount();
    drop_caches();
    let before_src = stat(&m.stats(), "source.bytes");
    assert_file_eq(&m.path("data.bin"), &data, "data.bin after remount");
    assert_eq!(
        stat(&m.stats(), "source.bytes"),
        before_src,
        "the cache was not kept"
    );
    drop(m);

    // Everything that was there is there, unchanged (the folder's own mtime changed only
    // because bicache/ was added to it).
    let after = fingerprint(&scratch);
    let theirs: Vec<_> = after
        .iter()
        .filter(|e| !e.0.starts_with("bicache") && !e.0.as_os_str().is_empty())
        .cloned()
        .collect();
    assert_eq!(
        theirs,
        before[1..],
        "a file bicache did not create was changed"
    );
    assert_eq!(after[0].1, before[0].1, "the folder's mode was changed");
}

#[test]
fn a_source_inside_the_cache_dir_is_refused() {
    let s = Scratch::new();
    let mp = s.base.join("mnt");
    fs::create_dir(&mp).unwrap();
    let _guard = MountGuard::new(&mp);
    let out = bicache(
        [
            OsStr::new("mount"),
            s.src.as_os_str(),
            mp.as_os_str(),
            OsStr::new("--cache-dir"),
            s.base.as_os_str(),
        ],
        Duration::from_secs(20),
    )
    .unwrap();
    assert!(!out.status.success(), "{}", out.describe());
    let line = out.stderr.trim();
    assert_eq!(line.lines().count(), 1, "{line}");
    assert!(
        line.contains("inside --cache-dir") && line.contains(s.src.to_str().unwrap()),
        "{line}"
    );
    assert!(!is_mounted(&mp));
    assert!(
        !s.base.join("CACHEDIR.TAG").exists(),
        "refused, yet it marked the folder"
    );
}

#[test]
fn a_cache_dir_made_by_another_user_with_planted_symlinks_is_refused() {
    let s = Scratch::new();
    s.file("a.bin", 1000, 1);
    let mp = s.base.join("mnt");
    fs::create_dir(&mp).unwrap();
    let _guard = MountGuard::new(&mp);
    // Files of root's an attacker would like truncated or deleted.
    let victims = s.base.join("victims");
    fs::create_dir(&victims).unwrap();
    for v in ["passwd", "FORMAT", "log"] {
        fs::write(victims.join(v), format!("precious {v}")).unwrap();
    }
    fs::create_dir(victims.join("dir")).unwrap();
    fs::write(victims.join("dir/f"), b"precious f").unwrap();
    let before = fingerprint(&victims);
    // nobody owns a folder where the cache dir will be looked for, and plants symlinks.
    let planted = s.base.join("planted");
    fs::create_dir(&planted).unwrap();
    chown(&planted, NOBODY_UID, NOBODY_GID);
    open_path_for_nobody(&planted.join("x"));
    for (link, target) in [
        ("lock", "passwd"),
        ("FORMAT", "FORMAT"),
        ("bicache.log", "log"),
        ("CACHEDIR.TAG", "passwd"),
        ("chunks-v3", "dir"),
        ("tmp", "dir"),
    ] {
        let l = planted.join(link);
        let t = victims.join(target);
        assert!(
            as_nobody("ln", &[OsStr::new("-s"), t.as_os_str(), l.as_os_str()])
                .status
                .success()
        );
    }
    let try_mount = |cache: &Path| {
        bicache(
            [
                OsStr::new("mount"),
                s.src.as_os_str(),
                mp.as_os_str(),
                OsStr::new("--cache-dir"),
                cache.as_os_str(),
            ],
            Duration::from_secs(20),
        )
        .unwrap()
    };
    let out = try_mount(&planted);
    assert!(!out.status.success(), "{}", out.describe());
    let line = out.stderr.trim();
    assert_eq!(line.lines().count(), 1, "{line}");
    assert!(
        line.contains("owned by uid 65534") && line.contains("planted"),
        "{line}"
    );
    // A world-writable folder of root's own is refused too.
    let open = s.base.join("open");
    fs::create_dir(&open).unwrap();
    fs::set_permissions(&open, fs::Permissions::from_mode(0o1777)).unwrap();
    let out = try_mount(&open);
    assert!(
        !out.status.success() && out.stderr.contains("writable by everyone"),
        "{}",
        out.describe()
    );
    // A symlink as the cache dir itself.
    let link = s.base.join("link");
    symlink(&victims, &link).unwrap();
    let out = try_mount(&link);
    assert!(
        !out.status.success() && out.stderr.contains("is a symlink"),
        "{}",
        out.describe()
    );

    assert!(!is_mounted(&mp));
    assert_eq!(
        fingerprint(&victims),
        before,
        "a file outside the cache dir changed"
    );
}

/// Without --cache-dir the cache goes on a node-local disk named by the job's
/// environment ($TMPDIR here), in a private folder; a $TMPDIR on a FUSE filesystem (like a
/// network one) is passed over; the log and `bicache stats` say where the cache is.
#[test]
fn the_default_cache_dir_is_node_local_and_private() {
    if !fuse_or_skip() {
        return;
    }
    let s = Scratch::new();
    let data = s.file("a.bin", 100_000, 3);
    let tmpdir = s.base.join("job-tmp");
    fs::create_dir(&tmpdir).unwrap();
    // A writable FUSE mount, standing in for NFS/Lustre.
    let fuse_under = s.base.join("fuse-under");
    let fuse_tmp = s.base.join("fuse-tmp");
    fs::create_dir(&fuse_under).unwrap();
    fs::create_dir(&fuse_tmp).unwrap();
    let _fuse_guard = MountGuard::new(&fuse_tmp);
    let mut c = Command::new("bindfs");
    c.arg(&fuse_under).arg(&fuse_tmp);
    let out = run_cmd(c, Duration::from_secs(20)).unwrap();
    assert!(out.status.success(), "bindfs: {}", out.describe());

    let mount_with_env = |tmp: &Path| -> (PathBuf, CmdOut) {
        let mp = s.base.join(format!(
            "mnt-{}",
            tmp.file_name().unwrap().to_string_lossy()
        ));
        fs::create_dir_all(&mp).unwrap();
        let mut c = Command::new(BIN);
        c.args([OsStr::new("mount"), s.src.as_os_str(), mp.as_os_str()])
            .args(["--disk", "16MiB", "--log-file"])
            .arg(s.base.join("default.log"))
            .env("TMPDIR", tmp)
            .env_remove("SLURM_TMPDIR")
            .env_remove("XDG_CACHE_HOME")
            .env("HOME", s.base.join("no-home"));
        (mp, run_cmd(c, Duration::from_secs(30)).unwrap())
    };
    let uid = nix::unistd::geteuid().as_raw();
    for (tmp, want_under) in [
        (&tmpdir, tmpdir.clone()),
        (&fuse_tmp, PathBuf::from("/var/tmp")),
    ] {
        let (mp, out) = mount_with_env(tmp);
        let _guard = MountGuard::new(&mp);
        assert!(out.status.success(), "{}", out.describe());
        assert_eq!(fs::read(mp.join("a.bin")).unwrap(), data);
        let st: serde_json::Value =
            serde_json::from_str(&fs::read_to_string(mp.join(".bicache/stats.json")).unwrap())
                .unwrap();
        let dir = PathBuf::from(st["cache"]["dir"].as_str().unwrap());
        let want_parent = want_under.join(format!("bicache-{uid}"));
        assert!(
            dir.starts_with(&want_parent),
            "TMPDIR={}: cache in {}",
            tmp.display(),
            dir.display()
        );
        assert_ne!(st["cache"]["fs_type"].as_str().unwrap(), "fuse", "{st}");
        assert_eq!(mode_of(&want_parent) & 0o777, 0o700);
        let log = fs::read_to_string(s.base.join("default.log")).unwrap();
        assert!(
            log.contains(&*dir.to_string_lossy()),
            "the log does not say where the cache is"
        );
        if tmp == &fuse_tmp {
            assert!(log.contains("a network filesystem"), "{log}");
            assert!(
                fs::read_dir(&fuse_under).unwrap().next().is_none(),
                "wrote into the FUSE tmpdir"
            );
        }
        let out = bicache(
            [OsString::from("unmount"), mp.clone().into()],
            Duration::from_secs(20),
        )
        .unwrap();
        assert!(out.status.success(), "{}", out.describe());
        if !dir.starts_with(&s.base) {
            // The /var/tmp fallback is outside the scratch dir: clean up what the test made.
            let _ = fs::remove_dir_all(&dir);
        }
    }
    // Asked for by name, a cache dir on a network or FUSE filesystem is used, with one
    // loud warning that names it.
    let on_fuse = fuse_tmp.join("cache");
    let mp = s.base.join("mnt-explicit");
    fs::create_dir(&mp).unwrap();
    let _guard = MountGuard::new(&mp);
    let mut c = Command::new(BIN);
    c.args([OsStr::new("mount"), s.src.as_os_str(), mp.as_os_str()])
        .args(["--disk", "16MiB", "--cache-dir"])
        .arg(&on_fuse);
    let out = run_cmd(c, Duration::from_secs(30)).unwrap();
    assert!(out.status.success(), "{}", out.describe());
    let warning = format!(
        "bicache: WARNING: --cache-dir {} is on fuse, a network or FUSE filesystem: every \
         cached read goes over the network again",
        on_fuse.display()
    );
    assert!(out.stderr.contains(&warning), "{}", out.describe());
    assert_eq!(fs::read(mp.join("a.bin")).unwrap(), data);
    let out = bicache(
        [OsString::from("unmount"), mp.clone().into()],
        Duration::from_secs(20),
    )
    .unwrap();
    assert!(out.status.success(), "{}", out.describe());
}
