"""The managed data directory keeps the redis-server that wrote it: an older server cannot
read a newer one's files, and may come up empty instead of failing."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from wks import managed_binary
from wks.errors import ManagedRedisError
from wks.managed import MANAGED_DIR, start_managed
from wks.redis import bundled_redis_server


def _path_with(monkeypatch: pytest.MonkeyPatch, where: Path, binary: Path | None) -> None:
    """PATH holds only `where`, with `binary` in it as redis-server (or no server at all)."""
    where.mkdir()
    if binary is not None:
        (where / "redis-server").symlink_to(binary)
    monkeypatch.setenv("PATH", f"{where}{os.pathsep}/usr/bin/nonexistent")


def test_the_server_that_wrote_the_directory_runs_it_again(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The first start records its server; a later one runs that server again, although
    PATH now leads to another (as after activating a virtualenv)."""
    bundled = bundled_redis_server()
    assert bundled is not None  # a dependency: the wheel ships it
    var = tmp_path / "var"
    var.mkdir()
    _path_with(monkeypatch, tmp_path / "first", bundled)
    first = start_managed(var)
    assert not isinstance(first, str)
    first.stop()
    recorded = managed_binary.recorded(var)
    assert recorded == (tmp_path / "first" / "redis-server",
                        managed_binary.server_version(bundled))
    monkeypatch.setenv("PATH", str(tmp_path / "nowhere"))  # nothing on PATH now
    assert managed_binary.choose(var, var / MANAGED_DIR) == tmp_path / "first" / "redis-server"
    _path_with(monkeypatch, tmp_path / "second", bundled)
    second = start_managed(var)
    assert not isinstance(second, str)
    try:
        assert second.binary == str(tmp_path / "first" / "redis-server")
    finally:
        second.stop()


def test_data_written_by_a_newer_server_stops_start_up_with_one_line(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Recorded by a server newer than any found, and gone: start-up refuses, naming both,
    and starts nothing. A gone server is replaced by one at least as new."""
    bundled = bundled_redis_server()
    assert bundled is not None
    version = managed_binary.server_version(bundled)
    assert version is not None
    var = tmp_path / "var"
    var.mkdir()
    _path_with(monkeypatch, tmp_path / "bin", None)
    (var / managed_binary.RECORD).write_text(f"{tmp_path}/gone/redis-server\t99.1.0\n")
    try:
        wrongly = start_managed(var)
    except ManagedRedisError as refused:
        message = str(refused)
    else:  # it started one: leave no server behind
        if not isinstance(wrongly, str):
            wrongly.stop()
        pytest.fail("started a server that cannot read the data")
    assert "\n" not in message
    assert "written by Redis 99.1.0" in message
    assert f"{bundled} ({'.'.join(map(str, version))})" in message
    assert "put Redis 99.1 or newer on PATH" in message
    assert not (var / "redis.url").exists()
    (var / managed_binary.RECORD).write_text(
        f"{tmp_path}/gone/redis-server\t{version[0]}.{version[1]}.0\n")
    assert managed_binary.choose(var, var / MANAGED_DIR) == bundled


def test_redis_7_files_without_a_record_need_redis_7(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A directory from before the record that holds 7.0's append-only directory is not
    handed to an older server (which would start empty beside it)."""
    bundled = bundled_redis_server()
    assert bundled is not None
    version = managed_binary.server_version(bundled)
    assert version is not None
    var = tmp_path / "var"
    (var / MANAGED_DIR / "appendonlydir").mkdir(parents=True)
    _path_with(monkeypatch, tmp_path / "bin", None)
    if version[:2] >= (7, 0):
        assert managed_binary.choose(var, var / MANAGED_DIR) == bundled
        return
    with pytest.raises(ManagedRedisError, match="holds Redis 7's append-only files"):
        managed_binary.choose(var, var / MANAGED_DIR)
