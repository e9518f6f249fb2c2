"""`wks`: one entry point, one module per subcommand."""

from __future__ import annotations

import argparse
import importlib
import os
import signal
import sys
import threading
from collections.abc import Sequence
from typing import NoReturn
from urllib.parse import parse_qsl, urlencode, urlsplit

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from wks import __version__, collector, logs
from wks.config import Settings
from wks.errors import ConfigError, WksError

# each module has add_parser(subparsers) registering a parser whose `func(args, settings)`
# returns the exit code
COMMANDS = [
    "up", "api", "worker", "emit", "replay", "audit", "dead", "backup", "restore", "token",
    "schema", "bench",
]
# the commands that run long and fold big batches: see wks.collector
LONG_RUNNING = {"up", "api", "worker", "replay", "bench"}
# commands whose scratch files go when they stop: SIGTERM stops them as Ctrl-C does, so
# their cleanup runs (a SIGTERM's default action ends a process without it)
TERM_AS_INTERRUPT = {"replay", "audit"}


class Parser(argparse.ArgumentParser):
    """Errors in one line (SPEC 9), pointing at --help instead of printing the usage."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: {message} (see {self.prog} --help)\n")


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The parser; with `only`, just that subcommand's module is imported (fast start-up:
    `wks emit` need not import the HTTP server)."""
    parser = Parser(
        prog="wks",
        description="Track workflow executions from Redis Streams into SQLite; "
        "settings come from WKS_* environment variables and ./wks.toml.",
    )
    parser.add_argument("--version", action="version", version=f"wks {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in [only] if only in COMMANDS else COMMANDS:
        try:
            module = importlib.import_module(f"wks.cli.{name}")
        except ModuleNotFoundError as exc:
            if exc.name != f"wks.cli.{name}":
                raise
            continue
        module.add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None, *, tune_gc: bool = True) -> int:
    """Run one command; `tune_gc=False` leaves the collector alone (a caller's own process,
    such as a test session, keeps its settings)."""
    try:
        return _main(argv, tune_gc)
    except BrokenPipeError:
        # the reader went away (`wks backup list | head -1`): stop quietly, and keep the
        # interpreter's last flush of stdout from failing again at exit
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 141  # what a shell reports for a process killed by SIGPIPE


def _main(argv: Sequence[str] | None, tune_gc: bool) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(argv[0] if argv else None)
    args = parser.parse_args(argv)
    try:
        settings = Settings.load(os.environ)
    except ConfigError as exc:
        print(f"wks: bad setting {exc}", file=sys.stderr)
        return 2
    logs.setup(settings.log_level, settings.log_format)
    if tune_gc and args.command in LONG_RUNNING:
        collector.tune()
    if args.command in TERM_AS_INTERRUPT and threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        return int(args.func(args, settings) or 0)
    except WksError as exc:
        print(f"wks {args.command}: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        raise  # stdout's reader went away: `main` ends quietly
    except (RedisConnectionError, RedisTimeoutError, ConnectionError, TimeoutError) as exc:
        # a command's first Redis call failed: one line, as SPEC 9 asks of every error
        print(f"wks {args.command}: cannot reach Redis at "
              f"{shown_url(settings.effective_redis_url())}: {exc}", file=sys.stderr)
        return 1
    except ResponseError as exc:  # NOAUTH, WRONGPASS, NOPERM, ...
        print(f"wks {args.command}: Redis refused: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:  # a file or directory: e.g. a backupDir that cannot be made
        print(f"wks {args.command}: {exc}", file=sys.stderr)
        return 1


def shown_url(url: str) -> str:
    """`url` with its password, if any, replaced by *** (in the authority, or in the query
    where redis-py also takes one: `unix:///run/redis.sock?password=...`)."""
    parsed = urlsplit(url)
    fields = parse_qsl(parsed.query, keep_blank_values=True)
    if not parsed.password and all(k != "password" for k, _ in fields):
        return url
    netloc = parsed.netloc
    if parsed.password:
        netloc = f"{parsed.username or ''}:***@{netloc.rpartition('@')[2]}"
    query = urlencode([(k, "***" if k == "password" else v) for k, v in fields], safe="*")
    return f"{parsed.scheme}://{netloc}{parsed.path}" + (f"?{query}" if query else "")


if __name__ == "__main__":
    sys.exit(main())
