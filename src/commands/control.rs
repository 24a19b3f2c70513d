//! Commands that talk to a live mount: `unmount`, `stats` (once; `--watch` is in
//! watch.rs) and `warm`.

use std::path::Path;
use std::time::{Duration, Instant};

use crate::CONTROL_DIR;
use crate::cli::StatsArgs;
use crate::stats::Snapshot;

/// How long `unmount` keeps trying while the mount is busy: a reader that has a file open
/// for a moment (`bicache stats --watch` reading stats.json, a walker passing through)
/// should not make an unmount fail.
const BUSY_GRACE: Duration = Duration::from_secs(2);

/// Unmounts a bicache mount and waits for its daemon to flush and exit, so the cache dir
/// is free for the next mount as soon as this returns.
pub fn unmount(mountpoint: &Path) -> Result<(), String> {
    let target = std::fs::canonicalize(mountpoint)
        .or_else(|_| std::path::absolute(mountpoint))
        .map_err(|e| format!("{}: {e}", mountpoint.display()))?;
    if !is_bicache_mount(&target) {
        return Err(format!("{} is not a bicache mount", mountpoint.display()));
    }
    let pid = daemon_pid(&target);
    let busy_until = Instant::now() + BUSY_GRACE;
    loop {
        match try_unmount(&target) {
            Ok(()) => break,
            Err((_, true)) if Instant::now() < busy_until => {
                std::thread::sleep(Duration::from_millis(50));
            }
            Err((msg, _)) => return Err(msg),
        }
    }
    if let Some(pid) = pid {
        // The daemon drains its write-back queue before exiting.
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline && Path::new(&format!("/proc/{pid}")).exists() {
            if std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .map(|s| s.contains(") Z "))
                .unwrap_or(true)
            {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    Ok(())
}

/// One attempt at unmounting; the error says whether the mount was busy (worth a retry).
fn try_unmount(target: &Path) -> Result<(), (String, bool)> {
    let e = match nix::mount::umount2(target, nix::mount::MntFlags::empty()) {
        Ok(()) => return Ok(()),
        Err(e) => e,
    };
    if e == nix::errno::Errno::EBUSY {
        return Err((format!("cannot unmount {}: {e}", target.display()), true));
    }
    // Not root: let fusermount3 try, it knows the user's rights.
    let out = std::process::Command::new("fusermount3")
        .arg("-u")
        .arg(target)
        .output()
        .map_err(|err| {
            (
                format!(
                    "cannot unmount {}: {e}; fusermount3: {err}",
                    target.display()
                ),
                false,
            )
        })?;
    if out.status.success() {
        return Ok(());
    }
    let why = String::from_utf8_lossy(&out.stderr).trim().to_string();
    let busy = why.contains("busy");
    Err((format!("cannot unmount {}: {why}", target.display()), busy))
}

fn daemon_pid(mountpoint: &Path) -> Option<u32> {
    snapshot(mountpoint).ok().map(|s| s.pid)
}

/// Whether `path` is a bicache mount.
pub fn is_bicache_mount(path: &Path) -> bool {
    crate::mountinfo::bicache_mount_at(path).is_some()
}

/// `bicache stats`: returns the document to print (text, or JSON with `--json`); with
/// `--watch`, draws the live view until Ctrl-C (then `Ok`, nothing more to print) or
/// until the mount goes away (`Err`).
pub fn stats(mountpoint: &Path, args: StatsArgs) -> Result<String, String> {
    if args.watch {
        let interval = super::watch::parse_interval(args.interval.as_deref())?;
        super::watch::watch(mountpoint, interval, args.json)?;
        return Ok(String::new());
    }
    if args.interval.is_some() {
        return Err("--interval needs --watch".to_string());
    }
    read_doc(mountpoint, args.json).map_err(|_| not_a_mount(mountpoint))
}

/// `MOUNTPOINT/.bicache/stats.json` (or `stats.txt`) as the daemon generates it.
pub(super) fn read_doc(mountpoint: &Path, json: bool) -> std::io::Result<String> {
    let name = if json { "stats.json" } else { "stats.txt" };
    std::fs::read_to_string(mountpoint.join(CONTROL_DIR).join(name))
}

pub(super) fn not_a_mount(mountpoint: &Path) -> String {
    format!("{} is not a bicache mount", mountpoint.display())
}

pub(super) fn parse_snapshot(mountpoint: &Path, text: &str) -> Result<Snapshot, String> {
    serde_json::from_str(text)
        .map_err(|e| format!("{}: unreadable stats ({e})", mountpoint.display()))
}

/// The live counters of a mount, parsed.
pub fn snapshot(mountpoint: &Path) -> Result<Snapshot, String> {
    let text = read_doc(mountpoint, true).map_err(|_| not_a_mount(mountpoint))?;
    parse_snapshot(mountpoint, &text)
}

/// Waits until the mount's prefetch is done, drawing a progress bar unless `quiet`.
pub fn warm(mountpoint: &Path, quiet: bool) -> Result<(), String> {
    let first = snapshot(mountpoint)?;
    if first.prefetch.state == "off" {
        if !quiet {
            eprintln!(
                "bicache: {}: no prefetch configured (a sharded mount, or --prefetch on)",
                mountpoint.display()
            );
        }
        return Ok(());
    }
    let bar = if quiet {
        indicatif::ProgressBar::hidden()
    } else {
        let bar = indicatif::ProgressBar::new(first.prefetch.bytes_total);
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{spinner} warming [{bar:40}] {bytes}/{total_bytes} {msg} ({binary_bytes_per_sec}, ETA {eta})",
            )
            .expect("valid template")
            .progress_chars("=> "),
        );
        bar
    };
    loop {
        let p = snapshot(mountpoint)?.prefetch;
        bar.set_position(p.bytes);
        bar.set_message(format!("{}/{} files", p.files_done, p.files_total));
        match p.state.as_str() {
            "running" => std::thread::sleep(Duration::from_millis(200)),
            "full" => {
                bar.abandon_with_message(format!(
                    "{}/{} files: the cache is full, the rest is served through the LRU",
                    p.files_done, p.files_total
                ));
                return Ok(());
            }
            _ => {
                bar.finish_with_message(format!("{} files cached", p.files_done));
                if p.errors > 0 {
                    return Err(format!(
                        "prefetch finished with {} files failing (see the daemon log)",
                        p.errors
                    ));
                }
                return Ok(());
            }
        }
    }
}
