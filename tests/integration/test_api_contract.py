"""The API against its own OpenAPI document, by schemathesis: every documented operation, valid and
invalid requests, and every answer a documented status with a documented JSON shape."""

import json
import urllib.error
import urllib.parse
import urllib.request
from functools import partial

import jsonschema_rs
import pytest
import schemathesis
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    positive_data_acceptance,
    response_schema_conformance,
    status_code_conformance,
)

from daemon.api import openapi
from daemon.journal import Journal
from daemon.sinks.postgres_rows import PostgresRows
from tests.integration.conftest import NAMES
from tests.integration.test_api import (  # noqa: F401 - stores_for is a fixture
    API_TOKEN,
    AUTH,
    ApiThread,
    api_client,
    server_config,
    stores_for,
)

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    negative_data_rejection,
    positive_data_acceptance,
]
SETTINGS = {
    "auth": {"openapi": {"bearer": {"bearer": API_TOKEN}, "apiToken": {"api_key": API_TOKEN}}},
    "generation": {"mode": "all", "max-examples": 25, "database": "none"},
    "phases": {"stateful": {"enabled": False}},
    # A body the schema allows can still be over max_body_bytes (three 100,000-character texts): 413 is
    # documented, and it is a refusal of an invalid one too.
    "checks": {
        "positive_data_acceptance": {"expected-statuses": ["200", "201", "404", "413"]},
        "negative_data_rejection": {"expected-statuses": ["400", "401", "404", "413", "422"]},
    },
}

schema = schemathesis.openapi.from_dict(openapi(), config=schemathesis.Config.from_dict(SETTINGS))


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    running = ApiThread(tmp_path_factory.mktemp("contract") / "journal.sqlite").start()
    yield running
    running.stop()


def test_the_served_document_is_the_one_tested(served):
    with urllib.request.urlopen(f"http://127.0.0.1:{served.port}/api/v1/openapi.json", timeout=30) as answer:
        assert json.load(answer) == openapi()


@schema.parametrize()
def test_the_api_answers_as_its_document_says(case, served):
    case.call_and_validate(base_url=f"http://127.0.0.1:{served.port}", checks=CHECKS)


def call(served, method, route, body=None, data=None):
    """Status, content type and JSON body of one request to the served API."""
    payload = data if data is not None else (json.dumps(body).encode() if body is not None else None)
    request = urllib.request.Request(
        f"http://127.0.0.1:{served.port}{route}",
        data=payload,
        method=method,
        headers={**AUTH, "Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as answer:
            return answer.status, answer.headers.get_content_type(), json.load(answer)
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers.get_content_type(), json.loads(exc.read() or b"null")


@pytest.mark.parametrize(
    "field, value",
    [
        ("processingTime", False),
        ("processingTime", True),
        ("processingTime", "12"),
        ("processingTime", 12.5),
        ("processingTime", 1e400),
        ("intent", 12),
        ("content", True),
        ("id", 7),
        ("messageId", 1.5),
        ("timestamp", 1_800_000_000),
        ("timestamp", "1800000000"),
        ("direction", 1),
    ],
)
def test_bodies_are_strict_no_value_is_coerced(served, field, value):
    body = {"id": f"strict-{field}-{value!r}", "conversationId": "c-strict", "direction": "inbound", field: value}
    status, kind, answer = call(served, "POST", "/api/v1/interactions", body)
    assert (status, kind) == (422, "application/json")
    assert [f["loc"] for f in answer["fields"]] == [[field]]


def test_strict_bodies_still_take_what_the_document_shows(served):
    body = {
        "id": "strict-ok",
        "conversationId": "c-strict",
        "direction": "outbound",
        "processingTime": 12,
        "timestamp": "2026-11-27T10:00:00Z",
        "customerPhone": "+55 11 98765-4321",
    }
    assert call(served, "POST", "/api/v1/interactions", body)[0] == 201
    # JSON Schema's integer: a number without a fraction, however it is written
    assert call(served, "POST", "/api/v1/interactions", body | {"id": "strict-float", "processingTime": 12.0})[0] == 201
    assert (
        call(
            served,
            "POST",
            "/api/v1/escalations",
            {"id": "strict-esc", "conversationId": "c-strict", "createdAt": "2026-11-27T10:00:00+01:00"},
        )[0]
        == 201
    )


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


@pytest.mark.parametrize(
    "stamp", ["9999-12-31T23:59:59-01:00", "0001-01-01T00:00:00+01:00", "1999-12-31T23:00:00Z", "2201-01-01T00:00:00Z"]
)
def test_a_time_outside_the_plausible_years_is_a_422_even_at_the_calendar_edges(served, stamp):
    body = {"id": f"edge-{stamp}", "conversationId": "c-edge", "direction": "inbound", "timestamp": stamp}
    status, _, answer = call(served, "POST", "/api/v1/interactions", body)
    assert status == 422 and answer["fields"][0]["loc"] == ["timestamp"]


def conforms(name, answer):
    """Whether an answer has the shape the document gives `name`."""
    document = openapi()
    return jsonschema_rs.validator_for(
        {"$ref": f"#/components/schemas/{name}", "components": document["components"]}
    ).is_valid(answer)


async def test_reads_from_every_store_have_the_documented_shape(stores_for, own_pg, tmp_path):
    journal, client, postgres, airtable, deliver = await stores_for(own_pg.dsn(), "chatledger")
    rows = partial(PostgresRows.open, own_pg.dsn(), "chatledger")
    conversation, interactions = "/api/v1/conversations/conv-shape", "/api/v1/conversations/conv-shape/interactions"
    try:
        async with api_client(journal, rows, (client, NAMES)) as api:
            body = {
                "id": "bot-shape",
                "conversationId": "conv-shape",
                "direction": "inbound",
                "content": "hello",
                "processingTime": 5,
                "timestamp": "2026-11-27T10:00:00Z",
                "customerPhone": "5511999999999",
            }
            assert (await api.post("/api/v1/interactions", json=body, headers=AUTH)).status == 201
            assert (
                await api.patch(conversation, json={"tags": ["vip"], "metadata": {"plan": "gold"}}, headers=AUTH)
            ).status == 200
            for source in ("journal", "postgres"):
                if source == "postgres":
                    await deliver()
                read = await (await api.get(conversation, headers=AUTH)).json()
                assert read["source"] == source and conforms("ConversationRead", read), read
                listed = await (await api.get(interactions, headers=AUTH)).json()
                assert listed["source"] == source and conforms("InteractionsRead", listed), listed
            own_pg.stop("immediate")
        empty = await Journal.open(tmp_path / "empty.sqlite", [])
        try:
            async with api_client(empty, rows, (client, NAMES)) as api:
                read = await (await api.get(conversation, headers=AUTH)).json()
                assert read["source"] == "airtable" and conforms("ConversationRead", read), read
                listed = await (await api.get(interactions, headers=AUTH)).json()
                assert listed["source"] == "airtable" and conforms("InteractionsRead", listed), listed
        finally:
            await empty.close()
    finally:
        await postgres.close()
        await airtable.close()
        await journal.close()
