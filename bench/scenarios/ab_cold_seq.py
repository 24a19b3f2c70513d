"""ab-cold-seq: A/B of two bicache binaries on cold sequential 1 MiB reads over slowfs,
the case where every chunk read lands in fresh memory (docs/TUNING.md, "Huge pages").

Per rep, per pass (fio 1 job through the suite's big files one after the other, then 4 jobs
one file each) and per binary, alternating A and B: a fresh cache dir over slowfs, the
page cache dropped, one fio pass. Besides the throughput (against slowfs's bandwidth cap)
it records the daemon's minor page faults and CPU time over the pass, from
/proc/PID/stat. `a` and `b` are binaries or git revisions (built once per commit).

    bench/run.py ab-cold-seq a=40d0cfa b=HEAD
    bench/run.py ab-cold-seq a=40d0cfa b=HEAD ram=256MiB
    bench/run.py ab-cold-seq a=ba2be9d b=HEAD warm=1 passes=seq1

`warm=1`: after each cold seq1 pass, the SSD write-back drained, the same mount reads the
files again (`seq1-warm`: passthrough from the files just filled), and each rep reads the
files natively once (`native`, after the binaries) for a ratio. `pretouch_mib=N` reads N MiB
of another file before each warm pass, so the warm pass's page cache lands in memory the
VM has already backed (docs/TUNING.md, "Not done, and why": the O_DIRECT write-back).
"""

import os

from bicache_bench import build
from bicache_bench.report import fmt, header, table
from bicache_bench.systems import STANDARD, System
from bicache_bench.util import die
from scenarios import suite

TITLE = "A/B of two bicache binaries: cold sequential 1 MiB reads over slowfs"
DOC = "docs/TUNING.md"
SECTION = "bench-ab-cold-seq"
HEADING = "Cold sequential reads into fresh memory (`bench/run.py ab-cold-seq`)"
NEEDS = ["fio"]
PY_NEEDS = ["numpy"]

PARAMS = dict(runs=3, a="", b="", ram="2GiB", disk="8GiB", latency_ms=1.0,
              meta_latency_ms=-1.0, bandwidth_mbps=200.0, slowfs_threads=8, seed=20240611,
              big_files=4, big_mib=512, passes="seq1 seq4", warm=0, pretouch_mib=0)
QUICK = dict(big_mib=8, runs=1)

TICK = os.sysconf("SC_CLK_TCK")


def proc_counters(pid):
    """Minor faults, user and system CPU seconds of a process so far."""
    with open(f"/proc/{pid}/stat") as f:
        # Fields after the command name, which is in parentheses and may hold spaces.
        rest = f.read().rsplit(")", 1)[1].split()
    return {"minflt": int(rest[7]), "utime": int(rest[11]) / TICK,
            "stime": int(rest[12]) / TICK}


def run(b):
    p = b.p
    if not p.a or not p.b:
        die("give both binaries: a=BINARY_OR_REV b=BINARY_OR_REV")
    if p.big_files < 4:
        die("big_files must be >= 4 (fio seq4 reads four files)")
    comp = b.component(suite.big(p))
    bins = {x: build.binary_for(p[x], b.bench_dir, x) for x in ("a", "b")}
    b.meta.update(dataset=comp.describe(), binaries={x: d for x, (_, d) in bins.items()})
    every = {"seq1": lambda root: suite.fio_seq1(b, root, p.big_files),
             "seq4": lambda root: suite.fio_seq4(b, root)}
    passes = {n: every[n] for n in p.list("passes")}
    other = data_file(comp.path)
    with b.slowfs(comp.path) as slow:
        b.meta["slowfs"] = " ".join(map(str, slow.args))
        for _ in b.runs():
            for name, fio in passes.items():
                for x in ("a", "b"):
                    s = System(x.upper(), "bicache", x.upper(), ram=p.ram, disk=p.disk)
                    with b.start(s, comp.path, slow, binary=bins[x][0]) as m:
                        m.phase = name

                        def counted(m=m, fio=fio):
                            c0 = proc_counters(m.pid)
                            out = fio(m.root)
                            c1 = proc_counters(m.pid)
                            return {**out, "proc": {k: c1[k] - c0[k] for k in c0}}

                        b.measure(m, name, counted)
                        if p.warm and name == "seq1":
                            m.settle()
                            if p.pretouch_mib:
                                pretouch(other, p.pretouch_mib)
                            b.measure(m, "seq1-warm", counted)
            if p.warm:
                with b.start(STANDARD["native"], comp.path) as m:
                    b.measure(m, "seq1-warm", lambda: suite.fio_seq1(b, m.root, p.big_files))


def data_file(root):
    """The last of the big files: read only to touch memory (pretouch)."""
    return os.path.join(root, sorted(f for f in os.listdir(root) if f.endswith(".bin"))[-1])


def pretouch(path, mib):
    """Reads `mib` MiB of `path` through the page cache (then dropped by the next pass)."""
    with open(path, "rb", buffering=0) as f:
        for _ in range(mib):
            if not f.read(1 << 20):
                break


def report(res, meta):
    p = meta["params"]
    cap = p["bandwidth_mbps"]
    mbps = lambda r: r["bytes"] / r["seconds"] / 1e6  # noqa: E731
    L = header(meta, [
        f"- A: {meta['binaries']['a']}; B: {meta['binaries']['b']}.",
        f"- Data: the suite's big files ({meta['dataset']}), read through slowfs "
        f"({meta['slowfs']}); bandwidth cap {cap:.0f} MB/s.",
        f"- Per rep, per pass, A then B, each on a fresh cache dir: `bicache mount SLOWFS MNT "
        f"--ram {p['ram']} --disk {p['disk']}`, `drop_caches`, one fio pass (`--rw=read "
        "--bs=1M --ioengine=psync --readonly`; 1 job through the files one after the other, "
        "or 4 jobs one file each). Faults and CPU: the daemon's /proc/PID/stat over the pass."])
    rows = []
    for pas, jobs in (("seq1", "1 job"), ("seq4", "4 jobs")):
        if pas not in p.get("passes", "seq1 seq4").split():
            continue
        a, bb = res.median("A", pas, mbps), res.median("B", pas, mbps)
        med = lambda s, k: res.median(s, pas, lambda r: r["proc"][k])  # noqa: E731
        rows.append([jobs, fmt(a, ",.1f"), fmt(bb, ",.1f"),
                     "-" if not a or bb is None else f"{a / cap:.2f}x / **{bb / cap:.2f}x**",
                     fmt(res.ratio("B", "A", pas, mbps), ".2f"),
                     f"{fmt(med('A', 'minflt'), ',.0f')} / {fmt(med('B', 'minflt'), ',.0f')}",
                     f"{fmt(med('A', 'stime'), '.1f')} / {fmt(med('B', 'stime'), '.1f')}"])
    L += [f"Cold sequential 1 MiB reads, medians of {len(res.runs)} rep(s):", ""]
    L += table(["fio", "A MB/s", "B MB/s", "x the cap (A / B)", "median of per-rep B / A",
                "daemon minor faults (A / B)", "daemon system CPU s (A / B)"], rows)
    if p.get("warm"):
        a, bb = res.median("A", "seq1-warm", mbps), res.median("B", "seq1-warm", mbps)
        ra = res.ratio("A", "native", "seq1-warm", mbps)
        rb = res.ratio("B", "native", "seq1-warm", mbps)
        touched = (f", {p['pretouch_mib']} MiB of another file read first"
                   if p.get("pretouch_mib") else "")
        L += ["", "The warm pass right after each cold seq1 pass (same mount, write-back "
              f"drained, page cache dropped{touched}), against native reads of the same "
              "files in the same rep:", ""]
        L += table(["fio", "A MB/s", "B MB/s", "native MB/s", "x native (A / B)"],
                   [["1 job, warm", fmt(a, ",.1f"), fmt(bb, ",.1f"),
                     fmt(res.median("native", "seq1-warm", mbps), ",.1f"),
                     f"{fmt(ra, '.2f')}x / **{fmt(rb, '.2f')}x**"]])
    L += ["", "Per rep:", ""]
    L += table(["rep", "binary", "pass", "MB/s", "minor faults", "user s", "system s",
                "source reads"],
               [[r["run"], r["system"], r["pass"], f"{mbps(r):,.1f}",
                 f"{r['proc']['minflt']:,}", f"{r['proc']['utime']:.2f}",
                 f"{r['proc']['stime']:.2f}", r["src"]["reads"]] if "proc" in r else
                [r["run"], r["system"], r["pass"], f"{mbps(r):,.1f}", "-", "-", "-", "-"]
                for r in res.of_type("pass")])
    return "\n".join(L)
