"""The Grafana provisioning: the datasource and dashboard folder match the compose mounts, and
the dashboard is well formed and shows what operators asked for."""

from __future__ import annotations

import json
from pathlib import PurePosixPath

import pytest

from tests.ops import files

PROVISIONING = files.OPS / "grafana" / "provisioning"

# what the dashboard must show -> a query fragment that shows it
REQUIRED = {
    "events/s by type": "sum by (type) (rate(wks_events_total",
    "fold latency": "wks_fold_batch_seconds_bucket",
    "lag per group": "max by (group) (wks_group_lag)",
    "pending per group": "max by (group) (wks_group_pending)",
    "dead letters": "wks_dead_letters_total",
    "executions by status": "max by (status) (wks_executions)",
    "backup age": "time() - max(wks_backup_last_success_timestamp_seconds)",
    "backup size": "wks_backup_size_bytes",
    "backup duration": "wks_backup_duration_seconds",
    "HTTP rate by route": "sum by (route) (rate(wks_http_requests_total",
    "HTTP latency by route": "sum by (le, route) (rate(wks_http_request_duration_seconds_bucket",
    "Redis health": "wks_redis_up",
}


@pytest.fixture(scope="module")
def board() -> dict:
    boards = sorted(files.DASHBOARDS.glob("*.json"))
    assert len(boards) == 1
    return json.loads(boards[0].read_text())


def mounts(service: str) -> dict[str, str]:
    compose = files.load_compose({"JWT_SECRET": "x" * 64})
    out = {}
    for volume in compose["services"][service]["volumes"]:
        source, target = volume.split(":")[:2]
        out[target] = source
    return out


def test_provisioning_matches_the_compose_mounts() -> None:
    """Grafana loads the provisioning folder and the dashboards from where compose mounts them,
    and the datasource points at the compose prometheus service."""
    grafana = mounts("grafana")
    assert grafana["/etc/grafana/provisioning"] == "./ops/grafana/provisioning"
    provider = files.load_yaml(PROVISIONING / "dashboards" / "wks.yml")["providers"][0]
    folder = provider["options"]["path"]
    assert grafana[folder] == "./ops/grafana/dashboards"
    compose = files.load_compose({"JWT_SECRET": "x" * 64})
    env = compose["services"]["grafana"]["environment"]
    home = env["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert (files.DASHBOARDS / PurePosixPath(home).relative_to(folder)).exists()
    source = files.load_yaml(PROVISIONING / "datasources" / "prometheus.yml")["datasources"][0]
    assert source["type"] == "prometheus"
    assert source["url"] == "http://prometheus:9090"
    assert "prometheus" in compose["services"]


def test_dashboard_is_well_formed(board: dict) -> None:
    """Unique panel ids, a 24-column grid without overlaps, every query on the Prometheus
    datasource variable."""
    panels = board["panels"]
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids))
    taken: set[tuple[int, int]] = set()
    for panel in panels:
        pos = panel["gridPos"]
        assert pos["x"] >= 0
        assert pos["x"] + pos["w"] <= 24
        cells = {(x, y) for x in range(pos["x"], pos["x"] + pos["w"])
                 for y in range(pos["y"], pos["y"] + pos["h"])}
        assert not cells & taken, f"panel {panel['title']!r} overlaps another"
        taken |= cells
        for target in panel.get("targets", []):
            assert target["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert variables["datasource"]["query"] == "prometheus"
    assert board["uid"]


def test_dashboard_shows_what_operators_need(board: dict) -> None:
    """Events by type, fold latency, lag/pending per group, dead letters, executions by
    status, backup age/size/duration, HTTP rate and latency by route, and Redis health."""
    queries = "\n".join(expr for _, _, expr in files.dashboard_targets())
    missing = [what for what, fragment in REQUIRED.items() if fragment not in queries]
    assert not missing
