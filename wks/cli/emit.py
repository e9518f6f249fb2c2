"""`wks emit TYPE --execution-id ID [fields]`: publish one workflow event; print its entry id."""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from typing import Any

from producers.client import Producer
from wks.cli.runtime import open_runtime
from wks.config import Settings
from wks.errors import BadEventError
from wks.events import WORKFLOW_TYPES, validate

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
}


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


def build_event(args: argparse.Namespace) -> dict[str, Any]:
    event: dict[str, Any] = {"type": args.type, "executionId": args.execution_id}
    for option, key in _FIELDS.items():
        value = getattr(args, option)
        if value is not None:
            event[key] = value
    event.setdefault("ts", int(time.time() * 1000))
    if args.data is not None:
        try:
            event["data"] = json.loads(args.data)
        except json.JSONDecodeError as exc:
            raise BadEventError(f"--data is not JSON: {exc}") from None
    return event


def run(args: argparse.Namespace, settings: Settings) -> int:
    event = validate(build_event(args))
    return asyncio.run(_publish(settings, event))


async def _publish(settings: Settings, event: Any) -> int:
    async with open_runtime(settings) as rt:
        producer = Producer(rt.redis, settings.keys, buffer_size=0)
        entry_id = await producer.publish(event)
    print(entry_id)
    return 0
