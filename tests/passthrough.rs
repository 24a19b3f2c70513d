//! FUSE passthrough: files held whole on the SSD tier are read by the kernel straight
//! from their cache files. The bytes must be right whatever the tier holds, damaged cache
//! files must be caught before the kernel reads them, and the kernel's rule (all opens of
//! an inode in one mode) must never surface as EIO.

mod common;

use std::fs::{self, File};
use std::path::PathBuf;

use common::*;

/// Small files (one chunk each at 1 MiB chunks) plus one file spanning several chunks.
fn dataset(s: &Scratch) -> (Vec<SourceFile>, SourceFile) {
    let small = (0..24)
        .map(|i| {
            let rel = format!("c{}/s{i}.bin", i % 4);
            let data = s.file(&rel, 1 + i * 37_000, 100 + i as u64);
            (rel, data)
        })
        .collect();
    let big = (
        "big.bin".to_string(),
        s.file("big.bin", 3 << 20 | 12_345, 7),
    );
    (small, big)
}

fn passthrough_on(st: &serde_json::Value) -> bool {
    st["passthrough"]["enabled"]
        .as_bool()
        .unwrap_or_else(|| panic!("no passthrough.enabled: {st}"))
}

/// Fills the SSD tier: a cold read, then a clean unmount (which drains the write-back).
fn fill_ssd(s: &Scratch, args: &[&str], files: &[SourceFile]) {
    let m = s.mount(args);
    read_all(&m.mountpoint, files);
}

const SMALL_RAM: [&str; 6] = ["--ram", "1MiB", "--disk", "256MiB", "--chunk-size", "1MiB"];

#[test]
fn whole_cached_files_are_read_by_the_kernel_with_right_bytes() {
    if !fuse_or_skip() {
        return;
    }
    let s = Scratch::new();
    let (small, big) = dataset(&s);
    fill_ssd(&s, &SMALL_RAM, &small);

    let m = s.mount(&SMALL_RAM);
    drop_caches();
    read_all(&m.mountpoint, &small);
    let st = m.stats();
    assert!(passthrough_on(&st), "{st}");
    assert_eq!(
        stat(&st, "passthrough.opens"),
        small.len() as u64,
        "every small file should be opened in passthrough: {st}"
    );
    assert_eq!(stat(&st, "source.bytes"), 0, "{st}");
    // One chunk lookup per open (a RAM miss, an SSD hit), none per read.
    assert_eq!(stat(&st, "ram.hits"), 0, "{st}");
    assert_eq!(
        stat(&st, "ram.misses"),
        small.len() as u64,
        "passthrough reads must not reach the daemon: {st}"
    );
    assert_eq!(stat(&st, "disk.hits"), small.len() as u64, "{st}");

    // Positioned reads, reads across and past the end, and mmap, on passthrough files.
    let mut rng = XorShift::new(5);
    for (rel, want) in &small {
        let f = File::open(m.mountpoint.join(rel)).unwrap();
        check_preads_and_mmap(&f, rel, want, &mut rng, 20, 70_000);
    }

    // A file not held whole on the SSD (never read yet) is not passthrough: read through
    // the daemon, bytes right.
    let before = stat(&m.stats(), "passthrough.opens");
    read_all(&m.mountpoint, std::slice::from_ref(&big));
    assert_eq!(stat(&m.stats(), "passthrough.opens"), before);
}

#[test]
fn ram_comes_first_and_a_remount_trusts_unchanged_cache_files() {
    if !fuse_or_skip() {
        return;
    }
    let s = Scratch::new();
    let (small, _) = dataset(&s);
    let args = ["--ram", "64MiB", "--disk", "256MiB"];
    {
        let m = s.mount(&args);
        read_all(&m.mountpoint, &small);
        let cold = m.settle();
        // The RAM tier holds every file: it is preferred to the SSD, so the next pass is
        // served by the daemon from RAM, not by the kernel from the cache files.
        drop_caches();
        read_all(&m.mountpoint, &small);
        let warm = m.stats();
        assert_eq!(stat(&warm, "passthrough.opens"), 0, "{warm}");
        assert!(
            stat(&warm, "ram.hits") >= small.len() as u64,
            "second pass should hit RAM: {warm}"
        );
        assert_eq!(
            stat(&warm, "source.bytes"),
            stat(&cold, "source.bytes"),
            "{warm}"
        );
    }
    // After a remount every file is read by the kernel from its cache file, and none is
    // hashed first: each was stamped when written, and the stamps were kept.
    let m = s.mount(&args);
    drop_caches();
    read_all(&m.mountpoint, &small);
    let st = m.stats();
    assert_eq!(stat(&st, "passthrough.opens"), small.len() as u64, "{st}");
    assert_eq!(stat(&st, "passthrough.checks"), 0, "{st}");
    assert_eq!(stat(&st, "source.bytes"), 0, "{st}");
}

#[test]
fn damaged_cache_files_are_caught_before_the_kernel_reads_them() {
    if !fuse_or_skip() {
        return;
    }
    let s = Scratch::new();
    let (small, _) = dataset(&s);
    fill_ssd(&s, &SMALL_RAM, &small);

    // Between mounts: a flipped byte, a truncated file, a file grown by one byte.
    let files = chunk_files(&s.cache);
    assert_eq!(files.len(), small.len(), "{files:?}");
    let victims: Vec<&PathBuf> = files
        .iter()
        .filter(|p| fs::metadata(p).unwrap().len() > 10)
        .collect();
    flip_bit(victims[0], 3);
    let len = fs::metadata(victims[1]).unwrap().len();
    fs::OpenOptions::new()
        .write(true)
        .open(victims[1])
        .unwrap()
        .set_len(len - 1)
        .unwrap();
    std::io::Write::write_all(
        &mut fs::OpenOptions::new()
            .append(true)
            .open(victims[2])
            .unwrap(),
        b"x",
    )
    .unwrap();

    let m = s.mount(&SMALL_RAM);
    drop_caches();
    read_all(&m.mountpoint, &small);
    let st = m.settle();
    assert_eq!(stat(&st, "disk.corrupt"), 3, "{st}");
    // Only the flipped file needed hashing to be caught (the others have the wrong
    // length); the unchanged ones kept their stamps.
    assert_eq!(stat(&st, "passthrough.checks"), 1, "{st}");
    assert_eq!(
        stat(&st, "passthrough.opens"),
        small.len() as u64 - 3,
        "damaged files must be read through the daemon: {st}"
    );

    // While mounted, after the files were checked: damage one in place. Its ctime changes,
    // so the next open checks it again. The largest file: too large for the RAM tier,
    // which would otherwise serve it first.
    let target = chunk_files(&s.cache)
        .into_iter()
        .max_by_key(|p| fs::metadata(p).unwrap().len())
        .unwrap();
    flip_bit(&target, 7);
    drop_caches();
    read_all(&m.mountpoint, &small);
    let st = m.stats();
    assert_eq!(stat(&st, "disk.corrupt"), 4, "{st}");
}

#[test]
fn opens_of_one_file_share_one_mode_and_never_fail() {
    if !fuse_or_skip() {
        return;
    }
    let s = Scratch::new();
    // Larger than the 1 MiB budget's RAM tier can hold, so the SSD tier serves it.
    let want = s.file("a.bin", 900_000, 42);
    let m = s.mount(&SMALL_RAM);
    let path = m.mountpoint.join("a.bin");
    let check = |f: &File, what: &str| {
        let mut got = vec![0u8; want.len() + 1];
        let n = read_full_at(f, &mut got, 0).unwrap_or_else(|e| panic!("{what}: {e}"));
        assert_bytes_eq(&got[..n], &want, what);
    };

    // Opened while not yet cached: read through the daemon. Once the SSD tier has it, a
    // second open of the same inode must still be served the same way (no EIO).
    let held = File::open(&path).unwrap();
    check(&held, "first open");
    m.settle();
    let second = File::open(&path).unwrap_or_else(|e| panic!("second open: {e}"));
    check(&second, "second open, first still held");
    assert_eq!(stat(&m.stats(), "passthrough.opens"), 0);
    drop(held);
    drop(second);

    // All closed: a next open may switch to passthrough (once the kernel's RELEASE of the
    // earlier opens, sent after close returns, has arrived); opens meanwhile share it.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let pt = loop {
        let f = File::open(&path).unwrap();
        check(&f, "open after all were closed");
        if stat(&m.stats(), "passthrough.opens") == 1 {
            break f;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "never switched to passthrough"
        );
        drop(f);
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    let shared = File::open(&path).unwrap_or_else(|e| panic!("open while passthrough: {e}"));
    check(&shared, "open sharing the backing file");
    assert_eq!(
        stat(&m.stats(), "passthrough.opens"),
        2,
        "the second open shares it"
    );
    drop(pt);
    check(&shared, "after the first passthrough open closed");
    drop(shared);

    // Many threads opening, reading and closing the same file at once.
    std::thread::scope(|scope| {
        for t in 0..6 {
            let path = &path;
            let check = &check;
            scope.spawn(move || {
                for i in 0..150 {
                    let f = File::open(path).unwrap_or_else(|e| panic!("thread {t} open {i}: {e}"));
                    check(&f, &format!("thread {t} read {i}"));
                }
            });
        }
    });
    assert!(stat(&m.stats(), "passthrough.opens") >= 2);
}

#[test]
fn passthrough_off_reads_through_the_daemon() {
    if !fuse_or_skip() {
        return;
    }
    let s = Scratch::new();
    let (small, _) = dataset(&s);
    let args = [&SMALL_RAM[..], &["--passthrough", "off"]].concat();
    fill_ssd(&s, &args, &small);
    let m = s.mount(&args);
    drop_caches();
    read_all(&m.mountpoint, &small);
    let st = m.stats();
    assert!(!passthrough_on(&st), "{st}");
    assert_eq!(stat(&st, "passthrough.opens"), 0, "{st}");
    assert!(stat(&st, "disk.hits") >= small.len() as u64, "{st}");
}
