"""`recover`: rows PostgreSQL lost come back from Airtable (real cluster, emulator over HTTP, real pyairtable)."""

from datetime import datetime, timezone

import pytest

from daemon.events import normalize
from daemon.journal import Journal
from daemon.ratelimit import RequestBudget
from daemon.records import conversation_id_for
from daemon.recover import Recovery, Selection, conversation_row, interaction_row, Unusable
from daemon.sinks.airtable import AirtableClient, AirtableSink, init_base
from daemon.sinks.postgres import PostgresSink, quote_ident
from daemon.sinks.postgres_rows import PostgresRows
from daemon.testing.airtable import Emulator, EmulatorThread

TOKEN = "patRECOVER00000001.0123456789abcdef"
BASE = "appRECOVER0000001"
NAMES = {"conversations": "Conversations", "interactions": "Interactions", "escalations": "Escalations"}
RECEIVED = datetime(2026, 11, 25, 12, 0, tzinfo=timezone.utc)
T0 = 1_790_000_000
COMPARED = {
    "conversations": "conversation_id, customer_phone, customer_name, status, started_at, last_activity, "
                     "message_count",
    "interactions": "interaction_id, conversation_id, message_id, direction, content, status, customer_phone, "
                    "occurred_at",
    "escalations": "escalation_id, ticket_id, conversation_id, reason, priority, status, customer_phone, "
                   "created_at, notes",
}


def message(i, contact, at):
    return {"title": "incoming_message" if i % 2 else "outgoing_message", "service": "whatsapp",
            "bot": {"id": "bot1"}, "date": T0 + at,
            "contact": {"id": contact, "phone": f"+55 11 9{contact[1:]:0>8}", "name": f"Name {contact}"},
            "info": {"message": {"id": f"wamid.{i}", "channel_data": {"message": {
                "type": "text", "text": {"body": f"hello {i}"} if i % 2 else f"hi {i}"}}}}}


def event(title, contact, at):
    return {"title": title, "service": "whatsapp", "bot": {"id": "bot1"}, "date": T0 + at,
            "contact": {"id": contact, "phone": f"+55 11 9{contact[1:]:0>8}", "name": f"Name {contact}"},
            "info": None}


def cid(contact):
    return conversation_id_for("bot1", contact, None)


PAYLOADS = ([message(i, f"c{i % 4}", i * 60) for i in range(60)]
            + [event("open_chat", "c1", 5000), event("unsubscribe", "c2", 6000)])


@pytest.fixture
def emulator():
    running = EmulatorThread(Emulator([TOKEN], rate=5, lockout=30.0)).start()
    running.run(running.emulator.add_base, BASE)
    yield running
    running.stop()


@pytest.fixture
async def stores(tmp_path, emulator, pg_cluster, pg_schema):
    """Both sinks holding PAYLOADS, delivered the normal way."""
    journal = await Journal.open(tmp_path / "j.sqlite", ["postgres", "airtable"])
    await journal.append([normalize(p, RECEIVED) for p in PAYLOADS])
    events = await journal.pending("postgres", 0, 10_000)
    client = AirtableClient(TOKEN, BASE, emulator.url, RequestBudget(5))
    await init_base(client, NAMES)
    airtable = AirtableSink(client, NAMES, journal.conversations)
    postgres = PostgresSink(pg_cluster.dsn(), pg_schema)
    await postgres.deliver(events)
    await airtable.deliver(events)
    await postgres.close()
    yield client
    await airtable.close()
    await journal.close()


async def dump(conn, schema):
    return {table: [tuple(r) for r in await conn.fetch(f"SELECT {cols} FROM {quote_ident(schema)}.{table} ORDER BY 1")]
            for table, cols in COMPARED.items()}


async def recover(client, pg_cluster, schema, selection, prefer="postgres"):
    async with PostgresRows.open(pg_cluster.dsn(), schema) as pg:
        return await Recovery(client, NAMES, pg, prefer=prefer).run(selection)


async def test_recover_all_gives_back_dropped_rows_and_then_changes_nothing(stores, pg_cluster, pg_conn, pg_schema):
    s = quote_ident(pg_schema)
    before = await dump(pg_conn, pg_schema)
    assert len(before["interactions"]) == 60 and len(before["escalations"]) == 1
    await pg_conn.execute(f"DELETE FROM {s}.interactions WHERE conversation_id = $1", cid("c3"))
    await pg_conn.execute(f"DELETE FROM {s}.escalations")
    await pg_conn.execute(f"DELETE FROM {s}.interactions WHERE conversation_id = $1", cid("c1"))
    await pg_conn.execute(f"DELETE FROM {s}.interactions WHERE conversation_id = $1", cid("c2"))
    await pg_conn.execute(f"DELETE FROM {s}.conversations WHERE conversation_id = ANY($1)", [cid("c1"), cid("c2")])

    report = await recover(stores, pg_cluster, pg_schema, Selection(everything=True))

    assert await dump(pg_conn, pg_schema) == before  # counts, spans, statuses and phones included
    t = report.tallies
    assert (t["conversations"].read, t["conversations"].inserted, t["conversations"].present) == (4, 2, 2)
    assert (t["interactions"].read, t["interactions"].inserted, t["interactions"].present) == (60, 45, 15)
    assert (t["escalations"].inserted, t["escalations"].conflicting) == (1, 0)
    assert report.problems == []

    again = await recover(stores, pg_cluster, pg_schema, Selection(everything=True))
    assert await dump(pg_conn, pg_schema) == before
    assert all(tally.inserted == 0 and tally.conflicting == 0 for tally in again.tallies.values())
    assert again.tallies["interactions"].present == 60


async def test_recover_one_phone_or_conversation_touches_only_it(stores, pg_cluster, pg_conn, pg_schema):
    s = quote_ident(pg_schema)
    await pg_conn.execute(f"DELETE FROM {s}.interactions")
    report = await recover(stores, pg_cluster, pg_schema, Selection(phone="5511900000002"))
    counts = dict(await pg_conn.fetch(f"SELECT conversation_id, count(*) FROM {s}.interactions GROUP BY 1"))
    assert counts == {cid("c2"): 15}
    assert report.tallies["conversations"].read == 1 and report.tallies["interactions"].inserted == 15
    # status and count come back as delivery computed them: closed by the unsubscribe, 15 messages
    row = await pg_conn.fetchrow(f"SELECT status, message_count FROM {s}.conversations WHERE conversation_id = $1",
                                 cid("c2"))
    assert tuple(row) == ("closed", 15)
    await recover(stores, pg_cluster, pg_schema, Selection(conversation=cid("c1")))
    counts = dict(await pg_conn.fetch(f"SELECT conversation_id, count(*) FROM {s}.interactions GROUP BY 1"))
    assert counts == {cid("c1"): 15, cid("c2"): 15}


async def test_recover_since_a_date(stores, pg_cluster, pg_conn, pg_schema):
    s = quote_ident(pg_schema)
    await pg_conn.execute(f"DELETE FROM {s}.interactions")
    since = datetime.fromtimestamp(T0 + 40 * 60, timezone.utc).isoformat()
    report = await recover(stores, pg_cluster, pg_schema, Selection(since=since))
    assert report.tallies["interactions"].inserted == 20
    assert await pg_conn.fetchval(f"SELECT min(occurred_at) FROM {s}.interactions") == \
        datetime.fromtimestamp(T0 + 40 * 60, timezone.utc)


async def test_postgres_wins_unless_airtable_is_preferred(stores, pg_cluster, pg_conn, pg_schema):
    s = quote_ident(pg_schema)
    await pg_conn.execute(f"UPDATE {s}.interactions SET content = 'edited in PostgreSQL' WHERE message_id = 'wamid.7'")
    report = await recover(stores, pg_cluster, pg_schema, Selection(conversation=cid("c3")))
    assert report.tallies["interactions"].conflicting == 1 and report.tallies["interactions"].replaced == 0
    assert await pg_conn.fetchval(f"SELECT content FROM {s}.interactions WHERE message_id = 'wamid.7'") == \
        "edited in PostgreSQL"
    report = await recover(stores, pg_cluster, pg_schema, Selection(conversation=cid("c3")), prefer="airtable")
    assert report.tallies["interactions"].replaced == 1
    assert await pg_conn.fetchval(f"SELECT content FROM {s}.interactions WHERE message_id = 'wamid.7'") == "hello 7"


async def test_rows_whose_conversation_is_nowhere_get_one_built(stores, emulator, pg_cluster, pg_conn, pg_schema):
    s = quote_ident(pg_schema)
    await pg_conn.execute(f"DELETE FROM {s}.interactions")
    await pg_conn.execute(f"DELETE FROM {s}.escalations")
    await pg_conn.execute(f"DELETE FROM {s}.conversations")

    def drop_conversation():
        table = emulator.emulator.bases[BASE].table("Conversations")
        for record_id, record in list(table.records.items()):
            if table.by_name(record)["ConversationId"] == cid("c0"):
                del table.records[record_id]
    emulator.run(drop_conversation)
    report = await recover(stores, pg_cluster, pg_schema, Selection(everything=True))
    assert report.tallies["conversations"].built == 1
    row = await pg_conn.fetchrow(f"SELECT message_count, customer_phone FROM {s}.conversations "
                                 "WHERE conversation_id = $1", cid("c0"))
    assert row["message_count"] == 15 and row["customer_phone"] is None
    assert await pg_conn.fetchval(f"SELECT count(*) FROM {s}.interactions") == 60


def test_records_that_cannot_be_rows_say_why():
    with pytest.raises(Unusable, match="no ConversationId"):
        conversation_row({"CustomerPhone": "5511"}, "2026-11-27T00:00:00.000Z")
    with pytest.raises(Unusable, match="Direction"):
        interaction_row({"InteractionId": "i", "ConversationId": "c", "Direction": "sideways",
                         "Timestamp": "2026-11-27T00:00:00.000Z"}, "2026-11-27T00:00:00.000Z")
    with pytest.raises(Unusable, match="Timestamp is not a date"):
        interaction_row({"InteractionId": "i", "ConversationId": "c", "Direction": "inbound",
                         "Timestamp": "yesterday"}, "2026-11-27T00:00:00.000Z")
    row = conversation_row({"ConversationId": "c", "CustomerPhone": "+55 (11) 98765-4321", "Status": "escalated",
                            "LastActivity": "2026-11-20T08:00:00.000Z", "Tags": "vip, billing"}, "now")
    assert row["customer_phone"] == "5511987654321" and row["tags"] == ["vip", "billing"]
    assert row["metadata"]["status_event"] == "open_chat"
