"""passthrough: A/B of FUSE passthrough on the warm small-file epoch (was
scripts/bench-passthrough.sh; docs/TUNING.md).

bicache is mounted with --immutable straight over the suite's local ImageNet-like tree, so
only the cache's hit path is measured. For each --ram size and mode (on, off): fill the SSD
tier with one epoch, unmount; then per run, for native, on and off: mount on the filled
cache dir (empty RAM tier), one epoch to warm, then one timed epoch right after dropping
the page cache. native = the same epoch on the tree itself.
"""

from bicache_bench.report import header, med, table, fmt
from bicache_bench.systems import System
from scenarios import suite

TITLE = "FUSE passthrough on / off: warm small-file epoch, bicache straight over the tree"
DOC = "docs/BENCHMARKS.md"
SECTION = "bench-passthrough"
HEADING = "Passthrough A/B (`bench/run.py passthrough`)"
NEEDS = []
PY_NEEDS = ["numpy"]

PARAMS = dict(runs=3, rams="256MiB 2GiB", disk="8GiB", workers=4, seed=20240611,
              small_files=20000, small_dirs=100, small_min_kib=16, small_max_kib=256)
QUICK = dict(small_files=300, small_dirs=4, rams="8MiB 64MiB")


def run(b):
    p = b.p
    comp = b.component(suite.imagenet(p))
    b.meta.update(dataset=comp.describe(), files=comp.files, bytes=comp.bytes)

    def system(ram, mode):
        return System(f"pt-{mode}-{ram}", "bicache", f"passthrough {mode}", over="local",
                      args=("--immutable", "--passthrough", mode), ram=ram, disk=p.disk)

    def epoch(root, seed):
        return b.work("epoch", root, comp.listing, seed, "--workers", p.workers)

    rams = p.list("rams")
    for ram in rams:
        for mode in ("on", "off"):
            with b.start(system(ram, mode), comp.path) as m:
                m.phase = "fill"
                epoch(m.root, 1)
                m.settle()
    for r in b.runs():
        for ram in rams:
            for mode in ("native", "on", "off"):
                if mode == "native":
                    m = b.start(System("native", "native", "native"), comp.path)
                    b.measure(m, f"epoch {ram}", lambda: epoch(comp.path, r + 10), ram=ram,
                              mode=mode)
                    continue
                with b.start(system(ram, mode), comp.path, fresh=False) as m:
                    m.phase = "warm+timed epoch"
                    epoch(m.root, 7)
                    b.measure(m, f"epoch {ram}", lambda: epoch(m.root, r + 10), ram=ram,
                              mode=mode, passthrough=m.stats().get("passthrough"))


def report(res, meta):
    p = meta["params"]
    rows_by = {}
    for r in res.of_type("pass"):
        rows_by.setdefault((r["ram"], r["mode"]), []).append(r)
    L = header(meta, [
        f"- Dataset: {meta['dataset']}, {meta['bytes'] / 1e6:,.0f} MB (the suite's `imagenet/`).",
        f"- bicache: `bicache mount TREE MNT --immutable --ram RAM --disk {p['disk']} "
        "--passthrough on|off`, straight over the local tree; the SSD tier filled by one epoch "
        "and remounted, one epoch to warm, then the timed epoch right after `drop_caches`. "
        f"Epoch: every file read whole by {p['workers']} DataLoader-like workers, seeded random "
        "order. native = the same epoch on the tree itself."])
    rows = []
    for ram in p["rams"].split():
        s = {mode: med([x["seconds"] for x in rows_by.get((ram, mode), [])])
             for mode in ("native", "on", "off")}
        ratio = med([off["seconds"] / on["seconds"] for on, off in
                     zip(rows_by.get((ram, "on"), []), rows_by.get((ram, "off"), []))])
        opens = med([(x.get("bc") or {}).get("passthrough_opens") for x in
                     rows_by.get((ram, "on"), [])])
        rows.append([f"`--ram {ram}`", fmt(s["native"], ".2f") + " s", fmt(s["on"], ".2f") + " s",
                     fmt(s["off"], ".2f") + " s",
                     "-" if ratio is None else f"**{ratio:.2f}x** {'faster' if ratio >= 1 else 'slower'}",
                     fmt(opens, ",.0f")])
    L += [f"Medians of {len(res.runs)} run(s), seconds per epoch:", ""]
    L += table(["`--ram`", "native", "passthrough on", "passthrough off", "on / off",
                "passthrough opens (on)"], rows)
    L += ["", "Per run:", ""]
    L += table(["run", "--ram", "mode", "seconds", "files/s", "RAM hits", "SSD hits",
                "passthrough opens"],
               [[x["run"], x["ram"], x["mode"], f"{x['seconds']:.2f}",
                 f"{x['files'] / x['seconds']:.0f}", (x.get("bc") or {}).get("ram_hits", "-"),
                 (x.get("bc") or {}).get("disk_hits", "-"),
                 (x.get("bc") or {}).get("passthrough_opens", "-")]
                for x in res.of_type("pass")])
    return "\n".join(L)
