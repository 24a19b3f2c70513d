"""fio: sequential and random reads over big files, every system, page cache dropped
before every pass.

Data: the suite's 4 x 512 MiB files (big/) and one more 2 GiB file (one/big0.bin) that only
the cold random passes read. Systems: native, bindfs, slowfs, rclone, bicache with
--ram 2GiB (RAM holds the big files) and bicache-256m with --ram 256MiB (RAM holds under a
quarter of them; the rest comes from the SSD tier). Per run, slowfs up; per system:
  mount A (fresh cache): seq 1 job cold (the 4 files one after the other), SSD write-back
      drained, then warm: seq 1 job, seq 4 jobs (one file each), random 128k and 4k with
      `rand_jobs` jobs for `runtime` s over the 4 files
  mount B (fresh cache): seq 4 jobs cold
  per cold random config (bs x `cold_jobs`): mount C (fresh cache), random reads for
      `runtime` s over the cold 2 GiB file: speed vs slowfs read directly, and read
      amplification = bytes slowfs served / bytes read
native, bindfs and slowfs have no cache: their seq passes are measured once (the cold one
stands for warm, marked *), their random passes are measured as such.
"""

import os

from bicache_bench import data
from bicache_bench.report import counters_table, header, ram_limit, rss_table, workload_table
from bicache_bench.systems import STANDARD, RCLONE_ARGS, System, systems
from scenarios import suite

TITLE = "fio over big files: warm/cold sequential and random, every system"
DOC = "docs/BENCHMARKS.md"
SECTION = "bench-fio"
HEADING = "fio over big files (`bench/run.py fio`)"
NEEDS = ["fio", "bindfs", "rclone"]
PY_NEEDS = ["numpy"]
ORDER = ["native", "bindfs", "slowfs", "rclone", "bicache", "bicache-256m"]

PARAMS = dict(
    runs=3,
    systems="native bindfs slowfs rclone bicache bicache-256m",
    latency_ms=1.0, meta_latency_ms=-1.0, bandwidth_mbps=200.0, slowfs_threads=8,
    ram="2GiB", small_ram="256MiB", disk="8GiB", extra_mount_args="",
    seed=20240611, big_files=4, big_mib=512, cold_file_mib=2048,
    runtime=8, rand_jobs=4, rand_bs="128k 4k", cold_bs="4k 128k", cold_jobs="1 4",
)
QUICK = dict(big_mib=8, cold_file_mib=32, runtime=1, cold_jobs="4")


def stand_in(system, p):
    if system in ("native", "bindfs", "slowfs") and p.startswith("seq") and p.endswith("-warm"):
        return p[: -len("-warm")] + "-cold"
    return None


def run(b):
    p = b.p
    extra = tuple(p.extra_mount_args.split())
    own = {"bicache": STANDARD["bicache"].with_(label=f"bicache --ram {p.ram}", ram=p.ram,
                                                disk=p.disk, args=extra),
           "bicache-256m": System("bicache-256m", "bicache", f"bicache --ram {p.small_ram}",
                                  ram=p.small_ram, disk=p.disk, args=extra)}
    syss = systems(p.list("systems"), own)
    root = b.root(big=suite.big(p), one=data.big(1, p.cold_file_mib, p.seed + 1))
    b.meta.update(dataset={n: c.describe() for n, c in root.comps.items()},
                  labels={s.name: s.label for s in syss})
    for _ in b.runs():
        with b.slowfs(root.path) as slow:
            b.meta["slowfs"] = " ".join(map(str, slow.args))
            for s in syss:
                run_system(b, s, root, slow)


def run_system(b, s, root, slow):
    p = b.p
    n = p.big_files

    def up(phase):
        m = b.start(s, root.path, slow)
        if m.is_bicache:
            m.phase = phase
        return m

    big = lambda m: os.path.join(m.root, "big")  # noqa: E731
    with up("seq1+warm") as m:
        b.measure(m, "seq1-cold", lambda: suite.fio_seq1(b, big(m), n))
        if m.has_cache:
            if m.is_bicache:
                m.settle()
            b.measure(m, "seq1-warm", lambda: suite.fio_seq1(b, big(m), n))
            b.measure(m, "seq4-warm", lambda: suite.fio_seq4(b, big(m), n))
        for bs in p.list("rand_bs"):
            b.measure(m, f"rand{bs}-{p.rand_jobs}j-warm",
                      lambda: suite.fio_rand(b, big(m), n, bs, p.rand_jobs, p.runtime))
    with up("seq4-cold") as m:
        b.measure(m, "seq4-cold", lambda: suite.fio_seq4(b, big(m), n))
    cold = os.path.join("one", "big0.bin")
    for bs in p.list("cold_bs"):
        for jobs in map(int, p.list("cold_jobs")):
            with up(f"rand{bs}-{jobs}j-cold") as m:
                b.measure(m, f"rand{bs}-{jobs}j-cold", lambda: suite.fio_rand(
                    b, None, 0, bs, jobs, p.runtime, filename=os.path.join(m.root, cold)))


def report(res, meta):
    p = meta["params"]
    labels = {**{k: v.label for k, v in STANDARD.items()}, **meta["labels"]}
    mount = f"--disk {p['disk']}" + (f" {p['extra_mount_args']}" if p["extra_mount_args"] else "")
    L = header(meta, [
        f"- Data: `big/`: {meta['dataset']['big']} (the suite's); `one/big0.bin`: "
        f"{meta['dataset']['one']}, read only by the cold random passes.",
        f"- slowfs: `slowfs DATA SLOW {meta['slowfs']}`; rclone: `rclone mount SLOW MNT "
        f"{' '.join(RCLONE_ARGS)} --cache-dir <fresh dir>`; bicache: `bicache mount SLOW MNT "
        f"--cache-dir <fresh dir> --ram {p['ram']} {mount}`, and the same with "
        f"`--ram {p['small_ram']}`.",
        "- fio `--ioengine=psync --readonly`, bs 1M sequential (1 job through the files one "
        f"after the other; 4 jobs one file each), random `--time_based --runtime={p['runtime']}` "
        "(`--filename=a:b:c:d` for warm, the cold 2 GiB file for cold). A fresh cache dir for "
        "every cold pass; warm = the same mount after the cold pass (bicache: SSD write-back "
        "drained); `sync; echo 3 > /proc/sys/vm/drop_caches` before every pass. "
        "\"pulled from source\" is what slowfs served during the pass (settled); "
        "\"source / read\" the read amplification. Ratios are per run, median over runs."])
    L += [f"Medians of {len(res.runs)} run(s).", ""]
    passes = ["seq1-cold", "seq4-cold", "seq1-warm", "seq4-warm"]
    titles = {"seq1-cold": "sequential 1 MiB, 1 job, cold", "seq4-cold":
              "sequential 1 MiB, 4 jobs, cold", "seq1-warm": "sequential 1 MiB, 1 job, warm",
              "seq4-warm": "sequential 1 MiB, 4 jobs, warm"}
    for pas in passes:
        L += workload_table(res, pas, f"fio {titles[pas]}", "mb", labels,
                            ("native", "slowfs", "rclone"))
    for bs in p["rand_bs"].split():
        pas = f"rand{bs}-{p['rand_jobs']}j-warm"
        L += workload_table(res, pas, f"fio random {bs} reads, {p['rand_jobs']} jobs, warm",
                            "rand", labels, ("native", "slowfs", "rclone"))
    cold = []
    for bs in p["cold_bs"].split():
        for jobs in p["cold_jobs"].split():
            pas = f"rand{bs}-{jobs}j-cold"
            cold.append(pas)
            L += workload_table(res, pas, f"fio random {bs} reads, {jobs} job(s), cold, over "
                                f"the cold file", "rand", labels, ("slowfs", "native", "rclone"))
    L += counters_table(res, passes + [f"rand{bs}-{p['rand_jobs']}j-warm"
                                       for bs in p["rand_bs"].split()] + cold, labels,
                        [s for s in res.systems if s.startswith("bicache")])
    L += rss_table(res, labels, ram_limit)
    return "\n".join(L)
