"""Logging: loguru, console on a TTY and compact JSON lines otherwise.

Log lines carry what they concern through `logger.bind(...)` / `contextualize(...)`:
`execution_id`, `entry_id`, `stream`, `group`, `request_id`.
"""

from __future__ import annotations

import sys
from typing import Any, TextIO

import msgspec
from loguru import logger

_json = msgspec.json.Encoder()


def _json_sink(stream: TextIO | None) -> Any:
    """A JSON-lines sink; None writes to whatever `sys.stderr` is at the time of the call
    (it may be replaced after setup, and the old one closed, e.g. by a test runner)."""

    def sink(message: Any) -> None:
        record = message.record
        line: dict[str, Any] = {
            "ts": record["time"].isoformat(),
            "level": record["level"].name,
            "msg": record["message"],
            "logger": record["name"],
        }
        line.update({k: v for k, v in record["extra"].items() if v is not None})
        if record["exception"] is not None:
            exc = record["exception"]
            line["error"] = f"{exc.type.__name__}: {exc.value}" if exc.type else None
        out = sys.stderr if stream is None else stream
        out.write(_json.encode(line).decode("utf-8", "replace") + "\n")
        out.flush()

    return sink


def setup(level: str = "INFO", fmt: str | None = None, stream: TextIO | None = None) -> None:
    """Configure the one global logger; `fmt` None picks console on a TTY, else json."""
    out = stream or sys.stderr
    if fmt is None:
        fmt = "console" if out.isatty() else "json"
    logger.remove()
    if fmt == "json":
        logger.add(_json_sink(stream), level=level, backtrace=False, diagnose=False)
    else:
        logger.add(
            out,
            level=level,
            backtrace=False,
            diagnose=False,
            format="<green>{time:HH:mm:ss.SSS}</green> <level>{level: <7}</level> "
            "<cyan>{name}</cyan> {message} <dim>{extra}</dim>",
        )
