"""Logging, child processes, mounts, the page cache, sizes."""

import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time

MiB = 1 << 20
KiB = 1 << 10
GiB = 1 << 30

_TAG = "bench"


class BenchError(Exception):
    """A failure the driver reports in one line (after tearing everything down)."""


def set_tag(tag):
    global _TAG
    _TAG = tag


def log(msg):
    print(f"[{_TAG} {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def die(msg):
    raise BenchError(msg)


# ------------------------------------------------------------------ child processes
class Child:
    """A process in its own session (so a Ctrl-C at the terminal reaches the driver only,
    which then stops its children in order). `stop()` ends the whole process group."""

    def __init__(self, cmd, stdout=None, stderr=None, env=None, cwd=None):
        self.cmd = [str(c) for c in cmd]
        self.proc = subprocess.Popen(self.cmd, stdout=stdout, stderr=stderr, env=env, cwd=cwd,
                                     stdin=subprocess.DEVNULL, start_new_session=True)
        _LIVE.add(self)

    @property
    def pid(self):
        return self.proc.pid

    def alive(self):
        return self.proc.poll() is None

    def wait(self, timeout=None):
        try:
            rc = self.proc.wait(timeout)
        finally:
            if self.proc.poll() is not None:
                _LIVE.discard(self)
        return rc

    def stop(self, sig=signal.SIGTERM, grace=10.0):
        """Signals the process group, waits `grace` s, then SIGKILLs it."""
        if self.proc.poll() is None:
            for s, t in ((sig, grace), (signal.SIGKILL, 5.0)):
                try:
                    os.killpg(self.proc.pid, s)
                except ProcessLookupError:
                    break
                try:
                    self.proc.wait(t)
                    break
                except subprocess.TimeoutExpired:
                    log(f"{shlex.join(self.cmd[:2])} (pid {self.proc.pid}) still alive after "
                        f"{t:.0f} s; {'SIGKILL' if s != signal.SIGKILL else 'giving up'}")
        _LIVE.discard(self)
        return self.proc.poll()


_LIVE = set()


def stop_all_children():
    for c in list(_LIVE):
        c.stop(grace=3.0)


def run(cmd, check=True, timeout=None, out=None, err=None, env=None, cwd=None):
    """Runs `cmd` to its end in its own session; on any exception (Ctrl-C, SIGTERM, a
    timeout) its process group is stopped first. `out`/`err`: paths (appended to) or None
    (inherit). Returns the exit code; `check` raises BenchError on a non-zero one."""
    fo = open(out, "ab") if out else None
    fe = open(err, "ab") if err else None
    try:
        c = Child(cmd, stdout=fo, stderr=fe, env=env, cwd=cwd)
        try:
            rc = c.wait(timeout)
        except BaseException:
            c.stop(grace=5.0)
            raise
    finally:
        for f in (fo, fe):
            if f:
                f.close()
    if check and rc != 0:
        tail = ""
        if err and os.path.exists(err):
            with open(err, errors="replace") as f:
                tail = "".join(f.readlines()[-15:])
        die(f"{shlex.join(str(x) for x in cmd)} exited with {rc}"
            + (f"; stderr ({err}):\n{tail}" if tail else ""))
    return rc


def output(cmd, check=True, timeout=60):
    """stdout of a short command (no daemons: a daemon would keep the pipe open)."""
    r = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=timeout,
                       stdin=subprocess.DEVNULL)
    if check and r.returncode != 0:
        die(f"{shlex.join(str(c) for c in cmd)} exited with {r.returncode}: {r.stderr.strip()}")
    return r.stdout


def run_json(cmd, out, err, env=None, timeout=None):
    """Runs a workload that prints one JSON object; returns it."""
    if os.path.exists(out):
        os.unlink(out)
    run(cmd, out=out, err=err, env=env, timeout=timeout)
    with open(out) as f:
        text = f.read()
    try:
        return json.loads(text)
    except ValueError:
        die(f"{shlex.join(str(c) for c in cmd)} printed no JSON ({out}): {text[:200]!r}")


def run_many_json(cmds, outs, errs, env=None):
    """Runs several workloads at once (e.g. one per mount); returns their JSON objects."""
    files, children = [], []
    try:
        for cmd, o, e in zip(cmds, outs, errs):
            fo, fe = open(o, "wb"), open(e, "ab")
            files += [fo, fe]
            children.append(Child(cmd, stdout=fo, stderr=fe, env=env))
        rcs = [c.wait() for c in children]
    except BaseException:
        for c in children:
            c.stop(grace=5.0)
        raise
    finally:
        for f in files:
            f.close()
    for cmd, rc, e in zip(cmds, rcs, errs):
        if rc != 0:
            with open(e, errors="replace") as f:
                tail = "".join(f.readlines()[-15:])
            die(f"{shlex.join(str(x) for x in cmd)} exited with {rc}:\n{tail}")
    res = []
    for o in outs:
        with open(o) as f:
            res.append(json.load(f))
    return res


# ------------------------------------------------------------------------- mounts
def _unescape(s):
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), s)


def mountpoints():
    """Mount points of this mount namespace (field 5 of /proc/self/mountinfo)."""
    with open("/proc/self/mountinfo") as f:
        return [_unescape(line.split()[4]) for line in f if line.strip()]


def is_mounted(path):
    return os.path.realpath(path) in mountpoints() or str(path) in mountpoints()


def mounts_under(prefix):
    prefix = os.path.realpath(prefix).rstrip("/") + "/"
    return [m for m in mountpoints() if m.startswith(prefix)]


def wait_mounted(path, timeout=15.0, child=None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if is_mounted(path):
            return True
        if child is not None and not child.alive():
            return False
        time.sleep(0.05)
    return False


def force_unmount(path):
    """fusermount3 -u, then umount, then a lazy umount; True once `path` is no mount."""
    for cmd in (["fusermount3", "-u", path], ["umount", path], ["umount", "-l", path]):
        if not is_mounted(path):
            return True
        subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return not is_mounted(path)


# --------------------------------------------------------------------- page cache
def drop_caches():
    """`sync; echo 3 > /proc/sys/vm/drop_caches`: page cache, dentries and inodes."""
    os.sync()
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("3\n")


# -------------------------------------------------------------------------- procfs
def proc_status_kb(pid, field):
    """VmHWM / VmRSS of a process in kB, or None once it is gone."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError):
        return None
    return None


def pid_alive(pid):
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True


def wait_pid_gone(pid, timeout):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not pid_alive(pid):
            return True
        # A zombie of ours would never go: reap it if it is our child.
        try:
            os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            pass
        time.sleep(0.05)
    return not pid_alive(pid)


# --------------------------------------------------------------------------- sizes
_UNITS = {"": 1, "b": 1, "k": KiB, "kib": KiB, "m": MiB, "mib": MiB, "g": GiB, "gib": GiB,
          "t": 1 << 40, "tib": 1 << 40, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12}


def parse_size(text):
    """bicache's SIZE syntax (no percentages): bytes with an optional unit."""
    m = re.fullmatch(r"\s*([0-9.]+)\s*([A-Za-z]*)\s*", str(text))
    if not m or m.group(2).lower() not in _UNITS:
        die(f"not a size: {text!r}")
    return int(float(m.group(1)) * _UNITS[m.group(2).lower()])


def human(n):
    for unit, f in (("GiB", GiB), ("MiB", MiB), ("KiB", KiB)):
        if abs(n) >= f:
            return f"{n / f:.1f} {unit}"
    return f"{n} B"
