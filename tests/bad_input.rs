//! Invalid invocations fail fast, with exactly one line on stderr naming the
//! offending value or path, no panic text, nothing left mounted and no
//! daemon left behind.

mod common;

use std::ffi::{OsStr, OsString};
use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::*;

const LIMIT: Duration = Duration::from_secs(5);

struct Case {
    s: Scratch,
    mp: PathBuf,
}

fn case() -> Case {
    let s = Scratch::new();
    s.file("file.txt", 1000, 1);
    s.dir("inner");
    let mp = s.base.join("mnt");
    fs::create_dir(&mp).unwrap();
    Case { s, mp }
}

fn mount_args(src: &Path, mp: &Path, cache: &Path, extra: &[&str]) -> Vec<OsString> {
    let mut v: Vec<OsString> = vec![
        "mount".into(),
        src.into(),
        mp.into(),
        "--cache-dir".into(),
        cache.into(),
    ];
    v.extend(extra.iter().map(OsString::from));
    v
}

/// Runs bicache with `args` and checks every property of a clean rejection.
/// `needles`: strings that must all appear in the error line.
/// `watch`: the scratch base; nothing may be mounted at or below it and no
/// process may still be serving `mp`.
fn expect_rejected(args: &[OsString], needles: &[&str], mp: &Path, watch: &Path) -> String {
    let _guard = MountGuard::new(mp);
    let start = Instant::now();
    let out = bicache(args, LIMIT)
        .unwrap_or_else(|e| panic!("bicache {args:?} must fail within {LIMIT:?}: {e}"));
    assert!(
        !out.status.success(),
        "bicache {args:?} must fail, but exited 0:\n{}",
        out.describe()
    );
    assert!(
        out.status.code().is_some(),
        "bicache {args:?} died from a signal: {:?}",
        out.status
    );
    assert!(start.elapsed() < LIMIT, "took {:?}", start.elapsed());
    let err = out.stderr.strip_suffix('\n').unwrap_or(&out.stderr);
    assert!(
        !err.trim().is_empty(),
        "bicache {args:?}: stderr must hold one error line, got nothing:\n{}",
        out.describe()
    );
    assert!(
        !err.contains('\n'),
        "bicache {args:?}: stderr must be exactly one line, got {} lines:\n{}",
        err.lines().count(),
        out.stderr
    );
    for bad in ["panicked", "RUST_BACKTRACE"] {
        assert!(
            !out.stderr.contains(bad) && !out.stdout.contains(bad),
            "bicache {args:?} printed panic text:\n{}",
            out.describe()
        );
    }
    for n in needles {
        assert!(
            err.contains(n),
            "bicache {args:?}: the error line must name {n:?}, got: {err:?}"
        );
    }
    let left = mounts_at_or_below(watch);
    assert!(
        left.is_empty(),
        "bicache {args:?} failed but left a mount behind: {left:?}"
    );
    assert!(!is_mounted(mp), "{} is mounted", mp.display());
    let t = Instant::now();
    loop {
        let pids = pids_with_arg(mp.as_os_str());
        if pids.is_empty() {
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(1),
            "bicache {args:?} failed but processes {pids:?} for {} are still running",
            mp.display()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    err.to_string()
}

fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 temp path")
}

#[test]
fn missing_source() {
    let c = case();
    let src = c.s.base.join("no_such_source");
    expect_rejected(
        &mount_args(&src, &c.mp, &c.s.cache, &[]),
        &[s(&src)],
        &c.mp,
        &c.s.base,
    );
}

#[test]
fn source_is_a_regular_file() {
    let c = case();
    let src = c.s.src.join("file.txt");
    expect_rejected(
        &mount_args(&src, &c.mp, &c.s.cache, &[]),
        &[s(&src)],
        &c.mp,
        &c.s.base,
    );
}

#[test]
fn missing_mountpoint() {
    let c = case();
    let mp = c.s.base.join("no_such_mountpoint");
    expect_rejected(
        &mount_args(&c.s.src, &mp, &c.s.cache, &[]),
        &[s(&mp)],
        &mp,
        &c.s.base,
    );
}

#[test]
fn mountpoint_equal_to_source() {
    let c = case();
    expect_rejected(
        &mount_args(&c.s.src, &c.s.src, &c.s.cache, &[]),
        &[s(&c.s.src)],
        &c.s.src,
        &c.s.base,
    );
}

#[test]
fn mountpoint_inside_source() {
    let c = case();
    let mp = c.s.src.join("inner");
    expect_rejected(
        &mount_args(&c.s.src, &mp, &c.s.cache, &[]),
        &[s(&mp)],
        &mp,
        &c.s.base,
    );
}

#[test]
fn cache_dir_inside_source() {
    let c = case();
    let cache = c.s.src.join("cachedir");
    let before: Vec<_> = walk(&c.s.src).into_iter().map(|e| e.0).collect();
    expect_rejected(
        &mount_args(&c.s.src, &c.mp, &cache, &[]),
        &[s(&cache)],
        &c.mp,
        &c.s.base,
    );
    let after: Vec<_> = walk(&c.s.src).into_iter().map(|e| e.0).collect();
    assert_eq!(
        before, after,
        "a rejected mount must not create anything in the source"
    );
}

#[test]
fn cache_dir_inside_existing_source_subdir() {
    let c = case();
    let cache = c.s.src.join("inner");
    expect_rejected(
        &mount_args(&c.s.src, &c.mp, &cache, &[]),
        &[s(&cache)],
        &c.mp,
        &c.s.base,
    );
}

#[test]
fn cache_dir_inside_mountpoint() {
    let c = case();
    let cache = c.mp.join("cache");
    expect_rejected(
        &mount_args(&c.s.src, &c.mp, &cache, &[]),
        &[s(&cache)],
        &c.mp,
        &c.s.base,
    );
}

fn bad_value(extra: &[&str], needles: &[&str]) -> String {
    let c = case();
    expect_rejected(
        &mount_args(&c.s.src, &c.mp, &c.s.cache, extra),
        needles,
        &c.mp,
        &c.s.base,
    )
}

#[test]
fn ram_with_unknown_unit() {
    bad_value(&["--ram", "12XB"], &["12XB"]);
}

#[test]
fn ram_negative() {
    bad_value(&["--ram", "-5"], &["-5"]);
}

#[test]
fn ram_negative_with_equals() {
    bad_value(&["--ram=-5"], &["-5"]);
}

#[test]
fn ram_over_100_percent() {
    bad_value(&["--ram", "150%"], &["150%"]);
}

#[test]
fn ram_zero_percent() {
    bad_value(&["--ram", "0%"], &["0%"]);
}

#[test]
fn disk_with_unknown_unit() {
    bad_value(&["--disk", "7QB"], &["7QB"]);
}

#[test]
fn metadata_ttl_huge_or_negative() {
    bad_value(
        &["--metadata-ttl", "1e20"],
        &["--metadata-ttl", "1e20", "--immutable"],
    );
    bad_value(&["--metadata-ttl", "-1"], &["--metadata-ttl", "-1"]);
    bad_value(&["--metadata-ttl", "nan"], &["--metadata-ttl", "nan"]);
}

#[test]
fn chunk_size_zero() {
    let line = bad_value(&["--chunk-size", "0"], &["0"]);
    assert!(
        line.to_lowercase().contains("chunk"),
        "the error for --chunk-size 0 should say which option is wrong: {line:?}"
    );
}

#[test]
fn log_max_size_too_small_or_a_percentage() {
    bad_value(&["--log-max-size", "1KiB"], &["--log-max-size", "1KiB"]);
    bad_value(&["--log-max-size", "10%"], &["--log-max-size", "10%"]);
    bad_value(&["--log-max-size", "lots"], &["--log-max-size", "lots"]);
}

#[test]
fn unmount_of_a_plain_directory() {
    let c = case();
    let dir = c.s.base.join("mnt");
    let args: Vec<OsString> = vec![OsStr::new("unmount").into(), dir.clone().into()];
    expect_rejected(&args, &[s(&dir)], &dir, &c.s.base);
    assert!(dir.is_dir(), "the directory must still exist");
}

#[test]
fn unmount_of_a_foreign_mount_is_refused() {
    // `bicache unmount` must not unmount a filesystem that is not bicache.
    let c = case();
    let dir = c.s.base.join("mnt");
    let mut cmd = std::process::Command::new("mount");
    cmd.args(["-t", "tmpfs", "-o", "size=1m", "bicache-test-tmpfs"])
        .arg(&dir);
    let out = run_cmd(cmd, LIMIT).unwrap();
    if !out.status.success() {
        eprintln!(
            "SKIPPING unmount_of_a_foreign_mount_is_refused: cannot mount a tmpfs ({})",
            out.stderr.trim()
        );
        return;
    }
    struct Umount(PathBuf);
    impl Drop for Umount {
        fn drop(&mut self) {
            let mut c = std::process::Command::new("umount");
            c.arg(&self.0);
            let _ = run_cmd(c, LIMIT);
        }
    }
    let _umount = Umount(dir.clone());
    fs::write(dir.join("marker"), b"x").unwrap();
    let args: Vec<OsString> = vec![OsStr::new("unmount").into(), dir.clone().into()];
    let out = bicache(&args, LIMIT).unwrap_or_else(|e| panic!("{e}"));
    assert!(
        !out.status.success(),
        "bicache unmount of a tmpfs must fail:\n{}",
        out.describe()
    );
    let err = out.stderr.strip_suffix('\n').unwrap_or(&out.stderr);
    assert!(
        !err.trim().is_empty() && !err.contains('\n') && err.contains(s(&dir)),
        "want one error line naming {}, got: {:?}",
        dir.display(),
        out.stderr
    );
    assert!(
        is_mounted(&dir) && dir.join("marker").exists(),
        "bicache unmount removed a foreign (tmpfs) mount"
    );
}

/// A log file name in a shared folder (a daemon often runs as root) is not followed if a
/// symlink was planted there: the file it points to is left unchanged.
#[test]
fn log_file_that_is_a_symlink() {
    let c = case();
    let victim = c.s.base.join("victim");
    fs::write(&victim, b"precious").unwrap();
    let link = c.s.base.join("bicache.log");
    std::os::unix::fs::symlink(&victim, &link).unwrap();
    expect_rejected(
        &mount_args(
            &c.s.src,
            &c.mp,
            &c.s.cache,
            &["--log-file", link.to_str().unwrap()],
        ),
        &["--log-file", s(&link)],
        &c.mp,
        &c.s.base,
    );
    assert_eq!(fs::read(&victim).unwrap(), b"precious");
}
