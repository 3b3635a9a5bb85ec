"""Outbound delivery statuses from SendPulse's API: through the journal to both real stores, never backwards."""

import json
import sqlite3
from datetime import UTC, datetime, timedelta

import pytest

from daemon.events import API_INTERACTION, api_event, normalize
from daemon.journal import Journal
from daemon.ratelimit import RequestBudget
from daemon.reconcile import reconcile
from daemon.records import conversation_id_for, interaction_id_for
from daemon.sendpulse import SendPulseClient
from daemon.sinks.airtable import AirtableClient, AirtableSink, init_base
from daemon.sinks.postgres import PostgresSink, quote_ident
from daemon.testing.sendpulse import EmulatorThread
from daemon.testing.sendpulse.model import webhook_body
from tests.integration.conftest import BASE, NAMES
from tests.integration.conftest import TOKEN as AIRTABLE_TOKEN

CLIENT_ID, SECRET = "sp-client", "sp-secret"
BOT = "68f176502ca6f03a9705c489"
DELIVERED, READ, FAILED = 3, 4, 6


@pytest.fixture
def sendpulse():
    running = EmulatorThread.serving(CLIENT_ID, SECRET, rate=10_000)
    running.run(running.emulator.add_bot, BOT, "SVlentes", 553399898026)
    yield running
    running.stop()


@pytest.fixture
async def world(tmp_path, sendpulse, stores_emulator, pg_cluster, pg_schema):
    journal = await Journal.open(tmp_path / "j.sqlite", ["postgres", "airtable"])
    client = AirtableClient(AIRTABLE_TOKEN, BASE, stores_emulator.url, RequestBudget(5))
    await init_base(client, NAMES)
    airtable = AirtableSink(client, NAMES, journal.conversations, journal.event_times, journal.reported_statuses)
    postgres = PostgresSink(pg_cluster.dsn(), pg_schema)
    yield journal, postgres, airtable
    await postgres.close()
    await airtable.close()
    await journal.close()


def now():
    return datetime.now(UTC).replace(microsecond=0)


async def run(sendpulse, journal, since=None, **options):
    async with SendPulseClient(sendpulse.url, CLIENT_ID, SECRET, RequestBudget(100), backoff=0.01) as client:
        report = await reconcile(client, journal, since or now() - timedelta(hours=1), **options)
    assert report.error is None
    return report


async def deliver(journal, sinks, again=None):
    """Pending events to each sink; `again`: the messages of that conversation again, as replaying their
    dead letters or `replay --event` would."""
    for sink in sinks:
        events = await journal.pending(sink.name, 0, 10_000)
        if again:
            events = [e for e in await journal.events_of_conversation(again, 10_000) if e.title == "outgoing_message"]
        await sink.deliver(events)
        await journal.mark_delivered(sink.name, [e.id for e in events])


def webhook_of(sendpulse, message_id, **ids):
    def build():
        model = sendpulse.emulator
        message = model.messages[message_id]
        return webhook_body(model.bots[BOT], model.contacts[message.contact_id], message, ids)[0]

    return normalize(sendpulse.run(build), now())


def set_status(sendpulse, message_id, status):
    sendpulse.run(sendpulse.emulator.set_status, message_id, status)


async def pg_statuses(pg_conn_of, schema):
    rows = await pg_conn_of.fetch(f"SELECT interaction_id, status FROM {quote_ident(schema)}.interactions")
    return {row["interaction_id"]: row["status"] for row in rows}


def airtable_statuses(emulator):
    def read():
        table = emulator.emulator.bases[BASE].table("Interactions")
        return {row["InteractionId"]: row.get("Status") for row in map(table.by_name, table.records.values())}

    return emulator.run(read)


def status_events(journal):
    with sqlite3.connect(journal.path) as conn:
        return [
            (key, json.loads(raw)["status"])
            for key, raw in conn.execute(
                "SELECT dedup_key, raw FROM events WHERE title = 'delivery_status' ORDER BY id"
            )
        ]


async def test_statuses_reach_both_stores_once_and_never_move_back(
    world, sendpulse, stores_emulator, pg_conn, pg_schema
):
    journal, postgres, airtable = world
    maria = sendpulse.run(
        sendpulse.emulator.add_contact, BOT, 5533999898026, "Maria", created_at=now() - timedelta(hours=2)
    )
    sent = [
        sendpulse.run(
            sendpulse.emulator.add_message,
            maria.id,
            "out",
            f"mensagem {i}",
            created_at=now() - timedelta(minutes=30 - i),
        )
        for i in range(4)
    ]
    # the first two came by webhook (the second under a SendPulse id unlike the API's), the others never did
    webhooks = [webhook_of(sendpulse, sent[0].id), webhook_of(sendpulse, sent[1].id, id="f" * 24)]
    await journal.append(webhooks)
    keys = [
        webhooks[0].dedup_key,
        webhooks[1].dedup_key,
        f"msg:outgoing_message:{sent[2].id}",
        f"msg:outgoing_message:{sent[3].id}",
    ]
    interactions = [interaction_id_for(key) for key in keys]
    for message, status in zip(sent, (DELIVERED, READ, FAILED)):
        set_status(sendpulse, message.id, status)

    first = await run(sendpulse, journal)
    assert (first.added, first.present, first.statuses) == (2, 2, 3)
    assert status_events(journal) == [
        (f"status:{keys[0]}:delivered", "delivered"),
        (f"status:{keys[1]}:read", "read"),
        (f"status:{keys[2]}:failed", "failed"),
    ]
    await deliver(journal, [postgres, airtable])
    expected = dict(zip(interactions, ("delivered", "read", "failed", "sent")))
    assert await pg_statuses(pg_conn, pg_schema) == expected
    assert airtable_statuses(stores_emulator) == expected

    set_status(sendpulse, sent[0].id, READ)
    set_status(sendpulse, sent[1].id, DELIVERED)  # backwards: SendPulse never says so, and it would not count
    set_status(sendpulse, sent[2].id, DELIVERED)  # delivered after all
    second = await run(sendpulse, journal)
    assert (second.added, second.statuses) == (0, 2)
    assert (await run(sendpulse, journal)).statuses == 0  # learned once
    await deliver(journal, [postgres, airtable])
    expected = dict(zip(interactions, ("read", "read", "delivered", "sent")))
    assert await pg_statuses(pg_conn, pg_schema) == expected
    assert airtable_statuses(stores_emulator) == expected

    # the messages again, alone: their own "sent" moves nothing back
    await deliver(journal, [postgres, airtable], again=conversation_id_for(BOT, maria.id, None))
    assert await pg_statuses(pg_conn, pg_schema) == expected
    assert airtable_statuses(stores_emulator) == expected
    with sqlite3.connect(journal.path) as conn:
        counted = conn.execute(
            "SELECT message_count FROM conversations WHERE conversation_id = ?",
            (conversation_id_for(BOT, maria.id, None),),
        ).fetchone()
    assert counted == (4,)  # a status is not a message

    # the bot enriches the read message late, saying "sent": its intent lands, the status stays
    late = {
        "id": "bot-late",
        "conversationId": conversation_id_for(BOT, maria.id, None),
        "direction": "outbound",
        "messageId": sent[0].id,
        "status": "sent",
        "intent": "saudação",
    }
    await journal.append(
        [
            api_event(
                API_INTERACTION,
                "api:interaction:bot-late",
                json.dumps(late, sort_keys=True),
                conversation_id=late["conversationId"],
                occurred_at=now(),
                received_at=now(),
                message_id=sent[0].id,
                direction="outbound",
            )
        ]
    )
    await deliver(journal, [postgres, airtable])
    assert await pg_statuses(pg_conn, pg_schema) == expected
    assert airtable_statuses(stores_emulator) == expected
    assert (
        await pg_conn.fetchval(
            f"SELECT intent FROM {quote_ident(pg_schema)}.interactions WHERE interaction_id = $1", interactions[0]
        )
        == "saudação"
    )


async def test_a_status_reported_before_postgres_has_the_message_writes_the_whole_row(
    world, sendpulse, pg_conn, pg_schema
):
    journal, postgres, _ = world
    maria = sendpulse.run(
        sendpulse.emulator.add_contact, BOT, 5533999898026, "Maria", created_at=now() - timedelta(hours=2)
    )
    message = sendpulse.run(
        sendpulse.emulator.add_message,
        maria.id,
        "out",
        "Olá! Como posso ajudar?",
        created_at=now() - timedelta(minutes=5),
    )
    set_status(sendpulse, message.id, READ)
    await run(sendpulse, journal)
    # PostgreSQL takes the status event alone first (its message dead-lettered there, say), then the message
    events = await journal.pending("postgres", 0, 100)
    assert [e.title for e in events] == ["outgoing_message", "delivery_status"]
    await postgres.deliver(events[1:])
    await postgres.deliver(events[:1])
    rows = await pg_conn.fetch(f"SELECT content, status, message_id FROM {quote_ident(pg_schema)}.interactions")
    assert [tuple(row) for row in rows] == [("Olá! Como posso ajudar?", "read", message.id)]


async def test_a_status_learned_after_the_window_is_followed_up_within_status_window(world, sendpulse):
    journal, _, _ = world
    people = [
        sendpulse.run(
            sendpulse.emulator.add_contact, BOT, 5533999898026 + i, f"c{i}", created_at=now() - timedelta(hours=5)
        )
        for i in range(3)
    ]
    # each got an outbound message 3 h ago, by webhook; people[2]'s was read at once and is known as read
    old = [
        sendpulse.run(
            sendpulse.emulator.add_message, person.id, "out", f"oferta {i}", created_at=now() - timedelta(hours=3)
        )
        for i, person in enumerate(people)
    ]
    await journal.append([webhook_of(sendpulse, message.id) for message in old])
    set_status(sendpulse, old[2].id, READ)
    await run(sendpulse, journal, since=now() - timedelta(hours=4))
    assert [status for _, status in status_events(journal)] == ["read"]
    set_status(sendpulse, old[0].id, READ)  # read hours later: the contact wrote nothing since
    set_status(sendpulse, old[1].id, DELIVERED)

    before = sendpulse.run(sendpulse.emulator.stats)["requests"]
    window = await run(sendpulse, journal, follow_up_since=now() - timedelta(hours=24))
    assert (window.chats, window.seen, window.added, window.present) == (0, 0, 0, 0)  # nothing new in the window
    assert (window.statuses, window.followed_up) == (2, 2)
    assert sorted(status for _, status in status_events(journal)) == ["delivered", "read", "read"]
    # token, bots, one chats page, and one messages page per contact not yet read (people[2] is not asked)
    assert sendpulse.run(sendpulse.emulator.stats)["requests"] - before == 3 + 2
    again = await run(sendpulse, journal, follow_up_since=now() - timedelta(hours=24))
    assert (again.statuses, again.followed_up) == (0, 1)  # people[1]'s is delivered, not read yet: asked again
    assert (await run(sendpulse, journal, follow_up_since=now() - timedelta(hours=2))).followed_up == 0
