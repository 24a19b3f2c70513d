"""ab-cold-rand: A/B of two bicache binaries on the short cold random passes of the fio
scenario (8 s of random reads over a cold 2 GiB file), with slowfs read directly in the
same rep as the baseline.

Per rep, per pass (block size x jobs): slowfs, A, B, each bicache on a fresh cache dir,
the page cache dropped first. Speed is taken against slowfs in the same rep (the source
swings between reps), amplification = bytes slowfs served / bytes read. `a` and `b` are
binaries or git revisions (built once per commit).

    bench/run.py ab-cold-rand a=fe94b1a b=HEAD
"""

import os

from bicache_bench import build, data
from bicache_bench.report import fmt, fx, header, table
from bicache_bench.systems import STANDARD, System
from bicache_bench.util import die
from scenarios import suite

TITLE = "A/B of two bicache binaries: short cold random reads over slowfs"
DOC = "docs/TUNING.md"
SECTION = "bench-ab-cold-rand"
HEADING = "Short cold random passes, A/B (`bench/run.py ab-cold-rand`)"
NEEDS = ["fio"]
PY_NEEDS = ["numpy"]

PARAMS = dict(runs=3, a="", b="", ram="2GiB", disk="8GiB", latency_ms=1.0,
              meta_latency_ms=-1.0, bandwidth_mbps=200.0, slowfs_threads=8, seed=20240611,
              cold_file_mib=2048, runtime=8, bs="4k 128k", jobs="1 4", attr_ttl=0.0)
QUICK = dict(cold_file_mib=32, runtime=1, runs=1, jobs="4")


def passes(p):
    """(block size, jobs) per pass; `p` is the run's params or the report's dict."""
    return [(bs, int(j)) for bs in str(p["bs"]).split() for j in str(p["jobs"]).split()]


def run(b):
    p = b.p
    if not p.a or not p.b:
        die("give both binaries: a=BINARY_OR_REV b=BINARY_OR_REV")
    # The fio scenario's cold file (same seed), so the generated data is shared.
    comp = b.component(data.big(1, p.cold_file_mib, p.seed + 1))
    bins = {x: build.binary_for(p[x], b.bench_dir, x) for x in ("a", "b")}
    b.meta.update(dataset=comp.describe(), binaries={x: d for x, (_, d) in bins.items()})
    # attr_ttl > 0: a source whose client caches attributes (see attr-cache).
    with b.slowfs(comp.path, attr_ttl=float(p.attr_ttl)) as slow:
        b.meta["slowfs"] = " ".join(map(str, slow.args))
        for _ in b.runs():
            for bs, jobs in passes(p):
                name = f"rand{bs}-{jobs}j"
                for x in ("slowfs", "a", "b"):
                    if x == "slowfs":
                        s, binary = STANDARD["slowfs"], None
                    else:
                        s = System(x.upper(), "bicache", x.upper(), ram=p.ram, disk=p.disk)
                        binary = bins[x][0]
                    with b.start(s, comp.path, slow, binary=binary) as m:
                        if m.is_bicache:
                            m.phase = name
                        b.measure(m, name, lambda m=m: suite.fio_rand(
                            b, None, 0, bs, jobs, p.runtime,
                            filename=os.path.join(m.root, "big0.bin")))


def report(res, meta):
    p = meta["params"]
    mbps = lambda r: r["bytes"] / r["seconds"] / 1e6  # noqa: E731
    amp = lambda r: r["src"]["bytes"] / r["bytes"] if r["bytes"] else None  # noqa: E731
    L = header(meta, [
        f"- A: {meta['binaries']['a']}; B: {meta['binaries']['b']}.",
        f"- Data: one cold file ({meta['dataset']}) behind `slowfs {meta['slowfs']}`.",
        f"- Per rep, per pass: slowfs read directly, then A, then B, each bicache on a fresh "
        f"cache dir (`bicache mount SLOWFS MNT --ram {p['ram']} --disk {p['disk']}`), page "
        f"cache dropped first; fio `--rw=randread --bs=BS --ioengine=psync --numjobs=JOBS "
        f"--time_based --runtime={p['runtime']}` over the file. x the source: median of the "
        "per-rep ratios to slowfs in the same rep; pulled / read = bytes slowfs served "
        "(settled) / bytes read."])
    rows = []
    for bs, jobs in passes(p):
        pas = f"rand{bs}-{jobs}j"
        rows.append([f"random {bs}, {jobs} job{'s' if jobs > 1 else ''}",
                     fmt(res.median("slowfs", pas, mbps)),
                     fmt(res.median("A", pas, mbps)), fmt(res.median("B", pas, mbps)),
                     f"{fx(res.ratio('A', 'slowfs', pas, mbps))} / "
                     f"**{fx(res.ratio('B', 'slowfs', pas, mbps))}**",
                     f"{fmt(res.median('A', pas, amp), '.3f')} / "
                     f"{fmt(res.median('B', pas, amp), '.3f')}"])
    L += [f"Medians of {len(res.runs)} rep(s):", ""]
    L += table(["pass", "slowfs MB/s", "A MB/s", "B MB/s", "x the source (A / B)",
                "pulled / read (A / B)"], rows)
    L += ["", "Per rep:", ""]
    L += table(["rep", "system", "pass", "MB/s", "pulled / read", "source reads"],
               [[r["run"], r["system"], r["pass"], f"{mbps(r):,.1f}", fmt(amp(r), ".3f"),
                 r["src"]["reads"]] for r in res.of_type("pass")])
    return "\n".join(L)
