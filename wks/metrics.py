"""Every `wks_*` Prometheus metric, defined once. Label values are few and bounded."""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

REGISTRY = CollectorRegistry(auto_describe=True)

_LATENCY = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
_AGE = (0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 10, 60, 300, 3600)


def observe_counted(child: Any, pairs: Iterable[tuple[float, int]]) -> None:
    """`child.observe(value)` `count` times for each (value, count), with one locked
    increment per bucket touched. The fold observes every event's age, one value per stream
    millisecond of the batch: one `observe` per event (a lock and a bucket walk each) was a
    tenth of the consumer's CPU. Uses the client's bucket internals when they are there, and
    plain `observe` otherwise."""
    bounds = getattr(child, "_upper_bounds", None)
    buckets = getattr(child, "_buckets", None)
    total = getattr(child, "_sum", None)
    if bounds is None or buckets is None or total is None or len(bounds) != len(buckets):
        for value, count in pairs:
            for _ in range(count):
                child.observe(value)
        return
    counts = [0] * len(bounds)
    added = 0.0
    for value, count in pairs:
        counts[bisect_left(bounds, value)] += count  # the last bound is +Inf
        added += value * count
    total.inc(added)
    for i, n in enumerate(counts):
        if n:
            buckets[i].inc(n)


# consumers
EVENTS = Counter(
    "wks_events_total", "Stream entries handled, by stream, event type and outcome "
    "(applied, dead, duplicate).", ["stream", "type", "outcome"], registry=REGISTRY)
BATCH_SECONDS = Histogram(
    "wks_fold_batch_seconds", "Time to apply one batch (SQLite commit and mirror included).",
    ["group"], buckets=_LATENCY, registry=REGISTRY)
BATCH_SIZE = Histogram(
    "wks_fold_batch_size", "Entries per applied batch.", ["group"],
    buckets=(1, 10, 50, 100, 250, 500, 1000, 2000, 5000, 10000, 20000), registry=REGISTRY)
EVENT_AGE = Histogram(
    "wks_event_age_seconds", "Age of an event at fold time (commit time minus the entry id's "
    "time).", ["group"], buckets=_AGE, registry=REGISTRY)
GROUP_LAG = Gauge(
    "wks_group_lag", "Entries in the stream not yet delivered to the group.", ["group"],
    registry=REGISTRY)
GROUP_PENDING = Gauge(
    "wks_group_pending", "Entries delivered to the group and not yet acknowledged.", ["group"],
    registry=REGISTRY)
GROUP_OLDEST_PENDING = Gauge(
    "wks_group_oldest_pending_seconds", "Idle time of the group's oldest pending entry.",
    ["group"], registry=REGISTRY)
DEAD_LETTERS = Counter(
    "wks_dead_letters_total", "Entries sent to the dead-letter stream, by source stream and "
    "reason kind (invalid, oversized, not_json, max_deliveries, missing_field).",
    ["stream", "reason"], registry=REGISTRY)
CLAIMED = Counter(
    "wks_claimed_total", "Entries claimed from dead or stalled consumers (XAUTOCLAIM).",
    ["group"], registry=REGISTRY)
REDIS_ERRORS = Counter(
    "wks_redis_errors_total", "Redis operations that failed (connection or timeout).",
    ["component"], registry=REGISTRY)
STORE_ERRORS = Counter(
    "wks_store_errors_total", "SQLite operations that failed.", ["operation"],
    registry=REGISTRY)
REDIS_UP = Gauge(
    "wks_redis_up", "1 when the last Redis call of this process succeeded.", registry=REGISTRY)
CONSUMER_UP = Gauge(
    "wks_consumer_running", "1 while the group's consumer loop runs in this process.", ["group"],
    registry=REGISTRY)

# producers
PUBLISHED = Counter(
    "wks_published_total", "Events published by this process's producer.", ["stream", "mode"],
    registry=REGISTRY)
PRODUCER_BUFFERED = Gauge(
    "wks_producer_buffered", "Events held in the producer's offline buffer.", registry=REGISTRY)

# streams and state
STREAM_LENGTH = Gauge(
    "wks_stream_length", "Entries in each stream.", ["stream"], registry=REGISTRY)
STREAM_OLDEST_AGE = Gauge(
    "wks_stream_oldest_age_seconds", "Age of the oldest entry in each stream.", ["stream"],
    registry=REGISTRY)
STREAM_TRIMMED = Counter(
    "wks_stream_trimmed_total", "Entries removed by retention trimming.", ["stream"],
    registry=REGISTRY)
EXECUTIONS = Gauge(
    "wks_executions", "Executions in the store by status.", ["status"], registry=REGISTRY)
EXECUTIONS_STALE = Gauge(
    "wks_executions_stale", "Pending or running executions with no update for staleAfter "
    "(what POST /api/workflow-state/cleanup would fail).", registry=REGISTRY)

# http
HTTP_REQUESTS = Counter(
    "wks_http_requests_total", "HTTP requests by method, route template and status.",
    ["method", "route", "status"], registry=REGISTRY)
HTTP_SECONDS = Histogram(
    "wks_http_request_duration_seconds", "HTTP request duration by method and route template.",
    ["method", "route"], buckets=_LATENCY, registry=REGISTRY)

# backups and locks
BACKUPS = Counter(
    "wks_backups_total", "Backups by type and status.", ["type", "status"], registry=REGISTRY)
BACKUP_SECONDS = Histogram(
    "wks_backup_duration_seconds", "Backup duration (snapshot to verified).", ["type"],
    buckets=(0.1, 0.5, 1, 5, 10, 30, 60, 300, 900, 3600), registry=REGISTRY)
BACKUP_SIZE = Gauge(
    "wks_backup_size_bytes", "Size of the newest completed backup file.", registry=REGISTRY)
BACKUP_LAST_SUCCESS = Gauge(
    "wks_backup_last_success_timestamp_seconds", "Unix time of the last completed backup.",
    registry=REGISTRY)
BACKUP_INTERVAL = Gauge(
    "wks_backup_interval_seconds", "Scheduled backup interval in force (autoBackupInterval); "
    "0 while scheduled backups are disabled.", registry=REGISTRY)
VERIFY_FAILURES = Counter(
    "wks_backup_verify_failures_total", "Backup verifications that found a problem.",
    registry=REGISTRY)
LOCK_ACQUIRED = Counter(
    "wks_lock_acquisitions_total", "Lock acquisitions by lock name and result (acquired, busy).",
    ["name", "result"], registry=REGISTRY)
LOCK_LOST = Counter(
    "wks_lock_lost_total", "Locks whose renewal failed past the holder's deadline.", ["name"],
    registry=REGISTRY)
