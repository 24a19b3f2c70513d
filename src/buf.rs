//! A page-aligned byte buffer for chunks.
//!
//! Why not `Vec<u8>`: a 1 MiB read into an unaligned buffer spans 257 pages, and a source
//! that bypasses the page cache (FUSE with direct I/O, O_DIRECT-style network clients)
//! splits it into two requests, each paying the source's latency. Aligned, it is one.

use std::alloc::{Layout, alloc_zeroed, dealloc, handle_alloc_error};
use std::ops::{Deref, DerefMut};
use std::ptr::NonNull;

use parking_lot::Mutex;

const ALIGN: usize = 4096;

/// Bytes of freed mappings kept for reuse (see `Buf::for_read`). Counted by the cache in
/// the memory it sets aside from the RAM budget.
pub const POOL_BYTES: usize = 16 << 20;
/// And at most this many (each `take` scans them under a lock).
const POOL_ENTRIES: usize = 64;

/// Freed mappings, as (address, bytes). A fresh mapping costs a page fault per page at its
/// first touch (256 per MiB) and a TLB flush when unmapped; at warm-read rates that is
/// most of the CPU. A chunk read from the SSD tier usually replaces one just evicted from
/// RAM, so a few recycled mappings go a long way.
static POOL: Mutex<Pool> = Mutex::new(Pool::new(POOL_BYTES));

struct Pool {
    /// (address, bytes) of each kept mapping.
    free: Vec<(usize, usize)>,
    bytes: usize,
    limit: usize,
}

impl Pool {
    const fn new(limit: usize) -> Pool {
        Pool {
            free: Vec::new(),
            bytes: 0,
            limit,
        }
    }

    /// A kept mapping of exactly `cap` bytes, if any.
    fn take(&mut self, cap: usize) -> Option<usize> {
        let i = self.free.iter().rposition(|&(_, c)| c == cap)?;
        self.bytes -= cap;
        Some(self.free.remove(i).0)
    }

    /// Keeps a mapping, making room by dropping the oldest kept ones (a mix of odd sizes
    /// must not crowd out the chunk-size mappings that keep coming back). Returns the
    /// mappings the caller is to unmap.
    fn give(&mut self, addr: usize, cap: usize) -> Vec<(usize, usize)> {
        if cap > self.limit {
            return vec![(addr, cap)];
        }
        let mut dropped = 0;
        while self.bytes + cap > self.limit || self.free.len() - dropped >= POOL_ENTRIES {
            self.bytes -= self.free[dropped].1;
            dropped += 1;
        }
        let unmap = self.free.drain(..dropped).collect();
        self.bytes += cap;
        self.free.push((addr, cap));
        unmap
    }
}

pub struct Buf {
    ptr: NonNull<u8>,
    len: usize,
    /// Bytes allocated (0: nothing allocated).
    cap: usize,
    /// Mapped straight from the kernel (else from the global allocator).
    mapped: bool,
}

// Safety: Buf owns its allocation exclusively, like Vec<u8>.
unsafe impl Send for Buf {}
unsafe impl Sync for Buf {}

impl Buf {
    /// A zero-filled buffer of `len` bytes starting on a page boundary.
    ///
    /// Mapped from the kernel directly: zero pages for free, and given back whole when the
    /// chunk is evicted. Through malloc, chunks of small files (under its mmap threshold)
    /// fragmented the heap: a 2 GiB RAM tier of small-file chunks peaked at 2.4 GiB RSS.
    pub fn zeroed(len: usize) -> Buf {
        if len == 0 {
            return Buf {
                ptr: NonNull::dangling(),
                len: 0,
                cap: 0,
                mapped: false,
            };
        }
        let cap = len.div_ceil(ALIGN) * ALIGN;
        // Safety: an anonymous private mapping; the result is checked.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                cap,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if p != libc::MAP_FAILED
            && let Some(ptr) = NonNull::new(p as *mut u8)
        {
            return Buf {
                ptr,
                len,
                cap,
                mapped: true,
            };
        }
        // Out of mappings (vm.max_map_count): the allocator still works.
        let layout = Layout::from_size_align(len, ALIGN).expect("chunk size fits a layout");
        // Safety: the layout has a non-zero size.
        let ptr = unsafe { alloc_zeroed(layout) };
        let Some(ptr) = NonNull::new(ptr) else {
            handle_alloc_error(layout)
        };
        Buf {
            ptr,
            len,
            cap: len,
            mapped: false,
        }
    }

    /// A buffer of `len` bytes to be filled by a read: like `zeroed`, but may reuse a freed
    /// mapping, whose bytes are then whatever it held before (initialised, never
    /// uninitialised memory). Callers overwrite it and `truncate` to what they filled.
    pub fn for_read(len: usize) -> Buf {
        let cap = len.div_ceil(ALIGN) * ALIGN;
        if cap > 0 {
            let taken = POOL.lock().take(cap);
            if let Some(addr) = taken {
                return Buf {
                    ptr: NonNull::new(addr as *mut u8).expect("pooled mappings are non-null"),
                    len,
                    cap,
                    mapped: true,
                };
            }
        }
        Buf::zeroed(len)
    }

    /// Shortens the visible length (the allocation stays).
    pub fn truncate(&mut self, len: usize) {
        self.len = self.len.min(len);
    }
}

impl Deref for Buf {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        // Safety: ptr is valid for cap >= len initialised (zeroed) bytes.
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
        if self.mapped {
            let unmap = POOL.lock().give(self.ptr.as_ptr() as usize, self.cap);
            for (addr, cap) in unmap {
                // Safety: each was mapped in `zeroed` with exactly this length, and is
                // no longer referenced by any Buf or the pool.
                unsafe { libc::munmap(addr as *mut libc::c_void, cap) };
            }
        } else if self.cap > 0 {
            // Safety: allocated in `zeroed` with exactly this layout.
            unsafe {
                dealloc(
                    self.ptr.as_ptr(),
                    Layout::from_size_align_unchecked(self.cap, ALIGN),
                )
            };
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

    #[test]
    fn pool_reuses_same_size_mappings_and_drops_the_oldest() {
        let mut pool = Pool::new(3 * ALIGN);
        assert!(pool.give(0x1000, ALIGN).is_empty());
        assert!(pool.give(0x9000, 2 * ALIGN).is_empty());
        assert_eq!(pool.take(3 * ALIGN), None, "only an exact size is reused");
        // Full: the oldest goes.
        assert_eq!(pool.give(0x20000, ALIGN), vec![(0x1000, ALIGN)]);
        assert_eq!(pool.take(2 * ALIGN), Some(0x9000));
        assert_eq!(pool.take(2 * ALIGN), None);
        assert_eq!(pool.take(ALIGN), Some(0x20000));
        assert_eq!(pool.bytes, 0);
        // Larger than the whole pool: handed straight back.
        assert_eq!(pool.give(0x40000, 4 * ALIGN), vec![(0x40000, 4 * ALIGN)]);
    }

    #[test]
    fn buffers_for_reads_are_aligned_and_sized() {
        for len in [1usize, 4095, 4096, 1 << 20] {
            let mut b = Buf::for_read(len);
            assert_eq!(b.len(), len);
            assert_eq!(b.as_ptr() as usize % ALIGN, 0);
            b.fill(0x5a);
            drop(b);
        }
        // `zeroed` never hands out a recycled mapping.
        assert!(Buf::zeroed(1 << 20).iter().all(|&x| x == 0));
    }

    #[test]
    fn aligned_zeroed_and_truncatable() {
        for len in [0usize, 1, 4095, 4096, 1 << 20] {
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
