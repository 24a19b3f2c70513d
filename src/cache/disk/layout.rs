//! The SSD tier's files on disk (cache format 3), and their encodings. Pinned by
//! golden-bytes tests: a change here must bump `FORMAT`.
//!
//! ```text
//! <cache-dir>/FORMAT                    "bicache-cache 3"
//! <cache-dir>/files/<aa>/<bb>/          two levels of 256 folders by key: at most a few
//!                                       thousand entries a folder even at 10 M files
//!     <key>-<len>-<xxh3>                a file held whole in one chunk (<= --chunk-size):
//!                                       exactly its bytes; the name says what they hash to
//!     <key>.data                        a larger file's bytes at their natural offsets,
//!                                       sparse while incomplete
//!     <key>.idx                         which ranges of <key>.data are present, with the
//!                                       xxh3 of each: a header, then 24-byte records
//! <cache-dir>/tmp/                      small files being written (renamed into place)
//! <cache-dir>/recency                   last use of each file, for eviction order across
//!                                       remounts (best effort: written at unmount)
//! ```
//!
//! Both kinds of file can be a FUSE passthrough backing file once complete: the bytes are
//! at their offsets, nothing else is in the file. A range counts as present only once its
//! record is in the `.idx`, written after the data was synced: a crash costs refetches,
//! never a wrong byte, and every read is checked against the record's checksum anyway.

use std::path::PathBuf;

use xxhash_rust::xxh3::xxh3_64;

pub const FORMAT: &str = "bicache-cache 3\n";
pub const FORMAT_FILE: &str = "FORMAT";
pub const FILES_DIR: &str = "files";
pub const TMP_DIR: &str = "tmp";
pub const RECENCY_FILE: &str = "recency";
/// Folders of earlier formats (bicache's own), removed when a cache dir is upgraded.
pub const OLD_FORMAT_DIRS: &[&str] = &["chunks-v1", "chunks-v2"];

/// The bucket folder of a key, relative to `files/`.
pub fn bucket(key: u128) -> PathBuf {
    let b = key.to_be_bytes();
    PathBuf::from(format!("{:02x}/{:02x}", b[0], b[1]))
}

pub fn small_name(key: u128, len: u32, sum: u64) -> String {
    format!("{key:032x}-{len:x}-{sum:016x}")
}

pub fn data_name(key: u128) -> String {
    format!("{key:032x}.data")
}

pub fn index_name(key: u128) -> String {
    format!("{key:032x}.idx")
}

/// What a file name in a bucket says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Name {
    Small { key: u128, len: u32, sum: u64 },
    Data(u128),
    Index(u128),
}

/// Parses a bucket entry's name; None for anything bicache does not write.
pub fn parse_name(name: &[u8]) -> Option<Name> {
    let name = std::str::from_utf8(name).ok()?;
    let hex128 = |s: &str| (s.len() == 32).then(|| u128::from_str_radix(s, 16).ok())?;
    if let Some(k) = name.strip_suffix(".data") {
        return Some(Name::Data(hex128(k)?));
    }
    if let Some(k) = name.strip_suffix(".idx") {
        return Some(Name::Index(hex128(k)?));
    }
    let mut parts = name.split('-');
    let key = hex128(parts.next()?)?;
    let len = u32::from_str_radix(parts.next()?, 16).ok()?;
    let sum = u64::from_str_radix(parts.next().filter(|p| p.len() == 16)?, 16).ok()?;
    if parts.next().is_some() || len > (64 << 20) || len == 0 {
        return None;
    }
    Some(Name::Small { key, len, sum })
}

/// The granularity at which a large file's ranges are tracked: 1/64 of a chunk, at least
/// a page. A random reader's fetch is rounded out to it (4 KiB reads of 1 MiB chunks pull
/// 16 KiB), so the record of what is present is one 64-bit mask per chunk.
pub fn unit(chunk_size: u64) -> u64 {
    (chunk_size.div_ceil(64)).div_ceil(4096).max(1) * 4096
}

/// Units of one chunk (at most 64).
pub fn units_per_chunk(chunk_size: u64) -> u32 {
    chunk_size.div_ceil(unit(chunk_size)) as u32
}

const IDX_MAGIC: &[u8; 8] = b"BCIDX\x003\n";
pub const IDX_HEADER: usize = 48;
pub const IDX_RECORD: usize = 24;

/// The `.idx` header: which file version, cut how.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IdxHeader {
    pub key: u128,
    pub size: u64,
    pub chunk_size: u32,
    pub unit: u32,
}

/// One present range of a `.data` file: units `first..first + units` of chunk `chunk`,
/// with the xxh3-64 of those bytes (clipped to the file's end). `units == 0` is a tombstone
/// that clears the chunk: the format has it so a chunk can be evicted by punching a hole,
/// but this version never writes one (it evicts whole files); it is read correctly.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Record {
    pub chunk: u32,
    pub first: u8,
    pub units: u8,
    pub sum: u64,
}

pub fn encode_header(h: &IdxHeader) -> [u8; IDX_HEADER] {
    let mut b = [0u8; IDX_HEADER];
    b[..8].copy_from_slice(IDX_MAGIC);
    b[8..24].copy_from_slice(&h.key.to_le_bytes());
    b[24..32].copy_from_slice(&h.size.to_le_bytes());
    b[32..36].copy_from_slice(&h.chunk_size.to_le_bytes());
    b[36..40].copy_from_slice(&h.unit.to_le_bytes());
    let sum = xxh3_64(&b[..40]);
    b[40..48].copy_from_slice(&sum.to_le_bytes());
    b
}

pub fn decode_header(b: &[u8]) -> Option<IdxHeader> {
    let b = b.get(..IDX_HEADER)?;
    if &b[..8] != IDX_MAGIC || u64::from_le_bytes(b[40..48].try_into().ok()?) != xxh3_64(&b[..40]) {
        return None;
    }
    Some(IdxHeader {
        key: u128::from_le_bytes(b[8..24].try_into().ok()?),
        size: u64::from_le_bytes(b[24..32].try_into().ok()?),
        chunk_size: u32::from_le_bytes(b[32..36].try_into().ok()?),
        unit: u32::from_le_bytes(b[36..40].try_into().ok()?),
    })
}

pub fn encode_record(r: &Record) -> [u8; IDX_RECORD] {
    let mut b = [0u8; IDX_RECORD];
    b[..4].copy_from_slice(&r.chunk.to_le_bytes());
    b[4] = r.first;
    b[5] = r.units;
    b[8..16].copy_from_slice(&r.sum.to_le_bytes());
    let sum = xxh3_64(&b[..16]);
    b[16..24].copy_from_slice(&sum.to_le_bytes());
    b
}

/// The records of an `.idx` body, up to the first one that is torn or damaged (a crash
/// while appending): those after it are ignored, and the file is cut there.
pub fn decode_records(body: &[u8]) -> (Vec<Record>, usize) {
    let mut out = Vec::new();
    let mut at = 0;
    while let Some(b) = body.get(at..at + IDX_RECORD) {
        if u64::from_le_bytes(b[16..24].try_into().expect("8 bytes")) != xxh3_64(&b[..16])
            || b[6..8] != [0, 0]
        {
            break;
        }
        out.push(Record {
            chunk: u32::from_le_bytes(b[..4].try_into().expect("4 bytes")),
            first: b[4],
            units: b[5],
            sum: u64::from_le_bytes(b[8..16].try_into().expect("8 bytes")),
        });
        at += IDX_RECORD;
    }
    (out, at)
}

const RECENCY_MAGIC: &[u8; 16] = b"bicache-recency4";
/// The previous recency format (no stamps): still read, its files then re-checked once.
const RECENCY3_MAGIC: &[u8; 16] = b"bicache-recency3";

/// What the recency file keeps of a cached file between mounts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Recency {
    pub key: u128,
    /// Last use, in minutes since the Unix epoch (eviction order).
    pub last_use: u32,
    /// Fingerprint of the cache file when last known good (0: unknown).
    pub stamp: u32,
}

/// magic (16) | count (8, LE) | count x (key 16 | last use 4 | stamp 4) | xxh3-64 of all
/// before it (8).
pub fn encode_recency(entries: &[Recency]) -> Vec<u8> {
    let mut out = Vec::with_capacity(32 + entries.len() * 24);
    out.extend_from_slice(RECENCY_MAGIC);
    out.extend_from_slice(&(entries.len() as u64).to_le_bytes());
    for r in entries {
        out.extend_from_slice(&r.key.to_le_bytes());
        out.extend_from_slice(&r.last_use.to_le_bytes());
        out.extend_from_slice(&r.stamp.to_le_bytes());
    }
    let sum = xxh3_64(&out);
    out.extend_from_slice(&sum.to_le_bytes());
    out
}

pub fn decode_recency(b: &[u8]) -> Option<Vec<Recency>> {
    let (body, sum) = b.split_at(b.len().checked_sub(8)?);
    if u64::from_le_bytes(sum.try_into().ok()?) != xxh3_64(body) {
        return None;
    }
    let width = match body.get(..16)? {
        m if m == RECENCY_MAGIC => 24,
        m if m == RECENCY3_MAGIC => 20,
        _ => return None,
    };
    let n = u64::from_le_bytes(body.get(16..24)?.try_into().ok()?) as usize;
    let rest = &body[24..];
    if rest.len() != n.checked_mul(width)? {
        return None;
    }
    let u32_at = |c: &[u8], at: usize| u32::from_le_bytes(c[at..at + 4].try_into().expect("4"));
    Some(
        rest.chunks_exact(width)
            .map(|c| Recency {
                key: u128::from_le_bytes(c[..16].try_into().expect("16 bytes")),
                last_use: u32_at(c, 16),
                stamp: if width == 24 { u32_at(c, 20) } else { 0 },
            })
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: u128 = 0x0102_0304_0506_0708_090a_0b0c_0d0e_0f10;

    #[test]
    fn golden_names() {
        assert_eq!(bucket(KEY), PathBuf::from("01/02"));
        let s = small_name(KEY, 5, xxh3_64(b"hello"));
        assert_eq!(s, "0102030405060708090a0b0c0d0e0f10-5-9555e8555c62dcfd");
        assert_eq!(
            parse_name(s.as_bytes()),
            Some(Name::Small {
                key: KEY,
                len: 5,
                sum: xxh3_64(b"hello")
            })
        );
        assert_eq!(data_name(KEY), "0102030405060708090a0b0c0d0e0f10.data");
        assert_eq!(
            parse_name(index_name(KEY).as_bytes()),
            Some(Name::Index(KEY))
        );
        for bad in [
            "",
            "lock",
            "0102030405060708090a0b0c0d0e0f10-3-5-9555e8555c62dcfd", // format 2
            "0102030405060708090a0b0c0d0e0f10-0-9555e8555c62dcfd",   // empty
            "0102030405060708090a0b0c0d0e0f1.data",
            "0102030405060708090a0b0c0d0e0f10-5-9555e8555c62dcf",
            "zz02030405060708090a0b0c0d0e0f10.idx",
        ] {
            assert_eq!(parse_name(bad.as_bytes()), None, "{bad}");
        }
    }

    #[test]
    fn golden_index_bytes() {
        let h = IdxHeader {
            key: KEY,
            size: 3 << 20,
            chunk_size: 1 << 20,
            unit: 16 << 10,
        };
        let hb = encode_header(&h);
        assert_eq!(
            hex(&hb),
            "424349445800330a100f0e0d0c0b0a090807060504030201000030000000000000001000004000001dcde8a3aec3e3fc"
        );
        assert_eq!(decode_header(&hb), Some(h));
        let r = Record {
            chunk: 2,
            first: 0,
            units: 64,
            sum: 0x1122_3344_5566_7788,
        };
        let rb = encode_record(&r);
        assert_eq!(hex(&rb), "02000000004000008877665544332211e4a3c4c75052c398");
        let mut body = rb.to_vec();
        body.extend_from_slice(&encode_record(&Record {
            chunk: 3,
            first: 1,
            units: 0,
            sum: 0,
        }));
        body.extend_from_slice(&rb[..10]); // torn
        let (recs, good) = decode_records(&body);
        assert_eq!(recs.len(), 2);
        assert_eq!(good, 2 * IDX_RECORD);
    }

    fn hex(b: &[u8]) -> String {
        b.iter().map(|x| format!("{x:02x}")).collect()
    }

    #[test]
    fn index_decoding_never_trusts_damage() {
        let h = encode_header(&IdxHeader {
            key: KEY,
            size: 10,
            chunk_size: 4096,
            unit: 4096,
        });
        for i in 0..IDX_HEADER {
            let mut b = h;
            b[i] ^= 0x40;
            assert_eq!(decode_header(&b), None, "header byte {i}");
        }
        let r = encode_record(&Record {
            chunk: 1,
            first: 2,
            units: 3,
            sum: 4,
        });
        for i in 0..IDX_RECORD {
            let mut b = r;
            b[i] ^= 0x01;
            assert!(decode_records(&b).0.is_empty(), "record byte {i}");
        }
    }

    #[test]
    fn units_cover_a_chunk_in_at_most_64() {
        assert_eq!(unit(1 << 20), 16 << 10);
        assert_eq!(units_per_chunk(1 << 20), 64);
        assert_eq!(unit(4096), 4096);
        assert_eq!(units_per_chunk(4096), 1);
        assert_eq!(unit(64 << 20), 1 << 20);
        for cs in [4096u64, 6000, 65536, 1 << 20, 1_500_000, 3 << 20, 64 << 20] {
            assert!(
                units_per_chunk(cs) <= 64 && unit(cs).is_multiple_of(4096),
                "{cs}"
            );
            assert!(unit(cs) * units_per_chunk(cs) as u64 >= cs);
        }
    }

    #[test]
    fn recency_round_trips_and_rejects_damage() {
        let e = vec![
            Recency {
                key: KEY,
                last_use: 7,
                stamp: 9,
            },
            Recency {
                key: u128::MAX,
                last_use: u32::MAX,
                stamp: u32::MAX,
            },
        ];
        let b = encode_recency(&e);
        assert_eq!(decode_recency(&b), Some(e));
        for i in 0..b.len() {
            let mut d = b.clone();
            d[i] ^= 0x08;
            assert_eq!(decode_recency(&d), None, "byte {i}");
        }
        assert_eq!(decode_recency(&b[..b.len() - 1]), None);
    }

    #[test]
    fn golden_recency_bytes() {
        // Pinned: a change to the recency format needs a new magic (and this test).
        let b = encode_recency(&[Recency {
            key: KEY,
            last_use: 0x0102_0304,
            stamp: 0x0a0b_0c0d,
        }]);
        let mut want = b"bicache-recency4".to_vec();
        want.extend_from_slice(&1u64.to_le_bytes());
        want.extend_from_slice(&KEY.to_le_bytes());
        want.extend_from_slice(&[4, 3, 2, 1, 0x0d, 0x0c, 0x0b, 0x0a]);
        let sum = xxh3_64(&want);
        want.extend_from_slice(&sum.to_le_bytes());
        assert_eq!(b, want);
        // Format 3's recency (no stamps) is still read.
        let mut old = b"bicache-recency3".to_vec();
        old.extend_from_slice(&1u64.to_le_bytes());
        old.extend_from_slice(&KEY.to_le_bytes());
        old.extend_from_slice(&7u32.to_le_bytes());
        let sum = xxh3_64(&old);
        old.extend_from_slice(&sum.to_le_bytes());
        let r = decode_recency(&old).unwrap();
        assert_eq!(
            r,
            [Recency {
                key: KEY,
                last_use: 7,
                stamp: 0
            }]
        );
    }
}
