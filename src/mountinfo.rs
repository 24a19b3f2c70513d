//! Reading `/proc/self/mountinfo`: which paths are bicache mounts, their device numbers,
//! and detaching a mount left dead by a killed daemon.

use std::ffi::OsString;
use std::os::unix::ffi::OsStringExt;
use std::path::{Path, PathBuf};

/// One line of mountinfo, the fields bicache uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountEntry {
    /// "major:minor" of the mounted filesystem.
    pub device: String,
    pub mount_point: PathBuf,
    pub mount_options: String,
    /// Filesystem type, e.g. `fuse.bicache` or `ext4`.
    pub fstype: String,
    /// The mount's source field, e.g. `bicache:/data/set`.
    pub source: String,
}

/// Parses one mountinfo line; None for a line that does not have the documented shape.
pub fn parse_line(line: &str) -> Option<MountEntry> {
    let fields: Vec<&str> = line.split(' ').collect();
    let sep = fields.iter().position(|f| *f == "-")?;
    if fields.len() < sep + 3 || sep < 6 {
        return None;
    }
    Some(MountEntry {
        device: fields[2].to_string(),
        mount_point: PathBuf::from(OsString::from_vec(unescape(fields[4]))),
        mount_options: fields[5].to_string(),
        fstype: fields[sep + 1].to_string(),
        source: String::from_utf8_lossy(&unescape(fields[sep + 2])).into_owned(),
    })
}

/// Every mount of this process's mount namespace, in mountinfo order.
pub fn mounts() -> Vec<MountEntry> {
    std::fs::read_to_string("/proc/self/mountinfo")
        .map(|s| s.lines().filter_map(parse_line).collect())
        .unwrap_or_default()
}

impl MountEntry {
    /// A bicache mount: type `fuse.bicache` (mounted through fusermount3) or `fuse` with
    /// source `bicache:...` (mounted as root).
    pub fn is_bicache(&self) -> bool {
        self.fstype == "fuse.bicache"
            || (self.fstype == "fuse" && self.source.starts_with("bicache:"))
    }
}

/// The topmost bicache mount at `path`, if any.
pub fn bicache_mount_at(path: &Path) -> Option<MountEntry> {
    mounts()
        .into_iter()
        .rev()
        .find(|m| m.is_bicache() && m.mount_point == path)
}

/// mountinfo escapes space, tab, newline and backslash as \ooo octal; the result is the
/// raw bytes (a path need not be UTF-8).
pub fn unescape(s: &str) -> Vec<u8> {
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
    out
}

/// Detaches a mount left dead by a killed daemon ("Transport endpoint is not connected").
pub fn detach_dead_mount(path: &Path) -> Result<(), String> {
    match nix::mount::umount2(path, nix::mount::MntFlags::MNT_DETACH) {
        Ok(()) => Ok(()),
        Err(_) => {
            let out = std::process::Command::new("fusermount3")
                .arg("-uz")
                .arg(path)
                .output()
                .map_err(|e| e.to_string())?;
            if out.status.success() {
                Ok(())
            } else {
                Err(String::from_utf8_lossy(&out.stderr).trim().to_string())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unescapes_mountinfo_paths() {
        assert_eq!(unescape(r"/mnt/a\040b"), b"/mnt/a b");
        assert_eq!(unescape(r"/mnt/x\134y"), br"/mnt/x\y");
        assert_eq!(unescape(r"/plain"), b"/plain");
        assert_eq!(unescape(r"/end\04"), br"/end\04");
        assert_eq!(unescape(r"/n\377"), b"/n\xff");
    }

    #[test]
    fn parses_lines_and_recognises_bicache_mounts() {
        let root = "36 35 0:48 / /tmp/m\\040x rw,nosuid,nodev,relatime shared:1 - fuse \
                    bicache:/data/a\\040b rw,user_id=0";
        let e = parse_line(root).unwrap();
        assert_eq!(e.device, "0:48");
        assert_eq!(e.mount_point, PathBuf::from("/tmp/m x"));
        assert_eq!(e.source, "bicache:/data/a b");
        assert!(e.is_bicache());
        let user = "40 35 0:50 / /home/u/m rw - fuse.bicache bicache:/d rw";
        assert!(parse_line(user).unwrap().is_bicache());
        let other = "41 35 8:1 / / rw - ext4 /dev/sda1 rw";
        assert!(!parse_line(other).unwrap().is_bicache());
        assert_eq!(parse_line("garbage"), None);
    }
}
