//! RAM tier: a byte-budgeted LRU of chunks, split into independently locked shards so
//! readers of different chunks don't serialise on one mutex.

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;

use lru::LruCache;
use parking_lot::Mutex;

use super::{Chunk, ChunkKey};
use crate::stats::Stats;

/// Bookkeeping charged per chunk on top of its bytes (map entry, Arc header, Vec header).
pub const CHUNK_OVERHEAD: u64 = 128;

pub struct RamTier {
    shards: Box<[Mutex<Shard>]>,
    shard_capacity: u64,
    stats: Arc<Stats>,
}

struct Shard {
    lru: LruCache<ChunkKey, Chunk>,
    bytes: u64,
}

fn cost(chunk: &Chunk) -> u64 {
    chunk.len() as u64 + CHUNK_OVERHEAD
}

impl RamTier {
    pub fn new(capacity: u64, chunk_size: u64, stats: Arc<Stats>) -> RamTier {
        // Enough shards for parallelism, but each must still hold several chunks, or a
        // lopsided hash would evict long before the whole budget is used.
        let shards = (capacity / (chunk_size * 8)).clamp(1, 16) as usize;
        stats.ram_capacity.store(capacity, Relaxed);
        RamTier {
            shards: (0..shards)
                .map(|_| {
                    Mutex::new(Shard {
                        lru: LruCache::unbounded(),
                        bytes: 0,
                    })
                })
                .collect(),
            shard_capacity: capacity / shards as u64,
            stats,
        }
    }

    fn shard(&self, key: &ChunkKey) -> &Mutex<Shard> {
        &self.shards[key.shard_hash() as usize % self.shards.len()]
    }

    pub fn get(&self, key: &ChunkKey) -> Option<Chunk> {
        self.shard(key).lock().lru.get(key).cloned()
    }

    pub fn contains(&self, key: &ChunkKey) -> bool {
        self.shard(key).lock().lru.contains(key)
    }

    /// Inserts, evicting least-recently-used chunks of the same shard until it fits.
    /// A chunk larger than a whole shard is not kept at all (the budget is a hard limit).
    pub fn insert(&self, key: ChunkKey, chunk: Chunk) {
        let need = cost(&chunk);
        if need > self.shard_capacity {
            return;
        }
        // Victims are dropped after the lock is released: freeing memory can be slow.
        let mut victims = Vec::new();
        {
            let mut shard = self.shard(&key).lock();
            if let Some(old) = shard.lru.pop(&key) {
                shard.bytes -= cost(&old);
                self.stats.ram_bytes.fetch_sub(cost(&old), Relaxed);
                victims.push(old);
            }
            while shard.bytes + need > self.shard_capacity {
                let Some((_, old)) = shard.lru.pop_lru() else {
                    break;
                };
                shard.bytes -= cost(&old);
                self.stats.ram_bytes.fetch_sub(cost(&old), Relaxed);
                victims.push(old);
            }
            shard.bytes += need;
            self.stats.ram_bytes.fetch_add(need, Relaxed);
            shard.lru.put(key, chunk);
        }
        drop(victims);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(i: u64) -> ChunkKey {
        ChunkKey { file: 7, index: i }
    }

    #[test]
    fn stays_within_budget_and_evicts_lru() {
        let stats = Arc::new(Stats::default());
        let ram = RamTier::new(4 * (1024 + CHUNK_OVERHEAD), 1 << 20, stats.clone());
        for i in 0..4 {
            ram.insert(key(i), Arc::new(vec![i as u8; 1024]));
        }
        assert!(ram.get(&key(0)).is_some()); // 0 becomes most recent
        ram.insert(key(4), Arc::new(vec![4; 1024]));
        assert!(ram.get(&key(1)).is_none(), "least recently used goes first");
        assert!(ram.get(&key(0)).is_some());
        assert!(stats.ram_bytes.load(Relaxed) <= stats.ram_capacity.load(Relaxed));
        // Larger than the whole budget: refused, nothing evicted.
        ram.insert(key(9), Arc::new(vec![0; 1 << 20]));
        assert!(ram.get(&key(9)).is_none());
        assert!(ram.get(&key(4)).is_some());
    }
}
