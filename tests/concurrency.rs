//! Many concurrent random preads through one mount, cold and warm.

mod common;

use std::fs::File;
use std::sync::Arc;

use common::*;

const CHUNK: u64 = 64 * 1024;
const THREADS: usize = 8;
const READS_PER_PASS: usize = 2000;

struct Target {
    rel: String,
    data: Arc<Vec<u8>>,
}

/// Runs READS_PER_PASS preads split over THREADS threads. Threads 0..4 share
/// one handle per file (concurrent preads on the same fd), the others open
/// their own handles. Returns (reads done, reads crossing a chunk boundary,
/// reads reaching past EOF).
fn run_pass(
    m: &Mount,
    targets: &Arc<Vec<Target>>,
    seed: u64,
    phase: &str,
) -> (usize, usize, usize) {
    let shared: Arc<Vec<File>> = Arc::new(
        targets
            .iter()
            .map(|t| File::open(m.path(&t.rel)).unwrap())
            .collect(),
    );
    let mut handles = Vec::new();
    for tid in 0..THREADS {
        let targets = targets.clone();
        let shared = shared.clone();
        let own: Option<Vec<File>> = if tid >= THREADS / 2 {
            Some(
                targets
                    .iter()
                    .map(|t| File::open(m.path(&t.rel)).unwrap())
                    .collect(),
            )
        } else {
            None
        };
        let phase = phase.to_string();
        handles.push(std::thread::spawn(move || {
            let files: &Vec<File> = own.as_ref().unwrap_or(&shared);
            let mut rng = XorShift::new(seed * 1000 + tid as u64);
            let (mut crossing, mut past_eof) = (0, 0);
            let mut buf = vec![0u8; (4 * CHUNK) as usize];
            for i in 0..READS_PER_PASS / THREADS {
                let fi = rng.below(targets.len() as u64) as usize;
                let data = &targets[fi].data;
                let size = data.len() as u64;
                let len = 1 + rng.below(3 * CHUNK);
                let off = match rng.below(10) {
                    // Straddle a chunk boundary.
                    0..=5 => {
                        let nchunks = size.div_ceil(CHUNK);
                        let boundary = (1 + rng.below(nchunks)) * CHUNK;
                        boundary.saturating_sub(1 + rng.below(len))
                    }
                    // Near or past EOF.
                    6 => size.saturating_sub(rng.below(2 * len)) + rng.below(3),
                    7 => size + rng.below(CHUNK * 2),
                    // Anywhere.
                    _ => rng.below(size),
                };
                let want_start = off.min(size) as usize;
                let want_end = (off + len).min(size) as usize;
                let want = &data[want_start..want_end];
                if off / CHUNK != (off + len - 1) / CHUNK {
                    crossing += 1;
                }
                if off + len > size {
                    past_eof += 1;
                }
                let n = read_full_at(&files[fi], &mut buf[..len as usize], off).unwrap_or_else(|e| {
                    panic!(
                        "{phase}: thread {tid} read #{i}: pread({}, off={off}, len={len}) failed: {e}",
                        targets[fi].rel
                    )
                });
                if &buf[..n] != want {
                    assert_bytes_eq(
                        &buf[..n],
                        want,
                        &format!(
                            "{phase}: thread {tid} read #{i}: pread({}, off={off}, len={len}) size={size}",
                            targets[fi].rel
                        ),
                    );
                }
            }
            (READS_PER_PASS / THREADS, crossing, past_eof)
        }));
    }
    let mut tot = (0, 0, 0);
    for h in handles {
        let (a, b, c) = h.join().expect("reader thread panicked");
        tot.0 += a;
        tot.1 += b;
        tot.2 += c;
    }
    tot
}

#[test]
fn concurrent_random_preads_match_source() {
    if !fuse_or_skip() {
        return;
    }
    let s = Scratch::new();
    let sizes = [
        MIB as usize + 123,
        2 * MIB as usize - 7,
        3 * MIB as usize + 65_536 * 3 / 2,
    ];
    let targets: Vec<Target> = sizes
        .iter()
        .enumerate()
        .map(|(i, size)| {
            let rel = format!("f{i}.bin");
            let data = s.file(&rel, *size, 77 + i as u64);
            Target {
                rel,
                data: Arc::new(data),
            }
        })
        .collect();
    let targets = Arc::new(targets);
    let m = s.mount(&["--ram", "32MiB", "--disk", "64MiB", "--chunk-size", "64KiB"]);

    let (n, crossing, past_eof) = run_pass(&m, &targets, 1, "cold pass");
    assert_eq!(n, READS_PER_PASS);
    assert!(
        crossing > READS_PER_PASS / 3 && past_eof > READS_PER_PASS / 20,
        "generator sanity: {crossing} crossing, {past_eof} past EOF"
    );
    let st = m.stats();
    assert!(
        stat(&st, "source.bytes") > 0,
        "cold pass read nothing from the source? {st}"
    );

    drop_caches();
    run_pass(&m, &targets, 2, "warm pass");
    drop_caches();
    run_pass(&m, &targets, 1, "warm pass, same offsets as the cold one");
    let st = m.stats();
    assert!(
        stat(&st, "ram.hits") + stat(&st, "disk.hits") > 0,
        "warm passes produced no cache hits: {st}"
    );
}

#[test]
fn concurrent_cold_reads_of_the_same_chunks() {
    // All threads start at the same time on the same cold chunks, so that
    // several requests wait on the same in-flight chunk fetch.
    if !fuse_or_skip() {
        return;
    }
    let s = Scratch::new();
    let data = Arc::new(s.file("same.bin", 2 * MIB as usize + 999, 5));
    let m = s.mount(&["--ram", "32MiB", "--disk", "64MiB", "--chunk-size", "64KiB"]);
    let barrier = Arc::new(std::sync::Barrier::new(THREADS));
    let mut hs = Vec::new();
    for tid in 0..THREADS {
        let data = data.clone();
        let barrier = barrier.clone();
        let path = m.path("same.bin");
        hs.push(std::thread::spawn(move || {
            let f = File::open(&path).unwrap();
            barrier.wait();
            // Every thread reads the whole file in the same 48 KiB steps,
            // each starting at a different phase of the chunk grid.
            let step = 48 * 1024u64;
            let mut off = tid as u64 * 5000;
            let mut buf = vec![0u8; step as usize];
            while off < data.len() as u64 {
                let n = read_full_at(&f, &mut buf, off).unwrap();
                let end = (off as usize + n).min(data.len());
                assert_eq!(
                    n,
                    (data.len() - off as usize).min(step as usize),
                    "thread {tid}: short read at {off}"
                );
                assert_bytes_eq(
                    &buf[..n],
                    &data[off as usize..end],
                    &format!("thread {tid} off {off}"),
                );
                off += step;
            }
        }));
    }
    for h in hs {
        h.join().expect("reader thread panicked");
    }
    let st = m.settle();
    // Each chunk should be fetched from the source about once, not once per
    // thread: allow 2x for races, far below THREADS x.
    assert!(
        stat(&st, "source.bytes") <= 2 * data.len() as u64 + 2 * 65536,
        "{THREADS} threads reading the same {} bytes pulled {} bytes from the source: {st}",
        data.len(),
        stat(&st, "source.bytes")
    );
}
