"""The webhook app over real HTTP with a real journal file."""

import json
import sqlite3

import pytest
from aiohttp.test_utils import TestClient, TestServer

from daemon.config import ServerConfig
from daemon.journal import Journal
from daemon.webhook import create_webhook_app

TOKEN = "integration-token-0123456789"
PATH = "/webhooks/sendpulse"


def incoming(message_id: str, text: str = "oi") -> dict:
    return {
        "title": "incoming_message",
        "service": "whatsapp",
        "contact": {"id": "c1", "phone": "+5511987654321"},
        "info": {"message": {"id": message_id, "channel_data": {"message": {"type": "text", "text": {"body": text}}}}},
    }


@pytest.fixture
async def env(tmp_path):
    journal = await Journal.open(tmp_path / "journal.sqlite", ["postgres"], page_limit=None)
    server = ServerConfig(webhook_token=TOKEN, max_body_bytes=64 * 1024)
    client = TestClient(TestServer(create_webhook_app(server, journal)))
    await client.start_server()
    yield client, journal
    await client.close()
    await journal.close()


async def post(client, body, *, token=TOKEN, header=False, raw=False):
    data = body if raw else json.dumps(body)
    if header:
        return await client.post(PATH, data=data, headers={"X-Webhook-Token": token})
    return await client.post(PATH, params={"token": token} if token is not None else None, data=data)


def count(journal, table):
    with sqlite3.connect(journal.path) as conn:
        return conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0]


async def test_batch_is_accepted_whole(env):
    client, journal = env
    response = await post(client, [incoming("a"), incoming("b"), {"title": "open_chat", "info": None}])
    assert response.status == 200
    assert await response.json() == {"accepted": 3, "duplicates": 0, "rejected": 0}
    assert count(journal, "events") == 3
    assert count(journal, "deliveries") == 3


async def test_single_object_body(env):
    client, _ = env
    response = await post(client, incoming("solo"), header=True)
    assert (response.status, await response.json()) == (200, {"accepted": 1, "duplicates": 0, "rejected": 0})


async def test_resent_events_are_counted_not_stored(env):
    client, journal = env
    await post(client, [incoming("a")])
    response = await post(client, [incoming("a"), incoming("b"), incoming("b")])
    assert await response.json() == {"accepted": 1, "duplicates": 2, "rejected": 0}
    assert count(journal, "events") == 2


async def test_bad_elements_are_quarantined_alone(env):
    client, journal = env
    response = await post(client, [incoming("a"), 42, {"no": "title"}, "text", incoming("b")])
    assert await response.json() == {"accepted": 2, "duplicates": 0, "rejected": 3}
    with sqlite3.connect(journal.path) as conn:
        quarantined = conn.execute("SELECT reason, raw FROM quarantine ORDER BY id").fetchall()
    assert quarantined == [
        ("element is a number, not an object", "42"),
        ("element has no title", '{"no": "title"}'),
        ("element is a string, not an object", '"text"'),
    ]


@pytest.mark.parametrize(
    "title",
    ["api_interaction", "api_escalation", "api_escalation_update", "api_conversation_update", "delivery_status"],
)
async def test_a_title_chatledger_journals_itself_is_quarantined_not_taken_from_a_webhook(env, title):
    # the bot API's and reconciliation's events are read back as chatledger wrote them: from a webhook,
    # one would be counted as a message and break every delivery that maps it
    client, journal = env
    forged = {"title": title, "contact": {"id": "c"}, "bot": {"id": "b"}, "info": {"message": {"id": "x"}}}
    response = await post(client, [incoming("a"), forged])
    assert await response.json() == {"accepted": 1, "duplicates": 0, "rejected": 1}
    with sqlite3.connect(journal.path) as conn:
        assert conn.execute("SELECT reason FROM quarantine").fetchall() == [
            (f"title {title!r} is chatledger's own (its bot API and reconciliation journal it), not a webhook's",)
        ]
        assert conn.execute("SELECT sum(message_count) FROM conversations").fetchone() == (1,)


@pytest.mark.parametrize("token, header", [(None, False), ("wrong", False), ("wrong", True), ("", True)])
async def test_missing_or_wrong_token_is_401_and_stores_nothing(env, token, header):
    client, journal = env
    response = await post(client, [incoming("a")], token=token, header=header)
    assert response.status == 401
    assert count(journal, "events") == 0


@pytest.mark.parametrize("body", [b"{not json", b'"just a string"', b"17", b"null", b"\xff"])
async def test_unusable_body_is_400(env, body):
    client, journal = env
    response = await post(client, body, raw=True)
    assert response.status == 400
    assert "error" in await response.json()
    assert count(journal, "events") == 0


async def test_oversized_body_is_413(env):
    client, journal = env
    response = await post(client, [incoming("a", text="x" * 70_000)])
    assert response.status == 413
    assert count(journal, "events") == 0


async def test_oversized_chunked_body_is_413(env):
    client, journal = env

    async def chunks():
        for _ in range(100):
            yield b" " * 1024

    response = await client.post(PATH, params={"token": TOKEN}, data=chunks())
    assert response.status == 413
    assert count(journal, "events") == 0


async def test_empty_array_is_fine(env):
    client, _ = env
    response = await post(client, [])
    assert await response.json() == {"accepted": 0, "duplicates": 0, "rejected": 0}


async def test_journal_that_cannot_write_gets_503_and_acknowledges_nothing(env):
    client, journal = env
    assert (await post(client, [incoming("before")])).status == 200
    await journal.set_page_limit(await journal.page_count())  # the disk is now full
    batch = [incoming("a", text="x" * 20_000), incoming("b", text="y" * 20_000), 7]
    response = await post(client, batch)
    assert response.status == 503
    assert response.headers["Retry-After"]
    assert "nothing was accepted" in (await response.json())["error"]
    assert count(journal, "events") == 1 and count(journal, "quarantine") == 0
    await journal.set_page_limit(None)  # space freed: intake resumes by itself
    response = await post(client, batch)
    assert await response.json() == {"accepted": 2, "duplicates": 0, "rejected": 1}


async def test_healthz_is_503_while_the_journal_cannot_write(env):
    client, journal = env
    await journal.close()  # the writer is gone: nothing can be made durable
    response = await client.get("/healthz")
    assert response.status == 503
    assert (await response.json())["journal"] == "unavailable"
    assert (await post(client, [incoming("a")])).status == 503


async def test_healthz(env):
    client, _ = env
    response = await client.get("/healthz")
    assert (response.status, await response.json()) == (200, {"journal": "writable"})


async def test_get_on_the_webhook_is_405(env):
    client, _ = env
    assert (await client.get(PATH, params={"token": TOKEN})).status == 405
