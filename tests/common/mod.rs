//! Shared helpers for the bicache integration tests.
//!
//! Every test that mounts something goes through [`Mount`], whose `Drop`
//! always unmounts (falling back to `fusermount3 -uz` / `umount -l`) and waits
//! for the daemon to exit, even when the test panicked. A per-mount watchdog
//! kills a hung daemon so that a hanging FUSE request turns into a test
//! failure (ENOTCONN) instead of a CI run that never ends.
#![allow(dead_code)]

use std::ffi::{CString, OsStr, OsString};
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde_json::Value;
use tempfile::TempDir;

/// Path of the binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_bicache");

pub const KIB: u64 = 1024;
pub const MIB: u64 = 1024 * 1024;
pub const GIB: u64 = 1024 * 1024 * 1024;

/// Default lifetime allowed for one mount before the watchdog kills the
/// daemon (a hung FUSE request then fails with ENOTCONN instead of hanging).
pub const DEFAULT_DEADLINE: Duration = Duration::from_secs(300);

// ---------------------------------------------------------------------------
// Environment checks
// ---------------------------------------------------------------------------

fn in_ci() -> bool {
    std::env::var("CI")
        .map(|v| v.eq_ignore_ascii_case("true") || v == "1")
        .unwrap_or(false)
}

/// Returns true when FUSE is usable. When it is not: panics under CI=true
/// (the tests must run in CI), otherwise prints a loud message and returns
/// false so the caller can return early.
///
/// Usage: `if !common::fuse_or_skip() { return; }`
pub fn fuse_or_skip() -> bool {
    let problem = match OpenOptions::new().read(true).write(true).open("/dev/fuse") {
        Err(e) => Some(format!("cannot open /dev/fuse read-write: {e}")),
        Ok(_) => {
            if which("fusermount3").is_none() {
                Some("fusermount3 not found in PATH".to_string())
            } else {
                None
            }
        }
    };
    match problem {
        None => true,
        Some(p) => {
            if in_ci() {
                panic!("FUSE is required in CI (CI=true) but unusable: {p}");
            }
            eprintln!();
            eprintln!("**************************************************************");
            eprintln!("*** SKIPPING FUSE TESTS: /dev/fuse unusable ({p})");
            eprintln!("**************************************************************");
            eprintln!();
            false
        }
    }
}

pub fn which(prog: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(prog))
        .find(|p| p.is_file())
}

/// `sync; echo 3 > /proc/sys/vm/drop_caches`, so that the next read really
/// goes through FUSE instead of the kernel page cache.
pub fn drop_caches() {
    unsafe { libc::sync() };
    if let Err(e) = fs::write("/proc/sys/vm/drop_caches", b"3\n") {
        panic!(
            "cannot drop the page cache (needs root): {e}; without it a 'warm' read \
             would be served by the kernel page cache and the test would prove nothing"
        );
    }
}

// ---------------------------------------------------------------------------
// Running commands with a timeout
// ---------------------------------------------------------------------------

#[derive(Debug)]
pub struct CmdOut {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
    pub elapsed: Duration,
}

impl CmdOut {
    pub fn describe(&self) -> String {
        format!(
            "status: {:?}, elapsed {:?}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.status, self.elapsed, self.stdout, self.stderr
        )
    }
}

/// Runs a command with stdin from /dev/null and stdout/stderr captured in
/// temporary files (not pipes: a daemon inheriting them must not make us
/// hang). Returns Err when the command did not exit within `timeout` (it is
/// then killed).
pub fn run_cmd(mut cmd: Command, timeout: Duration) -> Result<CmdOut, String> {
    let mut out = tempfile::tempfile().expect("tempfile");
    let mut err = tempfile::tempfile().expect("tempfile");
    cmd.stdin(Stdio::null())
        .stdout(out.try_clone().expect("dup"))
        .stderr(err.try_clone().expect("dup"));
    let start = Instant::now();
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("cannot spawn {cmd:?}: {e}"));
    let status = loop {
        match child.try_wait() {
            Ok(Some(st)) => break st,
            Ok(None) => {}
            Err(e) => return Err(format!("wait failed for {cmd:?}: {e}")),
        }
        if start.elapsed() > timeout {
            let _ = child.kill();
            let _ = child.wait();
            let mut s = String::new();
            let _ = err.seek(SeekFrom::Start(0));
            let _ = err.read_to_string(&mut s);
            return Err(format!(
                "{cmd:?} did not exit within {timeout:?} (killed); stderr so far: {s:?}"
            ));
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let elapsed = start.elapsed();
    let mut stdout = Vec::new();
    let mut stderr = Vec::new();
    out.seek(SeekFrom::Start(0)).unwrap();
    out.read_to_end(&mut stdout).unwrap();
    err.seek(SeekFrom::Start(0)).unwrap();
    err.read_to_end(&mut stderr).unwrap();
    Ok(CmdOut {
        status,
        stdout: String::from_utf8_lossy(&stdout).into_owned(),
        stderr: String::from_utf8_lossy(&stderr).into_owned(),
        elapsed,
    })
}

/// Runs the bicache binary with the given arguments.
pub fn bicache<I, S>(args: I, timeout: Duration) -> Result<CmdOut, String>
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let mut cmd = Command::new(BIN);
    cmd.args(args);
    run_cmd(cmd, timeout)
}

// ---------------------------------------------------------------------------
// /proc helpers
// ---------------------------------------------------------------------------

pub use bicache::mountinfo::{MountEntry as MountInfo, mounts};

/// The (last, i.e. topmost) mount entry whose mount point is `mp`.
pub fn mount_entry(mp: &Path) -> Option<MountInfo> {
    mounts().into_iter().rev().find(|m| m.mount_point == mp)
}

pub fn is_mounted(mp: &Path) -> bool {
    mount_entry(mp).is_some()
}

/// Every mountinfo line mentioning `p` anywhere (mount point at or below it).
pub fn mounts_at_or_below(p: &Path) -> Vec<MountInfo> {
    mounts()
        .into_iter()
        .filter(|m| m.mount_point.starts_with(p))
        .collect()
}

/// True while `pid` exists and is not a zombie.
pub fn pid_alive(pid: i32) -> bool {
    if pid <= 0 {
        return false;
    }
    let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    match stat.rfind(')') {
        Some(i) => {
            let state = stat[i + 1..].trim_start().chars().next().unwrap_or('?');
            state != 'Z' && state != 'X'
        }
        None => true,
    }
}

/// Waits up to `timeout` for `pid` to exit; returns whether it did.
pub fn wait_pid_exit(pid: i32, timeout: Duration) -> bool {
    let start = Instant::now();
    while pid_alive(pid) {
        if start.elapsed() > timeout {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    true
}

/// Live processes (other than ourselves) whose command line contains `needle`
/// as one of its arguments or inside one.
pub fn pids_with_arg(needle: &OsStr) -> Vec<i32> {
    let me = std::process::id() as i32;
    let mut v = Vec::new();
    let Ok(rd) = fs::read_dir("/proc") else {
        return v;
    };
    for e in rd.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        if pid == me {
            continue;
        }
        let Ok(cmdline) = fs::read(e.path().join("cmdline")) else {
            continue;
        };
        let n = needle.as_bytes();
        let hit = cmdline
            .split(|b| *b == 0)
            .any(|arg| !n.is_empty() && arg.windows(n.len()).any(|w| w == n));
        if hit && pid_alive(pid) {
            v.push(pid);
        }
    }
    v
}

// ---------------------------------------------------------------------------
// Deterministic data
// ---------------------------------------------------------------------------

/// A cheap xorshift64* PRNG: deterministic, fast, not cryptographic.
#[derive(Clone)]
pub struct XorShift(u64);

impl XorShift {
    pub fn new(seed: u64) -> Self {
        let mut s = seed ^ 0x9E37_79B9_7F4A_7C15;
        if s == 0 {
            s = 0xDEAD_BEEF;
        }
        let mut r = XorShift(s);
        for _ in 0..4 {
            r.next_u64();
        }
        r
    }

    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform-ish in [0, n).
    pub fn below(&mut self, n: u64) -> u64 {
        if n == 0 { 0 } else { self.next_u64() % n }
    }

    pub fn fill(&mut self, buf: &mut [u8]) {
        let mut chunks = buf.chunks_exact_mut(8);
        for c in &mut chunks {
            c.copy_from_slice(&self.next_u64().to_le_bytes());
        }
        let rest = chunks.into_remainder();
        if !rest.is_empty() {
            let b = self.next_u64().to_le_bytes();
            let n = rest.len();
            rest.copy_from_slice(&b[..n]);
        }
    }
}

/// `len` deterministic pseudo-random bytes for `seed`.
pub fn pseudo_random(seed: u64, len: usize) -> Vec<u8> {
    let mut v = vec![0u8; len];
    XorShift::new(seed).fill(&mut v);
    v
}

/// Asserts two byte slices are equal without dumping megabytes on failure.
#[track_caller]
pub fn assert_bytes_eq(got: &[u8], want: &[u8], what: &str) {
    if got == want {
        return;
    }
    let first = got
        .iter()
        .zip(want.iter())
        .position(|(a, b)| a != b)
        .unwrap_or(got.len().min(want.len()));
    panic!(
        "{what}: content differs: got {} bytes, want {} bytes, first difference at offset {first} \
         (got {:02x?}, want {:02x?})",
        got.len(),
        want.len(),
        &got[first..got.len().min(first + 16)],
        &want[first..want.len().min(first + 16)],
    );
}

/// Reads `path` whole and compares it with `want`.
#[track_caller]
pub fn assert_file_eq(path: &Path, want: &[u8], what: &str) {
    let got = fs::read(path).unwrap_or_else(|e| panic!("{what}: read {}: {e}", path.display()));
    assert_bytes_eq(&got, want, what);
}

/// A file of a test's source tree: relative path and contents.
pub type SourceFile = (String, Vec<u8>);

/// Reads every file whole through the mount at `mp` and checks its bytes.
#[track_caller]
pub fn read_all(mp: &Path, files: &[SourceFile]) {
    for (rel, want) in files {
        assert_file_eq(&mp.join(rel), want, rel);
    }
}

/// The SSD tier's data-bearing files (small files and large files' `.data`), sorted.
pub fn chunk_files(cache: &Path) -> Vec<PathBuf> {
    cache_files(cache)
        .into_iter()
        .filter(|p| !p.to_string_lossy().ends_with(".idx"))
        .collect()
}

/// Flips one bit of the byte at `at` of a file, as a bad disk or a stray writer would.
pub fn flip_bit(p: &Path, at: u64) {
    use std::os::unix::fs::FileExt;
    let f = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(p)
        .unwrap();
    let mut b = [0u8; 1];
    f.read_exact_at(&mut b, at).unwrap();
    f.write_all_at(&[b[0] ^ 0x01], at).unwrap();
}

/// Every file of the SSD tier (format 3: `files/aa/bb/…`), sorted: small files
/// (`<key>-<len>-<sum>`), large files' data (`.data`) and indexes (`.idx`).
pub fn cache_files(cache: &Path) -> Vec<PathBuf> {
    let dir = cache.join("files");
    if !dir.exists() {
        return Vec::new();
    }
    let mut out: Vec<PathBuf> = regular_files(&dir)
        .into_iter()
        .map(|p| dir.join(p))
        .collect();
    out.sort();
    out
}

/// pread until `buf` is full or EOF; returns the number of bytes read.
pub fn read_full_at(f: &File, buf: &mut [u8], off: u64) -> std::io::Result<usize> {
    let mut done = 0;
    while done < buf.len() {
        match f.read_at(&mut buf[done..], off + done as u64) {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(done)
}

/// `reads` positioned reads of `f` at random offsets (up to 4 KiB past the end) and
/// lengths (1..=`max_len`), then the whole file through mmap: each must equal `want`.
pub fn check_preads_and_mmap(
    f: &File,
    rel: &str,
    want: &[u8],
    rng: &mut XorShift,
    reads: usize,
    max_len: u64,
) {
    for _ in 0..reads {
        let off = rng.below(want.len() as u64 + 4096);
        let len = 1 + rng.below(max_len) as usize;
        let mut buf = vec![0u8; len];
        let n = read_full_at(f, &mut buf, off).unwrap();
        let lo = (off as usize).min(want.len());
        let hi = (lo + len).min(want.len());
        assert_bytes_eq(&buf[..n], &want[lo..hi], &format!("{rel} at {off}+{len}"));
    }
    let map = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            want.len(),
            libc::PROT_READ,
            libc::MAP_SHARED,
            std::os::fd::AsRawFd::as_raw_fd(f),
            0,
        )
    };
    assert_ne!(map, libc::MAP_FAILED, "mmap {rel}");
    let mapped = unsafe { std::slice::from_raw_parts(map as *const u8, want.len()) };
    assert_bytes_eq(mapped, want, &format!("{rel} via mmap"));
    unsafe { libc::munmap(map, want.len()) };
}

// ---------------------------------------------------------------------------
// Source trees
// ---------------------------------------------------------------------------

/// A scratch area: `base/src` (the source tree, created) and `base/cache`
/// (the cache dir path, NOT created: bicache must create it).
pub struct Scratch {
    _tmp: TempDir,
    pub base: PathBuf,
    pub src: PathBuf,
    pub cache: PathBuf,
}

/// A canonical temporary directory (so paths printed by bicache, which may
/// canonicalize, compare equal to ours).
pub fn temp_dir(prefix: &str) -> (TempDir, PathBuf) {
    let t = tempfile::Builder::new()
        .prefix(prefix)
        .tempdir()
        .expect("create temp dir");
    let p = fs::canonicalize(t.path()).expect("canonicalize temp dir");
    (t, p)
}

impl Scratch {
    pub fn new() -> Self {
        let (tmp, base) = temp_dir("bicache-test-");
        let src = base.join("src");
        fs::create_dir(&src).unwrap();
        let cache = base.join("cache");
        Scratch {
            _tmp: tmp,
            base,
            src,
            cache,
        }
    }

    /// Writes `src/rel` (creating parents) with `size` pseudo-random bytes
    /// derived from `seed`; returns the content.
    pub fn file(&self, rel: &str, size: usize, seed: u64) -> Vec<u8> {
        let data = pseudo_random(seed, size);
        self.write(rel, &data);
        data
    }

    pub fn write(&self, rel: &str, data: &[u8]) {
        let p = self.src.join(rel);
        if let Some(parent) = p.parent() {
            fs::create_dir_all(parent).unwrap();
        }
        fs::write(&p, data).unwrap_or_else(|e| panic!("write {}: {e}", p.display()));
    }

    pub fn dir(&self, rel: &str) -> PathBuf {
        let p = self.src.join(rel);
        fs::create_dir_all(&p).unwrap();
        p
    }

    /// Mounts `src` with cache dir `cache` and the extra arguments.
    pub fn mount(&self, args: &[&str]) -> Mount {
        Mount::new(&self.src, &self.cache, args)
    }
}

impl Default for Scratch {
    fn default() -> Self {
        Self::new()
    }
}

/// Regular files under `root` (recursively, not following symlinks), as
/// paths relative to `root`, sorted.
pub fn regular_files(root: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for (rel, md) in walk(root) {
        if md.file_type().is_file() {
            out.push(rel);
        }
    }
    out
}

/// Every entry under `root` (recursively, not following symlinks) with its
/// lstat metadata, relative paths, sorted. `root` itself is not included.
pub fn walk(root: &Path) -> Vec<(PathBuf, fs::Metadata)> {
    fn rec(root: &Path, rel: &Path, out: &mut Vec<(PathBuf, fs::Metadata)>) {
        let dir = root.join(rel);
        let mut entries: Vec<_> = fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("read_dir {}: {e}", dir.display()))
            .map(|e| e.unwrap().file_name())
            .collect();
        entries.sort();
        for name in entries {
            let r = rel.join(&name);
            let md = fs::symlink_metadata(root.join(&r))
                .unwrap_or_else(|e| panic!("lstat {}: {e}", root.join(&r).display()));
            let is_dir = md.file_type().is_dir();
            out.push((r.clone(), md));
            if is_dir {
                rec(root, &r, out);
            }
        }
    }
    let mut out = Vec::new();
    rec(root, Path::new(""), &mut out);
    out
}

/// Disk space taken by all regular files under `root` (their allocated blocks, as `du`
/// counts: a sparse file counts what it holds, not its length; not following symlinks).
/// Files vanishing during the walk are ignored.
pub fn du_bytes(root: &Path) -> u64 {
    fn rec(p: &Path) -> u64 {
        let Ok(rd) = fs::read_dir(p) else { return 0 };
        let mut total = 0;
        for e in rd.flatten() {
            let Ok(md) = fs::symlink_metadata(e.path()) else {
                continue;
            };
            if md.is_dir() {
                total += rec(&e.path());
            } else if md.is_file() {
                total += md.blocks() * 512;
            }
        }
        total
    }
    rec(root)
}

// ---------------------------------------------------------------------------
// Stats JSON
// ---------------------------------------------------------------------------

/// `stats["a"]["b"]` as u64; panics with the whole JSON when missing.
#[track_caller]
pub fn stat(v: &Value, dotted: &str) -> u64 {
    let mut cur = v;
    for k in dotted.split('.') {
        cur = cur
            .get(k)
            .unwrap_or_else(|| panic!("stats JSON has no field {dotted:?}: {v}"));
    }
    cur.as_u64()
        .unwrap_or_else(|| panic!("stats field {dotted:?} is not a non-negative integer: {v}"))
}

/// Every field the spec requires in the stats JSON.
pub const STAT_FIELDS: &[&str] = &[
    "pid",
    "chunk_size",
    "ram.hits",
    "ram.misses",
    "ram.bytes",
    "ram.capacity",
    "disk.hits",
    "disk.misses",
    "disk.bytes",
    "disk.capacity",
    "disk.corrupt",
    "source.reads",
    "source.bytes",
    "prefetch.files_done",
    "prefetch.files_total",
    "prefetch.bytes",
];

// ---------------------------------------------------------------------------
// Mount
// ---------------------------------------------------------------------------

struct Watchdog {
    state: Arc<(Mutex<bool>, Condvar)>,
    handle: Option<JoinHandle<()>>,
}

impl Watchdog {
    fn start(mp: PathBuf, pid: Arc<AtomicI32>, deadline: Duration) -> Self {
        let state = Arc::new((Mutex::new(false), Condvar::new()));
        let st = state.clone();
        let handle = std::thread::spawn(move || {
            let (lock, cv) = &*st;
            let mut done = lock.lock().unwrap();
            let start = Instant::now();
            while !*done {
                let left = deadline.saturating_sub(start.elapsed());
                if left.is_zero() {
                    break;
                }
                done = cv.wait_timeout(done, left).unwrap().0;
            }
            if *done {
                return;
            }
            drop(done);
            eprintln!(
                "!!! WATCHDOG: mount {} still alive after {deadline:?}: killing its daemon \
                 (pending FUSE requests will fail with ENOTCONN)",
                mp.display()
            );
            let mut victims = pids_with_arg(mp.as_os_str());
            let p = pid.load(Ordering::SeqCst);
            if p > 0 && !victims.contains(&p) {
                victims.push(p);
            }
            for v in victims {
                unsafe { libc::kill(v, libc::SIGKILL) };
            }
            let mut c = Command::new("fusermount3");
            c.arg("-uz").arg(&mp);
            let _ = run_cmd(c, Duration::from_secs(10));
        });
        Watchdog {
            state,
            handle: Some(handle),
        }
    }

    fn cancel(&mut self) {
        {
            let (lock, cv) = &*self.state;
            *lock.lock().unwrap() = true;
            cv.notify_all();
        }
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        self.cancel();
    }
}

/// A live bicache mount. Dropping it always unmounts and waits for the
/// daemon to exit.
pub struct Mount {
    pub mountpoint: PathBuf,
    pub source: PathBuf,
    pub cache_dir: PathBuf,
    /// The daemon's pid, as reported by stats.json.
    pub pid: i32,
    pub log_file: PathBuf,
    args: Vec<OsString>,
    deadline: Duration,
    pid_shared: Arc<AtomicI32>,
    watchdog: Option<Watchdog>,
    mounted: bool,
    _tmp: TempDir,
}

impl Mount {
    /// `bicache mount SOURCE <fresh temp mountpoint> --cache-dir CACHE
    /// --log-file <temp> ARGS...`; asserts success, that the mount is live
    /// when the command returns, and reads the daemon pid from stats.json.
    pub fn new(source: &Path, cache_dir: &Path, args: &[&str]) -> Mount {
        Self::with_deadline(source, cache_dir, args, DEFAULT_DEADLINE)
    }

    pub fn with_deadline(
        source: &Path,
        cache_dir: &Path,
        args: &[&str],
        deadline: Duration,
    ) -> Mount {
        let (tmp, base) = temp_dir("bicache-mnt-");
        let mountpoint = base.join("mnt");
        fs::create_dir(&mountpoint).unwrap();
        let log_file = base.join("daemon.log");
        let mut m = Mount {
            mountpoint,
            source: source.to_path_buf(),
            cache_dir: cache_dir.to_path_buf(),
            pid: 0,
            log_file,
            args: args.iter().map(OsString::from).collect(),
            deadline,
            pid_shared: Arc::new(AtomicI32::new(0)),
            watchdog: None,
            mounted: false,
            _tmp: tmp,
        };
        m.mount();
        m
    }

    fn mount(&mut self) {
        let mut full: Vec<OsString> = vec![
            "mount".into(),
            self.source.clone().into(),
            self.mountpoint.clone().into(),
            "--cache-dir".into(),
            self.cache_dir.clone().into(),
        ];
        if !self.args.iter().any(|a| a == "--log-file") {
            full.push("--log-file".into());
            full.push(self.log_file.clone().into());
        }
        full.extend(self.args.iter().cloned());
        let mut cmd = Command::new(BIN);
        cmd.args(&full);
        // What a mount shares with the user's other mounts on the node (the dataset lists,
        // in the default location's folder) goes beside the test's cache dir, so it is
        // removed with the test's scratch folder instead of piling up in /var/tmp.
        if let Some(parent) = self.cache_dir.parent() {
            cmd.env("TMPDIR", parent).env_remove("SLURM_TMPDIR");
        }
        let res = run_cmd(cmd, Duration::from_secs(60));
        let out = match res {
            Ok(o) => o,
            Err(e) => {
                self.force_cleanup();
                panic!("`bicache {full:?}` hung: {e}\n{}", self.log_tail());
            }
        };
        if !out.status.success() {
            self.force_cleanup();
            panic!(
                "`bicache {full:?}` failed:\n{}\n{}",
                out.describe(),
                self.log_tail()
            );
        }
        self.mounted = true;
        let Some(entry) = mount_entry(&self.mountpoint) else {
            self.force_cleanup();
            panic!(
                "`bicache mount` exited 0 but {} is not in /proc/self/mountinfo \
                 (mount must be live when the command returns)",
                self.mountpoint.display()
            );
        };
        assert!(
            entry.fstype.starts_with("fuse"),
            "mount at {} has fstype {:?}, expected fuse*",
            self.mountpoint.display(),
            entry.fstype
        );
        self.watchdog = Some(Watchdog::start(
            self.mountpoint.clone(),
            self.pid_shared.clone(),
            self.deadline,
        ));
        let st = self.stats();
        let pid = stat(&st, "pid") as i32;
        assert!(
            pid > 0 && pid_alive(pid),
            "stats.json pid {pid} is not a live process: {st}"
        );
        self.pid = pid;
        self.pid_shared.store(pid, Ordering::SeqCst);
    }

    /// Path inside the mount.
    pub fn path(&self, rel: impl AsRef<Path>) -> PathBuf {
        self.mountpoint.join(rel)
    }

    /// Path inside the source.
    pub fn src_path(&self, rel: impl AsRef<Path>) -> PathBuf {
        self.source.join(rel)
    }

    pub fn stats_path(&self) -> PathBuf {
        self.mountpoint.join(".bicache").join("stats.json")
    }

    /// Parsed `MOUNTPOINT/.bicache/stats.json`.
    pub fn stats(&self) -> Value {
        let p = self.stats_path();
        let text = fs::read_to_string(&p).unwrap_or_else(|e| panic!("read {}: {e}", p.display()));
        serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("{} is not valid JSON ({e}): {text:?}", p.display()))
    }

    /// Parsed output of `bicache stats MOUNTPOINT --json`.
    pub fn stats_cli(&self) -> Value {
        let out = bicache(
            [
                OsStr::new("stats"),
                self.mountpoint.as_os_str(),
                OsStr::new("--json"),
            ],
            Duration::from_secs(20),
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert!(
            out.status.success(),
            "bicache stats --json failed: {}",
            out.describe()
        );
        serde_json::from_str(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "`bicache stats --json` output is not JSON ({e}): {:?}",
                out.stdout
            )
        })
    }

    /// Waits (bounded) until the daemon is quiescent: source.bytes and the
    /// prefetch counters unchanged over two samples 300 ms apart, and nothing
    /// queued for the SSD tier. Returns the last stats. The bound is generous: a CI
    /// disk whose fdatasync takes half a second drains the write-back slowly.
    pub fn settle(&self) -> Value {
        let start = Instant::now();
        let key = |v: &Value| {
            (
                stat(v, "source.bytes"),
                stat(v, "prefetch.bytes"),
                stat(v, "prefetch.files_done"),
            )
        };
        let mut prev = self.stats();
        loop {
            std::thread::sleep(Duration::from_millis(300));
            let cur = self.stats();
            let queued = cur["disk"]["queued"].as_u64().unwrap_or(0);
            if (key(&cur) == key(&prev) && queued == 0) || start.elapsed() > Duration::from_secs(60)
            {
                return cur;
            }
            prev = cur;
        }
    }

    /// Last lines of the daemon log (for failure messages).
    pub fn log_tail(&self) -> String {
        match fs::read_to_string(&self.log_file) {
            Ok(s) => {
                let lines: Vec<&str> = s.lines().collect();
                let from = lines.len().saturating_sub(40);
                format!(
                    "--- last lines of daemon log {} ---\n{}",
                    self.log_file.display(),
                    lines[from..].join("\n")
                )
            }
            Err(e) => format!("(no daemon log at {}: {e})", self.log_file.display()),
        }
    }

    /// Clean `bicache unmount`: asserts exit 0, that the mount is gone and
    /// that the daemon exits within 10 s.
    pub fn unmount(&mut self) {
        assert!(self.mounted, "unmount() on a mount that is not mounted");
        let out = bicache(
            [OsStr::new("unmount"), self.mountpoint.as_os_str()],
            Duration::from_secs(20),
        );
        let out = match out {
            Ok(o) => o,
            Err(e) => {
                self.force_cleanup();
                panic!("bicache unmount hung: {e}");
            }
        };
        if !out.status.success() {
            self.force_cleanup();
            panic!(
                "`bicache unmount {}` failed: {}",
                self.mountpoint.display(),
                out.describe()
            );
        }
        if is_mounted(&self.mountpoint) {
            self.force_cleanup();
            panic!(
                "`bicache unmount` exited 0 but {} is still mounted",
                self.mountpoint.display()
            );
        }
        if !wait_pid_exit(self.pid, Duration::from_secs(10)) {
            self.force_cleanup();
            panic!(
                "daemon pid {} still running 10 s after `bicache unmount`",
                self.pid
            );
        }
        self.mounted = false;
        if let Some(mut w) = self.watchdog.take() {
            w.cancel();
        }
    }

    /// Unmounts cleanly, then mounts the same source with the same cache dir
    /// and arguments on the same mountpoint (new daemon, new pid).
    pub fn remount(&mut self) {
        self.unmount();
        self.mount();
    }

    /// Mounts again after `unmount()` (the caller changed something in between).
    pub fn remount_after_unmount(&mut self) {
        assert!(!self.mounted, "still mounted");
        self.mount();
    }

    /// Marks the mount as gone after it was unmounted by other means
    /// (e.g. `fusermount3 -u`); Drop still verifies and cleans up.
    pub fn forget_mounted(&mut self) {
        self.mounted = false;
    }

    /// Best-effort teardown that never panics. Returns a description of what
    /// went wrong (empty when all went well).
    fn force_cleanup(&mut self) -> Vec<String> {
        let mut problems = Vec::new();
        let mp = self.mountpoint.clone();
        if is_mounted(&mp) {
            match bicache(
                [OsStr::new("unmount"), mp.as_os_str()],
                Duration::from_secs(10),
            ) {
                Ok(o) if o.status.success() => {}
                Ok(o) => problems.push(format!("bicache unmount failed: {}", o.describe())),
                Err(e) => problems.push(format!("bicache unmount hung: {e}")),
            }
        }
        if is_mounted(&mp) {
            problems.push(format!(
                "{} still mounted after bicache unmount",
                mp.display()
            ));
            let mut c = Command::new("fusermount3");
            c.arg("-uz").arg(&mp);
            let _ = run_cmd(c, Duration::from_secs(10));
        }
        if is_mounted(&mp) {
            let mut c = Command::new("umount");
            c.arg("-l").arg(&mp);
            let _ = run_cmd(c, Duration::from_secs(10));
        }
        if is_mounted(&mp) {
            problems.push(format!(
                "{} STILL mounted after fusermount3 -uz and umount -l",
                mp.display()
            ));
        }
        if self.pid > 0 && !wait_pid_exit(self.pid, Duration::from_secs(10)) {
            problems.push(format!(
                "daemon pid {} did not exit within 10 s of unmount; killing it",
                self.pid
            ));
            unsafe { libc::kill(self.pid, libc::SIGKILL) };
            wait_pid_exit(self.pid, Duration::from_secs(5));
        }
        // A daemon that never reported its pid (e.g. stats.json unreadable).
        for p in pids_with_arg(mp.as_os_str()) {
            if !wait_pid_exit(p, Duration::from_secs(5)) {
                problems.push(format!(
                    "process {p} serving {} still alive; killing it",
                    mp.display()
                ));
                unsafe { libc::kill(p, libc::SIGKILL) };
            }
        }
        self.mounted = false;
        if let Some(mut w) = self.watchdog.take() {
            w.cancel();
        }
        problems
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let was_mounted = self.mounted;
        let panicking = std::thread::panicking();
        let problems = self.force_cleanup();
        if panicking {
            eprintln!(
                "(test failed with mount {} live={was_mounted}; daemon pid {})\n{}",
                self.mountpoint.display(),
                self.pid,
                self.log_tail()
            );
        }
        if !problems.is_empty() {
            let msg = format!(
                "cleanup of mount {}:\n  {}",
                self.mountpoint.display(),
                problems.join("\n  ")
            );
            if panicking {
                eprintln!("{msg}");
            } else {
                panic!("{msg}");
            }
        }
    }
}

/// Convenience: a C string for a path (for raw libc calls).
pub fn cpath(p: &Path) -> CString {
    CString::new(p.as_os_str().as_bytes()).expect("path contains NUL")
}

/// Checks a path's mode bits.
pub fn mode_of(p: &Path) -> u32 {
    fs::symlink_metadata(p)
        .unwrap_or_else(|e| panic!("lstat {}: {e}", p.display()))
        .mode()
}

/// Sets the mtime (seconds + nanoseconds) of `p` without following a final
/// symlink; atime is set to the same value.
pub fn set_mtime(p: &Path, sec: i64, nsec: i64) {
    let ts = libc::timespec {
        tv_sec: sec as libc::time_t,
        tv_nsec: nsec as _,
    };
    let times = [ts, ts];
    let c = cpath(p);
    let r = unsafe {
        libc::utimensat(
            libc::AT_FDCWD,
            c.as_ptr(),
            times.as_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
        )
    };
    assert_eq!(
        r,
        0,
        "utimensat {}: {}",
        p.display(),
        std::io::Error::last_os_error()
    );
}

/// Reads a whole file with reads of `bufsize` bytes.
pub fn read_with_buf(p: &Path, bufsize: usize) -> Vec<u8> {
    let mut f = File::open(p).unwrap_or_else(|e| panic!("open {}: {e}", p.display()));
    let mut out = Vec::new();
    let mut buf = vec![0u8; bufsize];
    loop {
        let n = f
            .read(&mut buf)
            .unwrap_or_else(|e| panic!("read {}: {e}", p.display()));
        if n == 0 {
            break;
        }
        out.extend_from_slice(&buf[..n]);
    }
    out
}

/// Guard for mounts not made through [`Mount`] (foreground mode, failed
/// mounts in bad-input tests): on drop, unmounts whatever is mounted on `mp`,
/// kills a child it owns and any process still serving `mp`. Never panics.
pub struct MountGuard {
    pub mp: PathBuf,
    pub child: Option<std::process::Child>,
}

impl MountGuard {
    pub fn new(mp: &Path) -> Self {
        MountGuard {
            mp: mp.to_path_buf(),
            child: None,
        }
    }
}

impl Drop for MountGuard {
    fn drop(&mut self) {
        for _ in 0..3 {
            if !is_mounted(&self.mp) {
                break;
            }
            let _ = bicache(
                [OsStr::new("unmount"), self.mp.as_os_str()],
                Duration::from_secs(10),
            );
            if is_mounted(&self.mp) {
                let mut c = Command::new("fusermount3");
                c.arg("-uz").arg(&self.mp);
                let _ = run_cmd(c, Duration::from_secs(10));
            }
            if is_mounted(&self.mp) {
                let mut c = Command::new("umount");
                c.arg("-l").arg(&self.mp);
                let _ = run_cmd(c, Duration::from_secs(10));
            }
        }
        if let Some(mut ch) = self.child.take() {
            let start = Instant::now();
            while start.elapsed() < Duration::from_secs(10) {
                if let Ok(Some(_)) = ch.try_wait() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            if let Ok(None) = ch.try_wait() {
                let _ = ch.kill();
                let _ = ch.wait();
            }
        }
        for p in pids_with_arg(self.mp.as_os_str()) {
            if !wait_pid_exit(p, Duration::from_secs(5)) {
                eprintln!("killing leftover process {p} serving {}", self.mp.display());
                unsafe { libc::kill(p, libc::SIGKILL) };
            }
        }
    }
}

// ---------------------------------------------------------------------------
// A second Unix user
// ---------------------------------------------------------------------------

pub const NOBODY_UID: u32 = 65534;
pub const NOBODY_GID: u32 = 65534;

/// Runs `cmd args...` as the user `nobody` (setpriv, no supplementary groups), with a
/// timeout; the real peer for every permission test.
pub fn as_nobody(cmd: &str, args: &[&OsStr]) -> CmdOut {
    let mut c = Command::new("setpriv");
    c.args([
        "--reuid=nobody",
        "--regid=nogroup",
        "--clear-groups",
        "--",
        cmd,
    ])
    .args(args);
    run_cmd(c, Duration::from_secs(30)).unwrap_or_else(|e| panic!("{e}"))
}

/// Lets `nobody` walk down to `p` (temp dirs are created 0700): adds o+x to every
/// ancestor under /tmp.
pub fn open_path_for_nobody(p: &Path) {
    use std::os::unix::fs::PermissionsExt;
    let mut cur = p.to_path_buf();
    while let Some(parent) = cur.parent() {
        if parent == Path::new("/") || parent == Path::new("/tmp") {
            break;
        }
        let mode = fs::metadata(parent).unwrap().permissions().mode();
        fs::set_permissions(parent, fs::Permissions::from_mode(mode | 0o055)).unwrap();
        cur = parent.to_path_buf();
    }
}

pub fn chown(p: &Path, uid: u32, gid: u32) {
    std::os::unix::fs::lchown(p, Some(uid), Some(gid))
        .unwrap_or_else(|e| panic!("chown {}: {e}", p.display()));
}

/// A tmpfs mounted for the test and always unmounted.
pub struct Tmpfs(pub PathBuf);

impl Tmpfs {
    pub fn new(dir: &Path, size: &str) -> Tmpfs {
        Tmpfs::with_options(dir, &format!("size={size},mode=0700"))
    }

    pub fn with_options(dir: &Path, options: &str) -> Tmpfs {
        fs::create_dir_all(dir).unwrap();
        let st = Command::new("mount")
            .args(["-t", "tmpfs", "-o", options, "tmpfs"])
            .arg(dir)
            .status()
            .unwrap();
        assert!(st.success(), "mount tmpfs at {}", dir.display());
        Tmpfs(dir.to_path_buf())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}
