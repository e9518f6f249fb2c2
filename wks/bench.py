"""Figures for `wks bench`: percentiles, rates, the report's table and the issue's rulers.

Pure helpers (no I/O besides version probes); the phases that drive the producer and the
consumers live in `wks.cli.bench_phases`.
"""

from __future__ import annotations

import platform
import sqlite3
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any

# What the targets are measured against (issue 6): ratios are taken against baselines run in
# the same bench, never against these constants; these are printed for orientation only.
TARGETS = {
    "producer_vs_pipeline": 5.0,
    "fold_vs_naive": 1.2,
    "latency_p99_ms_at_1000": 5.0,
    "latency_p99_ms_at_20000": 50.0,
    "replay_vs_fold": 1.0,
    "api_reads_per_s": 3000.0,
    "api_p99_ms_at_1000": 20.0,
}


def percentile(sorted_values: list[float], q: float) -> float:
    """The `q` quantile (0..1) of already-sorted values, nearest-rank; 0.0 when empty."""
    if not sorted_values:
        return 0.0
    rank = max(1, min(len(sorted_values), int(-(-q * len(sorted_values) // 1))))
    return sorted_values[rank - 1]


def latency_summary(seconds: list[float], rate: float, **extra: Any) -> dict[str, Any]:
    """p50/p99/p99.9/max in milliseconds of latencies given in seconds."""
    values = sorted(seconds)
    out: dict[str, Any] = {
        "rate": rate,
        "samples": len(values),
        "p50": round(percentile(values, 0.50) * 1000, 3),
        "p99": round(percentile(values, 0.99) * 1000, 3),
        "p999": round(percentile(values, 0.999) * 1000, 3),
        "max": round((values[-1] if values else 0.0) * 1000, 3),
    }
    out.update(extra)
    return out


def eps(count: int, seconds: float) -> float:
    """Events per second, rounded; 0.0 when nothing was timed."""
    return round(count / seconds, 1) if seconds > 0 else 0.0


def ratio(a: float, b: float) -> float | None:
    return round(a / b, 2) if b else None


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def local_versions() -> dict[str, Any]:
    """Python, SQLite and the client libraries in use (Redis's comes from the server)."""
    return {
        "python": platform.python_version(),
        "sqlite": sqlite3.sqlite_version,
        "redis_py": _version("redis"),
        "hiredis": _version("hiredis"),
        "msgspec": _version("msgspec"),
        "aiosqlite": _version("aiosqlite"),
        "platform": platform.platform(terse=True),
        "machine": platform.machine(),
    }


def _cores(cpu: dict[str, Any]) -> str:
    """"1.05 + 0.2 cores": this process's, then the Redis server's (when it says)."""
    return f"{cpu.get('process_cores')} + {cpu.get('redis_cores')} cores"


@dataclass
class Report:
    """Everything `wks bench` measured, as the JSON object it prints."""

    data: dict[str, Any] = field(default_factory=dict)

    def set(self, key: str, value: Any) -> None:
        self.data[key] = value

    def table(self) -> str:
        """A readable summary of the figures, one per line."""
        d = self.data
        base = d.get("baseline", {})
        rat = d.get("ratios", {})
        rows: list[tuple[str, str, str]] = []

        def add(label: str, value: Any, note: str = "") -> None:
            if value is None:
                return
            text = f"{value:,.0f}" if isinstance(value, int | float) else str(value)
            rows.append((label, text, note))

        add("events / executions", f"{d.get('events', 0):,} / {d.get('executions', 0):,}")
        add("producer events/s", d.get("producer_eps"), f"mode {d.get('publish_mode')}")
        add("  redis-py pipelined XADD", base.get("xadd_pipeline_eps"),
            f"ratio {rat.get('producer_vs_pipeline')}x (target >= 5x)")
        add("fold events/s (1 consumer)", d.get("fold_eps"), "SQLite FULL + event_log + mirror")
        add("  naive consumer", base.get("naive_fold_eps"),
            f"ratio {rat.get('fold_vs_naive')}x (target >= 1.2x)")
        for label, cpu in (("  CPU us/event, fold", d.get("fold_cpu")),
                           ("  CPU us/event, naive", base.get("naive_fold_cpu"))):
            if cpu:
                add(label, f"{cpu['process_us_per_event']} + Redis {cpu['redis_us_per_event']}",
                    _cores(cpu))
        if "fold2_eps" in d:
            add("fold events/s (2 processes)", d.get("fold2_eps"),
                f"ratio {rat.get('fold2_vs_fold')}x, state equal: {d.get('fold2_correct')}")
        add("replay events/s", d.get("replay_eps"), f"ratio {rat.get('replay_vs_fold')}x fold")
        if d.get("history_events"):
            add("latency history", f"{d['history_events']:,} events / "
                f"{d['history_executions']:,} executions", "events sent to them at random")
        naive_lat = base.get("naive_latencies", [])
        vs_naive = rat.get("latencies_p99_vs_naive", [])
        for i, lat in enumerate(d.get("latencies", [])):
            cpu = lat.get("cpu")
            add(f"publish->applied @ {lat['rate']:,.0f}/s",
                f"p50 {lat['p50']} ms  p99 {lat['p99']} ms  p99.9 {lat['p999']} ms",
                f"{lat['samples']} samples" + (f", {_cores(cpu)}" if cpu else ""))
            if i < len(naive_lat):
                nl = naive_lat[i]
                add(f"  naive consumer @ {nl['rate']:,.0f}/s",
                    f"p50 {nl['p50']} ms  p99 {nl['p99']} ms  p99.9 {nl['p999']} ms",
                    f"ratio p99 {vs_naive[i] if i < len(vs_naive) else None}x")
        floor = d.get("sqlite_commit_ms")
        if floor:
            add("  bare SQLite FULL commit", f"p50 {floor['p50']} ms  p99 {floor['p99']} ms",
                "the disk's floor")
        api = d.get("api")
        if api:
            add("API state reads/s", api.get("reads_per_s"), f"p99 {api.get('p99_ms')} ms")
            if api.get("paced"):
                p = api["paced"]
                add(f"  API @ {p['rate']:,.0f}/s", f"p50 {p['p50']} ms  p99 {p['p99']} ms")
        v = d.get("versions", {})
        add("versions", f"Python {v.get('python')}, Redis {v.get('redis')}, "
                        f"SQLite {v.get('sqlite')}")
        width = max(len(r[0]) for r in rows)
        vwidth = max(len(r[1]) for r in rows)
        return "\n".join(f"{a:<{width}}  {b:>{vwidth}}  {c}".rstrip() for a, b, c in rows)
