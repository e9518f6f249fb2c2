"""Every metric the alerts and the Grafana dashboard query is served: by the real API's
/metrics and by `wks worker --metrics-port` (the two jobs Prometheus scrapes), with the label
names the queries use."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections.abc import AsyncIterator

import aiohttp
import pytest

from tests.helpers import wait_for
from tests.ops import files
from wks import metrics
from wks.config import Settings
from wks.redis import free_port

# labels Prometheus adds at scrape time, and the bucket bound of histograms
SCRAPE_LABELS = {"job", "instance"}
ALWAYS = SCRAPE_LABELS | {"le"}


def declared_labels() -> dict[str, set[str]]:
    """Label names of every wks metric as defined, by each name a query can select.

    A labelled metric shows no sample before its first use, so the text alone cannot tell
    its labels; the definitions in wks.metrics can.
    """
    out: dict[str, set[str]] = {}
    for value in vars(metrics).values():
        name = getattr(value, "_name", None)
        if not isinstance(name, str) or not name.startswith("wks_"):
            continue
        labels = set(getattr(value, "_labelnames", ()))
        kind = getattr(value, "_type", "")
        suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count")}
        for suffix in suffixes.get(kind, ("",)):
            out[name + suffix] = labels | ({"le"} if suffix == "_bucket" else set())
    return out


def problems(exprs: list[tuple[str, str]], served: dict[str, set[str]]) -> list[str]:
    """What the queries use that the scrapes do not offer: names, then label names."""
    defined = declared_labels()
    found = []
    for where, expr in exprs:
        refs = files.metric_refs(expr)
        for name, labels in refs.items():
            if name == "up":
                unknown = labels - SCRAPE_LABELS
            elif name not in served:
                found.append(f"{where}: {name} is not in /metrics")
                continue
            else:
                known = served[name] | defined.get(name, set()) | ALWAYS
                unknown = labels - known
            if unknown:
                found.append(f"{where}: {name} has no label {sorted(unknown)}")
        every = set().union(*(served.get(n, set()) | defined.get(n, set()) for n in refs)) \
            if refs else set()
        unknown = files.grouping_labels(expr) - every - ALWAYS
        if unknown:
            found.append(f"{where}: grouping by missing labels {sorted(unknown)}")
    return found


def queries() -> list[tuple[str, str]]:
    alerts = [(f"alert {rule['alert']}", rule["expr"]) for rule in files.alert_rules()]
    board = [(f"{name} panel {title!r}", expr) for name, title, expr in files.dashboard_targets()]
    return alerts + board


async def fetch(url: str) -> str:
    async with aiohttp.ClientSession() as http, http.get(url) as resp:
        assert resp.status == 200, f"{url}: {resp.status}"
        return await resp.text()


@pytest.fixture
async def api_metrics(aiohttp_server, settings: Settings, r) -> str:
    """/metrics of the real API application after a few requests."""
    from wks.http.app import create_app

    server = await aiohttp_server(create_app(settings, r))
    base = f"http://127.0.0.1:{server.port}"
    async with aiohttp.ClientSession() as http:
        for path in ("/health", "/api/workflow-state/active/list", "/no-such-route"):
            async with http.get(base + path) as resp:
                await resp.read()
    return await fetch(base + "/metrics")


@pytest.fixture
async def worker_metrics(settings: Settings, redis_url: str) -> AsyncIterator[str]:
    """/metrics of a `wks worker --metrics-port` process, as the compose worker runs it."""
    port = free_port()
    env = {
        **os.environ,
        "WKS_REDIS_URL": redis_url,
        "WKS_PREFIX": settings.prefix,
        "WKS_DB_PATH": str(settings.db_path),
        "WKS_BACKUP_DIR": str(settings.backup_dir),
        "WKS_VAR_DIR": str(settings.var_dir),
        "WKS_HOST": "127.0.0.1",
        "WKS_LOG_FORMAT": "json",
        "WKS_JWT_SECRET": settings.jwt_secret or "",
    }
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "wks.cli", "worker", "--metrics-port", str(port), env=env,
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
    )
    url = f"http://127.0.0.1:{port}/metrics"

    async def running() -> str | None:
        assert proc.returncode is None, "the worker exited"
        try:
            text = await fetch(url)
        except aiohttp.ClientError:
            return None
        return text if 'wks_consumer_running{group="state"} 1.0' in text else None

    try:
        yield await wait_for(running, timeout=30, what="the worker's metrics endpoint")
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
        code = await asyncio.wait_for(proc.wait(), timeout=30)
        assert code == 0, (await proc.stderr.read()).decode()[-2000:] if proc.stderr else code


async def test_alert_and_dashboard_metrics_are_served(
    api_metrics: str, worker_metrics: str
) -> None:
    """Each metric (and label) queried by an alert or a panel is in the scraped text of the
    API and the worker, and the worker's text shows its own consumer loops."""
    from_worker = files.exposed(worker_metrics)
    assert "group" in from_worker["wks_consumer_running"]
    served = files.exposed(api_metrics)
    for name, labels in from_worker.items():
        served.setdefault(name, set()).update(labels)
    assert queries()
    assert problems(queries(), served) == []


def test_the_check_catches_unknown_names_and_labels() -> None:
    """A misspelt metric, a label the metric lacks, or a grouping by it is reported."""
    served = {"wks_group_lag": {"group"}}
    found = problems([
        ("a", "wks_group_lagg > 1"),
        ("b", 'wks_group_lag{stream="x"} > 1'),
        ("c", "max by (reason) (wks_group_lag)"),
        ("d", "max by (group, instance) (wks_group_lag) > 1"),
    ], served)
    assert len(found) == 3
    assert found[0].startswith("a: wks_group_lagg")
    assert "stream" in found[1]
    assert "reason" in found[2]
