//! What a cache tier is to the chunk cache: somewhere bytes of chunks may be found, kept,
//! and pinned. The RAM tier and the SSD tier implement it. The chunk cache still names its
//! two tiers on the read path (RAM first, then the SSD if there is one); budgets, pinning
//! and flushing go through this trait.

use std::fs::File;
use std::ops::Range;
use std::sync::Arc;

use super::key::CachedFile;
use crate::buf::Buf;

/// Bytes of one chunk: `data` holds the chunk's bytes from offset `start` on (a whole
/// chunk has `start` 0 and the chunk's full length).
#[derive(Debug, Clone)]
pub struct Piece {
    pub data: Arc<Buf>,
    pub start: usize,
}

impl Piece {
    pub fn whole(data: Arc<Buf>) -> Piece {
        Piece { data, start: 0 }
    }

    pub fn end(&self) -> usize {
        self.start + self.data.len()
    }

    /// Whether the piece holds bytes `want` of its chunk.
    pub fn covers(&self, want: &Range<usize>) -> bool {
        self.start <= want.start && want.end <= self.end()
    }

    /// Bytes `want` of the chunk (which the piece must cover).
    pub fn slice(&self, want: &Range<usize>) -> &[u8] {
        &self.data[want.start - self.start..want.end - self.start]
    }
}

/// A file the kernel may read directly (FUSE passthrough), checked; with its bytes when
/// they were read for the check.
pub struct BackingFile {
    pub file: File,
    pub verified_bytes: Option<Buf>,
}

pub trait Tier: Send + Sync {
    fn name(&self) -> &'static str;

    /// Bytes `want` of chunk `index` of `file`, if held (maybe more of the chunk).
    fn get(&self, file: &CachedFile, index: u64, want: Range<usize>) -> Option<Piece>;

    /// Whether the whole chunk is held.
    fn contains(&self, file: &CachedFile, index: u64) -> bool;

    /// Keeps a piece (a tier may do it later, off the caller's path, or not at all).
    fn put(&self, file: &CachedFile, index: u64, piece: &Piece, pin: bool);

    /// The budget, in bytes.
    fn capacity(&self) -> u64;

    /// Bytes its pinned area can still take.
    fn pinned_room(&self) -> u64;

    /// The whole file, checked, for the kernel to read directly. Only a tier whose bytes
    /// live in files can give one.
    fn backing_file(&self, _file: &CachedFile) -> Option<BackingFile> {
        None
    }

    /// Pins what `should_pin` says of what the tier holds (and unpins the rest).
    fn repin(&self, _should_pin: &dyn Fn(u128) -> bool) {}

    /// Waits until everything handed to `put` is kept.
    fn flush(&self) {}
}
