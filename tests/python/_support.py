"""Helpers shared by the Python API tests (imported by conftest.py and the tests)."""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Dict, List

import bicache

MIB = 1024 * 1024

#: The installed executable, found once (the tests may point BICACHE_BIN elsewhere).
BIN = bicache.find_binary()


def mountinfo_points() -> List[str]:
    """Mount points listed in /proc/self/mountinfo (octal escapes undone)."""
    with open("/proc/self/mountinfo", "rb") as f:
        lines = f.read().split(b"\n")
    points = []
    for line in lines:
        fields = line.split(b" ")
        if len(fields) > 4:
            raw = fields[4]
            out = bytearray()
            i = 0
            while i < len(raw):
                if raw[i : i + 1] == b"\\" and raw[i + 1 : i + 4].isdigit():
                    out.append(int(raw[i + 1 : i + 4], 8))
                    i += 4
                else:
                    out.append(raw[i])
                    i += 1
            points.append(os.fsdecode(bytes(out)))
    return points


def mounted_under(root: Path) -> List[str]:
    """Mount points at or below ``root``."""
    base = os.path.realpath(root)
    return [p for p in mountinfo_points() if p == base or p.startswith(base + os.sep)]


class Dataset:
    """A small source tree: ``files`` maps each relative path (os.fsdecode'd) to its bytes."""

    def __init__(self, root: Path, files: Dict[str, bytes]) -> None:
        self.root = root
        self.files = files

    @property
    def total(self) -> int:
        return sum(len(b) for b in self.files.values())


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def read_and_drop(mountpoint: Path, files: Dict[str, bytes]) -> None:
    """Reads every file through the mount, checks its bytes, then drops the files from
    the kernel's page cache, so the next pass reaches the daemon."""
    for name, data in files.items():
        assert (mountpoint / name).read_bytes() == data
    for name in files:
        fd = os.open(mountpoint / name, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)
