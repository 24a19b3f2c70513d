"""bicache.mount / Mount / plan / MountError against the installed wheel, with real mounts."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
import threading
import time
import types
from pathlib import Path
from typing import Dict, List, Optional

import pytest

import bicache
from _support import BIN, MIB, Dataset, mounted_under, mountinfo_points

pytestmark = pytest.mark.usefixtures("fuse")


def read_all(root: Path, names: List[str]) -> Dict[str, bytes]:
    return {name: (root / name).read_bytes() for name in names}


def cli(*args: str, env: Optional[Dict[str, str]] = None) -> subprocess.CompletedProcess:
    return subprocess.run([BIN, *args], capture_output=True, check=False, env=env)


def cli_plan(*args: str) -> List[bytes]:
    done = cli("plan", *args)
    assert done.returncode == 0, done.stderr
    return [line for line in done.stdout.split(b"\n") if line]


# ---------------------------------------------------------------------------------------
# The package is the installed one
# ---------------------------------------------------------------------------------------


def test_installed_package_and_binary_are_the_venvs() -> None:
    prefix = Path(sys.prefix).resolve()
    assert prefix in Path(bicache.__file__).resolve().parents
    binary = Path(bicache.find_binary()).resolve()
    assert prefix in binary.parents, f"{binary} is not the wheel's binary"
    assert (Path(bicache.__file__).parent / "py.typed").is_file()
    done = subprocess.run([str(binary), "--version"], capture_output=True, text=True)
    assert done.returncode == 0
    assert done.stdout.split() == ["bicache", bicache.__version__]


# ---------------------------------------------------------------------------------------
# mount: bytes and counters
# ---------------------------------------------------------------------------------------


def test_mount_serves_source_bytes_and_counters_follow_reads(
    dataset: Dataset, tmp_path: Path, opts: dict
) -> None:
    mp = tmp_path / "mnt point"  # a space: escaped in /proc/self/mountinfo
    mp.mkdir()
    names = sorted(dataset.files)
    with bicache.mount(dataset.root, mp, chunk_size="64KiB", **opts) as m:
        assert m.path == mp and os.fspath(m) == str(mp) and m.mounted
        assert str(mp) in mountinfo_points()
        before = m.stats()
        assert before["source"]["bytes"] == 0

        cold = read_all(m.path, names)
        assert cold == dataset.files
        after_cold = m.stats()
        # Every byte of a cold pass came from the source, once (no eviction at 64 MiB).
        assert dataset.total <= after_cold["source"]["bytes"] <= 2 * dataset.total
        assert after_cold["ram"]["misses"] > 0
        assert after_cold["source"]["reads"] > 0

        warm = read_all(m.path, names)
        assert warm == dataset.files
        after_warm = m.stats()
        assert after_warm["source"]["bytes"] == after_cold["source"]["bytes"]
        assert after_warm["source"]["reads"] == after_cold["source"]["reads"]
        hits = lambda s: s["ram"]["hits"] + s["disk"]["hits"]  # noqa: E731
        assert hits(after_warm) >= hits(after_cold)

        # .stats() (the control file) and `bicache stats --json` tell the same counters.
        done = cli("stats", "--json", str(mp))
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout)["source"] == m.stats()["source"]
    assert not m.mounted
    assert str(mp) not in mountinfo_points()
    assert mp.is_dir()  # a mount point the caller gave is left in place


def test_sizes_as_int_or_str_reach_the_daemon(dataset: Dataset, tmp_path: Path) -> None:
    with bicache.mount(
        dataset.root,
        ram=48 * MIB,
        disk="32MiB",
        chunk_size=128 * 1024,
        cache_dir=tmp_path / "cache",
        immutable=True,
        metadata_ttl=30,
    ) as m:
        s = m.stats()
        assert s["ram"]["capacity"] == 48 * MIB
        assert s["disk"]["capacity"] == 32 * MIB
        assert s["chunk_size"] == 128 * 1024
        assert Path(s["cache"]["dir"]) == tmp_path / "cache"


def test_bad_size_is_a_mount_error_with_the_clis_line(dataset: Dataset, tmp_path: Path) -> None:
    with pytest.raises(bicache.MountError) as info:
        bicache.mount(dataset.root, ram="12XB", disk="64MiB", cache_dir=tmp_path / "cache")
    assert "--ram" in str(info.value) and "12XB" in str(info.value)
    assert info.value.returncode not in (None, 0)
    with pytest.raises(TypeError):
        bicache.mount(dataset.root, ram=0.5, cache_dir=tmp_path / "cache")  # type: ignore[arg-type]
    assert mounted_under(tmp_path) == []
    assert os.listdir(tmp_path / "tmp") == []


# ---------------------------------------------------------------------------------------
# Errors and cleanup
# ---------------------------------------------------------------------------------------


def test_missing_source_raises_the_clis_message_and_leaves_nothing(
    tmp_path: Path, opts: dict
) -> None:
    missing = tmp_path / "no-such-dataset"
    mp = tmp_path / "mnt-cli"
    mp.mkdir()
    expected = cli("mount", f"--cache-dir={opts['cache_dir']}", str(missing), str(mp))
    assert expected.returncode != 0
    line = expected.stderr.decode().strip()
    assert line.startswith("bicache: ") and "\n" not in line

    with pytest.raises(bicache.MountError) as info:
        bicache.mount(missing, **opts)  # temporary mount point
    err = info.value
    assert str(err) == line[len("bicache: ") :]
    assert str(missing) in str(err)
    assert err.returncode == expected.returncode
    assert isinstance(err, RuntimeError)
    assert mounted_under(tmp_path) == []
    assert os.listdir(tmp_path / "tmp") == [], "the temporary mount point was not removed"


def test_leaving_with_by_an_exception_unmounts_and_removes_the_temp_dir(
    dataset: Dataset, tmp_path: Path, opts: dict
) -> None:
    class Boom(Exception):
        pass

    with pytest.raises(Boom):
        with bicache.mount(dataset.root, **opts) as m:
            path = m.path
            assert path.parent == tmp_path / "tmp"
            assert str(path) in mountinfo_points()
            with open(path / "a" / "chunk.bin", "rb") as f:
                assert f.read() == dataset.files["a/chunk.bin"]
            raise Boom()
    assert str(path) not in mountinfo_points()
    assert not path.exists()
    assert os.listdir(tmp_path / "tmp") == []
    assert not m.mounted


def test_unmount_is_idempotent_and_survives_an_outside_unmount(
    dataset: Dataset, tmp_path: Path, opts: dict
) -> None:
    mp = tmp_path / "mnt"
    mp.mkdir()
    m = bicache.mount(dataset.root, mp, **opts)
    try:
        m.unmount()
        m.unmount()
        assert not m.mounted and mp.is_dir()
        with pytest.raises(bicache.MountError) as info:
            m.stats()
        assert "not a bicache mount" in str(info.value)
    finally:
        m.unmount()

    m2 = bicache.mount(dataset.root, mp, **opts)
    try:
        assert cli("unmount", str(mp)).returncode == 0  # from a shell, behind its back
        assert not m2.mounted
        m2.unmount()  # nothing left to do: no error
    finally:
        m2.unmount()


def test_busy_mount_raises_then_unmounts_once_closed(
    dataset: Dataset, tmp_path: Path, opts: dict
) -> None:
    m = bicache.mount(dataset.root, **opts)
    f = open(m.path / "one.bin", "rb")
    errors: List[BaseException] = []

    def attempt() -> None:
        try:
            m.unmount(timeout=0.3)
        except BaseException as e:  # noqa: B902 - reported below
            errors.append(e)

    # In a thread, so that an unmount that never gives up fails the test instead of
    # hanging it.
    worker = threading.Thread(target=attempt, daemon=True)
    try:
        start = time.monotonic()
        worker.start()
        worker.join(20)
        hung = worker.is_alive()
        took = time.monotonic() - start
        still_mounted = m.mounted
    finally:
        f.close()
        worker.join(20)
        m.unmount()
    assert not hung, "unmount(timeout=0.3) of a busy mount did not return"
    assert len(errors) == 1 and isinstance(errors[0], bicache.MountError), errors
    assert "busy" in str(errors[0]).lower()
    assert 0.3 <= took < 10
    assert still_mounted
    assert not m.mounted and not m.path.exists()


def test_cli_error_line_is_the_last_bicache_line(tmp_path: Path, monkeypatch) -> None:
    fake = tmp_path / "fake-bicache"
    fake.write_text(
        "#!/bin/sh\n"
        "echo 'bicache: warning: something odd' >&2\n"
        "echo 'bicache: cache dir /x is in use by pid 12' >&2\n"
        "exit 3\n"
    )
    fake.chmod(0o755)
    monkeypatch.setenv("BICACHE_BIN", str(fake))
    with pytest.raises(bicache.MountError) as info:
        bicache.mount(tmp_path, tmp_path / "tmp")
    assert str(info.value) == "cache dir /x is in use by pid 12"
    assert info.value.returncode == 3
    assert "warning: something odd" in info.value.stderr


# ---------------------------------------------------------------------------------------
# Keyword arguments -> flags (a stand-in binary records its arguments; no mount)
# ---------------------------------------------------------------------------------------


@pytest.fixture
def recording_binary(tmp_path: Path, monkeypatch):
    log = tmp_path / "argv.jsonl"
    fake = tmp_path / "recording-bicache"
    fake.write_text(
        textwrap.dedent(
            f"""\
            #!{sys.executable}
            import json, sys
            with open({str(log)!r}, "a") as f:
                f.write(json.dumps(sys.argv[1:]) + "\\n")
            """
        )
    )
    fake.chmod(0o755)
    monkeypatch.setenv("BICACHE_BIN", str(fake))

    def calls() -> List[List[str]]:
        return [json.loads(line) for line in log.read_text().splitlines()]

    return calls


def test_keywords_map_to_cli_flags(tmp_path: Path, recording_binary) -> None:
    src, mp = tmp_path / "src", tmp_path / "mp"
    m = bicache.mount(
        src,
        mp,
        ram=3 * MIB,
        disk="25%",
        cache_dir=tmp_path / "c",
        chunk_size="4MiB",
        metadata_ttl=1.5,
        immutable=True,
        allow_other=True,
        log_file=tmp_path / "log",
        log_max_size="1MiB",
        fuse_threads=4,
        fetch_threads=2,
        passthrough=False,
        huge_pages=False,
        cache_policy="lru",
        shard="node",
        seed=13,
        manifest=tmp_path / "manifest.txt",
        shard_view="all",
        always_visible=["*.json", "labels.csv"],
        shard_strict=True,
        shard_size="auto",
        min_files=10,
        overflow=0.1,
        prefetch=True,
        prefetch_threads=3,
        revalidate_rate=50,
        meta_budget="64MiB",
        metrics=9464,
        extra_args=["--disks", "2"],
    )
    m.warm(progress=False)
    m.warm()
    m.unmount()
    assert recording_binary() == [
        [
            "mount",
            f"--ram={3 * MIB}",
            "--disk=25%",
            f"--cache-dir={tmp_path / 'c'}",
            "--chunk-size=4MiB",
            "--metadata-ttl=1.5",
            "--immutable",
            "--allow-other",
            f"--log-file={tmp_path / 'log'}",
            "--log-max-size=1MiB",
            "--fuse-threads=4",
            "--fetch-threads=2",
            "--passthrough=off",
            "--huge-pages=off",
            "--cache-policy=lru",
            "--shard=node",
            "--seed=13",
            f"--manifest={tmp_path / 'manifest.txt'}",
            "--always-visible=*.json",
            "--always-visible=labels.csv",
            "--shard-size=auto",
            "--min-files=10",
            "--overflow=0.1",
            "--shard-view=all",
            "--shard-strict",
            "--prefetch=on",
            "--prefetch-threads=3",
            "--revalidate-rate=50",
            "--meta-budget=64MiB",
            "--metrics=9464",
            "--disks",
            "2",
            "--",
            str(src),
            str(mp),
        ],
        ["warm", "--quiet", "--", str(mp)],
        ["warm", "--", str(mp)],
        ["unmount", "--", str(mp)],
    ]


def test_temporary_mount_point_is_private_and_removed(tmp_path: Path, recording_binary) -> None:
    m = bicache.mount(tmp_path / "src")
    assert m.path.parent == tmp_path / "tmp"
    assert recording_binary()[-1][-1] == str(m.path)
    # The stand-in mounted nothing: this is the directory tempfile.mkdtemp made.
    assert os.stat(m.path).st_mode & 0o777 == 0o700
    m.unmount()
    assert not m.path.exists()
    assert recording_binary()[-1] == ["unmount", "--", str(m.path)]


def test_rank_comes_from_an_initialised_torch_distributed(
    tmp_path: Path, recording_binary, monkeypatch
) -> None:
    dist = fake_torch_distributed(monkeypatch, rank=2, world_size=3)
    bicache.mount(tmp_path, tmp_path / "mp", shard="rank").unmount()
    bicache.mount(tmp_path, tmp_path / "mp", shard="rank", shard_index=0, shard_count=5).unmount()
    dist.initialized = False
    bicache.mount(tmp_path, tmp_path / "mp", shard="rank").unmount()
    mounts = [c for c in recording_binary() if c[0] == "mount"]
    assert mounts[0][1:4] == ["--shard=rank", "--shard-index=2", "--shard-count=3"]
    assert mounts[1][1:4] == ["--shard=rank", "--shard-index=0", "--shard-count=5"]
    assert mounts[2][1:3] == ["--shard=rank", "--"], "not initialised: left to the CLI"


def test_argument_errors_raise_before_running_anything(tmp_path: Path, recording_binary) -> None:
    with pytest.raises(ValueError):
        bicache.mount(tmp_path, tmp_path / "mp", shard="ranks")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        bicache.plan(tmp_path, shard_index=1)
    with pytest.raises(TypeError):
        bicache.mount(tmp_path, tmp_path / "mp", disk=True)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        bicache.mount(tmp_path, tmp_path / "mp", always_visible="*.json")
    assert not (tmp_path / "argv.jsonl").exists()


# ---------------------------------------------------------------------------------------
# plan
# ---------------------------------------------------------------------------------------


def fake_torch_distributed(monkeypatch, rank: int, world_size: int):
    dist = types.ModuleType("torch.distributed")
    dist.initialized = True  # type: ignore[attr-defined]
    dist.is_available = lambda: True  # type: ignore[attr-defined]
    dist.is_initialized = lambda: dist.initialized  # type: ignore[attr-defined]
    dist.get_rank = lambda: rank  # type: ignore[attr-defined]
    dist.get_world_size = lambda: world_size  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "torch.distributed", dist)
    return dist


@pytest.mark.parametrize(
    "kwargs, flags",
    [
        ({}, []),
        ({"seed": 7}, ["--seed=7"]),
        ({"shard_index": 0, "shard_count": 3, "seed": 7}, ["--shard-index=0", "--shard-count=3", "--seed=7"]),
        ({"shard_index": 2, "shard_count": 3, "seed": 7}, ["--shard-index=2", "--shard-count=3", "--seed=7"]),
        (
            {"shard_index": 1, "shard_count": 2, "always_visible": ["*.csv"]},
            ["--shard-index=1", "--shard-count=2", "--always-visible=*.csv"],
        ),
    ],
)
def test_plan_equals_the_cli(dataset: Dataset, kwargs: dict, flags: List[str]) -> None:
    got = bicache.plan(dataset.root, **kwargs)
    assert [os.fsencode(p) for p in got] == cli_plan(*flags, str(dataset.root))
    assert got, "an empty plan would make this comparison vacuous"
    assert all(p in dataset.files for p in got)


def test_plan_shards_are_disjoint_and_cover_the_dataset(dataset: Dataset) -> None:
    shards = [bicache.plan(dataset.root, shard_index=i, shard_count=3, seed=5) for i in range(3)]
    flat = [p for s in shards for p in s]
    assert sorted(flat) == sorted(dataset.files)
    assert len(flat) == len(set(flat))
    assert os.fsdecode(b"c/caf\xe9.bin") in flat  # a non-UTF-8 name survives


def test_plan_rank_from_launcher_environment(dataset: Dataset, monkeypatch) -> None:
    with pytest.raises(bicache.MountError) as info:
        bicache.plan(dataset.root, shard="rank")
    assert "RANK" in str(info.value) and info.value.returncode != 0

    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert bicache.plan(dataset.root, shard="rank") == bicache.plan(
        dataset.root, shard_index=1, shard_count=2
    )
    monkeypatch.delenv("RANK")
    monkeypatch.delenv("WORLD_SIZE")
    monkeypatch.setenv("SLURM_PROCID", "0")
    monkeypatch.setenv("SLURM_NTASKS", "2")
    assert bicache.plan(dataset.root, shard="rank", seed=3) == bicache.plan(
        dataset.root, shard_index=0, shard_count=2, seed=3
    )


def test_plan_rank_from_torch_distributed(dataset: Dataset, monkeypatch) -> None:
    dist = fake_torch_distributed(monkeypatch, rank=1, world_size=3)
    # The launcher's variables say otherwise: the process group wins.
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")
    got = bicache.plan(dataset.root, shard="rank")
    assert [os.fsencode(p) for p in got] == cli_plan(
        "--shard-index=1", "--shard-count=3", str(dataset.root)
    )
    dist.initialized = False
    assert bicache.plan(dataset.root, shard="rank") == bicache.plan(
        dataset.root, shard_index=0, shard_count=2
    )


def test_write_manifest_gives_the_walk_s_shards(dataset: Dataset, tmp_path: Path) -> None:
    m = tmp_path / "dataset.manifest"
    assert bicache.write_manifest(dataset.root, m) == len(dataset.files)
    lines = m.read_bytes().split(b"\n")
    assert lines[0] == b"# bicache-manifest: size path"
    sizes = dict(line.split(b"\t", 1)[::-1] for line in lines[1:] if line)
    for name in dataset.files:
        assert int(sizes[os.fsencode(name)]) == (dataset.root / name).stat().st_size
    for i in range(3):
        assert bicache.plan(dataset.root, shard_index=i, shard_count=3, seed=5, manifest=m) == (
            bicache.plan(dataset.root, shard_index=i, shard_count=3, seed=5)
        )
    with pytest.raises(bicache.MountError) as info:
        bicache.write_manifest(tmp_path / "nope", tmp_path / "other.manifest")
    assert str(tmp_path / "nope") in str(info.value)
    assert not (tmp_path / "other.manifest").exists()
    assert sorted(p.name for p in tmp_path.glob("*manifest*")) == ["dataset.manifest"]


def test_plan_missing_source(tmp_path: Path) -> None:
    with pytest.raises(bicache.MountError) as info:
        bicache.plan(tmp_path / "nope")
    assert str(tmp_path / "nope") in str(info.value)
    assert not str(info.value).startswith("bicache:")


# ---------------------------------------------------------------------------------------
# warm and shard_files
# ---------------------------------------------------------------------------------------


def test_warm_prefetches_the_shard_and_then_reads_touch_no_source(
    dataset: Dataset, opts: dict
) -> None:
    shard = bicache.plan(dataset.root, shard_index=0, shard_count=2, seed=1)
    with bicache.mount(dataset.root, shard_index=0, shard_count=2, seed=1, **opts) as m:
        assert m.shard_files() == shard
        m.warm(progress=False)
        s = m.stats()
        assert s["prefetch"]["state"] == "done"
        assert s["prefetch"]["files_done"] == s["prefetch"]["files_total"] == len(shard)
        assert s["shard"]["index"] == 0 and s["shard"]["count"] == 2
        fetched = s["source"]["bytes"]
        assert fetched >= sum(len(dataset.files[p]) for p in shard)
        assert read_all(m.path, shard) == {p: dataset.files[p] for p in shard}
        assert m.stats()["source"]["bytes"] == fetched, "warm left part of the shard uncached"
        m.warm(progress=True)  # already warm: returns at once (stderr is not a terminal)


def test_control_files_copy_whole_with_shutil(dataset: Dataset, tmp_path: Path, opts: dict) -> None:
    # shutil.copy uses sendfile, which stops at the file's size: the control files must
    # report their documents' true length, not 0 as /proc does.
    with bicache.mount(dataset.root, shard_index=1, shard_count=2, prefetch=False, **opts) as m:
        shutil.copy(m.path / ".bicache" / "shard.txt", tmp_path / "shard.txt")
        shutil.copy(m.path / ".bicache" / "stats.json", tmp_path / "stats.json")
        shutil.copy(m.path / ".bicache" / "stats.txt", tmp_path / "stats.txt")
        want = os.fsencode("".join(p + "\n" for p in m.shard_files()))
    assert (tmp_path / "shard.txt").read_bytes() == want and want
    assert json.loads((tmp_path / "stats.json").read_text())["shard"]["index"] == 1
    assert (tmp_path / "stats.txt").stat().st_size > 0


def test_warm_without_prefetch_returns(dataset: Dataset, opts: dict) -> None:
    with bicache.mount(dataset.root, **opts) as m:
        m.warm(progress=False, timeout=30)
        assert m.shard_files() == []


def test_the_readme_example_runs_as_written_under_a_launcher(dataset: Dataset, tmp_path: Path) -> None:
    """The README's Python example, with only the dataset path and the metrics port
    changed, run as torchrun would run rank 0 of 2."""
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    code = readme.split("```python\n", 1)[1].split("```", 1)[0]
    assert "/shared/imagenet/train" in code and "metrics=9464" in code
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    code = code.replace("/shared/imagenet/train", str(dataset.root)).replace(
        "metrics=9464", f"metrics={port}"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "BICACHE"))}
    # The default cache dir and mountpoint follow $TMPDIR: keep them in this test's folder.
    env.update(RANK="0", WORLD_SIZE="2", TMPDIR=str(tmp_path))
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=90
    )
    assert out.returncode == 0, out.stderr
    # It printed the bytes this rank pulled from the source: about half the dataset.
    pulled = int(out.stdout.strip().splitlines()[-1])
    assert 0 < pulled < dataset.total, out.stdout
    assert mounted_under(tmp_path) == []
