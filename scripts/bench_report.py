#!/usr/bin/env python3
"""Records and report of scripts/bench.sh.

    bench_report.py --record RUN SYSTEM WORKLOAD TAG
        One result record (JSON line on stdout; a one-line summary on stderr) from
        TAG.out.json (the workload's output), TAG.src0/src1.json (slowfs counters before
        and after, or null) and TAG.bc0/bc1.json (bicache stats before and after, or null).
    bench_report.py OUT REPORT_MD PLOT_PNG
        The markdown section (medians over runs, ratios per run) and the epoch plot, from
        OUT/results.jsonl, OUT/hwm-run*-* and the environment bench.sh exports.
"""

import glob
import json
import os
import re
import statistics
import sys

MiB = 1 << 20
SYSTEMS = ["native", "bindfs", "slowfs", "rclone", "bicache", "bicache-imm"]
NO_CACHE = {"native", "bindfs", "slowfs"}
LABEL = {
    "native": "native",
    "bindfs": "bindfs",
    "slowfs": "slowfs (source)",
    "rclone": "rclone",
    "bicache": "bicache",
    "bicache-imm": "bicache --immutable",
}


# ----------------------------------------------------------------------------- record
def record(run, system, workload, tag):
    def load(s):
        with open(f"{tag}.{s}.json") as f:
            return json.load(f)

    r = {"run": int(run), "system": system, "workload": workload, **load("out")}
    s0, s1 = load("src0"), load("src1")
    if s0 is not None:
        r["src"] = {k: s1[k] - s0[k] for k in ("bytes", "reads", "meta")}
    b0, b1 = load("bc0"), load("bc1")
    if b0 is not None:
        r["bc"] = {
            "source_bytes": b1["source"]["bytes"] - b0["source"]["bytes"],
            "source_reads": b1["source"]["reads"] - b0["source"]["reads"],
            "source_meta": b1["source"]["meta_ops"] - b0["source"]["meta_ops"],
            "ram_hits": b1["ram"]["hits"] - b0["ram"]["hits"],
            "disk_hits": b1["disk"]["hits"] - b0["disk"]["hits"],
            "ram_capacity": b1["ram"]["capacity"],
        }
    print(json.dumps(r))
    s = r["seconds"]
    line = f"  {system} {workload}: {s:.2f} s"
    if r.get("bytes"):
        line += f", {r['bytes'] / s / 1e6:.1f} MB/s"
    if r.get("files"):
        line += f", {r['files'] / s:.0f} files/s"
    if "src" in r:
        x = r["src"]
        line += f", source {x['bytes'] / 1e6:.1f} MB / {x['reads']} reads / {x['meta']} meta"
    print(line, file=sys.stderr)


# ----------------------------------------------------------------------------- report
# (key, title, kind): kind "mb" = MB/s, "rand" = MB/s and IOPS, "files" = files/s and
# MB/s, "walk" = files/s, no bytes.
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
    ("epoch1", "Epoch 1 (cold): every file of the small-file tree, 4 workers", "files"),
    ("epoch2", "Epoch 2 (warm): every file of the small-file tree, 4 workers", "files"),
    ("epoch3", "Epoch 3 (warm): every file of the small-file tree, 4 workers", "files"),
    ("zarr-cold", "zarr array, every chunk in random order, 4 workers, cold", "files"),
    ("zarr-warm", "zarr array, every chunk in random order, 4 workers, warm", "files"),
    ("walk-cold", "Metadata walk (os.walk + stat of every file), cold", "walk"),
    ("walk-warm", "Metadata walk (os.walk + stat of every file), warm", "walk"),
]


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


class Results:
    def __init__(self, rows):
        self.by = {}
        for r in rows:
            self.by[(r["system"], r["workload"], r["run"])] = r
        self.runs = sorted({r["run"] for r in rows})
        self.systems = [s for s in SYSTEMS if any(r["system"] == s for r in rows)]

    def get(self, system, wl, run):
        """(record, stood-in-for) for one run, or (None, None)."""
        r = self.by.get((system, wl, run))
        if r is not None:
            return r, None
        alt = stand_in(system, wl)
        if alt and (system, alt, run) in self.by:
            return self.by[(system, alt, run)], alt
        return None, None

    def per_run(self, system, wl, f):
        out = []
        for run in self.runs:
            r, _ = self.get(system, wl, run)
            if r is not None:
                v = f(r)
                if v is not None:
                    out.append(v)
        return out

    def stood_in(self, system, wl):
        for run in self.runs:
            r, alt = self.get(system, wl, run)
            if r is not None:
                return alt
        return None

    def ratio(self, system, base, wl, f):
        """Median over runs of f(system) / f(base) measured in the same run."""
        vals = []
        for run in self.runs:
            a, _ = self.get(system, wl, run)
            b, _ = self.get(base, wl, run)
            if a is None or b is None:
                continue
            fa, fb = f(a), f(b)
            if fa is not None and fb:
                vals.append(fa / fb)
        return statistics.median(vals) if vals else None


def mbps(r):
    return r["bytes"] / r["seconds"] / 1e6 if r.get("bytes") else None


def fps(r):
    return r["files"] / r["seconds"] if r.get("files") else None


def iops(r):
    return r.get("iops")


def amp(r):
    if "src" not in r or not r.get("bytes"):
        return None
    return r["src"]["bytes"] / r["bytes"]


def med(vals):
    return statistics.median(vals) if vals else None


def fmt(v, spec=".1f", none="-"):
    return none if v is None else format(v, spec)


def fx(v):
    if v is None:
        return "-"
    return f"{v:.2f}x" if v >= 0.1 else f"{v:.3f}x" if v >= 0.001 else f"{v:.1e}x"


def spread(vals, spec=".0f"):
    if len(vals) < 2:
        return "-"
    return f"{min(vals):{spec}}-{max(vals):{spec}}"


def table(res, wl, title, kind):
    main = fps if kind in ("files", "walk") else mbps
    unit = "files/s" if kind in ("files", "walk") else "MB/s"
    if not any(res.per_run(s, wl, main) for s in res.systems):
        return []
    L = [f"#### {title}", ""]
    head = ["system", unit]
    if kind == "files":
        head.append("MB/s")
    if kind == "rand":
        head.append("IOPS")
    head += ["x native", "x rclone"]
    if kind == "walk":
        head += ["source requests (reads / meta)"]
    else:
        head += ["pulled from source", "source / read", "source requests (reads / meta)"]
    head.append(f"{unit} min-max")
    L += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    notes = set()
    for s in res.systems:
        vals = res.per_run(s, wl, main)
        if not vals:
            continue
        alt = res.stood_in(s, wl)
        name = LABEL[s]
        if alt:
            name += " *"
            notes.add(alt)
        row = [name, fmt(med(vals), ".0f" if kind in ("files", "walk") else ".1f")]
        if kind == "files":
            row.append(fmt(med(res.per_run(s, wl, mbps))))
        if kind == "rand":
            row.append(fmt(med(res.per_run(s, wl, iops)), ".0f"))
        row += [fx(res.ratio(s, "native", wl, main)), fx(res.ratio(s, "rclone", wl, main))]
        src = res.per_run(s, wl, lambda r: r.get("src"))
        reqs = "n/a"
        if src:
            reqs = (f"{med([x['reads'] for x in src]):,.0f} / "
                    f"{med([x['meta'] for x in src]):,.0f}")
        if kind != "walk":
            if src:
                row += [f"{med([x['bytes'] for x in src]) / 1e6:,.0f} MB",
                        fmt(med(res.per_run(s, wl, amp)), ".3f")]
            else:
                row += ["n/a", "n/a"]
        row.append(reqs)
        row.append(spread(vals, ".0f" if kind in ("files", "walk") else ".1f"))
        L.append("| " + " | ".join(row) + " |")
    if notes:
        L += ["", "\\* no cache of its own: the same pass as "
              + ", ".join(f"`{n}`" for n in sorted(notes))
              + " (page cache dropped, nothing else to warm), shown again here."]
    L.append("")
    return L


def verdict(measured, target, higher_is_better=True):
    if measured is None:
        return "not measured"
    if target == 0:
        return "met" if measured <= 0 else f"**missed**: {measured:,}"
    short = (target - measured if higher_is_better else measured - target) / target
    if short <= 0:
        return "met"
    pct = 100 * short
    return f"**missed** by {pct:.1f}%" if pct < 10 else f"**missed** by {pct:.0f}%"


def targets(res, env, hwm):
    cap = float(env["BANDWIDTH_MBPS"])
    L = ["| target | system | measured (median) | target value | verdict |",
         "|---|---|---|---|---|"]

    def add(name, system, measured, target, spec, higher=True, show=None):
        m = "-" if measured is None else (show(measured) if show else format(measured, spec))
        t = show(target) if show else format(target, spec)
        L.append(f"| {name} | {LABEL[system]} | {m} | {'>=' if higher else '<='} {t} | "
                 f"{verdict(measured, target, higher)} |")

    bcs = [s for s in ("bicache", "bicache-imm") if s in res.systems]
    for s in bcs:
        for e in ("epoch2", "epoch3"):
            add(f"warm small-file epoch ({e}) files/s vs native", s,
                res.ratio(s, "native", e, fps), 0.8, ".2f", show=fx)
            add(f"warm small-file epoch ({e}) files/s vs rclone", s,
                res.ratio(s, "rclone", e, fps), 3.0, ".2f", show=fx)
    if "bicache" in res.systems:
        for wl, what in (("seq1-warm", "1 job"), ("seq4-warm", "4 jobs")):
            add(f"warm sequential 1 MiB, {what}, vs native", "bicache",
                res.ratio("bicache", "native", wl, mbps), 0.8, ".2f", show=fx)
        for wl, what, t in (("seq1-cold", "1 job", 0.9), ("seq4-cold", "4 jobs", 0.95)):
            m = med(res.per_run("bicache", wl, mbps))
            add(f"cold sequential 1 MiB, {what}, vs the {cap:.0f} MB/s cap", "bicache",
                None if m is None else m / cap, t, ".2f", show=fx)
    for s in bcs:
        for wl, what in (("seq1-cold", "sequential, 1 job"), ("seq4-cold", "sequential, 4 jobs"),
                         ("epoch1", "whole-file epoch 1")):
            if res.per_run(s, wl, amp):
                add(f"cold read amplification, {what}", s, med(res.per_run(s, wl, amp)), 1.05,
                    ".3f", higher=False)
    for s in bcs:
        add("warm metadata walk files/s vs native", s,
            res.ratio(s, "native", "walk-warm", fps), 0.5, ".2f", show=fx)
        if "slowfs" in res.systems:
            add("cold walk (listing before epoch 1) vs the source read directly", s,
                res.ratio(s, "slowfs", "walk-cold", fps), 1.0, ".2f", show=fx)
    if "bicache-imm" in res.systems:
        reqs = res.per_run("bicache-imm", "walk-warm",
                           lambda r: r["src"]["reads"] + r["src"]["meta"] if "src" in r else None)
        add("warm metadata walk: source requests under --immutable", "bicache-imm",
            max(reqs) if reqs else None, 0, "d", higher=False,
            show=lambda v: f"{v:,.0f}")
    for s in bcs:
        if s in hwm:
            worst = max(kb for mounts in hwm[s].values() for _, kb in mounts)
            limit = hwm_limit(res, s)
            if limit:
                add("peak RSS (VmHWM, worst run) vs RAM budget + 100 MiB", s, worst / 1024,
                    limit / MiB, ".0f", higher=False, show=lambda v: f"{v:,.0f} MiB")
    return L


def hwm_limit(res, system):
    caps = res.per_run(system, "epoch1", lambda r: r.get("bc", {}).get("ram_capacity"))
    return caps[0] + 100 * MiB if caps else None


def load_hwm(out):
    """{system: {run: [(phase, VmHWM kB), ...]}}, one entry per mount."""
    hwm = {}
    for p in glob.glob(os.path.join(out, "hwm-run*-*")):
        m = re.match(r"hwm-run(\d+)-(.+)$", os.path.basename(p))
        if not m:
            continue
        for line in open(p):
            f = line.split()
            if len(f) == 2 and f[1].isdigit():
                hwm.setdefault(m.group(2), {}).setdefault(int(m.group(1)), []).append(
                    (f[0], int(f[1])))
    return hwm


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
            label = LABEL[s] + (" (no cache: epoch 1 shown for all)" if s == "slowfs" and
                                res.stood_in(s, "epoch2") else "")
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
    mean_kb = ""
    rows = [r for r in res.by.values() if r["workload"] == "epoch1" and r.get("files")]
    if rows:
        mean_kb = f", mean file {rows[0]['bytes'] / rows[0]['files'] / 1024:.0f} KiB"
    axes[0].set_title(f"Small-file epochs, 4 workers: files/s{mean_kb}", fontsize=10)
    axes[1].set_title("The same, log scale (median of runs, bars: min-max)", fontsize=10)
    fig.legend(loc="lower center", ncol=len(res.systems), fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    fig.savefig(path, dpi=110)
    return True


def report(out, report_path, plot_path):
    E = os.environ
    rows = [json.loads(l) for l in open(os.path.join(out, "results.jsonl")) if l.strip()]
    res = Results(rows)
    hwm = load_hwm(out)
    nruns = len(res.runs)
    mount = f"--ram {E['RAM']} --disk {E['DISK']}"
    if E.get("EXTRA_MOUNT_ARGS"):
        mount += " " + E["EXTRA_MOUNT_ARGS"]
    rclone_args = E["RCLONE_ARGS"] + (" " + E["RCLONE_EXTRA_ARGS"] if E.get("RCLONE_EXTRA_ARGS") else "")
    small = [r for r in rows if r["workload"] == "epoch1"]
    small_bytes = small[0]["bytes"] if small else 0
    small_files = small[0]["files"] if small else int(E["SMALL_FILES"])
    L = [
        "## Suite benchmark (`scripts/bench.sh`)",
        "",
        f"Generated by the script on {E['BENCH_DATE']}; bicache at `{E['GIT_REV']}`; "
        f"{nruns} run(s) in {int(E['ELAPSED']) // 60} min {int(E['ELAPSED']) % 60} s"
        + ("" if nruns >= 3 else " (**fewer than the default 3 runs: a quick run, read "
           "the numbers as indicative**)") + ".",
        "",
        f"- Machine: {E['MACHINE']}. The local disk is cached by the host: absolute numbers "
        "swing 30-50% between runs, so every ratio is taken within one run, then the median "
        "over runs is shown.",
        f"- Tools: {E['VERSIONS']}." if E.get("VERSIONS") else "",
        f"- Command: `{E['COMMAND_LINE']}` (as root, from the repository root). Raw results: "
        "`$BENCH_DIR/results/` (one JSON record per pass, fio's JSON, logs).",
        f"- Datasets (seeded, `scripts/bench_data.py`, seed {E['SEED']}): "
        f"`big/`: {E['BIG_FILES']} x {E['BIG_MIB']} MiB; "
        f"`imagenet/`: {small_files:,} files, {small_bytes / 1e6:,.0f} MB, sizes log-uniform "
        f"{E['SMALL_MIN_KIB']}-{E['SMALL_MAX_KIB']} KiB (mean {small_bytes / max(small_files, 1) / 1024:.0f} KiB), "
        f"in {E['SMALL_DIRS']} class folders; `zarr/array.zarr`: zarr v2 uint8 "
        f"({E['ZARR_ROWS']}, 256, 256), chunks ({E['ZARR_CHUNK_ROWS']}, 256, 256) = "
        f"{int(E['ZARR_CHUNK_ROWS']) * 64} KiB, Blosc (random bytes: incompressible).",
        "",
        "Systems, all over the same local copy `DATA` in one run:",
        "",
        "| system | how |",
        "|---|---|",
        "| native | `DATA` read directly: the physical limit |",
        f"| bindfs | `bindfs {E['BINDFS_ARGS']} DATA MNT`: plain FUSE passthrough, the FUSE-overhead limit |",
        f"| slowfs (source) | `slowfs DATA SLOW --latency-ms {E['LATENCY_MS']} --meta-latency-ms "
        f"{E['META_LATENCY_MS']} --bandwidth-mbps {E['BANDWIDTH_MBPS']} --threads "
        f"{E['SLOWFS_THREADS']} --stats-file ...` (examples/slowfs.rs: nothing cached by the "
        "kernel), read directly: the slow source |",
        f"| rclone | `rclone mount SLOW MNT {rclone_args} --cache-dir <fresh dir>` (other "
        "options at their defaults: --dir-cache-time 5m, --attr-timeout 1s, --max-read-ahead "
        "128Ki, --vfs-read-chunk-size 128Mi, --buffer-size 16Mi) |",
        f"| bicache | `bicache mount SLOW MNT --cache-dir <fresh dir> {mount}` (other options "
        "at their defaults) |",
        f"| bicache --immutable | the same plus `--immutable`: metadata walk and epochs only |",
        "",
        "Procedure, per run and per system, in this order (a fresh cache dir and a new mount "
        "wherever a pass is cold; `sync; echo 3 > /proc/sys/vm/drop_caches` right before "
        "every pass, which also drops the kernel's dentries and inodes):",
        "",
        "1. Metadata walk (`scripts/bench_work.py walk`: `os.walk` + `os.stat` of every file of "
        "`imagenet/`, one thread), cold (just mounted), then warm (again).",
        f"2. {E['EPOCHS']} epochs (`bench_work.py epoch`): every file of `imagenet/` read whole "
        f"with `open().read()` by {E['WORKERS']} worker processes taking batches of 32 files from "
        "a queue, like a DataLoader, in a seeded random order (a new order per epoch, the same "
        "for every system of a run). Epoch 1 is cold for the data (the walk came first, as in "
        "a job that lists its dataset), epochs 2-3 warm.",
        f"3. zarr (`bench_work.py zarr`): {E['WORKERS']} processes read the array one chunk row "
        "at a time (`arr[i*c:(i+1)*c]`), seeded random order, cold then warm.",
        "4. fio sequential, `--rw=read --bs=1M --ioengine=psync --readonly`: 1 job reading the "
        f"{E['BIG_FILES']} big files one after the other (`--filename=a:b:c:d "
        "--file_service_type=sequential`), cold (fresh cache) then warm; then 4 jobs, one "
        "file each, cold (fresh cache again) then warm.",
        f"5. fio random, `--rw=randread --ioengine=psync --readonly --time_based --runtime="
        f"{E['RAND_RUNTIME']}` over the big files (`--filename=a:b:c:d`), bs 4k and 128k, 1 and "
        "4 jobs: warm (the cache holds the big files from step 4)"
        + (", then cold (fresh cache before each)" if E.get("RAND_COLD") == "1" else "") + ".",
        "",
        "Warm for a cache system = the system holds the data (bicache: after its SSD "
        "write-back drained), page cache dropped right before. native, bindfs and slowfs have "
        "no cache of their own: their cold and warm passes are the same procedure, measured "
        "once and shown in both tables (marked *), and slowfs runs "
        f"{E['SLOWFS_EPOCHS']} epoch(s). Throughput: bytes read / wall time (fio: its "
        "runtime); MB = 10^6 bytes. \"pulled from source\" is what slowfs says it served during "
        "the pass (its stats-file delta, taken once its counters stopped moving, so "
        "background readahead is included); \"source / read\" is that over the bytes the pass "
        "read (read amplification). x native and x rclone are ratios within each run, median "
        "over runs.",
        "",
        "### Targets (issue 5)",
        "",
    ]
    L += targets(res, E, hwm)
    L += ["", f"![epoch throughput per system](bench-epochs.png)", ""]
    L += ["### Results per workload", "", f"Medians of {nruns} run(s).", ""]
    for wl, title, kind in WORKLOADS:
        L += table(res, wl, title, kind)
    # bicache's own view: where the bytes came from.
    bcs = [s for s in ("bicache", "bicache-imm") if s in res.systems]
    if bcs:
        L += ["#### bicache's own counters (median per pass)", "",
              "| system | pass | bicache source MB | source reads | source meta ops | RAM hits | SSD hits |",
              "|---|---|---|---|---|---|---|"]
        for s in bcs:
            for wl, _, _ in WORKLOADS:
                bc = res.per_run(s, wl, lambda r: r.get("bc"))
                if not bc or res.stood_in(s, wl):
                    continue
                m = lambda k: med([x[k] for x in bc])
                L.append(f"| {LABEL[s]} | {wl} | {m('source_bytes') / 1e6:,.0f} | "
                         f"{m('source_reads'):,.0f} | {m('source_meta'):,.0f} | "
                         f"{m('ram_hits'):,.0f} | {m('disk_hits'):,.0f} |")
        L.append("")
    if hwm:
        L += ["#### bicache daemon peak RSS", "",
              "VmHWM from /proc/PID/status read just before each unmount (the pid comes from "
              "`bicache stats --json`), per mount; a mount's use is named by the passes it "
              "served.", "",
              "| system | run | mount used for | VmHWM | RAM budget + 100 MiB |",
              "|---|---|---|---|---|"]
        for s in bcs:
            limit = hwm_limit(res, s)
            for run, mounts in sorted(hwm.get(s, {}).items()):
                for phase, kb in mounts:
                    over = "" if not limit or kb * 1024 <= limit else " (**over**)"
                    L.append(f"| {LABEL[s]} | {run} | {phase} | {kb / 1024:,.0f} MiB{over} | "
                             f"{'-' if not limit else f'{limit / MiB:,.0f} MiB'} |")
        L.append("")
    text = "\n".join(L).replace("\n\n\n", "\n\n")
    with open(report_path, "w") as f:
        f.write(text.rstrip() + "\n")
    plot(res, plot_path)
    print(text)


def main(argv):
    if argv[1:2] == ["--record"]:
        record(*argv[2:6])
    else:
        report(argv[1], argv[2], argv[3])
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
