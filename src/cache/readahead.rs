//! How much to fetch, following the reader: per open file handle, the cache watches where
//! reads land.
//!
//! - A reader whose read follows its previous one is sequential: it gets whole chunks,
//!   and a readahead window that doubles (up to 32 MiB, set in `daemon::serve`) of chunks ahead fetched
//!   by the fetch threads, so source latency overlaps the reader's own work.
//! - The kernel sends a file's readahead as several requests at once, and the FUSE threads
//!   can take them out of order. A stream with readahead going keeps it through up to
//!   `REORDER_READS` reads in a row that land out of place (fetched whole, nothing queued),
//!   so one swapped pair does not turn a stream into a random reader fetching units.
//! - A reader that starts at offset 0 gets whole chunks too: that is how whole-file epoch
//!   readers begin, and it keeps their amplification at 1.
//! - Any other reader (h5py slices, parquet column chunks, memmap gathers) gets only the
//!   aligned units its read covers (1/64 of a chunk, at least 4 KiB), until it shows
//!   locality by reading in one chunk three times in a row: then whole chunks again.
//! - A random reader that has touched, in units, a quarter of the region its random reads
//!   span (through one open) is making a pass over that region (every block once, in any
//!   order): the rest of the region is then fetched whole in the background
//!   (`Stream::note_random`), so the pass stops paying one source round trip per read.
//!   Short random runs over a big file touch far less than a quarter of it and keep
//!   fetching units only.
//!
//! Sub-chunk pieces are kept by the SSD tier only (RAM keeps whole chunks).

use std::ops::Range;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Weak};

/// Per open file handle.
#[derive(Default)]
pub struct Stream {
    /// Last chunk index read + 1 (0 = nothing yet).
    next_chunk: AtomicU64,
    /// Byte offset where the last read ended + 1 (0 = nothing yet).
    next_offset: AtomicU64,
    /// Readahead window in chunks; 0 = not (yet) sequential.
    window: AtomicU64,
    /// Chunks below this index were already queued for readahead.
    queued_until: AtomicU64,
    /// Reads in a row that landed in the same chunk (locality without a stream).
    same_chunk: AtomicU64,
    /// Where the stream's last read in place ended + 1: out-of-place reads leave it, so
    /// the one a swapped request was waiting for still continues the stream.
    stream_end: AtomicU64,
    /// Where the furthest of those out-of-place reads ended + 1: once the stream catches
    /// up, the read after the one that overtook continues it too.
    overtaken_end: AtomicU64,
    /// Reads in a row that landed out of place while the stream kept its window.
    out_of_place: AtomicU64,
    /// Bytes random reads touched, rounded out to whole units (a random pass's progress).
    touched: AtomicU64,
    /// The chunks random reads landed in span `region_lo..region_hi` (+1 each; 0 = none).
    region_lo: AtomicU64,
    region_hi: AtomicU64,
    /// Chunks below this index were already considered for the background fill.
    fill_next: AtomicU64,
    /// Held by the handle only: background fills for it hold a `Weak` and stop once the
    /// handle is released.
    open: Arc<()>,
}

/// A random reader that touched 1/PASS_SHARE of the region its reads span (in units)
/// through one open is passing over it. A quarter: an 8 s cold run of random reads over a
/// 2 GiB file touches 2-23% of it through each open (docs/TUNING.md).
const PASS_SHARE: u64 = 4;

impl Stream {
    /// Counts a random read in chunks `read.first..=read.last` that touched `bytes`
    /// (rounded out to units). Returns the chunks its random reads span once this open
    /// has touched a quarter of them: a pass over that region.
    pub fn note_random(&self, read: Span, bytes: u64, chunk_size: u64) -> Option<Range<u64>> {
        let touched = self.touched.fetch_add(bytes, Relaxed) + bytes;
        let lo = match self.region_lo.load(Relaxed) {
            0 => read.first,
            l => (l - 1).min(read.first),
        };
        self.region_lo.store(lo + 1, Relaxed);
        let hi = self
            .region_hi
            .fetch_max(read.last + 2, Relaxed)
            .max(read.last + 2)
            - 1;
        (touched.saturating_mul(PASS_SHARE) >= (hi - lo) * chunk_size).then_some(lo..hi)
    }

    /// Takes the fill's cursor: the first chunk not yet considered.
    pub fn fill_from(&self) -> u64 {
        self.fill_next.load(Relaxed)
    }

    /// Moves the fill's cursor to `index` (only forward).
    pub fn fill_to(&self, index: u64) {
        self.fill_next.fetch_max(index, Relaxed);
    }

    /// A token that lives as long as this open.
    pub fn open_token(&self) -> Weak<()> {
        Arc::downgrade(&self.open)
    }
}

/// A read that starts at most this far past where the previous one ended still continues
/// its stream (readers skip small headers and padding).
const STREAM_GAP: u64 = 32 << 10;
/// Reads in a row within one chunk before a random reader gets whole chunks.
const LOCALITY_RUN: u64 = 3;
/// Out-of-place reads in a row a stream with readahead going (window of 2 or more) keeps
/// its window through: the kernel has a few requests of a file in flight at once.
const REORDER_READS: u64 = 3;

/// What to fetch for a read that misses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fetch {
    /// Whole chunks.
    Whole,
    /// Only the units the read covers.
    Units,
}

/// The decision for one read: what to fetch on a miss, and which chunks (if any) to
/// queue for readahead.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Advice {
    pub fetch: Fetch,
    pub readahead: std::ops::Range<u64>,
}

/// One read: bytes `offset..end`, in chunks `first..=last` of a file of `n_chunks`.
#[derive(Debug, Clone, Copy)]
pub struct Span {
    pub offset: u64,
    pub end: u64,
    pub first: u64,
    pub last: u64,
    pub n_chunks: u64,
}

/// Updates the stream for a read and says what to do. `max_window` caps the readahead
/// window (in chunks); `units_allowed`: whether a sub-chunk fetch can be kept (an SSD tier).
pub fn advise(stream: &Stream, read: Span, max_window: u64, units_allowed: bool) -> Advice {
    let Span {
        offset,
        end,
        first,
        last,
        n_chunks,
    } = read;
    let prev_next = stream.next_chunk.swap(last + 1, Relaxed);
    let prev_end = stream.next_offset.swap(end + 1, Relaxed);
    // Where this read starts relative to where a read ended: a stream goes on at (or a
    // little after) that point. The last read, or the stream's last read in place when
    // the last one was out of place (the kernel's requests taken out of order).
    let follows = |p: u64| p > 0 && offset + 1 >= p && offset + 1 - p <= STREAM_GAP;
    let stream_end = stream.stream_end.load(Relaxed);
    let overtaken_end = stream.overtaken_end.load(Relaxed);
    let continues = follows(prev_end) || follows(stream_end) || follows(overtaken_end);
    if !continues {
        let window = stream.window.load(Relaxed);
        if window >= 2 && stream.out_of_place.fetch_add(1, Relaxed) < REORDER_READS {
            // Out of place in a stream with readahead going: most likely a request that
            // overtook its neighbour. Whole chunks, the window kept, nothing queued.
            stream.overtaken_end.fetch_max(end + 1, Relaxed);
            return Advice {
                fetch: Fetch::Whole,
                readahead: 0..0,
            };
        }
        stream.out_of_place.store(0, Relaxed);
        stream.overtaken_end.store(0, Relaxed);
        stream.stream_end.store(end + 1, Relaxed);
        stream.window.store(0, Relaxed);
        stream.queued_until.store(0, Relaxed);
        let run = if prev_next == first + 1 {
            stream.same_chunk.fetch_add(1, Relaxed) + 1
        } else {
            stream.same_chunk.store(1, Relaxed);
            1
        };
        // A new reader at 0, or one that keeps reading in one chunk: whole chunks.
        let whole = !units_allowed
            || n_chunks <= 1
            || (prev_end == 0 && offset == 0)
            || run >= LOCALITY_RUN;
        return Advice {
            fetch: if whole { Fetch::Whole } else { Fetch::Units },
            readahead: 0..0,
        };
    }
    stream.same_chunk.store(0, Relaxed);
    stream.out_of_place.store(0, Relaxed);
    if follows(stream_end) || follows(overtaken_end) {
        let now = stream.stream_end.fetch_max(end + 1, Relaxed).max(end + 1);
        if overtaken_end > 0 && now >= overtaken_end {
            // Caught up with the reads that overtook: nothing out of place to remember
            // (only the value seen is cleared; another read may have set a new one).
            let _ = stream
                .overtaken_end
                .compare_exchange(overtaken_end, 0, Relaxed, Relaxed);
        }
    } else {
        // Continuing only the last read: a new stream (the reader went back), start there.
        stream.stream_end.store(end + 1, Relaxed);
        stream.queued_until.store(0, Relaxed);
    }
    // One read that continues the last is whole chunks; readahead starts with the second,
    // so a random reader that happens to land just after its last read fetches no more.
    let prev_window = stream.window.load(Relaxed);
    if prev_window == 0 {
        stream.window.store(1, Relaxed);
        return Advice {
            fetch: Fetch::Whole,
            readahead: 0..0,
        };
    }
    let w = (prev_window * 2).clamp(2, max_window.max(2));
    stream.window.store(w, Relaxed);
    let from = stream.queued_until.load(Relaxed).max(last + 1);
    let to = (last + 1 + w).min(n_chunks);
    if from >= to {
        return Advice {
            fetch: Fetch::Whole,
            readahead: 0..0,
        };
    }
    stream.queued_until.store(to, Relaxed);
    Advice {
        fetch: Fetch::Whole,
        readahead: from..to,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CS: u64 = 1 << 20;

    fn read(s: &Stream, off: u64, len: u64) -> Advice {
        let end = off + len;
        let span = Span {
            offset: off,
            end,
            first: off / CS,
            last: (end - 1) / CS,
            n_chunks: 100,
        };
        advise(s, span, 32, true)
    }

    #[test]
    fn whole_file_readers_get_whole_chunks_and_a_growing_window() {
        let s = Stream::default();
        assert_eq!(read(&s, 0, 128 << 10).fetch, Fetch::Whole);
        let a = read(&s, 128 << 10, 128 << 10);
        assert_eq!(a.fetch, Fetch::Whole);
        let mut off = 256 << 10;
        let mut last_window = 0;
        for _ in 0..40 {
            let a = read(&s, off, 1 << 20);
            assert_eq!(a.fetch, Fetch::Whole);
            if !a.readahead.is_empty() {
                last_window = a.readahead.end - a.readahead.start;
            }
            off += 1 << 20;
        }
        assert!(last_window >= 1, "readahead kept up");
    }

    #[test]
    fn a_stream_keeps_its_window_through_requests_taken_out_of_order() {
        const R: u64 = 128 << 10;
        let s = Stream::default();
        let mut off = 0;
        let mut queued_until = 0;
        for _ in 0..24 {
            let a = read(&s, off, R);
            assert_eq!(a.fetch, Fetch::Whole);
            queued_until = queued_until.max(a.readahead.end);
            off += R;
        }
        assert!(queued_until > 3, "readahead going: {queued_until}");
        // The kernel's next two requests, taken in the wrong order, at a chunk boundary.
        let (a, b) = (off, off + R);
        let overtaker = read(&s, b, R);
        assert_eq!(
            overtaker,
            Advice {
                fetch: Fetch::Whole,
                readahead: 0..0
            }
        );
        let late = read(&s, a, R);
        assert_eq!(late.fetch, Fetch::Whole);
        // The stream goes on where the overtaker ended, readahead and all.
        let next = read(&s, b + R, R);
        assert_eq!(next.fetch, Fetch::Whole);
        let mut off = b + 2 * R;
        let mut more = next.readahead.end;
        for _ in 0..16 {
            let a = read(&s, off, R);
            assert_eq!(a.fetch, Fetch::Whole);
            more = more.max(a.readahead.end);
            off += R;
        }
        assert!(
            more > queued_until,
            "readahead kept going: {more} vs {queued_until}"
        );
        assert_eq!(s.overtaken_end.load(Relaxed), 0, "caught up: forgotten");
        // Three requests in flight, taken last first.
        let base = off;
        for k in [2, 1, 0, 3, 4] {
            assert_eq!(read(&s, base + k * R, R).fetch, Fetch::Whole, "request {k}");
        }
        // A reader that leaves the stream for random reads: a few whole chunks, then units.
        let fetches: Vec<Fetch> = [71, 13, 55, 29, 90, 41]
            .into_iter()
            .map(|c| read(&s, c * CS + 4096, 4096).fetch)
            .collect();
        let whole = REORDER_READS as usize;
        assert!(
            fetches[..whole].iter().all(|f| *f == Fetch::Whole),
            "{fetches:?}"
        );
        assert!(
            fetches[whole..].iter().all(|f| *f == Fetch::Units),
            "{fetches:?}"
        );
        // ... and a reader going back to the start streams again.
        let t = Stream::default();
        for k in 0..24 {
            read(&t, k * R, R);
        }
        for k in 0..8 {
            assert_eq!(read(&t, k * R, R).fetch, Fetch::Whole);
        }
        assert!(
            !read(&t, 8 * R, R).readahead.is_empty(),
            "a new stream's readahead"
        );
    }

    #[test]
    fn a_random_reader_that_touched_a_quarter_of_its_span_is_passing_over_it() {
        let s = Stream::default();
        let at = |c: u64| Span {
            offset: c * CS,
            end: c * CS + 4096,
            first: c,
            last: c,
            n_chunks: 100,
        };
        const U: u64 = 16 << 10;
        assert_eq!(s.note_random(at(10), U, CS), None, "64 KiB of 1 MiB x 4");
        assert_eq!(s.note_random(at(17), U, CS), None, "chunks 10-17 now");
        // 2 MiB touched of the 8 MiB the reads span: a pass over chunks 10-17.
        assert_eq!(s.note_random(at(12), (2 << 20) - 2 * U, CS), Some(10..18));
        // A read further out widens the span to 31 chunks: not a pass (yet).
        assert_eq!(s.note_random(at(40), U, CS), None);
        assert_eq!(s.fill_from(), 0);
        s.fill_to(14);
        s.fill_to(12);
        assert_eq!(s.fill_from(), 14, "the cursor only moves forward");
    }

    #[test]
    fn random_readers_get_units_until_they_show_locality() {
        let s = Stream::default();
        assert_eq!(read(&s, 37 * CS + 4096, 4096).fetch, Fetch::Units);
        assert_eq!(read(&s, 5 * CS + 8192, 4096).fetch, Fetch::Units);
        // The next chunk, but far from where it left off: still random.
        assert_eq!(read(&s, 6 * CS + 700_000, 4096).fetch, Fetch::Units);
        assert!(read(&s, 7 * CS + 900_000, 4096).readahead.is_empty());
        // Three reads in a row in chunk 9, elsewhere each time: whole chunks.
        assert_eq!(read(&s, 9 * CS + 10_000, 4096).fetch, Fetch::Units);
        assert_eq!(read(&s, 9 * CS + 500_000, 4096).fetch, Fetch::Units);
        assert_eq!(read(&s, 9 * CS + 300_000, 4096).fetch, Fetch::Whole);
        // A small skip forward continues a stream.
        let t = Stream::default();
        read(&t, 0, 64 << 10);
        assert_eq!(read(&t, 72 << 10, 64 << 10).fetch, Fetch::Whole);
        // Without an SSD tier (no units), or for a one-chunk file: whole.
        let t = Stream::default();
        let s9 = Span {
            offset: 9 * CS,
            end: 9 * CS + 10,
            first: 9,
            last: 9,
            n_chunks: 100,
        };
        assert_eq!(advise(&t, s9, 32, false).fetch, Fetch::Whole);
        let u = Stream::default();
        let s0 = Span {
            offset: 700,
            end: 800,
            first: 0,
            last: 0,
            n_chunks: 1,
        };
        assert_eq!(advise(&u, s0, 32, true).fetch, Fetch::Whole);
    }
}
