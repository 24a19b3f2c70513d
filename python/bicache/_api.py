"""``bicache.mount``, ``bicache.Mount`` and ``bicache.plan``: the CLI, from Python.

Private module: the public names are re-exported by :mod:`bicache`.
"""

from __future__ import annotations

import gc
import json
import os
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path
from types import TracebackType
from typing import Any, Dict, List, Literal, Optional, Sequence, Tuple, Type, Union


from ._cli import MountError, canonical, is_mounted, run

__all__ = ["Mount", "mount", "plan", "Size"]

StrPath = Union[str, "os.PathLike[str]"]

#: A size for ``ram``, ``disk``, ``chunk_size`` and ``capacity``: an ``int`` is a number of
#: bytes; a ``str`` is passed to the CLI as written: ``"512MiB"``, ``"4G"``, ``"1.5GB"``, or
#: (``ram`` and ``disk`` only) a percentage such as ``"25%"``.
Size = Union[str, int]

ShardMode = Literal["none", "rank", "node", "disk"]

CONTROL_DIR = ".bicache"


# --------------------------------------------------------------------------------------
# Options -> command-line flags
# --------------------------------------------------------------------------------------


def _size(name: str, value: Size) -> str:
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise TypeError(
            f"{name} must be an int (bytes) or a str such as '4GiB' or '25%', "
            f"not {type(value).__name__} ({value!r})"
        )
    return str(value)


def _number(name: str, value: Union[int, float]) -> str:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number, not {type(value).__name__} ({value!r})")
    return str(value) if isinstance(value, int) else repr(float(value))


def _integer(name: str, value: int) -> str:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, not {type(value).__name__} ({value!r})")
    return str(value)


def _choice(name: str, value: str, allowed: Sequence[str]) -> str:
    if value not in allowed:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, allowed))}, not {value!r}")
    return value


def _path(value: StrPath) -> str:
    return os.fsdecode(os.fspath(value))


def _torch_distributed() -> Optional[Tuple[int, int]]:
    """(rank, world size) of an initialised default process group of torch.distributed.

    torch is never imported here: a process group can only be initialised by a program
    that imported ``torch.distributed`` itself, so it is looked up in ``sys.modules``.
    """
    dist = sys.modules.get("torch.distributed")
    if dist is None:
        return None
    try:
        if dist.is_available() and dist.is_initialized():
            return int(dist.get_rank()), int(dist.get_world_size())
    except Exception:  # an odd or half-torn-down torch: leave it to the CLI
        return None
    return None


def _shard_flags(
    *,
    shard: Optional[str],
    shard_index: Optional[int],
    shard_count: Optional[int],
    disks: Optional[int],
    disk_index: Optional[int],
    seed: Optional[int],
    manifest: Optional[StrPath],
    always_visible: Sequence[str],
    shard_size: Optional[str],
    min_files: Optional[int],
    overflow: Optional[float],
) -> List[str]:
    flags: List[str] = []
    if shard is not None:
        flags.append("--shard=" + _choice("shard", shard, ("none", "rank", "node", "disk")))
    if (shard_index is None) != (shard_count is None):
        raise ValueError("give shard_index and shard_count together (or neither)")
    if shard_index is None and shard == "rank":
        ranks = _torch_distributed()
        if ranks is not None:
            shard_index, shard_count = ranks
    if shard_index is not None and shard_count is not None:
        flags.append("--shard-index=" + _integer("shard_index", shard_index))
        flags.append("--shard-count=" + _integer("shard_count", shard_count))
    if disks is not None:
        flags.append("--disks=" + _integer("disks", disks))
    if disk_index is not None:
        flags.append("--disk-index=" + _integer("disk_index", disk_index))
    if seed is not None:
        flags.append("--seed=" + _integer("seed", seed))
    if manifest is not None:
        flags.append("--manifest=" + _path(manifest))
    if isinstance(always_visible, (str, bytes)):
        raise TypeError("always_visible must be a sequence of glob strings, not a single string")
    for glob in always_visible:
        flags.append("--always-visible=" + glob)
    if shard_size is not None:
        flags.append("--shard-size=" + _choice("shard_size", shard_size, ("full", "auto")))
    if min_files is not None:
        flags.append("--min-files=" + _integer("min_files", min_files))
    if overflow is not None:
        flags.append("--overflow=" + _number("overflow", overflow))
    return flags


def _extra(extra_args: Sequence[str]) -> List[str]:
    if isinstance(extra_args, (str, bytes)):
        raise TypeError("extra_args must be a sequence of arguments, not a single string")
    return [os.fsdecode(a) for a in extra_args]


# --------------------------------------------------------------------------------------
# Mount
# --------------------------------------------------------------------------------------


class Mount:
    """A live bicache mount, as returned by :func:`bicache.mount`.

    Use it as a context manager to unmount when the block ends, however it ends::

        with bicache.mount("/shared/imagenet", cache_dir="/local/ssd/bc") as m:
            data = (m.path / "train" / "n01440764" / "x.JPEG").read_bytes()

    Without ``with``, the mount stays until :meth:`unmount` (or ``bicache unmount``), like
    one made with the CLI: it outlives this object and this process.

    ``os.fspath(mount)`` is the mount point, so a Mount can be passed wherever a path is
    expected (``os.path.join(m, "train")``, ``open(os.path.join(m, name))``).

    Attributes:
        path: the mount point (absolute).
        source: the dataset directory (absolute).
        cache_dir: the ``cache_dir`` given to :func:`bicache.mount`, or ``None`` (the CLI's
            default location; ``stats()["cache"]["dir"]`` tells which).
    """

    def __init__(
        self,
        path: Path,
        source: Path,
        cache_dir: Optional[Path] = None,
        *,
        owns_mountpoint: bool = False,
    ) -> None:
        self.path = path
        self.source = source
        self.cache_dir = cache_dir
        self._owns_mountpoint = owns_mountpoint
        self._mounted = True

    def __repr__(self) -> str:
        state = "mounted" if self._mounted else "unmounted"
        return f"<bicache.Mount {str(self.source)!r} at {str(self.path)!r} ({state})>"

    def __fspath__(self) -> str:
        return str(self.path)

    def __enter__(self) -> "Mount":
        return self

    def __exit__(
        self,
        exc_type: Optional[Type[BaseException]],
        exc: Optional[BaseException],
        tb: Optional[TracebackType],
    ) -> None:
        if exc is None:
            self.unmount()
            return
        # The block raised: unmount all the same, but let its exception propagate.
        try:
            self.unmount()
        except MountError as e:
            message = f"bicache: could not unmount {self.path} after an exception: {e}"
            if hasattr(exc, "add_note"):
                exc.add_note(message)
            warnings.warn(message, RuntimeWarning, stacklevel=2)

    @property
    def mounted(self) -> bool:
        """Whether this mount is live: not unmounted through this object, and still listed
        in ``/proc/self/mountinfo`` (``bicache unmount`` from a shell counts too)."""
        return self._mounted and is_mounted(self.path)

    def stats(self) -> Dict[str, Any]:
        """The mount's live counters, as a dict (the document of ``bicache stats --json``).

        Read from the control file ``MOUNTPOINT/.bicache/stats.json`` (cheap: no process is
        started, and it works in DataLoader workers), else from ``bicache stats --json``.
        Keys: ``ram``, ``disk`` (``hits``, ``misses``, ``bytes``, ``capacity``...),
        ``source`` (``reads``, ``bytes``...), ``prefetch`` (``state``, ``files_done``,
        ``files_total``, ``bytes``...), ``shard`` (``index``, ``count``, ``files``...); see
        the README's *Stats* section.

        Raises:
            MountError: the path is not a live bicache mount.
        """
        try:
            with open(self.path / CONTROL_DIR / "stats.json", "rb") as f:
                doc = json.loads(f.read())
            if isinstance(doc, dict):
                return doc
        except (OSError, ValueError):
            pass
        out = run(["stats", "--json", "--", str(self.path)], capture_stdout=True)
        try:
            doc = json.loads(out)
        except ValueError as e:
            raise MountError(f"bicache stats printed no JSON document: {e}") from e
        if not isinstance(doc, dict):
            raise MountError("bicache stats printed JSON that is not an object")
        return doc

    def shard_files(self) -> List[str]:
        """This mount's shard, as relative paths in the plan's seeded (prefetch) order.

        Read from ``MOUNTPOINT/.bicache/shard.txt``: the same list that :func:`bicache.plan`
        returns for the same options. Empty for an unsharded mount without prefetch.
        Names are decoded with :func:`os.fsdecode` (``os.fsencode`` gives the bytes back).
        """
        with open(self.path / CONTROL_DIR / "shard.txt", "rb") as f:
            return [os.fsdecode(line) for line in f.read().split(b"\n") if line]

    def warm(self, progress: bool = True, *, timeout: Optional[float] = None) -> None:
        """Wait until the shard's background prefetch has finished (``bicache warm``).

        Args:
            progress: show the CLI's progress bar on standard error (when that is a
                terminal); ``False`` runs ``bicache warm --quiet``.
            timeout: seconds to wait at most; then :class:`TimeoutError` is raised (the
                prefetch goes on in the background).

        A mount with nothing to prefetch (unsharded, without ``prefetch=True``) returns at
        once. Raises :class:`MountError` if the path is not a live bicache mount.
        """
        args = ["warm"]
        if not progress:
            args.append("--quiet")
        args += ["--", str(self.path)]
        # The bar is drawn on standard error: leave it to the terminal when there is one.
        show = progress and _stderr_is_tty()
        try:
            run(args, capture_stderr=not show, timeout=timeout)
        except subprocess.TimeoutExpired as e:
            raise TimeoutError(f"bicache warm {self.path}: not warm after {timeout} s") from e

    def unmount(self, *, timeout: float = 5.0) -> None:
        """Unmount (``bicache unmount``): returns once the daemon has flushed and exited.

        Idempotent: a second call, or a call after the mount was unmounted by other means
        (``bicache unmount`` or ``fusermount3 -u`` from a shell), does nothing. A temporary
        mount point made by :func:`bicache.mount` is removed.

        Args:
            timeout: while the mount is busy (a file or directory in it still open, e.g. by
                a DataLoader worker), retry for this many seconds before giving up.

        Raises:
            MountError: the mount could not be unmounted (e.g. still busy); it is then
                still mounted and a later call may succeed.
        """
        if not self._mounted:
            return
        deadline = time.monotonic() + timeout
        collected = False
        while True:
            try:
                run(["unmount", "--", str(self.path)])
                break
            except MountError as e:
                if not is_mounted(self.path):
                    break  # unmounted by someone else meanwhile
                busy = "busy" in str(e).lower()
                if not busy or time.monotonic() >= deadline:
                    raise
                if not collected:
                    gc.collect()  # files kept open only by unreachable objects
                    collected = True
                time.sleep(0.1)
        self._mounted = False
        self._remove_mountpoint()

    def _remove_mountpoint(self) -> None:
        if not self._owns_mountpoint:
            return
        self._owns_mountpoint = False
        try:
            os.rmdir(self.path)  # never rmtree: it could be a mount
        except FileNotFoundError:
            pass
        except OSError as e:
            warnings.warn(
                f"bicache: temporary mount point {self.path} left behind: {e}",
                RuntimeWarning,
                stacklevel=3,
            )


def _stderr_is_tty() -> bool:
    try:
        return os.isatty(2)
    except OSError:  # pragma: no cover
        return False


def mount(
    source: StrPath,
    mountpoint: Optional[StrPath] = None,
    *,
    ram: Optional[Size] = None,
    disk: Optional[Size] = None,
    cache_dir: Optional[StrPath] = None,
    chunk_size: Optional[Size] = None,
    metadata_ttl: Optional[Union[int, float]] = None,
    immutable: bool = False,
    allow_other: bool = False,
    log_file: Optional[StrPath] = None,
    log_max_size: Optional[Size] = None,
    fuse_threads: Optional[int] = None,
    fetch_threads: Optional[int] = None,
    passthrough: Optional[bool] = None,
    huge_pages: Optional[bool] = None,
    cache_policy: Optional[Literal["pin", "lru"]] = None,
    shard: Optional[ShardMode] = None,
    shard_index: Optional[int] = None,
    shard_count: Optional[int] = None,
    disks: Optional[int] = None,
    disk_index: Optional[int] = None,
    seed: Optional[int] = None,
    manifest: Optional[StrPath] = None,
    shard_view: Optional[Literal["restrict", "all"]] = None,
    always_visible: Sequence[str] = (),
    shard_strict: bool = False,
    shard_size: Optional[Literal["full", "auto"]] = None,
    min_files: Optional[int] = None,
    overflow: Optional[float] = None,
    prefetch: Optional[bool] = None,
    prefetch_threads: Optional[int] = None,
    revalidate_rate: Optional[Union[int, float]] = None,
    meta_budget: Optional[Size] = None,
    metrics: Optional[Union[int, str]] = None,
    extra_args: Sequence[str] = (),
) -> Mount:
    """Mount ``source`` read-only through the cache; return once the mount is live.

    Runs ``bicache mount SOURCE MOUNTPOINT [flags]`` (the executable found by
    :func:`bicache.find_binary`), which leaves a daemon serving the mount. Every keyword
    maps to the CLI flag of the same name (``cache_dir`` -> ``--cache-dir``); ``None``
    (and ``False``) leave the CLI's default. See the README's option tables.

    Args:
        source: the dataset directory (typically on a slow shared filesystem).
        mountpoint: an existing empty directory. ``None``: a private temporary directory
            (``tempfile.mkdtemp``, mode 0700) that :meth:`Mount.unmount` removes.
        ram: RAM tier budget (``--ram``): bytes (int) or a str (``"4GiB"``, ``"25%"`` of
            MemAvailable). CLI default ``25%``.
        disk: SSD tier budget (``--disk``): bytes, or a str (``"200GiB"``, ``"50%"`` of the
            free space under the cache dir plus what the cache already holds there); ``0`` disables the tier. CLI default ``50%``.
        cache_dir: the SSD tier directory (``--cache-dir``), created 0700; one daemon per
            cache dir. Default: a private folder on a node-local disk
            (``$SLURM_TMPDIR``, ``$TMPDIR``, ``$XDG_CACHE_HOME``, local scratch, ``/var/tmp``;
            never a network filesystem), one per source; see the README.
        chunk_size: caching unit (``--chunk-size``), 4KiB..64MiB.
        metadata_ttl: seconds attributes and listings are trusted (``--metadata-ttl``).
        immutable: the dataset does not change while mounted (``--immutable``).
        allow_other: let other users use the mount (``--allow-other``).
        log_file: daemon log (``--log-file``); default ``<cache_dir>/bicache.log``.
        log_max_size: largest the log may grow (``--log-max-size``, default 64MiB; 0 no
            limit): the default log is rotated once, a ``log_file`` stops there.
        fuse_threads, fetch_threads, prefetch_threads: thread counts of the daemon.
        passthrough: FUSE passthrough on/off (``--passthrough on|off``).
        huge_pages: transparent huge pages for chunk buffers (``--huge-pages on|off``).
        cache_policy: ``"pin"`` or ``"lru"`` (``--cache-policy``).
        shard: ``"none"``, ``"rank"``, ``"node"`` or ``"disk"`` (``--shard``): which group
            this mount serves. With ``"rank"`` and no ``shard_index``/``shard_count``, an
            initialised ``torch.distributed`` process group gives them (its rank and world
            size); otherwise the CLI reads the launcher's variables (torchrun ``RANK`` /
            ``WORLD_SIZE``..., Slurm ``SLURM_PROCID`` / ``SLURM_NTASKS``...).
        shard_index, shard_count: an explicit partition (``--shard-index``/``--shard-count``;
            together, overriding the environment).
        disks, disk_index: ``shard="disk"``: local disks per node and this mount's disk.
        seed: seed of the shuffle the partition is drawn from (``--seed``; CLI default 0).
        manifest: a file of the dataset's relative paths, one a line (``--manifest``).
        shard_view: ``"restrict"`` (listings show this shard) or ``"all"``.
        always_visible: globs of files every shard shows (``--always-visible``, repeated).
        shard_strict: opening another shard's file fails with EACCES (``--shard-strict``).
        shard_size: ``"full"`` or ``"auto"`` (cut the shard to fit the cache).
        min_files, overflow: with ``shard_size="auto"``.
        prefetch: prefetch the shard in the background (``--prefetch on|off``; CLI default:
            on when sharded).
        revalidate_rate: source operations per second spent revalidating metadata past
            the TTL in the background (``--revalidate-rate``; 0: in the foreground).
        meta_budget: memory for metadata (``--meta-budget``), bytes or a str.
        metrics: serve Prometheus/OpenMetrics text on ``http://ADDR/metrics``
            (``--metrics``): a port (int or str, on 127.0.0.1) or ``"HOST:PORT"``.
        extra_args: more CLI arguments, passed as they are (before SOURCE).

    Returns:
        The live :class:`Mount`.

    Raises:
        MountError: the CLI refused (missing source, bad size, busy cache dir...): its
            one-line message, and ``returncode``. Nothing is left mounted, and a temporary
            mount point is removed.
        TypeError, ValueError: an argument of the wrong type or an unknown choice.
    """
    flags: List[str] = []
    if ram is not None:
        flags.append("--ram=" + _size("ram", ram))
    if disk is not None:
        flags.append("--disk=" + _size("disk", disk))
    if cache_dir is not None:
        flags.append("--cache-dir=" + _path(cache_dir))
    if chunk_size is not None:
        flags.append("--chunk-size=" + _size("chunk_size", chunk_size))
    if metadata_ttl is not None:
        flags.append("--metadata-ttl=" + _number("metadata_ttl", metadata_ttl))
    if immutable:
        flags.append("--immutable")
    if allow_other:
        flags.append("--allow-other")
    if log_file is not None:
        flags.append("--log-file=" + _path(log_file))
    if log_max_size is not None:
        flags.append("--log-max-size=" + _size("log_max_size", log_max_size))
    if fuse_threads is not None:
        flags.append("--fuse-threads=" + _integer("fuse_threads", fuse_threads))
    if fetch_threads is not None:
        flags.append("--fetch-threads=" + _integer("fetch_threads", fetch_threads))
    if passthrough is not None:
        flags.append("--passthrough=" + ("on" if passthrough else "off"))
    if huge_pages is not None:
        flags.append("--huge-pages=" + ("on" if huge_pages else "off"))
    if cache_policy is not None:
        flags.append("--cache-policy=" + _choice("cache_policy", cache_policy, ("pin", "lru")))
    flags += _shard_flags(
        shard=shard,
        shard_index=shard_index,
        shard_count=shard_count,
        disks=disks,
        disk_index=disk_index,
        seed=seed,
        manifest=manifest,
        always_visible=always_visible,
        shard_size=shard_size,
        min_files=min_files,
        overflow=overflow,
    )
    if shard_view is not None:
        flags.append("--shard-view=" + _choice("shard_view", shard_view, ("restrict", "all")))
    if shard_strict:
        flags.append("--shard-strict")
    if prefetch is not None:
        flags.append("--prefetch=" + ("on" if prefetch else "off"))
    if prefetch_threads is not None:
        flags.append("--prefetch-threads=" + _integer("prefetch_threads", prefetch_threads))
    if revalidate_rate is not None:
        flags.append("--revalidate-rate=" + _number("revalidate_rate", revalidate_rate))
    if meta_budget is not None:
        flags.append("--meta-budget=" + _size("meta_budget", meta_budget))
    if metrics is not None:
        if isinstance(metrics, bool) or not isinstance(metrics, (int, str)):
            raise TypeError(f"metrics must be a port (int) or 'HOST:PORT' (str), not {metrics!r}")
        flags.append(f"--metrics={metrics}")
    flags += _extra(extra_args)

    src = Path(os.path.abspath(_path(source)))
    owns = mountpoint is None
    if mountpoint is None:
        target = Path(canonical(tempfile.mkdtemp(prefix="bicache-mnt-")))  # mode 0700
    else:
        target = Path(canonical(mountpoint))
    try:
        run(["mount", *flags, "--", str(src), str(target)])
    except BaseException:
        # An interrupt may land after the mount went live: leave nothing behind.
        if is_mounted(target):
            try:
                run(["unmount", "--", str(target)])
            except MountError:
                pass
        if owns and not is_mounted(target):
            try:
                os.rmdir(target)
            except OSError:
                pass
        raise
    return Mount(
        target,
        src,
        Path(os.path.abspath(_path(cache_dir))) if cache_dir is not None else None,
        owns_mountpoint=owns,
    )


# --------------------------------------------------------------------------------------
# plan
# --------------------------------------------------------------------------------------


def plan(
    source: StrPath,
    *,
    shard: Optional[ShardMode] = None,
    shard_index: Optional[int] = None,
    shard_count: Optional[int] = None,
    disks: Optional[int] = None,
    disk_index: Optional[int] = None,
    seed: int = 0,
    manifest: Optional[StrPath] = None,
    always_visible: Sequence[str] = (),
    shard_size: Optional[Literal["full", "auto"]] = None,
    min_files: Optional[int] = None,
    overflow: Optional[float] = None,
    capacity: Optional[Size] = None,
    extra_args: Sequence[str] = (),
) -> List[str]:
    """This shard's files: relative paths in the shard's seeded order (``bicache plan``).

    The same list, in the same order, as a mount with the same sharding options serves
    and prefetches (its ``.bicache/shard.txt``); no mount or cache dir is needed. Without
    any sharding option it is every file of the dataset (shuffled by ``seed``).

    Rank and world size follow the rule of :func:`bicache.mount`: explicit
    ``shard_index``/``shard_count`` first; with ``shard="rank"``, an initialised
    ``torch.distributed`` process group; otherwise the launcher's variables, read by the CLI.

    Args:
        source: the dataset directory.
        shard, shard_index, shard_count, disks, disk_index, seed, manifest, always_visible,
        shard_size, min_files, overflow: as for :func:`bicache.mount`; every node must pass
            the same ones (and the same file list) to get disjoint shards.
        capacity: with ``shard_size="auto"``: the cache capacity the shard is cut to (the
            mount's ``disk`` budget in bytes, or its ``ram`` with ``disk=0``).
        extra_args: more CLI arguments, passed as they are.

    Returns:
        The relative paths, decoded with :func:`os.fsdecode` (``os.fsencode`` gives back
        the exact bytes of any file name).

    Raises:
        MountError: the CLI refused (missing source, missing launcher variable...).
    """
    flags = _shard_flags(
        shard=shard,
        shard_index=shard_index,
        shard_count=shard_count,
        disks=disks,
        disk_index=disk_index,
        seed=seed,
        manifest=manifest,
        always_visible=always_visible,
        shard_size=shard_size,
        min_files=min_files,
        overflow=overflow,
    )
    if capacity is not None:
        flags.append("--capacity=" + _size("capacity", capacity))
    flags += _extra(extra_args)
    # NUL-terminated: the one form in which any file name (a newline too) reads back.
    out = run(["plan", "--null", *flags, "--", _path(source)], capture_stdout=True)
    return [os.fsdecode(name) for name in out.split(b"\0") if name]


def write_manifest(source: StrPath, path: StrPath) -> int:
    """Writes a sized manifest of ``source`` to ``path`` (``bicache manifest``).

    Every regular file of the dataset as ``SIZE<TAB>PATH`` under the header line
    ``# bicache-manifest: size path``: give it to every node as ``manifest=path``, and
    each mount stats only its own shard's files instead of every file (docs/SHARDING.md,
    "Sized manifests"). The file is replaced whole or not at all.

    Returns:
        The number of files listed.

    Raises:
        MountError: the CLI refused (missing source, a name that cannot be a line...).
    """
    target = os.fsdecode(os.fspath(path))
    tmp = f"{target}.tmp-{os.getpid()}"
    lines = 0
    try:
        # Straight to the file: a 10 M-file manifest is hundreds of MB.
        with open(tmp, "wb") as f:
            run(["manifest", "--", _path(source)], stdout_to=f)
        with open(tmp, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                lines += block.count(b"\n")
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return lines - 1
