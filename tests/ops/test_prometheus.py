"""The Prometheus files: promtool accepts the config and rules, the alert unit tests pass, and
every alert is documented, linked to the runbook and tested."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import yaml

from tests.ops import files


def run(promtool: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([promtool, *args], capture_output=True, text=True, timeout=120,
                          cwd=files.ROOT)


def test_promtool_check_config(promtool: str) -> None:
    """`promtool check config` accepts prometheus.yml and the rule file it loads."""
    done = run(promtool, "check", "config", str(files.PROMETHEUS))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "1 rule files found" in done.stdout


def test_promtool_check_rules(promtool: str) -> None:
    """`promtool check rules` accepts alerts.yml."""
    done = run(promtool, "check", "rules", str(files.ALERTS))
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"{len(files.alert_rules())} rules found" in done.stdout


def test_promtool_test_rules(promtool: str) -> None:
    """The alert unit tests (alerts_test.yml) pass."""
    done = run(promtool, "test", "rules", str(files.ALERTS_TEST))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS" in done.stdout


def test_promtool_test_rules_catches_a_wrong_expectation(promtool: str, tmp_path: Path) -> None:
    """The unit tests can fail: a changed expected annotation is reported."""
    text = files.ALERTS_TEST.read_text().replace(
        'summary: "3 executions are running', 'summary: "4 executions are running')
    (tmp_path / "alerts.yml").write_text(files.ALERTS.read_text())
    (tmp_path / "alerts_test.yml").write_text(text)
    done = subprocess.run([promtool, "test", "rules", "alerts_test.yml"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode != 0
    assert "WksStaleRunningExecutions" in done.stdout + done.stderr


def test_dashboard_queries_parse(promtool: str, tmp_path: Path) -> None:
    """Every Grafana query is valid PromQL (checked as recording rules by promtool)."""
    targets = files.dashboard_targets()
    assert targets, "no dashboard queries found"
    rules = {"groups": [{"name": "dashboard", "rules": [
        {"record": f"dashboard:query_{i}", "expr": files.grafana_to_promql(expr)}
        for i, (_, _, expr) in enumerate(targets)
    ]}]}
    path = tmp_path / "dashboard_rules.yml"
    path.write_text(yaml.safe_dump(rules))
    done = run(promtool, "check", "rules", str(path))
    assert done.returncode == 0, done.stdout + done.stderr


REQUIRED_ALERTS = {
    "consumer lag growing": "WksConsumerLagGrowing",
    "pending entries old": "WksPendingEntriesOld",
    "dead letters arriving": "WksDeadLetters",
    "no successful backup in 1.1 x interval": "WksBackupMissing",
    "backup failed": "WksBackupFailed",
    "verify failed": "WksBackupVerifyFailed",
    "Redis down": "WksRedisDown",
    "SQLite errors": "WksSqliteErrors",
    "5xx rate": "WksHttp5xxRate",
    "stale running executions": "WksStaleRunningExecutions",
}


def test_required_alerts_exist() -> None:
    """Every situation the operators asked for has an alert."""
    names = {rule["alert"] for rule in files.alert_rules()}
    missing = {what: name for what, name in REQUIRED_ALERTS.items() if name not in names}
    assert not missing


@pytest.mark.parametrize("rule", files.alert_rules(), ids=lambda r: r["alert"])
def test_alert_is_documented_and_linked(rule: dict) -> None:
    """Each alert has a severity, summary, description and a runbook_url whose anchor exists."""
    assert rule["labels"]["severity"] in ("warning", "critical")
    notes = rule["annotations"]
    assert notes["summary"].strip()
    assert notes["description"].strip()
    path, _, anchor = notes["runbook_url"].partition("#")
    assert path == "docs/runbook.md"
    assert anchor
    assert anchor in files.anchors(files.RUNBOOK.read_text()), f"no section #{anchor}"


def test_every_alert_has_a_firing_unit_test() -> None:
    """alerts_test.yml makes every alert fire at least once (and expects its annotations)."""
    tests = files.load_yaml(files.ALERTS_TEST)["tests"]
    firing = {case["alertname"] for t in tests for case in t["alert_rule_test"]
              if case.get("exp_alerts")}
    quiet = {case["alertname"] for t in tests for case in t["alert_rule_test"]
             if not case.get("exp_alerts")}
    names = {rule["alert"] for rule in files.alert_rules()}
    assert names <= firing, f"alerts never seen firing: {names - firing}"
    assert names <= quiet, f"alerts never checked quiet: {names - quiet}"
    for t in tests:
        for case in t["alert_rule_test"]:
            for alert in case.get("exp_alerts") or []:
                assert set(alert["exp_annotations"]) >= {"summary", "description",
                                                         "runbook_url"}


def test_prometheus_scrapes_what_compose_runs() -> None:
    """The scrape targets are the compose api service's port and the workers' metrics port."""
    config = files.load_yaml(files.PROMETHEUS)
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert jobs["wks-api"]["static_configs"][0]["targets"] == ["api:3000"]
    dns = jobs["wks-worker"]["dns_sd_configs"][0]
    assert dns["names"] == ["worker"]
    assert dns["port"] == 9464
    compose = files.load_compose({"JWT_SECRET": "x" * 64})
    worker = compose["services"]["worker"]["command"]
    assert worker[worker.index("--metrics-port") + 1] == str(dns["port"])
    assert "3000:3000" in compose["services"]["api"]["ports"][0]
