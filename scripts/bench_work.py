#!/usr/bin/env python3
"""Workloads for scripts/bench.sh. Each prints one JSON object on stdout and fails
(non-zero exit, message on stderr) on any read error or size mismatch.

    bench_work.py epoch ROOT LISTING SEED [--workers 4] [--batch 32]
        Reads every file of LISTING (relative path <TAB> size, under ROOT) whole, in the
        order of random.Random(SEED).shuffle, like a PyTorch DataLoader: WORKERS processes
        take batches of BATCH indices from a queue, and each file is read with
        open(path, "rb").read(). -> {"seconds","bytes","files"}

    bench_work.py walk ROOT
        os.walk(ROOT) and os.stat() of every file (one thread, like a dataset indexer).
        -> {"seconds","files","dirs","bytes": 0, "size_total"}

    bench_work.py zarr ARRAY SEED [--workers 4]
        Reads a zarr array one chunk-row slab at a time (arr[i*c:(i+1)*c]) in a seeded
        random order, WORKERS processes, each opening the array itself.
        -> {"seconds","bytes","files": number of slabs}

    bench_work.py fio FIO_JSON
        Summary of a fio --output-format=json result run with --group_reporting.
        -> {"seconds","bytes","iops"}

    bench_work.py snap STATS_FILE [--settled]
        Prints slowfs's stats file once it has been rewritten after this call started
        (slowfs rewrites it every 0.5 s), so it counts everything done before the call;
        with --settled, once two consecutive rewrites agree (the source is quiet: no
        readahead or write-back still pulling from it).
"""

import argparse
import json
import multiprocessing as mp
import os
import random
import sys
import time

_ROOT = None


def _init(root):
    global _ROOT
    _ROOT = root


def _read_batch(batch):
    got, errors = 0, []
    for rel, size in batch:
        try:
            with open(os.path.join(_ROOT, rel), "rb") as f:
                n = len(f.read())
        except OSError as e:
            errors.append(f"{rel}: {e}")
            continue
        got += n
        if n != size:
            errors.append(f"{rel}: read {n} bytes, expected {size}")
    return len(batch), got, errors


def epoch(a):
    files = []
    with open(a.listing) as f:
        for line in f:
            rel, size = line.rstrip("\n").split("\t")
            files.append((rel, int(size)))
    random.Random(a.seed).shuffle(files)
    batches = [files[i : i + a.batch] for i in range(0, len(files), a.batch)]
    ctx = mp.get_context("fork")
    with ctx.Pool(a.workers, initializer=_init, initargs=(a.root,)) as pool:
        # Workers are up before the clock starts (a DataLoader's are too, after epoch 1).
        pool.map(time.sleep, [0.05] * a.workers)
        start = time.monotonic()
        nfiles = nbytes = 0
        errors = []
        for n, b, e in pool.imap_unordered(_read_batch, batches):
            nfiles += n
            nbytes += b
            errors += e
        seconds = time.monotonic() - start
    if errors:
        print("\n".join(errors[:20]), file=sys.stderr)
        return 1
    print(json.dumps({"seconds": seconds, "bytes": nbytes, "files": nfiles}))
    return 0


def walk(a):
    start = time.monotonic()
    nfiles = ndirs = total = 0
    for d, dirs, names in os.walk(a.root):
        ndirs += len(dirs)
        for n in names:
            total += os.stat(os.path.join(d, n)).st_size
            nfiles += 1
    seconds = time.monotonic() - start
    print(json.dumps({"seconds": seconds, "files": nfiles, "dirs": ndirs, "bytes": 0,
                      "size_total": total}))
    return 0


_ARR = None
_ARR_PATH = None


def _zarr_slab(i):
    global _ARR
    if _ARR is None:
        import zarr

        _ARR = zarr.open(_ARR_PATH, mode="r")
    c = _ARR.chunks[0]
    return _ARR[i * c : (i + 1) * c].nbytes


def zarr_read(a):
    import zarr

    arr = zarr.open(a.array, mode="r")
    slabs = -(-arr.shape[0] // arr.chunks[0])
    order = list(range(slabs))
    random.Random(a.seed).shuffle(order)
    global _ARR_PATH
    _ARR_PATH = a.array
    ctx = mp.get_context("fork")
    # Each worker opens the array at its first slab, in the timed part: the array's
    # metadata is read through the system under test like the chunks.
    with ctx.Pool(a.workers) as pool:
        pool.map(time.sleep, [0.05] * a.workers)
        start = time.monotonic()
        nbytes = sum(pool.imap_unordered(_zarr_slab, order, chunksize=4))
        seconds = time.monotonic() - start
    print(json.dumps({"seconds": seconds, "bytes": nbytes, "files": slabs}))
    return 0


def fio_summary(a):
    with open(a.json) as f:
        text = f.read()
    # fio may print notes before the JSON document.
    d = json.loads(text[text.index("{") :])
    jobs = d["jobs"]
    io_bytes = sum(j["read"]["io_bytes"] for j in jobs)
    runtime_ms = max(j["read"]["runtime"] for j in jobs)
    ios = sum(j["read"]["total_ios"] for j in jobs)
    errors = sum(j.get("error", 0) for j in jobs)
    if errors or io_bytes == 0:
        print(f"fio: error={errors} io_bytes={io_bytes}", file=sys.stderr)
        return 1
    seconds = runtime_ms / 1000.0
    print(json.dumps({"seconds": seconds, "bytes": io_bytes, "iops": ios / seconds}))
    return 0


def snap(a):
    def after(t):
        deadline = time.time() + 30
        while time.time() < deadline:
            try:
                if os.stat(a.file).st_mtime > t:
                    with open(a.file) as f:
                        return f.read()
            except FileNotFoundError:
                pass
            time.sleep(0.03)
        raise SystemExit(f"{a.file} not rewritten for 30 s: is slowfs running?")

    cur = after(time.time())
    if a.settled:
        deadline = time.time() + 180
        while time.time() < deadline:
            prev, cur = cur, after(time.time())
            if cur == prev:
                break
        else:
            print("slowfs counters still moving after 180 s", file=sys.stderr)
    sys.stdout.write(cur)
    return 0


def main():
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="cmd", required=True)
    e = sub.add_parser("epoch")
    e.add_argument("root")
    e.add_argument("listing")
    e.add_argument("seed", type=int)
    e.add_argument("--workers", type=int, default=4)
    e.add_argument("--batch", type=int, default=32)
    w = sub.add_parser("walk")
    w.add_argument("root")
    z = sub.add_parser("zarr")
    z.add_argument("array")
    z.add_argument("seed", type=int)
    z.add_argument("--workers", type=int, default=4)
    f = sub.add_parser("fio")
    f.add_argument("json")
    n = sub.add_parser("snap")
    n.add_argument("file")
    n.add_argument("--settled", action="store_true")
    a = p.parse_args()
    return {"epoch": epoch, "walk": walk, "zarr": zarr_read, "fio": fio_summary,
            "snap": snap}[a.cmd](a)


if __name__ == "__main__":
    sys.exit(main())
