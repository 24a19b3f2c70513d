"""A map-style dataset over the files of a bicache mount's shard (torch optional).

:class:`ShardDataset` subclasses ``torch.utils.data.Dataset`` when torch can be imported,
and is otherwise a plain class with the same protocol (``__len__``, ``__getitem__``), so
the same code runs, and is tested, without torch. Whether torch was found is
:data:`TORCH_AVAILABLE`. Importing this module imports torch if it is installed.

Example, one mount per rank (torchrun or Slurm give the rank)::

    import bicache
    from bicache.torch import ShardDataset
    from torch.utils.data import DataLoader

    with bicache.mount("/shared/imagenet", cache_dir="/local/ssd/bicache",
                       shard="rank", ram="8GiB", disk="200GiB") as m:
        ds = ShardDataset(m, transform=decode)       # this rank's files
        loader = DataLoader(ds, batch_size=64, shuffle=True, num_workers=8)
        for epoch in range(epochs):
            for batch in loader:
                ...

The dataset keeps only the root path and the file list (no open files, no Mount), so it
pickles into DataLoader workers; ``loader`` and ``transform`` must then be picklable too
(module-level functions).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Callable, Iterator, List, Optional, Sequence, Union

__all__ = ["ShardDataset", "read_bytes", "walk_files", "TORCH_AVAILABLE"]

try:  # Optional: a real torch Dataset when torch is there.
    from torch.utils.data import Dataset as _Base  # type: ignore[import-not-found,unused-ignore]

    TORCH_AVAILABLE: bool = True
except ImportError:
    _Base = object  # type: ignore[assignment,misc,unused-ignore]
    TORCH_AVAILABLE = False

StrPath = Union[str, "os.PathLike[str]"]

_CONTROL = ".bicache"


def read_bytes(path: StrPath) -> bytes:
    """The default loader: the whole file, as bytes."""
    with open(path, "rb") as f:
        return f.read()


def walk_files(root: StrPath) -> List[str]:
    """Every regular file under ``root``, as sorted relative paths (symlinks not followed;
    a top-level ``.bicache`` control directory is skipped)."""
    base = os.fsdecode(os.fspath(root))
    found: List[str] = []
    for dirpath, dirnames, filenames in os.walk(base):
        if dirpath == base and _CONTROL in dirnames:
            dirnames.remove(_CONTROL)
        for name in filenames:
            full = os.path.join(dirpath, name)
            if os.path.isfile(full) and not os.path.islink(full):
                found.append(os.path.relpath(full, base))
    found.sort(key=os.fsencode)
    return found


def _shard_list(root: str) -> Optional[List[str]]:
    """The mount's ``.bicache/shard.txt``, or None where it says nothing (not a bicache
    mount, or an unsharded mount without prefetch, whose list is empty)."""
    try:
        with open(os.path.join(root, _CONTROL, "shard.txt"), "rb") as f:
            files = [os.fsdecode(line) for line in f.read().split(b"\n") if line]
    except OSError:
        return None
    if files:
        return files
    # Empty: either unsharded (then the files are the whole tree), or a real shard with
    # no file in it (more shards than files), which must stay empty.
    try:
        with open(os.path.join(root, _CONTROL, "stats.json"), "rb") as f:
            count = json.loads(f.read()).get("shard", {}).get("count", 1)
    except (OSError, ValueError, AttributeError):
        return None
    return [] if isinstance(count, int) and count > 1 else None


class ShardDataset(_Base):  # type: ignore[misc,valid-type,unused-ignore]
    """Item ``i`` is ``transform(loader(root / files[i]))``.

    Args:
        root: a :class:`bicache.Mount`, or a directory (a mount point, or any directory,
            e.g. the source itself).
        files: the relative paths of the samples, in this order. Default: the mount's
            shard (``root/.bicache/shard.txt``, in the plan's seeded order); for an
            unsharded mount or a plain directory, every regular file under ``root``
            (sorted). Pass :func:`bicache.plan`'s list to read a shard straight from a
            directory.
        loader: reads one file; default :func:`read_bytes` (the bytes).
        transform: turns what ``loader`` returned into a sample (decode an image, parse a
            record...); default: none.

    The file list is read once, here. Indexing follows ``list``: negative indices count
    from the end, others out of range raise ``IndexError``.
    """

    def __init__(
        self,
        root: Union[StrPath, Any],
        files: Optional[Sequence[StrPath]] = None,
        loader: Callable[[str], Any] = read_bytes,
        transform: Optional[Callable[[Any], Any]] = None,
    ) -> None:
        path = getattr(root, "path", root)  # a bicache.Mount, or a path
        self.root: Path = Path(os.fsdecode(os.fspath(path)))
        if files is None:
            listed = _shard_list(str(self.root))
            files = listed if listed is not None else walk_files(self.root)
        self.files: List[str] = [os.fsdecode(os.fspath(f)) for f in files]
        self.loader = loader
        self.transform = transform

    def __len__(self) -> int:
        return len(self.files)

    def path(self, index: int) -> str:
        """The full path of item ``index``."""
        return os.path.join(str(self.root), self.files[index])

    def __getitem__(self, index: int) -> Any:
        sample = self.loader(self.path(index))
        return self.transform(sample) if self.transform is not None else sample

    def __iter__(self) -> Iterator[Any]:
        for i in range(len(self)):
            yield self[i]

    def __repr__(self) -> str:
        return f"ShardDataset({str(self.root)!r}, {len(self.files)} files)"
