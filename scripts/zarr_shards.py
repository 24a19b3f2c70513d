#!/usr/bin/env python3
"""The zarr recipe of docs/SHARDING.md, runnable (tests/sharding.rs runs it in CI).

    zarr_shards.py create ARRAY_DIR            write a small zarr v2 array (64 x 256 int32)
    zarr_shards.py check SOURCE MOUNT0 ... MOUNTk-1
        rank r reads rows r, r+k, r+2k, ... through its own restricted mount; the rows put
        together must equal the array read from SOURCE directly.

Each bicache mount serves one shard of the chunk files. A chunk of another shard is still
served when opened by path (never ENOENT: zarr would silently read it as fill values), so
any rank can read any row; the shard only decides what each node caches and prefetches.
"""
import sys

import numpy as np
import zarr


def create(path):
    data = np.arange(64 * 256, dtype=np.int32).reshape(64, 256) * 7 + 3
    z = zarr.open(path, mode="w", shape=data.shape, chunks=(4, 64), dtype="i4")
    z[:] = data
    z.attrs["description"] = "bicache sharding example"


def check(source, mounts):
    want = zarr.open(source, mode="r")[:]
    k = len(mounts)
    got = np.zeros_like(want)
    for rank, mount in enumerate(mounts):
        z = zarr.open(mount, mode="r")  # .zarray/.zattrs are visible in every shard
        for row in range(rank, want.shape[0], k):
            got[row] = z[row]
    if not np.array_equal(got, want):
        bad = np.argwhere(got != want)
        sys.exit(f"mismatch at {len(bad)} cells, first {bad[0].tolist()}")
    print(f"ok: {want.shape[0]} rows read through {k} restricted mounts equal the source")


if __name__ == "__main__":
    if len(sys.argv) >= 3 and sys.argv[1] == "create":
        create(sys.argv[2])
    elif len(sys.argv) >= 4 and sys.argv[1] == "check":
        check(sys.argv[2], sys.argv[3:])
    else:
        sys.exit(__doc__)
