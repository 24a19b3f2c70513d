"""manifest: what listing the dataset costs a sharded mount over a metadata-slow source.

A tree of `files` empty files in `dirs` folders behind slowfs (`meta_latency_ms` per
metadata request). bicache mounts shard 0 of `shards` (`--prefetch off`, so only the
listing is measured) three ways:

  walk          no manifest: SOURCE is walked (a listing per folder, an lstat per file)
  manifest      a manifest of paths, one a line: each file stat-ed (in its opened folder)
  sized         the same paths with their sizes (`SIZE<TAB>PATH` under the header line
                `# bicache-manifest: size path`): only the shard's files are stat-ed

Measured per mount: `bicache mount` wall time until the mount is live, the metadata
requests slowfs served meanwhile (its own count) and the daemon's peak RSS. Every mount
gets a fresh cache dir and a fresh $TMPDIR, so no dataset list an earlier mount kept is
reused (a second mount on a node reuses it: docs/CLUSTER.md).

With `big_files` > 0 (run 1 only): a sized manifest of that many entries (sizes drawn
1 KiB-256 KiB) over a local source that holds only shard 0 of `big_shards`'s files
(sparse, the listed sizes): `bicache plan` and `bicache mount` of shard 0, wall time, peak
RSS and the source metadata operations the mount counts (`source.meta_ops`). The other
files need not exist: nothing stats them.
"""

import os
import random
import shutil

from bicache_bench import data
from bicache_bench.report import fx, header, med, table
from bicache_bench.systems import System
from bicache_bench.util import log

TITLE = "listing cost of a sharded mount: walk, manifest, sized manifest over slowfs"
DOC = "docs/BENCHMARKS.md"
SECTION = "bench-manifest"
HEADING = "Sized manifests (`bench/run.py manifest`)"
NEEDS = []
PY_NEEDS = ["numpy"]

PARAMS = dict(runs=3, files=200_000, dirs=200, seed=5, shards=100, ram="256MiB",
              disk="1GiB", latency_ms=1.0, meta_latency_ms=-1.0, bandwidth_mbps=200.0,
              slowfs_threads=8, big_files=10_000_000, big_dirs=10_000, big_shards=1000)
QUICK = dict(files=2000, dirs=4, shards=10, big_files=20_000, big_dirs=20, big_shards=10)

SIZED_HEADER = "# bicache-manifest: size path\n"
MODES = ("walk", "manifest", "sized")


def run(b):
    p = b.p
    tree = b.component(data.files(p.files, p.dirs, 0, 0, "fixed", p.seed, empty=True))
    b.meta.update(tree=tree.describe())
    paths = os.path.join(b.lc.work, "manifest.txt")
    sized = os.path.join(b.lc.work, "manifest-sized.tsv")
    with open(tree.listing) as f, open(paths, "w") as g, open(sized, "w") as h:
        h.write(SIZED_HEADER)
        for line in f:
            rel, size = line.split("\t")[:2]
            g.write(rel + "\n")
            h.write(f"{size}\t{rel}\n")
    args = {"walk": [], "manifest": ["--manifest", paths], "sized": ["--manifest", sized]}
    shard = ["--shard-index", "0", "--shard-count", str(p.shards), "--prefetch", "off"]
    tmp = os.path.join(b.lc.work, "tmpdir")
    old_tmp = os.environ.get("TMPDIR")
    with b.slowfs(tree.path) as slow:
        b.meta["slowfs"] = " ".join(map(str, slow.args))
        try:
            for _ in b.runs():
                for mode in MODES:
                    shutil.rmtree(tmp, ignore_errors=True)
                    os.makedirs(tmp)
                    os.environ["TMPDIR"] = tmp
                    s = System(f"bicache-{mode}", "bicache", mode, over="slowfs",
                               args=(*shard, *args[mode]), ram=p.ram, disk=p.disk)
                    b.drop_caches()
                    s0 = slow.snap()
                    with b.start(s, tree.path, slow) as m:
                        s1 = slow.snap(settled=True)
                        st = m.stats()
                        rec = b.record({
                            "type": "pass", "system": s.name, "pass": "mount",
                            "seconds": m.mount_seconds, "src_meta": s1["meta"] - s0["meta"],
                            "bc_meta": st["source"]["meta_ops"], "hwm_kb": m.hwm_kb(),
                            "shard_files": st["shard"]["files"]})
                    log(f"{mode}: mount {rec['seconds']:.2f} s, {rec['src_meta']:,} source "
                        f"metadata requests, peak RSS {rec['hwm_kb'] / 1024:.0f} MiB, "
                        f"{rec['shard_files']:,} files in the shard")
            if p.big_files:
                os.environ["TMPDIR"] = tmp
                b.run = b.lc.run = 1
                big_part(b)
        finally:
            if old_tmp is None:
                os.environ.pop("TMPDIR", None)
            else:
                os.environ["TMPDIR"] = old_tmp


def big_part(b):
    p = b.p
    root = os.path.join(b.lc.work, "big")
    shutil.rmtree(root, ignore_errors=True)
    src = os.path.join(root, "src")
    os.makedirs(src)
    man = os.path.join(root, "manifest.tsv")
    rng = random.Random(p.seed)
    with open(man, "w") as f:
        f.write(SIZED_HEADER)
        for i in range(p.big_files):
            f.write(f"{rng.randrange(1024, 262145)}\tn{i % p.big_dirs:05d}/img{i:08d}.bin\n")
    shard = ["--shard-index", "0", "--shard-count", str(p.big_shards), "--manifest", man]
    listed = os.path.join(root, "shard0.txt")
    b.drop_caches()
    r = b.timed([b.bins.bicache, "plan", src, *shard], stdout=listed)
    with open(listed) as f:
        mine = set(f.read().split("\n")) - {""}
    b.record({"type": "big-plan", "entries": p.big_files, "seconds": r["seconds"],
              "maxrss_kb": r["maxrss_kb"], "shard_files": len(mine)})
    log(f"plan over a {p.big_files:,}-entry sized manifest: {r['seconds']:.1f} s, peak RSS "
        f"{r['maxrss_kb'] / 1024:.0f} MiB, {len(mine):,} files in shard 0")
    # Shard 0's files only, sparse at their listed sizes.
    with open(man) as f:
        next(f)
        for line in f:
            size, rel = line.rstrip("\n").split("\t")
            if rel in mine:
                path = os.path.join(src, rel)
                os.makedirs(os.path.dirname(path), exist_ok=True)
                with open(path, "wb") as g:
                    g.truncate(int(size))
    s = System("bicache-sized-big", "bicache", "sized, big", over="local",
               args=(*shard, "--prefetch", "off"),
               ram=p.ram, disk=p.disk)
    b.drop_caches()
    with b.start(s, src) as m:
        st = m.stats()
        rec = b.record({"type": "big-mount", "entries": p.big_files,
                        "seconds": m.mount_seconds, "bc_meta": st["source"]["meta_ops"],
                        "hwm_kb": m.hwm_kb(), "rss_kb": m.rss_kb(),
                        "shard_files": st["shard"]["files"]})
    log(f"mount over it: {rec['seconds']:.1f} s, {rec['bc_meta']:,} source metadata ops, "
        f"peak RSS {rec['hwm_kb'] / 1024:.0f} MiB")


def report(res, meta):
    p = meta["params"]
    L = header(meta, [
        f"- Tree: {meta['tree']} behind `slowfs {meta['slowfs']}`. bicache: `bicache mount "
        f"SLOW MNT --cache-dir <fresh dir> --ram {p['ram']} --disk {p['disk']} --shard-index 0 "
        f"--shard-count {p['shards']} --prefetch off [--manifest FILE]`, a fresh $TMPDIR each "
        "(no kept dataset list), page cache dropped first.",
        "- mount time: `bicache mount` until it returns with the mount live. Source metadata "
        "requests: slowfs' own count over the mount (settled). Peak RSS: the daemon's VmHWM."])
    rows = []
    for mode in MODES:
        name = f"bicache-{mode}"
        secs = res.median(name, "mount", lambda r: r["seconds"])
        if secs is None:
            continue
        rows.append([mode, f"{secs:.2f} s",
                     fx(res.ratio(name, "bicache-walk", "mount", lambda r: r["seconds"])),
                     f"{res.median(name, 'mount', lambda r: r['src_meta']):,.0f}",
                     f"{res.median(name, 'mount', lambda r: r['hwm_kb']) / 1024:,.0f} MiB",
                     f"{med(res.per_run(name, 'mount', lambda r: r['shard_files'])):,.0f}"])
    L += [f"Medians of {len(res.runs)} run(s):", ""]
    L += table(["dataset list", "mount time", "x the walk's", "source metadata requests",
                "peak RSS", "files in shard 0"], rows)
    plans, mounts = res.of_type("big-plan"), res.of_type("big-mount")
    if plans and mounts:
        pl, mo = plans[-1], mounts[-1]
        L += ["", f"A sized manifest of {pl['entries']:,} entries (sizes 1-256 KiB), shard 0 of "
              f"{p['big_shards']:,}, over a local source holding only that shard's "
              f"{pl['shard_files']:,} files (one run):", ""]
        L += table(["command", "wall time", "peak RSS", "RSS after", "source metadata ops",
                    "files in shard 0"], [
            ["`bicache plan`", f"{pl['seconds']:.1f} s", f"{pl['maxrss_kb'] / 1024:,.0f} MiB",
             "-", "0 (SOURCE held none of the files yet)", f"{pl['shard_files']:,}"],
            ["`bicache mount --prefetch off`", f"{mo['seconds']:.1f} s",
             f"{mo['hwm_kb'] / 1024:,.0f} MiB", f"{mo['rss_kb'] / 1024:,.0f} MiB",
             f"{mo['bc_meta']:,}", f"{mo['shard_files']:,}"]])
    return "\n".join(L)
