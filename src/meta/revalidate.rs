//! The namespace's own thread: what is past the metadata TTL is revalidated here, at
//! most `--revalidate-rate` source operations a second, folders first; the metadata
//! budget is kept; and the kernel is told about names that no longer lead where they did.
//!
//! Why folders first: a file replaced by rename (rsync, `tar x`, most tools) changes its
//! folder's mtime, and one readdir of the folder then shows every replaced entry (another
//! inode behind the name). Files rewritten in place leave their folder alone; the file
//! queue catches them, at the rate the user allows. A change is seen within the TTL plus
//! the time the queue takes to reach it (docs/RELIABILITY.md, staleness).

use std::collections::VecDeque;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::sync::Weak;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};

use super::table::{Idx, QUEUED, ROOT, Table};
use super::{Inner, ino_of};
use crate::source::Kind;

#[derive(Default)]
struct State {
    dirs: VecDeque<Idx>,
    files: VecDeque<Idx>,
    /// Names the kernel should look up again: (parent, name).
    hints: Vec<(Idx, Vec<u8>)>,
}

#[derive(Default)]
pub(super) struct Queue {
    state: Mutex<State>,
    cond: Condvar,
}

impl Queue {
    /// Queues a node for revalidation, once (its QUEUED flag says it waits).
    pub fn push(&self, t: &mut Table, i: Idx) {
        let Some(n) = t.get_mut(i) else { return };
        if n.flags & QUEUED != 0 {
            return;
        }
        n.flags |= QUEUED;
        let dir = n.kind == Kind::Dir;
        let mut s = self.state.lock();
        if dir {
            s.dirs.push_back(i);
        } else {
            s.files.push_back(i);
        }
        self.cond.notify_one();
    }

    /// The kernel is to forget what `name` in `parent` led to.
    pub fn hint(&self, parent: Idx, name: Vec<u8>) {
        self.state.lock().hints.push((parent, name));
        self.cond.notify_one();
    }

    pub fn wake(&self) {
        self.cond.notify_all();
    }

    /// The next node to revalidate (folders first) and the hints gathered, waiting at
    /// most until `until` for either.
    fn take(&self, until: Instant, want_node: bool) -> (Option<Idx>, Vec<(Idx, Vec<u8>)>) {
        let mut s = self.state.lock();
        loop {
            let hints = std::mem::take(&mut s.hints);
            let node = if want_node {
                s.dirs.pop_front().or_else(|| s.files.pop_front())
            } else {
                None
            };
            if node.is_some() || !hints.is_empty() || Instant::now() >= until {
                return (node, hints);
            }
            if self.cond.wait_until(&mut s, until).timed_out() {
                let hints = std::mem::take(&mut s.hints);
                return (None, hints);
            }
        }
    }

    /// Nodes waiting.
    pub fn len(&self) -> usize {
        let s = self.state.lock();
        s.dirs.len() + s.files.len()
    }
}

/// How often the metadata budget is checked.
const SWEEP_EVERY: Duration = Duration::from_secs(1);

pub(super) fn worker(inner: Weak<Inner>) {
    crate::source::mark_background_thread();
    let mut last_sweep = Instant::now();
    // When the next source operation may start (the rate limit).
    let mut next_op = Instant::now();
    loop {
        let Some(me) = inner.upgrade() else { return };
        if me.stop.load(Relaxed) {
            return;
        }
        let rate = me.opts.revalidate_rate;
        let may_work = rate > 0.0 && Instant::now() >= next_op;
        let wait_until = if may_work {
            Instant::now() + Duration::from_millis(200)
        } else {
            next_op.min(Instant::now() + Duration::from_millis(200))
        };
        let (node, hints) = me.queue.take(wait_until, may_work);
        me.send_hints(hints);
        if last_sweep.elapsed() >= SWEEP_EVERY {
            me.keep_budget();
            last_sweep = Instant::now();
        }
        if let Some(i) = node {
            me.revalidate(i);
            next_op = next_op.max(Instant::now() - Duration::from_secs(1))
                + Duration::from_secs_f64(1.0 / rate);
        }
        me.stats
            .meta_revalidate_queued
            .store(me.queue.len() as u64, Relaxed);
    }
}

impl Inner {
    fn send_hints(&self, hints: Vec<(Idx, Vec<u8>)>) {
        if hints.is_empty() {
            return;
        }
        if let Some(h) = self.hint.get() {
            for (parent, name) in hints {
                h(ino_of(parent), OsStr::from_bytes(&name));
            }
        }
    }

    /// Past the budget: frees the least recently used, and asks the kernel to forget
    /// what only it still holds.
    fn keep_budget(&self) {
        let budget = self.opts.budget;
        let ask = {
            let mut t = self.table.write();
            if t.live_bytes() <= budget {
                return;
            }
            let ask = t.sweep(budget - budget / 10, 1 << 18);
            t.compact_names();
            self.publish_counts(&t);
            ask
        };
        self.send_hints(ask);
    }

    /// Asks the source about one node again, in the background.
    fn revalidate(&self, i: Idx) {
        let (kind, parent, name, old) = {
            let mut t = self.table.write();
            let Some(n) = t.get_mut(i) else { return };
            n.flags &= !QUEUED;
            if n.superseded() {
                return;
            }
            (
                n.kind,
                n.parent(),
                t.name(i).to_vec(),
                t.get(i).map(|n| n.attr),
            )
        };
        let Some(old) = old else { return };
        let path = match self.path_of(&self.table.read(), i) {
            Ok(p) => p,
            Err(_) => return,
        };
        let st = match self.source.lstat(&path) {
            Ok(st) => st,
            Err(e) => {
                if e.raw_os_error() == Some(libc::ENOENT) && i != ROOT {
                    let mut t = self.table.write();
                    if t.get(i).is_some_and(|n| !n.superseded()) {
                        t.supersede(i);
                        self.queue.hint(parent, name);
                    }
                }
                return;
            }
        };
        if kind == Kind::Dir {
            let unchanged =
                st.ino() == old.src_ino && st.mtime() == old.mtime() && st.ctime() == old.ctime();
            let mut t = self.table.write();
            if t.get(i).is_none() {
                return;
            }
            let now = self.now();
            if i == ROOT {
                if let Some(n) = t.get_mut(ROOT) {
                    n.attr = super::table::Attr::of(&st);
                    n.attr_at = now;
                }
            } else {
                self.store_stat(&mut t, parent, &name, &st);
            }
            let listed = t.listing(i).is_some();
            if unchanged {
                // Nothing was added, removed or renamed in it: its listing holds.
                t.renew_listing(i, now);
                return;
            }
            drop(t);
            if listed {
                let _ = self.fetch_listing(i);
            }
            return;
        }
        let mut t = self.table.write();
        if t.get(i).is_some_and(|n| !n.superseded()) {
            self.store_stat(&mut t, parent, &name, &st);
            self.publish_counts(&t);
        }
    }
}
