"""`wks dead list|show|replay|purge`: inspect and re-publish dead letters.

A dead letter (consumers/reader.py) has the fields stream, entryId, group, payload (the raw
bytes), reason, deliveries and deadAt. `replay` re-publishes a payload (the original, or a
fixed one) to the stream it came from, after validating it, and deletes the dead entry in
the same MULTI; the consumer group then folds it like any other entry.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import ResponseError

from wks.cli.runtime import open_runtime
from wks.config import Settings
from wks.errors import NotFound, WksError
from wks.events import decode_backup, decode_workflow, split_entry_id
from wks.keys import EVENT_FIELD, Keys
from wks.redis import text
from wks.replay import iter_pages, parse_bound


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("dead", help="inspect, re-publish or purge dead letters")
    actions = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    ls = actions.add_parser("list", help="dead letters: id, source stream, reason, age")
    ls.add_argument("--format", choices=("table", "jsonl"), default="table")
    show = actions.add_parser("show", help="one dead letter: its reason and raw payload")
    show.add_argument("id", metavar="ID")
    rp = actions.add_parser("replay", help="re-publish a (fixed) payload to its stream")
    rp.add_argument("id", metavar="ID")
    fixed = rp.add_mutually_exclusive_group()
    fixed.add_argument("--payload-file", type=Path, metavar="FILE",
                       help="the fixed event JSON, read from FILE ('-' for stdin)")
    fixed.add_argument("--payload", metavar="JSON", help="the fixed event JSON")
    purge = actions.add_parser("purge", help="delete dead letters")
    purge.add_argument("--before", metavar="ID|TIME",
                       help="only those that died before this entry id or time")
    purge.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    p.set_defaults(func=run)


def run(args: argparse.Namespace, settings: Settings) -> int:
    payload: bytes | None = None
    if args.action == "replay":
        payload = _read_payload(args)
    before = None
    if args.action == "purge" and args.before:
        try:
            before = parse_bound(args.before)
        except ValueError as exc:
            raise WksError(str(exc)) from None
    return asyncio.run(_main(args, settings, payload, before))


def _read_payload(args: argparse.Namespace) -> bytes | None:
    if args.payload is not None:
        return str(args.payload).encode()
    if args.payload_file is None:
        return None
    if str(args.payload_file) == "-":
        return sys.stdin.buffer.read()
    try:
        return bytes(args.payload_file.read_bytes())
    except OSError as exc:
        raise WksError(f"--payload-file {args.payload_file}: {exc.strerror}") from None


async def _main(
    args: argparse.Namespace, settings: Settings, payload: bytes | None, before: str | None
) -> int:
    async with open_runtime(settings) as rt:
        keys = settings.keys
        if args.action == "list":
            return await _list(rt.redis, keys, args.format)
        if args.action == "show":
            return _show(args.id, await get_dead(rt.redis, keys, args.id))
        if args.action == "replay":
            new_id = await replay_dead(rt.redis, keys, args.id, payload)
            print(new_id)
            return 0
        return await _purge(rt.redis, keys, before, args.yes)


def _text(value: Any) -> str:
    return text(value, "backslashreplace")  # for display: whatever bytes a producer wrote


def _fields(raw: dict[Any, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {_text(k): v for k, v in raw.items()}
    for name, value in out.items():
        if name != "payload":
            out[name] = _text(value)
    return out


async def get_dead(redis: aioredis.Redis, keys: Keys, entry_id: str) -> dict[str, Any]:
    """One dead letter's fields (`payload` stays bytes); NotFound when there is none."""
    try:
        split_entry_id(entry_id)
        rows = await redis.xrange(keys.dead_stream, min=entry_id, max=entry_id)
    except (ValueError, ResponseError):
        raise WksError(f"not an entry id: {entry_id!r}") from None
    if not rows:
        raise NotFound(f"no dead letter {entry_id} in {keys.dead_stream}")
    return _fields(rows[0][1] or {})


async def replay_dead(
    redis: aioredis.Redis, keys: Keys, entry_id: str, payload: bytes | None = None
) -> str:
    """Validate `payload` (default: the original), XADD it to its stream, delete the letter."""
    dead = await get_dead(redis, keys, entry_id)
    stream = dead.get("stream", "")
    decoders = {keys.workflow_stream: decode_workflow, keys.backup_stream: decode_backup}
    if stream not in decoders:
        raise WksError(f"dead letter {entry_id} came from {stream!r}: only the workflow and "
                       "backup streams can be replayed")
    raw = payload if payload is not None else dead.get("payload", b"")
    decoders[stream](raw)  # raises BadEventError with the reason: nothing is published
    async with redis.pipeline(transaction=True) as pipe:
        pipe.xadd(stream, {EVENT_FIELD: raw})
        pipe.xdel(keys.dead_stream, entry_id)
        new_id, _ = await pipe.execute()
    return _text(new_id)


def _age(dead_at: str | None, entry_id: str, now_ms: int) -> str:
    try:
        at = int(dead_at) if dead_at else split_entry_id(entry_id)[0]
    except ValueError:
        at = split_entry_id(entry_id)[0]
    seconds = max(0, (now_ms - at) // 1000)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


async def _list(redis: aioredis.Redis, keys: Keys, fmt: str) -> int:
    now = int(time.time() * 1000)
    out = sys.stdout
    if fmt == "table":
        out.write(f"{'ID':<22}  {'STREAM':<9}  {'AGE':>5}  REASON\n")
    async for page in iter_pages(redis, keys.dead_stream):
        for entry_id, raw in page:
            f = _fields(raw)
            source = str(f.get("stream", "?")).rsplit(":", 1)[-1]
            age = _age(f.get("deadAt"), entry_id, now)
            reason = str(f.get("reason", ""))
            if fmt == "jsonl":
                row = {"id": entry_id, "stream": f.get("stream"), "entryId": f.get("entryId"),
                       "group": f.get("group"), "reason": reason, "age": age,
                       "deliveries": f.get("deliveries"), "deadAt": f.get("deadAt")}
                out.write(json.dumps(row) + "\n")
            else:
                short = reason if len(reason) <= 100 else reason[:97] + "..."
                out.write(f"{entry_id:<22}  {source:<9}  {age:>5}  {short}\n")
    return 0


def _show(entry_id: str, dead: dict[str, Any]) -> int:
    out = sys.stdout
    payload: bytes = dead.pop("payload", b"")
    dead_at = dead.get("deadAt")
    if dead_at and dead_at.isdigit():
        moment = datetime.fromtimestamp(int(dead_at) / 1000, UTC)
        dead["deadAt"] = f"{dead_at} ({moment.isoformat(timespec='seconds')})"
    out.write(f"{'id':<11} {entry_id}\n")
    for name in ("stream", "entryId", "group", "deliveries", "deadAt", "reason"):
        if name in dead:
            out.write(f"{name:<11} {dead[name]}\n")
    out.write(f"payload ({len(payload)} bytes):\n{_text(payload)}\n")
    return 0


async def _purge(redis: aioredis.Redis, keys: Keys, before: str | None, yes: bool) -> int:
    stream = keys.dead_stream
    # count what goes, and fix the upper bound so letters arriving meanwhile are kept
    count, last = 0, None
    end = f"({before}" if before else "+"
    async for page in iter_pages(redis, stream, "-", end):
        count += len(page)
        last = page[-1][0]
    if last is None:
        print("no dead letters to purge")
        return 0
    scope = f" older than {before}" if before else ""
    if not yes:
        if not sys.stdin.isatty():
            raise WksError(f"would purge {count} dead letters{scope}: add --yes to confirm")
        prompt = f"purge {count} dead letters{scope}? [y/N] "
        answer = (await asyncio.to_thread(input, prompt)).strip().lower()
        if answer not in ("y", "yes"):
            print("nothing purged")
            return 1
    ms, seq = split_entry_id(last)
    removed = await redis.xtrim(stream, minid=f"{ms}-{seq + 1}", approximate=False)
    print(f"purged {removed} dead letters{scope}")
    return 0
