//! One version per open: a file replaced at the source while readers read it (a temp
//! file and a rename, as rsync does) is read whole as one version or fails, never as a mix
//! of versions, and never past a shorter version's end (docs/RELIABILITY.md).

mod common;

use std::collections::HashMap;
use std::fs;
use std::io::Read;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::*;

const CHUNK: usize = 64 * 1024;
const RUN: Duration = Duration::from_secs(20);
const EVERY: Duration = Duration::from_millis(700);

/// Versions of one file: distinct bytes, and (when `sizes_vary`) distinct lengths.
fn versions(n: usize, sizes_vary: bool, seed: u64) -> Vec<Vec<u8>> {
    (0..n)
        .map(|k| {
            let len = if sizes_vary {
                CHUNK * 6 + (k * 37_123) % (CHUNK * 14)
            } else {
                CHUNK * 16
            };
            pseudo_random(seed + k as u64, len)
        })
        .collect()
}

/// Which version `data` is, if it is exactly one of them.
fn which(data: &[u8], versions: &[Vec<u8>], by_head: &HashMap<[u8; 16], usize>) -> Option<usize> {
    let head: [u8; 16] = data.get(..16)?.try_into().ok()?;
    let k = *by_head.get(&head)?;
    (versions[k] == data).then_some(k)
}

#[test]
fn readers_of_a_file_replaced_by_rename_read_only_whole_versions() {
    if !fuse_or_skip() {
        return;
    }
    let s = Scratch::new();
    let files = [
        ("same.bin", versions(12, false, 1000)),
        ("varies.bin", versions(12, true, 2000)),
    ];
    for (name, vs) in &files {
        s.write(name, &vs[0]);
    }
    let m = s.mount(&[
        "--metadata-ttl",
        "1",
        "--chunk-size",
        "64KiB",
        "--ram",
        "4MiB",
        "--disk",
        "64MiB",
    ]);
    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    std::thread::scope(|scope| {
        // The writer: every 0.7 s each file is replaced by its next version.
        let writer = {
            let stop = stop.clone();
            let src = s.src.clone();
            let files = &files;
            scope.spawn(move || {
                let mut k = 1;
                while started.elapsed() < RUN {
                    std::thread::sleep(EVERY);
                    for (name, vs) in files {
                        let tmp = src.join(format!(".{name}.tmp"));
                        fs::write(&tmp, &vs[k % vs.len()]).unwrap();
                        fs::rename(&tmp, src.join(name)).unwrap();
                    }
                    k += 1;
                }
                stop.store(true, Ordering::SeqCst);
                k
            })
        };
        let mut readers = Vec::new();
        for r in 0..4 {
            let (name, vs) = &files[r % 2];
            let path = m.path(name);
            let stop = stop.clone();
            let by_head: HashMap<[u8; 16], usize> = vs
                .iter()
                .enumerate()
                .map(|(k, v)| (v[..16].try_into().unwrap(), k))
                .collect();
            readers.push(scope.spawn(move || {
                let (ok, failed, seen) = (AtomicU64::new(0), AtomicU64::new(0), AtomicU64::new(0));
                let mut distinct = std::collections::HashSet::new();
                while !stop.load(Ordering::SeqCst) {
                    // Small reads, so a replacement can land in the middle of one pass.
                    let mut f = match fs::File::open(&path) {
                        Ok(f) => f,
                        Err(_) => {
                            failed.fetch_add(1, Ordering::Relaxed);
                            continue;
                        }
                    };
                    let mut data = Vec::new();
                    let mut buf = vec![0u8; 20_000];
                    let res = loop {
                        match f.read(&mut buf) {
                            Ok(0) => break Ok(()),
                            Ok(n) => data.extend_from_slice(&buf[..n]),
                            Err(e) => break Err(e),
                        }
                    };
                    seen.fetch_add(1, Ordering::Relaxed);
                    match res {
                        Ok(()) => match which(&data, vs, &by_head) {
                            Some(k) => {
                                ok.fetch_add(1, Ordering::Relaxed);
                                distinct.insert(k);
                            }
                            None => panic!(
                                "reader {r} of {name} read {} bytes that are no version of the \
                                 file (a mix of versions, or bytes past a version's end)",
                                data.len()
                            ),
                        },
                        Err(e) => {
                            // A version gone from the source before it was cached: an
                            // error is allowed, wrong bytes are not.
                            assert!(
                                matches!(e.raw_os_error(), Some(libc::ESTALE) | Some(libc::EIO)),
                                "reader {r}: unexpected error {e}"
                            );
                            failed.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
                (ok.into_inner(), failed.into_inner(), distinct.len())
            }));
        }
        let replacements = writer.join().unwrap();
        assert!(replacements >= 20, "only {replacements} replacements");
        for (r, h) in readers.into_iter().enumerate() {
            let (ok, failed, distinct) = h.join().unwrap();
            eprintln!("reader {r}: {ok} whole reads of {distinct} versions, {failed} failed");
            // The test means something only if readers really saw the file change.
            assert!(ok >= 20, "reader {r}: only {ok} whole reads");
            assert!(distinct >= 5, "reader {r} saw only {distinct} versions");
        }
    });
    let st = m.stats();
    eprintln!("{st}");
}

/// A file rewritten in place with its mtime put back (`cp -p` onto it, `rsync --inplace`)
/// keeps its inode, size and mtime; only its ctime says it changed. A reader that has read
/// part of the old version never gets the new one's bytes for the rest: its next read from
/// the source fails (ESTALE). A file renamed over while read (rsync's way) still reads
/// whole as the old version: its bytes live on in the open descriptor.
#[test]
fn a_rewrite_in_place_that_restores_the_mtime_is_not_mixed_into_an_open() {
    if !fuse_or_skip() {
        return;
    }
    use std::os::unix::fs::FileExt;
    let s = Scratch::new();
    let old = s.file("inplace.bin", 8 * CHUNK, 11);
    let old_renamed = s.file("renamed.bin", 8 * CHUNK, 12);
    let m = s.mount(&["--chunk-size", "64KiB", "--ram", "4MiB", "--disk", "0"]);

    // In place: read the first chunk, rewrite the file at the source with the old mtime.
    let f = fs::File::open(m.path("inplace.bin")).unwrap();
    let mut head = vec![0u8; 4096];
    f.read_exact_at(&mut head, 0).unwrap();
    assert_eq!(head, old[..4096]);
    let src = s.src.join("inplace.bin");
    let mtime = fs::metadata(&src).unwrap().modified().unwrap();
    let new: Vec<u8> = old.iter().map(|b| b ^ 0x5a).collect();
    fs::OpenOptions::new()
        .write(true)
        .open(&src)
        .unwrap()
        .write_all_at(&new, 0)
        .unwrap();
    fs::File::options()
        .write(true)
        .open(&src)
        .unwrap()
        .set_modified(mtime)
        .unwrap();
    assert_eq!(fs::metadata(&src).unwrap().modified().unwrap(), mtime);
    // The last chunk was never fetched (no readahead reaches it from one small read).
    let mut tail = vec![0u8; 4096];
    let err = f
        .read_exact_at(&mut tail, 7 * CHUNK as u64)
        .expect_err("a read of the rewritten file must fail, not mix versions");
    assert_eq!(err.raw_os_error(), Some(libc::ESTALE), "{err}");

    // Renamed over: the open reads the old version to its end.
    let f = fs::File::open(m.path("renamed.bin")).unwrap();
    f.read_exact_at(&mut head, 0).unwrap();
    let tmp = s.src.join(".renamed.bin.tmp");
    fs::write(&tmp, old_renamed.iter().map(|b| !b).collect::<Vec<u8>>()).unwrap();
    fs::rename(&tmp, s.src.join("renamed.bin")).unwrap();
    let mut all = vec![0u8; old_renamed.len()];
    f.read_exact_at(&mut all, 0).unwrap();
    assert_bytes_eq(&all, &old_renamed, "renamed.bin read through an open");
}
