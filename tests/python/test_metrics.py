"""`--metrics`: the mount's counters as Prometheus/OpenMetrics text, read with the real
parser Prometheus' own Python client ships (prometheus_client's OpenMetrics parser is
strict: a malformed line, a missing # EOF or a counter without _total fails it)."""

from __future__ import annotations

import os
import socket
import urllib.request
from pathlib import Path
from typing import Dict, Tuple

import pytest
from prometheus_client.openmetrics.parser import text_string_to_metric_families

import bicache
from _support import Dataset, free_port, mounted_under, read_and_drop

pytestmark = pytest.mark.usefixtures("fuse")


def scrape(port: int) -> Tuple[str, Dict[str, object]]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        ctype = r.headers["Content-Type"]
        text = r.read().decode()
    return ctype, {f.name: f for f in text_string_to_metric_families(text)}


def value(families: Dict[str, object], family: str, sample: str, **labels: str) -> float:
    for s in families[family].samples:
        if s.name == sample and all(s.labels.get(k) == v for k, v in labels.items()):
            return s.value
    raise AssertionError(f"no sample {sample}{labels} in {family}")


def test_metrics_parse_and_equal_the_stats(dataset: Dataset, tmp_path: Path, opts: dict) -> None:
    port = free_port()
    with bicache.mount(
        dataset.root, chunk_size="64KiB", passthrough=False, metrics=port, **opts
    ) as m:
        _, before = scrape(port)
        scrapes = []
        for _ in range(2):  # a cold pass, then a warm one served by the RAM tier
            # Then out of the kernel's page cache, so the warm pass reaches the daemon.
            read_and_drop(m.path, dataset.files)
            scrapes.append(scrape(port))
        (_, after_cold), (ctype, fams) = scrapes
        stats = m.stats()

    # The counters move with the reads between two scrapes of one mount.
    src = ("bicache_source_read_bytes", "bicache_source_read_bytes_total")
    ram_hits = ("bicache_cache_hits", "bicache_cache_hits_total")
    assert value(before, *src) < dataset.total <= value(fams, *src)
    # Every chunk of the warm pass is a RAM hit (the cold pass may have some, from readahead).
    warm_hits = value(fams, *ram_hits, tier="ram") - value(after_cold, *ram_hits, tier="ram")
    assert warm_hits >= len([d for d in dataset.files.values() if d]), warm_hits

    assert ctype.startswith("application/openmetrics-text"), ctype
    for name, fam in fams.items():
        assert name.startswith("bicache_"), name
        assert fam.documentation, f"{name} has no help"
    # The same counters as stats.json (nothing read between the two).
    assert value(fams, "bicache_cache_hits", "bicache_cache_hits_total", tier="ram") == stats["ram"]["hits"]
    assert value(fams, "bicache_cache_misses", "bicache_cache_misses_total", tier="ram") == stats["ram"]["misses"]
    assert value(fams, "bicache_cache_hits", "bicache_cache_hits_total", tier="disk") == stats["disk"]["hits"]
    src_bytes = value(fams, "bicache_source_read_bytes", "bicache_source_read_bytes_total")
    assert src_bytes == stats["source"]["bytes"] >= dataset.total
    assert value(fams, "bicache_cache_held_bytes", "bicache_cache_held_bytes", tier="ram") == stats["ram"]["bytes"]
    assert fams["bicache_cache_held_bytes"].unit == "bytes"
    assert fams["bicache_cache_hits"].type == "counter"
    assert fams["bicache_cache_held_bytes"].type == "gauge"

    # Read latency by tier: cumulative buckets ending in +Inf == count; the warm pass
    # was served from RAM and the cold one from the source.
    lat = fams["bicache_read_duration_seconds"]
    assert lat.type == "histogram" and lat.unit == "seconds"
    for tier in ("ram", "disk", "source"):
        buckets = [
            (s.labels["le"], s.value)
            for s in lat.samples
            if s.name.endswith("_bucket") and s.labels["tier"] == tier
        ]
        counts = [v for _, v in buckets]
        assert counts == sorted(counts), f"{tier}: buckets not cumulative: {buckets}"
        assert buckets[-1][0] == "+Inf"
        count = value(fams, "bicache_read_duration_seconds", "bicache_read_duration_seconds_count", tier=tier)
        assert buckets[-1][1] == count
    ram_reads = value(fams, "bicache_read_duration_seconds", "bicache_read_duration_seconds_count", tier="ram")
    source_reads = value(fams, "bicache_read_duration_seconds", "bicache_read_duration_seconds_count", tier="source")
    assert ram_reads > 0 and source_reads > 0


def test_a_port_in_use_is_a_mount_error_and_leaves_nothing(
    dataset: Dataset, tmp_path: Path, opts: dict
) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        mp = tmp_path / "mp"
        mp.mkdir()
        with pytest.raises(bicache.MountError) as e:
            bicache.mount(dataset.root, mp, metrics=port, **opts)
    assert f"127.0.0.1:{port}" in str(e.value) and "cannot listen" in str(e.value)
    assert mounted_under(tmp_path) == []
    assert os.listdir(mp) == []


def test_metrics_listen_on_loopback_unless_told(dataset: Dataset, opts: dict) -> None:
    port = free_port()
    with bicache.mount(dataset.root, metrics=str(port), **opts):
        with socket.create_connection(("127.0.0.1", port), timeout=5):
            pass
        # Not on the node's other addresses: only 127.0.0.1 was bound.
        with open("/proc/net/tcp") as f:
            listening = [
                line.split()[1]
                for line in f.read().splitlines()[1:]
                if line.split()[3] == "0A"  # LISTEN
            ]
        ours = [a for a in listening if int(a.split(":")[1], 16) == port]
        assert ours == ["0100007F:%04X" % port], ours
