//! `bicache stats --watch`: a live view of a mount's counters, redrawn every interval,
//! with rates over the interval; `--json` prints one stats document per line instead.

use std::fmt::Write as _;
use std::io::{IsTerminal, Write as _};
use std::path::Path;
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime};

use nix::sys::signal::{SigSet, Signal};

use super::control::{not_a_mount, parse_snapshot, read_doc};
use crate::size::human;
use crate::stats::{Snapshot, TierCounts};

const DEFAULT_INTERVAL: Duration = Duration::from_secs(1);
const MIN_INTERVAL: f64 = 0.1;
const MAX_INTERVAL: f64 = 3600.0;
/// A read of stats.json that takes longer than this means the mount has stopped answering.
const READ_TIMEOUT: Duration = Duration::from_secs(10);

/// `--interval SECS`: 0.1 to 3600 seconds, fractions allowed; 1 s when not given.
pub fn parse_interval(text: Option<&str>) -> Result<Duration, String> {
    let Some(t) = text else {
        return Ok(DEFAULT_INTERVAL);
    };
    match t.trim().parse::<f64>() {
        Ok(v) if v.is_finite() && (MIN_INTERVAL..=MAX_INTERVAL).contains(&v) => {
            Ok(Duration::from_secs_f64(v))
        }
        _ => Err(format!(
            "--interval: invalid value '{t}' (seconds between samples, from {MIN_INTERVAL} \
             to {MAX_INTERVAL})"
        )),
    }
}

/// SIGINT and SIGTERM, blocked in every thread and taken synchronously, so Ctrl-C ends the
/// watch between two samples with exit status 0 (and never inside a FUSE read).
struct Signals(SigSet);

impl Signals {
    /// Must run before any thread is started, so that every thread inherits the mask.
    fn block() -> Result<Signals, String> {
        let mut set = SigSet::empty();
        set.add(Signal::SIGINT);
        set.add(Signal::SIGTERM);
        set.thread_block()
            .map_err(|e| format!("cannot block signals: {e}"))?;
        Ok(Signals(set))
    }

    /// Waits up to `d` for SIGINT or SIGTERM; whether one came.
    fn wait(&self, d: Duration) -> bool {
        let deadline = Instant::now() + d;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let ts = libc::timespec {
                tv_sec: left.as_secs() as libc::time_t,
                tv_nsec: left.subsec_nanos() as _,
            };
            // SAFETY: a valid signal set and timespec; the siginfo pointer may be null.
            let r = unsafe { libc::sigtimedwait(self.0.as_ref(), std::ptr::null_mut(), &ts) };
            if r > 0 {
                return true;
            }
            let interrupted = std::io::Error::last_os_error().raw_os_error() == Some(libc::EINTR);
            if !interrupted || left.is_zero() {
                return false;
            }
        }
    }
}

/// One reading of the mount's counters.
struct Sample {
    at: Instant,
    wall: SystemTime,
    raw: String,
    snap: Snapshot,
}

enum Reading {
    Doc(String),
    Failed(String),
    Interrupted,
}

/// Reads stats.json on a helper thread, so that a mount that stopped answering (or
/// Ctrl-C while it hangs) cannot hang the watcher.
fn read_now(mountpoint: &Path, signals: &Signals) -> Reading {
    let (tx, rx) = mpsc::channel();
    let path = mountpoint.to_path_buf();
    let spawned = std::thread::Builder::new()
        .name("bicache-watch-read".into())
        .spawn(move || {
            let _ = tx.send(read_doc(&path, true));
        });
    if let Err(e) = spawned {
        return Reading::Failed(format!("cannot start a thread: {e}"));
    }
    let start = Instant::now();
    loop {
        match rx.recv_timeout(Duration::from_millis(50)) {
            Ok(Ok(text)) => return Reading::Doc(text),
            Ok(Err(e)) => return Reading::Failed(format!("reading .bicache/stats.json: {e}")),
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                return Reading::Failed("reading .bicache/stats.json: the reader died".into());
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
        }
        if signals.wait(Duration::ZERO) {
            return Reading::Interrupted;
        }
        if start.elapsed() > READ_TIMEOUT {
            return Reading::Failed(format!(
                ".bicache/stats.json not answered within {} s",
                READ_TIMEOUT.as_secs()
            ));
        }
    }
}

/// Samples the mount every `interval` and draws each sample: a frame redrawn in place on a
/// terminal, one line per sample otherwise (so `| tee` logs read well), or the raw JSON
/// document (one a line) with `json`. Returns Ok on SIGINT/SIGTERM or when stdout is
/// closed; Err when the mount goes away, after the last state was drawn.
pub fn watch(mountpoint: &Path, interval: Duration, json: bool) -> Result<(), String> {
    let signals = Signals::block()?;
    let style = if json {
        Style::Json
    } else if std::io::stdout().is_terminal() {
        Style::Terminal
    } else {
        Style::Lines
    };
    let mut out = std::io::stdout().lock();
    let mut prev: Option<Sample> = None;
    let mut next = Instant::now();
    loop {
        let text = match read_now(mountpoint, &signals) {
            Reading::Doc(text) => text,
            Reading::Interrupted => return Ok(()),
            Reading::Failed(why) => {
                return Err(match &prev {
                    None => not_a_mount(mountpoint),
                    Some(last) => format!(
                        "{}: the mount went away ({why}); last sample at {}",
                        mountpoint.display(),
                        clock(last.wall, false)
                    ),
                });
            }
        };
        let snap = parse_snapshot(mountpoint, &text)?;
        let cur = Sample {
            at: Instant::now(),
            wall: SystemTime::now(),
            raw: text,
            snap,
        };
        // A new daemon on the same mountpoint starts its counters from zero.
        let base = prev.as_ref().filter(|p| p.snap.pid == cur.snap.pid);
        let rates = base.map(|p| Rates::between(p, &cur));
        let uptime = process_uptime(cur.snap.pid);
        let text = match style {
            Style::Json => format!("{}\n", cur.raw.trim_end()),
            Style::Lines => format!("{}\n", line(&cur, rates.as_ref(), uptime)),
            Style::Terminal => {
                let lines = frame(mountpoint, interval, &cur, rates.as_ref(), uptime);
                redraw(&lines, prev.is_none(), terminal_width())
            }
        };
        match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
            Ok(()) => {}
            // `| head` has seen enough.
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => return Ok(()),
            Err(e) => return Err(format!("writing to stdout: {e}")),
        }
        prev = Some(cur);
        next += interval;
        let now = Instant::now();
        if next < now {
            // A slow read: keep the pace from here rather than catch up in a burst.
            next = now + interval;
        }
        if signals.wait(next - now) {
            return Ok(());
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Style {
    Terminal,
    Lines,
    Json,
}

/// What changed between two samples, per second (hit rates: of the interval's look-ups).
struct Rates {
    secs: f64,
    source_bytes: f64,
    source_reads: f64,
    meta_foreground: f64,
    meta_background: f64,
    ram_hit: Option<f64>,
    disk_hit: Option<f64>,
}

impl Rates {
    fn between(prev: &Sample, cur: &Sample) -> Rates {
        let secs = cur.at.duration_since(prev.at).as_secs_f64().max(1e-3);
        let (p, c) = (&prev.snap, &cur.snap);
        let per_sec = |a: u64, b: u64| b.saturating_sub(a) as f64 / secs;
        let fg = |s: &Snapshot| {
            s.source
                .meta_ops
                .saturating_sub(s.source.meta_ops_background)
        };
        let delta = |a: &TierCounts, b: &TierCounts| TierCounts {
            hits: b.hits.saturating_sub(a.hits),
            misses: b.misses.saturating_sub(a.misses),
            bytes: b.bytes,
            capacity: b.capacity,
        };
        Rates {
            secs,
            source_bytes: per_sec(p.source.bytes, c.source.bytes),
            source_reads: per_sec(p.source.reads, c.source.reads),
            meta_foreground: per_sec(fg(p), fg(c)),
            meta_background: per_sec(p.source.meta_ops_background, c.source.meta_ops_background),
            ram_hit: hit_rate(&delta(&p.ram, &c.ram)),
            disk_hit: hit_rate(&delta(&p.disk.tier, &c.disk.tier)),
        }
    }
}

/// hits / look-ups, None without look-ups.
fn hit_rate(t: &TierCounts) -> Option<f64> {
    let lookups = t.hits + t.misses;
    (lookups > 0).then(|| t.hits as f64 / lookups as f64)
}

fn percent(rate: Option<f64>) -> String {
    rate.map_or_else(|| "-".to_string(), |r| format!("{:.1}%", 100.0 * r))
}

fn share(part: u64, whole: u64) -> String {
    percent((whole > 0).then(|| part as f64 / whole as f64))
}

/// A number per second with sensible precision: 1234, 12.3, 0.12.
fn per_sec(v: f64) -> String {
    if v >= 100.0 {
        format!("{v:.0}")
    } else if v >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

/// Bytes per second as MB/s (10^6 bytes), the unit of storage bandwidth.
fn mb_per_sec(bytes_per_sec: f64) -> String {
    format!("{} MB/s", per_sec(bytes_per_sec / 1e6))
}

/// 45s, 2m05s, 1h02m03s, 3d04h.
fn duration(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m{:02}s", s / 60, s % 60),
        3600..86400 => format!("{}h{:02}m{:02}s", s / 3600, s / 60 % 60, s % 60),
        _ => format!("{}d{:02}h", s / 86400, s / 3600 % 24),
    }
}

/// How long process `pid` has run, from /proc (None if it is not visible from here, e.g.
/// in another PID namespace). The daemon starts when the mount is made.
fn process_uptime(pid: u32) -> Option<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Field 22 (starttime, clock ticks after boot); the name in parentheses may hold spaces.
    let after_name = &stat[stat.rfind(')')? + 1..];
    let started: f64 = after_name.split_whitespace().nth(19)?.parse().ok()?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if hz <= 0 {
        return None;
    }
    let boot: f64 = std::fs::read_to_string("/proc/uptime")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    Some(Duration::from_secs_f64(
        (boot - started / hz as f64).max(0.0),
    ))
}

/// Local time of day, with the date for log lines: "14:02:03" or "2026-01-30 14:02:03".
fn clock(t: SystemTime, with_date: bool) -> String {
    let secs = t
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs()) as libc::time_t;
    // SAFETY: localtime_r writes only into `tm`, which is plain old data.
    let mut tm: libc::tm = unsafe { std::mem::zeroed() };
    if unsafe { libc::localtime_r(&secs, &mut tm) }.is_null() {
        return format!("@{secs}");
    }
    let time = format!("{:02}:{:02}:{:02}", tm.tm_hour, tm.tm_min, tm.tm_sec);
    if with_date {
        format!(
            "{}-{:02}-{:02} {time}",
            tm.tm_year + 1900,
            tm.tm_mon + 1,
            tm.tm_mday
        )
    } else {
        time
    }
}

fn held(t: &TierCounts) -> String {
    if t.capacity == 0 {
        "off".to_string()
    } else {
        format!("{}/{}", human(t.bytes), human(t.capacity))
    }
}

/// Prefetch progress, or None when the mount has no prefetch.
fn prefetch(s: &Snapshot) -> Option<String> {
    let p = &s.prefetch;
    if p.state == "off" {
        return None;
    }
    let mut text = format!(
        "{}: {}/{} files ({}), {}/{} ({})",
        p.state,
        p.files_done,
        p.files_total,
        share(p.files_done, p.files_total),
        human(p.bytes),
        human(p.bytes_total),
        share(p.bytes, p.bytes_total)
    );
    if p.state == "running" {
        let eta = match p.eta_secs {
            u64::MAX => "-".to_string(),
            e => duration(Duration::from_secs(e)),
        };
        let _ = write!(
            text,
            ", {}, ETA {eta}",
            mb_per_sec(p.rate_bytes_per_sec as f64)
        );
    }
    Some(text)
}

fn errors(s: &Snapshot) -> String {
    format!(
        "source {}, corrupt {}, write {}, prefetch {}",
        s.source.errors, s.disk.corrupt, s.disk.write_errors, s.prefetch.errors
    )
}

/// One compact line per sample, for logs (stdout not a terminal). Rates are those since
/// the previous line; "-" on the first.
fn line(cur: &Sample, r: Option<&Rates>, uptime: Option<Duration>) -> String {
    let s = &cur.snap;
    let dash = || "-".to_string();
    let mut out = format!(
        "{} up {} | source {} {} reads/s, {} total | hit RAM {} SSD {} (overall RAM {} SSD {}) \
         | meta {} fg {} bg ops/s | held RAM {} SSD {} pinned {}",
        clock(cur.wall, true),
        uptime.map_or_else(dash, duration),
        r.map_or_else(|| "- MB/s".to_string(), |r| mb_per_sec(r.source_bytes)),
        r.map_or_else(dash, |r| per_sec(r.source_reads)),
        human(s.source.bytes),
        percent(r.and_then(|r| r.ram_hit)),
        percent(r.and_then(|r| r.disk_hit)),
        percent(hit_rate(&s.ram)),
        percent(hit_rate(&s.disk.tier)),
        r.map_or_else(dash, |r| per_sec(r.meta_foreground)),
        r.map_or_else(dash, |r| per_sec(r.meta_background)),
        held(&s.ram),
        held(&s.disk.tier),
        human(s.disk.pinned_bytes),
    );
    if let Some(p) = prefetch(s) {
        let _ = write!(out, " | prefetch {p}");
    }
    let _ = write!(out, " | errors {}", errors(s));
    out
}

/// The terminal view: a few labelled rows, "last" (the interval) beside "overall".
fn frame(
    mountpoint: &Path,
    interval: Duration,
    cur: &Sample,
    r: Option<&Rates>,
    uptime: Option<Duration>,
) -> Vec<String> {
    let s = &cur.snap;
    let row = |label: &str, last: String, overall: String| {
        format!("{label:<14}{last:<30}{overall}")
            .trim_end()
            .to_string()
    };
    let tier = |t: &TierCounts| {
        format!(
            "{}  ({} hits, {} misses)",
            percent(hit_rate(t)),
            t.hits,
            t.misses
        )
    };
    let dash = || "-".to_string();
    let mut v = vec![
        format!(
            "bicache {}   pid {}, up {}",
            mountpoint.display(),
            s.pid,
            uptime.map_or_else(dash, duration),
        ),
        format!(
            "{}, a sample every {} s; Ctrl-C to quit",
            clock(cur.wall, false),
            interval.as_secs_f64()
        ),
        String::new(),
        row(
            "",
            r.map_or_else(
                || "last interval".to_string(),
                |r| format!("last {:.1} s", r.secs),
            ),
            "overall".to_string(),
        ),
        row(
            "source",
            r.map_or_else(dash, |r| {
                format!(
                    "{}, {} reads/s",
                    mb_per_sec(r.source_bytes),
                    per_sec(r.source_reads)
                )
            }),
            format!("{} in {} reads", human(s.source.bytes), s.source.reads),
        ),
        row(
            "RAM hit rate",
            percent(r.and_then(|r| r.ram_hit)),
            tier(&s.ram),
        ),
        row(
            "SSD hit rate",
            percent(r.and_then(|r| r.disk_hit)),
            tier(&s.disk.tier),
        ),
        row(
            "metadata ops",
            r.map_or_else(dash, |r| {
                format!(
                    "{}/s fg, {}/s bg",
                    per_sec(r.meta_foreground),
                    per_sec(r.meta_background)
                )
            }),
            format!(
                "{} fg, {} bg",
                s.source
                    .meta_ops
                    .saturating_sub(s.source.meta_ops_background),
                s.source.meta_ops_background
            ),
        ),
        String::new(),
    ];
    let tier_held = |t: &TierCounts| {
        if t.capacity == 0 {
            "off".to_string()
        } else {
            format!(
                "{} of {} ({})",
                human(t.bytes),
                human(t.capacity),
                share(t.bytes, t.capacity)
            )
        }
    };
    v.push(format!("{:<14}{}", "RAM held", tier_held(&s.ram)));
    let mut disk = tier_held(&s.disk.tier);
    if s.disk.tier.capacity > 0 {
        let _ = write!(disk, ", pinned {}", human(s.disk.pinned_bytes));
    }
    v.push(format!("{:<14}{disk}", "SSD held"));
    v.push(format!(
        "{:<14}{}",
        "prefetch",
        prefetch(s).unwrap_or_else(|| "off".to_string())
    ));
    v.push(format!("{:<14}{}", "errors", errors(s)));
    v
}

/// The frame as terminal output: from the top-left corner, each line cleared to its end
/// and cut to the width (a wrapped line would push the next frame down), then the rest of
/// the screen cleared. The first frame clears the screen first.
fn redraw(lines: &[String], first: bool, width: usize) -> String {
    let mut out = String::from(if first { "\x1b[2J\x1b[H" } else { "\x1b[H" });
    for l in lines {
        out.extend(l.chars().take(width.saturating_sub(1)));
        out.push_str("\x1b[K\n");
    }
    out.push_str("\x1b[J");
    out
}

fn terminal_width() -> usize {
    // SAFETY: TIOCGWINSZ writes a winsize into the struct given.
    let mut ws: libc::winsize = unsafe { std::mem::zeroed() };
    let ok = unsafe { libc::ioctl(libc::STDOUT_FILENO, libc::TIOCGWINSZ, &mut ws) } == 0;
    if ok && ws.ws_col > 0 {
        usize::from(ws.ws_col)
    } else {
        80
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(at: Instant, f: impl FnOnce(&mut Snapshot)) -> Sample {
        let raw = r#"{"pid":7,"chunk_size":1048576,
            "ram":{"hits":0,"misses":0,"bytes":0,"capacity":1073741824},
            "disk":{"hits":0,"misses":0,"bytes":0,"capacity":4294967296,"corrupt":0,"writes":0,
                    "write_errors":0,"writes_dropped":0,"evictions":0,"pinned_bytes":0,
                    "index_bytes":0,"files":0,"queued":0},
            "source":{"reads":0,"bytes":0,"meta_ops":0,"meta_ops_background":0,"errors":0},
            "readahead":{"chunks":0},
            "prefetch":{"state":"off","files_done":0,"files_total":0,"bytes":0,"bytes_total":0,
                        "errors":0,"rate_bytes_per_sec":0,"eta_secs":0},
            "shard":{"index":0,"count":1,"files":0,"bytes":0,"out_of_shard_opens":0},
            "passthrough":{"enabled":false,"opens":0},
            "meta":{"bytes":0,"live_bytes":0,"budget":0,"entries":0,"revalidate_queued":0},
            "cache":{"dir":"/c","fs_type":"ext4"}}"#;
        let mut snap = parse_snapshot(Path::new("/m"), raw).unwrap();
        f(&mut snap);
        Sample {
            at,
            wall: SystemTime::now(),
            raw: raw.to_string(),
            snap,
        }
    }

    #[test]
    fn intervals_are_checked() {
        assert_eq!(parse_interval(None).unwrap(), Duration::from_secs(1));
        assert_eq!(
            parse_interval(Some("0.2")).unwrap(),
            Duration::from_millis(200)
        );
        for bad in ["0", "x", "-1", "0.01", "nan", "inf", "", "1s", "3601"] {
            let e = parse_interval(Some(bad)).unwrap_err();
            assert!(e.starts_with("--interval: invalid value"), "{bad}: {e}");
            assert!(e.contains(&format!("'{bad}'")), "{bad}: {e}");
            assert!(!e.contains('\n'), "{e}");
        }
    }

    #[test]
    fn rates_are_per_second_of_the_interval() {
        let t0 = Instant::now();
        let a = sample(t0, |s| {
            s.source.bytes = 1_000_000;
            s.source.reads = 10;
            s.ram.hits = 10;
            s.ram.misses = 10;
            s.source.meta_ops = 10;
        });
        let b = sample(t0 + Duration::from_secs(2), |s| {
            s.source.bytes = 21_000_000;
            s.source.reads = 30;
            s.ram.hits = 40;
            s.ram.misses = 20;
            s.disk.tier.misses = 10;
            s.source.meta_ops = 30;
            s.source.meta_ops_background = 4;
        });
        let r = Rates::between(&a, &b);
        assert_eq!(r.source_bytes, 10e6);
        assert_eq!(r.source_reads, 10.0);
        assert_eq!(r.ram_hit, Some(0.75));
        assert_eq!(r.disk_hit, Some(0.0));
        assert_eq!(r.meta_foreground, 8.0);
        assert_eq!(r.meta_background, 2.0);
        let l = line(&b, Some(&r), Some(Duration::from_secs(75)));
        assert!(
            l.contains(" up 1m15s | source 10.0 MB/s 10.0 reads/s, 20.0 MiB total | "),
            "{l}"
        );
        assert!(
            l.contains("| hit RAM 75.0% SSD 0.0% (overall RAM 66.7% SSD 0.0%) |"),
            "{l}"
        );
        assert!(l.contains("| meta 8.00 fg 2.00 bg ops/s |"), "{l}");
        assert!(
            l.ends_with("| errors source 0, corrupt 0, write 0, prefetch 0"),
            "{l}"
        );
        assert!(!l.contains("prefetch off"), "{l}");
        // The first sample has no rates.
        let first = line(&a, None, None);
        assert!(first.contains("up - | source - MB/s - reads/s"), "{first}");
        assert!(
            first.contains("hit RAM - SSD - (overall RAM 50.0% SSD -)"),
            "{first}"
        );
    }

    #[test]
    fn prefetch_progress_and_the_frame() {
        let t0 = Instant::now();
        let s = sample(t0, |s| {
            s.prefetch.state = "running".into();
            s.prefetch.files_done = 25;
            s.prefetch.files_total = 100;
            s.prefetch.bytes = 1 << 30;
            s.prefetch.bytes_total = 4 << 30;
            s.prefetch.rate_bytes_per_sec = 200_000_000;
            s.prefetch.eta_secs = 130;
            s.disk.tier.capacity = 0;
        });
        assert_eq!(
            prefetch(&s.snap).unwrap(),
            "running: 25/100 files (25.0%), 1.0 GiB/4.0 GiB (25.0%), 200 MB/s, ETA 2m10s"
        );
        let f = frame(Path::new("/mnt/x"), Duration::from_secs(1), &s, None, None);
        assert!(f[0].starts_with("bicache /mnt/x   pid 7, up -"), "{f:?}");
        assert!(f.iter().any(|l| l == "SSD held      off"), "{f:?}");
        assert!(
            f.iter()
                .any(|l| l.starts_with("prefetch      running: 25/100")),
            "{f:?}"
        );
        let out = redraw(&f, true, 20);
        assert!(out.starts_with("\x1b[2J\x1b[H"));
        assert!(out.ends_with("\x1b[K\n\x1b[J"));
        let plain = out
            .replace("\x1b[2J", "")
            .replace("\x1b[H", "")
            .replace("\x1b[K", "")
            .replace("\x1b[J", "");
        assert!(plain.lines().all(|l| l.chars().count() <= 19), "{plain:?}");
        assert_eq!(plain.lines().count(), f.len());
    }

    #[test]
    fn uptime_and_durations() {
        let up = process_uptime(std::process::id()).expect("own /proc entry");
        assert!(up < Duration::from_secs(24 * 3600), "{up:?}");
        assert_eq!(duration(Duration::from_secs(5)), "5s");
        assert_eq!(duration(Duration::from_secs(3723)), "1h02m03s");
        assert_eq!(duration(Duration::from_secs(90061)), "1d01h");
    }
}
