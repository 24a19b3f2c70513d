"""scale: ImageNet-sized metadata. A reproducible tree of `files` small files in `dirs`
folders (default 1,281,167 in 1,001, like ImageNet-1k's train set; sizes log-uniform
min_kib..max_kib, generated once and cached on disk), bicache mounted --immutable
--ram 256MiB --disk 8GiB straight over the local tree and over slowfs. Measured:

  memory      daemon VmRSS / VmHWM and the namespace's meta.bytes / meta.entries (stats
              JSON) after the walk, after each epoch, right after a remount and after the
              epoch that follows it
  speed       cold and warm walk (os.walk + stat) and epoch files/s (`workers` DataLoader
              processes, random order), against native in the same run
  remount     `bicache mount` time on the filled cache dir, and the source metadata ops
              (source.meta_ops) of the first epoch after it
  TTL         source metadata ops per epoch with and without --immutable, --metadata-ttl
              `ttl`, every epoch started after sleeping past the TTL (over the local tree)
  plan        `bicache plan --shard-index 0 --shard-count SHARDS` over the tree (walk) and
              with --manifest: wall time and peak RSS (getrusage of the child), cold and warm;
              and manifest-only at `plan_big_files` entries (empty files) when that is
              cheap: plan_big=auto generates them only if the filesystem has twice their
              inodes free (else the report says it was skipped), on / off force it
  slow source at `slow_files` files (1 ms per request): cold os.walk listing (names
              only), cold walk + stat, and epoch 1 files/s, through bicache and bicache
              --immutable, each against reading slowfs directly
"""

import os
import time

from bicache_bench import data
from bicache_bench.report import fmt, fx, header, med, mib, table
from bicache_bench.systems import System
from bicache_bench.util import KiB, log

TITLE = "1.28 M files: daemon memory, walk/epoch speed, remount, TTL, plan; 20 k over slowfs"
DOC = "docs/BENCHMARKS.md"
SECTION = "bench-scale"
HEADING = "Scale: ImageNet-sized trees (`bench/run.py scale`)"
NEEDS = []
PY_NEEDS = ["numpy"]

PARAMS = dict(
    runs=1,
    files=1281167, dirs=1001, min_kib=1, max_kib=12, seed=1281167,
    over="local slowfs", epochs=2, workers=4, ram="256MiB", disk="8GiB",
    latency_ms=1.0, meta_latency_ms=-1.0, bandwidth_mbps=200.0, slowfs_threads=8,
    ttl=5, ttl_epochs=2, ttl_part=True,
    shards=1000, plan_part=True, plan_big="auto", plan_big_files=10_000_000,
    plan_big_dirs=10000,
    slow_part=True, slow_files=20000, slow_dirs=16,
)
QUICK = dict(files=3000, dirs=7, ttl=2, shards=10, plan_big="on", plan_big_files=20000,
             plan_big_dirs=20, slow_files=300, slow_dirs=2)


def bicache(name, p, over, *args):
    return System(name, "bicache", name.replace("-", " "), over=over,
                  args=tuple(args), ram=p.ram, disk=p.disk)


def make_tree(b):
    """The scale tree (generated once, shared with the floor scenario), described in b.meta."""
    p = b.p
    t = b.component(data.files(p.files, p.dirs, p.min_kib * KiB, p.max_kib * KiB,
                               "loguniform", p.seed))
    b.meta.update(tree=t.describe(), tree_files=t.files, tree_bytes=t.bytes)
    return t


def run(b):
    p = b.p
    tree = make_tree(b)
    overs = p.list("over")
    for _ in b.runs():
        native = System("native", "native", "native")
        with b.start(native, tree.path) as m:
            b.measure(m, "walk", lambda: b.work("walk", m.root))
            b.measure(m, "epoch", lambda: b.work("epoch", m.root, tree.listing, p.seed + b.run,
                                                 "--workers", p.workers))
        for over in overs:
            if over == "slowfs":
                with b.slowfs(tree.path, name="slowfs") as slow:
                    b.meta["slowfs"] = " ".join(map(str, slow.args))
                    memory_part(b, bicache("bicache-imm-over-slowfs", p, "slowfs", "--immutable"),
                                tree, slow)
            else:
                memory_part(b, bicache("bicache-imm-over-local", p, "local", "--immutable"), tree)
        if p.ttl_part:
            for name, args in (("bicache-ttl", ()), ("bicache-imm-ttl", ("--immutable",))):
                s = bicache(name, p, "local", "--metadata-ttl", p.ttl, *args)
                with b.start(s, tree.path) as m:
                    m.phase = "ttl epochs"
                    for e in range(1, p.ttl_epochs + 1):
                        time.sleep(p.ttl + 1)
                        b.measure(m, f"ttl-epoch{e}", lambda: b.work(
                            "epoch", m.root, tree.listing, p.seed + 100 * b.run + e,
                            "--workers", p.workers))
                        m.settle()
        if p.plan_part:
            plan_part(b, tree)
        if p.slow_part:
            slow_part(b)


def point(b, m, stage):
    st = m.stats()
    b.record({"type": "point", "system": m.name, "stage": stage, "rss_kb": m.rss_kb(),
              "hwm_kb": m.hwm_kb(), "meta_bytes": st["meta"]["bytes"],
              "meta_entries": st["meta"]["entries"], "mount_seconds": m.mount_seconds,
              "disk_bytes": st["disk"]["bytes"], "disk_files": st["disk"].get("files")})


def memory_part(b, s, tree, slow=None):
    p = b.p
    with b.start(s, tree.path, slow) as m:
        m.phase = "walk+epochs"
        for pas in ("walk-cold", "walk-warm"):
            b.measure(m, pas, lambda: b.work("walk", m.root))
        for e in range(1, p.epochs + 1):
            b.measure(m, f"epoch{e}", lambda: b.work("epoch", m.root, tree.listing,
                                                     p.seed + 10 * b.run + e,
                                                     "--workers", p.workers))
            m.settle()
        secs = m.remount()
        m.phase = "after remount"
        log(f"{s.name}: remounted in {secs:.2f} s")
        point(b, m, "after remount")
        b.measure(m, "epoch-after-remount", lambda: b.work(
            "epoch", m.root, tree.listing, p.seed + 10 * b.run + 9, "--workers", p.workers),
            remount_seconds=secs)


def plan_part(b, tree):
    p = b.p
    manifest = os.path.join(b.lc.work, "manifest.txt")
    with open(tree.listing) as f, open(manifest, "w") as g:
        g.writelines(line.split("\t", 1)[0] + "\n" for line in f)
    cases = [("walk", tree.path, []), ("manifest", tree.path, ["--manifest", manifest])]
    big = None
    if p.plan_big != "off":
        st = os.statvfs(b.store.dir)
        cheap = st.f_favail > 2 * p.plan_big_files
        if p.plan_big == "on" or cheap:
            big = b.component(data.files(p.plan_big_files, p.plan_big_dirs, 0, 0, "fixed",
                                         p.seed, empty=True))
            bigman = os.path.join(b.lc.work, "manifest-big.txt")
            with open(big.listing) as f, open(bigman, "w") as g:
                g.writelines(line.split("\t", 1)[0] + "\n" for line in f)
            cases.append(("manifest", big.path, ["--manifest", bigman]))
        else:
            b.meta["plan_big_skipped"] = (
                f"{p.plan_big_files:,} empty files need as many inodes; the filesystem of the "
                f"bench dir has {st.f_favail:,} free (plan_big=auto wants twice as many): the "
                f"plan was measured over the {tree.files:,}-entry manifest only")
    floor = b.timed(["/bin/true"])["maxrss_kb"]
    b.record({"type": "plan-floor", "maxrss_kb": floor})
    for mode, src, extra in cases:
        entries = tree.files if src == tree.path else big.files
        for temp in ("cold", "warm"):
            if temp == "cold":
                b.drop_caches()
            out = os.path.join(b.logs, f"plan-{mode}-{entries}-{temp}.txt")
            r = b.timed([b.bins.bicache, "plan", src, "--shard-index", "0",
                         "--shard-count", p.shards, *extra], stdout=out)
            with open(out, "rb") as f:
                lines = f.read().count(b"\n")
            b.record({"type": "plan", "mode": mode, "entries": entries, "temp": temp,
                      "seconds": r["seconds"], "maxrss_kb": r["maxrss_kb"], "shard_files": lines})
            log(f"plan {mode} {entries:,} entries {temp}: {r['seconds']:.2f} s, "
                f"peak RSS {r['maxrss_kb'] / 1024:.0f} MiB, {lines:,} files in shard 0")


def slow_part(b):
    p = b.p
    comp = b.component(data.files(p.slow_files, p.slow_dirs, p.min_kib * KiB, p.max_kib * KiB,
                                  "loguniform", p.seed + 1))
    b.meta.update(slow_tree=comp.describe())
    syss = [System("slowfs20k", "slowfs", "slowfs (source)"),
            bicache("bicache", p, "slowfs"), bicache("bicache-imm", p, "slowfs", "--immutable")]
    with b.slowfs(comp.path, name="slowfs20k") as slow:
        for s in syss:
            with b.start(s, comp.path, slow) as m:
                b.measure(m, "slow-list-cold", lambda: b.work("walk", m.root, "--names-only"))
            with b.start(s, comp.path, slow) as m:
                b.measure(m, "slow-walk-cold", lambda: b.work("walk", m.root))
                b.measure(m, "slow-epoch1", lambda: b.work(
                    "epoch", m.root, comp.listing, p.seed + b.run, "--workers", p.workers))


def report(res, meta):
    p = meta["params"]
    fps = lambda r: r["files"] / r["seconds"] if r.get("seconds") else None  # noqa: E731
    mems = [s for s in res.systems if s.startswith("bicache-imm-over")]
    L = header(meta, [
        f"- Tree: {meta['tree']}, {meta['tree_bytes'] / 1e9:,.2f} GB. bicache: `bicache mount "
        f"TREE|SLOW MNT --immutable --ram {p['ram']} --disk {p['disk']} --cache-dir <fresh dir>`"
        + (f"; slowfs: `slowfs TREE SLOW {meta['slowfs']}`" if meta.get("slowfs") else "") + ".",
        f"- Walk: os.walk + stat of every file, one thread. Epoch: every file read whole by "
        f"{p['workers']} DataLoader-like processes (batches of 32), seeded random order. Page "
        "cache dropped before every pass. native = the same pass on the local tree."])

    # memory
    rows = []
    for s in mems:
        for pas in ["walk-cold", "walk-warm"] + [f"epoch{e}" for e in range(1, p["epochs"] + 1)]:
            a = res.per_run(s, pas, lambda r: r.get("after"))
            if a:
                rows.append(mem_row(s, f"after {pas}", a))
        pts = [x for x in res.of_type("point") if x["system"] == s]
        if pts:
            rows.append(mem_row(s, "right after the remount", pts))
        a = res.per_run(s, "epoch-after-remount", lambda r: r.get("after"))
        if a:
            rows.append(mem_row(s, "after the epoch after the remount", a))
    L += ["#### Daemon memory and namespace size", ""]
    L += table(["system", "when", "VmRSS", "VmHWM", "meta.entries", "meta.bytes",
                "meta bytes / entry", "SSD tier bytes"], rows) + [""]

    # speed
    rows = []
    for s in mems:
        for pas, base in ([("walk-cold", "walk"), ("walk-warm", "walk")]
                          + [(f"epoch{e}", "epoch") for e in range(1, p["epochs"] + 1)]
                          + [("epoch-after-remount", "epoch")]):
            v = res.median(s, pas, fps)
            if v is None:
                continue
            bc = res.per_run(s, pas, lambda r: r.get("bc"))
            rows.append([s, pas, f"{v:,.0f}", fx(res.ratio(s, "native", pas, fps, base)),
                         f"{med([x['source_meta'] for x in bc]):,.0f}",
                         f"{med([x['source_reads'] for x in bc]):,.0f}"])
    for pas in ("walk", "epoch"):
        v = res.median("native", pas, fps)
        if v is not None:
            rows.append(["native", pas, f"{v:,.0f}", "1.00x", "n/a", "n/a"])
    L += ["#### Walk and epoch speed", ""]
    L += table(["system", "pass", "files/s", "x native", "source meta ops", "source reads"],
               rows) + [""]

    # remount
    rows = []
    for s in mems:
        pts = [x for x in res.of_type("point") if x["system"] == s]
        bc = res.per_run(s, "epoch-after-remount", lambda r: r.get("bc"))
        if pts:
            rows.append([s, f"{med([x['mount_seconds'] for x in pts]):.2f} s",
                         fmt(med([x["disk_files"] for x in pts]), ",.0f"),
                         f"{med([x['source_meta'] for x in bc]):,.0f}" if bc else "-",
                         f"{med([x['source_bytes'] for x in bc]) / 1e6:,.0f} MB" if bc else "-"])
    L += ["#### Remount on the filled cache dir", "",
          "`bicache unmount`, then `bicache mount` on the same cache dir, timed to its return "
          "(the mount is live); then one epoch:", ""]
    L += table(["system", "mount time", "SSD tier files", "source meta ops of the next epoch",
                "source bytes of the next epoch"], rows) + [""]

    # TTL
    rows = []
    for s in ("bicache-ttl", "bicache-imm-ttl"):
        for e in range(1, p["ttl_epochs"] + 1):
            bc = res.per_run(s, f"ttl-epoch{e}", lambda r: r.get("bc"))
            if bc:
                rows.append([s.replace("bicache-ttl", "bicache --metadata-ttl " + str(p["ttl"]))
                             .replace("bicache-imm-ttl", f"bicache --immutable --metadata-ttl "
                                                         f"{p['ttl']}"), e,
                             f"{med([x['source_meta'] for x in bc]):,.0f}",
                             f"{res.median(s, f'ttl-epoch{e}', fps):,.0f}"])
    if rows:
        L += ["#### Source metadata ops per epoch with the TTL expired", "",
              f"Over the local tree; each epoch starts after sleeping {p['ttl'] + 1} s (past "
              "the TTL). Epoch 1 fills the cache.", ""]
        L += table(["mount", "epoch", "source meta ops", "files/s"], rows) + [""]

    # plan
    plans = res.of_type("plan")
    floor = med([x["maxrss_kb"] for x in res.of_type("plan-floor")])
    if plans:
        rows = []
        keys = dict.fromkeys((x["mode"], x["entries"], x["temp"]) for x in plans)
        for mode, entries, temp in keys:
            xs = [x for x in plans if (x["mode"], x["entries"], x["temp"]) == (mode, entries, temp)]
            rows.append([f"{entries:,}", mode, temp, f"{med([x['seconds'] for x in xs]):.2f} s",
                         mib(med([x["maxrss_kb"] for x in xs])),
                         f"{med([x['shard_files'] for x in xs]):,.0f}"])
        L += [f"#### `bicache plan --shard-index 0 --shard-count {p['shards']}`", "",
              "Wall time and peak RSS (getrusage RUSAGE_CHILDREN of a fresh wrapper process, "
              "whose only child is the plan; the child's size before its exec counts too, so "
              f"nothing measures below the floor of `/bin/true`: {mib(floor)}); cold = right "
              "after `drop_caches`.", ""]
        L += table(["entries", "listing", "page cache", "time", "peak RSS", "files in shard 0"],
                   rows) + [""]
        if meta.get("plan_big_skipped"):
            L += [f"Not measured at {p['plan_big_files']:,} entries: "
                  f"{meta['plan_big_skipped']}.", ""]

    # slow
    rows = []
    for pas, what in (("slow-list-cold", "os.walk listing (names only), cold"),
                      ("slow-walk-cold", "walk + stat, cold"),
                      ("slow-epoch1", "epoch 1 (after the walk)")):
        for s in ("slowfs20k", "bicache", "bicache-imm"):
            v = res.median(s, pas, fps)
            if v is None:
                continue
            src = res.per_run(s, pas, lambda r: r.get("src"))
            rows.append([what, {"slowfs20k": "slowfs (source)", "bicache-imm":
                                "bicache --immutable"}.get(s, s), f"{v:,.0f}",
                         fx(res.ratio(s, "slowfs20k", pas, fps)),
                         f"{med([x['reads'] for x in src]):,.0f} / "
                         f"{med([x['meta'] for x in src]):,.0f}" if src else "-"])
    if rows:
        L += [f"#### Over the slow source: {meta.get('slow_tree', '')}", "",
              "Each system freshly mounted over slowfs for the listing, and again for the walk "
              "and the epoch that follows it; slowfs read directly is the baseline.", ""]
        L += table(["pass", "system", "files/s", "x the source read directly",
                    "slowfs requests (reads / meta)"], rows) + [""]
    return "\n".join(L)


def mem_row(system, when, xs):
    m = lambda k: med([x.get(k) for x in xs])  # noqa: E731
    entries, mb = m("meta_entries"), m("meta_bytes")
    return [system, when, mib(m("rss_kb")), mib(m("hwm_kb")), fmt(entries, ",.0f"),
            "-" if mb is None else f"{mb / 2**20:,.1f} MiB",
            "-" if not entries else f"{mb / entries:,.0f} B", fmt(m("disk_bytes"), ",.0f")]
