"""floor: the warm small-file epoch at scale against the FUSE floor. The scale tree (1.28 M
files of 1-12 KiB in 1,001 folders, shared with `scale`), read whole by `workers`
DataLoader-like processes in a seeded random order after `drop_caches`, through:

  native    the tree itself
  floorfs   examples/floorfs.rs over the tree: names and attributes from memory, every file
            served by FUSE passthrough; the least any FUSE filesystem does per file
            (LOOKUP, OPEN, Python's IOCTL, RELEASE, one openat and a backing registration)
  floorfs-noopen  the same with `--no-open`: OPEN answers ENOSYS, so the kernel sends no
            OPEN or RELEASE, and reads reach floorfs (the design passthrough rules out)
  bicache   `bicache mount TREE MNT --immutable`, its SSD tier filled by one epoch before
            the runs, remounted for each pass (the next job on the node)

With `wake=off on` each run is done twice, with the kernel's FUSE parameter
/sys/module/fuse/parameters/wake_here off and on, where the kernel has it (it is put back
as it was at the end). Per pass: files/s and the FUSE daemon's CPU time (user + system,
from /proc/PID/stat).
"""

import os

from bicache_bench.report import fmt, header, table
from bicache_bench.systems import STANDARD, System
from bicache_bench.util import die, log
from scenarios import scale
from scenarios.ab_cold_seq import proc_counters

TITLE = "warm epoch over 1.28 M small files: native, the FUSE floor (floorfs), bicache"
DOC = "docs/BENCHMARKS.md"
SECTION = "bench-floor"
HEADING = "The FUSE floor at 1.28 M files (`bench/run.py floor`)"
NEEDS = []
PY_NEEDS = ["numpy"]

WAKE = "/sys/module/fuse/parameters/wake_here"

PARAMS = dict(runs=3, files=1281167, dirs=1001, min_kib=1, max_kib=12, seed=1281167,
              workers=4, ram="256MiB", disk="8GiB", wake="off on",
              systems="native floorfs bicache")
QUICK = dict(files=3000, dirs=7)


def set_wake(mode):
    with open(WAKE, "w") as f:
        f.write("Y\n" if mode == "on" else "N\n")


def run(b):
    p = b.p
    tree = scale.make_tree(b)
    wakes = p.list("wake")
    if any(w not in ("off", "on") for w in wakes):
        die(f"wake={p.wake!r}: a list of off / on")
    original = None
    if os.path.exists(WAKE):
        with open(WAKE) as f:
            original = f.read().strip()
    else:
        log(f"{WAKE} is absent: the kernel's default only")
        wakes = ["default"]
    b.meta.update(wake_original=original, wakes=wakes)
    bc = System("bicache", "bicache", "bicache --immutable", over="local",
                args=("--immutable",), ram=p.ram, disk=p.disk)
    known = {"native": STANDARD["native"], "floorfs": STANDARD["floorfs"],
             "floorfs-noopen": STANDARD["floorfs"].with_(name="floorfs-noopen",
                                                         args=("--no-open",)),
             "bicache": bc}
    names = p.list("systems")
    for n in names:
        if n not in known:
            die(f"unknown system {n!r}; known: {', '.join(known)}")

    def epoch(root, seed):
        return b.work("epoch", root, tree.listing, seed, "--workers", p.workers)

    def pass_(m, wake, pid, seed):
        def counted():
            c0 = proc_counters(pid) if pid else None
            out = epoch(m.root, seed)
            if pid:
                c1 = proc_counters(pid)
                out["daemon_cpu"] = (c1["utime"] - c0["utime"]) + (c1["stime"] - c0["stime"])
            return out
        b.measure(m, "epoch", counted, wake=wake)

    try:
        if "bicache" in names:
            with b.start(bc, tree.path) as m:
                m.phase = "fill"
                epoch(m.root, p.seed)
                m.settle()
        for r in b.runs():
            for wake in wakes:
                if wake != "default":
                    set_wake(wake)
                for n in names:
                    s = known[n].with_(name=f"{n}-{wake}")
                    seed = p.seed + 10 * r
                    if n == "native":
                        pass_(b.start(s, tree.path), wake, None, seed)
                    elif n.startswith("floorfs"):
                        with b.start(s, tree.path) as m:
                            pass_(m, wake, m.child.pid, seed)
                    else:
                        # The cache dir the fill made, whatever this pass's mount is named.
                        with b.start(s, tree.path, fresh=False,
                                     cache_dir=b.lc.cachedir(bc.name)) as m:
                            m.phase = f"epoch wake={wake}"
                            pass_(m, wake, m.pid, seed)
    finally:
        if original is not None:
            with open(WAKE, "w") as f:
                f.write(original + "\n")


def report(res, meta):
    p = meta["params"]
    files = meta["tree_files"]
    fps = lambda r: r["files"] / r["seconds"]  # noqa: E731
    L = header(meta, [
        f"- Tree: {meta['tree']}, {meta['tree_bytes'] / 1e9:.2f} GB (the `scale` tree).",
        f"- Epoch: every file read whole by {p['workers']} DataLoader-like processes, seeded "
        "random order, `drop_caches` first. floorfs: `floorfs TREE MNT` (names and "
        "attributes walked into memory at start; passthrough for every file). bicache: "
        f"`bicache mount TREE MNT --immutable --ram {p['ram']} --disk {p['disk']}`, its SSD "
        "tier filled by one epoch before the runs and remounted for each pass. Daemon CPU: "
        "user + system time of the FUSE daemon over the pass, per file.",
        f"- `wake_here`: the kernel's FUSE module parameter {WAKE}, set per pass "
        f"({'absent on this kernel' if meta.get('wake_original') is None else 'it was ' + meta['wake_original'] + ' before the run and is put back'})."])
    rows = []
    for wake in meta["wakes"]:
        base = f"native-{wake}"
        for s in ("native", "floorfs", "floorfs-noopen", "bicache"):
            name = f"{s}-{wake}"
            v = res.median(name, "epoch", fps)
            if v is None:
                continue
            x = res.ratio(name, base, "epoch", fps)
            cpu = res.median(name, "epoch", lambda r: r.get("daemon_cpu"))
            rows.append([wake, s, f"{v:,.0f}", "1.00x" if s == "native" else f"**{fmt(x, '.2f')}x**",
                         "-" if cpu is None else f"{cpu * 1e6 / files:.0f} µs"])
    L += [f"Medians of {len(res.runs)} run(s) (ratios: median of the per-run ratios to native "
          "with the same `wake_here`):", ""]
    L += table(["wake_here", "system", "files/s", "x native", "daemon CPU per file"], rows)
    L += ["", "Per run:", ""]
    L += table(["run", "system", "seconds", "files/s", "daemon CPU s", "passthrough opens"],
               [[x["run"], x["system"], f"{x['seconds']:.1f}", f"{fps(x):,.0f}",
                 fmt(x.get("daemon_cpu"), ".1f"),
                 fmt((x.get("bc") or {}).get("passthrough_opens"), ",.0f")]
                for x in res.of_type("pass")])
    return "\n".join(L)
