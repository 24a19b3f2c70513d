use std::ffi::OsStr;
use std::fs;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use super::*;

fn ns_with(
    root: &std::path::Path,
    ttl: Option<Duration>,
    rate: f64,
    budget: u64,
) -> (Namespace, Arc<Stats>) {
    let stats = Arc::new(Stats::default());
    let src = Arc::new(Source::open(root, stats.clone(), false).unwrap());
    let opts = Options {
        ttl,
        revalidate_rate: rate,
        budget,
    };
    (Namespace::new(src, opts, None, stats.clone()), stats)
}

fn ns(root: &std::path::Path, ttl: Option<Duration>) -> (Namespace, Arc<Stats>) {
    ns_with(root, ttl, 0.0, 1 << 30)
}

fn ops(stats: &Stats) -> u64 {
    stats.source_meta_ops.load(Relaxed)
}

#[test]
fn a_replaced_file_gets_a_new_inode_and_the_old_one_stays_frozen() {
    let t = tempfile::tempdir().unwrap();
    fs::write(t.path().join("f"), b"one").unwrap();
    let (n, _) = ns(t.path(), Some(Duration::ZERO));
    let a = n.lookup(ROOT_INO, OsStr::new("f")).unwrap();
    let v = n.open_file(a.ino).unwrap();
    assert_eq!(v.size, 3);
    fs::write(t.path().join("tmp"), b"second").unwrap();
    fs::rename(t.path().join("tmp"), t.path().join("f")).unwrap();
    // The open inode: stale for a path stat, frozen for fstat, refused for a new open.
    assert_eq!(
        n.getattr(a.ino, false).unwrap_err().raw_os_error(),
        Some(libc::ESTALE)
    );
    assert_eq!(n.getattr(a.ino, true).unwrap().attr.size, 3);
    assert_eq!(
        n.open_file(a.ino).unwrap_err().raw_os_error(),
        Some(libc::ESTALE)
    );
    let b = n.lookup(ROOT_INO, OsStr::new("f")).unwrap();
    assert_ne!(a.ino, b.ino);
    assert_eq!(b.attr.size, 6);
    n.close_file(a.ino);
    n.forget(a.ino, 1);
    assert!(
        n.getattr(a.ino, true).is_err(),
        "forgotten and closed: gone"
    );
}

#[test]
fn failed_lookups_leave_nothing_and_nodes_stay_as_cache_within_the_budget() {
    let t = tempfile::tempdir().unwrap();
    fs::create_dir(t.path().join("d")).unwrap();
    for i in 0..100 {
        fs::write(t.path().join(format!("d/f{i}")), b"x").unwrap();
    }
    let (n, stats) = ns(t.path(), None);
    let d = n.lookup(ROOT_INO, OsStr::new("d")).unwrap();
    for i in 0..1000 {
        assert!(n.lookup(d.ino, OsStr::new(&format!("missing{i}"))).is_err());
    }
    assert_eq!(n.counts().1, 2, "failed lookups allocated nodes");
    let inos: Vec<u64> = (0..100)
        .map(|i| n.lookup(d.ino, OsStr::new(&format!("f{i}"))).unwrap().ino)
        .collect();
    assert_eq!(n.counts().1, 102);
    assert_eq!(stats.meta_entries.load(Relaxed), 102);
    // Forgotten by the kernel: kept as cache (the budget has room), so a new lookup
    // needs no source operation.
    for ino in &inos {
        n.forget(*ino, 1);
    }
    assert_eq!(n.counts().1, 102);
    let before = ops(&stats);
    n.lookup(d.ino, OsStr::new("f7")).unwrap();
    assert_eq!(ops(&stats), before);
}

#[test]
fn the_budget_drops_the_least_recently_used_and_asks_the_kernel_to_forget() {
    let t = tempfile::tempdir().unwrap();
    for i in 0..3000 {
        fs::write(t.path().join(format!("f{i:04}")), b"x").unwrap();
    }
    let budget = 100 << 10;
    let (n, _) = ns_with(t.path(), None, 0.0, budget);
    let asked = Arc::new(parking_lot::Mutex::new(Vec::new()));
    let a2 = asked.clone();
    let _ = n.kernel_hint_slot().set(Box::new(move |p, name| {
        a2.lock().push((p, name.to_os_string()));
    }));
    let live = |n: &Namespace| n.inner.table.read().live_bytes();
    // The kernel forgets nearly all it looks up: the cache of forgotten nodes is cut to
    // the budget, least recently used first.
    let mut inos = Vec::new();
    for i in 0..2000 {
        inos.push(
            n.lookup(ROOT_INO, OsStr::new(&format!("f{i:04}")))
                .unwrap()
                .ino,
        );
        if i >= 100 {
            n.forget(inos[i - 100], 1);
        }
    }
    std::thread::sleep(Duration::from_millis(1500));
    assert!(live(&n) <= budget, "{} > {budget}", live(&n));
    assert!(
        asked.lock().is_empty(),
        "the kernel was asked though the cache sufficed"
    );
    // The kernel keeps 1,000 more than fit: it is asked to forget some; when it does,
    // the budget holds.
    for i in 2000..3000 {
        n.lookup(ROOT_INO, OsStr::new(&format!("f{i:04}"))).unwrap();
    }
    std::thread::sleep(Duration::from_millis(1500));
    let asks: Vec<_> = asked.lock().drain(..).collect();
    assert!(
        !asks.is_empty(),
        "over budget with only kernel-held nodes, yet nothing asked"
    );
    for (parent, name) in asks {
        let e = n.lookup(parent, &name).unwrap();
        n.forget(e.ino, 2);
    }
    std::thread::sleep(Duration::from_millis(1500));
    assert!(live(&n) <= budget, "{} > {budget}", live(&n));
}

#[test]
fn listings_need_no_stat_and_answer_negative_lookups() {
    let t = tempfile::tempdir().unwrap();
    for i in 0..50 {
        fs::write(t.path().join(format!("f{i:02}")), b"x").unwrap();
    }
    fs::create_dir(t.path().join("sub")).unwrap();
    let (n, stats) = ns(t.path(), None);
    let before = ops(&stats);
    let l = n.list(ROOT_INO).unwrap();
    assert_eq!(l.len(), 51);
    assert_eq!(l[0].name, "f00");
    assert_eq!(l[50].kind, Kind::Dir);
    assert_eq!(ops(&stats) - before, 1, "one readdir, no stats");
    let before = ops(&stats);
    assert!(n.lookup(ROOT_INO, OsStr::new("nope")).is_err());
    assert_eq!(ops(&stats), before, "answered from the listing");
    // A reader stat-ing many entries gets the rest fetched together.
    for i in 0..10 {
        n.lookup(ROOT_INO, OsStr::new(&format!("f{i:02}"))).unwrap();
    }
    let before = ops(&stats);
    for i in 10..50 {
        n.lookup(ROOT_INO, OsStr::new(&format!("f{i:02}"))).unwrap();
    }
    assert_eq!(ops(&stats), before, "stat-ahead fetched them");
}

#[test]
fn past_the_ttl_what_is_known_is_served_and_revalidated_in_the_background() {
    let t = tempfile::tempdir().unwrap();
    fs::write(t.path().join("f"), b"one").unwrap();
    let (n, stats) = ns_with(t.path(), Some(Duration::from_millis(300)), 1000.0, 1 << 30);
    let a = n.lookup(ROOT_INO, OsStr::new("f")).unwrap();
    std::thread::sleep(Duration::from_millis(500));
    // Changed at the source (replaced by rename), past the TTL: the next request is
    // answered at once from what is known, in the foreground without the source...
    fs::write(t.path().join("tmp"), b"second").unwrap();
    fs::rename(t.path().join("tmp"), t.path().join("f")).unwrap();
    let fg = ops(&stats) - stats.source_meta_ops_background.load(Relaxed);
    let e = n.getattr(a.ino, false).unwrap();
    assert_eq!(e.attr.size, 3);
    assert_eq!(
        ops(&stats) - stats.source_meta_ops_background.load(Relaxed),
        fg
    );
    // ...and the change is seen soon after: the old inode is superseded, the name leads
    // to a new one.
    std::thread::sleep(Duration::from_millis(400));
    assert_eq!(
        n.getattr(a.ino, false).unwrap_err().raw_os_error(),
        Some(libc::ESTALE)
    );
    assert_eq!(n.lookup(ROOT_INO, OsStr::new("f")).unwrap().attr.size, 6);
    assert!(stats.source_meta_ops_background.load(Relaxed) >= 1);
}

#[test]
fn the_namespace_survives_a_remount() {
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    fs::create_dir_all(src.join("a/b")).unwrap();
    for i in 0..20 {
        fs::write(src.join(format!("a/b/f{i}")), vec![b'x'; i]).unwrap();
    }
    std::os::unix::fs::symlink("f1", src.join("a/b/link")).unwrap();
    let dir = crate::cachedir::CacheDir::claim(&t.path().join("cache")).unwrap();
    {
        let (n, _) = ns(&src, None);
        let a = n.lookup(ROOT_INO, OsStr::new("a")).unwrap();
        let b = n.lookup(a.ino, OsStr::new("b")).unwrap();
        n.list(b.ino).unwrap();
        for i in 0..20 {
            n.lookup(b.ino, OsStr::new(&format!("f{i}"))).unwrap();
        }
        n.save(&dir);
    }
    // Without --immutable it is not trusted: a file changed between mounts must be
    // served fresh after a remount.
    let (n, _) = ns(&src, Some(Duration::from_secs(600)));
    assert_eq!(n.load(&dir), 0);
    let (n, stats) = ns(&src, None);
    assert_eq!(n.load(&dir), 23);
    let before = ops(&stats);
    let a = n.lookup(ROOT_INO, OsStr::new("a")).unwrap();
    let b = n.lookup(a.ino, OsStr::new("b")).unwrap();
    let l = n.list(b.ino).unwrap();
    assert_eq!(l.len(), 21);
    for i in 0..20 {
        let e = n.lookup(b.ino, OsStr::new(&format!("f{i}"))).unwrap();
        assert_eq!(e.attr.size, i as u64);
    }
    assert!(n.lookup(b.ino, OsStr::new("nope")).is_err());
    assert_eq!(ops(&stats), before, "a remount re-asked the source");
    // Damaged: ignored, the namespace starts empty.
    let path = dir.path().join("namespace");
    let mut bytes = fs::read(&path).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 1;
    fs::write(&path, &bytes).unwrap();
    let (n, _) = ns(&src, None);
    assert_eq!(n.load(&dir), 0);
    // Another dataset at the same path: ignored too.
    let (n, _) = ns(t.path(), None);
    fs::write(&path, fs::read(&path).unwrap()).unwrap();
    assert_eq!(n.load(&dir), 0);
}

#[test]
fn lookups_racing_the_budget_sweep_get_their_own_name_and_never_estale() {
    // The sweep frees nodes only the cache holds; a lookup that found such a node just
    // before it went (its slot perhaps reused by another name) must look again.
    let t = tempfile::tempdir().unwrap();
    let names = 3000;
    for i in 0..names {
        fs::write(t.path().join(format!("f{i:04}")), vec![b'x'; i]).unwrap();
    }
    let (n, _) = ns_with(t.path(), None, 0.0, 20 << 10);
    let n = Arc::new(n);
    let until = std::time::Instant::now() + Duration::from_millis(3500);
    let workers: Vec<_> = (0..3)
        .map(|w| {
            let n = n.clone();
            std::thread::spawn(move || {
                let mut i = w * 997;
                let mut done = 0u64;
                while std::time::Instant::now() < until {
                    i = (i + 7) % names;
                    let e = n
                        .lookup(ROOT_INO, OsStr::new(&format!("f{i:04}")))
                        .unwrap_or_else(|e| panic!("f{i:04}: {e}"));
                    assert_eq!(e.attr.size, i as u64, "f{i:04} answered with another node");
                    n.forget(e.ino, 1);
                    done += 1;
                }
                done
            })
        })
        .collect();
    let done: u64 = workers.into_iter().map(|w| w.join().unwrap()).sum();
    assert!(done > 1000, "only {done} lookups ran");
}
