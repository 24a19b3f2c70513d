"""The binaries under test and the commit they come from.

Binaries are copied into BENCH_DIR/bin, so a rebuild of the work tree during a run cannot
change them. floorfs (examples/floorfs.rs, the FUSE floor baseline) always comes from the
work tree. Three ways to get bicache (slowfs always comes from the same source):
  default        `cargo build --release --bin bicache --example slowfs` in the work tree
                 (CARGO_TARGET_DIR is honoured), commit = HEAD + whether the tree is dirty
  --bicache-rev  `git archive REV` unpacked in BENCH_DIR/src-rev, built in BENCH_DIR/target-rev
  --bicache-bin  a prebuilt bicache binary (slowfs is still built from the work tree)
"""

import os
import shutil
import subprocess

from . import REPO
from .util import die, log, output, run

# What the binaries are built from: a change here makes the work tree "dirty".
BUILD_PATHS = ["src", "examples", "Cargo.toml", "Cargo.lock", "build.rs"]


def git(*args, check=True):
    return output(["git", "-C", REPO, *args], check=check).strip()


def head_info():
    """(short commit of HEAD, dirty?) of the work tree, as far as the build goes."""
    try:
        commit = git("rev-parse", "--short", "HEAD")
        dirty = bool(git("status", "--porcelain", "--untracked-files=no", "--",
                         *[p for p in BUILD_PATHS if (REPO / p).exists()]))
    except Exception:  # not a git checkout
        return "unknown", False
    return commit, dirty


def target_dir():
    return os.environ.get("CARGO_TARGET_DIR") or str(REPO / "target")


def _install(src, dst):
    if not os.access(src, os.X_OK):
        die(f"{src}: not an executable (build it, or drop --skip-build)")
    tmp = f"{dst}.new"
    shutil.copy2(src, tmp)
    os.chmod(tmp, 0o755)
    os.replace(tmp, dst)


def _cargo_build(cwd, target, what, logf):
    log(f"building {' '.join(what)} (release) in {cwd}")
    env = dict(os.environ, CARGO_TARGET_DIR=str(target))
    run(["cargo", "build", "--release", *what], out=logf, err=logf, env=env, cwd=cwd)


def build_rev(rev, bench_dir, logf, with_slowfs=True):
    """Builds bicache (and slowfs) from a commit; returns (dir with the binaries, short).

    Every commit is unpacked into the same folder with fresh file times (`tar -m`), so the
    shared target dir rebuilds what changed: cargo decides freshness by the file times of
    the paths it built from, and a commit unpacked elsewhere with its commit times looked
    already built, which silently ran the previous commit's binary. Callers copy the
    binaries out at once (BENCH_DIR/bin), before the next commit is built here."""
    full = git("rev-parse", "--verify", f"{rev}^{{commit}}")
    short = git("rev-parse", "--short", full)
    src = os.path.join(bench_dir, "src-rev")
    target = os.path.join(bench_dir, "target-rev")
    shutil.rmtree(src, ignore_errors=True)
    os.makedirs(src)
    archive = subprocess.Popen(["git", "-C", str(REPO), "archive", full],
                               stdout=subprocess.PIPE)
    subprocess.run(["tar", "-x", "-m", "-C", src], stdin=archive.stdout, check=True)
    if archive.wait() != 0:
        die(f"git archive {full} failed")
    what = ["--bin", "bicache"] + (["--example", "slowfs"] if with_slowfs else [])
    _cargo_build(src, target, what, logf)
    return os.path.join(target, "release"), short


class Bins:
    def __init__(self, bicache, slowfs, floorfs, commit, dirty, how):
        self.bicache, self.slowfs, self.floorfs = bicache, slowfs, floorfs
        self.commit, self.dirty, self.how = commit, dirty, how

    def describe(self):
        s = f"`{self.commit}`"
        if self.dirty:
            s += " plus uncommitted changes in the work tree (src/, examples/ or Cargo.*)"
        if self.how:
            s += f" ({self.how})"
        return s


def prepare(bench_dir, bicache_bin=None, bicache_rev=None, skip_build=False):
    bindir = os.path.join(bench_dir, "bin")
    os.makedirs(bindir, exist_ok=True)
    logf = os.path.join(bench_dir, "build.log")
    bicache, slowfs = os.path.join(bindir, "bicache"), os.path.join(bindir, "slowfs")
    floorfs = os.path.join(bindir, "floorfs")
    rel = os.path.join(target_dir(), "release")
    if not skip_build:
        what = ["--example", "floorfs"]
        if not bicache_rev:
            what += ["--example", "slowfs"] + ([] if bicache_bin else ["--bin", "bicache"])
        _cargo_build(REPO, target_dir(), what, logf)
    _install(os.path.join(rel, "examples", "floorfs"), floorfs)
    if bicache_rev:
        rel, short = build_rev(bicache_rev, bench_dir, logf)
        _install(os.path.join(rel, "bicache"), bicache)
        _install(os.path.join(rel, "examples", "slowfs"), slowfs)
        return Bins(bicache, slowfs, floorfs, short, False,
                    f"built from `git archive {bicache_rev}`")
    _install(os.path.join(rel, "examples", "slowfs"), slowfs)
    if bicache_bin:
        _install(bicache_bin, bicache)
        return Bins(bicache, slowfs, floorfs, f"prebuilt binary {bicache_bin}", False, "")
    _install(os.path.join(rel, "bicache"), bicache)
    commit, dirty = head_info()
    return Bins(bicache, slowfs, floorfs, commit, dirty, "")


def binary_for(spec, bench_dir, name):
    """A bicache binary for an A/B comparison: an executable path, or a git revision
    (built once per commit). Returns (installed path, description)."""
    bindir = os.path.join(bench_dir, "bin")
    os.makedirs(bindir, exist_ok=True)
    dst = os.path.join(bindir, f"bicache-{name}")
    if os.path.isfile(spec) and os.access(spec, os.X_OK):
        _install(spec, dst)
        return dst, f"binary {spec}"
    rel, short = build_rev(spec, bench_dir, os.path.join(bench_dir, "build.log"),
                           with_slowfs=False)
    _install(os.path.join(rel, "bicache"), dst)
    return dst, f"commit `{short}` ({spec})"
