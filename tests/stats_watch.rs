//! `bicache stats --watch`, against real mounts: with stdout not a terminal it prints one
//! line per interval whose counters and rates follow the bytes read through the mount; it
//! exits non-zero with one line naming the mountpoint when the mount goes away, 0 on
//! SIGINT; `--json` prints one document a line; bad intervals are refused with one line.

mod common;

use std::ffi::OsStr;
use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use common::*;

/// A running `bicache stats MOUNTPOINT --watch ARGS`, stdout and stderr piped. Its lines
/// arrive on a channel (with the time they came); it is killed when dropped, so declare
/// it after the Mount (it then goes first and the unmount is not kept waiting).
struct Watcher {
    child: Child,
    lines: mpsc::Receiver<(Instant, String)>,
    stderr: Option<JoinHandle<String>>,
}

impl Watcher {
    fn start(mp: &Path, args: &[&str]) -> Watcher {
        let mut child = Command::new(BIN)
            .arg("stats")
            .arg(mp)
            .arg("--watch")
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn bicache stats --watch");
        let out = child.stdout.take().unwrap();
        let mut err = child.stderr.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for l in BufReader::new(out).lines() {
                let Ok(l) = l else { break };
                if tx.send((Instant::now(), l)).is_err() {
                    break;
                }
            }
        });
        let stderr = std::thread::spawn(move || {
            let mut s = String::new();
            let _ = err.read_to_string(&mut s);
            s
        });
        Watcher {
            child,
            lines,
            stderr: Some(stderr),
        }
    }

    /// The next line, or a panic naming what was awaited.
    fn line(&mut self, within: Duration, what: &str) -> (Instant, String) {
        match self.lines.recv_timeout(within) {
            Ok(l) => l,
            Err(e) => panic!(
                "no line from the watcher within {within:?} ({e}) while waiting for {what}; \
                 exited: {:?}",
                self.child.try_wait()
            ),
        }
    }

    /// Lines until one satisfies `pred`; returns every line read, that one last.
    fn until(&mut self, within: Duration, what: &str, pred: impl Fn(&str) -> bool) -> Vec<String> {
        let deadline = Instant::now() + within;
        let mut seen = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok((_, l)) => {
                    let done = pred(&l);
                    seen.push(l);
                    if done {
                        return seen;
                    }
                }
                Err(_) => panic!(
                    "no line with {what} within {within:?}; lines seen:\n{}",
                    seen.join("\n")
                ),
            }
        }
    }

    fn wait_exit(&mut self, within: Duration) -> Option<ExitStatus> {
        let start = Instant::now();
        while start.elapsed() < within {
            if let Ok(Some(st)) = self.child.try_wait() {
                return Some(st);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    /// What it wrote on stderr (once it has exited).
    fn stderr(&mut self) -> String {
        self.stderr
            .take()
            .map(|h| h.join().unwrap())
            .unwrap_or_default()
    }

    fn signal(&self, sig: libc::c_int) {
        assert_eq!(unsafe { libc::kill(self.child.id() as i32, sig) }, 0);
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// The segment of a line that starts with `name` (segments are separated by " | ").
fn segment<'a>(line: &'a str, name: &str) -> &'a str {
    line.split(" | ")
        .find(|s| s.starts_with(name))
        .unwrap_or_else(|| panic!("no '{name}' segment in {line:?}"))
}

/// "12.5 MiB" -> bytes.
fn bytes(num: &str, unit: &str) -> f64 {
    let v: f64 = num
        .parse()
        .unwrap_or_else(|_| panic!("not a number: {num:?}"));
    let scale = match unit {
        "B" => 1.0,
        "KiB" => 1024.0,
        "MiB" => 1024.0 * 1024.0,
        "GiB" => 1024.0 * 1024.0 * 1024.0,
        "TiB" => 1024.0 * 1024.0 * 1024.0 * 1024.0,
        u => panic!("unknown unit {u:?}"),
    };
    v * scale
}

/// From "source 12.3 MB/s 45.0 reads/s, 24.0 MiB total": (MB/s or None for "-", total bytes).
fn source(line: &str) -> (Option<f64>, f64) {
    let t: Vec<&str> = segment(line, "source ").split_whitespace().collect();
    assert_eq!(t.len(), 8, "source segment of {line:?}");
    assert_eq!(
        (t[2], t[4], t[7]),
        ("MB/s", "reads/s,", "total"),
        "{line:?}"
    );
    (t[1].parse().ok(), bytes(t[5], t[6]))
}

/// From "hit RAM 100.0% SSD - (overall ...)": the interval's RAM hit rate in percent.
fn ram_hit(line: &str) -> Option<f64> {
    let t: Vec<&str> = segment(line, "hit RAM ").split_whitespace().collect();
    t[2].strip_suffix('%').map(|v| v.parse().unwrap())
}

const DATA: usize = 24 << 20;

#[test]
fn lines_follow_the_reads_and_end_when_the_mount_goes_away() {
    if !fuse_or_skip() {
        return;
    }
    let s = Scratch::new();
    let data = s.file("big.bin", DATA, 13);
    // No passthrough: the warm read then goes through the daemon's RAM tier (a
    // passthrough open would count one look-up and hide the reads from the counters).
    let mut m = s.mount(&["--ram", "64MiB", "--disk", "256MiB", "--passthrough", "off"]);
    let mut w = Watcher::start(&m.mountpoint, &["--interval", "0.2"]);

    // Before any read: lines every ~0.2 s, nothing pulled from the source.
    let (t0, first) = w.line(Duration::from_secs(10), "the first line");
    assert_eq!(
        source(&first),
        (None, 0.0),
        "the first line has no rates: {first}"
    );
    assert!(first.contains(" up "), "{first}");
    let held = segment(&first, "held RAM ");
    assert!(
        held.starts_with("held RAM 0 B/") && held.contains(" SSD 0 B/"),
        "{first}"
    );
    assert!(
        first.contains("| errors source 0, corrupt 0, write 0"),
        "{first}"
    );
    let mut last = (t0, first);
    for _ in 0..4 {
        last = w.line(Duration::from_secs(5), "the next idle line");
        assert_eq!(source(&last.1), (Some(0.0), 0.0), "idle: {}", last.1);
    }
    let span = last.0 - t0;
    assert!(
        span >= Duration::from_millis(700) && span < Duration::from_secs(6),
        "5 lines at --interval 0.2 came in {span:?}"
    );

    // A cold read: the total follows the bytes read and some interval shows the rate.
    assert_file_eq(&m.path("big.bin"), &data, "cold read");
    let cold = w.until(Duration::from_secs(10), "the read's bytes", |l| {
        source(l).1 >= DATA as f64
    });
    let peak = cold.iter().filter_map(|l| source(l).0).fold(0.0, f64::max);
    assert!(
        peak > 1.0,
        "no interval showed the read's MB/s:\n{}",
        cold.join("\n")
    );
    let after = cold.last().unwrap();
    assert!(
        source(after).1 <= 1.1 * DATA as f64,
        "more pulled than read: {after}"
    );
    assert!(
        !segment(after, "held RAM ").starts_with("held RAM 0 B/"),
        "nothing held in RAM after the read: {after}"
    );
    // Once quiet, the rate is back to 0 and the total stays.
    let quiet = w.until(Duration::from_secs(10), "a quiet interval", |l| {
        source(l).0 == Some(0.0)
    });
    let pulled = source(quiet.last().unwrap()).1;

    // A warm read (page cache dropped): intervals with RAM hits, then quiet again, and
    // nothing more pulled. Mostly RAM, not all: under load the kernel's reads can come
    // out of order, and a chunk fetched in units lives on the SSD tier only, where the
    // warm read asks for it in more, smaller requests (seen: 22 of 24 chunks in RAM, and
    // 70.8% of the interval's requests RAM hits).
    drop_caches();
    assert_file_eq(&m.path("big.bin"), &data, "warm read");
    let mut warm = w.until(Duration::from_secs(10), "RAM hits", |l| {
        ram_hit(l).is_some()
    });
    warm.extend(w.until(Duration::from_secs(10), "a quiet interval", |l| {
        ram_hit(l).is_none()
    }));
    let best = warm.iter().filter_map(|l| ram_hit(l)).fold(0.0, f64::max);
    assert!(
        best > 50.0,
        "no interval of the warm read showed mostly RAM hits:\n{}",
        warm.join("\n")
    );
    for l in &warm {
        assert_eq!(
            source(l).1,
            pulled,
            "the warm read pulled from the source: {l}"
        );
    }

    // The mount goes away: one line naming it, non-zero, within a few seconds.
    m.unmount();
    let gone = Instant::now();
    let st = w
        .wait_exit(Duration::from_secs(5))
        .expect("the watcher still runs 5 s after the unmount");
    assert!(
        !st.success(),
        "exit status {st:?} after the mount went away"
    );
    let err = w.stderr();
    assert_eq!(err.lines().count(), 1, "stderr: {err:?}");
    assert!(
        err.contains(&m.mountpoint.display().to_string()) && err.contains("went away"),
        "stderr: {err:?}"
    );
    assert!(gone.elapsed() < Duration::from_secs(5));
}

#[test]
fn sigint_ends_the_watch_with_status_0_and_json_lines() {
    if !fuse_or_skip() {
        return;
    }
    let s = Scratch::new();
    s.file("a.bin", 300_000, 1);
    let m = s.mount(&["--ram", "16MiB", "--disk", "64MiB"]);

    // --json: the stats document once per interval, one a line.
    let mut j = Watcher::start(&m.mountpoint, &["--json", "--interval", "0.2"]);
    for _ in 0..3 {
        let (_, l) = j.line(Duration::from_secs(10), "a JSON line");
        let v: serde_json::Value =
            serde_json::from_str(&l).unwrap_or_else(|e| panic!("not JSON ({e}): {l:?}"));
        assert_eq!(v["pid"].as_i64(), Some(m.pid as i64), "{l}");
        assert!(v["source"]["bytes"].is_u64(), "{l}");
    }
    j.signal(libc::SIGINT);
    let st = j
        .wait_exit(Duration::from_secs(5))
        .expect("exit after SIGINT");
    assert_eq!(st.code(), Some(0), "{st:?}");
    assert_eq!(j.stderr(), "");

    // SIGINT in the middle of a long interval ends it at once, with 0.
    let mut w = Watcher::start(&m.mountpoint, &["--interval", "30"]);
    w.line(Duration::from_secs(10), "the first line");
    std::thread::sleep(Duration::from_millis(300));
    let sent = Instant::now();
    w.signal(libc::SIGINT);
    let st = w
        .wait_exit(Duration::from_secs(5))
        .expect("exit after SIGINT");
    assert_eq!(st.code(), Some(0), "{st:?}");
    assert!(
        sent.elapsed() < Duration::from_secs(3),
        "{:?}",
        sent.elapsed()
    );
    assert_eq!(w.stderr(), "");
    // SIGTERM too.
    let mut t = Watcher::start(&m.mountpoint, &["--interval", "30"]);
    t.line(Duration::from_secs(10), "the first line");
    t.signal(libc::SIGTERM);
    let st = t
        .wait_exit(Duration::from_secs(5))
        .expect("exit after SIGTERM");
    assert_eq!(st.code(), Some(0), "{st:?}");
}

/// One line on stderr, non-zero, nothing on stdout, fast.
#[track_caller]
fn refused(args: &[&OsStr], wants: &[&str]) {
    let out = bicache(args, Duration::from_secs(10)).unwrap_or_else(|e| panic!("{e}"));
    assert!(
        !out.status.success(),
        "{args:?} accepted: {}",
        out.describe()
    );
    assert_eq!(
        out.stderr.lines().count(),
        1,
        "{args:?}: {}",
        out.describe()
    );
    for w in wants {
        assert!(
            out.stderr.contains(w),
            "{args:?}: want {w:?}: {}",
            out.describe()
        );
    }
    assert_eq!(out.stdout, "", "{args:?}");
    assert!(
        out.elapsed < Duration::from_secs(5),
        "{args:?}: {:?}",
        out.elapsed
    );
}

#[test]
fn bad_intervals_and_non_mounts_are_refused_with_one_line() {
    let (_t, dir) = temp_dir("bicache-watch-");
    let d = dir.as_os_str();
    let (stats, watch, interval) = (
        OsStr::new("stats"),
        OsStr::new("--watch"),
        OsStr::new("--interval"),
    );
    for bad in ["0", "x", "-1", "0.01", "nan"] {
        refused(
            &[stats, d, watch, interval, OsStr::new(bad)],
            &["--interval", &format!("'{bad}'")],
        );
    }
    refused(
        &[stats, d, interval, OsStr::new("1")],
        &["--interval needs --watch"],
    );
    // A directory that is no mount: the same line as plain `bicache stats`.
    let shown = dir.display().to_string();
    refused(&[stats, d, watch], &[&shown, "is not a bicache mount"]);
    refused(&[stats, d], &[&shown, "is not a bicache mount"]);
}
