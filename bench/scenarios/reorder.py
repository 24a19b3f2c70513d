"""reorder: A/B of two bicache binaries on cold parallel streams while the CPUs are busy,
the case where the kernel's read requests of a file reach the daemon out of order
(docs/TUNING.md, "Streams read out of order").

Per rep and per binary: a fresh cache dir over slowfs, the page cache dropped, `spin`
busy loops started (one per CPU by default), then `readers` `cat`s at once, each through
one of the suite's big files, whole. A stream that loses its place fetches units and
re-fetches chunks: source reads above one per chunk, bytes above the files' size, and
readahead restarted (more chunks queued). `a` and `b` are binaries or git revisions.

    bench/run.py reorder a=0961585 b=HEAD
"""

import os
import subprocess
import time

from bicache_bench import build
from bicache_bench.report import fmt, header, table
from bicache_bench.systems import System
from bicache_bench.util import MiB, die
from scenarios import suite

TITLE = "A/B of two bicache binaries: cold parallel streams with busy CPUs (request order)"
DOC = "docs/TUNING.md"
SECTION = "bench-reorder"
HEADING = "Streams read out of order (`bench/run.py reorder`)"
NEEDS = []
PY_NEEDS = ["numpy"]

PARAMS = dict(runs=4, a="", b="", readers=4, spin=-1, ram="2GiB", disk="8GiB",
              latency_ms=1.0, meta_latency_ms=-1.0, bandwidth_mbps=200.0, slowfs_threads=8,
              seed=20240611, big_files=4, big_mib=512)
QUICK = dict(big_mib=8, runs=1)


def cold_cats(b, m, files):
    """The readers at once, with the spinners running; counters around it."""
    spin = b.p.spin if b.p.spin >= 0 else os.cpu_count()
    s0 = m.stats()
    b.drop_caches()
    spinners = [subprocess.Popen(["sh", "-c", "while :; do :; done"]) for _ in range(spin)]
    try:
        t0 = time.monotonic()
        cats = [subprocess.Popen(["cat", os.path.join(m.root, f)], stdout=subprocess.DEVNULL)
                for f in files]
        if any(c.wait() != 0 for c in cats):
            die(f"cat through {m.root} failed")
        seconds = time.monotonic() - t0
    finally:
        for s in spinners:
            s.kill()
            s.wait()
    s1 = m.stats()
    d = lambda a, k: s1[a][k] - s0[a][k]  # noqa: E731
    return {"seconds": seconds, "source_reads": d("source", "reads"),
            "source_bytes": d("source", "bytes"),
            "readahead_chunks": d("readahead", "chunks")}


def run(b):
    p = b.p
    if not p.a or not p.b:
        die("give both binaries: a=BINARY_OR_REV b=BINARY_OR_REV")
    n = min(p.readers, p.big_files)
    comp = b.component(suite.big(p))
    bins = {x: build.binary_for(p[x], b.bench_dir, x) for x in ("a", "b")}
    b.meta.update(dataset=comp.describe(), binaries={x: d for x, (_, d) in bins.items()},
                  chunks=n * p.big_mib, bytes=n * p.big_mib * MiB)
    files = [f"big{i}.bin" for i in range(n)]
    with b.slowfs(comp.path) as slow:
        b.meta["slowfs"] = " ".join(map(str, slow.args))
        for _ in b.runs():
            for x in ("a", "b"):
                s = System(x.upper(), "bicache", x.upper(), ram=p.ram, disk=p.disk)
                with b.start(s, comp.path, slow, binary=bins[x][0]) as m:
                    rec = cold_cats(b, m, files)
                    b.record({"type": "pass", "system": x.upper(), "pass": "cats", **rec})


def report(res, meta):
    p = meta["params"]
    spin = p["spin"] if p["spin"] >= 0 else "one per CPU"
    L = header(meta, [
        f"- A: {meta['binaries']['a']}; B: {meta['binaries']['b']}.",
        f"- Source: `slowfs {meta['slowfs']}` over the suite's big files ({meta['dataset']}). "
        f"bicache: `bicache mount SLOW MNT --cache-dir <fresh dir> --ram {p['ram']} "
        f"--disk {p['disk']}`.",
        f"- Per rep, A then B, each with a fresh cache dir and the page cache dropped: "
        f"{min(p['readers'], p['big_files'])} `cat`s at once, one file each, whole, while "
        f"busy loops ({spin}) take the CPUs. {meta['chunks']:,} chunks of 1 MiB in all: a "
        "stream never lost pulls each once."])
    rows = []
    for x in ("A", "B"):
        recs = [r for r in res.of_type("pass") if r["system"] == x]
        if not recs:
            continue
        reads = [r["source_reads"] for r in recs]
        amp = [r["source_bytes"] / meta["bytes"] for r in recs]
        ra = [r["readahead_chunks"] for r in recs]
        secs = res.median(x, "cats", lambda r: r["seconds"])
        rows.append([x, " / ".join(f"{v:,}" for v in reads),
                     " / ".join(f"{v:.3f}" for v in amp), " / ".join(f"{v:,}" for v in ra),
                     fmt(secs, ".2f")])
    L += [f"Per rep ({len(res.runs)}), and the median time:", ""]
    L += table(["binary", "source reads", "pulled / size", "readahead chunks queued",
                "seconds (median)"], rows)
    return "\n".join(L)
