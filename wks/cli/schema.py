"""`wks schema`: print the JSON Schema of the wire format (for producers in any language)."""

from __future__ import annotations

import argparse
import json

from wks.config import Settings
from wks.events import json_schema


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("schema", help="print the JSON Schema of the event wire format")
    p.set_defaults(func=run)


def run(args: argparse.Namespace, settings: Settings) -> int:
    print(json.dumps(json_schema(), indent=2, sort_keys=True))
    return 0
