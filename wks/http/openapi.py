"""The OpenAPI 3.1 document served at /openapi.json, assembled from per-module fragments.

Each route module exposes `OPENAPI: dict` (paths -> operations) and may expose
`OPENAPI_COMPONENTS: dict` (schema name -> JSON Schema); `document()` merges them over the
shared components below. The workflow event schemas come from the wire structs themselves
(msgspec), so the document cannot drift from what the API accepts.
"""

from __future__ import annotations

from collections.abc import Iterable
from types import ModuleType
from typing import Any

import msgspec

from wks import __version__
from wks.events import WorkflowEvent

REF = "#/components/schemas/{name}"

ID_PATTERN = r"^[A-Za-z0-9._:@-]{1,128}$"
ENTRY_ID_PATTERN = r"^[0-9]{1,20}-[0-9]{1,20}$"


def ref(name: str) -> dict[str, str]:
    return {"$ref": REF.format(name=name)}


def json_content(schema: dict[str, Any]) -> dict[str, Any]:
    return {"application/json": {"schema": schema}}


def ok(description: str, schema: dict[str, Any] | str) -> dict[str, Any]:
    body = ref(schema) if isinstance(schema, str) else schema
    return {"description": description, "content": json_content(body)}


def err(description: str) -> dict[str, Any]:
    return {"description": description, "content": json_content(ref("Error"))}


def errors(*codes: int) -> dict[str, Any]:
    """Error responses for an authenticated route: its own codes plus 401, 413, 429, 503."""
    text = {
        400: "Bad request parameters or body", 401: "Missing, invalid, expired or revoked token",
        403: "Admin role required", 404: "Unknown id (or another user's execution)",
        413: "Request body over the size limit", 429: "Rate limit exceeded (see Retry-After)",
        503: "Redis unreachable for an operation that needs it", 504: "Timed out waiting",
    }
    out = {str(c): err(text[c]) for c in sorted({*codes, 401, 413, 429, 503})}
    out["429"]["headers"] = {"Retry-After": {"schema": {"type": "string"},
                                             "description": "seconds to wait"}}
    return out


def execution_id_param() -> dict[str, Any]:
    return {"name": "executionId", "in": "path", "required": True,
            "schema": {"type": "string", "pattern": ID_PATTERN}}


_NULLABLE_STR = {"type": ["string", "null"]}

COMPONENTS: dict[str, Any] = {
    "Error": {
        "type": "object",
        "required": ["success", "error"],
        "properties": {"success": {"const": False}, "error": {"type": "string"}},
    },
    "State": {
        "type": "object",
        "description": "An execution's state (SPEC section 4).",
        "required": ["executionId", "status", "progress", "currentStep", "completedSteps",
                     "data", "startedAt", "updatedAt"],
        "additionalProperties": False,
        "properties": {
            "executionId": {"type": "string"},
            "workflowId": {"type": "string"},
            "status": {"enum": ["pending", "running", "completed", "failed", "cancelled"]},
            "progress": {"type": "integer", "minimum": 0, "maximum": 100},
            "currentStep": _NULLABLE_STR,
            "totalSteps": {"type": "integer", "minimum": 0},
            "completedSteps": {"type": "integer", "minimum": 0},
            "data": {"type": "object"},
            "startedAt": {"type": "integer"},
            "updatedAt": {"type": "integer"},
            "estimatedCompletion": {"type": "integer"},
            "error": {"type": "string"},
            "owner": {"type": "string"},
        },
    },
}


def _event_components() -> tuple[dict[str, Any], dict[str, Any]]:
    (top,), defs = msgspec.json.schema_components([WorkflowEvent], ref_template=REF)
    return top, defs


def document(modules: Iterable[ModuleType]) -> dict[str, Any]:
    """The whole document from the route modules' fragments."""
    event, event_defs = _event_components()
    schemas: dict[str, Any] = {**event_defs, "WorkflowEvent": event, **COMPONENTS}
    paths: dict[str, Any] = {}
    for module in modules:
        schemas.update(getattr(module, "OPENAPI_COMPONENTS", {}))
        for path, operations in getattr(module, "OPENAPI", {}).items():
            paths.setdefault(path, {}).update(operations)
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "wks",
            "version": __version__,
            "description": "Workflow execution state, ingest, audit, health and backups. "
            "Every route but /health and /metrics needs `Authorization: Bearer <token>` "
            "(`wks token create`). Errors: {\"success\": false, \"error\": \"...\"}.",
        },
        "components": {
            "schemas": schemas,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer",
                                           "bearerFormat": "JWT"}},
        },
        "security": [{"bearer": []}],
        "paths": dict(sorted(paths.items())),
    }
