"""Running the ``bicache`` executable: where it is, how its errors read, what is mounted.

Private module: the public names are re-exported by :mod:`bicache`.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from pathlib import Path
from typing import BinaryIO, List, Optional, Sequence, Union

__all__ = ["MountError", "find_binary", "run", "is_mounted"]

log = logging.getLogger("bicache")

StrPath = Union[str, "os.PathLike[str]"]

#: Environment variable naming the ``bicache`` executable to run (overrides the search).
BIN_ENV = "BICACHE_BIN"


class MountError(RuntimeError):
    """A ``bicache`` command failed (or the executable could not be found).

    Raised by :func:`bicache.mount`, :func:`bicache.plan` and the methods of
    :class:`bicache.Mount`. ``str(error)`` is the command's one-line error message, as the
    CLI printed it on standard error without its ``"bicache: "`` prefix, e.g.
    ``"source /data/nope: does not exist"``.

    Attributes:
        returncode: the command's exit status, or ``None`` when it did not run (executable
            not found, or it could not be started).
        stderr: everything the command printed on standard error (may be several lines).
        command: the argument list that was run (``[]`` when nothing was run).
    """

    def __init__(
        self,
        message: str,
        *,
        returncode: Optional[int] = None,
        stderr: str = "",
        command: Sequence[str] = (),
    ) -> None:
        super().__init__(message)
        self.message = message
        self.returncode = returncode
        self.stderr = stderr
        self.command = list(command)


def _candidates() -> List[Path]:
    names = []
    scripts = sysconfig.get_path("scripts")
    if scripts:
        names.append(Path(scripts) / "bicache")
    # A venv used without activation: its bin/ is next to its interpreter.
    names.append(Path(sys.executable).parent / "bicache")
    user_scripts = None
    try:
        user_scripts = sysconfig.get_path("scripts", f"{os.name}_user")
    except KeyError:  # pragma: no cover - depends on the platform's schemes
        pass
    if user_scripts:
        names.append(Path(user_scripts) / "bicache")
    return names


def find_binary() -> str:
    """The path of the ``bicache`` executable that this package runs.

    Looked up in this order:

    1. the environment variable ``BICACHE_BIN``, if set (used as given: a path, or a name
       looked up on ``PATH``);
    2. the scripts directory of the running interpreter (where ``pip install`` put the
       binary that came with this package: ``<venv>/bin``), then the directory of
       ``sys.executable``, then the user scheme's scripts directory (``pip install --user``);
    3. ``bicache`` on ``PATH``.

    Raises:
        MountError: no executable was found (``returncode`` is ``None``).
    """
    override = os.environ.get(BIN_ENV)
    if override:
        found = shutil.which(override) if os.sep not in override else override
        if found and os.access(found, os.X_OK) and not os.path.isdir(found):
            return found
        raise MountError(f"{BIN_ENV}={override}: not an executable file")
    for path in _candidates():
        if path.is_file() and os.access(path, os.X_OK):
            return str(path)
    found = shutil.which("bicache")
    if found:
        return found
    raise MountError(
        "the bicache executable was not found (not next to this Python interpreter, nor on "
        f"PATH); install the bicache wheel (`pip install .` in a checkout) or set {BIN_ENV}"
    )


def one_line(stderr: str, fallback: str) -> str:
    """The CLI's one-line error out of its standard error.

    bicache prints its error as the last ``bicache: ...`` line (warnings and notes may
    come before it); argument errors caught by the option parser start with ``error:``.
    """
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    errors = [
        line[len("bicache: ") :]
        for line in lines
        if line.startswith("bicache: ")
        and not line.startswith(("bicache: warning", "bicache: note"))
    ]
    if errors:
        return errors[-1]
    parser = [line[len("error: ") :] for line in lines if line.startswith("error: ")]
    if parser:
        return parser[0]
    if lines:
        last = lines[-1]
        return last[len("bicache: ") :] if last.startswith("bicache: ") else last
    return fallback


def _log_stderr(stderr: str) -> None:
    """Pass a successful command's standard error on: warnings as warnings, the rest as info."""
    for line in stderr.splitlines():
        if not line.strip():
            continue
        text = line[len("bicache: ") :] if line.startswith("bicache: ") else line
        if "warning" in line.lower():
            log.warning("%s", text)
        else:
            log.info("%s", text)


def run(
    args: Sequence[Union[str, bytes]],
    *,
    capture_stdout: bool = False,
    capture_stderr: bool = True,
    timeout: Optional[float] = None,
    stdout_to: Optional[BinaryIO] = None,
) -> bytes:
    """Run ``bicache ARGS...``; return its standard output (``b""`` unless captured).

    ``stdout_to``: a binary file the output is written to instead (not captured).

    Standard error goes to a temporary file rather than a pipe, so that no process which
    inherits it (the mount's daemon) can keep this call waiting for end-of-file.

    Raises:
        MountError: the command exited non-zero, or could not be started.
        subprocess.TimeoutExpired: ``timeout`` passed (the command is killed first).
    """
    binary = find_binary()
    command = [binary, *[os.fsdecode(a) for a in args]]
    printable = ["bicache", *command[1:]]
    with tempfile.TemporaryFile() as err:
        try:
            proc = subprocess.run(
                command,
                stdin=subprocess.DEVNULL,
                stdout=(
                    stdout_to
                    if stdout_to is not None
                    else subprocess.PIPE
                    if capture_stdout
                    else subprocess.DEVNULL
                ),
                stderr=err if capture_stderr else None,
                timeout=timeout,
                check=False,
            )
        except OSError as e:
            raise MountError(f"cannot run {binary}: {e}", command=printable) from e
        err.seek(0)
        stderr = err.read().decode("utf-8", "replace")
    if proc.returncode != 0:
        fallback = f"bicache {command[1] if len(command) > 1 else ''} exited with status {proc.returncode}"
        if not capture_stderr:
            fallback += " (its messages are above)"
        raise MountError(
            one_line(stderr, fallback),
            returncode=proc.returncode,
            stderr=stderr,
            command=printable,
        )
    _log_stderr(stderr)
    return proc.stdout if capture_stdout else b""


def _unescape_mountinfo(field: str) -> str:
    # mountinfo escapes space, tab, newline and backslash as \ooo (octal).
    out = bytearray()
    raw = os.fsencode(field)
    i = 0
    while i < len(raw):
        if raw[i] == 0x5C and i + 4 <= len(raw) and raw[i + 1 : i + 4].isdigit():
            out.append(int(raw[i + 1 : i + 4], 8))
            i += 4
        else:
            out.append(raw[i])
            i += 1
    return os.fsdecode(bytes(out))


def mount_points() -> List[str]:
    """Mount points currently listed in ``/proc/self/mountinfo`` (unescaped)."""
    try:
        with open("/proc/self/mountinfo", "rb") as f:
            text = os.fsdecode(f.read())
    except OSError:  # pragma: no cover - not Linux
        return []
    points = []
    for line in text.splitlines():
        fields = line.split(" ")
        if len(fields) > 4:
            points.append(_unescape_mountinfo(fields[4]))
    return points


def canonical(path: StrPath) -> str:
    """``path`` made absolute with the symlinks of its parent resolved, as mountinfo shows it.

    The last component is not resolved: stat-ing the root of a FUSE mount whose daemon
    died would fail (or, for a hung one, block).
    """
    absolute = os.path.abspath(os.fsdecode(os.fspath(path)))
    parent, name = os.path.split(absolute)
    return os.path.join(os.path.realpath(parent), name) if name else absolute


def is_mounted(path: StrPath) -> bool:
    """Whether ``path`` is a mount point now (per ``/proc/self/mountinfo``)."""
    return canonical(path) in mount_points()
