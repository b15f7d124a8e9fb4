"""Seal-event and control-result ingest over real HTTP, against a node process.

Every rejection is checked three ways: the HTTP status, the problem's stable
code (RFC 9457 body), and the database left exactly as it was.
"""

from __future__ import annotations

import gzip
import json
import uuid
import zlib
from typing import Any

import aiohttp
import pytest

from tests import factories
from tests.conftest import database_snapshot
from tests.nodeproc import NodeDir, NodeProcess


def auth(node_dir: NodeDir, name: str = "GW-1") -> dict[str, str]:
    return {"Authorization": f"Bearer {node_dir.tokens[name]}"}


async def post(
    node: NodeProcess, path: str, body: Any, headers: dict[str, str], raw: bytes | None = None
) -> tuple[int, dict[str, Any], str]:
    data = raw if raw is not None else json.dumps(body).encode()
    async with aiohttp.ClientSession() as session:
        async with session.post(
            node.url + path, data=data, headers={"Content-Type": "application/json", **headers}
        ) as resp:
            text = await resp.text()
            return resp.status, (json.loads(text) if text else {}), resp.content_type


async def get(node: NodeProcess, path: str, headers: dict[str, str]) -> tuple[int, Any, str]:
    async with aiohttp.ClientSession() as session:
        async with session.get(node.url + path, headers=headers) as resp:
            body = await resp.read()
            if resp.content_type.endswith("json"):
                return resp.status, json.loads(body), resp.content_type
            return resp.status, body, resp.content_type


# -- the happy path ----------------------------------------------------------


async def test_single_event_is_signed_and_stored(node: NodeProcess, node_dir: NodeDir) -> None:
    event = factories.seal_event(seq=1, lock="LK-CN-0100", type="sealed")
    status, body, _ = await post(node, "/v1/seal-events", event, auth(node_dir))
    assert status == 201, body
    assert body["status"] == "accepted" and body["order"] == "first"
    assert body["event_id"] == event["event_id"]

    status, jws, media = await get(node, body["record"], auth(node_dir, "NCS"))
    assert status == 200 and media == "application/jose"
    assert jws.count(b".") == 2


async def test_repeat_returns_first_outcome_and_stores_nothing(node: NodeProcess, node_dir: NodeDir) -> None:
    event = factories.seal_event(seq=1, lock="LK-CN-0101")
    first = await post(node, "/v1/seal-events", event, auth(node_dir))
    before = database_snapshot(node_dir.database)
    again = await post(node, "/v1/seal-events", event, auth(node_dir))
    assert first[0] == 201 and again[0] == 200
    assert again[1]["status"] == "duplicate"
    assert again[1]["message_id"] == first[1]["message_id"]
    assert again[1]["order"] == first[1]["order"]
    assert database_snapshot(node_dir.database) == before


async def test_batch_keeps_good_events_and_reports_each(node: NodeProcess, node_dir: NodeDir) -> None:
    events = [factories.seal_event(seq=i, lock="LK-CN-0200") for i in range(1, 101)]
    events[41]["container"] = "CSQU3054384"  # bad check digit
    status, body, _ = await post(node, "/v1/seal-events", {"events": events}, auth(node_dir, "GW-1"))
    assert status == 200
    assert (body["accepted"], body["duplicate"], body["rejected"]) == (99, 0, 1)
    bad = body["results"][41]
    assert bad["status"] == "rejected" and bad["problem"]["code"] == "validation-failed"
    assert bad["problem"]["errors"][0]["pointer"] == "/events/41/container"
    assert "check digit" in bad["problem"]["detail"]
    assert [r["index"] for r in body["results"]] == list(range(100))
    # seq 42 is missing: 43 arrives as a gap, and the lock shows it
    assert body["results"][42]["order"] == "gap"
    status, timeline, _ = await get(node, "/v1/locks/LK-CN-0200/events?limit=5", auth(node_dir, "NCS"))
    assert status == 200
    assert timeline["gaps"] == [{"first_missing": 42, "last_missing": 42}]


async def test_gap_then_backfill_is_recorded_not_hidden(node: NodeProcess, node_dir: NodeDir) -> None:
    lock = "LK-CN-0300"
    orders = []
    for seq in (1, 2, 5, 3, 4, 6):
        _, body, _ = await post(node, "/v1/seal-events", factories.seal_event(seq=seq, lock=lock), auth(node_dir))
        orders.append(body["order"])
    assert orders == ["first", "next", "gap", "late", "late", "next"]
    _, timeline, _ = await get(node, f"/v1/locks/{lock}/events", auth(node_dir, "NCS"))
    assert timeline["gaps"] == []
    assert [e["seq"] for e in timeline["events"]] == [1, 2, 3, 4, 5, 6]


async def test_container_timeline_paginates(node: NodeProcess, node_dir: NodeDir) -> None:
    box = factories.container("MRX", 100001)
    events = [factories.seal_event(seq=i, lock="LK-CN-0400", container=box) for i in range(1, 8)]
    await post(node, "/v1/seal-events", {"events": events}, auth(node_dir))
    seen, path = [], f"/v1/containers/{box}/events?limit=3"
    while path:
        status, page, _ = await get(node, path, auth(node_dir, "AUDIT"))
        assert status == 200
        seen += [e["seq"] for e in page["events"]]
        path = page["next"]
    assert seen == list(range(1, 8))


async def test_control_result_is_signed_and_idempotent(node: NodeProcess, node_dir: NodeDir) -> None:
    result = factories.control_result("CN-AKL-2026-000100")
    status, body, _ = await post(node, "/v1/control-results", result, auth(node_dir, "NCS"))
    assert status == 201, body
    again = await post(node, "/v1/control-results", result, auth(node_dir, "NCS"))
    assert again[0] == 200 and again[1]["message_id"] == body["message_id"]
    before = database_snapshot(node_dir.database)
    changed = factories.control_result("CN-AKL-2026-000100", result="B1")
    status, problem, media = await post(node, "/v1/control-results", changed, auth(node_dir, "NCS"))
    assert (status, problem["code"], media) == (409, "control-id-conflict", "application/problem+json")
    assert database_snapshot(node_dir.database) == before


# -- bad input: one case per row, all over HTTP --------------------------------

VALID = factories.seal_event(seq=1, lock="LK-CN-0900")


def _with(**changes: Any) -> dict[str, Any]:
    return {**VALID, "event_id": str(uuid.uuid4()), **changes}


def _without(field: str) -> dict[str, Any]:
    event = _with()
    del event[field]
    return event


GZIP_BOMB = gzip.compress(b"[" + b" " * (64 * 1024 * 1024) + b"]", compresslevel=9)

BAD_INPUTS: list[tuple[str, bytes, dict[str, str], int, str]] = [
    ("invalid JSON", b'{"event_id": ', {}, 400, "invalid-json"),
    ("not UTF-8", b'{"a": "\xff"}', {}, 400, "invalid-json"),
    ("NaN", b'{"seq": NaN}', {}, 400, "invalid-json"),
    ("unknown field", json.dumps(_with(colour="red")).encode(), {}, 422, "validation-failed"),
    ("seq as string", json.dumps(_with(seq="1")).encode(), {}, 422, "validation-failed"),
    ("seq as float", json.dumps(_with(seq=1.0)).encode(), {}, 422, "validation-failed"),
    ("seq as bool", json.dumps(_with(seq=True)).encode(), {}, 422, "validation-failed"),
    ("naive timestamp", json.dumps(_with(device_time="2026-11-22T04:05:07")).encode(), {}, 422, "validation-failed"),
    ("unix timestamp", json.dumps(_with(device_time=1795000000)).encode(), {}, 422, "validation-failed"),
    ("bad ISO 6346", json.dumps(_with(container="CSQU3054384")).encode(), {}, 422, "validation-failed"),
    ("bad UIC", json.dumps(_with(wagon="218124712174")).encode(), {}, 422, "validation-failed"),
    ("bad UN/LOCODE", json.dumps(_with(location={"locode": "CN1KL"})).encode(), {}, 422, "validation-failed"),
    ("unknown event type", json.dumps(_with(type="exploded")).encode(), {}, 422, "validation-failed"),
    ("missing field", json.dumps(_without("seal_id")).encode(), {}, 422, "validation-failed"),
    (
        "duplicate JSON key",
        json.dumps(_with()).encode()[:-1] + b', "seq": 2}',
        {},
        400,
        "duplicate-json-key",
    ),
    ("array body", json.dumps([_with()]).encode(), {}, 422, "validation-failed"),
    ("empty batch", b'{"events": []}', {}, 422, "validation-failed"),
    ("batch too large", json.dumps({"events": [_with()] * 501}).encode(), {}, 413, "batch-too-large"),
    ("oversized body", b'{"pad": "' + b"x" * 2_000_000 + b'"}', {}, 413, "body-too-large"),
    ("gzip bomb", GZIP_BOMB, {"Content-Encoding": "gzip"}, 413, "body-too-large"),
    ("corrupt gzip", gzip.compress(json.dumps(_with()).encode())[:-12] + b"garbage!", {"Content-Encoding": "gzip"},
     400, "bad-compression"),
    ("truncated gzip", gzip.compress(json.dumps(_with()).encode())[:20], {"Content-Encoding": "gzip"}, 400,
     "bad-compression"),
    ("raw deflate", zlib.compress(json.dumps(_with()).encode()), {"Content-Encoding": "deflate"}, 415,
     "unsupported-encoding"),
    ("wrong media type", json.dumps(_with()).encode(), {"Content-Type": "text/plain"}, 415, "unsupported-media-type"),
]


@pytest.mark.parametrize(
    ("name", "raw", "headers", "status", "code"), BAD_INPUTS, ids=[case[0] for case in BAD_INPUTS]
)
async def test_bad_input_is_refused_and_changes_nothing(
    node: NodeProcess, node_dir: NodeDir, name: str, raw: bytes, headers: dict[str, str], status: int, code: str
) -> None:
    before = database_snapshot(node_dir.database)
    got_status, problem, media = await post(node, "/v1/seal-events", None, {**auth(node_dir), **headers}, raw=raw)
    assert (got_status, problem.get("code")) == (status, code), problem
    assert media == "application/problem+json"
    assert problem["status"] == status and problem["type"] == f"urn:mrx:problem:{code}"
    assert len(problem["detail"]) > 20  # a sentence, not a code
    assert database_snapshot(node_dir.database) == before


async def test_gzip_body_is_accepted(node: NodeProcess, node_dir: NodeDir) -> None:
    event = factories.seal_event(seq=1, lock="LK-CN-0950")
    raw = gzip.compress(json.dumps(event).encode())
    status, body, _ = await post(node, "/v1/seal-events", None, {**auth(node_dir), "Content-Encoding": "gzip"}, raw)
    assert status == 201 and body["status"] == "accepted"


async def test_event_id_reused_for_other_content_is_a_conflict(node: NodeProcess, node_dir: NodeDir) -> None:
    event = factories.seal_event(seq=1, lock="LK-CN-0960")
    assert (await post(node, "/v1/seal-events", event, auth(node_dir)))[0] == 201
    before = database_snapshot(node_dir.database)
    status, problem, _ = await post(node, "/v1/seal-events", {**event, "seq": 2}, auth(node_dir))
    assert (status, problem["code"]) == (409, "event-id-conflict")
    status, problem, _ = await post(
        node, "/v1/seal-events", {**event, "event_id": str(uuid.uuid4()), "type": "tamper"}, auth(node_dir)
    )
    assert (status, problem["code"]) == (409, "sequence-conflict")
    assert database_snapshot(node_dir.database) == before


@pytest.mark.parametrize(
    ("headers", "status", "code"),
    [
        ({}, 401, "unauthenticated"),
        ({"Authorization": "Basic Z3c6cHc="}, 401, "unauthenticated"),
        ({"Authorization": "Bearer GW-1.not-the-secret"}, 401, "unauthenticated"),
        ({"Authorization": "Bearer NOBODY.c2VjcmV0"}, 401, "unauthenticated"),
    ],
    ids=["no credential", "basic auth", "wrong secret", "unknown gateway"],
)
async def test_unknown_gateway_is_401(
    node: NodeProcess, node_dir: NodeDir, headers: dict[str, str], status: int, code: str
) -> None:
    before = database_snapshot(node_dir.database)
    got = await post(node, "/v1/seal-events", factories.seal_event(lock="LK-CN-0970"), headers)
    assert (got[0], got[1]["code"]) == (status, code)
    assert database_snapshot(node_dir.database) == before


async def test_gateway_out_of_scope_is_403(node: NodeProcess, node_dir: NodeDir) -> None:
    before = database_snapshot(node_dir.database)
    status, problem, _ = await post(
        node, "/v1/seal-events", factories.seal_event(lock="LK-CN-0980"), auth(node_dir, "GW-2")
    )
    assert (status, problem["code"]) == (403, "lock-out-of-scope")
    assert "LK-CN-0980" in problem["detail"]
    assert database_snapshot(node_dir.database) == before


async def test_roles_are_enforced(node: NodeProcess, node_dir: NodeDir) -> None:
    status, problem, _ = await post(node, "/v1/control-results", factories.control_result(), auth(node_dir, "GW-1"))
    assert (status, problem["code"]) == (403, "forbidden")
    status, problem, _ = await get(node, f"/v1/records/{uuid.uuid4()}", auth(node_dir, "GW-1"))
    assert (status, problem["code"]) == (403, "forbidden")


@pytest.mark.parametrize(
    ("path", "status", "code"),
    [
        ("/v1/records/not-a-uuid", 400, "invalid-parameter"),
        (f"/v1/records/{uuid.UUID(int=7)}", 404, "not-found"),
        ("/v1/containers/CSQU3054384/events", 400, "invalid-parameter"),
        ("/v1/containers/CSQU3054383/events?limit=0", 400, "invalid-parameter"),
        ("/v1/containers/CSQU3054383/events?cursor=bm9wZQ", 400, "invalid-parameter"),
        ("/v1/containers/CSQU3054383/events?limit=%C2%B2", 400, "invalid-parameter"),  # "²" is a digit to isdigit()
        ("/v1/audit/records?limit=1001", 400, "invalid-parameter"),
        ("/v1/log/consistency?from=1", 400, "invalid-parameter"),
        ("/v1/nothing-here", 404, "not-found"),
    ],
)
async def test_bad_reads_are_problems(node: NodeProcess, node_dir: NodeDir, path: str, status: int, code: str) -> None:
    got_status, problem, media = await get(node, path, auth(node_dir, "NCS"))
    assert (got_status, problem["code"], media) == (status, code, "application/problem+json")


async def test_wrong_method_is_a_problem(node: NodeProcess) -> None:
    async with aiohttp.ClientSession() as session:
        async with session.delete(node.url + "/v1/seal-events") as resp:
            assert resp.status == 405
            assert (await resp.json(content_type=None))["code"] == "method-not-allowed"


async def test_health_ready_metrics(node: NodeProcess, node_dir: NodeDir) -> None:
    assert (await get(node, "/healthz", {}))[0] == 200
    status, ready, _ = await get(node, "/readyz", {})
    assert status == 200 and ready["node_id"] == "CN-AKL"
    await post(node, "/v1/seal-events", {"seq": "x"}, auth(node_dir))
    status, text, _ = await get(node, "/metrics", {})
    assert status == 200
    metrics = text.decode()
    assert 'mrx_seal_events_accepted_total{order="first"}' in metrics
    assert 'mrx_seal_events_rejected_total{reason="validation-failed"}' in metrics
    assert "mrx_http_request_duration_seconds_bucket" in metrics
