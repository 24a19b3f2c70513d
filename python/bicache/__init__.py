"""bicache from Python: mount a slow dataset directory through a RAM + local-SSD cache.

The package drives the ``bicache`` executable that comes with it (in the same wheel, on
``PATH`` after ``pip install``); it needs nothing beyond the standard library, and torch
only for :mod:`bicache.torch`, and only if it is installed. Linux only (FUSE).

Quick start::

    import bicache

    with bicache.mount("/shared/imagenet", cache_dir="/local/ssd/bicache",
                       ram="8GiB", disk="200GiB", shard="rank") as m:
        m.warm()                                   # optional: prefetch this rank's shard
        for name in m.shard_files():               # this rank's files
            data = (m.path / name).read_bytes()    # cached in RAM / on the SSD
        print(m.stats()["source"]["bytes"])       # bytes read from the slow filesystem

Public API:

- :func:`mount` -> :class:`Mount` (``.path``, ``.stats()``, ``.warm()``, ``.shard_files()``,
  ``.unmount()``; a context manager);
- :func:`plan`: this shard's relative paths, without mounting;
- :func:`write_manifest`: a sized manifest of the dataset, for ``manifest=``;
- :class:`MountError`: raised when a ``bicache`` command fails (``str(e)`` is its
  one-line message, ``e.returncode`` its exit status);
- :func:`find_binary`: the executable that is run (``BICACHE_BIN`` overrides it);
- :mod:`bicache.torch`: ``ShardDataset``, a map-style dataset over a mount's shard.

See docs/PYTHON.md.
"""

from __future__ import annotations

from ._api import Mount, Size, mount, plan, write_manifest
from ._cli import MountError, find_binary

__all__ = [
    "Mount",
    "MountError",
    "Size",
    "find_binary",
    "mount",
    "plan",
    "write_manifest",
    "__version__",
]


def _version() -> str:
    try:
        from importlib.metadata import PackageNotFoundError, version
    except ImportError:  # pragma: no cover - Python < 3.8
        return "0+unknown"
    try:
        return version("bicache")
    except PackageNotFoundError:  # imported from a source tree, not installed
        return "0+unknown"


__version__: str = _version()
