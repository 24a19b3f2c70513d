//! The daemon's log file, kept to a size: a log that grows without bound fills the cache
//! dir's disk (or a quota on `$HOME`), and a long job under a chatty `RUST_LOG` can write
//! gigabytes. The default log in the cache dir is rotated once (`bicache.log` →
//! `bicache.log.1`, both bicache's own); a `--log-file` the user named is never renamed or
//! truncated, so it stops at the cap with one line saying so.

use std::fs::File;
use std::io::{self, Write};

use nix::fcntl::OFlag;

use crate::cachedir::PrivateDir;

/// Where the log lives, which decides what happens at the cap.
pub enum LogHome {
    /// `name` in bicache's own cache dir: rotated to `name.1`.
    CacheDir { dir: PrivateDir, name: String },
    /// A file the user chose: writing stops at the cap.
    UserFile,
}

pub struct CappedLog {
    file: File,
    home: LogHome,
    /// Bytes in the current file.
    written: u64,
    /// 0: no cap.
    cap: u64,
    stopped: bool,
}

impl CappedLog {
    pub fn new(file: File, home: LogHome, cap: u64) -> CappedLog {
        let written = file.metadata().map(|m| m.len()).unwrap_or(0);
        CappedLog {
            file,
            home,
            written,
            cap,
            stopped: false,
        }
    }

    /// Makes room for `len` more bytes; false: drop them.
    fn room_for(&mut self, len: u64) -> bool {
        if self.cap == 0 || self.written + len <= self.cap || self.written == 0 {
            return !self.stopped;
        }
        match &self.home {
            LogHome::CacheDir { dir, name } => {
                let old = format!("{name}.1");
                let reopened = dir.rename(name, &old).and_then(|()| {
                    dir.open_file(name, OFlag::O_WRONLY | OFlag::O_APPEND | OFlag::O_CREAT)
                });
                match reopened {
                    Ok(f) => {
                        self.file = f;
                        self.written = 0;
                        true
                    }
                    // Cannot rotate: stop rather than grow past the cap.
                    Err(e) => self.stop(&format!("cannot rotate it ({e})")),
                }
            }
            LogHome::UserFile => self.stop("a --log-file is never rotated"),
        }
    }

    fn stop(&mut self, why: &str) -> bool {
        if !self.stopped {
            self.stopped = true;
            let _ = writeln!(
                self.file,
                "bicache: the log reached --log-max-size ({} bytes) and {why}: \
                 further lines are dropped",
                self.cap
            );
        }
        false
    }
}

impl Write for CappedLog {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if !self.room_for(buf.len() as u64) {
            return Ok(buf.len());
        }
        let n = self.file.write(buf)?;
        self.written += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A private dir (a claimed cache dir) and its path.
    fn dir() -> (tempfile::TempDir, PrivateDir, std::path::PathBuf) {
        let t = tempfile::tempdir().unwrap();
        let d = crate::cachedir::CacheDir::claim(&t.path().join("c"))
            .unwrap()
            .try_clone()
            .unwrap();
        let p = d.path().to_path_buf();
        (t, d, p)
    }

    fn open(d: &PrivateDir, name: &str) -> File {
        d.open_file(name, OFlag::O_WRONLY | OFlag::O_APPEND | OFlag::O_CREAT)
            .unwrap()
    }

    fn cache_dir_log(d: &PrivateDir, cap: u64) -> CappedLog {
        let home = LogHome::CacheDir {
            dir: d.try_clone().unwrap(),
            name: "bicache.log".into(),
        };
        CappedLog::new(open(d, "bicache.log"), home, cap)
    }

    #[test]
    fn the_cache_dir_log_rotates_once_and_never_passes_twice_the_cap() {
        let (_t, d, p) = dir();
        let mut log = cache_dir_log(&d, 1000);
        for i in 0..500 {
            // One write per line, as the log's formatter makes one per event.
            log.write_all(format!("line {i:04} of the log\n").as_bytes())
                .unwrap();
        }
        let cur = std::fs::read_to_string(p.join("bicache.log")).unwrap();
        let old = std::fs::read_to_string(p.join("bicache.log.1")).unwrap();
        assert!(
            cur.len() <= 1000 && old.len() <= 1000,
            "{} {}",
            cur.len(),
            old.len()
        );
        assert!(cur.ends_with("line 0499 of the log\n"), "{cur}");
        // Whole lines on both sides of the cut: the next line follows the last kept one.
        let last_old: u32 = old.lines().last().unwrap()[5..9].parse().unwrap();
        let first_cur: u32 = cur.lines().next().unwrap()[5..9].parse().unwrap();
        assert_eq!(first_cur, last_old + 1);
        assert!(!p.join("bicache.log.2").exists());
    }

    #[test]
    fn a_user_log_file_stops_at_the_cap_with_one_line_and_is_never_renamed() {
        let (_t, d, p) = dir();
        std::fs::write(p.join("job.log"), "the user's own line\n").unwrap();
        let mut log = CappedLog::new(open(&d, "job.log"), LogHome::UserFile, 200);
        for i in 0..100 {
            log.write_all(format!("line {i:04}\n").as_bytes()).unwrap();
        }
        let s = std::fs::read_to_string(p.join("job.log")).unwrap();
        assert!(s.starts_with("the user's own line\nline 0000\n"), "{s}");
        let last = s.lines().last().unwrap();
        assert!(last.contains("--log-max-size (200 bytes)"), "{s}");
        assert_eq!(s.matches("--log-max-size").count(), 1, "{s}");
        assert!(s.len() <= 200 + last.len() + 1, "{}", s.len());
        assert!(!p.join("job.log.1").exists());
    }

    #[test]
    fn no_cap_means_no_cap() {
        let (_t, d, p) = dir();
        let mut log = cache_dir_log(&d, 0);
        for _ in 0..1000 {
            writeln!(log, "0123456789").unwrap();
        }
        assert_eq!(
            std::fs::metadata(p.join("bicache.log")).unwrap().len(),
            11_000
        );
    }
}
