"""Fixtures of the Python API tests (run by scripts/test-python.sh).

These tests import the *installed* bicache package (a wheel in a fresh venv), never the
checkout's python/ directory: run them with ``--import-mode=importlib`` from a directory
outside the checkout, with the venv's pytest. They mount real FUSE filesystems; every
mount lives under the test's ``tmp_path``, and a test that leaves one behind fails (after
the mount is cleaned up).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Dict, Iterator

import pytest

# Only this directory (helpers, no package named bicache) goes on sys.path.
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import bicache  # noqa: E402
from _support import BIN, Dataset, mounted_under  # noqa: E402

# Launcher variables that would change what `--shard rank|node` means.
LAUNCHER_VARS = (
    "RANK",
    "WORLD_SIZE",
    "LOCAL_RANK",
    "LOCAL_WORLD_SIZE",
    "GROUP_RANK",
    "SLURM_PROCID",
    "SLURM_NTASKS",
    "SLURM_NODEID",
    "SLURM_NNODES",
    "SLURM_LOCALID",
)


def pytest_configure(config: pytest.Config) -> None:
    # The point of these tests is the installed wheel: refuse to test a source tree.
    here = Path(bicache.__file__).resolve()
    prefix = Path(sys.prefix).resolve()
    if prefix not in here.parents:
        raise pytest.UsageError(
            f"bicache was imported from {here}, not from this interpreter's prefix {prefix}: "
            "install the wheel into a venv and run its pytest from outside the checkout "
            "with --import-mode=importlib (scripts/test-python.sh does)"
        )


def _in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("true", "1")


def _fuse_problem() -> str:
    try:
        fd = os.open("/dev/fuse", os.O_RDWR)
        os.close(fd)
    except OSError as e:
        return f"cannot open /dev/fuse read-write: {e}"
    if shutil.which("fusermount3") is None:
        return "fusermount3 not found on PATH"
    return ""


@pytest.fixture(scope="session")
def fuse() -> None:
    """Skip (loudly) where FUSE is unusable; under CI=true fail instead."""
    problem = _fuse_problem()
    if problem:
        if _in_ci():
            pytest.fail(f"FUSE is required under CI=true: {problem}")
        print(f"\n!!! SKIPPING FUSE TESTS: {problem} !!!\n", file=sys.stderr)
        pytest.skip(f"SKIPPING FUSE TESTS: {problem}")


@pytest.fixture(autouse=True)
def no_leaks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """Per test: launcher variables and BICACHE_BIN cleared, temporary mount points made
    under ``tmp_path/tmp``; afterwards anything still mounted under ``tmp_path`` is
    unmounted and the test fails (a leaked mount is a bug)."""
    for var in (*LAUNCHER_VARS, "BICACHE_BIN"):
        monkeypatch.delenv(var, raising=False)
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp))
    yield tmp
    leaked = mounted_under(tmp_path)
    for point in sorted(leaked, key=len, reverse=True):
        subprocess.run([BIN, "unmount", point], capture_output=True, check=False)
    for point in sorted(mounted_under(tmp_path), key=len, reverse=True):
        subprocess.run(["fusermount3", "-u", "-z", point], capture_output=True, check=False)
    if leaked:
        pytest.fail(f"test left mounted: {leaked}")


@pytest.fixture
def dataset(tmp_path: Path) -> Dataset:
    """Files of assorted sizes (empty, sub-page, several chunks of 64 KiB, odd sizes) in
    nested directories, one with a name that is not UTF-8."""
    root = tmp_path / "source"
    sizes = {
        "empty.bin": 0,
        "one.bin": 1,
        "page-1.bin": 4095,
        "a/chunk.bin": 65536,
        "a/b/odd.bin": 200_003,
        "a/b/big.bin": 1_000_001,
        "c/labels.csv": 777,
        os.fsdecode(b"c/caf\xe9.bin"): 3000,
    }
    files: Dict[str, bytes] = {}
    for name, size in sorted(sizes.items()):
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        data = os.urandom(size)
        path.write_bytes(data)
        files[name] = data
    return Dataset(root, files)


@pytest.fixture
def opts(tmp_path: Path) -> Dict[str, object]:
    """Small budgets and a private cache dir for every mount."""
    return {"ram": "64MiB", "disk": "64MiB", "cache_dir": tmp_path / "cache"}
