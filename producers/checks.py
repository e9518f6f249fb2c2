"""Encode events for publishing, refusing any that the consumers would dead-letter.

The rules are the consumers' own (SPEC section 3: `wks.events.decode_workflow` and
`decode_backup`), applied to the very bytes about to be sent. Run one payload at a time, the
consumer's decoder costs ~2 us an event (size, nesting, id and data checks in Python around
msgspec's typed decode): a third of the library's throughput. So workflow events are encoded
and judged a slice at a time: msgspec encodes the slice as one JSON array (half the cost of
an encode per event), decodes that array with the consumer's types (types and bounds, in C)
and cuts it into the per-event payloads; a few C-level passes over the slice cover the
consumer's other checks. A slice that pass does not clear plainly goes through the
consumer's decoder one payload at a time, and its reason is the error. The pass only ever
says "plainly valid" or "look closer", so a rule it misses costs speed, never lets a bad
event through; `tests/integration/test_producer_checks.py` holds the two to one verdict.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import msgspec

from wks.errors import BadEventError
from wks.events import decode_any, decode_backup, decode_workflow, encode, event_type, plainly_valid
from wks.keys import Keys

_array = msgspec.json.Encoder()  # as wks.events.encode, for a slice at once
_split = msgspec.json.Decoder(list[msgspec.Raw])
# events judged in one decode: past ~1,000 (~160 KB) the array falls out of the CPU's
# caches and the decode takes half as long again
_SLICE = 1000


def encode_checked(
    events: Sequence[Any], stream_kind: str, start: int = 0, stop: int | None = None
) -> list[bytes]:
    """The payloads of `events[start:stop]`; raises BadEventError naming the first of them
    (counted in all of `events`) that the consumer of a `stream_kind` ("workflow", "backup"
    or "other") stream would refuse."""
    stop = len(events) if stop is None else min(stop, len(events))
    if stream_kind != "workflow":  # backup requests come one at a time: no batch pass
        payloads = [encode(e) for e in events[start:stop]]
        _judge_each(payloads, start, _decoder(stream_kind), _named(events))
        return payloads
    payloads = []
    for first in range(start, stop, _SLICE):
        chunk = events[first:min(first + _SLICE, stop)]
        blob = _array.encode(chunk)
        try:
            part = list(map(bytes, _split.decode(blob)))
        except (msgspec.DecodeError, RecursionError):  # nested past the parser's limit
            part = [encode(e) for e in chunk]
            blob = b""
        if not (blob and plainly_valid(blob, part)):
            _judge_each(part, first, decode_workflow, _named(events))
        payloads += part
    return payloads


def stream_kind(keys: Keys, stream: str) -> str:
    """Whose rules judge what goes to `stream`: its consumers'. Streams other than the
    backup and results streams (a bench's, a test's) are held to the workflow rules."""
    if stream == keys.backup_stream:
        return "backup"
    return "other" if stream == keys.results_stream else "workflow"


def check_payloads(payloads: Sequence[bytes], stream_kind: str) -> None:
    """Raise BadEventError naming the first of `payloads` (events' JSON, made elsewhere)
    that the consumer of a `stream_kind` stream would refuse."""
    def name(index: int) -> str:
        return f"payload {index + 1} of {len(payloads)}" if len(payloads) > 1 else "payload"

    _judge_each(payloads, 0, _decoder(stream_kind), name)


def _decoder(stream_kind: str) -> Callable[[bytes], Any]:
    """The decoder of the consumers of a `stream_kind` stream."""
    return {"workflow": decode_workflow, "backup": decode_backup}.get(stream_kind, decode_any)


def _named(events: Sequence[Any]) -> Callable[[int], str]:
    """How an error names `events[index]`: its place when there are several, its type."""
    def name(index: int) -> str:
        where = f"event {index + 1} of {len(events)} " if len(events) > 1 else ""
        return f"{where}({_type_of(events[index])})"
    return name


def _judge_each(
    payloads: Sequence[bytes], offset: int, decode: Callable[[bytes], Any],
    name: Callable[[int], str],
) -> None:
    """The consumer's own decoder on each payload (the first counted `offset`); its reason,
    if any, is the error, naming the payload as `name(index)` does."""
    for index, raw in enumerate(payloads, offset):
        try:
            decode(raw)
        except BadEventError as exc:
            raise BadEventError(f"{name(index)} not published, the consumers would refuse "
                                f"it: {exc.reason}") from None


def _type_of(event: Any) -> str:
    try:
        return event_type(event)
    except AttributeError:
        return type(event).__name__
