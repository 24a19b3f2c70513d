//! What the namespace knows, kept in the cache dir across remounts: under `--immutable`,
//! a remount, the next job on the node or a restarted daemon starts with the attributes
//! and listings already known, and sends (nearly) no metadata operation to the source
//! before its first read.
//!
//! Only under `--immutable`: the contract promises that a file changed at the source is
//! always served fresh after a remount, and a file rewritten in place is seen only by a
//! stat of that very file. Without `--immutable` the file is written (it may serve a later
//! `--immutable` mount) but not read.
//!
//! Format (`<cache-dir>/namespace`, little-endian; the record bytes are pinned by
//! `golden_attr_and_kind_bytes`, the whole file by a save/load round trip in meta/tests.rs):
//!
//! ```text
//! "bicache-namespace 1\n"                        magic
//! u16 len, bytes                                 the canonical source path
//! u64                                            written at (ms since the Unix epoch)
//! attr                                           the root's attributes (75 bytes)
//! u32                                            root listing age (ds; u32::MAX: none)
//! u64                                            records that follow
//! per record (parents before children):
//!   u32 parent (record number; 0 = the root, records count from 1)
//!   u8 kind, u8 flags (1 attributes, 2 in its parent's listing, 4 has a listing)
//!   u8 name length, name
//!   attributes (75 bytes) and u32 attribute age (ds), or u64 inode number alone
//!   u32 listing age (ds), when it has a listing
//! u64                                            xxh3-64 of everything above
//! ```
//!
//! A file that does not check out (damaged, truncated, another source, another format) is
//! ignored: the namespace starts empty, as without it.

use std::collections::HashMap;
use std::io::{self, BufReader, Read, Write};
use std::os::unix::ffi::OsStrExt;

use nix::fcntl::OFlag;
use tracing::{info, warn};
use xxhash_rust::xxh3::Xxh3;

use super::Inner;
use super::table::{Attr, HAS_ATTR, Idx, LISTED, ROOT, Table};
use crate::cachedir::PrivateDir;
use crate::source::Kind;

const FILE: &str = "namespace";
const MAGIC: &[u8] = b"bicache-namespace 1\n";
const F_ATTR: u8 = 1;
const F_LISTED: u8 = 2;
const F_LISTING: u8 = 4;
const NO_AGE: u32 = u32::MAX;

fn kind_byte(k: Kind) -> u8 {
    match k {
        Kind::File => 0,
        Kind::Dir => 1,
        Kind::Symlink => 2,
        Kind::Fifo => 3,
        Kind::CharDev => 4,
        Kind::BlockDev => 5,
        Kind::Socket => 6,
    }
}

fn byte_kind(b: u8) -> Option<Kind> {
    Some(match b {
        0 => Kind::File,
        1 => Kind::Dir,
        2 => Kind::Symlink,
        3 => Kind::Fifo,
        4 => Kind::CharDev,
        5 => Kind::BlockDev,
        6 => Kind::Socket,
        _ => return None,
    })
}

/// Writes everything into a hasher too.
struct Hashed<'a> {
    w: &'a mut dyn Write,
    h: Xxh3,
}

impl Hashed<'_> {
    fn put(&mut self, b: &[u8]) -> io::Result<()> {
        self.h.update(b);
        self.w.write_all(b)
    }
}

fn encode_attr(a: &Attr) -> [u8; 75] {
    let mut b = [0u8; 75];
    let mut at = 0;
    let mut put = |x: &[u8]| {
        b[at..at + x.len()].copy_from_slice(x);
        at += x.len();
    };
    put(&a.size.to_le_bytes());
    put(&a.blocks.to_le_bytes());
    put(&a.mtime_s.to_le_bytes());
    put(&a.ctime_s.to_le_bytes());
    put(&a.atime_s.to_le_bytes());
    put(&a.mtime_n.to_le_bytes());
    put(&a.ctime_n.to_le_bytes());
    put(&a.atime_n.to_le_bytes());
    put(&a.src_ino.to_le_bytes());
    put(&a.nlink.to_le_bytes());
    put(&a.uid.to_le_bytes());
    put(&a.gid.to_le_bytes());
    put(&a.perm.to_le_bytes());
    put(&[a.blksize_log2]);
    b
}

fn decode_attr(b: &[u8; 75]) -> Attr {
    let u64_at = |i: usize| u64::from_le_bytes(b[i..i + 8].try_into().expect("8"));
    let u32_at = |i: usize| u32::from_le_bytes(b[i..i + 4].try_into().expect("4"));
    Attr {
        size: u64_at(0),
        blocks: u64_at(8),
        mtime_s: u64_at(16) as i64,
        ctime_s: u64_at(24) as i64,
        atime_s: u64_at(32) as i64,
        mtime_n: u32_at(40),
        ctime_n: u32_at(44),
        atime_n: u32_at(48),
        src_ino: u64_at(52),
        nlink: u32_at(60),
        uid: u32_at(64),
        gid: u32_at(68),
        perm: u16::from_le_bytes(b[72..74].try_into().expect("2")),
        blksize_log2: b[74],
    }
}

/// Deciseconds since `at` on the namespace's clock (NO_AGE for "never").
fn age(inner: &Inner, at: u32) -> u32 {
    if at == 0 {
        NO_AGE
    } else {
        inner.now().saturating_sub(at).min(NO_AGE - 1)
    }
}

fn source_key(inner: &Inner) -> Vec<u8> {
    std::fs::canonicalize(inner.source.root_path())
        .unwrap_or_else(|_| inner.source.root_path().to_path_buf())
        .as_os_str()
        .as_bytes()
        .to_vec()
}

/// Live, current nodes, parents before children.
fn in_order(t: &Table) -> Vec<Idx> {
    let mut depth: HashMap<Idx, u32> = HashMap::new();
    let mut nodes: Vec<(u32, Idx)> = Vec::new();
    for i in t.indices() {
        if i == ROOT || t.get(i).is_none_or(|n| n.superseded()) {
            continue;
        }
        // Depth by walking up; a node whose chain is broken (a superseded folder above)
        // is left out.
        let mut d = 0;
        let mut cur = i;
        let mut ok = true;
        while cur != ROOT {
            if let Some(&known) = depth.get(&cur) {
                d += known;
                break;
            }
            match t.get(cur) {
                Some(n) if !n.superseded() => {
                    d += 1;
                    cur = n.parent();
                }
                _ => {
                    ok = false;
                    break;
                }
            }
        }
        if ok {
            depth.insert(i, d);
            nodes.push((d, i));
        }
    }
    nodes.sort_unstable();
    nodes.into_iter().map(|(_, i)| i).collect()
}

pub(super) fn save(inner: &Inner, dir: &PrivateDir) {
    let started = std::time::Instant::now();
    // The root's inode number tells the next mount whether it is the same dataset.
    if inner.table.read().get(ROOT).is_some_and(|r| !r.has_attr())
        && let Ok(st) = inner.source.lstat(std::path::Path::new(""))
    {
        let mut t = inner.table.write();
        let now = inner.now();
        let r = t.get_mut(ROOT).expect("the root");
        r.attr = Attr::of(&st);
        r.attr_at = now;
        r.flags |= HAS_ATTR;
    }
    let t = inner.table.read();
    let order = in_order(&t);
    let mut record: HashMap<Idx, u32> = HashMap::with_capacity(order.len() + 1);
    record.insert(ROOT, 0);
    let write = |w: &mut dyn Write| -> io::Result<()> {
        let mut out = Hashed { w, h: Xxh3::new() };
        out.put(MAGIC)?;
        let key = source_key(inner);
        out.put(&(key.len() as u16).to_le_bytes())?;
        out.put(&key)?;
        out.put(&crate::clock::now_ms().to_le_bytes())?;
        let root = t.get(ROOT).expect("the root is always there");
        out.put(&encode_attr(&root.attr))?;
        out.put(
            &t.listing(ROOT)
                .map_or(NO_AGE, |(_, at)| age(inner, at))
                .to_le_bytes(),
        )?;
        out.put(&(order.len() as u64).to_le_bytes())?;
        for (k, &i) in order.iter().enumerate() {
            let n = t.get(i).expect("live");
            let parent = record[&n.parent()];
            record.insert(i, k as u32 + 1);
            let listing = t.listing(i);
            let mut flags = 0;
            if n.has_attr() {
                flags |= F_ATTR;
            }
            if n.flags & LISTED != 0 {
                flags |= F_LISTED;
            }
            if listing.is_some() {
                flags |= F_LISTING;
            }
            let name = t.name(i);
            out.put(&parent.to_le_bytes())?;
            out.put(&[kind_byte(n.kind), flags, name.len() as u8])?;
            out.put(name)?;
            if n.has_attr() {
                out.put(&encode_attr(&n.attr))?;
                out.put(&age(inner, n.attr_at).to_le_bytes())?;
            } else {
                out.put(&n.attr.src_ino.to_le_bytes())?;
            }
            if let Some((_, at)) = listing {
                out.put(&age(inner, at).to_le_bytes())?;
            }
        }
        let sum = out.h.digest();
        out.w.write_all(&sum.to_le_bytes())
    };
    match dir.write_atomic_with(FILE, write) {
        Ok(()) => info!(
            entries = order.len(),
            elapsed_ms = started.elapsed().as_millis() as u64,
            "namespace kept for the next mount"
        ),
        Err(e) => warn!("cannot keep the namespace for the next mount: {e}"),
    }
}

/// Reads into a hasher too; `None` at the first short read.
struct Reading<R: Read> {
    r: R,
    h: Xxh3,
}

impl<R: Read> Reading<R> {
    fn take(&mut self, buf: &mut [u8]) -> Option<()> {
        self.r.read_exact(buf).ok()?;
        self.h.update(buf);
        Some(())
    }
    fn u8(&mut self) -> Option<u8> {
        let mut b = [0u8; 1];
        self.take(&mut b)?;
        Some(b[0])
    }
    fn u16(&mut self) -> Option<u16> {
        let mut b = [0u8; 2];
        self.take(&mut b)?;
        Some(u16::from_le_bytes(b))
    }
    fn u32(&mut self) -> Option<u32> {
        let mut b = [0u8; 4];
        self.take(&mut b)?;
        Some(u32::from_le_bytes(b))
    }
    fn u64(&mut self) -> Option<u64> {
        let mut b = [0u8; 8];
        self.take(&mut b)?;
        Some(u64::from_le_bytes(b))
    }
    fn attr(&mut self) -> Option<Attr> {
        let mut b = [0u8; 75];
        self.take(&mut b)?;
        Some(decode_attr(&b))
    }
}

/// When something `age_ds` old at a save `saved_ms_ago` ago was fetched, on this mount's
/// clock (1: older than the mount itself).
fn fetched_at(inner: &Inner, age_ds: u32, saved_ms_ago: u64) -> u32 {
    if age_ds == NO_AGE {
        return 0;
    }
    let total = age_ds as u64 + saved_ms_ago / 100;
    (inner.now() as u64).saturating_sub(total).max(1) as u32
}

pub(super) fn load(inner: &Inner, dir: &PrivateDir) -> usize {
    let started = std::time::Instant::now();
    let Ok(f) = dir.open_file(FILE, OFlag::O_RDONLY) else {
        return 0;
    };
    let mut t = Table::new();
    let loaded = (|| -> Option<usize> {
        let mut r = Reading {
            r: BufReader::with_capacity(1 << 20, f),
            h: Xxh3::new(),
        };
        let mut magic = vec![0u8; MAGIC.len()];
        r.take(&mut magic)?;
        if magic != MAGIC {
            return None;
        }
        let klen = r.u16()? as usize;
        let mut key = vec![0u8; klen];
        r.take(&mut key)?;
        if key != source_key(inner) {
            return None;
        }
        let written = r.u64()?;
        let saved_ago = crate::clock::now_ms().saturating_sub(written);
        let root_attr = r.attr()?;
        // Another dataset mounted at the same path: nothing of it holds.
        let now_root = inner.source.lstat(std::path::Path::new("")).ok()?;
        if now_root.ino() != root_attr.src_ino {
            return None;
        }
        let root_listing = r.u32()?;
        let count = r.u64()?;
        let mut by_record: Vec<Idx> = Vec::with_capacity(count.min(1 << 26) as usize + 1);
        by_record.push(ROOT);
        let mut listed: HashMap<Idx, (Vec<Idx>, u32)> = HashMap::new();
        if root_listing != NO_AGE {
            listed.insert(
                ROOT,
                (Vec::new(), fetched_at(inner, root_listing, saved_ago)),
            );
        }
        for _ in 0..count {
            let parent = *by_record.get(r.u32()? as usize)?;
            let kind = byte_kind(r.u8()?)?;
            let flags = r.u8()?;
            let nlen = r.u8()? as usize;
            if nlen == 0 {
                return None;
            }
            let mut name = vec![0u8; nlen];
            r.take(&mut name)?;
            if name.contains(&b'/')
                || name == b"."
                || name == b".."
                || t.child(parent, &name).is_some()
            {
                return None;
            }
            if t.get(parent).is_none_or(|p| p.kind != Kind::Dir) {
                return None;
            }
            let i = t.insert_child(parent, &name, kind);
            if flags & F_ATTR != 0 {
                let a = r.attr()?;
                let at = fetched_at(inner, r.u32()?, saved_ago);
                let n = t.get_mut(i).expect("just made");
                n.attr = a;
                n.attr_at = at;
                n.flags |= HAS_ATTR;
            } else {
                let ino = r.u64()?;
                t.get_mut(i).expect("just made").attr.src_ino = ino;
            }
            if flags & F_LISTING != 0 {
                listed.insert(i, (Vec::new(), fetched_at(inner, r.u32()?, saved_ago)));
            }
            if flags & F_LISTED != 0
                && let Some(l) = listed.get_mut(&parent)
            {
                l.0.push(i);
            }
            t.cache(i);
            by_record.push(i);
        }
        let expect = r.h.digest();
        let mut sum = [0u8; 8];
        r.r.read_exact(&mut sum).ok()?;
        if u64::from_le_bytes(sum) != expect {
            return None;
        }
        for (d, (children, at)) in listed {
            t.set_listing(d, children, at);
        }
        let root = t.get_mut(ROOT).expect("the root");
        root.attr = Attr::of(&now_root);
        root.attr_at = inner.now();
        root.flags |= HAS_ATTR;
        Some(count as usize)
    })();
    match loaded {
        Some(n) => {
            let mut live = inner.table.write();
            *live = t;
            inner.publish_counts(&live);
            info!(
                entries = n,
                elapsed_ms = started.elapsed().as_millis() as u64,
                "namespace of the last mount loaded"
            );
            n
        }
        None => {
            warn!("the namespace kept by the last mount does not check out; starting empty");
            0
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The bytes of an attribute record and of a kind are what older namespace files hold:
    /// a change here needs a new MAGIC, or remounts misread their saved namespace.
    #[test]
    fn golden_attr_and_kind_bytes() {
        let a = Attr {
            size: 0x0102030405060708,
            blocks: 9,
            mtime_s: 1_700_000_000,
            ctime_s: -2,
            atime_s: 3,
            mtime_n: 999_999_999,
            ctime_n: 5,
            atime_n: 6,
            src_ino: 0xAABBCCDDEEFF0011,
            nlink: 2,
            uid: 1000,
            gid: 100,
            perm: 0o104755,
            blksize_log2: 12,
        };
        let golden = "0807060504030201090000000000000000f1536500000000feffffffffffffff03000000\
                      00000000ffc99a3b05000000060000001100ffeeddccbbaa02000000e803000064000000\
                      ed890c";
        let hex: String = encode_attr(&a).iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(hex, golden);
        assert_eq!(decode_attr(&encode_attr(&a)), a);
        assert_eq!(MAGIC, b"bicache-namespace 1\n");
        let kinds = [
            Kind::File,
            Kind::Dir,
            Kind::Symlink,
            Kind::Fifo,
            Kind::CharDev,
            Kind::BlockDev,
            Kind::Socket,
        ];
        for (b, k) in kinds.into_iter().enumerate() {
            assert_eq!(kind_byte(k), b as u8);
            assert_eq!(byte_kind(b as u8), Some(k));
        }
        assert_eq!(byte_kind(7), None);
        assert_eq!((F_ATTR, F_LISTED, F_LISTING, NO_AGE), (1, 2, 4, u32::MAX));
    }
}
