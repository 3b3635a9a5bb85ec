"""`chatledger show`'s reads: one conversation with its interactions and escalations from PostgreSQL, else the
journal, else Airtable, alike whichever answers; the stores that did not answer named."""

from datetime import UTC, datetime
from functools import partial

import pytest

from daemon.events import normalize
from daemon.journal import Journal
from daemon.ratelimit import RequestBudget
from daemon.reads import Stores
from daemon.records import iso
from daemon.show import render, show
from daemon.sinks.airtable import AirtableClient, AirtableSink, init_base
from daemon.sinks.postgres import PostgresSink
from daemon.sinks.postgres_rows import PostgresRows
from tests.integration.conftest import BASE, NAMES, PAYLOADS, RECEIVED, T0, TOKEN, cid
from tests.integration.test_api import AUTH, api_client

C1 = cid("c1")
PHONE = "5511900000001"  # c1's, "+55 11 900000001" in the webhooks


def at(seconds):
    """A webhook's time in PAYLOADS, as show gives every time."""
    return iso(datetime.fromtimestamp(T0 + seconds, UTC))


@pytest.fixture
async def filled(tmp_path, stores_emulator, pg_cluster, pg_schema):
    """The journal, PostgreSQL and Airtable holding PAYLOADS and what the bot API added about c1: an
    enrichment of one of its messages, an escalation and its PATCH."""
    journal = await Journal.open(tmp_path / "j.sqlite", ["postgres", "airtable"])
    await journal.append([normalize(p, RECEIVED) for p in PAYLOADS])
    client = AirtableClient(TOKEN, BASE, stores_emulator.url, RequestBudget(5))
    await init_base(client, NAMES)
    async with api_client(journal) as api:
        for route, body in (
            (
                "/api/v1/interactions",
                {
                    "id": "bot-5",
                    "conversationId": C1,
                    "messageId": "wamid.5",
                    "direction": "inbound",
                    "intent": "greeting",
                    "processingTime": 120,
                },
            ),
            (
                "/api/v1/escalations",
                {
                    "id": "esc-1",
                    "conversationId": C1,
                    "reason": "wants a human",
                    "priority": "HIGH",
                    "createdAt": "2026-11-27T10:00:00Z",
                },
            ),
        ):
            assert (await api.post(route, json=body, headers=AUTH)).status == 201
        patch = {"status": "resolved", "assignedAgent": "ana", "resolvedAt": "2026-11-27T11:00:00Z"}
        assert (await api.patch("/api/v1/escalations/esc-1", json=patch, headers=AUTH)).status == 200
    airtable = AirtableSink(client, NAMES, journal.conversations, journal.event_times)
    postgres = PostgresSink(pg_cluster.dsn(), pg_schema)
    events = await journal.pending("postgres", 0, 10_000)
    await postgres.deliver(events)
    await airtable.deliver(events)
    await postgres.close()
    empty = await Journal.open(tmp_path / "empty.sqlite", [])
    rows = partial(PostgresRows.open, pg_cluster.dsn(), pg_schema, migrate_schema=False)
    yield {
        "postgres": Stores(journal, rows, lambda: (client, NAMES)),
        "journal": Stores(journal, None, lambda: (client, NAMES)),
        "airtable": Stores(empty, None, lambda: (client, NAMES)),
    }
    await airtable.close()
    await empty.close()
    await journal.close()


def _seen(answer):
    """What an operator reads of a conversation, store-independent."""
    [one] = answer["conversations"]
    c = one["conversation"]
    return (
        (
            c["conversationId"],
            c["customerPhone"],
            c["customerName"],
            c["status"],
            c["startedAt"],
            c["lastActivity"],
            c["messageCount"],
        ),
        [
            (
                i["direction"],
                i["timestamp"],
                i["content"],
                i["messageId"],
                i["intent"],
                i["processingTime"],
                i["status"],
            )
            for i in one["interactions"]
        ],
        [
            (
                e["id"],
                e["ticketId"],
                e["reason"],
                e["priority"],
                e["status"],
                e["assignedAgent"],
                e["createdAt"],
                e["resolvedAt"],
            )
            for e in one["escalations"]
        ],
    )


async def test_each_store_answers_the_same_conversation_and_says_it_answered(filled):
    answers = {store: await show(stores, conversation=C1) for store, stores in filled.items()}
    for store, answer in answers.items():
        assert [c["source"] for c in answer["conversations"]] == [store]
        assert answer["problems"] == [] and answer["not_asked"] == []
    conversation, interactions, escalations = _seen(answers["postgres"])
    assert conversation == (C1, PHONE, "Name c1", "escalated", at(60), at(57 * 60), 15)
    # oldest first, with direction, time and text; the bot's enrichment folded into its message
    assert [i[:3] for i in interactions[:2]] == [("inbound", at(60), "hello 1"), ("inbound", at(300), "hello 5")]
    assert interactions[1][3:] == ("wamid.5", "greeting", 120, "delivered")
    assert [i[1] for i in interactions] == [at(i * 60) for i in range(1, 60, 4)]
    assert [e[2:] for e in escalations] == [
        ("live chat opened", "MEDIUM", "pending", None, at(5000), None),
        ("wants a human", "HIGH", "resolved", "ana", "2026-11-27T10:00:00.000Z", "2026-11-27T11:00:00.000Z"),
    ]
    assert _seen(answers["journal"]) == _seen(answers["postgres"])
    assert _seen(answers["airtable"]) == _seen(answers["postgres"])
    text = render(answers["journal"])
    assert f"conversation {C1} (from the journal)" in text
    assert f"{at(300)}  in   hello 5" in text and "wants a human" in text


async def test_a_phone_shows_each_of_its_conversations_from_whichever_store_knows_it(filled):
    for store, stores in filled.items():
        answer = await show(stores, phone=PHONE)
        assert [(c["source"], c["conversation"]["conversationId"]) for c in answer["conversations"]] == [(store, C1)]
    nobody = await show(filled["postgres"], phone="5511911112222")
    assert (
        nobody["conversations"] == []
        and nobody["error"] == "no conversation of phone 5511911112222 in any store that answered"
    )


async def test_a_long_conversation_says_how_much_is_shown(filled):
    answer = await show(filled["journal"], conversation=C1, limit=10)
    [one] = answer["conversations"]
    assert len(one["interactions"]) == 10 and one["more"] is True
    assert "interactions, oldest first: only 10 shown (--limit)" in render(answer)


async def test_the_stores_that_did_not_answer_are_named(tmp_path, own_pg):
    journal = await Journal.open(tmp_path / "j.sqlite", ["postgres"])
    try:
        await journal.append([normalize(PAYLOADS[1], RECEIVED)])
        own_pg.stop("immediate")
        stores = Stores(
            journal, partial(PostgresRows.open, own_pg.dsn(), "chatledger", migrate_schema=False), lambda: None
        )
        answer = await show(stores, conversation=C1)
        assert [c["source"] for c in answer["conversations"]] == ["journal"]
        [problem] = answer["problems"]
        assert problem.startswith("postgres: ") and "cannot connect" in problem
        assert "postgres did not answer" in render(answer)
        missing = await show(stores, conversation="nope")
        assert missing["conversations"] == [] and missing["error"].startswith(
            "no conversation nope in any store that answered (postgres: "
        )
        by_phone = await show(stores, phone=PHONE)  # PostgreSQL asked once, not once per conversation
        assert [c["source"] for c in by_phone["conversations"]] == ["journal"] and len(by_phone["problems"]) == 1
    finally:
        await journal.close()
