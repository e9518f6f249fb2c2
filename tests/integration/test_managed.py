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
from wks.errors import ManagedRedisError
from wks.managed import Managed, _claim, adopt, start_managed
from wks.redis import find_redis_server, free_port, ping

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
    assert isinstance(owner, Managed)  # no other `wks up` holds this directory
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
    assert isinstance(owner, Managed)  # no other `wks up` holds this directory
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


def _servers_of(var: Path) -> list[int]:
    """Live processes working in var/redis: the managed redis-servers of that directory."""
    where = str((var / "redis").resolve())
    found = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                if os.readlink(proc / "cwd") == where and _alive(int(proc.name)):
                    found.append(int(proc.name))
            except OSError:
                continue  # gone meanwhile, or not ours to read
    return found


def _env(**more: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("WKS_")}
    env.update({"WKS_PORT": str(free_port()), "WKS_LOG_FORMAT": "json", **more})
    return env


def test_two_wks_up_started_together_share_one_server(tmp_path: Path) -> None:
    """The second waits for the server the first is starting instead of starting another on
    the same var/redis (two servers would write one append-only file)."""
    var = tmp_path / "var"
    procs, outs, errs = [], [], []
    for n in range(2):
        outs.append(tmp_path / f"up{n}.out")
        errs.append(tmp_path / f"up{n}.err")
        with outs[n].open("w") as out, errs[n].open("w") as err:
            procs.append(subprocess.Popen([*WKS, "up"], cwd=tmp_path, env=_env(),
                                          stdout=out, stderr=err))
    try:
        asyncio.run(wait_for(lambda: all("Ctrl-C" in o.read_text() for o in outs), 60,
                             "both banners"))
        banners = [o.read_text().splitlines()[0] for o in outs]
        assert banners[0].split(" at ")[-1] == banners[1].split(" at ")[-1], banners
        assert len(_servers_of(var)) == 1
        owner = next(n for n in range(2) if "started managed" in errs[n].read_text())
        user = 1 - owner
        assert "using the" in errs[user].read_text(), "the second says whose server it uses"
        procs[user].send_signal(signal.SIGTERM)
        assert procs[user].wait(30) == 0
        assert len(_servers_of(var)) == 1, "the server stays with the wks up that owns it"
        procs[owner].send_signal(signal.SIGTERM)
        assert procs[owner].wait(30) == 0
        assert _servers_of(var) == []
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def test_a_second_ctrl_c_while_the_server_starts_still_stops_it(tmp_path: Path) -> None:
    """An interrupt during start-up ends `wks up` (exit 130) without leaving behind the
    server it was starting: here one that takes two seconds to start."""
    real = find_redis_server()
    assert real is not None
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    starting = tmp_path / "starting"
    slow = bin_dir / "redis-server"
    slow.write_text(f'#!/bin/sh\ntouch "{starting}"\nsleep 2\nexec "{real}" "$@"\n')
    slow.chmod(0o755)
    env = _env(PATH=f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}")
    log = tmp_path / "up.log"
    with log.open("w") as err:
        up = subprocess.Popen([*WKS, "up"], cwd=tmp_path, env=env,
                              stdout=subprocess.DEVNULL, stderr=err)
    try:
        asyncio.run(wait_for(starting.exists, 60, "the server's start"))
        up.send_signal(signal.SIGINT)
        asyncio.run(wait_for(lambda: "stopping" in log.read_text(), 10, "the first Ctrl-C"))
        up.send_signal(signal.SIGINT)
        assert up.wait(30) == 130, log.read_text()[-2000:]
    finally:
        if up.poll() is None:
            up.kill()
            up.wait()
    assert _servers_of(tmp_path / "var") == []
    assert not (tmp_path / "var" / "redis.url").exists()


def test_stopping_an_adopted_server_never_signals_another_process(tmp_path: Path) -> None:
    """The adopted server exited and its pid now names an unrelated process: it is left
    alone (the pid is checked against the server's directory and port again)."""
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        gone = Managed(tmp_path / "var", f"redis://127.0.0.1:{free_port()}/0", other.pid,
                       "redis-server", None)
        gone.stop(timeout=0.2)
        assert other.poll() is None, "an unrelated process was signalled"
    finally:
        other.kill()
        other.wait()


async def test_a_lock_holder_whose_server_never_answers_is_an_error_not_a_second_server(
    tmp_path: Path,
) -> None:
    var = tmp_path / "var"
    holder = _claim(var)  # another `wks up` starting a server here, which never answers
    assert holder is not None
    try:
        with pytest.raises(ManagedRedisError, match="another `wks up` holds"):
            await asyncio.to_thread(start_managed, var, wait=0.3)
        assert _servers_of(var) == []
    finally:
        os.close(holder)
    # the holder ended: the lock is free, so this one starts (and owns) the server
    owner = await asyncio.to_thread(start_managed, var, wait=0.3)
    assert isinstance(owner, Managed)
    try:
        assert ping(*_host_port(owner.url))
    finally:
        await asyncio.to_thread(owner.stop)
    assert _servers_of(var) == []


def test_a_signal_while_waiting_for_another_wks_ups_server_ends_the_wait(
    tmp_path: Path,
) -> None:
    var = tmp_path / "var"
    holder = _claim(var)  # another `wks up`, whose server does not answer yet
    assert holder is not None
    log = tmp_path / "up.log"
    try:
        with log.open("w") as err:
            up = subprocess.Popen([*WKS, "up"], cwd=tmp_path, env=_env(),
                                  stdout=subprocess.DEVNULL, stderr=err)
        try:
            asyncio.run(wait_for(lambda: "waiting up to" in log.read_text(), 60, "the wait"))
            up.send_signal(signal.SIGTERM)
            assert up.wait(5) == 0, log.read_text()[-2000:]  # not the 30 s wait
        finally:
            if up.poll() is None:
                up.kill()
                up.wait()
        assert "stopped during start-up" in log.read_text()
        assert _servers_of(var) == []
    finally:
        os.close(holder)


async def test_a_server_left_before_its_url_was_written_is_stopped_not_doubled(
    tmp_path: Path,
) -> None:
    """Its owner was killed between starting it and writing var/redis.url: the next start
    stops it (it flushes its append-only file) before starting the directory's server."""
    var = tmp_path / "var"
    first = await asyncio.to_thread(start_managed, var)
    assert isinstance(first, Managed)
    assert first.lock is not None
    os.close(first.lock)  # the owner is gone...
    first.lock = None
    (var / "redis.url").unlink()  # ...before it wrote the URL
    try:
        second = await asyncio.to_thread(start_managed, var)
        assert isinstance(second, Managed)
        try:
            assert not _alive(first.pid)
            assert _servers_of(var) == [second.pid]
        finally:
            await asyncio.to_thread(second.stop)
    finally:
        assert first.server is not None
        first.server.kill()  # reaps the child
    assert _servers_of(var) == []
