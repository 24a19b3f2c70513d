//! The partition: a seeded shuffle, a balanced assignment of files to shards, and sizing
//! a shard down to the cache it must fit.
//!
//! Every node computes its own shard with no coordination, so the partition must be a pure
//! function of (file list, sizes, seed, K): the list is sorted by the bytes of its paths
//! before anything else, the shuffle is our own (SplitMix64 + Fisher–Yates, pinned by a
//! test), and every tie in the assignment is broken by a fixed rule.

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use super::{AlwaysVisible, ShardId};
use crate::cli::{ShardArgs, ShardSize};
use crate::source::FileVersion;
use crate::source::sort_by_path as sort_files;

/// `--shard-size auto`: fit the shard to this much cache.
#[derive(Debug, Clone, PartialEq)]
pub struct Sizing {
    pub capacity: u64,
    pub min_files: u64,
    pub overflow: f64,
}

/// What one mount serves, with the numbers its log and `plan` report.
#[derive(Debug, Clone)]
pub struct Plan {
    /// This shard's files in seeded order (the prefetch order), after sizing.
    pub files: Vec<FileVersion>,
    /// Files visible in every shard (zarr metadata, `--always-visible`), sorted by path;
    /// not partitioned and not counted below.
    pub always_visible: Vec<FileVersion>,
    /// All partitioned files of the dataset (every shard's together).
    pub dataset_files: u64,
    pub dataset_bytes: u64,
    /// This shard's part of the partition, before sizing.
    pub part_files: u64,
    pub part_bytes: u64,
    /// Bytes of `files`, after sizing.
    pub shard_bytes: u64,
    /// Sizing dropped files from the part.
    pub cut: bool,
}

/// SplitMix64 (Steele, Lea & Flood, 2014). Our own rather than a crate's: every node must
/// draw the bit-identical permutation, today and after any dependency upgrade, and no RNG
/// crate promises a stable stream for its shuffle across versions.
struct SplitMix64(u64);

impl SplitMix64 {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, n) for n > 0: Lemire's multiply-shift with rejection, so there is no
    /// modulo bias (and no division in the common case).
    fn below(&mut self, n: u64) -> u64 {
        let mut m = u128::from(self.next_u64()) * u128::from(n);
        if (m as u64) < n {
            let threshold = n.wrapping_neg() % n;
            while (m as u64) < threshold {
                m = u128::from(self.next_u64()) * u128::from(n);
            }
        }
        (m >> 64) as u64
    }
}

/// Fisher–Yates (Durstenfeld) shuffle driven by SplitMix64(seed).
fn seeded_shuffle<T>(items: &mut [T], seed: u64) {
    let mut rng = SplitMix64(seed);
    for i in (1..items.len()).rev() {
        let j = rng.below(i as u64 + 1) as usize;
        items.swap(i, j);
    }
}

/// Shard of each file of `sizes` (in order): each goes to the shard with the fewest bytes so
/// far; ties go to the shard with fewer files, then to the lowest index. The file-count
/// tie-break keeps empty files from all piling onto one shard. Taking files in a random
/// order keeps the shards random samples, and the greedy choice bounds the spread: no
/// shard ends more than one file above the mean.
fn assign(sizes: impl Iterator<Item = u64>, count: u64, n_files: usize) -> Vec<u64> {
    // Shards at or past the number of files never get one (the first n files go to shards
    // 0..n-1, one each), so the heap needs no more entries: a huge K allocates nothing.
    let live = count.min(n_files as u64);
    let mut heap: BinaryHeap<Reverse<(u64, u64, u64)>> =
        (0..live).map(|i| Reverse((0, 0, i))).collect();
    let mut out = Vec::with_capacity(n_files);
    for size in sizes {
        let Some(Reverse((bytes, files, index))) = heap.pop() else {
            break;
        };
        out.push(index);
        heap.push(Reverse((bytes.saturating_add(size), files + 1, index)));
    }
    out
}

/// Splits off the always-visible files, partitions the rest (`shard`, or everything when
/// `None`) in seeded order, and cuts this shard to `sizing` when given.
pub fn make_plan(
    files: Vec<FileVersion>,
    visible: &AlwaysVisible,
    shard: Option<&ShardId>,
    seed: u64,
    sizing: Option<&Sizing>,
) -> Plan {
    // Taken out in place: a partition into two new lists would hold the dataset twice.
    let mut rest = files;
    let mut always_visible: Vec<FileVersion> =
        rest.extract_if(.., |f| visible.matches(&f.path)).collect();
    sort_files(&mut always_visible);
    always_visible.dedup_by(|a, b| a.path == b.path);
    // Sorted first, so the caller's order (readdir order differs between nodes) never matters.
    sort_files(&mut rest);
    rest.dedup_by(|a, b| a.path == b.path);
    let dataset_files = rest.len() as u64;
    let dataset_bytes = sum_bytes(&rest);
    seeded_shuffle(&mut rest, seed);

    let part: Vec<FileVersion> = match shard {
        None => rest,
        Some(s) => {
            let owners = assign(rest.iter().map(|f| f.size), s.count.max(1), rest.len());
            rest.into_iter()
                .zip(owners)
                .filter(|(_, owner)| *owner == s.index)
                .map(|(f, _)| f)
                .collect()
        }
    };
    let part_files = part.len() as u64;
    let part_bytes = sum_bytes(&part);

    let mut files = part;
    if let Some(sz) = sizing {
        let keep = sized_len(&files, sz);
        files.truncate(keep);
    }
    let shard_bytes = sum_bytes(&files);
    Plan {
        cut: (files.len() as u64) < part_files,
        files,
        always_visible,
        dataset_files,
        dataset_bytes,
        part_files,
        part_bytes,
        shard_bytes,
    }
}

fn sum_bytes(files: &[FileVersion]) -> u64 {
    files.iter().fold(0u64, |a, f| a.saturating_add(f.size))
}

/// How many leading files (in seeded order) fit capacity × (1 + overflow), but at least
/// `min_files`. A prefix rather than a best fit: skipping large files to squeeze in small
/// ones would bias the shard towards small files; a prefix stays a random sample.
fn sized_len(files: &[FileVersion], sz: &Sizing) -> usize {
    let factor = if sz.overflow.is_finite() && sz.overflow > 0.0 {
        1.0 + sz.overflow
    } else {
        1.0
    };
    // f64 -> u64 `as` saturates, so a huge product cannot wrap.
    let limit = (sz.capacity as f64 * factor).floor() as u64;
    let mut total = 0u64;
    let mut keep = 0;
    for f in files {
        match total.checked_add(f.size) {
            Some(t) if t <= limit => {
                total = t;
                keep += 1;
            }
            _ => break,
        }
    }
    let floor = usize::try_from(sz.min_files).unwrap_or(usize::MAX);
    keep.max(floor.min(files.len()))
}

/// The sizing `--shard-size auto` asks for, given the cache capacity the shard must fit;
/// `None` for `--shard-size full`. Checks `--overflow`.
/// `budget` is the capacity tier's budget (the SSD tier's, or RAM's without one); the
/// shard is fitted to the part of it that pinned chunks may take, less per-chunk
/// bookkeeping, so that `plan --capacity` and a mount with that budget agree.
pub fn sizing_for(args: &ShardArgs, budget: u64) -> Result<Option<Sizing>, String> {
    let capacity =
        (crate::cache::pinned_share(budget, crate::cache::PinPolicy::Set) as f64 * 0.99) as u64;
    if !args.overflow.is_finite() || args.overflow < 0.0 {
        return Err(format!(
            "invalid --overflow '{}': expected a fraction of at least 0 (0.1 = 10%)",
            args.overflow
        ));
    }
    Ok(match args.shard_size {
        ShardSize::Full => None,
        ShardSize::Auto => Some(Sizing {
            capacity,
            min_files: args.min_files,
            overflow: args.overflow,
        }),
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::shard::summary;
    use std::collections::HashSet;
    use std::path::{Path, PathBuf};

    pub(crate) fn file(path: &str, size: u64) -> FileVersion {
        FileVersion::listed(PathBuf::from(path), size)
    }

    fn no_globs() -> AlwaysVisible {
        AlwaysVisible::new(&[]).unwrap()
    }

    fn shard(index: u64, count: u64) -> ShardId {
        ShardId {
            index,
            count,
            origin: "test".into(),
        }
    }

    fn names(files: &[FileVersion]) -> Vec<String> {
        files
            .iter()
            .map(|f| f.path.to_string_lossy().into_owned())
            .collect()
    }

    /// Deterministic sizes for synthetic datasets.
    fn dataset(n: usize, base: u64, spread: u64) -> Vec<FileVersion> {
        let mut rng = SplitMix64(99);
        (0..n)
            .map(|i| {
                file(
                    &format!("d{}/f{i:06}", i % 17),
                    base + rng.below(spread + 1),
                )
            })
            .collect()
    }

    // --- the shuffle and the partition ------------------------------------------------

    #[test]
    fn splitmix64_matches_the_reference_stream() {
        // Published test vector of the reference implementation, seed 1234567.
        let mut r = SplitMix64(1234567);
        let got: Vec<u64> = (0..5).map(|_| r.next_u64()).collect();
        assert_eq!(
            got,
            [
                6457827717110365317,
                3203168211198807973,
                9817491932198370423,
                4593380528125082431,
                16408922859458223821
            ]
        );
    }

    #[test]
    fn below_is_in_range_and_covers_it() {
        let mut r = SplitMix64(5);
        let mut seen = [0u32; 7];
        for _ in 0..7000 {
            let v = r.below(7);
            assert!(v < 7);
            seen[v as usize] += 1;
        }
        assert!(seen.iter().all(|&c| c > 800), "{seen:?}");
        assert_eq!(r.below(1), 0);
    }

    /// Pins the exact partition of a tiny example (values cross-checked against an
    /// independent Python model of the algorithm). If this fails, the shuffle or the
    /// assignment changed: nodes running different versions would disagree on the shards.
    #[test]
    fn seed_stability_pinned() {
        let files: Vec<FileVersion> = (0..10)
            .map(|i| file(&format!("f{i}"), 100 + 10 * i))
            .collect();
        let all = make_plan(files.clone(), &no_globs(), None, 42, None);
        assert_eq!(
            names(&all.files),
            ["f8", "f3", "f6", "f5", "f4", "f0", "f9", "f2", "f1", "f7"]
        );
        let shards: Vec<Vec<String>> = (0..3)
            .map(|i| {
                let s = shard(i, 3);
                names(&make_plan(files.clone(), &no_globs(), Some(&s), 42, None).files)
            })
            .collect();
        assert_eq!(
            shards,
            [
                vec!["f8", "f0", "f9"],
                vec!["f3", "f5", "f2", "f7"],
                vec!["f6", "f4", "f1"],
            ]
        );
    }

    fn check_partition(files: &[FileVersion], k: u64, seed: u64) -> Vec<Plan> {
        let plans: Vec<Plan> = (0..k)
            .map(|i| make_plan(files.to_vec(), &no_globs(), Some(&shard(i, k)), seed, None))
            .collect();
        let mut seen = HashSet::new();
        for p in &plans {
            assert_eq!(p.files.len() as u64, p.part_files);
            assert_eq!(p.shard_bytes, p.part_bytes);
            assert!(!p.cut);
            assert_eq!(p.dataset_files, files.len() as u64);
            for f in &p.files {
                assert!(seen.insert(f.path.clone()), "{:?} in two shards", f.path);
            }
        }
        assert_eq!(seen.len(), files.len(), "shards must cover the dataset");
        plans
    }

    #[test]
    fn partition_is_disjoint_and_covers() {
        let files = dataset(1000, 1, 5000);
        for k in 1..=9 {
            for seed in [0, 7, u64::MAX] {
                check_partition(&files, k, seed);
            }
        }
        // More shards than files: the extra shards are empty, nothing is lost.
        check_partition(&dataset(5, 10, 10), 8, 3);
        check_partition(&[], 4, 3);
    }

    #[test]
    fn balanced_for_many_similar_files() {
        for (k, seed) in [(4, 7), (16, 1), (64, 2)] {
            let files = dataset(20_000, 900_000, 200_000);
            let largest = files.iter().map(|f| f.size).max().unwrap();
            let plans = check_partition(&files, k, seed);
            let total: u64 = plans.iter().map(|p| p.shard_bytes).sum();
            let mean = total as f64 / k as f64;
            let max = plans.iter().map(|p| p.shard_bytes).max().unwrap();
            assert!(
                max as f64 <= 1.01 * mean + largest as f64,
                "k={k}: max {max}, mean {mean}"
            );
        }
    }

    #[test]
    fn empty_files_are_spread_too() {
        let files: Vec<FileVersion> = (0..100).map(|i| file(&format!("e{i}"), 0)).collect();
        for p in check_partition(&files, 4, 1) {
            assert_eq!(p.files.len(), 25);
        }
    }

    #[test]
    fn input_order_and_duplicates_do_not_matter() {
        let files = dataset(300, 1, 1000);
        let mut rev = files.clone();
        rev.reverse();
        rev.extend(files[..20].iter().cloned()); // listed twice
        let s = shard(1, 3);
        let a = make_plan(files, &no_globs(), Some(&s), 9, None);
        let b = make_plan(rev, &no_globs(), Some(&s), 9, None);
        assert_eq!(a.files, b.files);
        assert_eq!(a.dataset_files, b.dataset_files);
    }

    #[test]
    fn other_seed_other_shards() {
        let files = dataset(200, 1, 1000);
        let s = shard(0, 4);
        let a = make_plan(files.clone(), &no_globs(), Some(&s), 1, None);
        let b = make_plan(files, &no_globs(), Some(&s), 2, None);
        let sa: HashSet<_> = a.files.iter().map(|f| &f.path).collect();
        let sb: HashSet<_> = b.files.iter().map(|f| &f.path).collect();
        assert_ne!(sa, sb);
    }

    #[test]
    fn huge_shard_count_allocates_nothing() {
        let files = dataset(3, 1, 1);
        let p = make_plan(
            files.clone(),
            &no_globs(),
            Some(&shard(0, u64::MAX)),
            0,
            None,
        );
        assert_eq!(p.files.len(), 1);
        let p = make_plan(
            files,
            &no_globs(),
            Some(&shard(u64::MAX - 1, u64::MAX)),
            0,
            None,
        );
        assert!(p.files.is_empty());
    }

    #[test]
    fn always_visible_files_are_set_apart() {
        let mut files = dataset(50, 1, 10);
        for p in [
            "a/.zarray",
            "a/.zattrs",
            ".zgroup",
            "b/.zmetadata",
            "zarr.json",
        ] {
            files.push(file(p, 5));
        }
        files.push(file("meta/info.yaml", 3));
        files.push(file("meta/deep/x.yaml", 3));
        files.push(file("x/README.md", 3));
        let vis = AlwaysVisible::new(&["meta/*.yaml".to_string(), "README*".to_string()]).unwrap();
        let plans: Vec<Plan> = (0..2)
            .map(|i| make_plan(files.clone(), &vis, Some(&shard(i, 2)), 0, None))
            .collect();
        for p in &plans {
            assert_eq!(p.dataset_files, 51); // 50 + meta/deep/x.yaml (`*` stays in one dir)
            assert_eq!(
                names(&p.always_visible),
                [
                    ".zgroup",
                    "a/.zarray",
                    "a/.zattrs",
                    "b/.zmetadata",
                    "meta/info.yaml",
                    "x/README.md",
                    "zarr.json"
                ]
            );
        }
        assert_eq!(plans[0].files.len() + plans[1].files.len(), 51);
        assert!(
            AlwaysVisible::new(&["**/*.json".into()])
                .unwrap()
                .matches(Path::new("a/b/c.json"))
        );
        let e = AlwaysVisible::new(&["ok".into(), "bad[".into()])
            .err()
            .unwrap();
        assert!(e.contains("'bad['"), "{e}");
    }

    #[test]
    fn sizing_keeps_a_prefix_within_budget() {
        let files: Vec<FileVersion> = (0..100).map(|i| file(&format!("f{i:03}"), 1000)).collect();
        let s = shard(0, 2);
        let full = make_plan(files.clone(), &no_globs(), Some(&s), 3, None);
        let sz = Sizing {
            capacity: 10_000,
            min_files: 0,
            overflow: 0.25,
        };
        let p = make_plan(files.clone(), &no_globs(), Some(&s), 3, Some(&sz));
        assert!(p.cut);
        assert_eq!(p.files.len(), 12); // 12 500 bytes allowed
        assert_eq!(p.shard_bytes, 12_000);
        assert_eq!(p.part_files, 50);
        assert_eq!(p.part_bytes, 50_000);
        assert_eq!(p.dataset_bytes, 100_000);
        assert_eq!(
            p.files[..],
            full.files[..12],
            "a prefix of the seeded order"
        );

        let tiny = Sizing {
            capacity: 10,
            min_files: 5,
            overflow: 0.0,
        };
        let p = make_plan(files.clone(), &no_globs(), Some(&s), 3, Some(&tiny));
        assert_eq!(p.files.len(), 5);
        assert!(p.cut);

        let roomy = Sizing {
            capacity: u64::MAX,
            min_files: 1000,
            overflow: f64::INFINITY,
        };
        let p = make_plan(files, &no_globs(), Some(&s), 3, Some(&roomy));
        assert_eq!(p.files.len(), 50);
        assert!(!p.cut);
        assert!(summary(&p, Some(&s), Some(&roomy)).starts_with("shard 0/2 (test): 50 of 100"));
    }

    #[test]
    fn summary_reports_the_cut() {
        let files: Vec<FileVersion> = (0..40).map(|i| file(&format!("f{i}"), 1 << 20)).collect();
        let sz = Sizing {
            capacity: 5 << 20,
            min_files: 0,
            overflow: 0.1,
        };
        let s = shard(1, 4);
        let p = make_plan(files, &no_globs(), Some(&s), 0, Some(&sz));
        assert_eq!(
            summary(&p, Some(&s), Some(&sz)),
            "shard 1/4 (test): 5 of 40 files, 5.0 MiB of 40.0 MiB; cut to fit 5.0 MiB (+10%) \
             from 10 files, 10.0 MiB: the job covers about 50.0% of the dataset"
        );
    }

    // --- which shard ------------------------------------------------------------------
}
