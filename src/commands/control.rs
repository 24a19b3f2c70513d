//! Commands that talk to a live mount: `unmount`, `stats` and `warm`.

use std::path::Path;
use std::time::{Duration, Instant};

use crate::CONTROL_DIR;
use crate::stats::Snapshot;

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
    if let Err(e) = nix::mount::umount2(&target, nix::mount::MntFlags::empty()) {
        // Not root (or busy): let fusermount3 try, it knows the user's rights.
        let out = std::process::Command::new("fusermount3")
            .arg("-u")
            .arg(&target)
            .output()
            .map_err(|err| {
                format!(
                    "cannot unmount {}: {e}; fusermount3: {err}",
                    target.display()
                )
            })?;
        if !out.status.success() {
            return Err(format!(
                "cannot unmount {}: {}",
                target.display(),
                String::from_utf8_lossy(&out.stderr).trim()
            ));
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

fn daemon_pid(mountpoint: &Path) -> Option<u32> {
    snapshot(mountpoint).ok().map(|s| s.pid)
}

/// Whether `path` is a bicache mount.
pub fn is_bicache_mount(path: &Path) -> bool {
    crate::mountinfo::bicache_mount_at(path).is_some()
}

pub fn stats(mountpoint: &Path, json: bool) -> Result<String, String> {
    let name = if json { "stats.json" } else { "stats.txt" };
    std::fs::read_to_string(mountpoint.join(CONTROL_DIR).join(name))
        .map_err(|_| format!("{} is not a bicache mount", mountpoint.display()))
}

/// The live counters of a mount, parsed.
pub fn snapshot(mountpoint: &Path) -> Result<Snapshot, String> {
    let text = stats(mountpoint, true)?;
    serde_json::from_str(&text)
        .map_err(|e| format!("{}: unreadable stats ({e})", mountpoint.display()))
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
