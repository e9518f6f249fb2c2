"""`wks bench --json` with tiny sizes: the figures are there, positive and consistent."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import redis


def _bench(redis_url: str, tmp_path: Path, *extra: str) -> tuple[dict[str, Any], str]:
    env = {**os.environ, "WKS_REDIS_URL": redis_url, "WKS_LOG_FORMAT": "json",
           "WKS_VAR_DIR": str(tmp_path / "var")}
    env.pop("WKS_PREFIX", None)
    proc = subprocess.run(
        [sys.executable, "-m", "wks.cli", "bench", "--json", "--events", "1200",
         "--executions", "100", "--rate", "400,800", "--latency-seconds", "0.5",
         "--dir", str(tmp_path), *extra],
        env=env, capture_output=True, text=True, timeout=120, cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    start = proc.stdout.index("{")
    return json.loads(proc.stdout[start:]), proc.stderr


def test_bench_json_has_every_figure_and_cleans_up(redis_url: str, tmp_path: Path) -> None:
    """One run reports positive rates, baselines, ratios, latency and versions, folds the
    same state with two processes, then leaves no key and no scratch file behind."""
    out, _ = _bench(redis_url, tmp_path, "--second-process")

    assert out["published"] == 1200
    assert out["folded"] == out["published"]  # every event logged once
    assert out["replayed"] == out["published"]
    assert out["folded_executions"] == 100
    assert out["dead"] == 0
    assert out["fold2_folded"] == out["published"]  # two processes, each entry once
    assert out["fold2_correct"] is True  # same rows as the one-process fold
    assert out["fold2_eps"] > 0
    assert out["publish_mode"] in ("script", "pipeline")
    for key in ("producer_eps", "fold_eps", "replay_eps"):
        assert out[key] > 0, key
    assert out["baseline"]["xadd_pipeline_eps"] > 0
    assert out["baseline"]["naive_fold_eps"] > 0
    assert set(out["ratios"]) >= {"producer_vs_pipeline", "fold_vs_naive", "replay_vs_fold"}
    assert out["ratios"]["fold_vs_naive"] == round(
        out["fold_eps"] / out["baseline"]["naive_fold_eps"], 2)

    lat = out["latency_ms"]
    assert lat["rate"] == 400
    assert lat["samples"] == 200  # every event published in the phase was seen committed
    assert 0 < lat["p50"] <= lat["p99"] <= lat["p999"] <= lat["max"]
    assert [x["rate"] for x in out["latencies"]] == [400, 800]
    naive = out["baseline"]["naive_latency_ms"]
    assert naive["rate"] == 400
    assert naive["samples"] == 200
    # the naive ruler at every rate, each phase seeing only its own events
    assert [(x["rate"], x["samples"]) for x in out["baseline"]["naive_latencies"]] == [
        (400, 200), (800, 400)]
    assert [x["samples"] for x in out["latencies"]] == [200, 400]
    assert len(out["ratios"]["latencies_p99_vs_naive"]) == 2
    assert out["sqlite_commit_ms"]["p50"] > 0
    # CPU per event of each fold and each latency phase (this process, and the Redis server)
    for cpu in (out["fold_cpu"], out["baseline"]["naive_fold_cpu"],
                *(x["cpu"] for x in out["latencies"])):
        assert cpu["process_us_per_event"] > 0
        assert cpu["process_cores"] > 0
        assert cpu["redis_us_per_event"] >= 0  # the test server reports INFO cpu

    versions = out["versions"]
    assert versions["python"].count(".") == 2
    assert versions["redis"]
    assert versions["sqlite"]

    with redis.Redis.from_url(redis_url) as sync:
        assert list(sync.scan_iter(match="bench*", count=1000)) == []
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith("wks-bench-")] == []


def test_bench_api_reads(redis_url: str, tmp_path: Path) -> None:
    """With --api, a real `wks api` process answers authenticated reads without errors."""
    out, _ = _bench(redis_url, tmp_path, "--api", "--api-seconds", "0.5")
    api = out["api"]
    assert api["reads_per_s"] > 0
    assert api["errors"] == 0
    assert 0 < api["p50_ms"] <= api["p99_ms"]
    assert api["paced"]["samples"] == 500
    assert api["paced"]["errors"] == 0


def test_bench_without_redis_fails_with_one_line(tmp_path: Path) -> None:
    """An unreachable Redis is one clear line on stderr and exit code 1, not a traceback."""
    from wks.redis import free_port

    env = {**os.environ, "WKS_REDIS_URL": f"redis://127.0.0.1:{free_port()}/0"}
    proc = subprocess.run(
        [sys.executable, "-m", "wks.cli", "bench", "--events", "10", "--dir", str(tmp_path)],
        env=env, capture_output=True, text=True, timeout=60, cwd=tmp_path,
    )
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("wks bench: cannot reach Redis at redis://127.0.0.1:")
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith("wks-bench-")] == []


def test_bench_with_a_missing_dir_says_so(tmp_path: Path) -> None:
    """--dir that does not exist is named as the fault (it was reported as Redis)."""
    proc = subprocess.run(
        [sys.executable, "-m", "wks.cli", "bench", "--events", "10",
         "--dir", str(tmp_path / "nope")],
        capture_output=True, text=True, timeout=60, cwd=tmp_path,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip() == f"wks bench: --dir {tmp_path / 'nope'}: no such directory"


def test_bench_history_sends_the_latency_events_to_a_history(
    redis_url: str, tmp_path: Path
) -> None:
    """With --history both latency phases still see every event they published committed,
    and the report says how large the history was."""
    out, _ = _bench(redis_url, tmp_path, "--history", "3000")
    assert (out["history_events"], out["history_executions"]) == (3000, 300)
    assert [x["samples"] for x in out["latencies"]] == [200, 400]
    assert [x["samples"] for x in out["baseline"]["naive_latencies"]] == [200, 400]
    assert "fold2_eps" not in out
    assert "fold2_vs_fold" not in out["ratios"]
