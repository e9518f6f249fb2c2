"""The managed redis-server's owner: a `wks up` killed with -9 leaves its server to the next
`wks up` of the directory, which adopts it and stops it on its way out; a live owner's
server is never taken from it."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import wait_for
from wks.managed import Managed, adopt, start_managed
from wks.redis import free_port, ping

pytestmark = pytest.mark.slow

WKS = [sys.executable, "-m", "wks.cli.__main__"]


def _host_port(url: str) -> tuple[str, int]:
    host, port = url.split("//")[1].split("/")[0].split(":")
    return host, int(port)


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_a_killed_wks_up_leaves_its_redis_to_the_next_one_which_stops_it(
    tmp_path: Path,
) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("WKS_")}
    env.update({"WKS_PORT": str(free_port()), "WKS_LOG_FORMAT": "json"})
    var = tmp_path / "var"
    first = subprocess.Popen([*WKS, "up"], cwd=tmp_path, env=env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        asyncio.run(wait_for(lambda: (var / "redis.url").exists()
                             and (var / "redis.pid").exists(), 60, "the first wks up's server"))
    finally:
        first.kill()  # -9: no shutdown of its own, its server is left running
        first.wait()
    url = (var / "redis.url").read_text().strip()
    pid = int((var / "redis.pid").read_text())
    assert ping(*_host_port(url)), "a killed wks up leaves its managed server running"

    log = tmp_path / "second.log"
    with log.open("w") as err:
        second = subprocess.Popen([*WKS, "up"], cwd=tmp_path, env=env,
                                  stdout=subprocess.DEVNULL, stderr=err)
    try:
        asyncio.run(wait_for(lambda: "adopted" in log.read_text(), 60, "the adoption"))
        assert ping(*_host_port(url)), "the adopted server is used, not replaced"
        assert (var / "redis.url").read_text().strip() == url
    finally:
        second.send_signal(signal.SIGTERM)
        second.wait(30)
    assert second.returncode == 0, log.read_text()[-2000:]
    assert not _alive(pid), "the second wks up stops the server it adopted"
    assert not ping(*_host_port(url))
    assert not (var / "redis.url").exists()
    assert not (var / "redis.pid").exists()


def test_a_sigterm_while_wks_up_starts_stops_its_managed_server(tmp_path: Path) -> None:
    """The server's files are written before the services start: a SIGTERM right then
    goes through the normal shutdown (exit 0, server stopped), not the default action."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("WKS_")}
    env.update({"WKS_PORT": str(free_port()), "WKS_LOG_FORMAT": "json"})
    var = tmp_path / "var"
    log = tmp_path / "up.log"
    with log.open("w") as err:
        up = subprocess.Popen([*WKS, "up"], cwd=tmp_path, env=env,
                              stdout=subprocess.DEVNULL, stderr=err)
    try:
        asyncio.run(wait_for(lambda: (var / "redis.pid").exists(), 60, "the managed server"))
        pid = int((var / "redis.pid").read_text())
    finally:
        up.send_signal(signal.SIGTERM)
        up.wait(30)
    assert up.returncode == 0, log.read_text()[-2000:]
    assert not _alive(pid), "the managed server stops with the wks up that started it"
    assert not (var / "redis.url").exists()


async def test_a_live_owners_server_is_not_adopted_and_a_dead_owners_is(tmp_path: Path) -> None:
    var = tmp_path / "var"
    owner = await asyncio.to_thread(start_managed, var)
    try:
        assert owner.lock is not None
        assert await asyncio.to_thread(adopt, var, owner.url) is None, "its owner runs"
        os.close(owner.lock)  # the owner's end, as the kernel ends it for a killed process
        owner.lock = None
        adopted = await asyncio.to_thread(adopt, var, owner.url)
        assert isinstance(adopted, Managed)
        assert adopted.pid == owner.pid
        assert adopted.server is None  # not this process's child: stopped by its pid
        await asyncio.to_thread(adopted.stop)
        assert not _alive(owner.pid)
        assert not ping(*_host_port(owner.url))
        assert not (var / "redis.url").exists()
    finally:
        assert owner.server is not None
        owner.server.kill()  # reaps the child (already stopped, or a failed test's)


async def test_a_pid_file_naming_another_process_is_not_adopted(tmp_path: Path) -> None:
    """The pid is checked against the process's command line: a pid reused by an unrelated
    process after a crash (or a server of another directory) is never signalled."""
    var = tmp_path / "var"
    owner = await asyncio.to_thread(start_managed, var)
    try:
        assert owner.lock is not None
        os.close(owner.lock)
        owner.lock = None
        (var / "redis.pid").write_text(f"{os.getpid()}\n")
        assert await asyncio.to_thread(adopt, var, owner.url) is None
        assert ping(*_host_port(owner.url))
    finally:
        await asyncio.to_thread(owner.stop)
    assert not ping(*_host_port(owner.url))
