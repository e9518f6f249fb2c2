"""The wire format: decoding, bounds, forward compatibility and the published schema."""

from __future__ import annotations

import json
from typing import Any

import pytest

from wks import events
from wks.errors import BadEventError
from wks.state import encode_fold, fold_events


def raw(**fields: object) -> bytes:
    return json.dumps(fields).encode()


def started(**over: object) -> dict[str, object]:
    base: dict[str, object] = {
        "type": "workflow.started", "executionId": "exec-1", "workflowId": "wf", "totalSteps": 3,
        "ts": 1_700_000_000_000,
    }
    base.update(over)
    return base


class TestDecoding:
    def test_every_workflow_type_decodes_to_its_struct(self) -> None:
        """Each `type` maps to its own struct with camelCase keys read into snake_case fields."""
        cases = {
            "workflow.started": (started(), events.WorkflowStarted),
            "workflow.progress": ({"type": "workflow.progress", "executionId": "e",
                                   "completedSteps": 2, "currentStep": "x", "ts": 5},
                                  events.WorkflowProgress),
            "workflow.completed": ({"type": "workflow.completed", "executionId": "e", "ts": 5},
                                   events.WorkflowCompleted),
            "workflow.failed": ({"type": "workflow.failed", "executionId": "e", "error": "boom",
                                 "ts": 5}, events.WorkflowFailed),
            "workflow.cancelled": ({"type": "workflow.cancelled", "executionId": "e", "ts": 5},
                                   events.WorkflowCancelled),
        }
        for kind, (body, cls) in cases.items():
            event = events.decode_workflow(json.dumps(body).encode())
            assert isinstance(event, cls)
            assert events.event_type(event) == kind

    def test_unknown_keys_are_ignored(self) -> None:
        """Forward compatibility: a newer producer's extra keys do not make an event bad."""
        event = events.decode_workflow(raw(**started(newField={"x": 1}, priority=3)))
        assert isinstance(event, events.WorkflowStarted)
        assert event.total_steps == 3

    def test_backup_commands_decode_with_defaults(self) -> None:
        """backup.requested defaults its backupType to manual."""
        cmd = events.decode_backup(raw(type="backup.requested", requestId="r-1", ts=1))
        assert isinstance(cmd, events.BackupRequested)
        assert cmd.backup_type == "manual"

    def test_fields_the_contract_does_not_bound_take_any_string(self) -> None:
        """owner, reason and requestedBy have no bound in SPEC 3: only the entry's 256 KiB
        limits them, so a producer that follows the contract is never dead-lettered."""
        event = events.decode_workflow(raw(**started(owner="o" * 1000)))
        assert event.owner == "o" * 1000
        assert events.decode_workflow(raw(**started(owner=""))).owner == ""
        cancelled = events.decode_workflow(raw(type="workflow.cancelled", executionId="e",
                                               reason="r" * 10_000, ts=1))
        assert cancelled.reason == "r" * 10_000
        cmd = events.decode_backup(raw(type="backup.requested", requestId="r-1",
                                       requestedBy="b" * 500, ts=1))
        assert cmd.requested_by == "b" * 500

    def test_a_lone_escaped_surrogate_becomes_the_replacement_character(self) -> None:
        """JSON allows "\\ud800" without its pair (JavaScript writes it for a broken
        string); it decodes as U+FFFD, as a UTF-8 encoder would write it. A pair stays the
        character it makes, and an escaped backslash before "ud800" is text."""
        body = (b'{"type":"workflow.progress","executionId":"e","completedSteps":1,"ts":1,'
                b'"currentStep":"a\\ud800b\\ud83d\\ude00","data":{"k":"\\\\ud800\\udc00"},'
                b'"ignored":"\\udfff"}')
        event = events.decode_workflow(body)
        assert isinstance(event, events.WorkflowProgress)
        assert event.current_step == "a\ufffdb\U0001f600"
        assert event.data == {"k": "\\ud800\ufffd"}

    def test_an_empty_event_id_is_no_id(self) -> None:
        """eventId "" is taken as absent (the entry id stands in): as given, every event an
        execution got with "" would share one identity and all but one would be dropped."""
        assert events.decode_workflow(raw(**started(eventId=""))).event_id is None
        assert events.validate(started(eventId="")).event_id is None

    def test_encode_round_trips(self) -> None:
        """encode() writes camelCase and leaves out absent optional keys."""
        event = events.decode_workflow(raw(**started(owner="ann", eventId="ev-1")))
        body = json.loads(events.encode(event))
        assert body == started(owner="ann", eventId="ev-1")


class TestBadEvents:
    @pytest.mark.parametrize(
        ("body", "reason"),
        [
            (b"not json", "not JSON"),
            (b'{"type":"workflow.completed","executionId":"\xff","ts":1}', "not UTF-8"),
            (b'{"type":"workflow.completed","executionId":"e","ts":1,"data":{"k":"\xed\xa0"}}',
             "not UTF-8"),
            (raw(type="workflow.exploded", executionId="e", ts=1), "invalid event"),
            (raw(**{k: v for k, v in started().items() if k != "workflowId"}), "workflowId"),
            (raw(**started(totalSteps=1_000_001)), "totalSteps"),
            (raw(**started(totalSteps=-1)), "totalSteps"),
            (raw(**started(ts="yesterday")), "ts"),
            (raw(**started(ts=1.5)), "ts"),
            (raw(**started(executionId="has space")), "executionId"),
            (raw(**started(executionId="x" * 129)), "executionId"),
            (raw(**started(executionId="")), "executionId"),
            (raw(**started(executionId="a b")), "executionId"),
            (raw(**started(executionId="é")), "executionId"),
            (raw(**started(executionId="x\n")), "executionId"),  # re's `$` let this one by
            (raw(**started(workflowId="w/1")), "workflowId"),
            (raw(**started(eventId="e" * 65)), "eventId"),
            (raw(**started(data=[1, 2])), "data"),
            (raw(type="workflow.progress", executionId="e", completedSteps=-1, ts=1),
             "completedSteps"),
            (raw(type="workflow.progress", executionId="e", completedSteps=1,
                 currentStep="s" * 257, ts=1), "currentStep"),
            (raw(type="workflow.completed", executionId="e", ts=2**63), "ts"),  # SQLite's INTEGER
            (raw(type="workflow.progress", executionId="e", completedSteps=2**63, ts=1),
             "completedSteps"),
            (raw(type="workflow.failed", executionId="e", ts=1), "error"),
            (raw(type="workflow.failed", executionId="e", error="x" * 4097, ts=1), "error"),
        ],
    )
    def test_bad_event_names_the_problem(self, body: bytes, reason: str) -> None:
        """A missing key, wrong type or broken bound raises BadEventError saying what."""
        with pytest.raises(BadEventError) as info:
            events.decode_workflow(body)
        assert reason in info.value.reason

    def test_nesting_past_the_limit_is_bad_wherever_it_is(self) -> None:
        """128 levels are fine and 129 are not: in data, in an unknown key, or through the
        HTTP path. The parser's own limit (~1,000 less the caller's stack) would let an event
        through that fails when encoded again deeper in a call stack. Brackets inside
        strings are text."""
        def nested(depth: int) -> Any:
            value: Any = {}
            for _ in range(depth - 1):
                value = {"k": value}
            return value

        limit = events.MAX_NESTING
        ok = events.decode_workflow(raw(**started(data=nested(limit - 1))))  # + the event
        assert ok.data is not None
        for body in (raw(**started(data=nested(limit))),
                     raw(**started(extra=[nested(limit)]))):
            with pytest.raises(BadEventError, match="nested deeper than 128"):
                events.decode_workflow(body)
        with pytest.raises(BadEventError, match="nested deeper than 128"):
            events.validate(started(data=nested(limit)))
        text = "[{" * 1000
        assert events.decode_workflow(raw(**started(data={"s": text}))).data == {"s": text}

    def test_integers_in_data_the_fold_cannot_store_are_bad(self) -> None:
        """Integers in data from -2**63 to 2**64-1 are kept (and fold); one beyond, at any
        depth, is a bad event on both paths: the stored fold could not hold it."""
        for value in (events.DATA_INT_MIN, events.DATA_INT_MAX):
            event = events.decode_workflow(raw(**started(data={"a": [{"b": value}]})))
            assert fold_events([(event, "k")])["exec-1"].data_w["a"][2] == [{"b": value}]
            assert encode_fold(fold_events([(event, "k")])["exec-1"])
        for value in (events.DATA_INT_MIN - 1, events.DATA_INT_MAX + 1, 10**30):
            body = started(data={"a": [{"b": value}]})
            with pytest.raises(BadEventError, match="integer in data"):
                events.decode_workflow(raw(**body))
            with pytest.raises(BadEventError, match="integer in data"):
                events.validate(body)

    def test_data_over_64k_is_bad(self) -> None:
        """`data` is capped at 64 KiB encoded even when the entry is under 256 KiB."""
        body = raw(**started(data={"blob": "x" * (64 * 1024)}))
        assert len(body) < events.MAX_ENTRY_BYTES
        with pytest.raises(BadEventError, match="data is"):
            events.decode_workflow(body)

    def test_data_just_under_the_cap_is_fine(self) -> None:
        """The data bound is inclusive of 64 KiB minus the braces and key."""
        event = events.decode_workflow(raw(**started(data={"b": "x" * (64 * 1024 - 12)})))
        assert isinstance(event, events.WorkflowStarted)

    def test_entry_over_256k_is_bad(self) -> None:
        """An entry over 256 KiB is rejected before it is parsed."""
        body = raw(**started(owner="o", padding="x" * (256 * 1024)))
        with pytest.raises(BadEventError, match="byte limit"):
            events.decode_workflow(body)

    def test_workflow_stream_refuses_backup_commands(self) -> None:
        """A backup command on the workflow stream is an unknown type there."""
        with pytest.raises(BadEventError):
            events.decode_workflow(raw(type="backup.requested", requestId="r", ts=1))

    def test_validate_checks_parsed_json(self) -> None:
        """HTTP ingest validates already-parsed objects with the same rules."""
        assert isinstance(events.validate(started()), events.WorkflowStarted)
        with pytest.raises(BadEventError):
            events.validate(started(totalSteps="three"))


class TestSchema:
    def test_schema_lists_every_type_with_its_required_keys(self) -> None:
        """The published JSON Schema names every event type and its required keys."""
        schema = events.json_schema()
        defs = schema["$defs"]
        assert defs["WorkflowStarted"]["properties"]["type"]["enum"] == ["workflow.started"]
        assert set(defs["WorkflowStarted"]["required"]) >= {
            "type", "executionId", "workflowId", "totalSteps", "ts"}
        assert defs["WorkflowProgress"]["properties"]["completedSteps"]["minimum"] == 0
        tags = {d["properties"]["type"]["enum"][0] for d in defs.values()}
        assert tags == {
            "workflow.started", "workflow.progress", "workflow.completed", "workflow.failed",
            "workflow.cancelled", "backup.requested", "backup.verify_requested",
            "backup.completed", "backup.failed", "backup.verified", "cleanup.completed"}
