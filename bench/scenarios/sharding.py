"""sharding: hit rate per epoch under random per-epoch order, for a dataset twice the
cache, of plain LRU, first-come pinning (unsharded) and a 2-way sharded pair of mounts
(was scripts/bench-sharding.sh + bench_sharding_util.py).

slowfs serves the dataset; every mount gets `--ram RAM --disk X`, X = half the dataset's
bytes (or `disk`). Systems, each on fresh cache dirs:
  lru      one unsharded mount, --cache-policy lru
  pin      one unsharded mount, --cache-policy pin (the default)
  sharded  two mounts, --shard node --shard-index i --shard-count 2, `bicache warm` on
           both, then each read by its own readers (the files of MP/.bicache/shard.txt),
           both mounts at once, like two nodes
Each epoch drops the page cache, then `workers` reader processes per mount read every file
of their view whole (1 MiB aligned reads, round-robin deal of a new seeded order, size and
CRC-32 checked). Per epoch: byte hit rate 1 - source bytes / bytes read, chunk-lookup hit
rate (ram.hits + disk.hits) / (ram.hits + ram.misses), from `bicache stats` deltas.
"""

import os
import random
import shutil
import statistics
import time
from collections import OrderedDict

from bicache_bench import data
from bicache_bench.report import header, table
from bicache_bench.systems import STANDARD
from bicache_bench.util import KiB, MiB, die, log, parse_size, run as run_cmd

TITLE = "sharding and pinning: hit rate per epoch for a dataset twice the cache"
DOC = "docs/SHARDING.md"
SECTION = "bench-sharding"
HEADING = "Benchmark"
NEEDS = []
PY_NEEDS = ["numpy"]
PIN_SHARE = 0.95  # src/cache: the share of a tier pinned files may take

PARAMS = dict(
    runs=3, epochs=4, workers=4, seed=4242, nfiles=2000, min_kib=64, max_kib=192, dirs=20,
    ram="8MiB", disk="", latency_ms=1.0, meta_latency_ms=-1.0, bandwidth_mbps=200.0,
    slowfs_threads=8, systems="lru pin sharded",
)
QUICK = dict(nfiles=120, dirs=4, epochs=2)

KNOWN = {
    "lru": ("unsharded, plain LRU", "--cache-policy lru", None),
    "pin": ("unsharded, pinning (default)", "--cache-policy pin", 0.45),
    "sharded": ("2-way sharded (2 mounts, one per shard)",
                "--shard node --shard-index {0,1} --shard-count 2", 0.99),
}


def run(b):
    p = b.p
    names = p.list("systems")
    for n in names:
        if n not in KNOWN:
            die(f"unknown system {n!r}; systems: {', '.join(KNOWN)}")
    if p.epochs < 2:
        die("epochs must be >= 2")
    comp = b.component(data.files(p.nfiles, p.dirs, p.min_kib * KiB, p.max_kib * KiB, "uniform",
                                  p.seed, dir_prefix="d", file_prefix="sample"))
    disk = parse_size(p.disk) if p.disk else comp.bytes // 2
    b.meta.update(nfiles=comp.files, total_bytes=comp.bytes, disk_bytes=disk,
                  dataset=comp.describe(), systems=names,
                  model=model([s for _, s, _ in data.read_listing(comp.listing)], disk,
                              PIN_SHARE, p.epochs, p.seed))
    every = {rel for rel, _, _ in data.read_listing(comp.listing)}
    base = STANDARD["bicache"].with_(ram=p.ram, disk=str(disk))
    with b.slowfs(comp.path) as slow:
        b.meta["slowfs"] = " ".join(map(str, slow.args))
        for r in b.runs():
            for name in names:
                log(f"run {r}: {name}")
                run_system(b, name, base, comp, slow, every)


def run_system(b, name, base, comp, slow, every):
    p, r = b.p, b.run
    mounts, lists, warm = [], [], {}
    try:
        if name in ("lru", "pin"):
            m = b.start(base.with_(name=name, args=("--cache-policy", name)), comp.path, slow)
            mounts.append(m)
            lists.append(None)
        else:
            for k in (0, 1):
                shutil.rmtree(b.lc.cachedir(f"shard{k}"), ignore_errors=True)
            t0 = time.monotonic()
            for k in (0, 1):
                mounts.append(b.start(base.with_(name=f"shard{k}", args=(
                    "--shard", "node", "--shard-index", str(k), "--shard-count", "2")),
                    comp.path, slow))
            for k, m in enumerate(mounts):
                run_cmd([m.binary, "warm", m.root, "--quiet"])
                warm[k] = {"seconds": time.monotonic() - t0,
                           "source_bytes": m.stats()["source"]["bytes"]}
                lst = os.path.join(b.logs, f"run{r}-shard{k}.txt")
                # Read, not shutil.copy: sendfile() of a control file (direct I/O, size 0)
                # copies nothing.
                with open(os.path.join(m.root, ".bicache", "shard.txt"), "rb") as f, \
                        open(lst, "wb") as g:
                    g.write(f.read())
                lists.append(lst)
            a, c = ({l.rstrip("\n") for l in open(x) if l.strip()} for x in lists)
            if a & c or (a | c) != every:
                die(f"shards overlap in {len(a & c)} files or miss {len(every - (a | c))}")
            log(f"run {r}: sharded: warm after {warm[0]['seconds']:.1f} / "
                f"{warm[1]['seconds']:.1f} s")
        after_e1 = None
        for e in range(1, p.epochs + 1):
            b.drop_caches()
            s0 = slow.snap()
            b0 = [m.stats() for m in mounts]
            t0 = time.monotonic()
            argl = []
            for k, m in enumerate(mounts):
                args = ["epoch", m.root, comp.listing, p.seed + 1000 * r + 10 * e + k,
                        "--workers", p.workers, "--deal", "rr", "--read", "aligned", "--crc"]
                if lists[k]:
                    args += ["--only", lists[k]]
                argl.append(args)
            reads = b.work_many(argl)
            seconds = time.monotonic() - t0
            for m in mounts:
                m.settle()
            s1 = slow.snap(settled=True)
            b1 = [m.stats() for m in mounts]
            rec = {"type": "epoch", "system": name, "epoch": e, "seconds": seconds,
                   "slowfs_bytes": s1["bytes"] - s0["bytes"],
                   "slowfs_reads": s1["reads"] - s0["reads"]}
            for k in ("bytes", "files", "chunks"):
                rec[k] = sum(x[k] for x in reads)
            for k, (grp, key) in {"ram_hits": ("ram", "hits"), "ram_misses": ("ram", "misses"),
                                  "disk_hits": ("disk", "hits"),
                                  "source_bytes": ("source", "bytes"),
                                  "source_reads": ("source", "reads"),
                                  "out_of_shard_opens": ("shard", "out_of_shard_opens")}.items():
                rec[k] = sum(y[grp][key] - x[grp][key] for x, y in zip(b0, b1))
            b.record(rec)
            log(f"run {r}: {name} epoch {e}: byte hit rate "
                f"{1 - rec['source_bytes'] / rec['bytes']:.3f}, {seconds:.1f} s")
            if e == 1:
                after_e1 = b1
        for k, (m, st) in enumerate(zip(mounts, after_e1)):
            b.record({"type": "setup", "system": name,
                      "label": f"shard {k}" if name == "sharded" else "single",
                      "shard_files": st["shard"]["files"], "shard_bytes": st["shard"]["bytes"],
                      "prefetch_state": st["prefetch"]["state"],
                      "prefetch_files_done": st["prefetch"]["files_done"],
                      "prefetch_files_total": st["prefetch"]["files_total"],
                      "pinned_after_e1": st["disk"].get("pinned_bytes", 0),
                      "disk_bytes_after_e1": st["disk"]["bytes"],
                      "warm_seconds": warm.get(k, {}).get("seconds"),
                      "warm_source_bytes": warm.get(k, {}).get("source_bytes")})
    finally:
        for m in reversed(mounts):
            m.down()
        for m in mounts:
            shutil.rmtree(m.cache_dir, ignore_errors=True)


def model(sizes, capacity, pin_share, epochs, seed):
    """Byte hit rate per epoch of an idealised cache of `capacity` bytes (one tier, whole
    files) under random per-epoch order: plain LRU, and first-come pinning of `pin_share`
    of the capacity with an LRU for the rest."""
    out = {}
    for policy in ("lru", "pin"):
        rng = random.Random(seed)
        lru, pinned = OrderedDict(), set()
        lru_bytes = pinned_bytes = 0
        pin_cap = int(capacity * pin_share) if policy == "pin" else 0
        rates = []
        for _ in range(epochs):
            order = list(range(len(sizes)))
            rng.shuffle(order)
            hit = total = 0
            for i in order:
                s = sizes[i]
                total += s
                if i in pinned:
                    hit += s
                    continue
                if i in lru:
                    hit += s
                    lru.move_to_end(i)
                    continue
                if pinned_bytes + s <= pin_cap:
                    pinned.add(i)
                    pinned_bytes += s
                else:
                    lru[i] = s
                    lru_bytes += s
                while pinned_bytes + lru_bytes > capacity and lru:
                    _, v = lru.popitem(last=False)
                    lru_bytes -= v
            rates.append(hit / total)
        out[policy] = rates
    return out


def report(res, meta):
    p = meta["params"]
    epochs = p["epochs"]
    runs = res.runs
    ep = {}
    for x in res.of_type("epoch"):
        ep.setdefault((x["run"], x["system"]), []).append(x)
    for v in ep.values():
        v.sort(key=lambda x: x["epoch"])

    def rates(e):
        lookups = e["ram_hits"] + e["ram_misses"]
        return {"lookup": (e["ram_hits"] + e["disk_hits"]) / lookups if lookups else float("nan"),
                "byte": 1 - e["source_bytes"] / e["bytes"],
                "chunk": 1 - e["source_reads"] / e["chunks"]}

    def later(run, s, key):
        return statistics.median(rates(e)[key] for e in ep[(run, s)][1:])

    def medr(f):
        return statistics.median(f(r) for r in runs)

    disk = meta["disk_bytes"]
    L = header(meta, [
        f"- Dataset: {meta['dataset']}, {meta['total_bytes']:,} bytes "
        f"({meta['total_bytes'] / MiB:.1f} MiB), served by `slowfs {meta['slowfs']}`.",
        f"- Cache per mount: `--ram {p['ram']} --disk {disk}` ({disk / MiB:.1f} MiB = "
        f"{disk / meta['total_bytes']:.2f} of the dataset), chunk size 1024 KiB (default), a "
        "fresh cache dir per system and run.",
        f"- Each epoch: `sync; echo 3 > /proc/sys/vm/drop_caches`, then {p['workers']} reader "
        "processes per mount read every file of their view whole (checking size and CRC-32), "
        "in a new seeded random order per epoch dealt round-robin to the readers. Counters are "
        "deltas over the epoch, after the SSD write-back settled."])
    head = ["system", "mount options (besides the cache)", "epoch 1 byte hit rate",
            f"epochs 2-{epochs} byte hit rate", f"epochs 2-{epochs} chunk-lookup hit rate",
            f"epochs 2-{epochs} source MB per epoch", "target"]
    rows = []
    for s in meta["systems"]:
        label, args, target = KNOWN[s]
        got = medr(lambda r: later(r, s, "byte"))
        got_l = medr(lambda r: later(r, s, "lookup"))
        v = "-"
        if target is not None:
            ok_b, ok_l = got >= target, got_l >= target
            v = f"≥ {target}: " + ("met" if ok_b and ok_l else "met by bytes, not by lookups"
                                   if ok_b else "met by lookups only" if ok_l else
                                   f"MISSED by {target - got:.3f}")
        src = medr(lambda r: statistics.median(e["source_bytes"] for e in ep[(r, s)][1:]) / 1e6)
        rows.append([label, f"`{args}`", f"{medr(lambda r: rates(ep[(r, s)][0])['byte']):.3f}",
                     f"**{got:.3f}**", f"{got_l:.3f}", f"{src:.1f}", v])
    L += table(head, rows) + [""]
    mo = meta["model"]
    L += [f"Idealised model of the same files and a {disk / MiB:.1f} MiB cache (one tier, whole "
          "files, `model()` in bench/scenarios/sharding.py), byte hit rate of epochs "
          f"2-{epochs}: plain LRU {statistics.median(mo['lru'][1:]):.3f}, first-come pinning "
          f"of {PIN_SHARE:.0%} {statistics.median(mo['pin'][1:]):.3f}; cache / data = "
          f"{disk / meta['total_bytes']:.3f}.", "",
          f"Medians over {len(runs)} run(s); a run's figure for epochs 2-{epochs} is the median "
          "of its epochs. *Byte hit rate* = 1 - bytes bicache pulled from its source / bytes "
          "the readers read. *Chunk-lookup hit rate* = (ram.hits + disk.hits) / (ram.hits + "
          "ram.misses). For the sharded system both mounts' counters are added up.", "",
          "Per run and epoch (sharded: both mounts together; slowfs bytes are what the "
          "simulated shared filesystem served, bicache's source bytes what bicache asked for):",
          ""]
    rows = []
    for r in runs:
        for s in meta["systems"]:
            for e in ep[(r, s)]:
                x = rates(e)
                rows.append([r, s, e["epoch"], f"{e['seconds']:.2f}", f"{e['bytes'] / 1e6:.1f}",
                             f"{e['source_bytes'] / 1e6:.1f}", f"{e['slowfs_bytes'] / 1e6:.1f}",
                             f"{x['byte']:.3f}", f"{x['chunk']:.3f}", f"{x['lookup']:.3f}",
                             e["ram_hits"], e["disk_hits"], e["ram_hits"] + e["ram_misses"],
                             e["out_of_shard_opens"]])
    L += table(["run", "system", "epoch", "seconds", "MB read", "bicache source MB", "slowfs MB",
                "byte hit rate", "chunk hit rate", "lookup hit rate", "RAM hits", "SSD hits",
                "lookups", "out-of-shard opens"], rows)
    L += ["", "Set-up of each run. Warm-up: from the first `bicache mount` to the end of "
          "`bicache warm` on that mount (both mounts prefetch at once from the one slowfs), and "
          "the source bytes the prefetch pulled. SSD figures after epoch 1:", ""]
    rows = []
    for m in res.of_type("setup"):
        shard = f"{m['shard_files']} / {m['shard_bytes'] / 1e6:.1f} MB" if m["shard_files"] else "-"
        pf = (f"{m['prefetch_state']}: {m['prefetch_files_done']}/{m['prefetch_files_total']} "
              "files" if m["prefetch_state"] != "off" else "off")
        rows.append([m["run"], m["system"], m["label"], shard, pf,
                     "-" if m["warm_seconds"] is None else f"{m['warm_seconds']:.1f}",
                     "-" if m["warm_source_bytes"] is None else f"{m['warm_source_bytes'] / 1e6:.1f}",
                     f"{m['pinned_after_e1'] / 1e6:.1f}", f"{m['disk_bytes_after_e1'] / 1e6:.1f}"])
    L += table(["run", "system", "mount", "shard files / bytes", "prefetch", "warm-up seconds",
                "warm-up source MB", "SSD pinned MB after epoch 1", "SSD bytes MB after epoch 1"],
               rows)
    return "\n".join(L)
