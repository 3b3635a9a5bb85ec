"""The PostgreSQL sink and the delivery loop against a real cluster and a real journal file."""

import asyncio
import itertools
import random
from datetime import UTC, datetime

import asyncpg
import pytest

from daemon.delivery import DeliveryWorker
from daemon.events import API_ESCALATION, API_ESCALATION_UPDATE, normalize
from daemon.journal import Journal
from daemon.records import conversation_id_for
from daemon.sinks.base import TransientError
from daemon.sinks.postgres import SCHEMA_VERSION, PostgresSink, SchemaTooNew, migrate, quote_ident

RECEIVED = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)
T0 = 1_790_000_000  # seconds

COLUMNS = {
    "events": ["event_id", "title", "service", "bot_id", "contact_id", "received_at", "payload"],
    "interactions": [
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
        "created_at",
    ],
    "conversations": [
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
        "created_at",
        "updated_at",
    ],
    "escalations": [
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
    ],
}


def msg(mid, contact="c1", at=0, title="incoming_message", text="oi", phone="+55 11 98765-4321"):
    body = {"text": {"body": text}} if title == "incoming_message" else {"text": text}
    return {
        "title": title,
        "service": "whatsapp",
        "bot": {"id": "bot1"},
        "date": T0 + at,
        "contact": {"id": contact, "phone": phone, "name": f"Name {contact}"},
        "info": {"message": {"id": mid, "channel_data": {"message": {"type": "text", **body}}}},
    }


def status_event(title, contact="c1", at=0):
    return {
        "title": title,
        "service": "whatsapp",
        "bot": {"id": "bot1"},
        "date": T0 + at,
        "contact": {"id": contact, "phone": "5511987654321", "name": f"Name {contact}"},
        "info": None,
    }


def conversation(contact="c1"):
    return conversation_id_for("bot1", contact, None)


async def journaled(tmp_path, payloads, name="j.sqlite"):
    """A real journal holding these payloads, and its stored events in id order."""
    journal = await Journal.open(tmp_path / name, ["postgres"])
    await journal.append([normalize(p, RECEIVED) for p in payloads])
    return journal, await journal.pending("postgres", 0, 10_000)


async def dump(conn, schema, skip=()):
    out = {}
    for table, columns in COLUMNS.items():
        cols = ", ".join(c for c in columns if c not in skip)
        out[table] = [
            tuple(r) for r in await conn.fetch(f"SELECT {cols} FROM {quote_ident(schema)}.{table} ORDER BY 1")
        ]
    return out


@pytest.fixture
async def sink(pg_cluster, pg_schema):
    sink = PostgresSink(pg_cluster.dsn(), pg_schema)
    yield sink
    await sink.close()


async def test_migration_creates_exact_tables_and_is_idempotent(pg_conn, pg_schema):
    assert await migrate(pg_conn, pg_schema) == (0, SCHEMA_VERSION)
    assert await migrate(pg_conn, pg_schema) == (SCHEMA_VERSION, SCHEMA_VERSION)
    for table, columns in COLUMNS.items():
        found = await pg_conn.fetch(
            "SELECT column_name FROM information_schema.columns WHERE table_schema = $1 AND table_name = $2 "
            "ORDER BY ordinal_position",
            pg_schema,
            table,
        )
        assert [r[0] for r in found] == columns
    kinds = dict(
        await pg_conn.fetch(
            "SELECT column_name, data_type FROM information_schema.columns WHERE table_schema = $1 "
            "AND table_name = 'interactions'",
            pg_schema,
        )
    )
    assert kinds["occurred_at"] == "timestamp with time zone"
    indexes = {r[0] for r in await pg_conn.fetch("SELECT indexname FROM pg_indexes WHERE schemaname = $1", pg_schema)}
    assert {"interactions_by_conversation", "conversations_by_phone"} <= indexes


async def test_newer_schema_is_refused(pg_conn, pg_schema):
    await migrate(pg_conn, pg_schema)
    await pg_conn.execute(f"INSERT INTO {quote_ident(pg_schema)}.schema_migrations (version) VALUES (99)")
    with pytest.raises(SchemaTooNew, match="version 99, written by a newer chatledger"):
        await migrate(pg_conn, pg_schema)


async def test_batch_lands_as_events_interactions_conversations_escalations(tmp_path, sink, pg_conn, pg_schema):
    journal, events = await journaled(
        tmp_path,
        [
            msg("m1", at=0, text="hello"),
            msg("m2", at=5, title="outgoing_message", text="hi, how can I help?"),
            status_event("open_chat", at=10),
            msg("m3", contact="c2", at=3),
            {"title": "some_new_event", "bot": {"id": "bot1"}, "date": T0},  # nobody to attach: event only
        ],
    )
    await sink.deliver(events)
    s = quote_ident(pg_schema)
    assert await pg_conn.fetchval(f"SELECT count(*) FROM {s}.events") == 5
    payload = await pg_conn.fetchval(f"SELECT payload FROM {s}.events WHERE event_id = 'msg:incoming_message:m1'")
    assert '"hello"' in payload
    rows = await pg_conn.fetch(
        f"SELECT message_id, direction, content, status, customer_phone, conversation_id "
        f"FROM {s}.interactions ORDER BY occurred_at"
    )
    assert [(r[0], r[1], r[2], r[3]) for r in rows] == [
        ("m1", "inbound", "hello", "delivered"),
        ("m3", "inbound", "oi", "delivered"),
        ("m2", "outbound", "hi, how can I help?", "sent"),
    ]
    assert rows[0]["customer_phone"] == "5511987654321"
    assert rows[0]["conversation_id"] == conversation("c1") == rows[2]["conversation_id"]
    c1 = await pg_conn.fetchrow(f"SELECT * FROM {s}.conversations WHERE conversation_id = $1", conversation("c1"))
    assert (c1["status"], c1["message_count"], c1["customer_name"]) == ("escalated", 2, "Name c1")
    assert c1["started_at"] == datetime.fromtimestamp(T0, UTC)
    assert c1["last_activity"] == datetime.fromtimestamp(T0 + 5, UTC)
    escalation = await pg_conn.fetchrow(f"SELECT * FROM {s}.escalations")
    assert (escalation["status"], escalation["conversation_id"]) == ("pending", conversation("c1"))
    assert escalation["ticket_id"].startswith("ESC-")
    await journal.close()


async def test_replays_and_duplicates_change_nothing(tmp_path, sink, pg_conn, pg_schema):
    journal, events = await journaled(
        tmp_path,
        [
            msg("m1", at=0),
            msg("m2", at=1, title="outgoing_message"),
            status_event("open_chat", at=2),
            status_event("unsubscribe", contact="c2", at=1),
            msg("m3", contact="c2", at=0),
        ],
    )
    await sink.deliver(events)
    before = await dump(pg_conn, pg_schema)
    await sink.deliver(events)
    await sink.deliver(events[2:3])
    await sink.deliver(list(reversed(events)))
    assert await dump(pg_conn, pg_schema) == before
    await journal.close()


async def test_any_delivery_order_gives_the_same_rows(tmp_path, pg_cluster, pg_conn):
    payloads = [
        msg("m1", at=0),
        msg("m2", at=4, title="outgoing_message"),
        status_event("unsubscribe", at=5),
        msg("m3", at=9),
        status_event("bot_block", at=12),
        msg("m4", contact="c2", at=3),
        status_event("open_chat", contact="c2", at=4),
        msg("m5", contact="c2", at=7),
    ]
    journal, events = await journaled(tmp_path, payloads)
    results = []
    rng = random.Random(7)
    orders = [list(events), list(reversed(events))] + [rng.sample(events, len(events)) for _ in range(3)]
    for n, order in enumerate(orders):
        schema = f"order_{n}_{id(results)}"
        sink = PostgresSink(pg_cluster.dsn(), schema)
        for start in range(0, len(order), 3):  # several batches, each in its own transaction
            await sink.deliver(order[start : start + 3])
        await sink.close()
        results.append(await dump(pg_conn, schema, skip=("created_at", "updated_at")))
    assert all(result == results[0] for result in results[1:])
    statuses = {r[0]: (r[3], r[6]) for r in results[0]["conversations"]}
    assert statuses[conversation("c1")] == ("closed", 3)  # bot_block after the last message
    assert statuses[conversation("c2")] == ("escalated", 2)  # live chat stays escalated
    await journal.close()


async def test_a_message_after_closing_reopens(tmp_path, sink, pg_conn, pg_schema):
    journal, events = await journaled(tmp_path, [msg("m1", at=0), status_event("unsubscribe", at=5), msg("m2", at=8)])
    s = quote_ident(pg_schema)
    await sink.deliver(events[:2])
    assert await pg_conn.fetchval(f"SELECT status FROM {s}.conversations") == "closed"
    await sink.deliver(events[2:])
    assert await pg_conn.fetchval(f"SELECT status FROM {s}.conversations") == "active"
    await journal.close()


async def test_nul_characters_are_stored_not_refused(tmp_path, sink, pg_conn, pg_schema):
    raw = msg("m1", text="a\u0000b")
    journal, events = await journaled(tmp_path, [raw])
    (original,) = await journal.query("SELECT original FROM events")
    assert "\\u0000" in original[0]  # the journal keeps it verbatim
    await sink.deliver(events)
    s = quote_ident(pg_schema)
    # a NUL becomes U+FFFD in the normalized text and in the raw payload (text and jsonb refuse it)
    assert await pg_conn.fetchval(f"SELECT content FROM {s}.interactions") == "a\ufffdb"
    assert (
        await pg_conn.fetchval(f"SELECT payload #>> '{{info,message,channel_data,message,text,body}}' FROM {s}.events")
        == "a\ufffdb"
    )
    await journal.close()


async def run_until(worker, condition, timeout=60.0):
    """Run the worker until `condition()` holds (checked between polls), then stop it."""
    task = asyncio.create_task(worker.run())
    try:
        deadline = asyncio.get_running_loop().time() + timeout
        while not await condition():
            assert not task.done(), task.exception()
            assert asyncio.get_running_loop().time() < deadline, f"not reached; worker {worker.live_status()}"
            await asyncio.sleep(0.02)
    finally:
        worker.stop()
        await asyncio.wait_for(task, 30)


async def journal_state(journal, sink="postgres"):
    return (await journal.counts())["sinks"].get(sink, {})


async def test_a_poison_event_is_isolated_and_the_rest_lands(tmp_path, sink, pg_conn, pg_schema):
    payloads = [msg(f"m{i}", at=i) for i in range(20)]
    # The same SendPulse message id as m7, but outgoing: a different event that breaks interactions'
    # unique message_id. No retry can fix that; it must not hold back the others.
    payloads.insert(12, msg("m7", at=30, title="outgoing_message"))
    journal, _ = await journaled(tmp_path, payloads)
    worker = DeliveryWorker(journal, sink)

    async def settled():
        state = await journal_state(journal)
        return state.get("pending") == 0

    await run_until(worker, settled)
    state = await journal_state(journal)
    assert (state["delivered"], state["dead"]) == (20, 1)
    dead = await journal.dead_letters("postgres")
    assert dead[0]["dedup_key"] == "msg:outgoing_message:m7"
    assert "UniqueViolation" in dead[0]["last_error"] and "23505" in dead[0]["last_error"]
    assert await pg_conn.fetchval(f"SELECT count(*) FROM {quote_ident(pg_schema)}.interactions") == 20

    assert await journal.requeue_dead("postgres") == 1  # replay on demand: still poison, parked again
    worker = DeliveryWorker(journal, sink)
    await run_until(worker, settled)
    assert (await journal_state(journal))["dead"] == 1
    assert (await journal.dead_letters("postgres"))[0]["attempts"] == 1
    await journal.close()


async def test_outage_then_recovery_delivers_everything_once(tmp_path, own_pg):
    schema = "chatledger"
    journal, _ = await journaled(tmp_path, [msg(f"m{i}", contact=f"c{i % 3}", at=i) for i in range(30)])
    own_pg.kill()
    sink = PostgresSink(own_pg.dsn(), schema)
    worker = DeliveryWorker(journal, sink)
    task = asyncio.create_task(worker.run())
    while worker.failures < 2:
        assert not task.done()
        await asyncio.sleep(0.05)
    assert worker.live_status()["state"] == "down"
    assert "cannot connect" in worker.live_status()["last_error"]
    assert (await journal_state(journal))["pending"] == 30
    attempts = (await journal.query("SELECT attempts FROM deliveries WHERE event_id = 1"))[0][0]
    assert attempts >= 1

    own_pg.start()
    worker.wake()  # what SIGHUP and `chatledger sync` do: no waiting out the backoff
    while (await journal_state(journal))["pending"]:
        assert not task.done()
        await asyncio.sleep(0.05)
    worker.stop()
    await task
    await sink.close()
    conn = await asyncpg.connect(own_pg.dsn())
    assert await conn.fetchval("SELECT count(*) FROM chatledger.interactions") == 30
    counts = await conn.fetch(
        "SELECT c.message_count, (SELECT count(*) FROM chatledger.interactions i "
        "WHERE i.conversation_id = c.conversation_id) FROM chatledger.conversations c"
    )
    assert len(counts) == 3 and all(a == b for a, b in counts)
    await conn.close()
    await journal.close()


async def test_crash_mid_transaction_leaves_nothing_half_written(tmp_path, own_pg):
    """PostgreSQL killed between batches and during them: the final rows are complete and single."""
    journal, events = await journaled(tmp_path, [msg(f"m{i}", contact=f"c{i % 5}", at=i) for i in range(200)])
    sink = PostgresSink(own_pg.dsn(), "chatledger")
    await sink.deliver(events[:50])
    own_pg.kill()
    with pytest.raises(TransientError):
        await sink.deliver(events[50:100])
    own_pg.start()
    for start in range(0, 200, 40):  # overlapping replays of what may or may not have landed
        await sink.deliver(events[start : start + 60])
    await sink.close()
    conn = await asyncpg.connect(own_pg.dsn())
    assert await conn.fetchval("SELECT count(*) FROM chatledger.interactions") == 200
    assert await conn.fetchval("SELECT sum(message_count) FROM chatledger.conversations") == 200
    await conn.close()
    await journal.close()


def test_orders_fixture_is_meaningful():
    # The order test above relies on distinct orders; guard against a seed giving identical ones.
    rng = random.Random(7)
    samples = [tuple(rng.sample(range(8), 8)) for _ in range(3)]
    assert len(set(samples) | {tuple(range(8)), tuple(reversed(range(8)))}) == 5
    assert list(itertools.islice(samples, 1))


async def test_a_conversation_or_escalation_without_priority_is_medium_and_old_normal_rows_become_medium(
    pg_conn, pg_schema
):
    from daemon.sinks.postgres import MIGRATIONS, _sql

    s = quote_ident(pg_schema)
    await pg_conn.execute(f"CREATE SCHEMA {s}")
    async with pg_conn.transaction():  # a schema as version 1 left it, with rows that took its default
        await pg_conn.execute(
            _sql(
                "CREATE TABLE {s}.schema_migrations (version integer PRIMARY KEY, "
                "applied_at timestamptz NOT NULL DEFAULT now())",
                pg_schema,
            )
        )
        await pg_conn.execute(_sql(MIGRATIONS[0], pg_schema))
        await pg_conn.execute(f"INSERT INTO {s}.schema_migrations (version) VALUES (1)")
    await pg_conn.execute(f"INSERT INTO {s}.conversations (conversation_id) VALUES ('old'), ('high')")
    await pg_conn.execute(f"UPDATE {s}.conversations SET priority = 'HIGH' WHERE conversation_id = 'high'")
    await pg_conn.execute(
        f"INSERT INTO {s}.escalations (escalation_id, ticket_id, conversation_id, created_at) "
        "VALUES ('e', 'ESC-1', 'old', now())"
    )
    assert await pg_conn.fetchval(f"SELECT priority FROM {s}.escalations") == "normal"

    assert await migrate(pg_conn, pg_schema) == (1, SCHEMA_VERSION)

    assert dict(await pg_conn.fetch(f"SELECT conversation_id, priority FROM {s}.conversations")) == {
        "old": "MEDIUM",
        "high": "HIGH",
    }
    assert await pg_conn.fetchval(f"SELECT priority FROM {s}.escalations") == "MEDIUM"
    await pg_conn.execute(f"INSERT INTO {s}.conversations (conversation_id) VALUES ('new')")
    assert await pg_conn.fetchval(f"SELECT priority FROM {s}.conversations WHERE conversation_id = 'new'") == "MEDIUM"


async def test_an_escalation_update_postgresql_cannot_apply_is_a_dead_letter_not_lost(
    tmp_path, sink, pg_conn, pg_schema
):
    """An update of an escalation PostgreSQL does not hold (its creation dead-lettered, or lost with the
    database) used to change nothing and count as delivered. It is refused alone, saying why, the rest lands,
    and once the escalation is there a replay of the dead letters applies it."""
    from tests.integration.conftest import api_event

    s = quote_ident(pg_schema)
    journal, _ = await journaled(tmp_path, [msg("m1", at=1), msg("m2", at=2)])
    update = {"id": "esc-9", "status": "resolved", "assignedAgent": "ana", "resolvedAt": "2026-11-25T13:00:00Z"}
    await journal.append([api_event(API_ESCALATION_UPDATE, update, 600)])

    async def settled():
        return (await journal_state(journal)).get("pending") == 0

    await run_until(DeliveryWorker(journal, sink), settled)
    state = await journal_state(journal)
    assert (state["delivered"], state["dead"]) == (2, 1)
    (dead,) = await journal.dead_letters("postgres")
    assert dead["title"] == API_ESCALATION_UPDATE
    assert "esc-9" in dead["last_error"] and "not in PostgreSQL" in dead["last_error"]

    await journal.append([api_event(API_ESCALATION, {"id": "esc-9", "reason": "wants a human"}, 500)])
    await run_until(DeliveryWorker(journal, sink), settled)
    assert await journal.requeue_dead("postgres") == 1
    await run_until(DeliveryWorker(journal, sink), settled)
    assert (await journal_state(journal)).get("dead", 0) == 0
    row = await pg_conn.fetchrow(
        f"SELECT status, assigned_agent, reason FROM {s}.escalations WHERE escalation_id = 'esc-9'"
    )
    assert tuple(row) == ("resolved", "ana", "wants a human")
    await journal.close()
