"""ab-seq: A/B of two bicache binaries on warm sequential 1 MiB reads (was
scripts/bench-ab-seq.sh; the buffer-pool and readahead changes of docs/TUNING.md).

Both binaries are mounted at once straight over the suite's local big files (only the hit
path is measured), filled by reading every file once, left to drain their SSD write-back,
then read alternately, each pass right after dropping the page cache: fio 4 jobs (one file
each), then 1 job through all files. `a` and `b` are binaries or git revisions (built once
per commit, in BENCH_DIR).

    bench/run.py ab-seq a=eaa7417 b=HEAD
    bench/run.py ab-seq a=/tmp/old/bicache b=target/release/bicache ram=3GiB --runs 5
"""

import os

from bicache_bench import build
from bicache_bench.report import fmt, header, table
from bicache_bench.systems import System
from bicache_bench.util import MiB, die
from scenarios import suite

TITLE = "A/B of two bicache binaries: warm sequential 1 MiB reads, 1 and 4 jobs"
DOC = "docs/BENCHMARKS.md"
SECTION = "bench-ab-seq"
HEADING = "A/B of two binaries (`bench/run.py ab-seq`)"
NEEDS = ["fio"]
PY_NEEDS = ["numpy"]

PARAMS = dict(runs=3, a="", b="", ram="2GiB", disk="8GiB", seed=20240611, big_files=4,
              big_mib=512)
QUICK = dict(big_mib=8)


def run(b):
    p = b.p
    if not p.a or not p.b:
        die("give both binaries: a=BINARY_OR_REV b=BINARY_OR_REV")
    comp = b.component(suite.big(p))
    bins = {}
    for x in ("a", "b"):
        bins[x] = build.binary_for(p[x], b.bench_dir, x)
    b.meta.update(dataset=comp.describe(), binaries={x: d for x, (_, d) in bins.items()})
    mounts = {}
    try:
        for x in ("a", "b"):
            m = mounts[x] = b.start(System(x.upper(), "bicache", x.upper(), over="local",
                                           ram=p.ram, disk=p.disk), comp.path, binary=bins[x][0])
            m.phase = "fill+reps"
            for i in range(p.big_files):
                with open(os.path.join(m.root, f"big{i}.bin"), "rb", buffering=0) as f:
                    while f.read(MiB):
                        pass
        for m in mounts.values():
            m.settle()
        for _ in b.runs():
            for x in ("a", "b"):
                m = mounts[x]
                b.measure(m, "seq4", lambda: suite.fio_seq4(b, m.root, p.big_files))
                b.measure(m, "seq1", lambda: suite.fio_seq1(b, m.root, p.big_files))
    finally:
        for m in mounts.values():
            m.down()


def report(res, meta):
    p = meta["params"]
    mbps = lambda r: r["bytes"] / r["seconds"] / 1e6  # noqa: E731
    L = header(meta, [
        f"- A: {meta['binaries']['a']}; B: {meta['binaries']['b']}.",
        f"- Both mounted at once straight over the suite's big files ({meta['dataset']}): "
        f"`bicache mount BIG MNT --ram {p['ram']} --disk {p['disk']}`, filled by one read of "
        "every file, SSD write-back drained; then per rep A then B, each pass right after "
        "`drop_caches`: fio `--rw=read --bs=1M --ioengine=psync --readonly`, 4 jobs one file "
        "each, then 1 job through the files one after the other."])
    rows = []
    for pas, jobs in (("seq4", "4 jobs"), ("seq1", "1 job")):
        a, bb = res.median("A", pas, mbps), res.median("B", pas, mbps)
        rows.append([jobs, fmt(a, ",.0f"), fmt(bb, ",.0f"),
                     "-" if not a or bb is None else f"**{bb / a:.2f}x**",
                     fmt(res.ratio("B", "A", pas, mbps), ".2f")])
    L += [f"Warm sequential 1 MiB reads, MB/s, medians of {len(res.runs)} rep(s):", ""]
    L += table(["fio", "A", "B", "B / A (of the medians)", "median of per-rep B / A"], rows)
    L += ["", "Per rep:", ""]
    L += table(["rep", "binary", "pass", "MB/s", "RAM hits", "SSD hits"],
               [[r["run"], r["system"], r["pass"], f"{mbps(r):,.0f}", r["bc"]["ram_hits"],
                 r["bc"]["disk_hits"]] for r in res.of_type("pass")])
    return "\n".join(L)
