"""POST /api/events: per-event validation, one publish, the ownership rule for users."""

from __future__ import annotations

import json
import time

import pytest

from tests.http.conftest import bearer
from wks.http.app import create_app

URL = "/api/events"


def _ev(kind: str, eid: str, **fields) -> dict:
    return {"type": kind, "executionId": eid, "ts": int(time.time() * 1000), **fields}


async def _state(client, headers: dict, eid: str) -> dict:
    """GET /api/workflow-state/{eid} as `headers` sends it: the state object."""
    return (await (await client.get(f"/api/workflow-state/{eid}", headers=headers)).json()
            )["state"]


async def test_good_events_are_published_and_bad_ones_reported(client, admin, fold, r, settings):
    """Valid events are published (202 with entry ids); invalid ones are listed by index."""
    body = [
        _ev("workflow.started", "i1", workflowId="etl", totalSteps=2),
        {"type": "workflow.progress", "executionId": "i1"},  # completedSteps missing
        _ev("workflow.progress", "i1", completedSteps=1),
        "not an object",
    ]
    resp = await client.post(URL, headers=admin, json=body)
    assert resp.status == 202
    out = await resp.json()
    assert out["success"] is True
    assert out["accepted"] == 2
    assert [e["index"] for e in out["entries"]] == [0, 2]
    assert [e["index"] for e in out["errors"]] == [1, 3]
    assert await r.xlen(settings.keys.workflow_stream) == 2
    last = out["entries"][-1]["entryId"]
    resp = await client.get(f"/api/workflow-state/i1?after={last}&wait=0", headers=admin)
    assert resp.status == 504  # nothing folded yet
    await fold()
    resp = await client.get(f"/api/workflow-state/i1?after={last}&wait=5", headers=admin)
    assert (await resp.json())["state"]["completedSteps"] == 1


async def test_nothing_valid_is_a_400(client, admin, r, settings):
    """Not JSON, not an array, an empty array, all-invalid events or JSON nested past the
    parser's depth limit answer 400; the last also as the backup config's body."""
    deep = b"[" * 100_000 + b"]" * 100_000
    resp = await client.put("/api/backups/config",
                            headers={**admin, "Content-Type": "application/json"}, data=deep)
    assert resp.status == 400
    for data in (b"{oops", b'{"type": "workflow.started"}', b"[]", b'[{"type": "nope"}]', deep):
        resp = await client.post(URL, headers={**admin, "Content-Type": "application/json"},
                                 data=data)
        assert resp.status == 400, data
        assert (await resp.json())["success"] is False
    assert await r.exists(settings.keys.workflow_stream) == 0


async def test_a_lone_surrogate_escape_is_read_as_the_replacement_character(
    client, admin, fold
):
    """JavaScript's JSON.stringify writes a broken string's lone surrogate as an escape:
    the body is JSON, and the event is taken with U+FFFD there, as the consumers read it."""
    data = (b'[{"type":"workflow.started","executionId":"sur","workflowId":"w","totalSteps":1,'
            b'"ts":1,"data":{"note":"a\\ud800b"}}]')
    resp = await client.post(URL, headers={**admin, "Content-Type": "application/json"},
                             data=data)
    assert resp.status == 202, await resp.text()
    entry = (await resp.json())["entries"][0]["entryId"]
    await fold()
    resp = await client.get(f"/api/workflow-state/sur?after={entry}&wait=5", headers=admin)
    assert (await resp.json())["state"]["data"] == {"note": "a\ufffdb"}


async def test_users_write_only_their_own_executions(client, token, producer, fold):
    """A user's started gets its owner; others' executions and foreign owners are refused."""
    await producer.started("theirs", "etl", 1, owner="bob")
    await fold()
    alice = bearer(await token("alice", "user"))
    body = [
        _ev("workflow.started", "mine", workflowId="etl", totalSteps=1),
        _ev("workflow.progress", "mine", completedSteps=1),
        _ev("workflow.progress", "theirs", completedSteps=1),
        _ev("workflow.started", "spoof", workflowId="etl", totalSteps=1, owner="bob"),
        _ev("workflow.progress", "unknown", completedSteps=1),
    ]
    out = await (await client.post(URL, headers=alice, json=body)).json()
    assert [e["index"] for e in out["entries"]] == [0, 1]
    assert [e["index"] for e in out["errors"]] == [2, 3, 4]
    assert out["errors"][0]["error"] == "execution not found"
    await fold()
    state = await _state(client, alice, "mine")
    assert state["owner"] == "alice"
    assert state["progress"] == 100


async def test_a_user_may_start_an_execution_after_its_progress(client, token, fold):
    """Within one request a user's events for an execution it starts count in any order;
    a start the user may not send (another owner) does not count."""
    alice = bearer(await token("alice", "user"))
    body = [
        _ev("workflow.progress", "al-9", completedSteps=1),
        _ev("workflow.started", "al-9", workflowId="etl", totalSteps=2, owner="alice"),
        _ev("workflow.progress", "al-10", completedSteps=1),
        _ev("workflow.started", "al-10", workflowId="etl", totalSteps=2, owner="bob"),
    ]
    out = await (await client.post(URL, headers=alice, json=body)).json()
    assert [e["index"] for e in out["entries"]] == [0, 1]
    assert [e["index"] for e in out["errors"]] == [2, 3]
    await fold()
    state = await _state(client, alice, "al-9")
    assert (state["owner"], state["completedSteps"]) == ("alice", 1)


async def test_an_execution_started_through_the_api_is_claimed_before_it_is_folded(
        client, token, admin, fold, r, settings):
    """The first start published through the API claims the execution for its owner: until
    the fold has it, another user can neither take it over with an earlier start nor write
    to it, while its owner may go on writing to it in later requests."""
    bob, alice = bearer(await token("bob", "user")), bearer(await token("alice", "user"))
    secret = _ev("workflow.started", "bobjob", workflowId="etl", totalSteps=2,
                 data={"secret": "bob-data"})
    assert (await client.post(URL, headers=bob, json=[secret])).status == 202
    # nothing folded yet: an earlier start (least stamp: it would set the owner) is refused
    early = _ev("workflow.started", "bobjob", workflowId="x", totalSteps=1, ts=1)
    for body in ([early], [_ev("workflow.progress", "bobjob", completedSteps=1)]):
        out = await (await client.post(URL, headers=alice, json=body)).json()
        assert out["errors"] == [{"index": 0, "error": "execution not found"}], body
    # an admin's start without an owner claims it for no user
    await client.post(URL, headers=admin, json=[
        _ev("workflow.started", "ops-1", workflowId="etl", totalSteps=1)])
    out = await (await client.post(URL, headers=alice, json=[early | {"executionId": "ops-1"}])
                 ).json()
    assert out["errors"] == [{"index": 0, "error": "execution not found"}]
    # bob's own later request, before the fold: accepted as part of his execution
    later = await client.post(URL, headers=bob, json=[
        _ev("workflow.progress", "bobjob", completedSteps=1)])
    assert later.status == 202
    await fold()
    state = await _state(client, bob, "bobjob")
    assert (state["owner"], state["data"], state["completedSteps"]) == (
        "bob", {"secret": "bob-data"}, 1)
    assert (await client.get("/api/workflow-state/bobjob", headers=alice)).status == 404
    assert 0 < await r.pttl(settings.keys.claim("bobjob")) <= settings.stream_retention * 1000


async def test_a_claim_goes_with_its_start_only(client, token, fold, producer, r, settings):
    """A start refused for any reason (here: too long once its owner is added) claims
    nothing; an execution seen only through progress so far is still decided by its claim,
    so its claimant may go on writing to it and nobody else may."""
    bob, alice = bearer(await token("bob", "user")), bearer(await token("alice", "user"))
    fits = _ev("workflow.started", "big", workflowId="etl", totalSteps=1, note="")
    fits["note"] = "x" * (256 * 1024 - len(json.dumps(fits, separators=(",", ":"))))
    out = await (await client.post(URL, headers=alice, json=[
        fits, _ev("workflow.progress", "big", completedSteps=1)])).json()
    assert [e["index"] for e in out["errors"]] == [0, 1]
    assert await r.exists(settings.keys.claim("big")) == 0
    started = await client.post(URL, headers=bob, json=[
        _ev("workflow.started", "big", workflowId="etl", totalSteps=1)])
    assert started.status == 202
    # progress folded before its start: the store knows the execution, but not its owner
    await producer.progress("early", 1)
    await fold()
    assert (await client.post(URL, headers=alice, json=[
        _ev("workflow.started", "early", workflowId="etl", totalSteps=2)])).status == 202
    out = await (await client.post(URL, headers=bob, json=[
        _ev("workflow.progress", "early", completedSteps=2)])).json()
    assert out["errors"] == [{"index": 0, "error": "execution not found"}]
    mine = await client.post(URL, headers=alice, json=[
        _ev("workflow.progress", "early", completedSteps=2)])
    assert mine.status == 202
    await fold()
    state = await _state(client, alice, "early")
    assert (state["owner"], state["completedSteps"]) == ("alice", 2)


async def test_claims_of_a_request_that_was_not_published_are_released(
        aiohttp_client, settings, r, redis_factory, token):
    """When the publish fails, the request's claims go too: a start nobody published holds
    no execution (the same user, or another, may start it later)."""
    from producers.client import Producer
    from wks.redis import client as redis_client

    server = redis_factory()
    gone = redis_client(server.url)
    server.kill()  # the publish fails; the claims (on `r`) are taken
    try:
        app = create_app(settings, r, producer=Producer(gone, settings.keys, buffer_size=0))
        api = await aiohttp_client(app)
        for who in (bearer(await token("alice", "user")), bearer(await token())):
            resp = await api.post(URL, headers=who, json=[
                _ev("workflow.started", "lost", workflowId="etl", totalSteps=1)])
            assert resp.status == 503
            assert await r.exists(settings.keys.claim("lost")) == 0
    finally:
        await gone.aclose()


@pytest.mark.parametrize("publisher", ["library", "default"])
async def test_events_are_published_with_unknown_keys_and_judged_as_the_consumer_judges(
    publisher, client, aiohttp_client, admin, token, fold, r, settings
):
    """An event goes to the stream with the keys this version does not know (SPEC 3: they
    are for consumers that do); a user's start gets its owner beside them. An event over
    the entry size limit is refused by index, as the consumer would dead-letter it, even
    when only keys the consumer ignores make it that big, or the owner added to it. Through
    the producer library `wks api` gives the app, and through the app's own default."""
    if publisher == "default":
        client = await aiohttp_client(create_app(settings, r))
    extra = {"priority": 7, "labels": {"team": "data"}}
    body = [
        _ev("workflow.started", "kept", workflowId="etl", totalSteps=1, **extra),
        _ev("workflow.completed", "kept", note="x" * (256 * 1024)),
        _ev("workflow.completed", "kept", **extra),
    ]
    out = await (await client.post(URL, headers=admin, json=body)).json()
    assert [e["index"] for e in out["entries"]] == [0, 2]
    assert [e["index"] for e in out["errors"]] == [1]
    assert "over the 262144 byte limit" in out["errors"][0]["error"]
    sent = await r.xrange(settings.keys.workflow_stream)
    assert [json.loads(f[b"event"]) for _, f in sent] == [body[0], body[2]]
    await fold()
    state = await _state(client, admin, "kept")
    assert state["status"] == "completed"

    alice = bearer(await token("alice", "user"))
    mine = _ev("workflow.started", "al-kept", workflowId="etl", totalSteps=1, **extra)
    # as long as the limit allows without an owner: the owner then makes it too long
    fits = _ev("workflow.started", "al-full", workflowId="etl", totalSteps=1, note="")
    fits["note"] = "x" * (256 * 1024 - len(json.dumps(fits, separators=(",", ":"))))
    assert len(json.dumps(fits, separators=(",", ":"))) == 256 * 1024
    out = await (await client.post(URL, headers=alice, json=[mine, fits])).json()
    assert [e["index"] for e in out["errors"]] == [1]
    assert "over the 262144 byte limit" in out["errors"][0]["error"]
    (entry,) = await r.xrange(settings.keys.workflow_stream, min=out["entries"][0]["entryId"])
    assert json.loads(entry[1][b"event"]) == {**mine, "owner": "alice"}


async def test_body_not_matching_its_content_encoding_is_a_400(
        client, admin, r, settings, caplog):
    """A body that is not what its Content-Encoding says answers a JSON 400 on every route
    that reads one, nothing is published or changed, and no error is logged (the client's
    mistake, answered)."""
    for method, path in (("POST", URL), ("PUT", "/api/backups/config"),
                         ("POST", "/api/backups?wait=0")):
        for encoding in ("gzip", "deflate"):
            resp = await client.request(method, path, data=b"notgzip", headers={
                **admin, "Content-Type": "application/json", "Content-Encoding": encoding})
            assert resp.status == 400, (method, path, encoding)
            assert (await resp.json()) == {
                "success": False,
                "error": "request body does not match its Content-Encoding (cannot decompress it)"}
    assert await r.exists(settings.keys.workflow_stream, settings.keys.backup_stream) == 0
    assert [rec.getMessage() for rec in caplog.records
            if rec.levelname in ("ERROR", "CRITICAL")] == []


async def test_publish_failure_is_a_503(make_client, settings, redis_factory, token):
    """With Redis gone, ingest answers 503 and reports nothing as accepted."""
    from wks.http.auth import mint_token
    from wks.redis import client as redis_client

    server = redis_factory()
    conn = redis_client(server.url)
    try:
        api = await make_client(settings, conn)
        headers = bearer(await mint_token(settings, conn, "root", "admin", 60))
        server.kill()
        resp = await api.post(URL, headers=headers, json=[_ev("workflow.completed", "z")])
        assert resp.status == 503
        assert (await resp.json())["success"] is False
    finally:
        await conn.aclose()
