//! Every write-type operation through the mount fails with EROFS and leaves
//! the source untouched.

mod common;

use std::fs::{self, OpenOptions};
use std::io;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use common::*;

/// A comparable snapshot of a tree: path, type, mode, uid, gid, size,
/// mtime (s, ns), nlink, content or symlink target.
fn snapshot(root: &Path) -> Vec<String> {
    let mut v = Vec::new();
    let rmd = fs::symlink_metadata(root).unwrap();
    v.push(format!(
        "<root> mode={:o} mtime={}.{}",
        rmd.mode(),
        rmd.mtime(),
        rmd.mtime_nsec()
    ));
    for (rel, md) in walk(root) {
        let p = root.join(&rel);
        let extra = if md.is_file() {
            let d = fs::read(&p).unwrap();
            format!("len={} xor={:016x}", d.len(), fold(&d))
        } else if md.file_type().is_symlink() {
            format!("-> {}", fs::read_link(&p).unwrap().display())
        } else {
            String::new()
        };
        v.push(format!(
            "{} mode={:o} uid={} gid={} size={} mtime={}.{} nlink={} ino={} {extra}",
            rel.display(),
            md.mode(),
            md.uid(),
            md.gid(),
            md.len(),
            md.mtime(),
            md.mtime_nsec(),
            md.nlink(),
            md.ino(),
        ));
    }
    v
}

/// A cheap content fingerprint (position dependent).
fn fold(d: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in d {
        h = (h ^ *b as u64).wrapping_mul(0x1000_0000_01b3);
    }
    h
}

fn libc_result(r: libc::c_int) -> io::Result<()> {
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

#[track_caller]
fn expect_erofs<T: std::fmt::Debug>(what: &str, r: io::Result<T>) {
    match r {
        Ok(v) => panic!("{what}: succeeded ({v:?}) on a read-only mount; expected EROFS"),
        Err(e) => assert_eq!(
            e.raw_os_error(),
            Some(libc::EROFS),
            "{what}: expected EROFS, got {e} ({:?})",
            e.raw_os_error()
        ),
    }
}

#[test]
fn every_write_operation_fails_with_erofs_and_source_is_unchanged() {
    if !fuse_or_skip() {
        return;
    }
    let s = Scratch::new();
    s.file("file.bin", 100_000, 1);
    s.file("dir/inner.txt", 500, 2);
    s.file("dir/sub/deep.txt", 300, 3);
    s.dir("empty_dir");
    std::os::unix::fs::symlink("file.bin", s.src.join("link")).unwrap();
    set_mtime(&s.src.join("file.bin"), 1_650_000_000, 111_111_111);
    let before = snapshot(&s.src);

    let m = s.mount(&["--chunk-size", "64KiB"]);
    let mp = m.mountpoint.clone();
    let entry = mount_entry(&mp).expect("mounted");
    assert!(
        entry.mount_options.split(',').any(|o| o == "ro"),
        "mount options must include ro: {:?}",
        entry.mount_options
    );
    // Warm some data first so cached state exists.
    let _ = fs::read(mp.join("file.bin")).unwrap();

    let f = mp.join("file.bin");
    let d = mp.join("dir");
    let p = |x: &str| -> PathBuf { mp.join(x) };

    // open for write / append / read-write / truncate; create.
    expect_erofs("open(O_WRONLY)", OpenOptions::new().write(true).open(&f));
    expect_erofs(
        "open(O_RDWR)",
        OpenOptions::new().read(true).write(true).open(&f),
    );
    expect_erofs("open(O_APPEND)", OpenOptions::new().append(true).open(&f));
    expect_erofs(
        "open(O_WRONLY|O_TRUNC)",
        OpenOptions::new().write(true).truncate(true).open(&f),
    );
    expect_erofs("creat(new file)", fs::File::create(p("new.txt")));
    expect_erofs("creat(existing file)", fs::File::create(&f));
    expect_erofs(
        "open(O_CREAT|O_EXCL)",
        OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(d.join("x")),
    );
    // directories
    expect_erofs("mkdir", fs::create_dir(p("newdir")));
    expect_erofs("mkdir in subdir", fs::create_dir(d.join("newdir")));
    expect_erofs("rmdir(empty dir)", fs::remove_dir(p("empty_dir")));
    expect_erofs("rmdir(non-empty dir)", fs::remove_dir(p("dir")));
    // unlink / rename / links
    expect_erofs("unlink(file)", fs::remove_file(&f));
    expect_erofs("unlink(symlink)", fs::remove_file(p("link")));
    expect_erofs("rename(file)", fs::rename(&f, p("renamed.bin")));
    expect_erofs("rename(file into dir)", fs::rename(&f, d.join("file.bin")));
    expect_erofs("rename(dir)", fs::rename(&d, p("dir2")));
    expect_erofs("rename(over existing)", fs::rename(d.join("inner.txt"), &f));
    expect_erofs(
        "symlink",
        std::os::unix::fs::symlink("file.bin", p("newlink")),
    );
    expect_erofs("link", fs::hard_link(&f, p("hardlink")));
    // attributes
    expect_erofs(
        "chmod(file)",
        fs::set_permissions(&f, fs::Permissions::from_mode(0o777)),
    );
    expect_erofs(
        "chmod(dir)",
        fs::set_permissions(&d, fs::Permissions::from_mode(0o777)),
    );
    expect_erofs(
        "chmod(mount root)",
        fs::set_permissions(&mp, fs::Permissions::from_mode(0o700)),
    );
    expect_erofs("chown", std::os::unix::fs::chown(&f, Some(1), Some(1)));
    expect_erofs(
        "lchown(symlink)",
        std::os::unix::fs::lchown(p("link"), Some(1), Some(1)),
    );
    let cf = cpath(&f);
    expect_erofs(
        "truncate",
        libc_result(unsafe { libc::truncate(cf.as_ptr(), 0) }),
    );
    expect_erofs(
        "truncate(grow)",
        libc_result(unsafe { libc::truncate(cf.as_ptr(), 1 << 20) }),
    );
    let ts = [
        libc::timespec {
            tv_sec: 1,
            tv_nsec: 0,
        },
        libc::timespec {
            tv_sec: 2,
            tv_nsec: 0,
        },
    ];
    expect_erofs(
        "utimensat(explicit times)",
        libc_result(unsafe { libc::utimensat(libc::AT_FDCWD, cf.as_ptr(), ts.as_ptr(), 0) }),
    );
    expect_erofs(
        "utimensat(now)",
        libc_result(unsafe { libc::utimensat(libc::AT_FDCWD, cf.as_ptr(), std::ptr::null(), 0) }),
    );
    let name = c"user.bicache_test";
    let val = b"v";
    expect_erofs(
        "setxattr",
        libc_result(unsafe {
            libc::setxattr(
                cf.as_ptr(),
                name.as_ptr(),
                val.as_ptr().cast(),
                val.len(),
                0,
            )
        }),
    );
    expect_erofs(
        "removexattr",
        libc_result(unsafe { libc::removexattr(cf.as_ptr(), name.as_ptr()) }),
    );
    let cfifo = cpath(&p("fifo"));
    expect_erofs(
        "mkfifo",
        libc_result(unsafe { libc::mkfifo(cfifo.as_ptr(), 0o644) }),
    );
    // The control dir is read-only too.
    let stats = m.stats_path();
    expect_erofs(
        "open(stats.json, O_WRONLY)",
        OpenOptions::new().write(true).open(&stats),
    );
    expect_erofs("mkdir in .bicache", fs::create_dir(p(".bicache/x")));
    expect_erofs("unlink stats.json", fs::remove_file(&stats));

    // The mount still works and shows the original content.
    let got = fs::read(mp.join("file.bin")).unwrap();
    assert_bytes_eq(
        &got,
        &fs::read(s.src.join("file.bin")).unwrap(),
        "file.bin after the attempts",
    );
    assert!(!p("new.txt").exists() && !p("newdir").exists());
    drop(m);

    let after = snapshot(&s.src);
    assert_eq!(before, after, "the source tree changed");
}
