//! Commands that talk to a live mount: `unmount` and `stats`.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::fs::CONTROL_DIR;

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
    let json = std::fs::read_to_string(mountpoint.join(CONTROL_DIR).join("stats.json")).ok()?;
    let rest = json.split("\"pid\":").nth(1)?;
    rest.split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()
}

/// The mountinfo line of the bicache mount at `path`, split into fields.
fn bicache_mount_entry(path: &Path) -> Option<Vec<String>> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    info.lines().rev().find_map(|line| {
        let fields: Vec<&str> = line.split(' ').collect();
        let sep = fields.iter().position(|f| *f == "-")?;
        let ours = fields.len() > sep + 2
            && (fields[sep + 1] == "fuse.bicache"
                || (fields[sep + 1] == "fuse" && fields[sep + 2].starts_with("bicache:")))
            && PathBuf::from(unescape(fields[4])) == path;
        ours.then(|| fields.iter().map(|f| f.to_string()).collect())
    })
}

/// Whether /proc/self/mountinfo lists `path` as a bicache mount: type `fuse.bicache`
/// (mounted through fusermount3) or `fuse` with source `bicache:...` (mounted as root).
pub fn is_bicache_mount(path: &Path) -> bool {
    bicache_mount_entry(path).is_some()
}

/// "major:minor" of the bicache mount at `path`.
pub fn mount_device(path: &Path) -> Option<String> {
    bicache_mount_entry(path).map(|f| f[2].clone())
}

/// mountinfo escapes space, tab, newline and backslash as \ooo octal.
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            out.push((b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

pub fn stats(mountpoint: &Path, json: bool) -> Result<String, String> {
    let name = if json { "stats.json" } else { "stats.txt" };
    std::fs::read_to_string(mountpoint.join(CONTROL_DIR).join(name))
        .map_err(|_| format!("{} is not a bicache mount", mountpoint.display()))
}

/// Waits until the mount's prefetch is done, drawing a progress bar unless `quiet`.
pub fn warm(mountpoint: &Path, quiet: bool) -> Result<(), String> {
    let read = || -> Result<serde_json::Value, String> {
        let text = stats(mountpoint, true)?;
        serde_json::from_str(&text)
            .map_err(|e| format!("{}: unreadable stats ({e})", mountpoint.display()))
    };
    let field = |v: &serde_json::Value, k: &str| v["prefetch"][k].as_u64().unwrap_or(0);
    let state =
        |v: &serde_json::Value| v["prefetch"]["state"].as_str().unwrap_or("off").to_string();
    let first = read()?;
    if state(&first) == "off" {
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
        let bar = indicatif::ProgressBar::new(field(&first, "bytes_total"));
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
        let v = read()?;
        bar.set_position(field(&v, "bytes"));
        bar.set_message(format!(
            "{}/{} files",
            field(&v, "files_done"),
            field(&v, "files_total")
        ));
        match state(&v).as_str() {
            "running" => std::thread::sleep(Duration::from_millis(200)),
            "full" => {
                bar.abandon_with_message(format!(
                    "{}/{} files: the cache is full, the rest is served through the LRU",
                    field(&v, "files_done"),
                    field(&v, "files_total")
                ));
                return Ok(());
            }
            _ => {
                bar.finish_with_message(format!("{} files cached", field(&v, "files_done")));
                let errors = field(&v, "errors");
                if errors > 0 {
                    return Err(format!(
                        "prefetch finished with {errors} files failing (see the daemon log)"
                    ));
                }
                return Ok(());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::unescape;

    #[test]
    fn unescapes_mountinfo_paths() {
        assert_eq!(unescape(r"/mnt/a\040b"), "/mnt/a b");
        assert_eq!(unescape(r"/mnt/x\134y"), r"/mnt/x\y");
        assert_eq!(unescape(r"/plain"), "/plain");
        assert_eq!(unescape(r"/end\04"), r"/end\04");
    }
}
