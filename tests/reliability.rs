//! A cache you can trust: damaged cache files, killed daemons, full disks, changed and
//! unreadable source files, a second daemon on one cache dir, sustained load.

mod common;

use std::ffi::OsStr;
use std::fs;
use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::*;

fn make_files(s: &Scratch, n: usize, size: usize, seed: u64) -> Vec<SourceFile> {
    (0..n)
        .map(|i| {
            let rel = format!("d{}/f{i}.bin", i % 3);
            let data = s.file(&rel, size + i * 777, seed + i as u64);
            (rel, data)
        })
        .collect()
}

fn truncate_half(p: &Path) {
    let len = fs::metadata(p).unwrap().len();
    fs::OpenOptions::new()
        .write(true)
        .open(p)
        .unwrap()
        .set_len(len / 2)
        .unwrap();
}

fn ends(p: &Path, suffix: &str) -> bool {
    p.to_string_lossy().ends_with(suffix)
}

/// Every kind of damage to the SSD tier's files between mounts, for small files (one file
/// each) and large ones (`.data` and `.idx`): detected, never served, refetched.
#[test]
fn damaged_cache_files_are_detected_and_never_served() {
    if !fuse_or_skip() {
        return;
    }
    let s = Scratch::new();
    let mut files = make_files(&s, 7, 300 * 1024, 11);
    for i in 0..6 {
        let name = format!("small/s{i}.bin");
        let data = s.file(&name, 40 * 1024, 100 + i as u64);
        files.push((name, data));
    }
    let args = [
        "--chunk-size",
        "64KiB",
        "--ram",
        "128KiB",
        "--disk",
        "64MiB",
    ];
    {
        let m = s.mount(&args);
        read_all(&m.mountpoint, &files);
    } // clean unmount: every chunk reaches the SSD tier

    let all = cache_files(&s.cache);
    let small: Vec<&PathBuf> = all
        .iter()
        .filter(|p| !ends(p, ".data") && !ends(p, ".idx"))
        .collect();
    let data: Vec<&PathBuf> = all.iter().filter(|p| ends(p, ".data")).collect();
    assert_eq!((small.len(), data.len()), (6, 7), "{all:?}");
    let idx_of = |d: &Path| PathBuf::from(d.to_string_lossy().replace(".data", ".idx"));
    // Small files: a flipped bit; truncated; deleted; another small file's bytes (same
    // length) copied over it.
    flip_bit(small[0], 1000);
    truncate_half(small[1]);
    fs::remove_file(small[2]).unwrap();
    fs::write(small[3], fs::read(small[4]).unwrap()).unwrap();
    // Large files: a flipped bit in the data; the data truncated; the data deleted (its
    // index left alone); a damaged index header; a damaged record; another large file's
    // data copied over it.
    flip_bit(data[0], 70_000);
    truncate_half(data[1]);
    fs::remove_file(data[2]).unwrap();
    flip_bit(&idx_of(data[3]), 12);
    flip_bit(&idx_of(data[4]), 48 + 24 + 9);
    fs::write(data[5], fs::read(data[6]).unwrap()).unwrap();
    // Files bicache did not write: ignored, never served, never deleted.
    let bucket = small[5].parent().unwrap().to_path_buf();
    fs::write(bucket.join("garbage"), b"not a chunk").unwrap();
    fs::write(bucket.join("zz-1-2"), b"nope").unwrap();

    let m = s.mount(&args);
    let before = m.stats();
    for _ in 0..2 {
        drop_caches();
        read_all(&m.mountpoint, &files);
        // What was refetched is on the SSD before the next pass (the RAM tier is tiny).
        m.settle();
    }
    let st = m.stats();
    assert!(
        stat(&st, "disk.corrupt") >= 6,
        "flipped, truncated and swapped files (small and large) must be counted: {st}"
    );
    assert!(stat(&st, "disk.hits") > 0, "{st}");
    // Only what was damaged came from the source again: 4 small files, 6 large files at
    // most whole (the damaged record's file only from that record on), and once more the
    // chunks of the truncated file read before its damage showed (the whole file is
    // dropped then).
    let refetched = stat(&st, "source.bytes") - stat(&before, "source.bytes");
    assert!(
        refetched <= 4 * 40 * 1024 + 7 * 300 * 1024,
        "refetched {refetched} bytes: {st}"
    );
    assert!(refetched >= 4 * 40 * 1024, "damage went unnoticed: {st}");
    assert_eq!(
        fs::read(bucket.join("garbage")).unwrap(),
        b"not a chunk",
        "a file bicache did not write was changed or deleted"
    );
    assert!(bucket.join("zz-1-2").exists());
}

/// An unknown format is cleared, never misread; so is format 2 (the format of bicache
/// 0.1, whose keys this version does not make), with a line in the log.
#[test]
fn unknown_format_version_is_cleared_not_misread() {
    if !fuse_or_skip() {
        return;
    }
    let s = Scratch::new();
    let files = make_files(&s, 2, 200 * 1024, 5);
    let args = [
        "--chunk-size",
        "64KiB",
        "--ram",
        "128KiB",
        "--disk",
        "16MiB",
    ];
    {
        let m = s.mount(&args);
        read_all(&m.mountpoint, &files);
    }
    fs::write(s.cache.join("FORMAT"), "bicache-cache 999\n").unwrap();
    // What format 1 and 2 cache dirs left behind (a 32-hex-digit key first in every
    // format): freed, never read. A file bicache never names stays, and so does its folder.
    let key = "0123456789abcdef0123456789abcdef";
    fs::create_dir_all(s.cache.join("chunks-v1/00")).unwrap();
    fs::write(
        s.cache.join(format!("chunks-v1/00/{key}-0")),
        b"header+data",
    )
    .unwrap();
    fs::create_dir_all(s.cache.join("chunks-v2/ab")).unwrap();
    fs::write(s.cache.join(format!("chunks-v2/ab/{key}-1-2")), b"data").unwrap();
    fs::write(s.cache.join("chunks-v2/ab/notes.txt"), b"a user's file").unwrap();
    let mut m = s.mount(&args);
    read_all(&m.mountpoint, &files);
    let st = m.stats();
    assert_eq!(
        stat(&st, "disk.hits"),
        0,
        "an unknown format must not be read: {st}"
    );
    assert_eq!(
        fs::read_to_string(s.cache.join("FORMAT")).unwrap(),
        "bicache-cache 3\n"
    );
    assert!(
        !s.cache.join("chunks-v1").exists(),
        "chunks-v1 must be removed"
    );
    assert!(!s.cache.join(format!("chunks-v2/ab/{key}-1-2")).exists());
    assert_eq!(
        fs::read(s.cache.join("chunks-v2/ab/notes.txt")).unwrap(),
        b"a user's file",
        "a file bicache did not name was changed or deleted"
    );
    fs::remove_dir_all(s.cache.join("chunks-v2")).unwrap();
    assert!(
        m.log_tail().contains("bicache-cache 999"),
        "{}",
        m.log_tail()
    );
    // A format 2 cache dir (what bicache 0.1 wrote) is cleared with a log line too.
    m.unmount();
    fs::write(s.cache.join("FORMAT"), "bicache-cache 2\n").unwrap();
    fs::create_dir_all(s.cache.join("chunks-v2/cd")).unwrap();
    m.remount_after_unmount();
    assert!(!s.cache.join("chunks-v2").exists());
    assert!(
        m.log_tail()
            .contains("had format 'bicache-cache 2': its cache files cleared"),
        "{}",
        m.log_tail()
    );
    assert_eq!(stat(&m.stats(), "disk.files"), 0);
}

#[test]
fn kill_9_during_readers_then_remount_is_exact_and_warm() {
    if !fuse_or_skip() {
        return;
    }
    let s = Scratch::new();
    let files = make_files(&s, 8, 12 << 20, 21);
    let total: u64 = files.iter().map(|(_, d)| d.len() as u64).sum();
    let args = [
        "--chunk-size",
        "256KiB",
        "--ram",
        "8MiB",
        "--disk",
        "512MiB",
    ];
    let mut m = s.mount(&args);
    let mp = m.mountpoint.clone();
    let stop = Arc::new(AtomicBool::new(false));
    let readers: Vec<_> = (0..4)
        .map(|t| {
            let mp = mp.clone();
            let names: Vec<String> = files.iter().map(|(r, _)| r.clone()).collect();
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut buf = vec![0u8; 1 << 20];
                for rel in names.iter().cycle().skip(t * 2).take(names.len()) {
                    let Ok(mut f) = fs::File::open(mp.join(rel)) else {
                        return;
                    };
                    while !stop.load(Ordering::Relaxed) {
                        match f.read(&mut buf) {
                            Ok(0) | Err(_) => break,
                            Ok(_) => {}
                        }
                    }
                }
            })
        })
        .collect();
    // Killed once some ranges are recorded (durable) while the readers still read: on a
    // disk whose fdatasync is slow that takes longer than the usual fraction of a second.
    std::thread::sleep(Duration::from_millis(400));
    let recorded = |p: &PathBuf| {
        p.to_string_lossy().ends_with(".idx") && fs::metadata(p).is_ok_and(|m| m.len() > 48)
    };
    let start = Instant::now();
    while !cache_files(&s.cache).iter().any(recorded) && start.elapsed() < Duration::from_secs(30) {
        std::thread::sleep(Duration::from_millis(20));
    }
    unsafe { libc::kill(m.pid, libc::SIGKILL) };
    assert!(wait_pid_exit(m.pid, Duration::from_secs(10)));
    stop.store(true, Ordering::Relaxed);
    for r in readers {
        r.join().unwrap();
    }
    // The dead mount answers ENOTCONN; a new `bicache mount` on it must cope.
    m.forget_mounted();
    let m2 = Mount::new(&s.src, &s.cache, &args);
    drop(m); // its mountpoint is dead; cleanup must not fail
    drop_caches();
    read_all(&m2.mountpoint, &files);
    let st = m2.stats();
    assert!(
        stat(&st, "source.bytes") < total,
        "chunks written before the kill must be served from the SSD tier: {st}"
    );
    assert!(stat(&st, "disk.hits") > 0, "{st}");
}

#[test]
fn mount_on_a_dead_mountpoint_recovers_it() {
    if !fuse_or_skip() {
        return;
    }
    let s = Scratch::new();
    let files = make_files(&s, 2, 100 * 1024, 3);
    let (_tmp, base) = temp_dir("bicache-dead-");
    let mp = base.join("mnt");
    fs::create_dir(&mp).unwrap();
    let mount_at = |mp: &Path| {
        bicache(
            [
                OsStr::new("mount"),
                s.src.as_os_str(),
                mp.as_os_str(),
                OsStr::new("--cache-dir"),
                s.cache.as_os_str(),
                OsStr::new("--disk"),
                OsStr::new("16MiB"),
            ],
            Duration::from_secs(30),
        )
        .unwrap()
    };
    let out = mount_at(&mp);
    // Whatever fails below, the mountpoint is detached at the end.
    let _detach = DetachOnDrop(mp.clone());
    assert!(out.status.success(), "{}", out.describe());
    let pid = pids_with_arg(mp.as_os_str());
    for p in &pid {
        unsafe { libc::kill(*p, libc::SIGKILL) };
        wait_pid_exit(*p, Duration::from_secs(10));
    }
    let err = fs::metadata(&mp).unwrap_err();
    assert!(
        matches!(
            err.raw_os_error(),
            Some(libc::ENOTCONN | libc::ECONNABORTED)
        ),
        "{err}"
    );
    let out = mount_at(&mp);
    let ok = out.status.success();
    let result = std::panic::catch_unwind(|| {
        assert!(ok, "mount over a dead mountpoint: {}", out.describe());
        read_all(&mp, &files);
    });
    let un = bicache(
        [OsStr::new("unmount"), mp.as_os_str()],
        Duration::from_secs(30),
    )
    .unwrap();
    if is_mounted(&mp) {
        let _ = Command::new("fusermount3").arg("-uz").arg(&mp).status();
    }
    result.unwrap();
    assert!(un.status.success(), "{}", un.describe());
}

/// Lazily unmounts a mountpoint when dropped (a no-op if nothing is mounted there).
struct DetachOnDrop(PathBuf);

impl Drop for DetachOnDrop {
    fn drop(&mut self) {
        if is_mounted(&self.0) {
            let _ = Command::new("umount").arg("-l").arg(&self.0).status();
        }
    }
}

#[test]
fn full_cache_filesystem_degrades_to_source_reads() {
    if !fuse_or_skip() {
        return;
    }
    let s = Scratch::new();
    let size = 300usize << 20;
    let data = s.file("big.bin", size, 99);
    let tmpfs = Tmpfs::new(&s.base.join("small"), "32m");
    let cache = tmpfs.0.join("cache");
    let m = Mount::new(&s.src, &cache, &["--ram", "16MiB", "--disk", "1GiB"]);
    for pass in 0..2 {
        drop_caches();
        let got = fs::read(m.path("big.bin")).unwrap_or_else(|e| panic!("pass {pass}: {e}"));
        assert_bytes_eq(&got, &data, "big.bin");
    }
    let st = m.stats();
    assert!(
        stat(&st, "disk.write_errors") > 0,
        "the 32 MiB disk must have filled: {st}"
    );
    drop(m);
    drop(tmpfs);
}

#[test]
fn unusable_cache_dir_degrades_to_ram_and_source() {
    if !fuse_or_skip() {
        return;
    }
    let s = Scratch::new();
    let data = s.file("a.bin", 3 << 20, 4);
    // A read-only filesystem as the cache dir: the SSD tier can't even take its lock.
    let ro = Tmpfs::with_options(&s.base.join("ro"), "size=4m,mode=0700,ro");
    let m = Mount::new(&s.src, &ro.0, &["--ram", "64MiB", "--disk", "1GiB"]);
    for _ in 0..2 {
        drop_caches();
        assert_bytes_eq(&fs::read(m.path("a.bin")).unwrap(), &data, "a.bin");
    }
    let st = m.stats();
    assert_eq!(
        stat(&st, "disk.capacity"),
        0,
        "SSD tier should be disabled: {st}"
    );
    assert!(stat(&st, "ram.hits") > 0, "{st}");
    drop(m);
    drop(ro);
}

#[test]
fn second_daemon_on_the_same_cache_dir_is_refused() {
    if !fuse_or_skip() {
        return;
    }
    let s = Scratch::new();
    s.file("a", 1000, 1);
    let _m = s.mount(&["--disk", "16MiB"]);
    let (_tmp, base) = temp_dir("bicache-second-");
    let mp2 = base.join("mnt");
    fs::create_dir(&mp2).unwrap();
    let out = bicache(
        [
            OsStr::new("mount"),
            s.src.as_os_str(),
            mp2.as_os_str(),
            OsStr::new("--cache-dir"),
            s.cache.as_os_str(),
            OsStr::new("--disk"),
            OsStr::new("16MiB"),
        ],
        Duration::from_secs(30),
    )
    .unwrap();
    let mounted = is_mounted(&mp2);
    if mounted {
        let _ = Command::new("fusermount3").arg("-uz").arg(&mp2).status();
    }
    assert!(
        !out.status.success(),
        "second daemon accepted: {}",
        out.describe()
    );
    assert!(!mounted, "second mount left mounted");
    let line = out.stderr.trim();
    assert_eq!(line.lines().count(), 1, "{line}");
    assert!(
        line.contains(&*s.cache.to_string_lossy()) && line.contains("in use"),
        "{line}"
    );
}

/// Polls `f` until it returns true, for at most `limit`.
fn within(limit: Duration, mut f: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    while start.elapsed() < limit {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

/// A changed source file is seen within the documented bound: past the metadata TTL, the
/// next access is still answered from what was known while it is revalidated in the
/// background, and the change shows once that is done (here within a second, the queue
/// being short). Every read is one whole version. After a remount, at once. With
/// `--revalidate-rate 0` revalidation is in the foreground: the first access after the TTL
/// sees the change.
#[test]
fn changed_source_file_is_served_fresh_after_ttl_and_after_remount() {
    if !fuse_or_skip() {
        return;
    }
    for rate in ["200", "0"] {
        let s = Scratch::new();
        let old = s.file("data.bin", 200_000, 1);
        let args = [
            "--metadata-ttl",
            "1",
            "--revalidate-rate",
            rate,
            "--chunk-size",
            "64KiB",
            "--disk",
            "16MiB",
        ];
        let mut m = s.mount(&args);
        assert_bytes_eq(&fs::read(m.path("data.bin")).unwrap(), &old, "old");
        // Same size, new content and mtime.
        let new = pseudo_random(2, old.len());
        fs::write(s.src.join("data.bin"), &new).unwrap();
        set_mtime(&s.src.join("data.bin"), 2_000_000_000, 123_456_789);
        std::thread::sleep(Duration::from_millis(1600));
        let mut reads = 0;
        let fresh = within(Duration::from_secs(3), || {
            reads += 1;
            let got = fs::read(m.path("data.bin")).unwrap();
            assert!(
                got == old || got == new,
                "rate {rate}: a read mixed versions"
            );
            got == new
        });
        assert!(
            fresh,
            "rate {rate}: the change was not seen within the bound"
        );
        if rate == "0" {
            assert_eq!(
                reads, 1,
                "foreground revalidation: the first read after the TTL is fresh"
            );
        }
        m.remount();
        drop_caches();
        assert_bytes_eq(
            &fs::read(m.path("data.bin")).unwrap(),
            &new,
            "after remount",
        );

        // A deleted source file disappears within the bound too.
        fs::remove_file(s.src.join("data.bin")).unwrap();
        std::thread::sleep(Duration::from_millis(1600));
        let gone = within(Duration::from_secs(3), || {
            fs::metadata(m.path("data.bin")).is_err_and(|e| e.raw_os_error() == Some(libc::ENOENT))
        });
        assert!(gone, "rate {rate}: a deleted file still shows");
    }
}

#[test]
fn unreadable_source_file_gives_eacces_and_the_daemon_stays_up() {
    if !fuse_or_skip() {
        return;
    }
    let s = Scratch::new();
    let ok = s.file("ok.bin", 50_000, 1);
    s.file("secret.bin", 50_000, 2);
    fs::set_permissions(s.src.join("secret.bin"), fs::Permissions::from_mode(0o000)).unwrap();
    // Root reads anything; a daemon without the DAC-override capabilities meets the
    // source's permission bits like any user would.
    let (_tmp, base) = temp_dir("bicache-eacces-");
    let mp = base.join("mnt");
    fs::create_dir(&mp).unwrap();
    let mut cmd = Command::new("setpriv");
    cmd.args([
        "--bounding-set",
        "-dac_override,-dac_read_search",
        "--inh-caps",
        "-all",
        BIN,
    ])
    .arg("mount")
    .arg(&s.src)
    .arg(&mp)
    .arg("--cache-dir")
    .arg(&s.cache)
    .args(["--disk", "16MiB"]);
    let out = run_cmd(cmd, Duration::from_secs(30)).unwrap();
    assert!(out.status.success(), "{}", out.describe());
    let pids = pids_with_arg(mp.as_os_str());
    let result = std::panic::catch_unwind(|| {
        let e = fs::read(mp.join("secret.bin")).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EACCES), "{e}");
        assert_bytes_eq(&fs::read(mp.join("ok.bin")).unwrap(), &ok, "ok.bin");
        let e = fs::read(mp.join("secret.bin")).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EACCES), "{e}");
    });
    let un = bicache(
        [OsStr::new("unmount"), mp.as_os_str()],
        Duration::from_secs(30),
    )
    .unwrap();
    if is_mounted(&mp) {
        let _ = Command::new("fusermount3").arg("-uz").arg(&mp).status();
    }
    for p in pids {
        if !wait_pid_exit(p, Duration::from_secs(5)) {
            unsafe { libc::kill(p, libc::SIGKILL) };
        }
    }
    result.unwrap();
    assert!(un.status.success(), "{}", un.describe());
}

/// 16 readers over a dataset several times the cache: no errors, every byte right,
/// resident memory within budget + 100 MiB, descriptors bounded. `BICACHE_LOAD_SECS`
/// makes it longer (scripts/load-test.sh).
#[test]
fn sixteen_readers_over_a_dataset_larger_than_the_cache() {
    if !fuse_or_skip() {
        return;
    }
    let secs: u64 = std::env::var("BICACHE_LOAD_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(15);
    let s = Scratch::new();
    let files: Arc<Vec<SourceFile>> = Arc::new(make_files(&s, 48, 3 << 20, 1000));
    let m = Mount::with_deadline(
        &s.src,
        &s.cache,
        &[
            "--chunk-size",
            "256KiB",
            "--ram",
            "16MiB",
            "--disk",
            "32MiB",
        ],
        Duration::from_secs(secs + 240),
    );
    let deadline = Instant::now() + Duration::from_secs(secs);
    let reads = Arc::new(AtomicU64::new(0));
    let threads: Vec<_> = (0..16u64)
        .map(|t| {
            let files = files.clone();
            let mp = m.mountpoint.clone();
            let reads = reads.clone();
            std::thread::spawn(move || {
                let mut rng = XorShift::new(t + 1);
                let mut buf = vec![0u8; 300_000];
                while Instant::now() < deadline {
                    let (rel, want) = &files[rng.below(files.len() as u64) as usize];
                    let f = fs::File::open(mp.join(rel)).unwrap();
                    let off = rng.below(want.len() as u64);
                    let len = 1 + rng.below(buf.len() as u64) as usize;
                    let n = read_full_at(&f, &mut buf[..len], off).unwrap();
                    let end = (off as usize + len).min(want.len());
                    assert_eq!(n, end - off as usize, "{rel} @{off}+{len}");
                    assert_bytes_eq(&buf[..n], &want[off as usize..end], rel);
                    reads.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    let budget = 16u64 << 20;
    let mut peak_rss = 0;
    let mut peak_fds = 0;
    while Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(500));
        let status = fs::read_to_string(format!("/proc/{}/status", m.pid)).unwrap();
        let rss_kb: u64 = status
            .lines()
            .find(|l| l.starts_with("VmRSS:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap();
        peak_rss = peak_rss.max(rss_kb * 1024);
        peak_fds = peak_fds.max(fs::read_dir(format!("/proc/{}/fd", m.pid)).unwrap().count());
        let st = m.stats();
        assert!(stat(&st, "ram.bytes") <= stat(&st, "ram.capacity"), "{st}");
        assert!(
            stat(&st, "disk.bytes") <= stat(&st, "disk.capacity"),
            "{st}"
        );
    }
    for t in threads {
        t.join().expect("a reader failed");
    }
    assert!(reads.load(Ordering::Relaxed) > 100);
    assert!(
        peak_rss <= budget + (100 << 20),
        "peak RSS {peak_rss} over budget + 100 MiB"
    );
    assert!(peak_fds < 600, "{peak_fds} open descriptors");
    let st = m.stats();
    assert_eq!(stat(&st, "source.errors"), 0, "{st}");
    assert!(
        du_bytes(&s.cache) <= (32 << 20) + (4 << 20),
        "cache dir over budget"
    );
}

/// `--allow-other` lets other users in, and the kernel then enforces the source's permission
/// bits: nobody reads through the cache what they could not read at the source. Without it,
/// other users are refused outright.
#[test]
fn allow_other_enforces_source_permissions() {
    if !fuse_or_skip() {
        return;
    }
    let s = Scratch::new();
    let public = s.file("public.bin", 10_000, 1);
    s.file("private.bin", 10_000, 2);
    fs::set_permissions(s.src.join("private.bin"), fs::Permissions::from_mode(0o600)).unwrap();
    // Let `nobody` reach the mountpoint (temp dirs are created 0700).
    for dir in [&s.base, &s.src] {
        fs::set_permissions(dir, fs::Permissions::from_mode(0o755)).unwrap();
    }
    let as_nobody = |path: &Path| {
        Command::new("runuser")
            .args(["-u", "nobody", "--", "cat"])
            .arg(path)
            .output()
            .unwrap()
    };

    let m = s.mount(&["--allow-other", "--disk", "16MiB"]);
    fs::set_permissions(
        m.mountpoint.parent().unwrap(),
        fs::Permissions::from_mode(0o755),
    )
    .unwrap();
    let out = as_nobody(&m.path("public.bin"));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_bytes_eq(&out.stdout, &public, "public.bin as nobody");
    let out = as_nobody(&m.path("private.bin"));
    assert!(
        !out.status.success(),
        "nobody read a 0600 root file through the cache"
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("Permission denied"));
    // Root still reads it (as at the source).
    assert!(fs::read(m.path("private.bin")).is_ok());
    drop(m);

    let m = s.mount(&["--disk", "16MiB"]);
    fs::set_permissions(
        m.mountpoint.parent().unwrap(),
        fs::Permissions::from_mode(0o755),
    )
    .unwrap();
    let out = as_nobody(&m.path("public.bin"));
    assert!(
        !out.status.success(),
        "without --allow-other only the owner may use the mount"
    );
}

#[test]
fn cache_dir_and_files_are_private() {
    if !fuse_or_skip() {
        return;
    }
    let s = Scratch::new();
    let data = s.file("a.bin", 300_000, 1);
    {
        let m = s.mount(&["--chunk-size", "64KiB", "--disk", "16MiB"]);
        assert_bytes_eq(&fs::read(m.path("a.bin")).unwrap(), &data, "a.bin");
        // The --log-file the daemon created (it names source paths) is the user's alone.
        assert_eq!(mode_of(&m.log_file) & 0o777, 0o600);
    }
    assert_eq!(mode_of(&s.cache) & 0o777, 0o700);
    let chunks = chunk_files(&s.cache);
    assert!(!chunks.is_empty());
    for c in chunks {
        assert_eq!(mode_of(&c) & 0o077, 0, "{} readable by others", c.display());
    }
}
