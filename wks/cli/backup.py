"""`wks backup create|list|verify ID`: backups from the command line.

`create` takes the backup in this process, under the same `backup` lock the workers use (so
it works with no worker running), and publishes the result like a worker would.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
import uuid

from consumers.backup import completed_event, publish_result
from wks import backup_job
from wks import backup_log as log
from wks.cli.runtime import open_runtime
from wks.config import Settings
from wks.errors import BackupError
from wks.events import BackupFailed
from wks.store import Store


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("backup", help="create, list or verify backups")
    actions = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    create = actions.add_parser("create", help="take a verified backup now")
    create.add_argument("--type", dest="backup_type", default="manual",
                        choices=("manual", "scheduled", "pre-migration"))
    create.add_argument("--wait", type=float, default=None,
                        help="seconds to wait for the backup lock (default: lockTtl)")
    create.set_defaults(func=run_create)
    listing = actions.add_parser("list", help="list backups, newest first")
    listing.add_argument("--json", action="store_true", help="print JSON")
    listing.set_defaults(func=run_list)
    verify = actions.add_parser("verify", help="verify one backup (exit 1 if invalid)")
    verify.add_argument("backup_id", type=int, metavar="ID")
    verify.set_defaults(func=run_verify)


def run_create(args: argparse.Namespace, settings: Settings) -> int:
    return asyncio.run(_create(args, settings))


async def _create(args: argparse.Namespace, settings: Settings) -> int:
    async with open_runtime(settings) as rt:
        store = await Store.open(settings.db_path)
        try:
            rid = f"cli-{uuid.uuid4().hex[:12]}"
            try:
                row = await backup_job.locked_backup(store, rt.redis, settings,
                                                     backup_type=args.backup_type,
                                                     request_id=rid, wait=args.wait)
            except BackupError as exc:
                await publish_result(rt.redis, settings.keys.results_stream, BackupFailed(
                    ts=int(time.time() * 1000), error=str(exc), backup_type=args.backup_type,
                    request_id=rid))
                raise
            await publish_result(rt.redis, settings.keys.results_stream,
                                 completed_event(row, rid))
        finally:
            await store.close()
    print(f"backup {row['id']} completed: {row['file_path']} "
          f"({row['file_size_bytes']} bytes, sha256 {row['checksum']})")
    return 0


def run_list(args: argparse.Namespace, settings: Settings) -> int:
    return asyncio.run(_list(args, settings))


async def _list(args: argparse.Namespace, settings: Settings) -> int:
    store = await Store.open(settings.db_path)
    try:
        rows = await log.listing(store)
    finally:
        await store.close()
    if args.json:
        print(json.dumps([log.public(r) for r in rows], indent=2))
        return 0
    print(f"{'ID':>5}  {'STATUS':<11} {'TYPE':<13} {'COMPLETED':<24} {'BYTES':>12}  FILE")
    for r in rows:
        name = (r["file_path"] or "").rsplit("/", 1)[-1]
        print(f"{r['id']:>5}  {r['status']:<11} {r['backup_type']:<13} "
              f"{r['completed_at'] or '-':<24} {r['file_size_bytes'] or 0:>12}  {name}")
    return 0


def run_verify(args: argparse.Namespace, settings: Settings) -> int:
    return asyncio.run(_verify(args, settings))


async def _verify(args: argparse.Namespace, settings: Settings) -> int:
    store = await Store.open(settings.db_path)
    try:
        verdict = await backup_job.verify_backup(store, settings, args.backup_id)
    finally:
        await store.close()
    checks = ", ".join(f"{k} {'ok' if v else 'FAILED'}" for k, v in verdict.checks.items())
    print(f"backup {args.backup_id}: {'valid' if verdict.valid else 'INVALID'}: "
          f"{verdict.message} ({checks})")
    return 0 if verdict.valid else 1
