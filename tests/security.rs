//! Safe on a shared node: source access that cannot leave SOURCE, whatever another user
//! does to the dataset while it is mounted (docs/SECURITY.md names these tests).

mod common;

use std::ffi::OsStr;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, Instant};

use common::*;

/// A source with a folder `user/` that `nobody` may write, and a root-only folder beside
/// the source whose file is world-readable (only the folder protects it).
fn shared_node() -> (Scratch, std::path::PathBuf) {
    let s = Scratch::new();
    let user = s.dir("user");
    chown(&user, NOBODY_UID, NOBODY_GID);
    fs::set_permissions(&s.src, fs::Permissions::from_mode(0o755)).unwrap();
    let private = s.base.join("private");
    fs::create_dir(&private).unwrap();
    fs::write(private.join("secret.txt"), b"root's secret").unwrap();
    fs::set_permissions(
        private.join("secret.txt"),
        fs::Permissions::from_mode(0o644),
    )
    .unwrap();
    fs::set_permissions(&private, fs::Permissions::from_mode(0o700)).unwrap();
    open_path_for_nobody(&s.src.join("user"));
    (s, private)
}

fn nobody_reads(path: &std::path::Path) -> CmdOut {
    as_nobody("cat", &[path.as_os_str()])
}

/// The attack of issue 9: make a folder, let the mount see it, swap it for a symlink into
/// a folder only root may enter, read through the mount. Once for a folder only looked up
/// (stat), once for a folder listed (ls) with a decoy of the same name inside. The secret
/// must never be read, by nobody or by root.
#[test]
fn a_folder_swapped_for_a_symlink_never_leads_outside_the_source() {
    if !fuse_or_skip() {
        return;
    }
    let (s, private) = shared_node();
    // Checked first: the secret really is out of nobody's reach at the source.
    let direct = nobody_reads(&private.join("secret.txt"));
    assert!(
        !direct.status.success(),
        "test setup: nobody can read the secret directly"
    );

    let m = s.mount(&["--allow-other", "--disk", "16MiB"]);
    open_path_for_nobody(&m.mountpoint);
    for variant in ["looked up", "listed"] {
        let name = format!("d-{}", variant.replace(' ', "-"));
        let at_source = s.src.join("user").join(&name);
        // nobody makes the folder (with a decoy file for the listed variant)...
        assert!(
            as_nobody("mkdir", &[at_source.as_os_str()])
                .status
                .success()
        );
        if variant == "listed" {
            // Not empty: reading it must go to the source.
            let decoy = at_source.join("secret.txt");
            let script = format!("echo decoy > '{}'", decoy.display());
            assert!(
                as_nobody("sh", &[OsStr::new("-c"), OsStr::new(&script)])
                    .status
                    .success()
            );
        }
        let through_mount = m.path("user").join(&name);
        if variant == "looked up" {
            assert!(
                as_nobody("stat", &[through_mount.as_os_str()])
                    .status
                    .success()
            );
        } else {
            let out = as_nobody("ls", &[OsStr::new("-l"), through_mount.as_os_str()]);
            assert!(out.status.success(), "{}", out.describe());
            assert!(out.stdout.contains("secret.txt"), "{}", out.stdout);
        }
        // ...swaps it for a symlink into root's private folder...
        let aside = s.src.join("user").join(format!("{name}-aside"));
        assert!(
            as_nobody("mv", &[at_source.as_os_str(), aside.as_os_str()])
                .status
                .success()
        );
        assert!(
            as_nobody(
                "ln",
                &[OsStr::new("-s"), private.as_os_str(), at_source.as_os_str()]
            )
            .status
            .success()
        );
        // ...and reads "its" file through the mount.
        let out = nobody_reads(&through_mount.join("secret.txt"));
        assert!(
            !out.stdout.contains("secret"),
            "{variant}: nobody read root's file through the mount: {}",
            out.describe()
        );
        // What the mount may give instead of an error is the decoy: the file the listing's
        // lookup resolved (and showed), reopened as that very inode wherever it went,
        // just as its bytes would be served had they been cached before the swap.
        let decoy_read = variant == "listed" && out.status.success() && out.stdout == "decoy\n";
        assert!(
            !out.status.success() || decoy_read,
            "{variant}: {}",
            out.describe()
        );
        // Root, too, gets nothing from outside the source through this path.
        let root_read = fs::read(through_mount.join("secret.txt"));
        assert!(
            !root_read.as_deref().unwrap_or(b"").starts_with(b"root's"),
            "{variant}: the daemon followed the symlink for root"
        );
    }
}

/// A FIFO put in place of a file the mount knows as a regular file: the read fails at
/// once (an open of a FIFO would block a FUSE thread forever).
#[test]
fn a_fifo_swapped_in_for_a_file_gives_an_error_not_a_hang() {
    if !fuse_or_skip() {
        return;
    }
    let s = Scratch::new();
    s.file("data.bin", 300_000, 1);
    let m = s.mount(&["--disk", "16MiB", "--chunk-size", "64KiB"]);
    // The mount learns the file's attributes (kept for the metadata TTL).
    assert_eq!(fs::metadata(m.path("data.bin")).unwrap().len(), 300_000);
    // Lookups of as many other files: the source descriptor that lookup kept is gone, so
    // the read below opens the path and finds the FIFO. (With it, the read gets the
    // unlinked file the lookup resolved, whole: `source::tests`.)
    for i in 0..bicache::source::LOOKED_UP {
        let name = format!("other{i}");
        fs::write(s.src.join(&name), b"x").unwrap();
        fs::metadata(m.path(&name)).unwrap();
    }
    fs::remove_file(s.src.join("data.bin")).unwrap();
    nix::unistd::mkfifo(&s.src.join("data.bin"), nix::sys::stat::Mode::S_IRWXU).unwrap();
    let started = Instant::now();
    let (tx, rx) = std::sync::mpsc::channel();
    let p = m.path("data.bin");
    std::thread::spawn(move || {
        let _ = tx.send(fs::read(&p).map(|d| d.len()));
    });
    let got = rx
        .recv_timeout(Duration::from_secs(10))
        .expect("a read through the mount hung on a FIFO at the source");
    let e = got.expect_err("bytes read from a FIFO as if it were the file");
    assert_eq!(e.raw_os_error(), Some(libc::ESTALE), "{e}");
    assert!(started.elapsed() < Duration::from_secs(5));
    // A file cached whole, and one cached in part (its first chunk), swapped for FIFOs:
    // no hang either; each read is the old version whole (from the cache and the
    // descriptor that still holds the unlinked file) or ESTALE, never a FIFO's bytes.
    let whole = s.file("whole.bin", 300_000, 3);
    let part = s.file("part.bin", 300_000, 4);
    assert_eq!(fs::read(m.path("whole.bin")).unwrap(), whole);
    {
        use std::os::unix::fs::FileExt;
        let mut head = vec![0u8; 4096];
        fs::File::open(m.path("part.bin"))
            .unwrap()
            .read_exact_at(&mut head, 0)
            .unwrap();
        assert_eq!(head, part[..4096]);
    }
    for (name, data) in [("whole.bin", &whole), ("part.bin", &part)] {
        fs::remove_file(s.src.join(name)).unwrap();
        nix::unistd::mkfifo(&s.src.join(name), nix::sys::stat::Mode::S_IRWXU).unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let p = m.path(name);
        std::thread::spawn(move || {
            let _ = tx.send(fs::read(&p));
        });
        match rx
            .recv_timeout(Duration::from_secs(10))
            .unwrap_or_else(|_| panic!("a read of {name} hung on a FIFO at the source"))
        {
            Ok(got) => assert_bytes_eq(&got, data, name),
            Err(e) => assert_eq!(e.raw_os_error(), Some(libc::ESTALE), "{name}: {e}"),
        }
    }
    // The daemon still serves.
    s.file("other.bin", 1000, 2);
    assert_eq!(fs::read(m.path("other.bin")).unwrap().len(), 1000);
}

/// POSIX ACLs at the source hold through the mount: an ACL that denies a user what the
/// mode bits would allow, and one that grants what they would deny.
#[test]
fn posix_acls_at_the_source_are_enforced() {
    if !fuse_or_skip() {
        return;
    }
    let s = Scratch::new();
    s.file("denied.bin", 5000, 1);
    // Text, so it survives the trip through a command's output.
    let granted = "granted to nobody by an ACL\n".repeat(100);
    s.write("granted.bin", granted.as_bytes());
    fs::set_permissions(s.src.join("denied.bin"), fs::Permissions::from_mode(0o644)).unwrap();
    fs::set_permissions(s.src.join("granted.bin"), fs::Permissions::from_mode(0o600)).unwrap();
    let setfacl = |spec: &str, f: &str| {
        let out = std::process::Command::new("setfacl")
            .args(["-m", spec])
            .arg(s.src.join(f))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "setfacl: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    setfacl("u:nobody:---", "denied.bin");
    setfacl("u:nobody:r--", "granted.bin");
    open_path_for_nobody(&s.src.join("x"));
    // At the source, as the reference.
    assert!(!nobody_reads(&s.src.join("denied.bin")).status.success());
    assert!(nobody_reads(&s.src.join("granted.bin")).status.success());
    let m = s.mount(&["--allow-other", "--disk", "16MiB"]);
    open_path_for_nobody(&m.mountpoint);
    let out = nobody_reads(&m.path("denied.bin"));
    assert!(
        !out.status.success(),
        "an ACL denial was not enforced: {}",
        out.describe()
    );
    let out = nobody_reads(&m.path("granted.bin"));
    assert!(
        out.status.success(),
        "an ACL grant was not honoured: {}",
        out.describe()
    );
    assert_eq!(out.stdout, granted);
}

/// Under --allow-other the counters are readable by the users of the mount, the shard's
/// file list only by the user who mounted it.
#[test]
fn control_files_keep_the_shard_list_private() {
    if !fuse_or_skip() {
        return;
    }
    let s = Scratch::new();
    s.file("a.bin", 100, 1);
    fs::set_permissions(&s.src, fs::Permissions::from_mode(0o755)).unwrap();
    let m = s.mount(&[
        "--allow-other",
        "--disk",
        "16MiB",
        "--shard-index",
        "0",
        "--shard-count",
        "1",
    ]);
    open_path_for_nobody(&m.mountpoint);
    let stats = nobody_reads(&m.path(".bicache/stats.json"));
    assert!(stats.status.success(), "{}", stats.describe());
    assert!(stats.stdout.contains("\"ram\""));
    let shard = nobody_reads(&m.path(".bicache/shard.txt"));
    assert!(
        !shard.status.success(),
        "nobody read the shard list: {}",
        shard.describe()
    );
    assert_eq!(
        fs::read_to_string(m.path(".bicache/shard.txt")).unwrap(),
        "a.bin\n"
    );
}
