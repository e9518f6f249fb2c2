"""`wks emit TYPE --execution-id ID [fields]`: publish one workflow event; print its entry id."""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from typing import Any, get_args

import msgspec

from producers.client import Producer
from wks.cli.runtime import open_runtime
from wks.config import Settings
from wks.errors import BadEventError
from wks.events import WORKFLOW_TYPES, WorkflowEvent, loads, type_tag, validate

# option -> wire key; each wire key as a kebab-case option (SPEC section 9)
_FIELDS = {
    "workflow_id": "workflowId",
    "total_steps": "totalSteps",
    "completed_steps": "completedSteps",
    "current_step": "currentStep",
    "owner": "owner",
    "error": "error",
    "reason": "reason",
    "event_id": "eventId",
    "ts": "ts",
    "data": "data",
}
# type -> the wire keys its event carries, from the event classes themselves
_KEYS = {type_tag(cls): {f.encode_name for f in msgspec.structs.fields(cls)}
         for cls in get_args(WorkflowEvent)}


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("emit", help="publish one workflow event and print its entry id")
    p.add_argument("type", choices=WORKFLOW_TYPES, metavar="TYPE",
                   help=f"one of {', '.join(WORKFLOW_TYPES)}")
    p.add_argument("--execution-id", required=True)
    p.add_argument("--workflow-id")
    p.add_argument("--total-steps", type=int)
    p.add_argument("--completed-steps", type=int)
    p.add_argument("--current-step")
    p.add_argument("--owner")
    p.add_argument("--error")
    p.add_argument("--reason")
    p.add_argument("--event-id")
    p.add_argument("--data", help="a JSON object")
    p.add_argument("--ts", type=int, help="epoch milliseconds (default: now)")
    p.set_defaults(func=run)


def misplaced_option(args: argparse.Namespace) -> str | None:
    """The first option given that the event type has no key for, as `--kebab-name`."""
    for option, key in _FIELDS.items():
        if getattr(args, option) is not None and key not in _KEYS[args.type]:
            return "--" + option.replace("_", "-")
    return None


def parse_data(text: str) -> dict[str, Any]:
    """`--data` as strict JSON (RFC 8259: no NaN or Infinity, no number a double cannot
    hold): Python's json would take those and the encoder would then publish them as null."""
    try:
        data = loads(text)
    except msgspec.ValidationError as exc:  # a number out of range
        raise BadEventError(f"--data is not valid JSON: {exc}") from None
    except msgspec.DecodeError as exc:
        raise BadEventError(f"--data is not JSON: {exc}") from None
    if not isinstance(data, dict):
        raise BadEventError(f"--data must be a JSON object, not {_json_kind(data)}")
    return data


def _json_kind(value: Any) -> str:
    kinds = {list: "an array", str: "a string", bool: "a boolean", type(None): "null"}
    return kinds.get(type(value), "a number")


def build_event(args: argparse.Namespace) -> dict[str, Any]:
    event: dict[str, Any] = {"type": args.type, "executionId": args.execution_id}
    for option, key in _FIELDS.items():
        value = getattr(args, option)
        if value is not None:
            event[key] = parse_data(value) if key == "data" else value
    event.setdefault("ts", int(time.time() * 1000))
    return event


def run(args: argparse.Namespace, settings: Settings) -> int:
    option = misplaced_option(args)
    if option is not None:  # silently dropped, it would look published when it was not
        print(f"wks emit: {option} does not apply to {args.type}", file=sys.stderr)
        return 2
    event = validate(build_event(args))
    return asyncio.run(_publish(settings, event))


async def _publish(settings: Settings, event: Any) -> int:
    async with open_runtime(settings) as rt:
        producer = Producer(rt.redis, settings.keys, buffer_size=0)
        entry_id = await producer.publish(event)
    print(entry_id)
    return 0
