"""index: how fast a mount comes up on a big SSD tier (was scripts/bench-index.sh).

Fills a cache dir with `files` cache files (one per small source file: the SSD tier keeps
a file of up to --chunk-size whole, as `files/<aa>/<bb>/<key>-<len>-<sum>`), through a
real mount straight over the local tree, unmounts, then per run drops the page cache and
times `bicache mount` (it returns once the mount is live) and reads the index rebuild time
from the daemon log ("SSD tier ready in N ms: M files"). Target: 100,000 files ready in
under 2 s.
"""

import os
import re

from bicache_bench import data
from bicache_bench.report import fmt, header, med, mib, table
from bicache_bench.systems import System
from bicache_bench.util import KiB, die, log

TITLE = "mount time on a full SSD tier (index rebuild from names)"
DOC = "docs/BENCHMARKS.md"
SECTION = "bench-index"
HEADING = "SSD tier index rebuild (`bench/run.py index`)"
NEEDS = []
PY_NEEDS = ["numpy"]

PARAMS = dict(runs=3, files=100000, dirs=100, min_kib=1, max_kib=4, ram="16MiB", disk="2GiB",
              seed=99, target_ms=2000)
QUICK = dict(files=2000, dirs=10)

READY = re.compile(r"SSD tier ready in (\d+) ms: (\d+) files")


def run(b):
    p = b.p
    comp = b.component(data.files(p.files, p.dirs, p.min_kib * KiB, p.max_kib * KiB,
                                  "loguniform", p.seed))
    s = System("bicache", "bicache", "bicache", over="local", ram=p.ram, disk=p.disk)
    with b.start(s, comp.path) as m:
        m.phase = "fill"
        b.work("epoch", m.root, comp.listing, 1, "--workers", 4)
        m.settle()
    cached = sum(len(f) for _, _, f in os.walk(os.path.join(m.cache_dir, "files")))
    log(f"cache dir holds {cached:,} files under files/")
    b.meta.update(dataset=comp.describe(), cached_files=cached)
    for _ in b.runs():
        b.drop_caches()
        with b.start(s, comp.path, fresh=False) as m:
            m.phase = "remount"
            with open(m.log_path) as f:
                found = READY.search(f.read())
            if not found:
                die(f"no 'SSD tier ready' line in {m.log_path}")
            st = m.stats()
            rec = b.record({"type": "mount-time", "seconds": m.mount_seconds,
                            "rebuild_ms": int(found.group(1)), "files": int(found.group(2)),
                            "index_bytes": st["disk"].get("index_bytes"),
                            "disk_bytes": st["disk"]["bytes"], "rss_kb": m.rss_kb()})
            log(f"mount ready in {rec['seconds'] * 1000:.0f} ms (index rebuild "
                f"{rec['rebuild_ms']} ms, {rec['files']:,} files)")


def report(res, meta):
    p = meta["params"]
    rows = res.of_type("mount-time")
    ms = med([r["seconds"] * 1000 for r in rows])
    L = header(meta, [
        f"- Dataset: {meta['dataset']}, read once through `bicache mount TREE MNT --ram "
        f"{p['ram']} --disk {p['disk']}` (straight over the local tree): the cache dir held "
        f"{meta['cached_files']:,} files under `files/`. Then per run: unmounted, "
        "`drop_caches`, `bicache mount` timed to its return (the mount is live then)."])
    L += [f"Medians of {len(res.runs)} run(s):", ""]
    L += table(["SSD tier files", "mount ready", "index rebuild (daemon log)",
                "index memory (disk.index_bytes)", "daemon RSS after mount", "target"],
               [[fmt(med([r["files"] for r in rows]), ",.0f"), f"{fmt(ms, ',.0f')} ms",
                 f"{fmt(med([r['rebuild_ms'] for r in rows]), ',.0f')} ms",
                 fmt(med([r["index_bytes"] for r in rows]), ",.0f") + " B",
                 mib(med([r["rss_kb"] for r in rows])),
                 f"< {p['target_ms']:,} ms: " + ("met" if ms is not None and ms < p["target_ms"]
                                                else "**missed**")]])
    L += ["", "Per run:", ""]
    L += table(["run", "mount ready ms", "rebuild ms", "files"],
               [[r["run"], f"{r['seconds'] * 1000:.0f}", r["rebuild_ms"], f"{r['files']:,}"]
                for r in rows])
    return "\n".join(L)
