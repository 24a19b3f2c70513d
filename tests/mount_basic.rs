//! Basic behaviour of a real bicache mount: byte-exact reads, metadata,
//! directory listings, the control dir, caching, persistence, mount/unmount.

mod common;

use std::ffi::OsStr;
use std::fs;
use std::io::{self, Read};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::*;

const CHUNK: usize = 256 * 1024;
const CHUNK_ARG: &str = "256KiB";

/// A RAM budget, a 64 MiB SSD tier and the small chunk size most tests here use.
fn budgets(ram: &str) -> [&str; 6] {
    ["--ram", ram, "--disk", "64MiB", "--chunk-size", CHUNK_ARG]
}

/// Whole-file comparison of `files` (relative path, expected content)
/// through the mount; `bufsize` None means `fs::read`.
fn check_files(m: &Mount, files: &[SourceFile], bufsize: Option<usize>, phase: &str) {
    for (rel, want) in files {
        let p = m.path(rel);
        let md = fs::metadata(&p).unwrap_or_else(|e| panic!("{phase}: stat {rel}: {e}"));
        assert_eq!(md.len(), want.len() as u64, "{phase}: size of {rel}");
        let got = match bufsize {
            None => fs::read(&p).unwrap_or_else(|e| panic!("{phase}: read {rel}: {e}")),
            Some(b) => read_with_buf(&p, b),
        };
        assert_bytes_eq(&got, want, &format!("{phase}: {rel}"));
    }
}

#[test]
fn byte_exact_reads_cold_warm_and_after_remount() {
    if !fuse_or_skip() {
        return;
    }
    let s = Scratch::new();
    let spec: &[(&str, usize)] = &[
        ("empty", 0),
        ("one_byte", 1),
        ("chunk_minus_1", CHUNK - 1),
        ("chunk_exact", CHUNK),
        ("chunk_plus_1", CHUNK + 1),
        ("five_and_a_half_chunks", CHUNK * 11 / 2),
        ("bigger_than_ram.bin", 10 * MIB as usize),
    ];
    let files: Vec<SourceFile> = spec
        .iter()
        .enumerate()
        .map(|(i, (name, size))| (name.to_string(), s.file(name, *size, 1000 + i as u64)))
        .collect();

    let mut m = s.mount(&budgets("4MiB"));
    let st = m.stats();
    assert_eq!(stat(&st, "chunk_size"), CHUNK as u64, "chunk_size in stats");
    assert_eq!(stat(&st, "ram.capacity"), 4 * MIB, "ram.capacity in stats");

    check_files(&m, &files, None, "cold read");
    drop_caches();
    check_files(&m, &files, Some(100_003), "warm read (page cache dropped)");
    let st = m.stats();
    assert!(
        stat(&st, "ram.bytes") <= stat(&st, "ram.capacity"),
        "RAM tier over budget after reading a file larger than it: {st}"
    );
    assert!(
        stat(&st, "source.bytes") >= files.iter().map(|f| f.1.len() as u64).sum::<u64>(),
        "source.bytes must count at least every byte read cold: {st}"
    );

    m.remount();
    check_files(&m, &files, None, "read after unmount + remount");
    drop_caches();
    check_files(&m, &files, Some(4096 * 3 + 1), "second read after remount");
}

#[test]
fn metadata_symlinks_hardlinks_and_listings_match_source() {
    if !fuse_or_skip() {
        return;
    }
    let s = Scratch::new();
    let src = s.src.clone();
    let mut contents: Vec<SourceFile> = Vec::new();
    let mut add = |rel: &str, size: usize, seed: u64, mode: u32| {
        let d = s.file(rel, size, seed);
        fs::set_permissions(src.join(rel), fs::Permissions::from_mode(mode)).unwrap();
        contents.push((rel.to_string(), d));
    };
    add("top.txt", 1000, 1, 0o644);
    add("exec.sh", 3000, 2, 0o755);
    add("secret.bin", 5000, 3, 0o640);
    add("private/inner.txt", 777, 4, 0o600);
    add("nested/a/b/c/deep.bin", 70_000, 5, 0o644);
    add("dir with space/ünïcødé 文件.bin", 12_345, 6, 0o644);
    add("dir with space/plain", 10, 7, 0o444);
    add("hard1", 4321, 8, 0o644);
    s.dir("empty_dir");
    fs::set_permissions(src.join("private"), fs::Permissions::from_mode(0o700)).unwrap();
    fs::hard_link(src.join("hard1"), src.join("hard2")).unwrap();
    // Ownership that differs from the daemon's (we are root).
    std::os::unix::fs::lchown(src.join("secret.bin"), Some(1234), Some(5678)).unwrap();
    std::os::unix::fs::lchown(src.join("private"), Some(4321), Some(8765)).unwrap();
    std::os::unix::fs::lchown(src.join("exec.sh"), Some(0), Some(4242)).unwrap();
    fs::set_permissions(src.join("exec.sh"), fs::Permissions::from_mode(0o755)).unwrap();
    fs::set_permissions(src.join("secret.bin"), fs::Permissions::from_mode(0o640)).unwrap();
    // Symlinks: relative and absolute, to a file and to a dir, plus dangling.
    let links: Vec<(&str, PathBuf)> = vec![
        ("link_rel_file", PathBuf::from("top.txt")),
        ("link_rel_dir", PathBuf::from("nested/a")),
        ("link_abs_file", src.join("exec.sh")),
        ("link_abs_dir", src.join("nested")),
        ("nested/a/up_link", PathBuf::from("../../top.txt")),
        ("dangling", PathBuf::from("does/not/exist")),
    ];
    for (name, target) in &links {
        std::os::unix::fs::symlink(target, src.join(name)).unwrap();
    }
    std::os::unix::fs::lchown(src.join("link_rel_file"), Some(777), Some(888)).unwrap();
    // Distinct mtimes with nanoseconds; directories last, deepest first.
    let all = walk(&src);
    let mut dirs = Vec::new();
    for (i, (rel, md)) in all.iter().enumerate() {
        if md.is_dir() {
            dirs.push(rel.clone());
        } else {
            set_mtime(
                &src.join(rel),
                1_600_000_000 + i as i64 * 1000,
                123_456_789 + i as i64,
            );
        }
    }
    dirs.sort_by_key(|d| std::cmp::Reverse(d.components().count()));
    for (i, d) in dirs.iter().enumerate() {
        set_mtime(
            &src.join(d),
            1_500_000_000 + i as i64,
            987_654_321 - i as i64,
        );
    }
    set_mtime(&src, 1_400_000_000, 555_555_555);

    let m = s.mount(&["--chunk-size", "64KiB"]);
    let mp = m.mountpoint.clone();

    // Same entries, recursively (walk() uses readdir on every directory).
    let src_walk = walk(&src);
    let mnt_walk = walk(&mp);
    let names = |w: &[(PathBuf, fs::Metadata)]| w.iter().map(|e| e.0.clone()).collect::<Vec<_>>();
    assert_eq!(
        names(&mnt_walk),
        names(&src_walk),
        "recursive listing of the mount differs from the source"
    );

    // Per-directory readdir: names and d_type.
    let mut dirs_to_check = vec![PathBuf::new()];
    dirs_to_check.extend(
        src_walk
            .iter()
            .filter(|e| e.1.is_dir())
            .map(|e| e.0.clone()),
    );
    for d in &dirs_to_check {
        let list = |root: &Path| {
            let mut v: Vec<(std::ffi::OsString, bool, bool, bool)> = fs::read_dir(root.join(d))
                .unwrap_or_else(|e| panic!("read_dir {}: {e}", root.join(d).display()))
                .map(|e| {
                    let e = e.unwrap();
                    let t = e.file_type().unwrap();
                    (e.file_name(), t.is_file(), t.is_dir(), t.is_symlink())
                })
                .collect();
            v.sort();
            v
        };
        assert_eq!(
            list(&mp),
            list(&src),
            "readdir of {:?} (names and types) differs",
            d
        );
    }
    let root_names: Vec<_> = fs::read_dir(&mp)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert!(
        !root_names.iter().any(|n| n == OsStr::new(".bicache")),
        "root listing must not show .bicache: {root_names:?}"
    );

    // Metadata of every entry.
    for ((rel, smd), (_, mmd)) in src_walk.iter().zip(mnt_walk.iter()) {
        let ctx = rel.display();
        assert_eq!(
            mmd.mode(),
            smd.mode(),
            "st_mode of {ctx} (got {:o} want {:o})",
            mmd.mode(),
            smd.mode()
        );
        assert_eq!(mmd.uid(), smd.uid(), "uid of {ctx}");
        assert_eq!(mmd.gid(), smd.gid(), "gid of {ctx}");
        assert_eq!(
            (mmd.mtime(), mmd.mtime_nsec()),
            (smd.mtime(), smd.mtime_nsec()),
            "mtime (s, ns) of {ctx}"
        );
        if smd.is_file() || smd.file_type().is_symlink() {
            assert_eq!(mmd.len(), smd.len(), "size of {ctx}");
        }
        if smd.is_file() {
            assert_eq!(mmd.nlink(), smd.nlink(), "nlink of {ctx}");
        }
    }
    let root_md = fs::metadata(&mp).unwrap();
    let src_root_md = fs::metadata(&src).unwrap();
    assert_eq!(root_md.mode(), src_root_md.mode(), "mode of the mount root");
    assert_eq!(
        (root_md.mtime(), root_md.mtime_nsec()),
        (src_root_md.mtime(), src_root_md.mtime_nsec()),
        "mtime of the mount root"
    );

    // Explicit spot checks from the spec.
    assert_eq!(mode_of(&mp.join("secret.bin")) & 0o7777, 0o640);
    assert_eq!(mode_of(&mp.join("exec.sh")) & 0o7777, 0o755);
    assert_eq!(mode_of(&mp.join("private")) & 0o7777, 0o700);
    let sec = fs::metadata(mp.join("secret.bin")).unwrap();
    assert_eq!((sec.uid(), sec.gid()), (1234, 5678), "owner of secret.bin");
    for h in ["hard1", "hard2"] {
        assert_eq!(fs::metadata(mp.join(h)).unwrap().nlink(), 2, "nlink of {h}");
    }
    let t = fs::metadata(mp.join("top.txt")).unwrap();
    assert_eq!(
        t.mtime_nsec(),
        src_walk
            .iter()
            .find(|e| e.0 == Path::new("top.txt"))
            .unwrap()
            .1
            .mtime_nsec()
    );
    assert_ne!(
        t.mtime_nsec(),
        0,
        "fixture must have a non-zero nanosecond part"
    );

    // Symlinks: targets and following them through the mount.
    for (name, target) in &links {
        let got = fs::read_link(mp.join(name))
            .unwrap_or_else(|e| panic!("read_link {name} through the mount: {e}"));
        assert_eq!(&got, target, "symlink target of {name}");
    }
    assert_bytes_eq(
        &fs::read(mp.join("link_rel_file")).unwrap(),
        &fs::read(src.join("top.txt")).unwrap(),
        "reading through link_rel_file",
    );
    assert_bytes_eq(
        &fs::read(mp.join("nested/a/up_link")).unwrap(),
        &fs::read(src.join("top.txt")).unwrap(),
        "reading through nested/a/up_link",
    );
    let mut via_link: Vec<_> = fs::read_dir(mp.join("link_rel_dir"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    via_link.sort();
    assert_eq!(via_link, ["b", "up_link"], "listing through link_rel_dir");
    assert!(
        fs::metadata(mp.join("dangling")).is_err(),
        "following a dangling symlink must fail"
    );

    // File contents, including through unicode/space names.
    for (rel, want) in &contents {
        let got = fs::read(mp.join(rel)).unwrap_or_else(|e| panic!("read {rel}: {e}"));
        assert_bytes_eq(&got, want, rel);
    }
    assert_bytes_eq(
        &fs::read(mp.join("hard2")).unwrap(),
        &contents.iter().find(|c| c.0 == "hard1").unwrap().1,
        "hard2",
    );
}

#[test]
fn control_dir_is_hidden_but_stats_are_readable() {
    if !fuse_or_skip() {
        return;
    }
    let s = Scratch::new();
    s.file("a.bin", 300_000, 11);
    let m = s.mount(&["--chunk-size", "128KiB", "--ram", "8MiB", "--disk", "32MiB"]);

    let root: Vec<_> = fs::read_dir(&m.mountpoint)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(
        root,
        vec![OsStr::new("a.bin").to_os_string()],
        "root listing"
    );
    assert!(
        fs::metadata(m.path(".bicache")).unwrap().is_dir(),
        ".bicache must be a directory reachable by name"
    );

    // stats.json has every field, with the configured values.
    let _ = fs::read(m.path("a.bin")).unwrap();
    let st = m.stats();
    for f in STAT_FIELDS {
        stat(&st, f);
    }
    assert_eq!(stat(&st, "pid") as i32, m.pid);
    assert_eq!(stat(&st, "chunk_size"), 128 * KIB);
    assert_eq!(stat(&st, "ram.capacity"), 8 * MIB);
    assert_eq!(stat(&st, "disk.capacity"), 32 * MIB);
    assert!(
        stat(&st, "source.bytes") >= 300_000,
        "source.bytes after a cold read of 300000 bytes: {st}"
    );
    assert!(stat(&st, "source.reads") >= 1, "source.reads: {st}");
    assert!(
        stat(&st, "ram.misses") + stat(&st, "disk.misses") >= 3,
        "3 chunks were read cold, misses must count them: {st}"
    );
    // The stat size of stats.json must allow reading it with plain tools
    // (e.g. `cat`): the bytes read equal what fs::read returned above.
    let raw = fs::read(m.stats_path()).unwrap();
    assert!(!raw.is_empty(), "stats.json is empty");

    // `bicache stats MP --json` prints the same JSON shape, same pid.
    let cli = m.stats_cli();
    for f in STAT_FIELDS {
        stat(&cli, f);
    }
    assert_eq!(
        stat(&cli, "pid") as i32,
        m.pid,
        "pid from `bicache stats --json`"
    );
    assert_eq!(stat(&cli, "chunk_size"), 128 * KIB);

    // Human-readable form works too.
    let out = bicache(
        [OsStr::new("stats"), m.mountpoint.as_os_str()],
        Duration::from_secs(20),
    )
    .unwrap();
    assert!(out.status.success(), "bicache stats: {}", out.describe());
    assert!(
        !out.stdout.trim().is_empty(),
        "bicache stats printed nothing"
    );
}

#[test]
fn size_units_are_parsed_as_documented() {
    if !fuse_or_skip() {
        return;
    }
    let s = Scratch::new();
    s.file("f", 1000, 1);
    {
        let m = s.mount(&["--ram", "1.5MiB", "--disk", "0.5GB", "--chunk-size", "128K"]);
        let st = m.stats();
        assert_eq!(stat(&st, "ram.capacity"), 1_572_864, "--ram 1.5MiB: {st}");
        assert_eq!(
            stat(&st, "disk.capacity"),
            500_000_000,
            "--disk 0.5GB: {st}"
        );
        assert_eq!(stat(&st, "chunk_size"), 131_072, "--chunk-size 128K: {st}");
    }
    {
        let m = s.mount(&["--ram", "3145728B", "--disk", "2G", "--chunk-size", "65536"]);
        let st = m.stats();
        assert_eq!(stat(&st, "ram.capacity"), 3_145_728, "--ram 3145728B: {st}");
        assert_eq!(stat(&st, "disk.capacity"), 2 * GIB, "--disk 2G: {st}");
        assert_eq!(stat(&st, "chunk_size"), 65_536, "--chunk-size 65536: {st}");
    }
    {
        let m = s.mount(&["--ram", "25%", "--disk", "3MB", "--chunk-size", "1MiB"]);
        let st = m.stats();
        let meminfo = fs::read_to_string("/proc/meminfo").unwrap();
        let total_kb: u64 = meminfo
            .lines()
            .find(|l| l.starts_with("MemTotal:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap();
        let total = total_kb * 1024;
        let cap = stat(&st, "ram.capacity");
        assert!(
            cap >= total / 10 && cap <= total / 4 + MIB,
            "--ram 25% gave capacity {cap}, MemTotal is {total}"
        );
        assert_eq!(stat(&st, "disk.capacity"), 3_000_000, "--disk 3MB: {st}");
        assert_eq!(stat(&st, "chunk_size"), MIB, "--chunk-size 1MiB: {st}");
    }
    {
        // A disk percentage is a share of the cache dir's filesystem.
        let m = s.mount(&["--ram", "2MiB", "--disk", "10%", "--chunk-size", "64KiB"]);
        let st = m.stats();
        let mut vfs: libc::statvfs = unsafe { std::mem::zeroed() };
        let c = cpath(&s.base);
        assert_eq!(unsafe { libc::statvfs(c.as_ptr(), &mut vfs) }, 0);
        let total = vfs.f_blocks as u64 * vfs.f_frsize as u64;
        let avail = vfs.f_bavail as u64 * vfs.f_frsize as u64;
        let cap = stat(&st, "disk.capacity");
        assert!(
            cap >= avail / 20 && cap <= total / 10 + MIB,
            "--disk 10% gave capacity {cap}; filesystem size {total}, available {avail}"
        );
    }
}

#[test]
fn missing_cache_dir_is_created_mode_0700() {
    if !fuse_or_skip() {
        return;
    }
    let s = Scratch::new();
    s.file("f", 5000, 1);
    assert!(!s.cache.exists());
    let m = s.mount(&["--chunk-size", "64KiB"]);
    let _ = fs::read(m.path("f")).unwrap();
    let md = fs::metadata(&s.cache).expect("cache dir must be created");
    assert!(md.is_dir());
    assert_eq!(
        md.permissions().mode() & 0o7777,
        0o700,
        "cache dir mode is {:o}",
        md.permissions().mode() & 0o7777
    );
}

/// A tree of a few MiB over several directories; returns (rel, content).
fn build_tree(s: &Scratch, seed: u64) -> Vec<SourceFile> {
    let mut rng = XorShift::new(seed);
    let mut v = Vec::new();
    for i in 0..14 {
        let size = match i {
            0 => 0,
            1 => CHUNK,
            2 => CHUNK * 3 + 17,
            _ => 50_000 + rng.below(700_000) as usize,
        };
        let rel = format!("d{}/sub{}/file_{i}.bin", i % 3, i % 2);
        let data = s.file(&rel, size, seed * 100 + i);
        v.push((rel, data));
    }
    v
}

fn read_phase(m: &Mount, files: &[SourceFile], phase: &str) -> u64 {
    check_files(m, files, None, phase);
    files.iter().map(|f| f.1.len() as u64).sum()
}

#[test]
fn second_pass_is_served_from_cache() {
    if !fuse_or_skip() {
        return;
    }
    let s = Scratch::new();
    let files = build_tree(&s, 7);
    let total: u64 = files.iter().map(|f| f.1.len() as u64).sum();
    let chunks: u64 = files
        .iter()
        .map(|f| (f.1.len() as u64).div_ceil(CHUNK as u64))
        .sum();
    assert!(total > 3 * MIB, "fixture too small: {total}");
    let m = s.mount(&budgets("64MiB"));

    read_phase(&m, &files, "first pass");
    let s1 = m.settle();
    assert!(
        stat(&s1, "source.bytes") >= total,
        "first (cold) pass read {total} bytes but source.bytes = {}: {s1}",
        stat(&s1, "source.bytes")
    );
    assert!(
        stat(&s1, "ram.misses") + stat(&s1, "disk.misses") >= chunks,
        "cold pass over {chunks} chunks must count as many misses: {s1}"
    );

    drop_caches();
    let read2 = read_phase(&m, &files, "second pass");
    let s2 = m.settle();
    let pulled = stat(&s2, "source.bytes") - stat(&s1, "source.bytes");
    assert!(
        pulled * 100 < read2,
        "second pass pulled {pulled} bytes from the source for {read2} bytes read (must be < 1%)\n\
         before: {s1}\nafter: {s2}"
    );
    let hits = |v: &serde_json::Value| stat(v, "ram.hits") + stat(v, "disk.hits");
    assert!(
        hits(&s2) - hits(&s1) >= chunks,
        "second pass over {chunks} chunks: ram+disk hits rose by only {}\nbefore: {s1}\nafter: {s2}",
        hits(&s2) - hits(&s1)
    );
}

#[test]
fn disk_cache_persists_across_remount() {
    if !fuse_or_skip() {
        return;
    }
    let s = Scratch::new();
    let files = build_tree(&s, 8);
    let total: u64 = files.iter().map(|f| f.1.len() as u64).sum();
    let mut m = s.mount(&budgets("1MiB"));
    read_phase(&m, &files, "first mount");
    let s1 = m.settle();
    assert!(stat(&s1, "source.bytes") >= total, "cold pass: {s1}");

    m.remount();
    assert!(
        du_bytes(&s.cache) > 0,
        "cache dir {} is empty after unmount",
        s.cache.display()
    );
    read_phase(&m, &files, "after remount");
    let s2 = m.settle();
    let pulled = stat(&s2, "source.bytes");
    assert!(
        pulled * 100 < total,
        "after remount with a 1MiB RAM tier, reading {total} bytes pulled {pulled} bytes \
         from the source (must be < 1%; the disk tier should serve them): {s2}"
    );
    assert!(stat(&s2, "disk.hits") > 0, "disk.hits after remount: {s2}");
    assert!(
        stat(&s2, "ram.bytes") <= stat(&s2, "ram.capacity"),
        "RAM tier over budget: {s2}"
    );
}

#[test]
fn changed_source_is_not_served_stale_after_remount() {
    if !fuse_or_skip() {
        return;
    }
    let s = Scratch::new();
    let same = s.file("same_size.bin", 600 * 1024, 1);
    let grows = s.file("grows.bin", 300 * 1024, 2);
    let mut m = s.mount(&budgets("1MiB"));
    assert_file_eq(&m.path("same_size.bin"), &same, "same_size.bin v1");
    assert_file_eq(&m.path("grows.bin"), &grows, "grows.bin v1");
    m.unmount();

    let old_mtime = fs::metadata(s.src.join("same_size.bin")).unwrap().mtime();
    let same2 = s.file("same_size.bin", 600 * 1024, 101);
    set_mtime(&s.src.join("same_size.bin"), old_mtime + 10, 5);
    let grows2 = s.file("grows.bin", 900 * 1024, 102);

    let m2 = s.mount(&budgets("1MiB"));
    assert_file_eq(
        &m2.path("same_size.bin"),
        &same2,
        "same_size.bin rewritten (same size, new mtime) between mounts: stale cache?",
    );
    assert_file_eq(
        &m2.path("grows.bin"),
        &grows2,
        "grows.bin rewritten (bigger) between mounts: stale cache?",
    );
    drop(m);
}

#[test]
fn mount_command_releases_stdout_and_stderr() {
    if !fuse_or_skip() {
        return;
    }
    let s = Scratch::new();
    s.file("f", 1000, 1);
    let (_t, base) = temp_dir("bicache-mnt-");
    let mp = base.join("mnt");
    fs::create_dir(&mp).unwrap();
    let _guard = MountGuard::new(&mp);
    let mut child = Command::new(BIN)
        .arg("mount")
        .arg(&s.src)
        .arg(&mp)
        .arg("--cache-dir")
        .arg(&s.cache)
        .arg("--log-file")
        .arg(base.join("daemon.log"))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = child.stdout.take().unwrap();
    let mut err = child.stderr.take().unwrap();
    let (tx, rx) = mpsc::channel();
    let tx2 = tx.clone();
    std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = out.read_to_end(&mut v);
        let _ = tx.send(("stdout", v));
    });
    std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = err.read_to_end(&mut v);
        let _ = tx2.send(("stderr", v));
    });
    let start = Instant::now();
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        if start.elapsed() > Duration::from_secs(60) {
            let _ = child.kill();
            panic!("bicache mount did not exit within 60 s");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    assert!(status.success(), "bicache mount failed: {status:?}");
    for _ in 0..2 {
        match rx.recv_timeout(Duration::from_secs(5)) {
            Ok(_) => {}
            Err(_) => panic!(
                "`bicache mount` exited but its daemon still holds the caller's stdout/stderr \
                 pipe open: `out=$(bicache mount ...)` would hang forever"
            ),
        }
    }
    assert!(
        is_mounted(&mp),
        "mount not live after `bicache mount` returned"
    );
}

#[test]
fn fusermount_u_unmounts_and_daemon_exits() {
    if !fuse_or_skip() {
        return;
    }
    let s = Scratch::new();
    let data = s.file("f", 200_000, 3);
    let mut m = s.mount(&["--chunk-size", "64KiB"]);
    assert_file_eq(&m.path("f"), &data, "f");
    let mut c = Command::new("fusermount3");
    c.arg("-u").arg(&m.mountpoint);
    let out = run_cmd(c, Duration::from_secs(20)).unwrap();
    assert!(out.status.success(), "fusermount3 -u: {}", out.describe());
    assert!(
        !is_mounted(&m.mountpoint),
        "still mounted after fusermount3 -u"
    );
    assert!(
        wait_pid_exit(m.pid, Duration::from_secs(10)),
        "daemon {} still running 10 s after fusermount3 -u",
        m.pid
    );
    m.forget_mounted();
}

#[test]
fn unmount_command_unmounts_and_daemon_exits() {
    if !fuse_or_skip() {
        return;
    }
    let s = Scratch::new();
    s.file("f", 10, 3);
    let mut m = s.mount(&["--chunk-size", "64KiB"]);
    let pid = m.pid;
    m.unmount(); // asserts exit 0, mount gone, daemon gone within 10 s
    assert!(!pid_alive(pid));
    assert!(pids_with_arg(m.mountpoint.as_os_str()).is_empty());
}

#[test]
fn foreground_mode_serves_until_unmounted() {
    if !fuse_or_skip() {
        return;
    }
    let s = Scratch::new();
    let data = s.file("dir/f.bin", 333_333, 9);
    let (_t, base) = temp_dir("bicache-mnt-");
    let mp = base.join("mnt");
    fs::create_dir(&mp).unwrap();
    let mut guard = MountGuard::new(&mp);
    let child = Command::new(BIN)
        .arg("mount")
        .arg(&s.src)
        .arg(&mp)
        .arg("--cache-dir")
        .arg(&s.cache)
        .arg("--chunk-size")
        .arg("64KiB")
        .arg("--foreground")
        .arg("--log-file")
        .arg(base.join("daemon.log"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let child_pid = child.id() as i32;
    guard.child = Some(child);
    let start = Instant::now();
    while !is_mounted(&mp) {
        if let Some(st) = guard.child.as_mut().unwrap().try_wait().unwrap() {
            panic!("`bicache mount --foreground` exited early: {st:?}");
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "--foreground mount not live after 30 s"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_bytes_eq(&fs::read(mp.join("dir/f.bin")).unwrap(), &data, "dir/f.bin");
    let st: serde_json::Value =
        serde_json::from_slice(&fs::read(mp.join(".bicache/stats.json")).unwrap()).unwrap();
    assert_eq!(
        stat(&st, "pid") as i32,
        child_pid,
        "in --foreground mode the serving process is the one we started"
    );
    let out = bicache(
        [OsStr::new("unmount"), mp.as_os_str()],
        Duration::from_secs(20),
    )
    .unwrap();
    assert!(out.status.success(), "bicache unmount: {}", out.describe());
    let start = Instant::now();
    let status = loop {
        if let Some(st) = guard.child.as_mut().unwrap().try_wait().unwrap() {
            break st;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "--foreground process still running 10 s after unmount"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(
        status.success(),
        "--foreground process exit status after a clean unmount: {status:?}"
    );
    assert!(!is_mounted(&mp));
}

#[test]
fn large_directory_is_listed_completely() {
    // Thousands of entries need many readdir calls (offset/paging logic).
    if !fuse_or_skip() {
        return;
    }
    let s = Scratch::new();
    let dir = s.dir("many");
    for i in 0..3000 {
        let name = format!("entry_{i:05}_with_a_fairly_long_name_to_fill_pages.dat");
        fs::write(dir.join(name), (i as u32).to_le_bytes()).unwrap();
    }
    let m = s.mount(&["--chunk-size", "64KiB"]);
    let list = |p: &Path| {
        let mut v: Vec<_> = fs::read_dir(p)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        let n = v.len();
        v.sort();
        v.dedup();
        assert_eq!(n, v.len(), "duplicate names listing {}", p.display());
        v
    };
    let want = list(&dir);
    assert_eq!(want.len(), 3000);
    assert_eq!(
        list(&m.path("many")),
        want,
        "listing of a 3000-entry directory"
    );
    // And again (a second opendir may be served from cached listings).
    assert_eq!(list(&m.path("many")), want, "second listing");
    let f = fs::read(m.path("many").join(&want[2999])).unwrap();
    assert_eq!(f.len(), 4);
}

#[test]
fn corrupted_disk_cache_is_detected_not_served() {
    if !fuse_or_skip() {
        return;
    }
    let s = Scratch::new();
    let files = build_tree(&s, 9);
    let args = [
        "--ram",
        "1MiB",
        "--disk",
        "64MiB",
        "--chunk-size",
        CHUNK_ARG,
    ];
    let mut m = s.mount(&args);
    read_phase(&m, &files, "first mount");
    m.unmount();

    // Flip bytes inside every cache file big enough to hold chunk data
    // (whatever the on-disk layout: bytes at several offsets of each file).
    let mut damaged = 0;
    for (rel, md) in walk(&s.cache) {
        if !md.is_file() || md.len() < 64 * KIB {
            continue;
        }
        let p = s.cache.join(rel);
        let mut data = fs::read(&p).unwrap();
        let n = data.len();
        for k in 1..8 {
            data[n * k / 8] ^= 0x5A;
        }
        fs::write(&p, &data).unwrap();
        damaged += 1;
    }
    assert!(
        damaged > 0,
        "no cache file >= 64 KiB under {} to damage",
        s.cache.display()
    );

    let m2 = s.mount(&args);
    read_phase(&m2, &files, "after damaging the disk cache");
    let st = m2.settle();
    assert!(
        stat(&st, "disk.corrupt") > 0,
        "{damaged} damaged cache files, but disk.corrupt is 0: {st}"
    );
    assert!(
        stat(&st, "source.bytes") > 0,
        "damaged chunks must be re-read from the source: {st}"
    );
    drop(m);
}

#[test]
fn isatty_seek_data_poll_and_fsync_answer_like_a_local_file_and_log_nothing() {
    if !fuse_or_skip() {
        return;
    }
    // Python's open() asks isatty (ioctl TCGETS) of every file; SEEK_DATA/SEEK_HOLE come
    // from cp and tar, poll from event loops, fsync of a folder from careful tools. Each
    // must get a local filesystem's answer, and none may write a log line (fuser's
    // defaults log one per request: hundreds of MB per epoch for isatty alone).
    let s = Scratch::new();
    let size = 3 * CHUNK + 17;
    let want = s.file("f.bin", size, 77);
    let m = s.mount(&budgets("4MiB"));
    let before = fs::metadata(&m.log_file).map(|md| md.len()).unwrap_or(0);
    for round in 0..200 {
        let f = fs::File::open(m.path("f.bin")).unwrap();
        let fd = std::os::fd::AsRawFd::as_raw_fd(&f);
        assert_eq!(unsafe { libc::isatty(fd) }, 0);
        assert_eq!(
            io::Error::last_os_error().raw_os_error(),
            Some(libc::ENOTTY),
            "round {round}: isatty's errno"
        );
        assert_eq!(unsafe { libc::lseek(fd, 5, libc::SEEK_DATA) }, 5);
        assert_eq!(unsafe { libc::lseek(fd, 0, libc::SEEK_HOLE) }, size as i64);
        assert_eq!(unsafe { libc::lseek(fd, 0, libc::SEEK_SET) }, 0);
        let mut pfd = libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        };
        assert_eq!(
            unsafe { libc::poll(&mut pfd, 1, 0) },
            1,
            "round {round}: poll"
        );
        assert!(pfd.revents & libc::POLLIN != 0, "round {round}: readable");
        if round % 50 == 0 {
            fs::File::open(m.path("")).unwrap().sync_all().unwrap();
            let mut got = Vec::new();
            (&f).read_to_end(&mut got).unwrap();
            assert!(got == want, "round {round}: bytes differ");
        }
        // close() reports no error.
        let raw = std::os::fd::IntoRawFd::into_raw_fd(f);
        assert_eq!(unsafe { libc::close(raw) }, 0, "round {round}: close");
    }
    let log = fs::read_to_string(&m.log_file).unwrap_or_default();
    let added = &log[before as usize..];
    assert!(
        !added.contains("WARN") && !added.contains("Not Implemented"),
        "the daemon logged during plain reads:\n{}",
        &added[..added.len().min(2000)]
    );
}

/// The default log in the cache dir never grows past twice `--log-max-size`: a chatty
/// `RUST_LOG` (one line per FUSE request here) rotates it once to `bicache.log.1`.
#[test]
fn the_default_log_is_rotated_at_its_size_limit() {
    if !fuse_or_skip() {
        return;
    }
    let s = Scratch::new();
    s.file("a.bin", 1000, 1);
    let mp = s.base.join("mnt");
    fs::create_dir(&mp).unwrap();
    let _guard = MountGuard::new(&mp);
    let mut cmd = Command::new(BIN);
    cmd.arg("mount")
        .arg(&s.src)
        .arg(&mp)
        .arg("--cache-dir")
        .arg(&s.cache)
        .args(["--log-max-size", "64KiB"])
        .env("RUST_LOG", "debug")
        .env("TMPDIR", &s.base);
    let out = run_cmd(cmd, Duration::from_secs(60)).unwrap();
    assert!(out.status.success(), "{}", out.describe());
    let log = s.cache.join("bicache.log");
    let old = s.cache.join("bicache.log.1");
    for i in 0..3000 {
        assert!(fs::metadata(mp.join(format!("missing-{i}"))).is_err());
        fs::read(mp.join("a.bin")).unwrap();
    }
    let cap = 64 << 10;
    let len = |p: &Path| fs::metadata(p).map(|m| m.len()).unwrap_or(0);
    assert!(old.exists(), "no rotation; log is {} bytes", len(&log));
    assert!(
        len(&log) <= cap && len(&old) <= cap,
        "{} {}",
        len(&log),
        len(&old)
    );
    assert!(!s.cache.join("bicache.log.2").exists());
    // The current log is whole lines, and still being written.
    let text = fs::read_to_string(&log).unwrap();
    assert!(text.is_empty() || text.ends_with('\n'));
}

/// The daemon's anonymous memory in transparent huge pages, in kB (`smaps_rollup`).
fn anon_huge_kb(pid: i32) -> u64 {
    let text = fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).unwrap();
    let line = text
        .lines()
        .find(|l| l.starts_with("AnonHugePages:"))
        .unwrap_or_else(|| panic!("no AnonHugePages in smaps_rollup:\n{text}"));
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// `--huge-pages off`: chunk buffers never get transparent huge pages, whatever the THP
/// mode; on (the default) they do where THP is not `never`. Bytes are right either way.
#[test]
fn huge_pages_off_keeps_chunk_buffers_in_small_pages() {
    if !fuse_or_skip() {
        return;
    }
    let s = Scratch::new();
    let want = s.file("big.bin", 48 << 20, 9);
    let thp = fs::read_to_string("/sys/kernel/mm/transparent_hugepage/enabled").unwrap_or_default();
    for (flag, huge) in [("off", false), ("on", true)] {
        let m = s.mount(&["--ram", "256MiB", "--disk", "0", "--huge-pages", flag]);
        assert_file_eq(&m.path("big.bin"), &want, "big.bin");
        let kb = anon_huge_kb(m.pid);
        if huge {
            if !thp.contains("[never]") {
                assert!(
                    kb > 0,
                    "--huge-pages on, THP '{}': no huge pages",
                    thp.trim()
                );
            }
        } else {
            assert_eq!(kb, 0, "--huge-pages off, THP '{}'", thp.trim());
        }
    }
}
