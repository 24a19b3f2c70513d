"""The driver: `bench/run.py SCENARIO [options] [key=value ...]`, and the Bench object a
scenario's run(b) gets."""

import argparse
import fcntl
import importlib.util
import json
import os
import platform
import re
import shlex
import shutil
import signal
import sys
import time

from . import BENCH, REPO, build, data, report, util
from .systems import Lifecycle
from .util import BenchError, die, log

SCENARIOS = BENCH / "scenarios"
MARKER = ".bicache-bench-harness"
DEFAULT_BENCH_DIR = "/tmp/bicache-bench"


# --------------------------------------------------------------------------- params
class Params(dict):
    """A scenario's knobs: PARAMS, then QUICK with --quick, then key=value overrides (typed
    like the default)."""

    def __getattr__(self, k):
        try:
            return self[k]
        except KeyError:
            raise AttributeError(k) from None

    def list(self, k):
        return [x for x in re.split(r"[,\s]+", str(self[k])) if x]


def coerce(key, default, text):
    try:
        if isinstance(default, bool):
            t = text.lower()
            if t in ("1", "true", "yes", "on"):
                return True
            if t in ("0", "false", "no", "off"):
                return False
            raise ValueError
        if isinstance(default, int):
            t = text.replace("_", "").replace(",", "")
            return int(float(t)) if re.fullmatch(r"[0-9.]+e[0-9]+", t) else int(t)
        if isinstance(default, float):
            return float(text)
    except ValueError:
        die(f"{key}={text!r}: expected {type(default).__name__} like {default!r}")
    return text


# ---------------------------------------------------------------------------- bench
class Bench:
    """What a scenario's run(b) works with. Lifecycle, data, measurement, records."""

    def __init__(self, name, mod, p, nruns, quick, bench_dir, out, lc, store):
        self.name, self.mod, self.p, self.nruns, self.quick = name, mod, p, nruns, quick
        self.bench_dir, self.out, self.lc, self.store = bench_dir, out, lc, store
        self.logs = lc.logs
        self.bins = lc.bins
        self.run = 0
        self.meta = {}
        self._results = open(os.path.join(out, "results.jsonl"), "a")
        self._workn = 0

    # -- runs and records
    def runs(self):
        for r in range(1, self.nruns + 1):
            self.run = self.lc.run = r
            log(f"run {r}/{self.nruns}")
            yield r

    def record(self, rec):
        rec = dict(rec)
        rec.setdefault("run", self.run)
        self._results.write(json.dumps(rec) + "\n")
        self._results.flush()
        return rec

    def flush_mounts(self):
        """Moves the bicache mounts' RSS records (taken at each unmount) to the results."""
        for m in self.lc.rss_history:
            self.record({"type": "mount", **{k: v for k, v in m.items() if k != "final"},
                         "final": _slim(m.get("final"))})
        self.lc.rss_history.clear()

    # -- data
    def component(self, spec):
        return self.store.component(spec)

    def root(self, **specs):
        return self.store.root(**specs)

    # -- systems
    def slowfs(self, data_dir, name="slowfs", **kw):
        """slowfs over `data_dir` with the scenario's latency_ms, meta_latency_ms,
        bandwidth_mbps and slowfs_threads (or the keywords given)."""
        p = self.p
        knobs = {"latency_ms": p.get("latency_ms", 1.0),
                 "meta_latency_ms": p.get("meta_latency_ms") if p.get("meta_latency_ms", -1) >= 0
                 else None,
                 "bandwidth_mbps": p.get("bandwidth_mbps", 200.0),
                 "threads": p.get("slowfs_threads", 8)}
        knobs.update(kw)
        return self.lc.slowfs(data_dir, name=name, **knobs)

    def start(self, system, data_dir, slow=None, **kw):
        return self.lc.start(system, data_dir, slow, **kw)

    # -- workloads
    def work(self, *args, timeout=None):
        """Runs a workload of bicache_bench.work in a process of its own; its JSON."""
        self._workn += 1
        base = os.path.join(self.logs, f"work-{self._workn:04d}-{args[0]}")
        env = dict(os.environ, PYTHONPATH=str(BENCH))
        return util.run_json([sys.executable, "-m", "bicache_bench.work", *map(str, args)],
                             base + ".json", base + ".err", env=env, timeout=timeout)

    def work_many(self, arglists):
        outs, errs, cmds = [], [], []
        for args in arglists:
            self._workn += 1
            base = os.path.join(self.logs, f"work-{self._workn:04d}-{args[0]}")
            outs.append(base + ".json")
            errs.append(base + ".err")
            cmds.append([sys.executable, "-m", "bicache_bench.work", *map(str, args)])
        return util.run_many_json(cmds, outs, errs, env=dict(os.environ, PYTHONPATH=str(BENCH)))

    def fio(self, tag, args, cwd=None):
        """fio with --output-format=json; -> {"seconds" (its runtime), "bytes", "iops"}."""
        self._workn += 1
        base = os.path.join(self.logs, f"fio-{self._workn:04d}-{tag}")
        util.run(["fio", "--output-format=json", f"--output={base}.json", *args],
                 out=base + ".out", err=base + ".err", cwd=cwd)
        with open(base + ".json") as f:
            text = f.read()
        d = json.loads(text[text.index("{"):])  # fio may print notes first
        jobs = d["jobs"]
        io_bytes = sum(j["read"]["io_bytes"] for j in jobs)
        runtime_ms = max(j["read"]["runtime"] for j in jobs)
        ios = sum(j["read"]["total_ios"] for j in jobs)
        errors = sum(j.get("error", 0) for j in jobs)
        if errors or io_bytes == 0 or runtime_ms == 0:
            die(f"fio {tag}: error={errors} io_bytes={io_bytes} ({base}.json)")
        s = runtime_ms / 1000.0
        return {"seconds": s, "bytes": io_bytes, "iops": ios / s}

    def timed(self, cmd, stdout=None):
        """Wall time and peak RSS of one command (a fresh interpreter waits for it, so
        RUSAGE_CHILDREN is that command's alone)."""
        args = ["timed"] + (["--stdout", stdout] if stdout else []) + ["--", *cmd]
        return self.work(*args)

    # -- measurement
    def measure(self, m, name, fn, **extra):
        """One pass: counters before, drop the page cache, run fn() (a workload's JSON),
        counters after (slowfs: once settled, so background reads are counted). Records
        and returns the pass."""
        src = m.source
        s0 = src.snap() if src else None
        b0 = m.stats() if m.is_bicache else None
        util.drop_caches()
        out = fn()
        s1 = src.snap(settled=True) if src else None
        b1 = m.stats() if m.is_bicache else None
        rec = {"type": "pass", "run": self.run, "system": m.name, "pass": name, **out, **extra}
        if s0 is not None:
            rec["src"] = {k: s1[k] - s0[k] for k in ("bytes", "reads", "meta")}
        if b0 is not None:
            rec["bc"] = bc_delta(b0, b1)
            rec["after"] = {"meta_bytes": b1["meta"]["bytes"],
                            "meta_entries": b1["meta"]["entries"],
                            "ram_bytes": b1["ram"]["bytes"], "ram_capacity": b1["ram"]["capacity"],
                            "disk_bytes": b1["disk"]["bytes"], "disk_files": b1["disk"].get("files"),
                            "rss_kb": m.rss_kb(), "hwm_kb": m.hwm_kb()}
        self.record(rec)
        log(summary(rec))
        return rec

    def drop_caches(self):
        util.drop_caches()


def bc_delta(b0, b1):
    def d(a, k):
        return b1[a].get(k, 0) - b0[a].get(k, 0)

    return {"source_bytes": d("source", "bytes"), "source_reads": d("source", "reads"),
            "source_meta": d("source", "meta_ops"), "ram_hits": d("ram", "hits"),
            "ram_misses": d("ram", "misses"), "disk_hits": d("disk", "hits"),
            "disk_misses": d("disk", "misses"), "disk_writes_dropped": d("disk", "writes_dropped"),
            "passthrough_opens": (b1.get("passthrough") or {}).get("opens", 0)
            - (b0.get("passthrough") or {}).get("opens", 0),
            "out_of_shard_opens": d("shard", "out_of_shard_opens")}


def _slim(stats):
    if not stats:
        return None
    return {k: stats.get(k) for k in ("ram", "disk", "source", "meta", "shard", "prefetch",
                                      "passthrough")}


def summary(r):
    s = r["seconds"]
    line = f"  {r['system']} {r['pass']}: {s:.2f} s"
    if r.get("bytes"):
        line += f", {r['bytes'] / s / 1e6:.1f} MB/s"
    if r.get("files"):
        line += f", {r['files'] / s:.0f} files/s"
    if "src" in r:
        x = r["src"]
        line += f", source {x['bytes'] / 1e6:.1f} MB / {x['reads']} reads / {x['meta']} meta"
    if "bc" in r:
        line += f", bicache meta ops {r['bc']['source_meta']}"
    return line


# -------------------------------------------------------------------------- machine
def machine(path):
    cpu = ""
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    with open("/proc/meminfo") as f:
        mem = int(f.readline().split()[1]) / 1048576
    fs = util.output(["df", "-T", path]).splitlines()[-1].split()
    return (f"{os.cpu_count()} CPUs ({cpu}), {mem:.1f} GiB RAM, Linux {platform.release()}, "
            f"data and cache dirs on {fs[1]} ({fs[0]})")


def versions(tools):
    out = []
    for t in tools:
        try:
            if t == "fio":
                out.append(util.output(["fio", "--version"]).strip())
            elif t == "bindfs":
                out.append("bindfs " + util.output(["bindfs", "--version"]).split()[1])
            elif t == "rclone":
                out.append(util.output(["rclone", "version"]).splitlines()[0])
            elif t == "zarr":
                import zarr

                out.append(f"zarr {zarr.__version__}")
        except Exception:  # noqa: BLE001 - a version is nice to have
            pass
    out.append(f"Python {platform.python_version()}")
    return ", ".join(out)


# ---------------------------------------------------------------------------- driver
def scenario_names():
    return sorted(p.stem.replace("_", "-") for p in SCENARIOS.glob("*.py")
                  if not p.stem.startswith("_"))


def load_scenario(name):
    """bench/scenarios/NAME.py (dashes in NAME are underscores in the file name), imported
    as scenarios.NAME: a scenario can reuse another's definitions (its dataset, say)."""
    path = SCENARIOS / (name.replace("-", "_") + ".py")
    if not path.exists():
        die(f"no scenario {name!r}; scenarios: {', '.join(scenario_names())}")
    if str(BENCH) not in sys.path:
        sys.path.insert(0, str(BENCH))
    return importlib.import_module(f"scenarios.{path.stem}")


def parse_args(argv):
    p = argparse.ArgumentParser(
        prog="bench/run.py",
        description="Runs one benchmark scenario of bench/scenarios/ (see bench/README.md).")
    p.add_argument("scenario", nargs="?", help="scenario name; --list shows them")
    p.add_argument("overrides", nargs="*", metavar="key=value",
                   help="override a knob of the scenario (see --show)")
    p.add_argument("--runs", type=int, help="repetitions (default: the scenario's; --quick: 1)")
    p.add_argument("--quick", action="store_true",
                   help="tiny sizes, 1 run: checks the scenario runs end to end")
    p.add_argument("--write-doc", action="store_true",
                   help="write the report into the scenario's doc section")
    p.add_argument("--doc", metavar="PATH",
                   help="write the report's section into this file instead (implies --write-doc)")
    p.add_argument("--bench-dir", default=os.environ.get("BENCH_DIR", DEFAULT_BENCH_DIR),
                   help=f"data, binaries, mounts, caches, results (default {DEFAULT_BENCH_DIR})")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--bicache-rev", metavar="REV", help="build bicache and slowfs from a commit")
    g.add_argument("--bicache-bin", metavar="PATH", help="a prebuilt bicache binary")
    p.add_argument("--skip-build", action="store_true",
                   help="use the binaries already built in the target dir")
    p.add_argument("--report-only", action="store_true",
                   help="no runs: rebuild the report (and the doc) from the last results")
    p.add_argument("--keep-caches", action="store_true",
                   help="leave the cache dirs in BENCH_DIR/work after the run")
    p.add_argument("--jobs", type=int, default=os.cpu_count(), help="dataset generation processes")
    p.add_argument("--list", action="store_true", help="list the scenarios")
    p.add_argument("--show", action="store_true", help="print the scenario's knobs and exit")
    return p.parse_intermixed_args(argv)


def command_line(a):
    parts = ["bench/run.py", a.scenario]
    if a.quick:
        parts.append("--quick")
    if a.runs:
        parts += ["--runs", str(a.runs)]
    if a.bicache_rev:
        parts += ["--bicache-rev", a.bicache_rev]
    if a.bicache_bin:
        parts += ["--bicache-bin", a.bicache_bin]
    return shlex.join(parts + a.overrides)


def make_params(mod, a):
    p = Params(mod.PARAMS)
    if a.quick:
        p.update(getattr(mod, "QUICK", {}))
    for o in a.overrides:
        if "=" not in o:
            die(f"{o!r}: overrides are key=value")
        k, v = o.split("=", 1)
        if k not in mod.PARAMS:
            die(f"{a.scenario}: no knob {k!r}; knobs: {', '.join(mod.PARAMS)}")
        p[k] = coerce(k, mod.PARAMS[k], v)
    return p


def check_machine(mod):
    if os.geteuid() != 0:
        die("must run as root (drop_caches, FUSE mounts)")
    if not os.path.exists("/dev/fuse"):
        die("/dev/fuse missing")
    for t in ["fusermount3", *getattr(mod, "NEEDS", [])]:
        if shutil.which(t) is None:
            die(f"{t} missing (apt-get install {t})")
    for m in getattr(mod, "PY_NEEDS", []):
        if importlib.util.find_spec(m) is None:
            die(f"python3 lacks {m} (pip install numpy 'zarr>=2.18,<3')")


def _on_signal(sig, _frame):
    raise SystemExit(128 + sig)


def main(argv=None):
    a = parse_args(argv)
    util.set_tag(a.scenario or "bench")
    try:
        if a.list or not a.scenario:
            for n in scenario_names():
                print(f"{n:12} {load_scenario(n).TITLE}")
            return 0
        mod = load_scenario(a.scenario)
        if a.show:
            quick = getattr(mod, "QUICK", {})
            print(f"{a.scenario}: {mod.TITLE}\nwrites: {mod.DOC} section {mod.SECTION}\n")
            for k, v in mod.PARAMS.items():
                print(f"  {k}={v}" + (f"   (--quick: {quick[k]})" if k in quick else ""))
            return 0
        return _run(a, mod)
    except BenchError as e:
        log(f"ERROR: {e}")
        return 1
    except BrokenPipeError:  # `bench/run.py --show | head`
        return 0


def _run(a, mod):
    write = a.write_doc or bool(a.doc)
    if a.quick and a.write_doc and not a.doc:
        die("--quick numbers are not for the docs: give --doc PATH to write them elsewhere")
    p = make_params(mod, a)
    nruns = a.runs or (1 if a.quick else p.get("runs", 3))
    bench_dir = os.path.realpath(a.bench_dir)
    if re.search(r"\s", bench_dir):
        die("the bench dir must not contain spaces")
    if (os.path.isdir(bench_dir) and os.listdir(bench_dir)
            and not os.path.exists(os.path.join(bench_dir, MARKER))):
        die(f"{bench_dir} is not empty and was not made by the harness")
    os.makedirs(bench_dir, exist_ok=True)
    open(os.path.join(bench_dir, MARKER), "a").close()
    out = os.path.join(bench_dir, "results", a.scenario)
    doc = a.doc or str(REPO / mod.DOC)

    if a.report_only:
        return _report(mod, out, doc, write)

    check_machine(mod)
    os.makedirs(os.path.dirname(out), exist_ok=True)
    lock = open(out + ".lock", "w")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        die(f"another bench/run.py {a.scenario} is using {bench_dir}")
    work = os.path.join(bench_dir, "work", a.scenario)
    for m in util.mounts_under(work):  # leftovers of a killed earlier run (ours)
        log(f"unmounting a leftover mount {m}")
        util.force_unmount(m)
    shutil.rmtree(out, ignore_errors=True)
    shutil.rmtree(os.path.join(work, "cache"), ignore_errors=True)
    os.makedirs(out)

    for s in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(s, _on_signal)
    # Ctrl-C raises KeyboardInterrupt even where SIGINT came in ignored (a `cmd &` of a
    # script): every stop goes through the same teardown.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    lc = None
    rc = 0
    t0 = time.monotonic()
    try:
        bins = build.prepare(bench_dir, a.bicache_bin, a.bicache_rev, a.skip_build)
        t0 = time.monotonic()  # the report's elapsed time: the runs, not the build
        lc = Lifecycle(bins, work, os.path.join(out, "logs"))
        store = data.Store(os.path.join(bench_dir, "data"), a.jobs)
        b = Bench(a.scenario, mod, p, nruns, a.quick, bench_dir, out, lc, store)
        log(f"{mod.TITLE}; {nruns} run(s); bicache {bins.describe()}; results in {out}")
        mod.run(b)
        lc.teardown_all()
        b.flush_mounts()
    except KeyboardInterrupt:
        log("interrupted")
        rc = 130
    except SystemExit as e:
        log(f"stopped by signal {int(e.code) - 128}" if isinstance(e.code, int) else "exiting")
        rc = e.code if isinstance(e.code, int) else 1
    except BenchError as e:
        log(f"ERROR: {e}")
        rc = 1
    except Exception:
        import traceback

        traceback.print_exc()
        rc = 1
    finally:
        if lc is not None:
            lc.teardown_all()
        util.stop_all_children()
        leaked = util.mounts_under(bench_dir)
        for m in leaked:
            log(f"BUG: {m} still mounted after teardown; unmounting it lazily")
            util.force_unmount(m)
        if leaked and rc == 0:
            rc = 1
        if not a.keep_caches:
            shutil.rmtree(os.path.join(work, "cache"), ignore_errors=True)
    if rc != 0:
        log(f"failed (exit {rc}); everything unmounted. Logs: {out}/logs")
        return rc
    meta = {"scenario": a.scenario, "title": mod.TITLE, "params": dict(p), "runs": nruns,
            "quick": a.quick, "command": command_line(a), "commit": lc.bins.describe(),
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "elapsed": time.monotonic() - t0, "machine": machine(bench_dir),
            "versions": versions(getattr(mod, "NEEDS", []) + getattr(mod, "PY_NEEDS", [])),
            **b.meta}
    with open(os.path.join(out, "meta.json"), "w") as f:
        json.dump(meta, f, indent=1)
    return _report(mod, out, doc, write)


def _report(mod, out, doc, write):
    try:
        with open(os.path.join(out, "meta.json")) as f:
            meta = json.load(f)
        with open(os.path.join(out, "results.jsonl")) as f:
            rows = [json.loads(line) for line in f if line.strip()]
    except FileNotFoundError:
        die(f"no finished results in {out}")
    res = report.Results(rows, getattr(mod, "ORDER", None), getattr(mod, "stand_in", None))
    text = mod.report(res, meta).rstrip() + "\n"
    with open(os.path.join(out, "report.md"), "w") as f:
        f.write(text)
    print(text)
    if write:
        report.write_doc_section(doc, mod.SECTION, text, getattr(mod, "HEADING", None))
        extra = getattr(mod, "after_doc", None)
        if extra:
            extra(res, meta, os.path.dirname(doc), out)
        log(f"wrote section {mod.SECTION} of {doc}")
    log(f"raw results: {out} (report: {out}/report.md)")
    return 0
