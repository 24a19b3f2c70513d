//! A byte-budgeted LRU with a pinned area, for the RAM tier (the SSD tier has its own
//! CLOCK index with the same pinned area, `disk/index.rs`).
//!
//! Why pinning: under random per-epoch order an LRU smaller than the data keeps evicting
//! what the next epoch needs, and gets a small fraction of the hits that are possible. A
//! fixed set that fits (this shard's files, or the first part of the dataset seen) kept
//! for good gets hit rate = cache / data, the bound no policy beats. Pinned entries are
//! only ever evicted when removed explicitly; the unpinned rest is a plain LRU.

use std::hash::Hash;

use lru::LruCache;

pub struct PinLru<K: Hash + Eq, V> {
    pinned: LruCache<K, (V, u64)>,
    normal: LruCache<K, (V, u64)>,
    pinned_bytes: u64,
    normal_bytes: u64,
    capacity: u64,
    pinned_capacity: u64,
}

impl<K: Hash + Eq + Clone, V> PinLru<K, V> {
    /// `pinned_capacity` is the most the pinned area may take of `capacity`; keeping it
    /// below `capacity` leaves room for data outside the pinned set.
    pub fn new(capacity: u64, pinned_capacity: u64) -> Self {
        PinLru {
            pinned: LruCache::unbounded(),
            normal: LruCache::unbounded(),
            pinned_bytes: 0,
            normal_bytes: 0,
            capacity,
            pinned_capacity: pinned_capacity.min(capacity),
        }
    }

    pub fn bytes(&self) -> u64 {
        self.pinned_bytes + self.normal_bytes
    }

    pub fn pinned_bytes(&self) -> u64 {
        self.pinned_bytes
    }

    pub fn pinned_capacity(&self) -> u64 {
        self.pinned_capacity
    }

    pub fn capacity(&self) -> u64 {
        self.capacity
    }

    /// Looks up and marks as recently used.
    pub fn get(&mut self, k: &K) -> Option<&V> {
        if let Some((v, _)) = self.pinned.get(k) {
            return Some(v);
        }
        self.normal.get(k).map(|(v, _)| v)
    }

    /// Whether `cost` more bytes fit without evicting anything.
    pub fn has_room(&self, cost: u64) -> bool {
        self.bytes() + cost <= self.capacity
    }

    pub fn contains(&self, k: &K) -> bool {
        self.pinned.contains(k) || self.normal.contains(k)
    }

    /// Whether an entry of `cost` bytes would go to the pinned area if inserted now.
    pub fn pin_fits(&self, cost: u64) -> bool {
        self.pinned_bytes + cost <= self.pinned_capacity
    }

    /// Evicts unpinned entries, least recently used first, until `extra` more bytes fit
    /// within the capacity. Returns the victims; `false` if it still doesn't fit.
    pub fn make_room(&mut self, extra: u64, victims: &mut Vec<(K, V, u64)>) -> bool {
        while self.bytes() + extra > self.capacity {
            let Some((k, (v, c))) = self.normal.pop_lru() else {
                return false;
            };
            self.normal_bytes -= c;
            victims.push((k, v, c));
        }
        true
    }

    /// Inserts without evicting (the caller made room). Pinned if asked and it fits in
    /// the pinned area. Replaces an existing entry for the key (returned).
    pub fn insert_unchecked(&mut self, k: K, v: V, cost: u64, pin: bool) -> Option<(V, u64)> {
        let old = self.remove(&k);
        if pin && self.pin_fits(cost) {
            self.pinned_bytes += cost;
            self.pinned.put(k, (v, cost));
        } else {
            self.normal_bytes += cost;
            self.normal.put(k, (v, cost));
        }
        old
    }

    /// Inserts, evicting unpinned entries as needed; `Err` (with the value) if it cannot fit.
    pub fn insert(
        &mut self,
        k: K,
        v: V,
        cost: u64,
        pin: bool,
        victims: &mut Vec<(K, V, u64)>,
    ) -> Result<(), V> {
        if let Some((old, c)) = self.remove(&k) {
            victims.push((k.clone(), old, c));
        }
        // Never evict for an entry that could not fit even in an empty unpinned part.
        if self.pinned_bytes + cost > self.capacity || !self.make_room(cost, victims) {
            return Err(v);
        }
        self.insert_unchecked(k, v, cost, pin);
        Ok(())
    }

    pub fn remove(&mut self, k: &K) -> Option<(V, u64)> {
        if let Some((v, c)) = self.pinned.pop(k) {
            self.pinned_bytes -= c;
            return Some((v, c));
        }
        let (v, c) = self.normal.pop(k)?;
        self.normal_bytes -= c;
        Some((v, c))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pinned_entries_survive_lru_pressure() {
        let mut l: PinLru<u32, ()> = PinLru::new(100, 60);
        let mut v = Vec::new();
        for k in 0..6 {
            l.insert(k, (), 10, true, &mut v).unwrap();
        }
        assert_eq!(l.pinned_bytes(), 60);
        // The pinned area is full: these go to the LRU part and churn there.
        for k in 100..110 {
            l.insert(k, (), 10, true, &mut v).unwrap();
        }
        assert!(l.bytes() <= 100);
        for k in 0..6 {
            assert!(l.contains(&k), "pinned {k} evicted");
        }
        assert!(v.iter().all(|(k, _, _)| *k >= 100));
        // Larger than what the unpinned part can ever free: refused.
        assert!(l.insert(999, (), 50, false, &mut v).is_err());
        assert!(l.bytes() <= 100);
    }
}
