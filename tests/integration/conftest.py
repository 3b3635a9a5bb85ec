"""Both sinks holding the same conversations, delivered the normal way: for recover and forget."""

import json
from datetime import UTC, datetime
from types import SimpleNamespace

import pytest

from daemon.events import API_CONVERSATION_UPDATE, API_INTERACTION, normalize
from daemon.events import api_event as journaled_api_event
from daemon.journal import Journal
from daemon.ratelimit import RequestBudget
from daemon.records import conversation_id_for
from daemon.sinks.airtable import AirtableClient, AirtableSink, init_base
from daemon.sinks.postgres import PostgresSink
from daemon.testing.airtable import EmulatorThread
from tests.support import HandClock

TOKEN = "patRECOVER00000001.0123456789abcdef"
BASE = "appRECOVER0000001"
NAMES = {"conversations": "Conversations", "interactions": "Interactions", "escalations": "Escalations"}
RECEIVED = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)
T0 = 1_790_000_000


def message(i, contact, at):
    return {
        "title": "incoming_message" if i % 2 else "outgoing_message",
        "service": "whatsapp",
        "bot": {"id": "bot1"},
        "date": T0 + at,
        "contact": {"id": contact, "phone": f"+55 11 9{contact[1:]:0>8}", "name": f"Name {contact}"},
        "info": {
            "message": {
                "id": f"wamid.{i}",
                "channel_data": {"message": {"type": "text", "text": {"body": f"hello {i}"} if i % 2 else f"hi {i}"}},
            }
        },
    }


def event(title, contact, at):
    return {
        "title": title,
        "service": "whatsapp",
        "bot": {"id": "bot1"},
        "date": T0 + at,
        "contact": {"id": contact, "phone": f"+55 11 9{contact[1:]:0>8}", "name": f"Name {contact}"},
        "info": None,
    }


def cid(contact):
    return conversation_id_for("bot1", contact, None)


PAYLOADS = [message(i, f"c{i % 4}", i * 60) for i in range(60)] + [
    event("open_chat", "c1", 5000),
    event("unsubscribe", "c2", 6000),
]


@pytest.fixture
def stores_emulator():
    running = EmulatorThread.serving(TOKEN, BASE, rate=5, lockout=30.0)
    yield running
    running.stop()


@pytest.fixture
async def stores(tmp_path, stores_emulator, pg_cluster, pg_schema):
    """Both sinks holding PAYLOADS, delivered the normal way."""
    journal = await Journal.open(tmp_path / "j.sqlite", ["postgres", "airtable"])
    await journal.append([normalize(p, RECEIVED) for p in PAYLOADS])
    events = await journal.pending("postgres", 0, 10_000)
    client = AirtableClient(TOKEN, BASE, stores_emulator.url, RequestBudget(5))
    await init_base(client, NAMES)
    airtable = AirtableSink(client, NAMES, journal.conversations)
    postgres = PostgresSink(pg_cluster.dsn(), pg_schema)
    await postgres.deliver(events)
    await airtable.deliver(events)
    await postgres.close()
    yield SimpleNamespace(journal=journal, client=client)
    await airtable.close()
    await journal.close()


# The documented base (dates without time, no `init`) with columns the operators renamed, and the
# [airtable.fields] that maps them: every command must read and write through those names.
RENAMED = {
    "Conversations.CustomerPhone": "Phone",
    "Conversations.LastActivity": "Last activity",
    "Interactions.ConversationId": "Conversation",
    "Interactions.Content": "Message",
    "Interactions.Timestamp": "When",
    "Escalations.CustomerPhone": "Phone",
}


@pytest.fixture
async def renamed_stores(tmp_path, stores_emulator, pg_cluster, pg_schema):
    """Both sinks holding PAYLOADS, Airtable's copy in a documented base whose columns were renamed."""
    from daemon.sinks.airtable_schema import BaseNames, parse_field_mapping
    from daemon.testing.airtable.bases import documented_base

    def build():
        base = documented_base(stores_emulator.emulator.bases[BASE], "date")
        for key, name in RENAMED.items():
            table, field = key.split(".")
            base.table(table).field(field).name = name

    stores_emulator.run(build)
    names = BaseNames(NAMES, parse_field_mapping(RENAMED))
    journal = await Journal.open(tmp_path / "j.sqlite", ["postgres", "airtable"])
    await journal.append([normalize(p, RECEIVED) for p in PAYLOADS])
    events = await journal.pending("postgres", 0, 10_000)
    client = AirtableClient(TOKEN, BASE, stores_emulator.url, RequestBudget(5))
    airtable = AirtableSink(client, names, journal.conversations)
    postgres = PostgresSink(pg_cluster.dsn(), pg_schema)
    await postgres.deliver(events)
    await airtable.deliver(events)
    assert airtable.warnings == []
    await postgres.close()
    yield SimpleNamespace(journal=journal, client=client, names=names)
    await airtable.close()
    await journal.close()


def api_event(title, body, at):
    """What the bot API journals for a write about c1."""
    return journaled_api_event(
        title,
        f"api:{title}:{body['id']}:{at}",
        json.dumps(body),
        conversation_id=cid("c1"),
        occurred_at=datetime.fromtimestamp(T0 + at, UTC),
        received_at=RECEIVED,
        direction=body.get("direction"),
        text=body.get("content"),
    )


# What only the bot API sets: a processing time in milliseconds, tags, a sentiment.
API_EXTRAS = [
    api_event(
        API_INTERACTION,
        {
            "id": "bot-1",
            "direction": "outbound",
            "content": "hi from the bot",
            "intent": "greeting",
            "response": "Olá!",
            "processingTime": 350,
        },
        30,
    ),
    api_event(
        API_INTERACTION, {"id": "bot-2", "direction": "outbound", "content": "more", "processingTime": 1_234_567}, 31
    ),
    api_event(
        API_CONVERSATION_UPDATE, {"id": cid("c1"), "tags": ["vip", "late"], "sentiment": "calm", "priority": "HIGH"}, 32
    ),
]


def duration_and_multiple_select(base):
    """The documented base where the operators made ProcessingTime a duration and Tags a multiple select."""
    processing = base.table("Interactions").field("ProcessingTime")
    processing.type, processing.options = "duration", {"durationFormat": "h:mm:ss.SSS"}
    tags = base.table("Conversations").field("Tags")
    tags.type, tags.options = "multipleSelects", {"choices": []}


@pytest.fixture
async def typed_stores(tmp_path, stores_emulator, pg_cluster, pg_schema):
    """Both sinks holding PAYLOADS and API_EXTRAS, Airtable's copy in a documented base (dates without time)
    changed by the operators; `await typed_stores(change)` delivers and gives the journal and the client."""
    from daemon.testing.airtable.bases import documented_base

    opened = []

    async def make(change):
        def build():
            change(documented_base(stores_emulator.emulator.bases[BASE], "date"))

        stores_emulator.run(build)
        journal = await Journal.open(tmp_path / "j.sqlite", ["postgres", "airtable"])
        await journal.append([normalize(p, RECEIVED) for p in PAYLOADS] + API_EXTRAS)
        events = await journal.pending("postgres", 0, 10_000)
        client = AirtableClient(TOKEN, BASE, stores_emulator.url, RequestBudget(5))
        airtable = AirtableSink(client, NAMES, journal.conversations)
        opened.append((airtable, journal))
        postgres = PostgresSink(pg_cluster.dsn(), pg_schema)
        await postgres.deliver(events)
        await airtable.deliver(events)
        await postgres.close()
        return SimpleNamespace(journal=journal, client=client, warnings=airtable.warnings)

    yield make
    for airtable, journal in opened:
        await airtable.close()
        await journal.close()


@pytest.fixture
def clock():
    """A clock the test moves by hand (the SendPulse emulator's and client's)."""
    return HandClock()
