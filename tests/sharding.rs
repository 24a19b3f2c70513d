//! Lazy sharding through real mounts: restricted views, out-of-shard opens, prefetch and
//! pinning, `bicache warm`, the shard list control file, and zarr through four mounts.

mod common;

use std::collections::BTreeSet;
use std::ffi::OsStr;
use std::fs;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::*;

/// A small dataset: 3 class dirs of files plus zarr metadata at two levels.
fn dataset(s: &Scratch) -> Vec<String> {
    let mut files = Vec::new();
    for c in 0..3 {
        for i in 0..40 {
            let rel = format!("train/class{c}/img{i:03}.bin");
            s.file(
                &rel,
                20_000 + (i * 1531 + c * 977) % 30_000,
                (c * 100 + i) as u64,
            );
            files.push(rel);
        }
    }
    s.write(".zgroup", br#"{"zarr_format": 2}"#);
    s.write("train/.zattrs", b"{}");
    files
}

fn plan(s: &Scratch, args: &[&str]) -> Vec<String> {
    let mut full: Vec<&OsStr> = vec![OsStr::new("plan"), s.src.as_os_str()];
    full.extend(args.iter().map(OsStr::new));
    let out = bicache(full, Duration::from_secs(60)).unwrap();
    assert!(out.status.success(), "{}", out.describe());
    out.stdout.lines().map(str::to_string).collect()
}

fn listed_files(root: &Path) -> BTreeSet<String> {
    regular_files(root)
        .into_iter()
        .map(|p| p.to_string_lossy().into_owned())
        .collect()
}

#[test]
fn restricted_view_hides_other_shards_but_serves_them_by_path() {
    if !fuse_or_skip() {
        return;
    }
    let s = Scratch::new();
    let all = dataset(&s);
    let shard_args = [
        "--shard",
        "rank",
        "--shard-index",
        "1",
        "--shard-count",
        "3",
        "--seed",
        "7",
    ];
    let mine: BTreeSet<String> = plan(&s, &shard_args).into_iter().collect();
    assert!(!mine.is_empty() && mine.len() < all.len());

    let mut args = shard_args.to_vec();
    args.extend(["--disk", "64MiB", "--prefetch", "off"]);
    let m = s.mount(&args);
    let mut want = mine.clone();
    want.insert(".zgroup".into());
    want.insert("train/.zattrs".into());
    assert_eq!(listed_files(&m.mountpoint), want, "restricted listing");
    // Every class dir is still there (an ImageFolder scan must see the same classes).
    for c in 0..3 {
        assert!(m.path(format!("train/class{c}")).is_dir());
    }
    // The shard list control file equals `bicache plan`.
    let listed = fs::read_to_string(m.path(".bicache/shard.txt")).unwrap();
    assert_eq!(
        listed.lines().map(str::to_string).collect::<BTreeSet<_>>(),
        mine
    );

    // A file of another shard, opened by path: served, byte-exact, counted.
    let other = all.iter().find(|f| !mine.contains(*f)).unwrap();
    let got = fs::read(m.path(other)).unwrap();
    assert_bytes_eq(&got, &fs::read(s.src.join(other)).unwrap(), other);
    assert!(stat(&m.stats(), "shard.out_of_shard_opens") >= 1);
    drop(m);

    let mut strict = args.clone();
    strict.push("--shard-strict");
    let m = s.mount(&strict);
    let e = fs::read(m.path(other)).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EACCES), "{e}");
    let mine_one = mine.iter().next().unwrap();
    assert!(fs::read(m.path(mine_one)).is_ok());
    assert!(
        fs::read(m.path(".zgroup")).is_ok(),
        "metadata is in every shard"
    );
}

#[test]
fn view_all_lists_everything() {
    if !fuse_or_skip() {
        return;
    }
    let s = Scratch::new();
    let all = dataset(&s);
    let m = s.mount(&[
        "--shard-index",
        "0",
        "--shard-count",
        "4",
        "--shard-view",
        "all",
        "--prefetch",
        "off",
    ]);
    let mut want: BTreeSet<String> = all.into_iter().collect();
    want.insert(".zgroup".into());
    want.insert("train/.zattrs".into());
    assert_eq!(listed_files(&m.mountpoint), want);
}

#[test]
fn warm_shard_is_read_twice_in_random_order_without_the_source() {
    if !fuse_or_skip() {
        return;
    }
    let s = Scratch::new();
    dataset(&s);
    let shard_args = [
        "--shard",
        "node",
        "--shard-index",
        "0",
        "--shard-count",
        "2",
        "--seed",
        "3",
    ];
    let mine = plan(&s, &shard_args);
    let mut args = shard_args.to_vec();
    args.extend(["--ram", "1MiB", "--disk", "64MiB", "--chunk-size", "64KiB"]);
    let m = s.mount(&args);
    warm(&m);
    let st = m.stats();
    assert_eq!(stat(&st, "prefetch.files_done"), mine.len() as u64, "{st}");
    assert_eq!(st["prefetch"]["state"], "done", "{st}");
    let before = stat(&st, "source.bytes");
    let mut rng = XorShift::new(42);
    for _epoch in 0..2 {
        drop_caches();
        let mut order = mine.clone();
        for i in (1..order.len()).rev() {
            order.swap(i, rng.below(i as u64 + 1) as usize);
        }
        for rel in &order {
            let got = fs::read(m.path(rel)).unwrap();
            assert_bytes_eq(&got, &fs::read(s.src.join(rel)).unwrap(), rel);
        }
    }
    let st = m.stats();
    assert_eq!(
        stat(&st, "source.bytes"),
        before,
        "epochs after warm touched the source: {st}"
    );
    assert!(stat(&st, "disk.pinned_bytes") > 0, "{st}");

    // The shard stays pinned while unrelated reads churn through the LRU part.
    drop(m);
    let m = s.mount(&args);
    let st = m.stats();
    assert!(
        stat(&st, "disk.pinned_bytes") > 0,
        "pins restored at remount: {st}"
    );
}

#[test]
fn auto_sized_shard_fits_the_cache() {
    if !fuse_or_skip() {
        return;
    }
    let s = Scratch::new();
    dataset(&s);
    let m = s.mount(&[
        "--shard-index",
        "0",
        "--shard-count",
        "2",
        "--shard-size",
        "auto",
        "--disk",
        "512KiB",
        "--overflow",
        "0.1",
        "--min-files",
        "3",
        "--prefetch",
        "off",
    ]);
    let st = m.stats();
    let bytes = stat(&st, "shard.bytes");
    let files = stat(&st, "shard.files");
    assert!(bytes as f64 <= 512.0 * 1024.0 * 1.1, "{st}");
    assert!(files >= 3, "{st}");
    let listed = fs::read_to_string(m.path(".bicache/shard.txt")).unwrap();
    assert_eq!(listed.lines().count() as u64, files);
}

/// The zarr recipe of docs/SHARDING.md: four restricted mounts, each rank reads its rows,
/// together they equal the source array.
#[test]
fn zarr_array_through_four_restricted_mounts() {
    if !fuse_or_skip() {
        return;
    }
    let have_zarr = Command::new("python3")
        .args(["-c", "import zarr, numpy"])
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if !have_zarr {
        if std::env::var("CI").is_ok_and(|v| v == "true") {
            panic!("zarr-python is required in CI (pip install 'zarr<3' numpy)");
        }
        eprintln!("*** SKIPPING zarr test: python3 cannot import zarr and numpy");
        return;
    }
    let s = Scratch::new();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/zarr_shards.py");
    let st = Command::new("python3")
        .arg(&script)
        .arg("create")
        .arg(s.src.join("array.zarr"))
        .status()
        .unwrap();
    assert!(st.success());
    let mounts: Vec<Mount> = (0..4)
        .map(|i| {
            let idx = i.to_string();
            Mount::new(
                &s.src,
                &s.base.join(format!("cache{i}")),
                &[
                    "--shard-index",
                    &idx,
                    "--shard-count",
                    "4",
                    "--seed",
                    "1",
                    "--prefetch",
                    "off",
                ],
            )
        })
        .collect();
    let mut cmd = Command::new("python3");
    cmd.arg(&script).arg("check").arg(s.src.join("array.zarr"));
    for m in &mounts {
        cmd.arg(m.path("array.zarr"));
    }
    let out = run_cmd(cmd, Duration::from_secs(120)).unwrap();
    assert!(out.status.success(), "{}", out.describe());
    for m in &mounts {
        assert!(stat(&m.stats(), "shard.files") > 0);
    }
}

fn warm(m: &Mount) {
    let out = bicache(
        [
            OsStr::new("warm"),
            m.mountpoint.as_os_str(),
            OsStr::new("--quiet"),
        ],
        Duration::from_secs(120),
    )
    .unwrap();
    assert!(out.status.success(), "{}", out.describe());
}

#[test]
fn prefetch_under_plain_lru_and_after_a_remount_completes() {
    if !fuse_or_skip() {
        return;
    }
    let s = Scratch::new();
    dataset(&s);
    let shard = ["--shard-index", "0", "--shard-count", "2"];
    let files = plan(&s, &shard);
    let n = files.len() as u64;
    // A tight budget: the shard fits the pinned area (95%) with less than a file to spare,
    // so a remount must recognise what is cached rather than ask for room again. The SSD
    // tier charges what a file takes on disk (whole 4 KiB blocks).
    let bytes: u64 = files
        .iter()
        .map(|f| (fs::metadata(s.src.join(f)).unwrap().len() + 192).div_ceil(4096) * 4096)
        .sum();
    let disk = (bytes as f64 / 0.95) as u64 + 1024;
    let disk = disk.to_string();
    for policy in ["lru", "pin"] {
        let cache = s.base.join(format!("cache-{policy}"));
        let mut args = shard.to_vec();
        args.extend(["--ram", "1MiB", "--disk", &disk, "--cache-policy", policy]);
        let mut m = Mount::new(&s.src, &cache, &args);
        warm(&m);
        let st = m.stats();
        assert_eq!(st["prefetch"]["state"], "done", "{policy}: {st}");
        assert_eq!(stat(&st, "prefetch.files_done"), n, "{policy}: {st}");
        // Remounted on the same cache dir the shard is already there: done, nothing fetched.
        m.remount();
        warm(&m);
        let st = m.stats();
        assert_eq!(
            st["prefetch"]["state"], "done",
            "{policy} after remount: {st}"
        );
        assert_eq!(stat(&st, "prefetch.files_done"), n, "{st}");
        assert_eq!(stat(&st, "source.bytes"), 0, "{policy} after remount: {st}");
    }
}

/// Every rank with its own cache dir (a common layout): the dataset is walked once on the
/// node, not once per rank; the ranks that come second wait for the first one's list.
#[test]
fn ranks_with_their_own_cache_dirs_walk_the_dataset_once() {
    if !fuse_or_skip() {
        return;
    }
    let s = Scratch::new();
    let files = dataset(&s);
    let mounts: Vec<Mount> = std::thread::scope(|sc| {
        let handles: Vec<_> = (0..4)
            .map(|r| {
                let s = &s;
                sc.spawn(move || {
                    let index = r.to_string();
                    Mount::new(
                        &s.src,
                        &s.base.join(format!("cache-rank{r}")),
                        &[
                            "--shard-index",
                            &index,
                            "--shard-count",
                            "4",
                            "--prefetch",
                            "off",
                            "--disk",
                            "16MiB",
                        ],
                    )
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let ops: Vec<u64> = mounts
        .iter()
        .map(|m| stat(&m.stats(), "source.meta_ops"))
        .collect();
    let walk = files.len() as u64;
    let walkers = ops.iter().filter(|&&o| o >= walk).count();
    assert_eq!(
        walkers, 1,
        "source metadata operations per rank at mount: {ops:?}"
    );
    assert!(ops.iter().sum::<u64>() < walk + 20, "{ops:?}");
    // And the shards are the same as ever: disjoint, together the dataset.
    let mut all = BTreeSet::new();
    for m in &mounts {
        let shard = fs::read_to_string(m.path(".bicache/shard.txt")).unwrap();
        for line in shard.lines() {
            assert!(all.insert(line.to_string()), "{line} in two shards");
        }
    }
    assert_eq!(all.len(), files.len());
}

/// A manifest that gives sizes, made as docs/SHARDING.md says (`find -printf` under the
/// header line): the same shards as the walk, and a mount stats only its own shard's
/// files at the source, not the dataset's.
#[test]
fn a_sized_manifest_shards_like_the_walk_and_the_mount_stats_only_its_shard() {
    if !fuse_or_skip() {
        return;
    }
    let s = Scratch::new();
    let files = dataset(&s);
    let manifest = s.base.join("manifest.tsv");
    let made = Command::new("sh")
        .arg("-c")
        .arg(r#"{ echo '# bicache-manifest: size path'; cd "$1" && find . -type f -printf '%s\t%P\n'; } > "$2""#)
        .args(["sh", s.src.to_str().unwrap(), manifest.to_str().unwrap()])
        .status()
        .unwrap();
    assert!(made.success());
    let m_arg = manifest.to_str().unwrap();
    let shard_args = ["--shard-index", "1", "--shard-count", "4", "--seed", "3"];
    let walked = plan(&s, &shard_args);
    let mut with_manifest = shard_args.to_vec();
    with_manifest.extend(["--manifest", m_arg]);
    assert_eq!(
        plan(&s, &with_manifest),
        walked,
        "sized manifest against the walk"
    );

    with_manifest.extend(["--prefetch", "off", "--disk", "64MiB"]);
    let m = s.mount(&with_manifest);
    let ops = stat(&m.stats(), "source.meta_ops");
    let listed = fs::read_to_string(m.path(".bicache/shard.txt")).unwrap();
    let shard: Vec<String> = listed.lines().map(str::to_string).collect();
    assert_eq!(shard, walked);
    assert!(
        ops <= shard.len() as u64 + 8 && ops < files.len() as u64 / 2,
        "{ops} source metadata operations at mount for a shard of {} of {} files",
        shard.len(),
        files.len()
    );
    for f in &shard {
        assert_bytes_eq(
            &fs::read(m.path(f)).unwrap(),
            &fs::read(s.src.join(f)).unwrap(),
            f,
        );
    }
}

/// The recipes of docs/SHARDING.md (docs/recipes/) run as documented: plan + xargs,
/// torchrun's and Slurm's variables, two "nodes" of two ranks, four zarr mounts.
#[test]
fn documented_recipes_run_and_shard_the_dataset() {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("bench/check_recipes.sh");
    let out = Command::new("bash")
        .arg(&script)
        .env("BICACHE", env!("CARGO_BIN_EXE_bicache"))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.trim_end().ends_with("all recipes ok"),
        "bench/check_recipes.sh failed ({}):\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}
