"""`wks token create --sub NAME --role admin|user [--ttl D]`: mint an API token."""

from __future__ import annotations

import argparse
import asyncio
import sys
import time

from wks.cli.api import secret_problem
from wks.cli.runtime import open_runtime
from wks.config import Settings, parse_duration
from wks.http.auth import ROLES, mint_token


def _ttl(text: str) -> float:
    try:
        value = parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    if value <= 0:
        raise argparse.ArgumentTypeError("ttl must be positive")
    return value


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("token", help="API tokens")
    actions = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    create = actions.add_parser("create", help="mint a token (prints it as the last line)")
    create.add_argument("--sub", required=True, help="the subject (user name), 1..128 chars")
    create.add_argument("--role", required=True, choices=ROLES)
    create.add_argument("--ttl", type=_ttl, default=24 * 3600.0,
                        help="lifetime, e.g. 1h, 7d (default 24h; the session ends 24h "
                             "after its last use)")
    create.set_defaults(func=run)


def run(args: argparse.Namespace, settings: Settings) -> int:
    problem = secret_problem(settings)
    if problem:
        print(f"wks token: {problem}", file=sys.stderr)
        return 2
    if not 1 <= len(args.sub) <= 128:
        print("wks token: --sub must be 1..128 characters", file=sys.stderr)
        return 2
    return asyncio.run(_main(args, settings))


async def _main(args: argparse.Namespace, settings: Settings) -> int:
    async with open_runtime(settings) as rt:  # Redis unreachable: one line (wks.cli.__main__)
        token = await mint_token(settings, rt.redis, args.sub, args.role, args.ttl)
    expires = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + args.ttl))
    print(f"sub={args.sub} role={args.role} expires={expires}", file=sys.stderr)
    print(token)
    return 0
