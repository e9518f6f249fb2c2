"""Wire format v1 (SPEC section 3): tagged msgspec Structs, one union, one decoder.

Stream entries carry one field, `event`, holding one of these as UTF-8 JSON with camelCase
keys and a `type` tag. Unknown keys are ignored (forward compatibility); a missing required
key, a wrong type or a broken bound raises `BadEventError`. Schema evolution follows msgspec's
rules: new fields get defaults, a field's type never changes.
"""

from __future__ import annotations

import re
import string
import time
from collections.abc import Callable, Sequence
from typing import Annotated, Any, Literal, NamedTuple, get_args

import msgspec

from wks.errors import BadEventError

MAX_ENTRY_BYTES = 256 * 1024
MAX_DATA_BYTES = 64 * 1024

# Ids are checked against ID_PATTERN after decoding (_check_ids), not by msgspec: its pattern
# check calls Python's re for every string, over half of a progress event's decode time (and
# re's `$` let an id end in a newline). The schema still publishes the pattern.
ID_PATTERN = r"^[A-Za-z0-9._:@-]+$"
Id = Annotated[str, msgspec.Meta(min_length=1, max_length=128,
                                 extra_json_schema={"pattern": ID_PATTERN})]
_ID_CHARS = str.maketrans("", "", string.ascii_letters + string.digits + "._:@-")
EventId = Annotated[str, msgspec.Meta(max_length=64)]  # "" is taken as absent
INT64_MAX = (1 << 63) - 1  # SQLite's largest INTEGER: counts and times above it are refused
Ts = Annotated[int, msgspec.Meta(ge=0, le=INT64_MAX,
                                 description="epoch milliseconds, set by the producer")]
Data = Annotated[dict[str, Any], msgspec.Meta(description="a JSON object, at most 64 KiB encoded")]
BackupType = Literal["manual", "scheduled", "pre-migration"]
BACKUP_TYPES: tuple[str, ...] = get_args(BackupType)


# Arrays and objects nested deeper than this make an event bad. msgspec and Python's json
# give up at about 1,000 levels less the depth of the caller's stack, so an event decoded
# near the limit could fail later, encoded again deeper in a call stack (the fold, the API).
MAX_NESTING = 128
NESTED_TOO_DEEP = f"invalid event: JSON nested deeper than {MAX_NESTING} levels"
_TOKENS = re.compile(rb'"(?:[^"\\]|\\.)*"|[\[\]{}]')  # strings (skipped) and brackets


def _too_deep(raw: bytes) -> bool:
    """Is `raw` (JSON) nested deeper than MAX_NESTING? The count of opening brackets bounds
    the depth, so the exact walk only runs for an entry holding many of them."""
    if raw.count(b"[") + raw.count(b"{") <= MAX_NESTING:
        return False
    depth = 0
    for token in _TOKENS.finditer(raw):
        bracket = token.group()
        if bracket in (b"[", b"{"):
            depth += 1
            if depth > MAX_NESTING:
                return True
        elif bracket in (b"]", b"}"):
            depth -= 1
    return False


# what the stored fold (msgpack) can hold; checking ~0.15 us an event with data
DATA_INT_MIN, DATA_INT_MAX = -(1 << 63), (1 << 64) - 1
DATA_INT_RANGE = f"invalid event: an integer in data is outside {DATA_INT_MIN}..{DATA_INT_MAX}"
_fold_values = msgspec.msgpack.Encoder()

DECODE_SLICE = 1000  # entries a consumer decodes between two turns of its event loop


def now_ms() -> int:
    """The clock of every `ts`: epoch milliseconds."""
    return int(time.time() * 1000)


def split_entry_id(entry_id: str) -> tuple[int, int]:
    """A stream entry id as (milliseconds, sequence): its order, and its time."""
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


class _Event(msgspec.Struct, tag_field="type", rename="camel", frozen=True, kw_only=True,
             omit_defaults=True):
    ts: Ts


class WorkflowStarted(_Event, tag="workflow.started"):
    execution_id: Id
    workflow_id: Id
    total_steps: Annotated[int, msgspec.Meta(ge=0, le=1_000_000)]
    data: Data | None = None
    owner: str | None = None
    event_id: EventId | None = None


class WorkflowProgress(_Event, tag="workflow.progress"):
    execution_id: Id
    completed_steps: Annotated[int, msgspec.Meta(ge=0, le=INT64_MAX)]
    current_step: Annotated[str, msgspec.Meta(max_length=256)] | None = None
    data: Data | None = None
    event_id: EventId | None = None


class WorkflowCompleted(_Event, tag="workflow.completed"):
    execution_id: Id
    data: Data | None = None
    event_id: EventId | None = None


class WorkflowFailed(_Event, tag="workflow.failed"):
    execution_id: Id
    error: Annotated[str, msgspec.Meta(max_length=4096)]
    event_id: EventId | None = None


class WorkflowCancelled(_Event, tag="workflow.cancelled"):
    execution_id: Id
    reason: str | None = None
    event_id: EventId | None = None


class BackupRequested(_Event, tag="backup.requested"):
    request_id: Id
    backup_type: BackupType = "manual"
    requested_by: str | None = None


class BackupVerifyRequested(_Event, tag="backup.verify_requested"):
    request_id: Id
    backup_id: Annotated[int, msgspec.Meta(ge=1)]
    requested_by: str | None = None


class BackupCompleted(_Event, tag="backup.completed"):
    backup_id: int
    backup_type: BackupType
    file_path: str
    file_size_bytes: int
    checksum: str
    duration_ms: int
    request_id: str | None = None
    fencing_token: int | None = None


class BackupFailed(_Event, tag="backup.failed"):
    error: str
    backup_id: int | None = None
    backup_type: BackupType | None = None
    request_id: str | None = None


class BackupVerified(_Event, tag="backup.verified"):
    backup_id: int
    valid: bool
    message: str
    checks: dict[str, bool] = {}
    request_id: str | None = None


class CleanupCompleted(_Event, tag="cleanup.completed"):
    """A cleanup that failed stale executions (POST /api/workflow-state/cleanup): `cleaned`
    is how many `workflow.failed` it published (a second cleanup before the fold caught up
    publishes them again, and they fold once)."""

    cleaned: int
    stale_after_ms: int
    requested_by: str | None = None


WorkflowEvent = WorkflowStarted | WorkflowProgress | WorkflowCompleted | WorkflowFailed | \
    WorkflowCancelled
BackupCommand = BackupRequested | BackupVerifyRequested
ResultEvent = BackupCompleted | BackupFailed | BackupVerified | CleanupCompleted
Event = WorkflowEvent | BackupCommand | ResultEvent

class StreamEntry(msgspec.Struct, frozen=True):
    """A decoded event with the stream entry it arrived in."""

    entry_id: str
    event: Any
    raw: bytes

    @property
    def key(self) -> str:
        """The event's identity and stamp tiebreak: its eventId, or the entry id standing in."""
        return getattr(self.event, "event_id", None) or self.entry_id


WORKFLOW_TYPES = ("workflow.started", "workflow.progress", "workflow.completed",
                  "workflow.failed", "workflow.cancelled")
TERMINAL_TYPES = ("workflow.completed", "workflow.failed", "workflow.cancelled")

_workflow_decoder = msgspec.json.Decoder(WorkflowEvent)
_backup_decoder = msgspec.json.Decoder(BackupCommand)
_any_decoder = msgspec.json.Decoder(Event)
_encoder = msgspec.json.Encoder()


def event_type(event: Event) -> str:
    return type_tag(type(event))


def type_tag(cls: type) -> str:
    """An event class's `type` value ("workflow.started", ...)."""
    return cls.__struct_config__.tag  # type: ignore[attr-defined,no-any-return]


def _check_size(raw: bytes) -> None:
    if len(raw) > MAX_ENTRY_BYTES:
        raise BadEventError(f"entry is {len(raw)} bytes, over the {MAX_ENTRY_BYTES} byte limit")


def _check_data(event: Any, raw_len: int) -> None:
    data = getattr(event, "data", None)
    if not data:
        return
    # data can only exceed 64 KiB when the whole entry does; skip the re-encode otherwise
    if raw_len > MAX_DATA_BYTES:
        size = len(_encoder.encode(data))
        if size > MAX_DATA_BYTES:
            raise BadEventError(f"data is {size} bytes encoded, over the {MAX_DATA_BYTES} limit")
    # the stored fold (msgpack) holds integers of 64 bits; JSON has no bound of its own, and
    # an event the fold cannot store must be refused here, not fail every apply and replay
    try:
        _fold_values.encode(data)
    except OverflowError:
        raise BadEventError(DATA_INT_RANGE) from None


# the fields typed Id, per event class, as (attribute, wire name)
_ID_FIELDS: dict[type, tuple[tuple[str, str], ...]] = {
    WorkflowStarted: (("execution_id", "executionId"), ("workflow_id", "workflowId")),
    WorkflowProgress: (("execution_id", "executionId"),),
    WorkflowCompleted: (("execution_id", "executionId"),),
    WorkflowFailed: (("execution_id", "executionId"),),
    WorkflowCancelled: (("execution_id", "executionId"),),
    BackupRequested: (("request_id", "requestId"),),
    BackupVerifyRequested: (("request_id", "requestId"),),
}


def _check_ids(event: Any) -> None:
    for attr, wire in _ID_FIELDS.get(type(event), ()):
        if getattr(event, attr).translate(_ID_CHARS):  # a character outside the set is left
            raise BadEventError(
                f"invalid event: Expected `str` matching regex {ID_PATTERN!r} - at `$.{wire}`")


def _empty_event_id_is_none(event: Any) -> None:
    """An empty eventId is no id: the entry id stands in, as when it is absent. (Taken as
    given, every event of an execution sent with "" would be one event: all but the first
    dropped as resends.)"""
    if getattr(event, "event_id", None) == "":
        msgspec.structs.force_setattr(event, "event_id", None)


# an escaped backslash (skipped whole), an escaped surrogate pair, or a lone escaped surrogate
_ESCAPES = re.compile(
    rb"\\\\|\\u[dD][89abAB][0-9a-fA-F]{2}\\u[dD][c-fC-F][0-9a-fA-F]{2}"
    rb"|\\u[dD][89a-fA-F][0-9a-fA-F]{2}")
_LONE = len(b"\\ud800")


def _lone_surrogates_replaced(raw: bytes) -> bytes | None:
    """`raw` with each lone escaped UTF-16 surrogate ("\\ud800" without its pair) replaced
    by U+FFFD, or None when it holds none. JSON's grammar allows them and JavaScript's
    JSON.stringify writes them for a broken string; the parser refuses them. Replacing them
    is what a UTF-8 encoder does with a broken string (JavaScript's TextEncoder included);
    the entry's payload is still kept as sent."""
    if b"\\u" not in raw:
        return None
    found = False

    def replace(match: re.Match[bytes]) -> bytes:
        nonlocal found
        if len(match.group()) != _LONE:
            return match.group()
        found = True
        return b"\\ufffd"

    fixed = _ESCAPES.sub(replace, raw)
    return fixed if found else None


def _parsed(decode: Callable[[bytes], Any], raw: bytes) -> Any:
    """`decode(raw)`, tried again with lone surrogates replaced (`_lone_surrogates_replaced`)
    when the parser refuses `raw` and it holds one."""
    try:
        return decode(raw)
    except msgspec.DecodeError:
        fixed = _lone_surrogates_replaced(raw)
        if fixed is None:
            raise
        return decode(fixed)


def loads(text: bytes | str) -> Any:
    """JSON text as Python values (HTTP bodies), a lone escaped surrogate read as U+FFFD as
    in an entry; msgspec.DecodeError when it is not JSON."""
    return _parsed(msgspec.json.decode, text.encode() if isinstance(text, str) else text)


def _decode(decoder: msgspec.json.Decoder[Any], raw: bytes) -> Any:
    _check_size(raw)
    if _too_deep(raw):
        raise BadEventError(NESTED_TOO_DEEP)
    try:
        event = _parsed(decoder.decode, raw)
    except msgspec.ValidationError as exc:
        raise BadEventError(f"invalid event: {exc}") from None
    except msgspec.DecodeError as exc:
        if "UTF-8" in str(exc):  # msgspec 0.23 on: its own error, without a position
            raise BadEventError(f"not JSON: a string is not UTF-8 ({exc})") from None
        raise BadEventError(f"not JSON: {exc}") from None
    except UnicodeDecodeError as exc:  # before msgspec 0.23: JSON text must be UTF-8
        raise BadEventError(f"not JSON: a string is not UTF-8 ({exc.reason} at byte "
                            f"{exc.start} of the string)") from None
    except RecursionError:  # a deep caller's stack: msgspec's limit is relative to it
        raise BadEventError(NESTED_TOO_DEEP) from None
    _check_ids(event)
    _check_data(event, len(raw))
    _empty_event_id_is_none(event)
    return event


def cannot_decode(exc: Exception) -> str:
    """The reason given for an entry whose decoding raised something unexpected (a decoder
    bug): it is skipped like a bad event, never allowed to stop a consumer (SPEC 5)."""
    return f"cannot decode: {type(exc).__name__}: {exc}"


def decode_workflow(raw: bytes) -> WorkflowEvent:
    """Decode one workflow-stream entry, or raise BadEventError with the reason."""
    return _decode(_workflow_decoder, raw)  # type: ignore[no-any-return]


_WITH_DATA = (WorkflowStarted, WorkflowProgress, WorkflowCompleted)  # events with `data`


def decode_workflows(payloads: Sequence[bytes]) -> list[WorkflowEvent] | None:
    """For a consumer (or replay) decoding a slice of entries: every payload's event, as
    `decode_workflow` gives it, when all of them plainly pass its checks; None when some
    needs `decode_workflow` itself (its verdict, its reason, its second try for lone
    surrogates). Each payload is decoded on its own (a payload is untrusted: joined into
    one array, two broken ones could make one event), and the checks around the decode run
    once for the slice, in C where they can: the per-event wrappers were ~2 of the ~3.3 us
    an entry cost. Kept beside `_decode`'s checks, as `plainly_valid` is (the two give one
    verdict: tests/unit/test_consumer_decode.py)."""
    if not payloads:
        return []
    if not _plain_bytes(payloads):
        return None
    decode = _workflow_decoder.decode
    try:
        events = [decode(p) for p in payloads]
        _fold_values.encode([e.data for e in events if type(e) in _WITH_DATA])
    except (msgspec.DecodeError, UnicodeDecodeError, RecursionError, OverflowError):
        return None
    if not _plain_ids(events):
        return None
    for event in events:
        if event.event_id == "":
            _empty_event_id_is_none(event)
    return events


class Refused(NamedTuple):
    """A payload `decode_slice` refused, and why (the dead letter's reason)."""

    reason: str


def decode_slice(
    payloads: Sequence[bytes], decode: Callable[[bytes], Any],
    decode_many: Callable[[list[bytes]], list[Any] | None] | None,
    on_bug: Callable[[int | None, Exception], None],
) -> list[Any]:
    """Each payload's item, or `Refused`, in order: all at once through `decode_many` (the
    consumer's or replay's `decode_workflows`) when it takes them all, else one by one
    through `decode`, whose BadEventError gives the reason. Anything else raised is a
    decoder bug: reported to `on_bug` (with the payload's index, None for `decode_many`),
    and the payload refused as `cannot_decode` says, never allowed to stop a consumer."""
    if decode_many is not None:
        try:
            items = decode_many(list(payloads))
        except Exception as exc:
            on_bug(None, exc)
            items = None
        if items is not None and len(items) == len(payloads):
            return items
    out: list[Any] = []
    for index, payload in enumerate(payloads):
        try:
            out.append(decode(payload))
        except BadEventError as exc:
            out.append(Refused(exc.reason))
        except Exception as exc:
            on_bug(index, exc)
            out.append(Refused(cannot_decode(exc)))
    return out


def decode_backup(raw: bytes) -> BackupCommand:
    """Decode one backup-stream entry, or raise BadEventError with the reason."""
    return _decode(_backup_decoder, raw)  # type: ignore[no-any-return]


def decode_any(raw: bytes) -> Event:
    return _decode(_any_decoder, raw)  # type: ignore[no-any-return]


def validate(obj: Any) -> WorkflowEvent:
    """Validate an already-parsed JSON value (HTTP ingest) as a workflow event."""
    try:
        event = msgspec.convert(obj, WorkflowEvent)
        _check_ids(event)
        _empty_event_id_is_none(event)
        raw = _encoder.encode(event)
    except msgspec.ValidationError as exc:
        raise BadEventError(f"invalid event: {exc}") from None
    except RecursionError:
        raise BadEventError(NESTED_TOO_DEEP) from None
    if _too_deep(raw):
        raise BadEventError(NESTED_TOO_DEEP)
    _check_size(raw)
    _check_data(event, len(raw))
    return event  # type: ignore[no-any-return]


_workflow_list = msgspec.json.Decoder(list[WorkflowEvent])


def plainly_valid(blob: bytes, payloads: list[bytes]) -> bool:
    """For a producer judging a batch at once: True when every payload (`blob` is their
    JSON array) passes `decode_workflow`'s checks; False when some payload needs a closer
    look with `decode_workflow` itself (it may still be valid). One typed decode of the
    array and a few passes in C instead of a decode per payload. Kept beside those checks:
    a rule added there belongs here too (tests/integration/test_producer_checks.py holds
    the two to one verdict)."""
    if not _plain_bytes(payloads):
        return False
    try:
        events = _workflow_list.decode(blob)
        _fold_values.encode(events)  # data's integers fit the stored fold (as _check_data)
    except (msgspec.DecodeError, RecursionError, OverflowError):
        return False
    return _plain_ids(events)


def _plain_bytes(payloads: Sequence[bytes]) -> bool:
    """No payload is over the size limits or nested too deep (`_decode`'s byte checks), as
    far as a few passes over all of them in C can tell, for payloads that are complete JSON
    (an unbalanced one may pass here: the decode that follows refuses it): False means
    "look closer"."""
    longest = max(map(len, payloads))
    # none over the data limit: none over the entry limit, no data over its own
    if longest > MAX_DATA_BYTES:
        return False
    # JSON nested deeper than the limit holds 2 x (limit + 1) brackets at least: shorter
    # payloads cannot be; longer ones are cleared when none opens more than the limit
    if longest >= 2 * (MAX_NESTING + 1):
        opened = max(p.count(b"{") for p in payloads) + max(p.count(b"[") for p in payloads)
        if opened > MAX_NESTING:
            return False
    return True


def _plain_ids(events: Sequence[Any]) -> bool:
    """Every id of `events` is made of the allowed characters (as `_check_ids`)."""
    ids = "".join([e.execution_id for e in events])
    ids += "".join([e.workflow_id for e in events if type(e) is WorkflowStarted])
    return not ids.translate(_ID_CHARS)


def encode(event: Event) -> bytes:
    return _encoder.encode(event)


def json_schema() -> dict[str, Any]:
    """The JSON Schema of every event type on the wire, for producers in any language."""
    schema = msgspec.json.schema(Event)
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "wks event, wire format v1"
    schema["description"] = (
        "One stream entry: field `event` holds one of these as UTF-8 JSON. Workflow events go "
        "to {prefix}:stream:workflow, backup commands to {prefix}:stream:backup; workers write "
        "backup.completed/failed/verified and cleanup.completed to {prefix}:stream:results. "
        "Unknown keys are ignored. "
        "An entry over 262144 bytes, or `data` over 65536 bytes encoded, is rejected."
    )
    return schema
