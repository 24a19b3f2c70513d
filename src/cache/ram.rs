//! RAM tier: a byte-budgeted LRU of chunks, split into independently locked shards so
//! readers of different chunks don't serialise on one mutex.

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;

use parking_lot::Mutex;

use super::key::CachedFile;
use super::lru::PinLru;
use super::tier::{Piece, Tier};
use super::{Chunk, ChunkKey};
use crate::stats::Stats;

/// Bookkeeping charged per chunk on top of its bytes (map entry, Arc header, Vec header).
pub const CHUNK_OVERHEAD: u64 = 128;

pub struct RamTier {
    shards: Box<[Mutex<PinLru<ChunkKey, Chunk>>]>,
    stats: Arc<Stats>,
}

/// What a chunk really takes in memory: its buffer is mapped in whole pages (buf.rs).
fn cost(chunk: &Chunk) -> u64 {
    (chunk.len() as u64).div_ceil(4096) * 4096 + CHUNK_OVERHEAD
}

impl RamTier {
    /// `capacity`: bytes the tier may hold (the stats report the user's whole budget, set by
    /// the caller); `pinned_capacity`: how much of it pinned chunks may take (0 = none).
    pub fn new(capacity: u64, pinned_capacity: u64, chunk_size: u64, stats: Arc<Stats>) -> RamTier {
        // Enough shards for parallelism, but each must still hold several chunks, or a
        // lopsided hash would evict long before the whole budget is used.
        let shards = (capacity / (chunk_size * 8)).clamp(1, 16);
        RamTier {
            shards: (0..shards)
                .map(|_| Mutex::new(PinLru::new(capacity / shards, pinned_capacity / shards)))
                .collect(),
            stats,
        }
    }

    fn shard(&self, key: &ChunkKey) -> &Mutex<PinLru<ChunkKey, Chunk>> {
        &self.shards[key.stripe_hash() as usize % self.shards.len()]
    }

    pub fn get(&self, key: &ChunkKey) -> Option<Chunk> {
        self.shard(key).lock().get(key).cloned()
    }

    pub fn contains(&self, key: &ChunkKey) -> bool {
        self.shard(key).lock().contains(key)
    }

    /// Whether the pinned area has room for `bytes` more (summed over shards).
    pub fn pinned_room(&self) -> u64 {
        self.shards
            .iter()
            .map(|s| {
                let s = s.lock();
                s.pinned_capacity() - s.pinned_bytes()
            })
            .sum()
    }

    /// Inserts only into free room, evicting nothing: for chunks that are merely nice to
    /// have in RAM (read for another reason), which must not push out anything in use.
    pub fn insert_if_room(&self, key: ChunkKey, chunk: Chunk) {
        let need = cost(&chunk);
        let mut shard = self.shard(&key).lock();
        if shard.contains(&key) || !shard.has_room(need) {
            return;
        }
        shard.insert_unchecked(key, chunk, need, false);
        self.stats.ram_bytes.fetch_add(need, Relaxed);
    }

    /// Inserts, evicting least-recently-used unpinned chunks of the same shard until it
    /// fits. A chunk that cannot fit is not kept at all (the budget is a hard limit).
    pub fn insert(&self, key: ChunkKey, chunk: Chunk, pin: bool) {
        let need = cost(&chunk);
        // Victims are dropped after the lock is released: freeing memory can be slow.
        let mut victims = Vec::new();
        {
            let mut shard = self.shard(&key).lock();
            let before = shard.bytes();
            let _ = shard.insert(key, chunk, need, pin, &mut victims);
            let after = shard.bytes();
            if after >= before {
                self.stats.ram_bytes.fetch_add(after - before, Relaxed);
            } else {
                self.stats.ram_bytes.fetch_sub(before - after, Relaxed);
            }
        }
        drop(victims);
    }
}

/// The RAM tier holds whole chunks only: a piece of a chunk is not kept here.
impl Tier for RamTier {
    fn name(&self) -> &'static str {
        "ram"
    }

    fn get(&self, file: &CachedFile, index: u64, _want: std::ops::Range<usize>) -> Option<Piece> {
        RamTier::get(self, &file.chunk(index)).map(Piece::whole)
    }

    fn contains(&self, file: &CachedFile, index: u64) -> bool {
        RamTier::contains(self, &file.chunk(index))
    }

    fn put(&self, file: &CachedFile, index: u64, piece: &Piece, pin: bool) {
        if piece.start == 0 && piece.data.len() == file.chunk_len(index) {
            self.insert(file.chunk(index), piece.data.clone(), pin);
        }
    }

    fn capacity(&self) -> u64 {
        self.shards.iter().map(|s| s.lock().capacity()).sum()
    }

    fn pinned_room(&self) -> u64 {
        RamTier::pinned_room(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunk(len: usize) -> Chunk {
        Arc::new(crate::buf::Buf::zeroed(len))
    }

    fn key(i: u64) -> ChunkKey {
        ChunkKey { file: 7, index: i }
    }

    #[test]
    fn stays_within_budget_and_evicts_lru() {
        let stats = Arc::new(Stats::default());
        let ram = RamTier::new(4 * (4096 + CHUNK_OVERHEAD), 0, 1 << 20, stats.clone());
        for i in 0..4 {
            ram.insert(key(i), chunk(1024), false);
        }
        assert!(ram.get(&key(0)).is_some()); // 0 becomes most recent
        ram.insert(key(4), chunk(1024), false);
        assert!(ram.get(&key(1)).is_none(), "least recently used goes first");
        assert!(ram.get(&key(0)).is_some());
        assert!(stats.ram_bytes.load(Relaxed) <= 4 * (4096 + CHUNK_OVERHEAD));
        // Larger than the whole budget: refused, nothing evicted.
        ram.insert(key(9), chunk(1 << 20), false);
        assert!(ram.get(&key(9)).is_none());
        assert!(ram.get(&key(4)).is_some());
    }
}
