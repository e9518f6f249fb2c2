"""The long-running commands freeze start-up objects and space out full collections."""

from __future__ import annotations

import json
import subprocess
import sys

from wks.collector import FULL_COLLECTION_SPACING

# runs `wks <argv>` in a fresh interpreter (the GC settings are process-wide) and reports them
_PROBE = """
import gc, json, sys
from wks.cli.__main__ import main
before = gc.get_threshold()
code = main(sys.argv[1:])
print(json.dumps({"code": code, "before": before, "after": gc.get_threshold(),
                  "frozen": gc.get_freeze_count()}))
"""


def _gc_after(*argv: str) -> dict[str, object]:
    out = subprocess.run([sys.executable, "-c", _PROBE, *argv], capture_output=True,
                         text=True, check=True, timeout=60)
    result: dict[str, object] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def test_a_long_running_command_spaces_full_collections() -> None:
    # `bench --events 0` refuses its arguments after start-up, like a worker that stops at once
    got = _gc_after("bench", "--events", "0")
    assert got["code"] == 2
    young, middle, full = got["before"]  # type: ignore[misc]
    spaced = full * FULL_COLLECTION_SPACING if sys.version_info < (3, 14) else full  # 3.14: as is
    assert got["after"] == [young, middle, spaced]
    assert isinstance(got["frozen"], int)
    assert got["frozen"] > 1000


def test_a_one_shot_command_keeps_the_defaults() -> None:
    got = _gc_after("schema")
    assert got["code"] == 0
    assert got["after"] == got["before"]
    assert got["frozen"] == 0
