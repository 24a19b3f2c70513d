"""The formats people train from, read through the mount with their own readers: a
parquet file by pyarrow (whole and row group by row group, shuffled), an HDF5 file by h5py
(chunked, random hyperslabs) and a zarr array. Each is read cold (bytes from the source),
then after a remount on the same cache dir (served by the cache: the kernel reads complete
cache files directly where passthrough is available), and must equal the source read
directly."""

from __future__ import annotations

import random
from pathlib import Path

import h5py
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zarr

import bicache

pytestmark = pytest.mark.usefixtures("fuse")


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    root = tmp_path / "formats"
    root.mkdir()
    rng = np.random.default_rng(20261201)
    n = 200_000
    table = pa.table(
        {
            "id": pa.array(np.arange(n, dtype=np.int64)),
            "x": pa.array(rng.standard_normal(n)),
            "label": pa.array([f"class-{i % 1000:04d}" for i in range(n)]),
        }
    )
    # Several row groups, so a shuffled reader seeks around a multi-chunk file.
    pq.write_table(table, root / "train.parquet", row_group_size=20_000, compression="none")
    with h5py.File(root / "images.h5", "w") as f:
        d = f.create_dataset("images", data=rng.integers(0, 255, (256, 64, 64), dtype=np.uint8),
                             chunks=(8, 64, 64))
        d.attrs["mean"] = 127.5
        f.create_dataset("labels", data=np.arange(256, dtype=np.int32))
    z = zarr.open(str(root / "array.zarr"), mode="w", shape=(64, 128, 128), chunks=(4, 128, 128),
                  dtype="f4")
    z[:] = rng.standard_normal((64, 128, 128)).astype("f4")
    return root


def read_all(root: Path) -> dict:
    """Everything a training loader would take from the tree, in a seeded shuffled order."""
    order = random.Random(7)
    out = {}
    out["parquet"] = pq.read_table(root / "train.parquet")
    pf = pq.ParquetFile(root / "train.parquet")
    groups = list(range(pf.num_row_groups))
    order.shuffle(groups)
    out["groups"] = [(g, pf.read_row_group(g)) for g in groups]
    with h5py.File(root / "images.h5", "r") as f:
        idx = list(range(0, 256, 8))
        order.shuffle(idx)
        out["h5"] = [(i, f["images"][i : i + 8, 3:60, :]) for i in idx]
        out["h5_attr"] = float(f["images"].attrs["mean"])
        out["h5_labels"] = f["labels"][:]
    z = zarr.open(str(root / "array.zarr"), mode="r")
    rows = list(range(0, 64, 4))
    order.shuffle(rows)
    out["zarr"] = [(r, z[r : r + 4]) for r in rows]
    return out


def assert_same(got: dict, want: dict) -> None:
    assert got["parquet"].equals(want["parquet"])
    for (g1, t1), (g2, t2) in zip(got["groups"], want["groups"]):
        assert g1 == g2 and t1.equals(t2)
    for (i1, a1), (i2, a2) in zip(got["h5"], want["h5"]):
        assert i1 == i2 and np.array_equal(a1, a2)
    assert got["h5_attr"] == want["h5_attr"]
    assert np.array_equal(got["h5_labels"], want["h5_labels"])
    for (r1, a1), (r2, a2) in zip(got["zarr"], want["zarr"]):
        assert r1 == r2 and np.array_equal(a1, a2)


def test_parquet_hdf5_and_zarr_read_right_cold_and_from_the_cache(tree: Path, tmp_path: Path) -> None:
    want = read_all(tree)
    args = dict(chunk_size="256KiB", ram="64MiB", disk="256MiB", cache_dir=tmp_path / "cache")
    with bicache.mount(tree, **args) as m:
        assert_same(read_all(m.path), want)
        cold = m.stats()
    assert cold["source"]["bytes"] > 0
    with bicache.mount(tree, **args) as m:
        assert_same(read_all(m.path), want)
        warm = m.stats()
    # After the remount nothing came from the source: every byte was in the cache.
    assert warm["source"]["bytes"] == 0, warm["source"]
    assert warm["disk"]["hits"] > 0
