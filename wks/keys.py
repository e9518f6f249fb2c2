"""Every Redis stream, group and key name, in one place (SPEC section 2).

Nothing else in the code base builds a key string: ask a `Keys` for it.
"""

from __future__ import annotations

from dataclasses import dataclass

EVENT_FIELD = b"event"  # a stream entry has exactly this one field, the event as UTF-8 JSON

GROUP_STATE = "state"
GROUP_BACKUP = "backup"


@dataclass(frozen=True, slots=True)
class Keys:
    """Key names under one prefix (setting `prefix`, default `wks`)."""

    prefix: str = "wks"

    @property
    def workflow_stream(self) -> str:
        return f"{self.prefix}:stream:workflow"

    @property
    def backup_stream(self) -> str:
        return f"{self.prefix}:stream:backup"

    @property
    def results_stream(self) -> str:
        return f"{self.prefix}:stream:results"

    @property
    def dead_stream(self) -> str:
        return f"{self.prefix}:stream:dead"

    @property
    def active(self) -> str:
        return f"{self.prefix}:executions:active"

    @property
    def backup_config(self) -> str:
        return f"{self.prefix}:backup:config"

    def workflow(self, execution_id: str) -> str:
        return f"{self.prefix}:workflow:{execution_id}"

    def claim(self, execution_id: str) -> str:
        """String: the owner ('' for none) whose start, published through the API, claimed
        the execution, so no other user takes it over before the fold has it (a TTL)."""
        return f"{self.prefix}:claim:{execution_id}"

    def lock(self, name: str) -> str:
        return f"{self.prefix}:lock:{name}"

    def fence(self, name: str) -> str:
        return f"{self.prefix}:fence:{name}"

    def session(self, sid: str) -> str:
        return f"{self.prefix}:session:{sid}"

    def ratelimit(self, subject: str) -> str:
        return f"{self.prefix}:ratelimit:{subject}"

    def schedule_slot(self, interval_ms: int, slot: int) -> str:
        """Claimed once per scheduled-backup interval, so N workers make one backup."""
        return f"{self.prefix}:schedule:backup:{interval_ms}:{slot}"

    def worker_heartbeat(self, group: str, consumer: str) -> str:
        """String with a TTL, renewed by a running consumer (wks.liveness)."""
        return f"{self.prefix}:consumer:{group}:{consumer}"

    def group_consumers(self, group: str) -> str:
        """Set: the names of a group's consumers that keep a heartbeat."""
        return f"{self.prefix}:consumers:{group}"

    @property
    def retention_totals(self) -> str:
        """Hash: entries trimmed per stream (short name) and the last trim's time, for /health."""
        return f"{self.prefix}:retention:trimmed"

    def bench_stream(self, name: str) -> str:
        """A scratch stream of `wks bench` (under its own private prefix)."""
        return f"{self.prefix}:bench:{name}"

    @property
    def streams(self) -> dict[str, str]:
        """Every stream by short name, for health, metrics and trimming."""
        return {
            "workflow": self.workflow_stream,
            "backup": self.backup_stream,
            "results": self.results_stream,
            "dead": self.dead_stream,
        }
