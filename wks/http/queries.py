"""Read queries for the API, with ownership applied in SQL (a user's view holds only its own).

All reads come from SQLite, the system of record, so they keep answering while Redis is down.
"""

from __future__ import annotations

from typing import Any

from wks.http.auth import Principal, visible
from wks.state import ACTIVE, RANK, state_dict
from wks.store import Store

STATUSES = tuple(RANK)  # pending, running, completed, failed, cancelled
_ACTIVE = tuple(sorted(ACTIVE))


def _owner_clause(principal: Principal) -> tuple[str, tuple[Any, ...]]:
    if principal.is_admin:
        return "", ()
    return " AND owner = ?", (principal.sub,)


async def state_for(store: Store, principal: Principal, execution_id: str) -> dict[str, Any] | None:
    """The execution's API state, or None when unknown or not visible to `principal`."""
    state = await store.get_state(execution_id)
    if state is None or not visible(principal, state.owner):
        return None
    return state_dict(state)


async def owner_of(store: Store, execution_id: str) -> tuple[bool, str | None]:
    """(exists, owner) of an execution."""
    rows = await store.fetchall(
        "SELECT owner FROM executions WHERE execution_id = ?", (execution_id,)
    )
    return (True, rows[0][0]) if rows else (False, None)


async def start_of(store: Store, execution_id: str) -> tuple[bool, str | None]:
    """(has a folded start, owner) of an execution: one seen only through progress events
    has neither workflowId nor owner yet."""
    rows = await store.fetchall(
        "SELECT workflow_id IS NOT NULL, owner FROM executions WHERE execution_id = ?",
        (execution_id,))
    return (bool(rows[0][0]), rows[0][1]) if rows else (False, None)


async def can_see(store: Store, principal: Principal, execution_id: str) -> bool:
    exists, owner = await owner_of(store, execution_id)
    return exists and visible(principal, owner)


async def active_ids(store: Store, principal: Principal) -> list[str]:
    where, params = _owner_clause(principal)
    rows = await store.fetchall(
        "SELECT execution_id FROM executions WHERE status IN (?, ?)" + where
        + " ORDER BY execution_id", (*_ACTIVE, *params),
    )
    return [r[0] for r in rows]


async def active_detailed(store: Store, principal: Principal) -> list[dict[str, Any]]:
    where, params = _owner_clause(principal)
    rows = await store.fetchall(
        "SELECT execution_id, status, progress, current_step FROM executions"
        " WHERE status IN (?, ?)" + where + " ORDER BY execution_id", (*_ACTIVE, *params),
    )
    return [
        {"executionId": r[0], "status": r[1], "progress": r[2], "currentStep": r[3]}
        for r in rows
    ]


async def statistics(store: Store, principal: Principal) -> dict[str, Any]:
    """Counts by status over every visible execution; average progress over the active ones."""
    where, params = _owner_clause(principal)
    by_status = dict.fromkeys(STATUSES, 0)
    rows = await store.fetchall(
        "SELECT status, COUNT(*) FROM executions WHERE 1 = 1" + where + " GROUP BY status",
        params,
    )
    for status, count in rows:
        by_status[status] = int(count)
    average = await store.scalar(
        "SELECT AVG(progress) FROM executions WHERE status IN (?, ?)" + where,
        (*_ACTIVE, *params),
    )
    return {
        "activeExecutions": sum(by_status[s] for s in _ACTIVE),
        "executionsByStatus": by_status,
        "averageProgress": round(float(average or 0.0), 2),
    }


async def stale(
    store: Store, principal: Principal, older_than_ms: int
) -> list[tuple[str, int]]:
    """(executionId, updatedAt) of visible active executions with no update since the bound."""
    where, params = _owner_clause(principal)
    rows = await store.fetchall(
        "SELECT execution_id, updated_at FROM executions WHERE status IN (?, ?)"
        " AND updated_at < ?" + where + " ORDER BY execution_id",
        (*_ACTIVE, older_than_ms, *params),
    )
    return [(r[0], int(r[1])) for r in rows]
