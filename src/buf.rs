//! A page-aligned byte buffer for chunks.
//!
//! Why not `Vec<u8>`: a 1 MiB read into an unaligned buffer spans 257 pages, and a source
//! that bypasses the page cache (FUSE with direct I/O, O_DIRECT-style network clients)
//! splits it into two requests, each paying the source's latency. Aligned, it is one.
//!
//! Chunk-sized buffers come from 2 MiB regions the kernel may back with one huge page
//! (`MADV_HUGEPAGE`): a cold pass that fills a 2 GiB RAM tier otherwise takes 512 page
//! faults per 2 MiB, each zeroing 4 KiB, and on this machine that was a fifth of the
//! daemon's CPU and 5-15% of a cold stream's throughput (docs/TUNING.md, "Huge pages").

use std::alloc::{Layout, alloc_zeroed, dealloc, handle_alloc_error};
use std::collections::BTreeMap;
use std::ops::{Deref, DerefMut};
use std::ptr::NonNull;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::Ordering::Relaxed;

use parking_lot::Mutex;

const ALIGN: usize = 4096;
/// The size of a transparent huge page on x86-64 and of a slab.
const HUGE: usize = 2 << 20;
/// Buffers of a size dividing `HUGE`, at least this big, are slots of a slab (at most 8
/// per slab). Smaller ones are not worth a huge page between them.
const MIN_SLOT: usize = 256 << 10;

/// Bytes of freed memory kept for reuse (see `Buf::for_read`). Counted by the cache in
/// the memory it sets aside from the RAM budget.
pub const POOL_BYTES: usize = 16 << 20;
/// And at most this many (each `take` scans them under a lock).
const POOL_ENTRIES: usize = 64;

/// Freed buffers kept for reuse, and the slabs. A fresh page costs a fault and zeroing at
/// its first touch and a TLB flush when unmapped; at warm-read rates that is most of the
/// CPU. A chunk read from the SSD tier usually replaces one just evicted from RAM, so a
/// few recycled buffers go a long way.
static POOL: Mutex<Pool> = Mutex::new(Pool::new(POOL_BYTES));

/// Whether aligned mappings ask for huge pages (`--huge-pages`); when not, they refuse
/// them (`MADV_NOHUGEPAGE`), so THP `always` does not give them either.
static HUGE_PAGES: AtomicBool = AtomicBool::new(true);

/// Sets `--huge-pages` for mappings made from now on.
pub fn set_huge_pages(on: bool) {
    HUGE_PAGES.store(on, Relaxed);
}

/// Where a buffer's memory came from, so that it goes back the same way.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Origin {
    /// Nothing allocated (length 0).
    Empty,
    /// The global allocator (only when the kernel refuses mappings).
    Heap,
    /// A mapping of its own, exactly `cap` bytes.
    Mapping,
    /// A slot of a slab.
    Slot,
}

/// Memory the pool hands back to the kernel, once its lock is released.
#[derive(Debug, PartialEq, Eq)]
enum Release {
    /// munmap(address, bytes).
    Unmap(usize, usize),
    /// madvise(address, bytes, MADV_DONTNEED): the slot stays mapped, its pages go.
    Discard(usize, usize),
}

/// A 2 MiB region cut into equal slots (their size is in each pool entry and hole naming
/// it); bit i of each mask is slot i.
struct Slab {
    /// Slots held by a `Buf`.
    used: u8,
    /// Free slots whose pages were discarded (the rest of the free slots are in the
    /// pool's `free` list, resident).
    discarded: u8,
}

struct Pool {
    /// Freed memory kept resident, oldest first: (address, bytes, origin).
    free: Vec<(usize, usize, Origin)>,
    bytes: usize,
    limit: usize,
    /// Slabs by base address.
    slabs: BTreeMap<usize, Slab>,
    /// (base, slot size) of each slab with a discarded slot, once each.
    holes: Vec<(usize, usize)>,
}

fn slab_of(addr: usize) -> usize {
    addr & !(HUGE - 1)
}

fn bit(addr: usize, slot: usize) -> u8 {
    1 << ((addr - slab_of(addr)) / slot)
}

/// Whether buffers of `cap` bytes are slab slots.
fn is_slot(cap: usize) -> bool {
    (MIN_SLOT..HUGE).contains(&cap) && HUGE.is_multiple_of(cap)
}

impl Pool {
    const fn new(limit: usize) -> Pool {
        Pool {
            free: Vec::new(),
            bytes: 0,
            limit,
            slabs: BTreeMap::new(),
            holes: Vec::new(),
        }
    }

    /// Kept memory of exactly `cap` bytes, the most recently freed first.
    fn take(&mut self, cap: usize) -> Option<(usize, Origin)> {
        let i = self.free.iter().rposition(|&(_, c, _)| c == cap)?;
        let (addr, _, origin) = self.free.remove(i);
        self.bytes -= cap;
        if origin == Origin::Slot {
            self.slabs
                .get_mut(&slab_of(addr))
                .expect("a kept slot's slab")
                .used |= bit(addr, cap);
        }
        Some((addr, origin))
    }

    /// A discarded slot of `cap` bytes (zero-filled at its next touch), if a slab has one.
    fn take_discarded(&mut self, cap: usize) -> Option<usize> {
        let i = self.holes.iter().rposition(|&(_, c)| c == cap)?;
        let base = self.holes[i].0;
        let slab = self.slabs.get_mut(&base).expect("a hole's slab");
        let b = slab.discarded.trailing_zeros() as usize;
        slab.discarded &= !(1 << b);
        slab.used |= 1 << b;
        if slab.discarded == 0 {
            self.holes.swap_remove(i);
        }
        Some(base + b * cap)
    }

    /// Registers a fresh slab at `base` cut into `cap`-byte slots: the first is the
    /// caller's, the rest are kept as free (a huge page makes them resident with the
    /// first).
    fn add_slab(&mut self, base: usize, cap: usize) -> (usize, Vec<Release>) {
        self.slabs.insert(
            base,
            Slab {
                used: 1,
                discarded: 0,
            },
        );
        for i in 1..HUGE / cap {
            self.free.push((base + i * cap, cap, Origin::Slot));
            self.bytes += cap;
        }
        (base, self.trim())
    }

    /// Keeps freed memory, making room by letting the oldest kept go (a mix of odd sizes
    /// must not crowd out the chunk-size buffers that keep coming back).
    fn give(&mut self, addr: usize, cap: usize, origin: Origin) -> Vec<Release> {
        if origin == Origin::Slot {
            self.slabs
                .get_mut(&slab_of(addr))
                .expect("a slot's slab")
                .used &= !bit(addr, cap);
        } else if cap > self.limit {
            return vec![Release::Unmap(addr, cap)];
        }
        self.bytes += cap;
        self.free.push((addr, cap, origin));
        self.trim()
    }

    /// Lets the oldest kept memory go until the pool fits its limits. A slot goes back
    /// with its whole slab once no slot of it is held, else its pages are discarded.
    fn trim(&mut self) -> Vec<Release> {
        let mut out = Vec::new();
        while self.bytes > self.limit || self.free.len() > POOL_ENTRIES {
            let (addr, cap, origin) = self.free.remove(0);
            self.bytes -= cap;
            if origin != Origin::Slot {
                out.push(Release::Unmap(addr, cap));
                continue;
            }
            let base = slab_of(addr);
            let slab = self.slabs.get_mut(&base).expect("a kept slot's slab");
            if slab.used != 0 {
                if slab.discarded == 0 {
                    self.holes.push((base, cap));
                }
                slab.discarded |= bit(addr, cap);
                out.push(Release::Discard(addr, cap));
                continue;
            }
            // Every other free slot of this slab is kept or discarded: all go with it.
            self.slabs.remove(&base);
            self.holes.retain(|&(b, _)| b != base);
            let before = self.free.len();
            self.free
                .retain(|&(a, _, o)| o != Origin::Slot || slab_of(a) != base);
            self.bytes -= (before - self.free.len()) * cap;
            out.push(Release::Unmap(base, HUGE));
        }
        out
    }
}

/// Runs `f` on the pool and gives back the memory it lets go. Discards happen while the
/// lock is still held: a discarded slot can be handed out again as soon as the lock is
/// free, and discarding it then would zero its new owner's bytes. Unmaps happen after (an
/// unmapped range is in no pool list, so nothing can take it meanwhile).
fn with_pool<T>(f: impl FnOnce(&mut Pool) -> (T, Vec<Release>)) -> T {
    let (out, unmaps) = {
        let mut pool = POOL.lock();
        let (out, work) = f(&mut pool);
        let mut unmaps = Vec::new();
        for r in work {
            match r {
                // Safety: a free slot of a mapped slab; nobody holds it.
                Release::Discard(addr, len) => unsafe {
                    libc::madvise(addr as *mut libc::c_void, len, libc::MADV_DONTNEED);
                },
                Release::Unmap(addr, len) => unmaps.push((addr, len)),
            }
        }
        (out, unmaps)
    };
    unmap(unmaps);
    out
}

fn unmap(ranges: Vec<(usize, usize)>) {
    for (addr, len) in ranges {
        // Safety: mapped by `map`, and no Buf or pool entry refers to it any more.
        unsafe { libc::munmap(addr as *mut libc::c_void, len) };
    }
}

/// A fresh anonymous mapping of `len` bytes; with `huge`, aligned to `HUGE` and advised to
/// use huge pages (`len` a multiple of `HUGE`).
fn map(len: usize, huge: bool) -> Option<usize> {
    let span = if huge { len + HUGE } else { len };
    // Safety: an anonymous private mapping; the result is checked.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            span,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    if p == libc::MAP_FAILED || p.is_null() {
        return None;
    }
    let p = p as usize;
    if !huge {
        return Some(p);
    }
    // Keep the aligned `len` bytes inside the span; give back the ends.
    let start = (p + HUGE - 1) & !(HUGE - 1);
    let mut ends = vec![(start + len, p + span - start - len)];
    if start > p {
        ends.push((p, start - p));
    }
    unmap(ends);
    let advice = if HUGE_PAGES.load(Relaxed) {
        libc::MADV_HUGEPAGE
    } else {
        libc::MADV_NOHUGEPAGE
    };
    // Safety: advice on our own mapping; refused (THP off), it is a plain mapping.
    unsafe { libc::madvise(start as *mut libc::c_void, len, advice) };
    Some(start)
}

pub struct Buf {
    ptr: NonNull<u8>,
    len: usize,
    /// Bytes allocated.
    cap: usize,
    origin: Origin,
}

// Safety: Buf owns its allocation exclusively, like Vec<u8>.
unsafe impl Send for Buf {}
unsafe impl Sync for Buf {}

impl Buf {
    /// A zero-filled buffer of `len` bytes starting on a page boundary (for tests: reads
    /// overwrite what they use, so production code takes `for_read`).
    #[cfg(test)]
    pub fn zeroed(len: usize) -> Buf {
        let mut b = Buf::for_read(len);
        b.fill(0);
        b
    }

    /// A buffer of `len` bytes starting on a page boundary, to be filled by a read: its
    /// bytes are zeros or whatever a freed buffer held (initialised, never uninitialised
    /// memory). Callers overwrite it and `truncate` to what they filled.
    ///
    /// Mapped from the kernel, not from malloc: through malloc, chunks of small files
    /// (under its mmap threshold) fragmented the heap, and a 2 GiB RAM tier of small-file
    /// chunks peaked at 2.4 GiB RSS. Freed memory is given back whole, or kept in the pool.
    pub fn for_read(len: usize) -> Buf {
        if len == 0 {
            return Buf::from_parts(
                NonNull::<u8>::dangling().as_ptr() as usize,
                0,
                0,
                Origin::Empty,
            );
        }
        let cap = len.div_ceil(ALIGN) * ALIGN;
        let (kept, discarded) = {
            let mut pool = POOL.lock();
            match pool.take(cap) {
                Some(k) => (Some(k), None),
                None if is_slot(cap) => (None, pool.take_discarded(cap)),
                None => (None, None),
            }
        };
        if let Some((addr, origin)) = kept {
            return Buf::from_parts(addr, len, cap, origin);
        }
        if let Some(addr) = discarded {
            return Buf::from_parts(addr, len, cap, Origin::Slot);
        }
        if is_slot(cap) {
            if let Some(base) = map(HUGE, true) {
                let addr = with_pool(|pool| pool.add_slab(base, cap));
                return Buf::from_parts(addr, len, cap, Origin::Slot);
            }
        } else if let Some(addr) = map(cap, cap.is_multiple_of(HUGE)) {
            return Buf::from_parts(addr, len, cap, Origin::Mapping);
        }
        // Out of mappings (vm.max_map_count): the allocator still works.
        let layout = Layout::from_size_align(cap, ALIGN).expect("chunk size fits a layout");
        // Safety: the layout has a non-zero size.
        let ptr = unsafe { alloc_zeroed(layout) };
        if ptr.is_null() {
            handle_alloc_error(layout)
        }
        Buf::from_parts(ptr as usize, len, cap, Origin::Heap)
    }

    fn from_parts(addr: usize, len: usize, cap: usize, origin: Origin) -> Buf {
        Buf {
            ptr: NonNull::new(addr as *mut u8).expect("buffers are non-null"),
            len,
            cap,
            origin,
        }
    }

    /// Shortens the visible length (the allocation stays).
    pub fn truncate(&mut self, len: usize) {
        self.len = self.len.min(len);
    }
}

impl Deref for Buf {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        // Safety: ptr is valid for cap >= len initialised bytes.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }
}

impl DerefMut for Buf {
    fn deref_mut(&mut self) -> &mut [u8] {
        // Safety: as above, and we hold the only reference.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }
}

impl Drop for Buf {
    fn drop(&mut self) {
        let addr = self.ptr.as_ptr() as usize;
        match self.origin {
            Origin::Empty => {}
            // Safety: allocated in `for_read` with exactly this layout.
            Origin::Heap => unsafe {
                dealloc(
                    self.ptr.as_ptr(),
                    Layout::from_size_align_unchecked(self.cap, ALIGN),
                )
            },
            Origin::Mapping | Origin::Slot => {
                with_pool(|pool| ((), pool.give(addr, self.cap, self.origin)));
            }
        }
    }
}

impl std::fmt::Debug for Buf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Buf({} bytes)", self.len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: usize = 1 << 20;

    #[test]
    fn pool_reuses_same_size_mappings_and_drops_the_oldest() {
        let mut pool = Pool::new(3 * ALIGN);
        let m = Origin::Mapping;
        assert!(pool.give(0x1000, ALIGN, m).is_empty());
        assert!(pool.give(0x9000, 2 * ALIGN, m).is_empty());
        assert_eq!(pool.take(3 * ALIGN), None, "only an exact size is reused");
        // Full: the oldest goes.
        assert_eq!(
            pool.give(0x20000, ALIGN, m),
            vec![Release::Unmap(0x1000, ALIGN)]
        );
        assert_eq!(pool.take(2 * ALIGN), Some((0x9000, m)));
        assert_eq!(pool.take(2 * ALIGN), None);
        assert_eq!(pool.take(ALIGN), Some((0x20000, m)));
        assert_eq!(pool.bytes, 0);
        // Larger than the whole pool: handed straight back.
        assert_eq!(
            pool.give(0x40000, 4 * ALIGN, m),
            vec![Release::Unmap(0x40000, 4 * ALIGN)]
        );
    }

    #[test]
    fn a_slab_goes_back_whole_once_none_of_its_slots_is_held() {
        let mut pool = Pool::new(MIB);
        let base = 4 * HUGE;
        assert_eq!(pool.add_slab(base, MIB), (base, vec![]));
        assert_eq!(
            pool.take(MIB),
            Some((base + MIB, Origin::Slot)),
            "the second slot is kept"
        );
        assert!(pool.give(base, MIB, Origin::Slot).is_empty());
        // Both free and over the limit: the whole slab is unmapped, no slot of it kept.
        assert_eq!(
            pool.give(base + MIB, MIB, Origin::Slot),
            vec![Release::Unmap(base, HUGE)]
        );
        assert!(pool.free.is_empty() && pool.slabs.is_empty() && pool.holes.is_empty());
        assert_eq!(pool.bytes, 0);
    }

    #[test]
    fn a_free_slot_beside_a_held_one_is_discarded_then_reused() {
        let mut pool = Pool::new(MIB);
        let (a, b) = (4 * HUGE, 8 * HUGE);
        pool.add_slab(a, MIB);
        assert_eq!(pool.take(MIB), Some((a + MIB, Origin::Slot)));
        assert_eq!(pool.add_slab(b, MIB), (b, vec![]));
        // Over the limit: the oldest kept slot (b's second) is discarded, as b's first is
        // held; its slab stays.
        assert_eq!(
            pool.give(a, MIB, Origin::Slot),
            vec![Release::Discard(b + MIB, MIB)]
        );
        assert_eq!(
            pool.take_discarded(2 * MIB),
            None,
            "only the same slot size"
        );
        assert_eq!(pool.take_discarded(MIB), Some(b + MIB));
        assert_eq!(pool.take_discarded(MIB), None);
        assert_eq!(pool.slabs[&b].used, 0b11);
        // Freed again, the slab's last slot takes the whole slab with it.
        assert_eq!(
            pool.give(b + MIB, MIB, Origin::Slot),
            vec![Release::Discard(a, MIB)]
        );
        assert_eq!(
            pool.give(b, MIB, Origin::Slot),
            vec![Release::Unmap(b, HUGE)]
        );
        // Meanwhile a's first slot went out of the pool beside its held second.
        assert_eq!(pool.holes, vec![(a, MIB)]);
    }

    #[test]
    fn an_unmapped_slab_leaves_no_hole_behind() {
        let mut pool = Pool::new(MIB);
        let (a, b) = (4 * HUGE, 8 * HUGE);
        pool.add_slab(a, MIB);
        // b's free slot pushes a's out: a's first is held, so a's second is discarded.
        assert_eq!(
            pool.add_slab(b, MIB),
            (b, vec![Release::Discard(a + MIB, MIB)])
        );
        assert_eq!(pool.holes, vec![(a, MIB)]);
        assert_eq!(
            pool.give(a, MIB, Origin::Slot),
            vec![Release::Discard(b + MIB, MIB)]
        );
        assert_eq!(pool.holes, vec![(a, MIB), (b, MIB)]);
        // Nothing of a is held any more: a goes whole, its hole with it; then b.
        assert_eq!(
            pool.give(b, MIB, Origin::Slot),
            vec![Release::Unmap(a, HUGE)]
        );
        assert_eq!(pool.holes, vec![(b, MIB)]);
        assert_eq!(
            pool.give(0x1000, MIB, Origin::Mapping),
            vec![Release::Unmap(b, HUGE)]
        );
        assert!(pool.holes.is_empty() && pool.slabs.is_empty());
        assert_eq!(pool.take_discarded(MIB), None);
    }

    #[test]
    fn only_chunk_like_sizes_are_slots() {
        assert!(is_slot(MIB) && is_slot(MIB / 2) && is_slot(MIB / 4));
        assert!(!is_slot(MIB / 8) && !is_slot(HUGE) && !is_slot(3 * MIB / 4));
    }

    #[test]
    fn live_buffers_never_share_memory_while_others_come_and_go() {
        // Real buffers through the global pool: slots, odd sizes and huge mappings, freed
        // in an order that leaves slabs half held. Each keeps its own pattern.
        let sizes = [MIB, MIB / 2, 300 << 10, HUGE, MIB, MIB / 4, 4096, MIB];
        let mut live: Vec<(u8, Buf)> = Vec::new();
        for round in 0..40u32 {
            let len = sizes[round as usize % sizes.len()];
            let mut b = Buf::for_read(len);
            assert_eq!((b.len(), b.as_ptr() as usize % ALIGN), (len, 0));
            let tag = (round % 251) as u8;
            b.fill(tag);
            live.push((tag, b));
            if round % 3 == 2 {
                live.remove((round as usize * 7) % live.len());
            }
            for (tag, b) in &live {
                assert!(b.iter().all(|x| x == tag), "a live buffer was overwritten");
            }
        }
    }

    #[test]
    fn threads_freeing_and_taking_slots_never_lose_bytes() {
        // Threads take and free chunk buffers in bursts, out of order, so that slots beside
        // held ones are discarded while other threads take discarded slots: a discard that
        // landed after its slot was handed out again would zero a live buffer.
        std::thread::scope(|sc| {
            for t in 0..4u64 {
                sc.spawn(move || {
                    let mut rng = t * 0x9e37_79b9 + 1;
                    let mut next = || {
                        rng ^= rng << 13;
                        rng ^= rng >> 7;
                        rng ^= rng << 17;
                        rng
                    };
                    let mut live: Vec<(u8, Buf)> = Vec::new();
                    // Bursts: a burst of frees overflows the pool (discards), a burst of
                    // takes empties it and then takes discarded slots.
                    for i in 0..60u32 {
                        for j in 0..next() % 24 {
                            let tag = ((i * 24 + j as u32) % 250) as u8 + 1;
                            let mut b = Buf::for_read(MIB);
                            b.fill(tag);
                            live.push((tag, b));
                        }
                        for _ in 0..next() as usize % (live.len() + 1) {
                            let (tag, b) = live.swap_remove(next() as usize % live.len());
                            assert!(b.iter().all(|&x| x == tag), "a live buffer lost its bytes");
                        }
                    }
                    for (tag, b) in live {
                        assert!(b.iter().all(|&x| x == tag), "a live buffer lost its bytes");
                    }
                });
            }
        });
    }

    #[test]
    fn aligned_zeroed_and_truncatable() {
        for len in [0usize, 1, 4095, 4096, MIB, HUGE] {
            let mut b = Buf::zeroed(len);
            assert_eq!(b.len(), len);
            assert!(b.iter().all(|&x| x == 0));
            if len > 0 {
                assert_eq!(b.as_ptr() as usize % ALIGN, 0);
                b[len - 1] = 7;
                b.truncate(len / 2);
                assert_eq!(b.len(), len / 2);
            }
        }
    }
}
