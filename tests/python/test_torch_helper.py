"""bicache.torch.ShardDataset: items equal the files' bytes, with or without torch."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import bicache
from bicache.torch import TORCH_AVAILABLE, ShardDataset, read_bytes, walk_files
from _support import Dataset

pytestmark = pytest.mark.usefixtures("fuse")


def size_of(data: bytes) -> int:
    return len(data)


def test_items_of_a_sharded_mount_are_its_shards_bytes(dataset: Dataset, opts: dict) -> None:
    shard = bicache.plan(dataset.root, shard_index=1, shard_count=2)
    assert shard
    with bicache.mount(dataset.root, shard_index=1, shard_count=2, **opts) as m:
        ds = ShardDataset(m)
        assert ds.files == shard  # the shard, in the plan's order
        assert len(ds) == len(shard)
        for i, name in enumerate(shard):
            assert ds[i] == dataset.files[name]
        assert ds[-1] == dataset.files[shard[-1]]
        with pytest.raises(IndexError):
            ds[len(ds)]
        assert list(ds) == [dataset.files[n] for n in shard]

        sizes = ShardDataset(m.path, transform=size_of)
        assert [sizes[i] for i in range(len(sizes))] == [len(dataset.files[n]) for n in shard]

        # What a DataLoader worker gets: a pickled copy that reads the same bytes.
        clone = pickle.loads(pickle.dumps(ds))
        assert clone.files == ds.files and clone[0] == ds[0]


def test_an_empty_shard_stays_empty(dataset: Dataset, opts: dict) -> None:
    count = len(dataset.files) + 3  # more shards than files: the last ones get none
    # An always-visible file shows in every shard's listing but is in nobody's shard.
    shard = {"shard_index": count - 1, "shard_count": count, "always_visible": ["*.csv"]}
    assert bicache.plan(dataset.root, **shard) == []
    with bicache.mount(dataset.root, **shard, **opts) as m:
        assert walk_files(m) == ["c/labels.csv"]
        assert m.shard_files() == []
        ds = ShardDataset(m)
        assert len(ds) == 0 and ds.files == []


def test_unsharded_mount_and_plain_directory_list_every_file(
    dataset: Dataset, opts: dict
) -> None:
    everything = sorted(dataset.files, key=os.fsencode)
    with bicache.mount(dataset.root, **opts) as m:
        ds = ShardDataset(m)
        assert ds.files == everything  # no shard list: the whole tree, sorted
        assert [ds[i] for i in range(len(ds))] == [dataset.files[n] for n in everything]
        assert ".bicache" not in {Path(f).parts[0] for f in ds.files}

        chosen = bicache.plan(dataset.root, shard_index=0, shard_count=3, seed=9)
        picked = ShardDataset(m, files=chosen, loader=read_bytes)
        assert [picked[i] for i in range(len(picked))] == [dataset.files[n] for n in chosen]

    direct = ShardDataset(dataset.root)
    assert direct.files == everything == walk_files(dataset.root)
    assert direct[0] == dataset.files[everything[0]]


def test_without_torch_it_is_a_plain_class() -> None:
    try:
        import torch  # noqa: F401
    except ImportError:
        assert TORCH_AVAILABLE is False
        assert ShardDataset.__mro__[1:] == (object,)
    else:  # pragma: no cover - torch is not installed in CI
        import torch.utils.data

        assert TORCH_AVAILABLE is True
        assert issubclass(ShardDataset, torch.utils.data.Dataset)


def test_with_torch_importable_it_subclasses_its_dataset(tmp_path: Path) -> None:
    # A stand-in torch package (the real one is GBs of CUDA wheels).
    pkg = tmp_path / "fake" / "torch" / "utils"
    pkg.mkdir(parents=True)
    (tmp_path / "fake" / "torch" / "__init__.py").write_text("")
    (pkg / "__init__.py").write_text("")
    (pkg / "data.py").write_text("class Dataset:\n    marker = 'fake torch'\n")
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "x.bin").write_bytes(b"xyz")
    code = textwrap.dedent(
        f"""
        import torch.utils.data, bicache.torch as bt
        assert bt.TORCH_AVAILABLE is True
        assert issubclass(bt.ShardDataset, torch.utils.data.Dataset)
        ds = bt.ShardDataset({str(tmp_path / 'd')!r})
        assert ds.marker == 'fake torch' and len(ds) == 1 and ds[0] == b'xyz'
        print('ok')
        """
    )
    env = dict(os.environ, PYTHONPATH=str(tmp_path / "fake"))
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=tmp_path
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"
