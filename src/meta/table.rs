//! The node table: every directory entry the mount knows, in about 140 bytes each.
//!
//! At ImageNet scale (1.28 M files) and beyond, per-file metadata is the memory budget,
//! so the table stores each name once, in an arena, with a parent link instead of a full
//! path; nodes live in fixed-size blocks (no 2x slack when the table grows); a hash index
//! of (parent, name) holds only a 4-byte node index per entry; a directory's listing is a
//! sorted array of its children's indices. `bytes()` counts all of it for `meta.bytes`.
//!
//! A node is freed when nothing needs it: the kernel has forgotten it (`nlookup` 0), no
//! file handle has it open, no listing holds it and no node below it remains.

use std::collections::{HashMap, HashSet};

use hashbrown::HashTable;

use crate::source::Kind;

pub use super::attr::Attr;

/// Index of a node in the table.
pub type Idx = u32;
pub const NONE: Idx = u32::MAX;
pub const ROOT: Idx = 0;

const BLOCK: usize = 4096;
const ARENA_BLOCK: usize = 1 << 20;

/// Node flags.
pub const SUPERSEDED: u8 = 1;
/// Attributes are known (else only the name and kind, from a listing).
pub const HAS_ATTR: u8 = 2;
/// In its parent's listing (which holds a reference on it).
pub const LISTED: u8 = 4;
/// Waiting in the revalidation queue.
pub const QUEUED: u8 = 8;
/// Holds a cache reference: kept after the kernel forgets it, until the metadata budget
/// needs the room (then the least recently used go first).
pub const CACHED: u8 = 16;
/// Used since the budget's sweep last passed it.
pub const REFERENCED: u8 = 32;

/// One directory entry. Directories' listings are kept beside, in `Table::dirs`: they are
/// few, and every byte here is paid per file.
#[derive(Debug)]
pub struct Node {
    parent: Idx,
    name_off: u32,
    name_len: u8,
    pub kind: Kind,
    pub flags: u8,
    /// Seconds (the namespace's clock) when the attributes were last fetched.
    pub attr_at: u32,
    /// Kernel lookups not yet forgotten.
    pub nlookup: u32,
    /// Child nodes, open handles, and one if this node is in its parent's listing.
    refs: u32,
    pub attr: Attr,
}

impl Node {
    pub fn parent(&self) -> Idx {
        self.parent
    }
    pub fn has_attr(&self) -> bool {
        self.flags & HAS_ATTR != 0
    }
    pub fn superseded(&self) -> bool {
        self.flags & SUPERSEDED != 0
    }
}

/// A directory's listing: its children sorted by name, and when it was fetched.
#[derive(Debug)]
struct Listing {
    children: Box<[Idx]>,
    at: u32,
}

pub struct Table {
    blocks: Vec<Box<[Option<Node>]>>,
    /// Slots handed out so far (free ones are in `free`).
    next: usize,
    free: Vec<Idx>,
    /// Current nodes by (parent, name). Superseded nodes are not in it.
    index: HashTable<Idx>,
    arena: Vec<Vec<u8>>,
    /// Bytes of names that belong to freed nodes (for compaction).
    arena_garbage: usize,
    dirs: HashMap<Idx, Listing>,
    listing_entries: usize,
    live: usize,
    /// Where the budget's sweep goes on from.
    hand: usize,
}

fn key_hash(parent: Idx, name: &[u8]) -> u64 {
    xxhash_rust::xxh3::xxh3_64_with_seed(name, parent as u64)
}

fn arena_slice(arena: &[Vec<u8>], off: u32, len: u8) -> &[u8] {
    if len == 0 {
        return b"";
    }
    let block = off as usize / ARENA_BLOCK;
    let at = off as usize % ARENA_BLOCK;
    &arena[block][at..at + len as usize]
}

impl Default for Table {
    fn default() -> Self {
        Self::new()
    }
}

impl Table {
    /// A table holding the root directory only.
    pub fn new() -> Table {
        let mut t = Table {
            blocks: Vec::new(),
            next: 0,
            free: Vec::new(),
            index: HashTable::new(),
            arena: Vec::new(),
            arena_garbage: 0,
            dirs: HashMap::new(),
            listing_entries: 0,
            live: 0,
            hand: 0,
        };
        let root = t.alloc(Node {
            parent: NONE,
            name_off: 0,
            name_len: 0,
            kind: Kind::Dir,
            flags: 0,
            attr_at: 0,
            nlookup: 1,
            refs: 1,
            attr: Attr::default(),
        });
        debug_assert_eq!(root, ROOT);
        t
    }

    fn alloc(&mut self, node: Node) -> Idx {
        self.live += 1;
        let i = match self.free.pop() {
            Some(i) => i,
            None => {
                let i = self.next;
                self.next += 1;
                if i / BLOCK >= self.blocks.len() {
                    self.blocks.push((0..BLOCK).map(|_| None).collect());
                }
                i as Idx
            }
        };
        self.blocks[i as usize / BLOCK][i as usize % BLOCK] = Some(node);
        i
    }

    pub fn get(&self, i: Idx) -> Option<&Node> {
        self.blocks
            .get(i as usize / BLOCK)?
            .get(i as usize % BLOCK)?
            .as_ref()
    }

    pub fn get_mut(&mut self, i: Idx) -> Option<&mut Node> {
        self.blocks
            .get_mut(i as usize / BLOCK)?
            .get_mut(i as usize % BLOCK)?
            .as_mut()
    }

    pub fn name(&self, i: Idx) -> &[u8] {
        match self.get(i) {
            Some(n) => arena_slice(&self.arena, n.name_off, n.name_len),
            None => b"",
        }
    }

    fn store_name(&mut self, name: &[u8]) -> (u32, u8) {
        debug_assert!(!name.is_empty() && name.len() <= 255);
        let fits = self
            .arena
            .last()
            .is_some_and(|b| b.len() + name.len() <= ARENA_BLOCK);
        if !fits {
            self.arena.push(Vec::with_capacity(ARENA_BLOCK));
        }
        let block = self.arena.len() - 1;
        let b = self.arena.last_mut().expect("just ensured");
        let off = (block * ARENA_BLOCK + b.len()) as u32;
        b.extend_from_slice(name);
        (off, name.len() as u8)
    }

    /// The current child of `parent` named `name`.
    pub fn child(&self, parent: Idx, name: &[u8]) -> Option<Idx> {
        let h = key_hash(parent, name);
        self.index
            .find(h, |&i| {
                self.get(i).is_some_and(|n| {
                    n.parent == parent && arena_slice(&self.arena, n.name_off, n.name_len) == name
                })
            })
            .copied()
    }

    /// Adds a current child (the caller checked there is none). Names are 1 to 255 bytes
    /// (Linux's NAME_MAX); the caller refuses others.
    pub fn insert_child(&mut self, parent: Idx, name: &[u8], kind: Kind) -> Idx {
        let (name_off, name_len) = self.store_name(name);
        let idx = self.alloc(Node {
            parent,
            name_off,
            name_len,
            kind,
            flags: 0,
            attr_at: 0,
            nlookup: 0,
            refs: 0,
            attr: Attr::default(),
        });
        if let Some(p) = self.get_mut(parent) {
            p.refs += 1;
        }
        let h = key_hash(parent, name);
        let Table {
            index,
            blocks,
            arena,
            ..
        } = self;
        let rehash = |&i: &Idx| {
            let n = blocks[i as usize / BLOCK][i as usize % BLOCK]
                .as_ref()
                .expect("indexed nodes are live");
            key_hash(n.parent, arena_slice(arena, n.name_off, n.name_len))
        };
        index.insert_unique(h, idx, rehash);
        idx
    }

    fn unindex(&mut self, i: Idx) {
        let Some(n) = self.get(i) else { return };
        let h = key_hash(n.parent, arena_slice(&self.arena, n.name_off, n.name_len));
        if let Ok(e) = self.index.find_entry(h, |&x| x == i) {
            e.remove();
        }
    }

    /// Takes a node out of the index: its name now belongs to a newer node (or to none).
    /// It lives on, frozen, for the handles and kernel references that have it.
    pub fn supersede(&mut self, i: Idx) {
        match self.get(i) {
            Some(n) if !n.superseded() && i != ROOT => {}
            _ => return,
        }
        self.unindex(i);
        if let Some(n) = self.get_mut(i) {
            n.flags |= SUPERSEDED;
            // No use as cache any more: only its handles and the kernel keep it.
            if n.flags & CACHED != 0 {
                n.flags &= !CACHED;
                n.refs -= 1;
            }
        }
        // Its listing (if a folder) describes a folder no longer there.
        self.drop_listing(i);
        self.maybe_free(i);
    }

    /// Adds a kernel reference (a lookup reply).
    pub fn add_lookup(&mut self, i: Idx) {
        if let Some(n) = self.get_mut(i) {
            n.nlookup = n.nlookup.saturating_add(1);
        }
    }

    /// The kernel forgot `count` lookups.
    pub fn forget(&mut self, i: Idx, count: u64) {
        if i == ROOT {
            return;
        }
        if let Some(n) = self.get_mut(i) {
            n.nlookup = n.nlookup.saturating_sub(count.min(u32::MAX as u64) as u32);
        }
        self.maybe_free(i);
    }

    /// Keeps a node as cache (until the budget needs it) and marks it used.
    pub fn cache(&mut self, i: Idx) {
        if let Some(n) = self.get_mut(i) {
            if n.flags & CACHED == 0 {
                n.flags |= CACHED;
                n.refs += 1;
            }
            n.flags |= REFERENCED;
        }
    }

    /// An open handle references the node.
    pub fn hold(&mut self, i: Idx) {
        if let Some(n) = self.get_mut(i) {
            n.refs += 1;
        }
    }

    /// An open handle let go.
    pub fn unhold(&mut self, i: Idx) {
        if let Some(n) = self.get_mut(i) {
            n.refs = n.refs.saturating_sub(1);
        }
        self.maybe_free(i);
    }

    /// Frees a node nothing needs, and then its parent if that was all it held.
    pub fn maybe_free(&mut self, mut i: Idx) {
        loop {
            if i == ROOT {
                return;
            }
            let Some(n) = self.get(i) else { return };
            if n.nlookup > 0 || n.refs > 0 {
                return;
            }
            let (parent, len, superseded) = (n.parent, n.name_len, n.superseded());
            if !superseded {
                self.unindex(i);
            }
            self.drop_listing(i);
            self.arena_garbage += len as usize;
            self.blocks[i as usize / BLOCK][i as usize % BLOCK] = None;
            self.free.push(i);
            self.live -= 1;
            match self.get_mut(parent) {
                Some(p) => {
                    p.refs -= 1;
                    i = parent;
                }
                None => return,
            }
        }
    }

    /// The path of a node from the root ("" for the root), as bytes.
    pub fn path(&self, i: Idx) -> Option<Vec<u8>> {
        let mut parts: Vec<&[u8]> = Vec::new();
        let mut cur = i;
        while cur != ROOT {
            let n = self.get(cur)?;
            parts.push(arena_slice(&self.arena, n.name_off, n.name_len));
            cur = n.parent;
        }
        let mut out = Vec::with_capacity(parts.iter().map(|p| p.len() + 1).sum());
        for (k, p) in parts.iter().rev().enumerate() {
            if k > 0 {
                out.push(b'/');
            }
            out.extend_from_slice(p);
        }
        Some(out)
    }

    /// The children listed for `dir` (sorted by name) and when the listing was fetched.
    pub fn listing(&self, dir: Idx) -> Option<(&[Idx], u32)> {
        self.dirs.get(&dir).map(|l| (&l.children[..], l.at))
    }

    /// Sets `dir`'s listing to `children` (sorted here), each then holding a reference.
    /// The previous listing's references are dropped (and nodes freed if unneeded).
    pub fn set_listing(&mut self, dir: Idx, mut children: Vec<Idx>, at: u32) {
        children.sort_by(|&a, &b| self.name(a).cmp(self.name(b)));
        children.dedup();
        for &c in &children {
            if let Some(n) = self.get_mut(c)
                && n.flags & LISTED == 0
            {
                n.flags |= LISTED;
                n.refs += 1;
            }
        }
        self.listing_entries += children.len();
        let keep: HashSet<Idx> = children.iter().copied().collect();
        let old = self.dirs.insert(
            dir,
            Listing {
                children: children.into_boxed_slice(),
                at,
            },
        );
        if let Some(old) = old {
            self.listing_entries -= old.children.len();
            for &c in old.children.iter() {
                if !keep.contains(&c) {
                    self.unlist(c);
                }
            }
        }
    }

    /// Marks `dir`'s listing as fetched (confirmed unchanged) at `at`.
    pub fn renew_listing(&mut self, dir: Idx, at: u32) {
        if let Some(l) = self.dirs.get_mut(&dir) {
            l.at = at;
        }
    }

    fn unlist(&mut self, c: Idx) {
        if let Some(n) = self.get_mut(c)
            && n.flags & LISTED != 0
        {
            n.flags &= !LISTED;
            n.refs -= 1;
        }
        self.maybe_free(c);
    }

    /// Drops `dir`'s listing (a metadata budget's eviction, or the directory changed).
    pub fn drop_listing(&mut self, dir: Idx) {
        let Some(old) = self.dirs.remove(&dir) else {
            return;
        };
        self.listing_entries -= old.children.len();
        for &c in old.children.iter() {
            self.unlist(c);
        }
    }

    /// Binary search of a name in `dir`'s listing.
    pub fn listed(&self, dir: Idx, name: &[u8]) -> Option<Idx> {
        let (l, _) = self.listing(dir)?;
        l.binary_search_by(|&c| self.name(c).cmp(name))
            .ok()
            .map(|k| l[k])
    }

    /// Folders with a listing.
    pub fn listed_dirs(&self) -> impl Iterator<Item = Idx> + '_ {
        self.dirs.keys().copied()
    }

    pub fn live(&self) -> usize {
        self.live
    }

    /// Bytes the live nodes, their names, index entries and listings take (what the
    /// metadata budget is held to; `bytes` is what is allocated, at least this).
    pub fn live_bytes(&self) -> u64 {
        let arena: usize = self.arena.iter().map(|b| b.len()).sum::<usize>() - self.arena_garbage;
        (self.live * (std::mem::size_of::<Option<Node>>() + 8)
            + arena
            + self.listing_entries * std::mem::size_of::<Idx>()
            + self.dirs.len() * std::mem::size_of::<(Idx, Listing)>()) as u64
    }

    /// Frees the least recently used cache until the live bytes are at most `target`:
    /// listings of folders not used lately, then nodes nobody else holds. Returns what
    /// only the kernel still holds, as (parent, name), for the caller to ask the kernel
    /// to forget; at most `max_steps` slots are looked at.
    pub fn sweep(&mut self, target: u64, max_steps: usize) -> Vec<(Idx, Vec<u8>)> {
        let mut ask_kernel = Vec::new();
        let slots = self.next;
        if slots <= 1 {
            return ask_kernel;
        }
        for _ in 0..max_steps {
            if self.live_bytes() <= target {
                break;
            }
            self.hand = (self.hand + 1) % slots;
            let i = self.hand as Idx;
            if i == ROOT {
                continue;
            }
            let Some(n) = self.get_mut(i) else { continue };
            if n.flags & REFERENCED != 0 {
                n.flags &= !REFERENCED;
                continue;
            }
            let (cached, nlookup, superseded) = (n.flags & CACHED != 0, n.nlookup, n.superseded());
            if self.dirs.contains_key(&i) {
                self.drop_listing(i);
            }
            if cached && let Some(n) = self.get_mut(i) {
                n.flags &= !CACHED;
                n.refs -= 1;
            }
            let parent = self.get(i).map(|n| n.parent);
            self.maybe_free(i);
            if nlookup > 0
                && !superseded
                && let Some(p) = parent
                && self.get(i).is_some()
            {
                ask_kernel.push((p, self.name(i).to_vec()));
            }
        }
        ask_kernel
    }

    /// Bytes held by the table (what `meta.bytes` reports).
    pub fn bytes(&self) -> u64 {
        let nodes = self.blocks.len() * BLOCK * std::mem::size_of::<Option<Node>>();
        let arena: usize = self.arena.iter().map(|b| b.capacity()).sum();
        let index = self.index.allocation_size();
        let dirs = self.dirs.capacity() * (std::mem::size_of::<(Idx, Listing)>() + 1)
            + self.listing_entries * std::mem::size_of::<Idx>();
        let free = self.free.capacity() * std::mem::size_of::<Idx>();
        (nodes + arena + index + dirs + free) as u64
    }

    /// Rewrites the name arena without the names of freed nodes, when they are most of
    /// it. O(live nodes); the caller holds the table exclusively anyway.
    pub fn compact_names(&mut self) {
        let used: usize = self.arena.iter().map(|b| b.len()).sum();
        if self.arena_garbage < ARENA_BLOCK || self.arena_garbage * 2 < used {
            return;
        }
        let old = std::mem::take(&mut self.arena);
        for b in 0..self.blocks.len() {
            for k in 0..BLOCK {
                let Some((off, len)) = self.blocks[b][k].as_ref().map(|n| (n.name_off, n.name_len))
                else {
                    continue;
                };
                if len == 0 {
                    continue;
                }
                let bytes = arena_slice(&old, off, len).to_vec();
                let (no, _) = self.store_name(&bytes);
                if let Some(n) = self.blocks[b][k].as_mut() {
                    n.name_off = no;
                }
            }
        }
        self.arena_garbage = 0;
    }

    /// Every live node index (for persistence and sweeps).
    pub fn indices(&self) -> impl Iterator<Item = Idx> + '_ {
        self.blocks.iter().enumerate().flat_map(|(b, blk)| {
            blk.iter()
                .enumerate()
                .filter(|(_, s)| s.is_some())
                .map(move |(k, _)| (b * BLOCK + k) as Idx)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn children_are_found_by_name_and_paths_rebuilt() {
        let mut t = Table::new();
        let a = t.insert_child(ROOT, b"a", Kind::Dir);
        let f = t.insert_child(a, b"f.jpg", Kind::File);
        assert_eq!(t.child(ROOT, b"a"), Some(a));
        assert_eq!(t.child(a, b"f.jpg"), Some(f));
        assert_eq!(t.child(a, b"g"), None);
        assert_eq!(t.child(ROOT, b"f.jpg"), None);
        assert_eq!(t.path(f).unwrap(), b"a/f.jpg");
        assert_eq!(t.path(ROOT).unwrap(), b"");
        assert_eq!(t.live(), 3);
    }

    #[test]
    fn nodes_are_freed_when_nothing_needs_them() {
        let mut t = Table::new();
        let a = t.insert_child(ROOT, b"a", Kind::Dir);
        let f = t.insert_child(a, b"f", Kind::File);
        t.add_lookup(a);
        t.add_lookup(f);
        t.hold(f);
        t.forget(f, 1);
        assert!(t.get(f).is_some(), "open: kept");
        t.unhold(f);
        assert!(t.get(f).is_none(), "forgotten and closed: freed");
        assert!(t.get(a).is_some(), "the kernel still has the folder");
        t.forget(a, 1);
        assert!(t.get(a).is_none());
        assert_eq!(t.live(), 1);
        // Freed slots are reused.
        let b = t.insert_child(ROOT, b"b", Kind::Dir);
        assert!(b == a || b == f);
    }

    #[test]
    fn a_folder_stays_while_a_node_below_it_does() {
        let mut t = Table::new();
        let a = t.insert_child(ROOT, b"a", Kind::Dir);
        let f = t.insert_child(a, b"f", Kind::File);
        t.add_lookup(f);
        t.maybe_free(a);
        assert!(t.get(a).is_some());
        t.forget(f, 1);
        assert!(t.get(a).is_none() && t.get(f).is_none(), "freed bottom up");
    }

    #[test]
    fn superseded_nodes_leave_the_index_but_live_while_used() {
        let mut t = Table::new();
        let f = t.insert_child(ROOT, b"f", Kind::File);
        t.add_lookup(f);
        t.supersede(f);
        assert_eq!(t.child(ROOT, b"f"), None);
        let g = t.insert_child(ROOT, b"f", Kind::File);
        assert_ne!(f, g);
        assert_eq!(t.child(ROOT, b"f"), Some(g));
        assert!(t.get(f).unwrap().superseded());
        assert_eq!(t.path(f).unwrap(), b"f");
        t.forget(f, 1);
        assert!(t.get(f).is_none());
        assert_eq!(t.child(ROOT, b"f"), Some(g));
    }

    #[test]
    fn listings_hold_their_children_and_search_by_name() {
        let mut t = Table::new();
        let d = t.insert_child(ROOT, b"d", Kind::Dir);
        let names: Vec<String> = (0..1000).map(|i| format!("n{:04}", 999 - i)).collect();
        let kids: Vec<Idx> = names
            .iter()
            .map(|n| t.insert_child(d, n.as_bytes(), Kind::File))
            .collect();
        t.set_listing(d, kids.clone(), 1);
        let (l, _) = t.listing(d).unwrap();
        assert_eq!(t.name(l[0]), b"n0000");
        assert_eq!(t.listed(d, b"n0500"), t.child(d, b"n0500"));
        assert_eq!(t.listed(d, b"zzz"), None);
        // Nothing forgotten frees them while listed; dropping the listing does.
        assert_eq!(t.live(), 1002);
        t.drop_listing(d);
        assert_eq!(t.live(), 1, "children and then the folder freed");
    }

    #[test]
    fn names_are_compacted_and_bytes_counted() {
        let mut t = Table::new();
        let mut kept = Vec::new();
        for i in 0..200_000u32 {
            let n = t.insert_child(ROOT, format!("file-{i:08}").as_bytes(), Kind::File);
            if i % 10 == 0 {
                t.add_lookup(n);
                kept.push((n, i));
            } else {
                t.maybe_free(n);
            }
        }
        assert_eq!(t.live(), 1 + kept.len());
        let before = t.arena.len();
        t.compact_names();
        assert!(
            t.arena.len() < before,
            "{} blocks -> {}",
            before,
            t.arena.len()
        );
        for (n, i) in kept.iter().take(100) {
            assert_eq!(t.name(*n), format!("file-{i:08}").as_bytes());
            assert_eq!(t.child(ROOT, t.name(*n)), Some(*n));
        }
        assert!(t.bytes() > 0);
        let per_node = std::mem::size_of::<Option<Node>>();
        assert!(per_node <= 104, "a node takes {per_node} bytes");
    }
}
