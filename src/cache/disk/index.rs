//! The SSD tier's resident index: one entry per cached file version, what of it is
//! present, and what it costs on disk. Eviction is CLOCK (an LRU approximation: a
//! referenced bit per entry and a sweeping hand), so an entry needs no list links: about
//! 60 bytes a small file, counted in `disk.index_bytes`.
//!
//! Pinned entries are never evicted by the sweep; they may take at most the pinned share
//! of the budget (see `cache/lru.rs` for why pinning).

use hashbrown::HashTable;

use super::layout::{Recency, Record};

/// Never evicted by the sweep.
pub const PINNED: u8 = 1;
/// Used since the hand last passed.
const REFERENCED: u8 = 2;

/// What is present of a file larger than one chunk.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Large {
    pub size: u64,
    /// Present units of each chunk (bit u = unit u).
    pub masks: Vec<u64>,
    /// Checksummed ranges, sorted by (chunk, first), not overlapping.
    pub records: Vec<Record>,
    /// Bytes of the `.idx` file.
    pub idx_len: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Shape {
    /// Held whole in one file whose name carries its length and checksum.
    Small {
        len: u32,
        sum: u64,
    },
    Large(Box<Large>),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub key: u128,
    pub shape: Shape,
    /// Pages (4 KiB) charged to the budget: what the files take on disk.
    charged_pages: u32,
    /// Minutes since the Unix epoch (persisted, for eviction order across remounts).
    pub last_use: u32,
    /// Fingerprint of the cache file (device, inode, ctime) when its bytes were last
    /// known good (written or verified); 0: unknown. Persisted: a cache file that has not
    /// changed since needs no re-hash at open.
    pub stamp: u32,
    pub flags: u8,
}

impl Entry {
    pub fn new(key: u128, shape: Shape, charged: u64) -> Entry {
        let mut e = Entry {
            key,
            shape,
            charged_pages: 0,
            last_use: 0,
            stamp: 0,
            flags: 0,
        };
        e.set_charged(charged);
        e
    }

    pub fn pinned(&self) -> bool {
        self.flags & PINNED != 0
    }

    /// Bytes charged to the budget.
    pub fn charged(&self) -> u64 {
        self.charged_pages as u64 * 4096
    }

    pub fn set_charged(&mut self, bytes: u64) {
        self.charged_pages = bytes.div_ceil(4096).min(u32::MAX as u64) as u32;
    }
}

/// Disk blocks a byte count takes.
pub fn on_disk(bytes: u64) -> u64 {
    bytes.div_ceil(4096) * 4096
}

pub fn minutes_now() -> u32 {
    (crate::clock::now_ms() / 60_000) as u32
}

impl Large {
    /// The records of chunk `c` (a slice of the sorted records).
    pub fn chunk_records(&self, c: u32) -> &[Record] {
        let lo = self.records.partition_point(|r| r.chunk < c);
        let hi = self.records.partition_point(|r| r.chunk <= c);
        &self.records[lo..hi]
    }

    /// Adds a record (a tombstone clears the chunk). A record whose units are all held
    /// already adds nothing; records wholly inside the new one are replaced by it; records
    /// that only overlap it stay (their bytes are the same version's, so every checksum
    /// holds; the overlap is charged twice, which errs on the safe side of the budget).
    /// Records are applied after their data is synced, in batches, so a piece can arrive
    /// after a whole chunk that covers it: replacing the wider record would forget bytes
    /// that are on disk.
    pub fn apply(&mut self, r: Record) {
        let c = r.chunk as usize;
        if self.masks.len() <= c {
            self.masks.resize(c + 1, 0);
        }
        let lo = self.records.partition_point(|x| x.chunk < r.chunk);
        let hi = self.records.partition_point(|x| x.chunk <= r.chunk);
        if r.units == 0 {
            self.records.drain(lo..hi);
            self.masks[c] = 0;
            return;
        }
        let (a, b) = (r.first as u32, r.first as u32 + r.units as u32);
        let new = unit_mask(a, b - a);
        if self.masks[c] & new == new {
            return;
        }
        let mut keep: Vec<Record> = self.records[lo..hi]
            .iter()
            .copied()
            .filter(|x| {
                let (xa, xb) = (x.first as u32, x.first as u32 + x.units as u32);
                !(xa >= a && xb <= b)
            })
            .collect();
        keep.push(r);
        keep.sort_by_key(|x| x.first);
        let mut mask = 0u64;
        for x in &keep {
            mask |= unit_mask(x.first as u32, x.units as u32);
        }
        self.masks[c] = mask;
        self.records.splice(lo..hi, keep);
    }

    /// Bytes of data present (clipped to the file's end), given the unit and chunk size.
    pub fn data_bytes(&self, unit: u64, chunk_size: u64) -> u64 {
        self.records
            .iter()
            .map(|r| {
                let start = r.chunk as u64 * chunk_size + r.first as u64 * unit;
                let end = (start + r.units as u64 * unit)
                    .min(r.chunk as u64 * chunk_size + chunk_size)
                    .min(self.size);
                on_disk(end.saturating_sub(start))
            })
            .sum()
    }

    /// Whether every unit of every chunk is present.
    pub fn complete(&self, chunks: u64, full: impl Fn(u64) -> u64) -> bool {
        self.masks.len() as u64 >= chunks && (0..chunks).all(|c| self.masks[c as usize] == full(c))
    }
}

/// Units `first..first + n` as a mask.
pub fn unit_mask(first: u32, n: u32) -> u64 {
    if n >= 64 {
        u64::MAX << first.min(63)
    } else {
        ((1u64 << n) - 1) << first
    }
}

pub struct Index {
    slab: Vec<Option<Entry>>,
    free: Vec<u32>,
    by_key: HashTable<u32>,
    hand: usize,
    /// Bytes charged by entries.
    used: u64,
    /// Bytes reserved by writes under way (not yet in an entry).
    pub reserved: u64,
    pinned: u64,
    pub capacity: u64,
    pub pinned_capacity: u64,
}

fn hash_of(key: u128) -> u64 {
    // Keys are hashes already.
    key as u64
}

impl Index {
    pub fn new(capacity: u64, pinned_capacity: u64) -> Index {
        Index {
            slab: Vec::new(),
            free: Vec::new(),
            by_key: HashTable::new(),
            hand: 0,
            used: 0,
            reserved: 0,
            pinned: 0,
            capacity,
            pinned_capacity: pinned_capacity.min(capacity),
        }
    }

    pub fn len(&self) -> usize {
        self.by_key.len()
    }

    pub fn used(&self) -> u64 {
        self.used + self.reserved
    }

    pub fn pinned_bytes(&self) -> u64 {
        self.pinned
    }

    pub fn pinned_room(&self) -> u64 {
        self.pinned_capacity.saturating_sub(self.pinned)
    }

    /// Bytes of memory the index takes (`disk.index_bytes`).
    pub fn memory(&self) -> u64 {
        let large: usize = self
            .slab
            .iter()
            .flatten()
            .map(|e| match &e.shape {
                Shape::Large(l) => {
                    std::mem::size_of::<Large>()
                        + l.masks.capacity() * 8
                        + l.records.capacity() * 16
                }
                Shape::Small { .. } => 0,
            })
            .sum();
        (self.slab.capacity() * std::mem::size_of::<Option<Entry>>()
            + self.by_key.allocation_size()
            + self.free.capacity() * 4
            + large) as u64
    }

    fn slot_of(&self, key: u128) -> Option<u32> {
        self.by_key
            .find(hash_of(key), |&i| {
                self.slab[i as usize].as_ref().is_some_and(|e| e.key == key)
            })
            .copied()
    }

    pub fn contains(&self, key: u128) -> bool {
        self.slot_of(key).is_some()
    }

    pub fn get(&self, key: u128) -> Option<&Entry> {
        self.slot_of(key)
            .and_then(|i| self.slab[i as usize].as_ref())
    }

    /// Looks up and marks as used (now).
    pub fn touch(&mut self, key: u128) -> Option<&mut Entry> {
        let i = self.slot_of(key)?;
        let e = self.slab[i as usize].as_mut()?;
        e.flags |= REFERENCED;
        e.last_use = minutes_now();
        Some(e)
    }

    /// Changes an entry in place, keeping the byte counts right.
    pub fn update(&mut self, key: u128, f: impl FnOnce(&mut Entry)) -> bool {
        let Some(i) = self.slot_of(key) else {
            return false;
        };
        let e = self.slab[i as usize].as_mut().expect("indexed");
        let (before, was_pinned) = (e.charged(), e.pinned());
        f(e);
        let (after, pinned) = (e.charged(), e.pinned());
        self.used = self.used - before + after;
        if was_pinned {
            self.pinned -= before;
        }
        if pinned {
            self.pinned += after;
        }
        true
    }

    /// Adds an entry (replacing one of the same key). Pinned only if asked and the pinned
    /// area has room.
    pub fn insert(&mut self, mut e: Entry, pin: bool) {
        self.remove(e.key);
        e.flags &= !PINNED;
        if pin && self.pinned + e.charged() <= self.pinned_capacity {
            e.flags |= PINNED;
            self.pinned += e.charged();
        }
        e.flags |= REFERENCED;
        self.used += e.charged();
        let key = e.key;
        let i = match self.free.pop() {
            Some(i) => {
                self.slab[i as usize] = Some(e);
                i
            }
            None => {
                self.slab.push(Some(e));
                (self.slab.len() - 1) as u32
            }
        };
        let slab = &self.slab;
        self.by_key.insert_unique(hash_of(key), i, |&j| {
            hash_of(slab[j as usize].as_ref().expect("indexed").key)
        });
    }

    pub fn remove(&mut self, key: u128) -> Option<Entry> {
        let i = self.slot_of(key)?;
        if let Ok(o) = self.by_key.find_entry(hash_of(key), |&j| j == i) {
            o.remove();
        }
        let e = self.slab[i as usize].take()?;
        self.free.push(i);
        self.used -= e.charged();
        if e.pinned() {
            self.pinned -= e.charged();
        }
        Some(e)
    }

    /// Evicts unpinned entries (CLOCK order; never `protect`) until `extra` more bytes fit.
    /// Returns the victims for the caller to delete; `Err` with them if it can't fit.
    pub fn make_room(&mut self, extra: u64, protect: u128) -> Result<Vec<Entry>, Vec<Entry>> {
        let mut victims = Vec::new();
        // Pinned entries never go: if dropping every other one would not make room, fail
        // now rather than after two turns of the hand (a full cache of pinned files would
        // otherwise cost O(files) a write).
        if self.pinned + self.reserved + extra > self.capacity {
            return Err(victims);
        }
        let n = self.slab.len();
        // Two full turns: the first may only clear referenced bits.
        let mut steps = 2 * n + 1;
        while self.used() + extra > self.capacity {
            if steps == 0 || n == 0 {
                return Err(victims);
            }
            steps -= 1;
            self.hand = (self.hand + 1) % n;
            let Some(e) = self.slab[self.hand].as_mut() else {
                continue;
            };
            if e.pinned() || e.key == protect {
                continue;
            }
            if e.flags & REFERENCED != 0 {
                e.flags &= !REFERENCED;
                continue;
            }
            let key = e.key;
            victims.push(self.remove(key).expect("just seen"));
        }
        Ok(victims)
    }

    /// Entries to drop so that the index fits `capacity`, oldest use first (at mount, when
    /// the budget shrank).
    pub fn over_budget(&mut self) -> Vec<Entry> {
        if self.used <= self.capacity {
            return Vec::new();
        }
        let mut order: Vec<(u32, u128)> = self
            .slab
            .iter()
            .flatten()
            .map(|e| (e.last_use, e.key))
            .collect();
        order.sort_unstable();
        let mut out = Vec::new();
        for (_, k) in order {
            if self.used <= self.capacity {
                break;
            }
            out.extend(self.remove(k));
        }
        out
    }

    /// Pins entries `should_pin` says (while the pinned area has room) and unpins all
    /// others: pins follow the current shard, never an old one.
    pub fn repin(&mut self, should_pin: impl Fn(u128) -> bool) -> u64 {
        self.pinned = 0;
        for e in self.slab.iter_mut().flatten() {
            e.flags &= !PINNED;
        }
        for e in self.slab.iter_mut().flatten() {
            if should_pin(e.key) && self.pinned + e.charged() <= self.pinned_capacity {
                e.flags |= PINNED;
                self.pinned += e.charged();
            }
        }
        self.pinned
    }

    /// Pins one entry if the pinned area has room (a file used under "first come" pinning).
    pub fn pin(&mut self, key: u128) {
        let room = self.pinned_room();
        self.update(key, |e| {
            if !e.pinned() && e.charged() <= room {
                e.flags |= PINNED;
            }
        });
    }

    /// What the recency file keeps of every entry.
    pub fn recency(&self) -> Vec<Recency> {
        self.slab
            .iter()
            .flatten()
            .map(|e| Recency {
                key: e.key,
                last_use: e.last_use,
                stamp: e.stamp,
            })
            .collect()
    }

    /// Sets what the recency file kept (read back at mount); false if not indexed.
    pub fn set_recency(&mut self, r: &Recency) -> bool {
        if let Some(i) = self.slot_of(r.key)
            && let Some(e) = self.slab[i as usize].as_mut()
        {
            e.last_use = r.last_use;
            e.stamp = r.stamp;
            return true;
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn small(key: u128, len: u32) -> Entry {
        Entry::new(key, Shape::Small { len, sum: 0 }, on_disk(len as u64))
    }

    #[test]
    fn an_entry_takes_48_bytes() {
        // 1.28 M of them are resident: a field more must fit in the padding.
        assert_eq!(std::mem::size_of::<Option<Entry>>(), 48);
    }

    #[test]
    fn clock_evicts_unreferenced_unpinned_entries_and_holds_the_budget() {
        let mut ix = Index::new(10 * 4096, 4 * 4096);
        for k in 0..10 {
            ix.insert(small(k, 4096), k < 3);
        }
        assert_eq!(ix.used(), 10 * 4096);
        assert_eq!(ix.pinned_bytes(), 3 * 4096);
        let victims = ix.make_room(2 * 4096, u128::MAX).unwrap();
        assert_eq!(victims.len(), 2);
        assert!(
            victims.iter().all(|v| v.key >= 3),
            "a pinned entry was evicted"
        );
        assert!(ix.used() + 2 * 4096 <= ix.capacity);
        // Touched entries survive the next sweep.
        ix.touch(9);
        let v = ix.make_room(3 * 4096, u128::MAX).unwrap();
        assert_eq!(v.len(), 1);
        assert_ne!(v[0].key, 9);
        // Everything left pinned or protected: no room, nothing lost that need not be.
        let mut ix = Index::new(2 * 4096, 2 * 4096);
        ix.insert(small(1, 4096), true);
        ix.insert(small(2, 4096), false);
        assert!(ix.make_room(8192, 2).is_err());
        // More than pinned entries leave room for: refused without evicting anyone.
        let mut ix = Index::new(4 * 4096, 4 * 4096);
        for k in 0..3 {
            ix.insert(small(k, 4096), k < 2);
        }
        assert_eq!(ix.make_room(3 * 4096, u128::MAX).unwrap_err().len(), 0);
        assert_eq!(ix.len(), 3);
    }

    #[test]
    fn a_shrunk_budget_evicts_oldest_use_first_and_repin_follows_the_shard() {
        let mut ix = Index::new(100 * 4096, 100 * 4096);
        for k in 0..10u128 {
            let mut e = small(k, 4096);
            e.last_use = 100 - k as u32;
            ix.insert(e, true);
        }
        ix.capacity = 7 * 4096;
        let gone: Vec<u128> = ix.over_budget().iter().map(|e| e.key).collect();
        assert_eq!(gone, [9, 8, 7]);
        assert_eq!(ix.repin(|k| k % 2 == 0), 4 * 4096);
        assert!(!ix.get(1).unwrap().pinned() && ix.get(2).unwrap().pinned());
    }

    #[test]
    fn large_files_track_ranges_per_chunk() {
        let mut l = Large {
            size: 3 * 64 * 4096 - 100,
            ..Default::default()
        };
        let r = |chunk, first, units| Record {
            chunk,
            first,
            units,
            sum: first as u64,
        };
        l.apply(r(1, 4, 2));
        l.apply(r(1, 10, 1));
        assert_eq!(l.masks[1], 0b11 << 4 | 1 << 10);
        l.apply(r(1, 0, 64));
        assert_eq!(
            l.chunk_records(1).len(),
            1,
            "a whole chunk replaces its parts"
        );
        assert_eq!(l.masks[1], u64::MAX);
        l.apply(r(1, 0, 0));
        assert_eq!(l.masks[1], 0);
        assert!(l.chunk_records(1).is_empty());
        l.apply(r(0, 0, 64));
        l.apply(r(2, 0, 64));
        assert_eq!(
            l.data_bytes(4096, 64 * 4096),
            64 * 4096 + on_disk(64 * 4096 - 100)
        );
        assert!(!l.complete(3, |_| u64::MAX));
        l.apply(r(1, 0, 64));
        assert!(l.complete(3, |_| u64::MAX));
        assert_eq!(unit_mask(0, 64), u64::MAX);
        assert_eq!(unit_mask(62, 2), 0b11 << 62);
    }

    #[test]
    fn a_piece_applied_after_a_record_that_covers_it_forgets_nothing() {
        let mut l = Large {
            size: 2 * 64 * 4096,
            ..Default::default()
        };
        let r = |first, units| Record {
            chunk: 1,
            first,
            units,
            sum: first as u64 * 1000 + units as u64,
        };
        // Synced in one batch: the whole chunk's record lands before a piece inside it.
        l.apply(r(0, 64));
        l.apply(r(10, 1));
        assert_eq!(l.masks[1], u64::MAX, "the whole chunk is still held");
        assert_eq!(l.chunk_records(1), &[r(0, 64)]);
        // Pieces that only overlap each other both stay, and their union is held.
        l.apply(r(0, 0));
        l.apply(r(4, 8));
        l.apply(r(8, 8));
        assert_eq!(l.masks[1], unit_mask(4, 12));
        assert_eq!(l.chunk_records(1).len(), 2);
        // A record wholly inside the new one is replaced; the overlapping one stays.
        l.apply(r(6, 3));
        assert_eq!(l.chunk_records(1).len(), 2, "held already: nothing added");
        l.apply(r(8, 30));
        assert_eq!(l.chunk_records(1), &[r(4, 8), r(8, 30)]);
        assert_eq!(l.masks[1], unit_mask(4, 34));
    }
}
