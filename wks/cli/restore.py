"""`wks restore ID [--yes] [--force]`: put a verified backup back in place (offline).

Verify, safety backup of the current database, atomic swap, then replay the workflow stream
from the backup's safe point with a progress display on stderr. See docs/restore.md.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import Any

from wks.cli.runtime import open_runtime
from wks.config import Settings
from wks.progress import Progress
from wks.restore import restore


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("restore", help="restore a backup over the database (stop workers first)")
    p.add_argument("backup_id", type=int, nargs="?", metavar="ID",
                   help="the backup's id (wks backup list)")
    p.add_argument("--file", metavar="NAME",
                   help="restore this backup file from the backup directory instead of an id "
                   "(when the database and its backup log are lost)")
    p.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    p.add_argument("--force", action="store_true",
                   help="restore even with state consumers running or without a safety backup")
    p.set_defaults(func=run)


def run(args: argparse.Namespace, settings: Settings) -> int:
    if (args.backup_id is None) == (args.file is None):
        print("wks restore: give a backup ID or --file NAME (one of them)", file=sys.stderr)
        return 2
    if not args.yes and not sys.stdin.isatty():
        print("wks restore: refusing without confirmation: stdin is not a terminal "
              "(pass --yes)", file=sys.stderr)
        return 2
    return asyncio.run(_main(args, settings))


def _ask(row: dict[str, Any]) -> bool:
    name = str(row["file_path"]).rsplit("/", 1)[-1]
    which = f"backup {row['id']} ({name}, completed {row['completed_at']})" if row["id"] \
        else f"backup file {name}"
    answer = input(f"Replace the database with {which}? A safety backup is taken first. "
                   "[y/N] ")
    return answer.strip().lower() in ("y", "yes")


async def _main(args: argparse.Namespace, settings: Settings) -> int:
    progress = Progress(None, "replay")

    def on_page(stats: Any) -> None:
        progress.update(stats.entries - progress.done)

    async with open_runtime(settings, resume=True) as rt:
        result = await restore(settings, rt.redis, args.backup_id, file_name=args.file,
                               confirm=(lambda row: True) if args.yes else _ask,
                               force=args.force, on_page=on_page)
    if result is None:  # declined: nothing was replayed, so no progress line either
        print("wks restore: cancelled; nothing changed", file=sys.stderr)
        return 1
    progress.close()
    safety = f"safety backup {result.safety_backup_id}" if result.safety_backup_id else \
        "no safety backup"
    print(f"restored backup {result.backup_id or args.file} ({safety}); replayed "
          f"{result.replayed} "
          f"stream entries from {result.replay_from}")
    if result.gap is not None:
        print(f"wks restore: warning: {result.gap}; the events after the backup that it "
              f"lacked are not restored (undo with the safety backup)", file=sys.stderr)
    return 0
