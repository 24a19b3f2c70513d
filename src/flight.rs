//! Single-flight: however many threads want the same thing at once, one fetches it and
//! the others wait for its result. Used for chunks (one source read per chunk) and for
//! directory listings (one readdir per folder).
//!
//! A leader that panics must not leave its waiters asleep forever: its slot is completed
//! as abandoned on unwind, and the waiters get `None`.

use std::collections::HashMap;
use std::hash::{BuildHasher, Hash};
use std::sync::Arc;

use parking_lot::{Condvar, Mutex};

const SHARDS: usize = 16;

struct Slot<V> {
    done: Mutex<Option<Option<V>>>,
    cond: Condvar,
}

/// The flights under way in one shard of the key space.
type Flights<K, V> = Mutex<HashMap<K, Arc<Slot<V>>>>;

pub struct SingleFlight<K, V> {
    shards: Box<[Flights<K, V>]>,
    hasher: std::collections::hash_map::RandomState,
}

impl<K: Hash + Eq + Clone, V: Clone> Default for SingleFlight<K, V> {
    fn default() -> Self {
        Self::new()
    }
}

/// Completes the leader's slot even if the leader unwinds.
struct Publish<'a, K: Hash + Eq + Clone, V: Clone> {
    flight: &'a SingleFlight<K, V>,
    key: &'a K,
    slot: &'a Arc<Slot<V>>,
    value: Option<V>,
}

impl<K: Hash + Eq + Clone, V: Clone> Drop for Publish<'_, K, V> {
    fn drop(&mut self) {
        self.flight.shard(self.key).lock().remove(self.key);
        *self.slot.done.lock() = Some(self.value.take());
        self.slot.cond.notify_all();
    }
}

impl<K: Hash + Eq + Clone, V: Clone> SingleFlight<K, V> {
    pub fn new() -> Self {
        SingleFlight {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            hasher: Default::default(),
        }
    }

    fn shard(&self, key: &K) -> &Flights<K, V> {
        &self.shards[self.hasher.hash_one(key) as usize % SHARDS]
    }

    /// Runs `fetch` unless another thread is already fetching `key`, in which case waits
    /// for that result. `before_publish` runs in the leader with the value before any
    /// waiter sees it (e.g. to put it where a thread arriving later finds it). Returns the
    /// value and whether this thread fetched it; `None` if the leader panicked.
    pub fn run(
        &self,
        key: &K,
        fetch: impl FnOnce() -> V,
        before_publish: impl FnOnce(&V),
    ) -> Option<(V, bool)> {
        let (slot, leader) = {
            let mut map = self.shard(key).lock();
            match map.get(key) {
                Some(s) => (s.clone(), false),
                None => {
                    let s = Arc::new(Slot {
                        done: Mutex::new(None),
                        cond: Condvar::new(),
                    });
                    map.insert(key.clone(), s.clone());
                    (s, true)
                }
            }
        };
        if !leader {
            let mut done = slot.done.lock();
            while done.is_none() {
                slot.cond.wait(&mut done);
            }
            return done.clone().expect("checked above").map(|v| (v, false));
        }
        let mut publish = Publish {
            flight: self,
            key,
            slot: &slot,
            value: None,
        };
        let v = fetch();
        before_publish(&v);
        publish.value = Some(v.clone());
        drop(publish);
        Some((v, true))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[test]
    fn one_fetch_for_many_waiters() {
        let f: Arc<SingleFlight<u32, u64>> = Arc::new(SingleFlight::new());
        let calls = Arc::new(AtomicUsize::new(0));
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let (f, calls) = (f.clone(), calls.clone());
                std::thread::spawn(move || {
                    f.run(
                        &7,
                        || {
                            calls.fetch_add(1, Ordering::SeqCst);
                            std::thread::sleep(std::time::Duration::from_millis(100));
                            42
                        },
                        |_| {},
                    )
                    .unwrap()
                    .0
                })
            })
            .collect();
        for t in threads {
            assert_eq!(t.join().unwrap(), 42);
        }
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn a_panicking_leader_wakes_its_waiters() {
        let f: Arc<SingleFlight<u32, u64>> = Arc::new(SingleFlight::new());
        let f2 = f.clone();
        let leader = std::thread::spawn(move || {
            f2.run(
                &1,
                || {
                    std::thread::sleep(std::time::Duration::from_millis(200));
                    panic!("leader fails")
                },
                |_| {},
            )
        });
        std::thread::sleep(std::time::Duration::from_millis(50));
        let waiter = f.run(&1, || 5, |_| {});
        assert!(leader.join().is_err());
        // Either it waited for the panicking leader (None), or the leader was already gone.
        assert!(matches!(waiter, None | Some((5, true))));
        // The key is free again.
        assert_eq!(f.run(&1, || 9, |_| {}), Some((9, true)));
    }
}
