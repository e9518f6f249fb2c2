"""One module per resource.

Each module exposes `routes = web.RouteTableDef()` and `OPENAPI: dict` (path -> operations,
merged into /openapi.json), optionally `OPENAPI_COMPONENTS: dict` (schema name -> JSON
Schema). Handlers read the app state through the keys in `wks.http.context` (re-exported by
`wks.http.app`: SETTINGS, REDIS, STORE, PRODUCER, RUNTIME, SHUTDOWN), the caller through
`wks.http.auth.principal_of(request)` / `require_admin(request)`, and fail by raising
`wks.http.errors.ApiError(status, message)`, which the middleware renders as
`{"success": false, "error": message}`. `wks.http.openapi` has helpers for the fragments
(`ok`, `errors`, `ref`, `json_content`).
"""
