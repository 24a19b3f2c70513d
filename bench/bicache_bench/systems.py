"""The systems under test, each started and always torn down.

    native        the local copy, read directly (the physical limit)
    bindfs        bindfs -r --multithreaded over the local copy (plain FUSE overhead)
    slowfs        examples/slowfs.rs over the local copy: the slow shared filesystem
                  (latency per request, a bandwidth cap, nothing cached by the kernel,
                  counters in --stats-file)
    rclone        rclone mount --vfs-cache-mode full over slowfs
    floorfs       examples/floorfs.rs over the local copy: the least a FUSE filesystem
                  does per file while serving it by passthrough (the FUSE floor);
                  floorfs-rt: `--read-through` over slowfs, the FUSE hop in front of the
                  source with nothing cached (the floor under a cache's miss)
    bicache       bicache mount over slowfs (or over the local copy: over="local")

Every mount is registered in a Lifecycle as it comes up and leaves it once down; the driver
calls `teardown_all()` in a `finally` (with SIGINT/SIGTERM blocked), so a failure, Ctrl-C or
SIGTERM unmounts everything in reverse order: bicache and rclone before the slowfs below.
A mount still in /proc/self/mountinfo under the bench dir after that is a bug, and the
driver says so (and unmounts it lazily).
"""

import json
import os
import shutil
import signal
import subprocess
import threading
import time
from dataclasses import dataclass, replace

from .util import (Child, die, force_unmount, is_mounted, log, output,
                   proc_status_kb, run, wait_mounted, wait_pid_gone)

RCLONE_ARGS = ["--read-only", "--vfs-cache-mode", "full", "--vfs-fast-fingerprint",
               "--vfs-cache-max-size", "20G", "--vfs-cache-max-age", "24h"]
BINDFS_ARGS = ["-r", "--multithreaded"]


@dataclass(frozen=True)
class System:
    """What to mount. `over`: what rclone and bicache read ("slowfs" or "local")."""
    name: str
    kind: str
    label: str = ""
    over: str = "slowfs"
    args: tuple = ()
    ram: str = None
    disk: str = None

    @property
    def has_cache(self):
        return self.kind in ("rclone", "bicache")

    @property
    def is_bicache(self):
        return self.kind == "bicache"

    def with_(self, **kw):
        return replace(self, **kw)


STANDARD = {
    "native": System("native", "native", "native"),
    "bindfs": System("bindfs", "bindfs", "bindfs"),
    "slowfs": System("slowfs", "slowfs", "slowfs (source)"),
    "rclone": System("rclone", "rclone", "rclone"),
    "floorfs": System("floorfs", "floorfs", "floorfs (FUSE floor)", over="local"),
    "floorfs-rt": System("floorfs-rt", "floorfs", "floorfs --read-through",
                         args=("--read-through",)),
    "bicache": System("bicache", "bicache", "bicache"),
    "bicache-imm": System("bicache-imm", "bicache", "bicache --immutable",
                          args=("--immutable",)),
}


def systems(names, extra=None):
    """System objects for a list of names (STANDARD plus a scenario's own)."""
    known = dict(STANDARD, **(extra or {}))
    out = []
    for n in names:
        if n not in known:
            die(f"unknown system {n!r}; known: {', '.join(known)}")
        out.append(known[n])
    return out


# ---------------------------------------------------------------------------- mounts
class Mount:
    kind = "?"

    def __init__(self, lc, name, label, root):
        self.lc, self.name, self.label, self.root = lc, name, label, root
        self.source = None  # the SlowfsMount reads end up at, if any
        self.up_ = False

    @property
    def uses_source(self):
        return self.source is not None

    is_bicache = False
    has_cache = False

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.down()
        return False

    def _registered(self):
        self.up_ = True
        self.lc.live.append(self)

    def down(self):
        if self.up_:
            try:
                self._down()
            finally:
                self.up_ = False
                if self in self.lc.live:
                    self.lc.live.remove(self)

    def _down(self):
        pass


class NativeMount(Mount):
    kind = "native"


class Borrowed(Mount):
    """A mount owned elsewhere (the slowfs of a run, used as a system): down() is a no-op."""

    def __init__(self, inner, name, label):
        super().__init__(inner.lc, name, label, inner.root)
        self.inner = inner
        self.source = inner.source
        self.kind = inner.kind


class SlowfsMount(Mount):
    kind = "slowfs"

    def __init__(self, lc, data, name="slowfs", latency_ms=1.0, meta_latency_ms=None,
                 bandwidth_mbps=200.0, threads=8, attr_ttl=0):
        super().__init__(lc, name, "slowfs (source)", lc.mountpoint(name))
        self.data = data
        self.source = self
        self.stats_file = os.path.join(lc.logs, f"{name}.stats.json")
        self.args = ["--latency-ms", latency_ms, "--meta-latency-ms",
                     latency_ms if meta_latency_ms is None else meta_latency_ms,
                     "--bandwidth-mbps", bandwidth_mbps, "--threads", threads]
        if attr_ttl:
            self.args += ["--attr-ttl", attr_ttl]
        self.child = None

    def command(self):
        return ["slowfs", "DATA", "SLOW", *[str(a) for a in self.args], "--stats-file", "..."]

    def up(self):
        lc = self.lc
        if os.path.exists(self.stats_file):
            os.unlink(self.stats_file)
        logf = open(lc.logfile(self.name), "ab")
        try:
            self.child = Child([lc.bins.slowfs, self.data, self.root, *self.args,
                                "--stats-file", self.stats_file], stdout=logf, stderr=logf)
        finally:
            logf.close()
        self._registered()
        if not wait_mounted(self.root, 15, self.child):
            die(f"slowfs did not mount (see {lc.logfile(self.name, new=False)})")
        os.listdir(self.root)
        return self

    def snap(self, settled=False):
        """The stats file once rewritten after this call (slowfs rewrites it every 0.5 s),
        so it counts everything done before; settled: once two rewrites in a row agree
        (nothing, such as readahead or write-back, still pulling from the source)."""
        def after(t):
            deadline = time.time() + 30
            while time.time() < deadline:
                try:
                    if os.stat(self.stats_file).st_mtime > t:
                        with open(self.stats_file) as f:
                            return json.load(f)
                except (FileNotFoundError, ValueError):
                    pass
                time.sleep(0.03)
            die(f"{self.stats_file} not rewritten for 30 s: is slowfs running?")

        cur = after(time.time())
        if settled:
            deadline = time.time() + 180
            while time.time() < deadline:
                prev, cur = cur, after(time.time())
                if cur == prev:
                    break
            else:
                log("slowfs counters still moving after 180 s")
        return cur

    def _down(self):
        if self.child is not None:
            self.child.stop(signal.SIGTERM, grace=10)
        if is_mounted(self.root) and not force_unmount(self.root):
            log(f"could not unmount {self.root}")


class BindfsMount(Mount):
    kind = "bindfs"

    def up(self, data):
        run(["bindfs", *BINDFS_ARGS, data, self.root], out=self.lc.logfile(self.name),
            err=self.lc.logfile(self.name, new=False))
        self._registered()
        if not wait_mounted(self.root, 15):
            die("bindfs did not mount")
        return self

    def _down(self):
        if not force_unmount(self.root):
            log(f"could not unmount {self.root}")


class FloorfsMount(Mount):
    """examples/floorfs.rs over the local copy. It walks the tree into memory before it
    mounts, so its start takes as long as a walk (minutes at a million files)."""
    kind = "floorfs"

    def up(self, data, args=(), threads=8, timeout=1800):
        logf = open(self.lc.logfile(self.name), "ab")
        try:
            self.child = Child([self.lc.bins.floorfs, data, self.root, "--threads", str(threads),
                                *map(str, args)], stdout=logf, stderr=logf)
        finally:
            logf.close()
        self._registered()
        if not wait_mounted(self.root, timeout, self.child):
            die(f"floorfs did not mount (see {self.lc.logfile(self.name, new=False)})")
        return self

    def _down(self):
        self.child.stop(signal.SIGTERM, grace=10)
        if is_mounted(self.root) and not force_unmount(self.root):
            log(f"could not unmount {self.root}")


class RcloneMount(Mount):
    kind = "rclone"
    has_cache = True

    def up(self, src, extra=()):
        lc = self.lc
        cache = lc.cachedir(self.name)
        shutil.rmtree(cache, ignore_errors=True)
        os.makedirs(cache)
        logf = lc.logfile(self.name)
        self.child = Child(["rclone", "mount", src, self.root, *RCLONE_ARGS, "--cache-dir", cache,
                            "--config", "/dev/null", "--log-file", logf, *extra],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self._registered()
        if not wait_mounted(self.root, 30, self.child):
            die(f"rclone did not mount (see {logf})")
        return self

    def _down(self):
        force_unmount(self.root)
        self.child.stop(signal.SIGTERM, grace=10)
        if is_mounted(self.root):
            force_unmount(self.root)


class BicacheMount(Mount):
    kind = "bicache"
    is_bicache = True
    has_cache = True

    def __init__(self, lc, name, label, src, ram, disk, args=(), binary=None, cache_dir=None):
        super().__init__(lc, name, label, lc.mountpoint(name))
        self.src, self.ram, self.disk, self.args = src, ram, disk, [str(a) for a in args]
        self.binary = binary or lc.bins.bicache
        self.cache_dir = cache_dir or lc.cachedir(name)
        self.pid = None
        self.phase = name       # what this mount is used for (labels its peak RSS)
        self.mount_seconds = None
        self._sampler = None
        self._rss_max = 0

    def mount_args(self):
        return ["--ram", self.ram, "--disk", self.disk, *self.args]

    def up(self, fresh=True):
        if fresh:
            shutil.rmtree(self.cache_dir, ignore_errors=True)
        logf = self.log_path = self.lc.logfile(self.name)
        # Registered first: whatever happens from here, teardown unmounts what came up.
        self._registered()
        t0 = time.monotonic()
        run([self.binary, "mount", self.src, self.root, "--cache-dir", self.cache_dir,
             "--log-file", logf, *self.mount_args()],
            out=logf + ".out", err=logf + ".out")
        self.mount_seconds = time.monotonic() - t0
        if not is_mounted(self.root):
            die(f"bicache mount returned but {self.root} is not mounted (see {logf})")
        self.pid = self.stats()["pid"]
        self._start_sampler()
        return self

    def stats(self):
        return json.loads(output([self.binary, "stats", self.root, "--json"]))

    def hwm_kb(self):
        return proc_status_kb(self.pid, "VmHWM") if self.pid else None

    def rss_kb(self):
        return proc_status_kb(self.pid, "VmRSS") if self.pid else None

    def settle(self, timeout=120):
        """Waits until the SSD write-back is drained (nothing queued, writes still)."""
        prev = None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            d = self.stats()["disk"]
            cur = (d.get("queued", 0), d["writes"] + d.get("write_errors", 0)
                   + d.get("writes_dropped", 0))
            if cur == prev and cur[0] == 0:
                return
            prev = cur
            time.sleep(0.25)
        log(f"{self.name}: SSD write-back still moving after {timeout} s")

    def _start_sampler(self):
        self._rss_max = 0
        stop = threading.Event()

        def loop(pid):
            while not stop.is_set():
                v = proc_status_kb(pid, "VmRSS")
                if v is None:
                    return
                self._rss_max = max(self._rss_max, v)
                stop.wait(0.2)

        t = threading.Thread(target=loop, args=(self.pid,), daemon=True)
        t.start()
        self._sampler = (stop, t)

    def _stop_sampler(self):
        if self._sampler:
            self._sampler[0].set()
            self._sampler[1].join(2)
            self._sampler = None

    def remount(self):
        """Unmount, mount again on the same cache dir; returns the seconds `bicache mount`
        took to return (the mount is live then)."""
        self.down()
        self.up(fresh=False)
        return self.mount_seconds

    def _down(self):
        final = None
        hwm = self.hwm_kb()
        try:
            if is_mounted(self.root):
                final = self.stats()
        except Exception:
            pass
        self._stop_sampler()
        if self.pid:
            self.lc.rss_history.append({"system": self.name, "phase": self.phase, "hwm_kb": hwm,
                                        "rss_max_kb": self._rss_max, "final": final,
                                        "run": self.lc.run})
        if is_mounted(self.root):
            try:
                run([self.binary, "unmount", self.root], timeout=300,
                    out=self.lc.logfile(self.name, new=False) + ".out",
                    err=self.lc.logfile(self.name, new=False) + ".out")
            except BaseException as e:  # noqa: BLE001 - fall back, then re-raise interrupts
                log(f"bicache unmount {self.root} failed ({e!r}); unmounting lazily")
                force_unmount(self.root)
                if not isinstance(e, Exception):
                    raise
        if self.pid and not wait_pid_gone(self.pid, 15):
            log(f"bicache daemon {self.pid} still alive after unmount; SIGTERM")
            try:
                os.kill(self.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            if not wait_pid_gone(self.pid, 10):
                os.kill(self.pid, signal.SIGKILL)
        self.pid = None


# ------------------------------------------------------------------------- lifecycle
class Lifecycle:
    def __init__(self, bins, work, logs):
        self.bins, self.work, self.logs = bins, work, logs
        self.live = []
        self.rss_history = []
        self.run = 0
        self._logn = {}
        for d in ("mnt", "cache"):
            os.makedirs(os.path.join(work, d), exist_ok=True)
        os.makedirs(logs, exist_ok=True)

    def mountpoint(self, name):
        p = os.path.join(self.work, "mnt", name)
        os.makedirs(p, exist_ok=True)
        return p

    def cachedir(self, name):
        return os.path.join(self.work, "cache", name)

    def logfile(self, name, new=True):
        if new:
            self._logn[name] = self._logn.get(name, 0) + 1
        return os.path.join(self.logs, f"{name}-run{self.run}-{self._logn.get(name, 1)}.log")

    # -- starting
    def slowfs(self, data, **knobs):
        return SlowfsMount(self, data, **knobs).up()

    def start(self, system, data, slow=None, binary=None, cache_dir=None, extra_args=(),
              ram=None, disk=None, fresh=True):
        """Brings `system` up over the local copy `data` (and the running `slow`, for the
        systems that read the slow source). Use as a context manager. bicache: a fresh
        cache dir unless fresh=False (then the last one of this name, or `cache_dir`)."""
        s = system
        if s.kind == "native":
            m = NativeMount(self, s.name, s.label, data)
            return m
        if s.kind == "slowfs":
            if slow is None:
                die(f"{s.name} needs a running slowfs")
            return Borrowed(slow, s.name, s.label)
        if s.kind == "bindfs":
            return BindfsMount(self, s.name, s.label, self.mountpoint(s.name)).up(data)
        if s.over == "slowfs":
            if slow is None:
                die(f"{s.name} reads slowfs, which is not running")
            src, source = slow.root, slow
        else:
            src, source = data, None
        if s.kind == "floorfs":
            m = FloorfsMount(self, s.name, s.label, self.mountpoint(s.name)).up(src, s.args)
        elif s.kind == "rclone":
            m = RcloneMount(self, s.name, s.label, self.mountpoint(s.name)).up(src, extra_args)
        elif s.kind == "bicache":
            m = BicacheMount(self, s.name, s.label, src, ram or s.ram, disk or s.disk,
                             args=[*s.args, *extra_args], binary=binary, cache_dir=cache_dir)
            m.source = source
            m.up(fresh=fresh)
            return m
        else:
            die(f"unknown kind {s.kind}")
        m.source = source
        return m

    def teardown_all(self):
        """Everything still up, newest first; with SIGINT/SIGTERM held until done."""
        old = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM,
                                                        signal.SIGHUP})
        try:
            for m in reversed(list(self.live)):
                try:
                    m.down()
                except Exception as e:  # noqa: BLE001 - tear down the rest anyway
                    log(f"tearing down {m.name}: {e!r}")
                    force_unmount(m.root)
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, old)
