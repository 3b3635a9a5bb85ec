"""Hostile and broken input over real HTTP, into a real journal and a real PostgreSQL: one bad element
never costs anyone else a message, and what is acknowledged is deliverable."""

import asyncio
import json
import sqlite3
import zlib

import aiohttp
import pytest
from aiohttp.test_utils import TestClient, TestServer
from loguru import logger

from daemon.api import ApiStores, add_api
from daemon.config import ServerConfig
from daemon.delivery import DeliveryWorker
from daemon.journal import Journal
from daemon.sinks.postgres import PostgresSink, quote_ident
from daemon.webhook import GuardedRunner, create_webhook_app
from tests.support import free_port, until

TOKEN = "hostile-token-0123456789"
API_TOKEN = "hostile-api-token-0123456789"
PATH = "/webhooks/sendpulse"


def incoming(message_id, text="oi", contact="c1", **extra):
    return {
        "title": "incoming_message",
        "service": "whatsapp",
        "bot": {"id": "bot1"},
        "date": 1_790_000_000,
        "contact": {"id": contact, "phone": "+5511987654321", "name": "Ana"},
        "info": {"message": {"id": message_id, "channel_data": {"message": {"type": "text", "text": {"body": text}}}}},
        **extra,
    }


# Elements as raw JSON text: each once made a request fail, or was acknowledged and then never storable.
HOSTILE = [
    '{"title": "\\ud800"}',
    '{"title": "incoming_message", "contact": {"id": "h1", "name": "\\udfff"}}',
    '{"title": "in\\u0000coming"}',
    '{"title": "incoming_message", "contact": {"id": "h2", "phone": 1e400}}',
    '{"title": "incoming_message", "contact": {"id": "h3"}, "date": "9999-12-31T23:59:59-05:00"}',
    '{"title": "incoming_message", "contact": {"id": "h4"}, "date": "0001-01-01T00:00:00+05:00"}',
    '{"title": "open_chat", "contact": {"id": "h5"}, "n": 1e-20000, "m": ' + "7" * 5000 + "}",
    '{"title": "incoming_message", "contact": {"id": "h6"}, "info": {"message": {"id": "h6\\u0000",'
    ' "channel_data": {"message": {"text": {"body": "a\\ud800b\\u0000"}}}}}}',
]


def server_config(**overrides):
    return ServerConfig(webhook_token=TOKEN, api_token=API_TOKEN, **overrides)


@pytest.fixture
async def env(tmp_path):
    journal = await Journal.open(tmp_path / "journal.sqlite", ["postgres"])
    app = create_webhook_app(server_config(), journal)
    add_api(app, API_TOKEN, ApiStores(journal, None, lambda: None))
    client = TestClient(TestServer(app, host="127.0.0.1", port=free_port()))
    await client.start_server()
    yield client, journal
    await client.close()
    await journal.close()


async def post(client, text: str, **headers):
    return await client.post(PATH, params={"token": TOKEN}, data=text.encode(), headers=headers)


def rows(journal, sql):
    with sqlite3.connect(journal.path) as conn:
        return conn.execute(sql).fetchall()


async def test_a_lone_surrogate_never_fails_the_requests_sharing_its_commit(env):
    client, journal = env
    valid = [post(client, json.dumps([incoming(f"v{i}")])) for i in range(300)]
    bad = [post(client, f'[{{"title": "\\ud800", "n": {i}}}]') for i in range(20)]
    responses = await asyncio.gather(*valid, *bad)
    assert [r.status for r in responses] == [200] * 320
    assert rows(journal, "SELECT count(*) FROM events") == [(320,)]


@pytest.mark.parametrize("element", HOSTILE)
async def test_each_hostile_element_is_accepted_beside_valid_ones(env, element):
    client, journal = env
    response = await post(client, f"[{json.dumps(incoming('before'))}, {element}, {json.dumps(incoming('after'))}]")
    assert response.status == 200
    assert (await response.json())["accepted"] == 3
    assert rows(journal, "SELECT message_id FROM events WHERE message_id IN ('before', 'after')") == [
        ("before",),
        ("after",),
    ]


async def test_what_is_acknowledged_is_delivered_to_postgres(tmp_path, pg_cluster, pg_conn, pg_schema):
    journal = await Journal.open(tmp_path / "journal.sqlite", ["postgres"])
    app = create_webhook_app(server_config(), journal)
    async with TestClient(TestServer(app, host="127.0.0.1", port=free_port())) as client:
        response = await post(client, "[" + ", ".join(HOSTILE + [json.dumps(incoming("ok"))]) + "]")
        assert (await response.json()) == {"accepted": len(HOSTILE) + 1, "duplicates": 0, "rejected": 0}
    sink = PostgresSink(pg_cluster.dsn(), pg_schema)
    worker = DeliveryWorker(journal, sink)
    task = asyncio.create_task(worker.run())

    async def settled():
        return (await journal.counts())["sinks"]["postgres"]["pending"] == 0

    await until(settled, task, "every event delivered")
    worker.stop()
    await task
    await sink.close()
    state = (await journal.counts())["sinks"]["postgres"]
    assert (state["delivered"], state["dead"]) == (len(HOSTILE) + 1, 0)
    s = quote_ident(pg_schema)
    assert await pg_conn.fetchval(f"SELECT count(*) FROM {s}.events") == len(HOSTILE) + 1
    # the verbatim elements stay in the journal beside what was delivered
    originals = [row[0] for row in rows(journal, "SELECT original FROM events WHERE original IS NOT NULL")]
    assert '{"title": "\\ud800"}' in originals and any("1e-20000" in o for o in originals)
    await journal.close()


async def test_a_flood_of_tiny_elements_is_413_and_logged_once(env):
    client, journal = env
    lines = []
    sink_id = logger.add(lines.append, level="WARNING", format="{message}")
    try:
        response = await post(client, "[" + ",".join(["{}"] * 300_000) + "]")
        assert response.status == 413
        assert "more than 1000 elements" in (await response.json())["error"]
        response = await post(client, "[" + ",".join(["{}"] * 1000) + "]")
        assert (await response.json()) == {"accepted": 0, "duplicates": 0, "rejected": 1000}
    finally:
        logger.remove(sink_id)
    assert len(lines) == 2  # one line per request, not one per element
    assert "1000 quarantined (element has no title)" in lines[1]
    assert rows(journal, "SELECT count(*) FROM quarantine") == [(1000,)]


async def test_the_element_cap_is_configurable(tmp_path):
    journal = await Journal.open(tmp_path / "journal.sqlite", [])
    app = create_webhook_app(server_config(max_elements_per_request=3), journal)
    async with TestClient(TestServer(app, host="127.0.0.1", port=free_port())) as client:
        assert (await post(client, json.dumps([incoming(f"m{i}") for i in range(3)]))).status == 200
        assert (await post(client, json.dumps([incoming(f"n{i}") for i in range(4)]))).status == 413
    assert rows(journal, "SELECT count(*) FROM events") == [(3,)]
    await journal.close()


async def known_conversations(client, ids):
    """Conversations the journal knows, through a bot API interaction each."""
    for conversation in ids:
        body = {"id": f"seed-{conversation}", "conversationId": conversation, "direction": "inbound", "content": "x"}
        response = await client.post(
            "/api/v1/interactions", json=body, headers={"Authorization": f"Bearer {API_TOKEN}"}
        )
        assert response.status == 201, await response.text()


async def test_a_token_header_with_a_byte_that_is_not_utf8_is_401(env):
    client, _ = env
    host, port = client.server.host, client.server.port
    reader, writer = await asyncio.open_connection(host, port)
    writer.write(
        f"POST {PATH} HTTP/1.1\r\nHost: x\r\nX-Webhook-Token: \xff\xfe\r\n".encode("latin-1")
        + b"Content-Length: 2\r\n\r\n{}"
    )
    await writer.drain()
    status = await reader.readline()
    writer.close()
    assert status.startswith(b"HTTP/1.1 401")
    response = await client.post(
        "/api/v1/interactions",
        data=b"{}",
        headers={"Authorization": "Bearer \udcff".encode("utf-8", "surrogateescape").decode("latin-1")},
    )
    assert response.status == 401
    await known_conversations(client, ["c1"])
    reader, writer = await asyncio.open_connection(host, port)
    body = b'{"status": "closed"}'
    writer.write(
        f"PATCH /api/v1/conversations/c1 HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {API_TOKEN}\r\n".encode()
        + b"Idempotency-Key: \xff\xfe\r\nContent-Length: %d\r\n\r\n" % len(body)
        + body
    )
    await writer.drain()
    status = await reader.readline()
    writer.close()
    assert status.startswith(b"HTTP/1.1 200"), status


@pytest.mark.parametrize(
    "encoding, body",
    [("deflate", b"garbage, not deflate"), ("gzip", b"not gzip either"), ("deflate", zlib.compress(b"[{]")[:-4])],
)
async def test_a_body_that_cannot_be_decoded_is_400(env, encoding, body):
    client, journal = env
    response = await client.post(PATH, params={"token": TOKEN}, data=body, headers={"Content-Encoding": encoding})
    assert response.status == 400  # from our handler, or from aiohttp's parser when the stream ends short
    assert rows(journal, "SELECT count(*) FROM events") == [(0,)]


async def test_api_metadata_nested_too_deep_or_unstorable_is_422(env):
    client, journal = env
    auth = {"Authorization": f"Bearer {API_TOKEN}"}
    deep = {}
    node = deep
    for _ in range(500):
        node["x"] = {}
        node = node["x"]
    for metadata in (deep, {"n": 1e400}, {"bad": float("-inf")}):
        body = json.dumps({"metadata": metadata})
        response = await client.patch("/api/v1/conversations/c1", data=body, headers=auth)
        assert response.status == 422, (response.status, await response.text())
    assert rows(journal, "SELECT count(*) FROM events") == [(0,)]


async def test_api_lone_surrogates_are_refused_in_fields_and_cleaned_in_metadata(env):
    client, journal = env
    auth = {"Authorization": f"Bearer {API_TOKEN}"}
    text = '{"id": "i1", "conversationId": "c1", "direction": "inbound", "content": "a\\ud800b"}'
    await known_conversations(client, [f"c{n}" for n in range(20)])  # a PATCH of one no store knows is 404
    refused = [client.post("/api/v1/interactions", data=text.replace("i1", f"i{n}"), headers=auth) for n in range(20)]
    others = [post(client, json.dumps([incoming(f"v{i}")])) for i in range(50)]
    patches = [
        client.patch(f"/api/v1/conversations/c{n}", data='{"metadata": {"k": "\\ud800", "\\udc00": 1}}', headers=auth)
        for n in range(20)
    ]
    responses = await asyncio.gather(*refused, *others, *patches)
    assert [r.status for r in responses] == [422] * 20 + [200] * 70
    assert rows(journal, "SELECT count(*) FROM events") == [(20 + 70,)]
    (raw,) = rows(journal, "SELECT raw FROM events WHERE conversation_id = 'c3' AND title = 'api_conversation_update'")[
        0
    ]
    assert json.loads(raw)["metadata"] == {"k": "\ufffd", "\ufffd": 1}


async def test_api_timestamps_that_overflow_are_422(env):
    client, _ = env
    auth = {"Authorization": f"Bearer {API_TOKEN}"}
    for stamp in ("9999-12-31T23:59:59-05:00", "0001-01-01T00:00:00+05:00"):
        body = {"id": "i", "conversationId": "c1", "direction": "inbound", "timestamp": stamp}
        response = await client.post("/api/v1/interactions", data=json.dumps(body), headers=auth)
        assert response.status == 422, (stamp, await response.text())


# -- slow and too many clients, through the daemon's own runner ----------------------------------


@pytest.fixture
async def guarded(tmp_path):
    journal = await Journal.open(tmp_path / "journal.sqlite", [])
    config = server_config(read_timeout_s=0.5, max_connections=4)
    runner = GuardedRunner(create_webhook_app(config, journal), config, access_log=None)
    await runner.setup()
    port = free_port()
    await aiohttp.web.TCPSite(runner, "127.0.0.1", port).start()
    yield port, journal, runner
    await runner.cleanup()
    await journal.close()


async def closed_by_server(reader) -> bytes:
    """Read until the server closes the connection (the test's own timeout bounds a failure)."""
    return await asyncio.wait_for(reader.read(), 30)


async def webhook_status(port) -> int:
    async with aiohttp.ClientSession() as session:
        async with session.post(f"http://127.0.0.1:{port}{PATH}?token={TOKEN}", json=[incoming("x")]) as response:
            return response.status


async def test_a_connection_that_stalls_in_its_headers_is_closed(guarded):
    port, _, _ = guarded
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"POST {PATH}?token={TOKEN} HTTP/1.1\r\nHost: x\r\n".encode())  # and never the end
    await writer.drain()
    assert await closed_by_server(reader) == b""
    writer.close()


async def test_a_connection_that_stalls_in_its_body_is_answered_408_and_closed(guarded):
    port, journal, _ = guarded
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"POST {PATH}?token={TOKEN} HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n[".encode())
    await writer.drain()
    answer = await closed_by_server(reader)
    assert answer.startswith(b"HTTP/1.1 408")
    writer.close()
    assert rows(journal, "SELECT count(*) FROM events") == [(0,)]


async def test_connections_over_the_cap_are_refused_and_webhooks_resume(guarded):
    port, _, _ = guarded
    idle = [await asyncio.open_connection("127.0.0.1", port) for _ in range(4)]
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    answer = await closed_by_server(reader)
    writer.close()
    assert answer.startswith(b"HTTP/1.1 503") and b"too many connections" in answer
    for reader, _ in idle:  # the stalled ones are closed by the read timeout, freeing their places
        await closed_by_server(reader)
    for _, writer in idle:
        writer.close()
    assert await webhook_status(port) == 200


async def test_a_burst_of_connections_is_held_to_the_cap(guarded):
    port, _, _ = guarded
    connections = await asyncio.gather(*(asyncio.open_connection("127.0.0.1", port) for _ in range(40)))
    answers = await asyncio.gather(*(closed_by_server(reader) for reader, _ in connections))
    for _, writer in connections:
        writer.close()
    admitted = [answer for answer in answers if answer == b""]  # closed by the read timeout, unanswered
    assert len(admitted) <= 4
    assert all(answer.startswith(b"HTTP/1.1 503") for answer in answers if answer != b"")
    assert await webhook_status(port) == 200


async def test_an_api_write_the_journal_sets_apart_is_never_answered_as_recorded(env, monkeypatch):
    from daemon.journal import AppendResult

    client, journal = env

    async def set_apart(events, rejected=()):  # what Journal._commit_isolated answers for an unstorable event
        return AppendResult(accepted=0, duplicates=0, rejected=1, event_ids=())

    monkeypatch.setattr(journal, "append", set_apart)
    body = {"id": "i1", "conversationId": "c1", "direction": "inbound"}
    response = await client.post(
        "/api/v1/interactions", data=json.dumps(body), headers={"Authorization": f"Bearer {API_TOKEN}"}
    )
    assert response.status == 422
    assert "cannot be stored" in (await response.json())["error"]
