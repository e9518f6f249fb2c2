"""`wks backup create|list|verify` and `wks restore`'s refusals, as an operator runs them."""

from __future__ import annotations

import asyncio
import json

from tests.backup.conftest import ROOT, WKS, env_for, populate
from wks.config import Settings
from wks.store import Store


async def _wks(settings: Settings, *args: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        *WKS, *args, env=env_for(settings), cwd=ROOT, stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    return proc.returncode or 0, out.decode(), err.decode()


async def _content(store: Store) -> list[list[tuple]]:
    return [[tuple(r) for r in await store.fetchall(sql)] for sql in (
        "SELECT execution_id, fold FROM executions ORDER BY execution_id",
        "SELECT id, status, file_path, checksum FROM backup_log ORDER BY id")]


async def test_backup_commands_and_restore_refusals(settings: Settings, store: Store):
    """create, list and verify work from the shell; verify exits 1 on a damaged file; restore
    without a terminal or --yes refuses in one line and changes nothing."""
    await populate(store, 25)
    code, out, _ = await _wks(settings, "backup", "create")
    assert code == 0
    assert "backup 1 completed" in out
    code, out, _ = await _wks(settings, "backup", "list", "--json")
    listed = json.loads(out)
    assert [b["id"] for b in listed] == [1]
    assert (await _wks(settings, "backup", "verify", "1"))[0] == 0
    path = settings.backup_dir / listed[0]["fileName"]
    data = await asyncio.to_thread(path.read_bytes)
    await asyncio.to_thread(path.write_bytes, data[:-1] + bytes([data[-1] ^ 0xFF]))
    code, out, _ = await _wks(settings, "backup", "verify", "1")
    assert code == 1
    assert "INVALID" in out
    before = await _content(store)
    code, _, err = await _wks(settings, "restore", "1")
    assert code == 2
    assert len(err.strip().splitlines()) == 1
    assert "--yes" in err
    code, _, err = await _wks(settings, "restore", "1", "--yes")
    assert code == 1  # the damaged backup fails verification before anything changes
    assert "verification" in err
    assert await _content(store) == before
