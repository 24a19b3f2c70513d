//! The attributes of one entry as mirrored from the source, packed: they are paid per
//! file, so times are kept as (seconds, nanoseconds) fields, not `SystemTime`s.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::source::Stat;

/// Attributes as mirrored from the source, packed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Attr {
    pub size: u64,
    pub blocks: u64,
    pub mtime_s: i64,
    pub ctime_s: i64,
    pub atime_s: i64,
    pub mtime_n: u32,
    pub ctime_n: u32,
    pub atime_n: u32,
    /// The source's inode number (shown as st_ino, so hard links stay visible).
    pub src_ino: u64,
    pub nlink: u32,
    pub uid: u32,
    pub gid: u32,
    /// Permission bits (with setuid, setgid, sticky).
    pub perm: u16,
    /// log2 of the preferred I/O size.
    pub blksize_log2: u8,
}

fn ns((s, n): (i64, u32)) -> i128 {
    s as i128 * 1_000_000_000 + n as i128
}

impl Attr {
    pub fn of(st: &Stat) -> Attr {
        Attr {
            size: st.size(),
            blocks: st.blocks(),
            mtime_s: st.mtime().0,
            ctime_s: st.ctime().0,
            atime_s: st.atime().0,
            mtime_n: st.mtime().1,
            ctime_n: st.ctime().1,
            atime_n: st.atime().1,
            src_ino: st.ino(),
            nlink: st.nlink(),
            uid: st.uid(),
            gid: st.gid(),
            perm: st.perm(),
            blksize_log2: st.blksize().max(1).ilog2() as u8,
        }
    }

    pub fn mtime(&self) -> (i64, u32) {
        (self.mtime_s, self.mtime_n)
    }
    pub fn ctime(&self) -> (i64, u32) {
        (self.ctime_s, self.ctime_n)
    }
    pub fn atime(&self) -> (i64, u32) {
        (self.atime_s, self.atime_n)
    }
    pub fn mtime_ns(&self) -> i128 {
        ns(self.mtime())
    }
    pub fn ctime_ns(&self) -> i128 {
        ns(self.ctime())
    }

    pub fn blksize(&self) -> u32 {
        1u32 << self.blksize_log2.min(31)
    }

    pub fn time(t: (i64, u32)) -> SystemTime {
        if t.0 >= 0 {
            UNIX_EPOCH + Duration::new(t.0 as u64, t.1)
        } else {
            UNIX_EPOCH - Duration::from_secs(t.0.unsigned_abs()) + Duration::from_nanos(t.1 as u64)
        }
    }

    /// Whether `other` is the same version of a non-directory (same bytes, same target):
    /// same inode, size, mtime and ctime. A directory keeps its node whatever changes.
    pub fn same_version(&self, other: &Attr) -> bool {
        self.src_ino == other.src_ino
            && self.size == other.size
            && self.mtime() == other.mtime()
            && self.ctime() == other.ctime()
    }
}
