"""Backup routes (SPEC section 8, admin only).

Ids are integers and file names are never taken from a request: anything else in the id
position answers 400 and touches nothing. Responses carry a backup's file name, never a
server path (error messages are scrubbed of paths too).
"""

from __future__ import annotations

import asyncio
import re
import time
from datetime import UTC, datetime, timedelta
from typing import Any

from aiohttp import web
from redis.exceptions import RedisError

from wks import backup_job
from wks import backup_log as log
from wks.errors import BackupError, BadEventError, NotFound
from wks.events import (
    BACKUP_TYPES,
    BackupCompleted,
    BackupFailed,
    decode_any,
    now_ms,
    split_entry_id,
)
from wks.http import openapi as oa
from wks.http.auth import REDIS_TIMEOUT, require_admin
from wks.http.context import PRODUCER, REDIS, SETTINGS, STORE
from wks.http.errors import ApiError
from wks.keys import EVENT_FIELD, GROUP_BACKUP
from wks.liveness import running_consumers
from wks.redis import REDIS_DOWN, text

routes = web.RouteTableDef()

DEFAULT_WAIT = 30.0
MAX_WAIT = 300.0
_ID = re.compile(r"^[1-9][0-9]{0,17}$")
_PATH = re.compile(r"(?:/[^\s/:'\"]+)+/([^\s/:'\"]+)")


def _scrub(text: Any) -> Any:
    """Replace absolute paths in a message by their last component."""
    return _PATH.sub(r"\1", text) if isinstance(text, str) else text


def _backup(row: dict[str, Any]) -> dict[str, Any]:
    out = log.public(row)
    out["errorMessage"] = _scrub(out["errorMessage"])
    return out


def _backup_id(request: web.Request) -> int:
    raw = request.match_info["id"]
    if not _ID.match(raw):
        raise ApiError(400, "backup id must be a positive integer")
    return int(raw)


def _wait(request: web.Request) -> float:
    raw = request.query.get("wait")
    if raw is None:
        return DEFAULT_WAIT
    try:
        value = float(raw)
    except ValueError:
        raise ApiError(400, "wait must be a number of seconds") from None
    if not 0 <= value <= MAX_WAIT:
        raise ApiError(400, f"wait must be between 0 and {MAX_WAIT:g} seconds")
    return value


async def _worker_running(request: web.Request) -> bool:
    """Is any backup consumer reading? With none, a request is only queued: no point waiting."""
    redis = request.app[REDIS]
    try:
        return bool(await running_consumers(redis, request.app[SETTINGS].keys, GROUP_BACKUP))
    except RedisError:
        return False


async def _backup_type(request: web.Request) -> str:
    """The optional body's `backupType` (`manual` without a body); other keys are ignored,
    as unknown keys of an event are."""
    if not request.can_read_body:
        return "manual"
    try:
        body = await request.json()
    except (ValueError, RecursionError):
        raise ApiError(400, "body must be a JSON object (or absent)") from None
    if body is None:
        return "manual"
    if not isinstance(body, dict):
        raise ApiError(400, "body must be a JSON object (or absent)")
    kind = body.get("backupType")
    if kind is None:  # absent or null: the default
        return "manual"
    if not isinstance(kind, str) or kind not in BACKUP_TYPES:
        raise ApiError(400, f"backupType must be one of {', '.join(BACKUP_TYPES)}")
    return kind


@routes.post("/api/backups")
async def create_backup(request: web.Request) -> web.Response:
    principal = require_admin(request)
    wait = _wait(request)
    kind = await _backup_type(request)
    try:
        rid, entry = await request.app[PRODUCER].request_backup(
            backup_type=kind, requested_by=principal.sub)
        running = wait > 0 and await _worker_running(request)
    except REDIS_DOWN:
        raise ApiError(503, "Redis unreachable: backup not requested") from None
    store = request.app[STORE]
    outcomes = _Outcomes(request, split_entry_id(entry)[0] if entry else now_ms() - 60_000)
    deadline = time.monotonic() + wait
    while running:
        row = await log.by_request(store, rid) or await outcomes.find(rid)
        if row is not None:
            if row["status"] == "completed":
                return web.json_response({"success": True, "message": "Backup completed",
                                          "backup": _backup(row)}, status=201)
            raise ApiError(500, f"backup failed: {_scrub(row['error_message'])}",
                           extra={"requestId": rid, "backup": _backup(row)})
        if time.monotonic() >= deadline:
            break
        await asyncio.sleep(0.1)  # polling the log: the result is committed by another process
    return web.json_response({"success": True, "message": "Backup requested",
                              "requestId": rid}, status=202)


class _Outcomes:
    """The results stream, read forward from the request's time, for the request's outcome.
    A backup that completed and was rotated away (more backups finished meanwhile than
    `maxBackups`) before the waiter saw its row is known only there."""

    PAGE = 500

    def __init__(self, request: web.Request, since_ms: int) -> None:
        self.redis = request.app[REDIS]
        self.stream = request.app[SETTINGS].keys.results_stream
        self.cursor = f"{since_ms}-0"

    async def find(self, request_id: str) -> dict[str, Any] | None:
        """The outcome as a backup_log row, once a worker has published it; else None."""
        try:
            while True:
                rows = await self.redis.xrange(self.stream, min=self.cursor, max="+",
                                               count=self.PAGE)
                for entry_id, fields in rows:
                    self.cursor = f"({text(entry_id)}"
                    row = _outcome_row(fields.get(EVENT_FIELD, b""), request_id)
                    if row is not None:
                        return row
                if len(rows) < self.PAGE:
                    return None
        except (*REDIS_DOWN, RedisError):
            return None  # the row may still be found; the wait ends at its deadline anyway


def _outcome_row(raw: bytes, request_id: str) -> dict[str, Any] | None:
    """A result event of `request_id`'s backup, as the row it described (None otherwise)."""
    try:
        event = decode_any(raw)
    except BadEventError:
        return None
    if not isinstance(event, BackupCompleted | BackupFailed) or event.request_id != request_id:
        return None
    done = datetime.fromtimestamp(event.ts / 1000, UTC)
    if isinstance(event, BackupFailed):
        return {"id": event.backup_id, "backup_type": event.backup_type, "file_path": None,
                "file_size_bytes": None, "started_at": None, "completed_at": log.iso(done),
                "status": "failed", "error_message": event.error, "checksum": None,
                "request_id": request_id, "verified_at": None}
    return {"id": event.backup_id, "backup_type": event.backup_type,
            "file_path": event.file_path, "file_size_bytes": event.file_size_bytes,
            "started_at": log.iso(done - timedelta(milliseconds=event.duration_ms)),
            "completed_at": log.iso(done), "status": "completed", "error_message": None,
            "checksum": event.checksum, "request_id": request_id, "verified_at": None}


@routes.get("/api/backups")
async def list_backups(request: web.Request) -> web.Response:
    require_admin(request)
    store = request.app[STORE]
    rows = [_backup(r) for r in await log.listing(store)]
    return web.json_response({"success": True, "backups": rows,
                              "statistics": await log.stats(store), "count": len(rows)})


@routes.get("/api/backups/stats")
async def backup_stats(request: web.Request) -> web.Response:
    require_admin(request)
    return web.json_response({"success": True,
                              "statistics": await log.stats(request.app[STORE])})


@routes.get("/api/backups/config")
async def get_config(request: web.Request) -> web.Response:
    require_admin(request)
    try:
        # auth lets a GET through a Redis outage (reads come from SQLite), but this one reads
        # Redis: bound it as the session check is, not by the client's 15 s socket timeout
        async with asyncio.timeout(REDIS_TIMEOUT):
            config = await backup_job.read_config(request.app[REDIS], request.app[SETTINGS])
    except REDIS_DOWN:  # TimeoutError included (an OSError)
        raise ApiError(503, "Redis unreachable: backup config unavailable") from None
    return web.json_response({"success": True, "config": config.as_dict()})


@routes.put("/api/backups/config")
async def put_config(request: web.Request) -> web.Response:
    require_admin(request)
    try:
        body = await request.json()
    except (ValueError, RecursionError):
        raise ApiError(400, "body must be a JSON object") from None
    try:
        changes = backup_job.validate_config(body)
    except ValueError as exc:
        raise ApiError(400, str(exc)) from None
    try:
        config = await backup_job.write_config(request.app[REDIS], request.app[SETTINGS],
                                               changes)
    except REDIS_DOWN:
        raise ApiError(503, "Redis unreachable: backup config not changed") from None
    return web.json_response({"success": True, "config": config.as_dict()})


@routes.get("/api/backups/{id}")
async def get_backup(request: web.Request) -> web.Response:
    require_admin(request)
    row = await log.get(request.app[STORE], _backup_id(request))
    if row is None:
        raise ApiError(404, "backup not found")
    return web.json_response({"success": True, "backup": _backup(row)})


@routes.post("/api/backups/{id}/verify")
async def verify(request: web.Request) -> web.Response:
    require_admin(request)
    backup_id = _backup_id(request)
    try:
        verdict = await backup_job.verify_backup(request.app[STORE], request.app[SETTINGS],
                                                 backup_id, record=False)
    except NotFound:
        raise ApiError(404, "backup not found") from None
    except BackupError as exc:
        return web.json_response({"success": True, "backupId": backup_id, "valid": False,
                                  "message": _scrub(exc.reason), "checks": {}})
    return web.json_response({"success": True, "backupId": backup_id, "valid": verdict.valid,
                              "message": verdict.message, "checks": verdict.checks})


# -- OpenAPI ---------------------------------------------------------------------------------

_NSTR = {"type": ["string", "null"]}
_NINT = {"type": ["integer", "null"]}
_ID_PARAM = {"name": "id", "in": "path", "required": True,
             "schema": {"type": "string", "pattern": r"^[1-9][0-9]{0,17}$"}}
_CONFIG = {
    "type": "object", "additionalProperties": False,
    "properties": {
        "autoBackupEnabled": {"type": "boolean"},
        "autoBackupInterval": {"type": "integer", "minimum": backup_job.MIN_INTERVAL_MS,
                               "maximum": backup_job.MAX_INTERVAL_MS,
                               "description": "milliseconds"},
        "maxBackups": {"type": "integer", "minimum": 1,
                       "maximum": backup_job.MAX_BACKUPS_LIMIT},
        "compression": {"enum": ["none", "gzip", "zstd"]},
    },
}
_STATS = {
    "type": "object", "additionalProperties": False,
    "required": ["totalBackups", "totalSize", "oldestBackup", "newestBackup", "failedBackups"],
    "properties": {"totalBackups": {"type": "integer"}, "totalSize": {"type": "integer"},
                   "oldestBackup": _NSTR, "newestBackup": _NSTR,
                   "failedBackups": {"type": "integer"}},
}
OPENAPI_COMPONENTS: dict[str, Any] = {
    "Backup": {
        "type": "object", "additionalProperties": False,
        "required": ["id", "backupType", "fileName", "fileSizeBytes", "startedAt",
                     "completedAt", "status", "errorMessage", "checksum", "requestId",
                     "verifiedAt"],
        "properties": {
            "id": {"type": "integer"},
            "backupType": {"enum": ["manual", "scheduled", "pre-migration"]},
            "fileName": _NSTR, "fileSizeBytes": _NINT, "startedAt": {"type": "string"},
            "completedAt": _NSTR,
            "status": {"enum": ["in_progress", "completed", "failed"]},
            "errorMessage": _NSTR, "checksum": _NSTR, "requestId": _NSTR, "verifiedAt": _NSTR,
        },
    },
    "BackupConfig": {**_CONFIG, "required": list(_CONFIG["properties"])},
}


def _obj(props: dict[str, Any]) -> dict[str, Any]:
    return {"type": "object", "required": list(props), "properties": props}


_CONFIG_OK = oa.ok("The backup config", _obj({"success": {"const": True},
                                               "config": oa.ref("BackupConfig")}))
OPENAPI: dict[str, Any] = {
    "/api/backups": {
        "post": {
            "summary": "Request a backup; wait up to `wait` s for it",
            "operationId": "createBackup",
            "parameters": [{"name": "wait", "in": "query", "required": False,
                            "schema": {"type": "number", "minimum": 0, "maximum": MAX_WAIT}}],
            "requestBody": {"required": False, "content": oa.json_content({
                "type": "object",
                "properties": {"backupType": {"enum": list(BACKUP_TYPES),
                                              "default": "manual"}}})},
            "responses": {
                "201": oa.ok("The completed backup", _obj({
                    "success": {"const": True}, "message": {"type": "string"},
                    "backup": oa.ref("Backup")})),
                "202": oa.ok("Requested; not finished in time (or no backup worker running)",
                             _obj({"success": {"const": True}, "message": {"type": "string"},
                                   "requestId": {"type": "string"}})),
                "500": oa.err("The backup failed"),
                **oa.errors(400, 403),
            },
        },
        "get": {
            "summary": "Every backup, newest first, with statistics",
            "operationId": "listBackups",
            "responses": {"200": oa.ok("Backups", _obj({
                "success": {"const": True}, "backups": {"type": "array",
                                                        "items": oa.ref("Backup")},
                "statistics": _STATS, "count": {"type": "integer"}})), **oa.errors(403)},
        },
    },
    "/api/backups/stats": {"get": {
        "summary": "Backup statistics", "operationId": "backupStats",
        "responses": {"200": oa.ok("Statistics", _obj({"success": {"const": True},
                                                        "statistics": _STATS})),
                      **oa.errors(403)},
    }},
    "/api/backups/config": {
        "get": {"summary": "The runtime backup config", "operationId": "getBackupConfig",
                "responses": {"200": _CONFIG_OK, **oa.errors(403)}},
        "put": {"summary": "Change the runtime backup config (honoured by every worker)",
                "operationId": "putBackupConfig",
                "requestBody": {"required": True, "content": oa.json_content(_CONFIG)},
                "responses": {"200": _CONFIG_OK, **oa.errors(400, 403)}},
    },
    "/api/backups/{id}": {"get": {
        "summary": "One backup", "operationId": "getBackup", "parameters": [_ID_PARAM],
        "responses": {"200": oa.ok("The backup", _obj({"success": {"const": True},
                                                        "backup": oa.ref("Backup")})),
                      **oa.errors(400, 403, 404)},
    }},
    "/api/backups/{id}/verify": {"post": {
        "summary": "Verify a backup: exists, checksum, opens read-only, integrity_check",
        "operationId": "verifyBackup", "parameters": [_ID_PARAM],
        "responses": {"200": oa.ok("The verdict", _obj({
            "success": {"const": True}, "backupId": {"type": "integer"},
            "valid": {"type": "boolean"}, "message": {"type": "string"},
            "checks": {"type": "object", "additionalProperties": {"type": "boolean"}}})),
            **oa.errors(400, 403, 404)},
    }},
}
