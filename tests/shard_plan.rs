//! `bicache plan`: the lazy-sharding partition as the command line prints it (no mount).

mod common;
use common::*;

use std::collections::{HashMap, HashSet};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// Launcher variables for one run.
type Env<'a> = Vec<(&'a str, &'a str)>;

const TIMEOUT: Duration = Duration::from_secs(120);
const ZARR_METADATA: &[&str] = &[".zarray", ".zattrs", ".zgroup", ".zmetadata", "zarr.json"];

/// A dataset: 400 files of 10-60 KiB in nested directories, zarr metadata here and there,
/// and symlinks (to a file and to a directory) that must not be listed.
fn dataset() -> Scratch {
    let s = Scratch::new();
    let mut rng = XorShift::new(11);
    for i in 0..400u64 {
        let rel = format!("d{}/e{}/sample-{i:04}.bin", i % 7, i % 3);
        let size = (10 * KIB + rng.below(50 * KIB + 1)) as usize;
        s.file(&rel, size, i);
    }
    for d in ["d0", "d1/e2", "d5/e0"] {
        s.write(&format!("{d}/.zarray"), b"{\"zarr_format\": 2}");
        s.write(&format!("{d}/.zattrs"), b"{}");
    }
    s.write(".zgroup", b"{\"zarr_format\": 2}");
    s.write("d3/zarr.json", b"{}");
    std::os::unix::fs::symlink("d0/e0/sample-0000.bin", s.src.join("link-to-file")).unwrap();
    std::os::unix::fs::symlink("d1", s.src.join("link-to-dir")).unwrap();
    s
}

fn is_metadata(p: &Path) -> bool {
    let name = p.file_name().unwrap().to_str().unwrap();
    ZARR_METADATA.contains(&name)
}

/// Regular non-metadata files with their sizes.
fn data_files(src: &Path) -> HashMap<PathBuf, u64> {
    regular_files(src)
        .into_iter()
        .filter(|p| !is_metadata(p))
        .map(|p| {
            let size = fs::metadata(src.join(&p)).unwrap().len();
            (p, size)
        })
        .collect()
}

fn args_of(src: &Path, args: &[&str]) -> Vec<String> {
    let mut v = vec!["plan".to_string(), src.to_str().unwrap().to_string()];
    v.extend(args.iter().map(|a| a.to_string()));
    v
}

/// `bicache plan SRC ARGS` in a cleared environment plus `env`; asserts success and
/// returns (stdout lines, stderr).
fn plan_env(src: &Path, args: &[&str], env: &[(&str, &str)]) -> (Vec<PathBuf>, String) {
    let mut cmd = Command::new(BIN);
    cmd.args(args_of(src, args)).env_clear();
    if let Some(path) = std::env::var_os("PATH") {
        cmd.env("PATH", path);
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = run_cmd(cmd, TIMEOUT).unwrap();
    assert!(
        out.status.success(),
        "bicache plan {args:?} (env {env:?}) failed:\n{}",
        out.describe()
    );
    let lines = out.stdout.lines().map(PathBuf::from).collect();
    (lines, out.stderr)
}

fn plan(src: &Path, args: &[&str]) -> Vec<PathBuf> {
    plan_env(src, args, &[]).0
}

fn plan_fails(src: &Path, args: &[&str], env: &[(&str, &str)]) -> String {
    let mut cmd = Command::new(BIN);
    cmd.args(args_of(src, args)).env_clear();
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = run_cmd(cmd, TIMEOUT).unwrap();
    assert!(
        !out.status.success(),
        "bicache plan {args:?} should fail:\n{}",
        out.describe()
    );
    assert!(
        !out.stderr.contains("panicked"),
        "panic instead of an error: {}",
        out.stderr
    );
    assert_eq!(
        out.stderr.trim().lines().count(),
        1,
        "one line: {}",
        out.stderr
    );
    out.stderr
}

fn flags(i: u64, k: u64, seed: u64) -> Vec<String> {
    vec![
        "--shard-index".into(),
        i.to_string(),
        "--shard-count".into(),
        k.to_string(),
        "--seed".into(),
        seed.to_string(),
    ]
}

fn strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

fn shards(src: &Path, k: u64, seed: u64) -> Vec<Vec<PathBuf>> {
    (0..k)
        .map(|i| plan(src, &strs(&flags(i, k, seed))))
        .collect()
}

#[test]
fn four_shards_are_disjoint_balanced_and_cover_the_data() {
    let s = dataset();
    let want = data_files(&s.src);
    assert_eq!(want.len(), 400);
    let largest = *want.values().max().unwrap();
    let parts = shards(&s.src, 4, 7);

    let mut seen: HashSet<PathBuf> = HashSet::new();
    let mut bytes = Vec::new();
    for (i, part) in parts.iter().enumerate() {
        let mut sum = 0;
        for p in part {
            assert!(!is_metadata(p), "zarr metadata {p:?} printed by shard {i}");
            let size = want
                .get(p)
                .unwrap_or_else(|| panic!("shard {i} lists {p:?}, not a regular data file"));
            assert!(seen.insert(p.clone()), "{p:?} in two shards");
            sum += size;
        }
        bytes.push(sum);
    }
    assert_eq!(seen.len(), want.len(), "the shards must cover the dataset");
    let mean = bytes.iter().sum::<u64>() as f64 / 4.0;
    let max = *bytes.iter().max().unwrap();
    assert!(
        max as f64 <= 1.01 * mean + largest as f64,
        "unbalanced: {bytes:?} (mean {mean}, largest file {largest})"
    );

    // Same seed: byte-identical output, order included (it is the prefetch order).
    assert_eq!(shards(&s.src, 4, 7), parts);
    // Another seed: another assignment.
    let other = shards(&s.src, 4, 8);
    let set = |v: &Vec<PathBuf>| v.iter().cloned().collect::<HashSet<_>>();
    assert_ne!(set(&other[0]), set(&parts[0]));

    // Unsharded: every data file once, in seeded order.
    let all = plan(&s.src, &["--seed", "7"]);
    assert_eq!(all.len(), 400);
    assert_eq!(all.iter().cloned().collect::<HashSet<_>>(), seen);
}

#[test]
fn environment_forms_equal_the_flag_form() {
    let s = dataset();
    let parts = shards(&s.src, 4, 7);
    for i in 0..4u64 {
        let is = i.to_string();
        let want = &parts[i as usize];
        let cases: Vec<(&str, Env, &str)> = vec![
            (
                "rank",
                vec![("RANK", &is), ("WORLD_SIZE", "4"), ("LOCAL_RANK", "0")],
                "torchrun",
            ),
            (
                "rank",
                vec![("SLURM_PROCID", &is), ("SLURM_NTASKS", "4")],
                "SLURM_PROCID",
            ),
            (
                "node",
                vec![
                    ("GROUP_RANK", &is),
                    ("WORLD_SIZE", "8"),
                    ("LOCAL_WORLD_SIZE", "2"),
                    ("RANK", "5"),
                ],
                "GROUP_RANK",
            ),
            (
                "node",
                vec![
                    ("SLURM_NODEID", &is),
                    ("SLURM_NNODES", "4"),
                    ("SLURM_PROCID", "9"),
                ],
                "SLURM_NODEID",
            ),
        ];
        for (mode, env, origin) in cases {
            let (got, stderr) = plan_env(&s.src, &["--shard", mode, "--seed", "7"], &env);
            assert_eq!(&got, want, "--shard {mode} with {env:?}");
            assert!(stderr.contains(origin), "{stderr}");
        }
    }
    let e = plan_fails(&s.src, &["--shard", "rank"], &[]);
    assert!(e.contains("--shard-index"), "{e}");
    let e = plan_fails(&s.src, &["--shard", "node"], &[("SLURM_NODEID", "1")]);
    assert!(e.contains("SLURM_NNODES"), "{e}");
}

#[test]
fn disk_mode_equals_node_times_disks() {
    let s = dataset();
    let disk = [
        "--shard",
        "disk",
        "--disks",
        "2",
        "--disk-index",
        "1",
        "--seed",
        "7",
    ];
    for n in 0..2u64 {
        let want = plan(&s.src, &strs(&flags(n * 2 + 1, 4, 7)));
        let ns = n.to_string();
        let (slurm, _) = plan_env(
            &s.src,
            &disk,
            &[("SLURM_NODEID", &ns), ("SLURM_NNODES", "2")],
        );
        assert_eq!(slurm, want, "Slurm node {n}");
        let (torch, stderr) = plan_env(
            &s.src,
            &disk,
            &[
                ("GROUP_RANK", &ns),
                ("WORLD_SIZE", "8"),
                ("LOCAL_WORLD_SIZE", "4"),
            ],
        );
        assert_eq!(torch, want, "torchrun node {n}");
        assert!(stderr.contains("disk 1 of 2"), "{stderr}");
    }
}

#[test]
fn auto_size_fits_the_capacity() {
    let s = dataset();
    let sizes = data_files(&s.src);
    let full = plan(&s.src, &strs(&flags(1, 4, 7)));
    let full_bytes: u64 = full.iter().map(|p| sizes[p]).sum();
    let capacity = full_bytes / 3;
    let cap = capacity.to_string();
    let mut args = flags(1, 4, 7);
    args.extend(
        [
            "--shard-size",
            "auto",
            "--capacity",
            &cap,
            "--overflow",
            "0.1",
            "--min-files",
            "5",
        ]
        .map(String::from),
    );
    let (cut, stderr) = plan_env(&s.src, &strs(&args), &[]);
    let cut_bytes: u64 = cut.iter().map(|p| sizes[p]).sum();
    assert!(
        cut_bytes as f64 <= capacity as f64 * 1.1,
        "{cut_bytes} bytes over {capacity} x 1.1"
    );
    assert!(cut.len() >= 5 && cut.len() < full.len());
    assert_eq!(
        cut[..],
        full[..cut.len()],
        "the cut keeps the seeded order's head"
    );
    assert!(stderr.contains("cut to fit"), "{stderr}");

    // A tiny capacity still keeps --min-files.
    let tiny = args.iter().map(|a| {
        if *a == cap {
            "1KiB".to_string()
        } else {
            a.clone()
        }
    });
    let tiny: Vec<String> = tiny.collect();
    assert_eq!(plan(&s.src, &strs(&tiny)).len(), 5);

    let e = plan_fails(&s.src, &["--shard-size", "auto"], &[]);
    assert!(e.contains("--capacity"), "{e}");
    let e = plan_fails(&s.src, &["--shard-size", "auto", "--capacity", "12XB"], &[]);
    assert!(e.contains("12XB"), "{e}");
}

#[test]
fn manifest_gives_the_same_shards_as_the_walk() {
    let s = dataset();
    let walk = shards(&s.src, 4, 7);
    // Every regular file (metadata too: it is set apart the same way), in another order,
    // with comments, blank lines, CRLF and a "./" prefix.
    let mut files = regular_files(&s.src);
    files.reverse();
    let mut text = String::from("# dataset manifest\n\n");
    for (n, p) in files.iter().enumerate() {
        let p = p.to_str().unwrap();
        match n % 3 {
            0 => text.push_str(&format!("{p}\r\n")),
            1 => text.push_str(&format!("./{p}\n")),
            _ => text.push_str(&format!("{p}\n")),
        }
    }
    let m = s.base.join("manifest.txt");
    fs::write(&m, text).unwrap();
    let ms = m.to_str().unwrap();
    for i in 0..4u64 {
        let mut args = flags(i, 4, 7);
        args.extend(["--manifest".to_string(), ms.to_string()]);
        assert_eq!(plan(&s.src, &strs(&args)), walk[i as usize], "shard {i}");
    }

    for bad in [
        "d0/missing.bin",
        "../escape",
        "/etc/hostname",
        "d1",
        "link-to-file",
    ] {
        fs::write(&m, format!("# header\nd0/e0/sample-0000.bin\n{bad}\n")).unwrap();
        let e = plan_fails(&s.src, &["--manifest", ms], &[]);
        assert!(e.contains("line 3"), "{bad}: {e}");
        assert!(e.contains(bad), "{bad}: {e}");
    }
}

/// `bicache manifest SOURCE`: the sized manifest of the walk, byte for byte what the
/// documented `find` line makes, and the same shards as the walk through `--manifest`.
#[test]
fn bicache_manifest_writes_the_sized_manifest_of_the_walk() {
    let s = dataset();
    let run = |src: &Path| {
        let mut cmd = Command::new(BIN);
        cmd.args(["manifest".as_ref(), src.as_os_str()]);
        run_cmd(cmd, TIMEOUT).unwrap()
    };
    let out = run(&s.src);
    assert!(out.status.success(), "{}", out.describe());
    assert!(out.stderr.contains("files"), "{}", out.stderr);
    let text = out.stdout;
    let mut lines = text.lines();
    assert_eq!(lines.next(), Some("# bicache-manifest: size path"));
    let listed: HashMap<PathBuf, u64> = lines
        .map(|l| {
            let (size, path) = l.split_once('\t').unwrap();
            (PathBuf::from(path), size.parse().unwrap())
        })
        .collect();
    let all: HashMap<PathBuf, u64> = regular_files(&s.src)
        .into_iter()
        .map(|p| {
            let size = fs::metadata(s.src.join(&p)).unwrap().len();
            (p, size)
        })
        .collect();
    assert_eq!(listed, all);
    // What the find line of docs/SHARDING.md makes, sorted the same way.
    let found = Command::new("sh")
        .arg("-c")
        .arg(r#"cd "$1" && find . -type f -printf '%s\t%P\n' | LC_ALL=C sort -t "$(printf '\t')" -k2"#)
        .args(["sh", s.src.to_str().unwrap()])
        .output()
        .unwrap();
    let body: String = text.lines().skip(1).map(|l| format!("{l}\n")).collect();
    assert_eq!(body, String::from_utf8(found.stdout).unwrap());

    let m = s.base.join("manifest.tsv");
    fs::write(&m, &text).unwrap();
    let walk = shards(&s.src, 4, 7);
    for i in 0..4u64 {
        let mut args = flags(i, 4, 7);
        args.extend(["--manifest".to_string(), m.to_str().unwrap().to_string()]);
        assert_eq!(plan(&s.src, &strs(&args)), walk[i as usize], "shard {i}");
    }

    // Bad input: one line naming the path, a non-zero exit, nothing on stdout.
    let missing = s.base.join("no-such-dir");
    let out = run(&missing);
    assert_eq!(out.status.code(), Some(2), "{}", out.describe());
    assert!(
        out.stderr.contains(missing.to_str().unwrap()),
        "{}",
        out.stderr
    );
    s.write("d0/bad\nname", b"x");
    let out = run(&s.src);
    assert_eq!(out.status.code(), Some(2), "{}", out.describe());
    assert!(
        out.stderr.contains("newline") && out.stderr.contains("d0/bad\\nname'"),
        "{}",
        out.stderr
    );
    assert_eq!(out.stderr.trim().lines().count(), 1, "{}", out.stderr);
    assert!(out.stdout.is_empty(), "{}", out.stdout);
}

#[test]
fn a_name_with_a_newline_fails_the_line_list_and_reads_back_with_null() {
    use std::os::unix::ffi::OsStrExt;
    let s = dataset();
    s.write("d0/two\nlines.bin", b"x");
    let all: HashSet<PathBuf> = data_files(&s.src).into_keys().collect();
    assert!(all.contains(Path::new("d0/two\nlines.bin")));

    // One path a line cannot hold it: one error line naming it, nothing on stdout.
    let err = plan_fails(&s.src, &[], &[]);
    assert!(
        err.contains("d0/two\\nlines.bin'") && err.contains("--null"),
        "{err}"
    );
    let mut cmd = Command::new(BIN);
    cmd.args(args_of(&s.src, &[]));
    assert!(run_cmd(cmd, TIMEOUT).unwrap().stdout.is_empty());

    // --null: every path NUL-terminated, the odd one whole; the same shards as the
    // newline list gives for the files it can hold, in the same order.
    let null = |extra: &[&str]| -> Vec<PathBuf> {
        let out = Command::new(BIN)
            .args(args_of(&s.src, extra))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(out.stdout.last(), Some(&0u8));
        out.stdout
            .split(|b| *b == 0)
            .filter(|p| !p.is_empty())
            .map(|p| PathBuf::from(std::ffi::OsStr::from_bytes(p)))
            .collect()
    };
    let whole: HashSet<PathBuf> = null(&["--null"]).into_iter().collect();
    assert_eq!(whole, all);
    let mut union = HashSet::new();
    for i in 0..3u64 {
        let mut args = flags(i, 3, 5);
        args.push("-0".into());
        let shard = null(&strs(&args));
        assert!(
            shard.iter().all(|p| union.insert(p.clone())),
            "shards overlap"
        );
    }
    assert_eq!(union, all);
    fs::remove_file(s.src.join("d0/two\nlines.bin")).unwrap();
    let mut args = flags(1, 3, 5);
    args.push("--null".into());
    assert_eq!(null(&strs(&args)), plan(&s.src, &strs(&flags(1, 3, 5))));
}

#[test]
fn always_visible_globs_and_bad_input() {
    let s = dataset();
    let all = plan(&s.src, &[]);
    assert_eq!(all.len(), 400);
    let fewer = plan(&s.src, &["--always-visible", "d2/**"]);
    assert!(!fewer.is_empty() && fewer.len() < 400);
    assert!(fewer.iter().all(|p| !p.starts_with("d2")));

    let e = plan_fails(&s.src, &["--always-visible", "a[b"], &[]);
    assert!(e.contains("a[b"), "{e}");
    let missing = s.base.join("no-such-dir");
    let e = plan_fails(&missing, &[], &[]);
    assert!(e.contains(missing.to_str().unwrap()), "{e}");
    let file = s.src.join("d0/e0/sample-0000.bin");
    let e = plan_fails(&file, &[], &[]);
    assert!(e.contains("not a directory"), "{e}");
    let e = plan_fails(&s.src, &["--shard-index", "4", "--shard-count", "4"], &[]);
    assert!(e.contains("--shard-index 4"), "{e}");
}
