"""A real Prometheus server (Debian's package; .ci/run installs it) scrapes a mount's
`--metrics` and evaluates every query of the Grafana dashboard
(docs/recipes/grafana-dashboard.json) and of docs/CLUSTER.md's Monitoring section, and
promtool checks that section's scrape configs. What a test of the text format alone
cannot show: that Prometheus accepts the endpoint, and that the queries users are given
parse, match the series bicache exports and give the values its stats give."""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Tuple

import pytest

import bicache
from _support import Dataset, free_port, read_and_drop

pytestmark = pytest.mark.usefixtures("fuse")

REPO = Path(__file__).resolve().parents[2]
DASHBOARD = REPO / "docs" / "recipes" / "grafana-dashboard.json"
CLUSTER = REPO / "docs" / "CLUSTER.md"

#: What Grafana puts in place of its variables, for a 1 s scrape interval: every mount,
#: and a rate window of several scrapes.
GRAFANA_VARS = {"$instance": ".+", "$__rate_interval": "30s"}


@pytest.fixture(scope="session")
def prometheus_bins() -> Tuple[str, str]:
    """prometheus and promtool: skip (loudly) without them; under CI=true fail instead."""
    found = (shutil.which("prometheus"), shutil.which("promtool"))
    if None in found:
        problem = "prometheus / promtool not on PATH (apt-get install prometheus)"
        if os.environ.get("CI", "").lower() in ("true", "1"):
            pytest.fail(f"Prometheus is required under CI=true: {problem}")
        print(f"\n!!! SKIPPING PROMETHEUS TESTS: {problem} !!!\n", file=sys.stderr)
        pytest.skip(problem)
    return found  # type: ignore[return-value]


class Prometheus:
    def __init__(self, port: int) -> None:
        self.base = f"http://127.0.0.1:{port}/api/v1"

    def get(self, endpoint: str, **params: str) -> dict:
        url = f"{self.base}/{endpoint}?{urllib.parse.urlencode(params)}"
        with urllib.request.urlopen(url, timeout=10) as r:
            body = json.load(r)
        assert body["status"] == "success", body
        return body["data"]

    def query(self, expr: str) -> List[dict]:
        data = self.get("query", query=expr)
        assert data["resultType"] == "vector", (expr, data)
        return data["result"]

    def values(self, expr: str) -> List[float]:
        return [float(s["value"][1]) for s in self.query(expr)]


def wait_for(what: str, cond: Callable[[], bool], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.2)


@contextmanager
def prometheus(exe: str, work: Path, target: str) -> Iterator[Prometheus]:
    """Prometheus scraping `target` every second, stopped (and waited for) on the way out."""
    work.mkdir()
    config = work / "prometheus.yml"
    config.write_text(
        "global: {scrape_interval: 1s, scrape_timeout: 1s, evaluation_interval: 1s}\n"
        "scrape_configs:\n"
        f"  - job_name: bicache\n    static_configs: [{{targets: ['{target}']}}]\n"
    )
    port = free_port()
    log = open(work / "prometheus.log", "wb")
    proc = subprocess.Popen(
        [
            exe,
            f"--config.file={config}",
            f"--storage.tsdb.path={work / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        prom = Prometheus(port)

        def target_up() -> bool:
            if proc.poll() is not None:
                raise AssertionError(f"prometheus exited: {(work / 'prometheus.log').read_text()}")
            try:
                targets = prom.get("targets")["activeTargets"]
            except OSError:
                return False
            return [t["health"] for t in targets] == ["up"]

        wait_for("Prometheus to scrape the mount", target_up)
        yield prom
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def dashboard_queries() -> List[Tuple[str, str, str]]:
    """(panel title, panel unit, query with Grafana's variables filled in), every target."""
    dash = json.loads(DASHBOARD.read_text())
    out = []
    for panel in dash["panels"]:
        for target in panel["targets"]:
            expr = target["expr"]
            for var, value in GRAFANA_VARS.items():
                expr = expr.replace(var, value)
            assert "$" not in expr, f"{panel['title']}: unknown variable in {expr}"
            out.append((panel["title"], panel["fieldConfig"]["defaults"]["unit"], expr))
    return out


def monitoring_section() -> str:
    text = CLUSTER.read_text()
    start = text.index("### Prometheus")
    end = text.find("\n## ", start)
    return text[start : end if end >= 0 else len(text)]


def cluster_queries() -> List[str]:
    """The PromQL of CLUSTER.md's Prometheus section: its paragraphs indented as code
    (outside the fenced YAML), one query each."""
    text = re.sub(r"```.*?```", "", monitoring_section(), flags=re.S)
    queries = [
        " ".join(line.strip() for line in para.splitlines())
        for para in re.split(r"\n\s*\n", text)
        if para.strip() and all(line.startswith("    ") for line in para.splitlines())
    ]
    assert len(queries) >= 2 and all("bicache_" in q for q in queries), queries
    return queries


def test_prometheus_scrapes_the_mount_and_every_documented_query_evaluates(
    dataset: Dataset, tmp_path: Path, opts: dict, prometheus_bins: Tuple[str, str]
) -> None:
    port = free_port()
    with bicache.mount(dataset.root, chunk_size="64KiB", passthrough=False, metrics=port, **opts) as m:
        with prometheus(prometheus_bins[0], tmp_path / "prom", f"127.0.0.1:{port}") as prom:
            for _ in range(2):  # cold, then warm from RAM (the page cache dropped between)
                read_and_drop(m.path, dataset.files)
            stats = m.stats()
            # Nothing reads any more: wait for a scrape made after the last read.
            wait_for(
                "a scrape after the reads",
                lambda: prom.values("bicache_cache_hits_total{tier='ram'}") == [stats["ram"]["hits"]],
            )

            # What Prometheus stored is what stats.json says.
            assert prom.values("bicache_source_read_bytes_total") == [stats["source"]["bytes"]]
            assert stats["source"]["bytes"] >= dataset.total
            assert prom.values("bicache_cache_misses_total{tier='ram'}") == [stats["ram"]["misses"]]
            assert prom.values("bicache_cache_held_bytes{tier='ram'}") == [stats["ram"]["bytes"]]
            assert prom.values("bicache_metadata_entries") == [stats["meta"]["entries"]]

            # Every panel of the dashboard gives a series for this mount; its values are
            # numbers in the panel's unit (NaN where a rate divides 0 by 0: no look-ups).
            queries = dashboard_queries()
            assert len(queries) >= 10
            by_title: Dict[str, List[float]] = {}
            for title, unit, expr in queries:
                got = prom.values(expr)
                assert got, f"dashboard panel {title!r}: no series for {expr}"
                for v in got:
                    assert math.isnan(v) or v >= 0, (title, expr, v)
                    if unit == "percentunit" and not math.isnan(v):
                        assert v <= 1.0 + 1e-9, (title, expr, v)
                by_title.setdefault(title, []).extend(got)
            # The reads were within the 30 s window: the source and RAM rates show them.
            assert max(by_title["Bytes pulled from the shared filesystem"]) > 0
            served = [v for v in by_title["Chunk look-ups served without the source"] if not math.isnan(v)]
            assert served and 0 < served[0] < 1, served  # the warm pass hit, the cold one missed
            assert any(v > 0 for v in by_title["Cache held and budget"])
            latency = prom.query(
                "histogram_quantile(0.99, sum by (le, tier) "
                "(rate(bicache_read_duration_seconds_bucket[30s])))"
            )
            tiers = {s["metric"]["tier"] for s in latency if s["value"][1] != "NaN"}
            assert {"ram", "source"} <= tiers, latency

            # And the queries CLUSTER.md gives.
            for expr in cluster_queries():
                got = prom.values(expr)
                assert got, f"CLUSTER.md query gives no series: {expr}"
                assert all(math.isnan(v) or v >= 0 for v in got), (expr, got)
            assert prom.values("sum(rate(bicache_source_read_bytes_total[5m]))")[0] > 0


def test_cluster_md_scrape_configs_pass_promtool(
    tmp_path: Path, prometheus_bins: Tuple[str, str]
) -> None:
    blocks = re.findall(r"```yaml\n(.*?)```", monitoring_section(), flags=re.S)
    assert len(blocks) >= 2, "CLUSTER.md's Prometheus section lost its scrape configs"
    checked = 0
    for i, block in enumerate(blocks):
        if "kubernetes_sd_configs" in block:
            # Debian's Prometheus is built without Kubernetes service discovery, so its
            # promtool cannot load this one (it says so: field not found).
            continue
        path = tmp_path / f"config{i}.yml"
        path.write_text(block)
        r = subprocess.run([prometheus_bins[1], "check", "config", str(path)], capture_output=True, text=True)
        assert r.returncode == 0, f"promtool check config failed:\n{block}\n{r.stdout}{r.stderr}"
        checked += 1
    assert checked >= 1
