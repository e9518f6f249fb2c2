"""The managed data directory is never handed to a server older than the newest that ran
it: an older server cannot read a newer one's files, and may come up empty instead of
failing (6.2 does not look for 7.0's appendonlydir)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from wks import managed_binary
from wks.errors import ManagedRedisError
from wks.managed import MANAGED_DIR, start_managed
from wks.redis import bundled_redis_server


def _bundled() -> tuple[Path, tuple[int, int, int]]:
    bundled = bundled_redis_server()
    assert bundled is not None  # a dependency: the wheel ships it
    version = managed_binary.server_version(bundled)
    assert version is not None
    return bundled, version


def _dir_with(where: Path, binary: Path | None = None, script: str | None = None) -> Path:
    """A PATH entry holding `binary` as redis-server, or an executable `script`."""
    where.mkdir()
    server = where / "redis-server"
    if binary is not None:
        server.symlink_to(binary)
    elif script is not None:
        server.write_text(f"#!/bin/sh\n{script}\n")
        server.chmod(0o755)
    return where


def _path(monkeypatch: pytest.MonkeyPatch, *entries: Path) -> None:
    monkeypatch.setenv("PATH", os.pathsep.join(map(str, entries)))


def test_the_first_server_on_path_runs_it_and_its_version_is_recorded(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """PATH's server runs a new directory (SPEC 10) and is recorded; later PATH's server
    runs it again, wherever it now is, as long as it is as new."""
    bundled, version = _bundled()
    var = tmp_path / "var"
    var.mkdir()
    _path(monkeypatch, _dir_with(tmp_path / "first", bundled))
    first = start_managed(var)
    assert not isinstance(first, str)
    first.stop()
    assert managed_binary.recorded(var) == (tmp_path / "first" / "redis-server", version)
    _path(monkeypatch, _dir_with(tmp_path / "second", bundled))
    second = start_managed(var)
    assert not isinstance(second, str)
    try:
        assert second.binary == str(tmp_path / "second" / "redis-server")
    finally:
        second.stop()


def test_a_newer_server_anywhere_on_path_is_taken_over_an_older_first_one(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Data a newer server wrote goes to the first server on PATH that is as new, though an
    older one (as the virtualenv's) comes first; none is found: one line, nothing started."""
    bundled, version = _bundled()
    var = tmp_path / "var"
    var.mkdir()
    newer = f"{version[0] + 1}.{version[1]}.0"
    (var / managed_binary.RECORD).write_text(f"/gone/redis-server\t{newer}\n")
    venv = _dir_with(tmp_path / "venv", bundled)
    quiet = _dir_with(tmp_path / "quiet", script="exit 0")  # says no version
    system = _dir_with(tmp_path / "system", script=f"echo 'Redis server v={newer} sha=0'")
    _path(monkeypatch, venv, quiet, system)
    assert managed_binary.choose(var, var / MANAGED_DIR) == system / "redis-server"
    _path(monkeypatch, venv, quiet)
    try:
        wrongly = start_managed(var)
    except ManagedRedisError as refused:
        message = str(refused)
    else:  # it started one: leave no server behind
        if not isinstance(wrongly, str):
            wrongly.stop()
        pytest.fail("started a server that cannot read the data")
    assert "\n" not in message
    assert f"was written by Redis {newer}" in message
    assert f"{venv / 'redis-server'} ({'.'.join(map(str, version))})" in message
    assert f"{quiet / 'redis-server'} (version unknown)" in message
    assert f"Put Redis {version[0] + 1}.{version[1]} or newer on PATH" in message
    assert not (var / "redis.url").exists()


def test_redis_7_files_without_a_record_need_redis_7(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A directory from before the record that holds 7.0's append-only directory is not
    handed to an older server (which would start empty beside it)."""
    bundled, version = _bundled()
    var = tmp_path / "var"
    (var / MANAGED_DIR / "appendonlydir").mkdir(parents=True)
    _path(monkeypatch, _dir_with(tmp_path / "bin", bundled))
    if version[:2] >= (7, 0):
        assert managed_binary.choose(var, var / MANAGED_DIR) == tmp_path / "bin" / "redis-server"
        return
    with pytest.raises(ManagedRedisError, match="holds Redis 7's append-only files"):
        managed_binary.choose(var, var / MANAGED_DIR)
