"""Seeded datasets, generated once and cached under BENCH_DIR/data.

A *component* is one generated tree, described by a small dict (its spec); the same spec
gives the same bytes on every machine (numpy.random.default_rng([seed, ...])). Kinds:

  files(n, dirs, lo, hi, dist, seed)   n files spread round-robin over `dirs` folders
                                       (<dir_prefix>NNN/<file_prefix>NNNNN.bin), sizes drawn
                                       per folder: "loguniform" in [lo, hi] bytes (most files
                                       small, a tail of large ones, like JPEG images),
                                       "uniform", or "fixed" (= lo); content random bytes, or
                                       nothing with empty=True (for listing-only tests)
  big(n, mib, seed)                    n files big<i>.bin of `mib` MiB each
  zarr(rows, chunk_rows, seed)         a zarr v2 uint8 array.zarr (rows, 256, 256), chunks
                                       (chunk_rows, 256, 256), Blosc (random: incompressible)

Each component lives in data/<kind>-<hash>/ (only the dataset's files: walkers see nothing
else), with data/<kind>-<hash>.json (spec and totals) and .tsv (every file: relative path,
size, CRC-32, sorted) beside it. A *root* joins named components into one tree
(root/<name>/...) made of hard links, so several scenarios share one copy of the bytes.
"""

import fcntl
import hashlib
import json
import math
import multiprocessing as mp
import os
import shutil
import signal
import zlib

from .util import GiB, KiB, MiB, die, log

# Bump when the generator's output for a given spec changes.
GEN_VERSION = 1


def files(n, dirs, lo, hi=None, dist="loguniform", seed=0, dir_prefix="n", file_prefix="img",
          empty=False):
    return {"kind": "files", "n": int(n), "dirs": int(dirs), "lo": int(lo),
            "hi": int(hi if hi is not None else lo), "dist": dist, "seed": int(seed),
            "dir_prefix": dir_prefix, "file_prefix": file_prefix, "empty": bool(empty)}


def big(n, mib, seed=0):
    return {"kind": "big", "n": int(n), "mib": int(mib), "seed": int(seed)}


def zarr_array(rows, chunk_rows, seed=0):
    return {"kind": "zarr", "rows": int(rows), "chunk_rows": int(chunk_rows), "seed": int(seed)}


def describe(spec):
    """One line for reports."""
    k = spec["kind"]
    if k == "files":
        if spec["empty"]:
            size = "empty"
        elif spec["dist"] == "fixed":
            size = f"{spec['lo']:,} bytes each"
        else:
            size = (f"{spec['dist']} {_kib(spec['lo'])}-{_kib(spec['hi'])} KiB")
        return f"{spec['n']:,} files ({size}) in {spec['dirs']:,} folders, seed {spec['seed']}"
    if k == "big":
        return f"{spec['n']} x {spec['mib']} MiB, seed {spec['seed']}"
    if k == "zarr":
        return (f"zarr v2 uint8 ({spec['rows']}, 256, 256), chunks ({spec['chunk_rows']}, 256, "
                f"256) = {spec['chunk_rows'] * 64} KiB, Blosc (random bytes: incompressible), "
                f"seed {spec['seed']}")
    return json.dumps(spec)


def _kib(b):
    return f"{b / KiB:g}"


def _hash(obj):
    text = json.dumps([GEN_VERSION, obj], sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


class Component:
    def __init__(self, path, meta):
        self.path = path
        self.listing = path + ".tsv"
        self.spec = meta["spec"]
        self.files = meta["files"]
        self.bytes = meta["bytes"]

    def describe(self):
        return describe(self.spec)


class Root:
    """Named components joined in one tree."""

    def __init__(self, path, comps):
        self.path = path
        self.comps = comps

    def sub(self, name):
        return os.path.join(self.path, name)

    def listing(self, name):
        return self.comps[name].listing

    def combined_listing(self):
        """Every file of the root (relative to it), sorted: a TSV next to the root."""
        out = self.path + ".all.tsv"
        if not os.path.exists(out):
            rows = []
            for name, c in self.comps.items():
                with open(c.listing) as f:
                    rows += [f"{name}/{line}" for line in f if line.strip()]
            rows.sort()
            with open(out + ".tmp", "w") as f:
                f.writelines(rows)
            os.replace(out + ".tmp", out)
        return out

    @property
    def files(self):
        return sum(c.files for c in self.comps.values())

    @property
    def bytes(self):
        return sum(c.bytes for c in self.comps.values())


class Store:
    def __init__(self, data_dir, jobs=None):
        self.dir = data_dir
        self.jobs = jobs or os.cpu_count() or 1
        os.makedirs(data_dir, exist_ok=True)

    def _locked(self):
        f = open(os.path.join(self.dir, ".lock"), "w")
        fcntl.flock(f, fcntl.LOCK_EX)
        return f

    def component(self, spec):
        path = os.path.join(self.dir, f"{spec['kind']}-{_hash(spec)}")
        with self._locked():
            if not os.path.exists(path + ".json"):
                _check_room(self.dir, spec)
                log(f"generating {describe(spec)} in {path} (cached for later runs)")
                tmp = path + ".tmp"
                for p in (tmp, tmp + ".tsv", path, path + ".tsv"):
                    if os.path.isdir(p):
                        shutil.rmtree(p)
                    elif os.path.exists(p):
                        os.unlink(p)
                nfiles, nbytes = GENERATORS[spec["kind"]](tmp, spec, self.jobs)
                os.rename(tmp + ".tsv", path + ".tsv")
                os.rename(tmp, path)
                meta = {"spec": spec, "files": nfiles, "bytes": nbytes}
                with open(path + ".json.tmp", "w") as f:
                    json.dump(meta, f, indent=1)
                os.rename(path + ".json.tmp", path + ".json")
            with open(path + ".json") as f:
                return Component(path, json.load(f))

    def root(self, **named_specs):
        comps = {name: self.component(s) for name, s in named_specs.items()}
        key = _hash({n: s for n, s in named_specs.items()})
        path = os.path.join(self.dir, f"root-{key}")
        with self._locked():
            if not os.path.exists(path + ".json"):
                tmp = path + ".tmp"
                if os.path.exists(tmp):
                    shutil.rmtree(tmp)
                for name, c in comps.items():
                    _link_tree(c.path, os.path.join(tmp, name))
                if os.path.exists(path):
                    shutil.rmtree(path)
                os.rename(tmp, path)
                with open(path + ".json", "w") as f:
                    json.dump({n: c.path for n, c in comps.items()}, f, indent=1)
        return Root(path, comps)


def _check_room(d, spec):
    st = os.statvfs(d)
    free, inodes = st.f_bavail * st.f_frsize, st.f_favail
    need_files, need_bytes = estimate(spec)
    if need_bytes * 1.1 + GiB > free:
        die(f"not enough space in {d} for {describe(spec)}: needs ~{need_bytes / GiB:.1f} GiB, "
            f"{free / GiB:.1f} GiB free")
    if need_files * 1.1 + 10000 > inodes:
        die(f"not enough inodes in {d} for {describe(spec)}: needs ~{need_files:,}, "
            f"{inodes:,} free")


def estimate(spec):
    """(files, bytes on disk) a component will take, roughly."""
    k = spec["kind"]
    if k == "files":
        if spec["empty"]:
            return spec["n"] + spec["dirs"], 0
        lo, hi = spec["lo"], spec["hi"]
        if spec["dist"] == "loguniform" and hi > lo:
            mean = (hi - lo) / math.log(hi / lo)
        else:
            mean = (lo + hi) / 2
        return spec["n"] + spec["dirs"], int(spec["n"] * (mean + 2048))
    if k == "big":
        return spec["n"], spec["n"] * spec["mib"] * MiB
    if k == "zarr":
        return spec["rows"] // spec["chunk_rows"] + 3, spec["rows"] * 65536
    return 0, 0


def _link_tree(src, dst):
    for d, dirs, names in os.walk(src):
        rel = os.path.relpath(d, src)
        out = os.path.normpath(os.path.join(dst, rel))
        os.makedirs(out, exist_ok=True)
        for n in names:
            os.link(os.path.join(d, n), os.path.join(out, n))


# ---------------------------------------------------------------------- generators
def _width(n, minimum):
    return max(minimum, len(str(max(n - 1, 0))))


def _files_dir(args):
    """One folder of a `files` component; writes its part of the listing."""
    root, spec, d = args
    import numpy as np

    n, dirs = spec["n"], spec["dirs"]
    dw, fw = _width(dirs, 3), _width(n, 5)
    dname = f"{spec['dir_prefix']}{d:0{dw}d}"
    os.makedirs(os.path.join(root, dname), exist_ok=True)
    idx = range(d, n, dirs)
    rng = np.random.default_rng([spec["seed"], 1, d])
    lo, hi = spec["lo"], spec["hi"]
    if spec["empty"] or spec["dist"] == "fixed" or hi <= lo:
        sizes = [0 if spec["empty"] else lo] * len(idx)
    elif spec["dist"] == "loguniform":
        sizes = np.exp(rng.uniform(math.log(lo), math.log(hi), len(idx))).astype(np.int64)
    elif spec["dist"] == "uniform":
        sizes = rng.integers(lo, hi + 1, len(idx))
    else:
        raise ValueError(f"unknown size distribution {spec['dist']!r}")
    lines, total = [], 0
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC
    for i, size in zip(idx, sizes):
        rel = f"{dname}/{spec['file_prefix']}{i:0{fw}d}.bin"
        fd = os.open(os.path.join(root, rel), flags, 0o644)
        try:
            if size:
                data = rng.bytes(int(size))
                os.write(fd, data)
                crc = zlib.crc32(data)
            else:
                crc = 0
        finally:
            os.close(fd)
        total += int(size)
        lines.append(f"{rel}\t{int(size)}\t{crc:08x}\n")
    return lines, total


def _child_signals():
    """Forked workers must not inherit the driver's Python-level SIGTERM handler: run in
    the main thread only, it never fires while a worker waits on a lock, so Pool.terminate
    would wait for ever. SIGINT (Ctrl-C) is the driver's to handle."""
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGHUP, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _parallel(fn, tasks, jobs):
    if jobs <= 1 or len(tasks) <= 1:
        return [fn(t) for t in tasks]
    with mp.get_context("fork").Pool(min(jobs, len(tasks)), initializer=_child_signals) as pool:
        return pool.map(fn, tasks, chunksize=1)


def _write_listing(path, parts):
    lines = [l for p in parts for l in p]
    lines.sort()
    with open(path, "w") as f:
        f.writelines(lines)
    return len(lines)


def gen_files(root, spec, jobs):
    os.makedirs(root)
    parts = _parallel(_files_dir, [(root, spec, d) for d in range(spec["dirs"])], jobs)
    n = _write_listing(root + ".tsv", [p[0] for p in parts])
    return n, sum(p[1] for p in parts)


def _big_file(args):
    root, spec, i = args
    import numpy as np

    rng = np.random.default_rng([spec["seed"], 2, i])
    path = os.path.join(root, f"big{i}.bin")
    crc = 0
    with open(path, "wb") as f:
        for _ in range(spec["mib"]):
            b = rng.bytes(MiB)
            crc = zlib.crc32(b, crc)
            f.write(b)
    return [f"big{i}.bin\t{spec['mib'] * MiB}\t{crc:08x}\n"], spec["mib"] * MiB


def gen_big(root, spec, jobs):
    os.makedirs(root)
    parts = _parallel(_big_file, [(root, spec, i) for i in range(spec["n"])], jobs)
    n = _write_listing(root + ".tsv", [p[0] for p in parts])
    return n, sum(p[1] for p in parts)


def gen_zarr(root, spec, jobs):
    import numpy as np
    import zarr

    os.makedirs(root)
    rng = np.random.default_rng([spec["seed"], 3])
    arr = zarr.open(os.path.join(root, "array.zarr"), mode="w",
                    shape=(spec["rows"], 256, 256), chunks=(spec["chunk_rows"], 256, 256),
                    dtype="u1", zarr_version=2)
    step = spec["chunk_rows"] * 64
    for r in range(0, spec["rows"], step):
        n = min(step, spec["rows"] - r)
        arr[r:r + n] = rng.integers(0, 256, size=(n, 256, 256), dtype=np.uint8)
    lines, total = [], 0
    for d, _, names in os.walk(root):
        for name in names:
            p = os.path.join(d, name)
            with open(p, "rb") as f:
                data = f.read()
            lines.append(f"{os.path.relpath(p, root)}\t{len(data)}\t{zlib.crc32(data):08x}\n")
            total += len(data)
    return _write_listing(root + ".tsv", [lines]), total


GENERATORS = {"files": gen_files, "big": gen_big, "zarr": gen_zarr}


def read_listing(path):
    """[(rel, size, crc)] of a listing TSV."""
    out = []
    with open(path) as f:
        for line in f:
            rel, size, crc = line.rstrip("\n").split("\t")
            out.append((rel, int(size), int(crc, 16)))
    return out
