"""randpass: a whole random pass over one large file, cold: every block read exactly once
in random order (fio randread, not time_based), through the slow source directly and
through bicache over it with a fresh cache dir (was scripts/bench-randpass.sh).

The suite's cold random passes (8 s each) see only the start of such a pass, where each
miss fetches a whole chunk; this shows the whole pass: time, and bytes pulled from the
source per byte read. Data: the first of the suite's big files.
"""

import os

from bicache_bench.report import header, table
from bicache_bench.systems import STANDARD
from scenarios import suite

TITLE = "a whole cold random pass over one big file: slowfs vs bicache"
DOC = "docs/BENCHMARKS.md"
SECTION = "bench-randpass"
HEADING = "Whole random pass (`bench/run.py randpass`)"
NEEDS = ["fio"]
PY_NEEDS = ["numpy"]

PARAMS = dict(runs=3, shapes="128k:512m 4k:64m", ram="2GiB", disk="4GiB", randseed=7,
              latency_ms=1.0, meta_latency_ms=-1.0, bandwidth_mbps=200.0, slowfs_threads=8,
              seed=20240611, big_files=4, big_mib=512)
QUICK = dict(big_mib=8, shapes="128k:8m 4k:1m")


def run(b):
    p = b.p
    comp = b.component(suite.big(p))
    b.meta.update(dataset=comp.describe())
    bc = STANDARD["bicache"].with_(ram=p.ram, disk=p.disk)
    shapes = [s.split(":") for s in p.list("shapes")]
    with b.slowfs(comp.path) as slow:
        b.meta["slowfs"] = " ".join(map(str, slow.args))
        for _ in b.runs():
            for bs, size in shapes:
                for s in (STANDARD["slowfs"], bc):
                    with b.start(s, comp.path, slow) as m:
                        b.measure(m, f"{bs} over {size}", lambda: b.fio(f"pass-{bs}", [
                            "--name=pass", f"--filename={os.path.join(m.root, 'big0.bin')}",
                            "--rw=randread", f"--bs={bs}", f"--size={size}", "--ioengine=psync",
                            "--readonly", f"--randseed={p.randseed}"]), bs=bs, size=size)


def report(res, meta):
    p = meta["params"]
    L = header(meta, [
        f"- Source: `slowfs {meta['slowfs']}` over the suite's big files ({meta['dataset']}); "
        "the pass reads `big0.bin`. bicache: `bicache mount SLOW MNT --cache-dir <fresh dir> "
        f"--ram {p['ram']} --disk {p['disk']}`.",
        "- fio `--rw=randread --bs=BS --size=SIZE --ioengine=psync --readonly --randseed="
        f"{p['randseed']}` (every block once, random order), cold, 1 job, page cache dropped "
        "first. pulled / read = bytes slowfs served (settled) / bytes read."])
    rows = []
    for pas in dict.fromkeys(r["pass"] for r in res.of_type("pass")):
        base = res.median("slowfs", pas, lambda r: r["seconds"])
        for s in ("slowfs", "bicache"):
            sec = res.median(s, pas, lambda r: r["seconds"])
            if sec is None:
                continue
            mb = res.median(s, pas, lambda r: r["bytes"] / r["seconds"] / 1e6)
            a = res.median(s, pas, lambda r: r["src"]["bytes"] / r["bytes"])
            bs, size = pas.split(" over ")
            rows.append([f"random {bs} over {size.replace('m', ' MiB')}",
                         "slowfs (source)" if s == "slowfs" else s, f"{sec:.1f}", f"{mb:.1f}",
                         f"{a:.3f}", f"**{base / sec:.2f}x**" if s != "slowfs" else "1.00x"])
    L += [f"Medians of {len(res.runs)} run(s):", ""]
    L += table(["pass", "system", "seconds", "MB/s", "pulled / read", "speed vs the source"], rows)
    return "\n".join(L)
