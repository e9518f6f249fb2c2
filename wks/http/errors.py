"""The API's error responses: `{"success": false, "error": "<message>"}` with a status code."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from aiohttp import web


class ApiError(Exception):
    """Raised by handlers and middleware; rendered as JSON by the error middleware."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        headers: Mapping[str, str] | None = None,
        extra: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = dict(headers or {})
        self.extra = dict(extra or {})


def error_response(
    status: int, message: str, headers: Mapping[str, str] | None = None,
    extra: Mapping[str, Any] | None = None,
) -> web.Response:
    body: dict[str, Any] = {"success": False, "error": message}
    if extra:
        body.update(extra)
    return web.json_response(body, status=status, headers=headers)


def not_found(what: str = "execution") -> ApiError:
    return ApiError(404, f"{what} not found")
