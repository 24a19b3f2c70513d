//! Files larger than a chunk: filled in place in one backing file, read by the kernel
//! directly once complete (FUSE passthrough), checked at open, never torn by a crash, and
//! byte-exact under every access pattern, cold and warm (docs/RELIABILITY.md).

mod common;

use std::fs::{self, File};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::*;

const ARGS: [&str; 6] = ["--ram", "2MiB", "--disk", "256MiB", "--chunk-size", "1MiB"];

/// Large files of odd sizes (a short last chunk), and one exactly two chunks.
fn dataset(s: &Scratch) -> Vec<SourceFile> {
    [(5 << 20) + 12_345, 2 << 20, (3 << 20) - 1, (9 << 20) + 4097]
        .iter()
        .enumerate()
        .map(|(i, &len)| {
            let rel = format!("shards/part-{i}.tar");
            (rel.clone(), s.file(&rel, len, 40 + i as u64))
        })
        .collect()
}

fn data_files(cache: &Path) -> Vec<PathBuf> {
    cache_files(cache)
        .into_iter()
        .filter(|p| p.to_string_lossy().ends_with(".data"))
        .collect()
}

fn check_reads(mp: &Path, files: &[SourceFile], seed: u64) {
    let mut rng = XorShift::new(seed);
    for (rel, want) in files {
        let f = File::open(mp.join(rel)).unwrap();
        check_preads_and_mmap(&f, rel, want, &mut rng, 40, 3 << 20);
    }
}

#[test]
fn complete_large_files_are_read_by_the_kernel_with_right_bytes() {
    if !fuse_or_skip() {
        return;
    }
    let s = Scratch::new();
    let files = dataset(&s);
    let mut m = s.mount(&ARGS);
    read_all(&m.mountpoint, &files);
    m.settle();
    // Filled by bicache itself in this mount: the first open needs no re-hash (reading a
    // whole large file at open would double the first warm epoch's IO).
    drop_caches();
    read_all(&m.mountpoint, &files);
    let st = m.stats();
    assert_eq!(stat(&st, "passthrough.opens"), files.len() as u64, "{st}");
    assert_eq!(stat(&st, "passthrough.checks"), 0, "{st}");
    // Nor after a remount: the stamps are kept.
    m.remount();
    drop_caches();
    read_all(&m.mountpoint, &files);
    let st = m.stats();
    assert!(st["passthrough"]["enabled"].as_bool().unwrap(), "{st}");
    assert_eq!(
        stat(&st, "passthrough.opens"),
        files.len() as u64,
        "every complete large file should open in passthrough: {st}"
    );
    assert_eq!(stat(&st, "passthrough.checks"), 0, "{st}");
    assert_eq!(stat(&st, "source.bytes"), 0, "{st}");
    drop_caches();
    check_reads(&m.mountpoint, &files, 3);
    assert_eq!(stat(&m.stats(), "source.bytes"), 0);
}

/// One backing file per version: a file replaced at the source (new version) is not
/// complete, so it reads through the daemon and fills a backing file of its own.
#[test]
fn damage_to_a_large_backing_file_is_caught_at_open() {
    if !fuse_or_skip() {
        return;
    }
    let s = Scratch::new();
    let files = dataset(&s);
    {
        let m = s.mount(&ARGS);
        read_all(&m.mountpoint, &files);
        m.settle();
    }
    let data = data_files(&s.cache);
    assert_eq!(data.len(), files.len());
    // Between mounts.
    flip_bit(&data[0], (1 << 20) + 77);
    let m = s.mount(&ARGS);
    drop_caches();
    read_all(&m.mountpoint, &files);
    let st = m.settle();
    assert_eq!(stat(&st, "disk.corrupt"), 1, "{st}");
    assert_eq!(
        stat(&st, "passthrough.opens"),
        files.len() as u64 - 1,
        "{st}"
    );
    // While mounted, after every file was checked: the next open checks it again.
    let data = data_files(&s.cache);
    let victim = data
        .iter()
        .max_by_key(|p| fs::metadata(p).unwrap().len())
        .unwrap();
    flip_bit(victim, 3 << 20);
    drop_caches();
    read_all(&m.mountpoint, &files);
    assert_eq!(stat(&m.stats(), "disk.corrupt"), 2, "{}", m.stats());
}

/// A cache file changed by someone else while bicache is still filling it: bicache's
/// own later writes must not make it look untouched. The open that finds it complete
/// hashes it, finds the change, and the reader gets the source's bytes.
#[test]
fn a_change_to_a_backing_file_mid_fill_is_caught_at_open() {
    if !fuse_or_skip() {
        return;
    }
    let s = Scratch::new();
    let len = (9 << 20) + 4097;
    let want = s.file("one/big.bin", len, 77);
    let m = s.mount(&ARGS);
    let path = m.path("one/big.bin");
    let mut got = vec![0u8; len];
    // Two chunks, read backwards so no readahead runs ahead and completes the file.
    let f = File::open(&path).unwrap();
    for chunk in [1usize, 0] {
        let at = chunk << 20;
        f.read_exact_at(&mut got[at..at + (1 << 20)], at as u64)
            .unwrap();
    }
    drop(f);
    let st = m.settle();
    assert!(stat(&st, "source.bytes") < len as u64 / 2, "{st}");
    let data = data_files(&s.cache);
    assert_eq!(data.len(), 1, "{data:?}");
    flip_bit(&data[0], (1 << 20) + 77);
    // The rest (not the changed chunk, which a daemon read would check), so the file
    // completes.
    let f = File::open(&path).unwrap();
    f.read_exact_at(&mut got[2 << 20..], 2 << 20).unwrap();
    drop(f);
    assert_bytes_eq(&got, &want, "while filling");
    let st = m.settle();
    assert_eq!(stat(&st, "disk.corrupt"), 0, "{st}");
    assert_eq!(stat(&st, "passthrough.opens"), 0, "{st}");
    drop_caches();
    assert_bytes_eq(&fs::read(&path).unwrap(), &want, "first open complete");
    let st = m.stats();
    assert_eq!(stat(&st, "passthrough.checks"), 1, "{st}");
    assert_eq!(stat(&st, "disk.corrupt"), 1, "{st}");
}

/// Opens of one large file while it goes from partly cached (daemon reads) to complete
/// (passthrough) never fail: every open of an inode shares one mode. The readers keep
/// going until the write-back has completed a file and it opened in passthrough (a slow
/// disk makes that take longer, never makes it skip the transition).
#[test]
fn opens_of_a_large_file_share_one_mode_and_never_fail() {
    if !fuse_or_skip() {
        return;
    }
    let s = Scratch::new();
    let files = Arc::new(dataset(&s));
    let m = s.mount(&ARGS);
    let passthrough_seen = AtomicBool::new(false);
    let start = Instant::now();
    std::thread::scope(|scope| {
        for t in 0..6 {
            let files = files.clone();
            let mp = m.mountpoint.clone();
            let passthrough_seen = &passthrough_seen;
            scope.spawn(move || {
                let mut round = 0;
                while round < 6
                    || !(passthrough_seen.load(Ordering::Relaxed)
                        || start.elapsed() > Duration::from_secs(90))
                {
                    for (rel, want) in files.iter().skip(t % 2) {
                        let got = fs::read(mp.join(rel))
                            .unwrap_or_else(|e| panic!("thread {t} round {round} {rel}: {e}"));
                        assert_bytes_eq(&got, want, rel);
                    }
                    round += 1;
                }
            });
        }
        while start.elapsed() <= Duration::from_secs(90) {
            if stat(&m.stats(), "passthrough.opens") > 0 {
                passthrough_seen.store(true, Ordering::Relaxed);
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    });
    assert!(stat(&m.stats(), "passthrough.opens") > 0, "{}", m.stats());
}

/// kill -9 while large files are being filled: the next mount serves only bytes that
/// check out, fetching the rest again.
#[test]
fn a_kill_while_large_files_fill_leaves_only_verified_bytes() {
    if !fuse_or_skip() {
        return;
    }
    let s = Scratch::new();
    let files: Vec<SourceFile> = (0..6)
        .map(|i| {
            let rel = format!("big{i}.bin");
            (
                rel.clone(),
                s.file(&rel, (24 << 20) + i * 1000, 90 + i as u64),
            )
        })
        .collect();
    let mut m = s.mount(&["--ram", "8MiB", "--disk", "512MiB", "--chunk-size", "1MiB"]);
    let mp = m.mountpoint.clone();
    let readers: Vec<_> = files
        .iter()
        .map(|(rel, _)| {
            let p = mp.join(rel);
            std::thread::spawn(move || {
                let _ = fs::read(p);
            })
        })
        .collect();
    // Killed once some pieces are recorded (durable), while the files are still filling.
    let recorded = |p: &std::path::PathBuf| {
        p.to_string_lossy().ends_with(".idx") && fs::metadata(p).is_ok_and(|m| m.len() > 48)
    };
    let start = std::time::Instant::now();
    while !cache_files(&s.cache).iter().any(recorded) && start.elapsed() < Duration::from_secs(20) {
        std::thread::sleep(Duration::from_millis(10));
    }
    unsafe { libc::kill(m.pid, libc::SIGKILL) };
    for r in readers {
        let _ = r.join();
    }
    assert!(wait_pid_exit(m.pid, Duration::from_secs(10)));
    m.forget_mounted();
    drop(m);
    // The kill landed while files were being filled: some index lacks records.
    let records = |p: &std::path::PathBuf| (fs::metadata(p).unwrap().len() - 48) / 24;
    let partial = cache_files(&s.cache)
        .iter()
        .filter(|p| p.to_string_lossy().ends_with(".idx"))
        .filter(|p| records(p) < 24)
        .count();
    let m = s.mount(&["--ram", "8MiB", "--disk", "512MiB", "--chunk-size", "1MiB"]);
    drop_caches();
    read_all(&m.mountpoint, &files);
    let st = m.settle();
    assert_eq!(stat(&st, "disk.corrupt"), 0, "{st}");
    assert!(partial > 0, "nothing had reached the SSD before the kill");
    let total: u64 = files.iter().map(|f| f.1.len() as u64).sum();
    assert!(
        stat(&st, "source.bytes") < total,
        "nothing kept from before the kill: {st}"
    );
}

/// Random reads of every size, mixed with sequential runs, cold, warm and after a
/// remount; and the fetch follows the reader: 4 KiB random reads pull little.
#[test]
fn every_access_pattern_is_byte_exact_cold_and_warm() {
    if !fuse_or_skip() {
        return;
    }
    let s = Scratch::new();
    let want = s.file("huge.bin", 64 << 20, 5);
    let mut m = s.mount(&ARGS);
    let path = m.path("huge.bin");
    let pattern = |seed: u64| {
        let f = open_random(&path);
        let mut rng = XorShift::new(seed);
        let mut read = 0u64;
        for i in 0..300 {
            let (len, aligned) = match i % 3 {
                0 => (4096, true),
                1 => (128 << 10, true),
                _ => (1 + rng.below(300_000) as usize, false),
            };
            let mut off = rng.below(want.len() as u64 - len as u64);
            if aligned {
                off -= off % len as u64;
            }
            let run = if i % 50 == 0 { 8 } else { 1 };
            for k in 0..run {
                let at = off + k * len as u64;
                let mut buf = vec![0u8; len];
                let n = read_full_at(&f, &mut buf, at).unwrap();
                let hi = (at as usize + len).min(want.len());
                assert_bytes_eq(&buf[..n], &want[at as usize..hi], &format!("{at}+{len}"));
                read += n as u64;
            }
        }
        read
    };
    drop_caches();
    pattern(1);
    drop_caches();
    pattern(1);
    m.settle();
    m.remount();
    drop_caches();
    pattern(2);

    // Cold 4 KiB random reads alone: each pulls one aligned unit, not a chunk.
    let t = Scratch::new();
    let want2 = t.file("rand.bin", 64 << 20, 9);
    let m2 = t.mount(&ARGS);
    let f = open_random(&m2.path("rand.bin"));
    let mut rng = XorShift::new(11);
    let mut read = 0u64;
    for _ in 0..400 {
        let off = rng.below(want2.len() as u64 / 4096) * 4096;
        let mut buf = vec![0u8; 4096];
        let n = read_full_at(&f, &mut buf, off).unwrap();
        assert_bytes_eq(&buf[..n], &want2[off as usize..off as usize + 4096], "rand");
        read += n as u64;
    }
    let pulled = stat(&m2.stats(), "source.bytes");
    assert!(
        pulled <= 4 * read + (1 << 20),
        "4 KiB random reads pulled {pulled} bytes for {read} read: {}",
        m2.stats()
    );
}

#[test]
fn eviction_under_a_small_disk_budget_holds_it() {
    if !fuse_or_skip() {
        return;
    }
    let s = Scratch::new();
    let files = dataset(&s);
    let budget = 8u64 << 20;
    // Plain LRU, so the files churn through the budget (under the default pinning policy
    // the first files would be kept and the rest dropped, as tested in sharding.rs).
    let m = s.mount(&[
        "--ram",
        "2MiB",
        "--disk",
        "8MiB",
        "--chunk-size",
        "1MiB",
        "--cache-policy",
        "lru",
    ]);
    for _ in 0..3 {
        drop_caches();
        read_all(&m.mountpoint, &files);
        let st = m.settle();
        assert!(stat(&st, "disk.bytes") <= budget, "{st}");
        assert!(
            du_bytes(&s.cache) <= budget + (1 << 20),
            "cache dir over budget: {st}"
        );
    }
    assert!(stat(&m.stats(), "disk.evictions") > 0);
}

#[test]
fn random_reads_short_of_a_pass_fetch_only_their_units() {
    if !fuse_or_skip() {
        return;
    }
    // 1 MiB chunks of 64 units of 16 KiB. Random reads that touch far less than a quarter
    // of what they span pull the units they cover and nothing else, however densely they
    // cover a few chunks: short random runs with several readers touch many chunks several
    // times, and fetching those whole cost them (docs/TUNING.md).
    const UNIT: u64 = 16 << 10;
    const CHUNK: u64 = 1 << 20;
    let s = Scratch::new();
    // 64 MiB, and a first read at its end: the reads below span the whole file.
    let want = s.file("pass.bin", 64 << 20, 21);
    let m = s.mount(&ARGS);
    let f = open_random(&m.path("pass.bin"));
    let read_at = |at: u64| read_checked(&f, &want, at, 4096);
    let pulled = || stat(&m.stats(), "source.bytes");
    read_at(63 * CHUNK + 4096);
    // Chunks 1-8 get 32 of their 64 units (every other one), interleaved, so no two reads
    // in a row fall in one chunk (that would count as locality).
    for k in 0..32u64 {
        for c in 1..=8u64 {
            read_at(c * CHUNK + k * 2 * UNIT + 4096);
        }
    }
    assert_eq!(
        pulled(),
        (1 + 8 * 32) * UNIT,
        "one unit per read: {}",
        m.stats()
    );
    // Reads in units already held are hits; a new unit is one more unit.
    let before = pulled();
    for c in 1..=8u64 {
        read_at(c * CHUNK + 6 * UNIT + 8192);
    }
    assert_eq!(pulled(), before, "held units: hits");
    for c in 1..=8u64 {
        read_at(c * CHUNK + 7 * UNIT);
    }
    assert_eq!(
        pulled() - before,
        8 * UNIT,
        "a new unit each: {}",
        m.stats()
    );
    // 128 KiB reads pull their own 8 units each, alternating between two chunks (three
    // reads in a row in one chunk would count as locality).
    let g = open_random(&m.path("pass.bin"));
    let read_128k = |at: u64| read_checked(&g, &want, at, 128 << 10);
    read_128k(62 * CHUNK);
    for (k, unit) in [0u64, 16, 32, 48, 8, 24].into_iter().enumerate() {
        for c in [12, 13] {
            let before = pulled();
            read_128k(c * CHUNK + unit * UNIT);
            assert_eq!(
                pulled() - before,
                8 * UNIT,
                "128 KiB read {k}: its units only"
            );
        }
        m.settle();
    }
}

/// Reads `len` bytes at `at` (fewer at EOF) and checks them against the source's `want`.
fn read_checked(f: &File, want: &[u8], at: u64, len: usize) {
    let mut buf = vec![0u8; len];
    let n = read_full_at(f, &mut buf, at).unwrap();
    let hi = (at as usize + len).min(want.len());
    assert_bytes_eq(&buf[..n], &want[at as usize..hi], &format!("{at}+{len}"));
}

/// Opens `path` for random reads (no kernel readahead), as fio and h5py slicing do.
fn open_random(path: &Path) -> File {
    let f = File::open(path).unwrap();
    unsafe {
        libc::posix_fadvise(
            std::os::fd::AsRawFd::as_raw_fd(&f),
            0,
            0,
            libc::POSIX_FADV_RANDOM,
        )
    };
    f
}

#[test]
fn a_random_pass_over_a_file_fetches_the_rest_of_it_in_the_background() {
    if !fuse_or_skip() {
        return;
    }
    // 16 chunks of 64 units of 16 KiB. 4 KiB reads at random: each touches one unit, so
    // 256 of them touch a quarter of the file, which makes them a pass over it.
    const UNIT: u64 = 16 << 10;
    const SIZE: u64 = 16 << 20;
    let s = Scratch::new();
    let want = s.file("pass.bin", SIZE as usize, 33);
    let m = s.mount(&ARGS);
    let f = open_random(&m.path("pass.bin"));
    let read_at = |at: u64| read_checked(&f, &want, at, 4096);
    let pulled = || stat(&m.stats(), "source.bytes");
    let mut rng = XorShift::new(8);
    let mut block = || rng.below(SIZE / 4096) * 4096;
    for _ in 0..100 {
        read_at(block());
    }
    let st = m.settle();
    assert!(
        stat(&st, "source.bytes") <= 100 * UNIT,
        "before a quarter is touched, units only: {st}"
    );
    for _ in 0..200 {
        read_at(block());
    }
    // The rest came in whole chunks in the background: the file is held, and pulled at
    // most once more than its size (pieces fetched again as part of whole chunks).
    let st = m.settle();
    let total = stat(&st, "source.bytes");
    assert!(
        (SIZE..=SIZE + 300 * UNIT).contains(&total),
        "pulled {total} for a {SIZE}-byte file: {st}"
    );
    for _ in 0..500 {
        read_at(block());
    }
    assert_eq!(pulled(), total, "every later read is a hit: {}", m.stats());
    drop(f);

    // A pass over the first 4 MiB of a 32 MiB file fills those 4 chunks, not the file.
    const REGION: u64 = 4 << 20;
    let want = s.file("region.bin", 32 << 20, 35);
    let f = open_random(&m.path("region.bin"));
    let mut rng = XorShift::new(10);
    for _ in 0..150 {
        read_checked(&f, &want, rng.below(REGION / 4096) * 4096, 4096);
    }
    let region = stat(&m.settle(), "source.bytes") - total;
    assert!(
        (REGION..=REGION + 150 * UNIT).contains(&region),
        "pulled {region} for a pass over {REGION} bytes: {}",
        m.stats()
    );
    drop(f);

    // The same pass, in 128 KiB reads, over a file that would take more than a quarter of
    // the SSD tier: no fill (one random pass must not push the rest of the cache out).
    let t = Scratch::new();
    let want = t.file("big.bin", SIZE as usize, 34);
    let m = t.mount(&["--ram", "2MiB", "--disk", "48MiB", "--chunk-size", "1MiB"]);
    let f = open_random(&m.path("big.bin"));
    let mut rng = XorShift::new(9);
    const R: u64 = 128 << 10;
    for _ in 0..60 {
        read_checked(&f, &want, rng.below(SIZE / R) * R, R as usize);
    }
    let st = m.settle();
    assert!(
        stat(&st, "source.bytes") <= 60 * R,
        "a file over a quarter of the SSD tier is not filled: {st}"
    );
}
