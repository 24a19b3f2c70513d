#!/usr/bin/env python3
"""Shard-aligned zarr reading (recipe of docs/SHARDING.md): a rank reads exactly the chunks
of a zarr v2 array that its bicache mount's shard holds, so every read is served by its own
node's cache and nothing is fetched for another node's shard.

    zarr_shard_blocks.py MOUNT ARRAY [--check SOURCE_ARRAY]

MOUNT is the rank's (node's) mount, ARRAY the array's path inside it (e.g. array.zarr).
The chunk files of the array listed in MOUNT/.bicache/shard.txt name the blocks to read
("3.1" is block (3, 1); a "/" separator works too). Each block is read through zarr as
the slice it covers. With --check, each block is compared with the same slice of
SOURCE_ARRAY read directly. Prints the number of blocks read and the mount's out-of-shard
opens during the run (0: every chunk came from this mount's shard).

tests/fixtures/zarr_shards.py (run by the test suite) reads rows instead: row r by rank r mod k.
That is correct on any mount, since a chunk of another shard is still served when opened
by path, but a row's chunks mostly belong to other shards (and are not cached there).
"""
import argparse
import json
import os
import sys

import numpy as np
import zarr


def out_of_shard_opens(mount):
    with open(os.path.join(mount, ".bicache", "stats.json")) as f:
        return json.load(f)["shard"]["out_of_shard_opens"]


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("mount")
    p.add_argument("array")
    p.add_argument("--check", metavar="SOURCE_ARRAY")
    a = p.parse_args()

    z = zarr.open(os.path.join(a.mount, a.array), mode="r")  # .zarray: visible everywhere
    src = zarr.open(a.check, mode="r") if a.check else None
    sep = getattr(z, "_dimension_separator", None) or "."
    prefix = a.array.rstrip("/") + "/"
    with open(os.path.join(a.mount, ".bicache", "shard.txt")) as f:
        keys = [l.rstrip("\n")[len(prefix):] for l in f if l.startswith(prefix)]

    before = out_of_shard_opens(a.mount)
    blocks = 0
    for key in keys:
        parts = key.split(sep)
        if len(parts) != z.ndim or not all(x.isdigit() for x in parts):
            continue  # not a chunk file of this array (e.g. a nested array's file)
        block = tuple(int(x) for x in parts)
        sel = tuple(slice(b * c, min((b + 1) * c, n))
                    for b, c, n in zip(block, z.chunks, z.shape))
        data = z[sel]
        if src is not None and not np.array_equal(data, src[sel]):
            sys.exit(f"block {block} differs from the source")
        blocks += 1
    opened = out_of_shard_opens(a.mount) - before
    print(f"{a.mount}: {blocks} blocks of {a.array} read"
          f"{' and equal to the source' if src is not None else ''}; "
          f"{opened} out-of-shard opens")


if __name__ == "__main__":
    main()
