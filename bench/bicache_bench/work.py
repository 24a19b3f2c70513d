#!/usr/bin/env python3
"""The workloads. The driver runs each in a process of its own:

    python3 -m bicache_bench.work CMD ...     (PYTHONPATH=bench)

Each prints one JSON object on stdout and fails (non-zero exit, message on stderr) on any
read error or size/checksum mismatch.

    walk ROOT [--names-only]
        os.walk(ROOT), and os.stat() of every file unless --names-only (one thread, like a
        dataset indexer; names only = a plain listing, as `find` or os.walk alone).
        -> {"seconds","files","dirs","size_total"}

    epoch ROOT LISTING SEED [--workers 4] [--batch 32] [--deal queue|rr]
          [--read whole|aligned] [--crc] [--only LIST]
        Reads every file of LISTING (the dataset's TSV: path, size, crc; or only those named
        in LIST, one a line) whole, in the order of random.Random(SEED).shuffle, by WORKERS
        processes. --deal queue: they take batches of BATCH files from one queue, like a
        PyTorch DataLoader; rr: file i goes to worker i mod WORKERS. --read whole:
        open(path, "rb").read(); aligned: 1 MiB reads into a page-aligned buffer (a direct-I/O
        source splits an unaligned 1 MiB read in two). --crc checks each file's CRC-32.
        The clock starts once every worker is up. -> {"seconds","bytes","files","chunks"}

    zarr ARRAY SEED [--workers 4]
        Reads a zarr array one chunk-row slab at a time (arr[i*c:(i+1)*c]) in a seeded random
        order, WORKERS processes, each opening the array itself (in the timed part).
        -> {"seconds","bytes","files": number of slabs}

    timed [--stdout FILE] -- CMD ...
        Runs CMD; wall time and its peak RSS (getrusage(RUSAGE_CHILDREN).ru_maxrss of this
        fresh process: CMD is its only child). -> {"seconds","maxrss_kb","rc"}
"""

import argparse
import json
import mmap
import multiprocessing as mp
import os
import random
import resource
import signal
import subprocess
import sys
import time
import zlib

MiB = 1 << 20


# ---------------------------------------------------------------------------- walk
def walk(a):
    start = time.monotonic()
    nfiles = ndirs = total = 0
    for d, dirs, names in os.walk(a.root):
        ndirs += len(dirs)
        if a.names_only:
            nfiles += len(names)
            continue
        for n in names:
            total += os.stat(os.path.join(d, n)).st_size
            nfiles += 1
    seconds = time.monotonic() - start
    print(json.dumps({"seconds": seconds, "files": nfiles, "dirs": ndirs, "bytes": 0,
                      "size_total": total}))
    return 0


# --------------------------------------------------------------------------- epoch
def _read_one(root, rel, size, crc, how, check_crc, view):
    path = os.path.join(root, rel)
    if how == "whole":
        with open(path, "rb") as f:
            data = f.read()
        got = len(data)
        c = zlib.crc32(data) if check_crc else None
    else:
        fd = os.open(path, os.O_RDONLY)
        got, c = 0, 0
        try:
            while True:
                n = os.readv(fd, [view])
                if n == 0:
                    break
                if check_crc:
                    c = zlib.crc32(view[:n], c)
                got += n
        finally:
            os.close(fd)
    if got != size:
        return got, f"{rel}: read {got} bytes, expected {size}"
    if check_crc and c != crc:
        return got, f"{rel}: crc {c:08x}, expected {crc:08x}"
    return got, None


def _worker(root, how, check_crc, tasks, static, results, ready, go):
    # Not the parent's handlers: a Python-level SIGTERM handler never runs while the
    # worker waits in a lock, and the parent's terminate() would wait for ever.
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    view = memoryview(mmap.mmap(-1, MiB)) if how == "aligned" else None
    ready.put(os.getpid())
    go.wait()
    batches = [static] if static is not None else iter(tasks.get, None)
    nfiles = nbytes = 0
    errors = []
    for batch in batches:
        for rel, size, crc in batch:
            try:
                got, err = _read_one(root, rel, size, crc, how, check_crc, view)
            except OSError as e:
                got, err = 0, f"{rel}: {e}"
            nfiles += 1
            nbytes += got
            if err:
                errors.append(err)
    results.put((nfiles, nbytes, errors[:20]))


def epoch(a):
    files = {}
    with open(a.listing) as f:
        for line in f:
            parts = line.rstrip("\n").split("\t")
            files[parts[0]] = (int(parts[1]), int(parts[2], 16) if len(parts) > 2 else 0)
    if a.only:
        with open(a.only, "rb") as f:
            names = [os.fsdecode(l) for l in f.read().split(b"\n") if l]
        missing = [n for n in names if n not in files]
        if missing:
            print(f"{len(missing)} listed files are not in the dataset, e.g. {missing[0]}",
                  file=sys.stderr)
            return 1
    else:
        names = list(files)
    names.sort()
    random.Random(a.seed).shuffle(names)
    items = [(n, *files[n]) for n in names]
    chunks = sum(-(-size // a.chunk_size) for _, size, _ in items)
    ctx = mp.get_context("fork")
    tasks, results, ready, go = ctx.Queue(), ctx.Queue(), ctx.Queue(), ctx.Event()
    procs = []
    for w in range(a.workers):
        static = items[w::a.workers] if a.deal == "rr" else None
        procs.append(ctx.Process(target=_worker, daemon=True,
                                 args=(a.root, a.read, a.crc, tasks, static, results, ready, go)))
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    for p in procs:
        p.start()
    for _ in procs:
        ready.get()
    if a.deal == "queue":
        for i in range(0, len(items), a.batch):
            tasks.put(items[i:i + a.batch])
        for _ in procs:
            tasks.put(None)
    start = time.monotonic()
    go.set()
    got = [results.get() for _ in procs]
    seconds = time.monotonic() - start
    for p in procs:
        p.join()
    errors = [e for _, _, errs in got for e in errs]
    if errors or any(p.exitcode != 0 for p in procs):
        print("\n".join(errors[:20]) or "a reader process failed", file=sys.stderr)
        return 1
    print(json.dumps({"seconds": seconds, "bytes": sum(g[1] for g in got),
                      "files": sum(g[0] for g in got), "chunks": chunks}))
    return 0


# ---------------------------------------------------------------------------- zarr
_ARR = None
_ARR_PATH = None


def _zarr_slab(i):
    global _ARR
    if _ARR is None:
        import zarr

        _ARR = zarr.open(_ARR_PATH, mode="r")
    c = _ARR.chunks[0]
    return _ARR[i * c:(i + 1) * c].nbytes


def zarr_read(a):
    import zarr

    arr = zarr.open(a.array, mode="r")
    slabs = -(-arr.shape[0] // arr.chunks[0])
    order = list(range(slabs))
    random.Random(a.seed).shuffle(order)
    global _ARR_PATH
    _ARR_PATH = a.array
    with mp.get_context("fork").Pool(a.workers) as pool:
        pool.map(time.sleep, [0.05] * a.workers)
        start = time.monotonic()
        nbytes = sum(pool.imap_unordered(_zarr_slab, order, chunksize=4))
        seconds = time.monotonic() - start
    print(json.dumps({"seconds": seconds, "bytes": nbytes, "files": slabs}))
    return 0


# --------------------------------------------------------------------------- timed
def timed(a):
    cmd = a.command[1:] if a.command[:1] == ["--"] else a.command
    out = open(a.stdout, "wb") if a.stdout else subprocess.DEVNULL
    start = time.monotonic()
    rc = subprocess.run(cmd, stdout=out, stdin=subprocess.DEVNULL).returncode
    seconds = time.monotonic() - start
    maxrss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    print(json.dumps({"seconds": seconds, "maxrss_kb": maxrss, "rc": rc}))
    return 0 if rc == 0 else 1


def main(argv=None):
    p = argparse.ArgumentParser(description="bicache benchmark workloads")
    sub = p.add_subparsers(dest="what", required=True)
    w = sub.add_parser("walk")
    w.add_argument("root")
    w.add_argument("--names-only", action="store_true")
    e = sub.add_parser("epoch")
    e.add_argument("root")
    e.add_argument("listing")
    e.add_argument("seed", type=int)
    e.add_argument("--workers", type=int, default=4)
    e.add_argument("--batch", type=int, default=32)
    e.add_argument("--deal", choices=("queue", "rr"), default="queue")
    e.add_argument("--read", choices=("whole", "aligned"), default="whole")
    e.add_argument("--crc", action="store_true")
    e.add_argument("--only")
    e.add_argument("--chunk-size", type=int, default=MiB)
    z = sub.add_parser("zarr")
    z.add_argument("array")
    z.add_argument("seed", type=int)
    z.add_argument("--workers", type=int, default=4)
    t = sub.add_parser("timed")
    t.add_argument("--stdout")
    t.add_argument("command", nargs=argparse.REMAINDER)
    a = p.parse_args(argv)
    return {"walk": walk, "epoch": epoch, "zarr": zarr_read, "timed": timed}[a.what](a)


if __name__ == "__main__":
    sys.exit(main())
