"""One contract for every sink: the shipped fake (daemon.testing.fakes.MemorySink), PostgreSQL on a real
cluster and Airtable through the emulator, each read back as the same rows; and a deliberately broken fake
for each clause, which the clause must catch."""

import json
import random
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

import asyncpg
import pytest

from daemon.events import (
    API_CONVERSATION_UPDATE,
    API_ESCALATION,
    API_ESCALATION_UPDATE,
    API_INTERACTION,
    normalize,
)
from daemon.events import api_event as journaled_api_event
from daemon.journal import Journal
from daemon.ratelimit import RequestBudget
from daemon.reconcile import status_event
from daemon.records import conversation_id_for, interaction_id_for
from daemon.sinks.airtable import AirtableClient, AirtableSink, init_base
from daemon.sinks.airtable_fields import FIELD_OF
from daemon.sinks.base import PermanentError, TransientError
from daemon.sinks.postgres import PostgresSink, quote_ident
from daemon.testing.fakes import MemorySink, Tables
from tests.integration.conftest import BASE, NAMES, TOKEN

RECEIVED = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)
T0 = 1_790_000_000


def message(i, contact, at, name=None):
    """Message i of `contact`, `at` seconds in: odd ones inbound, even ones outbound."""
    who = {"id": contact, "phone": "+55 11 91234567" + contact[1:], "name": name or f"Name {contact}"}
    return {
        "title": "incoming_message" if i % 2 else "outgoing_message",
        "service": "whatsapp",
        "bot": {"id": "bot1"},
        "date": T0 + at,
        "contact": who,
        "info": {"message": {"id": f"wamid.{i}", "channel_data": {"message": {"text": {"body": f"hello {i}"}}}}},
    }


def event(title, contact, at):
    return {
        "title": title,
        "service": "whatsapp",
        "bot": {"id": "bot1"},
        "date": T0 + at,
        "contact": {"id": contact},
        "info": None,
    }


# c1 is escalated; c2 closed after its messages (its last one renames it); c3 unsubscribed, then wrote
# again (active). Split in two halves, c3's unsubscribe and message 2 fall in the first, the message after it
# and message 2's status in the second: delivered in reverse order, each arrives before what precedes it.
EVENTS = [
    normalize(p, RECEIVED)
    for p in [
        message(1, "c1", 0),
        message(2, "c1", 60),
        event("unsubscribe", "c3", 30),
        message(3, "c1", 120),
        message(5, "c2", 10),
        message(6, "c2", 70),
        message(4, "c1", 180, "Maria"),
        event("open_chat", "c1", 600),
        message(7, "c2", 130, "Joana"),
        event("unsubscribe", "c2", 1200),
        message(8, "c3", 90),
        message(9, "c3", 20),
    ]
]
MESSAGE_2 = EVENTS[1]
READ_2 = status_event(MESSAGE_2, {}, MESSAGE_2.dedup_key, MESSAGE_2.message_id, "read", RECEIVED)
ALL = [*EVENTS, READ_2]


def cid(contact):
    return conversation_id_for("bot1", contact, None)


def iid(i):
    return interaction_id_for(f"msg:{'incoming_message' if i % 2 else 'outgoing_message'}:wamid.{i}")


@dataclass
class Rows:
    """What a store holds, in one shape: interaction -> status, conversation -> (messages, status),
    escalation -> its conversation."""

    interactions: dict[str, str] = field(default_factory=dict)
    conversations: dict[str, tuple[int, str]] = field(default_factory=dict)
    escalations: dict[str, str] = field(default_factory=dict)


OPEN_CHAT = EVENTS[7]
EXPECTED = Rows(
    interactions={iid(i): "delivered" if i % 2 else "sent" for i in range(1, 10)} | {iid(2): "read"},
    conversations={cid("c1"): (4, "escalated"), cid("c2"): (3, "closed"), cid("c3"): (2, "active")},
    escalations={str(uuid.uuid5(uuid.NAMESPACE_URL, f"chatledger:escalation:{OPEN_CHAT.dedup_key}")): cid("c1")},
)


@dataclass
class Store:
    """A sink, the journal its events come from (Airtable's reads it), and how to read, stop, start it."""

    sink: Any
    journal: Journal
    read: Callable[[], Awaitable[Rows]]
    down: Callable[[], None]
    up: Callable[[], None]
    seen: int = 0

    async def append(self, events):
        """Journal these events; the StoredEvents delivery would hand the sink."""
        await self.journal.append(events)
        stored = await self.journal.pending(self.sink.name, self.seen, 10_000)
        self.seen = stored[-1].id if stored else self.seen
        return stored


# -- the stores ------------------------------------------------------------------------------------


async def memory_store(tmp_path, sink=None):
    sink = sink or MemorySink("memory")
    journal = await Journal.open(tmp_path / "j.sqlite", [sink.name])

    async def read():
        tables = sink.tables
        return Rows(
            {i.interaction_id: i.status for i in tables.interactions.values()},
            {c.conversation_id: (c.message_count, c.status) for c in tables.conversations.values()},
            {e.escalation_id: e.conversation_id for e in tables.escalations.values()},
        )

    def down():
        sink.down = TransientError("connection refused")

    def up():
        sink.down = None

    return Store(sink, journal, read, down, up)


async def postgres_store(tmp_path, cluster, schema):
    journal = await Journal.open(tmp_path / "j.sqlite", ["postgres"])
    s = quote_ident(schema)

    async def read():
        conn = await asyncpg.connect(cluster.dsn())
        try:
            return Rows(
                dict(await conn.fetch(f"SELECT interaction_id, status FROM {s}.interactions")),
                {
                    r[0]: (r[1], r[2])
                    for r in await conn.fetch(f"SELECT conversation_id, message_count, status FROM {s}.conversations")
                },
                dict(await conn.fetch(f"SELECT escalation_id, conversation_id FROM {s}.escalations")),
            )
        finally:
            await conn.close()

    return Store(PostgresSink(cluster.dsn(), schema), journal, read, cluster.stop, cluster.start)


async def airtable_store(tmp_path, emulator):
    journal = await Journal.open(tmp_path / "j.sqlite", ["airtable"])
    client = AirtableClient(TOKEN, BASE, emulator.url, RequestBudget(5))
    await init_base(client, NAMES)
    sink = AirtableSink(client, NAMES, journal.conversations, journal.event_times, journal.reported_statuses)

    def rows(kind):
        table = emulator.emulator.bases[BASE].table(NAMES[kind])
        named = FIELD_OF[kind]
        return [
            {column: cells.get(name) for column, name in named.items()}
            for cells in map(table.by_name, table.records.values())
        ]

    async def read():
        tables = {kind: emulator.run(rows, kind) for kind in NAMES}
        return Rows(
            {r["interaction_id"]: r["status"] for r in tables["interactions"]},
            {r["conversation_id"]: (int(r["message_count"]), r["status"]) for r in tables["conversations"]},
            {r["escalation_id"]: r["conversation_id"] for r in tables["escalations"]},
        )

    def outage(until):
        def set_faults():
            emulator.emulator.faults.down_until = until if until is None else emulator.emulator.clock() + until

        emulator.run(set_faults)

    return Store(sink, journal, read, lambda: outage(3600.0), lambda: outage(None))


KINDS = ["memory", "postgres", "airtable"]


async def built(request, tmp_path, kind, cluster_fixture):
    if kind == "memory":
        return await memory_store(tmp_path)
    if kind == "postgres":
        return await postgres_store(
            tmp_path, request.getfixturevalue(cluster_fixture), request.getfixturevalue("pg_schema")
        )
    return await airtable_store(tmp_path, request.getfixturevalue("stores_emulator"))


@pytest.fixture(params=KINDS)
async def store(request, tmp_path):
    store = await built(request, tmp_path, request.param, "pg_cluster")
    yield store
    await store.sink.close()
    await store.journal.close()


@pytest.fixture(params=KINDS)
async def outage_store(request, tmp_path):
    """A store this test may stop and start (PostgreSQL on a cluster of its own)."""
    store = await built(request, tmp_path, request.param, "own_pg")
    yield store
    await store.sink.close()
    await store.journal.close()


# -- the contract ----------------------------------------------------------------------------------


async def a_batch_reads_back_as_its_rows(store):
    created = await store.sink.deliver(await store.append(ALL))
    assert await store.read() == EXPECTED
    assert created in (None, 9 + 3 + 1)  # the records made (interactions, conversations, escalation), if told


async def replaying_a_batch_changes_nothing(store):
    events = await store.append(ALL)
    await store.sink.deliver(events)
    first = await store.read()
    assert await store.sink.deliver(events) in (0, None)  # no record created
    assert await store.read() == first == EXPECTED


async def two_halves_in_reverse_order_give_the_same_rows(store):
    events = await store.append(ALL)
    middle = len(events) // 2
    await store.sink.deliver(events[middle:])
    await store.sink.deliver(events[:middle])
    assert await store.read() == EXPECTED


async def a_reported_status_raises_and_the_message_again_leaves_it(store):
    events = await store.append(EVENTS)
    await store.sink.deliver(events)
    assert (await store.read()).interactions[iid(2)] == "sent"
    [status] = await store.append([READ_2])  # learned once the message was delivered
    await store.sink.deliver([status])
    after = await store.read()
    assert after.interactions[iid(2)] == "read"
    assert after.conversations == EXPECTED.conversations  # a status is not a message
    [again] = [e for e in events if e.dedup_key == MESSAGE_2.dedup_key]
    await store.sink.deliver([again])  # a replay of the message alone says "sent"
    assert await store.read() == EXPECTED


async def a_store_that_is_down_fails_transiently_and_loses_nothing(store):
    events = await store.append(ALL)
    middle = len(events) // 2
    await store.sink.deliver(events[:middle])
    store.down()
    try:
        with pytest.raises(TransientError):
            await store.sink.deliver(events[middle:])
        with pytest.raises(TransientError):
            await store.sink.check()
    finally:
        store.up()
    await store.sink.check()
    await store.sink.deliver(events[middle:])
    assert await store.read() == EXPECTED


async def closing_twice_is_harmless(store):
    await store.sink.deliver(await store.append(ALL))
    for _ in range(2):
        try:
            await store.sink.close()
        except Exception as exc:
            pytest.fail(f"close() raised {exc!r}")
    assert await store.read() == EXPECTED


CLAUSES = [
    a_batch_reads_back_as_its_rows,
    replaying_a_batch_changes_nothing,
    two_halves_in_reverse_order_give_the_same_rows,
    a_reported_status_raises_and_the_message_again_leaves_it,
    closing_twice_is_harmless,
]


@pytest.mark.parametrize("clause", CLAUSES, ids=lambda clause: clause.__name__)
async def test_sink_contract(store, clause):
    await clause(store)


async def test_sink_contract_down(outage_store):
    await a_store_that_is_down_fails_transiently_and_loses_nothing(outage_store)


# -- each clause can fail --------------------------------------------------------------------------


class NoEscalations(Tables):
    def write(self, events, records):
        super().write(events, replace(records, escalations=[]))


class IncrementedCounts(Tables):
    """Adds the batch's interactions to the count instead of counting them."""

    def write(self, events, records):
        counts = {c: known.message_count for c, known in self.conversations.items()}
        super().write(events, records)
        for row in records.interactions:
            counts[row.conversation_id] = counts.get(row.conversation_id, 0) + 1
        for c, n in counts.items():
            self.conversations[c] = replace(self.conversations[c], message_count=n)


class LastStatusWins(Tables):
    """An interaction takes the status last written, even one further back."""

    def write(self, events, records):
        super().write(events, records)
        for row in records.interactions:
            self.interactions[row.interaction_id] = replace(self.interactions[row.interaction_id], status=row.status)


class UpWhenChecked(MemorySink):
    async def check(self):
        self.checks += 1


class ClosesOnce(MemorySink):
    async def close(self):
        if self.closed:
            raise RuntimeError("already closed")
        await super().close()


def with_tables(tables):
    sink = MemorySink("memory")
    sink.tables = tables
    return sink


BROKEN = [
    (a_batch_reads_back_as_its_rows, lambda: with_tables(NoEscalations())),
    (replaying_a_batch_changes_nothing, lambda: with_tables(IncrementedCounts())),
    (two_halves_in_reverse_order_give_the_same_rows, lambda: with_tables(LastStatusWins())),
    (a_reported_status_raises_and_the_message_again_leaves_it, lambda: with_tables(LastStatusWins())),
    (a_store_that_is_down_fails_transiently_and_loses_nothing, lambda: UpWhenChecked("memory")),
    (closing_twice_is_harmless, lambda: ClosesOnce("memory")),
]


@pytest.mark.parametrize("clause, broken", BROKEN, ids=[clause.__name__ for clause, _ in BROKEN])
async def test_each_clause_fails_against_a_broken_fake(tmp_path, clause, broken):
    store = await memory_store(tmp_path, broken())
    try:
        with pytest.raises((AssertionError, pytest.fail.Exception)):
            await clause(store)
    finally:
        await store.journal.close()


def test_every_clause_has_a_broken_fake():
    assert {clause for clause, _ in BROKEN} == {*CLAUSES, a_store_that_is_down_fails_transiently_and_loses_nothing}


# -- the fake's rows are PostgreSQL's, column for column -------------------------------------------


def api_event(title, key, body, at, conversation_id):
    return journaled_api_event(
        title,
        key,
        json.dumps(body, sort_keys=True),
        conversation_id=conversation_id,
        occurred_at=datetime.fromtimestamp(T0 + at, UTC),
        received_at=RECEIVED,
        message_id=body.get("messageId"),
        direction=body.get("direction"),
        text=body.get("content") or body.get("notes"),
    )


# What the bot API adds: an enrichment of message 4 (its status further along), an interaction of its own,
# a PATCH of c1 that closes it, an escalation of c2 and its PATCH; and c4, status events and no message.
EXTRA = [
    normalize(event("open_chat", "c4", 300), RECEIVED),
    normalize(event("unsubscribe", "c4", 50), RECEIVED),
    api_event(
        API_INTERACTION,
        "api:interaction:bot-4",
        {
            "id": "bot-4",
            "conversationId": cid("c1"),
            "direction": "outbound",
            "messageId": "wamid.4",
            "status": "delivered",
            "intent": "greeting",
            "content": "Olá!",
            "processingTime": 350,
        },
        181,
        cid("c1"),
    ),
    api_event(
        API_INTERACTION,
        "api:interaction:bot-own",
        {
            "id": "bot-own",
            "conversationId": cid("c3"),
            "direction": "outbound",
            "content": "from the bot",
            "errorMessage": "template missing",
        },
        95,
        cid("c3"),
    ),
    api_event(
        API_CONVERSATION_UPDATE,
        "api:conversation-update:c1:1",
        {
            "id": cid("c1"),
            "tags": ["vip"],
            "sentiment": "calm",
            "priority": "HIGH",
            "metadata": {"crm": 7},
            "status": "closed",
        },
        700,
        cid("c1"),
    ),
    api_event(
        API_ESCALATION,
        "api:escalation:esc-2",
        {"id": "esc-2", "conversationId": cid("c2"), "reason": "angry", "priority": "HIGH", "notes": "call back"},
        140,
        cid("c2"),
    ),
    api_event(
        API_ESCALATION_UPDATE,
        "api:escalation-update:esc-2:1",
        {"id": "esc-2", "status": "resolved", "assignedAgent": "ana", "resolvedAt": "2026-11-25T13:00:00Z"},
        150,
        None,
    ),
]
COLUMNS = {
    "conversations": (
        "conversation_id",
        "customer_phone",
        "customer_name",
        "status",
        "started_at",
        "last_activity",
        "message_count",
        "intent",
        "sentiment",
        "priority",
        "assigned_agent",
        "tags",
        "metadata",
    ),
    "interactions": (
        "interaction_id",
        "conversation_id",
        "message_id",
        "direction",
        "content",
        "intent",
        "response",
        "processing_time_ms",
        "status",
        "error_message",
        "customer_phone",
        "occurred_at",
    ),
    "escalations": (
        "escalation_id",
        "ticket_id",
        "conversation_id",
        "reason",
        "priority",
        "status",
        "customer_phone",
        "assigned_agent",
        "created_at",
        "resolved_at",
        "notes",
    ),
}
STATUS_KEYS = {"status_event", "status_event_at", "status_key"}  # PostgreSQL's note of the status event followed


async def postgres_columns(dsn, schema):
    conn = await asyncpg.connect(dsn)
    try:
        tables = {}
        for table, columns in COLUMNS.items():
            rows = [
                dict(row) for row in await conn.fetch(f"SELECT {', '.join(columns)} FROM {quote_ident(schema)}.{table}")
            ]
            for row in rows:
                if table == "conversations":
                    row["tags"] = json.loads(row["tags"])
                    row["metadata"] = {k: v for k, v in json.loads(row["metadata"]).items() if k not in STATUS_KEYS}
            tables[table] = {row[columns[0]]: row for row in rows}
        return tables
    finally:
        await conn.close()


def fake_columns(sink):
    tables = {}
    for table, columns in COLUMNS.items():
        rows = [{c: getattr(row, c) for c in columns} for row in getattr(sink.tables, table).values()]
        for row in rows:
            if table == "conversations":
                row["tags"] = list(row["tags"])
        tables[table] = {row[columns[0]]: row for row in rows}
    return tables


def batches(events, order):
    """The events in batches: as journaled, one by one backwards, or shuffled into random batches."""
    if order == "journal":
        return [events]
    if order == "backwards":
        return [[e] for e in reversed(events)]
    chosen = random.Random(order).sample(events, len(events))
    cuts = sorted(random.Random(order).sample(range(1, len(events)), 5))
    return [chosen[a:b] for a, b in zip([0, *cuts], [*cuts, len(events)], strict=True)]


@pytest.mark.parametrize("order", ["journal", "backwards", "shuffled-1", "shuffled-2", "shuffled-3"])
async def test_the_fake_holds_what_postgresql_holds_column_for_column(tmp_path, pg_cluster, pg_schema, order):
    store = await memory_store(tmp_path)
    postgres = PostgresSink(pg_cluster.dsn(), pg_schema)
    try:
        events = await store.append([*ALL, *EXTRA])

        async def deliver_both(batch):
            """True when both take the batch; the fake must refuse what PostgreSQL refuses."""
            refused = []
            for sink in (store.sink, postgres):
                try:
                    await sink.deliver(batch)
                except PermanentError:
                    refused.append(sink)
            assert refused in ([], [store.sink, postgres])
            return not refused

        dead = []  # out of order, an escalation's update before the escalation is refused by both
        for batch in batches(events, order):
            if not await deliver_both(batch):
                dead += [event for event in batch if not await deliver_both([event])]  # as delivery isolates it
        for event in dead:  # replayed once the rest is in: applied
            assert await deliver_both([event])
        held = await postgres_columns(pg_cluster.dsn(), pg_schema)
        assert held["interactions"][iid(4)]["intent"] == "greeting"  # the API's rows are there to compare
        assert fake_columns(store.sink) == held
    finally:
        await postgres.close()
        await store.journal.close()
