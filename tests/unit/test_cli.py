"""The CLI's own failures: a usage error is one line, a reader that goes away is no error."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import pytest

from wks.cli.__main__ import shown_url

WKS = [sys.executable, "-m", "wks.cli"]


@pytest.mark.parametrize("argv", [
    ["emit", "workflow.started", "--execution-id", "x", "--total-steps", "abc"],
    ["emit", "workflow.bogus", "--execution-id", "x"],
    ["restore", "abc"],
    ["nope"],
    [],
])
def test_a_usage_error_is_one_line_and_exit_2(argv: list[str]) -> None:
    done = subprocess.run([*WKS, *argv], capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    lines = done.stderr.splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("wks")
    assert "--help" in lines[0]


def test_output_into_a_closed_pipe_ends_quietly() -> None:
    """`wks schema | head -c1`: the reader is gone before wks writes; no traceback."""
    proc = subprocess.Popen([*WKS, "schema"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None
    assert proc.stderr is not None
    proc.stdout.close()  # before the interpreter has even imported wks
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=60) == 141
    assert err == ""


@pytest.mark.parametrize("argv", [["replay"], ["backup", "create"], ["dead", "list"],
                                  ["token", "create", "--sub", "a", "--role", "user"]])
def test_an_unreachable_redis_is_one_line_and_exit_1(argv: list[str], tmp_path) -> None:
    """Nothing listens on the port: one line naming the URL, its password hidden."""
    with socket.socket() as s:  # a port nothing listens on once closed
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "WKS_REDIS_URL": f"redis://:hunter2@127.0.0.1:{port}/0",
           "WKS_DB_PATH": str(tmp_path / "w.db"), "WKS_BACKUP_DIR": str(tmp_path / "b"),
           "WKS_JWT_SECRET": "s" * 40}
    done = subprocess.run([*WKS, *argv], capture_output=True, text=True, timeout=60,
                          cwd=tmp_path, env=env)
    assert done.returncode == 1
    lines = done.stderr.splitlines()
    assert len(lines) == 1, done.stderr
    assert f"cannot reach Redis at redis://:***@127.0.0.1:{port}/0" in lines[0]


@pytest.mark.parametrize(("url", "shown"), [
    ("redis://:pw@h:1/0", "redis://:***@h:1/0"),
    ("redis://u:pw@h:1/0?db=2", "redis://u:***@h:1/0?db=2"),
    ("unix:///run/redis.sock?db=0&password=pw", "unix:///run/redis.sock?db=0&password=***"),
    ("redis://h:6379/0", "redis://h:6379/0"),
])
def test_a_shown_url_hides_its_password(url: str, shown: str) -> None:
    assert shown_url(url) == shown
