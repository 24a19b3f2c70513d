"""suite: bicache side by side with the local disk, plain FUSE, the slow source itself and
rclone's VFS cache (was scripts/bench.sh + bench_report.py).

Per run, slowfs over the local copy; per system, in this order (a fresh cache dir and a
new mount wherever a pass is cold; the page cache dropped before every pass):
  1. walk: os.walk + stat of every file of imagenet/ (one thread), cold, then warm
  2. `epochs` epochs over imagenet/: every file read whole by `workers` processes taking
     batches of 32 from a queue (a DataLoader), seeded random order (new per epoch, the same
     for every system of a run); epoch 1 cold for the data (the walk came first)
  3. zarr: `workers` processes read the array one chunk row at a time, random order, cold
     then warm
  4. fio sequential 1 MiB: 1 job over the big files one after the other, cold then warm;
     then 4 jobs, one file each, cold (fresh cache) then warm
  5. fio random, time_based `rand_runtime` s over the big files, 4k/128k x 1/4 jobs: warm
     (the cache holds the big files from step 4), then cold (a fresh cache before each)
native, bindfs and slowfs have no cache of their own: their cold pass stands for warm
(marked *), slowfs runs `slowfs_epochs` epoch(s). bicache-imm runs steps 1-2 only.
"""

import importlib.util
import os
import statistics
import sys

from bicache_bench import data
from bicache_bench.report import (MiB, counters_table, fx, header, rss_table, table,
                                  verdict, workload_table, amp, fps, mbps, ram_limit)
from bicache_bench.systems import STANDARD, RCLONE_ARGS, BINDFS_ARGS, systems
from bicache_bench.util import KiB, die

TITLE = "bicache vs native, bindfs, slowfs and rclone: fio, epochs, zarr, walk"
DOC = "docs/BENCHMARKS.md"
SECTION = "bench-suite"
NEEDS = ["fio", "bindfs", "rclone"]
PY_NEEDS = ["numpy", "zarr"]
ORDER = ["native", "bindfs", "slowfs", "rclone", "bicache", "bicache-imm"]

PARAMS = dict(
    runs=3,
    systems="native bindfs slowfs rclone bicache bicache-imm",
    workloads="walk epoch zarr seq rand",
    latency_ms=1.0, meta_latency_ms=-1.0, bandwidth_mbps=200.0, slowfs_threads=8,
    ram="2GiB", disk="8GiB", extra_mount_args="", rclone_extra_args="",
    workers=4, epochs=3, slowfs_epochs=1, rand_runtime=8, rand_cold=True,
    seed=20240611, big_files=4, big_mib=512,
    small_files=20000, small_dirs=100, small_min_kib=16, small_max_kib=256,
    zarr_rows=8192, zarr_chunk_rows=4,
    plot=True,
)
QUICK = dict(big_files=4, big_mib=8, small_files=300, small_dirs=4, zarr_rows=256,
             epochs=2, rand_runtime=1)

RAND = [("4k", 1), ("4k", 4), ("128k", 1), ("128k", 4)]
LABELS = {s: STANDARD[s].label for s in ORDER}
NO_CACHE = {"native", "bindfs", "slowfs"}


# The suite's three trees. Other scenarios use the same specs (so the same cached copy):
# passthrough the ImageNet-like tree, ab-seq, randpass and fio the big files.
def imagenet(p):
    return data.files(p["small_files"], p["small_dirs"], p["small_min_kib"] * KiB,
                      p["small_max_kib"] * KiB, "loguniform", p["seed"])


def big(p):
    return data.big(p["big_files"], p["big_mib"], p["seed"])


def zarr(p):
    return data.zarr_array(p["zarr_rows"], p["zarr_chunk_rows"], p["seed"])


def dataset(p):
    return dict(big=big(p), imagenet=imagenet(p), zarr=zarr(p))


def stand_in(system, wl):
    """For a system without a cache, the measured pass that stands for `wl`, or None."""
    if system not in NO_CACHE:
        return None
    if wl.endswith("-warm") and wl.startswith(("seq", "zarr", "walk")):
        return wl[: -len("-warm")] + "-cold"
    if wl.endswith("-cold") and wl.startswith("rand"):
        return wl[: -len("-cold")] + "-warm"
    if wl.startswith("epoch") and wl != "epoch1":
        return "epoch1"
    return None


# ------------------------------------------------------------------------- fio
def big_files(root, n):
    return ":".join(os.path.join(root, f"big{i}.bin") for i in range(n))


def fio_seq1(b, root, n):
    return b.fio("seq1", ["--name=seq1", "--readonly", "--rw=read", "--bs=1M", "--ioengine=psync",
                          f"--filename={big_files(root, n)}", "--file_service_type=sequential",
                          "--group_reporting"])


def fio_seq4(b, root, n=4):
    args = ["--readonly", "--rw=read", "--bs=1M", "--ioengine=psync", "--group_reporting"]
    for i in range(min(n, 4)):
        args += [f"--name=seq4-{i}", f"--filename={os.path.join(root, f'big{i}.bin')}"]
    return b.fio("seq4", args)


def fio_rand(b, root, files, bs, jobs, runtime, filename=None):
    return b.fio(f"rand{bs}-{jobs}j", [
        "--name=rand", "--readonly", "--rw=randread", f"--bs={bs}", "--ioengine=psync",
        f"--filename={filename or big_files(root, files)}", f"--numjobs={jobs}",
        "--time_based", f"--runtime={runtime}", "--group_reporting"])


# ---------------------------------------------------------------------------- run
def run(b):
    p = b.p
    want = set(p.list("workloads"))
    bad = want - {"walk", "epoch", "zarr", "seq", "rand"}
    if bad:
        die(f"unknown workloads {sorted(bad)}")
    if p.big_files < 4:
        die("big_files must be >= 4 (fio seq4 reads four files)")
    ext = {"bicache": STANDARD["bicache"].with_(ram=p.ram, disk=p.disk,
                                                args=tuple(p.extra_mount_args.split())),
           "bicache-imm": STANDARD["bicache-imm"].with_(
               ram=p.ram, disk=p.disk, args=("--immutable", *p.extra_mount_args.split()))}
    syss = systems(p.list("systems"), ext)
    root = b.root(**dataset(p))
    listing = root.listing("imagenet")
    imagenet = root.comps["imagenet"]
    b.meta["dataset"] = {n: c.describe() for n, c in root.comps.items()}
    b.meta["imagenet"] = {"files": imagenet.files, "bytes": imagenet.bytes}
    rclone_extra = p.rclone_extra_args.split()

    for r in b.runs():
        with b.slowfs(root.path) as slow:
            b.meta["slowfs"] = " ".join(map(str, slow.args))
            for s in syss:
                run_system(b, s, root, listing, slow, want, rclone_extra, r)


def run_system(b, s, root, listing, slow, want, rclone_extra, r):
    p = b.p
    seed = p.seed + 1000 * r
    data_dir = root.path

    def up(phase):
        m = b.start(s, data_dir, slow, extra_args=rclone_extra if s.kind == "rclone" else ())
        if m.is_bicache:
            m.phase = phase
        return m

    def settle(m):
        if m.is_bicache:
            m.settle()

    sub = lambda m, name: os.path.join(m.root, name)  # noqa: E731
    m = up("walk+epochs" if s.name == "bicache-imm" else "walk+epochs+zarr")
    try:
        if "walk" in want:
            b.measure(m, "walk-cold", lambda: b.work("walk", sub(m, "imagenet")))
            if s.name != "slowfs":
                b.measure(m, "walk-warm", lambda: b.work("walk", sub(m, "imagenet")))
        if "epoch" in want:
            n = p.slowfs_epochs if s.name == "slowfs" else p.epochs
            for e in range(1, n + 1):
                b.measure(m, f"epoch{e}", lambda: b.work(
                    "epoch", sub(m, "imagenet"), listing, seed + e, "--workers", p.workers))
                settle(m)
        if s.name == "bicache-imm":
            return
        if "zarr" in want:
            arr = os.path.join(m.root, "zarr", "array.zarr")
            b.measure(m, "zarr-cold", lambda: b.work("zarr", arr, seed + 11, "--workers", p.workers))
            if m.has_cache:
                settle(m)
                b.measure(m, "zarr-warm",
                          lambda: b.work("zarr", arr, seed + 12, "--workers", p.workers))
        if "seq" in want:
            m.down()
            m = up("seq1")
            big = sub(m, "big")
            b.measure(m, "seq1-cold", lambda: fio_seq1(b, big, p.big_files))
            if m.has_cache:
                settle(m)
                b.measure(m, "seq1-warm", lambda: fio_seq1(b, big, p.big_files))
        m.down()
        m = up("seq4+rand-warm")
        big = sub(m, "big")
        if "seq" in want:
            b.measure(m, "seq4-cold", lambda: fio_seq4(b, big))
            if m.has_cache:
                settle(m)
                b.measure(m, "seq4-warm", lambda: fio_seq4(b, big))
        elif "rand" in want and m.has_cache:
            fio_seq4(b, big)  # the warm random passes need the big files cached: untimed
            settle(m)
        if "rand" in want:
            for bs, nj in RAND:
                b.measure(m, f"rand{bs}-{nj}j-warm",
                          lambda: fio_rand(b, big, p.big_files, bs, nj, p.rand_runtime))
            if m.has_cache and p.rand_cold:
                for bs, nj in RAND:
                    m.down()
                    m = up(f"rand{bs}-{nj}j-cold")
                    big = sub(m, "big")
                    b.measure(m, f"rand{bs}-{nj}j-cold",
                              lambda: fio_rand(b, big, p.big_files, bs, nj, p.rand_runtime))
    finally:
        m.down()


# ------------------------------------------------------------------------- report
WORKLOADS = [
    ("seq1-cold", "fio sequential 1 MiB reads, 1 job, cold", "mb"),
    ("seq4-cold", "fio sequential 1 MiB reads, 4 jobs, cold", "mb"),
    ("seq1-warm", "fio sequential 1 MiB reads, 1 job, warm", "mb"),
    ("seq4-warm", "fio sequential 1 MiB reads, 4 jobs, warm", "mb"),
    ("rand4k-1j-warm", "fio random 4 KiB reads, 1 job, warm", "rand"),
    ("rand4k-4j-warm", "fio random 4 KiB reads, 4 jobs, warm", "rand"),
    ("rand128k-1j-warm", "fio random 128 KiB reads, 1 job, warm", "rand"),
    ("rand128k-4j-warm", "fio random 128 KiB reads, 4 jobs, warm", "rand"),
    ("rand4k-1j-cold", "fio random 4 KiB reads, 1 job, cold", "rand"),
    ("rand4k-4j-cold", "fio random 4 KiB reads, 4 jobs, cold", "rand"),
    ("rand128k-1j-cold", "fio random 128 KiB reads, 1 job, cold", "rand"),
    ("rand128k-4j-cold", "fio random 128 KiB reads, 4 jobs, cold", "rand"),
    ("epoch1", "Epoch 1 (cold): every file of the small-file tree, {w} workers", "files"),
    ("epoch2", "Epoch 2 (warm): every file of the small-file tree, {w} workers", "files"),
    ("epoch3", "Epoch 3 (warm): every file of the small-file tree, {w} workers", "files"),
    ("zarr-cold", "zarr array, every chunk in random order, {w} workers, cold", "files"),
    ("zarr-warm", "zarr array, every chunk in random order, {w} workers, warm", "files"),
    ("walk-cold", "Metadata walk (os.walk + stat of every file), cold", "walk"),
    ("walk-warm", "Metadata walk (os.walk + stat of every file), warm", "walk"),
]


def targets(res, p, mounts):
    cap = float(p["bandwidth_mbps"])
    rows = []

    def add(name, system, measured, target, higher=True, show=fx):
        rows.append([name, LABELS[system], "-" if measured is None else show(measured),
                     f"{'>=' if higher else '<='} {show(target)}",
                     verdict(measured, target, higher)])

    bcs = [s for s in ("bicache", "bicache-imm") if s in res.systems]
    for s in bcs:
        for e in [e for e in ("epoch2", "epoch3") if res.has(e)]:
            add(f"warm small-file epoch ({e}) files/s vs native", s,
                res.ratio(s, "native", e, fps), 0.8)
            add(f"warm small-file epoch ({e}) files/s vs rclone", s,
                res.ratio(s, "rclone", e, fps), 3.0)
    if "bicache" in res.systems:
        for wl, what in (("seq1-warm", "1 job"), ("seq4-warm", "4 jobs")):
            add(f"warm sequential 1 MiB, {what}, vs native", "bicache",
                res.ratio("bicache", "native", wl, mbps), 0.8)
        for wl, what, t in (("seq1-cold", "1 job", 0.9), ("seq4-cold", "4 jobs", 0.95)):
            m = res.median("bicache", wl, mbps)
            add(f"cold sequential 1 MiB, {what}, vs the {cap:.0f} MB/s cap", "bicache",
                None if m is None else m / cap, t)
    f3 = lambda v: f"{v:.3f}"  # noqa: E731
    for s in bcs:
        for wl, what in (("seq1-cold", "sequential, 1 job"), ("seq4-cold", "sequential, 4 jobs"),
                         ("epoch1", "whole-file epoch 1")):
            if res.per_run(s, wl, amp):
                add(f"cold read amplification, {what}", s, res.median(s, wl, amp), 1.05,
                    higher=False, show=f3)
    for s in bcs:
        add("warm metadata walk files/s vs native", s, res.ratio(s, "native", "walk-warm", fps), 0.5)
        if "slowfs" in res.systems:
            add("cold walk (listing before epoch 1) vs the source read directly", s,
                res.ratio(s, "slowfs", "walk-cold", fps), 1.0)
    if "bicache-imm" in res.systems:
        reqs = res.per_run("bicache-imm", "walk-warm",
                           lambda r: r["src"]["reads"] + r["src"]["meta"] if "src" in r else None)
        add("warm metadata walk: source requests under --immutable", "bicache-imm",
            max(reqs) if reqs else None, 0, higher=False, show=lambda v: f"{v:,.0f}")
    for s in bcs:
        ms = [m for m in mounts if m["system"] == s and m["hwm_kb"]]
        lim = [ram_limit(m) for m in ms if ram_limit(m)]
        if ms and lim:
            add("peak RSS (VmHWM, worst run) vs RAM budget + 100 MiB", s,
                max(m["hwm_kb"] for m in ms) / 1024, lim[0] / MiB, higher=False,
                show=lambda v: f"{v:,.0f} MiB")
    return table(["target", "system", "measured (median)", "target value", "verdict"], rows)


def report(res, meta):
    p = meta["params"]
    w = p["workers"]
    im = meta["imagenet"]
    mount = f"--ram {p['ram']} --disk {p['disk']}" + (f" {p['extra_mount_args']}"
                                                     if p["extra_mount_args"] else "")
    rclone = " ".join(RCLONE_ARGS) + (f" {p['rclone_extra_args']}" if p["rclone_extra_args"] else "")
    ds = meta["dataset"]
    L = ["## Suite benchmark (`bench/run.py suite`)", ""]
    L += header(meta, [
        f"- Datasets (seeded, bench/bicache_bench/data.py): `big/`: {ds['big']}; `imagenet/`: "
        f"{ds['imagenet']}, {im['bytes'] / 1e6:,.0f} MB (mean "
        f"{im['bytes'] / max(im['files'], 1) / 1024:.0f} KiB); `zarr/array.zarr`: {ds['zarr']}."])
    L += ["Systems, all over the same local copy `DATA` in one run:", ""]
    L += table(["system", "how"], [
        ["native", "`DATA` read directly: the physical limit"],
        ["bindfs", f"`bindfs {' '.join(BINDFS_ARGS)} DATA MNT`: plain FUSE passthrough, the "
                   "FUSE-overhead limit"],
        ["slowfs (source)", f"`slowfs DATA SLOW {meta['slowfs']} --stats-file ...` "
                            "(examples/slowfs.rs: nothing cached by the kernel), read directly: "
                            "the slow source"],
        ["rclone", f"`rclone mount SLOW MNT {rclone} --cache-dir <fresh dir>` (other options at "
                   "their defaults)"],
        ["bicache", f"`bicache mount SLOW MNT --cache-dir <fresh dir> {mount}` (other options "
                    "at their defaults)"],
        ["bicache --immutable", "the same plus `--immutable`: metadata walk and epochs only"]])
    L += ["", "Procedure, per run and per system: see `bench/scenarios/suite.py` (walk cold "
          f"and warm; {p['epochs']} epochs of {w} DataLoader-like workers, batches of 32, "
          "seeded random order; zarr cold and warm; fio sequential 1 MiB with 1 job over the "
          "big files one after the other and 4 jobs one file each, cold then warm; fio random "
          f"4k/128k x 1/4 jobs, time_based {p['rand_runtime']} s, warm"
          + (", then cold with a fresh cache before each" if p["rand_cold"] else "") + "). "
          "`sync; echo 3 > /proc/sys/vm/drop_caches` right before every pass. Warm for a "
          "cache system = the system holds the data (bicache: after its SSD write-back "
          "drained). native, bindfs and slowfs have no cache of their own: their cold and warm "
          "passes are the same procedure, measured once and shown in both tables (marked *); "
          f"slowfs runs {p['slowfs_epochs']} epoch(s). Throughput: bytes read / wall time "
          "(fio: its runtime); MB = 10^6 bytes. \"pulled from source\" is what slowfs says it "
          "served during the pass (once its counters stopped moving); \"source / read\" is "
          "that over the bytes read (read amplification). x native and x rclone are ratios "
          "within each run, median over runs.", ""]
    mounts = res.of_type("mount")
    L += ["### Targets (issue 5)", ""] + targets(res, p, mounts) + [""]
    if p.get("plot") and importlib.util.find_spec("matplotlib"):
        L += ["![epoch throughput per system](bench-epochs.png)", ""]
    L += ["### Results per workload", "", f"Medians of {len(res.runs)} run(s).", ""]
    for wl, title, kind in WORKLOADS:
        L += workload_table(res, wl, title.format(w=w), kind, LABELS)
    L += counters_table(res, [wl for wl, _, _ in WORKLOADS], LABELS,
                        [s for s in ("bicache", "bicache-imm") if s in res.systems])
    L += rss_table(res, LABELS, ram_limit)
    return "\n".join(L).replace("\n\n\n", "\n\n")


def after_doc(res, meta, docdir, out):
    """With --write-doc: the epoch plot next to the doc (needs matplotlib)."""
    if meta["params"].get("plot"):
        path = os.path.join(out, "bench-epochs.png")
        if plot(res, path):
            import shutil

            shutil.copy(path, os.path.join(docdir, "bench-epochs.png"))


def plot(res, path):
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib missing: no plot", file=sys.stderr)
        return False
    epochs = [e for e in ("epoch1", "epoch2", "epoch3")
              if any(res.per_run(s, e, fps) for s in res.systems)]
    fig, axes = plt.subplots(1, 2, figsize=(12, 5.2))
    width = 0.8 / max(1, len(res.systems))
    for ax, log in ((axes[0], False), (axes[1], True)):
        for i, s in enumerate(res.systems):
            xs, ys, lo, hi = [], [], [], []
            for j, e in enumerate(epochs):
                vals = res.per_run(s, e, fps)
                if not vals:
                    continue
                m = statistics.median(vals)
                xs.append(j + (i - (len(res.systems) - 1) / 2) * width)
                ys.append(m)
                lo.append(m - min(vals))
                hi.append(max(vals) - m)
            label = LABELS.get(s, s) + (" (no cache: epoch 1 shown for all)"
                                        if s == "slowfs" and res.stood_in(s, "epoch2") else "")
            ax.bar(xs, ys, width, yerr=[lo, hi], capsize=2, label=label if not log else None)
            for x, y in zip(xs, ys):
                ax.text(x, y, f" {y:.0f}", ha="center", va="bottom", fontsize=6, rotation=90)
        ax.set_xticks(range(len(epochs)))
        ax.set_xticklabels([f"epoch {e[-1]}" + (" (cold)" if e == "epoch1" else " (warm)")
                            for e in epochs])
        ax.set_ylabel("files/s" + (" (log scale)" if log else ""))
        if log:
            ax.set_yscale("log")
        ax.grid(axis="y", alpha=0.3)
    axes[0].set_title("Small-file epochs: files/s", fontsize=10)
    axes[1].set_title("The same, log scale (median of runs, bars: min-max)", fontsize=10)
    fig.legend(loc="lower center", ncol=len(res.systems), fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    fig.savefig(path, dpi=110)
    return True
