//! Keys: which cached bytes belong to which version of which file.
//!
//! A file version's key is the xxh3-128 of its relative path, size, mtime and ctime (in
//! nanoseconds) and the chunk size. A changed file (rewritten, replaced, chmod-ed) has
//! another ctime, so another key: its old chunks can never be served for it. The source's
//! inode number is checked while mounted but left out of the key, so a cache survives a
//! source that renumbers inodes at each mount (FUSE sources do). The key names files on
//! disk, so its derivation is pinned by a golden test.

use xxhash_rust::xxh3::Xxh3;

use crate::source::FileVersion;

/// One chunk of one file version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ChunkKey {
    pub file: u128,
    pub index: u64,
}

impl ChunkKey {
    /// Spreads keys over lock stripes (of the RAM tier and of the flights in progress).
    pub fn stripe_hash(&self) -> u64 {
        (self.file as u64) ^ (self.index.wrapping_mul(0x9E37_79B9_7F4A_7C15))
    }
}

/// A file as the cache sees it: the version it was opened at, that version's key, and
/// the chunk size it is cut into.
#[derive(Debug, Clone)]
pub struct CachedFile {
    pub version: FileVersion,
    pub key: u128,
    pub chunk_size: u64,
}

impl CachedFile {
    pub fn new(version: FileVersion, chunk_size: u64) -> CachedFile {
        CachedFile {
            key: file_key(&version, chunk_size),
            version,
            chunk_size,
        }
    }

    pub fn size(&self) -> u64 {
        self.version.size
    }

    pub fn chunks(&self) -> u64 {
        self.version.size.div_ceil(self.chunk_size)
    }

    /// Bytes of chunk `index` (the last one may be short).
    pub fn chunk_len(&self, index: u64) -> usize {
        let start = index * self.chunk_size;
        (self.version.size.saturating_sub(start)).min(self.chunk_size) as usize
    }

    /// A file held whole in one chunk.
    pub fn is_small(&self) -> bool {
        self.version.size <= self.chunk_size
    }

    pub fn chunk(&self, index: u64) -> ChunkKey {
        ChunkKey {
            file: self.key,
            index,
        }
    }
}

pub fn file_key(v: &FileVersion, chunk_size: u64) -> u128 {
    let mut h = Xxh3::new();
    h.update(v.path.as_os_str().as_encoded_bytes());
    h.update(&[0]);
    h.update(&v.size.to_le_bytes());
    h.update(&v.mtime_ns.to_le_bytes());
    h.update(&v.ctime_ns.to_le_bytes());
    h.update(&chunk_size.to_le_bytes());
    h.digest128()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    /// Pins the key derivation: keys name files on disk, so a change must bump the cache
    /// format (`disk/layout.rs`).
    #[test]
    fn golden_file_key() {
        let v = FileVersion {
            path: PathBuf::from("train/n01440764/img_0001.JPEG"),
            size: 110_592,
            mtime_ns: 1_700_000_000_123_456_789,
            ctime_ns: 1_700_000_001_000_000_000,
            ino: 12345,
        };
        assert_eq!(
            format!("{:032x}", file_key(&v, 1 << 20)),
            "dfba10a4a1915515d6c0d16ab34aa849"
        );
        // The inode number is not part of the key; everything else is.
        let mut w = v.clone();
        w.ino = 99;
        assert_eq!(file_key(&v, 1 << 20), file_key(&w, 1 << 20));
        for change in [
            |w: &mut FileVersion| w.size += 1,
            |w: &mut FileVersion| w.mtime_ns += 1,
            |w: &mut FileVersion| w.ctime_ns += 1,
            |w: &mut FileVersion| w.path.push("x"),
        ] {
            let mut w = v.clone();
            change(&mut w);
            assert_ne!(file_key(&v, 1 << 20), file_key(&w, 1 << 20));
        }
        assert_ne!(file_key(&v, 1 << 20), file_key(&v, 2 << 20));
    }

    #[test]
    fn chunk_lengths() {
        let v = FileVersion {
            path: "f".into(),
            size: 2500,
            mtime_ns: 0,
            ctime_ns: 0,
            ino: 0,
        };
        let f = CachedFile::new(v, 1024);
        assert_eq!(f.chunks(), 3);
        assert_eq!(
            (f.chunk_len(0), f.chunk_len(2), f.chunk_len(3)),
            (1024, 452, 0)
        );
        assert!(!f.is_small());
    }
}
