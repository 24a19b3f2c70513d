//! The dataset's file list, read through `Source`: a parallel walk of SOURCE, the paths
//! of a manifest stat-ed folder by folder, or a sized manifest's paths and sizes taken as
//! written. Used by sharding and prefetch.

use std::ffi::OsStr;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Condvar, Mutex};

use super::{FileVersion, Kind, Source, sort_by_path};
use crate::CONTROL_DIR;

/// Threads for the walk and the manifest's lstats. The work is latency-bound (one metadata
/// round trip per entry on a shared filesystem), not CPU-bound, so more threads than cores
/// pay off; a few are enough to hide most of the latency without flooding the server.
const META_THREADS: usize = 8;

/// Parallel walk: a few threads share a queue of directories still to list. A thread that
/// finds the queue empty waits while others are still listing (they may add more); the
/// walk ends when the queue is empty and nobody is busy, or at the first error.
pub fn walk(source: &Source) -> Result<Vec<FileVersion>, String> {
    struct Queue {
        dirs: Vec<PathBuf>,
        busy: usize,
        error: Option<String>,
    }
    let queue = Mutex::new(Queue {
        dirs: vec![PathBuf::new()],
        busy: 0,
        error: None,
    });
    let cond = Condvar::new();
    let worker = || {
        let mut found = Vec::new();
        let mut subdirs = Vec::new();
        loop {
            let dir = {
                let mut q = queue.lock().unwrap_or_else(|p| p.into_inner());
                loop {
                    if q.error.is_some() || (q.dirs.is_empty() && q.busy == 0) {
                        cond.notify_all();
                        return found;
                    }
                    if let Some(d) = q.dirs.pop() {
                        q.busy += 1;
                        break d;
                    }
                    q = cond.wait(q).unwrap_or_else(|p| p.into_inner());
                }
            };
            // A panic here would leave `busy` raised and the other threads waiting forever;
            // as an error it ends the walk like any other.
            let res = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                scan_dir(source, &dir, &mut found, &mut subdirs)
            }))
            .unwrap_or_else(|_| {
                Err(format!(
                    "internal error while listing '{}'",
                    source.root_path().join(&dir).display()
                ))
            });
            let mut q = queue.lock().unwrap_or_else(|p| p.into_inner());
            q.busy -= 1;
            q.dirs.append(&mut subdirs);
            if let Err(e) = res {
                q.error.get_or_insert(e);
            }
            cond.notify_all();
        }
    };
    let parts: Vec<Vec<FileVersion>> = crate::workers::run(META_THREADS, worker);
    if let Some(e) = queue.into_inner().unwrap_or_else(|p| p.into_inner()).error {
        return Err(e);
    }
    let mut files: Vec<FileVersion> = parts.into_iter().flatten().collect();
    sort_by_path(&mut files);
    Ok(files)
}

/// Lists one directory. An unreadable directory is an error rather than skipped: a node
/// that silently saw fewer files would compute a different partition from the others.
/// An entry that vanished between readdir and lstat is just gone. Only regular files are
/// stat-ed (directories are known by their type alone).
fn scan_dir(
    source: &Source,
    rel: &Path,
    files: &mut Vec<FileVersion>,
    dirs: &mut Vec<PathBuf>,
) -> Result<(), String> {
    let full = source.root_path().join(rel);
    let cannot = |e: io::Error| format!("cannot list directory '{}': {e}", full.display());
    let dir = source.open_dir(rel).map_err(cannot)?;
    for entry in dir.entries().map_err(cannot)? {
        if rel.as_os_str().is_empty() && entry.name == CONTROL_DIR {
            continue;
        }
        let child = rel.join(&entry.name);
        let stat_err = |e: io::Error| {
            format!(
                "cannot lstat '{}': {e}",
                source.root_path().join(&child).display()
            )
        };
        let kind = match entry.kind {
            Some(k) => k,
            // The filesystem did not give the type: ask.
            None => match dir.stat(&entry.name) {
                Ok(st) => st.kind(),
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(stat_err(e)),
            },
        };
        match kind {
            Kind::Dir => dirs.push(child),
            Kind::File => match dir.stat(&entry.name) {
                Ok(st) if st.is_file() => files.push(FileVersion::of(child, &st)),
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(stat_err(e)),
            },
            // Symlinks, fifos, sockets and devices are not dataset files.
            _ => {}
        }
    }
    Ok(())
}

/// Runs `f` over `items` on a few threads; results in input order.
fn par_map<T: Sync, R: Send>(items: &[T], f: impl Fn(&T) -> R + Sync) -> Vec<R> {
    let next = AtomicUsize::new(0);
    let threads = META_THREADS.min(items.len()).max(1);
    let parts: Vec<Vec<(usize, R)>> = crate::workers::run(threads, || {
        let mut out = Vec::new();
        loop {
            let i = next.fetch_add(1, Ordering::Relaxed);
            let Some(item) = items.get(i) else { break };
            out.push((i, f(item)));
        }
        out
    });
    let mut all: Vec<(usize, R)> = parts.into_iter().flatten().collect();
    all.sort_unstable_by_key(|(i, _)| *i);
    all.into_iter().map(|(_, r)| r).collect()
}

/// A manifest line's text for a message: one line, control characters escaped.
pub fn show(bytes: &[u8]) -> String {
    let mut out = String::new();
    for c in String::from_utf8_lossy(bytes).chars() {
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

/// A manifest path as a clean relative path ("./a//b" -> "a/b"), so that the same file
/// always sorts, and so lands in a shard, the same way.
pub fn normalize_rel(text: &[u8]) -> Result<PathBuf, &'static str> {
    let mut out = PathBuf::new();
    for c in Path::new(OsStr::from_bytes(text)).components() {
        match c {
            Component::Normal(n) => out.push(n),
            Component::CurDir => {}
            Component::ParentDir => return Err("'..' is not allowed (paths stay inside SOURCE)"),
            Component::RootDir | Component::Prefix(_) => {
                return Err("absolute path (give paths relative to SOURCE)");
            }
        }
    }
    if out.as_os_str().is_empty() {
        return Err("names SOURCE itself, not a file");
    }
    if out.components().next() == Some(Component::Normal(OsStr::new(CONTROL_DIR))) {
        return Err("'.bicache' at the top is reserved for the mount's control files");
    }
    Ok(out)
}

/// First line of a manifest whose lines are `SIZE<TAB>PATH` (what
/// `find . -type f -printf '%s\t%P\n'` prints). Its files are not stat-ed to be listed:
/// the partition uses the sizes given, and a mount stats only its own shard's files
/// (`stat_listed`). Without it every line is a path, stat-ed here.
pub const SIZED_HEADER: &[u8] = b"# bicache-manifest: size path";

/// Why `path` cannot be written as a manifest line, if it cannot: a newline ends the
/// line, and a carriage return at its end is read as part of a CRLF line end.
pub fn unlistable(path: &Path) -> Option<&'static str> {
    let b = path.as_os_str().as_bytes();
    if holds_newline(path) {
        Some("its name holds a newline")
    } else if b.ends_with(b"\r") {
        Some("its name ends with a carriage return")
    } else {
        None
    }
}

/// Whether `path` holds a newline: then no list of one path a line (a manifest, `bicache
/// plan`, `.bicache/shard.txt`) can hold it.
pub fn holds_newline(path: &Path) -> bool {
    path.as_os_str().as_bytes().contains(&b'\n')
}

/// Whether manifest bytes start with `SIZED_HEADER`.
pub fn is_sized(data: &[u8]) -> bool {
    let first = data.split(|b| *b == b'\n').next().unwrap_or_default();
    first.strip_suffix(b"\r").unwrap_or(first) == SIZED_HEADER
}

/// The files a manifest lists, sorted by path. A plain manifest's paths are lstat-ed (in
/// parallel) and must be regular files; a sized one's are taken with their sizes as
/// written, with no version (`FileVersion::listed`). A bad line fails with its number.
pub fn read_manifest(
    source: &Source,
    manifest: &Path,
    data: &[u8],
) -> Result<Vec<FileVersion>, String> {
    let bad = |line: usize, text: &[u8], reason: &str| {
        format!(
            "manifest {} line {line}: '{}': {reason}",
            manifest.display(),
            show(text)
        )
    };
    let sized = is_sized(data);
    // Plain: (line number, text, path) to stat; sized: straight to the list (at 10 M
    // entries the difference is a gigabyte).
    let mut entries: Vec<(usize, &[u8], PathBuf)> = Vec::new();
    let mut files = Vec::new();
    // Sized to the line count at once: growing by doubling would hold two copies of the
    // list for a moment (a gigabyte at 10 M entries).
    let lines = data.iter().filter(|b| **b == b'\n').count() + 1;
    if sized {
        files.reserve_exact(lines);
    } else {
        entries.reserve_exact(lines);
    }
    for (i, line) in data.split(|b| *b == b'\n').enumerate() {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.is_empty() || line[0] == b'#' {
            continue;
        }
        let (size, path) = if sized {
            let parsed = line.iter().position(|b| *b == b'\t').and_then(|tab| {
                let digits = &line[..tab];
                let size = std::str::from_utf8(digits).ok()?.parse::<u64>().ok()?;
                digits
                    .iter()
                    .all(u8::is_ascii_digit)
                    .then_some((size, &line[tab + 1..]))
            });
            parsed.ok_or_else(|| {
                bad(
                    i + 1,
                    line,
                    "expected SIZE<TAB>PATH (the first line says this manifest gives sizes)",
                )
            })?
        } else {
            (0, line)
        };
        let rel = normalize_rel(path).map_err(|r| bad(i + 1, line, r))?;
        if sized {
            files.push(FileVersion::listed(rel, size));
        } else {
            entries.push((i + 1, line, rel));
        }
    }
    if sized {
        sort_by_path(&mut files);
        // Every node must see one size per path, whatever order its sort left them in.
        if let Some(w) = files
            .windows(2)
            .find(|w| w[0].path == w[1].path && w[0].size != w[1].size)
        {
            return Err(format!(
                "manifest {}: '{}' is listed twice, with sizes {} and {}",
                manifest.display(),
                show(w[0].path.as_os_str().as_bytes()),
                w[0].size.min(w[1].size),
                w[0].size.max(w[1].size)
            ));
        }
    } else {
        let rels: Vec<&Path> = entries.iter().map(|(_, _, rel)| rel.as_path()).collect();
        let stated = stat_in_folders(source, &rels);
        files.reserve_exact(entries.len());
        // The first bad line in line order, whatever order the folders came back in.
        let mut first_bad: Option<(usize, String)> = None;
        for (i, st) in stated {
            let (line, text, rel) = &mut entries[i];
            match listed_file(st) {
                Ok(st) => files.push(FileVersion::of(std::mem::take(rel), &st)),
                Err(r) if first_bad.as_ref().is_none_or(|(l, _)| *line < *l) => {
                    first_bad = Some((*line, bad(*line, text, &r)));
                }
                Err(_) => {}
            }
        }
        if let Some((_, e)) = first_bad {
            return Err(e);
        }
        sort_by_path(&mut files);
    }
    // A file listed twice must not be counted (and assigned) twice.
    files.dedup_by(|a, b| a.path == b.path);
    Ok(files)
}

/// The versions of files a sized manifest listed (`read_manifest`), stat-ed now: the
/// ones a mount serves from its cache, in the same order. A file that is not a regular
/// file of SOURCE fails as a bad manifest line would. The second value counts the files
/// whose size is not the one listed (the one the partition used).
pub fn stat_listed(
    source: &Source,
    manifest: &Path,
    mut files: Vec<FileVersion>,
) -> Result<(Vec<FileVersion>, usize), String> {
    let rels: Vec<&Path> = files.iter().map(|f| f.path.as_path()).collect();
    let stated = stat_in_folders(source, &rels);
    let mut resized = 0;
    let mut first_bad: Option<(usize, String)> = None;
    for (i, st) in stated {
        let f = &mut files[i];
        match listed_file(st) {
            Ok(st) => {
                resized += usize::from(st.size() != f.size);
                *f = FileVersion::of(std::mem::take(&mut f.path), &st);
            }
            Err(r) if first_bad.as_ref().is_none_or(|(j, _)| i < *j) => {
                let path = show(f.path.as_os_str().as_bytes());
                first_bad = Some((i, format!("manifest {}: '{path}': {r}", manifest.display())));
            }
            Err(_) => {}
        }
    }
    match first_bad {
        Some((_, e)) => Err(e),
        None => Ok((files, resized)),
    }
}

/// Names stat-ed in one opened folder at most: a flat folder of a million files is still
/// spread over the threads.
const STAT_BATCH: usize = 1024;

/// lstat of each path, folder by folder, each result with its path's index: a folder is
/// opened once per batch of its names and each name stat-ed in it, so a file costs one
/// request at the source as in the walk. Resolving every path from the root instead costs a request per
/// folder on the path, and over FUSE (slowfs) parallel resolutions through one folder
/// made a 200,000-line manifest 4x slower than walking the tree (BENCHMARKS.md, "Sized
/// manifests").
fn stat_in_folders(source: &Source, rels: &[&Path]) -> Stated {
    let parent = |i: usize| rels[i].parent().unwrap_or(Path::new(""));
    let mut order: Vec<usize> = (0..rels.len()).collect();
    order.sort_by(|&a, &b| parent(a).cmp(parent(b)));
    let batches: Vec<&[usize]> = order
        .chunk_by(|&a, &b| parent(a) == parent(b))
        .flat_map(|same| same.chunks(STAT_BATCH))
        .collect();
    let done = par_map(&batches, |batch| {
        if let [i] = batch {
            // One name: resolving its path costs what opening its folder would.
            return vec![(*i, source.lstat(rels[*i]))];
        }
        let dir = source.dir_for_stats(parent(batch[0]));
        batch
            .iter()
            .map(|&i| {
                let name = rels[i].file_name().unwrap_or_default();
                let st = match &dir {
                    Ok(d) => d.stat(name),
                    // io::Error is not Clone: the errno stands for it.
                    Err(e) => Err(e.raw_os_error().map_or_else(
                        || io::Error::new(e.kind(), e.to_string()),
                        io::Error::from_raw_os_error,
                    )),
                };
                (i, st)
            })
            .collect::<Vec<_>>()
    });
    // Handed out batch by batch, each freed once read: no second copy of 10 M stats.
    done.into_iter().flatten()
}

/// `stat_in_folders`'s results: (index of the path, its lstat).
type Stated = std::iter::Flatten<std::vec::IntoIter<Vec<(usize, io::Result<super::Stat>)>>>;

/// A listed path's lstat, if it is a regular file; else why it cannot be listed.
fn listed_file(st: io::Result<super::Stat>) -> Result<super::Stat, String> {
    match st {
        Ok(m) if m.is_file() => Ok(m),
        Ok(m) if m.kind() == Kind::Dir => Err("is a directory, not a file".into()),
        Ok(m) if m.kind() == Kind::Symlink => {
            Err("is a symlink (symlinks are not followed: list the file it points to)".into())
        }
        Ok(_) => Err("is not a regular file".into()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Err("no such file in SOURCE".into()),
        Err(e) if e.raw_os_error() == Some(libc::ELOOP) => {
            Err("a folder on its path is a symlink (symlinks are not followed)".into())
        }
        Err(e) => Err(e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use std::os::unix::fs::MetadataExt;
    use std::sync::Arc;

    fn source(root: &Path) -> Source {
        Source::open(root, Arc::new(crate::stats::Stats::default()), false).unwrap()
    }

    fn names(files: &[FileVersion]) -> Vec<String> {
        files
            .iter()
            .map(|f| f.path.to_string_lossy().into_owned())
            .collect()
    }

    fn tree() -> (tempfile::TempDir, PathBuf) {
        let t = tempfile::tempdir().unwrap();
        let root = t.path().join("src");
        for (p, n) in [
            ("a/one", 10),
            ("a/b/two", 20),
            ("a/b/c/three", 30),
            ("top", 1),
            (".bicache/hidden", 5),
            ("x/.bicache", 6),
            ("z/.zarray", 2),
        ] {
            let full = root.join(p);
            fs::create_dir_all(full.parent().unwrap()).unwrap();
            fs::write(&full, vec![0u8; n]).unwrap();
        }
        fs::create_dir_all(root.join("empty/dir")).unwrap();
        std::os::unix::fs::symlink("top", root.join("link")).unwrap();
        std::os::unix::fs::symlink("a", root.join("dirlink")).unwrap();
        (t, root)
    }

    #[test]
    fn walk_lists_regular_files_only() {
        let (_t, root) = tree();
        let files = walk(&source(&root)).unwrap();
        assert_eq!(
            names(&files),
            [
                "a/b/c/three",
                "a/b/two",
                "a/one",
                "top",
                "x/.bicache",
                "z/.zarray"
            ]
        );
        assert_eq!(files[0].size, 30);
        let m = fs::metadata(root.join("top")).unwrap();
        assert_eq!(
            files[3].mtime_ns,
            m.mtime() as i128 * 1_000_000_000 + m.mtime_nsec() as i128
        );
        assert_eq!(files[3].ino, m.ino());
    }

    #[test]
    fn manifest_lists_and_checks() {
        let (t, root) = tree();
        let m = t.path().join("manifest.txt");
        fs::write(&m, "# comment\n\na/one\r\n./a/b//two\ntop\na/one\n").unwrap();
        let files = read(&source(&root), &m).unwrap();
        assert_eq!(names(&files), ["a/b/two", "a/one", "top"]);
        assert_eq!(files[0].size, 20);

        // Many names in one folder: the folder opened once, each name stat-ed in it.
        let many: Vec<String> = (0..3000).map(|i| format!("flat/f{i}")).collect();
        fs::create_dir(root.join("flat")).unwrap();
        for (i, p) in many.iter().enumerate() {
            fs::write(root.join(p), vec![1u8; i % 7]).unwrap();
        }
        fs::write(&m, many.join("\n")).unwrap();
        let stats = Arc::new(crate::stats::Stats::default());
        let src = Source::open(&root, stats.clone(), false).unwrap();
        let files = read(&src, &m).unwrap();
        assert_eq!(files.len(), 3000);
        assert!(files.iter().all(|f| {
            let i: usize = f.path.to_str().unwrap()[6..].parse().unwrap();
            f.size == (i % 7) as u64 && f.ino == fs::metadata(root.join(&f.path)).unwrap().ino()
        }));
        let batches = 3000usize.div_ceil(STAT_BATCH) as u64;
        assert_eq!(
            stats.source_meta_ops.load(Ordering::Relaxed),
            3000 + batches
        );
        fs::remove_dir_all(root.join("flat")).unwrap();
        // Two bad lines whose folders come back in the other order: the first is named.
        fs::write(&m, "zz/x\ntop\na/nope\n").unwrap();
        let e = read(&source(&root), &m).unwrap_err();
        assert!(e.contains("line 1: 'zz/x'"), "{e}");
        // A folder opened for several names that cannot be: each name fails as its path.
        for (dir, reason) in [
            ("dirlink", "a folder on its path is a symlink"),
            ("nodir", "no such file"),
            ("top", "Not a directory"),
        ] {
            fs::write(&m, format!("a/one\n{dir}/x\n{dir}/y\n")).unwrap();
            let e = read(&source(&root), &m).unwrap_err();
            assert!(e.contains(&format!("line 2: '{dir}/x': {reason}")), "{e}");
        }

        for (line, reason) in [
            ("/etc/passwd", "absolute"),
            ("a/../top", "'..'"),
            ("missing", "no such file"),
            ("a/b", "directory"),
            ("link", "symlink"),
            (".", "SOURCE itself"),
            (".bicache/hidden", "reserved"),
            ("dirlink/one", "symlink"),
        ] {
            fs::write(&m, format!("top\n# c\n{line}\na/one\n")).unwrap();
            let e = read(&source(&root), &m).unwrap_err();
            let want = format!("manifest {} line 3: '{line}': ", m.display());
            assert!(e.starts_with(&want), "{e}");
            assert!(e.contains(reason), "{e}");
        }
        fs::write(&m, b"top\nbad\x01\xffname\n").unwrap();
        let e = read(&source(&root), &m).unwrap_err();
        assert!(e.contains("line 2: 'bad\\u{1}\u{fffd}name'"), "{e}");
        let nope = t.path().join("nope");
        let e = crate::shard::list_dataset(&source(&root), Some(&nope), None)
            .err()
            .unwrap();
        assert!(e.contains("cannot read manifest"), "{e}");
    }

    fn read(source: &Source, m: &Path) -> Result<Vec<FileVersion>, String> {
        read_manifest(source, m, &fs::read(m).unwrap())
    }

    #[test]
    fn a_sized_manifest_is_listed_without_a_stat_and_its_shard_stated_after() {
        let (t, root) = tree();
        let m = t.path().join("manifest.tsv");
        let header = std::str::from_utf8(SIZED_HEADER).unwrap();
        // Sizes as written (not the files' own), a comment, CRLF, "./", a repeat.
        let text = format!("{header}\r\n# c\n999\ta/one\n20\t./a/b//two\n7\ttop\r\n999\ta/one\n");
        fs::write(&m, text).unwrap();
        let stats = Arc::new(crate::stats::Stats::default());
        let src = Source::open(&root, stats.clone(), false).unwrap();
        let ops = || stats.source_meta_ops.load(Ordering::Relaxed);
        let before = ops();
        let files = read(&src, &m).unwrap();
        assert_eq!(ops(), before);
        assert_eq!(names(&files), ["a/b/two", "a/one", "top"]);
        let sizes: Vec<u64> = files.iter().map(|f| f.size).collect();
        assert_eq!(sizes, [20, 999, 7]);

        // Stat-ed for serving: real versions, and the two wrong sizes counted.
        let (files, resized) = stat_listed(&src, &m, files).unwrap();
        assert_eq!(ops(), before + 3);
        assert_eq!(resized, 2);
        let one = fs::metadata(root.join("a/one")).unwrap();
        assert_eq!((files[1].size, files[1].ino), (10, one.ino()));

        for (line, reason) in [
            ("12 top", "SIZE<TAB>PATH"),
            ("top", "SIZE<TAB>PATH"),
            ("-1\ttop", "SIZE<TAB>PATH"),
            ("+1\ttop", "SIZE<TAB>PATH"),
            ("99999999999999999999\ttop", "SIZE<TAB>PATH"),
            ("\ttop", "SIZE<TAB>PATH"),
            ("1\t/etc/passwd", "absolute"),
            ("1\ta/../top", "'..'"),
            ("1\t.bicache/x", "reserved"),
        ] {
            fs::write(&m, format!("{header}\n5\ttop\n{line}\n")).unwrap();
            let e = read(&src, &m).unwrap_err();
            let want = format!("manifest {} line 3: '", m.display());
            assert!(e.starts_with(&want), "{line}: {e}");
            assert!(e.contains(reason), "{line}: {e}");
        }
        fs::write(&m, format!("{header}\n5\ttop\n6\t./top\n")).unwrap();
        let e = read(&src, &m).unwrap_err();
        assert!(
            e.contains("'top' is listed twice, with sizes 5 and 6"),
            "{e}"
        );
        // Not checked when listed, but when this shard's files are stat-ed.
        for (path, reason) in [
            ("missing", "no such file"),
            ("a/b", "directory"),
            ("link", "symlink"),
        ] {
            fs::write(&m, format!("{header}\n1\t{path}\n")).unwrap();
            let files = read(&src, &m).unwrap();
            let e = stat_listed(&src, &m, files).unwrap_err();
            let want = format!("manifest {}: '{path}': ", m.display());
            assert!(e.starts_with(&want) && e.contains(reason), "{e}");
        }
        // Without the header on the first line, lines are paths.
        fs::write(&m, format!("top\n{header}\n")).unwrap();
        assert_eq!(names(&read(&src, &m).unwrap()), ["top"]);
    }
}
