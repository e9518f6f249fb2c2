"""`wks replay [--from ID|TIME] [--to ID|TIME] [--execution ID] [--verify] [--out FILE]`.

Rebuild state from the workflow stream into a scratch SQLite store with the same pure merge
the consumers use. Without `--verify` the replayed states are printed as JSON lines (or kept
in `--out FILE`); with `--verify` they are compared with the live `executions` rows and the
exit code is 1 when anything differs. See wks/verify.py for the comparison rules.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path
from typing import Any

from wks.audit import ReplayStats, fold_state, id_text, replay_into, scratch_store
from wks.cli.runtime import open_runtime
from wks.config import Settings
from wks.errors import NotFound, WksError
from wks.events import split_entry_id
from wks.keys import GROUP_STATE
from wks.progress import Progress
from wks.redis import text
from wks.replay import parse_bound
from wks.store import FOLD_BATCH, Store
from wks.stream_stats import group_stats
from wks.verify import Coverage, VerifyReport, coverage, verify


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "replay", help="rebuild state from the workflow stream; --verify diffs it with SQLite",
        description="Fold the workflow stream (XRANGE, a page at a time) into a scratch store. "
        "Bounds are entry ids, epoch milliseconds or ISO-8601 times with a zone; a time bound "
        "selects entries by their arrival (entry id) time, so --to T gives the state as of T.")
    p.add_argument("--from", dest="start", metavar="ID|TIME", help="first entry (inclusive)")
    p.add_argument("--to", dest="end", metavar="ID|TIME", help="last entry (inclusive)")
    p.add_argument("--execution", metavar="ID", help="only this execution")
    p.add_argument("--verify", action="store_true",
                   help="compare with the live executions rows; exit 1 on any difference")
    p.add_argument("--out", type=Path, metavar="FILE",
                   help="keep the replayed store in this new SQLite file")
    p.add_argument("--json", action="store_true", help="print the verify report as JSON")
    p.add_argument("--progress", action="store_true",
                   help="show progress on stderr even when it is not a terminal")
    p.add_argument("--page", type=int, default=FOLD_BATCH,
                   help=f"at most this many entries per XRANGE page and fold transaction "
                        f"(default {FOLD_BATCH}, as `wks worker`'s batches and a restore's "
                        "catch-up; smaller takes less memory, and longer)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace, settings: Settings) -> int:
    try:
        start = parse_bound(args.start) if args.start else "-"
        end = parse_bound(args.end, end=True) if args.end else None
    except ValueError as exc:
        raise WksError(str(exc)) from None
    if end is not None and _reversed(start, end):
        raise WksError(f"--from {args.start} is after --to {args.end}")
    if args.out is not None and args.out.exists():
        raise WksError(f"--out {args.out}: file exists (choose a new path)")
    if args.verify and not settings.db_path.exists():
        raise NotFound(f"no database at {settings.db_path} to verify against")
    if args.page <= 0:
        raise WksError("--page must be positive")
    return asyncio.run(_main(args, settings, start, end))


def _reversed(start: str, end: str) -> bool:
    """Do two XRANGE bounds (entry ids, or - and +) select nothing by their order?"""
    ends = ("-", "+")
    return start not in ends and end not in ends and split_entry_id(start) > split_entry_id(end)


async def _main(args: argparse.Namespace, settings: Settings, start: str, end: str | None) -> int:
    stream = settings.keys.workflow_stream
    async with open_runtime(settings) as rt:
        redis = rt.redis
        if end is None:  # freeze the end: entries arriving during the replay are left out
            last = await redis.xrevrange(stream, count=1)
            end = text(last[0][0]) if last else "+"
        bounded = bool(args.start or args.end)
        total = None if bounded or args.execution else int(await redis.xlen(stream))
        progress = Progress(total, "replay", enabled=True if args.progress else None)
        async with scratch_store(args.out, settings.db_path.parent) as scratch:
            try:
                stats = await replay_into(redis, stream, scratch, start, end,
                                          execution=args.execution, page=args.page,
                                          on_page=progress.update)
            finally:
                progress.close()
            executions = int(await scratch.scalar("SELECT COUNT(*) FROM executions"))
            line = _summary(stats, executions)
            if not args.verify:
                print(line, file=sys.stderr)
                if args.out is not None:
                    print(f"replayed store kept in {args.out}", file=sys.stderr)
                else:
                    await _print_states(scratch)
                if args.execution and not executions:
                    raise NotFound(f"execution {args.execution!r} has no events in that range")
                return 0
            live = await Store.open(settings.db_path)
            try:
                await _warn_lag(redis, stream)
                cov = await coverage(redis, live, stream, start, end, bounded=bounded)
                checking = Progress(executions, "verify", enabled=True if args.progress else None)
                try:
                    report = await verify(live, scratch, cov, execution=args.execution,
                                          on_row=checking.update)
                finally:
                    checking.close()
            finally:
                await live.close()
    _print_report(args, line, stats, cov, report)
    return 0 if report.ok else 1


def _summary(stats: ReplayStats, executions: int) -> str:
    rate = stats.entries / stats.seconds if stats.seconds > 0 else 0.0
    span = f" ({stats.first_entry_id} .. {stats.last_entry_id})" if stats.first_entry_id else ""
    return (f"replay: {stats.entries} entries{span}, {stats.applied} folded, {stats.bad} bad, "
            f"{executions} executions, {stats.seconds:.2f}s ({rate:,.0f} entries/s)")


async def _print_states(scratch: Store) -> None:
    out = sys.stdout
    async for fold in scratch.iter_folds():
        out.write(json.dumps(fold_state(fold), separators=(",", ":")) + "\n")
    out.flush()


async def _warn_lag(redis: Any, stream: str) -> None:
    stats = await group_stats(redis, stream, GROUP_STATE)
    if stats and (stats["pending"] or stats["lag"]):
        print(f"warning: group {GROUP_STATE!r} has {stats['pending']} pending and "
              f"{stats['lag']} undelivered entries; executions they touch may differ until "
              "they are folded", file=sys.stderr)


def _print_report(
    args: argparse.Namespace, line: str, stats: ReplayStats, cov: Coverage, report: VerifyReport
) -> None:
    if args.json:
        print(json.dumps({
            "entries": stats.entries, "folded": stats.applied, "bad": stats.bad,
            "range": [id_text(cov.low), id_text(cov.high)], "complete": cov.complete,
            "summary": report.summary(), "ok": report.ok,
            "differences": [d.to_dict() for d in report.differences],
        }))
        return
    s = report.summary()
    print(line)
    scope = "whole stream" if cov.complete else (
        f"entries {id_text(cov.low)} .. {id_text(cov.high)} (partial: rows outside are only "
        "checked against themselves)")
    print(f"verify over {scope}")
    print(f"verify: {s['compared']} compared, {s['equal']} equal, {s['different']} different, "
          f"{s['partial']} partial-consistent, {s['missingLive']} missing live, "
          f"{s['missingStream']} missing from the stream, {s['outsideRange']} outside the range")
    for diff in report.differences:
        print(f"{diff.kind}  {diff.execution_id}")
        for f in diff.fields:
            print(f"    {f['field']} ({f['source']}): live {f['live']!r}, "
                  f"replayed {f['replayed']!r}")
    hidden = report.different + report.missing_live + report.missing_stream - len(
        report.differences)
    if hidden > 0:
        print(f"... and {hidden} more not listed")
    print("verify: OK" if report.ok else "verify: DIFFERENCES FOUND")
