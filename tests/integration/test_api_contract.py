"""The API against its own OpenAPI document, by schemathesis: every documented operation, valid and
invalid requests, and every answer a documented status with a documented JSON shape."""

import json
import urllib.error
import urllib.parse
import urllib.request

import pytest

from tests.integration.test_api import AUTH, ApiThread, server_config


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    running = ApiThread(tmp_path_factory.mktemp("contract") / "journal.sqlite").start()
    yield running
    running.stop()



def call(served, method, route, body=None, data=None):
    """Status, content type and JSON body of one request to the served API."""
    payload = data if data is not None else (json.dumps(body).encode() if body is not None else None)
    request = urllib.request.Request(f"http://127.0.0.1:{served.port}{route}", data=payload, method=method,
                                     headers={**AUTH, "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=30) as answer:
            return answer.status, answer.headers.get_content_type(), json.load(answer)
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers.get_content_type(), json.loads(exc.read() or b"null")


@pytest.mark.parametrize("field, value", [
    ("processingTime", False), ("processingTime", True), ("processingTime", "12"), ("processingTime", 12.5),
    ("processingTime", 1e400), ("intent", 12), ("content", True), ("id", 7), ("messageId", 1.5),
    ("timestamp", 1_800_000_000), ("timestamp", "1800000000"), ("direction", 1),
])
def test_bodies_are_strict_no_value_is_coerced(served, field, value):
    body = {"id": f"strict-{field}-{value!r}", "conversationId": "c-strict", "direction": "inbound", field: value}
    status, kind, answer = call(served, "POST", "/api/v1/interactions", body)
    assert (status, kind) == (422, "application/json")
    assert [f["loc"] for f in answer["fields"]] == [[field]]


def test_strict_bodies_still_take_what_the_document_shows(served):
    body = {"id": "strict-ok", "conversationId": "c-strict", "direction": "outbound", "processingTime": 12,
            "timestamp": "2026-11-27T10:00:00Z", "customerPhone": "+55 11 98765-4321"}
    assert call(served, "POST", "/api/v1/interactions", body)[0] == 201
    # JSON Schema's integer: a number without a fraction, however it is written
    assert call(served, "POST", "/api/v1/interactions", body | {"id": "strict-float", "processingTime": 12.0})[0] == 201
    assert call(served, "POST", "/api/v1/escalations", {"id": "strict-esc", "conversationId": "c-strict",
                                                        "createdAt": "2026-11-27T10:00:00+01:00"})[0] == 201


@pytest.mark.parametrize("limit", ["-5", "0", "1001", "abc", "1.5", "+5", " 5", "٥"])
def test_a_limit_outside_1_to_1000_is_refused_not_clamped(served, limit):
    call(served, "POST", "/api/v1/interactions", {"id": "lim-1", "conversationId": "c-limit", "direction": "inbound"})
    route = f"/api/v1/conversations/c-limit/interactions?{urllib.parse.urlencode({'limit': limit})}"
    status, kind, answer = call(served, "GET", route)
    assert (status, kind) == (422, "application/json")
    assert answer["fields"][0]["loc"] == ["query", "limit"]


@pytest.mark.parametrize("limit", ["1", "1000"])
def test_the_limits_of_limit_are_accepted(served, limit):
    call(served, "POST", "/api/v1/interactions", {"id": "lim-1", "conversationId": "c-limit", "direction": "inbound"})
    assert call(served, "GET", f"/api/v1/conversations/c-limit/interactions?limit={limit}")[0] == 200


def test_a_body_over_max_body_bytes_is_a_json_413_like_the_webhooks(served):
    limit = server_config().max_body_bytes
    big = json.dumps({"id": "big", "conversationId": "c", "direction": "inbound", "content": "x" * limit}).encode()
    status, kind, answer = call(served, "POST", "/api/v1/interactions", data=big)
    assert (status, kind) == (413, "application/json")
    assert answer == {"error": f"body is {len(big)} bytes, over the {limit}-byte limit"}


@pytest.mark.parametrize("stamp", ["9999-12-31T23:59:59-01:00", "0001-01-01T00:00:00+01:00", "1999-12-31T23:00:00Z",
                                   "2201-01-01T00:00:00Z"])
def test_a_time_outside_the_plausible_years_is_a_422_even_at_the_calendar_edges(served, stamp):
    body = {"id": f"edge-{stamp}", "conversationId": "c-edge", "direction": "inbound", "timestamp": stamp}
    status, _, answer = call(served, "POST", "/api/v1/interactions", body)
    assert status == 422 and answer["fields"][0]["loc"] == ["timestamp"]

