#!/usr/bin/env python3
"""Reproducible datasets for scripts/bench.sh.

    bench_data.py generate DATA --seed N --big-files N --big-mib N \
        --small-files N --small-dirs N --small-min-kib N --small-max-kib N \
        --zarr-rows N --zarr-chunk-rows N
    bench_data.py list DATA/imagenet > files.tsv     (relative path <TAB> size, sorted)

Layout under DATA:
    big/big<i>.bin            BIG_FILES files of BIG_MIB MiB (seeded random bytes)
    imagenet/n<ccc>/img<i>.bin  SMALL_FILES files in SMALL_DIRS class folders, sizes
                              log-uniform in [SMALL_MIN_KIB, SMALL_MAX_KIB] KiB (most files
                              small, a tail of large ones, like JPEG-encoded images)
    zarr/array.zarr           a zarr v2 uint8 array (ROWS, 256, 256), chunks
                              (CHUNK_ROWS, 256, 256), zarr's default compressor (Blosc;
                              random bytes do not compress, so chunk files are ~CHUNK_ROWS *
                              64 KiB each)

Everything comes from numpy.random.default_rng(seed + k): the same arguments give the
same bytes on every machine.
"""

import argparse
import math
import os
import sys

import numpy as np

MiB = 1 << 20
KiB = 1 << 10


def generate(a):
    root = a.data
    os.makedirs(os.path.join(root, "big"), exist_ok=True)
    rng = np.random.default_rng(a.seed)
    for i in range(a.big_files):
        path = os.path.join(root, "big", f"big{i}.bin")
        with open(path + ".tmp", "wb") as f:
            for _ in range(a.big_mib):
                f.write(rng.bytes(MiB))
        os.rename(path + ".tmp", path)

    rng = np.random.default_rng(a.seed + 1)
    lo, hi = math.log(a.small_min_kib * KiB), math.log(a.small_max_kib * KiB)
    sizes = np.exp(rng.uniform(lo, hi, a.small_files)).astype(np.int64)
    for c in range(a.small_dirs):
        os.makedirs(os.path.join(root, "imagenet", f"n{c:03d}"), exist_ok=True)
    for i, size in enumerate(sizes):
        path = os.path.join(root, "imagenet", f"n{i % a.small_dirs:03d}", f"img{i:05d}.bin")
        with open(path, "wb") as f:
            f.write(rng.bytes(int(size)))

    import zarr  # only needed here

    rng = np.random.default_rng(a.seed + 2)
    arr = zarr.open(
        os.path.join(root, "zarr", "array.zarr"),
        mode="w",
        shape=(a.zarr_rows, 256, 256),
        chunks=(a.zarr_chunk_rows, 256, 256),
        dtype="u1",
        zarr_version=2,
    )
    step = a.zarr_chunk_rows * 64
    for r in range(0, a.zarr_rows, step):
        n = min(step, a.zarr_rows - r)
        arr[r : r + n] = rng.integers(0, 256, size=(n, 256, 256), dtype=np.uint8)


def listing(root):
    rows = []
    for d, _, names in os.walk(root):
        for n in names:
            p = os.path.join(d, n)
            rows.append((os.path.relpath(p, root), os.path.getsize(p)))
    for rel, size in sorted(rows):
        print(f"{rel}\t{size}")


def main():
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="cmd", required=True)
    g = sub.add_parser("generate")
    g.add_argument("data")
    for name in ("seed", "big-files", "big-mib", "small-files", "small-dirs",
                 "small-min-kib", "small-max-kib", "zarr-rows", "zarr-chunk-rows"):
        g.add_argument("--" + name, type=int, required=True)
    l = sub.add_parser("list")
    l.add_argument("root")
    a = p.parse_args()
    if a.cmd == "generate":
        generate(a)
    else:
        listing(a.root)


if __name__ == "__main__":
    sys.exit(main())
