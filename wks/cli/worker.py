"""`wks worker [--group state|backup] [--burst]`: run consumer groups (every group by default)."""

from __future__ import annotations

import argparse
import asyncio

from loguru import logger
from prometheus_client import start_http_server

from wks import metrics
from wks.cli.runtime import open_runtime, supervise
from wks.cli.services import GROUP_SERVICES, RETENTION
from wks.config import Settings


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("worker", help="run consumer-group workers")
    p.add_argument("--group", action="append", choices=sorted(GROUP_SERVICES),
                   help="a group to run (repeatable); every group when none is named. The "
                   "trimmer (retention) runs in every worker, whichever groups it runs")
    p.add_argument("--burst", action="store_true",
                   help="exit once the streams are drained instead of waiting for more")
    p.add_argument("--metrics-port", type=int, default=0, metavar="PORT",
                   help="serve Prometheus metrics on WKS_HOST:PORT (0, the default: off)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace, settings: Settings) -> int:
    return asyncio.run(_main(args, settings))


async def _main(args: argparse.Namespace, settings: Settings) -> int:
    # the trimmer goes wherever groups run: a deployment that runs one worker per group
    # still trims its streams (one pass at a time across workers, under lock `trim`)
    groups = sorted({*(args.group or GROUP_SERVICES), RETENTION})
    if args.metrics_port:
        # the consumer metrics live in this process: Prometheus scrapes each worker itself
        server, _ = start_http_server(args.metrics_port, settings.host,
                                      registry=metrics.REGISTRY)
        logger.info("metrics on http://{}:{}/metrics", settings.host, args.metrics_port)
        try:
            return await _serve(args, settings, groups)
        finally:
            server.shutdown()
    return await _serve(args, settings, groups)


async def _serve(args: argparse.Namespace, settings: Settings, groups: list[str]) -> int:
    async with open_runtime(settings) as rt:
        logger.info("worker for groups {} on {}", groups, rt.url)
        services = {g: GROUP_SERVICES[g](rt, burst=args.burst) for g in groups}
        return await supervise(services, settings.shutdown_grace)
