//! Which filesystem a path is on, by `statfs` magic: a cache on a network filesystem would
//! put every "local" read back on the shared link this tool exists to spare, and a cache on
//! tmpfs is RAM counted twice.

use std::os::fd::AsFd;
use std::path::Path;

/// What bicache needs to know of a filesystem type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    /// A disk of this node (ext4, xfs, btrfs, zfs, overlayfs...).
    Local,
    /// Memory (tmpfs, ramfs): fast, but it competes with the RAM tier for the same RAM.
    Memory,
    /// Shared over the network, or a FUSE filesystem (whatever it serves from).
    Remote,
}

/// A filesystem type as seen by statfs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FsType {
    pub magic: i64,
}

/// (magic, name, class). Unknown magics are taken as local disks.
const KNOWN: &[(i64, &str, Class)] = &[
    (0xEF53, "ext4", Class::Local),
    (0x5846_5342, "xfs", Class::Local),
    (0x9123_683E, "btrfs", Class::Local),
    (0x2FC1_2FC1, "zfs", Class::Local),
    (0xF2F5_2010, "f2fs", Class::Local),
    (0xCA45_1A4E, "bcachefs", Class::Local),
    (0x794C_7630, "overlayfs", Class::Local),
    (0x3153_464A, "jfs", Class::Local),
    (0x5265_4973, "reiserfs", Class::Local),
    (0x0102_1994, "tmpfs", Class::Memory),
    (0x8584_58F6, "ramfs", Class::Memory),
    (0x6969, "nfs", Class::Remote),
    (0x0BD0_0BD0, "lustre", Class::Remote),
    (0x4750_4653, "gpfs", Class::Remote),
    (0x1983_0326, "beegfs", Class::Remote),
    (0xFF53_4D42, "cifs", Class::Remote),
    (0xFE53_4D42, "smb2", Class::Remote),
    (0x517B, "smb", Class::Remote),
    (0x00C3_6400, "cephfs", Class::Remote),
    (0x6573_5546, "fuse", Class::Remote),
    (0x0102_1997, "9p", Class::Remote),
    (0x5346_414F, "afs", Class::Remote),
    (0x0116_1970, "gfs2", Class::Remote),
    (0x7461_636F, "ocfs2", Class::Remote),
    (0xAAD7_AAEA, "panfs", Class::Remote),
    (0x2003_0528, "orangefs", Class::Remote),
];

impl FsType {
    pub fn of_path(p: &Path) -> std::io::Result<FsType> {
        let st = nix::sys::statfs::statfs(p)?;
        Ok(FsType {
            magic: st.filesystem_type().0 as i64,
        })
    }

    pub fn of_fd(fd: impl AsFd) -> std::io::Result<FsType> {
        let st = nix::sys::statfs::fstatfs(fd)?;
        Ok(FsType {
            magic: st.filesystem_type().0 as i64,
        })
    }

    fn entry(&self) -> Option<&'static (i64, &'static str, Class)> {
        KNOWN.iter().find(|(m, _, _)| *m == self.magic)
    }

    pub fn class(&self) -> Class {
        self.entry().map_or(Class::Local, |e| e.2)
    }

    /// "ext4", "nfs"... or "unknown (0x…)".
    pub fn name(&self) -> String {
        match self.entry() {
            Some(e) => e.1.to_string(),
            None => format!("unknown (0x{:x})", self.magic),
        }
    }

    /// Passthrough needs the mount one level above its backing files in the kernel's stack
    /// of filesystems, two above a stacked one (overlayfs, as in containers; another FUSE
    /// mount; ecryptfs). Higher than needed would only stop others stacking on bicache.
    pub fn passthrough_stack_depth(&self) -> u32 {
        const ECRYPTFS: i64 = 0xF15F;
        match self.magic {
            0x794C_7630 | 0x6573_5546 | ECRYPTFS => 2,
            _ => 1,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classes_of_common_filesystems() {
        let t = |m| FsType { magic: m };
        assert_eq!(t(0xEF53).class(), Class::Local);
        assert_eq!(t(0x6969).name(), "nfs");
        for remote in [
            0x6969,
            0x0BD0_0BD0,
            0x4750_4653,
            0x1983_0326,
            0xFF53_4D42,
            0x00C3_6400,
            0x6573_5546,
        ] {
            assert_eq!(t(remote).class(), Class::Remote, "{}", t(remote).name());
        }
        assert_eq!(t(0x0102_1994).class(), Class::Memory);
        assert_eq!(t(0x1234).class(), Class::Local);
        assert_eq!(t(0x1234).name(), "unknown (0x1234)");
        assert_eq!(t(0x794C_7630).passthrough_stack_depth(), 2);
        assert_eq!(t(0xEF53).passthrough_stack_depth(), 1);
        // /proc is not a disk we know, but statfs works on it.
        assert!(FsType::of_path(Path::new("/proc")).is_ok());
    }
}
