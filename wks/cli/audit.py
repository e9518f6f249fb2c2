"""`wks audit EXECUTION_ID [--format table|jsonl]`: everything that happened to one execution.

The events come from `event_log` (every folded event once, in stream order, with its entry
id). Each is refolded in that order to tell whether it changed the state, and which fields.
Events older than `eventLogRetention` have been pruned and are not shown.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from datetime import UTC, datetime
from typing import Any

from wks.audit import event_changes, final_state
from wks.config import Settings
from wks.errors import NotFound
from wks.state import state_dict
from wks.store import Store
from wks.verify import column_diffs


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("audit", help="an execution's events in stream order, and what changed")
    p.add_argument("execution_id", metavar="EXECUTION_ID")
    p.add_argument("--format", choices=("table", "jsonl"), default="table")
    p.set_defaults(func=run)


def run(args: argparse.Namespace, settings: Settings) -> int:
    if not settings.db_path.exists():
        raise NotFound(f"no database at {settings.db_path}")
    return asyncio.run(_main(args, settings))


async def _main(args: argparse.Namespace, settings: Settings) -> int:
    async with await Store.open(settings.db_path) as store:
        events = await store.events_for(args.execution_id)
        live = await store.get_state(args.execution_id)
        edited = await column_diffs(store, args.execution_id)
    if not events and live is None:
        raise NotFound(f"execution {args.execution_id!r} not found")
    rows = event_changes(events)
    if args.format == "jsonl":
        for row in rows:
            print(json.dumps(_jsonl(row), separators=(",", ":")))
        return 0
    _table(args.execution_id, rows)
    folded = final_state(events)
    if live is None:
        print("no live row for this execution")
    elif folded is None:
        print("no logged events (pruned by eventLogRetention?)")
    elif folded == state_dict(live) and edited:
        print(f"the logged events fold to the live state, but the row's columns differ from "
              f"it ({', '.join(edited)}): the row was changed outside wks")
        return 1
    elif folded == state_dict(live):
        print("the logged events fold to the live state")
    else:
        print("the logged events do NOT fold to the live state (events pruned, or the row was "
              "changed outside wks: run `wks replay --verify --execution ID`)")
        return 1  # as `wks replay --verify` on a difference: scripts can check
    return 0


def _jsonl(row: dict[str, Any]) -> dict[str, Any]:
    out = {k: row[k] for k in ("entryId", "eventId", "type", "ts", "appliedAt", "changed",
                               "fields", "event")}
    if "error" in row:
        out["error"] = row["error"]
    return out


def _iso(ms: int) -> str:
    moment = datetime.fromtimestamp(ms / 1000, UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{ms % 1000:03d}Z"


def _table(execution_id: str, rows: list[dict[str, Any]]) -> None:
    out = sys.stdout
    out.write(f"execution {execution_id}: {len(rows)} events\n")
    header = ("ENTRY ID", "TYPE", "TS (UTC)", "EVENT ID", "CHANGED", "FIELDS")
    lines = [header]
    for row in rows:
        fields = ", ".join(row["fields"]) if row["changed"] else row.get("error", "")
        lines.append((row["entryId"], row["type"], _iso(row["ts"]), row["eventId"] or "-",
                      "yes" if row["changed"] else "no", fields))
    widths = [max(len(line[i]) for line in lines) for i in range(len(header) - 1)]
    for line in lines:
        cells = [cell.ljust(width) for cell, width in zip(line, widths, strict=False)]
        out.write("  ".join([*cells, line[-1]]).rstrip() + "\n")
