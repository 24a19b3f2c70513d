"""attr-cache: what bicache's check of each source read costs, over a source with no
attribute cache (the benchmark's slowfs) and over one whose client keeps attributes for a
few seconds, as an NFS client does (`acregmin`, 3 s by default).

bicache serves one version of a file per open: after every read from the source it
`fstat`s the descriptor, so bytes of a file rewritten in place are never mixed with the
old ones (docs/RELIABILITY.md). Over slowfs, which lets the kernel cache nothing, that
`fstat` is a second 1 ms round trip per read; where the client caches attributes it is
answered locally. `--immutable` skips the check once a descriptor is proven. The floor
under all of them is `floorfs --read-through` over slowfs: a FUSE filesystem that passes
each read to the source through a descriptor held per open, caching and checking nothing
(the hop in front of the source alone).

Per run and per `attr_ttls` value T: slowfs with `--attr-ttl T`; per cold random config
(the fio suite's: bs x jobs, `runtime` s over the cold 2 GiB file): slowfs read directly,
floorfs --read-through, bicache, and bicache `--immutable` (each bicache on a fresh cache
dir); `systems=` picks some of them.

    bench/run.py attr-cache --write-doc
"""

import os

from bicache_bench import data
from bicache_bench.report import fmt, header, table
from bicache_bench.systems import STANDARD, systems as named
from scenarios import suite

TITLE = "the per-read version check: cold random reads with and without a client attribute cache"
DOC = "docs/TUNING.md"
SECTION = "bench-attr-cache"
HEADING = "The version check over a source that caches attributes (`bench/run.py attr-cache`)"
NEEDS = ["fio"]
PY_NEEDS = ["numpy"]

PARAMS = dict(runs=3, attr_ttls="0 3", systems="slowfs floorfs-rt bicache bicache-imm",
              ram="2GiB", disk="8GiB", latency_ms=1.0, meta_latency_ms=-1.0, bandwidth_mbps=200.0, slowfs_threads=8, seed=20240611,
              cold_file_mib=2048, runtime=8, cold_bs="4k 128k", cold_jobs="1 4")
QUICK = dict(cold_file_mib=32, runtime=1, runs=1, cold_jobs="4")

COLD = os.path.join("one", "big0.bin")


ORDER = ["slowfs", "floorfs-rt", "bicache", "bicache-imm"]
LABELS = {"slowfs": "slowfs (source)", "floorfs-rt": "floorfs --read-through (the hop alone)",
          "bicache": "bicache", "bicache-imm": "bicache --immutable"}


def systems(p):
    own = {"bicache": STANDARD["bicache"].with_(ram=p.ram, disk=p.disk),
           "bicache-imm": STANDARD["bicache-imm"].with_(ram=p.ram, disk=p.disk)}
    return named(p.list("systems"), own)


def run(b):
    p = b.p
    # The same cold file as the fio scenario's cold random passes (same seed).
    root = b.root(one=data.big(1, p.cold_file_mib, p.seed + 1))
    b.meta.update(dataset=root.comps["one"].describe())
    for _ in b.runs():
        for ttl in p.list("attr_ttls"):
            with b.slowfs(root.path, attr_ttl=float(ttl)) as slow:
                b.meta[f"slowfs{ttl}"] = " ".join(map(str, slow.args))
                for bs in p.list("cold_bs"):
                    for jobs in map(int, p.list("cold_jobs")):
                        for s in systems(p):
                            with b.start(s, root.path, slow) as m:
                                b.measure(m, f"ttl{ttl} rand{bs}-{jobs}j", lambda: suite.fio_rand(
                                    b, None, 0, bs, jobs, p.runtime,
                                    filename=os.path.join(m.root, COLD)))


def report(res, meta):
    p = meta["params"]
    mbps = lambda r: r["bytes"] / r["seconds"] / 1e6  # noqa: E731
    amp = lambda r: r["src"]["bytes"] / r["bytes"] if r["bytes"] else None  # noqa: E731
    meta_per_read = lambda r: r["src"]["meta"] / r["src"]["reads"] if r["src"]["reads"] else None  # noqa: E731
    L = header(meta, [
        f"- Data: {meta['dataset']} (the fio scenario's cold file). slowfs: `slowfs DATA SLOW "
        f"{meta.get('slowfs0', '')} [--attr-ttl T]`. bicache: `bicache mount SLOW MNT "
        f"--cache-dir <fresh dir> --ram {p['ram']} --disk {p['disk']} [--immutable]`. "
        "floorfs: `floorfs SLOW MNT --read-through` (examples/floorfs.rs: each read passed "
        "to the source through the descriptor of its open, nothing cached or checked).",
        f"- fio `--rw=randread --ioengine=psync --readonly --time_based --runtime={p['runtime']}` "
        "over the cold file, page cache dropped first, a fresh cache dir per pass. "
        "Speed as x slowfs read directly in the same run and with the same attribute TTL; "
        "amplification = bytes slowfs served / bytes read; source metadata requests per "
        "source read as slowfs counted them."])
    rows = []
    for ttl in p["attr_ttls"].split():
        for bs in p["cold_bs"].split():
            for jobs in p["cold_jobs"].split():
                pas = f"ttl{ttl} rand{bs}-{jobs}j"
                for s in ORDER:
                    v = res.median(s, pas, mbps)
                    if v is None:
                        continue
                    ratio = res.ratio(s, "slowfs", pas, mbps)
                    rows.append([f"{ttl} s", f"{bs}, {jobs} job(s)",
                                 LABELS[s],
                                 fmt(v, ",.1f"),
                                 "1.00x" if s == "slowfs" else f"**{fmt(ratio, '.2f')}x**",
                                 fmt(res.median(s, pas, amp), ".2f") if s != "slowfs" else "1.00",
                                 fmt(res.median(s, pas, meta_per_read), ".2f")])
    L += [f"Medians of {len(res.runs)} run(s):", ""]
    L += table(["attribute TTL", "cold random", "system", "MB/s", "x the source",
                "amplification", "source metadata requests per read"], rows)
    return "\n".join(L)
