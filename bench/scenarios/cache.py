"""cache: bicache over the slow source, cold / warm / after a remount, against reading the
source directly (was scripts/bench-cache.sh).

Per run: slowfs over a 2 GiB tree; the no-cache pass reads every file from slowfs itself;
then bicache over slowfs with a fresh cache dir: cold pass, warm pass (page cache dropped,
SSD write-back drained), and (remount=1) a pass after `bicache unmount` + mount on the same
cache dir. A pass reads every file whole: 1 MiB page-aligned reads, `workers` processes
taking one file at a time, a new seeded random order per pass.
"""

from bicache_bench import data
from bicache_bench.report import header, med, mib, table
from bicache_bench.systems import STANDARD
from bicache_bench.util import MiB, KiB

TITLE = "bicache over slowfs: cold, warm, remount vs the source read directly"
DOC = "docs/BENCHMARKS.md"
SECTION = "bench-cache"
NEEDS = []
PY_NEEDS = ["numpy"]

PARAMS = dict(
    runs=3,
    latency_ms=1.0, meta_latency_ms=-1.0, bandwidth_mbps=200.0, slowfs_threads=8,
    ram="256MiB", disk="4GiB", extra_mount_args="",
    workers=4, seed=20240601, remount=True, baseline=True,
    big_files=16, big_mib=64, small_files=1000, small_dirs=10,
)
QUICK = dict(big_files=2, big_mib=4, small_files=40, small_dirs=2)


def dataset(p):
    return dict(big=data.big(p.big_files, p.big_mib, p.seed),
                small=data.files(p.small_files, p.small_dirs, 512 * KiB, 1536 * KiB, "uniform",
                                 p.seed))


def run(b):
    p = b.p
    root = b.root(**dataset(p))
    listing = root.combined_listing()
    b.meta["dataset"] = {"files": root.files, "bytes": root.bytes,
                         "parts": {n: c.describe() for n, c in root.comps.items()}}
    bc = STANDARD["bicache"].with_(ram=p.ram, disk=p.disk,
                                   args=tuple(p.extra_mount_args.split()))

    def reader(where, seed):
        return lambda: b.work("epoch", where, listing, seed, "--workers", p.workers,
                              "--batch", 1, "--read", "aligned")

    for r in b.runs():
        seed = p.seed + 100 * r
        with b.slowfs(root.path) as slow:
            b.meta["slowfs"] = " ".join(map(str, slow.args))
            if p.baseline:
                b.measure(slow, "no cache", reader(slow.root, seed))
            with b.start(bc, root.path, slow) as m:
                m.phase = "cold+warm"
                b.measure(m, "cold", reader(m.root, seed + 1))
                m.settle()
                b.measure(m, "warm", reader(m.root, seed + 2))
                if p.remount:
                    m.remount()
                    m.phase = "remount"
                    b.measure(m, "remount", reader(m.root, seed + 3))


def report(res, meta):
    p = meta["params"]
    ds = meta["dataset"]
    runs = res.runs
    passes = ["cold", "warm"] + (["remount"] if res.has("remount") else [])
    baseline = res.has("no cache")
    mounts = res.of_type("mount")
    cap = next((m["final"]["ram"]["capacity"] for m in mounts if m.get("final")), None)
    limit_kb = (cap + 100 * MiB) / 1024 if cap else None

    def m(system, pas, f):
        return res.median(system, pas, f)

    def pct(r, key):
        v = r["bc"]["source_bytes"] if key == "bc" else r["src"]["bytes"]
        return 100.0 * v / r["bytes"]

    def both(pas):
        return (f"{m('bicache', pas, lambda r: pct(r, 'bc')):.1f}% / "
                f"{m('bicache', pas, lambda r: pct(r, 'src')):.1f}%")

    mbps = lambda r: r["bytes"] / r["seconds"] / 1e6  # noqa: E731
    mount = f"--ram {p['ram']} --disk {p['disk']}" + (f" {p['extra_mount_args']}"
                                                     if p["extra_mount_args"] else "")
    L = ["## Cache benchmark (`bench/run.py cache`)", ""]
    L += header(meta, [
        f"- Source: `slowfs {meta['slowfs']}` (examples/slowfs.rs) serving a local copy of the "
        "dataset: latency per read and per metadata request, a bandwidth cap in total, "
        "nothing cached by the kernel (direct I/O, zero TTLs).",
        f"- Dataset: {ds['files']:,} files, {ds['bytes']:,} bytes: `big/`: {ds['parts']['big']}; "
        f"`small/`: {ds['parts']['small']}.",
        f"- bicache: `bicache mount SLOWFS_MNT MNT --cache-dir <fresh dir> {mount}`, other "
        "options at their defaults.",
        f"- A pass reads every file whole (1 MiB page-aligned reads, {p['workers']} processes, "
        "seeded random order, a new order per pass), timed, right after `sync; echo 3 > "
        "/proc/sys/vm/drop_caches`. Cold: fresh cache dir. Warm: same mount, once the SSD "
        "write-back stopped moving. Remount: `bicache unmount`, mount again on the same cache "
        "dir." + (" No cache: the same pass on the slowfs mount itself, before bicache is "
                  "mounted." if baseline else ""),
        "- Source bytes: bicache's own `source.bytes` counter, and what slowfs says it served, "
        "both as deltas over the pass, in % of the bytes the pass read. MB = 10^6 bytes.",
        "- RSS: the daemon's VmHWM from /proc/PID/status, read just before each unmount (max of "
        "the run's mounts), and the largest VmRSS sampled every 0.2 s. Limit = RAM budget + "
        f"100 MiB = {mib(limit_kb)}.",
    ])
    L += [f"Medians of {len(runs)} run(s):", ""]
    rows = []
    if baseline:
        rows += [["no cache: same reader on the slowfs mount",
                  f"{m('slowfs', 'no cache', mbps):.1f} MB/s"],
                 ["cold / no cache", f"{res.ratio('bicache', 'slowfs', 'cold', mbps, 'no cache'):.2f}x"]]
    rows += [["cold read", f"{m('bicache', 'cold', mbps):.1f} MB/s"],
             ["warm read", f"{m('bicache', 'warm', mbps):.1f} MB/s"],
             ["warm / cold", f"{res.ratio('bicache', 'bicache', 'warm', mbps, 'cold'):.2f}x"],
             ["cold: bytes pulled from the source (bicache / slowfs)", both("cold")],
             ["warm: bytes pulled from the source (bicache / slowfs)", both("warm")]]
    if "remount" in passes:
        rows += [["after remount: read", f"{m('bicache', 'remount', mbps):.1f} MB/s"],
                 ["after remount: bytes pulled from the source (bicache / slowfs)",
                  both("remount")]]
    by_run = {}
    for x in mounts:
        by_run.setdefault(x["run"], []).append(x)
    hwm = med([max(x["hwm_kb"] or 0 for x in v) for v in by_run.values()])
    rss = med([max(x["rss_max_kb"] or 0 for x in v) for v in by_run.values()])
    if hwm is not None:
        ok = "within" if limit_kb is None or hwm <= limit_kb else "OVER"
        rows += [["daemon peak RSS (VmHWM)", f"{mib(hwm)}, {ok} the {mib(limit_kb)} limit"],
                 ["daemon largest sampled VmRSS", mib(rss)]]
    L += table(["metric", "median"], rows)
    L += ["", "Per run (source bytes in MB and in % of the bytes read):", ""]
    rows = []
    for run in runs:
        for pas in (["no cache"] if baseline else []) + passes:
            sysname = "slowfs" if pas == "no cache" else "bicache"
            r, _ = res.get(sysname, pas, run)
            if r is None:
                continue
            bc = r.get("bc")
            rows.append([run, pas, f"{r['seconds']:.2f}", f"{mbps(r):.1f}",
                         f"{bc['source_bytes'] / 1e6:,.0f} ({pct(r, 'bc'):.1f}%)" if bc else "-",
                         f"{r['src']['bytes'] / 1e6:,.0f} ({pct(r, 'src'):.1f}%)",
                         f"{r['src']['reads']} / {r['src']['meta']}",
                         bc["ram_hits"] if bc else "-", bc["disk_hits"] if bc else "-",
                         bc["disk_writes_dropped"] if bc else "-"])
    L += table(["run", "pass", "seconds", "MB/s", "bicache source bytes", "slowfs bytes",
                "slowfs reads / meta ops", "RAM hits", "SSD hits", "SSD writes dropped"], rows)
    L += [""]
    L += table(["run", "mount used for", "VmHWM", "largest sampled VmRSS", "limit"],
               [[x["run"], x["phase"], mib(x["hwm_kb"]), mib(x["rss_max_kb"]), mib(limit_kb)]
                for x in mounts])
    return "\n".join(L)
