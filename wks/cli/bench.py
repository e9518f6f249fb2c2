"""`wks bench`: measure the producer, the fold, replay, latency (and the API) in one run.

Runs against the configured Redis under a private random key prefix (every key it made is
deleted afterwards) and fresh SQLite files in a temporary directory. Each figure comes with
its ruler measured in the same run (redis-py pipelined XADD, the naive consumer), because this
kind of machine is too noisy to compare against numbers taken another day.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import sys
import tempfile
import uuid
from dataclasses import replace
from pathlib import Path
from typing import Any

from wks.bench import TARGETS, Report, local_versions, ratio
from wks.cli import bench_phases as phases
from wks.config import Settings
from wks.redis import REDIS_DOWN, client, server_info


def _rates(text: str) -> list[float]:
    try:
        rates = [float(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a rate or comma-separated rates: {text!r}") \
            from None
    if not rates or any(r <= 0 for r in rates):
        raise argparse.ArgumentTypeError(f"rates must be positive: {text!r}")
    return rates


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "bench", help="measure publish, fold, replay and latency against the configured Redis",
        description="Measure the producer library, the state consumer, replay and "
        "publish-to-applied latency against the configured Redis (private key prefix, deleted "
        "afterwards) and fresh SQLite files; each against a baseline taken in the same run.",
    )
    p.add_argument("--events", type=int, default=100_000, metavar="N",
                   help="events to publish and fold (default 100000)")
    p.add_argument("--executions", type=int, default=10_000, metavar="M",
                   help="executions the events are spread over (default 10000)")
    p.add_argument("--rate", type=_rates, default=[1000.0, 20000.0], metavar="R[,R...]",
                   help="events/s for the latency phase; several comma-separated rates are "
                   "measured one after the other (default 1000,20000)")
    p.add_argument("--latency-seconds", type=float, default=3.0, metavar="S",
                   help="how long each latency rate runs (default 3)")
    p.add_argument("--history", type=int, default=0, metavar="H",
                   help="before the latency phases, fold H events over H/10 executions into "
                   "their files, and send their events to those executions at random, as a "
                   "database that has run a while sees them (default 0: new executions)")
    p.add_argument("--second-process", action="store_true",
                   help="also fold with two consumer processes and check the state is equal")
    p.add_argument("--api", action="store_true",
                   help="also measure authenticated state reads through the HTTP API")
    p.add_argument("--api-seconds", type=float, default=3.0, metavar="S",
                   help="how long each API measurement runs (default 3)")
    p.add_argument("--json", action="store_true",
                   help="end the output with one JSON object holding every figure")
    p.add_argument("--dir", type=Path, default=None,
                   help="where the scratch SQLite files go (default: a temporary directory)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace, settings: Settings) -> int:
    if args.events < 1 or args.executions < 1:
        print("wks bench: --events and --executions must be at least 1", file=sys.stderr)
        return 2
    if args.history < 0:
        print("wks bench: --history must be 0 or more", file=sys.stderr)
        return 2
    if args.dir is not None and not args.dir.is_dir():
        print(f"wks bench: --dir {args.dir}: no such directory", file=sys.stderr)
        return 2
    report = asyncio.run(_bench(args, settings))  # errors: one line (wks.cli.__main__)
    if args.json:
        print(json.dumps(report.data, indent=2))
    else:
        print(report.table())
    return 0


async def _bench(args: argparse.Namespace, settings: Settings) -> Report:
    prefix = f"bench{uuid.uuid4().hex[:10]}"
    workdir = Path(tempfile.mkdtemp(prefix="wks-bench-", dir=args.dir))
    url = settings.effective_redis_url()
    s = replace(settings, prefix=prefix, db_path=workdir / "state.db", redis_url=url)
    redis = client(url, timeout=60.0)
    report = Report()
    try:
        info = await server_info(redis)
        b = phases.Bench(s, redis, workdir, run=f"b{uuid.uuid4().hex[:6]}")
        report.set("events", args.events)
        report.set("executions", args.executions)
        prod = await phases.producer_phase(b, args.events, args.executions)
        fold = await phases.fold_phase(b, prod["published"])
        naive = await phases.naive_phase(b, prod["published"])
        replay = await phases.replay_phase(b, prod["published"])
        extra: dict[str, Any] = {}
        if args.second_process:
            from wks.cli.bench_fold2 import second_process_phase

            extra = await second_process_phase(b, prod["published"])
        if args.history:
            extra.update(await phases.history_phase(b, args.history))
        # the naive consumer at every rate, right after the real one: the same hour's ruler
        latencies, naive_latencies = [], []
        for r in args.rate:
            latencies.append(await phases.latency_phase(b, r, args.latency_seconds))
            naive_latencies.append(
                await phases.latency_phase(b, r, args.latency_seconds, naive=True))
        floor = await asyncio.to_thread(phases.commit_floor, workdir / "floor.db")
        api: dict[str, Any] | None = None
        if args.api:
            from wks.cli.bench_api import api_phase  # the HTTP stack only when asked for

            api = await api_phase(b, seconds=args.api_seconds)
        naive["naive_latencies"] = naive_latencies
        _fill(report, prod, fold, naive, replay, extra, latencies, api)
        report.set("sqlite_commit_ms", floor)
        report.set("versions", {**local_versions(), "redis": info.version_text})
        report.set("targets", TARGETS)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
        try:
            await _cleanup(redis, prefix)
        except REDIS_DOWN:
            pass  # nothing was written, or the keys go with the server that went away
        finally:
            await redis.aclose()
    return report


def _fill(
    report: Report, prod: dict[str, Any], fold: dict[str, Any], naive: dict[str, Any],
    replay: dict[str, Any], extra: dict[str, Any], latencies: list[dict[str, Any]],
    api: dict[str, Any] | None,
) -> None:
    for key in ("published", "producer_eps", "publish_mode"):
        report.set(key, prod[key])
    for key in ("fold_eps", "folded", "folded_executions", "fold_batches", "dead", "fold_cpu"):
        report.set(key, fold[key])
    report.set("replay_eps", replay["replay_eps"])
    report.set("replayed", replay["replayed"])
    report.set("latency_ms", latencies[0])
    report.set("latencies", latencies)
    report.set("baseline", {
        "xadd_pipeline_eps": prod["xadd_pipeline_eps"],
        "naive_fold_eps": naive["naive_fold_eps"],
        "naive_fold_cpu": naive["naive_fold_cpu"],
        "naive_latency_ms": naive["naive_latencies"][0],
        "naive_latencies": naive["naive_latencies"],
    })
    vs_naive = [ratio(ours["p99"], theirs["p99"])
                for ours, theirs in zip(latencies, naive["naive_latencies"], strict=True)]
    ratios = {
        "producer_vs_pipeline": ratio(prod["producer_eps"], prod["xadd_pipeline_eps"]),
        "fold_vs_naive": ratio(fold["fold_eps"], naive["naive_fold_eps"]),
        "replay_vs_fold": ratio(replay["replay_eps"], fold["fold_eps"]),
        "latency_p99_vs_naive": vs_naive[0],  # the first rate's, as before there were several
        "latencies_p99_vs_naive": vs_naive,
    }
    report.data.update(extra)  # fold2_* (--second-process), history_* (--history)
    if "fold2_eps" in extra:
        ratios["fold2_vs_fold"] = ratio(extra["fold2_eps"], fold["fold_eps"])
    report.set("ratios", ratios)
    if api is not None:
        report.set("api", api)


async def _cleanup(redis: Any, prefix: str) -> None:
    """Delete every key under the bench's private prefix."""
    batch: list[bytes] = []
    async for key in redis.scan_iter(match=f"{prefix}:*", count=1000):
        batch.append(key)
        if len(batch) >= 1000:
            await redis.unlink(*batch)
            batch = []
    if batch:
        await redis.unlink(*batch)
