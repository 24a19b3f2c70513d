#!/usr/bin/env python3
"""Helpers of scripts/bench-sharding.sh (standard library only).

    bench_sharding_util.py gen DIR --files N --min-kib A --max-kib B --dirs D --seed S
        write a reproducible dataset: N files of A..B KiB (uniform), contents and sizes
        from random.Random(S), spread over D directories
    bench_sharding_util.py list DIR > FILES.tsv
        relative path, size and CRC-32 of every file, one a line, sorted
    bench_sharding_util.py read ROOT FILES.tsv [--only LIST] --seed S --workers W
        one epoch: W reader processes read every file (of LIST, default all of FILES.tsv)
        whole through ROOT, in a random order drawn from S, and check size and CRC-32;
        prints {"seconds","bytes","files","chunks"} as JSON, exits 1 on any error
    bench_sharding_util.py model FILES.tsv --capacity BYTES --pin-share F --epochs E --seed S
        simulates plain LRU and first-come pinning on the same files, for comparison
    bench_sharding_util.py epoch --seconds S --slowfs BEFORE AFTER
                                 --mount READ.json BEFORE.json AFTER.json [--mount ...]
        one epoch's counters (deltas, summed over the mounts) as one JSON line
    bench_sharding_util.py mount LABEL AFTER_EPOCH1.json [--warm-seconds S --warmed W.json]
        one mount's set-up figures as one JSON line
    bench_sharding_util.py brief EPOCH.json
        one line for the log
    bench_sharding_util.py assemble RUN DIR SYSTEM...
        one run's line of RESULTS.jsonl from DIR/SYSTEM/epoch*.json and mount*.json
    bench_sharding_util.py report RESULTS.jsonl META.json
        the Markdown report of the benchmark

A reader process reads its files with a page-aligned 1 MiB buffer (os.readv), so the
kernel sends bicache requests of its largest FUSE read size; the shuffled list is dealt
out round-robin (file i to reader i mod W), as a DataLoader deals batches to its workers,
so the W readers together follow the epoch's random order.
"""
import argparse
import json
import mmap
import os
import random
import signal
import statistics
import sys
import time
import zlib
from collections import OrderedDict
from multiprocessing import Process, Queue

KiB = 1024
MiB = 1 << 20


# ----------------------------------------------------------------------------- dataset
def gen(args):
    rng = random.Random(args.seed)
    os.makedirs(args.dir)
    for d in range(args.dirs):
        os.makedirs(os.path.join(args.dir, f"d{d:02d}"))
    for i in range(args.files):
        size = rng.randint(args.min_kib * KiB, args.max_kib * KiB)
        path = os.path.join(args.dir, f"d{i % args.dirs:02d}", f"sample{i:05d}.bin")
        with open(path, "wb") as f:
            f.write(rng.randbytes(size))


def listing(args):
    rows = []
    for d, _, names in os.walk(args.dir):
        for n in names:
            p = os.path.join(d, n)
            with open(p, "rb") as f:
                data = f.read()
            rows.append((os.path.relpath(p, args.dir), len(data), zlib.crc32(data)))
    for rel, size, crc in sorted(rows):
        print(f"{rel}\t{size}\t{crc:08x}")


def load_tsv(path):
    files = OrderedDict()
    with open(path) as f:
        for line in f:
            rel, size, crc = line.rstrip("\n").split("\t")
            files[rel] = (int(size), int(crc, 16))
    return files


# ------------------------------------------------------------------------------ readers
def reader(root, items, out):
    """Reads each (rel, size, crc) of `items` whole; puts (bytes, errors) on `out`."""
    view = memoryview(mmap.mmap(-1, MiB))  # page-aligned
    total, errors = 0, []
    for rel, size, crc in items:
        try:
            fd = os.open(os.path.join(root, rel), os.O_RDONLY)
            try:
                got, c = 0, 0
                while True:
                    n = os.readv(fd, [view])
                    if n == 0:
                        break
                    c = zlib.crc32(view[:n], c)
                    got += n
            finally:
                os.close(fd)
        except OSError as e:
            errors.append(f"{rel}: {e}")
            continue
        total += got
        if got != size or c != crc:
            errors.append(f"{rel}: read {got} bytes crc {c:08x}, expected {size} crc {crc:08x}")
    out.put((total, errors))


def read_epoch(args):
    files = load_tsv(args.files_tsv)
    if args.only:
        with open(args.only) as f:
            names = [l.rstrip("\n") for l in f if l.strip()]
        missing = [n for n in names if n not in files]
        if missing:
            sys.exit(f"{len(missing)} listed files are not in the dataset, e.g. {missing[0]}")
    else:
        names = list(files)
    order = sorted(names)
    random.Random(args.seed).shuffle(order)
    items = [(rel, *files[rel]) for rel in order]
    chunks = sum(-(-size // args.chunk_size) for _, size, _ in items)
    out = Queue()
    # Daemonic: if this process is stopped (SIGTERM from the benchmark's cleanup), the
    # readers are terminated with it instead of living on.
    procs = [
        Process(target=reader, args=(args.root, items[w :: args.workers], out), daemon=True)
        for w in range(args.workers)
    ]
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    start = time.monotonic()
    for p in procs:
        p.start()
    results = [out.get() for _ in procs]
    for p in procs:
        p.join()
    seconds = time.monotonic() - start
    errors = [e for _, errs in results for e in errs]
    if errors or any(p.exitcode != 0 for p in procs):
        print("\n".join(errors[:20]) or "a reader process failed", file=sys.stderr)
        sys.exit(1)
    print(json.dumps({
        "seconds": seconds,
        "bytes": sum(b for b, _ in results),
        "files": len(items),
        "chunks": chunks,
    }))


# -------------------------------------------------------------------------------- model
def model(args):
    """Byte hit rate per epoch of an idealised cache of `capacity` bytes (one tier, one
    chunk per file, whole files) under random per-epoch order: plain LRU, and first-come
    pinning of `pin_share` of the capacity with an LRU for the rest."""
    sizes = [size for size, _ in load_tsv(args.files_tsv).values()]
    out = {}
    for policy in ("lru", "pin"):
        rng = random.Random(args.seed)
        lru = OrderedDict()  # index -> size, least recently used first
        pinned = set()
        lru_bytes = pinned_bytes = 0
        pin_cap = int(args.capacity * args.pin_share) if policy == "pin" else 0
        rates = []
        for _ in range(args.epochs):
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
                # Evict unpinned entries, oldest first, to stay within the capacity.
                while pinned_bytes + lru_bytes > args.capacity and lru:
                    _, v = lru.popitem(last=False)
                    lru_bytes -= v
            rates.append(hit / total)
        out[policy] = rates
    print(json.dumps(out))


# --------------------------------------------------------------------------- bookkeeping
def load(path):
    with open(path) as f:
        return json.load(f)


def epoch(args):
    before, after = load(args.slowfs[0]), load(args.slowfs[1])
    e = {
        "seconds": args.seconds,
        "slowfs_bytes": after["bytes"] - before["bytes"],
        "slowfs_reads": after["reads"] - before["reads"],
    }
    keys = {
        "bytes": None, "files": None, "chunks": None,
        "ram_hits": ("ram", "hits"), "ram_misses": ("ram", "misses"),
        "disk_hits": ("disk", "hits"), "disk_misses": ("disk", "misses"),
        "source_bytes": ("source", "bytes"), "source_reads": ("source", "reads"),
        "out_of_shard_opens": ("shard", "out_of_shard_opens"),
        "disk_writes_dropped": ("disk", "writes_dropped"),
    }
    for k in keys:
        e[k] = 0
    for read, b0, b1 in args.mount:
        rd, s0, s1 = load(read), load(b0), load(b1)
        for k, where in keys.items():
            if where is None:
                e[k] += rd[k]
            else:
                e[k] += s1[where[0]][where[1]] - s0[where[0]][where[1]]
    print(json.dumps(e))


def brief(args):
    e = load(args.epoch_json)
    lookups = e["ram_hits"] + e["ram_misses"]
    print(f"byte hit rate {1 - e['source_bytes'] / e['bytes']:.3f}, lookup hit rate "
          f"{(e['ram_hits'] + e['disk_hits']) / max(lookups, 1):.3f}, {e['seconds']:.1f} s")


def mount_info(args):
    a = load(args.after_e1)
    m = {
        "label": args.label,
        "shard_files": a["shard"]["files"],
        "shard_bytes": a["shard"]["bytes"],
        "prefetch_state": a["prefetch"]["state"],
        "prefetch_files_done": a["prefetch"]["files_done"],
        "prefetch_files_total": a["prefetch"]["files_total"],
        "pinned_after_e1": a["disk"].get("pinned_bytes", 0),
        "disk_bytes_after_e1": a["disk"]["bytes"],
        "disk_capacity": a["disk"]["capacity"],
        "warm_seconds": args.warm_seconds,
        "warm_source_bytes": load(args.warmed)["source"]["bytes"] if args.warmed else None,
    }
    print(json.dumps(m))


def assemble(args):
    run = {"run": args.run}
    for system in args.systems:
        d = os.path.join(args.dir, system)
        n = len([f for f in os.listdir(d) if f.startswith("epoch") and f.endswith(".json")])
        m = len([f for f in os.listdir(d) if f.startswith("mount") and f.endswith(".json")])
        run[system] = {
            "epochs": [load(os.path.join(d, f"epoch{i}.json")) for i in range(1, n + 1)],
            "mounts": [load(os.path.join(d, f"mount{i}.json")) for i in range(m)],
        }
    print(json.dumps(run))


# ------------------------------------------------------------------------------- report
def report(args):
    runs = [json.loads(l) for l in open(args.results) if l.strip()]
    meta = json.load(open(args.meta))
    systems = meta["systems"]
    epochs = meta["epochs"]

    def rates(e):
        lookups = e["ram_hits"] + e["ram_misses"]
        return {
            "lookup": (e["ram_hits"] + e["disk_hits"]) / lookups if lookups else float("nan"),
            "byte": 1 - e["source_bytes"] / e["bytes"],
            "chunk": 1 - e["source_reads"] / e["chunks"],
            "slowfs_byte": 1 - e["slowfs_bytes"] / e["bytes"],
        }

    def later(run, system, key):
        """Median over epochs 2.. of one run."""
        return statistics.median(rates(e)[key] for e in run[system]["epochs"][1:])

    def first(run, system, key):
        return rates(run[system]["epochs"][0])[key]

    def med(f):
        return statistics.median(f(r) for r in runs)

    L = []
    L.append(f"Generated by `scripts/bench-sharding.sh` on {meta['date']}; bicache at "
             f"`{meta['git_rev']}`.")
    L.append("")
    L.append(f"- Machine: {meta['machine']}.")
    L.append(f"- Command: `{meta['command']}` (as root, from the repository root).")
    L.append(f"- Dataset: {meta['nfiles']:,} files of {meta['min_kib']}-{meta['max_kib']} KiB, "
             f"{meta['total_bytes']:,} bytes ({meta['total_bytes'] / MiB:.1f} MiB) in "
             f"{meta['dirs']} directories, contents from `random.Random({meta['seed']})`, served "
             f"by `slowfs` ({meta['latency_ms']} ms per request, {meta['bandwidth_mbps']} MB/s).")
    L.append(f"- Cache per mount: `--ram {meta['ram']} --disk {meta['disk_bytes']}` "
             f"({meta['disk_bytes'] / MiB:.1f} MiB = half the dataset), chunk size "
             f"{meta['chunk_size'] // KiB} KiB (default), a fresh cache dir per system and run.")
    L.append(f"- Each epoch: `sync; echo 3 > /proc/sys/vm/drop_caches`, then {meta['workers']} "
             "reader processes per mount read every file of their view whole (checking size "
             "and CRC-32), in a new seeded random order per epoch dealt round-robin to the "
             "readers. Counters are deltas over the epoch, after the SSD write-back settled.")
    L.append("")
    L.append("| system | mount options (besides the cache) | epoch 1 byte hit rate | "
             f"epochs 2-{epochs} byte hit rate | epochs 2-{epochs} chunk-lookup hit rate | "
             f"epochs 2-{epochs} source MB per epoch | target |")
    L.append("|---|---|---|---|---|---|---|")
    for s in systems:
        name = s["name"]
        target = s.get("target")
        got = med(lambda r: later(r, name, "byte"))
        got_l = med(lambda r: later(r, name, "lookup"))
        verdict = "-"
        if target is not None:
            ok_b, ok_l = got >= target, got_l >= target
            verdict = (f"≥ {target}: " + ("met" if ok_b and ok_l else
                       "met by bytes, not by lookups" if ok_b else
                       "met by lookups only" if ok_l else
                       f"MISSED by {target - got:.3f}"))
        src_mb = med(lambda r: statistics.median(
            e["source_bytes"] for e in r[name]["epochs"][1:]) / 1e6)
        L.append(f"| {s['label']} | `{s['args']}` | {med(lambda r: first(r, name, 'byte')):.3f} "
                 f"| **{got:.3f}** | {got_l:.3f} | {src_mb:.1f} | {verdict} |")
    L.append("")
    if "model" in meta:
        m = meta["model"]
        L.append(f"Idealised model of the same files and a {meta['disk_bytes'] / MiB:.1f} MiB "
                 "cache (one tier, whole files, `bench_sharding_util.py model`), byte hit rate "
                 f"of epochs 2-{epochs}: plain LRU {statistics.median(m['lru'][1:]):.3f}, "
                 f"first-come pinning of {meta['pin_share']:.0%} "
                 f"{statistics.median(m['pin'][1:]):.3f}; cache / data = "
                 f"{meta['disk_bytes'] / meta['total_bytes']:.3f}.")
        L.append("")
    L.append(f"Medians over {len(runs)} run(s); a run's figure for epochs 2-{epochs} is the "
             "median of its epochs. *Byte hit rate* = 1 - bytes bicache pulled from its "
             "source / bytes the readers read. *Chunk-lookup hit rate* = (ram.hits + "
             "disk.hits) / (ram.hits + ram.misses). For the sharded system both mounts' "
             "counters are added up.")
    L.append("")
    L.append("Per run and epoch (sharded: both mounts together; slowfs bytes are what the "
             "simulated shared filesystem served, bicache's source bytes what bicache asked "
             "for):")
    L.append("")
    L.append("| run | system | epoch | seconds | MB read | bicache source MB | slowfs MB "
             "| byte hit rate | chunk hit rate | lookup hit rate | RAM hits | SSD hits "
             "| lookups | out-of-shard opens |")
    L.append("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in runs:
        for s in systems:
            for i, e in enumerate(r[s["name"]]["epochs"]):
                x = rates(e)
                L.append(
                    f"| {r['run']} | {s['name']} | {i + 1} | {e['seconds']:.2f} "
                    f"| {e['bytes'] / 1e6:.1f} | {e['source_bytes'] / 1e6:.1f} "
                    f"| {e['slowfs_bytes'] / 1e6:.1f} | {x['byte']:.3f} | {x['chunk']:.3f} "
                    f"| {x['lookup']:.3f} | {e['ram_hits']} | {e['disk_hits']} "
                    f"| {e['ram_hits'] + e['ram_misses']} | {e['out_of_shard_opens']} |")
    L.append("")
    L.append("Set-up of each run. Warm-up: from the first `bicache mount` to the end of "
             "`bicache warm` on that mount (both mounts prefetch at once from the one slowfs), "
             "and the source bytes the prefetch pulled. SSD figures after epoch 1:")
    L.append("")
    L.append("| run | system | mount | shard files / bytes | prefetch | warm-up seconds "
             "| warm-up source MB | SSD pinned MB after epoch 1 | SSD bytes MB after epoch 1 |")
    L.append("|---|---|---|---|---|---|---|---|---|")
    for r in runs:
        for s in systems:
            for m in r[s["name"]]["mounts"]:
                shard = (f"{m['shard_files']} / {m['shard_bytes'] / 1e6:.1f} MB"
                         if m.get("shard_files") else "-")
                pf = (f"{m['prefetch_state']}: {m['prefetch_files_done']}/"
                      f"{m['prefetch_files_total']} files" if m["prefetch_state"] != "off" else "off")
                warm = f"{m['warm_seconds']:.1f}" if m.get("warm_seconds") is not None else "-"
                wsrc = (f"{m['warm_source_bytes'] / 1e6:.1f}"
                        if m.get("warm_source_bytes") is not None else "-")
                L.append(f"| {r['run']} | {s['name']} | {m['label']} | {shard} | {pf} | {warm} "
                         f"| {wsrc} | {m['pinned_after_e1'] / 1e6:.1f} "
                         f"| {m['disk_bytes_after_e1'] / 1e6:.1f} |")
    print("\n".join(L))


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    g = sub.add_parser("gen")
    g.add_argument("dir")
    g.add_argument("--files", type=int, required=True)
    g.add_argument("--min-kib", type=int, required=True)
    g.add_argument("--max-kib", type=int, required=True)
    g.add_argument("--dirs", type=int, required=True)
    g.add_argument("--seed", type=int, required=True)
    li = sub.add_parser("list")
    li.add_argument("dir")
    r = sub.add_parser("read")
    r.add_argument("root")
    r.add_argument("files_tsv")
    r.add_argument("--only")
    r.add_argument("--seed", type=int, required=True)
    r.add_argument("--workers", type=int, default=4)
    r.add_argument("--chunk-size", type=int, default=MiB)
    m = sub.add_parser("model")
    m.add_argument("files_tsv")
    m.add_argument("--capacity", type=int, required=True)
    m.add_argument("--pin-share", type=float, default=0.95)
    m.add_argument("--epochs", type=int, default=4)
    m.add_argument("--seed", type=int, default=0)
    ep = sub.add_parser("epoch")
    ep.add_argument("--seconds", type=float, required=True)
    ep.add_argument("--slowfs", nargs=2, required=True)
    ep.add_argument("--mount", nargs=3, action="append", required=True)
    br = sub.add_parser("brief")
    br.add_argument("epoch_json")
    mi = sub.add_parser("mount")
    mi.add_argument("label")
    mi.add_argument("after_e1")
    mi.add_argument("--warm-seconds", type=float)
    mi.add_argument("--warmed")
    asm = sub.add_parser("assemble")
    asm.add_argument("run", type=int)
    asm.add_argument("dir")
    asm.add_argument("systems", nargs="+")
    rp = sub.add_parser("report")
    rp.add_argument("results")
    rp.add_argument("meta")
    a = p.parse_args()
    {
        "gen": gen, "list": listing, "read": read_epoch, "model": model, "epoch": epoch,
        "mount": mount_info, "brief": brief, "assemble": assemble, "report": report,
    }[a.cmd](a)


if __name__ == "__main__":
    main()
